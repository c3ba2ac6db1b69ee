//! Client deadlines answered as DEADLINE_EXCEEDED. tonic enforces a request's `grpc-timeout`
//! itself but answers CANCELLED when it expires; gRPC (and grpc-go's servers, containerd's)
//! say DEADLINE_EXCEEDED, and critest checks it for PullImage. This layer sits inside tonic's
//! and ends the call first, with the right code.
//!
//! A call that ends early (its deadline, or the client's RST_STREAM: the kubelet cancels a
//! pod's sync when the pod is deleted) drops the handler's future wherever it was waiting. For
//! the calls that change objects that would leave them half-changed: a StartContainer dropped
//! after the shim started the container but before its record said so left a running
//! container reported CREATED, never stopped by the kubelet. Those calls run as tasks of
//! their own, to completion, whatever becomes of the request (as a Go server's handler runs
//! on after its context ends); the client gets its answer (or its deadline) as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;

/// The calls that change objects: run to completion once begun. PullImage is not one: a
/// pull dropped midway keeps nothing (the image store commits each blob and the image
/// whole), and the client's deadline stops the download (image_service.rs). ExecSync is not either: its
/// process ends when the call does.
const RUN_TO_COMPLETION: &[&str] = &[
    "/runtime.v1.RuntimeService/RunPodSandbox",
    "/runtime.v1.RuntimeService/StopPodSandbox",
    "/runtime.v1.RuntimeService/RemovePodSandbox",
    "/runtime.v1.RuntimeService/CreateContainer",
    "/runtime.v1.RuntimeService/StartContainer",
    "/runtime.v1.RuntimeService/StopContainer",
    "/runtime.v1.RuntimeService/RemoveContainer",
    "/runtime.v1.RuntimeService/UpdateContainerResources",
    "/runtime.v1.RuntimeService/UpdatePodSandboxResources",
    "/runtime.v1.RuntimeService/ReopenContainerLog",
    "/runtime.v1.RuntimeService/UpdateRuntimeConfig",
    "/runtime.v1.ImageService/RemoveImage",
];

#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let path = req.uri().path().to_string();
        let call = self.inner.call(req);
        let fut: Self::Future = if RUN_TO_COMPLETION.contains(&path.as_str()) {
            // Dropping the handle leaves the task running.
            let task = tokio::spawn(call);
            let path = path.clone();
            Box::pin(async move {
                task.await.unwrap_or_else(|e| {
                    tracing::error!(call = %path, "the call's task failed: {e}");
                    Ok(tonic::Status::internal(format!("{path}: {e}")).into_http())
                })
            })
        } else {
            Box::pin(call)
        };
        Box::pin(async move {
            let Some(limit) = limit else {
                return fut.await;
            };
            // tonic's timer started just before this one: a millisecond less ends the call
            // here first, also within the timer wheel's millisecond.
            match tokio::time::timeout(limit.saturating_sub(Duration::from_millis(1)), fut).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(call = %path, ?limit, "the client's deadline expired");
                    Ok(tonic::Status::deadline_exceeded(format!(
                        "{path}: the client's deadline ({limit:?}) expired"
                    ))
                    .into_http())
                }
            }
        })
    }
}

/// A `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_to_completion_names_real_calls() {
        let proto = include_str!("../proto/api.proto");
        for path in RUN_TO_COMPLETION {
            let (service, method) = path
                .strip_prefix("/runtime.v1.")
                .and_then(|p| p.split_once('/'))
                .unwrap();
            let body = proto
                .split_once(&format!("service {service} {{"))
                .map(|(_, rest)| rest.split("\n}").next().unwrap_or(""))
                .unwrap_or_else(|| panic!("{path}: no service {service}"));
            let rpc = body
                .split_once(&format!("rpc {method}("))
                .map(|(_, rest)| rest.split('\n').next().unwrap_or(""))
                .unwrap_or_else(|| panic!("{path}: no rpc {method} in service {service}"));
            // Unary: a stream would be answered before it ends.
            assert!(!rpc.contains("stream "), "{path} streams: {rpc}");
        }
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("120S"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789S", "5x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
