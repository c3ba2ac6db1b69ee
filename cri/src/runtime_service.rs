//! The CRI RuntimeService: the runtime's identity, status and configuration, pod sandboxes
//! (sandbox.rs), containers under rsrun-shim (container.rs) and ExecSync. What is not built
//! yet answers UNIMPLEMENTED naming the RPC (docs/cri.md).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Mutex;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::{self, runtime_service_server::RuntimeService};
use crate::container;
use crate::network;
use crate::sandbox;
use crate::store::{self, ContainerRecord, SandboxRecord, Table};

/// What the kubelet requires in VersionResponse.version.
pub const KUBELET_API_VERSION: &str = "0.1.0";
pub const RUNTIME_NAME: &str = "rsrun";
pub const CRI_API_VERSION: &str = "v1";
/// How long a shim has to answer a start (the kubelet's own runtime request timeout).
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Runtime {
    /// The pod CIDR the kubelet gave (UpdateRuntimeConfig).
    pub pod_cidr: tokio::sync::RwLock<String>,
    pub images: Arc<rsrun_image::ImageStore>,
    /// Volatile state: pinned namespaces, bundles, shim directories, rsrun's state root.
    pub state: PathBuf,
    /// rsrun's state root (under `state`).
    pub runtime_root: PathBuf,
    /// The containers' exit records (`ROOT/cri/exits`): persistent, so that a container that
    /// finished before a reboot still reports its exit code and reason.
    pub exits: PathBuf,
    /// The containers' own directories for their images' VOLUME entries
    /// (`ROOT/cri/volumes/ID/`, crate::volumes).
    pub volumes: PathBuf,
    /// False with `ignore_image_defined_volumes`: the paths stay in the writable layer.
    pub image_volumes: bool,
    /// The rsrun-shim binary.
    pub shim: PathBuf,
    /// cgroupsPath parent for pods that give none.
    pub cgroup_parent: String,
    /// The systemd cgroup driver (containers are scopes in the pods' slices).
    pub systemd_cgroup: bool,
    /// The pause container's rootfs (sandbox::install_pause).
    pub pause_rootfs: PathBuf,
    pub sandboxes: Mutex<Table<SandboxRecord>>,
    pub containers: Mutex<Table<ContainerRecord>>,
    /// Pod networking.
    pub cni: crate::network::Cni,
    /// The streaming server (Exec, Attach URLs).
    pub streaming: Arc<crate::streaming::Server>,
    /// Container events' subscribers (GetContainerEvents).
    pub events: crate::events::Events,
    /// The longest CRI log record (rsrun-shim's --log-max-line; its default if None).
    pub log_max_line: Option<u64>,
    /// The capabilities of containers that ask for no change (the CRI default set if None).
    pub default_caps: Option<Vec<String>>,
    /// The CDI spec directories (`cdi_spec_dirs`).
    pub cdi_dirs: Vec<PathBuf>,
    /// The sysctls a pod with a network of its own gets unless it sets them.
    pub pod_net_defaults: crate::sandbox::NetDefaults,
    /// The kernel has mount_setattr(2): recursive read-only mounts (`rro`) work.
    pub rro: bool,
    /// One lock per pod or container ID: requests about the same object are serialized,
    /// unrelated ones run in parallel (lock_object).
    pub object_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// The last CPU sample of each container (for nano-cores).
    pub cpu_samples: std::sync::Mutex<std::collections::HashMap<String, container::CpuSample>>,
    /// Removed containers whose rootfs, image volumes and state dir are still being taken
    /// down, by pod (RemovePodSandbox waits for them): `remove`.
    pub releases:
        std::sync::Mutex<std::collections::HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
    /// Frees removed images' storage; asked again when the last container of an image that
    /// was removed meanwhile lets its layers go.
    pub image_gc: Arc<crate::image_service::Collector>,
}

/// Merges the JSON object `new` into `into`, recursively.
fn merge(into: &mut serde_json::Value, new: &serde_json::Value) {
    match (into, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn io_status(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("blocking task: {e}")))?
}

/// Unmounts and removes a removed container's rootfs and image volumes, then its state dir
/// (after them: a rootfs in a user namespace is mounted inside it).
pub(crate) fn release_storage(
    images: &rsrun_image::ImageStore,
    id: &str,
    vols: &[String],
    own_volumes: &std::path::Path,
    dir: &std::path::Path,
) -> Result<(), String> {
    images
        .remove_rootfs(id)
        .map_err(|e| format!("remove the rootfs of {id}: {e}"))?;
    for v in vols {
        images
            .remove_rootfs(v)
            .map_err(|e| format!("remove the image volume {v}: {e}"))?;
    }
    // (The state directory goes whatever the volumes give; theirs is said after it.)
    let volumes = crate::volumes::remove(own_volumes, id);
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", dir.display()))
        }
        _ => volumes,
    }
}

impl Runtime {
    /// Waits for the storage releases of the removed containers of pod `pod`.
    pub(crate) async fn released(&self, pod: &str) {
        let handles = self
            .releases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(pod)
            .unwrap_or_default();
        for h in handles {
            let _ = h.await;
        }
    }

