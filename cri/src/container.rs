//! Containers: CRI container configs turned into OCI bundles (with the image's config), run
//! under rsrun-shim, and their status read back from the shim's exit record.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tonic::Status;

use rsrun::signal::Signal;

use crate::api;
use crate::sandbox;
use crate::store::{ContainerRecord, SandboxRecord};

const MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The repo digest ContainerStatus reports as image_ref (as containerd does): the one of the
/// repository the container asked for, else the image's first; empty when it has none.
pub fn repo_digest(asked: &str, digests: &[String]) -> String {
    let repo = rsrun_image::reference::Reference::parse(asked)
        .map(|r| r.repository())
        .ok();
    digests
        .iter()
        .find(|d| {
            repo.as_deref()
                .is_some_and(|r| d.split('@').next() == Some(r))
        })
        .or(digests.first())
        .cloned()
        .unwrap_or_default()
}

/// The name ContainerStatus reports as the container's image (the kubelet shows it as the
/// container's `image`; containerd gives a repo tag, the image ID is in image_id): the tag
/// the user asked for, else one of the asked repository, else the image's first; empty when
/// the image has no tag.
pub fn repo_tag(asked: &str, tags: &[String]) -> String {
    let want = rsrun_image::reference::Reference::parse(asked).ok();
    let exact = want.as_ref().and_then(|r| r.repo_tag());
    let repo = want.as_ref().map(|r| r.repository());
    let repo_of = |t: &String| {
        rsrun_image::reference::Reference::parse(t)
            .ok()
            .map(|r| r.repository())
    };
    tags.iter()
        .find(|t| exact.as_deref() == Some(t.as_str()))
        .or_else(|| tags.iter().find(|t| repo.is_some() && repo_of(t) == repo))
        .or(tags.first())
        .cloned()
        .unwrap_or_default()
}

/// The signal of a CRI `Signal` enum value (`SIGNAL_SIGRTMINPLUS3`: SIGRTMIN+3, 37); None for
/// RUNTIME_DEFAULT, an error naming the value for one the enum does not have.
pub fn cri_signal(v: i32) -> Result<Option<Signal>, String> {
    let e = api::Signal::try_from(v).map_err(|_| format!("{v} is not a CRI Signal"))?;
    if e == api::Signal::RuntimeDefault {
        return Ok(None);
    }
    let name = e.as_str_name().trim_start_matches("SIGNAL_");
    let name = name.replace("PLUS", "+").replace("MINUS", "-");
    Signal::parse(&name)
        .map(Some)
        .map_err(|err| format!("CRI Signal {v}: {err}"))
}

/// A signal as the CRI enum names it; RUNTIME_DEFAULT for 32 and 33, which it lacks.
pub fn to_cri_signal(s: Signal) -> i32 {
    let name = s.name().replace('+', "PLUS").replace('-', "MINUS");
    api::Signal::from_str_name(&format!("SIGNAL_{name}")).map_or(0, |e| e as i32)
}

/// What StopContainer sends: the recorded stop signal (the container config's, else the
/// image's STOPSIGNAL), SIGTERM when there is none or it names no signal (`warn`: say so in
/// the log, as StopContainer does; ContainerStatus, asked every second, stays quiet).
pub fn stop_signal(r: &ContainerRecord, warn: bool) -> Signal {
    match r.stop_signal.as_str() {
        "" => Signal::TERM,
        s => Signal::parse(s).unwrap_or_else(|e| {
            if warn {
                tracing::warn!(container = %r.id, stop_signal = s, "stop signal: {e}: SIGTERM instead");
            }
            Signal::TERM
        }),
    }
}

/// The image's runtime config (what CreateContainer merges with the CRI config).
#[derive(Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// The image's STOPSIGNAL (`SIGQUIT`, `QUIT` or a number), as given.
    pub stop_signal: String,
    /// The image's VOLUME paths, as given (crate::volumes).
    pub volumes: Vec<String>,
}

impl ImageConfig {
    pub fn from_spec(spec: rsrun_image::manifest::ImageConfig) -> ImageConfig {
        let c = spec.config.unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
        }
    }
}

fn cap_name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    if c.starts_with("CAP_") {
        c
    } else {
        format!("CAP_{c}")
    }
}

/// Whether the mount holding `path` (symlinks resolved) on this node propagates: shared for
/// Bidirectional (`shared_only`), shared or a slave for HostToContainer.
fn source_propagates(path: &Path, shared_only: bool) -> Result<(), String> {
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let (point, fields) =
        mount_of(&info, &real).ok_or_else(|| format!("no mount holds {}", real.display()))?;
    let shared = fields.iter().any(|f| f.starts_with("shared:"));
    let slave = fields.iter().any(|f| f.starts_with("master:"));
    if shared || (!shared_only && slave) {
        return Ok(());
    }
    Err(format!(
        "{} is on the mount {point}, which is not a {} mount",
        real.display(),
        if shared_only {
            "shared"
        } else {
            "shared or slave"
        }
    ))
}

/// The mount point holding `path` in a mountinfo text (the deepest; of several on one
/// point, the last, which is on top) and its optional fields (`shared:N`, `master:N`).
fn mount_of<'a>(info: &'a str, path: &Path) -> Option<(String, Vec<&'a str>)> {
    let mut best: Option<(String, Vec<&str>)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() < 7 || sep < 6 {
            continue;
        }
        // Spaces and the like are octal escapes in mountinfo.
        let point = rsrun::sys::unescape_mountinfo(f[4]);
        if !path.starts_with(&point) {
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| {
            Path::new(&point).components().count() >= Path::new(b).components().count()
        }) {
            best = Some((point, f[6..sep].to_vec()));
        }
    }
    best
}

/// The AppArmor profile a container asks for (the `apparmor` field, or the deprecated
/// `apparmor_profile` string): None for unconfined, for the runtime's default (rsrun has no
/// AppArmor profile of its own: the CRI defines RuntimeDefault as "no profile given") and for
/// nothing asked; the name of a Localhost one. On a node without AppArmor a profile other
/// than unconfined is refused, as containerd refuses it (the container would run unconfined
/// where its spec asks for confinement).
// (The deprecated string is read: clients older than the `apparmor` field send only it.)
#[allow(deprecated)]
fn apparmor_profile(
    sc: &api::LinuxContainerSecurityContext,
    enabled: bool,
) -> Result<Option<String>, Status> {
    use api::security_profile::ProfileType;
    let (kind, name) = match &sc.apparmor {
        Some(p) => {
            profile_type_checked(p, "apparmor")?;
            match ProfileType::try_from(p.profile_type) {
                Ok(ProfileType::Localhost) => ("localhost", p.localhost_ref.clone()),
                Ok(ProfileType::Unconfined) => ("unconfined", String::new()),
                _ => ("runtime/default", String::new()),
            }
        }
        None => match sc.apparmor_profile.as_str() {
            "" => return Ok(None),
            "unconfined" => ("unconfined", String::new()),
            "runtime/default" => ("runtime/default", String::new()),
            p => match p.strip_prefix("localhost/") {
                Some(n) => ("localhost", n.to_string()),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "CreateContainer: linux.security_context.apparmor_profile {p:?}: not \
                         runtime/default, unconfined or localhost/NAME"
                    )))
                }
            },
        },
    };
    if kind == "unconfined" {
        return Ok(None);
    }
    if !enabled {
        return Err(Status::invalid_argument(format!(
            "CreateContainer: linux.security_context.apparmor {kind}{}: AppArmor is not \
             enabled on this node (only unconfined can be honoured)",
            if name.is_empty() {
                String::new()
            } else {
                format!(" {name:?}")
            }
        )));
    }
    if kind == "localhost" {
        if name.is_empty() {
            return Err(Status::invalid_argument(
                "CreateContainer: linux.security_context.apparmor Localhost without localhost_ref",
            ));
        }
        return Ok(Some(name));
    }
    Ok(None)
}

/// A security profile's type is one the CRI defines, and only a Localhost one names a
/// profile (as containerd checks them): an unknown type read as unconfined (seccomp) or
/// runtime/default (AppArmor) ran the container otherwise than asked, unsaid.
fn profile_type_checked(p: &api::SecurityProfile, field: &str) -> Result<(), Status> {
    use api::security_profile::ProfileType;
    let what = format!("CreateContainer: linux.security_context.{field}");
    match ProfileType::try_from(p.profile_type) {
        Err(_) => Err(Status::invalid_argument(format!(
            "{what}: profile_type {} is not RuntimeDefault, Unconfined or Localhost",
            p.profile_type
        ))),
        Ok(t) if t != ProfileType::Localhost && !p.localhost_ref.is_empty() => {
            Err(Status::invalid_argument(format!(
                "{what}: localhost_ref {:?} is only for profile_type Localhost (not {})",
                p.localhost_ref,
                t.as_str_name()
            )))
        }
        Ok(_) => Ok(()),
    }
}

/// Whether the node's kernel enforces AppArmor.
fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// The process's argv: command replaces ENTRYPOINT, args replaces CMD (Kubernetes' rule).
/// An image ENTRYPOINT of `[""]` (a Dockerfile's way to clear its base image's) is none, as
/// Docker and containerd read it.
fn process_args(c: &api::ContainerConfig, img: &ImageConfig) -> Vec<String> {
    let entrypoint: &[String] = match img.entrypoint.as_slice() {
        [only] if only.is_empty() => &[],
        e => e,
    };
    let mut args: Vec<String> = if c.command.is_empty() {
        entrypoint.to_vec()
    } else {
        c.command.clone()
    };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(img.cmd.iter().cloned());
    }
    args
}

/// The capabilities' names (without `CAP_`), by number.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Every capability the kernel knows (for privileged and "ALL").
fn all_caps() -> Vec<String> {
    // The kernel's last capability number, from /proc.
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);

    CAP_NAMES
        .iter()
        .take(last as usize + 1)
        .map(|n| format!("CAP_{n}"))
        .collect()
}

