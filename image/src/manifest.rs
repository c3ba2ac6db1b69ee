//! OCI / Docker schema 2 manifests, indexes and image configs; platform selection.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::registry::{MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A BuildKit attestation (SBOM/provenance) entry of an index: not an image to run.
    pub fn is_attestation(&self) -> bool {
        self.annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// This machine's platform, as Go's GOOS/GOARCH name it.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", ""),
            "aarch64" => ("arm64", "v8"),
            "arm" => ("arm", "v7"),
            "x86" => ("386", ""),
            "powerpc64" => ("ppc64le", ""),
            "s390x" => ("s390x", ""),
            "riscv64" => ("riscv64", ""),
            other => (other, ""),
        };
        Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.into(),
        }
    }

    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            Error::InvalidConfig(format!(
                "platform {s:?} must be os/arch[/variant], e.g. linux/amd64 or linux/arm/v7"
            ))
        };
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let arch = match parts[1] {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: arch.into(),
            variant: parts.get(2).unwrap_or(&"").to_string(),
        })
    }

    /// Does an index entry's platform serve this (wanted) platform?
    pub fn matches(&self, other: &Platform) -> bool {
        self.rank(other).is_some()
    }

    /// How well an image of platform `other` serves this (wanted) one: 0 for the same
    /// platform, more for a compatible one that runs here (containerd's order: amd64 runs
    /// 386; arm64 runs arm v8 down to v5; arm vN runs vN down to v5), None for one that does
    /// not run. Variants compare as containerd normalizes them (amd64 "" is v1, arm64 ""
    /// v8, arm "" v7): an amd64/v3 image is not taken for a plain amd64 host, whose CPU may
    /// lack its instructions.
    pub fn rank(&self, other: &Platform) -> Option<usize> {
        if self.os != other.os {
            return None;
        }
        let level = |arch: &str, v: &str| -> Option<u32> {
            let v = if v.is_empty() {
                match arch {
                    "amd64" => "v1",
                    "arm64" => "v8",
                    "arm" => "v7",
                    _ => return None,
                }
            } else {
                v
            };
            v.strip_prefix('v')?.parse().ok()
        };
        let (want, got) = (self.architecture.as_str(), other.architecture.as_str());
        let (wl, gl) = (level(want, &self.variant), level(got, &other.variant));
        match (want, got) {
            ("amd64", "amd64") | ("arm", "arm") | ("arm64", "arm64") => {
                let (w, g) = (wl?, gl?);
                (g <= w).then(|| (w - g) as usize)
            }
            ("amd64", "386") => Some(100),
            ("arm64", "arm") => {
                let g = gl?;
                (5..=8).contains(&g).then(|| 100 + (8 - g) as usize)
            }
            (w, g) if w == g => {
                // Other architectures: the same variant, or any when none is wanted.
                (self.variant.is_empty() || self.variant == other.variant).then_some(0)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

pub enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

/// Parses a manifest body by its Content-Type, falling back to its mediaType field
/// (some registries serve application/json).
pub fn parse(bytes: &[u8], content_type: &str, what: &str) -> Result<Parsed> {
    let bad = |reason: String| Error::InvalidManifest {
        what: what.to_string(),
        reason,
    };
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion", default)]
        schema_version: u32,
        #[serde(rename = "mediaType", default)]
        media_type: String,
        // Only whether each is there counts (kept as nothing: a 4 MiB manifest of
        // `[0,0,…]` would be 2 million values).
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        config: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mt = match content_type {
        MT_OCI_MANIFEST | MT_OCI_INDEX | MT_DOCKER_MANIFEST | MT_DOCKER_LIST => {
            content_type.to_string()
        }
        _ if !probe.media_type.is_empty() => probe.media_type.clone(),
        _ if probe.manifests.is_some() => MT_OCI_INDEX.to_string(),
        _ if probe.schema_version == 2 => MT_OCI_MANIFEST.to_string(),
        _ => content_type.to_string(),
    };
    if probe.schema_version == 1 || mt.contains("manifest.v1+") && mt.contains("docker") {
        return Err(bad("Docker schema 1 manifests are not supported".into()));
    }
    if probe.schema_version != 2 {
        return Err(bad(format!(
            "schemaVersion {} (want 2)",
            probe.schema_version
        )));
    }
    // A document must be of one kind only, whatever it is served as (containerd's check,
    // CVE-2021-41190): one with both `manifests` and `config`/`layers`, or whose own
    // mediaType says the other kind, could resolve to different images by who reads it how.
    let is_index = |t: &str| t == MT_OCI_INDEX || t == MT_DOCKER_LIST;
    let is_manifest = |t: &str| t == MT_OCI_MANIFEST || t == MT_DOCKER_MANIFEST;
    if is_manifest(&mt) && (probe.manifests.is_some() || is_index(&probe.media_type)) {
        return Err(bad(format!(
            "served as a manifest ({mt}) but has an index's manifests or mediaType"
        )));
    }
    if is_index(&mt)
        && (probe.config.is_some() || probe.layers.is_some() || is_manifest(&probe.media_type))
    {
        return Err(bad(format!(
            "served as an index ({mt}) but has a manifest's config, layers or mediaType"
        )));
    }
    match mt.as_str() {
        MT_OCI_INDEX | MT_DOCKER_LIST => Ok(Parsed::Index(
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?,
        )),
        MT_OCI_MANIFEST | MT_DOCKER_MANIFEST => {
            let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
            Ok(Parsed::Manifest(m))
        }
        other => Err(bad(format!("unsupported media type {other:?}"))),
    }
}

/// Picks the manifest for `want` from an index; attestation manifests are skipped.
pub fn select<'a>(index: &'a Index, want: &Platform, reference: &str) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.media_type != MT_OCI_INDEX && d.media_type != MT_DOCKER_LIST)
        .filter(|d| !d.is_attestation())
        .filter(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .collect();
    // The closest platform wins (the host's own before a compatible one); then the index's
    // order.
    if let Some(d) = candidates.iter().min_by_key(|d| {
        d.platform
            .as_ref()
            .and_then(|p| want.rank(p))
            .unwrap_or(usize::MAX)
    }) {
        return Ok(d);
    }
    let available = index
        .manifests
        .iter()
        .filter(|d| !d.is_attestation())
        .filter_map(|d| d.platform.as_ref())
        .map(|p| crate::text::clean(&p.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::NoMatchingPlatform {
        reference: reference.to_string(),
        wanted: want.to_string(),
        available,
    })
}

/// An os, architecture or variant name as images use them (`linux`, `amd64`, `v7`, `ppc64le`):
/// up to 64 of `[A-Za-z0-9._-]`, or empty. Anything else would be shown raw by `list`.
pub fn is_platform_word(s: &str) -> bool {
    s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The image config (OCI image spec) as the store and its readers use it: the fields that
/// are read or reported (containerd's typed `ocispec.Image`, less `history`). Anything else
/// is passed over while parsing, without being built: a config's bulk cannot become a tree
/// of values in every reader (one CreateContainer each).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ImageConfig {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_str"
    )]
    pub created: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_str"
    )]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_str"
    )]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// The image's defaults for its containers (`config` of the image config). Read as Go's
