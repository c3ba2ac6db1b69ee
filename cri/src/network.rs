//! Pod networking through CNI plugins (the CNI 1.0 protocol: a network configuration on
//! stdin, the command and the pod in the environment, a result or an error on stdout).
//!
//! The network is the first configuration file (by name) of the configuration directory,
//! a `.conflist` or a single-plugin `.conf`/`.json`. ADD runs each plugin in order, each
//! given the previous one's result; DEL runs them in reverse with the ADD's result, which the
//! sandbox record keeps so that a restarted server deletes exactly what was added. A failed
//! ADD is undone with a DEL. The server's threads never enter the pod's namespace: the
//! plugins do, given its pinned path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::api;

/// How long one plugin may run before it is killed and the call fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The pod's interface in its network namespace.
pub const IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CNI network configuration in {0} (.conflist, .conf or .json)")]
    NoConfig(PathBuf),
    #[error("CNI configuration {path}: {why}")]
    BadConfig { path: PathBuf, why: String },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    NoPlugin { plugin: String, dirs: String },
    #[error("CNI network {network:?} gave the pod no address on {IFNAME}")]
    NoAddress { network: String },
    #[error("CNI plugin {plugin} {command}: {why}")]
    Plugin {
        plugin: String,
        command: &'static str,
        why: String,
    },
}

/// Where networks and plugins are found.
#[derive(Debug, Clone)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// One file per running plugin (`PID`, holding its start time), so that a restarted
    /// server ends the plugins a killed one left running before it undoes their work.
    pub running_dir: PathBuf,
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

/// What ADD is given about the pod.
pub struct Pod<'a> {
    pub sandbox_id: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    /// The pinned network namespace (empty for DEL when it is gone).
    pub netns: &'a Path,
    pub port_mappings: &'a [api::PortMapping],
    /// The bandwidth plugin's runtime config, from the pod's annotations (`bandwidth`).
    pub bandwidth: Option<Value>,
    /// The pod's annotations (the `io.kubernetes.cri.pod-annotations` capability).
    pub annotations: &'a std::collections::HashMap<String, String>,
    /// The pod's cgroup parent (the `cgroupPath` capability).
    pub cgroup_parent: &'a str,
    /// The pod's DNS settings (the `dns` capability: `network::dns`).
    pub dns: Option<&'a Value>,
}

/// The `dns` capability's runtime config from a pod's DNSConfig, spelt as the CNI
/// conventions spell it (`servers`, `searches`, `options`), each list only when it has
/// entries. (containerd sends go-cni's Go field names, `Servers`..., with nulls for empty
/// lists; the Go plugins read either alike.)
pub fn dns(d: &api::DnsConfig) -> Value {
    let mut v = json!({});
    for (k, list) in [
        ("servers", &d.servers),
        ("searches", &d.searches),
        ("options", &d.options),
    ] {
        if !list.is_empty() {
            v[k] = json!(list);
        }
    }
    v
}

/// The runtime config capability of the pod's annotations (containerd's and CRI-O's name).
const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";

/// The pod annotations that limit its bandwidth (bits per second, Kubernetes quantities).
const INGRESS: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS: &str = "kubernetes.io/egress-bandwidth";

/// The runtime config for CNI plugins with the `bandwidth` capability, from the pod's
/// `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations (as the kubelet and
/// containerd read them: 1k to 1P bits per second; the burst left unbounded, as
/// containerd leaves it). None without either; an error names a bad annotation.
pub fn bandwidth(
    annotations: &std::collections::HashMap<String, String>,
) -> Result<Option<Value>, String> {
    let rate = |key: &str| -> Result<Option<u64>, String> {
        let Some(v) = annotations.get(key) else {
            return Ok(None);
        };
        let bits = quantity(v)
            .ok_or_else(|| format!("annotation {key}: {v:?} is not a quantity (e.g. 10M)"))?;
        if !(1_000..=1_000_000_000_000_000).contains(&bits) {
            return Err(format!(
                "annotation {key}: {v:?} is outside 1k to 1P bits per second"
            ));
        }
        Ok(Some(bits))
    };
    let (ingress, egress) = (rate(INGRESS)?, rate(EGRESS)?);
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let mut b = json!({});
    if let Some(r) = ingress {
        b["ingressRate"] = json!(r);
        b["ingressBurst"] = json!(u32::MAX);
    }
    if let Some(r) = egress {
        b["egressRate"] = json!(r);
        b["egressBurst"] = json!(u32::MAX);
    }
    Ok(Some(b))
}

