//! Helpers for the end-to-end tests: busybox bundles built from Debian's busybox-static,
//! and a driver for the built `rsrun` binary with a private state root per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

/// The built `rsrun` binary: $RSRUN_BIN, else target/debug/rsrun of this workspace.
pub fn rsrun_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RSRUN_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rsrun");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p rsrun` first",
        p.display()
    );
    p
}

/// The built `rsrun-shim` binary: $RSRUN_SHIM_BIN, else target/debug/rsrun-shim.
pub fn shim_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RSRUN_SHIM_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rsrun-shim");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p rsrun-shim` first",
        p.display()
    );
    p
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
}

/// Polls `done` every 10 ms until it holds or `limit` has passed; whether it held. For
/// waits on the kernel or a peer, bounded by the condition rather than a guess at speed.
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox-static is not installed (apt-get install busybox-static)");
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name for this test process and call.
/// Runs a host command (`argv[0]` with its arguments) and asserts it succeeded.
pub fn run_ok(argv: &[&str]) {
    let st = Command::new(argv[0]).args(&argv[1..]).status().unwrap();
    assert!(st.success(), "{argv:?}: {st}");
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let base = std::env::var("RSRUN_TEST_TMP").unwrap_or_else(|_| "/tmp".into());
        let p = Path::new(&base).join(unique(&format!("rsrun-{prefix}")));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bundle: `dir/rootfs` with busybox and its applet links, `dir/config.json` from
/// `rsrun spec` with terminal off.
pub struct Bundle {
    pub tmp: TempDir,
    pub dir: PathBuf,
    pub config: Value,
}

impl Bundle {
    pub fn new(args: &[&str]) -> Bundle {
        let tmp = TempDir::new("bundle");
        let dir = tmp.path().join("bundle");
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        let list = Command::new(busybox()).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let out = Command::new(rsrun_bin())
            .args(["spec", "--bundle"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsrun spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        let b = Bundle { tmp, dir, config };
        b.save();
        b
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn save(&self) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Changes the config with `f` and saves it.
    pub fn edit(&mut self, f: impl FnOnce(&mut Value)) {
        f(&mut self.config);
        self.save();
    }

    pub fn add_namespace(&mut self, typ: &str, path: Option<&str>) {
        self.edit(|c| {
            let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
            ns.retain(|n| n["type"] != typ);
            match path {
                Some(p) => ns.push(json!({"type": typ, "path": p})),
                None => ns.push(json!({"type": typ})),
            }
        });
    }
}

/// `rsrun-shim` for container `id` of `b` under `rt`'s root, its directory, log and exit file
/// in `dir` (shim/, ctr.log, exit.json), stdin closed; the caller adds flags and runs it.
pub fn shim_command(rt: &Rsrun, dir: &Path, id: &str, b: &Bundle) -> Command {
    let mut c = Command::new(shim_bin());
    c.arg("--id")
        .arg(id)
        .arg("--bundle")
        .arg(&b.dir)
        .arg("--dir")
        .arg(dir.join("shim"))
        .arg("--log-path")
        .arg(dir.join("ctr.log"))
        .arg("--exit-file")
        .arg(dir.join("exit.json"))
        .arg("--root")
        .arg(rt.root.path())
        .stdin(Stdio::null());
    c
}

/// Drives `rsrun` with a private `--root`.
pub struct Rsrun {
    pub root: TempDir,
}

impl Default for Rsrun {
    fn default() -> Self {
        Self::new()
    }
}

impl Rsrun {
    pub fn new() -> Self {
        Rsrun {
            root: TempDir::new("root"),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(rsrun_bin());
        c.arg("--root").arg(self.root.path());
        c
    }

    /// Runs `rsrun ARGS` with stdin closed; returns the output. stdout and stderr go to
    /// files, not pipes: a detached container keeps them open long after rsrun exits.
    pub fn run(&self, args: &[&str]) -> Output {
        let out_p = self.root.path().join(format!(".out-{}", unique("o")));
        let err_p = self.root.path().join(format!(".err-{}", unique("e")));
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_p).unwrap())
            .stderr(std::fs::File::create(&err_p).unwrap())
            .status()
            .unwrap();
        let o = Output {
            status,
            stdout: std::fs::read(&out_p).unwrap_or_default(),
            stderr: std::fs::read(&err_p).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(out_p);
        let _ = std::fs::remove_file(err_p);
        o
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "rsrun {args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "rsrun {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `run` of a bundle in the foreground: (exit code, stdout, stderr).
    pub fn run_bundle(&self, id: &str, b: &Bundle) -> (i32, String, String) {
        let o = self.run(&["run", "--bundle", b.dir.to_str().unwrap(), id]);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Runs the bundle and asserts exit 0; returns stdout.
    pub fn output(&self, b: &Bundle) -> String {
        let id = unique("c");
        let (code, out, err) = self.run_bundle(&id, b);
        assert_eq!(code, 0, "container failed: stdout {out:?} stderr {err:?}");
        out
    }

    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits until the container's status is `want` (bounded; for asynchronous exits).
    pub fn wait_status(&self, id: &str, want: &str) {
        if wait_until(std::time::Duration::from_secs(60), || {
            self.status(id) == want
        }) {
            return;
        }
        panic!(
            "container {id} never reached status {want}: {}",
            self.status(id)
        );
    }

    /// Number of container state directories under this root.
    pub fn count(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        // Dot files are the tests' own; `@cgroups` holds rsrun's cgroup
                        // claims, counted by `claims`.
                        let n = e.file_name().to_string_lossy().into_owned();
                        !n.starts_with('.') && !n.starts_with('@')
                    })
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Rsrun {
    /// Number of cgroup claims (one per container holding a cgroup) under this root.
    pub fn claims(&self) -> usize {
        std::fs::read_dir(self.root.path().join("@cgroups"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Rsrun {
    fn drop(&mut self) {
        // Remove whatever a failed test left behind.
        if let Ok(rd) = std::fs::read_dir(self.root.path()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !id.starts_with('.') {
                    let _ = self.run(&["delete", "--force", &id]);
                }
            }
        }
    }
}

/// The cgroup directory this process's memory controller would give a relative path.
pub fn memory_cgroup_of_self() -> Option<PathBuf> {
    let s = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for l in s.lines() {
        let parts: Vec<&str> = l.splitn(3, ':').collect();
        if parts.len() == 3 && parts[1].split(',').any(|c| c == "memory") {
            return Some(Path::new("/sys/fs/cgroup/memory").join(parts[2].trim_start_matches('/')));
        }
        if parts.len() == 3
            && parts[0] == "0"
            && parts[1].is_empty()
            && !Path::new("/sys/fs/cgroup/memory").exists()
        {
            return Some(Path::new("/sys/fs/cgroup").join(parts[2].trim_start_matches('/')));
        }
    }
    None
}

/// A directory bind-mounted onto itself and made shared, in this process's mount namespace:
/// a copy of this namespace (a container's) then holds a peer of it, and whatever is mounted
/// under it there propagates back here unless the runtime cuts the propagation (rslave).
/// That is the host setup through which a runtime's mounts could leak; this host's own `/`
/// is private, so without it nothing could ever leak and a leak check could not fail.
/// Lazily unmounted, with everything under it, on drop.
pub struct SharedMount(PathBuf);

impl SharedMount {
    pub fn new(dir: &Path) -> SharedMount {
        let d = dir.to_str().unwrap();
        for args in [vec!["--bind", d, d], vec!["--make-shared", d]] {
            let st = Command::new("mount").args(&args).status().unwrap();
            assert!(st.success(), "mount {args:?}");
        }
        SharedMount(dir.to_path_buf())
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The mount points in this process's mount namespace strictly under `dir`, and `dir` itself
/// when it is mounted more than once (a SharedMount of it counts once).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_str().unwrap().trim_end_matches('/');
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .collect();
    let mut out: Vec<String> = points
        .iter()
        .filter(|p| p.starts_with(&format!("{d}/")))
        .cloned()
        .collect();
    let own = points.iter().filter(|p| p.as_str() == d).count();
    if own > 1 {
        out.push(format!("{d} (mounted {own} times)"));
    }
    out
}

/// Live (not zombie) processes whose command line is exactly `argv`.
pub fn live_processes(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(e.path().join("cmdline")).ok().as_deref() != Some(&want[..]) {
            continue;
        }
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie {
            out.push(pid);
        }
    }
    out
}

/// A loop device over an 8 MiB file of 7s in `tmp` (named `name`), detached on drop.
pub struct LoopDevice {
    pub path: String,
    pub major: i64,
    pub minor: i64,
}

impl LoopDevice {
    pub fn new(tmp: &TempDir, name: &str) -> LoopDevice {
        use std::os::unix::fs::MetadataExt;
        let _ = Command::new("modprobe").arg("loop").status();
        let img = tmp.path().join(name);
        std::fs::write(&img, vec![7u8; 8 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let rdev = std::fs::metadata(&path).unwrap().rdev();
        LoopDevice {
            path,
            major: libc::major(rdev) as i64,
            minor: libc::minor(rdev) as i64,
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}
