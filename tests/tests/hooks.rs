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
    // The prestart hooks ran before the user program, poststart after it started.
    let order: Vec<&str> = names.clone();
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(pos("startContainer") < pos("user-program"));
    assert!(pos("poststart") < pos("poststop"));
}

#[test]
fn failing_prestart_hook_fails_create_and_leaves_nothing() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 7"]}]})
    });
    let id = unique("hookfail");
    let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(
        e.contains("createRuntime hook /bin/sh exited with status 7"),
        "{e}"
    );
    assert_eq!(rt.count(), 0);
    let cg = memory_cgroup_of_self().unwrap().join(&id);
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(b.dir.to_str().unwrap()),
        "mounts left behind"
    );
}

#[test]
fn hook_timeout_and_poststop_failure() {
    let rt = Rsrun::new();
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["hooks"] =
            json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]})
    });
    let t = std::time::Instant::now();
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("to")]);
    assert!(e.contains("timed out after 1s"), "{e}");
    assert!(t.elapsed().as_secs() < 25, "the hook was not killed");
    // poststart and poststop failures are logged, not fatal (runtime spec lifecycle).
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| {
        c["hooks"] =
            json!({"poststart": [{"path": "/bin/false"}], "poststop": [{"path": "/bin/false"}]})
    });
    let id = unique("ps");
    rt.ok(&["run", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert_eq!(rt.count(), 0);
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
    b.edit(|c| {
        c["annotations"] = json!({"org.example.big": big});
        // Never reads stdin, sleeps past its timeout: must time out, not hang on the pipe.
        c["hooks"] =
            json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    });
    let t = std::time::Instant::now();
    let e = rt.fails(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("big")]);
    assert!(e.contains("timed out"), "{e}");
    assert!(t.elapsed().as_secs() < 25);
    // Exits without reading: fine.
    b.edit(|c| c["hooks"] = json!({"prestart": [{"path": "/bin/true"}]}));
    rt.ok(&["run", "--bundle", b.dir.to_str().unwrap(), &unique("big")]);
}
