//! Container events (GetContainerEvents, the kubelet's evented PLEG): one event per
//! transition of a container or a pod sandbox (created, started, stopped, deleted), with the
//! pod's status and its containers' statuses at that moment, sent to every subscriber.
//!
//! Transitions the server makes itself are sent as it makes them. A container's own exit
//! happens in its shim: a watcher looks for new exit records (or shims gone without one) once
//! a second, so an exit is reported at most a second late, also one that happened while the
//! server was down (at its first look after a start).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::api;
use crate::container;
use crate::runtime_service::Runtime;
use crate::sandbox;

/// Events kept for a subscriber that reads slowly; one that falls further behind misses
/// the oldest (and the stream says so in the log).
const BACKLOG: usize = 1024;

pub struct Events {
    tx: broadcast::Sender<api::ContainerEventResponse>,
    /// Containers whose STOPPED event was sent (each is sent once).
    stopped: std::sync::Mutex<HashSet<String>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            stopped: Default::default(),
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<api::ContainerEventResponse> {
        self.tx.subscribe()
    }

    /// True the first time it is called for `id`: its STOPPED event is to be sent.
    pub fn first_stop(&self, id: &str) -> bool {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
    }

    /// Forgets a removed container.
    pub fn forget(&self, id: &str) {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

impl Runtime {
    /// Sends an event about `id` (a container, or the pod sandbox itself) of pod `pod`.
    pub(crate) async fn emit(&self, id: &str, pod: &str, kind: api::ContainerEventType) {
        let sb = self.sandboxes.lock().await.items.get(pod).cloned();
        self.emit_for(id, pod, sb, kind).await
    }

    /// As `emit`, with the pod's record given (the last one of a pod being removed).
    pub(crate) async fn emit_for(
        &self,
        id: &str,
        pod: &str,
        sb: Option<crate::store::SandboxRecord>,
        kind: api::ContainerEventType,
    ) {
        if self.events.tx.receiver_count() == 0 {
            return;
        }
        let containers_statuses = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.sandbox_id == pod && c.complete)
            .map(container::status)
            .collect();
        let ev = api::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: crate::store::now_ns(),
            pod_sandbox_status: sb.as_ref().map(sandbox::status),
            containers_statuses,
        };
        tracing::debug!(container = id, pod, event = ?kind, "event");
        let _ = self.events.tx.send(ev);
    }
}

/// Reports the exits that shims recorded, as STOPPED events, once each.
pub async fn watch_exits(rt: Arc<Runtime>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let recs: Vec<crate::store::ContainerRecord> = rt
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.complete && c.started_at != 0)
            .cloned()
            .collect();
        rt.notice_pause_exits().await;
        for r in &recs {
            // Exited: an exit record, or a shim gone without one (reported as lost).
            let (st, exit) = container::state(r);
            if exit.as_ref().is_some_and(|e| e["lost"] == true) && container::lost_pending(&r.id) {
                rt.persist_lost(r).await;
            }
            // Only while its record is there, checked with the claim under the containers'
            // lock: a RemoveContainer that got in first (and sent STOPPED and DELETED, then
            // forgot the id) must get no STOPPED after its DELETED, nor the id kept forever.
            let first = st == api::ContainerState::ContainerExited as i32 && {
                let t = rt.containers.lock().await;
                t.items.contains_key(&r.id) && rt.events.first_stop(&r.id)
            };
            if first {
                rt.emit(
                    &r.id,
                    &r.sandbox_id,
                    api::ContainerEventType::ContainerStoppedEvent,
                )
                .await;
            }
        }
    }
}

impl Runtime {
    /// Ends the container and writes down the lost exit of `r` (its shim died without a
    /// record; `container::persist_lost`), under the container's lock and only while its
    /// record is still there: a RemoveContainer that got in first has deleted the exit record
    /// with the container, and it must not return.
    async fn persist_lost(&self, r: &crate::store::ContainerRecord) {
        let _g = self.lock_object(&r.id).await;
        if !self.containers.lock().await.items.contains_key(&r.id) {
            return;
        }
        let (r, rt) = (r.clone(), self.rsrun());
        let done = tokio::task::spawn_blocking(move || {
            container::persist_lost(&rt, &r).map_err(|e| (r.id.clone(), r.exit_file.clone(), e))
        })
        .await;
        if let Ok(Err((id, path, e))) = done {
            tracing::error!(container = %id, "exit record {}: {e}", path.display());
        }
    }

    /// Ready pods whose pause process (PID 1 of their PID namespace, or the maker of their
    /// user namespace) exited, or whose pause's shim is gone: their namespace is dead, so
    /// they are not ready any more (the kubelet makes the pod again), as containerd marks a
    /// sandbox whose task exited.
    async fn notice_pause_exits(&self) {
        let pods = self.ready_pods().await;
        for sb in pods.into_iter().filter(|s| !s.pause_id.is_empty()) {
            let p = container::paths(&self.state, &sb.pause_id);
            let pause = crate::store::ContainerRecord {
                id: sb.pause_id.clone(),
                exit_file: p.exit_file,
                shim_dir: p.shim_dir,
                complete: true,
                pid: 1,
                started_at: 1,
                ..Default::default()
            };
            if container::state(&pause).0 != api::ContainerState::ContainerExited as i32 {
                continue;
            }
            // Under the pod's lock, as it is now; a request at it (StopPodSandbox) has it:
            // the next tick looks again, the exit watcher does not wait behind it.
            let Some(_g) = self.try_lock_object(&sb.id) else {
                continue;
            };
            let mut t = self.sandboxes.lock().await;
            let Some(mut now) = t.items.get(&sb.id).filter(|s| s.ready).cloned() else {
                if !t.items.contains_key(&sb.id) {
                    drop(t);
                    self.forget_lock(&sb.id); // removed meanwhile: no lock left behind
                }
                continue;
            };
            tracing::warn!(pod = %sb.id, pause = %sb.pause_id, "the pod's pause process exited: not ready");
            now.ready = false;
            if let Err(e) = t.update(&sb.id, now) {
                tracing::error!(pod = %sb.id, "pod sandbox record: {e}");
            }
            drop(t);
            // As containerd reports a sandbox whose task exited (the kubelet's evented PLEG
            // learns the pod's new state from it).
            self.emit(
                &sb.id,
                &sb.id,
                api::ContainerEventType::ContainerStoppedEvent,
            )
            .await;
        }
    }
}

/// Items in messages of at most this many (the Stream* RPCs exist so that long lists need
/// not fit in one gRPC message).
pub const CHUNK: usize = 256;

/// A stream of `items` in chunks, each made into a message by `wrap`.
pub fn chunked<T: Send + 'static, M: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> M + Send + 'static,
) -> crate::runtime_service::Streamed<M> {
    let mut msgs = Vec::new();
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        msgs.push(Ok(wrap(it.by_ref().take(CHUNK).collect())));
    }
    if msgs.is_empty() {
        msgs.push(Ok(wrap(Vec::new())));
    }
    Box::pin(tokio_stream::iter(msgs))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn chunks() {
        let s = super::chunked((0..600).collect::<Vec<i32>>(), |v| v.len());
        let lens: Vec<usize> = s.map(|m| m.unwrap()).collect().await;
        assert_eq!(lens, vec![256, 256, 88]);
        let s = super::chunked(Vec::<i32>::new(), |v| v.len());
        let lens: Vec<usize> = s.map(|m| m.unwrap()).collect().await;
        assert_eq!(lens, vec![0]);
    }
}
