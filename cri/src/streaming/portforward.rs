//! Port-forward (`portforward.k8s.io` over SPDY/3.1, also tunnelled in WebSocket messages
//! as `SPDY/3.1+portforward.k8s.io`): the client opens a pair of streams per connection,
//! `error` and `data`, with the same `requestID` and the `port`; the server connects to that
//! port on the pod's loopback, from inside the pod's network namespace, and copies both ways.
//! A connection that fails is reported on the pair's error stream; the session goes on.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::spdy;

/// Serves one port-forward session until the client goes away. `netns`: the pod's pinned
/// network namespace (None: the node's network).
pub async fn serve(conn: spdy::Connection, netns: Option<PathBuf>, pod: String) {
    // Streams of a pair arrive one after the other: the first waits for its partner.
    let mut errors: HashMap<String, spdy::SendStream> = HashMap::new();
    let mut datas: HashMap<String, (spdy::Stream, u16)> = HashMap::new();
    tracing::debug!(pod = %pod, "port-forward session");
    while let Some(s) = conn.accept().await {
        let h = s.headers();
        tracing::debug!(pod = %pod, headers = ?h, "port-forward stream");
        let (Some(kind), Some(id)) = (h.get("streamtype"), h.get("requestid")) else {
            tracing::info!(pod = %pod, "port-forward: a stream without streamType or requestID");
            s.reset(spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        };
        let (kind, id) = (kind.to_string(), id.to_string());
        let port = h.get("port").and_then(|p| p.parse::<u16>().ok());
        if s.reply(&[]).await.is_err() {
            break;
        }
        match (kind.as_str(), port) {
            ("error", _) => {
                let (_r, w) = s.split();
                errors.insert(id.clone(), w);
            }
            ("data", Some(p)) if p > 0 => {
                datas.insert(id.clone(), (s, p));
            }
            _ => {
                tracing::info!(pod = %pod, kind, "port-forward: bad stream (type or port)");
                s.reset(spdy::RstStatus::PROTOCOL_ERROR);
                continue;
            }
        }
        if !(errors.contains_key(&id) && datas.contains_key(&id)) {
            continue;
        }
        if let (Some(err), Some((data, port))) = (errors.remove(&id), datas.remove(&id)) {
            let ns = netns.clone();
            let pod = pod.clone();
            tokio::spawn(async move { forward(data, err, port, ns, pod).await });
        }
    }
}

async fn forward(
    data: spdy::Stream,
    mut err: spdy::SendStream,
    port: u16,
    netns: Option<PathBuf>,
    pod: String,
) {
    let tcp = match connect(port, netns).await {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(pod = %pod, port, "port-forward: {e}");
            let _ = err
                .write(format!("port-forward to port {port} of pod {pod}: {e}").as_bytes())
                .await;
            let _ = err.close().await;
            return;
        }
    };
    tracing::debug!(pod = %pod, port, "port-forward connected");
    let (mut tr, mut tw) = tcp.into_split();
    let (mut dr, mut dw) = data.split();
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match dr.read(&mut buf).await {
                Ok(0) => break,
                Err(e) => {
                    tracing::debug!("port-forward: client side: {e}");
                    break;
                }
                Ok(n) => {
                    if tw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Err(e) = dw.write(&buf[..n]).await {
                        tracing::debug!("port-forward: writing to the client: {e}");
                        break;
                    }
                }
            }
        }
        let _ = dw.close().await;
    };
    tokio::join!(up, down);
    tracing::debug!(pod = %pod, port, "port-forward connection done");
    let _ = err.close().await;
}

/// A TCP connection to `port` on the pod's loopback (IPv4, else IPv6). A socket belongs to the
/// network namespace it is made in: a thread of its own enters the pod's to make the two
/// sockets (it ends there, never reused) and is gone at once; the connects are asynchronous,
/// so a pod port that never answers holds no thread of the server (each connection held a
/// blocking-pool thread and a thread of its own for up to 20 s).
async fn connect(port: u16, netns: Option<PathBuf>) -> std::io::Result<tokio::net::TcpStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::OwnedFd;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = (|| -> std::io::Result<(OwnedFd, Option<OwnedFd>)> {
            if let Some(ns) = &netns {
                let f = std::fs::File::open(ns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            }
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let v4 = socket(AddressFamily::Inet, SockType::Stream, flags, None)?;
            // No IPv6 in the pod (disabled): IPv4 only.
            let v6 = socket(AddressFamily::Inet6, SockType::Stream, flags, None).ok();
            Ok((v4, v6))
        })();
        let _ = tx.send(made);
    });
    let (v4, v6) = rx
        .await
        .map_err(|_| std::io::Error::other("the port-forward thread ended"))??;
    let t = Duration::from_secs(10);
    let to = |fd: OwnedFd, addr: SocketAddr| async move {
        let s = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        tokio::time::timeout(t, s.connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {addr}"))
            })?
    };
    match to(v4, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(s) => Ok(s),
        Err(e4) => match v6 {
            Some(v6) => to(v6, SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
                .await
                .map_err(|_| e4),
            None => Err(e4),
        },
    }
}

/// SPDY carried in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`): a byte pipe
/// whose other end copies to and from the messages.
pub fn tunnel(
    ws: tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let stop = match m {
                Message::Binary(b) => wr.write_all(&b).await.is_err(),
                Message::Close(_) => true,
                _ => false,
            };
            if stop {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    ours
}
