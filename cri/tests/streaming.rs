//! The streaming server against bad clients, through the built rsrun-cri: a port-forward URL
//! of a host-network pod (no image needed) into a TCP server of this test. A used token and a
//! made-up one get 404; garbage after the SPDY upgrade, an oversized frame, a client gone in
//! the middle of a transfer and a client that never reads while the pod side keeps sending:
//! each session is reset or ends, the server keeps serving (a good session works after each),
//! and its descriptors and threads come back to what they were (read from /proc).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rsrun_cri::api;

mod common;
use rsrun_cri::spdy::{Decoder, Encoder, Frame, Headers, FLAG_FIN, MAX_FRAME_LENGTH};

fn count(dir: &str, pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{dir}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// An HTTP/1.1 upgrade to SPDY/3.1 for port-forward: the status line, and the connection.
fn upgrade(url: &str) -> (String, TcpStream) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (status, s)
}

fn frame(enc: &mut Encoder, f: Frame) -> Vec<u8> {
    let mut out = Vec::new();
    enc.encode(&f, &mut out).unwrap();
    out
}

fn syn(enc: &mut Encoder, id: u32, kind: &str, port: u16) -> Vec<u8> {
    let mut h = Headers::new();
    h.insert("streamtype", kind);
    h.insert("port", &port.to_string());
    h.insert("requestid", "0");
    frame(
        enc,
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: h,
        },
    )
}

/// A good session: the echo server answers through the forward.
fn echo_through(url: &str, port: u16) {
    let (status, mut s) = upgrade(url);
    assert!(status.contains(" 101 "), "{status}");
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", port)).unwrap();
    s.write_all(&syn(&mut enc, 3, "data", port)).unwrap();
    s.write_all(&frame(
        &mut enc,
        Frame::Data {
            stream_id: 3,
            flags: 0,
            data: bytes::Bytes::from_static(b"ping-through"),
        },
    ))
    .unwrap();
    // Read until the echo shows up in the server's frames.
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    let mut b = [0u8; 4096];
    while Instant::now() < end && !got.windows(12).any(|w| w == b"ping-through") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    assert!(
        got.windows(12).any(|w| w == b"ping-through"),
        "no echo through the port-forward"
    );
}

/// Reads the server's frames until `done` says so (or 10 s pass); returns them all.
fn frames_until(s: &mut TcpStream, done: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
    frames_within(s, Duration::from_secs(10), done)
}