/// The capability set: defaults (or all when privileged), minus drops, plus adds; "ALL"
/// works on either side, as Kubernetes defines it.
/// A name no capability has (a typo such as `NET_ADMN`, which the Kubernetes API lets
/// through) is refused at create, naming it, as CRI-O refuses it: written into the spec, the
/// runtime refused it at every start.
pub fn capabilities(
    sc: &api::LinuxContainerSecurityContext,
    defaults: Option<&[String]>,
) -> Result<Vec<String>, Status> {
    if sc.privileged {
        return Ok(all_caps());
    }
    let c = sc.capabilities.clone().unwrap_or_default();
    for (field, list) in [
        ("add_capabilities", &c.add_capabilities),
        ("drop_capabilities", &c.drop_capabilities),
    ] {
        let known = |n: &str| {
            n.strip_prefix("CAP_")
                .is_some_and(|n| n == "ALL" || CAP_NAMES.contains(&n))
        };
        if let Some(bad) = list.iter().find(|s| !known(&cap_name(s))) {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: linux.security_context.capabilities.{field}: {bad:?} is not \
                 a capability"
            )));
        }
    }
    let mut set: Vec<String> = match defaults {
        Some(d) => d.iter().map(|s| cap_name(s)).collect(),
        None => rsrun::seccomp::CRI_DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let add: Vec<String> = c.add_capabilities.iter().map(|s| cap_name(s)).collect();
    let drop: Vec<String> = c.drop_capabilities.iter().map(|s| cap_name(s)).collect();
    // containerd's order, so that a drop always wins: add ALL, drop ALL, then the single
    // adds, then the single drops (`add: [ALL], drop: [NET_RAW]` is every capability but
    // NET_RAW).
    if add.iter().any(|a| a == "CAP_ALL") {
        set = all_caps();
    }
    if drop.iter().any(|d| d == "CAP_ALL") {
        set.clear();
    }
    for a in add.into_iter().filter(|a| a != "CAP_ALL") {
        if !set.contains(&a) {
            set.push(a);
        }
    }
    set.retain(|s| !drop.contains(s));
    Ok(set)
}

/// This node mounts the one cgroup v2 hierarchy (no v1 controller).
static CGROUP_V2: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    rsrun::cgroups::hierarchies().is_ok_and(|hs| !hs.is_empty() && rsrun::cgroups::is_unified(&hs))
});

/// `p` without empty or `.` components and trailing slashes: `/a//b/./` is `/a/b`.
fn clean_path(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// A text file of the container's root as the container would see it: resolved inside the
/// rootfs (an image's absolute symlink `/etc/passwd -> /etc/shadow` must not read the
/// host's), a regular file of at most 4 MiB; empty when absent, and when it is no regular
/// file (a FIFO would hold this RPC for good, a device such as /dev/zero fill the server's
/// memory; not read, and logged): a user named in it is then not found.
fn image_file(rootfs: &Path, rel: &str) -> Result<String, Status> {
    let root = std::fs::File::open(rootfs).map_err(|e| {
        Status::internal(format!("CreateContainer: rootfs {}: {e}", rootfs.display()))
    })?;
    match rsrun::sys::read_regular_in_root(root.as_raw_fd(), rel, 4 << 20) {
        Ok(b) => Ok(b
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            tracing::warn!(rootfs = %rootfs.display(), "the image's {e}: not read");
            Ok(String::new())
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(Status::invalid_argument(
            format!("CreateContainer: the image's {e}"),
        )),
        Err(e) => Err(Status::internal(format!(
            "CreateContainer: the image's /{rel}: {e}"
        ))),
    }
}

/// Resolves the user: CRI run_as_user/run_as_group/run_as_username win, else the image's
/// USER (`uid`, `name`, `uid:gid`, `name:group`), names looked up in the rootfs's
/// /etc/passwd and /etc/group.
pub fn user(
    sc: &api::LinuxContainerSecurityContext,
    image_user: &str,
    rootfs: &Path,
) -> Result<(u32, u32, Vec<u32>), Status> {
    let passwd = image_file(rootfs, "etc/passwd")?;
    let group = image_file(rootfs, "etc/group")?;
    let by_name = |file: &str, name: &str| -> Option<(u32, u32)> {
        file.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[0] == name {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    let uid_gid = |uid: u32| -> u32 {
        passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse() == Ok(uid))
                    .then(|| f[3].parse().ok())
                    .flatten()
            })
            .unwrap_or(0)
    };
    let (uid, mut gid) = if let Some(u) = &sc.run_as_user {
        let u = u32::try_from(u.value).map_err(|_| {
            Status::invalid_argument(format!("run_as_user {} is out of range", u.value))
        })?;
        (u, uid_gid(u))
    } else if !sc.run_as_username.is_empty() {
        by_name(&passwd, &sc.run_as_username).ok_or_else(|| {
            Status::invalid_argument(format!(
                "run_as_username {:?} is not in the image's /etc/passwd",
                sc.run_as_username
            ))
        })?
    } else if image_user.is_empty() {
        (0, 0)
    } else {
        let (u, g) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let (uid, pgid) = match u.parse::<u32>() {
            Ok(n) => (n, uid_gid(n)),
            Err(_) => by_name(&passwd, u).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "the image's USER {u:?} is not in its /etc/passwd"
                ))
            })?,
        };
        let gid = match g {
            None => pgid,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group
                    .lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "the image's USER group {g:?} is not in its /etc/group"
                        ))
                    })?,
            },
        };
        (uid, gid)
    };
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(Status::invalid_argument(
            "CreateContainer: run_as_group needs run_as_user or run_as_username",
        ));
    }
    if let Some(g) = &sc.run_as_group {
        gid = u32::try_from(g.value).map_err(|_| {
            Status::invalid_argument(format!("run_as_group {} is out of range", g.value))
        })?;
    }
    // Supplementary groups: the primary group, the user's groups from the image (policy
    // Merge, the default; not with Strict), and the CRI's.
    if api::SupplementalGroupsPolicy::try_from(sc.supplemental_groups_policy).is_err() {
        return Err(Status::invalid_argument(format!(
            "CreateContainer: linux.security_context.supplemental_groups_policy {} is not Merge \
             or Strict",
            sc.supplemental_groups_policy
        )));
    }
    let strict = sc.supplemental_groups_policy == api::SupplementalGroupsPolicy::Strict as i32;
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    });
    let mut groups: Vec<u32> = vec![gid];
    if let Some(n) = name.filter(|_| !strict) {
        for l in group.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == n) {
                if let Ok(g) = f[2].parse() {
                    groups.push(g);
                }
            }
        }
    }
    for g in &sc.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| {
            Status::invalid_argument(format!("supplemental_groups {g} is out of range"))
        })?;
        groups.push(g);
    }
    groups.sort_unstable();
    groups.dedup();
    // 4294967295 is (uid_t)-1, which the kernel reads as "leave unchanged": the process
    // would run as root, past the kubelet's runAsNonRoot check (it sees a non-zero uid).
    let max = rsrun::config::MAX_ID;
    let from = if sc.run_as_user.is_some() {
        "run_as_user"
    } else if !sc.run_as_username.is_empty() {
        "run_as_username"
    } else {
        "the image's USER"
    };
    let out = |what: String| {
        Err(Status::invalid_argument(format!(
            "CreateContainer: {what} is out of range (0 to {max})"
        )))
    };
    if uid > max {
        return out(format!("the uid {uid} of {from}"));
    }
    if gid > max {
        return out(format!("the gid {gid} of {from} or run_as_group"));
    }
    if let Some(g) = groups.iter().find(|g| **g > max) {
        return out(format!(
            "the supplementary group {g} (supplemental_groups or the image's /etc/group)"
        ));
    }
    Ok((uid, gid, groups))
}

/// The `io.kubernetes.cri.*` annotations of a pod's containers (`kind` "container") and of
/// its pause ("sandbox"), as containerd names them.
pub fn cri_annotations<'a>(sb: &'a SandboxRecord, kind: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("io.kubernetes.cri.container-type", kind),
        ("io.kubernetes.cri.sandbox-id", sb.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", sb.name.as_str()),
        ("io.kubernetes.cri.sandbox-namespace", sb.namespace.as_str()),
        ("io.kubernetes.cri.sandbox-uid", sb.uid.as_str()),
    ]
}

/// The image's environment, then the config's (same key: the config wins). An image entry
/// without '=' unsets the name, one with no name is passed over (as containerd reads them;
/// the runtime refuses an entry that is not KEY=value).
fn merge_env(image: &[String], config: &[api::KeyValue]) -> Result<Vec<(String, String)>, Status> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in image {
        match e.split_once('=') {
            Some(("", _)) => {}
            Some((k, v)) => match env.iter_mut().find(|(x, _)| x == k) {
                Some(e) => e.1 = v.to_string(),
                None => env.push((k.to_string(), v.to_string())),
            },
            None => env.retain(|(x, _)| x != e),
        }
    }
    for kv in config {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: envs key {:?} is invalid",
                kv.key
            )));
        }
        let v = String::from_utf8_lossy(&kv.value).into_owned();
        match env.iter_mut().find(|(x, _)| *x == kv.key) {
            Some(e) => e.1 = v,
            None => env.push((kv.key.clone(), v)),
        }
    }
    Ok(env)
}

