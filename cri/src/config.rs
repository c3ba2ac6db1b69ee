//! rsrun-cri's settings: the TOML configuration file (default /etc/rsrun/rsrun-cri.toml when
//! it exists), overridden by command-line flags. Every key is documented in
//! docs/cri-config.md; unknown keys are an error that names them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

pub const DEFAULT_FILE: &str = "/etc/rsrun/rsrun-cri.toml";

pub const USAGE: &str = "\
usage: rsrun-cri [--config FILE] [--listen unix:///PATH] [--root DIR] [--state DIR]
                 [--registry-config FILE] [--cni-conf-dir DIR] [--cni-bin-dir DIRS]
                 [--shim FILE] [--cgroup-parent CGROUP] [--log-level LEVEL]

  --config           TOML settings (default /etc/rsrun/rsrun-cri.toml when it exists);
                     flags override it (docs/cri-config.md lists every key)
  --listen           the CRI socket (default unix:///run/rsrun/rsrun-cri.sock)
  --root             persistent root: images under DIR/images (default /var/lib/rsrun)
  --state            volatile state (default /run/rsrun)
  --registry-config  the image store's registry settings (docs/image-store.md)
  --shim             the rsrun-shim binary (default: beside this one, else on PATH)
  --cgroup-parent    cgroup for pods that name none (default: rsrun-cri, under this server's)
  --cni-conf-dir     CNI network configurations (default /etc/cni/net.d)
  --cni-bin-dir      CNI plugin directories, colon-separated (default /opt/cni/bin:/usr/lib/cni)
  --log-level        error, warn, info (default), debug, trace, off, or a tracing filter
                     such as rsrun_cri=debug,info";

/// The longest CRI log record's content rsrun-shim accepts (its `--log-max-line`).
const MAX_LOG_LINE: u64 = 1 << 20;

/// A level, or a tracing filter whose directives are each a level or `TARGET[=LEVEL]` with
/// the level written. A misspelled level (`warning`, `informational`) parses as a target's
/// name and would silence every other log line; a filter that does not parse fell back to
/// `info` without a word.
fn check_log_level(l: &str) -> Result<()> {
    const LEVELS: &str = "error, warn, info, debug, trace or off";
    tracing_subscriber::EnvFilter::try_new(l).with_context(|| {
        format!("log_level {l:?}: {LEVELS}, or a filter such as \"rsrun_cri=debug,info\"")
    })?;
    for d in l.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', '[', '{']);
        if bare && d.parse::<tracing::level_filters::LevelFilter>().is_err() {
            bail!("log_level {l:?}: {d:?} is not a level ({LEVELS}); a target's level is written TARGET=LEVEL");
        }
    }
    Ok(())
}

/// The settings as the file writes them (and as the flags give them): all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub listen: Option<String>,
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub registry_config: Option<PathBuf>,
    pub shim: Option<PathBuf>,
    pub cgroup_parent: Option<String>,
    pub cgroup_driver: Option<String>,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_bin_dirs: Option<Vec<PathBuf>>,
    pub log_level: Option<String>,
    pub log_max_line: Option<u64>,
    pub default_capabilities: Option<Vec<String>>,
    pub cdi_spec_dirs: Option<Vec<PathBuf>>,
    pub stream_address: Option<String>,
    pub stream_idle_timeout: Option<String>,
    pub enable_unprivileged_ports: Option<bool>,
    pub enable_unprivileged_icmp: Option<bool>,
    pub image_pull_progress_timeout: Option<String>,
    pub ignore_image_defined_volumes: Option<bool>,
    /// Read and ignored: it named the `rsrun` binary that exec sessions ran before exec went
    /// through rsrun-shim. Kept so that a file that still sets it does not stop the server.
    #[serde(default, rename = "runtime")]
    pub obsolete_runtime: Option<PathBuf>,
}

impl File {
    /// `self` where set, else `other`.
    fn or(self, o: File) -> File {
        File {
            listen: self.listen.or(o.listen),
            root: self.root.or(o.root),
            state: self.state.or(o.state),
            registry_config: self.registry_config.or(o.registry_config),
            shim: self.shim.or(o.shim),
            cgroup_parent: self.cgroup_parent.or(o.cgroup_parent),
            cgroup_driver: self.cgroup_driver.or(o.cgroup_driver),
            cni_conf_dir: self.cni_conf_dir.or(o.cni_conf_dir),
            cni_bin_dirs: self.cni_bin_dirs.or(o.cni_bin_dirs),
            log_level: self.log_level.or(o.log_level),
            log_max_line: self.log_max_line.or(o.log_max_line),
            default_capabilities: self.default_capabilities.or(o.default_capabilities),
            cdi_spec_dirs: self.cdi_spec_dirs.or(o.cdi_spec_dirs),
            stream_address: self.stream_address.or(o.stream_address),
            stream_idle_timeout: self.stream_idle_timeout.or(o.stream_idle_timeout),
            enable_unprivileged_ports: self
                .enable_unprivileged_ports
                .or(o.enable_unprivileged_ports),
            enable_unprivileged_icmp: self.enable_unprivileged_icmp.or(o.enable_unprivileged_icmp),
            image_pull_progress_timeout: self
                .image_pull_progress_timeout
                .or(o.image_pull_progress_timeout),
            ignore_image_defined_volumes: self
                .ignore_image_defined_volumes
                .or(o.ignore_image_defined_volumes),
            obsolete_runtime: None,
        }
    }
}

/// The resolved settings.
#[derive(Debug)]
pub struct Opts {
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub registry_config: Option<PathBuf>,
    pub shim: Option<PathBuf>,
    pub cgroup_parent: String,
    /// cgroup_driver = "systemd".
    pub systemd_cgroup: bool,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub log_level: String,
    pub log_max_line: Option<u64>,
    /// The capabilities of a container that asks for no change (CRI's default set if None).
    pub default_capabilities: Option<Vec<String>>,
    /// Where CDI device specs are read, lowest priority first.
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// The streaming server's address (exec, attach URLs).
    pub stream_address: String,
    /// A streaming connection that moves no byte either way for this long is closed
    /// (None: never).
    pub stream_idle_timeout: Option<std::time::Duration>,
    /// The sysctls a pod with a network of its own gets unless it sets them.
    pub pod_net_defaults: crate::sandbox::NetDefaults,
    /// A pull that receives nothing for this long fails (None: never).
    pub pull_progress_timeout: Option<std::time::Duration>,
    /// The image's VOLUME entries get no directory of their own (crate::volumes).
    pub ignore_image_defined_volumes: bool,
}

/// A duration as Go writes one and containerd's config takes it ("5m", "90s", "1m30s",
/// "1.5h", "500ms"); "0" is zero.
fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let v: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += v * scale;
        rest = &rest[u..];
    }
    (!s.is_empty() && total.is_finite() && total < 1e9)
        .then(|| std::time::Duration::from_secs_f64(total))
}

