//! Rootless containers: a throw-away unprivileged user (useradd, with its own /etc/subuid
//! and /etc/subgid range) runs busybox bundles with `rsrun --rootless` through setpriv;
//! the id mappings, the state under $XDG_RUNTIME_DIR, `exec`, and the cgroup rules are
//! checked, and the user is removed afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use rsrun_tests::*;
use serde_json::{json, Value};

/// useradd/usermod/userdel lock the passwd files: one at a time.
static USERDB: Mutex<()> = Mutex::new(());

struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    /// Start of the 65536 subordinate uids and gids granted to the user.
    sub: u32,
    xdg: TempDir,
}

fn tool(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl TestUser {
    fn new() -> TestUser {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the rootless tests create a user: run them as root"
        );
        for t in ["useradd", "setpriv", "newuidmap", "newgidmap"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{t} is missing (apt-get install passwd util-linux uidmap)"
            );
        }
        let n = unique("u");
        let name = format!("rsrt{}", n.replace('-', "").trim_start_matches('u'));
        let idx: u32 = n.rsplit('-').next().unwrap().parse().unwrap();
        let sub = 1_000_000 + (std::process::id() % 1000) * 1_000_000 + idx * 65536;
        let _g = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        // No automatic subordinate ranges: the test grants its own.
        tool(Command::new("useradd").args([
            "-M",
            "-U",
            "-s",
            "/bin/sh",
            "-K",
            "SUB_UID_COUNT=0",
            "-K",
            "SUB_GID_COUNT=0",
            &name,
        ]));
        let range = format!("{sub}-{}", sub + 65535);
        tool(Command::new("usermod").args([
            "--add-subuids",
            &range,
            "--add-subgids",
            &range,
            &name,
        ]));
        let uid: u32 = tool(Command::new("id").args(["-u", &name]))
            .parse()
            .unwrap();
        let gid: u32 = tool(Command::new("id").args(["-g", &name]))
            .parse()
            .unwrap();
        let xdg = TempDir::new("xdg");
        chown(xdg.path(), uid, gid);
        TestUser {
            name,
            uid,
            gid,
            sub,
            xdg,
        }
    }

    /// `rsrun ARGS` as this user, with its XDG_RUNTIME_DIR, in `cwd`. stdout and stderr
    /// go to files, not pipes: a detached container keeps them open.
    fn rsrun(&self, cwd: &Path, args: &[&str]) -> Output {
        let out = self.xdg.path().join(unique(".out"));
        let err = self.xdg.path().join(unique(".err"));
        let status = Command::new("setpriv")
            .args([
                "--reuid",
                &self.uid.to_string(),
                "--regid",
                &self.gid.to_string(),
                "--clear-groups",
                "--",
            ])
            .arg(rsrun_bin())
            .args(args)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        let o = Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(err);
        o
    }

    fn ok(&self, cwd: &Path, args: &[&str]) -> String {
        let o = self.rsrun(cwd, args);
        assert!(
            o.status.success(),
            "rsrun {args:?} as {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, cwd: &Path, args: &[&str]) -> String {
        let o = self.rsrun(cwd, args);
        assert!(
            !o.status.success(),
            "rsrun {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn state_root(&self) -> PathBuf {
        self.xdg.path().join("rsrun")
    }

    /// A busybox bundle with the user's own `rsrun spec --rootless` config.
    fn bundle(&self, args: &[&str]) -> Bundle {
        let mut b = Bundle::new(args);
        std::fs::remove_file(b.dir.join("config.json")).unwrap();
        chown(&b.dir, self.uid, self.gid);
        self.ok(&b.dir, &["spec", "--rootless"]);
        b.config =
            serde_json::from_slice(&std::fs::read(b.dir.join("config.json")).unwrap()).unwrap();
        b.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
        });
        b
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Containers a failed test left behind, then the user and its ranges.
        if let Ok(rd) = std::fs::read_dir(self.state_root()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.rsrun(Path::new("/"), &["delete", "--force", &id]);
            }
        }
        let _g = USERDB.lock().unwrap_or_else(|e| e.into_inner());
        let range = format!("{}-{}", self.sub, self.sub + 65535);
        let _ = Command::new("usermod")
            .args(["--del-subuids", &range, "--del-subgids", &range, &self.name])
            .output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn chown(p: &Path, uid: u32, gid: u32) {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
}

