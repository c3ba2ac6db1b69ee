//! The streaming server: the URLs that the Exec, Attach and PortForward RPCs return, served
//! over HTTP on a loopback address (the kubelet proxies clients to them).
//!
//! Each URL carries a one-time token (random, 32 bytes) that names the request the RPC
//! checked; it expires after `TOKEN_TTL` and is forgotten at first use. An unknown, used or
//! expired token gets 404 and touches nothing.
//!
//! Transports: SPDY/3.1 (an HTTP upgrade; `v4.channel.k8s.io` for exec and attach,
//! `portforward.k8s.io` for port-forward, negotiated with X-Stream-Protocol-Version) and
//! WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io` and their `base64` variants for exec and
//! attach; port-forward as SPDY tunnelled in WebSocket messages, `SPDY/3.1+portforward.k8s.io`,
//! as current clients send it).

mod channel;
mod idle;
mod portforward;
mod session;
use rsrun_cri::spdy;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::api;

/// How long a URL stays usable after the RPC that made it.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Unused streaming URLs kept at most.
pub const MAX_TOKENS: usize = 1000;
/// Connections accepted but not upgraded yet (reading their request) at most: beyond, new
/// ones are closed at once. With the header timeout and buffer bound below, idle or slow
/// clients hold at most this many descriptors and 16 KiB each.
const MAX_PENDING_CONNECTIONS: usize = 1024;
/// How long a client has to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked request, waiting for its client.
#[derive(Clone, Debug)]
pub enum Pending {
    Exec {
        req: api::ExecRequest,
        pod: String,
        /// The container's shim directory (its control socket runs the exec).
        shim_dir: PathBuf,
    },
    Attach {
        req: api::AttachRequest,
        pod: String,
        /// The container's shim directory (its attach socket).
        shim_dir: PathBuf,
    },
    PortForward {
        pod: String,
        /// The pod's pinned network namespace (None: the node's network).
        netns: Option<PathBuf>,
        /// The ports of the request (what a WebSocket client of the channel protocol gets,
        /// two channels each; SPDY clients name theirs in each stream).
        ports: Vec<u16>,
    },
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec { .. } => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
        }
    }

    /// The channels an exec or attach client opens as SPDY streams.
    fn spdy_streams(&self) -> Vec<u8> {
        let (stdin, stdout, stderr, tty) = match self {
            Pending::Exec { req, .. } => (req.stdin, req.stdout, req.stderr, req.tty),
            Pending::Attach { req, .. } => (req.stdin, req.stdout, req.stderr, req.tty),
            Pending::PortForward { .. } => return Vec::new(),
        };
        let mut v = vec![3];
        for (want, ch) in [(stdin, 0), (stdout, 1), (stderr && !tty, 2), (tty, 4)] {
            if want {
                v.push(ch);
            }
        }
        v
    }
}

/// The SPDY subprotocols: remote command version 4 (the one with the exit code in a status),
/// port-forward.
const SPDY_EXEC: &str = "v4.channel.k8s.io";
const SPDY_PORTFORWARD: &str = "portforward.k8s.io";
/// How long an exec or attach connection may stay open after its session ended.
const SESSION_LINGER: std::time::Duration = std::time::Duration::from_secs(5);
const WS_PORTFORWARD: &str = "SPDY/3.1+portforward.k8s.io";

pub struct Server {
    addr: SocketAddr,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
    /// Where console sockets of tty exec sessions are made.
    pub scratch: PathBuf,
    /// An upgraded connection that moves no byte for this long is closed (None: never).
    idle: Option<Duration>,
}

