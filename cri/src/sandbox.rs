//! Pod sandboxes: the pod's network, IPC and UTS namespaces, made by a short-lived thread of
//! this server (unshare affects only the calling thread for these three) and pinned by bind
//! mounts of their nsfs files, so that they outlive any process; the pod's hostname,
//! resolv.conf and hosts files. Containers join the pinned namespaces by path.
//!
//! A pod that shares a PID namespace gets rsrun-pause (a freestanding static binary carried
//! in rsrun-cri) as its PID 1, a container under rsrun-shim like the others; its PID namespace
//! is pinned too. The pod's network namespace is attached by the CNI plugins (network.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tonic::Status;

use crate::api;
use crate::store::{self, SandboxRecord};

pub const NAMESPACES: [&str; 5] = ["net", "ipc", "uts", "pid", "user"];
/// The pod's /dev/shm tmpfs under its namespace dir (`make_shm`).
const SHM: &str = "shm";

/// rsrun-pause, built by build.rs from cri/pause.
pub const PAUSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rsrun-pause"));

/// Installs the pause rootfs (`/pause`, an empty `/dev` for the tmpfs and `/proc` for a
/// pause that writes sysctls) under `dir`.
pub fn install_pause(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("dev"))?;
    std::fs::create_dir_all(rootfs.join("proc"))?;
    let bin = rootfs.join("pause");
    if std::fs::read(&bin).ok().as_deref() != Some(PAUSE) {
        let tmp = rootfs.join(".pause.tmp");
        std::fs::write(&tmp, PAUSE)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &bin)?;
    }
    Ok(rootfs)
}

/// The OCI config of a pod's pause container: no capabilities, no_new_privs, a read-only
/// root, its own PID and mount namespaces, the pod's others.
/// The cgroupsPath of a pod's container (`name`: its cgroup's name) under the pod's
/// cgroup parent (or the server's default): a path below it with the cgroupfs driver; with
/// the systemd driver, `slice::name`, which rsrun makes the scope `name.scope` in that
/// slice (the kubelet gives slices such as kubepods-burstable-pod<uid>.slice; a path whose
/// last component is a slice, as critest's "/test.slice", names that slice, as containerd
/// and CRI-O take it).
pub fn cgroups_path(
    pod_parent: &str,
    default_parent: &str,
    name: &str,
    systemd: bool,
) -> Result<String, Status> {
    let parent = if pod_parent.is_empty() {
        default_parent
    } else {
        pod_parent
    };
    if !systemd {
        return Ok(format!("{}/{name}", parent.trim_end_matches('/')));
    }
    let slice = parent
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("");
    if !slice.ends_with(".slice")
        || slice.contains(':')
        || rsrun::cgroups::systemd::slice_path(slice).is_err()
    {
        return Err(Status::invalid_argument(format!(
            "cgroup_parent {parent:?} is not a systemd slice (name.slice), and the cgroup driver is systemd: the kubelet's cgroupDriver must match rsrun-cri's cgroup_driver"
        )));
    }
    Ok(format!("{slice}::{name}"))
}