/// Flags, then the file they name (or the default one), then the defaults. None: --help.
pub fn load(args: Vec<String>) -> Result<Option<Opts>> {
    let Some((flags, file)) = parse_flags(args)? else {
        return Ok(None);
    };
    let from_file = match &file {
        Some(p) => read(p)?,
        None if Path::new(DEFAULT_FILE).exists() => read(Path::new(DEFAULT_FILE))?,
        None => File::default(),
    };
    resolve(flags.or(from_file)).map(Some)
}

fn read(p: &Path) -> Result<File> {
    let text = std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
    let f: File = toml::from_str(&text).with_context(|| format!("--config {}", p.display()))?;
    if let Some(r) = &f.obsolete_runtime {
        eprintln!(
            "rsrun-cri: {}: `runtime = {:?}` is ignored: exec runs through rsrun-shim",
            p.display(),
            r
        );
    }
    Ok(f)
}

fn parse_flags(args: Vec<String>) -> Result<Option<(File, Option<PathBuf>)>> {
    let mut f = File::default();
    let mut config = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--listen" => f.listen = Some(value()?),
            "--root" => f.root = Some(PathBuf::from(value()?)),
            "--state" => f.state = Some(PathBuf::from(value()?)),
            "--registry-config" => f.registry_config = Some(PathBuf::from(value()?)),
            "--log-level" => f.log_level = Some(value()?),
            "--shim" => f.shim = Some(PathBuf::from(value()?)),
            "--cgroup-parent" => f.cgroup_parent = Some(value()?),
            "--cni-conf-dir" => f.cni_conf_dir = Some(PathBuf::from(value()?)),
            "--cni-bin-dir" => {
                f.cni_bin_dirs = Some(
                    value()?
                        .split(':')
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                        .collect(),
                )
            }
            "-h" | "--help" => return Ok(None),
            f => bail!("unknown argument {f:?}\n{USAGE}"),
        }
    }
    Ok(Some((f, config)))
}

