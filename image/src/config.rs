//! Registry configuration (mirrors, insecure hosts, CA files) and credentials.
//!
//! The file is JSON (see docs/image-store.md):
//! ```json
//! { "registries": {
//!     "docker.io": { "mirrors": [ { "endpoint": "http://127.0.0.1:5000", "insecure": true } ] },
//!     "registry.internal:5000": { "ca_file": "/etc/rsrun/ca.pem" },
//!     "127.0.0.1:5000": { "insecure": true } } }
//! ```

use crate::error::{Error, Result};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryHost>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Endpoints tried in order before the registry itself.
    #[serde(default)]
    pub mirrors: Vec<MirrorSpec>,
    /// Talk plain HTTP to this registry (never allowed unless set).
    #[serde(default)]
    pub insecure: bool,
    /// PEM file with the CA certificates to trust for this registry (instead of the web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Do not fall back to the registry itself when every mirror failed.
    #[serde(default)]
    pub mirrors_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MirrorSpec {
    Url(String),
    Full {
        endpoint: String,
        #[serde(default)]
        insecure: bool,
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
}

/// One place to send registry API requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// host[:port]
    pub host: String,
    pub ca_file: Option<PathBuf>,
    pub is_mirror: bool,
}

impl Endpoint {
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

impl RegistryConfig {
    pub fn load(path: &Path) -> Result<RegistryConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidConfig(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidConfig(m) => Error::InvalidConfig(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    pub fn from_json(text: &str) -> Result<RegistryConfig> {
        let cfg: RegistryConfig =
            serde_json::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        for (host, h) in &cfg.registries {
            if host.is_empty() || host.contains('/') {
                return Err(Error::InvalidConfig(format!(
                    "registry key {host:?} must be a host[:port] without scheme or path"
                )));
            }
            for m in &h.mirrors {
                parse_mirror(m)
                    .map_err(|e| Error::InvalidConfig(format!("registry {host:?}: {e}")))?;
            }
        }
        Ok(cfg)
    }

    /// Marks a host as plain-HTTP (the CLI's --plain-http).
    pub fn set_insecure(&mut self, host: &str) {
        self.registries
            .entry(host.to_string())
            .or_default()
            .insecure = true;
    }

    /// The endpoints to try for a registry domain, mirrors first.
    pub fn endpoints(&self, domain: &str) -> Result<Vec<Endpoint>> {
        let host_cfg = self
            .registries
            .get(domain)
            .or_else(|| self.registries.get("*"));
        let mut out = Vec::new();
        if let Some(h) = host_cfg {
            for m in &h.mirrors {
                out.push(parse_mirror(m).map_err(Error::InvalidConfig)?);
            }
        }
        if !host_cfg.is_some_and(|h| h.mirrors_only && !h.mirrors.is_empty()) {
            let insecure = self.registries.get(domain).is_some_and(|h| h.insecure);
            let host = if domain == "docker.io" {
                "registry-1.docker.io".to_string()
            } else {
                domain.to_string()
            };
            out.push(Endpoint {
                scheme: if insecure { "http" } else { "https" }.into(),
                host,
                ca_file: self.registries.get(domain).and_then(|h| h.ca_file.clone()),
                is_mirror: false,
            });
        }
        Ok(out)
    }
}

fn parse_mirror(m: &MirrorSpec) -> std::result::Result<Endpoint, String> {
    let (url, insecure, ca) = match m {
        MirrorSpec::Url(u) => (u.as_str(), false, None),
        MirrorSpec::Full {
            endpoint,
            insecure,
            ca_file,
        } => (endpoint.as_str(), *insecure, ca_file.clone()),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("mirror {url:?} needs a scheme (http:// or https://)"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "mirror {url:?} must be scheme://host[:port] without a path"
        ));
    }
    match scheme {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(format!(
                "mirror {url:?} is plain HTTP: set \"insecure\": true for it"
            ))
        }
        _ => return Err(format!("mirror {url:?}: unsupported scheme {scheme:?}")),
    }
    Ok(Endpoint {
        scheme: scheme.into(),
        host: host.into(),
        ca_file: ca,
        is_mirror: true,
    })
}

/// Credentials for a registry, as the CRI AuthConfig carries them.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token exchanged at the token endpoint (docker login's identitytoken).
    IdentityToken(String),
    /// A bearer token sent as is.
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
            Credentials::RegistryToken(_) => write!(f, "RegistryToken(***)"),
        }
    }
}

