//! What the rsrun-cri integration tests share: the built server started on a socket of its
//! own (killed, its mounts and files removed, when dropped), a client, a pod config that needs
//! no image and no pause (host network, PID namespace per container).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rsrun_cri::api;
use rsrun_cri::api::runtime_service_client::RuntimeServiceClient;

pub struct Server {
    pub child: std::process::Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub name: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pod's pinned namespaces, if the test failed before removing it.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            for l in m.lines() {
                if let Some(p) = l
                    .split(' ')
                    .nth(4)
                    .filter(|p| p.starts_with(self.dir.to_str().unwrap()))
                {
                    let _ = nix_umount(p);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nix_umount(p: &str) -> std::io::Result<()> {
    std::process::Command::new("umount")
        .arg("-l")
        .arg(p)
        .status()
        .map(|_| ())
}

pub type Client = RuntimeServiceClient<tonic::transport::Channel>;

fn spawn(dir: &Path, sock: &Path, name: &str) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cri.log"))
        .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rsrun-cri"));
    let config = dir.join("config.toml");
    if config.exists() {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--cgroup-parent")
        .arg(format!("rsrun-cri-{name}-test"))
        .arg("--log-level")
        .arg("warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn wait_socket(sock: &Path) {
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the built rsrun-cri with root, state and socket under a temp dir named after `name`.
pub async fn start(name: &str) -> Server {
    start_with(name, "").await
}

/// As `start`, with `config` as its config file (TOML) when not empty.
pub async fn start_with(name: &str, config: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("rsrun-cri-{name}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("net.d")).unwrap();
    if !config.is_empty() {
        std::fs::write(dir.join("config.toml"), config).unwrap();
    }
    let sock = dir.join("cri.sock");
    let child = spawn(&dir, &sock, name);
    wait_socket(&sock).await;
    Server {
        child,
        dir,
        sock,
        name: name.to_string(),
    }
}

impl Server {
    /// Kills the server (SIGKILL) and starts it again on the same dirs.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
        self.child = spawn(&self.dir, &self.sock, &self.name);
        wait_socket(&self.sock).await;
    }
}

pub async fn client(sock: &Path) -> Client {
    RuntimeServiceClient::new(channel(sock).await)
}

pub async fn image_client(
    sock: &Path,
) -> rsrun_cri::api::image_service_client::ImageServiceClient<tonic::transport::Channel> {
    rsrun_cri::api::image_service_client::ImageServiceClient::new(channel(sock).await)
}

async fn channel(sock: &Path) -> tonic::transport::Channel {
    let p = sock.to_path_buf();
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .unwrap();
    ch
}

/// A host-network pod without a shared PID namespace: no image, no pause.
pub fn host_pod(name: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            namespace: "t".into(),
            uid: format!("{name}-uid"),
            attempt: 0,
        }),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}
