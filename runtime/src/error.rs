//! The runtime's error type. Every error names what failed and on which path or ID.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{context}: {err}")]
    Os {
        context: String,
        // Not a `source`: the message already includes it (no doubled text in chains).
        err: std::io::Error,
    },
    /// The bundle's config.json is malformed or asks for something invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A command-line argument or other caller input is invalid.
    #[error("{0}")]
    Invalid(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    /// The operation is not allowed in the container's current state.
    #[error("container {id} is {status}: {what}")]
    State {
        id: String,
        status: String,
        what: String,
    },
    /// A lifecycle hook failed.
    #[error("{kind} hook {path} {msg}")]
    Hook {
        kind: String,
        path: String,
        msg: String,
    },
    /// The container's init process reported a failure during setup.
    #[error("container init: {0}")]
    Init(String),
    /// A feature the config asks for that this runtime does not implement.
    #[error("not supported: {0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn os(context: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Error::Os {
            context: context.into(),
            err: source.into(),
        }
    }

    /// The errno of an OS error, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { err, .. } => err.raw_os_error(),
            _ => None,
        }
    }
}

/// Adds context to io and nix errors.
pub trait Context<T> {
    fn ctx<C: Display>(self, context: C) -> Result<T>;
    fn with_ctx<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn ctx<C: Display>(self, context: C) -> Result<T> {
        self.map_err(|e| Error::os(context.to_string(), e))
    }
    fn with_ctx<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::os(f().to_string(), e))
    }
}

impl<T> Context<T> for std::result::Result<T, nix::Error> {
    fn ctx<C: Display>(self, context: C) -> Result<T> {
        self.map_err(|e| Error::os(context.to_string(), std::io::Error::from(e)))
    }
    fn with_ctx<C: Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error::os(f().to_string(), std::io::Error::from(e)))
    }
}