pub fn pause_spec(
    r: &SandboxRecord,
    rootfs: &Path,
    cgroup_parent: &str,
    systemd: bool,
) -> Result<serde_json::Value, Status> {
    let mut namespaces = vec![
        serde_json::json!({"type": "pid"}),
        serde_json::json!({"type": "mount"}),
    ];
    let cgroups_path = cgroups_path(
        &r.cgroup_parent,
        cgroup_parent,
        &format!("rsrun-pause-{}", r.id),
        systemd,
    )?;
    if r.userns.is_some() {
        // The pause makes the pod's namespaces inside the pod's user namespace, which then
        // owns them; they are pinned from it (pin_pause).
        namespaces.push(serde_json::json!({"type": "user"}));
        namespaces.push(serde_json::json!({"type": "uts"}));
        if !r.host_network {
            namespaces.push(serde_json::json!({"type": "network"}));
        }
        if !r.host_ipc {
            namespaces.push(serde_json::json!({"type": "ipc"}));
        }
    } else {
        namespaces.extend(joined_namespaces(r));
    }
    let mut annotations: serde_json::Map<String, serde_json::Value> =
        crate::container::cri_annotations(r, "sandbox")
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
    annotations.insert(
        "io.kubernetes.cri.sandbox-log-directory".into(),
        serde_json::json!(r.log_directory),
    );
    let mut spec = serde_json::json!({
        "ociVersion": "1.2.0",
        "annotations": annotations,
        // The pause's OOM score is containerd's for its sandboxes: below every container's
        // (the guaranteed ones' -997), it holds the pod's PID namespace.
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/pause"],
                    "env": [], "cwd": "/", "noNewPrivileges": true, "oomScoreAdj": -998},
        "root": {"path": rootfs, "readonly": true},
        "mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "noexec", "mode=755", "size=64k"]}],
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
        },
    });
    if let Some(u) = &r.userns {
        let map = |m: (u32, u32, u32)| {
            vec![serde_json::json!({"containerID": m.0, "hostID": m.1, "size": m.2})]
        };
        spec["hostname"] = serde_json::json!(r.hostname);
        // The IPC sysctls, written by the pause as the root of the namespace it makes
        // (apply_sysctls writes the others once the network is attached).
        let own: serde_json::Map<String, serde_json::Value> = r
            .sysctls
            .iter()
            .filter(|(k, _)| ipc_sysctl(k))
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        if !own.is_empty() {
            spec["linux"]["sysctl"] = serde_json::Value::Object(own);
            spec["mounts"]
                .as_array_mut()
                .expect("mounts")
                .push(serde_json::json!(
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]}));
        }
        spec["linux"]["uidMappings"] = serde_json::json!(map(u.uid));
        spec["linux"]["gidMappings"] = serde_json::json!(map(u.gid));
    }
    Ok(spec)
}

/// The pod's pinned network, IPC and UTS namespaces, as OCI namespaces joined by path (those
/// the pod takes from the host are absent).
pub fn joined_namespaces(r: &SandboxRecord) -> Vec<serde_json::Value> {
    [
        ("user", "user"),
        ("net", "network"),
        ("ipc", "ipc"),
        ("uts", "uts"),
    ]
    .into_iter()
    .filter_map(|(n, oci)| ns_path(r, n).map(|p| serde_json::json!({"type": oci, "path": p})))
    .collect()
}

/// Pins namespaces of the pause (`pid`) beside the others (containers join them by path):
/// its PID namespace when the pod shares one; with a user namespace, also that and the pod's
/// network, IPC and UTS namespaces, which the pause made inside it.
pub fn pin_pause(r: &SandboxRecord, pid: i32, pod_pid: bool) -> std::io::Result<()> {
    let mut names = Vec::new();
    if pod_pid {
        names.push("pid");
    }
    if r.userns.is_some() {
        names.extend(["user", "uts"]);
        if !r.host_network {
            names.push("net");
        }
        if !r.host_ipc {
            names.push("ipc");
        }
    }
    for n in names {
        let p = r.ns_dir.join(n);
        std::fs::File::create(&p)?;
        nix::mount::mount(
            Some(format!("/proc/{pid}/ns/{n}").as_str()),
            &p,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )?;
    }
    if r.userns.is_some() {
        // The loopback of the network namespace the pause made: set by a thread that enters
        // it (root of an ancestor user namespace may), as make_namespaces does for the others.
        let (dir, net) = (r.ns_dir.clone(), !r.host_network);
        let ipc = !r.host_ipc;
        std::thread::spawn(move || -> std::io::Result<()> {
            for (n, flag, want) in [
                ("net", nix::sched::CloneFlags::CLONE_NEWNET, net),
                ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC, ipc),
            ] {
                if want {
                    let f = std::fs::File::open(dir.join(n))?;
                    nix::sched::setns(&f, flag)?;
                }
            }
            if net {
                rsrun::sys::set_link_up("lo")?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))??;
    }
    Ok(())
}

