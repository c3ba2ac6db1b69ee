//! Exec and attach sessions over the channel protocol (ws.rs).
//!
//! Exec asks the container's rsrun-shim (this server never forks through the library) to
//! run the process with pipes whose other ends stay here, or with a terminal whose master
//! the runtime hands over on a console socket; the shim reports the exit code. Attach bridges to the container's rsrun-shim attach socket. Output goes to the
//! client through one bounded queue: a client that stops reading stalls the exec'd process
//! (its pipe fills), never the server; for attach the shim drops a client that far behind.
//! A client that goes away closes the session's stdin (an exec'd process then sees EOF) or
//! its terminal (the process gets the hangup) and nothing else.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::channel::{Channels, Writer};
use super::ws::In;
use super::{Pending, Server};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// The largest packet the shim's attach socket takes whole (its kind byte included;
/// docs/shim.md): stdin goes in packets no larger.
const SHIM_ATTACH_MAX: usize = 32 * 1024;

pub async fn run(srv: Arc<Server>, p: Pending, ch: Channels) {
    match p {
        Pending::Exec { req, pod, shim_dir } => {
            let span = tracing::info_span!("exec", container = %req.container_id, pod = %pod);
            let _e = span.enter();
            tracing::info!(cmd = ?req.cmd, tty = req.tty, "exec session");
            drop(_e);
            exec(srv, req, shim_dir, ch).await
        }
        Pending::Attach { req, pod, shim_dir } => {
            tracing::info!(container = %req.container_id, pod = %pod, "attach session");
            attach(req, shim_dir, ch).await
        }
        Pending::PortForward { .. } => unreachable!("port-forward has sessions of its own"),
    }
}

/// The v4/v5 status on the error channel: success, a non-zero exit code, or an error.
pub fn status(code: Result<i32, String>) -> Vec<u8> {
    let v = match code {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(n) => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {n}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]},
        }),
        Err(e) => {
            json!({"metadata": {}, "status": "Failure", "message": e, "reason": "InternalError"})
        }
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The terminal size of a resize message: (rows, cols).
fn resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    Some((
        u16::try_from(v["Height"].as_u64()?).ok()?,
        u16::try_from(v["Width"].as_u64()?).ok()?,
    ))
}

/// The lowest writable channel gets an empty message: the client's sign that the session
/// is up. False when the client is already gone.
async fn announce(w: &mut Writer, stdout: bool, stderr: bool) -> bool {
    let first = if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    };
    w.send(first, &[]).await.is_ok()
}

/// Sends everything queued on `rx` to the client, in order, until the queue closes.
async fn forward(mut w: Writer, mut rx: mpsc::Receiver<(u8, Vec<u8>)>) -> Writer {
    while let Some((ch, data)) = rx.recv().await {
        if let Err(e) = w.send(ch, &data).await {
            tracing::info!("streaming client gone: {e}");
            // Keep draining so that the pumps never block on a dead client.
            while rx.recv().await.is_some() {}
            break;
        }
    }
    w
}

