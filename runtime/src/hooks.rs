//! Lifecycle hooks: each runs with the container's state JSON on its stdin, its own args and
//! env, and an optional timeout after which it is killed.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Runs `hooks` in order; the first failure stops the rest and is returned.
pub fn run_all(kind: &str, hooks: Option<&Vec<Hook>>, state: &serde_json::Value) -> Result<()> {
    let Some(hooks) = hooks else { return Ok(()) };
    if hooks.is_empty() {
        return Ok(());
    }
    let input = serde_json::to_vec(state).unwrap_or_default();
    for h in hooks {
        run_one(kind, h, &input)?;
    }
    Ok(())
}

/// Runs every hook and only logs failures (poststop).
pub fn run_all_logged(kind: &str, hooks: Option<&Vec<Hook>>, state: &serde_json::Value) {
    let Some(hooks) = hooks else { return };
    let input = serde_json::to_vec(state).unwrap_or_default();
    for h in hooks {
        if let Err(e) = run_one(kind, h, &input) {
            crate::log::warn(&e.to_string());
        }
    }
}

fn run_one(kind: &str, h: &Hook, input: &[u8]) -> Result<()> {
    let path = h.path().display().to_string();
    let err = |msg: String| Error::Hook {
        kind: kind.to_string(),
        path: path.clone(),
        msg,
    };
    let mut cmd = Command::new(h.path());
    cmd.env_clear();
    if let Some(args) = h.args() {
        if let Some((first, rest)) = args.split_first() {
            cmd.arg0(first);
            cmd.args(rest);
        }
    }
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("could not start: {e}")))?;
    let timeout = h.timeout();
    if let Some(t) = timeout {
        if t <= 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("timeout {t} must be positive")));
        }
    }
    // (config validation bounds the timeout; a deadline past what Instant holds is none.)
    let deadline = timeout.and_then(|t| Instant::now().checked_add(Duration::from_secs(t as u64)));
    let pidfd =
        crate::sys::pidfd_open(child.id() as i32).map_err(|e| err(format!("pidfd: {e}")))?;
    // Feed the state to stdin without blocking, while watching the hook and its deadline:
    // a hook that never reads a large state must still time out. A hook that exits or
    // closes its stdin early is not an error (EPIPE; SIGPIPE is ignored by the runtime).
    let mut stdin = child.stdin.take();
    if let Some(si) = &stdin {
        let _ = nix::fcntl::fcntl(
            si,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let mut written = 0;
    loop {
        if stdin.is_some() && written >= input.len() {
            stdin = None;
        }
        let ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err(format!("timed out after {}s", timeout.unwrap_or(0))));
                }
                nix::poll::PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1)
                    .unwrap_or(nix::poll::PollTimeout::MAX)
            }
            None => nix::poll::PollTimeout::NONE,
        };
        let mut fds = vec![nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if let Some(si) = &stdin {
            fds.push(nix::poll::PollFd::new(
                si.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            ));
        }
        match nix::poll::poll(&mut fds, ms) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err(format!("poll: {e}"))),
        }
        let exited = fds[0].revents().is_some_and(|r| !r.is_empty());
        let writable = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if exited {
            break;
        }
        if writable {
            if let Some(si) = stdin.as_mut() {
                match si.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => stdin = None,
                }
            }
        }
    }
    drop(stdin);
    let status = child.wait().map_err(|e| err(format!("wait: {e}")))?;
    if status.success() {
        Ok(())
    } else if let Some(sig) = status.signal() {
        Err(err(format!("killed by signal {sig}")))
    } else {
        Err(err(format!(
            "exited with status {}",
            status.code().unwrap_or(-1)
        )))
    }
}
