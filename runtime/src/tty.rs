//! Foreground `run`: forwards signals to the container, proxies its terminal when it has
//! one, and waits for its exit status.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Context, Result};

/// Restores the terminal mode of stdin when dropped.
struct RawMode(Option<termios::Termios>);

impl RawMode {
    fn enter() -> Self {
        let stdin = std::io::stdin();
        match termios::tcgetattr(stdin.as_fd()) {
            Ok(orig) => {
                let mut raw = orig.clone();
                termios::cfmakeraw(&mut raw);
                let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
                RawMode(Some(orig))
            }
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

fn copy_winsize(master: &OwnedFd) {
    if let Ok((rows, cols)) = crate::sys::get_winsize(0) {
        let _ = crate::sys::set_winsize(master.as_raw_fd(), rows, cols);
    }
}

/// Waits for `pid` (our child) to exit, forwarding `sigs` (already blocked) to it. With a
/// console channel, receives the terminal's master and proxies it to our stdio.
pub fn wait_forwarding(pid: i32, sigs: &SigSet, console: Option<UnixStream>) -> Result<i32> {
    let sfd = SignalFd::with_flags(sigs, SfdFlags::SFD_CLOEXEC).ctx("signalfd")?;
    let master = match console {
        Some(c) => {
            Some(crate::sys::recv_fd(c.as_raw_fd()).ctx("receive the container's terminal")?)
        }
        None => None,
    };
    let _raw = master.as_ref().map(|m| {
        copy_winsize(m);
        RawMode::enter()
    });
    let mut stdin_open = master.is_some();
    // The terminal stops being polled once it hangs up (all slaves closed): a hung-up
    // master is always "ready" and would spin the loop.
    let mut master_open = master.is_some();
    let mut buf = vec![0u8; 16384];
    let mut out = std::io::stdout();
    let stdin = std::io::stdin();
    loop {
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let (mut i_master, mut i_stdin) = (usize::MAX, usize::MAX);
        if let (Some(m), true) = (&master, master_open) {
            i_master = fds.len();
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            if stdin_open {
                i_stdin = fds.len();
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(crate::error::Error::os("poll", e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if let (Some(m), true) = (&master, ready.get(i_master).copied().unwrap_or(false)) {
            match nix::unistd::read(m, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                _ => master_open = false,
            }
        }
        if let (Some(m), true) = (&master, ready.get(i_stdin).copied().unwrap_or(false)) {
            match nix::unistd::read(std::io::stdin().as_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = nix::unistd::write(m, &buf[..n]);
                }
                // EOF on stdin: send the terminal's EOF character.
                _ => {
                    stdin_open = false;
                    let _ = nix::unistd::write(m, &[4u8]);
                }
            }
        }
        if ready[0] {
            let Ok(Some(si)) = sfd.read_signal() else {
                continue;
            };
            let sig = si.ssi_signo as i32;
            if sig == Signal::SIGCHLD as i32 {
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => {
                            drain(master.as_ref(), &mut buf);
                            return Ok(c);
                        }
                        Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                            drain(master.as_ref(), &mut buf);
                            return Ok(128 + s as i32);
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            } else if sig == Signal::SIGWINCH as i32 && master.is_some() {
                if let Some(m) = &master {
                    copy_winsize(m);
                }
            } else {
                // Our unreaped child: its PID cannot have been reused.
                let _ = crate::sys::kill(pid, sig);
            }
        }
    }
}

/// Copies what the terminal still holds after the process exited.
fn drain(master: Option<&OwnedFd>, buf: &mut [u8]) {
    let Some(m) = master else { return };
    let mut out = std::io::stdout();
    loop {
        let mut fds = [PollFd::new(m.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(n) if n > 0 => match nix::unistd::read(m, buf) {
                Ok(n) if n > 0 => {
                    let _ = out.write_all(&buf[..n]);
                }
                _ => break,
            },
            _ => break,
        }
    }
    let _ = out.flush();
}
