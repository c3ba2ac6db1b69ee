//! Port-forward (`portforward.k8s.io` over SPDY/3.1, also tunnelled in WebSocket messages
//! as `SPDY/3.1+portforward.k8s.io`): the client opens a pair of streams per connection,
//! `error` and `data`, with the same `requestID` and the `port`; the server connects to that
//! port on the pod's loopback, from inside the pod's network namespace, and copies both ways.
//! A connection that fails is reported on the pair's error stream; the session goes on.
//! A pair whose second stream does not come within 30 s is given up (reported the same way).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::spdy;

/// How long the first stream of a pair waits for its partner (the kubelet's stream
/// creation timeout): then the pair is given up, with a message on its error stream.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// The most one read from a pod's connection takes, and the largest DATA frame sent: a bulk
/// transfer's cost is per frame in the client (moby/spdystream allocates, queues and hands
/// over each frame between goroutines) and per read and write in the server.
const CHUNK: usize = 256 * 1024;

/// A read's room to begin with, and again after a read that did not fill it: an idle or
/// interactive connection holds this much, a bulk one grows to [`CHUNK`].
const CHUNK_MIN: usize = 32 * 1024;

/// A port-forward connection's SPDY settings: frames of up to [`CHUNK`], and room for a few
/// of them queued for the writer.
pub fn spdy_config() -> spdy::Config {
    spdy::Config {
        max_send_frame_size: CHUNK,
        max_queued_bytes: 4 * CHUNK,
        ..spdy::Config::default()
    }
}

/// The streams of one request ID that have arrived, and since when.
struct Half {
    error: Option<spdy::SendStream>,
    /// The data stream and its port (an error saying what is wrong with the header).
    data: Option<(spdy::Stream, Result<u16, String>)>,
    since: Instant,
}

/// Serves one port-forward session until the client goes away. `netns`: the pod's pinned
/// network namespace (None: the node's network).
pub async fn serve(conn: spdy::Connection, netns: Option<PathBuf>, pod: String) {
    // Streams of a pair arrive one after the other: the first waits for its partner.
    let mut halves: HashMap<String, Half> = HashMap::new();
    tracing::debug!(pod = %pod, "port-forward session");
    loop {
        let first = halves.values().map(|h| h.since).min();
        let s = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = tokio::time::sleep_until((first.unwrap_or_else(Instant::now) + PAIR_TIMEOUT).into()),
                if first.is_some() =>
            {
                let now = Instant::now();
                let late: Vec<String> = halves
                    .iter()
                    .filter(|(_, h)| now.duration_since(h.since) >= PAIR_TIMEOUT)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in late {
                    let h = halves.remove(&id).expect("listed above");
                    tracing::info!(pod = %pod, request = %id, "port-forward: the pair's other stream never came");
                    give_up(h, format!("timed out waiting for the other stream of request {id}")).await;
                }
                continue;
            }
        };
        let h = s.headers();
        tracing::debug!(pod = %pod, headers = ?h, "port-forward stream");
        let (Some(kind), Some(id)) = (h.get("streamtype"), h.get("requestid")) else {
            tracing::info!(pod = %pod, "port-forward: a stream without streamType or requestID");
            s.reset(spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        };
        let (kind, id) = (kind.to_string(), id.to_string());
        let port = match h.get("port") {
            None => Err("no port header".to_string()),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("invalid port {p:?}")),
            },
        };
        if !matches!(kind.as_str(), "error" | "data") {
            tracing::info!(pod = %pod, kind, "port-forward: a stream of unknown type");
            s.reset(spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        }
        // A stream the client reset before our reply is that stream's end, not the
        // session's (every forwarded connection would go with it).
        if let Err(e) = s.reply(&[]).await {
            tracing::debug!(pod = %pod, "port-forward: reply to stream {id}: {e}");
            continue;
        }
        let half = halves.entry(id.clone()).or_insert_with(|| Half {
            error: None,
            data: None,
            since: Instant::now(),
        });
        let again = if kind == "error" {
            half.error.replace(s.split().1).is_some()
        } else {
            half.data.replace((s, port)).is_some()
        };
        if again {
            // As the kubelet: a second stream of a type for one request ends the request.
            let h = halves.remove(&id).expect("inserted above");
            tracing::info!(pod = %pod, request = %id, kind, "port-forward: a second stream of one type");
            give_up(h, format!("request {id}: a second {kind} stream")).await;
            continue;
        }
        if half.error.is_some() && half.data.is_some() {
            let h = halves.remove(&id).expect("inserted above");
            let (Some(err), Some((data, port))) = (h.error, h.data) else {
                continue;
            };
            let ns = netns.clone();
            let pod = pod.clone();
            tokio::spawn(async move { forward(data, err, port, ns, pod).await });
        }
    }
}