/// The OCI config of a container.
#[allow(clippy::too_many_arguments)]
pub fn oci_spec(
    id: &str,
    c: &api::ContainerConfig,
    sb: &SandboxRecord,
    img: &ImageConfig,
    rootfs: &Path,
    default_cgroup_parent: &str,
    systemd_cgroup: bool,
    default_caps: Option<&[String]>,
    target_pid: Option<i32>,
    image_name: &str,
) -> Result<Value, Status> {
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let args = process_args(c, img);
    if args.is_empty() {
        return Err(Status::invalid_argument(
            "CreateContainer: no command: neither the config nor the image gives one",
        ));
    }
    // Environment: the image's, then the config's (same key: the config wins).
    let mut env = merge_env(&img.env, &c.envs)?;
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    // The pod's hostname, unless the image or the container sets HOSTNAME (containerd's
    // order): never two entries, whose winner would depend on the reader.
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), sb.hostname.clone()));
    }
    // A terminal's type, unless the image or the container names one (containerd's
    // WithTTY): without it top, clear, less and vim refuse to run in `kubectl run -it`.
    if c.tty && !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else if !img.working_dir.is_empty() {
        img.working_dir.clone()
    } else {
        "/".into()
    };
    if !cwd.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "CreateContainer: working_dir {cwd:?} must be absolute"
        )));
    }
    let (uid, gid, groups) = user(&sc, &img.user, rootfs)?;
    let caps = capabilities(&sc, default_caps)?;

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if sc.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if sc.privileged { "rw" } else { "ro" }]}),
    ];
    let user_paths: std::collections::HashSet<String> = c
        .mounts
        .iter()
        .map(|m| clean_path(&m.container_path))
        .collect();
    // A default mount the container mounts something at goes, and with its own /dev every
    // default under /dev (as containerd).
    let own_dev = user_paths.contains("/dev");
    mounts.retain(|m| {
        let d = m["destination"].as_str().unwrap_or("");
        let replaced = user_paths.contains(d) || (own_dev && d.starts_with("/dev/"));
        !replaced
    });
    let defaults = mounts.len();
    // The pod's /dev/shm (or the host's), unless the container mounts one of its own.
    if !user_paths.contains("/dev/shm") {
        mounts.push(match sandbox::shm_source(sb) {
            Some(src) => json!({"destination": "/dev/shm", "type": "bind", "source": src,
                "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]}),
            None => json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        });
    }
    for f in ["hostname", "hosts", "resolv.conf"] {
        let dest = format!("/etc/{f}");
        if !user_paths.contains(&dest) {
            mounts.push(json!({"destination": dest, "type": "bind",
                "source": sb.ns_dir.join(f), "options": ["rbind", "rprivate",
                if sc.readonly_rootfs { "ro" } else { "rw" }]}));
        }
    }
    for (i, m) in c.mounts.iter().enumerate() {
        if !m.container_path.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: mounts[{i}].container_path {:?} must be absolute",
                m.container_path
            )));
        }
        if m.host_path.is_empty() {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: mounts[{i}].host_path is required"
            )));
        }
        let host = Path::new(&m.host_path);
        if !host.exists() {
            // As containerd: a missing host path becomes a directory.
            std::fs::create_dir_all(host).map_err(|e| {
                Status::invalid_argument(format!(
                    "CreateContainer: mounts[{i}].host_path {}: {e}",
                    m.host_path
                ))
            })?;
        }
        let prop = match api::MountPropagation::try_from(m.propagation) {
            Ok(api::MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(api::MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        if prop != "rprivate" {
            // As containerd and CRI-O: mounts reach the container (and back) only through a
            // source mount that propagates; otherwise the volume would silently not.
            source_propagates(host, prop == "rshared").map_err(|e| {
                Status::invalid_argument(format!(
                    "CreateContainer: mounts[{i}] ({}): propagation {}: {e}",
                    m.container_path,
                    if prop == "rshared" {
                        "Bidirectional"
                    } else {
                        "HostToContainer"
                    }
                ))
            })?;
        }
        let mut options = vec!["rbind", prop, if m.readonly { "ro" } else { "rw" }];
        if m.recursive_read_only {
            // As the CRI defines it: read-only all the way down needs readonly and private
            // propagation (a slave or shared mount would receive writable mounts later).
            if !m.readonly || prop != "rprivate" {
                return Err(Status::invalid_argument(format!(
                    "CreateContainer: mounts[{i}] ({}): recursive_read_only needs readonly and private propagation",
                    m.container_path
                )));
            }
            options.push("rro");
        }
        let mut mount = json!({"destination": m.container_path, "type": "bind",
            "source": m.host_path, "options": options});
        // Idmapped (the kubelet asks it for every volume of a `hostUsers: false` pod, with
        // the pod's mappings): the container's root owns what host root owns. An image
        // volume of such a pod is idmapped already, under its snapshot.
        if m.image.is_none() {
            if let Some((u, g)) = mount_mappings(i, m)? {
                mount["uidMappings"] = u;
                mount["gidMappings"] = g;
            }
        }
        mounts.push(mount);
    }
    // The pod's files and the container's mounts, parents before what is under them (a
    // stable sort by depth, as containerd orders them): the kubelet passes volume mounts in
    // the pod spec's order, where `/data/cfg` may come before `/data`, which would hide it.
    mounts[defaults..].sort_by_key(|m| {
        m["destination"]
            .as_str()
            .map_or(0, |d| d.split('/').filter(|c| !c.is_empty()).count())
    });

    let mut namespaces = vec![json!({"type": "mount"})];
    // A cgroup namespace of its own on cgroup v2 unless privileged, none on v1 (containerd's
    // and CRI-O's rule): a privileged container sees the node's hierarchy, as agents that
    // manage host cgroups need.
    if !sc.privileged && *CGROUP_V2 {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let pid_mode = sc
        .namespace_options
        .as_ref()
        .map(|n| n.pid)
        .unwrap_or(api::NamespaceMode::Pod as i32);
    match (pid_mode, sandbox::ns_path(sb, "pid")) {
        (m, Some(p)) if m == api::NamespaceMode::Pod as i32 => {
            namespaces.push(json!({"type": "pid", "path": p}))
        }
        // POD (the proto's default) in a pod that shares no PID namespace, and CONTAINER:
        // one of its own (the kubelet sends the pod's mode for both).
        (m, _)
            if m == api::NamespaceMode::Pod as i32 || m == api::NamespaceMode::Container as i32 =>
        {
            namespaces.push(json!({"type": "pid"}))
        }
        // The node's: no PID namespace of its own.
        (m, _) if m == api::NamespaceMode::Node as i32 => {}
        // Another container's (its PID from `Runtime::target_pid`).
        (m, _) if m == api::NamespaceMode::Target as i32 => match target_pid {
            Some(pid) => {
                namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}))
            }
            None => {
                return Err(Status::invalid_argument(
                    "CreateContainer: pid mode TARGET needs a running target container",
                ))
            }
        },
        (m, _) => {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: linux.security_context.namespace_options.pid: unknown mode {m}"
            )))
        }
    }
    namespaces.extend(sandbox::joined_namespaces(sb));
    let cgroups_path = sandbox::cgroups_path(
        &sb.cgroup_parent,
        default_cgroup_parent,
        &format!("rsrun-{id}"),
        systemd_cgroup,
    )?;
    let resources = linux
        .resources
        .as_ref()
        .map(oci_resources)
        .unwrap_or(json!({}));
    // Written also when 0 (as containerd): the container would otherwise inherit the
    // server's own (the shipped unit's -999: nearly never killed).
    let oom = Some(linux.resources.as_ref().map_or(0, |r| r.oom_score_adj));
    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": uid, "gid": gid, "additionalGids": groups},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": sc.no_new_privs,
    });
    if let Some(o) = oom {
        // What the kernel's oom_score_adj takes: anything else passed here and failed the
        // start, or did not fit the runtime's 32-bit field.
        if !(-1000..=1000).contains(&o) {
            return Err(Status::invalid_argument(format!(
                "CreateContainer: linux.resources.oom_score_adj {o}: between -1000 and 1000"
            )));
        }
        process["oomScoreAdj"] = json!(o);
    }
    let (devices, device_rules) = container_devices(&c.devices, sc.privileged)?;
    let mut resources = resources;
    if !device_rules.is_empty() {
        resources["devices"] = json!(device_rules);
    }
    // The kubelet's annotations, and the CRI ones containerd adds to every container (OCI
    // hooks, monitoring agents and VM runtimes group containers into pods by them).
    let mut annotations = c.annotations.clone();
    let name = c.metadata.as_ref().map_or("", |m| m.name.as_str());
    annotations.extend(
        cri_annotations(sb, "container")
            .into_iter()
            .chain([
                ("io.kubernetes.cri.container-name", name),
                ("io.kubernetes.cri.image-name", image_name),
            ])
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut spec = json!({
        "ociVersion": "1.2.0",
        "process": process,
        "root": {"path": rootfs, "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "devices": devices,
        },
    });
    // A Bidirectional mount propagates back only if the container's mount tree stays shared
    // with the host's (runtimes make it rslave otherwise).
    if c.mounts
        .iter()
        .any(|m| m.propagation == api::MountPropagation::PropagationBidirectional as i32)
    {
        spec["linux"]["rootfsPropagation"] = json!("rshared");
    }
    if !sc.privileged {
        // The kubelet always sends the lists: the defaults, or none for `procMount:
        // Unmasked` — which Kubernetes allows only with `hostUsers: false`. Empty lists mean
        // none in a user-namespace pod, as containerd and CRI-O read them; elsewhere (a
        // client that sends none, as crictl) our defaults.
        let given = |v: &Vec<String>| !v.is_empty() || sb.userns.is_some();
        let masked: Vec<String> = if given(&sc.masked_paths) {
            sc.masked_paths.clone()
        } else {
            MASKED.iter().map(|s| s.to_string()).collect()
        };
        let ro: Vec<String> = if given(&sc.readonly_paths) {
            sc.readonly_paths.clone()
        } else {
            READONLY.iter().map(|s| s.to_string()).collect()
        };
        spec["linux"]["maskedPaths"] = json!(masked);
        spec["linux"]["readonlyPaths"] = json!(ro);
    }
    if let Some(profile) = apparmor_profile(&sc, apparmor_enabled())? {
        spec["process"]["apparmorProfile"] = json!(profile);
    }
    // Privileged containers get no seccomp profile, whatever is asked (as containerd).
    if let Some(p) = &sc.seccomp {
        profile_type_checked(p, "seccomp")?;
    }
    let seccomp = sc.seccomp.as_ref().filter(|_| !sc.privileged);
    match seccomp.map(|s| (s.profile_type, &s.localhost_ref)) {
        Some((t, _)) if t == api::security_profile::ProfileType::RuntimeDefault as i32 => {
            let p = rsrun::seccomp::runtime_default_profile_for_caps(
                &caps.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            spec["linux"]["seccomp"] = serde_json::to_value(p)
                .map_err(|e| Status::internal(format!("seccomp profile: {e}")))?;
        }
        Some((t, path)) if t == api::security_profile::ProfileType::Localhost as i32 => {
            let text = std::fs::read(path).map_err(|e| {
                Status::invalid_argument(format!("seccomp localhost profile {path:?}: {e}"))
            })?;
            let v: Value = serde_json::from_slice(&text).map_err(|e| {
                Status::invalid_argument(format!("seccomp localhost profile {path:?}: {e}"))
            })?;
            spec["linux"]["seccomp"] = v;
        }
        _ => {}
    }
    Ok(spec)
}

/// The container's device nodes and device-cgroup rules: the CRI `devices` (a host device, or
/// every device under a host directory, at a path in the container with `r`/`w`/`m`
/// permissions), and for a privileged container every device of the host's /dev with no
/// device-cgroup restriction (as containerd and CRI-O give them).
fn container_devices(
    asked: &[api::Device],
    privileged: bool,
) -> Result<(Vec<Value>, Vec<Value>), Status> {
    let mut nodes = Vec::new();
    // Deny-all first, as containerd's default spec has it (the runtime then adds the devices
    // every container may use); a privileged container may use all.
    let mut rules = vec![json!({"allow": privileged, "access": "rwm"})];
    if privileged {
        host_devices(Path::new("/dev"), Path::new("/dev"), &mut nodes);
    }
    for (i, d) in asked.iter().enumerate() {
        let what = format!(
            "CreateContainer: devices[{i}] (host_path {:?})",
            d.host_path
        );
        let perms = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        if perms.chars().any(|c| !"rwm".contains(c)) {
            return Err(Status::invalid_argument(format!(
                "{what}: permissions {perms:?}: only r, w and m"
            )));
        }
        if !d.container_path.starts_with('/') {
            return Err(Status::invalid_argument(format!(
                "{what}: container_path {:?} must be absolute",
                d.container_path
            )));
        }
        let host = Path::new(&d.host_path);
        let meta = std::fs::metadata(host)
            .map_err(|e| Status::invalid_argument(format!("{what}: {e}")))?;
        let mut found = Vec::new();
        if meta.is_dir() {
            host_devices(host, Path::new(&d.container_path), &mut found);
        } else if let Some(n) = device_node(&meta, Path::new(&d.container_path)) {
            found.push(n);
        } else {
            return Err(Status::invalid_argument(format!(
                "{what}: not a device or a directory of devices"
            )));
        }
        for n in found {
            rules.push(
                json!({"allow": true, "type": n["type"], "major": n["major"],
                "minor": n["minor"], "access": perms}),
            );
            if privileged {
                // already there from the host's /dev: the asked path is added beside it
                nodes.retain(|o: &Value| o["path"] != n["path"]);
            }
            nodes.push(n);
        }
    }
    Ok((nodes, rules))
}

/// A device node of the OCI config for a host character or block device.
fn device_node(meta: &std::fs::Metadata, at: &Path) -> Option<Value> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let t = meta.file_type();
    let kind = if t.is_char_device() {
        "c"
    } else if t.is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(
        json!({"path": at, "type": kind, "major": nix::sys::stat::major(rdev),
        "minor": nix::sys::stat::minor(rdev), "fileMode": meta.mode() & 0o7777,
        "uid": meta.uid(), "gid": meta.gid()}),
    )
}

