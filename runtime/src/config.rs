//! Loading and validating a bundle's config.json.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// A validated bundle: its absolute path, its config and the absolute rootfs path.
pub struct Bundle {
    pub path: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

/// Checks a container ID: non-empty, at most 1024 bytes, no `/`, not `.` or `..`, and only
/// the characters runc allows (letters, digits, `_+-.`).
/// The longest container ID: NAME_MAX, as it is one path component.
pub const MAX_ID_LEN: usize = 255;

pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::Invalid("container ID must not be empty".into()));
    }
    if id == "." || id == ".." || id.contains('/') {
        return Err(Error::Invalid(format!(
            "invalid container ID {id:?}: must not be . or .. or contain /"
        )));
    }
    // The ID names a directory under the state root (and the default cgroup): one path
    // component, which the kernel limits to NAME_MAX bytes.
    if id.len() > MAX_ID_LEN {
        return Err(Error::Invalid(format!(
            "invalid container ID: {} bytes, longer than {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_+-.".contains(*c)))
    {
        return Err(Error::Invalid(format!(
            "invalid container ID {id:?}: character {c:?} not allowed"
        )));
    }
    Ok(())
}

/// Whether the host has SELinux (its filesystem mounted, as libselinux tells).
pub fn selinux_enabled() -> bool {
    Path::new("/sys/fs/selinux/enforce").exists()
}

/// Parses config.json text. Errors name the JSON path of the offending field.
pub fn parse_spec(text: &[u8], path: &Path) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." || field.is_empty() {
            Error::Config(format!("{}: {inner}", path.display()))
        } else {
            Error::Config(format!("{}: field {field}: {inner}", path.display()))
        }
    })?;
    Ok(spec)
}

/// Reads and validates `bundle/config.json`.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let bundle = std::path::absolute(bundle)
        .map_err(|e| Error::os(format!("bundle {}", bundle.display()), e))?;
    let cfg = bundle.join("config.json");
    let text = std::fs::read(&cfg).map_err(|e| Error::os(format!("read {}", cfg.display()), e))?;
    let spec = parse_spec(&text, &cfg)?;
    let rootfs = validate(&spec, &bundle, &cfg)?;
    Ok(Bundle {
        path: bundle,
        spec,
        rootfs,
    })
}

/// Semantic checks the JSON types cannot express. Returns the absolute rootfs path.
/// The largest user or group ID a process may be given (runc's and containerd's bound).
/// Above it, 4294967295 is `(uid_t)-1`, which setresuid(2) and setresgid(2) read as "leave
/// unchanged": a container configured to run as that user would run as root.
pub const MAX_ID: u32 = i32::MAX as u32;

/// Refuses a process user whose uid, gid or additional gids are above [`MAX_ID`].
pub fn check_user_ids(u: &oci_spec::runtime::User) -> std::result::Result<(), String> {
    let out =
        |field: &str, id: u32| format!("process.user.{field} {id} is out of range (0 to {MAX_ID})");
    if u.uid() > MAX_ID {
        return Err(out("uid", u.uid()));
    }
    if u.gid() > MAX_ID {
        return Err(out("gid", u.gid()));
    }
    if let Some(g) = u.additional_gids().iter().flatten().find(|g| **g > MAX_ID) {
        return Err(out("additionalGids", *g));
    }
    Ok(())
}

