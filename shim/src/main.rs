//! rsrun-shim: the small per-container monitor. Started once per container, it detaches
//! (own session, child subreaper), creates the container through the rsrun library with
//! the container's stdio on pipes (or a terminal), tells its starter the result, and stays
//! until the container has exited: it writes the CRI log, records the exit in an exit file,
//! and serves `start`, log reopening, resizes, exec (synchronous, with a timeout) and attach
//! on unix sockets in its directory. It knows nothing of CRI or gRPC.
//!
//! Single-threaded: the container and every exec process are forked before any loop runs
//! and from the loop itself, never beside a thread.

mod crilog;
mod monitor;
mod proto;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: rsrun-shim --id ID --bundle DIR --dir DIR --log-path FILE --exit-file FILE [options]

Creates container ID from the OCI bundle DIR through the rsrun library, then supervises it
from a detached process until it exits. Prints the container's PID on success; on failure
prints the runtime's error and exits 1, leaving nothing behind.

  --id ID              container ID
  --bundle DIR         OCI bundle (config.json and rootfs)
  --dir DIR            the shim's directory: sockets `control` and `attach`, `shim.pid`,
                       `shim.log` (created 0700 if missing)
  --log-path FILE      the container's log, in the CRI format (appended to)
  --exit-file FILE     where the exit record (JSON) is written, atomically, at exit
  --root DIR           rsrun's state root (default /run/rsrun)
  --terminal           the container's stdio is a terminal (its config must set
                       process.terminal)
  --stdin              keep the container's stdin open for attach
  --stdin-once         close the container's stdin when the first attacher detaches
  --log-max-line N     the longest log record's content, in bytes (default 16384);
                       longer lines are split into partial (P) records
  --delete-on-exit     once the init has exited, delete the container from the runtime
                       (what is left of its processes killed, its cgroups and state
                       removed) before the exit record is written
  --systemd-cgroup     the systemd cgroup driver: the container's cgroup is a scope that
                       systemd makes (cgroupsPath slice:prefix:name; see rsrun --help)
  -h, --help           this text