/// What RunPodSandbox asks, checked.
pub struct Spec {
    pub meta: api::PodSandboxMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<api::DnsConfig>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub cgroup_parent: String,
    pub host_network: bool,
    pub host_ipc: bool,
    /// The containers share one PID namespace (with a pause process as its PID 1).
    pub pod_pid: bool,
    /// The containers run in the node's PID namespace.
    pub host_pid: bool,
    /// Namespaced sysctls, applied in the pod's namespaces.
    pub sysctls: Vec<(String, String)>,
    /// hostPort mappings (given to the CNI portmap plugin).
    pub port_mappings: Vec<api::PortMapping>,
    /// The pod's user namespace (mode POD): its uid and gid mappings.
    pub userns: Option<UserNs>,
    /// The pod-level resources and overhead, as OCI `linux.resources`.
    pub resources: Option<serde_json::Value>,
    pub overhead: Option<serde_json::Value>,
    /// linux.security_context.privileged: the pod may have privileged containers.
    pub privileged: bool,
}

/// A pod's user namespace: one uid and one gid mapping, container ID 0 mapped, as the
/// kubelet asks (container ID, host ID, length).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserNs {
    pub uid: (u32, u32, u32),
    pub gid: (u32, u32, u32),
}

/// The CRI's user namespace options, checked: None for the node's user namespace.
fn check_userns(
    o: Option<&api::UserNamespace>,
    host_network: bool,
) -> Result<Option<UserNs>, Status> {
    let Some(o) = o else { return Ok(None) };
    let bad = |m: String| {
        Err(Status::invalid_argument(format!(
            "RunPodSandbox: userns_options: {m}"
        )))
    };
    match api::NamespaceMode::try_from(o.mode) {
        Ok(api::NamespaceMode::Node) => {
            if !o.uids.is_empty() || !o.gids.is_empty() {
                return bad("mode NODE takes no mappings".into());
            }
            return Ok(None);
        }
        Ok(api::NamespaceMode::Pod) => {}
        _ => {
            return bad(format!(
                "mode {} is not supported (only NODE and POD)",
                o.mode
            ))
        }
    }
    if host_network {
        return bad("a user namespace with the host's network is not supported".into());
    }
    let one = |what: &str, m: &[api::IdMapping]| -> Result<(u32, u32, u32), Status> {
        match m {
            [x] if x.container_id == 0
                && x.length > 0
                && x.host_id.checked_add(x.length - 1).is_some() =>
            {
                Ok((x.container_id, x.host_id, x.length))
            }
            [x] if x.container_id != 0 => Err(Status::invalid_argument(format!(
                "RunPodSandbox: userns_options.{what}: container ID 0 must be mapped (got {})",
                x.container_id
            ))),
            [_] => Err(Status::invalid_argument(format!(
                "RunPodSandbox: userns_options.{what}: the mapping's length is 0 or overflows"
            ))),
            _ => Err(Status::invalid_argument(format!(
                "RunPodSandbox: userns_options.{what}: exactly one mapping is supported (got {})",
                m.len()
            ))),
        }
    };
    Ok(Some(UserNs {
        uid: one("uids", &o.uids)?,
        gid: one("gids", &o.gids)?,
    }))
}

/// The sysctls every pod with a network namespace of its own gets unless it sets them, as
/// containerd 2.x (`enable_unprivileged_ports`, `enable_unprivileged_icmp`, both on by default):
/// a non-root process may bind ports below 1024 (a restricted pod's NET_BIND_SERVICE add does
/// nothing for a non-root user) and open ICMP echo sockets (ping).
#[derive(Debug, Clone, Copy)]
pub struct NetDefaults {
    /// `net.ipv4.ip_unprivileged_port_start = 0`.
    pub unprivileged_ports: bool,
    /// `net.ipv4.ping_group_range = 0 2147483647` (not in a pod with a user namespace, where
    /// containerd leaves it too).
    pub unprivileged_icmp: bool,
}

