//! CDI (the Container Device Interface): devices named `vendor.com/class=name` in a
//! container's `CDI_devices` (or the `cdi.k8s.io/*` annotations that device plugins and DRA
//! drivers set) are found in the node's CDI spec files and their container edits applied to
//! the OCI spec, as containerd and CRI-O apply them: environment, device nodes (with their
//! device cgroup rule), mounts, hooks and additional groups, the spec file's common edits
//! first, then the device's.
//!
//! Spec files are JSON or YAML (`*.json`, `*.yaml`, `*.yml`) in the configured directories
//! (`cdi_spec_dirs`, by default /etc/cdi then /var/run/cdi); a device in a later directory
//! replaces one of the same name in an earlier one (the CDI specification's priority).

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// The CDI spec directories when the configuration names none.
pub const DEFAULT_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// Annotations whose values are comma-separated device names (the kubelet's device manager
/// and DRA drivers that predate the CRI field).
const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

#[derive(Debug, Deserialize)]
struct Spec {
    kind: String,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(rename = "containerEdits", default)]
    edits: Edits,
}

#[derive(Debug, Deserialize)]
struct Device {
    name: String,
    #[serde(rename = "containerEdits", default)]
    edits: Edits,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(rename = "deviceNodes", default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    mounts: Vec<Mount>,
    #[serde(default)]
    hooks: Vec<Hook>,
    #[serde(rename = "additionalGIDs", default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Deserialize, Clone)]
struct DeviceNode {
    path: String,
    #[serde(rename = "hostPath")]
    host_path: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    #[serde(rename = "fileMode")]
    file_mode: Option<u32>,
    permissions: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Debug, Deserialize, Clone)]
struct Mount {
    #[serde(rename = "hostPath")]
    host_path: String,
    #[serde(rename = "containerPath")]
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
struct Hook {
    #[serde(rename = "hookName")]
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    timeout: Option<i64>,
}

/// The device names a container asks for: the CRI field's, then the annotations' (each
/// once, in that order).
pub fn requested(fields: &[String], annotations: &HashMap<String, String>) -> Vec<String> {
    let mut names: Vec<String> = fields.to_vec();
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for k in keys {
        names.extend(
            annotations[k]
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from),
        );
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Applies the edits of `names` to the OCI spec `spec`. An error names the device and what
/// is wrong (an unknown device, a malformed spec file, a device node that is missing).
pub fn apply(spec: &mut Value, dirs: &[PathBuf], names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let specs = load(dirs)?;
    // Each spec file's common edits once, however many of its devices are asked.
    let mut common_done: Vec<usize> = Vec::new();
    for name in names {
        let (kind, dev) = name
            .split_once('=')
            .filter(|(k, d)| k.contains('/') && !d.is_empty())
            .ok_or_else(|| {
                format!("CDI device {name:?}: not a fully qualified name (vendor.com/class=name)")
            })?;
        let (i, device) = specs
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, (_, s))| {
                (s.kind == kind)
                    .then(|| s.devices.iter().find(|d| d.name == dev))
                    .flatten()
                    .map(|d| (i, d))
            })
            .ok_or_else(|| {
                format!(
                    "CDI device {name:?}: not found in the CDI specs of {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let (path, s) = &specs[i];
        if !common_done.contains(&i) {
            common_done.push(i);
            edit(spec, &s.edits).map_err(|e| format!("CDI spec {}: {e}", path.display()))?;
        }
        edit(spec, &device.edits).map_err(|e| format!("CDI device {name:?}: {e}"))?;
    }
    Ok(())
}

/// Every spec file of `dirs`, in priority order (lowest first); a directory that does not
/// exist has none.
fn load(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, Spec)>, String> {
    let mut out = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("CDI spec directory {}: {e}", dir.display())),
        };
        files.sort();
        for f in files {
            // A file that cannot be read as a spec is passed over (and said), as the CDI
            // library does: one stale file must not fail every device of the node.
            let parsed = std::fs::read(&f)
                .map_err(|e| e.to_string())
                // YAML is a superset of JSON: one parser reads both.
                .and_then(|t| serde_yaml_ng::from_slice::<Spec>(&t).map_err(|e| e.to_string()));
            match parsed {
                Ok(s) => out.push((f, s)),
                Err(e) => tracing::warn!("CDI spec {} passed over: {e}", f.display()),
            }
        }
    }
    Ok(out)
}

fn edit(spec: &mut Value, e: &Edits) -> Result<(), String> {
    if !e.env.is_empty() {
        let env = array(&mut spec["process"]["env"]);
        for kv in &e.env {
            let key = kv.split('=').next().unwrap_or(kv);
            env.retain(|v| v.as_str().and_then(|s| s.split('=').next()) != Some(key));
            env.push(json!(kv));
        }
    }
    for d in &e.device_nodes {
        device_node(spec, d)?;
    }
    for m in &e.mounts {
        let mut options = m.options.clone();
        let kind = m.kind.clone().unwrap_or_else(|| "bind".into());
        if kind == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
            options.insert(0, "rbind".into());
        }
        // Replacing a mount at the same path, parents before what they hold (the CDI
        // library's order): a mount of the spec under the device's must not hide it.
        let mounts = array(&mut spec["mounts"]);
        mounts.retain(|x| x["destination"].as_str() != Some(m.container_path.as_str()));
        mounts.push(json!({
            "destination": m.container_path, "source": m.host_path, "type": kind,
            "options": options,
        }));
        mounts.sort_by_key(|x| {
            x["destination"]
                .as_str()
                .map_or(0, |d| Path::new(d).components().count())
        });
    }
    for h in &e.hooks {
        let stage = match h.hook_name.as_str() {
            s @ ("prestart" | "createRuntime" | "createContainer" | "startContainer"
            | "poststart" | "poststop") => s,
            other => return Err(format!("hook {:?}: unknown hookName {other:?}", h.path)),
        };
        let mut hook = json!({"path": h.path});
        if !h.args.is_empty() {
            hook["args"] = json!(h.args);
        }
        if !h.env.is_empty() {
            hook["env"] = json!(h.env);
        }
        if let Some(t) = h.timeout {
            hook["timeout"] = json!(t);
        }
        array(&mut spec["hooks"][stage]).push(hook);
    }
    if !e.additional_gids.is_empty() {
        let gids = array(&mut spec["process"]["user"]["additionalGids"]);
        for g in &e.additional_gids {
            if !gids.iter().any(|v| v.as_u64() == Some(u64::from(*g))) {
                gids.push(json!(g));
            }
        }
    }
    Ok(())
}

