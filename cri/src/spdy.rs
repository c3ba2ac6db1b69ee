//! SPDY/3.1 framing: the transport `kubectl exec`, `attach` and `port-forward` speak to a CRI
//! streaming server after an HTTP/1.1 `Upgrade: SPDY/3.1` (written from the SPDY/3 draft
//! and the SPDY/3.1 flow-control additions; Kubernetes' client is moby/spdystream).
//!
//! Two layers:
//! - the codec ([`Encoder`], [`Decoder`], [`Frame`]): every SPDY/3 frame, name/value header
//!   blocks compressed with zlib and the SPDY/3 dictionary, one compression context per
//!   direction for the whole connection (sync-flushed per frame), a configurable maximum
//!   frame size, version 3 only;
//! - the server side of a connection ([`Connection`]) over any `AsyncRead + AsyncWrite`: it
//!   accepts the streams the client opens ([`Stream`], with the SYN_STREAM's headers),
//!   replies, carries data both ways with FIN and RST_STREAM, answers PING, honours GOAWAY,
//!   and does SPDY/3.1 flow control (per-stream and connection windows, initial 64 KiB,
//!   SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATE sent as the application reads).
//!
//! ```ignore
//! let conn = spdy::Connection::server(io);
//! while let Some(mut stream) = conn.accept().await {
//!     let kind = stream.headers().get("streamtype");
//!     stream.reply(&[]).await?;
//!     // stream.read(..) / stream.write(..) / stream.close(), or split() into halves
//!     // that are AsyncRead / AsyncWrite
//! }
//! ```
//!
//! Flow control and Kubernetes: moby/spdystream (every Kubernetes client and proxy) never
//! sends WINDOW_UPDATE or SETTINGS and ignores them, so a sender that waits for windows
//! stalls after 64 KiB. [`FlowControl::Auto`] (the default) therefore enforces the send
//! windows only once the peer has shown it keeps them (it sent a WINDOW_UPDATE or an
//! initial window size); until then the windows are counted but not waited on, and data
//! the peer sends past a full receive buffer pauses reading from the connection (TCP
//! back-pressure, what a Go server does) instead of resetting the stream.
//! [`FlowControl::Strict`] enforces the spec from the first byte. Either way, with a peer
//! that keeps the windows, a stream whose reader stops stalls that stream only.

// The streaming server uses part of this API; the rest is what a SPDY/3.1 peer needs.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{oneshot, watch};

/// The only protocol version spoken (control frames carry it).
pub const VERSION: u16 = 3;
/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender's last frame.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the recipient may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_SETTINGS_CLEAR_SETTINGS: u8 = 0x01;
/// SETTINGS id: the maximum number of concurrent streams the sender allows.
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;
/// SETTINGS id: the initial window size for new streams.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The initial stream and connection window: 64 KiB.
pub const DEFAULT_WINDOW_SIZE: u32 = 64 * 1024;
/// The largest payload a 24-bit length can describe.
pub const MAX_FRAME_LENGTH: usize = 0xFF_FFFF;

const HEADER_LEN: usize = 8;
const MAX_WINDOW: i64 = 0x7FFF_FFFF;
/// Control frames waiting to be written past which the reader stops reading (a peer
/// flooding PINGs while not reading our replies).
const CONTROL_QUEUE_LIMIT: usize = 1024;
/// Bytes of DATA the writer takes per write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// The reader's room for one read of the transport: at least, and at most.
const READ_ROOM_MIN: usize = 16 * 1024;
const READ_ROOM_MAX: usize = 256 * 1024;

/// The zlib dictionary every SPDY/3 header-compression context starts from (SPDY/3 draft,
/// section 2.6.10.1), transcribed from the draft's table.
#[rustfmt::skip]
pub const DICTIONARY: [u8; 1423] = [
    0x00, 0x00, 0x00, 0x07, 0x6f, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0x73, 0x00, 0x00, 0x00, 0x04, 0x68,
    0x65, 0x61, 0x64, 0x00, 0x00, 0x00, 0x04, 0x70, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x03, 0x70,
    0x75, 0x74, 0x00, 0x00, 0x00, 0x06, 0x64, 0x65, 0x6c, 0x65, 0x74, 0x65, 0x00, 0x00, 0x00, 0x05,
    0x74, 0x72, 0x61, 0x63, 0x65, 0x00, 0x00, 0x00, 0x06, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x00,
    0x00, 0x00, 0x0e, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65,
    0x74, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f,
    0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x0f, 0x61, 0x63, 0x63, 0x65, 0x70, 0x74, 0x2d, 0x6c,
    0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x63, 0x63, 0x65, 0x70,
    0x74, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x73, 0x00, 0x00, 0x00, 0x03, 0x61, 0x67, 0x65, 0x00,
    0x00, 0x00, 0x05, 0x61, 0x6c, 0x6c, 0x6f, 0x77, 0x00, 0x00, 0x00, 0x0d, 0x61, 0x75, 0x74, 0x68,
    0x6f, 0x72, 0x69, 0x7a, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x61, 0x63,
    0x68, 0x65, 0x2d, 0x63, 0x6f, 0x6e, 0x74, 0x72, 0x6f, 0x6c, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x6f,
    0x6e, 0x6e, 0x65, 0x63, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x62, 0x61, 0x73, 0x65, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74,
    0x65, 0x6e, 0x74, 0x2d, 0x65, 0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10,
    0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x61, 0x6e, 0x67, 0x75, 0x61, 0x67, 0x65,
    0x00, 0x00, 0x00, 0x0e, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x65, 0x6e, 0x67,
    0x74, 0x68, 0x00, 0x00, 0x00, 0x10, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x2d, 0x6c, 0x6f,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x0b, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x6d, 0x64, 0x35, 0x00, 0x00, 0x00, 0x0d, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74,
    0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x0c, 0x63, 0x6f, 0x6e, 0x74, 0x65, 0x6e,
    0x74, 0x2d, 0x74, 0x79, 0x70, 0x65, 0x00, 0x00, 0x00, 0x04, 0x64, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x04, 0x65, 0x74, 0x61, 0x67, 0x00, 0x00, 0x00, 0x06, 0x65, 0x78, 0x70, 0x65, 0x63, 0x74,
    0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x70, 0x69, 0x72, 0x65, 0x73, 0x00, 0x00, 0x00, 0x04, 0x66,
    0x72, 0x6f, 0x6d, 0x00, 0x00, 0x00, 0x04, 0x68, 0x6f, 0x73, 0x74, 0x00, 0x00, 0x00, 0x08, 0x69,
    0x66, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00, 0x11, 0x69, 0x66, 0x2d, 0x6d, 0x6f,
    0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65, 0x00, 0x00, 0x00, 0x0d,
    0x69, 0x66, 0x2d, 0x6e, 0x6f, 0x6e, 0x65, 0x2d, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x00, 0x00, 0x00,
    0x08, 0x69, 0x66, 0x2d, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00, 0x13, 0x69, 0x66, 0x2d,
    0x75, 0x6e, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65, 0x64, 0x2d, 0x73, 0x69, 0x6e, 0x63, 0x65,
    0x00, 0x00, 0x00, 0x0d, 0x6c, 0x61, 0x73, 0x74, 0x2d, 0x6d, 0x6f, 0x64, 0x69, 0x66, 0x69, 0x65,
    0x64, 0x00, 0x00, 0x00, 0x08, 0x6c, 0x6f, 0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00,
    0x0c, 0x6d, 0x61, 0x78, 0x2d, 0x66, 0x6f, 0x72, 0x77, 0x61, 0x72, 0x64, 0x73, 0x00, 0x00, 0x00,
    0x06, 0x70, 0x72, 0x61, 0x67, 0x6d, 0x61, 0x00, 0x00, 0x00, 0x12, 0x70, 0x72, 0x6f, 0x78, 0x79,
    0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00, 0x00,
    0x13, 0x70, 0x72, 0x6f, 0x78, 0x79, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x61,
    0x74, 0x69, 0x6f, 0x6e, 0x00, 0x00, 0x00, 0x05, 0x72, 0x61, 0x6e, 0x67, 0x65, 0x00, 0x00, 0x00,
    0x07, 0x72, 0x65, 0x66, 0x65, 0x72, 0x65, 0x72, 0x00, 0x00, 0x00, 0x0b, 0x72, 0x65, 0x74, 0x72,
    0x79, 0x2d, 0x61, 0x66, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x06, 0x73, 0x65, 0x72, 0x76, 0x65,
    0x72, 0x00, 0x00, 0x00, 0x02, 0x74, 0x65, 0x00, 0x00, 0x00, 0x07, 0x74, 0x72, 0x61, 0x69, 0x6c,
    0x65, 0x72, 0x00, 0x00, 0x00, 0x11, 0x74, 0x72, 0x61, 0x6e, 0x73, 0x66, 0x65, 0x72, 0x2d, 0x65,
    0x6e, 0x63, 0x6f, 0x64, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x07, 0x75, 0x70, 0x67, 0x72, 0x61,
    0x64, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x75, 0x73, 0x65, 0x72, 0x2d, 0x61, 0x67, 0x65, 0x6e, 0x74,
    0x00, 0x00, 0x00, 0x04, 0x76, 0x61, 0x72, 0x79, 0x00, 0x00, 0x00, 0x03, 0x76, 0x69, 0x61, 0x00,
    0x00, 0x00, 0x07, 0x77, 0x61, 0x72, 0x6e, 0x69, 0x6e, 0x67, 0x00, 0x00, 0x00, 0x10, 0x77, 0x77,
    0x77, 0x2d, 0x61, 0x75, 0x74, 0x68, 0x65, 0x6e, 0x74, 0x69, 0x63, 0x61, 0x74, 0x65, 0x00, 0x00,
    0x00, 0x06, 0x6d, 0x65, 0x74, 0x68, 0x6f, 0x64, 0x00, 0x00, 0x00, 0x03, 0x67, 0x65, 0x74, 0x00,
    0x00, 0x00, 0x06, 0x73, 0x74, 0x61, 0x74, 0x75, 0x73, 0x00, 0x00, 0x00, 0x06, 0x32, 0x30, 0x30,
    0x20, 0x4f, 0x4b, 0x00, 0x00, 0x00, 0x07, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x00, 0x00,
    0x00, 0x08, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x31, 0x00, 0x00, 0x00, 0x03, 0x75, 0x72,
    0x6c, 0x00, 0x00, 0x00, 0x06, 0x70, 0x75, 0x62, 0x6c, 0x69, 0x63, 0x00, 0x00, 0x00, 0x0a, 0x73,
    0x65, 0x74, 0x2d, 0x63, 0x6f, 0x6f, 0x6b, 0x69, 0x65, 0x00, 0x00, 0x00, 0x0a, 0x6b, 0x65, 0x65,
    0x70, 0x2d, 0x61, 0x6c, 0x69, 0x76, 0x65, 0x00, 0x00, 0x00, 0x06, 0x6f, 0x72, 0x69, 0x67, 0x69,
    0x6e, 0x31, 0x30, 0x30, 0x31, 0x30, 0x31, 0x32, 0x30, 0x31, 0x32, 0x30, 0x32, 0x32, 0x30, 0x35,
    0x32, 0x30, 0x36, 0x33, 0x30, 0x30, 0x33, 0x30, 0x32, 0x33, 0x30, 0x33, 0x33, 0x30, 0x34, 0x33,
    0x30, 0x35, 0x33, 0x30, 0x36, 0x33, 0x30, 0x37, 0x34, 0x30, 0x32, 0x34, 0x30, 0x35, 0x34, 0x30,
    0x36, 0x34, 0x30, 0x37, 0x34, 0x30, 0x38, 0x34, 0x30, 0x39, 0x34, 0x31, 0x30, 0x34, 0x31, 0x31,
    0x34, 0x31, 0x32, 0x34, 0x31, 0x33, 0x34, 0x31, 0x34, 0x34, 0x31, 0x35, 0x34, 0x31, 0x36, 0x34,
    0x31, 0x37, 0x35, 0x30, 0x32, 0x35, 0x30, 0x34, 0x35, 0x30, 0x35, 0x32, 0x30, 0x33, 0x20, 0x4e,
    0x6f, 0x6e, 0x2d, 0x41, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x74, 0x61, 0x74, 0x69, 0x76, 0x65,
    0x20, 0x49, 0x6e, 0x66, 0x6f, 0x72, 0x6d, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x32, 0x30, 0x34, 0x20,
    0x4e, 0x6f, 0x20, 0x43, 0x6f, 0x6e, 0x74, 0x65, 0x6e, 0x74, 0x33, 0x30, 0x31, 0x20, 0x4d, 0x6f,
    0x76, 0x65, 0x64, 0x20, 0x50, 0x65, 0x72, 0x6d, 0x61, 0x6e, 0x65, 0x6e, 0x74, 0x6c, 0x79, 0x34,
    0x30, 0x30, 0x20, 0x42, 0x61, 0x64, 0x20, 0x52, 0x65, 0x71, 0x75, 0x65, 0x73, 0x74, 0x34, 0x30,
    0x31, 0x20, 0x55, 0x6e, 0x61, 0x75, 0x74, 0x68, 0x6f, 0x72, 0x69, 0x7a, 0x65, 0x64, 0x34, 0x30,
    0x33, 0x20, 0x46, 0x6f, 0x72, 0x62, 0x69, 0x64, 0x64, 0x65, 0x6e, 0x34, 0x30, 0x34, 0x20, 0x4e,
    0x6f, 0x74, 0x20, 0x46, 0x6f, 0x75, 0x6e, 0x64, 0x35, 0x30, 0x30, 0x20, 0x49, 0x6e, 0x74, 0x65,
    0x72, 0x6e, 0x61, 0x6c, 0x20, 0x53, 0x65, 0x72, 0x76, 0x65, 0x72, 0x20, 0x45, 0x72, 0x72, 0x6f,
    0x72, 0x35, 0x30, 0x31, 0x20, 0x4e, 0x6f, 0x74, 0x20, 0x49, 0x6d, 0x70, 0x6c, 0x65, 0x6d, 0x65,
    0x6e, 0x74, 0x65, 0x64, 0x35, 0x30, 0x33, 0x20, 0x53, 0x65, 0x72, 0x76, 0x69, 0x63, 0x65, 0x20,
    0x55, 0x6e, 0x61, 0x76, 0x61, 0x69, 0x6c, 0x61, 0x62, 0x6c, 0x65, 0x4a, 0x61, 0x6e, 0x20, 0x46,
    0x65, 0x62, 0x20, 0x4d, 0x61, 0x72, 0x20, 0x41, 0x70, 0x72, 0x20, 0x4d, 0x61, 0x79, 0x20, 0x4a,
    0x75, 0x6e, 0x20, 0x4a, 0x75, 0x6c, 0x20, 0x41, 0x75, 0x67, 0x20, 0x53, 0x65, 0x70, 0x74, 0x20,
    0x4f, 0x63, 0x74, 0x20, 0x4e, 0x6f, 0x76, 0x20, 0x44, 0x65, 0x63, 0x20, 0x30, 0x30, 0x3a, 0x30,
    0x30, 0x3a, 0x30, 0x30, 0x20, 0x4d, 0x6f, 0x6e, 0x2c, 0x20, 0x54, 0x75, 0x65, 0x2c, 0x20, 0x57,
    0x65, 0x64, 0x2c, 0x20, 0x54, 0x68, 0x75, 0x2c, 0x20, 0x46, 0x72, 0x69, 0x2c, 0x20, 0x53, 0x61,
    0x74, 0x2c, 0x20, 0x53, 0x75, 0x6e, 0x2c, 0x20, 0x47, 0x4d, 0x54, 0x63, 0x68, 0x75, 0x6e, 0x6b,
    0x65, 0x64, 0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x68, 0x74, 0x6d, 0x6c, 0x2c, 0x69, 0x6d, 0x61,
    0x67, 0x65, 0x2f, 0x70, 0x6e, 0x67, 0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x6a, 0x70, 0x67,
    0x2c, 0x69, 0x6d, 0x61, 0x67, 0x65, 0x2f, 0x67, 0x69, 0x66, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x6d, 0x6c, 0x2c, 0x61, 0x70, 0x70, 0x6c, 0x69,
    0x63, 0x61, 0x74, 0x69, 0x6f, 0x6e, 0x2f, 0x78, 0x68, 0x74, 0x6d, 0x6c, 0x2b, 0x78, 0x6d, 0x6c,
    0x2c, 0x74, 0x65, 0x78, 0x74, 0x2f, 0x70, 0x6c, 0x61, 0x69, 0x6e, 0x2c, 0x74, 0x65, 0x78, 0x74,
    0x2f, 0x6a, 0x61, 0x76, 0x61, 0x73, 0x63, 0x72, 0x69, 0x70, 0x74, 0x2c, 0x70, 0x75, 0x62, 0x6c,
    0x69, 0x63, 0x70, 0x72, 0x69, 0x76, 0x61, 0x74, 0x65, 0x6d, 0x61, 0x78, 0x2d, 0x61, 0x67, 0x65,
    0x3d, 0x67, 0x7a, 0x69, 0x70, 0x2c, 0x64, 0x65, 0x66, 0x6c, 0x61, 0x74, 0x65, 0x2c, 0x73, 0x64,
    0x63, 0x68, 0x63, 0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x75, 0x74, 0x66, 0x2d, 0x38, 0x63,
    0x68, 0x61, 0x72, 0x73, 0x65, 0x74, 0x3d, 0x69, 0x73, 0x6f, 0x2d, 0x38, 0x38, 0x35, 0x39, 0x2d,
    0x31, 0x2c, 0x75, 0x74, 0x66, 0x2d, 0x2c, 0x2a, 0x2c, 0x65, 0x6e, 0x71, 0x3d, 0x30, 0x2e,
];

