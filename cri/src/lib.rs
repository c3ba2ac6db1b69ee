//! The parts of rsrun-cri that stand on their own, as a library: the SPDY/3.1 framing of the
//! streaming server (also what the fuzz targets in cri/fuzz link).

pub mod spdy;
