//! Auth flows, redirects and corrupt content against a small fake registry in the test:
//! Bearer tokens from a token endpoint (Basic credentials or an identity token), Basic auth,
//! blob redirects to a storage host that must not receive the registry's credentials.

mod common;
use base64::Engine as _;
use common::*;
use rsrun_image::{AuthFile, Credentials, Digest, Error, ImageStore, PullOptions, RegistryConfig};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Bearer,
    Basic,
}

struct Fake {
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
    config_digest: Digest,
}

struct Content {
    mode: Mode,
    addr: String,
    storage: String,
    manifest: Vec<u8>,
    blobs: HashMap<String, Vec<u8>>,
    log: Arc<Mutex<Vec<String>>>,
}

/// (method, target, lower-cased headers, body)
type Request = (String, String, HashMap<String, String>, Vec<u8>);

fn read_request(s: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if s.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        s.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}

fn respond(s: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8], head: bool) {
    let mut r = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let _ = s.write_all(r.as_bytes());
    if !head {
        let _ = s.write_all(body);
    }
}

fn serve(l: TcpListener, c: Arc<Content>, storage: bool) {
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let Some((method, target, headers, body)) = read_request(&mut r) else {
                    return;
                };
                let auth = headers.get("authorization").cloned().unwrap_or_default();
                c.log.lock().unwrap().push(format!(
                    "{} {method} {target} auth={auth}",
                    if storage { "storage" } else { "registry" }
                ));
                handle(&c, &mut w, &method, &target, &auth, &body, storage);
            });
        }
    });
}

const USER: &str = "alice";
const PASS: &str = "s3cret";
const REFRESH: &str = "refresh-123";

fn handle(
    c: &Content,
    w: &mut TcpStream,
    method: &str,
    target: &str,
    auth: &str,
    body: &[u8],
    storage: bool,
) {
    let head = method == "HEAD";
    let basic_ok = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    if storage {
        if !auth.is_empty() {
            return respond(w, 403, &[], b"credentials leaked to storage", head);
        }
        let d = target
            .trim_start_matches("/blob/")
            .split('?')
            .next()
            .unwrap_or("");
        return match c.blobs.get(d) {
            Some(b) => respond(w, 200, &[], b, head),
            None => respond(w, 404, &[], b"", head),
        };
    }
    if target.starts_with("/token") {
        if method == "POST" {
            let form = String::from_utf8_lossy(body);
            if form.contains("grant_type=refresh_token")
                && form.contains(&format!("refresh_token={REFRESH}"))
                && form.contains("scope=repository%3Aapp%3Apull")
            {
                return respond(w, 200, &[], br#"{"access_token":"good-token"}"#, false);
            }
            return respond(
                w,
                401,
                &[],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}"#,
                false,
            );
        }
        if auth != basic_ok {
            return respond(
                w,
                401,
                &[],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                false,
            );
        }
        if !target.contains("scope=repository%3Aapp%3Apull") || !target.contains("service=fake") {
            return respond(w, 400, &[], b"bad scope", false);
        }
        return respond(
            w,
            200,
            &[],
            br#"{"token":"good-token","expires_in":300}"#,
            false,
        );
    }
    let authed = match c.mode {
        Mode::Bearer => auth == "Bearer good-token",
        Mode::Basic => auth == basic_ok,
    };
    if !authed {
        let chal = match c.mode {
            Mode::Bearer => format!(
                r#"Bearer realm="http://{}/token",service="fake",scope="repository:app:pull""#,
                c.addr
            ),
            Mode::Basic => r#"Basic realm="fake""#.to_string(),
        };
        return respond(
            w,
            401,
            &[("WWW-Authenticate", chal)],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            head,
        );
    }
    if target == "/v2/" {
        return respond(w, 200, &[], b"{}", head);
    }
    if let Some(r) = target.strip_prefix("/v2/app/manifests/") {
        let d = Digest::of_bytes(&c.manifest);
        if r == "v1" || r == d.as_str() {
            return respond(
                w,
                200,
                &[
                    (
                        "Content-Type",
                        "application/vnd.oci.image.manifest.v1+json".into(),
                    ),
                    ("Docker-Content-Digest", d.to_string()),
                ],
                &c.manifest,
                head,
            );
        }
        return respond(
            w,
            404,
            &[],
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            head,
        );
    }
    if let Some(d) = target.strip_prefix("/v2/app/relative/") {
        return match c.blobs.get(d) {
            Some(b) => respond(w, 200, &[], b, head),
            None => respond(w, 404, &[], b"", head),
        };
    }
    if let Some(d) = target.strip_prefix("/v2/app/blobs/") {
        // a relative redirect (same origin, so still authenticated) for the config, an
        // absolute one to the storage host for layers
        if c.blobs.get(d).is_some_and(|b| b.len() < 2000) {
            return respond(
                w,
                307,
                &[("Location", format!("../relative/{d}"))],
                b"",
                head,
            );
        }
        return respond(
            w,
            307,
            &[("Location", format!("http://{}/blob/{d}?sig=abc", c.storage))],
            b"",
            head,
        );
    }
    respond(w, 404, &[], b"", head)
}