/// A non-negative Kubernetes quantity, rounded up to a whole unit as the kubelet's
/// `Quantity.Value()`: `10M`, `1.5G`, `512Ki`, `100000`, `1e6`, `+10M`, `.5M`, `5.`, `250m`.
/// Computed exactly (decimal digits over a power of ten, in integers): a float's rounding
/// made `8.3M` 8300001.
fn quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = format!("{int}{frac}");
    if digits.len() > 24 {
        return None;
    }
    let ten = |n: u32| 10u128.checked_pow(n);
    // value = digits × mult_num / (10^len(frac) × mult_den)
    let (mult_num, mult_den): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (ten(3)?, 1),
        "M" => (ten(6)?, 1),
        "G" => (ten(9)?, 1),
        "T" => (ten(12)?, 1),
        "P" => (ten(15)?, 1),
        "E" => (ten(18)?, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        // A decimal exponent: `e` or `E` and a signed integer.
        e if e.starts_with(['e', 'E']) => {
            let x: i32 = e[1..].parse().ok()?;
            if !(-30..=30).contains(&x) {
                return None;
            }
            if x >= 0 {
                (ten(x.unsigned_abs())?, 1)
            } else {
                (1, ten(x.unsigned_abs())?)
            }
        }
        _ => return None,
    };
    let numer = digits.parse::<u128>().ok()?.checked_mul(mult_num)?;
    let denom = ten(u32::try_from(frac.len()).ok()?)?.checked_mul(mult_den)?;
    u64::try_from(numer.div_ceil(denom)).ok()
}

/// What a pod was attached with (kept in its record for DEL, also after a restart).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The network list as it was at ADD (DEL must see the same plugins).
    pub network: Value,
    pub result: Value,
}

