//! Signals as container tools name them: the 31 standard ones (with their aliases) and the
//! real-time ones, which `nix::sys::signal::Signal` cannot hold. `SIGRTMIN` is 34, as glibc
//! and Go number it (the kernel's 32 and 33 belong to the C library's threads), so
//! `SIGRTMIN+3` — systemd's stop signal — is 37, as runc and containerd send it.

use std::fmt;

use crate::error::{Error, Result};

/// The first real-time signal as C libraries and Go define it.
pub const RTMIN: i32 = 34;
/// The last signal the kernel has.
pub const RTMAX: i32 = 64;

/// Standard signals by name, the canonical name of each number first.
const NAMES: [(&str, i32); 35] = [
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
    // Aliases: never a canonical name, as they come after their number's first entry.
    ("IOT", libc::SIGABRT),
    ("CLD", libc::SIGCHLD),
    ("POLL", libc::SIGIO),
    ("UNUSED", libc::SIGSYS),
];

/// A signal number the kernel accepts (1 to 64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    pub const TERM: Signal = Signal(libc::SIGTERM);
    pub const KILL: Signal = Signal(libc::SIGKILL);

    /// A signal by its number.
    pub fn from_raw(n: i32) -> Result<Signal> {
        if (1..=RTMAX).contains(&n) {
            Ok(Signal(n))
        } else {
            Err(Error::Invalid(format!(
                "invalid signal number {n} (signals are 1 to {RTMAX})"
            )))
        }
    }

    /// A signal as runc's `kill` and image STOPSIGNALs take it: a number, or a name with or
    /// without `SIG`, in any case (`TERM`, `sigquit`, `SIGRTMIN+3`, `RTMAX-2`).
    pub fn parse(s: &str) -> Result<Signal> {
        let s = s.trim();
        if let Ok(n) = s.parse::<i32>() {
            return Signal::from_raw(n);
        }
        let invalid = || Error::Invalid(format!("unknown signal {s:?}"));
        let up = s.to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
            return Ok(Signal(n));
        }
        // RTMIN, RTMIN+n, RTMAX, RTMAX-n, within the real-time range.
        let rt = |rest: &str, base: i32, sign: i32| -> Result<Signal> {
            let off = match rest {
                "" => 0,
                _ => {
                    let digits = rest
                        .strip_prefix(if sign > 0 { '+' } else { '-' })
                        .ok_or_else(invalid)?;
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(invalid());
                    }
                    digits.parse::<i32>().map_err(|_| invalid())?
                }
            };
            let n = base + sign * off;
            if (RTMIN..=RTMAX).contains(&n) {
                Ok(Signal(n))
            } else {
                Err(Error::Invalid(format!(
                    "signal {s:?} is outside the real-time range SIGRTMIN ({RTMIN}) to SIGRTMAX ({RTMAX})"
                )))
            }
        };
        if let Some(rest) = name.strip_prefix("RTMIN") {
            return rt(rest, RTMIN, 1);
        }
        if let Some(rest) = name.strip_prefix("RTMAX") {
            return rt(rest, RTMAX, -1);
        }
        Err(invalid())
    }

    /// The number, as kill(2) takes it.
    pub fn raw(self) -> i32 {
        self.0
    }

    /// The canonical name: `SIGTERM`, `SIGRTMIN+3`, `SIGRTMAX-2`; the bare number for 32 and
    /// 33, which have none.
    pub fn name(self) -> String {
        let n = self.0;
        if let Some((k, _)) = NAMES.iter().find(|(_, v)| *v == n) {
            return format!("SIG{k}");
        }
        // The same split as the CRI's Signal enum: RTMIN+0..15, then RTMAX-14..0.
        match n {
            RTMIN => "SIGRTMIN".into(),
            RTMAX => "SIGRTMAX".into(),
            _ if (RTMIN + 1..RTMIN + 16).contains(&n) => format!("SIGRTMIN+{}", n - RTMIN),
            _ if (RTMIN + 16..RTMAX).contains(&n) => format!("SIGRTMAX-{}", RTMAX - n),
            _ => n.to_string(),
        }
    }
}

impl From<nix::sys::signal::Signal> for Signal {
    fn from(s: nix::sys::signal::Signal) -> Signal {
        Signal(s as i32)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_aliases() {
        for (s, n) in [
            ("TERM", 15),
            ("sigquit", 3),
            ("SIGKILL", 9),
            ("9", 9),
            ("IOT", 6),
            ("SIGCLD", 17),
            ("SIGPOLL", 29),
            ("SIGPWR", 30),
            ("SIGSTKFLT", 16),
            ("SIGRTMIN", 34),
            ("RTMIN+3", 37),
            ("SIGRTMIN+15", 49),
            ("SIGRTMAX-14", 50),
            ("SIGRTMAX", 64),
            ("rtmax-1", 63),
            ("64", 64),
            ("32", 32),
        ] {
            assert_eq!(Signal::parse(s).unwrap().raw(), n, "{s}");
        }
    }

    #[test]
    fn bad_signals_are_named_in_the_error() {
        for s in [
            "",
            "0",
            "65",
            "-1",
            "SIGFOO",
            "RTMIN+",
            "RTMIN+31",
            "RTMAX-31",
            "RTMIN-1",
            "RTMAX+1",
            "RTMIN+ 1",
            "RTMIN+x",
            "TERM ",
            "SIGRTMIN+99999999999",
        ] {
            if s == "TERM " {
                // Surrounding blanks are trimmed, as image configs sometimes carry them.
                assert_eq!(Signal::parse(s).unwrap(), Signal::TERM);
                continue;
            }
            let e = Signal::parse(s).unwrap_err().to_string();
            assert!(e.contains("signal"), "{s:?}: {e}");
        }
    }

    #[test]
    fn every_number_has_a_name_that_parses_back() {
        for n in 1..=RTMAX {
            let s = Signal::from_raw(n).unwrap();
            assert_eq!(Signal::parse(&s.name()).unwrap(), s, "{}", s.name());
        }
        assert_eq!(Signal(6).name(), "SIGABRT");
        assert_eq!(Signal(37).name(), "SIGRTMIN+3");
        assert_eq!(Signal(50).name(), "SIGRTMAX-14");
        assert_eq!(Signal(33).name(), "33");
    }
}
