//! The shim's two sockets.
//!
//! `control` (SOCK_STREAM): one JSON request per connection, one JSON line back
//! (`{"ok":true,...}` or `{"error":"..."}`). `exec_sync` answers with a JSON header line
//! (`exit_code`, `timed_out`, `stdout_len`, `stderr_len`, `truncated`) followed by that
//! many bytes of stdout, then of stderr. `exec` (interactive) answers twice: the PID at
//! once, the exec_sync header when the process exits.
//!
//! `attach` (SOCK_SEQPACKET, one message per packet, first byte its kind):
//! shim → client: `1` stdout bytes, `2` stderr bytes, `3` the container exited (i32 LE
//! exit code); client → shim: `0` stdin bytes, `4` resize (u16 LE rows, u16 LE cols),
//! `5` close the container's stdin. A client that sends stdin (an empty `0` says so without
//! bytes) carries it: its going away is then a detach for --stdin-once. Anything else is
//! refused and the client dropped.

use serde::Deserialize;

pub const ATTACH_STDIN: u8 = 0;
pub const ATTACH_STDOUT: u8 = 1;
pub const ATTACH_STDERR: u8 = 2;
pub const ATTACH_EXIT: u8 = 3;
pub const ATTACH_RESIZE: u8 = 4;
pub const ATTACH_CLOSE_STDIN: u8 = 5;
/// The largest attach packet (kind byte included).
pub const ATTACH_MAX: usize = 32 * 1024;

/// The CRI limit on what ExecSync returns of each stream.
pub const EXEC_SYNC_MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// The longest control request accepted.
pub const CONTROL_MAX: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // (Empty struct variants, so that unknown fields are refused as for the others.)
    Start {},
    ReopenLog {},
    Status {},
    Resize {
        rows: u16,
        cols: u16,
    },
    ExecSync {
        args: Vec<String>,
        #[serde(default)]
        env: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
        /// `uid[:gid]`.
        #[serde(default)]
        user: Option<String>,
        /// 0 or absent: no timeout.
        #[serde(default)]
        timeout_ms: u64,
    },
    /// An interactive exec (the streaming server's): without a terminal, the request comes
    /// with three descriptors (SCM_RIGHTS) that become the process's stdin, stdout and
    /// stderr; with one, the terminal's master goes to `console_socket` (as `rsrun exec
    /// --console-socket`). Answered at once with `{"ok":true,"pid":N}` (or an error), then,
    /// when the process exits, with the exec_sync header (its `exit_code`; no output).
    Exec {
        args: Vec<String>,
        #[serde(default)]
        env: Vec<String>,
        #[serde(default)]
        cwd: Option<String>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        tty: bool,
        #[serde(default)]
        console_socket: Option<String>,
    },
}

pub fn parse(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad control request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert!(matches!(parse(br#"{"op":"start"}"#), Ok(Request::Start {})));
        assert!(matches!(
            parse(br#"{"op":"exec_sync","args":["ls"],"timeout_ms":5}"#),
            Ok(Request::ExecSync { timeout_ms: 5, .. })
        ));
        assert!(matches!(
            parse(br#"{"op":"exec","args":["sh"],"tty":true,"console_socket":"/s"}"#),
            Ok(Request::Exec {
                tty: true,
                console_socket: Some(_),
                ..
            })
        ));
        for bad in [
            &br#"{"op":"nope"}"#[..],
            br#"{"op":"resize","rows":-1,"cols":2}"#,
            br#"{"op":"start","x":1}"#,
            br#"{"op":"exec","args":["sh"],"tty":"yes"}"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