fn map_lines(s: &str) -> Vec<Vec<String>> {
    s.lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn ns(pid: i64, n: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{n}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn rootless_run_with_the_users_own_ids() {
    let u = TestUser::new();
    let b = u.bundle(&[
        "sh",
        "-c",
        "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups",
    ]);
    // spec --rootless maps container root to the calling user.
    assert_eq!(
        b.config["linux"]["uidMappings"],
        json!([{"containerID": 0, "hostID": u.uid, "size": 1}])
    );
    assert_eq!(
        b.config["linux"]["gidMappings"],
        json!([{"containerID": 0, "hostID": u.gid, "size": 1}])
    );
    let id = unique("rl");
    let out = u.ok(&b.dir, &["--rootless", "run", &id]);
    let l = map_lines(&out);
    assert_eq!(l[0], ["0"], "{out}");
    assert_eq!(l[1], ["0"], "{out}");
    assert_eq!(l[2], ["0", &u.uid.to_string(), "1"], "{out}");
    assert_eq!(l[3], ["0", &u.gid.to_string(), "1"], "{out}");
    // An unprivileged writer of gid_map had to deny setgroups.
    assert_eq!(l[4], ["deny"], "{out}");
    // A foreground run removes its state (under $XDG_RUNTIME_DIR/rsrun).
    assert!(u.state_root().is_dir());
    assert_eq!(std::fs::read_dir(u.state_root()).unwrap().count(), 0);
}

/// As rootless Podman runs the runtime: root in a user namespace of the user's (`unshare -r`),
/// XDG_RUNTIME_DIR set, no $USER, no --root. The state is under $XDG_RUNTIME_DIR/rsrun (as
/// runc's is under $XDG_RUNTIME_DIR/runc), where the user's containers are: /run/rsrun is the
/// node's root's.
/// CVE-2023-25809: with the host's /sys bound read-only (spec --rootless), a cgroup
/// delegated to the user (here a directory of the pids hierarchy, or of the v2 one, chowned
/// to it) must not be writable from the container: the kernel answers EROFS, nothing is made.
#[test]
fn rootless_sys_fs_cgroup_is_read_only_all_the_way_down() {
    let u = TestUser::new();
    let base = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .expect("a pids or v2 cgroup hierarchy");
    let name = unique("rl-deleg");
    let deleg = base.join(&name);
    std::fs::create_dir(&deleg).unwrap();
    chown(&deleg, u.uid, u.gid);
    let inside = deleg.join("escape");
    let b = u.bundle(&[
        "sh",
        "-c",
        &format!("mkdir {} 2>&1; echo done", inside.display()),
    ]);
    let out = u.ok(&b.dir, &["--rootless", "run", &unique("rlcg")]);
    let made = inside.exists();
    if made {
        let _ = std::fs::remove_dir(&inside);
    }
    let _ = std::fs::remove_dir(&deleg);
    assert!(
        !made,
        "the container made a cgroup in the user's delegated one: {out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");
}

#[test]
fn root_in_a_user_namespace_keeps_its_state_under_xdg_runtime_dir() {
    let u = TestUser::new();
    let b = u.bundle(&["sleep", "1000"]);
    let id = unique("rlx");
    u.ok(&b.dir, &["run", "-d", &id]);
    let o = Command::new("setpriv")
        .args([
            "--reuid",
            &u.uid.to_string(),
            "--regid",
            &u.gid.to_string(),
            "--clear-groups",
            "--",
            "unshare",
            "-r",
            "--",
        ])
        .arg(rsrun_bin())
        .args(["list", "-q"])
        .env("XDG_RUNTIME_DIR", u.xdg.path())
        .env_remove("USER")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success() && out.lines().any(|l| l == id),
        "list as root in the user's namespace: {out}{err}"
    );
    u.ok(&b.dir, &["delete", "--force", &id]);
}

/// Rootless with the systemd driver, as rootless Podman asks by default (cgroupsPath
/// `slice:prefix:name`): without limits the container runs in the caller's cgroup (the user
/// manager is not driven); with limits, a clear error.
#[test]
fn rootless_systemd_driver_without_limits_runs_in_the_callers_cgroup() {
    let u = TestUser::new();
    let mut b = u.bundle(&["sleep", "1000"]);
    b.edit(|c| c["linux"]["cgroupsPath"] = json!("user.slice:libpod:rootless-systemd"));
    let id = unique("rls");
    u.ok(&b.dir, &["--systemd-cgroup", "run", "-d", &id]);
    let st: Value = serde_json::from_str(&u.ok(&b.dir, &["state", &id])).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let its = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(its, mine, "not in the caller's cgroup");
    u.ok(&b.dir, &["delete", "--force", &id]);
    b.edit(|c| c["linux"]["resources"] = json!({"pids": {"limit": 10}}));
    let e = u.fails(&b.dir, &["--systemd-cgroup", "run", "-d", &unique("rls")]);
    assert!(
        e.contains("--systemd-cgroup") && e.contains("limits"),
        "{e}"
    );
}

#[test]
fn rootless_detached_state_and_exec() {
    let u = TestUser::new();
    let b = u.bundle(&["sleep", "1000"]);
    let id = unique("rl");
    // No --rootless: `auto`, since the user is not root.
    u.ok(&b.dir, &["run", "-d", &id]);
    let state = u.state_root().join(&id).join("state.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    // No cgroup of its own (this user cannot create one) and no limits: ignored.
    assert_eq!(saved["cgroup_paths"], json!([]));
    let st: Value = serde_json::from_str(&u.ok(&b.dir, &["state", &id])).unwrap();
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap();
    let list = u.ok(&b.dir, &["list"]);
    assert!(list.contains(&id) && list.contains(&u.name), "{list}");
    // The init runs as the user on the host.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1).unwrap(),
        u.uid.to_string()
    );
    // exec as the same user: it joins the user namespace first, then the others.
    let out = u.ok(
        &b.dir,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "id -u; for n in user mnt pid uts ipc; do readlink /proc/self/ns/$n; done; cat /proc/1/cmdline",
        ],
    );
    let l: Vec<&str> = out.lines().collect();
    assert_eq!(l[0], "0", "{out}");
    let want: Vec<String> = ["user", "mnt", "pid", "uts", "ipc"]
        .iter()
        .map(|n| ns(pid, n))
        .collect();
    assert_eq!(l[1..6].to_vec(), want, "{out}");
    assert_ne!(ns(pid, "user"), ns(std::process::id() as i64, "user"));
    assert_eq!(l[6], "sleep\u{0}1000\u{0}", "{out}");
    let o = u.rsrun(&b.dir, &["exec", &id, "sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9));
    // --all with no cgroup to find the processes in (Podman stops so a container without a
    // PID namespace): the init at least.
    u.ok(&b.dir, &["kill", "--all", &id, "KILL"]);
    wait_until(std::time::Duration::from_secs(60), || {
        let st: Value = serde_json::from_str(&u.ok(&b.dir, &["state", &id])).unwrap();
        st["status"] == "stopped"
    });
    u.ok(&b.dir, &["delete", &id]);
    assert!(!u.state_root().join(&id).exists());
}

#[test]
fn rootless_subordinate_ids_through_newuidmap() {
    let u = TestUser::new();
    let mut b = u.bundle(&["sleep", "1000"]);
    let maps = |host2: u32| {
        json!([{"containerID": 0, "hostID": u.uid, "size": 1},
               {"containerID": 1, "hostID": host2, "size": 65536}])
    };
    b.edit(|c| {
        c["linux"]["uidMappings"] = maps(u.sub);
        c["linux"]["gidMappings"] = maps(u.sub);
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [5]});
    });
    let id = unique("rl");
    u.ok(&b.dir, &["--rootless", "run", "-d", &id]);
    let st: Value = serde_json::from_str(&u.ok(&b.dir, &["state", &id])).unwrap();
    let pid = st["pid"].as_i64().unwrap();
    // Container uid 1000 is subordinate id sub+999 on the host.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), (u.sub + 999).to_string(), "{status}");
    assert_eq!(field("Gid:"), (u.sub + 999).to_string(), "{status}");
    let out = u.ok(
        &b.dir,
        &[
            "exec",
            &id,
            "sh",
            "-c",
            "cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id -G",
        ],
    );
    let l = map_lines(&out);
    assert_eq!(l[0], ["0", &u.uid.to_string(), "1"], "{out}");
    assert_eq!(l[1], ["1", &u.sub.to_string(), "65536"], "{out}");
    assert_eq!(l[2], ["0", &u.gid.to_string(), "1"], "{out}");
    assert_eq!(l[3], ["1", &u.sub.to_string(), "65536"], "{out}");
    // newgidmap leaves setgroups allowed: the additional group was set.
    assert_eq!(l[4], ["allow"], "{out}");
    assert_eq!(l[5], ["1000", "5"], "{out}");
    u.ok(&b.dir, &["delete", "-f", &id]);
    // A range not granted in /etc/subuid is refused by newuidmap, with a clear error.
    b.edit(|c| c["linux"]["uidMappings"] = maps(u.sub + 65536));
    let e = u.fails(&b.dir, &["--rootless", "run", "-d", &unique("rl")]);
    assert!(e.contains("newuidmap") && e.contains("/etc/subuid"), "{e}");
    assert_eq!(std::fs::read_dir(u.state_root()).unwrap().count(), 0);
}