fn frames_within(
    s: &mut TcpStream,
    within: Duration,
    done: impl Fn(&[Frame]) -> bool,
) -> Vec<Frame> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut dec = Decoder::new(MAX_FRAME_LENGTH, 1 << 20);
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    let end = Instant::now() + within;
    let mut b = [0u8; 4096];
    while Instant::now() < end && !done(&frames) {
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        if done(&frames) {
            break;
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
    frames
}

/// The bytes of stream `id`'s DATA frames, in order.
fn payload(frames: &[Frame], id: u32) -> Vec<u8> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Data {
                stream_id, data, ..
            } if *stream_id == id => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Did stream `id` end (a frame with FIN)?
fn ended(frames: &[Frame], id: u32) -> bool {
    frames.iter().any(|f| match f {
        Frame::Data {
            stream_id, flags, ..
        }
        | Frame::SynReply {
            stream_id, flags, ..
        } => *stream_id == id && flags & FLAG_FIN != 0,
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_server_survives_bad_clients() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (pod namespaces)");
        return;
    }
    let srv = common::start("streaming").await;
    let sock = srv.sock.clone();
    let pid = srv.child.id();
    let mut c = common::client(&sock).await;
    let config = common::host_pod("stream");
    let pod = c
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;

    // The pod side: an echo server, and a source that never stops sending.
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let source = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let source_port = source.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in source.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let chunk = vec![b'x'; 64 * 1024];
                while s.write_all(&chunk).is_ok() {}
            });
        }
    });
    // One that says bye and closes; one that reads to the end and then holds its connection
    // without a word (an application that ignores the EOF it was sent).
    let bye = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bye_port = bye.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in bye.incoming().flatten() {
            let _ = s.write_all(b"bye");
        }
    });
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (heard_tx, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in silent.incoming().flatten() {
            let mut b = [0u8; 4096];
            while let Ok(n) = s.read(&mut b) {
                if n == 0 {
                    break;
                }
                let _ = heard_tx.send(());
            }
            held.push(s);
        }
    });
    let url = || {
        let mut c = c.clone();
        let pod = pod.clone();
        async move {
            c.port_forward(api::PortForwardRequest {
                pod_sandbox_id: pod,
                port: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .url
        }
    };

    // Warm up (the server's worker threads and the first session's allocations), then the
    // baseline.
    echo_through(&url().await, echo_port);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds0, threads0) = (count("fd", pid), count("task", pid));

    // Half a pair (an error stream whose data stream never comes): given up after the
    // kubelet's 30 s, with a message on its error stream (looked at last).
    let (_, mut half) = upgrade(&url().await);
    let opened = Instant::now();
    half.write_all(&syn(&mut Encoder::new(), 1, "error", echo_port))
        .unwrap();

    // A token works once; a made-up one never.
    let u = url().await;
    echo_through(&u, echo_port);
    let (status, _) = upgrade(&u);
    assert!(status.contains(" 404 "), "a used token: {status}");
    let made_up = format!("{}/{}", u.rsplit_once('/').unwrap().0, "0".repeat(64));
    assert!(upgrade(&made_up).0.contains(" 404 "));

    // Garbage after the upgrade: the connection is closed.
    let (status, mut s) = upgrade(&url().await);
    assert!(status.contains(" 101 "), "{status}");
    s.write_all(b"\x80\x07\x00\x01garbage that is no SPDY frame at all")
        .unwrap();
    let mut b = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(_) if Instant::now() > end => panic!("the server kept a garbage connection open"),
            Ok(_) => {}
        }
    }
    echo_through(&url().await, echo_port);

    // A frame header announcing 16 MiB, then nothing: reset, not a 16 MiB buffer.
    let (_, mut s) = upgrade(&url().await);
    s.write_all(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]).unwrap();
    drop(s);

    // A client gone in the middle: streams open, data in flight, then the socket drops.
    let (_, mut s) = upgrade(&url().await);
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", echo_port)).unwrap();
    s.write_all(&syn(&mut enc, 3, "data", echo_port)).unwrap();
    s.write_all(&frame(
        &mut enc,
        Frame::Data {
            stream_id: 3,
            flags: 0,
            data: bytes::Bytes::from(vec![b'y'; 32 * 1024]),
        },
    ))
    .unwrap();
    drop(s);

    // The pod closes first, the client never ends its data stream: the server ends the data
    // stream after the pod's bytes, and the error stream soon after (client-go closes its
    // local connection only then: waiting for the client's end would hang both).
    let (_, mut s) = upgrade(&url().await);
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", bye_port)).unwrap();
    s.write_all(&syn(&mut enc, 3, "data", bye_port)).unwrap();
    let frames = frames_until(&mut s, |f| ended(f, 1));
    let got = payload(&frames, 3);
    assert_eq!(got, b"bye", "{frames:?}");
    assert!(
        ended(&frames, 3) && ended(&frames, 1),
        "the data and error streams did not end after the pod closed: {frames:?}"
    );
    drop(s);

    // A client gone while the pod's application ignores the EOF it gets: the pod's
    // connection is closed all the same (counted with the descriptors below).
    let (_, mut s) = upgrade(&url().await);
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", silent_port))
        .unwrap();
    s.write_all(&syn(&mut enc, 3, "data", silent_port)).unwrap();
    s.write_all(&frame(
        &mut enc,
        Frame::Data {
            stream_id: 3,
            flags: 0,
            data: bytes::Bytes::from_static(b"hello"),
        },
    ))
    .unwrap();
    heard
        .recv_timeout(Duration::from_secs(10))
        .expect("the pod's application never got the client's bytes");
    drop(s);

    // A data stream with no valid port: its error stream says so and both end (the
    // session goes on); it was reset alone, and the error stream left open.
    let (_, mut s) = upgrade(&url().await);
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", 0)).unwrap();
    s.write_all(&syn(&mut enc, 3, "data", 0)).unwrap();
    let frames = frames_until(&mut s, |f| ended(f, 1) && ended(f, 3));
    let said = payload(&frames, 1);
    assert!(
        String::from_utf8_lossy(&said).contains("invalid port \"0\""),
        "{frames:?}"
    );
    assert!(ended(&frames, 1) && ended(&frames, 3), "{frames:?}");
    drop(s);

    // A client that never reads while the pod side sends without end: its data stream stalls
    // (bounded), the server stays responsive, and the session ends when the client goes.
    let (_, mut s) = upgrade(&url().await);
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", source_port))
        .unwrap();
    s.write_all(&syn(&mut enc, 3, "data", source_port)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mem = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = mem
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        rss_kb < 200 * 1024,
        "the server holds {rss_kb} KiB for a client that never reads"
    );
    echo_through(&url().await, echo_port);
    drop(s);

    let frames = frames_within(
        &mut half,
        Duration::from_secs(60)
            .saturating_sub(opened.elapsed())
            .max(Duration::from_secs(5)),
        |f| ended(f, 1),
    );
    assert!(
        ended(&frames, 1)
            && frames
                .iter()
                .any(|f| matches!(f, Frame::Data { stream_id: 1, data, .. }
                if String::from_utf8_lossy(data).contains("timed out waiting"))),
        "half a pair was not given up: {frames:?}"
    );
    drop(half);

    // Everything those sessions held is given back.
    let end = Instant::now() + Duration::from_secs(20);
    let (mut fds, mut threads) = (0, 0);
    while Instant::now() < end {
        fds = count("fd", pid);
        threads = count("task", pid);
        if fds <= fds0 && threads <= threads0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        fds <= fds0 && threads <= threads0,
        "descriptors {fds0} -> {fds}, threads {threads0} -> {threads}"
    );
    assert!(srv.child.id() == pid && Path::new(&format!("/proc/{pid}")).exists());

    c.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