    /// The lock of the object `id` (made on first use).
    fn object_lock(&self, id: &str) -> Arc<Mutex<()>> {
        self.object_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Serializes requests about the object `id` (held until the guard is dropped).
    pub(crate) async fn lock_object(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.object_lock(id).lock_owned().await
    }

    /// The lock of `id` if no request holds it now (a background task's way: it comes back
    /// later rather than wait behind a StopPodSandbox).
    pub(crate) fn try_lock_object(&self, id: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.object_lock(id).try_lock_owned().ok()
    }

    /// The complete, ready pods as they are now.
    pub(crate) async fn ready_pods(&self) -> Vec<SandboxRecord> {
        self.sandboxes
            .lock()
            .await
            .items
            .values()
            .filter(|s| s.complete && s.ready)
            .cloned()
            .collect()
    }

    /// Forgets the lock of a removed object.
    pub(crate) fn forget_lock(&self, id: &str) {
        self.object_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Forgets the last CPU sample of a removed container or pod (`metrics::pod_key`).
    fn forget_cpu_sample(&self, key: &str) {
        self.cpu_samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    pub(crate) fn rsrun(&self) -> rsrun::Runtime {
        let mut rt = rsrun::Runtime::new(self.runtime_root.clone(), false);
        rt.systemd_cgroup = self.systemd_cgroup;
        rt
    }

    /// Stops a container: `signal`, then SIGKILL after `timeout`; waits for its exit record.
    async fn stop(&self, r: &ContainerRecord, timeout: Duration) -> Result<(), Status> {
        let (st, exit) = container::state(r);
        if exit.is_some_and(|e| e["lost"] == true) {
            // Its shim died: whatever still runs of it is ended here (the exit watcher does
            // so too, unless this came first or its delete failed).
            let (rt, id) = (self.rsrun(), r.id.clone());
            return blocking(move || {
                container::end_lost(&rt, &id).map_err(|e| io_status("StopContainer", e))
            })
            .await;
        }
        if st == api::ContainerState::ContainerExited as i32 || !r.complete {
            return Ok(());
        }
        if r.deferred.is_some() {
            // Never run: it ends as a created container killed before its start would.
            let exit = json!({"id": r.id, "exit_code": 137, "signal": 9,
                "finished_at": now_rfc3339()});
            return rsrun::state::write_file_atomic(
                &r.exit_file,
                exit.to_string().as_bytes(),
                true,
            )
            .map_err(|e| io_status(&format!("exit record of {}", r.id), e));
        }
        let rt = self.rsrun();
        let id = r.id.clone();
        let rec = r.clone();
        // The config's stop signal, else the image's STOPSIGNAL (nginx: SIGQUIT), else
        // SIGTERM; one that does not name a signal falls back to SIGTERM, logged.
        let signal = container::stop_signal(r, true);
        blocking(move || {
            let wait = |d: Duration| container::exited_within(&rec, d);
            if !timeout.is_zero() {
                let _ = rt.kill(&id, signal, false);
                if wait(timeout) {
                    return Ok(());
                }
            }
            // SIGKILL, again every half second: a shim that a killed server had started may
            // still be creating the container when a restarted server undoes it (the first
            // kill then finds no container; the created one would wait for its start forever).
            let end = std::time::Instant::now() + Duration::from_secs(10);
            let killed = loop {
                let _ = rt.kill(&id, nix::sys::signal::Signal::SIGKILL, true);
                if wait(Duration::from_millis(500)) {
                    break true;
                }
                if std::time::Instant::now() >= end {
                    break false;
                }
            };
            if !killed {
                return Err(Status::internal(format!(
                    "container {id} did not exit 10 s after SIGKILL"
                )));
            }
            Ok(())
        })
        .await
    }

    /// Removes a container: its process (killed), the runtime's state, its rootfs, files.
    pub(crate) async fn remove(&self, r: ContainerRecord) -> Result<(), Status> {
        self.stop(&r, Duration::ZERO).await?;
        let rt = self.rsrun();
        let images = self.images.clone();
        let dir = container::paths(&self.state, &r.id).dir;
        let shim_dir = r.shim_dir.clone();
        let id = r.id.clone();
        let vols = container::image_volume_ids(&r.id, &r.mounts);
        blocking(move || {
            let _ = std::fs::remove_dir_all(&shim_dir);
            // Its shim deleted it at exit (--delete-on-exit), unless the shim was killed.
            match rt.delete(&id, true) {
                Ok(()) | Err(rsrun::Error::NotFound(_)) => Ok(()),
                Err(e) => Err(io_status(&format!("delete container {id}"), e)),
            }
        })
        .await?;
        self.containers
            .lock()
            .await
            .remove(&r.id)
            .map_err(|e| io_status("container record", e))?;
        // Its storage is released after the answer, as containerd's garbage collector does
        // (the unmount and the removal of the writable layer were most of RemoveContainer's
        // time). A server killed meanwhile finds a rootfs no record names and removes it at
        // start (recover.rs); RemovePodSandbox waits for its pod's releases.
        let id = r.id.clone();
        let (image_ref, gc) = (r.image_ref.clone(), self.image_gc.clone());
        let exit_file = r.exit_file.clone();
        let own_volumes = self.volumes.clone();
        let release = tokio::task::spawn_blocking(move || {
            // Its record is gone: its exit record goes too (a killed server's restart sweeps
            // one left behind).
            for f in [
                rsrun::state::atomic_temp(&exit_file),
                rsrun::state::reserved_temp(&exit_file),
                exit_file,
            ] {
                if let Err(e) = std::fs::remove_file(&f) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::error!(container = %id, "remove {}: {e}", f.display());
                    }
                }
            }
            if let Err(e) = release_storage(&images, &id, &vols, &own_volumes, &dir) {
                tracing::error!(container = %id, "release of the container's storage: {e}");
            } else if !vols.is_empty() || matches!(images.get(&image_ref), Ok(None)) {
                // Its image (or an image volume's) may have been removed while it ran: the
                // layers it held can go now.
                gc.request();
            }
        });
        {
            let mut pending = self.releases.lock().unwrap_or_else(|e| e.into_inner());
            let list = pending.entry(r.sandbox_id.clone()).or_default();
            list.retain(|h| !h.is_finished());
            list.push(release);
        }
        // A started container's exit, if the watcher has not reported it yet, comes first.
        if r.started_at != 0 && self.events.first_stop(&r.id) {
            self.emit(
                &r.id,
                &r.sandbox_id,
                api::ContainerEventType::ContainerStoppedEvent,
            )
            .await;
        }
        self.emit(
            &r.id,
            &r.sandbox_id,
            api::ContainerEventType::ContainerDeletedEvent,
        )
        .await;
        self.events.forget(&r.id);
        self.forget_lock(&r.id);
        self.forget_cpu_sample(&r.id);
        container::forget_shim(&r.id);
        container::forget_lost(&r.id);
        Ok(())
    }

    async fn container(&self, id: &str) -> Result<ContainerRecord, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("container_id is required"));
        }
        let t = self.containers.lock().await;
        let matching: Vec<&ContainerRecord> =
            t.items.values().filter(|r| r.id.starts_with(id)).collect();
        match matching.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Status::not_found(format!("container {id} not found"))),
            _ => Err(Status::invalid_argument(format!(
                "container ID prefix {id} is ambiguous"
            ))),
        }
    }

    async fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("pod_sandbox_id is required"));
        }
        let t = self.sandboxes.lock().await;
        let matching: Vec<&SandboxRecord> =
            t.items.values().filter(|r| r.id.starts_with(id)).collect();
        match matching.as_slice() {
            [one] => Ok(Some((*one).clone())),
            [] => Ok(None),
            _ => Err(Status::invalid_argument(format!(
                "pod sandbox ID prefix {id} is ambiguous"
            ))),
        }
    }

    async fn stats_of(
        &self,
        recs: Vec<ContainerRecord>,
    ) -> Result<Vec<api::ContainerStats>, Status> {
        let rt = self.rsrun();
        let images = self.images.clone();
        let last: Vec<Option<container::CpuSample>> = {
            let m = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
            recs.iter().map(|r| m.get(&r.id).copied()).collect()
        };
        let out = blocking(move || {
            Ok(recs
                .iter()
                .zip(last)
                .map(|(r, l)| (r.id.clone(), container::stats(&rt, &images, r, l)))
                .collect::<Vec<_>>())
        })
        .await?;
        let mut m = self.cpu_samples.lock().unwrap_or_else(|e| e.into_inner());
        Ok(out
            .into_iter()
            .map(|(id, (s, sample))| {
                if let Some(x) = sample {
                    m.insert(id, x);
                }
                s
            })
            .collect())
    }

    /// Attaches the pod's network namespace through CNI (not for the host's network), to the
    /// network list its record holds since RunPodSandbox began (`planned_network`).
    async fn attach(&self, sb: &SandboxRecord) -> Result<Option<network::Attachment>, Status> {
        let Some(netns) = sandbox::ns_path(sb, "net") else {
            return Ok(None);
        };
        let bad = |e: network::Error| {
            Status::unknown(format!("RunPodSandbox: pod {} network: {e}", sb.id))
        };
        let planned = match &sb.network {
            Some(p) => p.clone(),
            None => self.planned_network().await?.map_err(bad)?,
        };
        let mappings = network::from_record(&sb.port_mappings);
        let pod = network::Pod {
            sandbox_id: &sb.id,
            name: &sb.name,
            namespace: &sb.namespace,
            uid: &sb.uid,
            netns: &netns,
            port_mappings: &mappings,
            bandwidth: network::bandwidth(&sb.annotations).map_err(|e| {
                Status::invalid_argument(format!("RunPodSandbox: pod {}: {e}", sb.id))
            })?,
            annotations: &sb.annotations,
            cgroup_parent: &sb.cgroup_parent,
            dns: sb.cni_dns.as_ref(),
        };
        let a = self.cni.add(&planned, &pod).await.map_err(bad)?;
        tracing::info!(pod = %sb.id, ips = ?network::addresses(&a.result), "pod network attached");
        Ok(Some(a))
    }

    /// The current network list, for an ADD to come.
    async fn planned_network(&self) -> Result<Result<network::Attachment, network::Error>, Status> {
        let cni = self.cni.clone();
        blocking(move || Ok(cni.unrecorded())).await
    }

    /// Detaches the pod's network (its record keeps what ADD gave) and forgets it.
    pub(crate) async fn detach(&self, sb: &SandboxRecord) -> Result<(), Status> {
        if self.cni_del(sb).await? {
            self.forget_network(&sb.id).await?;
        }
        Ok(())
    }

    /// Keeps a pod whose making failed and could not be undone (its pause's stop, its DEL or
    /// the removal of its pins failed): complete and not ready, so that it is listed and the
    /// kubelet's StopPodSandbox and RemovePodSandbox finish the undo (containerd keeps it
    /// too), rather than leak its address lease, port rules, pause or pins, or hold its name
    /// unseen. Its record keeps the network it has (the list recorded before its ADD, or none
    /// once a DEL succeeded).
    pub(crate) async fn keep_not_ready(&self, id: &str) -> Result<(), Status> {
        let mut t = self.sandboxes.lock().await;
        let Some(cur) = t.items.get(id).cloned() else {
            return Ok(());
        };
        let kept = SandboxRecord {
            complete: true,
            ready: false,
            ..cur
        };
        t.update(id, kept)
            .map_err(|e| io_status("pod sandbox record", e))
    }

    /// Drops the pod's CNI attachment from its record (after its DEL), and with it the pod's
    /// readiness: a pod without its network is not ready (a StopPodSandbox whose DEL passed
    /// but whose pause's stop failed left it READY with no IP, which the kubelet takes for a
    /// pod that lost its address).
    async fn forget_network(&self, id: &str) -> Result<(), Status> {
        let mut t = self.sandboxes.lock().await;
        if let Some(rec) = t.items.get(id).cloned() {
            t.update(
                id,
                SandboxRecord {
                    network: None,
                    ready: false,
                    ..rec
                },
            )
            .map_err(|e| io_status("pod sandbox record", e))?;
        }
        Ok(())
    }

    /// The CNI DEL of the pod's attachment; false when it has none. The record keeps the
    /// attachment (the caller's to drop).
    async fn cni_del(&self, sb: &SandboxRecord) -> Result<bool, Status> {
        // The record has the network list from the start of RunPodSandbox. One an older
        // rsrun-cri wrote (it recorded the list only with the ADD's result) may have been
        // attached without it: DEL it from the current configuration (plugins treat what
        // they never made as done).
        let unrecorded;
        let a = match &sb.network {
            Some(a) => a,
            None if !sb.complete && !sb.host_network => match self.cni.unrecorded() {
                Ok(u) => {
                    unrecorded = u;
                    &unrecorded
                }
                Err(_) => return Ok(false),
            },
            None => return Ok(false),
        };
        let netns = sb.ns_dir.join("net");
        let mappings = network::from_record(&sb.port_mappings);
        let pod = network::Pod {
            sandbox_id: &sb.id,
            name: &sb.name,
            namespace: &sb.namespace,
            uid: &sb.uid,
            netns: &netns,
            port_mappings: &mappings,
            bandwidth: network::bandwidth(&sb.annotations).unwrap_or_default(),
            annotations: &sb.annotations,
            cgroup_parent: &sb.cgroup_parent,
            dns: sb.cni_dns.as_ref(),
        };
        self.cni
            .del(a, &pod)
            .await
            .map_err(|e| Status::unknown(format!("pod {} network teardown: {e}", sb.id)))?;
        tracing::info!(pod = %sb.id, "pod network detached");
        Ok(true)
    }

    async fn containers_of(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        self.containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }
}