/// Ends a pair that will not be forwarded: `msg` on its error stream, its data stream closed.
async fn give_up(h: Half, msg: String) {
    if let Some(mut e) = h.error {
        let _ = e.write(msg.as_bytes()).await;
        let _ = e.close().await;
    }
    if let Some((d, _)) = h.data {
        let (_r, mut w) = d.split();
        let _ = w.close().await;
    }
}

/// After one direction of a forwarded connection ends, how long the other has to follow
/// before the pair is ended (containerd's grace, after socat's): a pod that closes its end
/// must close the client's too (client-go closes its local connection only once the error
/// stream has ended), and a client that is gone must not leave the pod's connection open
/// behind an application that ignores the EOF it was sent.
const LINGER: Duration = Duration::from_secs(1);

async fn forward(
    data: spdy::Stream,
    mut err: spdy::SendStream,
    port: Result<u16, String>,
    netns: Option<PathBuf>,
    pod: String,
) {
    let connected = match port {
        Ok(port) => connect(port, netns)
            .await
            .map(|t| (t, port))
            .map_err(|e| format!("port-forward to port {port} of pod {pod}: {e}")),
        Err(e) => Err(format!("port-forward to pod {pod}: {e}")),
    };
    let (tcp, port) = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(pod = %pod, "{e}");
            let _ = err.write(e.as_bytes()).await;
            let _ = err.close().await;
            // Ended as the kubelet ends it (FIN), not reset.
            let (_r, mut w) = data.split();
            let _ = w.close().await;
            return;
        }
    };
    tracing::debug!(pod = %pod, port, "port-forward connected");
    let (mut tr, mut tw) = tcp.into_split();
    let (mut dr, mut dw) = data.split();
    {
        // The bytes are not copied on their way through: the client's DATA payloads go to
        // the pod as they arrived, and what is read from the pod is sent as it was read.
        let up = async {
            loop {
                match dr.read_chunk().await {
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("port-forward: client side: {e}");
                        break;
                    }
                    Ok(Some(chunk)) => {
                        if tw.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tw.shutdown().await;
        };
        let down = async {
            let mut buf = bytes::BytesMut::new();
            let mut room = CHUNK_MIN;
            loop {
                buf.reserve(room);
                let offered = buf.capacity() - buf.len();
                match tr.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        room = if n == offered {
                            (room * 2).min(CHUNK)
                        } else {
                            CHUNK_MIN
                        };
                        if let Err(e) = dw.write_bytes(buf.split().freeze()).await {
                            tracing::debug!("port-forward: writing to the client: {e}");
                            break;
                        }
                    }
                }
            }
            let _ = dw.close().await;
        };
        tokio::pin!(up, down);
        tokio::select! {
            _ = &mut up => {
                let _ = tokio::time::timeout(LINGER, &mut down).await;
            }
            _ = &mut down => {
                let _ = tokio::time::timeout(LINGER, &mut up).await;
            }
        }
    }
    // The pod's connection closes; the client's data stream ends (FIN, as the kubelet's
    // Close; already sent when the pod's side ended), what the client still sends is
    // dropped; then the error stream ends, empty.
    drop((tr, tw));
    let _ = dw.close().await;
    drop(dr);
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
    // Builder, not thread::spawn: out of threads is this connection's error, not a panic.
    std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
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
        })?;
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

/// The most ports of one channel-protocol session (their channel numbers fit a byte, also
/// as base64's ASCII digit).
const MAX_CHANNEL_PORTS: usize = 100;