impl Server {
    /// Listens on `addr` (port 0: any free one) and serves in the background.
    pub async fn start(
        addr: &str,
        scratch: PathBuf,
        idle: Option<Duration>,
    ) -> std::io::Result<Arc<Server>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        std::fs::create_dir_all(&scratch)?;
        // Console sockets of the sessions of a server killed while they ran (a session
        // removes its own): none of this server's exists yet.
        for e in std::fs::read_dir(&scratch)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".sock") {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), "remove a stale console socket: {err}");
                }
            }
        }
        let srv = Arc::new(Server {
            addr: listener.local_addr()?,
            tokens: Mutex::new(HashMap::new()),
            scratch,
            idle,
        });
        let s = srv.clone();
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("streaming server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Small frames (a status, a last line) must not wait for the client's delayed
                // ACK: 40 ms per session otherwise (measured in integration/bench/stream-bench.sh).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, "streaming connection: TCP_NODELAY: {e}");
                }
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "streaming connection refused: {MAX_PENDING_CONNECTIONS} are reading their request");
                    continue;
                };
                let s = s.clone();
                // The socket, for the idle limit of an upgraded session (which holds the
                // connection, and with it this descriptor, for as long as it runs).
                let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(s.handle(req, fd, peer).await) }
                    });
                    // A request's headers within HEADER_TIMEOUT and 16 KiB: a client that
                    // trickles or idles is dropped. (One request per connection: `text`.)
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_buf_size(16 * 1024)
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!(%peer, "streaming connection: {e}");
                    }
                    // Upgraded (the session runs on its own) or done.
                    drop(permit);
                });
            }
        });
        tracing::info!(address = %srv.addr, "streaming server");
        Ok(srv)
    }

    /// A one-time URL for `p`; refused while `MAX_TOKENS` unused ones are pending (each holds
    /// its request), as the kubelet's streaming server refuses past 1000 in flight.
    pub fn url(&self, p: Pending) -> Result<String, String> {
        let token = crate::store::new_id();
        let path = p.path();
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        t.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
        if t.len() >= MAX_TOKENS {
            return Err(format!(
                "{MAX_TOKENS} streaming URLs are waiting to be used: try again later"
            ));
        }
        t.insert(token.clone(), (p, now));
        Ok(format!("http://{}/{path}/{token}", self.addr))
    }

    /// The request a token names, forgotten at once; None when unknown or expired.
    fn take(&self, token: &str) -> Option<Pending> {
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (p, at) = t.remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(p)
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        fd: std::os::fd::RawFd,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let pending = match self.take(token) {
            Some(p) if p.path() == kind => p,
            _ => {
                // Not the path: a client may send any number of these, each up to the
                // buffer's size.
                tracing::debug!(
                    kind = ?kind.chars().take(32).collect::<String>(),
                    "streaming: unknown, used or expired token"
                );
                return text(
                    StatusCode::NOT_FOUND,
                    "unknown, used or expired streaming URL",
                );
            }
        };
        let upgrade = header(&req, "upgrade").to_ascii_lowercase();
        tracing::debug!(path = %path, upgrade = %upgrade, headers = ?req.headers(), "streaming request");
        let conn = Conn {
            fd,
            what: format!("{} session of {peer}", pending.path()),
        };
        match upgrade.as_str() {
            "spdy/3.1" => self.upgrade_spdy(req, pending, conn),
            "websocket" => self.upgrade_ws(req, pending, conn),
            _ => text(
                StatusCode::BAD_REQUEST,
                &format!("streaming: upgrade {upgrade:?} is not supported: SPDY/3.1 or WebSocket"),
            ),
        }
    }

    fn upgrade_spdy(
        self: Arc<Self>,
        req: Request<Incoming>,
        pending: Pending,
        c: Conn,
    ) -> Response<Full<Bytes>> {
        let want = match pending {
            Pending::PortForward { .. } => SPDY_PORTFORWARD,
            _ => SPDY_EXEC,
        };
        let offered: Vec<String> = req
            .headers()
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        if !offered.iter().any(|p| p == want) {
            return text(
                StatusCode::FORBIDDEN,
                &format!(
                    "streaming: none of the offered protocols {offered:?} is supported ({want})"
                ),
            );
        }
        let srv = self.clone();
        tokio::spawn(async move {
            let up = match hyper::upgrade::on(req).await {
                Ok(up) => up,
                Err(e) => return tracing::warn!("streaming: upgrade failed: {e}"),
            };
            let config = match pending {
                Pending::PortForward { .. } => portforward::spdy_config(),
                _ => spdy::Config::default(),
            };
            let conn = spdy::Connection::server_with(
                idle::Idle::new(hyper_util::rt::TokioIo::new(up), c.fd, srv.idle, c.what),
                config,
            );
            match pending {
                Pending::PortForward { pod, netns, .. } => {
                    portforward::serve(conn, netns, pod).await
                }
                p => {
                    let want = p.spdy_streams();
                    let keep = conn.clone();
                    match channel::Channels::spdy(conn, &want).await {
                        Ok(ch) => session::run(srv, p, ch).await,
                        Err(e) => tracing::info!("streaming: SPDY session: {e}"),
                    }
                    // The session is over (the client has its status): a client that keeps
                    // the connection open, its streams unfinished, would hold it and its
                    // tasks until the idle limit; it is closed, as the kubelet's handler
                    // closes it, once the client had a moment to read what was sent.
                    // (GOAWAY first, as when the last handle went: a client waiting for the
                    // server's end gets it at once.)
                    keep.goaway();
                    let _ = tokio::time::timeout(SESSION_LINGER, keep.closed()).await;
                    keep.abort();
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("connection", "Upgrade".parse().expect("header"));
        h.insert("upgrade", "SPDY/3.1".parse().expect("header"));
        h.insert(
            "x-stream-protocol-version",
            want.parse().expect("a known protocol name"),
        );
        r
    }

    fn upgrade_ws(
        self: Arc<Self>,
        req: Request<Incoming>,
        pending: Pending,
        c: Conn,
    ) -> Response<Full<Bytes>> {
        let offered = header(&req, "sec-websocket-protocol");
        let port_forward = matches!(pending, Pending::PortForward { .. });
        let proto = if port_forward {
            // SPDY tunnelled in WebSocket (client-go), else the kubelet's channel protocol
            // (v4, binary or base64; binary when no subprotocol is offered).
            let offers: Vec<&str> = offered.split(',').map(str::trim).collect();
            [WS_PORTFORWARD, ws::PF_PROTOCOLS[0], ws::PF_PROTOCOLS[1]]
                .into_iter()
                .find(|p| offers.contains(p))
                .or(offered.trim().is_empty().then_some(""))
        } else {
            ws::choose(&offered).map(|p| p.name)
        };
        let Some(proto_name) = proto else {
            let ours = if port_forward {
                format!("{WS_PORTFORWARD}, {}", ws::PF_PROTOCOLS.join(", "))
            } else {
                ws::PROTOCOLS.join(", ")
            };
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "streaming: none of the offered subprotocols {offered:?} is supported ({ours})"
                ),
            );
        };
        let key = header(&req, "sec-websocket-key");
        if key.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "streaming: Sec-WebSocket-Key is missing",
            );
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let srv = self.clone();
        tokio::spawn(async move {
            let up = match hyper::upgrade::on(req).await {
                Ok(up) => up,
                Err(e) => return tracing::warn!("streaming: upgrade failed: {e}"),
            };
            let stream = tokio_tungstenite::WebSocketStream::from_raw_socket(
                idle::Idle::new(hyper_util::rt::TokioIo::new(up), c.fd, srv.idle, c.what),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                Some(ws::config()),
            )
            .await;
            match pending {
                Pending::PortForward { pod, netns, .. } if proto_name == WS_PORTFORWARD => {
                    let conn = spdy::Connection::server_with(
                        portforward::tunnel(stream),
                        portforward::spdy_config(),
                    );
                    portforward::serve(conn, netns, pod).await
                }
                Pending::PortForward { pod, netns, ports } => {
                    let proto = ws::Proto {
                        name: proto_name,
                        v5: false,
                        base64: proto_name.contains("base64"),
                    };
                    portforward::serve_channels(ws::Channels::new(stream, proto), ports, netns, pod)
                        .await
                }
                p => {
                    let proto = ws::choose(proto_name).expect("chosen above");
                    session::run(
                        srv,
                        p,
                        channel::Channels::Ws(Box::new(ws::Channels::new(stream, proto))),
                    )
                    .await
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("upgrade", "websocket".parse().expect("header"));
        h.insert("connection", "Upgrade".parse().expect("header"));
        h.insert(
            "sec-websocket-accept",
            accept.parse().expect("base64 is a valid header value"),
        );
        if !proto_name.is_empty() {
            h.insert(
                "sec-websocket-protocol",
                proto_name.parse().expect("a known protocol name"),
            );
        }
        r
    }
}

/// The connection a request came on: its socket (for the idle limit) and a name for logs.
struct Conn {
    fd: std::os::fd::RawFd,
    what: String,
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A plain answer that ends the connection: every URL is used once, so a connection serves
/// one request (an upgrade, or this), and a client cannot keep one open after its answer.
/// (Not hyper's keep_alive(false), which would mark the 101 of an upgrade `Connection:
/// close` too, and WebSocket clients refuse that handshake.)
fn text(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server {
            addr: "127.0.0.1:1".parse().unwrap(),
            tokens: Mutex::new(HashMap::new()),
            scratch: PathBuf::new(),
            idle: None,
        }
    }

    #[test]
    fn tokens_are_one_time_and_expire() {
        let s = server();
        let p = Pending::Exec {
            req: Default::default(),
            pod: "p".into(),
            shim_dir: PathBuf::new(),
        };
        let url = s.url(p.clone()).unwrap();
        assert!(url.starts_with("http://127.0.0.1:1/exec/"), "{url}");
        let token = url.rsplit('/').next().unwrap().to_string();
        assert_eq!(token.len(), 64);
        assert!(s.take(&token).is_some());
        assert!(s.take(&token).is_none(), "a token is usable once");
        assert!(s.take("not-a-token").is_none());
        // An expired one is refused.
        let url = s.url(p.clone()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        s.tokens.lock().unwrap().get_mut(&token).unwrap().1 -= TOKEN_TTL;
        assert!(s.take(&token).is_none(), "an expired token is refused");
        // At most MAX_TOKENS wait to be used; expired ones make room.
        for _ in 0..MAX_TOKENS {
            s.url(p.clone()).unwrap();
        }
        assert!(
            s.url(p.clone()).is_err(),
            "more than {MAX_TOKENS} unused URLs"
        );
        for (_, (_, at)) in s.tokens.lock().unwrap().iter_mut() {
            *at -= TOKEN_TTL;
        }
        assert!(s.url(p).is_ok(), "expired URLs still counted");
    }
}
