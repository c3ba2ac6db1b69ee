//! rsrun: an OCI runtime (runtime-spec 1.2) with runc's command line. The library holds
//! the whole runtime; the `rsrun` binary is a thin command-line layer over it.
//!
//! Creating a container forks the calling process: callers must be single-threaded.

pub mod bpf;
pub mod cgroups;
pub mod config;
pub mod dbus;
pub mod error;
pub mod exec;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod lifecycle;
pub mod live;
pub mod log;
pub mod rootfs;
pub mod seal;
pub mod seccomp;
pub mod security;
pub mod signal;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;
pub mod tty;

pub use error::{Error, Result};
pub use exec::ExecOpts;
pub use lifecycle::{CreateOpts, Runtime};
