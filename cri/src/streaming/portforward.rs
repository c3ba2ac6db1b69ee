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

/// A TCP connection to `port` on the pod's loopback (IPv4, else IPv6), made by a thread that
/// enters the pod's network namespace (the socket stays in it).
async fn connect(port: u16, netns: Option<PathBuf>) -> std::io::Result<tokio::net::TcpStream> {
    let s = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
        let go = move || -> std::io::Result<std::net::TcpStream> {
            if let Some(ns) = &netns {
                let f = std::fs::File::open(ns)?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            }
            let t = Duration::from_secs(10);
            let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v4, t)
                .or_else(|e4| std::net::TcpStream::connect_timeout(&v6, t).map_err(|_| e4))
        };
        // A thread of its own: it ends in the pod's namespace, never reused.
        std::thread::spawn(go)
            .join()
            .map_err(|_| std::io::Error::other("the port-forward thread panicked"))?
    })
    .await
    .map_err(std::io::Error::other)??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
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
