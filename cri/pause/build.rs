//! A freestanding executable: no C runtime, no libc, no dynamic loader, not PIE.
fn main() {
    for a in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bin=rsrun-pause={a}");
    }
}