/// Every device under a host directory (following no symlinks), at the same relative path
/// under `at`. The kernel's own mounts in /dev (pts, shm, mqueue) and /dev/console are left
/// out: the container gets its own.
fn host_devices(dir: &Path, at: &Path, out: &mut Vec<Value>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            if dir == Path::new("/dev") && ["pts", "shm", "mqueue", "fd"].iter().any(|s| name == *s)
            {
                continue;
            }
            host_devices(&e.path(), &at.join(&name), out);
        } else if dir == Path::new("/dev") && (name == "console" || name == "ptmx") {
            continue;
        } else if let Some(n) = device_node(&meta, &at.join(&name)) {
            out.push(n);
        }
    }
}

/// A CRI mount's ID mappings as the OCI mount's `uidMappings` and `gidMappings`; None when
/// it has none.
fn mount_mappings(i: usize, m: &api::Mount) -> Result<Option<(Value, Value)>, Status> {
    if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
        return Ok(None);
    }
    let what = format!("CreateContainer: mounts[{i}] ({})", m.container_path);
    if m.uid_mappings.is_empty() || m.gid_mappings.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what}: uid_mappings and gid_mappings go together"
        )));
    }
    let oci = |field: &str, v: &[api::IdMapping]| -> Result<Value, Status> {
        v.iter()
            .enumerate()
            .map(|(k, x)| {
                if x.length == 0
                    || x.host_id.checked_add(x.length).is_none()
                    || x.container_id.checked_add(x.length).is_none()
                {
                    return Err(Status::invalid_argument(format!(
                        "{what}: {field}[{k}]: length {} is 0 or overflows the ID range",
                        x.length
                    )));
                }
                Ok(json!({"containerID": x.container_id, "hostID": x.host_id, "size": x.length}))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
    };
    Ok(Some((
        oci("uid_mappings", &m.uid_mappings)?,
        oci("gid_mappings", &m.gid_mappings)?,
    )))
}

/// The image-store snapshot IDs of a container's image volumes.
pub fn image_volume_ids(id: &str, mounts: &[crate::store::MountRecord]) -> Vec<String> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.image.is_some())
        .map(|(i, _)| format!("{id}-image-{i}"))
        .collect()
}

/// Mounts an image volume (mount `i` of container `id`): a read-only snapshot of the image,
/// and the sub-path inside it when one is asked. Returns the path to bind and the image ID.
pub fn image_volume(
    images: &rsrun_image::ImageStore,
    id: &str,
    i: usize,
    m: &api::Mount,
    under: Option<&(PathBuf, rsrun_image::IdMap)>,
) -> Result<(PathBuf, String), Status> {
    let spec = m.image.as_ref().map(|s| s.image.as_str()).unwrap_or("");
    let what = format!("CreateContainer: mounts[{i}] (image volume {spec:?})");
    if spec.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what}: image.image is required"
        )));
    }
    if !m.readonly {
        return Err(Status::invalid_argument(format!(
            "{what}: image volumes are read-only: readonly must be true"
        )));
    }
    let sub = Path::new(&m.image_sub_path);
    if sub.is_absolute()
        || sub
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Status::invalid_argument(format!(
            "{what}: image_sub_path {:?} must be relative, without '..'",
            m.image_sub_path
        )));
    }
    let rec = images
        .get(spec)
        .map_err(crate::error::image_status)?
        .ok_or_else(|| Status::not_found(format!("{what}: the image is not present")))?;
    let vol = format!("{id}-image-{i}");
    // By the ID found (a moved tag would give another image's files than recorded).
    let by_id = rec.id.to_string();
    let root = match under {
        Some((d, m)) => {
            let at = d.join(format!("image-{i}"));
            images
                .prepare_rootfs_at(&vol, &by_id, true, &at, Some(m))
                .map_err(crate::error::image_status)?;
            at
        }
        None => images
            .prepare_rootfs(&vol, &by_id, true)
            .map_err(crate::error::image_status)?,
    };
    if m.image_sub_path.is_empty() {
        return Ok((root, rec.id.to_string()));
    }
    // Symlinks inside the image resolve on the host here: the result must stay inside.
    let path = match root.join(sub).canonicalize() {
        Ok(p) if p.starts_with(&root) => p,
        r => {
            let _ = images.remove_rootfs(&vol);
            return Err(match r {
                Ok(_) => Status::invalid_argument(format!(
                    "{what}: image_sub_path {:?} leads out of the image",
                    m.image_sub_path
                )),
                Err(e) => Status::not_found(format!(
                    "{what}: image_sub_path {:?}: {e}",
                    m.image_sub_path
                )),
            });
        }
    };
    Ok((path, rec.id.to_string()))
}

/// Whether this host can apply hugepage limits (read once). Where it cannot, the kubelet's
/// hugepage limits (0 for every page size, on every container) are left out, as containerd
/// and CRI-O do, rather than failing every container.
fn hugetlb_here() -> bool {
    static HERE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HERE.get_or_init(|| {
        rsrun::cgroups::hierarchies().is_ok_and(|hs| rsrun::cgroups::hugetlb_available(&hs))
    })
}

