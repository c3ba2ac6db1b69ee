//! Lifecycle hooks: order, namespaces, state on stdin, failures, timeouts.

use rsrun_tests::*;
use serde_json::{json, Value};

/// A hook that appends "NAME <status> <pid> <mnt ns>" to LOG, from its stdin state.
fn hook(log: &std::path::Path, name: &str) -> Value {
    let script = format!(
        "read -r s; st=$(echo \"$s\" | sed -n 's/.*\"status\":\"\\([a-z]*\\)\".*/\\1/p'); \
         pid=$(echo \"$s\" | sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); \
         echo {name} $st $pid $(readlink /proc/self/ns/mnt) >> {}",
        log.display()
    );
    json!({"path": "/bin/sh", "args": ["sh", "-c", script]})
}

#[test]
fn all_hooks_in_order_with_state() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sh", "-c", "echo user-program >> /hooklog/log"]);
    let logdir = TempDir::new("hooklog");
    let log = logdir.path().join("log");
    // The in-container hooks (createContainer before pivot_root: host paths; startContainer
    // after: container paths) log to the same file through a bind mount.
    std::fs::create_dir_all(b.rootfs().join("hooklog")).unwrap();
    let inner_log = std::path::Path::new("/hooklog/log");
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({"destination": "/hooklog", "type": "bind", "source": logdir.path(), "options": ["rbind"]}));
        c["hooks"] = json!({
            "prestart": [hook(&log, "prestart")],
            "createRuntime": [hook(&log, "createRuntime")],
            "createContainer": [hook(&log, "createContainer")],
            "startContainer": [hook(inner_log, "startContainer")],
            "poststart": [hook(&log, "poststart")],
            "poststop": [hook(&log, "poststop")],
        });
    });
    let id = unique("hooks");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let pid = rt.state(&id)["pid"].as_i64().unwrap();
    rt.ok(&["start", &id]);
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    let names: Vec<&str> = lines.iter().map(|l| l[0]).collect();
    let hooks_only: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| *n != "user-program")
        .collect();
    assert_eq!(
        hooks_only,
        vec![
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ],
        "{text}"
    );
    let get = |n: &str| {
        lines
            .iter()
            .find(|l| l[0] == n)
            .unwrap_or_else(|| panic!("{n} did not run: {text}"))
            .clone()
    };
    for (n, st) in [
        // prestart (deprecated) keeps the status of its old place in the lifecycle.
        ("prestart", "created"),
        ("createRuntime", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let l = get(n);
        assert_eq!(l[1], st, "{n}: {text}");
        if n != "poststop" {
            assert_eq!(l[2], pid.to_string(), "{n}: {text}");
        }
    }
    // Runtime-namespace hooks see the host's mount namespace; container hooks the container's.
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(get("prestart")[3], host_mnt);
    assert_eq!(get("createRuntime")[3], host_mnt);
    assert_eq!(get("poststart")[3], host_mnt);
    assert_ne!(get("createContainer")[3], host_mnt);
    assert_ne!(get("startContainer")[3], host_mnt);
    // Every hook up to startContainer ran before the user program, poststop after it. (Where
    // poststart lands against the program's own line is a race: poststart runs once the
    // program has been exec'd, which says nothing of when it writes.)
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} missing: {text}"))
    };
    for n in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
    ] {
        assert!(pos(n) < pos("user-program"), "{n}: {text}");
    }
    assert!(pos("user-program") < pos("poststop"), "{text}");
}

#[test]
fn failing_prestart_hook_fails_create_and_leaves_nothing() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 7"]}]})
    });
    // The createRuntime hooks run after the rootfs mounts. They are made in the init's mount
    // namespace, where they die with it, unless they propagate: the bundle is made a shared
    // mount here, so a runtime that did not make the container's mounts slaves would leak
    // them into this namespace (under the bundle's rootfs).
    let _shared = SharedMount::new(&b.dir);
    let id = unique("hookfail");
    let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(
        e.contains("createRuntime hook /bin/sh exited with status 7"),
        "{e}"
    );
    assert_eq!(rt.count(), 0);
    let cg = memory_cgroup_of_self().unwrap().join(&id);
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    assert_eq!(
        mounts_under(&b.dir),
        Vec::<String>::new(),
        "the container's mounts leaked into the host's namespace"
    );
    assert_eq!(mounts_under(rt.root.path()), Vec::<String>::new());
    assert!(
        std::fs::read_dir(b.rootfs().join("proc"))
            .unwrap()
            .next()
            .is_none(),
        "the bundle's rootfs/proc is not empty"
    );
}

/// A hook that sleeps past its 1 s timeout: "sleep D" with a D unique to this call, so that
/// its process can be found afterwards.
fn sleeping_hook(path: &str, n: usize) -> (Value, String) {
    let d = format!("20.{}{n}", std::process::id());
    (json!({"path": path, "args": ["sleep", d], "timeout": 1}), d)
}

