//! Fuzzes config.json loading and validation (issue 8: no input may panic): parse_spec,
//! the semantic checks of `validate` against a real bundle directory, cgroup path
//! resolution, the device-rule and limit checks. Any panic (overflow checks are on in
//! fuzz builds) is a finding.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A bundle directory with an empty rootfs, made once per fuzzing process.
fn bundle() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("rsrun-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(d.join("rootfs")).unwrap();
        d
    })
}

const MOUNTINFO: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
31 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";

fuzz_target!(|data: &[u8]| {
    let cfg = bundle().join("config.json");
    let Ok(spec) = rsrun::config::parse_spec(data, &cfg) else {
        return;
    };
    let _ = rsrun::config::validate(&spec, bundle(), &cfg);
    let linux = spec.linux().as_ref();
    let hs = rsrun::cgroups::parse_mountinfo(MOUNTINFO);
    let _ = rsrun::cgroups::paths_for(linux.and_then(|l| l.cgroups_path().as_deref()), "fuzz", &hs);
    let res = linux.and_then(|l| l.resources().as_ref());
    let _ = rsrun::lifecycle::has_limits(res);
    if let Some(r) = res {
        if let Ok(rules) = rsrun::cgroups::devices::rules(r.devices().as_deref().unwrap_or(&[])) {
            let _ = rsrun::cgroups::devices::program(&rules);
        }
    }
});