/// A port-forward session of the kubelet's WebSocket channel protocol (v4): for the i-th port
/// of the request, channel 2i carries its data both ways and 2i+1 its errors, and each
/// channel's first message is the port (16 bits, little-endian). The protocol has no end of
/// a channel: the session ends, the connection closed, once every port's connection is done
/// (its pod side closed, or the client gone).
pub async fn serve_channels(
    ch: super::ws::Channels,
    ports: Vec<u16>,
    netns: Option<PathBuf>,
    pod: String,
) {
    use tokio::sync::mpsc;
    let (mut w, mut r) = ch.split();
    // Two channels a port, each numbered in one byte (base64: `'0' + n` in ASCII).
    if ports.is_empty() || ports.len() > MAX_CHANNEL_PORTS {
        tracing::info!(pod = %pod, ports = ports.len(), "port-forward: a WebSocket session needs 1 to {MAX_CHANNEL_PORTS} ports");
        w.close().await;
        return;
    }
    // One writer: what every port's pump sends, in order.
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Vec<u8>)>(16);
    let writer = tokio::spawn(async move {
        while let Some((c, data)) = out_rx.recv().await {
            if w.send(c, &data).await.is_err() {
                break;
            }
        }
        w.close().await;
    });
    let mut to_pod = Vec::new();
    let mut pumps = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for c in [data_ch, err_ch] {
            let _ = out_tx.send((c, port.to_le_bytes().to_vec())).await;
        }
        // One message at a time (as the kubelet's pipe per channel): a pod that does not
        // read holds the client's reads (TCP's back-pressure), and at most a message or two
        // (up to ws::MAX_MESSAGE each) wait in memory per port.
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(1);
        to_pod.push(in_tx);
        let (out, netns, pod) = (out_tx.clone(), netns.clone(), pod.clone());
        pumps.spawn(async move {
            channel_pump(port, data_ch, err_ch, in_rx, out, netns, pod).await;
        });
    }
    drop(out_tx);
    // The client's messages to their ports, until it is gone or every port is done.
    loop {
        tokio::select! {
            m = r.recv() => match m {
                Some(Ok(super::ws::In::Data(c, data))) => {
                    let tx = (c % 2 == 0).then(|| to_pod.get(usize::from(c / 2))).flatten();
                    match tx {
                        Some(tx) => {
                            // A port already done drops what comes for it.
                            let _ = tx.send(data).await;
                        }
                        None => tracing::debug!(pod = %pod, "port-forward: a message on channel {c} (ignored)"),
                    }
                }
                Some(Ok(super::ws::In::Closed(_))) => {}
                Some(Err(e)) => {
                    tracing::info!(pod = %pod, "port-forward: {e}");
                    break;
                }
                None => break,
            },
            done = pumps.join_next() => {
                if done.is_none() {
                    break;
                }
            }
        }
    }
    // The client gone: every pod connection gets its EOF (and its linger); then the writer
    // ends with the last pump, and closes the connection.
    drop(to_pod);
    while pumps.join_next().await.is_some() {}
    let _ = writer.await;
}

/// One port of a channel-protocol session: its connection in the pod, and the bytes both
/// ways until one side ends (the other has [`LINGER`] to follow).
async fn channel_pump(
    port: u16,
    data_ch: u8,
    err_ch: u8,
    mut from_client: tokio::sync::mpsc::Receiver<Vec<u8>>,
    out: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
    netns: Option<PathBuf>,
    pod: String,
) {
    let tcp = match connect(port, netns).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("port-forward to port {port} of pod {pod}: {e}");
            tracing::info!(pod = %pod, "{msg}");
            let _ = out.send((err_ch, msg.into_bytes())).await;
            return;
        }
    };
    let (mut tr, mut tw) = tcp.into_split();
    let up = async {
        while let Some(data) = from_client.recv().await {
            if tw.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = tw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK_MIN];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send((data_ch, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                    if n == buf.len() && buf.len() < CHUNK {
                        buf.resize(buf.len() * 2, 0);
                    }
                }
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut up => {
            let _ = tokio::time::timeout(LINGER, &mut down).await;
        }
        _ = &mut down => {
            let _ = tokio::time::timeout(LINGER, &mut up).await;
        }
    }
}

/// SPDY carried in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`): a byte pipe
/// whose other end copies to and from the messages.
pub fn tunnel(ws: tokio_tungstenite::WebSocketStream<super::ws::Io>) -> tokio::io::DuplexStream {
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
