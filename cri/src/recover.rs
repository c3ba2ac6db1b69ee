//! What a restarted server does first: finish or undo what a killed one left half-made.
//! Records are written before an object is made and marked complete after (store.rs), so an
//! incomplete record is exactly an interrupted RunPodSandbox or CreateContainer. Those are
//! undone (the kubelet retries them): the pause container, the CNI attachment, the pinned
//! namespaces and files of a pod; the process, runtime state, rootfs, image volumes and
//! files of a container. Complete objects are left as they are: running containers keep
//! running under their shims, and exits that happened meanwhile are in their exit records.

use tonic::Status;

use crate::runtime_service::{blocking, Runtime};
use crate::sandbox;

impl Runtime {
    /// Undoes every interrupted RunPodSandbox and CreateContainer. Returns how many of each.
    pub async fn recover(&self) -> Result<(usize, usize), Status> {
        // CNI plugins a killed server left running would race the undoing of their work.
        let cni = self.cni.clone();
        let ended = blocking(move || Ok(cni.end_leftover_plugins())).await?;
        if ended > 0 {
            tracing::warn!(
                plugins = ended,
                "ended CNI plugins a killed server left running"
            );
        }
        let half_containers: Vec<_> = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| !c.complete)
            .cloned()
            .collect();
        let n_containers = half_containers.len();
        let mut pods = std::collections::HashSet::new();
        for c in half_containers {
            pods.insert(c.sandbox_id.clone());
            tracing::warn!(container = %c.id, pod = %c.sandbox_id, "removing a container a killed server left half-created");
            let (id, pod) = (c.id.clone(), c.sandbox_id.clone());
            if let Err(e) = self.remove(c).await {
                // Left listed: RemoveContainer (the kubelet's) retries it.
                tracing::error!(container = %id, pod = %pod, "{}", e.message());
            }
        }
        // StartContainers a kill cut before the record learnt what the shim did: before the
        // shim reported the container's PID (pid 0 reads as created), or after the shim
        // started it but before its start time was recorded (started_at 0 reads as created
        // too, and the kubelet would start a second instance beside the running one). With
        // its shim there, the record learns the PID and the start time from it (a retried
        // StartContainer finds one not started created and starts it); without one, whatever
        // the runtime has of it is deleted and the start recorded as failed (StartError, as
        // a start that failed), so the kubelet makes a new one.
        let unreported: Vec<_> = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.complete && c.deferred.is_none() && (c.pid == 0 || c.started_at == 0))
            .filter(|c| !c.exit_file.exists())
            .cloned()
            .collect();
        for mut c in unreported {
            if c.pid == 0 && !crate::container::shim_alive(&c) {
                tracing::warn!(container = %c.id, pod = %c.sandbox_id, "a start a killed server left unfinished: recorded as failed");
                let rt = self.rsrun();
                let (id, exit) = (c.id.clone(), c.exit_file.clone());
                let done = blocking(move || {
                    // A shim still making it (its PID file comes after the create) would
                    // finish the create after this undo: ended first.
                    crate::container::end_shims(&id);
                    match rt.delete(&id, true) {
                        Ok(()) | Err(rsrun::Error::NotFound(_)) => {}
                        Err(e) => {
                            return Err(Status::internal(format!("delete container {id}: {e}")))
                        }
                    }
                    crate::container::record_start_error(
                        &exit,
                        &id,
                        "StartContainer was interrupted by a restart of rsrun-cri",
                    )
                    .map_err(|e| Status::internal(format!("exit record of {id}: {e}")))
                })
                .await;
                if let Err(e) = done {
                    tracing::error!(container = %c.id, "{}", e.message());
                }
                continue;
            }
            if !crate::container::shim_alive(&c) {
                continue; // its shim died after the create: state() reads it lost
            }
            let d = c.shim_dir.clone();
            let answer = blocking(move || {
                crate::container::control(
                    &d,
                    &serde_json::json!({"op": "status"}),
                    std::time::Duration::from_secs(10),
                )
                .map_err(|e| Status::internal(format!("the container's shim: {e}")))
            })
            .await;
            let head = match answer {
                Ok((head, _)) => head,
                Err(e) => {
                    tracing::error!(container = %c.id, "{}", e.message());
                    continue;
                }
            };
            let pid = head["pid"].as_i64().unwrap_or(0) as i32;
            let started = head["started_at"]
                .as_str()
                .and_then(crate::store::parse_rfc3339);
            let learnt = (c.pid == 0 && pid > 0) || (c.started_at == 0 && started.is_some());
            if !learnt {
                continue;
            }
            if c.pid == 0 {
                c.pid = pid;
            }
            if let Some(t) = started.filter(|_| c.started_at == 0) {
                tracing::warn!(container = %c.id, pod = %c.sandbox_id, "a start a killed server left unrecorded: the shim started it");
                c.started_at = t;
            }
            let id = c.id.clone();
            if let Err(e) = self.containers.lock().await.update(&id, c) {
                tracing::error!(container = %id, "container record: {e}");
            }
        }
        // Ready pods a StopPodSandbox had begun to tear down when the server was killed: not
        // ready (their addresses may be released, and in a pod without a pause nothing else
        // tells); the kubelet's StopPodSandbox, retried, finishes it.
        let stopping: Vec<_> = self
            .ready_pods()
            .await
            .into_iter()
            .filter(sandbox::stopping)
            .collect();
        for mut sb in stopping {
            tracing::warn!(pod = %sb.id, "a pod a killed server was stopping: not ready");
            sb.ready = false;
            let id = sb.id.clone();
            if let Err(e) = self.sandboxes.lock().await.update(&id, sb) {
                tracing::error!(pod = %id, "pod sandbox record: {e}");
            }
        }
        // Ready pods whose pinned namespaces are gone (the node rebooted: the state dir is
        // empty; or they were unmounted): not ready any more, so that the kubelet makes
        // them again instead of starting containers in namespaces that no longer exist.
        let lost: Vec<_> = self
            .ready_pods()
            .await
            .into_iter()
            .map(|s| {
                let l = sandbox::lost_pins(&s);
                (s, l)
            })
            .filter(|(_, l)| !l.is_empty())
            .collect();
        for (mut sb, names) in lost {
            tracing::warn!(pod = %sb.id, lost = ?names, dir = %sb.ns_dir.display(), "the pod's pinned namespaces are gone: not ready");
            sb.ready = false;
            let id = sb.id.clone();
            if let Err(e) = self.sandboxes.lock().await.update(&id, sb) {
                tracing::error!(pod = %id, "pod sandbox record: {e}");
            }
        }
        // Their storage first, or the sweep would race its release.
        for p in pods {
            self.released(&p).await;
        }
        self.sweep_rootfs().await;
        let half_pods: Vec<_> = self
            .sandboxes
            .lock()
            .await
            .items
            .values()
            .filter(|s| !s.complete)
            .cloned()
            .collect();
        let n_pods = half_pods.len();
        for sb in half_pods {
            tracing::warn!(pod = %sb.id, "removing a pod sandbox a killed server left half-made");
            if !sb.pause_id.is_empty() {
                let pause = sb.pause_id.clone();
                let ended = blocking(move || Ok(crate::container::end_shims(&pause))).await?;
                if ended > 0 {
                    tracing::warn!(pod = %sb.id, shims = ended, "ended the pause's shim a killed server left starting");
                }
            }
            if let Err(e) = self.undo_sandbox(&sb).await {
                // Kept, listed not ready, for the kubelet's StopPodSandbox to finish (a DEL
                // that failed runs again there): hidden, it would hold its name and leak
                // what could not be undone.
                tracing::error!(pod = %sb.id, "undo a half-made pod: {}; kept, not ready", e.message());
                if let Err(e) = self.keep_not_ready(&sb.id).await {
                    tracing::error!(pod = %sb.id, "{}", e.message());
                }
            }
        }
        Ok((n_pods, n_containers))
    }

    /// Removes the container root filesystems (and image volumes) in the image store, state
    /// directories and image-defined volume directories that no container record names: a container's first record is written without fsync
    /// (`Table::put_volatile`), so a power loss may keep its rootfs and lose the record. Only
    /// IDs of the form this server gives (64 hex digits, `-image-N` for a volume) are
    /// touched.
    async fn sweep_rootfs(&self) {
        // Every record file counts, also one that does not parse (its container may run).
        let known = {
            let t = self.containers.lock().await;
            match t.file_ids() {
                Ok(mut ids) => {
                    ids.extend(t.items.keys().cloned());
                    ids
                }
                Err(e) => {
                    tracing::error!("list the container records: {e}; nothing swept");
                    return;
                }
            }
        };
        let images = self.images.clone();
        let state = self.state.clone();
        let exits = self.exits.clone();
        let own_volumes = self.volumes.clone();
        let swept = blocking(move || {
            let ids = images
                .rootfs_ids()
                .map_err(|e| Status::internal(format!("list the image store's rootfs: {e}")))?;
            let mut swept = Vec::new();
            for id in ids {
                let owner = id.split_once("-image-").map_or(id.as_str(), |(c, _)| c);
                // Nor one whose shim directory is there (a container may run under it).
                let shim_dir = crate::container::paths(&state, owner).shim_dir;
                if !crate::store::is_object_id(owner) || known.contains(owner) || shim_dir.exists()
                {
                    continue;
                }
                match images.remove_rootfs(&id) {
                    Ok(()) => swept.push(id.clone()),
                    Err(e) => {
                        tracing::error!(container = %owner, "remove an unrecorded rootfs: {e}")
                    }
                }
            }
            // Then the state dirs no record names (a rootfs in a user namespace is mounted in
            // one: unmounted above), e.g. of a removal the killed server had not finished.
            // The image-defined volumes likewise (crate::volumes).
            for dirs in [state.join("containers"), own_volumes] {
                for e in std::fs::read_dir(&dirs).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let shim_dir = crate::container::paths(&state, &name).shim_dir;
                    if crate::store::is_object_id(&name)
                        && !known.contains(&name)
                        && !shim_dir.exists()
                    {
                        if let Err(err) = rsrun_image::remove_tree(&e.path()) {
                            tracing::error!(container = %name, "remove {}: {err}", e.path().display());
                        }
                    }
                }
            }
            // And the exit records of containers removed by a server killed before it had
            // deleted them, with their writers' temporary files (`.ID.json.tmp`, and a
            // shim's reserved `.ID.json.reserved`; a live shim's may be half-written right
            // now: only those of unknown IDs go).
            for e in std::fs::read_dir(&exits).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix('.').and_then(|n| {
                    n.strip_suffix(".json.tmp")
                        .or_else(|| n.strip_suffix(".json.reserved"))
                });
                if let Some(id) = id.or_else(|| name.strip_suffix(".json")) {
                    if crate::store::is_object_id(id) && !known.contains(id) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            Ok(swept)
        })
        .await;
        match swept {
            Ok(ids) => {
                for id in ids {
                    tracing::warn!(rootfs = %id, "removed a container rootfs no record names");
                }
            }
            Err(e) => tracing::error!("{}", e.message()),
        }
    }

    async fn undo_sandbox(&self, sb: &crate::store::SandboxRecord) -> Result<(), Status> {
        self.stop_pause(sb).await?;
        self.detach(sb).await?;
        let d = sb.ns_dir.clone();
        blocking(move || {
            sandbox::unmake(&d)
                .map_err(|e| Status::internal(format!("remove {}: {e}", d.display())))
        })
        .await?;
        self.sandboxes
            .lock()
            .await
            .remove(&sb.id)
            .map_err(|e| Status::internal(format!("pod sandbox record {}: {e}", sb.id)))
    }
}