#[test]
fn hook_timeouts_kill_the_hook() {
    let rt = Rsrun::new();
    // (kind, the hook's path: runtime-namespace hooks and createContainer resolve it on the
    // host, startContainer in the container)
    let kinds = [
        ("prestart", "/bin/sleep"),
        ("createRuntime", "/bin/sleep"),
        ("createContainer", "/bin/sleep"),
        ("startContainer", "/bin/sleep"),
        ("poststart", "/bin/sleep"),
        ("poststop", "/bin/sleep"),
    ];
    for (n, (kind, path)) in kinds.into_iter().enumerate() {
        let mut b = Bundle::new(&["sleep", "100"]);
        let (hook, d) = sleeping_hook(path, n);
        b.edit(|c| c["hooks"] = json!({ kind: [hook] }));
        let id = unique("to");
        let bundle = b.dir.to_str().unwrap();
        let want = format!("{kind} hook {path} timed out after 1s");
        // Where the timeout shows: the command that runs the hook fails, or (poststart,
        // poststop) logs it and succeeds.
        let stderr = match kind {
            "prestart" | "createRuntime" | "createContainer" => {
                let e = rt.fails(&["create", "--bundle", bundle, &id]);
                assert_eq!(rt.count(), 0, "{kind}: state left after {e}");
                e
            }
            "startContainer" => {
                rt.ok(&["create", "--bundle", bundle, &id]);
                let e = rt.fails(&["start", &id]);
                rt.ok(&["delete", "-f", &id]);
                e
            }
            "poststart" => {
                rt.ok(&["create", "--bundle", bundle, &id]);
                let o = rt.run(&["start", &id]);
                assert!(o.status.success(), "{kind}: start failed");
                assert_eq!(rt.status(&id), "running", "{kind}");
                rt.ok(&["delete", "-f", &id]);
                String::from_utf8_lossy(&o.stderr).into_owned()
            }
            _ => {
                rt.ok(&["run", "-d", "--bundle", bundle, &id]);
                let o = rt.run(&["delete", "-f", &id]);
                assert!(o.status.success(), "{kind}: delete failed");
                assert_eq!(rt.count(), 0, "{kind}");
                String::from_utf8_lossy(&o.stderr).into_owned()
            }
        };
        assert!(
            stderr.contains(&want),
            "{kind}: want {want:?} in {stderr:?}"
        );
        // The hook itself was killed at its timeout, not left to run on.
        let left = live_processes(&["sleep", &d]);
        assert!(left.is_empty(), "{kind}: hook process {left:?} still alive");
    }
}

#[test]
fn poststart_and_poststop_failures_are_logged_not_fatal() {
    // runtime-spec lifecycle: a failing poststart or poststop hook is logged (a warning) and
    // the operation carries on.
    let rt = Rsrun::new();
    let logdir = TempDir::new("hooklog");
    let log = logdir.path().join("log");
    let failing = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name}-ran >> {}; exit 3", log.display())]});
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["hooks"] = json!({"poststart": [failing("poststart")], "poststop": [failing("poststop")]})
    });
    let id = unique("ps");
    let o = rt.run(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "run failed: {err}");
    assert_eq!(rt.count(), 0);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "poststart-ran\npoststop-ran\n",
        "the hooks did not both run"
    );
    for kind in ["poststart", "poststop"] {
        assert!(
            err.contains(&format!("{kind} hook /bin/sh exited with status 3")),
            "{kind} failure not logged: {err:?}"
        );
    }
}

#[test]
fn failing_start_container_hook_fails_start() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.edit(|c| c["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]}));
    let id = unique("sc");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let e = rt.fails(&["start", &id]);
    assert!(e.contains("startContainer hook /bin/false"), "{e}");
    rt.wait_status(&id, "stopped");
    rt.ok(&["delete", &id]);
}

#[test]
fn large_state_to_a_hook_that_never_reads_stdin() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    let big = "x".repeat(200_000);
    let (hook, d) = sleeping_hook("/bin/sleep", 99);
    b.edit(|c| {
        c["annotations"] = json!({"org.example.big": big});
        // Never reads stdin, sleeps past its timeout: must time out, not hang on the pipe.
        c["hooks"] = json!({"prestart": [hook.clone()]});
    });
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("big")]);
    assert!(
        e.contains("prestart hook /bin/sleep timed out after 1s"),
        "{e}"
    );
    assert_eq!(live_processes(&["sleep", &d]), Vec::<i32>::new());
    // Exits without reading: fine.
    b.edit(|c| c["hooks"] = json!({"prestart": [{"path": "/bin/true"}]}));
    rt.ok(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("big")]);
}

#[test]
fn create_container_hooks_run_in_the_containers_cgroup() {
    // The init sets up its rootfs while the runtime puts it in its cgroups; the hooks it
    // runs (and everything they fork) must already be in them.
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    let logdir = TempDir::new("hookcg");
    let log = logdir.path().join("cgroup");
    let script = format!("cat /proc/self/cgroup > {}", log.display());
    b.edit(|c| {
        c["hooks"] = json!({
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", script]}],
        })
    });
    let id = unique("hookcg");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let text = std::fs::read_to_string(&log).unwrap();
    rt.ok(&["delete", "--force", &id]);
    let memory = text
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|x| x == "memory"))
        })
        .unwrap_or_else(|| panic!("no memory line in {text}"));
    assert!(
        memory.ends_with(&format!("/{id}")),
        "the createContainer hook ran outside the container's cgroup: {memory}"
    );
}