fn start(mode: Mode, corrupt: bool) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ls = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let storage = ls.local_addr().unwrap().to_string();
    let payload = noise(50_000, 3);
    let lay = layer(&tar_of(&[E::File("payload", &payload, 0o644)]), MT_GZIP);
    let cfg = config_json("amd64", "", std::slice::from_ref(&lay));
    let (cd, ld) = (Digest::of_bytes(&cfg), Digest::of_bytes(&lay.blob));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cfg.len()},
        "layers": [{"mediaType": MT_GZIP, "digest": ld.to_string(), "size": lay.blob.len()}],
    }))
    .unwrap();
    let mut blob = lay.blob.clone();
    if corrupt {
        let n = blob.len();
        blob[n / 2] ^= 0xff;
    }
    let mut blobs = HashMap::new();
    blobs.insert(cd.to_string(), cfg);
    blobs.insert(ld.to_string(), blob);
    let log = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::new(Content {
        mode,
        addr: addr.clone(),
        storage,
        manifest,
        blobs,
        log: log.clone(),
    });
    serve(l, c.clone(), false);
    serve(ls, c, true);
    Fake {
        addr,
        log,
        config_digest: cd,
    }
}

fn store_for(f: &Fake, t: &TempDir) -> ImageStore {
    let cfg = RegistryConfig::from_json(&format!(
        r#"{{"registries":{{"{}":{{"insecure":true}}}}}}"#,
        f.addr
    ))
    .unwrap();
    ImageStore::open(t.path(), cfg).unwrap()
}

fn creds(u: &str, p: &str) -> Option<Credentials> {
    Some(Credentials::Basic {
        username: u.into(),
        password: p.into(),
    })
}

#[test]
fn bearer_token_with_basic_credentials_and_redirect_without_leaking() {
    let f = start(Mode::Bearer, false);
    let t = TempDir::new("bearer");
    let s = store_for(&f, &t);
    let name = format!("{}/app:v1", f.addr);
    let e = s.pull(&name, &PullOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Unauthorized(_)), "anonymous: {e}");
    let e = s
        .pull(
            &name,
            &PullOptions {
                credentials: creds(USER, "wrong"),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized(_)), "wrong password: {e}");
    assert!(e.to_string().contains("token endpoint"), "{e}");
    let img = s
        .pull(
            &name,
            &PullOptions {
                credentials: creds(USER, PASS),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(img.id, f.config_digest);
    let log = f.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("storage GET /blob/") && l.ends_with("auth=")),
        "{log:#?}"
    );
    assert!(
        !log.iter()
            .any(|l| l.starts_with("storage") && !l.ends_with("auth=")),
        "credentials sent to storage: {log:#?}"
    );
    assert!(log
        .iter()
        .any(|l| l.contains("/v2/app/blobs/") && l.contains("auth=Bearer good-token")));
    // The config came through the relative redirect, on the registry, with the token.
    assert!(
        log.iter().any(|l| l.starts_with(&format!(
            "registry GET /v2/app/relative/{} auth=Bearer good-token",
            f.config_digest
        ))),
        "{log:#?}"
    );
}

#[test]
fn bearer_with_identity_token_and_registry_token() {
    let f = start(Mode::Bearer, false);
    let t = TempDir::new("idtok");
    let s = store_for(&f, &t);
    let name = format!("{}/app:v1", f.addr);
    let cri = Credentials::from_cri("", "", "", REFRESH, "").unwrap();
    s.pull(
        &name,
        &PullOptions {
            credentials: cri,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(f
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("POST /token")));
    let bad = Credentials::from_cri("", "", "", "nope", "").unwrap();
    let t2 = TempDir::new("idtok2");
    let e = store_for(&f, &t2)
        .pull(
            &name,
            &PullOptions {
                credentials: bad,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unauthorized(_)), "{e}");
    // a registry token is sent as is, without the token endpoint
    let t3 = TempDir::new("regtok");
    f.log.lock().unwrap().clear();
    let rt = Credentials::from_cri("", "", "", "", "good-token").unwrap();
    store_for(&f, &t3)
        .pull(
            &name,
            &PullOptions {
                credentials: rt,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!f.log.lock().unwrap().iter().any(|l| l.contains("/token")));
}

#[test]
fn basic_auth_from_creds_and_auth_file() {
    let f = start(Mode::Basic, false);
    let t = TempDir::new("basic");
    let s = store_for(&f, &t);
    let name = format!("{}/app:v1", f.addr);
    let e = s.pull(&name, &PullOptions::default()).unwrap_err();
    assert!(
        matches!(e, Error::Unauthorized(_)) && e.to_string().contains("requires credentials"),
        "{e}"
    );
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    let af = AuthFile::parse(&format!(
        r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        f.addr
    ))
    .unwrap();
    let img = s
        .pull(
            &name,
            &PullOptions {
                auth_file: Some(af),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(img.id, f.config_digest);
    // CRI AuthConfig with the auth field only
    let t2 = TempDir::new("basic2");
    let c = Credentials::from_cri("", "", &auth, "", "").unwrap();
    store_for(&f, &t2)
        .pull(
            &name,
            &PullOptions {
                credentials: c,
                ..Default::default()
            },
        )
        .unwrap();
}

#[test]
fn corrupt_blob_is_a_digest_error_and_nothing_is_kept() {
    let f = start(Mode::Bearer, true);
    let t = TempDir::new("corrupt");
    let s = store_for(&f, &t);
    let e = s
        .pull(
            &format!("{}/app:v1", f.addr),
            &PullOptions {
                credentials: creds(USER, PASS),
                ..Default::default()
            },
        )
        .unwrap_err();
    // the flipped byte breaks gzip's CRC or the digest; either way an error and nothing kept
    assert!(
        matches!(e, Error::DigestMismatch { .. } | Error::BadLayer { .. }),
        "{e}"
    );
    assert!(s.list().unwrap().is_empty());
    assert!(snapshots(t.path()).is_empty());
    let blobs = std::fs::read_dir(t.path().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "no blob kept");
    assert_eq!(
        std::fs::read_dir(t.path().join("ingest")).unwrap().count(),
        0
    );
}
