//! Library error type. The CRI server maps the variants to gRPC codes:
//! `NotFound` → NOT_FOUND, `Unauthorized` → UNAUTHENTICATED/PERMISSION_DENIED,
//! `DeadlineExceeded` → DEADLINE_EXCEEDED, `Cancelled` → CANCELLED, `InvalidReference` /
//! `InvalidConfig` → INVALID_ARGUMENT, `LimitExceeded` → RESOURCE_EXHAUSTED, `Stalled` →
//! UNAVAILABLE, the rest → UNKNOWN/INTERNAL.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid registry configuration: {0}")]
    InvalidConfig(String),

    #[error("not found: {0}")]
    NotFound(String),

    #[error("unauthorized: {0}")]
    Unauthorized(String),

    #[error("deadline exceeded while {0}")]
    DeadlineExceeded(String),

    #[error("cancelled while {0}")]
    Cancelled(String),

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    #[error("invalid manifest {what}: {reason}")]
    InvalidManifest { what: String, reason: String },

    /// `reference` says what was searched: "index NAME" or "image NAME (one platform)".
    #[error("no manifest for platform {wanted} in {reference} (available: {available})")]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: String,
    },

    #[error("refused layer {layer}: entry {entry:?}: {reason}")]
    HostileLayer {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("layer {layer}: {reason}")]
    BadLayer { layer: String, reason: String },

    #[error("{context} {}: {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("corrupt store metadata {}: {reason}", path.display())]
    CorruptStore { path: PathBuf, reason: String },

    /// A bound on what a pull may write was reached (layer or image expansion, declared
    /// sizes, free space on the store's filesystem).
    #[error("{what}: {reason}")]
    LimitExceeded { what: String, reason: String },

    /// No byte arrived for the pull's progress timeout.
    #[error("no data received for {secs}s while {what} (progress timeout)")]
    Stalled { what: String, secs: u64 },

    #[error("image {0} is in use by container rootfs {1}")]
    InUse(String, String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }
    /// True for the errors a caller may retry on another endpoint (mirror fallback).
    pub(crate) fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            Error::Registry { .. } | Error::NotFound(_) | Error::Stalled { .. }
        )
    }
}

/// Extension to attach a path and an action to io errors.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(context, path, e))
    }
}