/// Most bytes of labels and annotations (keys and values) a pod or a container may carry: they
/// are kept in its record, rewritten on each change, copied into its OCI config and sent with
/// every list and event. The Kubernetes API allows 256 KiB of annotations an object.
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// Refuses labels and annotations over `MAX_METADATA_BYTES` together.
pub fn check_metadata_size(
    what: &str,
    labels: &std::collections::HashMap<String, String>,
    annotations: &std::collections::HashMap<String, String>,
) -> Result<(), Status> {
    let size: usize = labels
        .iter()
        .chain(annotations)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if size > MAX_METADATA_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what}: labels and annotations of {size} bytes, over the {MAX_METADATA_BYTES}-byte limit"
        )));
    }
    Ok(())
}

pub fn check(config: Option<api::PodSandboxConfig>, net: NetDefaults) -> Result<Spec, Status> {
    let c = config.ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
    check_metadata_size("RunPodSandbox: config", &c.labels, &c.annotations)?;
    let meta = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("RunPodSandbox: config.metadata is required"))?;
    for (f, v) in [
        ("name", &meta.name),
        ("namespace", &meta.namespace),
        ("uid", &meta.uid),
    ] {
        if v.is_empty() {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: config.metadata.{f} is required"
            )));
        }
    }
    let linux = c.linux.unwrap_or_default();
    let ns = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    // No hostname: the node's, as containerd does (the kubelet always sends one).
    let hostname = if c.hostname.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into())
    } else {
        c.hostname.clone()
    };
    if hostname.len() > 64 || hostname.contains(['\0', '/', '\n']) {
        return Err(Status::invalid_argument(format!(
            "RunPodSandbox: config.hostname {hostname:?} is not a valid hostname"
        )));
    }
    // The bandwidth annotations, checked before anything is made (CNI reads them at ADD; a
    // pod on the host's network has no CNI, and they are ignored, as containerd does).
    if ns.network != api::NamespaceMode::Node as i32 {
        crate::network::bandwidth(&c.annotations)
            .map_err(|e| Status::invalid_argument(format!("RunPodSandbox: config.{e}")))?;
    }
    let mut sysctls: Vec<(String, String)> = Vec::new();
    for (name, v) in &linux.sysctls {
        let (k, _) = rsrun::config::sysctl_key(name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "RunPodSandbox: config.linux.sysctls: {name:?} is not a sysctl name"
            ))
        })?;
        let k = k.as_str();
        // What the runtime will take (rsrun's list, as runc's); a pod on the host's network
        // is in the host's UTS namespace too.
        use oci_spec::runtime::LinuxNamespaceType as Ns;
        let kind = rsrun::config::sysctl_namespace(k);
        let (ipc, net, uts) = (
            kind == Some(Ns::Ipc),
            kind == Some(Ns::Network),
            kind == Some(Ns::Uts),
        );
        if kind.is_none() {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: sysctl {name:?} is not namespaced: it would change the node"
            )));
        }
        if ((net || uts) && ns.network == api::NamespaceMode::Node as i32)
            || (ipc && ns.ipc == api::NamespaceMode::Node as i32)
        {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: sysctl {name:?} with the host's namespace would change the node"
            )));
        }
        if v.contains(['\0', '\n']) {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: sysctl {name:?}: the value {v:?} has a newline or NUL"
            )));
        }
        sysctls.push((k.to_string(), v.clone()));
    }
    for (i, m) in c.port_mappings.iter().enumerate() {
        if !(1..=65535).contains(&m.container_port) || !(0..=65535).contains(&m.host_port) {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: config.port_mappings[{i}]: container port {} / host port {} out of range",
                m.container_port, m.host_port
            )));
        }
        if !m.host_ip.is_empty() && m.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "RunPodSandbox: config.port_mappings[{i}].host_ip {:?} is not an IP address",
                m.host_ip
            )));
        }
    }
    let host_network = ns.network == api::NamespaceMode::Node as i32;
    let userns = check_userns(ns.userns_options.as_ref(), host_network)?;
    if !host_network {
        let mut default = |k: &str, v: &str| {
            if !sysctls.iter().any(|(have, _)| have == k) {
                sysctls.insert(0, (k.to_string(), v.to_string()));
            }
        };
        if net.unprivileged_icmp && userns.is_none() {
            default("net.ipv4.ping_group_range", "0 2147483647");
        }
        if net.unprivileged_ports {
            default("net.ipv4.ip_unprivileged_port_start", "0");
        }
    }
    Ok(Spec {
        userns,
        port_mappings: c.port_mappings,
        meta,
        sysctls,
        hostname,
        log_directory: c.log_directory,
        dns: c.dns_config,
        labels: c.labels,
        annotations: c.annotations,
        cgroup_parent: linux.cgroup_parent,
        host_network: ns.network == api::NamespaceMode::Node as i32,
        host_ipc: ns.ipc == api::NamespaceMode::Node as i32,
        pod_pid: ns.pid == api::NamespaceMode::Pod as i32,
        host_pid: ns.pid == api::NamespaceMode::Node as i32,
        resources: linux
            .resources
            .as_ref()
            .map(crate::container::oci_resources),
        overhead: linux.overhead.as_ref().map(crate::container::oci_resources),
        privileged: linux
            .security_context
            .as_ref()
            .is_some_and(|s| s.privileged),
    })
}