/// The Adler-32 of [`DICTIONARY`]: the DICTID in a SPDY/3 header block's zlib header.
pub const DICTIONARY_ID: u32 = adler32(&DICTIONARY);

const fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    let mut i = 0;
    while i < data.len() {
        a = (a + data[i] as u32) % 65521;
        b = (b + a) % 65521;
        i += 1;
    }
    (b << 16) | a
}

/// A frame's type, for errors and dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Data,
    SynStream,
    SynReply,
    RstStream,
    Settings,
    Ping,
    GoAway,
    Headers,
    WindowUpdate,
    /// A control frame type SPDY/3 does not define here (CREDENTIAL is 10).
    Other(u16),
}

impl FrameKind {
    fn from_type(frame_type: u16) -> Self {
        match frame_type {
            1 => Self::SynStream,
            2 => Self::SynReply,
            3 => Self::RstStream,
            4 => Self::Settings,
            6 => Self::Ping,
            7 => Self::GoAway,
            8 => Self::Headers,
            9 => Self::WindowUpdate,
            other => Self::Other(other),
        }
    }

    fn type_code(self) -> u16 {
        match self {
            Self::Data => 0,
            Self::SynStream => 1,
            Self::SynReply => 2,
            Self::RstStream => 3,
            Self::Settings => 4,
            Self::Ping => 6,
            Self::GoAway => 7,
            Self::Headers => 8,
            Self::WindowUpdate => 9,
            Self::Other(t) => t,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Data => "DATA",
            Self::SynStream => "SYN_STREAM",
            Self::SynReply => "SYN_REPLY",
            Self::RstStream => "RST_STREAM",
            Self::Settings => "SETTINGS",
            Self::Ping => "PING",
            Self::GoAway => "GOAWAY",
            Self::Headers => "HEADERS",
            Self::WindowUpdate => "WINDOW_UPDATE",
            Self::Other(t) => return write!(f, "control type {t}"),
        };
        f.write_str(name)
    }
}

/// Where an error was found: a frame and, when known, its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    pub frame: FrameKind,
    pub stream_id: Option<u32>,
}

impl At {
    fn new(frame: FrameKind, stream_id: Option<u32>) -> Self {
        Self { frame, stream_id }
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} frame", self.frame)?;
        if let Some(id) = self.stream_id {
            write!(f, " (stream {id})")?;
        }
        Ok(())
    }
}

/// An RST_STREAM status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    pub const PROTOCOL_ERROR: Self = Self(1);
    pub const INVALID_STREAM: Self = Self(2);
    pub const REFUSED_STREAM: Self = Self(3);
    pub const UNSUPPORTED_VERSION: Self = Self(4);
    pub const CANCEL: Self = Self(5);
    pub const INTERNAL_ERROR: Self = Self(6);
    pub const FLOW_CONTROL_ERROR: Self = Self(7);
    pub const STREAM_IN_USE: Self = Self(8);
    pub const STREAM_ALREADY_CLOSED: Self = Self(9);
    pub const INVALID_CREDENTIALS: Self = Self(10);
    pub const FRAME_TOO_LARGE: Self = Self(11);
}

impl fmt::Display for RstStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            1 => "PROTOCOL_ERROR",
            2 => "INVALID_STREAM",
            3 => "REFUSED_STREAM",
            4 => "UNSUPPORTED_VERSION",
            5 => "CANCEL",
            6 => "INTERNAL_ERROR",
            7 => "FLOW_CONTROL_ERROR",
            8 => "STREAM_IN_USE",
            9 => "STREAM_ALREADY_CLOSED",
            10 => "INVALID_CREDENTIALS",
            11 => "FRAME_TOO_LARGE",
            other => return write!(f, "status {other}"),
        };
        f.write_str(name)
    }
}

/// A GOAWAY status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    pub const OK: Self = Self(0);
    pub const PROTOCOL_ERROR: Self = Self(1);
    pub const INTERNAL_ERROR: Self = Self(2);
}

impl fmt::Display for GoAwayStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("OK"),
            1 => f.write_str("PROTOCOL_ERROR"),
            2 => f.write_str("INTERNAL_ERROR"),
            other => write!(f, "status {other}"),
        }
    }
}

/// One SETTINGS entry (its flags are PERSIST_VALUE 0x1 and PERSISTED 0x2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A name/value header block. Names are lower case; a name given twice holds its values
/// NUL-separated, as SPDY carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value (the name is lower-cased; a second value for a name joins the first).
    pub fn insert(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match self.pairs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => self.pairs.push((name, value.to_owned())),
        }
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.raw(name).map(|v| v.split('\0').next().unwrap_or(v))
    }

    /// Every value of a header.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.raw(name).into_iter().flat_map(|v| v.split('\0'))
    }

    /// The name/value pairs as carried (multiple values NUL-separated).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (n, v) in iter {
            headers.insert(n.as_ref(), v.as_ref());
        }
        headers
    }
}

impl From<&[(&str, &str)]> for Headers {
    fn from(pairs: &[(&str, &str)]) -> Self {
        pairs.iter().copied().collect()
    }
}

/// A SPDY/3 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: RstStatus,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: GoAwayStatus,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    /// `stream_id` 0 is the connection window (SPDY/3.1).
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type not defined here, passed over.
    Unknown {
        frame_type: u16,
        flags: u8,
        payload: Bytes,
    },
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Data { .. } => FrameKind::Data,
            Frame::SynStream { .. } => FrameKind::SynStream,
            Frame::SynReply { .. } => FrameKind::SynReply,
            Frame::RstStream { .. } => FrameKind::RstStream,
            Frame::Settings { .. } => FrameKind::Settings,
            Frame::Ping { .. } => FrameKind::Ping,
            Frame::GoAway { .. } => FrameKind::GoAway,
            Frame::Headers { .. } => FrameKind::Headers,
            Frame::WindowUpdate { .. } => FrameKind::WindowUpdate,
            Frame::Unknown { frame_type, .. } => FrameKind::from_type(*frame_type),
        }
    }

    /// The stream a frame belongs to (none for connection-level frames).
    pub fn stream_id(&self) -> Option<u32> {
        match self {
            Frame::Data { stream_id, .. }
            | Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::RstStream { stream_id, .. }
            | Frame::Headers { stream_id, .. } => Some(*stream_id),
            Frame::WindowUpdate { stream_id, .. } if *stream_id != 0 => Some(*stream_id),
            _ => None,
        }
    }
}

/// What went wrong, naming the frame and stream where there is one.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("SPDY connection I/O: {0}")]
    Io(Arc<io::Error>),
    #[error("SPDY {at}: version {version} is not supported (only SPDY/3)")]
    UnsupportedVersion { at: At, version: u16 },
    #[error("SPDY {at}: {length}-byte payload is over the {max}-byte frame limit")]
    FrameTooLarge { at: At, length: usize, max: usize },
    #[error("SPDY {at}: {reason}")]
    InvalidFrame { at: At, reason: String },
    #[error("SPDY connection ended inside {} ({have} of {need} bytes)", inside(.at))]
    Truncated {
        at: Option<At>,
        have: usize,
        need: usize,
    },
    #[error("SPDY {at}: header block does not inflate: {reason}")]
    Compression { at: At, reason: String },
    #[error("SPDY {at}: header block inflates past the {max}-byte limit")]
    HeaderBlockTooLarge { at: At, max: usize },
    #[error("SPDY {at}: bad header block: {reason}")]
    HeaderBlock { at: At, reason: String },
    #[error("SPDY {at}: {reason}")]
    Protocol { at: At, reason: String },
    #[error("SPDY stream {stream_id} reset by {}: {status}", who(.by_peer))]
    Reset {
        stream_id: u32,
        status: RstStatus,
        by_peer: bool,
    },
    #[error("SPDY stream {stream_id}: {reason}")]
    Stream {
        stream_id: u32,
        reason: &'static str,
    },
    #[error("SPDY connection closed")]
    ConnectionClosed,
}

fn inside(at: &Option<At>) -> String {
    match at {
        Some(at) => format!("a {at}"),
        None => "a frame header".to_owned(),
    }
}