pub(crate) type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn not_built<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc}: not implemented by rsrun-cri yet (docs/cri.md lists what is)"
    )))
}

/// The not-yet-built RPCs, written in the shape #[async_trait] gives the others (the
/// attribute does not see inside a macro).
type Answer<'a, T> =
    Pin<Box<dyn std::future::Future<Output = Result<Response<T>, Status>> + Send + 'a>>;

macro_rules! not_built {
    ($($name:ident($req:ident) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                _r: Request<api::$req>,
            ) -> Answer<'async_trait, $resp>
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                Box::pin(async move { not_built(stringify!($req).trim_end_matches("Request")) })
            }
        )*
    };
}

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _r: Request<api::VersionRequest>,
    ) -> Result<Response<api::VersionResponse>, Status> {
        Ok(Response::new(api::VersionResponse {
            version: KUBELET_API_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_API_VERSION.into(),
        }))
    }

    async fn status(
        &self,
        _r: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let cni = self.cni.clone();
        let net = blocking(move || Ok(cni.load())).await?;
        let conditions = vec![
            api::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            api::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net.is_ok(),
                reason: if net.is_ok() {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message: net.err().map(|e| e.to_string()).unwrap_or_default(),
            },
        ];
        Ok(Response::new(api::StatusResponse {
            status: Some(api::RuntimeStatus { conditions }),
            info: Default::default(),
            runtime_handlers: vec![api::RuntimeHandler {
                name: String::new(),
                features: Some(api::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: self.rro,
                    user_namespaces: true,
                }),
            }],
            features: Some(api::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _r: Request<api::RuntimeConfigRequest>,
    ) -> Result<Response<api::RuntimeConfigResponse>, Status> {
        Ok(Response::new(api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: if self.systemd_cgroup {
                    api::CgroupDriver::Systemd as i32
                } else {
                    api::CgroupDriver::Cgroupfs as i32
                },
            }),
        }))
    }

    async fn update_runtime_config(
        &self,
        r: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<api::UpdateRuntimeConfigResponse>, Status> {
        let cidr = r
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            tracing::info!(pod_cidr = %cidr, "pod CIDR from the kubelet");
            *self.pod_cidr.write().await = cidr;
        }
        Ok(Response::new(api::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<api::RunPodSandboxRequest>,
    ) -> Result<Response<api::RunPodSandboxResponse>, Status> {
        let r = r.into_inner();
        if !r.runtime_handler.is_empty() {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: unknown runtime handler {:?} (only the default)",
                r.runtime_handler
            )));
        }
        let spec = sandbox::check(r.config, self.pod_net_defaults)?;
        let id = store::new_id();
        let ns_dir = self.state.join("sandboxes").join(&id);
        let mut rec = sandbox::record(&id, &spec, ns_dir.clone());
        // The network list its ADD will get, in the first record: the DEL that undoes the
        // ADD, after a failure or a kill at any point, gets the plugins the ADD got, whatever
        // the configuration has become by then (rewritten, gone, unreadable).
        if !rec.host_network {
            rec.network =
                Some(self.planned_network().await?.map_err(|e| {
                    Status::unknown(format!("RunPodSandbox: pod {id} network: {e}"))
                })?);
        }
        {
            let mut t = self.sandboxes.lock().await;
            let key = sandbox::name_key(&rec);
            if let Some(o) = t.items.values().find(|o| sandbox::name_key(o) == key) {
                return Err(Status::already_exists(format!(
                    "RunPodSandbox: the name {key} is taken by pod sandbox {}",
                    o.id
                )));
            }
            // Recorded first: a server killed while making it finds and removes it.
            t.put(&id, rec.clone())
                .map_err(|e| io_status("pod sandbox record", e))?;
        }
        let made = {
            let d = ns_dir.clone();
            blocking(move || {
                sandbox::make(&d, &spec).map_err(|e| io_status("make the pod's namespaces", e))
            })
            .await
        };
        // A user namespace pod's namespaces are the pause's: it comes first. Otherwise the
        // network is attached first and the pause (if any) joins it.
        let userns = rec.userns.is_some();
        let made = match made {
            Ok(()) if userns => self.start_pause(&rec).await,
            other => other,
        };
        let made = match made {
            Ok(()) => match self.attach(&rec).await {
                Ok(Some(a)) => {
                    rec.network = Some(a);
                    // Recorded at once: DEL must find it whatever happens next.
                    self.sandboxes
                        .lock()
                        .await
                        .put(&id, rec.clone())
                        .map_err(|e| io_status("pod sandbox record", e))
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            e => e,
        };
        let made = match made {
            // None (a pod on the node's network that sets none): no trip through the
            // blocking pool.
            Ok(()) if rec.sysctls.is_empty() => Ok(()),
            Ok(()) => {
                let r = rec.clone();
                blocking(move || {
                    sandbox::apply_sysctls(&r).map_err(|e| {
                        Status::invalid_argument(format!(
                            "RunPodSandbox: config.linux.sysctls: {e}"
                        ))
                    })
                })
                .await
            }
            e => e,
        };
        let made = match made {
            Ok(()) if !userns && !rec.pause_id.is_empty() => self.start_pause(&rec).await,
            other => other,
        };
        if let Err(e) = made {
            // Undone in order; the first step that fails leaves the pod, not ready, for the
            // kubelet's StopPodSandbox and RemovePodSandbox to finish (containerd keeps it
            // too), rather than leak its pause, address lease, port rules or namespace pins
            // with no record to find them by. The answer stays RunPodSandbox's own error.
            let undone = async {
                self.stop_pause(&rec).await?;
                self.detach(&rec).await?;
                let d = ns_dir.clone();
                blocking(move || {
                    sandbox::unmake(&d).map_err(|e| io_status("unpin the pod's namespaces", e))
                })
                .await
            }
            .await;
            if let Err(d) = undone {
                tracing::warn!(pod = %id, "RunPodSandbox failed ({}) and so did undoing it: the pod is kept, not ready: {}", e.message(), d.message());
                if let Err(k) = self.keep_not_ready(&id).await {
                    tracing::error!(pod = %id, "keeping the pod not ready: {}", k.message());
                }
                return Err(e);
            }
            if let Err(r) = self.sandboxes.lock().await.remove(&id) {
                tracing::error!(pod = %id, "removing the record of the pod that failed: {r}");
            }
            return Err(e);
        }
        let mut t = self.sandboxes.lock().await;
        rec.ready = true;
        rec.complete = true;
        t.update(&id, rec)
            .map_err(|e| io_status("pod sandbox record", e))?;
        drop(t);
        self.emit(&id, &id, api::ContainerEventType::ContainerCreatedEvent)
            .await;
        self.emit(&id, &id, api::ContainerEventType::ContainerStartedEvent)
            .await;
        tracing::info!(pod = %id, "pod sandbox ready");
        Ok(Response::new(api::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<api::StopPodSandboxRequest>,
    ) -> Result<Response<api::StopPodSandboxResponse>, Status> {
        // Idempotent: a sandbox already gone is stopped.
        let Some(sb) = self.sandbox(&r.into_inner().pod_sandbox_id).await? else {
            return Ok(Response::new(api::StopPodSandboxResponse {}));
        };
        let _g = self.lock_object(&sb.id).await;
        // As it is now that this request has the pod (another may have changed it).
        let Some(sb) = self.sandbox(&sb.id).await? else {
            return Ok(Response::new(api::StopPodSandboxResponse {}));
        };
        for c in self.containers_of(&sb.id).await {
            // Under the container's lock, as it is then: a StartContainer still running (its
            // client gone, it runs to completion) finishes first, and its container is
            // stopped as started, not taken for one whose create is still deferred (whose
            // stop kills nothing: it would run on in a stopped pod).
            let _g = self.lock_object(&c.id).await;
            let Ok(c) = self.container(&c.id).await else {
                continue;
            };
            self.stop(&c, Duration::ZERO).await?;
        }
        // Marked first: a server killed from here until the record says not ready finds the
        // pod not ready at its start (its addresses may be released by then).
        // (Not a reason to fail the stop: a pod whose state dir is gone stops all the same.)
        if sb.ready {
            if let Err(e) = std::fs::File::create(sb.ns_dir.join(sandbox::STOPPING)) {
                tracing::warn!(pod = %sb.id, "marking the pod stopping: {e}");
            }
        }
        // The pause and the network go together (the network's DEL does not need the pause:
        // the namespace stays pinned until the unpin below). The record keeps the pod's
        // addresses until it is marked not ready with them gone, in one update: a relist in
        // between must not see a ready pod without an IP (the kubelet would drop the pod's IP
        // from its cache while the pod terminates).
        let (paused, detached) = tokio::join!(self.stop_pause(&sb), self.cni_del(&sb));
        let detached = detached?;
        let d = sb.ns_dir.clone();
        let rest = async {
            paused?;
            // The namespaces go at stop; the pod's files stay until remove.
            blocking(move || {
                sandbox::unpin(&d).map_err(|e| io_status("unpin the pod's namespaces", e))
            })
            .await
        };
        let stopped = rest.await;
        match &stopped {
            Ok(()) => {
                let mut t = self.sandboxes.lock().await;
                if let Some(rec) = t.items.get(&sb.id).cloned() {
                    t.update(
                        &sb.id,
                        SandboxRecord {
                            ready: false,
                            network: None,
                            ..rec
                        },
                    )
                    .map_err(|e| io_status("pod sandbox record", e))?;
                }
            }
            // Its addresses are released: not reported any more (the retry stops the rest),
            // and the pod is not ready.
            Err(_) if detached => self.forget_network(&sb.id).await?,
            Err(_) => {}
        }
        // Once, when this stop made the pod not ready: not for a pod already stopped (the
        // kubelet's GC stops old pods again before it removes them), nor for one whose
        // pause's exit said it; a stop that failed after its DEL sends it, as the retry finds
        // the pod not ready.
        if sb.ready && (stopped.is_ok() || detached) {
            self.emit(
                &sb.id,
                &sb.id,
                api::ContainerEventType::ContainerStoppedEvent,
            )
            .await;
        }
        stopped?;
        tracing::info!(pod = %sb.id, "pod sandbox stopped");
        Ok(Response::new(api::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<api::RemovePodSandboxRequest>,
    ) -> Result<Response<api::RemovePodSandboxResponse>, Status> {
        let Some(sb) = self.sandbox(&r.into_inner().pod_sandbox_id).await? else {
            return Ok(Response::new(api::RemovePodSandboxResponse {}));
        };
        let _g = self.lock_object(&sb.id).await;
        let Some(sb) = self.sandbox(&sb.id).await? else {
            return Ok(Response::new(api::RemovePodSandboxResponse {}));
        };
        for c in self.containers_of(&sb.id).await {
            // One remove at a time per container (a RemoveContainer may race this one).
            let _g = self.lock_object(&c.id).await;
            let Ok(c) = self.container(&c.id).await else {
                continue;
            };
            self.remove(c).await?;
        }
        self.released(&sb.id).await;
        self.stop_pause(&sb).await?;
        self.detach(&sb).await?;
        let d = sb.ns_dir.clone();
        blocking(move || sandbox::unmake(&d).map_err(|e| io_status("remove the pod's files", e)))
            .await?;
        self.sandboxes
            .lock()
            .await
            .remove(&sb.id)
            .map_err(|e| io_status("pod sandbox record", e))?;
        let last = SandboxRecord {
            ready: false,
            ..sb.clone()
        };
        self.emit_for(
            &sb.id,
            &sb.id,
            Some(last),
            api::ContainerEventType::ContainerDeletedEvent,
        )
        .await;
        self.forget_lock(&sb.id);
        self.forget_cpu_sample(&crate::metrics::pod_key(&sb.id));
        tracing::info!(pod = %sb.id, "pod sandbox removed");
        Ok(Response::new(api::RemovePodSandboxResponse {}))
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<api::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<api::UpdatePodSandboxResourcesResponse>, Status> {
        let r = r.into_inner();
        let id = r.pod_sandbox_id;
        let _g = self.lock_object(&id).await;
        let mut t = self.sandboxes.lock().await;
        let mut sb = t.items.get(&id).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "UpdatePodSandboxResources: pod sandbox {id} not found"
            ))
        })?;
        // What is not sent stays as it was.
        if let Some(res) = r.resources.as_ref() {
            sb.resources = Some(container::oci_resources(res));
        }
        if let Some(o) = r.overhead.as_ref() {
            sb.overhead = Some(container::oci_resources(o));
        }
        tracing::info!(pod = %id, resources = ?sb.resources, overhead = ?sb.overhead, "pod sandbox resources recorded");
        t.update(&id, sb)
            .map_err(|e| io_status("pod sandbox record", e))?;
        Ok(Response::new(api::UpdatePodSandboxResourcesResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<api::PodSandboxStatusRequest>,
    ) -> Result<Response<api::PodSandboxStatusResponse>, Status> {
        let r = r.into_inner();
        let verbose = r.verbose;
        let id = r.pod_sandbox_id;
        let sb = self
            .sandbox(&id)
            .await?
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id} not found")))?;
        // As ListContainers: a container whose CreateContainer is still running is not
        // there yet (the evented PLEG takes the pod's containers from here, and would kill an
        // UNKNOWN one).
        let containers_statuses = self
            .containers_of(&sb.id)
            .await
            .iter()
            .filter(|c| c.complete)
            .map(container::status)
            .collect();
        // Verbose: the pod-level resources the kubelet declared (UpdatePodSandboxResources).
        let mut info = std::collections::HashMap::new();
        if verbose {
            let v = serde_json::json!({"resources": sb.resources, "overhead": sb.overhead,
                "cgroupParent": sb.cgroup_parent});
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(api::PodSandboxStatusResponse {
            status: Some(sandbox::status(&sb)),
            info,
            containers_statuses,
            timestamp: store::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<api::ListPodSandboxRequest>,
    ) -> Result<Response<api::ListPodSandboxResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let items = self
            .sandboxes
            .lock()
            .await
            .items
            .values()
            .filter(|s| s.complete && sandbox::matches(s, &f))
            .map(|s| api::PodSandbox {
                id: s.id.clone(),
                metadata: Some(sandbox::meta(s)),
                state: sandbox::state(s),
                created_at: s.created_at,
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect();
        Ok(Response::new(api::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        r: Request<api::CreateContainerRequest>,
    ) -> Result<Response<api::CreateContainerResponse>, Status> {
        let r = r.into_inner();
        let c = r
            .config
            .ok_or_else(|| Status::invalid_argument("CreateContainer: config is required"))?;
        let meta = c.metadata.clone().ok_or_else(|| {
            Status::invalid_argument("CreateContainer: config.metadata is required")
        })?;
        if meta.name.is_empty() {
            return Err(Status::invalid_argument(
                "CreateContainer: config.metadata.name is required",
            ));
        }
        let stop_signal = container::cri_signal(c.stop_signal).map_err(|e| {
            Status::invalid_argument(format!("CreateContainer: config.stop_signal: {e}"))
        })?;
        sandbox::check_metadata_size("CreateContainer: config", &c.labels, &c.annotations)?;
        // Relative to the pod's log directory (the CRI's contract): an absolute path would
        // replace the directory, and `..` leave it.
        if std::path::Path::new(&c.log_path).is_absolute()
            || std::path::Path::new(&c.log_path)
                .components()
                .any(|p| p == std::path::Component::ParentDir)
        {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: config.log_path {:?} must be relative to the pod's log \
                 directory, without '..'",
                c.log_path
            )));
        }
        let image = c
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument("CreateContainer: config.image.image is required")
            })?;
        let sb = self.sandbox(&r.pod_sandbox_id).await?.ok_or_else(|| {
            Status::not_found(format!("pod sandbox {} not found", r.pod_sandbox_id))
        })?;
        // The pod cannot be stopped or removed while a container is being made in it.
        let _g = self.lock_object(&sb.id).await;
        let sb = self.sandbox(&sb.id).await?.ok_or_else(|| {
            Status::not_found(format!("pod sandbox {} not found", r.pod_sandbox_id))
        })?;
        if !sb.ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        // As containerd and CRI-O: a privileged container only in a privileged pod.
        let privileged = c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if privileged && sb.privileged == Some(false) {
            return Err(Status::invalid_argument(format!(
                "CreateContainer {:?}: config.linux.security_context.privileged is set, but pod \
                 sandbox {} was not run privileged (its linux.security_context.privileged)",
                meta.name, sb.id
            )));
        }
        let id = store::new_id();
        let p = container::paths(&self.state, &id);
        let log_path = if !sb.log_directory.is_empty() && !c.log_path.is_empty() {
            std::path::Path::new(&sb.log_directory).join(&c.log_path)
        } else {
            p.dir.join("container.log")
        };
        let mut rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            created_at: store::now_ns(),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            image: image.clone(),
            image_ref: String::new(),
            stop_signal: String::new(),
            repo_digest: String::new(),
            repo_tag: String::new(),
            target_pid_ns: None,
            oom_score_adj: c
                .linux
                .as_ref()
                .and_then(|l| l.resources.as_ref())
                .map_or(0, |r| r.oom_score_adj),
            log_path: log_path.to_string_lossy().into_owned(),
            bundle: p.bundle.clone(),
            shim_dir: p.shim_dir.clone(),
            exit_file: container::exit_record(&self.exits, &id),
            pid: 0,
            started_at: 0,
            mounts: c
                .mounts
                .iter()
                .map(|m| store::MountRecord {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: m.propagation,
                    recursive_read_only: m.recursive_read_only,
                    image: m.image.as_ref().map(|i| i.image.clone()),
                    image_ref: String::new(),
                })
                .collect(),
            user: None,
            resources: c
                .linux
                .as_ref()
                .and_then(|l| l.resources.as_ref())
                .map(container::oci_resources),
            complete: false,
            deferred: None,
        };
        {
            let mut t = self.containers.lock().await;
            if let Some(o) = t
                .items
                .values()
                .find(|o| o.sandbox_id == sb.id && o.name == meta.name && o.attempt == meta.attempt)
            {
                return Err(Status::already_exists(format!(
                    "CreateContainer: the name {} (attempt {}) is taken in pod sandbox {} by container {}",
                    meta.name, meta.attempt, sb.id, o.id
                )));
            }
            t.put_volatile(&id, rec.clone())
                .map_err(|e| io_status("container record", e))?;
        }
        let made = self
            .make_container(&id, &c, &sb, &image, &p, &log_path)
            .await;
        // The record completed, or everything undone (also when the record cannot be written).
        let done = match made {
            Ok(made) => {
                rec.image_ref = made.image_ref;
                // The config's stop signal wins over the image's (KEP-4960).
                rec.stop_signal = match stop_signal {
                    Some(s) => s.name(),
                    None => made.stop_signal,
                };
                rec.repo_digest = made.repo_digest;
                rec.repo_tag = made.repo_tag;
                rec.target_pid_ns = made.target_pid_ns;
                rec.user = Some(made.user);
                rec.deferred = Some(store::Stdio {
                    tty: c.tty,
                    stdin: c.stdin,
                    // Without stdin there is nothing to close after the first attach (the
                    // kubelet passes a pod's stdinOnce as written, stdin or not, and
                    // containerd ignores it then; rsrun-shim refuses --stdin-once alone).
                    stdin_once: c.stdin && c.stdin_once,
                });
                for (i, r) in made.volumes {
                    if let Some(m) = rec.mounts.get_mut(i) {
                        m.image_ref = r;
                    }
                }
                rec.complete = true;
                self.containers
                    .lock()
                    .await
                    .update(&id, rec.clone())
                    .map_err(|e| io_status("container record", e))
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                self.emit(&id, &sb.id, api::ContainerEventType::ContainerCreatedEvent)
                    .await;
                tracing::info!(pod = %sb.id, container = %id, "container created");
                Ok(Response::new(api::CreateContainerResponse {
                    container_id: id,
                }))
            }
            Err(e) => {
                // Nothing half-made stays: rootfs, image volumes, files, record.
                let images = self.images.clone();
                let (cid, dir, sdir) = (id.clone(), p.dir.clone(), p.shim_dir.clone());
                let vols = container::image_volume_ids(&cid, &rec.mounts);
                let own = self.volumes.clone();
                let _ = blocking(move || {
                    let _ = images.remove_rootfs(&cid);
                    for v in vols {
                        let _ = images.remove_rootfs(&v);
                    }
                    let _ = crate::volumes::remove(&own, &cid);
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = std::fs::remove_dir_all(&sdir);
                    Ok(())
                })
                .await;
                let _ = self.containers.lock().await.remove(&id);
                Err(e)
            }
        }
    }

    async fn start_container(
        &self,
        r: Request<api::StartContainerRequest>,
    ) -> Result<Response<api::StartContainerResponse>, Status> {
        let rec = self.container(&r.into_inner().container_id).await?;
        let _g = self.lock_object(&rec.id).await;
        let rec = self.container(&rec.id).await?;
        let st = container::state(&rec).0;
        if st != api::ContainerState::ContainerCreated as i32 {
            return Err(Status::failed_precondition(format!(
                "container {} is not created (state {st})",
                rec.id
            )));
        }
        // Not in a pod that is not ready (its pause gone, or stopped): the container would
        // run on in a pod the kubelet replaces. As containerd, the start fails and is recorded
        // so (exited, StartError 128).
        let pod_ready = self
            .sandboxes
            .lock()
            .await
            .items
            .get(&rec.sandbox_id)
            .map(|s| s.ready);
        if pod_ready != Some(true) {
            let msg = format!(
                "StartContainer: {}: pod sandbox {} is not ready",
                rec.id, rec.sandbox_id
            );
            container::record_start_error(&rec.exit_file, &rec.id, &msg)
                .map_err(|e| io_status(&format!("exit record of {}", rec.id), e))?;
            return Err(Status::failed_precondition(msg));
        }
        if let Some(io) = rec.deferred {
            self.create_in_shim(&rec, io).await?;
        }
        let r = rec.clone();
        let (head, _) = blocking(move || {
            let answer = container::control(&r.shim_dir, &json!({"op": "start"}), START_TIMEOUT)
                .map_err(|e| io_status("the container's shim", e));
            // The shim's pidfd, opened now that its PID is known, for the status calls.
            container::shim_alive(&r);
            answer
        })
        .await?;
        let head = match head["error"].as_str() {
            None => head,
            Some(e) => {
                // Started already: a server killed after the shim started it and before the
                // record learnt it, whose restart could not ask the shim (recover.rs). The
                // shim knows the start: taken from it, not a second start, not an error.
                let r = rec.clone();
                let status = blocking(move || {
                    container::control(
                        &r.shim_dir,
                        &json!({"op": "status"}),
                        std::time::Duration::from_secs(10),
                    )
                    .map_err(|e| io_status("the container's shim", e))
                })
                .await;
                match status {
                    Ok((s, _)) if s["started_at"].is_string() => {
                        tracing::warn!(container = %rec.id, pod = %rec.sandbox_id, "a start a killed server left unrecorded: the shim had started it");
                        s
                    }
                    _ => return Err(Status::unknown(e.to_string())),
                }
            }
        };
        let started = head["started_at"]
            .as_str()
            .and_then(store::parse_rfc3339)
            .unwrap_or_else(store::now_ns);
        let mut t = self.containers.lock().await;
        if let Some(mut c) = t.items.get(&rec.id).cloned() {
            c.started_at = started;
            // A start retried after a restart interrupted the first one has no PID yet.
            if c.pid == 0 {
                c.pid = head["pid"].as_i64().unwrap_or(0) as i32;
            }
            t.update(&rec.id, c)
                .map_err(|e| io_status("container record", e))?;
        }
        drop(t);
        self.emit(
            &rec.id,
            &rec.sandbox_id,
            api::ContainerEventType::ContainerStartedEvent,
        )
        .await;
        tracing::info!(container = %rec.id, pod = %rec.sandbox_id, "container started");
        Ok(Response::new(api::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        r: Request<api::StopContainerRequest>,
    ) -> Result<Response<api::StopContainerResponse>, Status> {
        let r = r.into_inner();
        // Stopping a missing container succeeds.
        let rec = match self.container(&r.container_id).await {
            Ok(c) => c,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(api::StopContainerResponse {}))
            }
            Err(e) => return Err(e),
        };
        let _g = self.lock_object(&rec.id).await;
        // As it is now that this request has it (a start may have run meanwhile: a record
        // from before it would still say the create is deferred, and nothing would be
        // stopped); gone meanwhile is stopped.
        let rec = match self.container(&rec.id).await {
            Ok(c) => c,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(api::StopContainerResponse {}))
            }
            Err(e) => return Err(e),
        };
        self.stop(&rec, Duration::from_secs(r.timeout.max(0) as u64))
            .await?;
        Ok(Response::new(api::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        r: Request<api::RemoveContainerRequest>,
    ) -> Result<Response<api::RemoveContainerResponse>, Status> {
        let rec = match self.container(&r.into_inner().container_id).await {
            Ok(c) => c,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(api::RemoveContainerResponse {}))
            }
            Err(e) => return Err(e),
        };
        let _g = self.lock_object(&rec.id).await;
        // Another request may have removed it meanwhile: then it is removed.
        let rec = match self.container(&rec.id).await {
            Ok(c) => c,
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Ok(Response::new(api::RemoveContainerResponse {}))
            }
            Err(e) => return Err(e),
        };
        self.remove(rec).await?;
        Ok(Response::new(api::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        r: Request<api::ListContainersRequest>,
    ) -> Result<Response<api::ListContainersResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let containers = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| c.complete && container::matches(c, &f))
            .map(container::to_cri)
            .collect();
        Ok(Response::new(api::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        r: Request<api::ContainerStatusRequest>,
    ) -> Result<Response<api::ContainerStatusResponse>, Status> {
        let r = r.into_inner();
        let rec = self.container(&r.container_id).await?;
        let status = container::status(&rec);
        // Verbose, as containerd's (`crictl inspect`: info.pid is what operators nsenter):
        // the pod, the process while it runs, the bundle and the OCI config it runs with.
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            let running = status.state == api::ContainerState::ContainerRunning as i32;
            let v = json!({"sandboxID": rec.sandbox_id,
                "pid": if running { rec.pid } else { 0 },
                "bundle": rec.bundle, "logPath": rec.log_path,
                "stopSignal": container::stop_signal(&rec, false).name()});
            // The config goes in as its bytes, checked to be JSON (a small local file read
            // inline): parsing it into a tree and writing it out again, through the blocking
            // pool, made a verbose status cost twice a plain one.
            let spec = std::fs::read(rec.bundle.join("config.json"))
                .ok()
                .filter(|b| serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok())
                .and_then(|b| String::from_utf8(b).ok());
            let head = v.to_string();
            let head = head.strip_suffix('}').unwrap_or(&head);
            let spec = spec.as_deref().map_or("null", str::trim);
            info.insert(
                "info".to_string(),
                format!("{head},\"runtimeSpec\":{spec}}}"),
            );
        }
        Ok(Response::new(api::ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    async fn reopen_container_log(
        &self,
        r: Request<api::ReopenContainerLogRequest>,
    ) -> Result<Response<api::ReopenContainerLogResponse>, Status> {
        let rec = self.container(&r.into_inner().container_id).await?;
        if container::state(&rec).0 != api::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let d = rec.shim_dir.clone();
        let (head, _) = blocking(move || {
            container::control(&d, &json!({"op": "reopen_log"}), Duration::from_secs(30))
                .map_err(|e| io_status("the container's shim", e))
        })
        .await?;
        match head["error"].as_str() {
            Some(e) => Err(Status::unknown(e.to_string())),
            None => Ok(Response::new(api::ReopenContainerLogResponse {})),
        }
    }

    async fn update_container_resources(
        &self,
        r: Request<api::UpdateContainerResourcesRequest>,
    ) -> Result<Response<api::UpdateContainerResourcesResponse>, Status> {
        let r = r.into_inner();
        let rec = self.container(&r.container_id).await?;
        let _g = self.lock_object(&rec.id).await;
        // As it is now that this request has it: a StartContainer that ran meanwhile made
        // the cgroup (a record from before it would say the create is still deferred, and
        // the limits would go to the config alone).
        let rec = self.container(&rec.id).await?;
        let Some(linux) = r.linux else {
            return Ok(Response::new(api::UpdateContainerResourcesResponse {}));
        };
        let exited = container::state(&rec).0 == api::ContainerState::ContainerExited as i32;
        let v = container::oci_resources(&linux);
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_value(v.clone()).map_err(|e| {
                Status::invalid_argument(format!("UpdateContainerResources: linux: {e}"))
            })?;
        let rt = self.rsrun();
        let id = rec.id.clone();
        let deferred = rec.deferred.is_some();
        let config = rec.bundle.join("config.json");
        let update = v.clone();
        let live = rec.clone();
        // The container's config first, which keeps the limits as containerd's stored spec
        // does: what a create deferred to the start applies (no cgroup exists before it), and
        // the runtimeSpec of the verbose status; then its cgroup files (nothing forks), the
        // config restored if those are refused. An exited container's config alone changes
        // (containerd's: success).
        blocking(move || {
            let text = std::fs::read(&config)
                .map_err(|e| io_status(&format!("read {}", config.display()), e))?;
            let mut spec: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| Status::internal(format!("{}: {e}", config.display())))?;
            merge(&mut spec["linux"]["resources"], &update);
            let out = serde_json::to_vec_pretty(&spec)
                .map_err(|e| Status::internal(format!("{}: {e}", config.display())))?;
            rsrun::state::write_file_atomic(&config, &out, true)
                .map_err(|e| io_status(&format!("write {}", config.display()), e))?;
            if deferred || exited {
                return Ok(());
            }
            let refused = match rt.update(&id, &res) {
                Ok(()) => return Ok(()),
                // It exited meanwhile (its shim then deletes it from the runtime): as for an
                // exited container, the config alone (containerd's: success).
                Err(rsrun::Error::NotFound(_) | rsrun::Error::State { .. })
                    if container::exited_within(&live, Duration::from_secs(1)) =>
                {
                    return Ok(())
                }
                Err(e @ (rsrun::Error::Invalid(_) | rsrun::Error::Config(_))) => {
                    Status::invalid_argument(format!("UpdateContainerResources: {id}: {e}"))
                }
                Err(e) => Status::unknown(format!("UpdateContainerResources: {id}: {e}")),
            };
            if let Err(e) = rsrun::state::write_file_atomic(&config, &text, true) {
                tracing::warn!(container = %id, "restore {} after a refused update: {e}", config.display());
            }
            Err(refused)
        })
        .await?;
        // The record keeps the merged limits (an update changes only what it sets).
        let mut t = self.containers.lock().await;
        if let Some(mut c) = t.items.get(&rec.id).cloned() {
            let mut merged = c.resources.take().unwrap_or(serde_json::json!({}));
            merge(&mut merged, &v);
            c.resources = Some(merged);
            t.update(&rec.id, c)
                .map_err(|e| io_status("container record", e))?;
        }
        tracing::info!(container = %rec.id, pod = %rec.sandbox_id, resources = %v, "container resources updated");
        Ok(Response::new(api::UpdateContainerResourcesResponse {}))
    }

    async fn exec(
        &self,
        r: Request<api::ExecRequest>,
    ) -> Result<Response<api::ExecResponse>, Status> {
        let mut r = r.into_inner();
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("Exec: cmd is required"));
        }
        container::check_exec_cmd("Exec", &r.cmd)?;
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(Status::invalid_argument(
                "Exec: one of stdin, stdout and stderr is required",
            ));
        }
        if r.tty && r.stderr {
            return Err(Status::invalid_argument(
                "Exec: tty and stderr cannot both be set (a terminal has one output)",
            ));
        }
        let rec = self.container(&r.container_id).await?;
        if container::state(&rec).0 != api::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "Exec: container {} is not running",
                rec.id
            )));
        }
        r.container_id = rec.id.clone();
        let url = self
            .streaming
            .url(crate::streaming::Pending::Exec {
                req: r,
                pod: rec.sandbox_id.clone(),
                shim_dir: rec.shim_dir.clone(),
            })
            .map_err(Status::resource_exhausted)?;
        Ok(Response::new(api::ExecResponse { url }))
    }

    async fn attach(
        &self,
        r: Request<api::AttachRequest>,
    ) -> Result<Response<api::AttachResponse>, Status> {
        let mut r = r.into_inner();
        if !(r.stdin || r.stdout || r.stderr) {
            return Err(Status::invalid_argument(
                "Attach: one of stdin, stdout and stderr is required",
            ));
        }
        // As the kubelet's streaming server validates it.
        if r.tty && r.stderr {
            return Err(Status::invalid_argument(
                "Attach: tty and stderr cannot both be set (a terminal has one output)",
            ));
        }
        let rec = self.container(&r.container_id).await?;
        if container::state(&rec).0 != api::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "Attach: container {} is not running",
                rec.id
            )));
        }
        r.container_id = rec.id.clone();
        let url = self
            .streaming
            .url(crate::streaming::Pending::Attach {
                req: r,
                pod: rec.sandbox_id.clone(),
                shim_dir: rec.shim_dir.clone(),
            })
            .map_err(Status::resource_exhausted)?;
        Ok(Response::new(api::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        r: Request<api::PortForwardRequest>,
    ) -> Result<Response<api::PortForwardResponse>, Status> {
        let r = r.into_inner();
        let sb = self.sandbox(&r.pod_sandbox_id).await?.ok_or_else(|| {
            Status::not_found(format!(
                "PortForward: pod sandbox {} not found",
                r.pod_sandbox_id
            ))
        })?;
        if !sb.ready {
            return Err(Status::failed_precondition(format!(
                "PortForward: pod sandbox {} is not ready",
                sb.id
            )));
        }
        if let Some(p) = r.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!(
                "PortForward: port {p} is out of range"
            )));
        }
        let netns = if sb.host_network {
            None
        } else {
            Some(sandbox::ns_path(&sb, "net").ok_or_else(|| {
                Status::failed_precondition(format!(
                    "PortForward: pod sandbox {} has no network namespace",
                    sb.id
                ))
            })?)
        };
        let url = self
            .streaming
            .url(crate::streaming::Pending::PortForward {
                pod: sb.id.clone(),
                netns,
                // In range, checked above.
                ports: r.port.iter().map(|p| *p as u16).collect(),
            })
            .map_err(Status::resource_exhausted)?;
        Ok(Response::new(api::PortForwardResponse { url }))
    }

    async fn exec_sync(
        &self,
        r: Request<api::ExecSyncRequest>,
    ) -> Result<Response<api::ExecSyncResponse>, Status> {
        let r = r.into_inner();
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("ExecSync: cmd is required"));
        }
        container::check_exec_cmd("ExecSync", &r.cmd)?;
        let rec = self.container(&r.container_id).await?;
        if container::state(&rec).0 != api::ContainerState::ContainerRunning as i32 {
            return Err(Status::failed_precondition(format!(
                "ExecSync: container {} is not running",
                rec.id
            )));
        }
        let req = json!({"op": "exec_sync", "args": r.cmd,
            "timeout_ms": (r.timeout.max(0) as u64).saturating_mul(1000)});
        // On the async runtime: if this call is dropped (the client cancelled, or its
        // deadline passed), the connection closes and the shim ends the process.
        let (head, body) = container::control_async(&rec.shim_dir, &req)
            .await
            .map_err(|e| io_status("the container's shim", e))?;
        if let Some(e) = head["error"].as_str() {
            return Err(Status::unknown(e.to_string()));
        }
        if head["timed_out"] == true {
            return Err(Status::deadline_exceeded(format!(
                "ExecSync: command timed out after {} s",
                r.timeout
            )));
        }
        // The whole answer or an error: a shim that died (or gave up) while sending it must
        // not pass for a command whose output was shorter.
        let (n, m) = (head["stdout_len"].as_u64(), head["stderr_len"].as_u64());
        let n = match (n, m) {
            (Some(n), Some(m)) if n.checked_add(m) == Some(body.len() as u64) => n as usize,
            _ => {
                return Err(Status::unknown(format!(
                    "ExecSync: the container's shim sent {} bytes of output, its answer said \
                     {} and {}",
                    body.len(),
                    head["stdout_len"],
                    head["stderr_len"]
                )))
            }
        };
        Ok(Response::new(api::ExecSyncResponse {
            stdout: body[..n].to_vec(),
            stderr: body[n..].to_vec(),
            exit_code: head["exit_code"].as_i64().unwrap_or(-1) as i32,
        }))
    }

    async fn container_stats(
        &self,
        r: Request<api::ContainerStatsRequest>,
    ) -> Result<Response<api::ContainerStatsResponse>, Status> {
        let rec = self.container(&r.into_inner().container_id).await?;
        let mut all = self.stats_of(vec![rec]).await?;
        Ok(Response::new(api::ContainerStatsResponse {
            stats: all.pop(),
        }))
    }

    async fn list_container_stats(
        &self,
        r: Request<api::ListContainerStatsRequest>,
    ) -> Result<Response<api::ListContainerStatsResponse>, Status> {
        let f = r.into_inner().filter.unwrap_or_default();
        let recs: Vec<ContainerRecord> = self
            .containers
            .lock()
            .await
            .items
            .values()
            .filter(|c| {
                c.complete
                    && (f.id.is_empty() || c.id.starts_with(&f.id))
                    && (f.pod_sandbox_id.is_empty() || c.sandbox_id.starts_with(&f.pod_sandbox_id))
                    && f.label_selector
                        .iter()
                        .all(|(k, v)| c.labels.get(k) == Some(v))
            })
            .cloned()
            .collect();
        let stats = self.stats_of(recs).await?;
        Ok(Response::new(api::ListContainerStatsResponse { stats }))
    }

    // Pod stats and CRI metrics: metrics.rs.
    async fn pod_sandbox_stats(
        &self,
        r: Request<api::PodSandboxStatsRequest>,
    ) -> Result<Response<api::PodSandboxStatsResponse>, Status> {
        let stats = self.pod_stats_of(&r.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(api::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<api::ListPodSandboxStatsRequest>,
    ) -> Result<Response<api::ListPodSandboxStatsResponse>, Status> {
        let stats = self.list_pod_stats(r.into_inner().filter).await?;
        Ok(Response::new(api::ListPodSandboxStatsResponse { stats }))
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<api::ListMetricDescriptorsRequest>,
    ) -> Result<Response<api::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(api::ListMetricDescriptorsResponse {
            descriptors: crate::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<api::ListPodSandboxMetricsResponse>, Status> {
        let pod_metrics = self.pod_sandbox_metrics().await?;
        Ok(Response::new(api::ListPodSandboxMetricsResponse {
            pod_metrics,
        }))
    }

    not_built! {
        checkpoint_container(CheckpointContainerRequest) -> api::CheckpointContainerResponse;
        checkpoint_pod(CheckpointPodRequest) -> api::CheckpointPodResponse;
        restore_pod(RestorePodRequest) -> api::RestorePodResponse;
    }

    type StreamPodSandboxesStream = Streamed<api::StreamPodSandboxesResponse>;
    type StreamContainersStream = Streamed<api::StreamContainersResponse>;
    type StreamContainerStatsStream = Streamed<api::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = Streamed<api::StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = Streamed<api::ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = Streamed<api::StreamPodSandboxMetricsResponse>;

    async fn get_container_events(
        &self,
        _r: Request<api::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        use tokio_stream::StreamExt;
        let rx = self.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| match e {
            Ok(ev) => Some(Ok(ev)),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "a GetContainerEvents subscriber fell behind");
                None
            }
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn stream_pod_sandboxes(
        &self,
        r: Request<api::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = r.into_inner().filter;
        let items = self
            .list_pod_sandbox(Request::new(api::ListPodSandboxRequest { filter }))
            .await?
            .into_inner()
            .items;
        Ok(Response::new(crate::events::chunked(
            items,
            |pod_sandboxes| api::StreamPodSandboxesResponse { pod_sandboxes },
        )))
    }

    async fn stream_containers(
        &self,
        r: Request<api::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = r.into_inner().filter;
        let items = self
            .list_containers(Request::new(api::ListContainersRequest { filter }))
            .await?
            .into_inner()
            .containers;
        Ok(Response::new(crate::events::chunked(items, |containers| {
            api::StreamContainersResponse { containers }
        })))
    }

    async fn stream_container_stats(
        &self,
        r: Request<api::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = r.into_inner().filter;
        let items = self
            .list_container_stats(Request::new(api::ListContainerStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(Response::new(crate::events::chunked(
            items,
            |container_stats| api::StreamContainerStatsResponse { container_stats },
        )))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<api::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = r.into_inner().filter;
        let items = self
            .list_pod_sandbox_stats(Request::new(api::ListPodSandboxStatsRequest { filter }))
            .await?
            .into_inner()
            .stats;
        Ok(Response::new(crate::events::chunked(
            items,
            |pod_sandbox_stats| api::StreamPodSandboxStatsResponse { pod_sandbox_stats },
        )))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<api::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let items = self
            .list_pod_sandbox_metrics(Request::new(api::ListPodSandboxMetricsRequest {}))
            .await?
            .into_inner()
            .pod_metrics;
        Ok(Response::new(crate::events::chunked(
            items,
            |pod_sandbox_metrics| api::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }
}

/// What make_container made.
/// Now, as the shim writes times in exit records.
fn now_rfc3339() -> String {
    let ns = store::now_ns();
    rsrun::state::rfc3339(
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

impl Runtime {
    /// For pid mode TARGET (`kubectl debug --target`, an ephemeral container): the PID of the
    /// running container of the same pod whose PID namespace the new one joins.
    async fn target_pid(
        &self,
        c: &api::ContainerConfig,
        sb: &SandboxRecord,
    ) -> Result<Option<i32>, Status> {
        let Some(ns) = c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .filter(|n| n.pid == api::NamespaceMode::Target as i32)
        else {
            return Ok(None);
        };
        let field = "linux.security_context.namespace_options.target_id";
        if ns.target_id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: {field} is required with pid mode TARGET"
            )));
        }
        let t = self
            .containers
            .lock()
            .await
            .items
            .get(&ns.target_id)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "CreateContainer: {field}: container {} not found",
                    ns.target_id
                ))
            })?;
        if t.sandbox_id != sb.id {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: {field}: container {} is not in pod sandbox {}",
                t.id, sb.id
            )));
        }
        if container::state(&t).0 != api::ContainerState::ContainerRunning as i32 || t.pid <= 0 {
            return Err(Status::failed_precondition(format!(
                "CreateContainer: {field}: container {} is not running",
                t.id
            )));
        }
        Ok(Some(t.pid))
    }
}