Control socket (stream, one JSON request per connection, one JSON line back):
  {\"op\":\"start\"}  {\"op\":\"reopen_log\"}  {\"op\":\"resize\",\"rows\":R,\"cols\":C}
  {\"op\":\"status\"}  {\"op\":\"exec_sync\",\"args\":[..],\"env\":[..],\"cwd\":..,\"user\":..,
  \"timeout_ms\":N} (answered with a JSON header line, then the stdout and stderr bytes)
Attach socket (seqpacket): see docs/shim.md.";

pub struct Opts {
    pub id: String,
    pub bundle: PathBuf,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    pub exit_file: PathBuf,
    pub root: PathBuf,
    pub terminal: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub max_line: usize,
    pub delete_on_exit: bool,
    pub systemd_cgroup: bool,
}

fn parse(args: Vec<String>) -> Result<Option<Opts>> {
    let mut it = args.into_iter();
    let (mut id, mut bundle, mut dir, mut log_path, mut exit_file) = (None, None, None, None, None);
    let mut o = Opts {
        id: String::new(),
        bundle: PathBuf::new(),
        dir: PathBuf::new(),
        log_path: PathBuf::new(),
        exit_file: PathBuf::new(),
        root: PathBuf::from(rsrun::state::DEFAULT_ROOT),
        terminal: false,
        stdin: false,
        stdin_once: false,
        max_line: crilog::DEFAULT_MAX_LINE,
        delete_on_exit: false,
        systemd_cgroup: false,
    };
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value"),
            }
        };
        // A switch takes no value: `--stdin=false` turned stdin on.
        const SWITCHES: [&str; 5] = [
            "--terminal",
            "--stdin",
            "--stdin-once",
            "--delete-on-exit",
            "--systemd-cgroup",
        ];
        if let (true, Some(v)) = (SWITCHES.contains(&flag.as_str()), &inline) {
            bail!("{flag} takes no value (given {v:?}): leave it out for false");
        }
        match flag.as_str() {
            "--id" => id = Some(value("--id")?),
            "--bundle" => bundle = Some(PathBuf::from(value("--bundle")?)),
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            "--log-path" => log_path = Some(PathBuf::from(value("--log-path")?)),
            "--exit-file" => exit_file = Some(PathBuf::from(value("--exit-file")?)),
            "--root" => o.root = PathBuf::from(value("--root")?),
            "--terminal" => o.terminal = true,
            "--stdin" => o.stdin = true,
            "--stdin-once" => o.stdin_once = true,
            "--delete-on-exit" => o.delete_on_exit = true,
            "--systemd-cgroup" => o.systemd_cgroup = true,
            "--log-max-line" => {
                let v = value("--log-max-line")?;
                o.max_line = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1 << 20).contains(n))
                    .with_context(|| {
                        format!("--log-max-line {v:?}: a number of bytes, 1 to 1048576")
                    })?;
            }
            "-h" | "--help" => return Ok(None),
            f => bail!("unknown argument {f:?}\n{USAGE}"),
        }
    }
    let need =
        |v: Option<String>, name: &str| v.with_context(|| format!("{name} is required\n{USAGE}"));
    o.id = need(id, "--id")?;
    rsrun::config::validate_id(&o.id).map_err(|e| anyhow::anyhow!("--id: {e}"))?;
    let path = |v: Option<PathBuf>, name: &str| -> Result<PathBuf> {
        let p = v.with_context(|| format!("{name} is required\n{USAGE}"))?;
        std::path::absolute(&p).with_context(|| format!("{name} {}", p.display()))
    };
    o.bundle = path(bundle, "--bundle")?;
    o.dir = path(dir, "--dir")?;
    o.log_path = path(log_path, "--log-path")?;
    o.exit_file = path(exit_file, "--exit-file")?;
    o.root = std::path::absolute(&o.root).context("--root")?;
    if o.stdin_once && !o.stdin {
        bail!("--stdin-once needs --stdin");
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let o = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rsrun-shim: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The container's init runs as this binary until it execs: sealed first (see
    // rsrun::seal), as the rsrun CLI does.
    if let Err(e) = rsrun::seal::ensure_sealed() {
        eprintln!("rsrun-shim: {e}");
        return ExitCode::FAILURE;
    }
    match start(o) {
        Ok(pid) => {
            println!("{pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rsrun-shim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Forks the monitor and waits for its report: the container's PID, or the error.
fn start(o: Opts) -> Result<i32> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe")?;
    let pid = rsrun::sys::clone_fork(0).context("fork the monitor")?;
    if pid == 0 {
        drop(r);
        monitor_main(o, w);
    }
    drop(w);
    let mut report = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut report)
        .context("read the monitor's report")?;
    // The monitor detached (its own session); it is reaped here only if it already died.
    let _ = nix::sys::wait::waitpid(
        nix::unistd::Pid::from_raw(pid),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
    match report.split_once(' ') {
        Some(("ok", p)) => p.trim().parse().context("monitor report"),
        Some(("error", msg)) => bail!("{}", msg.trim_end()),
        _ => bail!("the monitor died while creating the container ({report:?})"),
    }
}

/// The detached monitor: creates the container, reports, supervises. Never returns.
fn monitor_main(o: Opts, report: OwnedFd) -> ! {
    let mut report = std::fs::File::from(report);
    // Our stderr is /dev/null from here: a panic is said in the shim's log.
    std::panic::set_hook(Box::new(|info| {
        rsrun::log::error(&format!("rsrun-shim panicked: {info}"));
    }));
    let code = (|| -> Result<i32> {
        nix::unistd::setsid().context("setsid")?;
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        nix::unistd::chdir("/").context("chdir /")?;
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .context("open /dev/null")?;
        nix::unistd::dup2_stdin(&null)
            .and_then(|_| nix::unistd::dup2_stdout(&null))
            .and_then(|_| nix::unistd::dup2_stderr(&null))
            .context("dup2 /dev/null")?;
        // Nothing the starter let us inherit stays open for the container's lifetime (a
        // daemon's own inherited pipes and sockets would otherwise be held by every shim).
        rsrun::sys::close_from_except(3, &[report.as_raw_fd()])
            .context("close inherited descriptors")?;
        let mut m = match monitor::Monitor::start(&o) {
            Ok(m) => m,
            Err(e) => {
                let _ = writeln!(report, "error {e:#}");
                return Ok(1);
            }
        };
        let _ = write!(report, "ok {}", m.pid());
        drop(report);
        m.run()
    })();
    let code = code.unwrap_or_else(|e| {
        rsrun::log::error(&format!("container {}: {e:#}", o.id));
        1
    });
    rsrun::sys::exit_now(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "--id",
            "c1",
            "--bundle",
            "/b",
            "--dir",
            "/d",
            "--log-path",
            "/l",
            "--exit-file",
            "/e",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn switches_take_no_value() {
        let o = parse(args(&["--stdin", "--terminal"])).unwrap().unwrap();
        assert!(o.stdin && o.terminal && !o.stdin_once);
        for bad in ["--stdin=false", "--terminal=0", "--delete-on-exit=no"] {
            let e = match parse(args(&[bad])) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{bad} accepted"),
            };
            let flag = bad.split('=').next().unwrap();
            assert!(
                e.contains(flag) && e.contains("takes no value"),
                "{bad}: {e}"
            );
        }
        let o = parse(args(&["--log-max-line=100"])).unwrap().unwrap();
        assert_eq!(o.max_line, 100);
    }
}