fn resolve(f: File) -> Result<Opts> {
    let listen = f
        .listen
        .unwrap_or_else(|| "unix:///run/rsrun/rsrun-cri.sock".into());
    let Some(socket) = listen.strip_prefix("unix://").map(PathBuf::from) else {
        bail!("listen {listen:?}: only unix:///PATH is supported");
    };
    if !socket.is_absolute() {
        bail!(
            "listen: the socket path {} must be absolute",
            socket.display()
        );
    }
    let systemd_cgroup = match f.cgroup_driver.as_deref() {
        None | Some("cgroupfs") => false,
        Some("systemd") => true,
        Some(d) => bail!("cgroup_driver {d:?}: \"cgroupfs\" or \"systemd\""),
    };
    if let (true, Some(p)) = (systemd_cgroup, &f.cgroup_parent) {
        // As the runtime reads it (`a-b.slice` nests in `a.slice`): a name it refuses
        // (`-a.slice`, `a--b.slice`) passed here and then failed every start.
        let slice = p.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if !slice.ends_with(".slice") {
            bail!("cgroup_parent {p:?}: with cgroup_driver \"systemd\" it names a slice, such as rsrun-cri.slice");
        }
        if let Err(e) = rsrun::cgroups::systemd::slice_path(slice) {
            bail!("cgroup_parent {p:?}: {e}");
        }
    }
    if let Some(n) = f.log_max_line {
        // What rsrun-shim takes (--log-max-line): a larger value passed the check here and
        // then failed every pod's and container's start.
        if !(1..=MAX_LOG_LINE).contains(&n) {
            bail!("log_max_line {n}: between 1 byte and 1 MiB ({MAX_LOG_LINE})");
        }
    }
    if let Some(l) = &f.log_level {
        check_log_level(l)?;
    }
    if let Some(caps) = &f.default_capabilities {
        for c in caps {
            let n = c.to_ascii_uppercase();
            let n = n.strip_prefix("CAP_").unwrap_or(&n);
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                bail!("default_capabilities: {c:?} is not a capability name");
            }
        }
    }
    Ok(Opts {
        socket,
        root: f.root.unwrap_or_else(|| PathBuf::from("/var/lib/rsrun")),
        state: f.state.unwrap_or_else(|| PathBuf::from("/run/rsrun")),
        registry_config: f.registry_config,
        shim: f.shim,
        cgroup_parent: f.cgroup_parent.unwrap_or_else(|| {
            if systemd_cgroup {
                "rsrun-cri.slice"
            } else {
                "rsrun-cri"
            }
            .into()
        }),
        systemd_cgroup,
        cni_conf_dir: f
            .cni_conf_dir
            .unwrap_or_else(|| PathBuf::from("/etc/cni/net.d")),
        cni_bin_dirs: f
            .cni_bin_dirs
            .unwrap_or_else(|| vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]),
        log_level: f.log_level.unwrap_or_else(|| "info".into()),
        log_max_line: f.log_max_line,
        default_capabilities: f.default_capabilities,
        cdi_spec_dirs: f
            .cdi_spec_dirs
            .unwrap_or_else(|| crate::cdi::DEFAULT_DIRS.iter().map(PathBuf::from).collect()),
        stream_address: {
            let a = f.stream_address.unwrap_or_else(|| "127.0.0.1:0".into());
            a.parse::<std::net::SocketAddr>()
                .with_context(|| format!("stream_address {a:?}: an IP address and port"))?;
            a
        },
        stream_idle_timeout: match f.stream_idle_timeout.as_deref() {
            // containerd's default, and the kubelet's streaming server's.
            None => Some(std::time::Duration::from_secs(4 * 3600)),
            Some(t) => {
                let d = parse_duration(t).with_context(|| {
                    format!("stream_idle_timeout {t:?}: a duration such as \"4h\", \"30m\" or \"0\" (never)")
                })?;
                (!d.is_zero()).then_some(d)
            }
        },
        ignore_image_defined_volumes: f.ignore_image_defined_volumes.unwrap_or(false),
        pod_net_defaults: crate::sandbox::NetDefaults {
            unprivileged_ports: f.enable_unprivileged_ports.unwrap_or(true),
            // (Not for a server in a user namespace, as containerd: the group range then
            // names groups its namespace does not map, which the kernel refuses.)
            unprivileged_icmp: f.enable_unprivileged_icmp.unwrap_or(true)
                && !rsrun::lifecycle::rootless_auto(),
        },
        pull_progress_timeout: match f.image_pull_progress_timeout.as_deref() {
            None => Some(rsrun_image::DEFAULT_PROGRESS_TIMEOUT),
            Some(t) => {
                let d = parse_duration(t).with_context(|| {
                    format!("image_pull_progress_timeout {t:?}: a duration such as \"5m\", \"90s\" or \"0\" (never)")
                })?;
                (!d.is_zero()).then_some(d)
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_containerd_writes_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "5", "m", "5 m", "-1s", "5d", "1e3s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("rsrun-cri-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            "root = \"/srv/a\"\nstate = \"/srv/s\"\ncni_bin_dirs = [\"/x\", \"/y\"]\nlog_max_line = 100\n",
        )
        .unwrap();
        let o = load(args(&["--config", p.to_str().unwrap(), "--root=/srv/b"]))
            .unwrap()
            .unwrap();
        assert_eq!(o.root, PathBuf::from("/srv/b"));
        assert_eq!(o.state, PathBuf::from("/srv/s"));
        assert_eq!(
            o.cni_bin_dirs,
            vec![PathBuf::from("/x"), PathBuf::from("/y")]
        );
        assert_eq!(o.log_max_line, Some(100));
        assert_eq!(o.socket, PathBuf::from("/run/rsrun/rsrun-cri.sock"));
        assert!(!o.ignore_image_defined_volumes);
        std::fs::write(&p, "ignore_image_defined_volumes = true\n").unwrap();
        let o = load(args(&["--config", p.to_str().unwrap()]))
            .unwrap()
            .unwrap();
        assert!(o.ignore_image_defined_volumes);

        std::fs::write(&p, "roots = \"/srv/a\"\n").unwrap();
        let e = format!(
            "{:#}",
            load(args(&["--config", p.to_str().unwrap()])).unwrap_err()
        );
        assert!(e.contains("unknown field `roots`"), "{e}");
        // A key that is no longer used still loads (a deployed file keeps working).
        std::fs::write(&p, "runtime = \"/usr/bin/rsrun\"\nroot = \"/srv/c\"\n").unwrap();
        let o = load(args(&["--config", p.to_str().unwrap()]))
            .unwrap()
            .unwrap();
        assert_eq!(o.root, PathBuf::from("/srv/c"));
        std::fs::write(&p, "cgroup_driver = \"systemd\"\n").unwrap();
        let o = load(args(&["--config", p.to_str().unwrap()]))
            .unwrap()
            .unwrap();
        assert!(o.systemd_cgroup);
        assert_eq!(o.cgroup_parent, "rsrun-cri.slice");
        std::fs::write(
            &p,
            "cgroup_driver = \"systemd\"\ncgroup_parent = \"/a/b\"\n",
        )
        .unwrap();
        let e = format!(
            "{:#}",
            load(args(&["--config", p.to_str().unwrap()])).unwrap_err()
        );
        assert!(e.contains("names a slice"), "{e}");
        // A slice name the runtime refuses is refused here (it failed every pod's start).
        for (bad, ok) in [
            ("a--b.slice", false),
            ("/x/-a.slice", false),
            ("k-pods.slice", true),
        ] {
            std::fs::write(
                &p,
                format!("cgroup_driver = \"systemd\"\ncgroup_parent = \"{bad}\"\n"),
            )
            .unwrap();
            let r = load(args(&["--config", p.to_str().unwrap()]));
            assert_eq!(r.is_ok(), ok, "{bad}: {:?}", r.err());
        }
        std::fs::write(&p, "cgroup_driver = \"openrc\"\n").unwrap();
        let e = format!(
            "{:#}",
            load(args(&["--config", p.to_str().unwrap()])).unwrap_err()
        );
        assert!(e.contains("\"openrc\""), "{e}");
        // The shim's limit: a longer line setting failed every start, not the server's.
        std::fs::write(&p, "log_max_line = 1048576\n").unwrap();
        assert!(load(args(&["--config", p.to_str().unwrap()])).is_ok());
        std::fs::write(&p, "log_max_line = 1048577\n").unwrap();
        let e = format!(
            "{:#}",
            load(args(&["--config", p.to_str().unwrap()])).unwrap_err()
        );
        assert!(e.contains("log_max_line 1048577"), "{e}");
        for good in [
            "debug",
            "WARN",
            "off",
            "rsrun_cri=debug,info",
            "info,h2=warn",
        ] {
            assert!(load(args(&["--log-level", good])).is_ok(), "{good}");
        }
        for (bad, names) in [
            ("warning", "\"warning\" is not a level"),
            ("info,rsrun_cri", "\"rsrun_cri\" is not a level"),
            ("rsrun_cri=loud", "log_level \"rsrun_cri=loud\""),
        ] {
            let e = format!("{:#}", load(args(&["--log-level", bad])).unwrap_err());
            assert!(e.contains(names), "{bad}: {e}");
        }
        let e = format!("{:#}", load(args(&["--listen", "tcp://x"])).unwrap_err());
        assert!(e.contains("only unix:///PATH"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