/// A device node in the container, its type and numbers taken from the host's node when the
/// spec leaves them out, and its device cgroup rule.
fn device_node(spec: &mut Value, d: &DeviceNode) -> Result<(), String> {
    let host = Path::new(d.host_path.as_deref().unwrap_or(&d.path));
    let (mut kind, mut major, mut minor) = (d.kind.clone(), d.major, d.minor);
    if kind.is_none() || major.is_none() || minor.is_none() {
        let md =
            std::fs::metadata(host).map_err(|e| format!("device node {}: {e}", host.display()))?;
        let ft = md.file_type();
        let k = if ft.is_char_device() {
            "c"
        } else if ft.is_block_device() {
            "b"
        } else if ft.is_fifo() {
            "p"
        } else {
            return Err(format!("device node {}: not a device", host.display()));
        };
        kind.get_or_insert_with(|| k.to_string());
        let rdev = md.rdev();
        major.get_or_insert(nix::sys::stat::major(rdev) as i64);
        minor.get_or_insert(nix::sys::stat::minor(rdev) as i64);
    }
    let kind = kind.unwrap_or_default();
    let (major, minor) = (major.unwrap_or(0), minor.unwrap_or(0));
    let mut node = json!({"path": d.path, "type": kind, "major": major, "minor": minor});
    if let Some(m) = d.file_mode {
        node["fileMode"] = json!(m);
    }
    if let Some(u) = d.uid {
        node["uid"] = json!(u);
    }
    if let Some(g) = d.gid {
        node["gid"] = json!(g);
    }
    let devices = array(&mut spec["linux"]["devices"]);
    devices.retain(|n| n["path"].as_str() != Some(d.path.as_str()));
    devices.push(node);
    if kind == "b" || kind == "c" {
        array(&mut spec["linux"]["resources"]["devices"]).push(json!({
            "allow": true, "type": kind, "major": major, "minor": minor,
            "access": d.permissions.clone().unwrap_or_else(|| "rwm".into()),
        }));
    }
    Ok(())
}