fn who(by_peer: &bool) -> &'static str {
    if *by_peer {
        "the peer"
    } else {
        "this end"
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl Error {
    /// For an error confined to one stream (a header block that inflated but does not
    /// parse): the stream and the RST_STREAM status to answer it with. Every other
    /// decoding error ends the connection.
    pub fn stream_error(&self) -> Option<(u32, RstStatus)> {
        match self {
            Error::HeaderBlock {
                at:
                    At {
                        stream_id: Some(id),
                        ..
                    },
                ..
            } => Some((*id, RstStatus::PROTOCOL_ERROR)),
            _ => None,
        }
    }

    fn into_io(self) -> io::Error {
        let kind = match &self {
            Error::Io(e) => e.kind(),
            Error::Reset { .. } => io::ErrorKind::ConnectionReset,
            Error::ConnectionClosed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn invalid(at: At, reason: impl Into<String>) -> Error {
    Error::InvalidFrame {
        at,
        reason: reason.into(),
    }
}

/// Reads frames; holds the inflate context of the peer's header blocks.
pub struct Decoder {
    inflate: Decompress,
    max_frame_size: usize,
    max_header_block_size: usize,
}

impl Decoder {
    /// `max_frame_size` bounds every payload (a larger length is refused as soon as its
    /// header is read); `max_header_block_size` bounds an inflated header block.
    pub fn new(max_frame_size: usize, max_header_block_size: usize) -> Self {
        Self {
            inflate: Decompress::new(true),
            max_frame_size: max_frame_size.min(MAX_FRAME_LENGTH),
            max_header_block_size,
        }
    }

    /// Takes one whole frame off the front of `buf`: `Ok(None)` until one is there. After a
    /// [`Error::HeaderBlock`] (see [`Error::stream_error`]) the frame has been consumed and
    /// decoding can go on; after any other error the connection is unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let w0 = be32(buf, 0);
        let w1 = be32(buf, 4);
        let flags = (w1 >> 24) as u8;
        let length = (w1 & 0xFF_FFFF) as usize;
        let control = w0 & 0x8000_0000 != 0;
        let at = if control {
            At::new(FrameKind::from_type(w0 as u16), None)
        } else {
            At::new(FrameKind::Data, Some(w0 & 0x7FFF_FFFF))
        };
        if control {
            let version = ((w0 >> 16) & 0x7FFF) as u16;
            if version != VERSION {
                return Err(Error::UnsupportedVersion { at, version });
            }
        }
        if length > self.max_frame_size {
            return Err(Error::FrameTooLarge {
                at,
                length,
                max: self.max_frame_size,
            });
        }
        if buf.len() < HEADER_LEN + length {
            buf.reserve(HEADER_LEN + length - buf.len());
            return Ok(None);
        }
        let payload = buf
            .split_to(HEADER_LEN + length)
            .freeze()
            .slice(HEADER_LEN..);
        if !control {
            let stream_id = w0 & 0x7FFF_FFFF;
            if stream_id == 0 {
                return Err(invalid(at, "stream id 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        self.control(at.frame, flags, payload).map(Some)
    }

    fn control(&mut self, kind: FrameKind, flags: u8, p: Bytes) -> Result<Frame, Error> {
        let len = p.len();
        let at = At::new(kind, None);
        let exact = |n: usize| {
            if len == n {
                Ok(())
            } else {
                Err(invalid(at, format!("length {len}, must be {n}")))
            }
        };
        let at_least = |n: usize| {
            if len >= n {
                Ok(())
            } else {
                Err(invalid(at, format!("length {len}, must be at least {n}")))
            }
        };
        let stream = |id: u32| {
            if id == 0 {
                Err(invalid(at, "stream id 0"))
            } else {
                Ok(At::new(kind, Some(id)))
            }
        };
        Ok(match kind {
            FrameKind::SynStream => {
                at_least(10)?;
                let stream_id = be32(&p, 0) & 0x7FFF_FFFF;
                let at = stream(stream_id)?;
                Frame::SynStream {
                    stream_id,
                    associated_to: be32(&p, 4) & 0x7FFF_FFFF,
                    priority: p[8] >> 5,
                    slot: p[9],
                    flags,
                    headers: self.header_block(at, &p[10..])?,
                }
            }
            FrameKind::SynReply | FrameKind::Headers => {
                at_least(4)?;
                let stream_id = be32(&p, 0) & 0x7FFF_FFFF;
                let at = stream(stream_id)?;
                let headers = self.header_block(at, &p[4..])?;
                if kind == FrameKind::SynReply {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            FrameKind::RstStream => {
                exact(8)?;
                let stream_id = be32(&p, 0) & 0x7FFF_FFFF;
                let at = stream(stream_id)?;
                let status = be32(&p, 4);
                if status == 0 {
                    return Err(invalid(at, "status 0"));
                }
                Frame::RstStream {
                    stream_id,
                    status: RstStatus(status),
                }
            }
            FrameKind::Settings => {
                at_least(4)?;
                let count = be32(&p, 0) as usize;
                if count > (len - 4) / 8 || len != 4 + count * 8 {
                    return Err(invalid(at, format!("{count} entries in {len} bytes")));
                }
                let entries = (0..count)
                    .map(|i| {
                        let word = be32(&p, 4 + i * 8);
                        Setting {
                            flags: (word >> 24) as u8,
                            id: word & 0xFF_FFFF,
                            value: be32(&p, 8 + i * 8),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            FrameKind::Ping => {
                exact(4)?;
                Frame::Ping { id: be32(&p, 0) }
            }
            FrameKind::GoAway => {
                exact(8)?;
                Frame::GoAway {
                    last_good_stream_id: be32(&p, 0) & 0x7FFF_FFFF,
                    status: GoAwayStatus(be32(&p, 4)),
                }
            }
            FrameKind::WindowUpdate => {
                exact(8)?;
                Frame::WindowUpdate {
                    stream_id: be32(&p, 0) & 0x7FFF_FFFF,
                    delta: be32(&p, 4) & 0x7FFF_FFFF,
                }
            }
            FrameKind::Other(frame_type) => Frame::Unknown {
                frame_type,
                flags,
                payload: p,
            },
            FrameKind::Data => unreachable!("DATA is not a control frame"),
        })
    }

    fn header_block(&mut self, at: At, input: &[u8]) -> Result<Headers, Error> {
        let raw = self.inflate_block(at, input)?;
        parse_header_block(&raw).map_err(|reason| Error::HeaderBlock { at, reason })
    }

    /// Inflates one frame's share of the connection's zlib stream: all of `input`, and all
    /// it yields (the sender sync-flushed it).
    fn inflate_block(&mut self, at: At, input: &[u8]) -> Result<Vec<u8>, Error> {
        let compression = |reason: String| Error::Compression { at, reason };
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, self.max_header_block_size));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= self.max_header_block_size {
                    return Err(Error::HeaderBlockTooLarge {
                        at,
                        max: self.max_header_block_size,
                    });
                }
                // Doubling, at least 256 bytes, never past the limit (`clamp` would panic
                // when less than 256 bytes are left under it).
                let more = out
                    .len()
                    .max(256)
                    .min(self.max_header_block_size - out.len());
                out.reserve_exact(more);
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result =
                self.inflate
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - in_before) as usize;
            pos += consumed;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(compression("the zlib stream ended".to_owned()));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.inflate
                            .set_dictionary(&DICTIONARY)
                            .map_err(|e| compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => {
                        return Err(compression(format!(
                            "asks for dictionary {other:#010x}, not SPDY/3's {DICTIONARY_ID:#010x}"
                        )));
                    }
                    None => return Err(compression(e.to_string())),
                },
            }
            if pos == input.len() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && out.len() == out_before && out.len() < out.capacity() {
                return Err(compression("inflate made no progress".to_owned()));
            }
        }
        Ok(out)
    }
}

/// Parses an inflated name/value block; the error says what is wrong with it.
fn parse_header_block(raw: &[u8]) -> Result<Headers, String> {
    let mut rest = raw;
    let take_u32 = |rest: &mut &[u8], what: &str| -> Result<usize, String> {
        if rest.len() < 4 {
            return Err(format!("truncated at the {what}"));
        }
        let v = be32(rest, 0) as usize;
        *rest = &rest[4..];
        Ok(v)
    };
    let count = take_u32(&mut rest, "pair count")?;
    if count > rest.len() / 8 {
        return Err(format!("{count} pairs cannot fit in {} bytes", rest.len()));
    }
    let mut headers = Headers {
        pairs: Vec::with_capacity(count),
    };
    for _ in 0..count {
        let len = take_u32(&mut rest, "name length")?;
        if len == 0 {
            return Err("empty header name".to_owned());
        }
        if rest.len() < len {
            return Err("truncated in a name".to_owned());
        }
        let name = std::str::from_utf8(&rest[..len])
            .map_err(|_| "header name is not UTF-8".to_owned())?
            .to_ascii_lowercase();
        rest = &rest[len..];
        let len = take_u32(&mut rest, "value length")?;
        if rest.len() < len {
            return Err(format!("truncated in the value of {name:?}"));
        }
        let value = std::str::from_utf8(&rest[..len])
            .map_err(|_| format!("value of {name:?} is not UTF-8"))?
            .to_owned();
        rest = &rest[len..];
        headers.pairs.push((name, value));
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last pair", rest.len()));
    }
    // Sorted, not pair by pair: a block of 1 MiB holds ~95,000 pairs.
    let mut names: Vec<&str> = headers.pairs.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("header {:?} given twice", w[0]));
    }
    Ok(headers)
}

/// Writes frames; holds the deflate context of this end's header blocks.
pub struct Encoder {
    deflate: Compress,
    block: Vec<u8>,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream: the dictionary goes in before any data.
        let _ = deflate.set_dictionary(&DICTIONARY);
        Self {
            deflate,
            block: Vec::new(),
        }
    }

    /// Appends one frame to `out`. Frames must be written in the order encoded (the
    /// header blocks share one compression context).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), Error> {
        let start = out.len();
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(Error::FrameTooLarge {
                        at: At::new(FrameKind::Data, Some(*stream_id)),
                        length: data.len(),
                        max: MAX_FRAME_LENGTH,
                    });
                }
                out.extend_from_slice(&(stream_id & 0x7FFF_FFFF).to_be_bytes());
                out.extend_from_slice(&(u32::from(*flags) << 24 | data.len() as u32).to_be_bytes());
                out.extend_from_slice(data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                control_header(out, FrameKind::SynStream, *flags);
                out.extend_from_slice(&(stream_id & 0x7FFF_FFFF).to_be_bytes());
                out.extend_from_slice(&(associated_to & 0x7FFF_FFFF).to_be_bytes());
                out.push((priority & 0x7) << 5);
                out.push(*slot);
                self.header_block(
                    At::new(FrameKind::SynStream, Some(*stream_id)),
                    headers,
                    out,
                )?;
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = frame.kind();
                control_header(out, kind, *flags);
                out.extend_from_slice(&(stream_id & 0x7FFF_FFFF).to_be_bytes());
                self.header_block(At::new(kind, Some(*stream_id)), headers, out)?;
            }
            Frame::RstStream { stream_id, status } => {
                control_header(out, FrameKind::RstStream, 0);
                out.extend_from_slice(&(stream_id & 0x7FFF_FFFF).to_be_bytes());
                out.extend_from_slice(&status.0.to_be_bytes());
            }
            Frame::Settings { flags, entries } => {
                control_header(out, FrameKind::Settings, *flags);
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(
                        &(u32::from(e.flags) << 24 | (e.id & 0xFF_FFFF)).to_be_bytes(),
                    );
                    out.extend_from_slice(&e.value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_header(out, FrameKind::Ping, 0);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                control_header(out, FrameKind::GoAway, 0);
                out.extend_from_slice(&(last_good_stream_id & 0x7FFF_FFFF).to_be_bytes());
                out.extend_from_slice(&status.0.to_be_bytes());
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_header(out, FrameKind::WindowUpdate, 0);
                out.extend_from_slice(&(stream_id & 0x7FFF_FFFF).to_be_bytes());
                out.extend_from_slice(&(delta & 0x7FFF_FFFF).to_be_bytes());
            }
            Frame::Unknown {
                frame_type,
                flags,
                payload,
            } => {
                control_header(out, FrameKind::Other(*frame_type), *flags);
                out.extend_from_slice(payload);
            }
        }
        let length = out.len() - start - HEADER_LEN;
        if length > MAX_FRAME_LENGTH {
            out.truncate(start);
            return Err(Error::FrameTooLarge {
                at: At::new(frame.kind(), frame.stream_id()),
                length,
                max: MAX_FRAME_LENGTH,
            });
        }
        let flags = out[start + 4];
        out[start + 4..start + 8]
            .copy_from_slice(&(u32::from(flags) << 24 | length as u32).to_be_bytes());
        Ok(())
    }

    fn header_block(&mut self, at: At, headers: &Headers, out: &mut Vec<u8>) -> Result<(), Error> {
        let block = &mut self.block;
        block.clear();
        block.extend_from_slice(&(headers.pairs.len() as u32).to_be_bytes());
        for (name, value) in &headers.pairs {
            if name.is_empty() {
                return Err(invalid(at, "empty header name"));
            }
            block.extend_from_slice(&(name.len() as u32).to_be_bytes());
            block.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
            block.extend_from_slice(&(value.len() as u32).to_be_bytes());
            block.extend_from_slice(value.as_bytes());
        }
        let mut consumed = 0;
        loop {
            out.reserve(block.len() - consumed + 64);
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(&block[consumed..], out, FlushCompress::Sync)
                .map_err(|e| Error::Compression {
                    at,
                    reason: e.to_string(),
                })?;
            consumed += (self.deflate.total_in() - before) as usize;
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// A control frame's 8-byte header with a zero length (patched by `encode`).
fn control_header(out: &mut Vec<u8>, kind: FrameKind, flags: u8) {
    let w0 = 0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind.type_code());
    out.extend_from_slice(&w0.to_be_bytes());
    out.extend_from_slice(&(u32::from(flags) << 24).to_be_bytes());
}

/// When to hold data back for the peer's flow-control windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlowControl {
    /// Keep the send windows once the peer shows it keeps them (a WINDOW_UPDATE, or a
    /// SETTINGS with an initial window size); moby/spdystream never does, and stalling it
    /// at 64 KiB would hang `kubectl exec`.
    #[default]
    Auto,
    /// Keep the send windows from the start, and reset streams the peer overfills.
    Strict,
}

/// Limits and choices for a connection.
#[derive(Clone, Debug)]
pub struct Config {
    /// The largest frame payload accepted (default: the 24-bit maximum, 16 MiB - 1, since a
    /// Go client writes one DATA frame per Write call).
    pub max_frame_size: usize,
    /// The largest inflated header block accepted (default 1 MiB).
    pub max_header_block_size: usize,
    /// The receive window of each stream, and the most data buffered for a stream its
    /// reader has not taken (default and minimum 64 KiB; a larger one is announced in a
    /// SETTINGS frame when the connection starts).
    pub initial_window_size: u32,
    /// Streams open at once; more are refused with REFUSED_STREAM (default 100).
    pub max_concurrent_streams: usize,
    /// The largest DATA frame written (default 32 KiB).
    pub max_send_frame_size: usize,
    /// Data queued for the writer past which stream writes wait (default 256 KiB).
    pub max_queued_bytes: usize,
    pub flow_control: FlowControl,
    /// Bytes already read from the transport, for instance by the HTTP parser past the 101
    /// response; they are decoded before anything else.
    pub initial_bytes: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: MAX_FRAME_LENGTH,
            max_header_block_size: 1 << 20,
            initial_window_size: DEFAULT_WINDOW_SIZE,
            max_concurrent_streams: 100,
            max_send_frame_size: 32 * 1024,
            max_queued_bytes: 256 * 1024,
            flow_control: FlowControl::Auto,
            initial_bytes: Vec::new(),
        }
    }
}

/// The server side of a SPDY/3.1 connection. Its reader and writer run as tokio tasks;
/// dropping the last clone sends GOAWAY, and the transport is closed once the streams it
/// has handed out are done.
#[derive(Clone)]
pub struct Connection {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        // Nobody can accept these any more.
        while let Some(id) = st.accept_queue.pop_front() {
            st.reset_stream(id, RstStatus::REFUSED_STREAM);
            st.streams.remove(&id);
        }
        st.goaway(GoAwayStatus::OK);
    }
}

struct Shared {
    state: Mutex<State>,
    abort: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct State {
    config: Config,
    streams: HashMap<u32, StreamState>,
    accept_queue: VecDeque<u32>,
    accept_waker: Option<Waker>,
    last_peer_stream_id: u32,

    control: VecDeque<Frame>,
    data: VecDeque<Frame>,
    queued_data_bytes: usize,
    writer_waker: Option<Waker>,
    /// Stream writers waiting for room in the data queue.
    space_wakers: Vec<Waker>,
    /// The reader, waiting for room in the control queue.
    reader_room_waker: Option<Waker>,

    conn_send_window: i64,
    conn_recv_window: i64,
    conn_recv_unacked: usize,
    peer_initial_window: i64,
    peer_flow_control: bool,

    goaway_sent: bool,
    goaway_received: bool,
    error: Option<Error>,
    reader_done: bool,
    writer_done: bool,
    done_wakers: Vec<Waker>,
    next_ping_id: u32,
    pings: HashMap<u32, oneshot::Sender<()>>,
}

struct StreamState {
    headers: Option<Headers>,
    accepted: bool,
    /// Live RecvStream and SendStream halves.
    handles: u8,
    // Receiving.
    recv: VecDeque<Bytes>,
    buffered: usize,
    recv_window: i64,
    recv_unacked: usize,
    remote_fin: bool,
    /// The RecvStream is gone: data is dropped (and acknowledged).
    recv_closed: bool,
    read_waker: Option<Waker>,
    /// The connection's reader, waiting for this stream's buffer to drain.
    room_waker: Option<Waker>,
    // Sending.
    replied: bool,
    local_fin: bool,
    unidirectional: bool,
    send_window: i64,
    /// Bytes of this stream in the data queue.
    queued: usize,
    write_waker: Option<Waker>,
    reset: Option<(RstStatus, bool)>,
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

impl State {
    fn enforcing(&self) -> bool {
        self.config.flow_control == FlowControl::Strict || self.peer_flow_control
    }

    fn closed(&self) -> bool {
        self.writer_done || self.error.is_some()
    }

    fn push_control(&mut self, frame: Frame) {
        if self.closed() {
            return;
        }
        self.control.push_back(frame);
        wake(&mut self.writer_waker);
    }

    fn goaway(&mut self, status: GoAwayStatus) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            let last_good_stream_id = self.last_peer_stream_id;
            self.push_control(Frame::GoAway {
                last_good_stream_id,
                status,
            });
        }
        wake(&mut self.accept_waker);
        wake(&mut self.writer_waker);
    }

    /// Ends the connection: a GOAWAY when the peer should hear why, then the writer stops.
    fn fail(&mut self, err: Error, goaway: Option<GoAwayStatus>) {
        if self.error.is_some() {
            return;
        }
        if let Some(status) = goaway {
            self.goaway(status);
        }
        self.error = Some(err);
        self.data.clear();
        self.queued_data_bytes = 0;
        self.pings.clear();
        self.wake_everyone();
    }

    fn wake_everyone(&mut self) {
        wake(&mut self.accept_waker);
        wake(&mut self.writer_waker);
        wake(&mut self.reader_room_waker);
        for w in self.space_wakers.drain(..) {
            w.wake();
        }
        for w in self.done_wakers.drain(..) {
            w.wake();
        }
        for s in self.streams.values_mut() {
            wake(&mut s.read_waker);
            wake(&mut s.write_waker);
            wake(&mut s.room_waker);
        }
    }

    /// Drops a stream's queued data (it was reset).
    fn purge_data(&mut self, id: u32) {
        let mut removed = 0;
        self.data.retain(|f| match f {
            Frame::Data {
                stream_id, data, ..
            } if *stream_id == id => {
                removed += data.len();
                false
            }
            _ => true,
        });
        self.queued_data_bytes -= removed;
        if let Some(s) = self.streams.get_mut(&id) {
            s.queued -= removed;
        }
        for w in self.space_wakers.drain(..) {
            w.wake();
        }
    }

    /// Resets a stream from this end.
    fn reset_stream(&mut self, id: u32, status: RstStatus) {
        self.push_control(Frame::RstStream {
            stream_id: id,
            status,
        });
        if self.streams.contains_key(&id) {
            self.purge_data(id);
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if s.reset.is_none() {
                s.reset = Some((status, false));
            }
            s.recv.clear();
            s.buffered = 0;
            wake(&mut s.read_waker);
            wake(&mut s.write_waker);
            wake(&mut s.room_waker);
        }
        self.maybe_remove(id);
    }

    /// Forgets a stream nobody holds once it is closed both ways or reset.
    fn maybe_remove(&mut self, id: u32) {
        let done = self.streams.get(&id).is_some_and(|s| {
            s.accepted && s.handles == 0 && (s.reset.is_some() || (s.local_fin && s.remote_fin))
        });
        if done {
            self.streams.remove(&id);
            if self.goaway_sent {
                wake(&mut self.writer_waker);
            }
        }
    }

    /// Acknowledges data the application took (or that is dropped), sending a
    /// WINDOW_UPDATE once half the window is free.
    fn ack(&mut self, id: u32, n: usize) {
        let threshold = (self.config.initial_window_size / 2) as usize;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.remote_fin || s.reset.is_some() {
            return;
        }
        s.recv_unacked += n;
        if s.recv_unacked >= threshold {
            let delta = s.recv_unacked;
            s.recv_unacked = 0;
            s.recv_window += delta as i64;
            self.push_control(Frame::WindowUpdate {
                stream_id: id,
                delta: delta as u32,
            });
        }
    }

    fn release(&mut self, id: u32, recv_half: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.handles = s.handles.saturating_sub(1);
        let mut dropped = 0;
        if recv_half {
            s.recv_closed = true;
            dropped = s.buffered;
            s.recv.clear();
            s.buffered = 0;
            wake(&mut s.room_waker);
        }
        let abandon = s.handles == 0 && !s.local_fin && s.reset.is_none();
        if dropped > 0 {
            self.ack(id, dropped);
        }
        if abandon {
            self.reset_stream(id, RstStatus::CANCEL);
        }
        self.maybe_remove(id);
    }

    // Frames from the peer.

    fn control_frame(&mut self, frame: Frame) -> Result<(), Error> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => self.syn_stream(stream_id, flags, headers)?,
            Frame::SynReply { stream_id, .. } => {
                // This end opens no streams.
                let status = if self.streams.contains_key(&stream_id) {
                    RstStatus::PROTOCOL_ERROR
                } else {
                    RstStatus::INVALID_STREAM
                };
                self.reset_stream(stream_id, status);
            }
            Frame::RstStream { stream_id, status } => self.peer_reset(stream_id, status),
            Frame::Settings { entries, .. } => self.settings(&entries)?,
            Frame::Ping { id } => {
                if id & 1 == 1 {
                    // The peer's: answer first thing.
                    if !self.closed() {
                        self.control.push_front(Frame::Ping { id });
                        wake(&mut self.writer_waker);
                    }
                } else if let Some(tx) = self.pings.remove(&id) {
                    let _ = tx.send(());
                }
            }
            Frame::GoAway { .. } => {
                self.goaway_received = true;
                wake(&mut self.accept_waker);
            }
            Frame::Headers {
                stream_id, flags, ..
            } => match self.streams.get_mut(&stream_id) {
                Some(s) if s.reset.is_none() => {
                    if s.remote_fin {
                        self.reset_stream(stream_id, RstStatus::STREAM_ALREADY_CLOSED);
                    } else if flags & FLAG_FIN != 0 {
                        s.remote_fin = true;
                        wake(&mut s.read_waker);
                        self.maybe_remove(stream_id);
                    }
                }
                Some(_) => {}
                None => {
                    if !self.was_opened(stream_id) {
                        self.reset_stream(stream_id, RstStatus::INVALID_STREAM);
                    }
                }
            },
            Frame::WindowUpdate { stream_id, delta } => self.window_update(stream_id, delta)?,
            Frame::Data { .. } | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    /// Whether the peer opened this stream id at some point (its data may still be in
    /// flight after the stream ended here).
    fn was_opened(&self, id: u32) -> bool {
        id & 1 == 1 && id <= self.last_peer_stream_id
    }

    fn syn_stream(&mut self, id: u32, flags: u8, headers: Headers) -> Result<(), Error> {
        let at = At::new(FrameKind::SynStream, Some(id));
        if id & 1 == 0 {
            // Client streams are odd; refuse this one alone, as moby/spdystream does.
            self.reset_stream(id, RstStatus::PROTOCOL_ERROR);
            return Ok(());
        }
        if self.goaway_sent {
            return Ok(()); // After GOAWAY new streams are ignored.
        }
        if self.streams.contains_key(&id) {
            self.reset_stream(id, RstStatus::PROTOCOL_ERROR);
            return Ok(());
        }
        if id <= self.last_peer_stream_id {
            return Err(Error::Protocol {
                at,
                reason: format!(
                    "stream id not above the previous one, {}",
                    self.last_peer_stream_id
                ),
            });
        }
        self.last_peer_stream_id = id;
        if self.streams.len() >= self.config.max_concurrent_streams {
            self.reset_stream(id, RstStatus::REFUSED_STREAM);
            return Ok(());
        }
        let unidirectional = flags & FLAG_UNIDIRECTIONAL != 0;
        self.streams.insert(
            id,
            StreamState {
                headers: Some(headers),
                accepted: false,
                handles: 0,
                recv: VecDeque::new(),
                buffered: 0,
                recv_window: i64::from(self.config.initial_window_size),
                recv_unacked: 0,
                remote_fin: flags & FLAG_FIN != 0,
                recv_closed: false,
                read_waker: None,
                room_waker: None,
                replied: false,
                local_fin: unidirectional,
                unidirectional,
                send_window: self.peer_initial_window,
                queued: 0,
                write_waker: None,
                reset: None,
            },
        );
        self.accept_queue.push_back(id);
        wake(&mut self.accept_waker);
        Ok(())
    }

    fn peer_reset(&mut self, id: u32, status: RstStatus) {
        if !self.streams.contains_key(&id) {
            return;
        }
        self.purge_data(id);
        if let Some(s) = self.streams.get_mut(&id) {
            s.reset = Some((status, true));
            s.recv.clear();
            s.buffered = 0;
            wake(&mut s.read_waker);
            wake(&mut s.write_waker);
            wake(&mut s.room_waker);
        }
        self.maybe_remove(id);
    }

    fn settings(&mut self, entries: &[Setting]) -> Result<(), Error> {
        // Only the first value of an id counts, and only the initial window is used (one
        // pass: a frame may carry two million entries).
        if let Some(e) = entries
            .iter()
            .find(|e| e.id == SETTINGS_INITIAL_WINDOW_SIZE)
        {
            let size = i64::from(e.value);
            if size > MAX_WINDOW {
                return Err(Error::Protocol {
                    at: At::new(FrameKind::Settings, None),
                    reason: format!("initial window size {size} is over 2^31 - 1"),
                });
            }
            let delta = size - self.peer_initial_window;
            self.peer_initial_window = size;
            self.peer_flow_control = true;
            for s in self.streams.values_mut() {
                s.send_window += delta;
                wake(&mut s.write_waker);
            }
        }
        Ok(())
    }

    fn window_update(&mut self, id: u32, delta: u32) -> Result<(), Error> {
        self.peer_flow_control = true;
        let delta = i64::from(delta);
        if id == 0 {
            self.conn_send_window += delta;
            if self.conn_send_window > MAX_WINDOW {
                return Err(Error::Protocol {
                    at: At::new(FrameKind::WindowUpdate, None),
                    reason: "connection window over 2^31 - 1".to_owned(),
                });
            }
            for s in self.streams.values_mut() {
                wake(&mut s.write_waker);
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.local_fin || s.reset.is_some() {
            return Ok(()); // Updates after our last frame are ignored.
        }
        s.send_window += delta;
        if s.send_window > MAX_WINDOW {
            self.reset_stream(id, RstStatus::FLOW_CONTROL_ERROR);
        } else {
            wake(&mut s.write_waker);
        }
        Ok(())
    }

    /// The accounting for a DATA frame; whether its payload goes to the stream.
    fn data_received(&mut self, id: u32, flags: u8, len: usize) -> Result<bool, Error> {
        let at = At::new(FrameKind::Data, Some(id));
        self.conn_recv_window -= len as i64;
        if self.enforcing() && self.conn_recv_window < 0 {
            return Err(Error::Protocol {
                at,
                reason: "over the connection's flow-control window".to_owned(),
            });
        }
        // The connection window is replenished on receipt: each stream's buffer is bounded
        // by its own window, so one unread stream cannot hold the others up.
        self.conn_recv_unacked += len;
        if self.conn_recv_unacked >= (DEFAULT_WINDOW_SIZE / 2) as usize {
            let delta = self.conn_recv_unacked;
            self.conn_recv_unacked = 0;
            self.conn_recv_window += delta as i64;
            self.push_control(Frame::WindowUpdate {
                stream_id: 0,
                delta: delta as u32,
            });
        }
        let enforcing = self.enforcing();
        let Some(s) = self.streams.get_mut(&id) else {
            if !self.was_opened(id) {
                self.reset_stream(id, RstStatus::INVALID_STREAM);
            }
            return Ok(false); // Else in flight when the stream ended here.
        };
        if s.reset.is_some() {
            return Ok(false);
        }
        if s.remote_fin {
            self.reset_stream(id, RstStatus::STREAM_ALREADY_CLOSED);
            return Ok(false);
        }
        s.recv_window -= len as i64;
        if enforcing && s.recv_window < 0 {
            self.reset_stream(id, RstStatus::FLOW_CONTROL_ERROR);
            return Ok(false);
        }
        if s.recv_closed {
            if flags & FLAG_FIN != 0 {
                s.remote_fin = true;
            }
            self.ack(id, len);
            self.maybe_remove(id);
            return Ok(false);
        }
        Ok(true)
    }

    /// Hands a DATA payload to its stream as the stream's buffer has room for it (what is
    /// left stays in `data`), so no stream holds more than its window.
    fn poll_deliver(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        flags: u8,
        data: &mut Bytes,
    ) -> Poll<()> {
        let limit = self.config.initial_window_size as usize;
        let failed = self.error.is_some();
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(());
        };
        if s.reset.is_some() || failed {
            return Poll::Ready(());
        }
        if s.recv_closed {
            if flags & FLAG_FIN != 0 {
                s.remote_fin = true;
            }
            let n = data.len();
            self.ack(id, n);
            self.maybe_remove(id);
            return Poll::Ready(());
        }
        let room = limit.saturating_sub(s.buffered);
        if !data.is_empty() && room > 0 {
            // A copy, not a slice: a slice would hold the whole read buffer it came from
            // (up to a 16 MiB frame's) for as long as the application leaves it queued, so
            // a peer alternating 1-byte DATA and large control frames would make the
            // window's 64 KiB hold gigabytes.
            let part = Bytes::copy_from_slice(&data.split_to(room.min(data.len())));
            s.buffered += part.len();
            s.recv.push_back(part);
            wake(&mut s.read_waker);
        }
        if !data.is_empty() {
            // Only a peer that ignores the windows gets here: stop reading until the
            // application takes some.
            s.room_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if flags & FLAG_FIN != 0 {
            s.remote_fin = true;
            wake(&mut s.read_waker);
        }
        self.maybe_remove(id);
        Poll::Ready(())
    }

    fn poll_control_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.control.len() < CONTROL_QUEUE_LIMIT || self.closed() {
            return Poll::Ready(());
        }
        self.reader_room_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// A header block that inflated but does not parse: reset that stream only.
    fn header_block_error(&mut self, at: At, id: u32, status: RstStatus) {
        if at.frame == FrameKind::SynStream && id & 1 == 1 && id > self.last_peer_stream_id {
            self.last_peer_stream_id = id;
        }
        self.reset_stream(id, status);
    }

    // The writer.

    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<Frame>>> {
        if !self.control.is_empty() || !self.data.is_empty() {
            let mut batch: Vec<Frame> = self.control.drain(..).collect();
            let mut bytes = 0;
            while bytes < WRITE_BATCH_BYTES {
                let Some(frame) = self.data.pop_front() else {
                    break;
                };
                if let Frame::Data { data, .. } = &frame {
                    bytes += data.len();
                }
                batch.push(frame);
            }
            wake(&mut self.reader_room_waker);
            return Poll::Ready(Some(batch));
        }
        let graceful_end =
            self.goaway_sent && self.streams.is_empty() && self.accept_queue.is_empty();
        if self.error.is_some() || self.reader_done || graceful_end {
            return Poll::Ready(None);
        }
        self.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn batch_written(&mut self, written: &[(u32, usize)]) {
        for &(id, n) in written {
            self.queued_data_bytes = self.queued_data_bytes.saturating_sub(n);
            if let Some(s) = self.streams.get_mut(&id) {
                s.queued = s.queued.saturating_sub(n);
                wake(&mut s.write_waker);
            }
        }
        for w in self.space_wakers.drain(..) {
            w.wake();
        }
    }

    // The application's side.

    fn connection_error(&self) -> Option<Error> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        if self.writer_done || self.reader_done {
            return Some(Error::ConnectionClosed);
        }
        None
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Option<(u32, Headers, bool)>> {
        while let Some(id) = self.accept_queue.pop_front() {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if s.reset.is_some() {
                self.streams.remove(&id);
                continue;
            }
            s.accepted = true;
            s.handles = 2;
            let headers = s.headers.take().unwrap_or_default();
            return Poll::Ready(Some((id, headers, s.unidirectional)));
        }
        if self.error.is_some() || self.reader_done || self.goaway_sent || self.goaway_received {
            return Poll::Ready(None);
        }
        self.accept_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), Error>> {
        let conn_err = self.connection_error();
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(Error::ConnectionClosed));
        };
        if let Some((status, by_peer)) = s.reset {
            return Poll::Ready(Err(Error::Reset {
                stream_id: id,
                status,
                by_peer,
            }));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(front) = s.recv.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() {
                s.recv.pop_front();
            }
            s.buffered -= n;
            wake(&mut s.room_waker);
            self.ack(id, n);
            return Poll::Ready(Ok(()));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = conn_err {
            return Poll::Ready(Err(e));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        let conn_err = self.connection_error();
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(Error::ConnectionClosed));
        };
        if let Some((status, by_peer)) = s.reset {
            return Poll::Ready(Err(Error::Reset {
                stream_id: id,
                status,
                by_peer,
            }));
        }
        if let Some(chunk) = s.recv.pop_front() {
            s.buffered -= chunk.len();
            wake(&mut s.room_waker);
            self.ack(id, chunk.len());
            return Poll::Ready(Ok(Some(chunk)));
        }
        if s.remote_fin {
            return Poll::Ready(Ok(None));
        }
        if let Some(e) = conn_err {
            return Poll::Ready(Err(e));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The stream's send side, if it may send.
    fn sendable(&mut self, id: u32) -> Result<&mut StreamState, Error> {
        if let Some(e) = self.connection_error() {
            return Err(e);
        }
        let s = self.streams.get_mut(&id).ok_or(Error::ConnectionClosed)?;
        if let Some((status, by_peer)) = s.reset {
            return Err(Error::Reset {
                stream_id: id,
                status,
                by_peer,
            });
        }
        if s.unidirectional {
            return Err(Error::Stream {
                stream_id: id,
                reason: "unidirectional: this end may not send",
            });
        }
        Ok(s)
    }

    fn reply(&mut self, id: u32, headers: Headers, fin: bool) -> Result<(), Error> {
        let s = self.sendable(id)?;
        if s.replied {
            return Err(Error::Stream {
                stream_id: id,
                reason: "SYN_REPLY already sent",
            });
        }
        s.replied = true;
        if fin {
            s.local_fin = true;
        }
        self.push_control(Frame::SynReply {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            headers,
        });
        self.maybe_remove(id);
        Ok(())
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        data: &[u8],
    ) -> Poll<Result<usize, Error>> {
        self.poll_write_from(cx, id, data.len(), &mut |n| {
            Bytes::copy_from_slice(&data[..n])
        })
    }

    /// Queues up to `len` bytes for stream `id`, as many as the frame size and the windows
    /// allow; `take(n)` gives the first `n` of them.
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        len: usize,
        take: &mut dyn FnMut(usize) -> Bytes,
    ) -> Poll<Result<usize, Error>> {
        let enforcing = self.enforcing();
        let (conn_window, queue_full) = (
            self.conn_send_window,
            self.queued_data_bytes >= self.config.max_queued_bytes,
        );
        let max_frame = self.config.max_send_frame_size.clamp(1, MAX_FRAME_LENGTH);
        let s = match self.sendable(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if !s.replied {
            return Poll::Ready(Err(Error::Stream {
                stream_id: id,
                reason: "data before SYN_REPLY",
            }));
        }
        if s.local_fin {
            return Poll::Ready(Err(Error::Stream {
                stream_id: id,
                reason: "write after FIN",
            }));
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut n = len.min(max_frame);
        if enforcing {
            let window = s.send_window.min(conn_window);
            if window <= 0 {
                s.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(window as usize);
        }
        if queue_full {
            self.space_wakers.push(cx.waker().clone());
            return Poll::Pending;
        }
        s.send_window -= n as i64;
        s.queued += n;
        self.conn_send_window -= n as i64;
        self.queued_data_bytes += n;
        self.data.push_back(Frame::Data {
            stream_id: id,
            flags: 0,
            data: take(n),
        });
        wake(&mut self.writer_waker);
        Poll::Ready(Ok(n))
    }

    /// Queues this end's FIN (an empty DATA frame after the stream's data).
    fn close(&mut self, id: u32) -> Result<(), Error> {
        let s = self.sendable(id)?;
        if s.local_fin {
            return Ok(());
        }
        if !s.replied {
            return Err(Error::Stream {
                stream_id: id,
                reason: "FIN before SYN_REPLY",
            });
        }
        s.local_fin = true;
        self.data.push_back(Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        });
        wake(&mut self.writer_waker);
        self.maybe_remove(id);
        Ok(())
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>, id: u32) -> Poll<Result<(), Error>> {
        let conn_err = self.connection_error();
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        if let Some((status, by_peer)) = s.reset {
            return Poll::Ready(Err(Error::Reset {
                stream_id: id,
                status,
                by_peer,
            }));
        }
        if s.queued == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = conn_err {
            return Poll::Ready(Err(e));
        }
        s.write_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Connection {
    /// Serves SPDY/3.1 on `io` (the transport after the 101 Switching Protocols) with the
    /// default [`Config`]. Needs a tokio runtime.
    pub fn server<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::server_with(io, Config::default())
    }

    pub fn server_with<T>(io: T, mut config: Config) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        config.initial_window_size = config
            .initial_window_size
            .clamp(DEFAULT_WINDOW_SIZE, MAX_WINDOW as u32);
        let initial = BytesMut::from(&std::mem::take(&mut config.initial_bytes)[..]);
        let decoder = Decoder::new(config.max_frame_size, config.max_header_block_size);
        let mut control = VecDeque::new();
        if config.initial_window_size != DEFAULT_WINDOW_SIZE {
            control.push_back(Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 0,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: config.initial_window_size,
                }],
            });
        }
        let (abort, abort_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                config,
                streams: HashMap::new(),
                accept_queue: VecDeque::new(),
                accept_waker: None,
                last_peer_stream_id: 0,
                control,
                data: VecDeque::new(),
                queued_data_bytes: 0,
                writer_waker: None,
                space_wakers: Vec::new(),
                reader_room_waker: None,
                conn_send_window: i64::from(DEFAULT_WINDOW_SIZE),
                conn_recv_window: i64::from(DEFAULT_WINDOW_SIZE),
                conn_recv_unacked: 0,
                peer_initial_window: i64::from(DEFAULT_WINDOW_SIZE),
                peer_flow_control: false,
                goaway_sent: false,
                goaway_received: false,
                error: None,
                reader_done: false,
                writer_done: false,
                done_wakers: Vec::new(),
                next_ping_id: 2,
                pings: HashMap::new(),
            }),
            abort,
        });
        let (rd, wr) = tokio::io::split(io);
        tokio::spawn(run_reader(
            shared.clone(),
            rd,
            decoder,
            initial,
            abort_rx.clone(),
        ));
        tokio::spawn(run_writer(shared.clone(), wr, abort_rx));
        Connection {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The next stream the peer opened; `None` once no more will come (GOAWAY either way,
    /// the connection ended or failed: see [`Connection::closed`]).
    pub async fn accept(&self) -> Option<Stream> {
        let shared = self.shared();
        let (id, headers, unidirectional) = poll_fn(|cx| shared.lock().poll_accept(cx)).await?;
        Some(Stream {
            headers,
            unidirectional,
            recv: RecvStream {
                id,
                shared: shared.clone(),
            },
            send: SendStream {
                id,
                shared: shared.clone(),
            },
        })
    }

    /// Sends a PING and waits for its echo: the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared().lock();
            if let Some(e) = st.connection_error() {
                return Err(e);
            }
            let id = st.next_ping_id;
            st.next_ping_id = if id >= 0x7FFF_FFFE { 2 } else { id + 2 };
            st.pings.insert(id, tx);
            st.control.push_front(Frame::Ping { id });
            wake(&mut st.writer_waker);
        }
        let start = Instant::now();
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(self
                .shared()
                .lock()
                .connection_error()
                .unwrap_or(Error::ConnectionClosed)),
        }
    }

    /// Sends GOAWAY (OK): no new streams; the transport is closed once the accepted
    /// streams are done.
    pub fn goaway(&self) {
        self.shared().lock().goaway(GoAwayStatus::OK);
    }

    /// Ends the connection now: the transport is dropped, streams fail.
    pub fn abort(&self) {
        let shared = self.shared();
        shared.lock().fail(Error::ConnectionClosed, None);
        let _ = shared.abort.send(true);
    }

    /// Whether the peer sent GOAWAY.
    pub fn peer_went_away(&self) -> bool {
        self.shared().lock().goaway_received
    }

    /// Waits for the connection to end: `Ok` for a clean end (GOAWAY or end of input
    /// between frames), else the error that ended it.
    pub async fn closed(&self) -> Result<(), Error> {
        poll_fn(|cx| {
            let mut st = self.shared().lock();
            if st.reader_done && st.writer_done {
                return Poll::Ready(match &st.error {
                    Some(Error::ConnectionClosed) | None => Ok(()),
                    // A peer that said GOAWAY may then drop the connection hard.
                    Some(Error::Io(_)) if st.goaway_received => Ok(()),
                    Some(e) => Err(e.clone()),
                });
            }
            st.done_wakers.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

async fn run_reader<R>(
    shared: Arc<Shared>,
    mut io: R,
    mut decoder: Decoder,
    mut buf: BytesMut,
    mut abort: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
{
    let mut room = READ_ROOM_MIN;
    let result: Result<(), Error> = async {
        loop {
            loop {
                poll_fn(|cx| shared.lock().poll_control_room(cx)).await;
                let frame = match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => match (e.stream_error(), &e) {
                        (Some((id, status)), Error::HeaderBlock { at, .. }) => {
                            shared.lock().header_block_error(*at, id, status);
                            continue;
                        }
                        _ => return Err(e),
                    },
                };
                if let Frame::Data {
                    stream_id,
                    flags,
                    data,
                } = frame
                {
                    if shared.lock().data_received(stream_id, flags, data.len())? {
                        let mut data = data;
                        poll_fn(|cx| shared.lock().poll_deliver(cx, stream_id, flags, &mut data))
                            .await;
                    }
                } else {
                    shared.lock().control_frame(frame)?;
                }
            }
            if shared.lock().closed() {
                return Ok(());
            }
            // Room for the next read: 16 KiB, doubled (up to 256 KiB) after each read that
            // filled all the room it had, as a bulk transfer does: its frames (32 KiB from a Go
            // client) then arrive whole in one read, not in 16 KiB pieces that were copied
            // into a grown buffer to be joined.
            let low = if room > READ_ROOM_MIN { room / 2 } else { 4096 };
            if buf.capacity() - buf.len() < low {
                buf.reserve(room);
            }
            let offered = buf.capacity() - buf.len();
            let n = tokio::select! {
                r = io.read_buf(&mut buf) => r?,
                _ = abort.wait_for(|a| *a) => return Ok(()),
            };
            room = if n == offered {
                (room * 2).min(READ_ROOM_MAX)
            } else {
                READ_ROOM_MIN
            };
            if n == 0 {
                if buf.is_empty() {
                    return Ok(());
                }
                return Err(truncated(&buf));
            }
        }
    }
    .await;
    let mut st = shared.lock();
    st.reader_done = true;
    if let Err(e) = result {
        let goaway = match e {
            Error::Io(_) | Error::Truncated { .. } => None,
            _ => Some(GoAwayStatus::PROTOCOL_ERROR),
        };
        st.fail(e, goaway);
    }
    st.wake_everyone();
}

fn truncated(buf: &[u8]) -> Error {
    if buf.len() < HEADER_LEN {
        return Error::Truncated {
            at: None,
            have: buf.len(),
            need: HEADER_LEN,
        };
    }
    let w0 = be32(buf, 0);
    let at = if w0 & 0x8000_0000 != 0 {
        At::new(FrameKind::from_type(w0 as u16), None)
    } else {
        At::new(FrameKind::Data, Some(w0 & 0x7FFF_FFFF))
    };
    Error::Truncated {
        at: Some(at),
        have: buf.len(),
        need: HEADER_LEN + (be32(buf, 4) & 0xFF_FFFF) as usize,
    }
}

async fn run_writer<W>(shared: Arc<Shared>, mut io: W, mut abort: watch::Receiver<bool>)
where
    W: AsyncWrite + Unpin,
{
    let mut encoder = Encoder::new();
    let mut out = Vec::with_capacity(64 * 1024);
    let result: Result<(), Error> = async {
        loop {
            let batch = tokio::select! {
                b = poll_fn(|cx| shared.lock().poll_batch(cx)) => b,
                _ = abort.wait_for(|a| *a) => return Ok(()),
            };
            let Some(batch) = batch else {
                break;
            };
            out.clear();
            let mut written = Vec::new();
            for frame in &batch {
                encoder.encode(frame, &mut out)?;
                if let Frame::Data {
                    stream_id, data, ..
                } = frame
                {
                    written.push((*stream_id, data.len()));
                }
            }
            tokio::select! {
                r = async { io.write_all(&out).await?; io.flush().await } => r?,
                _ = abort.wait_for(|a| *a) => return Ok(()),
            }
            shared.lock().batch_written(&written);
        }
        tokio::select! {
            _ = io.shutdown() => {}
            _ = abort.wait_for(|a| *a) => {}
        }
        Ok(())
    }
    .await;
    {
        let mut st = shared.lock();
        st.writer_done = true;
        if let Err(e) = result {
            st.fail(e, None);
        }
        st.wake_everyone();
    }
    // The reader has nothing left to do once nothing can be written.
    let _ = shared.abort.send(true);
}

/// A stream the peer opened: its SYN_STREAM headers, a receive half and a send half.
pub struct Stream {
    headers: Headers,
    unidirectional: bool,
    recv: RecvStream,
    send: SendStream,
}

/// The receiving half of a stream: [`AsyncRead`], or [`RecvStream::read`]. Dropping it
/// discards what arrives later (still acknowledged, so the peer is not held up).
pub struct RecvStream {
    id: u32,
    shared: Arc<Shared>,
}

/// The sending half of a stream: [`AsyncWrite`] (shutdown sends FIN), or
/// [`SendStream::write`] and [`SendStream::close`]. When both halves are gone before this
/// end sent FIN, the stream is reset with CANCEL.
pub struct SendStream {
    id: u32,
    shared: Arc<Shared>,
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.recv.id
    }

    /// The headers of the SYN_STREAM that opened it.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Opened with FLAG_UNIDIRECTIONAL: this end may only receive.
    pub fn is_unidirectional(&self) -> bool {
        self.unidirectional
    }

    /// Accepts the stream with a SYN_REPLY carrying `headers`.
    pub async fn reply(&self, headers: &[(&str, &str)]) -> Result<(), Error> {
        self.send.reply(headers.into(), false).await
    }

    /// A SYN_REPLY with any headers; `fin` closes this end's side at once.
    pub async fn reply_with(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        self.send.reply(headers, fin).await
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv.read(buf).await
    }

    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        self.recv.read_chunk().await
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.send.write(data).await
    }

    pub async fn close(&mut self) -> Result<(), Error> {
        self.send.close().await
    }

    /// Resets the stream (RST_STREAM with `status`).
    pub fn reset(&self, status: RstStatus) {
        self.send.reset(status);
    }

    pub fn split(self) -> (RecvStream, SendStream) {
        (self.recv, self.send)
    }
}

impl RecvStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads into `buf`; 0 is the peer's FIN.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut rb = ReadBuf::new(buf);
        poll_fn(|cx| self.shared.lock().poll_read(cx, self.id, &mut rb)).await?;
        Ok(rb.filled().len())
    }

    /// The next DATA payload as it arrived; `None` after the peer's FIN.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| self.shared.lock().poll_read_chunk(cx, self.id)).await
    }

    /// Reads to the peer's FIN.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(chunk) = self.read_chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }
}