/// The pod's name key: one sandbox per name, namespace, uid and attempt.
pub fn name_key(r: &SandboxRecord) -> String {
    format!("{}_{}_{}_{}", r.name, r.namespace, r.uid, r.attempt)
}

/// Creates the namespaces (UTS always; network and IPC unless the host's are asked for),
/// pinned under `dir`, and the pod's files. Blocking: run it off the async workers.
pub fn make(dir: &Path, s: &Spec) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if s.userns.is_none() {
        make_namespaces(dir, s)?;
    }
    if !s.host_ipc {
        make_shm(dir)?;
    }
    write_files(dir, s)
}

/// The pod's /dev/shm, `DIR/shm`: one tmpfs that its containers share, as they share its IPC
/// namespace (containerd's and CRI-O's too). A pod with the host's IPC gets the host's.
fn make_shm(dir: &Path) -> std::io::Result<()> {
    use nix::mount::MsFlags;
    let p = dir.join(SHM);
    std::fs::create_dir_all(&p)?;
    nix::mount::mount(
        Some("shm"),
        &p,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| {
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("mount the pod's /dev/shm at {}: {e}", p.display()),
        )
    })
}

/// The /dev/shm a pod's containers bind: its own tmpfs, the host's with the host's IPC, or
/// none (a pod made before pods had one: each container gets a tmpfs of its own).
pub fn shm_source(r: &SandboxRecord) -> Option<PathBuf> {
    if r.host_ipc {
        return Some(PathBuf::from("/dev/shm"));
    }
    let p = r.ns_dir.join(SHM);
    // Its tmpfs, not the plain directory under it (a pin half-undone).
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    nix::sys::statfs::statfs(&p)
        .is_ok_and(|s| s.filesystem_type().0 == TMPFS_MAGIC)
        .then_some(p)
}