/// The array at `v`, made when missing.
fn array(v: &mut Value) -> &mut Vec<Value> {
    if !v.is_array() {
        *v = json!([]);
    }
    v.as_array_mut().expect("made an array above")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rsrun-cdi-{}-{}", std::process::id(), files.len()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (n, t) in files {
            std::fs::write(d.join(n), t).unwrap();
        }
        d
    }

    #[test]
    fn yaml_and_json_specs_are_applied_common_edits_first() {
        let d = dir(&[
            // A file that is no spec is passed over, not a failure of every device.
            ("broken.json", "{not json"),
            (
                "vendor.yaml",
                "cdiVersion: 0.6.0\nkind: example.com/gpu\ncontainerEdits:\n  env: [COMMON=1]\n\
                 devices:\n- name: gpu0\n  containerEdits:\n    env: [GPU=0, COMMON=2]\n    \
                 deviceNodes:\n    - path: /dev/gpu0\n      hostPath: /dev/null\n    \
                 additionalGIDs: [44]\n    hooks:\n    - hookName: createContainer\n      \
                 path: /bin/true\n      args: [true, x]\n",
            ),
            (
                "net.json",
                r#"{"cdiVersion": "0.6.0", "kind": "example.com/net", "devices": [{"name": "a",
                   "containerEdits": {"mounts": [{"hostPath": "/etc", "containerPath": "/host-etc",
                   "options": ["ro"]}]}}]}"#,
            ),
        ]);
        let mut spec = json!({"process": {"env": ["COMMON=0", "PATH=/bin"], "user": {"uid": 0}},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}}});
        apply(
            &mut spec,
            std::slice::from_ref(&d),
            &["example.com/gpu=gpu0".into(), "example.com/net=a".into()],
        )
        .unwrap();
        assert_eq!(
            spec["process"]["env"],
            json!(["PATH=/bin", "GPU=0", "COMMON=2"])
        );
        assert_eq!(
            spec["linux"]["devices"],
            json!([{"path": "/dev/gpu0", "type": "c", "major": 1, "minor": 3}])
        );
        assert_eq!(
            spec["linux"]["resources"]["devices"][1],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        );
        assert_eq!(spec["process"]["user"]["additionalGids"], json!([44]));
        assert_eq!(
            spec["hooks"]["createContainer"],
            json!([{"path": "/bin/true", "args": ["true", "x"]}])
        );
        assert_eq!(
            spec["mounts"],
            json!([{"destination": "/host-etc", "source": "/etc", "type": "bind",
                    "options": ["rbind", "ro"]}])
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unknown_devices_and_bad_names_are_errors_naming_them() {
        let d = dir(&[(
            "x.json",
            r#"{"cdiVersion": "0.6.0", "kind": "example.com/x", "devices": [{"name": "missing",
               "containerEdits": {"deviceNodes": [{"path": "/dev/nope-rsrun"}]}}]}"#,
        )]);
        let dirs = std::slice::from_ref(&d);
        let mut spec = json!({});
        let e = apply(&mut spec, dirs, &["example.com/x=other".into()]).unwrap_err();
        assert!(e.contains("\"example.com/x=other\": not found"), "{e}");
        let e = apply(&mut spec, dirs, &["gpu0".into()]).unwrap_err();
        assert!(e.contains("not a fully qualified name"), "{e}");
        let e = apply(&mut spec, dirs, &["example.com/x=missing".into()]).unwrap_err();
        assert!(e.contains("/dev/nope-rsrun"), "{e}");
        // Nothing asked: nothing read (a node without CDI specs).
        apply(&mut spec, &[PathBuf::from("/nonexistent")], &[]).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn annotations_add_devices_once() {
        let mut a = HashMap::new();
        a.insert(
            "cdi.k8s.io/plugin".to_string(),
            "v.com/c=a, v.com/c=b".to_string(),
        );
        a.insert("other".to_string(), "v.com/c=z".to_string());
        assert_eq!(
            requested(&["v.com/c=b".into()], &a),
            vec!["v.com/c=b".to_string(), "v.com/c=a".to_string()]
        );
    }
}