/// CRI resources as OCI `linux.resources` (only what is set; hugepage limits only where the
/// host has the hugetlb controller).
pub fn oci_resources(r: &api::LinuxContainerResources) -> Value {
    let mut res = json!({});
    let mut memory = json!({});
    if r.memory_limit_in_bytes > 0 {
        memory["limit"] = json!(r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory["swap"] = json!(r.memory_swap_limit_in_bytes);
    }
    if memory.as_object().is_some_and(|o| !o.is_empty()) {
        res["memory"] = memory;
    }
    let mut cpu = json!({});
    if r.cpu_shares > 0 {
        cpu["shares"] = json!(r.cpu_shares);
    }
    // -1: no quota (the kubelet's for a container given exclusive CPUs).
    if r.cpu_quota > 0 || r.cpu_quota == -1 {
        cpu["quota"] = json!(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu["period"] = json!(r.cpu_period);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu["cpus"] = json!(r.cpuset_cpus);
    }
    if !r.cpuset_mems.is_empty() {
        cpu["mems"] = json!(r.cpuset_mems);
    }
    if cpu.as_object().is_some_and(|o| !o.is_empty()) {
        res["cpu"] = cpu;
    }
    if !r.hugepage_limits.is_empty() && hugetlb_here() {
        res["hugepageLimits"] = json!(r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect::<Vec<_>>());
    }
    if !r.unified.is_empty() {
        res["unified"] = json!(r.unified);
    }
    res
}

/// OCI `linux.resources` back as CRI resources (ContainerStatus).
pub fn cri_resources(v: &Value) -> api::LinuxContainerResources {
    let i = |v: &Value| v.as_i64().unwrap_or(0);
    let st = |v: &Value| v.as_str().unwrap_or("").to_string();
    api::LinuxContainerResources {
        cpu_period: i(&v["cpu"]["period"]),
        cpu_quota: i(&v["cpu"]["quota"]),
        cpu_shares: i(&v["cpu"]["shares"]),
        cpuset_cpus: st(&v["cpu"]["cpus"]),
        cpuset_mems: st(&v["cpu"]["mems"]),
        memory_limit_in_bytes: i(&v["memory"]["limit"]),
        memory_swap_limit_in_bytes: i(&v["memory"]["swap"]),
        hugepage_limits: v["hugepageLimits"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| api::HugepageLimit {
                        page_size: st(&h["pageSize"]),
                        limit: h["limit"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        unified: v["unified"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), st(v))).collect())
            .unwrap_or_default(),
        oom_score_adj: 0,
    }
}

/// The container's state from its record and its exit record: (state, exit record).
pub fn state(r: &ContainerRecord) -> (i32, Option<Value>) {
    if let Some(v) = read_exit(r) {
        return (api::ContainerState::ContainerExited as i32, Some(v));
    }
    if !r.complete {
        return (api::ContainerState::ContainerUnknown as i32, None);
    }
    if r.deferred.is_some() {
        return (api::ContainerState::ContainerCreated as i32, None);
    }
    // No exit record: its shim must be alive; a shim that died leaves the container exited
    // with an error (never running forever). Before its shim has reported the container's
    // PID (pid 0), StartContainer is still starting it (it holds the container meanwhile; a
    // relist must not see it exited, or the kubelet takes it for dead and removes the
    // previous instance's status): created. Recovery settles one a killed server left so.
    if !shim_alive(r) {
        // A shim that wrote its exit record and exited since the first look is not lost.
        if let Some(v) = read_exit(r) {
            return (api::ContainerState::ContainerExited as i32, Some(v));
        }
        if r.pid == 0 {
            return (api::ContainerState::ContainerCreated as i32, None);
        }
        return (
            api::ContainerState::ContainerExited as i32,
            Some(lost_exit(r)),
        );
    }
    if r.started_at > 0 {
        (api::ContainerState::ContainerRunning as i32, None)
    } else {
        (api::ContainerState::ContainerCreated as i32, None)
    }
}

/// The container's exit record, if its shim (or the server) has written one.
fn read_exit(r: &ContainerRecord) -> Option<Value> {
    let v = serde_json::from_slice::<Value>(&std::fs::read(&r.exit_file).ok()?).ok()?;
    // Its shim's pidfd is no longer needed.
    forget_shim(&r.id);
    Some(v)
}

/// Where a container's exit record is kept: under the persistent root (`exits`), not in the
/// volatile state dir (a tmpfs on a node), so that after a reboot a container that had
/// completed still reports exit code 0 and reason Completed: the kubelet runs a container
/// that succeeded again when its pod is remade (restart policy OnFailure) if it reads 255.
pub fn exit_record(exits: &Path, id: &str) -> PathBuf {
    exits.join(format!("{id}.json"))
}

/// When each container whose shim died without an exit record was first seen so (RFC 3339),
/// until `persist_lost` has written its record.
static LOST_AT: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// The exit of a started container whose shim died without writing one (killed, or the node
/// rebooted under it): exit code 255 and reason Unknown, as containerd reports a task that
/// is gone, finished when first seen so (the kubelet's crash-loop back-off counts from
/// finished_at; 0 would read as 1970 and never back off). Only read here: the exit watcher
/// writes it down (`persist_lost`), under the container's lock.
fn lost_exit(r: &ContainerRecord) -> Value {
    forget_shim(&r.id);
    let at = LOST_AT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(r.id.clone())
        .or_insert_with(rsrun::state::now_rfc3339)
        .clone();
    json!({"exit_code": 255, "lost": true, "finished_at": at})
}

/// Writes the lost exit `state` reported for `r` as its exit record, unless one is there (a
/// shim that wrote its own just before it died). The caller holds the container's lock and
/// has seen its record still in the table (a removed container's record must not come back).
pub fn persist_lost(rt: &rsrun::Runtime, r: &ContainerRecord) -> std::io::Result<()> {
    if r.exit_file.exists() {
        return Ok(());
    }
    end_lost(rt, &r.id)?;
    let v = lost_exit(r);
    if let Some(dir) = r.exit_file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    rsrun::state::write_file_atomic(&r.exit_file, v.to_string().as_bytes(), true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    forget_lost(&r.id);
    Ok(())
}

/// Kills and deletes what the runtime has of a container whose shim died without an exit
/// record: its processes outlive their monitor (nothing else ends them), and a container
/// reported exited must not run on, holding its port and its pod's network namespace while
/// the kubelet starts its next instance (containerd deletes the task of a dead shim too).
/// Blocking.
pub fn end_lost(rt: &rsrun::Runtime, id: &str) -> std::io::Result<()> {
    match rt.delete(id, true) {
        Ok(()) | Err(rsrun::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(std::io::Error::other(format!(
            "delete container {id}, whose shim died: {e}"
        ))),
    }
}

/// Whether a lost exit of `id` is reported but not written down yet.
pub fn lost_pending(id: &str) -> bool {
    LOST_AT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(id)
}

pub fn forget_lost(id: &str) {
    LOST_AT.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
}

/// pidfds of the shims found alive, by container ID. The first look at a shim reads its pid
/// file and /proc (`shim_running`) after opening a pidfd for that PID, so the pidfd is the
/// shim's; every later look is one poll(2) of it (ContainerStatus, ListContainers, the exit
/// watcher: about half of ContainerStatus's time went to the /proc reads). Bounded, as the
/// server's descriptors are: beyond it, shims are looked at the slow way each time.
static SHIM_FDS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::os::fd::OwnedFd>>,
> = std::sync::LazyLock::new(Default::default);
const SHIM_FDS_MAX: usize = 512;

/// Whether the container has exited, or does within `wait`: its exit recorded, or its shim
/// gone (killed: nobody will record it). Polls every millisecond at first (most containers
/// end at once), backing off to every 20 ms. Blocking.
pub fn exited_within(r: &ContainerRecord, wait: std::time::Duration) -> bool {
    use std::time::{Duration, Instant};
    let gone = || r.exit_file.exists() || !shim_alive(r);
    let end = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    while Instant::now() < end {
        if gone() {
            return true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    gone()
}

pub fn shim_alive(r: &ContainerRecord) -> bool {
    use std::os::fd::AsFd;
    let mut fds = SHIM_FDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = fds.get(&r.id) {
        let mut p = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        // Readable once the process has exited. A signal interrupting the poll is retried;
        // another error drops the pidfd and asks the process table below, as the first look
        // did (taking it for an exit would have the caller end a healthy container).
        let polled = loop {
            match nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        match polled {
            Ok(0) => return true,
            Ok(_) => {
                fds.remove(&r.id);
                return false;
            }
            Err(e) => {
                tracing::warn!(container = %r.id, "polling the shim's pidfd: {e}");
                fds.remove(&r.id);
            }
        }
    }
    let Some(pid) = std::fs::read_to_string(r.shim_dir.join("shim.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return false;
    };
    let fd = rsrun::sys::pidfd_open(pid).ok();
    if !shim_running(pid, &r.id) {
        return false;
    }
    if let Some(fd) = fd.filter(|_| fds.len() < SHIM_FDS_MAX) {
        fds.insert(r.id.clone(), fd);
    }
    true
}

/// Drops the pidfd `shim_alive` keeps for container `id` (removed).
pub fn forget_shim(id: &str) {
    SHIM_FDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

/// Ends (SIGKILL, through a pidfd) every rsrun-shim process, starter or monitor, of object
/// `id`, and waits up to 2 s for them to go: a server killed while its shim was still making
/// a container (a pod's pause) leaves that shim running, and a restarted server undoing the
/// half-made object must not race it (the shim would create the container, or write into its
/// directory, after the undo). Returns how many were ended. Blocking.
pub fn end_shims(id: &str) -> usize {
    use std::os::fd::AsRawFd;
    let mut fds = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fd) = rsrun::sys::pidfd_open(pid) else {
            continue;
        };
        // Read after the pidfd is open: the pidfd is this process's, whatever its PID's fate.
        let is_shim = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first()
                .is_some_and(|a| a.rsplit(|b| *b == b'/').next() == Some(b"rsrun-shim"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--id" && w[1] == id.as_bytes())
        });
        if is_shim && rsrun::sys::pidfd_send_signal(fd.as_raw_fd(), nix::libc::SIGKILL).is_ok() {
            fds.push(fd);
        }
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
    for fd in &fds {
        use std::os::fd::AsFd;
        while std::time::Instant::now() < end {
            let mut p = [nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if nix::poll::poll(&mut p, nix::poll::PollTimeout::from(50u16)) != Ok(0) {
                break;
            }
        }
    }
    forget_shim(id);
    fds.len()
}

fn shim_running(pid: i32, id: &str) -> bool {
    let live = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with(['Z', 'X']))
    });
    live && std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == id.as_bytes()))
}

pub fn meta(r: &ContainerRecord) -> api::ContainerMetadata {
    api::ContainerMetadata {
        name: r.name.clone(),
        attempt: r.attempt,
    }
}

pub fn to_cri(r: &ContainerRecord) -> api::Container {
    api::Container {
        id: r.id.clone(),
        pod_sandbox_id: r.sandbox_id.clone(),
        metadata: Some(meta(r)),
        image: Some(api::ImageSpec {
            image: r.image.clone(),
            ..Default::default()
        }),
        image_ref: r.image_ref.clone(),
        image_id: r.image_ref.clone(),
        state: state(r).0,
        created_at: r.created_at,
        labels: r.labels.clone(),
        annotations: r.annotations.clone(),
    }
}

pub fn status(r: &ContainerRecord) -> api::ContainerStatus {
    let (st, exit) = state(r);
    let mut s = api::ContainerStatus {
        id: r.id.clone(),
        metadata: Some(meta(r)),
        state: st,
        created_at: r.created_at,
        started_at: r.started_at,
        image: Some(api::ImageSpec {
            image: if r.repo_tag.is_empty() {
                r.image.clone()
            } else {
                r.repo_tag.clone()
            },
            ..Default::default()
        }),
        // The repo digest, as containerd reports it (the kubelet's imageID); the image
        // ID when the image has none. image_id is always the image ID.
        image_ref: if r.repo_digest.is_empty() {
            r.image_ref.clone()
        } else {
            r.repo_digest.clone()
        },
        image_id: r.image_ref.clone(),
        stop_signal: to_cri_signal(stop_signal(r, false)),
        labels: r.labels.clone(),
        annotations: r.annotations.clone(),
        log_path: r.log_path.clone(),
        resources: r.resources.as_ref().map(|v| api::ContainerResources {
            linux: Some(api::LinuxContainerResources {
                oom_score_adj: r.oom_score_adj,
                ..cri_resources(v)
            }),
            windows: None,
        }),
        user: r
            .user
            .as_ref()
            .map(|(uid, gid, groups)| api::ContainerUser {
                linux: Some(api::LinuxContainerUser {
                    uid: *uid as i64,
                    gid: *gid as i64,
                    supplemental_groups: groups.iter().map(|g| *g as i64).collect(),
                }),
            }),
        mounts: r
            .mounts
            .iter()
            .map(|m| api::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                recursive_read_only: m.recursive_read_only,
                image: m.image.as_ref().map(|i| api::ImageSpec {
                    image: i.clone(),
                    image_ref: m.image_ref.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    if let Some(e) = exit {
        let code = e["exit_code"].as_i64().unwrap_or(255) as i32;
        s.exit_code = code;
        s.finished_at = e["finished_at"]
            .as_str()
            .and_then(crate::store::parse_rfc3339)
            .unwrap_or(0);
        if s.started_at == 0 {
            s.started_at = e["started_at"]
                .as_str()
                .and_then(crate::store::parse_rfc3339)
                .unwrap_or(0);
        }
        if let Some(m) = e["start_error"].as_str() {
            s.reason = "StartError".into();
            s.message = m.to_string();
        } else if e["lost"] == true {
            s.reason = "Unknown".into();
            s.message = "the container's monitor (rsrun-shim) died: its exit is unknown".into();
        } else if e["oom_killed"] == true {
            s.reason = "OOMKilled".into();
        } else if code == 0 {
            s.reason = "Completed".into();
        } else {
            s.reason = "Error".into();
        }
    }
    s
}

/// Whether `r` passes a ListContainers filter.
pub fn matches(r: &ContainerRecord, f: &api::ContainerFilter) -> bool {
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.state.as_ref().is_none_or(|s| s.state == state(r).0)
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

/// The shim's control socket: one JSON request, one JSON line back (plus, for exec_sync,
/// the output bytes). Blocking: run it off the async workers.
pub fn control(
    shim_dir: &Path,
    req: &Value,
    timeout: std::time::Duration,
) -> std::io::Result<(Value, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = connect_control(shim_dir)?;
    // A shim that does not answer (stopped, or stuck) must not hold this thread, nor the
    // container's lock, nor the server's recovery, for good.
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let late = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from the shim within {} s", timeout.as_secs()),
            )
        } else {
            e
        }
    };
    s.write_all(format!("{req}\n").as_bytes()).map_err(late)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).map_err(late)?;
    split_answer(all)
}

/// `control` on the async runtime, for requests whose answer may take long (exec_sync):
/// dropping the future (a client that cancelled, or its deadline) closes the connection,
/// which the shim takes for the requester's departure.
pub async fn control_async(shim_dir: &Path, req: &Value) -> std::io::Result<(Value, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The short path goes through a directory descriptor that must outlive the connect.
    let (path, _dirfd) = rsrun::lifecycle::short_socket_path(&shim_dir.join("control"))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut s = tokio::net::UnixStream::connect(&path).await?;
    s.write_all(format!("{req}\n").as_bytes()).await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    split_answer(all)
}

/// A shim's answer: its JSON header line, and the bytes after it.
fn split_answer(all: Vec<u8>) -> std::io::Result<(Value, Vec<u8>)> {
    let nl = all
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| std::io::Error::other("the shim's answer has no line"))?;
    let head: Value = serde_json::from_slice(&all[..nl])
        .map_err(|e| std::io::Error::other(format!("the shim's answer: {e}")))?;
    Ok((head, all[nl + 1..].to_vec()))
}

/// A connection to the shim's control socket (its path may exceed a socket address).
fn connect_control(shim_dir: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let (path, _dirfd) = rsrun::lifecycle::short_socket_path(&shim_dir.join("control"))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::os::unix::net::UnixStream::connect(&path)
}

/// The longest request line a shim reads on its control socket (rsrun-shim's
/// `proto::CONTROL_MAX`): it answers a longer one "control request too long" and closes the
/// connection.
const SHIM_REQUEST_MAX: usize = 1 << 20;

/// What an exec request's `cmd` may take of it (the rest: the operation, timeout,
/// environment and console socket path).
const EXEC_CMD_MAX: usize = SHIM_REQUEST_MAX - 64 * 1024;

/// An exec's command as its shim request carries it (JSON, where a control character takes
/// six bytes): refused by name when the request would be longer than a shim reads (the
/// request was cut off at the shim, and the caller saw a broken pipe).
pub fn check_exec_cmd(rpc: &str, cmd: &[String]) -> Result<(), Status> {
    let n = serde_json::to_string(cmd).map_or(usize::MAX, |s| s.len());
    if n > EXEC_CMD_MAX {
        return Err(Status::invalid_argument(format!(
            "{rpc}: cmd is {n} bytes as the shim's request carries it (JSON), more than {EXEC_CMD_MAX}"
        )));
    }
    Ok(())
}

/// Records a start that failed (reason StartError, exit code 128) as the container's exit.
pub fn record_start_error(exit_file: &Path, id: &str, msg: &str) -> std::io::Result<()> {
    let exit = json!({"id": id, "exit_code": 128, "start_error": msg,
        "finished_at": rsrun::state::now_rfc3339()});
    rsrun::state::write_file_atomic(exit_file, exit.to_string().as_bytes(), true)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Starts an interactive exec through the shim's control socket: `req` with `fds` attached
/// (SCM_RIGHTS). Returns the connection, whose next line is the exit header, and the
/// shim's first answer (the PID, or an error). Blocking: run it off the async workers.
pub fn exec_in_shim(
    shim_dir: &Path,
    req: &Value,
    fds: &[std::os::fd::RawFd],
) -> std::io::Result<(std::os::unix::net::UnixStream, Value)> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut s = connect_control(shim_dir)?;
    // The shim answers at once (it forks the process and says its PID): a shim that is
    // stopped or stuck must not hold this thread (control's bound, as for any request).
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    s.set_write_timeout(Some(std::time::Duration::from_secs(60)))?;
    let line = format!("{req}\n").into_bytes();
    let sent = rsrun::sys::send_with_fds(s.as_raw_fd(), &line, fds)?;
    s.write_all(&line[sent..])?;
    // One byte at a time: what follows the first line is read later, asynchronously.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let got = s.read(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                std::io::Error::other("the shim did not answer the exec within 60 s")
            }
            _ => e,
        })?;
        match got {
            0 => {
                return Err(std::io::Error::other(
                    "the shim closed the exec without an answer",
                ))
            }
            _ if b[0] == b'\n' => break,
            _ if head.len() >= 64 * 1024 => {
                return Err(std::io::Error::other("the shim's exec answer is too long"))
            }
            _ => head.push(b[0]),
        }
    }
    let v = serde_json::from_slice(&head)
        .map_err(|e| std::io::Error::other(format!("the shim's answer: {e}")))?;
    // The exit line comes when the process ends, however long that is.
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok((s, v))
}

