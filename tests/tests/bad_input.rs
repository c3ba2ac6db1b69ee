//! Bad input: a one-line error that names the field or path, a non-zero exit, and nothing
//! left behind.

use rsrun_tests::*;
use serde_json::json;

type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn create_err(rt: &Rsrun, b: &Bundle, id: &str) -> String {
    let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
    assert_eq!(
        e.trim_end().lines().count(),
        1,
        "error is not one line: {e}"
    );
    assert_eq!(rt.count(), 0, "state left behind after: {e}");
    e
}

#[test]
fn malformed_and_truncated_config() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["true"]);
    let cfg = b.dir.join("config.json");
    let full = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, &full[..full.len() / 2]).unwrap();
    let e = create_err(&rt, &b, &unique("bad"));
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(&cfg, "not json").unwrap();
    let e = create_err(&rt, &b, &unique("bad"));
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn wrong_types_name_the_field() {
    let rt = Rsrun::new();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "process.user.uid",
            Box::new(|c| c["process"]["user"]["uid"] = json!("root")),
        ),
        (
            "process.args",
            Box::new(|c| c["process"]["args"] = json!("sh")),
        ),
        (
            "linux.namespaces",
            Box::new(|c| c["linux"]["namespaces"] = json!([{"type": "nope"}])),
        ),
        (
            "process.capabilities.bounding",
            Box::new(|c| c["process"]["capabilities"]["bounding"] = json!(["CAP_NOT_A_CAP"])),
        ),
        (
            "mounts",
            Box::new(|c| c["mounts"] = json!({"destination": "/x"})),
        ),
    ];
    for (field, f) in cases {
        let mut b = Bundle::new(&["true"]);
        b.edit(|c| f(c));
        let e = create_err(&rt, &b, &unique("bad"));
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn semantic_errors() {
    let rt = Rsrun::new();
    let cases: Vec<(&str, Edit)> = vec![
        ("ociVersion", Box::new(|c| c["ociVersion"] = json!("2.0.0"))),
        (
            "process.args",
            Box::new(|c| c["process"]["args"] = json!([])),
        ),
        (
            "root.path",
            Box::new(|c| c["root"]["path"] = json!("missing-rootfs")),
        ),
        (
            "process.cwd",
            Box::new(|c| c["process"]["cwd"] = json!("relative")),
        ),
        (
            "hostname",
            Box::new(|c| {
                c["hostname"] = json!("h");
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|n| n["type"] != "uts");
            }),
        ),
        (
            "uidMappings",
            Box::new(|c| {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "user"}))
            }),
        ),
        (
            "rootfsPropagation",
            Box::new(|c| c["linux"]["rootfsPropagation"] = json!("sideways")),
        ),
        // Refused at create as at exec, never silently run without.
        (
            "process.selinuxLabel",
            Box::new(|c| c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0")),
        ),
    ];
    for (field, f) in cases {
        let mut b = Bundle::new(&["true"]);
        b.edit(|c| f(c));
        let e = create_err(&rt, &b, &unique("bad"));
        assert!(e.contains(field), "{field}: {e}");
    }
    // Any 1.x version is accepted.
    let mut b = Bundle::new(&["true"]);
    b.edit(|c| c["ociVersion"] = json!("1.0.2-dev"));
    rt.output(&b);
}

#[test]
fn bad_ids_and_missing_bundle() {
    let rt = Rsrun::new();
    let b = Bundle::new(&["true"]);
    for id in ["a/b", "..", ".", "x y"] {
        let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), id]);
        assert!(e.contains("container ID"), "{id}: {e}");
    }
    let e = rt.fails(&["create", "--bundle", "/nonexistent/bundle", &unique("x")]);
    assert!(e.contains("/nonexistent/bundle/config.json"), "{e}");
    assert_eq!(rt.count(), 0);
    let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap()]);
    assert!(e.contains("container ID required"), "{e}");
    let id = unique("dup");
    rt.ok(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    let e = rt.fails(&["create", "--bundle", b.dir.to_str().unwrap(), &id]);
    assert!(e.contains("already exists"), "{e}");
    rt.ok(&["delete", "-f", &id]);
    let e = rt.fails(&["frobnicate"]);
    assert!(e.contains("unknown command"), "{e}");
}