/// encoding/json reads them into containerd's types where they hold nulls (a null string is
/// empty), and a field of another type is passed over rather than failing the image: these
/// fields were not checked at pull before they were read this way.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_str"
    )]
    pub user: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_set"
    )]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_strings"
    )]
    pub env: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_strings"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_strings"
    )]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_set"
    )]
    pub volumes: Option<BTreeMap<String, Empty>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_str"
    )]
    pub working_dir: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_labels"
    )]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_str"
    )]
    pub stop_signal: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_bool"
    )]
    pub args_escaped: Option<bool>,
}

fn lenient_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

fn lenient_bool<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<bool>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?.as_bool())
}

/// A list of strings; a null or non-string element is an empty string (Go's null).
fn lenient_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(a) => Some(
            a.into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s,
                    _ => String::new(),
                })
                .collect(),
        ),
        _ => None,
    })
}

fn lenient_labels<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<BTreeMap<String, String>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => Some(
            m.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("").to_string()))
                .collect(),
        ),
        _ => None,
    })
}

fn lenient_set<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<BTreeMap<String, Empty>>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(m) => Some(m.into_iter().map(|(k, _)| (k, Empty)).collect()),
        _ => None,
    })
}

/// The `{}` values of `ExposedPorts` and `Volumes` (whatever they hold is passed over).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Empty;

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Empty)
    }
}