/// Paths of a container's files under the server's state dir.
pub struct Paths {
    pub dir: PathBuf,
    pub bundle: PathBuf,
    pub shim_dir: PathBuf,
    pub exit_file: PathBuf,
}

pub fn paths(state: &Path, id: &str) -> Paths {
    let dir = state.join("containers").join(id);
    Paths {
        // The bundle is the container's dir itself (config.json beside exit.json): one
        // directory less per container.
        bundle: dir.clone(),
        // Short: unix socket paths must fit in 108 bytes.
        shim_dir: state.join("s").join(id),
        exit_file: dir.join("exit.json"),
        dir,
    }
}

/// The CRI's CPU and memory figures from a cgroup's stats (rsrun's runc-shaped `stats`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CgroupUsage {
    pub cpu_total: Option<u64>,
    pub usage: Option<u64>,
    pub working_set: Option<u64>,
    pub available: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// Swap alone, and what its limit leaves (none without swap accounting; the second
    /// none without a swap limit).
    pub swap_usage: Option<u64>,
    pub swap_available: Option<u64>,
}

impl CgroupUsage {
    pub fn of(v: &Value) -> CgroupUsage {
        let n = |x: &Value| x.as_u64();
        let mem = &v["memory"];
        let raw = &mem["raw"];
        let pick = |keys: &[&str]| keys.iter().find_map(|k| raw[*k].as_u64());
        let usage = n(&mem["usage"]["usage"]);
        let inactive = pick(&["total_inactive_file", "inactive_file"]).unwrap_or(0);
        let working_set = usage.map(|x| x.saturating_sub(inactive));
        // What the limit leaves (the kubelet's summary API passes it on), as containerd
        // reports it: none without a limit (v2's "max", v1's page-rounded i64::MAX).
        let available = match (n(&mem["usage"]["limit"]), working_set) {
            (Some(l), Some(ws)) if l < 1 << 62 => Some(l.saturating_sub(ws)),
            _ => None,
        };
        // runc's swap figures are memory plus swap (v1's memsw, v2's memory.current plus
        // memory.swap.current); swap alone is the difference, as CRI-O reports it. Where the
        // kernel accounts no swap (v1 without memsw) the sum is 0: none.
        let (swap_usage, swap_available) = match (n(&mem["swap"]["usage"]), usage) {
            (Some(total), Some(u)) if total > 0 && total >= u => {
                let used = total - u;
                let left = match (n(&mem["swap"]["limit"]), n(&mem["usage"]["limit"])) {
                    (Some(sl), Some(ml)) if sl < 1 << 62 && ml < 1 << 62 => {
                        Some(sl.saturating_sub(ml).saturating_sub(used))
                    }
                    _ => None,
                };
                (Some(used), left)
            }
            _ => (None, None),
        };
        CgroupUsage {
            swap_usage,
            swap_available,
            cpu_total: n(&v["cpu"]["usage"]["total"]),
            usage,
            working_set,
            available,
            rss: pick(&["total_rss", "rss", "anon"]),
            page_faults: pick(&["total_pgfault", "pgfault"]),
            major_page_faults: pick(&["total_pgmajfault", "pgmajfault"]),
        }
    }
}

/// A CPU sample of a container or pod, kept between stats calls for `usage_nano_cores`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSample {
    /// When it was taken (ns since the epoch).
    pub at: i64,
    /// The cumulative CPU usage then (ns).
    pub usage: u64,
    /// The rate over the window that ended at it (nano-cores), if there was one.
    pub rate: Option<u64>,
}

impl CpuSample {
    /// The shortest window a rate is taken over. The kubelet asks for stats several times per
    /// interval (eviction, the summary, the resource metrics, resize checks): a rate over the
    /// time since whoever asked last would jump between 0 and whole cores for a throttled or
    /// bursty container (its own stats provider warns of it); containerd samples every second.
    pub const MIN_WINDOW_NS: i64 = 1_000_000_000;

    /// The sample after `prev` for `usage` at `at`: within the shortest window of `prev`, `prev`
    /// itself (its rate stays the one reported); else one with the rate since `prev` (none
    /// without one, or when the counter went back: a new cgroup).
    pub fn next(prev: Option<CpuSample>, at: i64, usage: u64) -> CpuSample {
        match prev {
            Some(p) if usage >= p.usage && at > p.at => {
                if at - p.at < Self::MIN_WINDOW_NS {
                    return p;
                }
                let rate = (usage - p.usage) as u128 * 1_000_000_000 / (at - p.at) as u128;
                CpuSample {
                    at,
                    usage,
                    rate: Some(rate as u64),
                }
            }
            _ => CpuSample {
                at,
                usage,
                rate: None,
            },
        }
    }
}

