//! rsrun-cri: the CRI v1 gRPC server (tonic, unix socket) that a kubelet drives: pod
//! sandboxes, containers through rsrun-shim, images through the image store, CNI networking,
//! the streaming server, and state that survives restarts (docs/cri.md).

use rsrun_cri::api;
mod cdi;
mod config;
mod container;
mod deadline;
mod error;
mod events;
mod image_service;
mod metrics;
mod network;
mod recover;
mod runtime_service;
mod sandbox;
mod store;
mod streaming;
mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use config::{Opts, USAGE};

fn main() -> std::process::ExitCode {
    let o = match config::load(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rsrun-cri: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&o.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colours only on a terminal: a log file or journald gets plain text
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Files keep the modes asked for (containers' rootfs dirs must be 0755): the usual
    // umask; the socket is made private on its own (bind).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rsrun-cri: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(o)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("rsrun-cri: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The systemd cgroup driver needs systemd as PID 1 (the runtime asks it for each pause's
/// and container's scope) and the unified cgroup v2 hierarchy (where the scopes are): on a
/// host without them the server started and every pod's start failed.
fn check_systemd_host() -> Result<()> {
    let hs =
        rsrun::cgroups::hierarchies().context("cgroup_driver \"systemd\": the host's cgroups")?;
    if !rsrun::cgroups::is_unified(&hs) {
        anyhow::bail!("cgroup_driver \"systemd\": this host mounts cgroup v1 controllers; the systemd driver needs the unified cgroup v2 hierarchy (use \"cgroupfs\")");
    }
    // sd_booted(3)'s test.
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        anyhow::bail!("cgroup_driver \"systemd\": systemd is not running as PID 1 (no /run/systemd/system; use \"cgroupfs\")");
    }
    Ok(())
}

/// An exclusive flock on DIR/lock, or an error naming the flag and the dir another server
/// holds. A predecessor just killed releases it as it exits: waited for, a few seconds at most.
async fn lock_dir(flag: &str, dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    for _ in 0..50 {
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) => f = back,
            Err((_, e)) => bail!("lock {}: {e}", path.display()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!(
        "{flag} {}: another rsrun-cri is using it (it holds {})",
        dir.display(),
        path.display()
    )
}

async fn serve(o: Opts) -> Result<()> {
    use api::image_service_server::ImageServiceServer;
    use api::runtime_service_server::RuntimeServiceServer;

    let registry = match &o.registry_config {
        Some(p) => rsrun_image::RegistryConfig::load(p)
            .with_context(|| format!("--registry-config {}", p.display()))?,
        None => rsrun_image::RegistryConfig::default(),
    };
    if o.systemd_cgroup {
        check_systemd_host()?;
    }
    for d in [&o.root, &o.state] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    // One server per root: recovery removes what no record names, which would be another
    // live server's objects. Held until the process ends (close-on-exec: shims do not keep it).
    let _root_lock = lock_dir("--root", &o.root).await?;
    // And per state dir: its start-up would take another server's files there for its own
    // leftovers (the bundles of containers created but not started, the console sockets of
    // terminal execs). One dir for both (by device and inode: also through a bind mount) is
    // locked once.
    let dir_id = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok()
    };
    let same = dir_id(&o.root).is_some() && dir_id(&o.root) == dir_id(&o.state);
    let _state_lock = match same {
        true => None,
        false => Some(lock_dir("--state", &o.state).await?),
    };
    let images_root = o.root.join("images");
    let store = rsrun_image::ImageStore::open(&images_root, registry)
        .with_context(|| format!("open the image store at {}", images_root.display()))?;

    if let Some(dir) = o.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // A live server on this socket is not displaced; a stale socket file is replaced.
    if tokio::net::UnixStream::connect(&o.socket).await.is_ok() {
        bail!("another server is listening on {}", o.socket.display());
    }
    let _ = std::fs::remove_file(&o.socket);
    // Mode 0600 from its creation. (The umask is process-wide: set around this one bind,
    // while the server's other threads do not create files yet.)
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(&o.socket);
    nix::sys::stat::umask(old);
    let std_listener = bound.with_context(|| format!("listen on {}", o.socket.display()))?;
    std_listener
        .set_nonblocking(true)
        .context("listening socket")?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .with_context(|| format!("listen on {}", o.socket.display()))?;
    tracing::info!(socket = %o.socket.display(), root = %o.root.display(), state = %o.state.display(), "serving CRI v1");

    let store = Arc::new(store);
    let gc = image_service::Collector::new(store.clone());
    let shim = match o.shim.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("rsrun-shim")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("rsrun-shim")),
    };
    let streaming = streaming::Server::start(
        &o.stream_address,
        o.state.join("streaming"),
        o.stream_idle_timeout,
    )
    .await
    .with_context(|| format!("the streaming server on {}", o.stream_address))?;
    let records = o.root.join("cri");
    let exits = records.join("exits");
    std::fs::create_dir_all(&exits).with_context(|| format!("create {}", exits.display()))?;
    let volumes = records.join("volumes");
    std::fs::create_dir_all(&volumes).with_context(|| format!("create {}", volumes.display()))?;
    // Traversable, not listable (each container's own directory in it is 0700).
    std::fs::set_permissions(
        &volumes,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .with_context(|| format!("chmod {}", volumes.display()))?;
    let pause_rootfs = sandbox::install_pause(&o.state.join("pause"))
        .with_context(|| format!("install rsrun-pause under {}", o.state.display()))?;
    let runtime = runtime_service::Runtime {
        pod_cidr: Default::default(),
        images: store.clone(),
        image_gc: gc.clone(),
        runtime_root: o.state.join("runtime"),
        exits,
        volumes,
        image_volumes: !o.ignore_image_defined_volumes,
        state: o.state.clone(),
        shim,
        cgroup_parent: o.cgroup_parent.clone(),
        systemd_cgroup: o.systemd_cgroup,
        pause_rootfs,
        cpu_samples: Default::default(),
        releases: Default::default(),
        object_locks: Default::default(),
        events: Default::default(),
        streaming,
        rro: rsrun::sys::mount_setattr_supported(),
        log_max_line: o.log_max_line,
        default_caps: o.default_capabilities.clone(),
        cdi_dirs: o.cdi_spec_dirs.clone(),
        pod_net_defaults: o.pod_net_defaults,
        cni: network::Cni {
            conf_dir: o.cni_conf_dir.clone(),
            bin_dirs: o.cni_bin_dirs.clone(),
            running_dir: o.state.join("cni-running"),
        },
        sandboxes: tokio::sync::Mutex::new(
            store::Table::open(records.join("sandboxes"))
                .with_context(|| format!("open {}", records.join("sandboxes").display()))?,
        ),
        containers: tokio::sync::Mutex::new(
            store::Table::open(records.join("containers"))
                .with_context(|| format!("open {}", records.join("containers").display()))?,
        ),
    };
    match runtime.recover().await {
        Ok((0, 0)) => {}
        Ok((pods, containers)) => tracing::warn!(
            pods,
            containers,
            "removed what a killed server left half-made"
        ),
        // Serve anyway: the kubelet's stop and remove calls retry the cleanup.
        Err(e) => tracing::error!("cleaning up after a killed server: {}", e.message()),
    }
    // What a server killed between an image's removal and its sweep left.
    gc.request();
    let runtime = Arc::new(runtime);
    tokio::spawn(events::watch_exits(runtime.clone()));
    let images = image_service::Images {
        store,
        gc,
        progress_timeout: o.pull_progress_timeout,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    };
    let r = tonic::transport::Server::builder()
        .layer(deadline::DeadlineLayer)
        .add_service(RuntimeServiceServer::from_arc(runtime))
        .add_service(ImageServiceServer::new(images))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    let _ = std::fs::remove_file(&o.socket);
    r.context("gRPC server")
}