impl SendStream {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub async fn reply(&self, headers: Headers, fin: bool) -> Result<(), Error> {
        self.shared.lock().reply(self.id, headers, fin)
    }

    /// Writes all of `data` (queued for the writer, within the flow-control windows).
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.shared.lock().poll_write(cx, self.id, data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Writes all of `data` as [`write`](Self::write) does, without copying it: the frames
    /// queued for the writer are slices of it.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> Result<(), Error> {
        while !data.is_empty() {
            let len = data.len();
            poll_fn(|cx| {
                self.shared
                    .lock()
                    .poll_write_from(cx, self.id, len, &mut |n| data.split_to(n))
            })
            .await?;
        }
        Ok(())
    }

    /// Sends FIN after the data written so far.
    pub async fn close(&mut self) -> Result<(), Error> {
        self.shared.lock().close(self.id)
    }

    /// Waits until the data written so far has gone to the transport.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.shared.lock().poll_flush(cx, self.id)).await
    }

    pub fn reset(&self, status: RstStatus) {
        let mut st = self.shared.lock();
        let live = st.streams.get(&self.id).is_some_and(|s| s.reset.is_none());
        if live {
            st.reset_stream(self.id, status);
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        self.shared.lock().release(self.id, true);
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        self.shared.lock().release(self.id, false);
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        self.shared
            .lock()
            .poll_read(cx, id, buf)
            .map_err(Error::into_io)
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        self.shared
            .lock()
            .poll_write(cx, id, data)
            .map_err(Error::into_io)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        self.shared
            .lock()
            .poll_flush(cx, id)
            .map_err(Error::into_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut st = self.shared.lock();
        if let Err(e) = st.close(id) {
            return Poll::Ready(Err(e.into_io()));
        }
        st.poll_flush(cx, id).map_err(Error::into_io)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use tokio::time::timeout;

    const LONG: Duration = Duration::from_secs(10);
    const QUIET: Duration = Duration::from_millis(300);

    /// What moby/spdystream wrote for three kubectl-style SYN_STREAMs (one zlib context
    /// across them; the first carries streamtype=stdout, port=80, requestid=0, the second
    /// streamtype=error, the third streamtype=stdin with FIN) and a PING, from
    /// gotest/vector (github.com/moby/spdystream v0.5.1 over net.Pipe).
    #[rustfmt::skip]
    const GO_VECTOR: &[u8] = &[
        0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0x25, 0x3a, 0x70, 0x3a, 0x2b, 0x29, 0x4a,
        0x4d, 0xcc, 0x85, 0x16, 0x25, 0x6c, 0xc5, 0x25, 0x29, 0xf9, 0xe0, 0x82, 0x98, 0xa5, 0x20, 0xbf,
        0x08, 0x44, 0x33, 0x59, 0x18, 0x30, 0x30, 0x30, 0x70, 0x16, 0x41, 0x62, 0x31, 0x13, 0x94, 0xba,
        0x19, 0x0d, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x18,
        0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x11, 0x18, 0x7a, 0x59, 0x53,
        0x41, 0x91, 0x04, 0x00, 0x00, 0x00, 0xff, 0xff, 0x80, 0x03, 0x00, 0x01, 0x01, 0x00, 0x00, 0x17,
        0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc2, 0x2e, 0x55, 0x5c, 0x92, 0x92,
        0x99, 0x07, 0x00, 0x00, 0x00, 0xff, 0xff, 0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00,
        0x00, 0x00, 0x01,
    ];

    // The client end, at the frame level, with its own compression contexts.
    struct Peer {
        rd: ReadHalf<DuplexStream>,
        wr: Option<WriteHalf<DuplexStream>>,
        enc: Encoder,
        dec: Decoder,
        buf: BytesMut,
    }

    impl Peer {
        async fn send(&mut self, frame: Frame) {
            let mut out = Vec::new();
            self.enc.encode(&frame, &mut out).unwrap();
            self.send_raw(&out).await;
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            let wr = self.wr.as_mut().expect("writer taken");
            wr.write_all(bytes).await.unwrap();
        }

        fn take_writer(&mut self) -> (WriteHalf<DuplexStream>, Encoder) {
            let enc = std::mem::take(&mut self.enc);
            (self.wr.take().unwrap(), enc)
        }

        /// The next frame, `None` at end of input, `Err(())` after `wait` with none.
        async fn next_within(&mut self, wait: Duration) -> Result<Option<Frame>, ()> {
            let deadline = Instant::now() + wait;
            loop {
                if let Some(frame) = self.dec.decode(&mut self.buf).unwrap() {
                    return Ok(Some(frame));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match timeout(left, self.rd.read_buf(&mut self.buf)).await {
                    Err(_) => return Err(()),
                    Ok(Ok(0)) => return Ok(None),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(None),
                    Ok(Err(e)) => panic!("peer read: {e}"),
                }
            }
        }

        async fn next(&mut self) -> Option<Frame> {
            self.next_within(LONG)
                .await
                .expect("no frame from the server")
        }

        async fn frame(&mut self) -> Frame {
            self.next().await.expect("the server closed the connection")
        }

        /// Frames until `done` holds for what came so far.
        async fn collect(&mut self, done: impl Fn(&[Frame]) -> bool) -> Vec<Frame> {
            let mut frames = Vec::new();
            while !done(&frames) {
                frames.push(self.frame().await);
            }
            frames
        }

        /// Frames until none comes for `QUIET`.
        async fn drain(&mut self) -> Vec<Frame> {
            let mut frames = Vec::new();
            while let Ok(Some(frame)) = self.next_within(QUIET).await {
                frames.push(frame);
            }
            frames
        }
    }

    fn pair(config: Config) -> (Connection, Peer) {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let conn = Connection::server_with(server_io, config);
        let (rd, wr) = tokio::io::split(client_io);
        let peer = Peer {
            rd,
            wr: Some(wr),
            enc: Encoder::new(),
            dec: Decoder::new(MAX_FRAME_LENGTH, 1 << 20),
            buf: BytesMut::new(),
        };
        (conn, peer)
    }

    fn syn(stream_id: u32, headers: &[(&str, &str)], flags: u8) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags,
            headers: headers.into(),
        }
    }

    fn data(stream_id: u32, bytes: &[u8], flags: u8) -> Frame {
        Frame::Data {
            stream_id,
            flags,
            data: Bytes::copy_from_slice(bytes),
        }
    }

    fn window(stream_id: u32, delta: u32) -> Frame {
        Frame::WindowUpdate { stream_id, delta }
    }

    fn payload(frames: &[Frame], id: u32) -> Vec<u8> {
        let mut all = Vec::new();
        for f in frames {
            if let Frame::Data {
                stream_id, data, ..
            } = f
            {
                if *stream_id == id {
                    all.extend_from_slice(data);
                }
            }
        }
        all
    }

    fn fin(frames: &[Frame], id: u32) -> bool {
        frames.iter().any(|f| match f {
            Frame::Data {
                stream_id, flags, ..
            }
            | Frame::SynReply {
                stream_id, flags, ..
            } => *stream_id == id && flags & FLAG_FIN != 0,
            _ => false,
        })
    }

    fn has(frames: &[Frame], want: &Frame) -> bool {
        frames.iter().any(|f| f == want)
    }

    fn replied(frames: &[Frame], id: u32) -> bool {
        frames
            .iter()
            .any(|f| matches!(f, Frame::SynReply { stream_id, .. } if *stream_id == id))
    }

    fn stream_window_updates(frames: &[Frame], id: u32) -> u64 {
        frames
            .iter()
            .map(|f| match f {
                Frame::WindowUpdate { stream_id, delta } if *stream_id == id => u64::from(*delta),
                _ => 0,
            })
            .sum()
    }

    async fn accept_replied(conn: &Connection) -> Stream {
        let s = timeout(LONG, conn.accept())
            .await
            .unwrap()
            .expect("a stream");
        s.reply(&[]).await.unwrap();
        s
    }

    // The codec.

    fn all_frames() -> Vec<Frame> {
        let mut multi = Headers::new();
        multi.insert("X-Multi", "a");
        multi.insert("x-multi", "b");
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                slot: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: (&[("streamtype", "stdout"), ("port", "80")][..]).into(),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 7,
                slot: 2,
                flags: 0,
                headers: multi,
            },
            data(3, b"hello", 0),
            data(3, b"", FLAG_FIN),
            Frame::RstStream {
                stream_id: 3,
                status: RstStatus::CANCEL,
            },
            Frame::Settings {
                flags: FLAG_SETTINGS_CLEAR_SETTINGS,
                entries: vec![
                    Setting {
                        flags: 1,
                        id: SETTINGS_MAX_CONCURRENT_STREAMS,
                        value: 100,
                    },
                    Setting {
                        flags: 0,
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        value: 1 << 20,
                    },
                ],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: GoAwayStatus::PROTOCOL_ERROR,
            },
            Frame::Headers {
                stream_id: 5,
                flags: FLAG_FIN,
                headers: (&[("a", "b")][..]).into(),
            },
            window(0, 1 << 20),
            window(5, 0x7FFF_FFFF),
            Frame::Unknown {
                frame_type: 10,
                flags: 0,
                payload: Bytes::from_static(b"credential"),
            },
        ]
    }

    #[test]
    fn codec_round_trips_every_frame() {
        let frames = all_frames();
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        let mut dec = Decoder::new(MAX_FRAME_LENGTH, 1 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        for f in &frames {
            assert_eq!(dec.decode(&mut buf).unwrap().as_ref(), Some(f));
        }
        assert!(buf.is_empty());
        assert_eq!(dec.decode(&mut buf).unwrap(), None);

        // The same bytes fed one at a time.
        let mut dec = Decoder::new(MAX_FRAME_LENGTH, 1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn codec_wire_layout() {
        let mut enc = Encoder::new();
        let mut out = Vec::new();
        enc.encode(&data(0x7FFF_FFFF, b"xy", FLAG_FIN), &mut out)
            .unwrap();
        assert_eq!(out, [0x7F, 0xFF, 0xFF, 0xFF, 0x01, 0, 0, 2, b'x', b'y']);
        out.clear();
        enc.encode(&Frame::Ping { id: 7 }, &mut out).unwrap();
        assert_eq!(out, [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 7]);
        out.clear();
        enc.encode(&window(3, 1000), &mut out).unwrap();
        assert_eq!(
            out,
            [0x80, 0x03, 0x00, 0x09, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0x03, 0xE8]
        );
        out.clear();
        // A header block: zlib header with FDICT and the dictionary's id, sync-flushed.
        enc.encode(&syn(1, &[("a", "b")], 0), &mut out).unwrap();
        assert_eq!(&out[..4], &[0x80, 0x03, 0x00, 0x01]);
        assert_eq!(out[18] & 0x0F, 8, "deflate");
        assert_ne!(out[19] & 0x20, 0, "FDICT");
        assert_eq!(be32(&out, 20), DICTIONARY_ID);
        assert_eq!(
            &out[out.len() - 4..],
            &[0x00, 0x00, 0xFF, 0xFF],
            "sync flush"
        );
        let too_big = Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from(vec![0u8; MAX_FRAME_LENGTH + 1]),
        };
        assert!(matches!(
            enc.encode(&too_big, &mut Vec::new()),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",enq=0."));
        // What Go's zlib put in the vector's first header block as the dictionary's id.
        assert_eq!(be32(GO_VECTOR, 20), DICTIONARY_ID);
        assert_eq!(DICTIONARY_ID, 0xE3C6_A7C2);
    }

    #[test]
    fn decodes_go_spdystream_vector() {
        let mut dec = Decoder::new(MAX_FRAME_LENGTH, 1 << 20);
        let mut buf = BytesMut::from(GO_VECTOR);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 4, "{frames:?}");
        let Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } = &frames[0]
        else {
            panic!("{:?}", frames[0]);
        };
        assert_eq!((*stream_id, *flags, headers.len()), (1, 0, 3));
        assert_eq!(headers.get("streamtype"), Some("stdout"));
        assert_eq!(headers.get("Port"), Some("80"));
        assert_eq!(headers.get("requestid"), Some("0"));
        assert_eq!(frames[1], syn(3, &[("streamtype", "error")], 0));
        assert_eq!(frames[2], syn(5, &[("streamtype", "stdin")], FLAG_FIN));
        assert_eq!(frames[3], Frame::Ping { id: 1 });
    }

    #[test]
    fn headers_multi_values() {
        let mut h = Headers::new();
        h.insert("Accept", "a");
        h.insert("accept", "b");
        h.insert("x", "");
        assert_eq!(h.get("ACCEPT"), Some("a"));
        assert_eq!(h.get_all("accept").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.get("x"), Some(""));
        assert_eq!(h.get("missing"), None);
        assert_eq!(h.iter().next(), Some(("accept", "a\0b")));
        assert_eq!(h.len(), 2);
    }

    fn decode_one(bytes: &[u8], max: usize) -> Result<Option<Frame>, Error> {
        Decoder::new(max, 1 << 20).decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn codec_rejects_malformed_frames() {
        // Version 2.
        let e = decode_one(
            &[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1],
            MAX_FRAME_LENGTH,
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedVersion { version: 2, .. }),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "SPDY PING frame: version 2 is not supported (only SPDY/3)"
        );
        // Truncated: no frame yet.
        assert_eq!(
            decode_one(
                &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0],
                MAX_FRAME_LENGTH
            )
            .unwrap(),
            None
        );
        assert_eq!(decode_one(&[0x80, 0x03], MAX_FRAME_LENGTH).unwrap(), None);
        // Oversized: refused from the header alone.
        let e = decode_one(&[0, 0, 0, 1, 0, 0x10, 0, 0], 4096).unwrap_err();
        assert!(
            matches!(
                e,
                Error::FrameTooLarge {
                    length: 0x10_0000,
                    max: 4096,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "SPDY DATA frame (stream 1): 1048576-byte payload is over the 4096-byte frame limit"
        );
        // Fixed lengths.
        let e = decode_one(
            &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 5, 0, 0, 0, 1, 0],
            MAX_FRAME_LENGTH,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "SPDY PING frame: length 5, must be 4");
        let e = decode_one(
            &[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
            MAX_FRAME_LENGTH,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "SPDY RST_STREAM frame (stream 1): status 0");
        let e = decode_one(&[0, 0, 0, 0, 0, 0, 0, 0], MAX_FRAME_LENGTH).unwrap_err();
        assert!(matches!(e, Error::InvalidFrame { .. }), "{e}");
        let e = decode_one(
            &[0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0, 0, 0, 2],
            MAX_FRAME_LENGTH,
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 entries in 4 bytes"), "{e}");
        // A SYN_STREAM too short for its fixed fields.
        let e = decode_one(
            &[0x80, 0x03, 0x00, 0x01, 0, 0, 0, 4, 0, 0, 0, 1],
            MAX_FRAME_LENGTH,
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 10"), "{e}");
    }

    #[test]
    fn codec_rejects_corrupt_header_blocks() {
        // Not zlib at all.
        let mut frame = vec![
            0x80, 0x03, 0x00, 0x01, 0, 0, 0, 18, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
        ];
        frame.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4]);
        let e = decode_one(&frame, MAX_FRAME_LENGTH).unwrap_err();
        assert!(matches!(e, Error::Compression { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("SPDY SYN_STREAM frame (stream 1): header block does not inflate"),
            "{e}"
        );
        assert_eq!(e.stream_error(), None, "a zlib error ends the connection");

        // zlib, but with another dictionary.
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(b"not the spdy dictionary").unwrap();
        let mut block = Vec::with_capacity(256);
        z.compress_vec(&[0, 0, 0, 0], &mut block, FlushCompress::Sync)
            .unwrap();
        let mut frame = vec![
            0x80,
            0x03,
            0x00,
            0x02,
            0,
            0,
            0,
            4 + block.len() as u8,
            0,
            0,
            0,
            1,
        ];
        frame.extend_from_slice(&block);
        let e = decode_one(&frame, MAX_FRAME_LENGTH).unwrap_err();
        assert!(e.to_string().contains("not SPDY/3's"), "{e}");

        // An inflation bomb: a small block that inflates past the limit.
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        let big = "a".repeat(100_000);
        enc.encode(&syn(1, &[("big", &big)], 0), &mut wire).unwrap();
        assert!(wire.len() < 2000);
        let e = Decoder::new(MAX_FRAME_LENGTH, 4096)
            .decode(&mut BytesMut::from(&wire[..]))
            .unwrap_err();
        assert!(
            matches!(e, Error::HeaderBlockTooLarge { max: 4096, .. }),
            "{e}"
        );
        // Limits a few bytes above a size the inflate buffer doubles to (4 x the compressed
        // length, then 8 x, 16 x): the last step up to the limit is under 256 bytes.
        let block = wire.len() - 18;
        for max in [
            4 * block + 1,
            8 * block + 100,
            16 * block + 255,
            32 * block + 7,
        ] {
            let e = Decoder::new(MAX_FRAME_LENGTH, max)
                .decode(&mut BytesMut::from(&wire[..]))
                .unwrap_err();
            assert!(matches!(e, Error::HeaderBlockTooLarge { .. }), "{max}: {e}");
        }
    }

    /// Many pairs in one header block: a name given twice is found among them (by a sort,
    /// not by a pass over the pairs before each pair).
    #[test]
    fn a_name_given_twice_among_many_pairs() {
        // The raw block (an encoder joins a name's values into one pair).
        let block = |names: &[String]| {
            let mut b = (names.len() as u32).to_be_bytes().to_vec();
            for n in names {
                b.extend_from_slice(&(n.len() as u32).to_be_bytes());
                b.extend_from_slice(n.as_bytes());
                b.extend_from_slice(&0u32.to_be_bytes());
            }
            b
        };
        let mut names: Vec<String> = (0..60_000).map(|i| format!("h{i}")).collect();
        assert_eq!(
            parse_header_block(&block(&names)).unwrap().pairs.len(),
            60_000
        );
        names.push("H59999".into());
        let e = parse_header_block(&block(&names)).unwrap_err();
        assert_eq!(e, "header \"h59999\" given twice");
    }

    #[test]
    fn bad_header_block_content_is_a_stream_error() {
        let dup = Headers {
            pairs: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        };
        let mut enc = Encoder::new();
        let mut wire = Vec::new();
        enc.encode(
            &Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: dup,
            },
            &mut wire,
        )
        .unwrap();
        enc.encode(&syn(3, &[("a", "1")], 0), &mut wire).unwrap();
        let mut dec = Decoder::new(MAX_FRAME_LENGTH, 1 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        let e = dec.decode(&mut buf).unwrap_err();
        assert_eq!(e.stream_error(), Some((1, RstStatus::PROTOCOL_ERROR)));
        assert_eq!(
            e.to_string(),
            "SPDY SYN_STREAM frame (stream 1): bad header block: header \"a\" given twice"
        );
        // The compression context is still in step: the next frame decodes.
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(syn(3, &[("a", "1")], 0))
        );

        let block = |b: &[u8]| parse_header_block(b).unwrap_err();
        assert_eq!(
            block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            "empty header name"
        );
        assert!(block(&[0, 0, 0, 9, 0, 0, 0, 0]).contains("cannot fit"));
        assert!(block(&[0, 0, 0, 0, 1]).contains("after the last pair"));
        assert!(block(&[0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 5, b'x']).contains("truncated"));
    }

    // The connection.

    #[tokio::test]
    async fn exec_like_session() {
        let (conn, mut peer) = pair(Config::default());
        let server = tokio::spawn(async move {
            let mut streams = HashMap::new();
            for _ in 0..4 {
                let s = accept_replied(&conn).await;
                assert_eq!(s.headers().get("requestid"), Some("0"));
                streams.insert(s.headers().get("streamtype").unwrap().to_owned(), s);
            }
            let (mut stdin_r, mut stdin_w) = streams.remove("stdin").unwrap().split();
            let input = stdin_r.read_to_end().await.unwrap();
            let mut stdout = streams.remove("stdout").unwrap();
            let mut stderr = streams.remove("stderr").unwrap();
            let mut error = streams.remove("error").unwrap();
            stdout.write(&input.to_ascii_uppercase()).await.unwrap();
            stdout.close().await.unwrap();
            stderr.write(b"warn\n").await.unwrap();
            stderr.close().await.unwrap();
            error
                .write(br#"{"metadata":{},"status":"Success"}"#)
                .await
                .unwrap();
            error.close().await.unwrap();
            stdin_w.close().await.unwrap();
            // The client closes its sides too.
            for s in [&mut stdout, &mut stderr, &mut error] {
                assert_eq!(s.read_chunk().await.unwrap(), None);
            }
            conn
        });
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
            peer.send(syn(id, &[("streamtype", kind), ("requestid", "0")], 0))
                .await;
        }
        peer.send(Frame::Ping { id: 1 }).await;
        let frames = peer
            .collect(|f| {
                [1, 3, 5, 7].iter().all(|id| replied(f, *id)) && has(f, &Frame::Ping { id: 1 })
            })
            .await;
        assert!(frames.iter().all(|f| !matches!(f, Frame::RstStream { .. })));
        peer.send(data(3, b"hello ", 0)).await;
        peer.send(data(3, b"spdy", 0)).await;
        peer.send(data(3, b"", FLAG_FIN)).await;
        let frames = peer
            .collect(|f| [1, 3, 5, 7].iter().all(|id| fin(f, *id)))
            .await;
        assert_eq!(payload(&frames, 5), b"HELLO SPDY");
        assert_eq!(payload(&frames, 7), b"warn\n");
        assert_eq!(
            payload(&frames, 1),
            br#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(payload(&frames, 3), b"");
        for id in [1, 5, 7] {
            peer.send(data(id, b"", FLAG_FIN)).await;
        }
        let conn = timeout(LONG, server).await.unwrap().unwrap();
        // Closed both ways and dropped: forgotten.
        assert!(conn.shared().lock().streams.is_empty());
        peer.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        })
        .await;
        assert!(timeout(LONG, conn.accept()).await.unwrap().is_none());
        assert!(conn.peer_went_away());
        // The server said nothing more: no RST_STREAM for anything.
        assert!(peer
            .drain()
            .await
            .iter()
            .all(|f| !matches!(f, Frame::RstStream { .. })));
    }

    #[tokio::test]
    async fn pings_both_ways() {
        let (conn, mut peer) = pair(Config::default());
        peer.send(Frame::Ping { id: 7 }).await;
        assert_eq!(peer.frame().await, Frame::Ping { id: 7 });
        // An even id is the server's own: not echoed.
        peer.send(Frame::Ping { id: 8 }).await;
        assert!(peer.drain().await.is_empty());
        let conn2 = conn.clone();
        let ping = tokio::spawn(async move { conn2.ping().await });
        let Frame::Ping { id } = peer.frame().await else {
            panic!("not a ping")
        };
        assert_eq!(id & 1, 0);
        peer.send(Frame::Ping { id }).await;
        assert!(timeout(LONG, ping).await.unwrap().unwrap().is_ok());
    }

    #[tokio::test]
    async fn send_windows_stall_and_resume() {
        let config = Config {
            flow_control: FlowControl::Strict,
            ..Config::default()
        };
        let (conn, mut peer) = pair(config);
        peer.send(syn(1, &[("streamtype", "stdout")], 0)).await;
        let server = tokio::spawn(async move {
            let mut s = accept_replied(&conn).await;
            s.write(&[7u8; 150_000]).await.unwrap();
            s.close().await.unwrap();
            (conn, s)
        });
        let first = peer.drain().await;
        assert!(replied(&first, 1));
        assert_eq!(payload(&first, 1).len(), 65536, "the initial stream window");
        // The stream's window alone does not help: the connection's is spent too.
        peer.send(window(1, 65536)).await;
        assert!(payload(&peer.drain().await, 1).is_empty());
        peer.send(window(0, 1 << 20)).await;
        assert_eq!(payload(&peer.drain().await, 1).len(), 65536);
        peer.send(window(1, 1 << 20)).await;
        let rest = peer.collect(|f| fin(f, 1)).await;
        assert_eq!(payload(&rest, 1).len(), 150_000 - 2 * 65536);
        let _ = timeout(LONG, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn initial_window_setting_and_one_stalled_stream() {
        let (conn, mut peer) = pair(Config::default());
        // A peer that keeps windows says so: Auto mode starts enforcing them.
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: 16384,
            }],
        })
        .await;
        peer.send(window(0, 1 << 20)).await;
        peer.send(syn(1, &[("streamtype", "stdout")], 0)).await;
        peer.send(syn(3, &[("streamtype", "stderr")], 0)).await;
        let server = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..2 {
                let mut s = accept_replied(&conn).await;
                tasks.push(tokio::spawn(async move {
                    s.write(&[1u8; 100_000]).await.unwrap();
                    s.close().await.unwrap();
                    s
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            conn
        });
        // Acknowledge stderr as it comes, never stdout.
        let (mut out, mut err, mut err_fin) = (0, 0, false);
        while let Ok(Some(f)) = peer.next_within(QUIET).await {
            if let Frame::Data {
                stream_id,
                flags,
                data,
            } = &f
            {
                if *stream_id == 3 {
                    err += data.len();
                    err_fin |= flags & FLAG_FIN != 0;
                    if !data.is_empty() {
                        peer.send(window(3, data.len() as u32)).await;
                    }
                } else {
                    out += data.len();
                }
            }
        }
        assert_eq!(out, 16384, "stdout stalls at the announced window");
        assert_eq!((err, err_fin), (100_000, true), "stderr is not held up");
        peer.send(window(1, 1 << 20)).await;
        let rest = peer.collect(|f| fin(f, 1)).await;
        assert_eq!(payload(&rest, 1).len(), 100_000 - 16384);
        timeout(LONG, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_unread_stream_stalls_only_itself() {
        let (conn, mut peer) = pair(Config::default());
        let (go_read, read_now) = oneshot::channel::<()>();
        let (resized, got_resize) = oneshot::channel::<Vec<u8>>();
        let server = tokio::spawn(async move {
            let mut stdin = accept_replied(&conn).await;
            let mut resize = accept_replied(&conn).await;
            let mut buf = [0u8; 64];
            let n = resize.read(&mut buf).await.unwrap();
            resized.send(buf[..n].to_vec()).unwrap();
            read_now.await.unwrap();
            let mut left = 40_000;
            let mut buf = vec![0u8; 8192];
            while left > 0 {
                let n = stdin.read(&mut buf[..left.min(8192)]).await.unwrap();
                assert!(n > 0 && buf[..n].iter().all(|b| *b == 9));
                left -= n;
            }
            (conn, stdin, resize)
        });
        peer.send(syn(1, &[("streamtype", "stdin")], 0)).await;
        peer.send(syn(3, &[("streamtype", "resize")], 0)).await;
        // A full window of stdin that nobody reads yet.
        peer.send(data(1, &[9u8; 32768], 0)).await;
        peer.send(data(1, &[9u8; 32768], 0)).await;
        peer.send(data(3, b"{\"Width\":80}", 0)).await;
        assert_eq!(
            timeout(LONG, got_resize).await.unwrap().unwrap(),
            b"{\"Width\":80}"
        );
        let frames = peer.drain().await;
        assert_eq!(
            stream_window_updates(&frames, 1),
            0,
            "nothing of stdin was read"
        );
        assert!(
            stream_window_updates(&frames, 0) >= 32768,
            "connection window replenished on receipt"
        );
        go_read.send(()).unwrap();
        let frames = peer.collect(|f| stream_window_updates(f, 1) > 0).await;
        assert!(stream_window_updates(&frames, 1) >= 32768);
        timeout(LONG, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn overfilling_a_window_resets_the_stream() {
        let config = Config {
            flow_control: FlowControl::Strict,
            ..Config::default()
        };
        let (conn, mut peer) = pair(config);
        peer.send(syn(1, &[("streamtype", "stdin")], 0)).await;
        let mut s = accept_replied(&conn).await;
        peer.send(data(1, &[0u8; 65536], 0)).await;
        peer.send(data(1, b"!", 0)).await;
        let frames = peer
            .collect(|f| f.iter().any(|f| matches!(f, Frame::RstStream { .. })))
            .await;
        assert!(has(
            &frames,
            &Frame::RstStream {
                stream_id: 1,
                status: RstStatus::FLOW_CONTROL_ERROR
            }
        ));
        let e = s.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Reset {
                    stream_id: 1,
                    status: RstStatus::FLOW_CONTROL_ERROR,
                    by_peer: false
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "SPDY stream 1 reset by this end: FLOW_CONTROL_ERROR"
        );
    }

    #[tokio::test]
    async fn a_peer_without_flow_control_is_not_stalled() {
        // moby/spdystream: no WINDOW_UPDATE, no SETTINGS, writes as much as it likes.
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[("streamtype", "stdout")], 0)).await;
        peer.send(syn(3, &[("streamtype", "stdin")], 0)).await;
        let (mut wr, mut enc) = peer.take_writer();
        let sender = tokio::spawn(async move {
            // 256 KiB in one frame (Go writes a bytes.Reader in one Write), then 32 KiB
            // frames (io.Copy).
            let first: Vec<u8> = (0..8u8).flat_map(|i| [i; 32768]).collect();
            let mut out = Vec::new();
            enc.encode(&data(3, &first, 0), &mut out).unwrap();
            wr.write_all(&out).await.unwrap();
            for i in 8..32u8 {
                let mut out = Vec::new();
                enc.encode(&data(3, &[i; 32768], 0), &mut out).unwrap();
                wr.write_all(&out).await.unwrap();
            }
            let mut out = Vec::new();
            enc.encode(&data(3, b"", FLAG_FIN), &mut out).unwrap();
            wr.write_all(&out).await.unwrap();
            wr
        });
        let server = tokio::spawn(async move {
            let mut stdout = accept_replied(&conn).await;
            let mut stdin = accept_replied(&conn).await;
            stdout.write(&vec![5u8; 1 << 20]).await.unwrap();
            stdout.close().await.unwrap();
            // A slow reader: the buffer stays bounded, the data arrives whole and in order.
            let mut got = Vec::new();
            while let Some(chunk) = stdin.read_chunk().await.unwrap() {
                got.extend_from_slice(&chunk);
                let buffered = conn.shared().lock().streams[&3].buffered;
                assert!(buffered <= 65536, "{buffered} bytes buffered");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(got.len(), 32 * 32768);
            assert!(got
                .chunks(32768)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| *b == i as u8)));
            (conn, stdout, stdin)
        });
        let frames = peer.collect(|f| fin(f, 1)).await;
        assert_eq!(payload(&frames, 1).len(), 1 << 20);
        timeout(LONG, server).await.unwrap().unwrap();
        timeout(LONG, sender).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn resets_both_ways() {
        let (conn, mut peer) = pair(Config::default());
        for id in [1, 3, 5] {
            peer.send(syn(id, &[], 0)).await;
        }
        let mut a = accept_replied(&conn).await;
        let b = accept_replied(&conn).await;
        let c = accept_replied(&conn).await;
        // The peer cancels stream 1.
        peer.send(Frame::RstStream {
            stream_id: 1,
            status: RstStatus::CANCEL,
        })
        .await;
        let e = a.read(&mut [0u8; 4]).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Reset {
                    stream_id: 1,
                    status: RstStatus::CANCEL,
                    by_peer: true
                }
            ),
            "{e}"
        );
        assert!(matches!(a.write(b"x").await, Err(Error::Reset { .. })));
        // Data the peer had in flight is dropped without another RST.
        peer.send(data(1, b"late", 0)).await;
        // This end resets stream 3; dropping stream 5 unfinished cancels it.
        b.reset(RstStatus::INTERNAL_ERROR);
        drop(c);
        let frames = peer
            .collect(|f| {
                f.iter()
                    .filter(|f| matches!(f, Frame::RstStream { .. }))
                    .count()
                    == 2
            })
            .await;
        assert!(has(
            &frames,
            &Frame::RstStream {
                stream_id: 3,
                status: RstStatus::INTERNAL_ERROR
            }
        ));
        assert!(has(
            &frames,
            &Frame::RstStream {
                stream_id: 5,
                status: RstStatus::CANCEL
            }
        ));
        assert!(peer
            .drain()
            .await
            .iter()
            .all(|f| !matches!(f, Frame::RstStream { .. })));
        // Unknown streams get INVALID_STREAM.
        peer.send(data(9, b"?", 0)).await;
        assert_eq!(
            peer.frame().await,
            Frame::RstStream {
                stream_id: 9,
                status: RstStatus::INVALID_STREAM
            }
        );
        drop((a, b));
        assert!(conn.shared().lock().streams.is_empty());
    }

    #[tokio::test]
    async fn goaway_from_the_peer_ends_accepting() {
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[], 0)).await;
        peer.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        })
        .await;
        let mut s = accept_replied(&conn).await;
        assert!(timeout(LONG, conn.accept()).await.unwrap().is_none());
        // The stream it had opened carries on.
        s.write(b"still here").await.unwrap();
        s.close().await.unwrap();
        let frames = peer.collect(|f| fin(f, 1)).await;
        assert_eq!(payload(&frames, 1), b"still here");
    }

    #[tokio::test]
    async fn goaway_from_this_end_then_close() {
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[], 0)).await;
        let mut s = accept_replied(&conn).await;
        conn.goaway();
        let frames = peer
            .collect(|f| f.iter().any(|f| matches!(f, Frame::GoAway { .. })))
            .await;
        assert!(has(
            &frames,
            &Frame::GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::OK
            }
        ));
        assert!(timeout(LONG, conn.accept()).await.unwrap().is_none());
        // New streams are ignored now.
        peer.send(syn(3, &[], 0)).await;
        assert!(peer.drain().await.is_empty());
        s.write(b"bye").await.unwrap();
        s.close().await.unwrap();
        peer.send(data(1, b"", FLAG_FIN)).await;
        assert_eq!(s.read_chunk().await.unwrap(), None);
        drop(s);
        // With its last stream done the server closes the transport.
        let rest = peer.collect(|f| fin(f, 1)).await;
        assert_eq!(payload(&rest, 1), b"bye");
        assert_eq!(peer.next().await, None);
        timeout(LONG, conn.closed()).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn session_errors_send_goaway_and_close() {
        // Bad version.
        let (conn, mut peer) = pair(Config::default());
        peer.send_raw(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
            .await;
        assert_eq!(
            peer.frame().await,
            Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::PROTOCOL_ERROR
            }
        );
        assert_eq!(peer.next().await, None);
        let e = timeout(LONG, conn.closed()).await.unwrap().unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedVersion { version: 2, .. }),
            "{e}"
        );
        assert!(conn.accept().await.is_none());

        // A corrupt header block, after a good stream.
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[("streamtype", "stdout")], 0)).await;
        let mut s = accept_replied(&conn).await;
        let mut frame = vec![
            0x80, 0x03, 0x00, 0x01, 0, 0, 0, 18, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0,
        ];
        frame.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4]);
        peer.send_raw(&frame).await;
        let frames = peer
            .collect(|f| f.iter().any(|f| matches!(f, Frame::GoAway { .. })))
            .await;
        assert!(has(
            &frames,
            &Frame::GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::PROTOCOL_ERROR
            }
        ));
        let e = timeout(LONG, conn.closed()).await.unwrap().unwrap_err();
        assert!(matches!(e, Error::Compression { .. }), "{e}");
        assert!(matches!(
            s.read(&mut [0u8; 4]).await,
            Err(Error::Compression { .. })
        ));
        assert!(s.write(b"x").await.is_err());

        // An oversized frame, refused before its payload arrives.
        let config = Config {
            max_frame_size: 1024,
            ..Config::default()
        };
        let (conn, mut peer) = pair(config);
        peer.send_raw(&[0, 0, 0, 1, 0, 0, 0x08, 0]).await;
        assert!(matches!(peer.frame().await, Frame::GoAway { .. }));
        let e = timeout(LONG, conn.closed()).await.unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                Error::FrameTooLarge {
                    length: 2048,
                    max: 1024,
                    ..
                }
            ),
            "{e}"
        );

        // Stream ids going down.
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(5, &[], 0)).await;
        peer.send(syn(3, &[], 0)).await;
        let frames = peer
            .collect(|f| f.iter().any(|f| matches!(f, Frame::GoAway { .. })))
            .await;
        assert!(has(
            &frames,
            &Frame::GoAway {
                last_good_stream_id: 5,
                status: GoAwayStatus::PROTOCOL_ERROR
            }
        ));
        let e = timeout(LONG, conn.closed()).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("SYN_STREAM frame (stream 3)"), "{e}");
    }

    #[tokio::test]
    async fn a_bad_header_block_resets_only_its_stream() {
        let (conn, mut peer) = pair(Config::default());
        let dup = Headers {
            pairs: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        };
        peer.send(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: dup,
        })
        .await;
        peer.send(syn(3, &[("streamtype", "stdout")], 0)).await;
        assert_eq!(
            peer.frame().await,
            Frame::RstStream {
                stream_id: 1,
                status: RstStatus::PROTOCOL_ERROR
            }
        );
        let s = accept_replied(&conn).await;
        assert_eq!((s.id(), s.headers().get("streamtype")), (3, Some("stdout")));
        assert!(replied(&[peer.frame().await], 3));
    }

    #[tokio::test]
    async fn the_connection_ending_fails_open_streams() {
        // Cleanly, between frames.
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[], 0)).await;
        let mut s = accept_replied(&conn).await;
        assert!(replied(&[peer.frame().await], 1));
        drop(peer);
        assert!(matches!(
            s.read(&mut [0u8; 4]).await,
            Err(Error::ConnectionClosed)
        ));
        assert!(s.write(b"x").await.is_err());
        assert!(conn.accept().await.is_none());
        timeout(LONG, conn.closed()).await.unwrap().unwrap();

        // In the middle of a frame.
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[], 0)).await;
        let mut s = accept_replied(&conn).await;
        peer.send_raw(&[0, 0, 0, 1, 0, 0, 0, 10, b'a']).await;
        let (mut wr, _) = peer.take_writer();
        wr.shutdown().await.unwrap();
        let e = timeout(LONG, conn.closed()).await.unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "SPDY connection ended inside a DATA frame (stream 1) (9 of 18 bytes)"
        );
        assert!(s.read(&mut [0u8; 4]).await.is_err());
    }

    #[tokio::test]
    async fn async_read_write_halves() {
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[("streamtype", "data")], 0)).await;
        let server = tokio::spawn(async move {
            let s = accept_replied(&conn).await;
            let (mut r, mut w) = s.split();
            // Echo: port-forward's shape.
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
            (conn, r, w)
        });
        peer.send(data(1, b"ping ", 0)).await;
        peer.send(data(1, b"pong", FLAG_FIN)).await;
        let frames = peer.collect(|f| fin(f, 1)).await;
        assert_eq!(payload(&frames, 1), b"ping pong");
        timeout(LONG, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn initial_bytes_and_larger_window() {
        let mut enc = Encoder::new();
        let mut early = Vec::new();
        enc.encode(&syn(1, &[("streamtype", "early")], 0), &mut early)
            .unwrap();
        let config = Config {
            initial_bytes: early,
            initial_window_size: 1 << 20,
            ..Config::default()
        };
        let (conn, mut peer) = pair(config);
        peer.enc = enc;
        // The larger receive window is announced first.
        assert_eq!(
            peer.frame().await,
            Frame::Settings {
                flags: 0,
                entries: vec![Setting {
                    flags: 0,
                    id: SETTINGS_INITIAL_WINDOW_SIZE,
                    value: 1 << 20
                }]
            }
        );
        let s = accept_replied(&conn).await;
        assert_eq!(s.headers().get("streamtype"), Some("early"));
        peer.send(syn(3, &[("streamtype", "later")], 0)).await;
        let s = accept_replied(&conn).await;
        assert_eq!(s.headers().get("streamtype"), Some("later"));
    }

    #[tokio::test]
    async fn misuse_is_reported_per_stream() {
        let (conn, mut peer) = pair(Config::default());
        peer.send(syn(1, &[], FLAG_UNIDIRECTIONAL)).await;
        peer.send(syn(3, &[], 0)).await;
        let uni = timeout(LONG, conn.accept()).await.unwrap().unwrap();
        assert!(uni.is_unidirectional());
        assert!(uni.reply(&[]).await.is_err());
        let mut s = timeout(LONG, conn.accept()).await.unwrap().unwrap();
        let e = s.write(b"x").await.unwrap_err();
        assert_eq!(e.to_string(), "SPDY stream 3: data before SYN_REPLY");
        s.reply(&[("k", "v")]).await.unwrap();
        assert!(s.reply(&[]).await.is_err());
        s.close().await.unwrap();
        assert_eq!(
            s.write(b"x").await.unwrap_err().to_string(),
            "SPDY stream 3: write after FIN"
        );
        let frames = peer.collect(|f| fin(f, 3)).await;
        assert!(has(
            &frames,
            &Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: (&[("k", "v")][..]).into()
            }
        ));
    }
}