impl Credentials {
    /// `user:password` as given to `--creds`.
    pub fn parse_user_pass(s: &str) -> Result<Credentials> {
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| Error::InvalidConfig("credentials must be user:password".into()))?;
        if u.is_empty() {
            return Err(Error::InvalidConfig(
                "credentials have an empty user name".into(),
            ));
        }
        Ok(Credentials::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    /// From the fields of a CRI AuthConfig (empty strings mean unset), in containerd's order:
    /// a user name (the kubelet's imagePullSecrets and credential providers send user and
    /// password), then an identity token, then `auth` (base64 of `user:password`), then a
    /// registry token (which containerd does not take).
    pub fn from_cri(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Option<Credentials>> {
        if !username.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: username.into(),
                password: password.into(),
            }));
        }
        if !identity_token.is_empty() {
            return Ok(Some(Credentials::IdentityToken(identity_token.into())));
        }
        if !auth.is_empty() {
            return decode_auth(auth).map(Some);
        }
        if !registry_token.is_empty() {
            return Ok(Some(Credentials::RegistryToken(registry_token.into())));
        }
        Ok(None)
    }

    pub(crate) fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            _ => None,
        }
    }
}

fn decode_auth(auth: &str) -> Result<Credentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| Error::InvalidConfig(format!("auth is not base64: {e}")))?;
    let s = String::from_utf8(raw).map_err(|_| Error::InvalidConfig("auth is not UTF-8".into()))?;
    Credentials::parse_user_pass(&s)
}

/// A docker/podman-style auth file: `{"auths": {"host": {"auth": "base64(user:pass)"}}}`.
#[derive(Debug, Default, Clone)]
pub struct AuthFile {
    entries: BTreeMap<String, Credentials>,
}

#[derive(Deserialize)]
struct AuthFileJson {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}
#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
    #[serde(default)]
    registrytoken: String,
}

impl AuthFile {
    pub fn load(path: &Path) -> Result<AuthFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::InvalidConfig(format!("cannot read auth file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
            .map_err(|e| Error::InvalidConfig(format!("auth file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<AuthFile> {
        let j: AuthFileJson =
            serde_json::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let mut entries = BTreeMap::new();
        for (key, e) in j.auths {
            let host = normalize_auth_key(&key);
            let c = Credentials::from_cri(
                &e.username,
                &e.password,
                &e.auth,
                &e.identitytoken,
                &e.registrytoken,
            )
            .map_err(|err| Error::InvalidConfig(format!("entry {key:?}: {err}")))?;
            if let Some(c) = c {
                entries.insert(host, c);
            }
        }
        Ok(AuthFile { entries })
    }

    pub fn get(&self, host: &str) -> Option<&Credentials> {
        self.entries.get(&normalize_auth_key(host))
    }
}

fn normalize_auth_key(key: &str) -> String {
    let k = key.split_once("://").map(|(_, r)| r).unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        k => k.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mirrors_and_insecure() {
        let c = RegistryConfig::from_json(
            r#"{"registries":{"docker.io":{"mirrors":[{"endpoint":"http://127.0.0.1:5000","insecure":true},"https://m.example"]},
                "127.0.0.1:5001":{"insecure":true}}}"#,
        )
        .unwrap();
        let e = c.endpoints("docker.io").unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].base_url(), "http://127.0.0.1:5000");
        assert_eq!(e[1].base_url(), "https://m.example");
        assert_eq!(e[2].base_url(), "https://registry-1.docker.io");
        assert_eq!(
            c.endpoints("127.0.0.1:5001").unwrap()[0].base_url(),
            "http://127.0.0.1:5001"
        );
        assert_eq!(
            c.endpoints("quay.io").unwrap()[0].base_url(),
            "https://quay.io"
        );
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = RegistryConfig::from_json(
            r#"{"registries":{"docker.io":{"mirrors":["http://127.0.0.1:5000"]}}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("insecure"), "{e}");
        let e = RegistryConfig::from_json(r#"{"registries":{"x":{"mirorrs":[]}}}"#).unwrap_err();
        assert!(e.to_string().contains("mirorrs"), "{e}");
        let e = RegistryConfig::from_json(r#"{"registries":{"https://x":{}}}"#).unwrap_err();
        assert!(e.to_string().contains("without scheme"), "{e}");
    }

    #[test]
    fn auth_file() {
        let a = AuthFile::parse(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"r.io":{"username":"a","password":"b"},"t.io":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        assert_eq!(
            a.get("docker.io"),
            Some(&Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            a.get("r.io"),
            Some(&Credentials::Basic {
                username: "a".into(),
                password: "b".into()
            })
        );
        assert_eq!(
            a.get("t.io"),
            Some(&Credentials::IdentityToken("tok".into()))
        );
        assert!(AuthFile::parse(r#"{"auths":{"x":{"auth":"!!"}}}"#)
            .unwrap_err()
            .to_string()
            .contains("base64"));
    }
}