#[test]
fn rootless_cgroup_errors_only_matter_for_limits() {
    let u = TestUser::new();
    let mut b = u.bundle(&["true"]);
    // Not rootless mode: the cgroup this user cannot create is an error.
    let e = u.fails(&b.dir, &["--rootless=false", "run", &unique("rl")]);
    assert!(e.contains("cgroup"), "{e}");
    // Rootless without limits: ignored (devices rules alone are no limits).
    b.edit(|c| {
        c["linux"]["resources"] =
            json!({"devices": [{"allow": false, "access": "rwm"}], "memory": {}})
    });
    u.ok(&b.dir, &["--rootless", "run", &unique("rl")]);
    // Limits that cannot be delegated: an error that says so, and nothing left behind.
    b.edit(|c| c["linux"]["resources"] = json!({"memory": {"limit": 64 << 20}}));
    let e = u.fails(&b.dir, &["--rootless", "run", &unique("rl")]);
    assert!(e.contains("limits") && e.contains("delegated"), "{e}");
    b.edit(|c| c["linux"]["resources"] = json!({"pids": {"limit": 10}}));
    let e = u.fails(&b.dir, &["--rootless", "run", &unique("rl")]);
    assert!(e.contains("limits"), "{e}");
    assert_eq!(std::fs::read_dir(u.state_root()).unwrap().count(), 0);
}