/// The inode of process `pid`'s PID namespace (none: no such process).
fn pid_ns_inode(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

struct Made {
    image_ref: String,
    target_pid_ns: Option<(i32, u64)>,
    repo_digest: String,
    repo_tag: String,
    stop_signal: String,
    user: (u32, u32, Vec<u32>),
    /// Image volumes: (mount index, image ID).
    volumes: Vec<(usize, String)>,
}

impl Runtime {
    /// The image's rootfs, image volumes, the bundle, and the shim that creates the
    /// container.
    async fn make_container(
        &self,
        id: &str,
        c: &api::ContainerConfig,
        sb: &SandboxRecord,
        image: &str,
        p: &container::Paths,
        log_path: &std::path::Path,
    ) -> Result<Made, Status> {
        // Checked before anything is made.
        let target_pid = self.target_pid(c, sb).await?;
        let target_pid_ns = match target_pid {
            Some(pid) => Some((
                pid,
                pid_ns_inode(pid).ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "CreateContainer: the target container's process {pid} is gone"
                    ))
                })?,
            )),
            None => None,
        };
        let images = self.images.clone();
        let (cid, img) = (id.to_string(), image.to_string());
        let user_image = c
            .image
            .as_ref()
            .map(|i| i.user_specified_image.clone())
            .filter(|s| !s.is_empty());
        // The name the user wrote (the kubelet sends the image ID in `image`): whose repo
        // digest ContainerStatus reports.
        let asked = user_image.clone().unwrap_or_else(|| image.to_string());
        let readonly = false;
        let wanted: Vec<(usize, api::Mount)> = c
            .mounts
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, m)| m.image.is_some())
            .collect();
        // A container in a user namespace is root of it only: its rootfs and image volumes
        // are mounted where it may walk (its state directory), not inside the image store.
        let walkable = sb.userns.as_ref().map(|u| {
            (
                p.dir.clone(),
                rsrun_image::IdMap {
                    userns: sb.ns_dir.join("user"),
                    uid: u.uid.1,
                    gid: u.gid.1,
                },
            )
        });
        // The image's VOLUME paths get directories of their own, unless a CRI mount covers
        // them (crate::volumes).
        // (Owned by the container's root on the host: not 0 in a user namespace.)
        let root_ids = sb.userns.as_ref().map_or((0, 0), |u| (u.uid.1, u.gid.1));
        let own_volumes = self
            .image_volumes
            .then(|| (crate::volumes::dir(&self.volumes, id), c.mounts.clone()));
        let (rootfs, (image_ref, repo_digest, repo_tag), cfg, volumes, own) = blocking(move || {
            let insp = images.inspect(&img).map_err(|e| match e {
                rsrun_image::Error::NotFound(_) => {
                    Status::not_found(format!("CreateContainer: image {img} is not present"))
                }
                e => crate::error::image_status(e),
            })?;
            // The rootfs of the image inspected, by its ID: a tag that a pull moves meanwhile
            // would give the container one image's config on another's files.
            let by_id = insp.image.id.to_string();
            let rootfs = match &walkable {
                Some((d, m)) => {
                    let at = d.join("rootfs");
                    images
                        .prepare_rootfs_at(&cid, &by_id, readonly, &at, Some(m))
                        .map_err(crate::error::image_status)?;
                    at
                }
                None => images
                    .prepare_rootfs(&cid, &by_id, readonly)
                    .map_err(crate::error::image_status)?,
            };
            let mut volumes = Vec::new();
            for (i, m) in wanted {
                let (path, vref) =
                    container::image_volume(&images, &cid, i, &m, walkable.as_ref())?;
                volumes.push((i, path, vref));
            }
            let digest = container::repo_digest(&asked, &insp.image.repo_digests);
            let tag = container::repo_tag(&asked, &insp.image.repo_tags);
            let cfg = container::ImageConfig::from_spec(insp.config);
            let own = match own_volumes {
                Some((dir, mounts)) => crate::volumes::wanted(&cfg.volumes, &mounts)
                    .and_then(|w| crate::volumes::make(&rootfs, &dir, &w, root_ids))
                    .map_err(|e| {
                        Status::failed_precondition(format!("CreateContainer: image {img}: {e}"))
                    })?,
                None => Vec::new(),
            };
            Ok((
                rootfs,
                (insp.image.id.to_string(), digest, tag),
                cfg,
                volumes,
                own,
            ))
        })
        .await?;
        // Image volumes are bind mounts of their read-only snapshots.
        let mut c = c.clone();
        for (i, path, _) in &volumes {
            c.mounts[*i].host_path = path.to_string_lossy().into_owned();
        }
        // After the CRI's: the spec sorts them by path (parents first).
        c.mounts.extend(own);
        // The image's name as containerd annotates it: the one the user wrote, else the
        // repo tag found for it, else what was asked.
        let image_name = user_image.unwrap_or_else(|| {
            if repo_tag.is_empty() {
                image.to_string()
            } else {
                repo_tag.clone()
            }
        });
        let mut spec = container::oci_spec(
            id,
            &c,
            sb,
            &cfg,
            &rootfs,
            &self.cgroup_parent,
            self.systemd_cgroup,
            self.default_caps.as_deref(),
            target_pid,
            &image_name,
        )?;
        // CDI devices (the field, and the annotations device plugins set).
        let cdi = crate::cdi::requested(
            &c.cdi_devices
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>(),
            &c.annotations,
        );
        crate::cdi::apply(&mut spec, &self.cdi_dirs, &cdi)
            .map_err(|e| Status::invalid_argument(format!("CreateContainer: {e}")))?;
        let u = &spec["process"]["user"];
        let user = (
            u["uid"].as_u64().unwrap_or(0) as u32,
            u["gid"].as_u64().unwrap_or(0) as u32,
            u["additionalGids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|g| g.as_u64())
                        .map(|g| g as u32)
                        .collect()
                })
                .unwrap_or_default(),
        );
        std::fs::create_dir_all(&p.bundle).map_err(|e| io_status("create the bundle", e))?;
        std::fs::write(
            p.bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).map_err(|e| io_status("encode config.json", e))?,
        )
        .map_err(|e| io_status("write config.json", e))?;
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_status(&format!("create {}", parent.display()), e))?;
        }
        Ok(Made {
            image_ref,
            target_pid_ns,
            repo_digest,
            repo_tag,
            stop_signal: cfg.stop_signal.clone(),
            user,
            volumes: volumes.into_iter().map(|(i, _, r)| (i, r)).collect(),
        })
    }

    /// The deferred half of CreateContainer, run by StartContainer: the shim, which has the
    /// runtime create the container. The record stops being deferred before the shim runs,
    /// so that a server killed meanwhile finds a container whose shim runs or is lost, never
    /// one it would create a second time. A create that fails leaves an exit record with the
    /// runtime's error (reason StartError, exit code 128, as containerd reports it).
    async fn create_in_shim(&self, rec: &ContainerRecord, io: store::Stdio) -> Result<(), Status> {
        if let Some((pid, ino)) = rec.target_pid_ns {
            if pid_ns_inode(pid) != Some(ino) {
                return Err(Status::failed_precondition(format!(
                    "StartContainer: {}: the target container (pid mode TARGET) has exited",
                    rec.id
                )));
            }
        }
        let mut r = rec.clone();
        r.deferred = None;
        self.containers
            .lock()
            .await
            .update(&r.id, r.clone())
            .map_err(|e| io_status("container record", e))?;
        // The paths the record holds (a container created by an older server keeps its
        // bundle where that one put it).
        let mut p = container::paths(&self.state, &r.id);
        p.bundle = r.bundle.clone();
        p.shim_dir = r.shim_dir.clone();
        p.exit_file = r.exit_file.clone();
        let log = std::path::PathBuf::from(&r.log_path);
        match self
            .start_shim(&r.id, &p, &log, io.tty, io.stdin, io.stdin_once)
            .await
        {
            Ok(pid) => {
                r.pid = pid;
                let id = r.id.clone();
                self.containers
                    .lock()
                    .await
                    .update(&id, r)
                    .map_err(|e| io_status("container record", e))?;
                Ok(())
            }
            Err(e) => {
                let msg = format!("StartContainer: {}", e.message());
                let _ = container::record_start_error(&r.exit_file, &r.id, &msg);
                Err(Status::new(e.code(), msg))
            }
        }
    }

    /// Runs rsrun-shim for the bundle in `p`: the container's init PID, or the runtime's
    /// one-line error (nothing left behind then).
    async fn start_shim(
        &self,
        id: &str,
        p: &container::Paths,
        log_path: &std::path::Path,
        tty: bool,
        stdin: bool,
        stdin_once: bool,
    ) -> Result<i32, Status> {
        let mut cmd = tokio::process::Command::new(&self.shim);
        cmd.arg("--id")
            .arg(id)
            .arg("--bundle")
            .arg(&p.bundle)
            .arg("--dir")
            .arg(&p.shim_dir)
            .arg("--log-path")
            .arg(log_path)
            .arg("--exit-file")
            .arg(&p.exit_file)
            .arg("--root")
            .arg(&self.runtime_root)
            // Its cgroups and runtime state go when it exits, not when it is removed.
            .arg("--delete-on-exit")
            .args(self.systemd_cgroup.then_some("--systemd-cgroup"))
            .stdin(std::process::Stdio::null());
        if tty {
            cmd.arg("--terminal");
        }
        if stdin {
            cmd.arg("--stdin");
        }
        if stdin_once {
            cmd.arg("--stdin-once");
        }
        if let Some(n) = self.log_max_line {
            cmd.arg("--log-max-line").arg(n.to_string());
        }
        let out = cmd
            .output()
            .await
            .map_err(|e| io_status(&format!("run {}", self.shim.display()), e))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            return Err(Status::unknown(
                msg.trim().trim_start_matches("rsrun-shim: ").to_string(),
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| Status::internal("rsrun-shim printed no PID"))
    }

    /// The pod's pause container: created and started under a shim, its PID namespace
    /// pinned with the others.
    async fn start_pause(&self, sb: &SandboxRecord) -> Result<(), Status> {
        let p = container::paths(&self.state, &sb.pause_id);
        let spec = sandbox::pause_spec(
            sb,
            &self.pause_rootfs,
            &self.cgroup_parent,
            self.systemd_cgroup,
        )?;
        std::fs::create_dir_all(&p.bundle).map_err(|e| io_status("create the pause bundle", e))?;
        std::fs::write(
            p.bundle.join("config.json"),
            serde_json::to_vec(&spec).map_err(|e| io_status("encode config.json", e))?,
        )
        .map_err(|e| io_status("write the pause config", e))?;
        let log = p.dir.join("pause.log");
        let pid = self
            .start_shim(&sb.pause_id, &p, &log, false, false, false)
            .await
            .map_err(|e| Status::new(e.code(), format!("RunPodSandbox: pause: {}", e.message())))?;
        let d = p.shim_dir.clone();
        let (head, _) = blocking(move || {
            container::control(&d, &json!({"op": "start"}), START_TIMEOUT)
                .map_err(|e| io_status("the pause's shim", e))
        })
        .await?;
        if let Some(e) = head["error"].as_str() {
            return Err(Status::unknown(format!("RunPodSandbox: pause: {e}")));
        }
        let r = sb.clone();
        blocking(move || {
            sandbox::pin_pause(&r, pid, r.shares_pid())
                .map_err(|e| io_status("pin the pod's namespaces", e))
        })
        .await
    }

    /// Kills and deletes the pause container, if the pod has one (gone already is fine).
    pub(crate) async fn stop_pause(&self, sb: &SandboxRecord) -> Result<(), Status> {
        if sb.pause_id.is_empty() {
            return Ok(());
        }
        let p = container::paths(&self.state, &sb.pause_id);
        let rec = ContainerRecord {
            id: sb.pause_id.clone(),
            exit_file: p.exit_file.clone(),
            shim_dir: p.shim_dir.clone(),
            complete: true,
            ..Default::default()
        };
        self.stop(&rec, Duration::ZERO).await?;
        container::forget_shim(&sb.pause_id);
        let rt = self.rsrun();
        let id = sb.pause_id.clone();
        blocking(move || {
            match rt.delete(&id, true) {
                Ok(()) | Err(rsrun::Error::NotFound(_)) => {}
                Err(e) => return Err(io_status(&format!("delete the pause {id}"), e)),
            }
            for d in [&p.dir, &p.shim_dir] {
                match std::fs::remove_dir_all(d) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_status(&format!("remove {}", d.display()), e))
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await
    }
}
