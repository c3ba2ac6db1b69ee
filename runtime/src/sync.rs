//! The parent/init synchronisation channel: a SOCK_SEQPACKET socketpair carrying one-byte
//! tagged messages, so each message arrives whole and EOF means the other side is gone.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::error::{Context, Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Parent → init: the namespaces are set up (ID maps written); payload: the init's PID
    /// as the host sees it. The init sets up what does not depend on its cgroup meanwhile.
    Go(i32),
    /// Parent → init (create): the init is in its cgroups.
    Joined,
    /// Init → parent: run the prestart and createRuntime hooks now.
    Hooks,
    /// Parent → init: the hooks succeeded.
    HooksDone,
    /// Init → parent: the container is created and waits for start.
    Ready,
    /// Parent (run) → init: start now.
    Start,
    /// Parent (create) → init: the state is saved; wait for `start` now. Until this
    /// arrives the init exits on EOF (the parent died before anyone could find it).
    Committed,
    /// Either way: a failure, with its message.
    Error(String),
    /// Intermediate → parent: the init is this child of mine (its PID as the host sees
    /// it), PID 1 of the PID namespace made after joining a user namespace; I exit now.
    Init(i32),
}

pub fn pair() -> Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ctx("socketpair")
}

pub fn send(fd: impl AsFd, m: &Msg) -> Result<()> {
    let mut buf = Vec::with_capacity(16);
    match m {
        Msg::Go(pid) => {
            buf.push(1);
            buf.extend_from_slice(&pid.to_le_bytes());
        }
        Msg::Hooks => buf.push(2),
        Msg::HooksDone => buf.push(3),
        Msg::Ready => buf.push(4),
        Msg::Start => buf.push(5),
        Msg::Committed => buf.push(7),
        Msg::Joined => buf.push(9),
        Msg::Init(pid) => {
            buf.push(8);
            buf.extend_from_slice(&pid.to_le_bytes());
        }
        Msg::Error(s) => {
            buf.push(6);
            buf.extend_from_slice(s.as_bytes());
        }
    }
    let n = nix::unistd::write(fd, &buf).ctx("write to sync socket")?;
    if n != buf.len() {
        return Err(Error::Init("short write on sync socket".into()));
    }
    Ok(())
}

/// Receives one message; `Ok(None)` on EOF.
pub fn recv(fd: impl AsFd) -> Result<Option<Msg>> {
    let mut buf = vec![0u8; 8192];
    let mut reset = false;
    let n = loop {
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            // A peer that exited with our last message unread resets the connection, and
            // that error is reported before what it sent last (its failure, say): read on.
            Err(nix::errno::Errno::ECONNRESET) if !reset => reset = true,
            Err(e) => return Err(Error::os("read sync socket", e)),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let body = &buf[1..n];
    Ok(Some(match buf[0] {
        1 if body.len() == 4 => Msg::Go(i32::from_le_bytes([body[0], body[1], body[2], body[3]])),
        2 => Msg::Hooks,
        3 => Msg::HooksDone,
        4 => Msg::Ready,
        5 => Msg::Start,
        6 => Msg::Error(String::from_utf8_lossy(body).into_owned()),
        7 => Msg::Committed,
        8 if body.len() == 4 => Msg::Init(i32::from_le_bytes([body[0], body[1], body[2], body[3]])),
        9 => Msg::Joined,
        t => {
            return Err(Error::Init(format!(
                "unexpected message {t} on sync socket"
            )))
        }
    }))
}