impl Cni {
    /// The network to attach pods to: the first configuration file by name.
    pub fn load(&self) -> Result<NetworkList, Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(|_| Error::NoConfig(self.conf_dir.clone()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
            })
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoConfig(self.conf_dir.clone()))?;
        let bad = |why: String| Error::BadConfig {
            path: path.clone(),
            why,
        };
        let data = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
        let list = parse_list(v).map_err(bad)?;
        for p in &list.plugins {
            self.plugin_path(p["type"].as_str().unwrap_or_default())?;
        }
        Ok(NetworkList { path, ..list })
    }

    fn plugin_path(&self, name: &str) -> Result<PathBuf, Error> {
        if !name.contains('/') && !name.is_empty() && name != "." && name != ".." {
            for d in &self.bin_dirs {
                let p = d.join(name);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(Error::NoPlugin {
            plugin: name.to_string(),
            dirs: self.path_var(),
        })
    }

    fn path_var(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.to_string_lossy())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Attaches the pod to `planned`'s network list (`unrecorded`, taken and recorded by the
    /// caller before): every plugin's ADD in order; on a failure, DEL of the whole list.
    pub async fn add(&self, planned: &Attachment, pod: &Pod<'_>) -> Result<Attachment, Error> {
        let path = PathBuf::from("(recorded)");
        let list = match parse_list(planned.network.clone()) {
            Ok(l) => NetworkList {
                path: path.clone(),
                ..l
            },
            Err(why) => return Err(Error::BadConfig { path, why }),
        };
        tracing::debug!(pod = pod.sandbox_id, network = %list.name, config = %list.path.display(), "CNI ADD");
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            match self.call("ADD", &list, p, pod, prev.as_ref()).await {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    let a = Attachment {
                        network: to_value(&list),
                        result: prev.unwrap_or(Value::Null),
                    };
                    if let Err(d) = self.del(&a, pod).await {
                        tracing::warn!(pod = pod.sandbox_id, "undoing a failed CNI ADD: {d}");
                    }
                    return Err(e);
                }
            }
        }
        let a = Attachment {
            network: to_value(&list),
            result: prev.unwrap_or(Value::Null),
        };
        // A pod without an address would be ready yet unreachable (Services skip it):
        // refused, as containerd refuses it, and undone.
        if addresses(&a.result).is_empty() {
            if let Err(d) = self.del(&a, pod).await {
                tracing::warn!(
                    pod = pod.sandbox_id,
                    "undoing a CNI ADD without an address: {d}"
                );
            }
            return Err(Error::NoAddress { network: list.name });
        }
        Ok(a)
    }

    /// Ends (SIGKILL to its process group) every plugin a killed server left running, and
    /// waits for them: their work can then be undone without racing them. Blocking.
    pub fn end_leftover_plugins(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.running_dir) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let pid: i32 = match e.file_name().to_string_lossy().parse() {
                Ok(p) => p,
                Err(_) => continue,
            };
            let start: u64 = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            // The same process (not a reused PID): end its group, wait until it is gone.
            if start != 0 && rsrun::sys::process_start_time(pid).ok() == Some(start) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                for _ in 0..500 {
                    // Gone, or a zombie (dead: its new parent, not this server, reaps it;
                    // one that never does would hold the restart up).
                    if rsrun::sys::process_start_time(pid).ok() != Some(start)
                        || rsrun::sys::process_state(pid).is_ok_and(|s| s == 'Z')
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                n += 1;
            }
            let _ = std::fs::remove_file(e.path());
        }
        n
    }

    /// The current network as an attachment without a result: what an ADD is about to make
    /// (recorded before it, for its DEL), or may have made when interrupted before its
    /// result was recorded.
    pub fn unrecorded(&self) -> Result<Attachment, Error> {
        let list = self.load()?;
        Ok(Attachment {
            network: to_value(&list),
            result: Value::Null,
        })
    }

    /// Detaches the pod: every plugin's DEL in reverse order, all of them even when one
    /// fails (the first error is returned). Plugins treat what is already gone as done.
    pub async fn del(&self, a: &Attachment, pod: &Pod<'_>) -> Result<(), Error> {
        let list = match parse_list(a.network.clone()) {
            Ok(l) => NetworkList {
                path: PathBuf::from("(recorded)"),
                ..l
            },
            Err(_) => return Ok(()),
        };
        let prev = (!a.result.is_null()).then_some(&a.result);
        let mut first = None;
        for p in list.plugins.iter().rev() {
            match self.call("DEL", &list, p, pod, prev).await {
                Ok(_) => {}
                // Its binary is gone (the node's CNI was replaced): nothing can undo what it
                // made, and failing would keep the pod's stop failing forever (containerd
                // takes the current configuration's plugins; go-cni passes over "not found").
                Err(e @ Error::NoPlugin { .. }) => {
                    tracing::warn!(pod = pod.sandbox_id, "CNI DEL passed over: {e}");
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn call(
        &self,
        command: &'static str,
        list: &NetworkList,
        plugin: &Value,
        pod: &Pod<'_>,
        prev: Option<&Value>,
    ) -> Result<Value, Error> {
        let ty = plugin["type"].as_str().unwrap_or_default().to_string();
        let err = |why: String| Error::Plugin {
            plugin: ty.clone(),
            command,
            why,
        };
        let bin = self.plugin_path(&ty)?;
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.cni_version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["portMappings"] == true && !pod.port_mappings.is_empty() {
            conf["runtimeConfig"]["portMappings"] = json!(pod
                .port_mappings
                .iter()
                .map(|m| {
                    let mut v = json!({
                        "hostPort": m.host_port,
                        "containerPort": m.container_port,
                        "protocol": protocol(m.protocol),
                    });
                    if !m.host_ip.is_empty() {
                        v["hostIP"] = json!(m.host_ip);
                    }
                    v
                })
                .collect::<Vec<_>>());
        }
        if plugin["capabilities"]["bandwidth"] == true {
            if let Some(b) = &pod.bandwidth {
                conf["runtimeConfig"]["bandwidth"] = b.clone();
            }
        }
        // What else containerd passes to a plugin that declares it.
        if plugin["capabilities"][POD_ANNOTATIONS] == true {
            conf["runtimeConfig"][POD_ANNOTATIONS] = json!(pod.annotations);
        }
        if plugin["capabilities"]["cgroupPath"] == true && !pod.cgroup_parent.is_empty() {
            conf["runtimeConfig"]["cgroupPath"] = json!(pod.cgroup_parent);
        }
        if plugin["capabilities"]["dns"] == true {
            if let Some(d) = pod.dns {
                conf["runtimeConfig"]["dns"] = d.clone();
            }
        }
        let stdin = serde_json::to_vec(&conf).map_err(|e| err(e.to_string()))?;
        // Only a pinned namespace (an nsfs mount): a server killed between making the pin
        // file and mounting it leaves a plain file, which plugins refuse ("unknown FS
        // magic"). Without one, CNI_NETNS is empty, which the spec allows for DEL (the
        // plugins then release what is outside the namespace, e.g. the address lease).
        let netns = if is_nsfs(pod.netns) {
            pod.netns.to_string_lossy().into_owned()
        } else {
            String::new()
        };
        // The server's environment with the CNI variables set, as libcni runs plugins (they
        // find iptables and the like on the server's PATH; a default PATH only without one).
        let mut cmd = tokio::process::Command::new(&bin);
        if std::env::var_os("PATH").is_none() {
            cmd.env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        }
        let mut child = cmd
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.sandbox_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", self.path_var())
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    pod.namespace, pod.name, pod.sandbox_id, pod.uid
                ),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("run {}: {e}", bin.display())))?;
        let mark = child.id().map(|pid| self.running_dir.join(pid.to_string()));
        if let (Some(m), Some(pid)) = (&mark, child.id()) {
            let start = rsrun::sys::process_start_time(pid as i32).unwrap_or(0);
            let _ = std::fs::create_dir_all(&self.running_dir);
            let _ = std::fs::write(m, start.to_string());
        }
        struct Unmark(Option<PathBuf>);
        impl Drop for Unmark {
            fn drop(&mut self) {
                if let Some(m) = &self.0 {
                    let _ = std::fs::remove_file(m);
                }
            }
        }
        let _unmark = Unmark(mark);
        let mut input = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
        let writer = async move {
            let _ = input.write_all(&stdin).await;
        };
        let group = child.id();
        let (_, out) = tokio::time::timeout(PLUGIN_TIMEOUT, async {
            tokio::join!(writer, child.wait_with_output())
        })
        .await
        .map_err(|_| {
            // The plugin and what it started (delegates such as host-local): an undo that
            // follows must not race them.
            if let Some(g) = group {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(g as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            err(format!("no answer after {} s", PLUGIN_TIMEOUT.as_secs()))
        })?;
        let out = out.map_err(|e| err(e.to_string()))?;
        let answer: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if !out.status.success() {
            let why = match &answer {
                Some(a) if a["msg"].is_string() => {
                    let mut s = a["msg"].as_str().unwrap_or_default().to_string();
                    if let Some(d) = a["details"].as_str().filter(|d| !d.is_empty()) {
                        s.push_str(&format!(": {d}"));
                    }
                    s
                }
                _ => format!(
                    "{} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            };
            return Err(err(why));
        }
        if command == "DEL" {
            return Ok(Value::Null);
        }
        answer.ok_or_else(|| {
            err(format!(
                "unreadable result {:?}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }
}

fn protocol(p: i32) -> &'static str {
    match api::Protocol::try_from(p) {
        Ok(api::Protocol::Udp) => "udp",
        Ok(api::Protocol::Sctp) => "sctp",
        _ => "tcp",
    }
}

/// Port mappings as a record keeps them: (protocol, container port, host port, host IP).
pub fn to_record(m: &[api::PortMapping]) -> Vec<(i32, i32, i32, String)> {
    m.iter()
        .filter(|m| m.host_port > 0)
        .map(|m| (m.protocol, m.container_port, m.host_port, m.host_ip.clone()))
        .collect()
}

/// Port mappings from a record.
pub fn from_record(m: &[(i32, i32, i32, String)]) -> Vec<api::PortMapping> {
    m.iter()
        .map(
            |(protocol, container_port, host_port, host_ip)| api::PortMapping {
                protocol: *protocol,
                container_port: *container_port,
                host_port: *host_port,
                host_ip: host_ip.clone(),
            },
        )
        .collect()
}

fn to_value(l: &NetworkList) -> Value {
    json!({"name": l.name, "cniVersion": l.cni_version, "plugins": l.plugins})
}

/// A configuration list, or a single plugin's configuration made into one.
fn parse_list(v: Value) -> Result<NetworkList, String> {
    let name = v["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("\"name\" is missing")?
        .to_string();
    let cni_version = v["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
    let plugins: Vec<Value> = match v.get("plugins") {
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err("\"plugins\" is not a list".into()),
        None if v["type"].is_string() => vec![v.clone()],
        None => return Err("neither \"plugins\" nor \"type\"".into()),
    };
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    for (i, p) in plugins.iter().enumerate() {
        if !p["type"].is_string() {
            return Err(format!("plugins[{i}] has no \"type\""));
        }
    }
    Ok(NetworkList {
        path: PathBuf::new(),
        name,
        cni_version,
        plugins,
    })
}

/// The pod's addresses in an ADD result (CNI 0.3 and later: `ips[].address`; 0.2: `ip4`,
/// `ip6`), IPv4 first: those of its interface (eth0) or of none, as containerd takes them;
/// not a host-side interface's (`ips[].interface` indexes `interfaces`).
pub fn addresses(result: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let strip = |s: &str| s.split('/').next().unwrap_or(s).to_string();
    let ifaces = result["interfaces"].as_array();
    let pods = |ip: &Value| match ip["interface"].as_u64() {
        None => true,
        Some(n) => ifaces
            .and_then(|a| a.get(n as usize))
            .is_some_and(|i| i["name"] == IFNAME),
    };
    if let Some(ips) = result["ips"].as_array() {
        out.extend(
            ips.iter()
                .filter(|i| pods(i))
                .filter_map(|i| i["address"].as_str())
                .map(strip),
        );
    }
    for k in ["ip4", "ip6"] {
        if let Some(a) = result[k]["ip"].as_str() {
            out.push(strip(a));
        }
    }
    out.sort_by_key(|a| a.contains(':'));
    out.dedup();
    out
}

/// Whether `p` is a namespace file (nsfs), not a plain file or a missing path.
pub(crate) fn is_nsfs(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bandwidth_from_annotations() {
        use super::{bandwidth, quantity, INGRESS};
        assert_eq!(quantity("10M"), Some(10_000_000));
        assert_eq!(quantity("1.5k"), Some(1_500));
        assert_eq!(quantity("2Mi"), Some(2 << 20));
        assert_eq!(quantity("100000"), Some(100_000));
        // The kubelet's other spellings of a quantity (containerd parses them all).
        for (q, v) in [
            ("1e6", 1_000_000),
            ("1E6", 1_000_000),
            ("1e+6", 1_000_000),
            ("+10M", 10_000_000),
            (".5M", 500_000),
            ("5.M", 5_000_000),
            ("1.", 1),
            ("250m", 1),
            ("8.3M", 8_300_000),
            ("16.1k", 16_100),
            ("32.2k", 32_200),
            ("0.1", 1),
            ("1.5Gi", 1_610_612_736),
            ("1e-3", 1),
        ] {
            assert_eq!(quantity(q), Some(v), "{q}");
        }
        for bad in [
            "", "M", "10X", ".", "-5M", "1e", "e3", "1.2.3", "1e99", "10 M",
        ] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
        // Parsed, then out of the 1k..1P range: an error naming the range.
        let e = bandwidth(
            &[(INGRESS.to_string(), "250m".to_string())]
                .into_iter()
                .collect(),
        )
        .unwrap_err();
        assert!(e.contains("outside 1k to 1P"), "{e}");
        let a = |k: &str, v: &str| [(k.to_string(), v.to_string())].into_iter().collect();
        assert_eq!(bandwidth(&Default::default()), Ok(None));
        let b = bandwidth(&a("kubernetes.io/ingress-bandwidth", "10M"))
            .unwrap()
            .unwrap();
        assert_eq!(b["ingressRate"], 10_000_000);
        assert!(b.get("egressRate").is_none());
        let e = bandwidth(&a("kubernetes.io/egress-bandwidth", "10X")).unwrap_err();
        assert!(e.contains("kubernetes.io/egress-bandwidth"), "{e}");
        let e = bandwidth(&a("kubernetes.io/egress-bandwidth", "10")).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn only_a_namespace_file_is_a_netns() {
        assert!(super::is_nsfs(Path::new("/proc/self/ns/net")));
        let f = std::env::temp_dir().join(format!("rsrun-not-a-netns-{}", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        assert!(
            !super::is_nsfs(&f),
            "a plain file (a pin the killed server never mounted)"
        );
        std::fs::remove_file(&f).unwrap();
        assert!(!super::is_nsfs(&f), "a missing path");
    }
    use super::*;

    #[test]
    fn single_plugin_config_becomes_a_list() {
        let l = parse_list(json!({"name": "n", "cniVersion": "1.0.0", "type": "bridge"})).unwrap();
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0]["type"], "bridge");
        assert!(parse_list(json!({"name": "n"}))
            .unwrap_err()
            .contains("neither"));
        assert!(parse_list(json!({"plugins": []}))
            .unwrap_err()
            .contains("name"));
        assert!(parse_list(json!({"name": "n", "plugins": [{"x": 1}]}))
            .unwrap_err()
            .contains("plugins[0]"));
    }

    #[test]
    fn addresses_ipv4_first() {
        let r = json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.1.2.3/24"}]});
        assert_eq!(addresses(&r), vec!["10.1.2.3", "fd00::5"]);
        let old = json!({"ip4": {"ip": "10.9.0.2/16"}});
        assert_eq!(addresses(&old), vec!["10.9.0.2"]);
        // Only the pod's interface's (or of none): not a host-side one's, nor one that
        // names no interface the result lists.
        let r = json!({
            "interfaces": [{"name": "veth0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [
                {"address": "169.254.1.1/32", "interface": 0},
                {"address": "10.0.0.5/24", "interface": 1},
                {"address": "10.0.0.6/24", "interface": 7},
                {"address": "fd00::6/64"}
            ]
        });
        assert_eq!(addresses(&r), vec!["10.0.0.5", "fd00::6"]);
        assert!(addresses(&json!({"cniVersion": "1.0.0"})).is_empty());
    }
}
