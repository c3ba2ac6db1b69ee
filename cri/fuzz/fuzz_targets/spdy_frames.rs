//! The SPDY/3.1 frame decoder on arbitrary bytes (what a streaming client sends): it must
//! return frames or an error, never panic, and never take more memory than its limits allow.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/spdy.rs"]
mod spdy;

fuzz_target!(|data: &[u8]| {
    // Small limits, so that oversized frames and header blocks are exercised too.
    let mut d = spdy::Decoder::new(64 * 1024, 64 * 1024);
    // Fed in two pieces at a data-chosen split, as a socket would deliver them.
    let cut = data.first().map(|b| *b as usize % (data.len() + 1)).unwrap_or(0);
    let mut buf = bytes::BytesMut::new();
    for part in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(part);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