/// `stream_idle_timeout`: a port-forward session whose bytes stop (the pod's application
/// silent, the client too) is closed by the server, with the pod's connection; one that
/// moves bytes is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_streaming_connection_is_closed() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (pod namespaces)");
        return;
    }
    let srv = common::start_with("stream-idle", "stream_idle_timeout = \"2s\"\n").await;
    let pid = srv.child.id();
    let mut c = common::client(&srv.sock).await;
    let pod = c
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(common::host_pod("stream-idle")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    // The pod's application: reads, never answers, and tells when its peer closed.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut s in silent.incoming().flatten() {
            let mut b = [0u8; 4096];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            let _ = closed_tx.send(());
        }
    });
    let url = c
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let fds0 = count("fd", pid);
    let (status, mut s) = upgrade(&url);
    assert!(status.contains(" 101 "), "{status}");
    let mut enc = Encoder::new();
    s.write_all(&syn(&mut enc, 1, "error", port)).unwrap();
    s.write_all(&syn(&mut enc, 3, "data", port)).unwrap();
    // Bytes every second for 4 s: twice the limit, never idle for it.
    for _ in 0..4 {
        s.write_all(&frame(
            &mut enc,
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: bytes::Bytes::from_static(b"tick"),
            },
        ))
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        closed_rx.try_recv().is_err(),
        "a session that moved bytes was closed"
    );
    // Then silence: the server closes the connection (the client reads its end), and the
    // pod's connection (its application reads EOF).
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    closed_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the pod's connection stayed open");
    drop(s);
    let mut fds = 0;
    for _ in 0..100 {
        fds = count("fd", pid);
        if fds <= fds0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fds <= fds0, "descriptors {fds0} -> {fds}");
    c.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

