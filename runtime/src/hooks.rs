//! Lifecycle hooks: each runs with the container's state JSON on its stdin, its own args and
//! env, and an optional timeout after which it is killed.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

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
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(input);
    }
    let timeout = h.timeout();
    if let Some(t) = timeout {
        if t <= 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("timeout {t} must be positive")));
        }
        let pidfd =
            crate::sys::pidfd_open(child.id() as i32).map_err(|e| err(format!("pidfd: {e}")))?;
        let mut pfd = [nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = (t as u64).saturating_mul(1000).min(i32::MAX as u64) as i32;
        let ready = loop {
            match nix::poll::poll(
                &mut pfd,
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(err(format!("poll: {e}"))),
            }
        };
        if ready == 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("timed out after {t}s")));
        }
    }
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