pub fn validate(spec: &Spec, bundle: &Path, cfg: &Path) -> Result<PathBuf> {
    let bad = |msg: String| Error::Config(format!("{}: {msg}", cfg.display()));
    let v = spec.version();
    let major = v.split('.').next().unwrap_or("");
    if major != "1" || v.split('.').count() < 2 {
        return Err(bad(format!("ociVersion {v:?} is not supported (want 1.x)")));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| bad("root is required".into()))?;
    if root.path().as_os_str().is_empty() {
        return Err(bad("root.path must not be empty".into()));
    }
    let rootfs = bundle.join(root.path());
    // A symlinked rootfs (say, to /) would be followed by every later path operation: refused
    // here, and opened with O_NOFOLLOW by the init (so a swap after this check fails too).
    if let Ok(m) = std::fs::symlink_metadata(&rootfs) {
        if m.file_type().is_symlink() {
            let to = std::fs::read_link(&rootfs).unwrap_or_default();
            return Err(bad(format!(
                "root.path {} is a symlink (to {}): the rootfs must be a directory",
                rootfs.display(),
                to.display()
            )));
        }
    }
    if std::fs::canonicalize(&rootfs).is_ok_and(|c| c == Path::new("/")) {
        return Err(bad(format!(
            "root.path {} is the host's root directory",
            rootfs.display()
        )));
    }
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(bad(format!(
                "root.path {} is not a directory",
                rootfs.display()
            )))
        }
        Err(e) => return Err(Error::os(format!("root.path {}", rootfs.display()), e)),
    }
    check_strings(spec).map_err(bad)?;
    check_hooks(spec).map_err(bad)?;
    if let Some(p) = spec.process() {
        if p.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(bad("process.args must not be empty".into()));
        }
        if !p.cwd().is_absolute() {
            return Err(bad(format!(
                "process.cwd {:?} must be an absolute path",
                p.cwd()
            )));
        }
        if let Some(env) = p.env() {
            if let Some(e) = env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
                return Err(bad(format!("process.env entry {e:?} is not KEY=value")));
            }
        }
        check_user_ids(p.user()).map_err(bad)?;
        if let Some(rl) = p.rlimits() {
            for r in rl {
                if r.soft() > r.hard() {
                    return Err(bad(format!(
                        "process.rlimits {:?}: soft limit above hard limit",
                        r.typ()
                    )));
                }
            }
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(bad(format!(
                "mounts[{i}].destination {:?} must be absolute",
                m.destination()
            )));
        }
    }
    crate::idmap::check(spec)?;
    if let Some(linux) = spec.linux() {
        let mut seen = Vec::new();
        for ns in linux.namespaces().iter().flatten() {
            if seen.contains(&ns.typ()) {
                return Err(bad(format!(
                    "linux.namespaces: {:?} listed twice",
                    ns.typ()
                )));
            }
            seen.push(ns.typ());
            if let Some(path) = ns.path() {
                check_ns_path(ns.typ(), path)
                    .map_err(|m| bad(format!("linux.namespaces {:?}: {m}", ns.typ())))?;
            }
        }
        let has = |t: LinuxNamespaceType| seen.contains(&t);
        let joined_path = |t: LinuxNamespaceType| {
            linux
                .namespaces()
                .iter()
                .flatten()
                .find(|n| n.typ() == t)
                .and_then(|n| n.path().clone())
        };
        let has_new = |t: LinuxNamespaceType| {
            linux
                .namespaces()
                .iter()
                .flatten()
                .any(|n| n.typ() == t && n.path().is_none())
        };
        if (spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
            || spec.domainname().as_ref().is_some_and(|h| !h.is_empty()))
            && !has(LinuxNamespaceType::Uts)
        {
            return Err(bad(
                "hostname or domainname set without a uts namespace".into()
            ));
        }
        if (linux.uid_mappings().is_some() || linux.gid_mappings().is_some())
            && !has_new(LinuxNamespaceType::User)
        {
            return Err(bad(
                "uid/gid mappings given without a new user namespace".into()
            ));
        }
        if has_new(LinuxNamespaceType::User)
            && (linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
                || linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()))
        {
            return Err(bad(
                "a new user namespace needs linux.uidMappings and linux.gidMappings".into(),
            ));
        }
        if linux.time_offsets().is_some() && !has_new(LinuxNamespaceType::Time) {
            return Err(bad(
                "linux.timeOffsets given without a new time namespace".into()
            ));
        }
        if let Some(sysctl) = linux.sysctl() {
            for key in sysctl.keys() {
                let Some((k, _)) = sysctl_key(key) else {
                    return Err(bad(format!("linux.sysctl key {key:?} is invalid")));
                };
                // Only namespaced sysctls, and only when the container has that namespace:
                // anything else would change the host (as runc refuses too).
                match sysctl_namespace(&k) {
                    // A network namespace joined by path may be the host's own (as runc
                    // checks): its sysctls would change the host's network.
                    Some(LinuxNamespaceType::Network)
                        if joined_path(LinuxNamespaceType::Network).is_some_and(is_own_netns) =>
                    {
                        return Err(bad(format!(
                            "linux.sysctl {key:?}: the network namespace joined is the host's; it would change the host"
                        )))
                    }
                    Some(t) if has(t) => {}
                    Some(t) => {
                        return Err(bad(format!(
                            "linux.sysctl {key:?} needs its own {} namespace; without one it would change the host",
                            ns_file(t)
                        )))
                    }
                    None if k == "kernel.hostname" => {
                        return Err(bad("linux.sysctl \"kernel.hostname\": use the hostname field".into()))
                    }
                    None => return Err(bad(format!("linux.sysctl {key:?} is not namespaced: it would change the host"))),
                }
            }
        }
        if let Some(p) = linux.rootfs_propagation() {
            if crate::rootfs::propagation_flag(p).is_none() {
                return Err(bad(format!(
                    "linux.rootfsPropagation {p:?} is not a propagation type"
                )));
            }
        }
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            if !d.path().is_absolute() {
                return Err(bad(format!(
                    "linux.devices[{i}].path {:?} must be absolute",
                    d.path()
                )));
            }
            check_dev_numbers(d.major(), d.minor())
                .map_err(|m| bad(format!("linux.devices[{i}] {}: {m}", d.path().display())))?;
        }
        let rules = linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref());
        for (i, d) in rules.into_iter().flatten().enumerate() {
            let (ma, mi) = (d.major().unwrap_or(0), d.minor().unwrap_or(0));
            if d.major().is_some_and(|m| m < 0) || d.minor().is_some_and(|m| m < 0) {
                return Err(bad(format!(
                    "linux.resources.devices[{i}]: negative major/minor ({ma}:{mi})"
                )));
            }
            check_dev_numbers(ma, mi)
                .map_err(|m| bad(format!("linux.resources.devices[{i}]: {m}")))?;
        }
    }
    // SELinux labels, which rsrun cannot apply: a process label is refused, at create as at
    // exec (runc refuses one too where SELinux is off; where it is on, a container run
    // without its label would run under the runtime's own); a mount label only where SELinux
    // is on (runc and crun pass over it elsewhere). Podman and containerd set labels only
    // where SELinux is enabled.
    let labels = [
        (
            "process.selinuxLabel",
            spec.process()
                .as_ref()
                .and_then(|p| p.selinux_label().as_deref()),
            true,
        ),
        (
            "linux.mountLabel",
            spec.linux()
                .as_ref()
                .and_then(|l| l.mount_label().as_deref()),
            selinux_enabled(),
        ),
    ];
    for (field, label, refused) in labels {
        if let Some(l) = label.filter(|l| !l.is_empty() && refused) {
            return Err(Error::Unsupported(format!(
                "{field} {l:?}: SELinux is not supported by rsrun"
            )));
        }
    }
    if let Some(io) = spec
        .process()
        .as_ref()
        .and_then(|p| p.io_priority().as_ref())
    {
        let prio = io.priority();
        if !(0..=7).contains(&prio) {
            return Err(bad(format!(
                "process.ioPriority.priority {prio}: out of range (0 to 7)"
            )));
        }
    }
    // The seccomp profile is compiled once here so that a bad one fails `create`.
    match crate::seccomp::validate(spec) {
        Ok(()) => {}
        Err(Error::Config(m)) => return Err(bad(m)),
        Err(e) => return Err(e),
    }
    Ok(rootfs)
}