/// The pod's namespaces, made by a thread of this server (pods without a user namespace;
/// the pause container makes a user namespace pod's, owned by that user namespace).
fn make_namespaces(dir: &Path, s: &Spec) -> std::io::Result<()> {
    let mut flags = nix::sched::CloneFlags::empty();
    let mut pinned = vec![];
    // A pod on the node's network is in the node's UTS namespace too (containerd's and
    // CRI-O's rule: its hostname is the node's, and follows it).
    if !s.host_network {
        flags |= nix::sched::CloneFlags::CLONE_NEWUTS | nix::sched::CloneFlags::CLONE_NEWNET;
        pinned.extend(["uts", "net"]);
    }
    if !s.host_ipc {
        flags |= nix::sched::CloneFlags::CLONE_NEWIPC;
        pinned.push("ipc");
    }
    for n in &pinned {
        std::fs::File::create(dir.join(n))?;
    }
    let hostname = s.hostname.clone();
    let d = dir.to_path_buf();
    let names: Vec<String> = pinned.iter().map(|s| s.to_string()).collect();
    // A thread of its own, which ends with the namespaces it entered: nothing else ever
    // runs in them on this side.
    std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(flags)?;
        // (Never without a UTS namespace of its own: that would rename the node.)
        if flags.contains(nix::sched::CloneFlags::CLONE_NEWUTS) {
            nix::unistd::sethostname(&hostname)?;
        }
        if flags.contains(nix::sched::CloneFlags::CLONE_NEWNET) {
            rsrun::sys::set_link_up("lo")?;
        }
        for n in &names {
            nix::mount::mount(
                Some(format!("/proc/thread-self/ns/{n}").as_str()),
                &d.join(n),
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// The sysctls of the pod's IPC namespace: a user namespace pod's pause writes them.
fn ipc_sysctl(k: &str) -> bool {
    rsrun::config::sysctl_namespace(k) == Some(oci_spec::runtime::LinuxNamespaceType::Ipc)
}

/// Writes the pod's sysctls once its network is attached (an interface's, such as
/// `net.ipv4.conf.eth0.rp_filter`, exists only then, and the pod's values win over those
/// the CNI plugins set, as with containerd, whose pause applies them after the network), by
/// a thread that enters the pod's namespaces: /proc/sys answers for the namespaces of the
/// thread that opens it. A user namespace pod's IPC ones are its pause's to write
/// (`pause_spec`): the kernel lets only the root of the namespace's owner write an IPC
/// namespace's sysctls, and a thread of this server cannot become that user (the UTS ones,
/// the other way round, only the host's root may write).
pub fn apply_sysctls(r: &SandboxRecord) -> std::io::Result<()> {
    let userns = r.userns.is_some();
    let sysctls: Vec<(String, String)> = r
        .sysctls
        .iter()
        .filter(|(k, _)| !userns || !ipc_sysctl(k))
        .cloned()
        .collect();
    if sysctls.is_empty() {
        return Ok(());
    }
    let dir = r.ns_dir.clone();
    let (net, ipc, uts) = (!r.host_network, !r.host_ipc && !userns, own_uts(r));
    std::thread::spawn(move || -> std::io::Result<()> {
        for (n, flag, want) in [
            ("net", nix::sched::CloneFlags::CLONE_NEWNET, net),
            ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC, ipc),
            ("uts", nix::sched::CloneFlags::CLONE_NEWUTS, uts),
        ] {
            if want {
                let f = std::fs::File::open(dir.join(n))?;
                nix::sched::setns(&f, flag).map_err(|e| {
                    std::io::Error::other(format!("enter the pod's {n} namespace: {e}"))
                })?;
            }
        }
        for (k, v) in &sysctls {
            let file = rsrun::config::sysctl_key(k).map_or_else(|| k.clone(), |(_, f)| f);
            std::fs::write(format!("/proc/sys/{file}"), v)
                .map_err(|e| std::io::Error::new(e.kind(), format!("sysctl {k}={v}: {e}")))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| std::io::Error::other("the sysctl thread panicked"))?
}

/// The pod's hostname, hosts and resolv.conf files (bound into its containers).
fn write_files(dir: &Path, s: &Spec) -> std::io::Result<()> {
    std::fs::write(dir.join("hostname"), format!("{}\n", s.hostname))?;
    std::fs::write(
        dir.join("hosts"),
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            s.hostname
        ),
    )?;
    std::fs::write(dir.join("resolv.conf"), resolv_conf(s.dns.as_ref()))?;
    Ok(())
}

/// resolv.conf from the pod's DNSConfig, or the host's when the pod has none. An empty
/// DNSConfig is an empty file, as containerd writes it: the kubelet sends one for
/// `--resolv-conf=""`, whose meaning is no DNS from the host.
fn resolv_conf(dns: Option<&api::DnsConfig>) -> String {
    match dns {
        Some(d) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// Unpins the pod's namespaces (its network is reclaimed); what is already gone is fine.
pub fn unpin(dir: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(&dir.join(SHM), nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    for n in NAMESPACES {
        let p = dir.join(n);
        match nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_file(&p);
    }
    Ok(())
}

/// Unpins the namespaces and removes the pod's files; what is already gone is fine.
pub fn unmake(dir: &Path) -> std::io::Result<()> {
    unpin(dir)?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether the pod has a UTS namespace of its own: not on the node's network (there it has
/// the node's), but with a user namespace (its pause makes one).
pub fn own_uts(r: &SandboxRecord) -> bool {
    !r.host_network || r.userns.is_some()
}

/// The namespaces a ready pod keeps pinned under its `ns_dir`: UTS unless it has the node's,
/// network and IPC unless it takes the host's, its user namespace, its PID namespace when
/// shared.
fn pinned_names(r: &SandboxRecord) -> Vec<&'static str> {
    let mut names = Vec::new();
    if own_uts(r) {
        names.push("uts");
    }
    if !r.host_network {
        names.push("net");
    }
    if !r.host_ipc {
        names.push("ipc");
    }
    if r.userns.is_some() {
        names.push("user");
    }
    if r.pid_shared {
        names.push("pid");
    }
    names
}

/// The mark a StopPodSandbox leaves in the pod's state dir before it tears the pod down (the
/// network's DEL, the pause): a server killed after that and before the pod's record says
/// not ready finds it, and the pod is not ready (its addresses may be released already).
/// Not synced: a crash of the node takes the state dir's pins with it anyway.
pub const STOPPING: &str = ".stopping";

/// Whether a StopPodSandbox began tearing the pod down (see [`STOPPING`]).
pub fn stopping(r: &SandboxRecord) -> bool {
    r.ns_dir.join(STOPPING).exists()
}

/// The pinned namespaces of a ready pod that are not there any more: a reboot empties the
/// state dir (or a pin was unmounted). Such a pod is not ready: its containers would run in
/// no namespace of its own, and never may fall back to the host's.
/// So are the pod's files that its containers bind (hostname, hosts, resolv.conf): a pod on
/// the node's network and IPC pins nothing, and would otherwise stay ready after a reboot
/// with every container's start failing on a missing bind source.
pub fn lost_pins(r: &SandboxRecord) -> Vec<&'static str> {
    let mut lost: Vec<&'static str> = pinned_names(r)
        .into_iter()
        .filter(|n| !crate::network::is_nsfs(&r.ns_dir.join(n)))
        .collect();
    lost.extend(
        ["hostname", "hosts", "resolv.conf"]
            .into_iter()
            .filter(|f| !r.ns_dir.join(f).is_file()),
    );
    lost
}

/// The pinned namespace files of a ready sandbox (absent: the host's is used).
pub fn ns_path(r: &SandboxRecord, n: &str) -> Option<PathBuf> {
    let p = r.ns_dir.join(n);
    p.exists().then_some(p)
}

pub fn record(id: &str, s: &Spec, ns_dir: PathBuf) -> SandboxRecord {
    SandboxRecord {
        id: id.to_string(),
        name: s.meta.name.clone(),
        uid: s.meta.uid.clone(),
        namespace: s.meta.namespace.clone(),
        attempt: s.meta.attempt,
        created_at: store::now_ns(),
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        hostname: s.hostname.clone(),
        log_directory: s.log_directory.clone(),
        cgroup_parent: s.cgroup_parent.clone(),
        ns_dir,
        ready: false,
        complete: false,
        userns: s.userns.clone(),
        sysctls: s.sysctls.clone(),
        pause_id: if s.pod_pid || s.userns.is_some() {
            format!("pause-{id}")
        } else {
            String::new()
        },
        network: None,
        port_mappings: crate::network::to_record(&s.port_mappings),
        host_network: s.host_network,
        host_ipc: s.host_ipc,
        pid_shared: s.pod_pid,
        host_pid: s.host_pid,
        resources: s.resources.clone(),
        overhead: s.overhead.clone(),
        privileged: Some(s.privileged),
        cni_dns: s.dns.as_ref().map(crate::network::dns),
    }
}

pub fn meta(r: &SandboxRecord) -> api::PodSandboxMetadata {
    api::PodSandboxMetadata {
        name: r.name.clone(),
        uid: r.uid.clone(),
        namespace: r.namespace.clone(),
        attempt: r.attempt,
    }
}

pub fn state(r: &SandboxRecord) -> i32 {
    if r.ready {
        api::PodSandboxState::SandboxReady as i32
    } else {
        api::PodSandboxState::SandboxNotready as i32
    }
}

/// The CRI status of a pod sandbox.
pub fn status(sb: &SandboxRecord) -> api::PodSandboxStatus {
    // A ready pod whose pinned network namespace was unmounted under the server has no
    // address to report: its containers cannot join the namespace any more. Without one the
    // kubelet replaces the pod (as containerd reports it); with the recorded one it kept the
    // pod, and every restart of its containers failed.
    let gone = sb.ready
        && !sb.host_network
        && sb.network.is_some()
        && !crate::network::is_nsfs(&sb.ns_dir.join("net"));
    let ips = sb
        .network
        .as_ref()
        .filter(|_| !gone)
        .map(|a| crate::network::addresses(&a.result))
        .unwrap_or_default();
    let mode = |node: bool| {
        if node {
            api::NamespaceMode::Node as i32
        } else {
            api::NamespaceMode::Pod as i32
        }
    };
    api::PodSandboxStatus {
        id: sb.id.clone(),
        metadata: Some(meta(sb)),
        state: state(sb),
        created_at: sb.created_at,
        network: Some(api::PodSandboxNetworkStatus {
            ip: ips.first().cloned().unwrap_or_default(),
            additional_ips: ips
                .iter()
                .skip(1)
                .map(|ip| api::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(api::LinuxPodSandboxStatus {
            namespaces: Some(api::Namespace {
                options: Some(api::NamespaceOption {
                    network: mode(sb.host_network),
                    pid: if sb.host_pid {
                        api::NamespaceMode::Node as i32
                    } else if sb.shares_pid() {
                        api::NamespaceMode::Pod as i32
                    } else {
                        api::NamespaceMode::Container as i32
                    },
                    ipc: mode(sb.host_ipc),
                    userns_options: sb.userns.as_ref().map(|u| {
                        let m = |x: (u32, u32, u32)| {
                            vec![api::IdMapping {
                                container_id: x.0,
                                host_id: x.1,
                                length: x.2,
                            }]
                        };
                        api::UserNamespace {
                            mode: api::NamespaceMode::Pod as i32,
                            uids: m(u.uid),
                            gids: m(u.gid),
                        }
                    }),
                    ..Default::default()
                }),
            }),
        }),
        labels: sb.labels.clone(),
        annotations: sb.annotations.clone(),
        runtime_handler: String::new(),
    }
}

/// Whether `r` passes a ListPodSandbox filter.
pub fn matches(r: &SandboxRecord, f: &api::PodSandboxFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.state.as_ref().is_none_or(|s| s.state == state(r))
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::{api, cgroups_path, resolv_conf};

    #[test]
    fn resolv_conf_from_the_dns_config() {
        let d = api::DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"
        );
        // Empty: an empty file (the kubelet's --resolv-conf=""), not the host's.
        assert_eq!(resolv_conf(Some(&api::DnsConfig::default())), "");
    }

    #[test]
    fn cgroups_paths_by_driver() {
        assert_eq!(
            cgroups_path("", "rsrun-cri", "rsrun-1", false).unwrap(),
            "rsrun-cri/rsrun-1"
        );
        assert_eq!(
            cgroups_path("/kubepods/pod1/", "x", "rsrun-1", false).unwrap(),
            "/kubepods/pod1/rsrun-1"
        );
        assert_eq!(
            cgroups_path("kubepods-besteffort-pod1.slice", "x", "rsrun-1", true).unwrap(),
            "kubepods-besteffort-pod1.slice::rsrun-1"
        );
        assert_eq!(
            cgroups_path("", "rsrun-cri.slice", "rsrun-1", true).unwrap(),
            "rsrun-cri.slice::rsrun-1"
        );
        assert_eq!(
            cgroups_path("/test.slice", "x", "rsrun-1", true).unwrap(),
            "test.slice::rsrun-1"
        );
        assert_eq!(
            cgroups_path("kubepods.slice/kubepods-a.slice/", "x", "rsrun-1", true).unwrap(),
            "kubepods-a.slice::rsrun-1"
        );
        let e = cgroups_path("/kubepods/pod1", "x", "rsrun-1", true).unwrap_err();
        assert!(e.message().contains("/kubepods/pod1"), "{e:?}");
    }
}