/// The container's stats from its cgroups (rsrun's `events --stats` figures) and its
/// writable layer. `last` is its previous CPU sample, for nano-cores; the new one is returned.
pub fn stats(
    rt: &rsrun::Runtime,
    images: &rsrun_image::ImageStore,
    r: &ContainerRecord,
    last: Option<CpuSample>,
) -> (api::ContainerStats, Option<CpuSample>) {
    let ts = crate::store::now_ns();
    let v = rt.stats(&r.id).unwrap_or(Value::Null);
    let u = |value: u64| Some(api::UInt64Value { value });
    let CgroupUsage {
        cpu_total,
        usage,
        working_set,
        available,
        rss,
        page_faults,
        major_page_faults,
        swap_usage,
        swap_available,
    } = CgroupUsage::of(&v);
    // An exited container (no cgroup left) has no CPU or memory figures: none, not zeros.
    let live = !v.is_null();
    let psi = if live {
        crate::metrics::Psi::of(crate::metrics::container_v2_dir(&rt.root, &r.id).as_deref())
    } else {
        crate::metrics::Psi::default()
    };
    let sample = cpu_total.map(|c| CpuSample::next(last, ts, c));
    let nano_cores = sample.and_then(|s| s.rate);
    let writable = images
        .container_usage(&r.id)
        .ok()
        .map(|w| api::FilesystemUsage {
            timestamp: w.timestamp_ns,
            fs_id: Some(api::FilesystemIdentifier {
                mountpoint: w.mountpoint.to_string_lossy().into_owned(),
            }),
            used_bytes: u(w.used_bytes),
            inodes_used: u(w.inodes_used),
        });
    let s = api::ContainerStats {
        attributes: Some(api::ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(meta(r)),
            labels: r.labels.clone(),
            annotations: r.annotations.clone(),
        }),
        cpu: live.then(|| api::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: cpu_total.and_then(u),
            usage_nano_cores: nano_cores.and_then(u),
            psi: psi.cpu,
        }),
        memory: live.then(|| api::MemoryUsage {
            timestamp: ts,
            working_set_bytes: working_set.and_then(u),
            available_bytes: available.and_then(u),
            usage_bytes: usage.and_then(u),
            rss_bytes: rss.and_then(u),
            page_faults: page_faults.and_then(u),
            major_page_faults: major_page_faults.and_then(u),
            psi: psi.memory,
        }),
        writable_layer: writable,
        io: psi.io_usage(ts),
        swap: swap_usage.filter(|_| live).map(|used| api::SwapUsage {
            timestamp: ts,
            swap_available_bytes: swap_available.and_then(u),
            swap_usage_bytes: u(used),
        }),
    };
    (s, sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_holding_a_path_is_the_deepest_and_topmost() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            30 22 0:5 / /mnt/a\\040b rw master:7 - tmpfs t rw\n\
            31 22 0:6 / /mnt/p rw - tmpfs t rw\n\
            32 31 0:7 / /mnt/p rw shared:9 master:3 - tmpfs t rw\n\
            33 22 0:8 / /mnt/pp rw - tmpfs t rw\n";
        let at =
            |p: &str| mount_of(info, Path::new(p)).map(|(m, f)| format!("{m} {}", f.join(",")));
        assert_eq!(at("/var/lib/x").as_deref(), Some("/ shared:1"));
        assert_eq!(at("/mnt/a b/c").as_deref(), Some("/mnt/a b master:7"));
        assert_eq!(at("/mnt/p/q").as_deref(), Some("/mnt/p shared:9,master:3"));
        // A name that merely begins like a mount point is not under it.
        assert_eq!(at("/mnt/ppx").as_deref(), Some("/ shared:1"));
        assert_eq!(at("/mnt/pp/x").as_deref(), Some("/mnt/pp "));
    }

    #[test]
    #[allow(deprecated)]
    fn apparmor_profiles_as_asked_and_refused_without_apparmor() {
        use api::security_profile::ProfileType;
        let sc = |t: Option<(ProfileType, &str)>, old: &str| api::LinuxContainerSecurityContext {
            apparmor: t.map(|(t, r)| api::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            apparmor_profile: old.into(),
            ..Default::default()
        };
        let local = sc(Some((ProfileType::Localhost, "web")), "");
        assert_eq!(
            apparmor_profile(&local, true).unwrap().as_deref(),
            Some("web")
        );
        let e = apparmor_profile(&local, false).unwrap_err();
        assert!(
            e.message().contains("AppArmor is not enabled") && e.message().contains("web"),
            "{e:?}"
        );
        let dflt = sc(Some((ProfileType::RuntimeDefault, "")), "");
        assert_eq!(apparmor_profile(&dflt, true).unwrap(), None);
        assert!(apparmor_profile(&dflt, false).is_err());
        let unconf = sc(Some((ProfileType::Unconfined, "")), "");
        assert_eq!(apparmor_profile(&unconf, false).unwrap(), None);
        assert_eq!(apparmor_profile(&sc(None, ""), false).unwrap(), None);
        // The deprecated string.
        assert_eq!(
            apparmor_profile(&sc(None, "localhost/db"), true)
                .unwrap()
                .as_deref(),
            Some("db")
        );
        assert_eq!(
            apparmor_profile(&sc(None, "unconfined"), false).unwrap(),
            None
        );
        assert!(apparmor_profile(&sc(None, "runtime/default"), false).is_err());
        assert!(apparmor_profile(&sc(None, "nonsense"), true).is_err());
        // The field wins over the string.
        assert_eq!(
            apparmor_profile(
                &sc(Some((ProfileType::Unconfined, "")), "localhost/x"),
                false
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd_and_an_empty_entrypoint_is_none() {
        let img = |ep: &[&str], cmd: &[&str]| ImageConfig {
            entrypoint: ep.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let cfg = |command: &[&str], args: &[&str]| api::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let v = |a: Vec<String>| a.join(" ");
        let i = img(&["/ep", "-x"], &["run"]);
        assert_eq!(v(process_args(&cfg(&[], &[]), &i)), "/ep -x run");
        assert_eq!(v(process_args(&cfg(&[], &["go"]), &i)), "/ep -x go");
        assert_eq!(v(process_args(&cfg(&["/bin/sh"], &[]), &i)), "/bin/sh");
        assert_eq!(
            v(process_args(&cfg(&["/bin/sh"], &["-c", "x"]), &i)),
            "/bin/sh -c x"
        );
        // ENTRYPOINT [""] clears the base image's: CMD runs alone.
        let i = img(&[""], &["/bin/echo", "hi"]);
        assert_eq!(v(process_args(&cfg(&[], &[]), &i)), "/bin/echo hi");
        assert_eq!(v(process_args(&cfg(&[], &["/bin/true"]), &i)), "/bin/true");
    }

    #[test]
    fn cpu_rate_over_a_second_at_least() {
        const S: i64 = 1_000_000_000;
        let first = CpuSample::next(None, 10 * S, 5_000);
        assert_eq!(first.rate, None);
        // Asked again 2 ms later: the same sample, no rate over 2 ms.
        assert_eq!(
            CpuSample::next(Some(first), 10 * S + 2_000_000, 7_000),
            first
        );
        // 2 s later, half a core on average.
        let s = CpuSample::next(Some(first), 12 * S, 5_000 + S as u64);
        assert_eq!(s.rate, Some(500_000_000));
        // Then 1 ms later: that rate again (not 0 or a whole core over 1 ms).
        assert_eq!(
            CpuSample::next(Some(s), 12 * S + 1_000_000, 5_000 + S as u64),
            s
        );
        // A counter that went back (a new cgroup): no rate.
        assert_eq!(CpuSample::next(Some(s), 14 * S, 10).rate, None);
    }

    fn with_caps(add: &[&str], drop: &[&str]) -> api::LinuxContainerSecurityContext {
        api::LinuxContainerSecurityContext {
            capabilities: Some(api::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn capability_drops_win_as_containerd_orders_them() {
        let caps = |add: &[&str], drop: &[&str]| capabilities(&with_caps(add, drop), None).unwrap();
        let all = all_caps();
        let got = caps(&["ALL"], &["NET_RAW"]);
        assert_eq!(got.len(), all.len() - 1);
        assert!(!got.contains(&"CAP_NET_RAW".to_string()));
        assert!(!caps(&["SYS_ADMIN"], &["SYS_ADMIN"]).contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(caps(&["ALL"], &["ALL"]).is_empty());
        // A name no capability has is refused, naming the field and the name.
        for (add, drop, field) in [
            (vec!["NET_ADMN"], vec![], "add_capabilities"),
            (vec![], vec!["CAP_SYS_ADMINN"], "drop_capabilities"),
            (vec!["CAP_"], vec![], "add_capabilities"),
        ] {
            let e = capabilities(&with_caps(&add, &drop), None).unwrap_err();
            let name = add.first().or(drop.first()).unwrap();
            assert!(
                e.message().contains(field) && e.message().contains(&format!("{name:?}")),
                "{e:?}"
            );
        }
        assert_eq!(caps(&["chown"], &["ALL"]), vec!["CAP_CHOWN".to_string()]);
        assert_eq!(clean_path("/a//b/./"), "/a/b");
        assert_eq!(clean_path("/"), "/");
    }

    /// The image's /etc/passwd is read as the container sees it: an absolute symlink stays in
    /// the rootfs, and a FIFO or device is not read (either held the RPC: a FIFO for good,
    /// /dev/zero until memory ran out); a user or group named in it is then not found.
    #[test]
    fn image_user_files_resolve_in_the_rootfs_and_are_read_only_when_regular() {
        let dir = std::env::temp_dir().join(format!("rsrun-cri-user-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // Outside the rootfs: a file naming a user the image does not have.
        let host = dir.join("host-passwd");
        std::fs::write(&host, "mallory:x:4321:4321::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(&host, root.join("etc/passwd")).unwrap();
        let sc = api::LinuxContainerSecurityContext::default();
        let in_thread = |name: &'static str| {
            let (tx, rx) = std::sync::mpsc::channel();
            let root = root.clone();
            let sc = sc.clone();
            std::thread::spawn(move || {
                let _ = tx.send(user(&sc, name, &root));
            });
            // A hang guard, not a timing: the answer comes at once or never.
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("user resolution never answered")
        };
        let e = in_thread("mallory").unwrap_err();
        assert!(e.message().contains("not in its /etc/passwd"), "{e:?}");
        // The same file in the rootfs: found.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::copy(&host, root.join("etc/passwd")).unwrap();
        assert_eq!(in_thread("mallory").unwrap(), (4321, 4321, vec![4321]));
        // A FIFO and a device are refused by name.
        let run = |args: &[&str]| {
            assert!(std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap()
                .success())
        };
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        run(&["mkfifo", root.join("etc/passwd").to_str().unwrap()]);
        let e = in_thread("mallory").unwrap_err();
        assert!(e.message().contains("not in its /etc/passwd"), "{e:?}");
        assert_eq!(in_thread("4321").unwrap().0, 4321);
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::copy(&host, root.join("etc/passwd")).unwrap();
        run(&[
            "mknod",
            root.join("etc/group").to_str().unwrap(),
            "c",
            "1",
            "5",
        ]);
        let e = in_thread("mallory:staff").unwrap_err();
        assert!(e.message().contains("not in its /etc/group"), "{e:?}");
        assert_eq!(in_thread("mallory").unwrap(), (4321, 4321, vec![4321]));
        // Larger than what is read: refused, naming it.
        std::fs::remove_file(root.join("etc/group")).unwrap();
        let big = std::fs::File::create(root.join("etc/group")).unwrap();
        big.set_len(5 << 20).unwrap();
        let e = in_thread("mallory").unwrap_err();
        assert!(e.message().contains("/etc/group is 5242880 bytes"), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// 4294967295, (uid_t)-1, would leave the process root: refused as a uid, a gid or a
    /// supplementary group, from the CRI or from the image; 2147483647 is the largest taken.
    #[test]
    fn user_and_group_ids_above_2_pow_31_minus_1_are_refused() {
        let dir = std::env::temp_dir().join(format!("rsrun-cri-maxid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "big:x:4294967295:1::/:/bin/sh\nok:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/group"), "huge:x:4294967295:ok\n").unwrap();
        let sc = api::LinuxContainerSecurityContext::default();
        for (image_user, want) in [
            ("4294967295", "the uid 4294967295 of the image's USER"),
            ("big", "the uid 4294967295 of the image's USER"),
            ("1000:4294967295", "the gid 4294967295"),
            ("ok", "the supplementary group 4294967295"),
        ] {
            let e = user(&sc, image_user, &dir).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{image_user}: {e:?}");
        }
        let with = |uid: Option<i64>, gid: Option<i64>, groups: Vec<i64>| {
            let sc = api::LinuxContainerSecurityContext {
                run_as_user: uid.map(|value| api::Int64Value { value }),
                run_as_group: gid.map(|value| api::Int64Value { value }),
                supplemental_groups: groups,
                ..Default::default()
            };
            user(&sc, "", &dir)
        };
        let e = with(Some(4294967295), None, vec![]).unwrap_err();
        assert!(e.message().contains("of run_as_user"), "{e:?}");
        let e = with(Some(0), Some(4294967295), vec![]).unwrap_err();
        assert!(e.message().contains("gid 4294967295"), "{e:?}");
        let e = with(Some(0), None, vec![4294967295]).unwrap_err();
        assert!(e.message().contains("supplementary group"), "{e:?}");
        assert_eq!(
            with(Some(2147483647), Some(2147483647), vec![]).unwrap(),
            (2147483647, 2147483647, vec![2147483647])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Profile types and the supplementary-group policy outside the CRI's enums, and a
    /// localhost_ref on a type that takes none, are refused by name; the defined ones pass.
    #[test]
    fn unknown_profile_types_and_policies_are_refused() {
        use api::security_profile::ProfileType;
        let prof = |t: i32, r: &str| api::SecurityProfile {
            profile_type: t,
            localhost_ref: r.into(),
        };
        for t in [ProfileType::RuntimeDefault, ProfileType::Unconfined] {
            assert!(profile_type_checked(&prof(t as i32, ""), "seccomp").is_ok());
            let e = profile_type_checked(&prof(t as i32, "p.json"), "seccomp").unwrap_err();
            assert!(
                e.message().contains("only for profile_type Localhost"),
                "{e:?}"
            );
        }
        assert!(profile_type_checked(&prof(ProfileType::Localhost as i32, "p"), "x").is_ok());
        let e = profile_type_checked(&prof(7, ""), "apparmor").unwrap_err();
        assert!(e.message().contains("apparmor: profile_type 7"), "{e:?}");
        // Through the AppArmor path too (an unknown type was read as runtime/default).
        let sc = api::LinuxContainerSecurityContext {
            apparmor: Some(prof(7, "")),
            ..Default::default()
        };
        assert!(apparmor_profile(&sc, true).is_err());
        let dir = std::env::temp_dir().join(format!("rsrun-cri-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sc = api::LinuxContainerSecurityContext {
            supplemental_groups_policy: 5,
            ..Default::default()
        };
        let e = user(&sc, "", &dir).unwrap_err();
        assert!(
            e.message().contains("supplemental_groups_policy 5"),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The image's entries, then the config's: an image entry without '=' unsets the name,
    /// one without a name is passed over; the config's value wins.
    #[test]
    fn environment_merge() {
        let img: Vec<String> = ["A=1", "B=2", "=x", "A", "C=3=4", "B=5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let kv = |k: &str, v: &str| api::KeyValue {
            key: k.into(),
            value: v.into(),
        };
        let got = merge_env(&img, &[kv("C", "6"), kv("D", "")]).unwrap();
        let got: Vec<String> = got.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(got, ["B=5", "C=6", "D="]);
        assert!(merge_env(&img, &[kv("", "x")]).is_err());
    }

    #[test]
    fn cpu_quota_minus_one_is_no_quota_and_zero_is_unset() {
        let r = |q| api::LinuxContainerResources {
            cpu_quota: q,
            cpu_period: 100_000,
            ..Default::default()
        };
        assert_eq!(oci_resources(&r(-1))["cpu"]["quota"], json!(-1));
        assert_eq!(oci_resources(&r(50_000))["cpu"]["quota"], json!(50_000));
        assert!(oci_resources(&r(0))["cpu"].get("quota").is_none());
        assert!(oci_resources(&r(-5))["cpu"].get("quota").is_none());
    }

    #[test]
    fn repo_digest_of_the_asked_repository() {
        let d = vec![
            "example.com/a/busybox@sha256:1".to_string(),
            "docker.io/library/busybox@sha256:2".to_string(),
        ];
        assert_eq!(
            repo_digest("busybox", &d),
            "docker.io/library/busybox@sha256:2"
        );
        assert_eq!(
            repo_digest("example.com/a/busybox:v1", &d),
            "example.com/a/busybox@sha256:1"
        );
        assert_eq!(
            repo_digest("sha256:abcd", &d),
            "example.com/a/busybox@sha256:1"
        );
        assert_eq!(repo_digest("busybox", &[]), "");
    }

    #[test]
    fn repo_tag_the_user_asked_for() {
        let t = vec![
            "example.com/a/busybox:v1".to_string(),
            "docker.io/library/busybox:1.36".to_string(),
            "docker.io/library/busybox:latest".to_string(),
        ];
        assert_eq!(repo_tag("busybox", &t), "docker.io/library/busybox:latest");
        assert_eq!(
            repo_tag("docker.io/library/busybox:1.36", &t),
            "docker.io/library/busybox:1.36"
        );
        // A tag of the asked repository that is not the image's: another of that repository.
        assert_eq!(
            repo_tag("busybox:gone", &t),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(repo_tag("sha256:abcd", &t), "example.com/a/busybox:v1");
        assert_eq!(repo_tag("busybox", &[]), "");
    }

    #[test]
    fn stop_signals_as_images_and_the_cri_name_them() {
        for v in 1..=65 {
            let s = cri_signal(v).unwrap().unwrap();
            // SIGCLD, SIGIOT and SIGPOLL are aliases: their canonical names come back.
            let back = to_cri_signal(s);
            assert_eq!(cri_signal(back).unwrap(), Some(s), "{v}");
        }
        assert_eq!(cri_signal(0).unwrap(), None);
        assert_eq!(
            cri_signal(api::Signal::Sigrtminplus3 as i32)
                .unwrap()
                .unwrap()
                .raw(),
            37
        );
        assert_eq!(
            cri_signal(api::Signal::Sigrtmaxminus14 as i32)
                .unwrap()
                .unwrap()
                .raw(),
            50
        );
        assert_eq!(
            cri_signal(api::Signal::Sigquit as i32)
                .unwrap()
                .unwrap()
                .raw(),
            3
        );
        assert!(cri_signal(66).unwrap_err().contains("66"));
        assert_eq!(
            to_cri_signal(Signal::parse("SIGTERM").unwrap()),
            api::Signal::Sigterm as i32
        );
        assert_eq!(to_cri_signal(Signal::from_raw(32).unwrap()), 0);
        let c = ImageConfig::from_spec(
            serde_json::from_value(
                json!({"config": {"StopSignal": "SIGINT"}, "rootfs": {"diff_ids": []}}),
            )
            .unwrap(),
        );
        assert_eq!(c.stop_signal, "SIGINT");
    }

    #[test]
    fn a_container_whose_shim_is_starting_is_created_not_lost() {
        let dir = std::env::temp_dir().join(format!("rsrun-cri-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = ContainerRecord {
            id: "a".repeat(64),
            complete: true,
            deferred: None,
            exit_file: dir.join("exit.json"),
            shim_dir: dir.join("no-shim"),
            ..Default::default()
        };
        // StartContainer has taken it (no longer deferred) and no shim reported yet.
        assert_eq!(state(&r).0, api::ContainerState::ContainerCreated as i32);
        // Its shim reported the PID and is gone without an exit record: lost.
        r.pid = 4242;
        let (st, exit) = state(&r);
        assert_eq!(st, api::ContainerState::ContainerExited as i32);
        assert_eq!(exit.unwrap()["lost"], true);
        // An exit record wins either way.
        std::fs::write(&r.exit_file, r#"{"exit_code": 3}"#).unwrap();
        r.pid = 0;
        assert_eq!(state(&r).0, api::ContainerState::ContainerExited as i32);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn dev(host: &str, at: &str, perms: &str) -> api::Device {
        api::Device {
            host_path: host.into(),
            container_path: at.into(),
            permissions: perms.into(),
        }
    }

    #[test]
    fn a_host_device_is_created_and_allowed_with_its_numbers() {
        let (nodes, rules) =
            container_devices(&[dev("/dev/null", "/dev/mynull", "rw")], false).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["path"], "/dev/mynull");
        assert_eq!(
            (
                nodes[0]["type"].as_str(),
                nodes[0]["major"].as_u64(),
                nodes[0]["minor"].as_u64()
            ),
            (Some("c"), Some(1), Some(3))
        );
        // Deny-all first (containerd's default spec), then the device.
        assert_eq!(
            rules,
            vec![
                json!({"allow": false, "access": "rwm"}),
                json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})
            ]
        );
    }

    #[test]
    fn privileged_gets_the_hosts_devices_and_no_cgroup_restriction() {
        let (nodes, rules) = container_devices(&[], true).unwrap();
        assert!(nodes.iter().any(|n| n["path"] == "/dev/null"), "{nodes:?}");
        assert!(!nodes
            .iter()
            .any(|n| n["path"].as_str().unwrap().starts_with("/dev/pts/")));
        assert_eq!(rules, vec![json!({"allow": true, "access": "rwm"})]);
    }

    #[test]
    fn bad_devices_are_refused_by_name() {
        let e = container_devices(&[dev("/etc/hostname", "/dev/x", "rw")], false).unwrap_err();
        assert!(
            e.message().contains("devices[0]") && e.message().contains("not a device"),
            "{e:?}"
        );
        let e = container_devices(&[dev("/dev/null", "/dev/x", "rwx")], false).unwrap_err();
        assert!(e.message().contains("permissions \"rwx\""), "{e:?}");
        let e = container_devices(&[dev("/nonexistent", "/dev/x", "r")], false).unwrap_err();
        assert!(e.message().contains("/nonexistent"), "{e:?}");
    }
}