/// The largest device numbers the kernel represents (dev_t: a 12-bit major, a 20-bit minor):
/// anything larger would be truncated into another device (4294967297:1 into 1:1, /dev/mem).
pub const MAX_MAJOR: i64 = (1 << 12) - 1;
pub const MAX_MINOR: i64 = (1 << 20) - 1;

fn check_dev_numbers(major: i64, minor: i64) -> std::result::Result<(), String> {
    if !(0..=MAX_MAJOR).contains(&major) {
        return Err(format!("major {major} is out of range (0..={MAX_MAJOR})"));
    }
    if !(0..=MAX_MINOR).contains(&minor) {
        return Err(format!("minor {minor} is out of range (0..={MAX_MINOR})"));
    }
    Ok(())
}

/// Strings that reach execve, the kernel or a C string: a NUL byte inside would silently cut
/// or drop part of them, so it is refused, naming the field.
fn check_strings(spec: &Spec) -> std::result::Result<(), String> {
    fn nul(field: String, s: &str) -> std::result::Result<(), String> {
        match s.find('\0') {
            Some(at) => Err(format!("{field} {s:?} holds a NUL byte at offset {at}")),
            None => Ok(()),
        }
    }
    let list = |field: &str, v: Option<&Vec<String>>| {
        check_strings_of(field, v.map(Vec::as_slice).unwrap_or(&[]))
    };
    if let Some(p) = spec.process() {
        list("process.args", p.args().as_ref())?;
        list("process.env", p.env().as_ref())?;
        nul("process.cwd".into(), &p.cwd().to_string_lossy())?;
        if let Some(u) = p.user().username() {
            nul("process.user.username".into(), u)?;
        }
        if let Some(a) = p.apparmor_profile() {
            nul("process.apparmorProfile".into(), a)?;
        }
    }
    for (f, v) in [
        ("hostname", spec.hostname()),
        ("domainname", spec.domainname()),
    ] {
        if let Some(v) = v {
            nul(f.into(), v)?;
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        nul(
            format!("mounts[{i}].destination"),
            &m.destination().to_string_lossy(),
        )?;
        if let Some(src) = m.source() {
            nul(format!("mounts[{i}].source"), &src.to_string_lossy())?;
        }
        list(&format!("mounts[{i}].options"), m.options().as_ref())?;
    }
    if let Some(l) = spec.linux() {
        for (k, v) in l.sysctl().iter().flatten() {
            nul("linux.sysctl key".into(), k)?;
            nul(format!("linux.sysctl[{k:?}]"), v)?;
        }
        if let Some(p) = l.cgroups_path() {
            nul("linux.cgroupsPath".into(), &p.to_string_lossy())?;
        }
    }
    Ok(())
}

/// Every hook: a path, no NUL bytes, a positive timeout that fits a deadline.
fn check_hooks(spec: &Spec) -> std::result::Result<(), String> {
    let Some(h) = spec.hooks() else { return Ok(()) };
    #[allow(deprecated)]
    let kinds = [
        ("prestart", h.prestart()),
        ("createRuntime", h.create_runtime()),
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ];
    for (kind, hooks) in kinds {
        for (i, hook) in hooks.iter().flatten().enumerate() {
            let field = format!("hooks.{kind}[{i}]");
            let path = hook.path().to_string_lossy();
            if !hook.path().is_absolute() {
                return Err(format!("{field}.path {path:?} must be absolute"));
            }
            check_strings_of(
                &format!("{field}.path"),
                std::slice::from_ref(&path.into_owned()),
            )?;
            check_strings_of(
                &format!("{field}.args"),
                hook.args().as_deref().unwrap_or(&[]),
            )?;
            check_strings_of(
                &format!("{field}.env"),
                hook.env().as_deref().unwrap_or(&[]),
            )?;
            if let Some(t) = hook.timeout() {
                if t <= 0 {
                    return Err(format!("{field}.timeout {t} must be positive"));
                }
                if t > MAX_HOOK_TIMEOUT {
                    return Err(format!(
                        "{field}.timeout {t} is too large (at most {MAX_HOOK_TIMEOUT} seconds)"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The longest hook timeout accepted: a year, far beyond any real hook, and far from the
/// overflow of a deadline computed from it.
pub const MAX_HOOK_TIMEOUT: i64 = 365 * 24 * 3600;

fn check_strings_of(field: &str, v: &[String]) -> std::result::Result<(), String> {
    for (i, s) in v.iter().enumerate() {
        if let Some(at) = s.find('\0') {
            return Err(format!(
                "{field}[{i}] {s:?} holds a NUL byte at offset {at}"
            ));
        }
    }
    Ok(())
}

/// Whether the namespace file at `path` is this process's own network namespace.
fn is_own_netns(path: std::path::PathBuf) -> bool {
    match (
        std::fs::metadata(&path),
        std::fs::metadata("/proc/self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            a.dev() == b.dev() && a.ino() == b.ino()
        }
        _ => false,
    }
}

/// The namespace a sysctl (dotted name) belongs to, of those a container may set: the IPC
/// ones runc knows, `fs.mqueue.*`, `net.*` and `kernel.domainname`; None for the others,
/// which would change the host.
pub fn sysctl_namespace(dotted: &str) -> Option<LinuxNamespaceType> {
    let ipc = matches!(
        dotted,
        "kernel.msgmax"
            | "kernel.msgmnb"
            | "kernel.msgmni"
            | "kernel.sem"
            | "kernel.shmall"
            | "kernel.shmmax"
            | "kernel.shmmni"
            | "kernel.shm_rmid_forced"
    ) || dotted.starts_with("fs.mqueue.");
    if ipc {
        Some(LinuxNamespaceType::Ipc)
    } else if dotted.starts_with("net.") {
        Some(LinuxNamespaceType::Network)
    } else if dotted == "kernel.domainname" {
        Some(LinuxNamespaceType::Uts)
    } else {
        None
    }
}

/// A sysctl key read as sysctl(8) reads it, by its first separator: dotted
/// (`net.ipv4.conf.eth0/100.rp_filter`, a `/` standing for a dot within a name) or slashed
/// (`net/ipv4/conf/eth0.100/rp_filter`); the kubelet passes on either. Returns the dotted
/// form and the file's path under /proc/sys; None when a component is empty, `.` or `..`.
pub fn sysctl_key(key: &str) -> Option<(String, String)> {
    let swap = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect()
    };
    let dotted = match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'/' => swap(key),
        _ => key.to_string(),
    };
    let file = swap(&dotted);
    let ok = !key.contains('\0')
        && file
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then_some((dotted, file))
}

/// The name of a namespace type under /proc/PID/ns/.
pub fn ns_file(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

fn check_ns_path(typ: LinuxNamespaceType, path: &Path) -> std::result::Result<(), String> {
    let want = ns_file(typ);
    // Open it (following /proc/PID/ns/* links; a bind-mounted nsfs file such as
    // /var/run/netns/NAME is no link) and ask the kernel what the descriptor is.
    let f = std::fs::File::open(path).map_err(|e| format!("path {}: {e}", path.display()))?;
    let flag = crate::sys::ns_type(std::os::fd::AsRawFd::as_raw_fd(&f))
        .map_err(|_| format!("path {} is not a namespace file", path.display()))?;
    let kind = [
        (libc::CLONE_NEWPID, "pid"),
        (libc::CLONE_NEWNET, "net"),
        (libc::CLONE_NEWNS, "mnt"),
        (libc::CLONE_NEWIPC, "ipc"),
        (libc::CLONE_NEWUTS, "uts"),
        (libc::CLONE_NEWUSER, "user"),
        (libc::CLONE_NEWCGROUP, "cgroup"),
        (libc::CLONE_NEWTIME, "time"),
    ]
    .iter()
    .find(|(f, _)| *f == flag)
    .map(|(_, n)| *n)
    .unwrap_or("unknown");
    if kind != want {
        return Err(format!(
            "path {} is a {kind:?} namespace, not {want:?}",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_in_both_forms() {
        let dotted = (
            "net.ipv4.conf.eth0/100.rp_filter".to_string(),
            "net/ipv4/conf/eth0.100/rp_filter".to_string(),
        );
        assert_eq!(
            sysctl_key("net.ipv4.conf.eth0/100.rp_filter"),
            Some(dotted.clone())
        );
        assert_eq!(sysctl_key("net/ipv4/conf/eth0.100/rp_filter"), Some(dotted));
        assert_eq!(
            sysctl_key("kernel.shm_rmid_forced").unwrap().1,
            "kernel/shm_rmid_forced"
        );
        for bad in [
            "net..ipv4",
            "net.ipv4.conf./..x",
            "net/ipv4/../../vm",
            "net.",
            "net/.",
            "/net",
            "",
        ] {
            assert_eq!(sysctl_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b", "a\n"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_json_names_the_field() {
        let e = parse_spec(
            br#"{"ociVersion":"1.0.2","process":{"user":{"uid":"x","gid":0},"cwd":"/"}}"#,
            Path::new("c.json"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("process.user.uid"), "{e}");
        let e = parse_spec(br#"{"ociVersion":"1.0.2","pro"#, Path::new("c.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("c.json"), "{e}");
    }

    #[test]
    fn unknown_capability_is_an_error() {
        let e = parse_spec(
            br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","capabilities":{"bounding":["CAP_NOPE"]}}}"#,
            Path::new("c.json"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("process.capabilities.bounding"), "{e}");
    }
}