/// Copies `r` into the queue as channel `ch` until EOF.
async fn pump(mut r: impl tokio::io::AsyncRead + Unpin, ch: u8, tx: mpsc::Sender<(u8, Vec<u8>)>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((ch, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// A terminal's master side, read and written without holding a thread: through tokio's
/// file type, a process that does not read its input held one of the runtime's blocking
/// threads for as long as it ran (its terminal full), and enough of them stop every RPC.
struct Pty(tokio::io::unix::AsyncFd<std::fs::File>);

impl Pty {
    fn new(f: std::fs::File) -> std::io::Result<Pty> {
        // On the open file description: every descriptor of this master is non-blocking.
        let fl = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL)?;
        let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(fl))?;
        Ok(Pty(register(
            f,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )?))
    }
}

impl tokio::io::AsyncRead for Pty {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Read;
        loop {
            let mut guard = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for Pty {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        loop {
            let mut guard = std::task::ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(r) => return std::task::Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A pipe as (the server's end, the process's end): the server's end non-blocking, the
/// process's as a process expects it (blocking).
fn pipe_pair(server_reads: bool) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok(if server_reads { (r, w) } else { (w, r) })
}

/// Fails the session with `msg` on the error channel.
async fn fail(mut w: Writer, msg: String) {
    let _ = w.send(ERROR, &status(Err(msg))).await;
    w.close().await;
}

async fn exec(srv: Arc<Server>, req: crate::api::ExecRequest, shim_dir: PathBuf, ch: Channels) {
    let (mut w, mut r) = ch.split();
    if !announce(&mut w, req.stdout, req.stderr).await {
        return;
    }
    // With a terminal, the runtime hands its master over a console socket of ours; without
    // one, the process's stdio are pipes whose other ends stay here.
    let console = if req.tty {
        let path = srv
            .scratch
            .join(format!("{}.sock", &crate::store::new_id()[..16]));
        // Through the directory's descriptor when the state dir makes the path longer than
        // a socket address holds (as the shims' sockets).
        let bound = rsrun::lifecycle::short_socket_path(&path)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|(short, _dirfd)| tokio::net::UnixListener::bind(short));
        match bound {
            Ok(l) => Some((l, path)),
            Err(e) => return fail(w, format!("console socket {}: {e}", path.display())).await,
        }
    } else {
        None
    };
    let pipes = if req.tty {
        None
    } else {
        match (pipe_pair(false), pipe_pair(true), pipe_pair(true)) {
            (Ok(i), Ok(o), Ok(e)) => Some([i, o, e]),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return fail(w, format!("exec pipes: {e}")).await
            }
        }
    };
    let shim_req = json!({
        "op": "exec",
        "args": req.cmd,
        "tty": req.tty,
        // As containerd: a process on a terminal has TERM=xterm (`kubectl exec -it … sh`).
        "env": if req.tty { vec!["TERM=xterm"] } else { vec![] },
        "console_socket": console.as_ref().map(|(_, p)| p.to_string_lossy().into_owned()),
    });
    // The process's ends go to the shim with the request (and are closed here after it).
    let (mine, theirs): (Vec<OwnedFd>, Vec<OwnedFd>) =
        pipes.map(|ps| ps.into_iter().unzip()).unwrap_or_default();
    let started = tokio::task::spawn_blocking(move || {
        let raw: Vec<_> = theirs.iter().map(|f| f.as_raw_fd()).collect();
        crate::container::exec_in_shim(&shim_dir, &shim_req, &raw)
    })
    .await;
    let conn = match started {
        Ok(Ok((conn, head))) if head["ok"] == true => conn,
        other => {
            if let Some((_, p)) = &console {
                let _ = std::fs::remove_file(p);
            }
            let msg = match other {
                Ok(Ok((_, head))) => head["error"].as_str().unwrap_or("exec failed").to_string(),
                Ok(Err(e)) => format!("the container's monitor: {e}"),
                Err(e) => format!("exec task: {e}"),
            };
            return fail(w, msg).await;
        }
    };
    // The terminal's master, which the runtime sent before the shim answered.
    let master: Option<OwnedFd> = match &console {
        Some((l, p)) => {
            let got =
                match tokio::time::timeout(std::time::Duration::from_secs(10), l.accept()).await {
                    Ok(Ok((s, _))) => recv_master(&s)
                        .await
                        .map_err(|e| format!("console socket: {e}")),
                    Ok(Err(e)) => Err(format!("console socket: {e}")),
                    Err(_) => Err("console socket: no terminal within 10 s".to_string()),
                };
            let _ = std::fs::remove_file(p);
            match got {
                Ok(fd) => Some(fd),
                Err(e) => return fail(w, e).await,
            }
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel::<(u8, Vec<u8>)>(8);
    let writer = tokio::spawn(forward(w, rx));
    let mut pumps = Vec::new();
    let mut stdin: Option<Box<dyn tokio::io::AsyncWrite + Unpin + Send>> = None;
    let has_master = master.is_some();
    // The client's resizes go through a descriptor of the master of their own: the output
    // pump's is closed when no stdout is asked for (or once it ends), and its number may
    // then be another file's, another session's terminal.
    let sizer: Option<OwnedFd> = master.as_ref().and_then(|m| m.try_clone().ok());
    if let Some(m) = master {
        let out = std::fs::File::from(m);
        match out.try_clone() {
            Ok(input) => {
                if req.stdin {
                    match Pty::new(input) {
                        Ok(p) => stdin = Some(Box::new(p)),
                        Err(e) => tracing::warn!("exec terminal: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("exec terminal: {e}"),
        }
        if req.stdout {
            match Pty::new(out) {
                Ok(p) => pumps.push(tokio::spawn(pump(p, STDOUT, tx.clone()))),
                Err(e) => tracing::warn!("exec terminal: {e}"),
            }
        }
    } else {
        let mut mine = mine.into_iter();
        let (i, o, e) = (mine.next(), mine.next(), mine.next());
        if let Some(i) = i.filter(|_| req.stdin) {
            match tokio::net::unix::pipe::Sender::from_owned_fd(i) {
                Ok(s) => stdin = Some(Box::new(s)),
                Err(e) => tracing::warn!("exec stdin: {e}"),
            }
        }
        // Both outputs are read to their end (what is not asked for is dropped), so that
        // the process never blocks on a full pipe nobody reads.
        for (fd, ch, want) in [(o, STDOUT, req.stdout), (e, STDERR, req.stderr)] {
            let Some(fd) = fd else { continue };
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(rx) if want => pumps.push(tokio::spawn(pump(rx, ch, tx.clone()))),
                Ok(mut rx) => pumps.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut rx, &mut tokio::io::sink()).await;
                })),
                Err(e) => tracing::warn!("exec output: {e}"),
            }
        }
    }
    drop(tx);
    // With a terminal, the output pump holds the master too: a client gone must close it,
    // or the terminal never hangs up and an interactive shell runs on (containerd closes
    // the console when its session ends).
    let holds_master: Vec<_> = if has_master {
        pumps.iter().map(|p| p.abort_handle()).collect()
    } else {
        Vec::new()
    };
    // Client → process, until the process ends.
    let input = async {
        // After a bad message the client's input is no longer taken; its messages are read
        // only to learn when it goes (a connection's error is followed by its end).
        let mut refused = false;
        let mut sizer = sizer;
        while let Some(m) = r.recv().await {
            tracing::trace!("exec: client message {m:?}");
            if refused {
                continue;
            }
            match m {
                Ok(In::Data(STDIN, data)) => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data).await.is_err() || s.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(In::Data(RESIZE, data)) => {
                    if let (Some(fd), Some((rows, cols))) = (&sizer, resize(&data)) {
                        let _ = rsrun::sys::set_winsize(fd.as_raw_fd(), rows, cols);
                    }
                }
                Ok(In::Closed(STDIN)) => stdin = None,
                Ok(other) => tracing::debug!("exec: ignored client message {other:?}"),
                Err(e) => {
                    tracing::info!(
                        "exec: bad client message or connection error, input closed: {e}"
                    );
                    refused = true;
                    stdin = None;
                }
            }
        }
        // The client is gone: its stdin closes, and a terminal's master with the pump that
        // reads it (the process gets the hangup, SIGHUP).
        stdin = None;
        drop(sizer.take());
        for p in &holds_master {
            p.abort();
        }
        std::future::pending::<()>().await
    };
    // The shim's second line: the exit code, once the process has ended.
    let ended = async {
        let _ = conn.set_nonblocking(true);
        let mut conn = tokio::net::UnixStream::from_std(conn).map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        conn.read_to_end(&mut line)
            .await
            .map_err(|e| format!("the container's monitor: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(line.trim_ascii()).map_err(|_| {
            "the container's monitor ended the exec without its exit code".to_string()
        })?;
        match (v["exit_code"].as_i64(), v["error"].as_str()) {
            (_, Some(e)) => Err(e.to_string()),
            (Some(n), None) => Ok(n as i32),
            (None, None) => Err(format!("the container's monitor: {v}")),
        }
    };
    let result = tokio::select! {
        r = ended => r,
        _ = input => unreachable!(),
    };
    // The process's stdin closes with the session.
    drop(stdin);
    for p in pumps {
        if result.is_ok() {
            let _ = p.await;
        } else {
            // No exit code: the shim is gone (or the container exited); whatever still holds
            // the process's output ends must not hold this session.
            p.abort();
        }
    }
    let mut w = match writer.await {
        Ok(w) => w,
        Err(_) => return,
    };
    let _ = w.send(ERROR, &status(result)).await;
    w.close().await;
}

/// The descriptor rsrun sends over the console socket.
async fn recv_master(s: &tokio::net::UnixStream) -> std::io::Result<OwnedFd> {
    loop {
        s.readable().await?;
        match rsrun::sys::recv_fd(s.as_raw_fd()) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn attach(req: crate::api::AttachRequest, shim_dir: std::path::PathBuf, ch: Channels) {
    let (mut w, mut r) = ch.split();
    // A blocking connect (a shim whose backlog is full and that does not accept would hold
    // the thread): off the async workers, which serve every RPC.
    let sock = match tokio::task::spawn_blocking(move || connect_attach(&shim_dir)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(w, format!("the container's monitor: {e}")).await,
        Err(e) => return fail(w, format!("the container's monitor: {e}")).await,
    };
    if !announce(&mut w, req.stdout, req.stderr).await {
        return;
    }
    // Packets to the shim are sent without blocking a thread: a container that does not read
    // its stdin fills the shim's queue and the socket, and the session then waits here (a
    // task, no thread), while the output and the exit still come through.
    let fds = sock.try_clone().and_then(|r| {
        Ok((
            register(r, tokio::io::Interest::READABLE)?,
            register(sock.try_clone()?, tokio::io::Interest::WRITABLE)?,
        ))
    });
    let (rfd, wfd) = match fds {
        Ok(f) => f,
        Err(e) => return fail(w, format!("the container's monitor: {e}")).await,
    };
    // A client with stdin says so first, with an empty stdin packet: its going away is then
    // the end of its input (the container's stdin closes with stdin_once, as containerd's
    // does). (Empty stdin, not a kind of its own: a shim started before this server, which
    // outlives upgrades, takes it too.)
    if req.stdin && send_packet(&wfd, &[0u8]).await.is_err() {
        return fail(w, "the container's monitor went away".into()).await;
    }
    // The shim's packets to the client, until the container exits, the shim goes or the
    // client does (a send fails); `done` says so to the input side below.
    let (done_tx, mut done) = tokio::sync::watch::channel(false);
    let (want_out, want_err) = (req.stdout, req.stderr);
    let output = tokio::spawn(async move {
        let mut exited = false;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let pkt = match recv_packet(&rfd, &mut buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(&buf[..n]),
            };
            match pkt {
                Some([k @ (1 | 2), data @ ..]) => {
                    let want = if *k == 1 { want_out } else { want_err };
                    if want && w.send(*k, data).await.is_err() {
                        break;
                    }
                }
                Some([3, ..]) => {
                    exited = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        let _ = done_tx.send(true);
        (w, exited)
    });
    // The client's input to the shim, until the output side ends or the client goes. A
    // packet the shim cannot take yet is waited for, or given up when the output side ends.
    let mut ended = false;
    while !ended {
        let m = tokio::select! {
            _ = done.wait_for(|d| *d) => break,
            m = r.recv() => m,
        };
        let mut packets: Vec<Vec<u8>> = Vec::new();
        match m {
            Some(Ok(In::Data(STDIN, data))) if req.stdin => {
                // In packets the shim takes whole (Go clients send 32 KiB at a time).
                for chunk in data.chunks(SHIM_ATTACH_MAX - 1) {
                    let mut p = Vec::with_capacity(chunk.len() + 1);
                    p.push(0u8);
                    p.extend_from_slice(chunk);
                    packets.push(p);
                }
            }
            Some(Ok(In::Data(RESIZE, data))) => {
                if let Some((rows, cols)) = resize(&data) {
                    let mut p = vec![4u8];
                    p.extend_from_slice(&rows.to_le_bytes());
                    p.extend_from_slice(&cols.to_le_bytes());
                    packets.push(p);
                }
            }
            Some(Ok(In::Closed(STDIN))) => packets.push(vec![5u8]),
            Some(Ok(other)) => tracing::debug!("attach: ignored client message {other:?}"),
            Some(Err(e)) => {
                tracing::info!("attach: bad client message, session reset: {e}");
                break;
            }
            // The client detached: the container carries on.
            None => break,
        }
        for p in packets {
            tokio::select! {
                _ = done.wait_for(|d| *d) => { ended = true; break }
                res = send_packet(&wfd, &p) => if res.is_err() { ended = true; break },
            }
        }
    }
    // Ends the output side too (the shim's socket is shut down: its reads end).
    let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    let Ok((mut w, exited)) = output.await else {
        return;
    };
    // The container's exit ends the attach successfully whatever its code, as the kubelet's
    // streaming server reports an attach (`kubectl attach` and `run -i` do not fail with
    // the container's exit code).
    if exited {
        let _ = w.send(ERROR, &status(Ok(0))).await;
    }
    w.close().await;
}

/// `fd` in the runtime's reactor, for `interest`.
fn register<T: std::os::fd::AsRawFd>(
    fd: T,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T` is an owned descriptor (OwnedFd, File) that the AsyncFd then owns: it stays
    // open, the same descriptor, until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(|e| e.into_parts().1)
}

/// Receives one packet from the shim's attach socket, without blocking a thread.
async fn recv_packet(
    fd: &tokio::io::unix::AsyncFd<OwnedFd>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| {
            nix::sys::socket::recv(f.as_raw_fd(), buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)
                .map_err(std::io::Error::from)
        }) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Sends one packet to the shim's attach socket once it has room, without blocking a thread.
async fn send_packet(fd: &tokio::io::unix::AsyncFd<OwnedFd>, pkt: &[u8]) -> std::io::Result<()> {
    loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| {
            nix::sys::socket::send(
                f.as_raw_fd(),
                pkt,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .map_err(std::io::Error::from)
        }) {
            Ok(r) => return r.map(drop),
            Err(_would_block) => continue,
        }
    }
}

fn connect_attach(shim_dir: &std::path::Path) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let (path, _dirfd) = rsrun::lifecycle::short_socket_path(&shim_dir.join("attach"))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(&path)?)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn statuses() {
        let ok: serde_json::Value = serde_json::from_slice(&super::status(Ok(0))).unwrap();
        assert_eq!(ok["status"], "Success");
        let bad: serde_json::Value = serde_json::from_slice(&super::status(Ok(3))).unwrap();
        assert_eq!(bad["reason"], "NonZeroExitCode");
        assert_eq!(bad["details"]["causes"][0]["message"], "3");
        assert_eq!(
            super::resize(br#"{"Width": 80, "Height": 24}"#),
            Some((24, 80))
        );
        assert_eq!(super::resize(b"{}"), None);
    }
}