/// Port-forward over WebSocket in the kubelet's channel protocol (v4, binary and base64; what
/// clients other than client-go send through the API server): the request's ports in order,
/// two channels each, each channel opened with its port; data both ways; a port whose pod
/// side refuses says so on its error channel; a pod side that closes does not end the other
/// ports; the session ends when the client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_channel_protocol_port_forward() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (pod namespaces)");
        return;
    }
    let srv = common::start("wspf").await;
    let mut c = common::client(&srv.sock).await;
    let pod = c
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(common::host_pod("wspf")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let bye = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bye_port = bye.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in bye.incoming().flatten() {
            let _ = s.write_all(b"bye");
        }
    });
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let connect = |ports: Vec<u16>, proto: &'static str| {
        let (mut c, pod) = (c.clone(), pod.clone());
        async move {
            let url = c
                .port_forward(api::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: ports.iter().map(|p| i32::from(*p)).collect(),
                })
                .await
                .unwrap()
                .into_inner()
                .url;
            let mut req = url
                .replacen("http://", "ws://", 1)
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("sec-websocket-protocol", proto.parse().unwrap());
            let host = url
                .strip_prefix("http://")
                .and_then(|r| r.split('/').next())
                .unwrap()
                .to_string();
            let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
            let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().unwrap()),
                Some(proto)
            );
            ws
        }
    };
    // Binary: (channel, payload) of each message, until `done` or 10 s.
    let mut ws = connect(vec![echo_port, bye_port, closed_port], "v4.channel.k8s.io").await;
    let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
    let has = |got: &[(u8, Vec<u8>)], ch: u8, what: &[u8]| {
        got.iter()
            .filter(|(c, _)| *c == ch)
            .flat_map(|(_, d)| d.clone())
            .collect::<Vec<u8>>()
            .windows(what.len().max(1))
            .any(|w| w == what)
    };
    ws.send(Message::binary([&[0u8][..], b"ping-ws"].concat()))
        .await
        .unwrap();
    let closed_msg = format!("port-forward to port {closed_port}");
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end
        && !(has(&got, 0, b"ping-ws")
            && has(&got, 2, b"bye")
            && has(&got, 5, closed_msg.as_bytes()))
    {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if !b.is_empty() => got.push((b[0], b[1..].to_vec())),
            Ok(Some(Ok(_))) => {}
            other => panic!("the session ended early: {other:?}; got {got:?}"),
        }
    }
    // Each channel's first message is its port.
    for (ch, port) in [
        (0, echo_port),
        (1, echo_port),
        (2, bye_port),
        (3, bye_port),
        (4, closed_port),
        (5, closed_port),
    ] {
        let first = got.iter().find(|(c, _)| *c == ch).map(|(_, d)| d.clone());
        assert_eq!(
            first,
            Some(port.to_le_bytes().to_vec()),
            "channel {ch}: {got:?}"
        );
    }
    assert!(has(&got, 0, b"ping-ws"), "no echo: {got:?}");
    assert!(has(&got, 2, b"bye"), "{got:?}");
    assert!(has(&got, 5, closed_msg.as_bytes()), "{got:?}");
    // The echo port still works after the others ended.
    ws.send(Message::binary([&[0u8][..], b"again"].concat()))
        .await
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !has(&got, 0, b"again") {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if !b.is_empty() => got.push((b[0], b[1..].to_vec())),
            Ok(Some(Ok(_))) => {}
            other => panic!("the session ended: {other:?}"),
        }
    }
    assert!(has(&got, 0, b"again"), "{got:?}");
    ws.close(None).await.unwrap();

    // base64: text messages, the channel as a digit.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ws = connect(vec![echo_port], "v4.base64.channel.k8s.io").await;
    ws.send(Message::text(format!("0{}", b64.encode(b"hi-b64"))))
        .await
        .unwrap();
    let mut text = Vec::new();
    let want = format!("0{}", b64.encode(b"hi-b64"));
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !text.contains(&want) {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => text.push(t.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("the base64 session ended: {other:?}; got {text:?}"),
        }
    }
    let port = format!("0{}", b64.encode(echo_port.to_le_bytes()));
    assert_eq!(text.first(), Some(&port), "{text:?}");
    assert!(text.contains(&want), "{text:?}");
    ws.close(None).await.unwrap();

    c.stop_pod_sandbox(api::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    c.remove_pod_sandbox(api::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}
