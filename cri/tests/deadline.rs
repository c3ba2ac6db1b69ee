//! A client's deadline (grpc-timeout) that expires during a call is answered
//! DEADLINE_EXCEEDED, as gRPC servers do (critest's "public image should timeout if
//! requested"); tonic alone answers CANCELLED. The request is sent with a bare HTTP/2
//! client: tonic's client would enforce the deadline itself and answer for the server.

mod common;

use bytes::Bytes;
use prost::Message;
use rsrun_cri::api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_deadline_is_deadline_exceeded() {
    // A registry that accepts connections and never answers: the pull waits on it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.incoming().take(4).flatten().collect::<Vec<_>>());
    let srv = common::start("deadline").await;

    let io = tokio::net::UnixStream::connect(&srv.sock).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let msg = api::PullImageRequest {
        image: Some(api::ImageSpec {
            image: format!("127.0.0.1:{port}/never/answers:1"),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let req = hyper::Request::post("http://localhost/runtime.v1.ImageService/PullImage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    // An error is a trailers-only response: the status is in the headers.
    let code = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let log = std::fs::read_to_string(srv.dir.join("cri.log")).unwrap_or_default();
    assert_eq!(
        code,
        Some(tonic::Code::DeadlineExceeded as i32),
        "{:?}; server log: {log}",
        resp.headers()
    );
    drop(srv);
    drop(held);
}