impl Serialize for Empty {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// Layer compression as declared by the media type (the stream is also sniffed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub fn layer_compression(media_type: &str) -> Result<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        m if m.contains("nondistributable") || m.contains("foreign") => {
            Err(Error::InvalidManifest {
                what: "layer".into(),
                reason: format!("non-distributable layer type {m:?} is not supported"),
            })
        }
        m => Err(Error::InvalidManifest {
            what: "layer".into(),
            reason: format!("unsupported layer media type {m:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(arch: &str, variant: &str) -> Descriptor {
        Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: Digest::of_bytes(format!("{arch}{variant}").as_bytes()),
            size: 1,
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.into(),
            }),
            urls: vec![],
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn platform_selection() {
        let idx = Index {
            schema_version: 2,
            media_type: MT_OCI_INDEX.into(),
            manifests: vec![
                desc("arm", "v6"),
                desc("arm", "v7"),
                desc("arm64", ""),
                desc("amd64", ""),
            ],
        };
        // The digest `select` picks for `want` from `manifests`, None when none runs.
        let pick = |manifests: Vec<Descriptor>, want: &str| {
            let i = Index {
                manifests,
                ..idx.clone()
            };
            select(&i, &Platform::parse(want).unwrap(), "x")
                .ok()
                .map(|d| d.digest.clone())
        };
        let m = &idx.manifests;
        assert_eq!(pick(m.clone(), "linux/amd64"), Some(m[3].digest.clone()));
        assert_eq!(pick(m.clone(), "linux/arm/v7"), Some(m[1].digest.clone()));
        assert_eq!(pick(m.clone(), "linux/arm64/v8"), Some(m[2].digest.clone()));
        // Compatible platforms when the host's own is missing, the closest first: arm64 runs
        // arm v7 before v6; amd64 runs 386; an arm v7 host runs v6.
        assert_eq!(
            pick(m[..2].to_vec(), "linux/arm64"),
            Some(m[1].digest.clone())
        );
        assert_eq!(
            pick(m[..1].to_vec(), "linux/arm/v7"),
            Some(m[0].digest.clone())
        );
        assert_eq!(pick(m[..1].to_vec(), "linux/arm/v5"), None);
        // An amd64/v3 image needs a CPU level a plain amd64 host may not have: 386 instead.
        let x86 = vec![desc("386", ""), desc("amd64", "v3")];
        assert_eq!(
            pick(x86.clone(), "linux/amd64"),
            Some(x86[0].digest.clone())
        );
        assert_eq!(
            pick(x86.clone(), "linux/amd64/v3"),
            Some(x86[1].digest.clone())
        );
        assert_eq!(pick(x86[1..].to_vec(), "linux/amd64"), None);
        // amd64 "" and v1 are the same; arm64 "" and v8.
        assert_eq!(
            Platform::parse("linux/amd64/v1")
                .unwrap()
                .rank(&Platform::parse("linux/amd64").unwrap()),
            Some(0)
        );
        assert_eq!(
            Platform::parse("linux/arm64")
                .unwrap()
                .rank(&Platform::parse("linux/arm64/v8").unwrap()),
            Some(0)
        );
        let e = select(&idx, &Platform::parse("linux/s390x").unwrap(), "x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux/s390x") && e.contains("linux/arm/v7"),
            "{e}"
        );
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn a_document_of_both_kinds_is_refused() {
        let both = br#"{"schemaVersion":2,"manifests":[],"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        for ct in [
            MT_OCI_INDEX,
            MT_OCI_MANIFEST,
            MT_DOCKER_LIST,
            MT_DOCKER_MANIFEST,
        ] {
            let e = parse(both, ct, "t").err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("served as")),
                "{ct}: {e:?}"
            );
        }
        // Its own mediaType saying the other kind.
        let idx = format!(r#"{{"schemaVersion":2,"mediaType":"{MT_OCI_INDEX}","layers":[]}}"#);
        assert!(parse(idx.as_bytes(), MT_OCI_MANIFEST, "t").is_err());
        let man =
            format!(r#"{{"schemaVersion":2,"mediaType":"{MT_OCI_MANIFEST}","manifests":[]}}"#);
        assert!(parse(man.as_bytes(), MT_OCI_INDEX, "t").is_err());
    }

    #[test]
    fn parse_by_content_type_and_sniffing() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
        assert!(matches!(
            parse(m, "application/json", "t").unwrap(),
            Parsed::Manifest(_)
        ));
        assert!(matches!(
            parse(br#"{"schemaVersion":2,"manifests":[]}"#, "", "t").unwrap(),
            Parsed::Index(_)
        ));
        let e = parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, "", "t")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("schema 1"), "{e}");
    }
}
