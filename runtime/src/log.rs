//! runc-compatible logging: `--log FILE` and `--log-format text|json`. containerd reads the
//! JSON lines (`{"level":..,"msg":..,"time":..}`) to report why a runtime command failed.
//!
//! This is a few lines of code rather than `tracing` + a subscriber: the runtime is a
//! short-lived process whose start-up time and size are headline figures (docs/design.md).

use std::io::Write;
use std::sync::OnceLock;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

struct Logger {
    file: Option<std::fs::File>,
    format: Format,
    debug: bool,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Configures logging once; later calls are ignored.
pub fn init(path: Option<&str>, format: Format, debug: bool) -> std::io::Result<()> {
    let file = match path {
        Some(p) if !p.is_empty() => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        _ => None,
    };
    let _ = LOGGER.set(Logger {
        file,
        format,
        debug,
    });
    Ok(())
}

/// The log file's descriptor (close-on-exec), if logging goes to a file: a process that
/// closes every inherited descriptor keeps this one, or a later log line would be written to
/// whatever reuses its number.
pub fn file_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    LOGGER.get()?.file.as_ref().map(|f| f.as_raw_fd())
}

fn emit(level: &str, msg: &str) {
    let Some(l) = LOGGER.get() else {
        if level != "debug" {
            eprintln!("rsrun: {level}: {msg}");
        }
        return;
    };
    if level == "debug" && !l.debug {
        return;
    }
    if l.file.is_none() && l.format == Format::Text {
        // Interactive use: plain messages on stderr.
        let _ = writeln!(std::io::stderr(), "rsrun: {level}: {msg}");
        return;
    }
    let line = match l.format {
        Format::Json => {
            let v = serde_json::json!({"level": level, "msg": msg, "time": crate::state::now_rfc3339()});
            format!("{v}\n")
        }
        Format::Text => format!(
            "time=\"{}\" level={level} msg={:?}\n",
            crate::state::now_rfc3339(),
            msg
        ),
    };
    match &l.file {
        Some(f) => {
            let _ = (&*f).write_all(line.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

pub fn error(msg: &str) {
    emit("error", msg);
}

pub fn info(msg: &str) {
    emit("info", msg);
}

pub fn warn(msg: &str) {
    emit("warning", msg);
}

pub fn debug(msg: &str) {
    emit("debug", msg);
}

/// Whether errors go to a log file (then the CLI also prints them to stderr).
pub fn to_file() -> bool {
    LOGGER.get().is_some_and(|l| l.file.is_some())
}
