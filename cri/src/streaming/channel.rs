//! The channels of an exec or attach session (stdin 0, stdout 1, stderr 2, error 3, resize 4)
//! over either transport: WebSocket (one connection, a channel byte per message: ws.rs) or
//! SPDY/3.1 (one stream per channel, named by its `streamType` header: spdy.rs).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::spdy;
use super::ws::{self, In};

/// How long a SPDY client has to open the streams its request needs (the kubelet's
/// stream creation timeout).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// The resize stream's JSON objects (`{"Width":W,"Height":H}`), as they arrive in pieces.
#[derive(Default)]
struct ResizeParser {
    pending: Vec<u8>,
}

impl ResizeParser {
    /// The objects `b` completes, each as JSON; Err(bytes pending) when the stream is not
    /// JSON, or an incomplete object grows past `MAX_RESIZE_MESSAGE`.
    fn push(&mut self, b: &[u8]) -> Result<Vec<Vec<u8>>, usize> {
        self.pending.extend_from_slice(b);
        let mut it =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<serde_json::Value>();
        let mut used = 0;
        let mut out = Vec::new();
        let mut bad = false;
        loop {
            match it.next() {
                Some(Ok(v)) => {
                    used = it.byte_offset();
                    out.push(serde_json::to_vec(&v).unwrap_or_default());
                }
                // An object not whole yet: the next message ends it.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    bad = true;
                    break;
                }
                None => break,
            }
        }
        self.pending.drain(..used);
        if bad || self.pending.len() > MAX_RESIZE_MESSAGE {
            return Err(self.pending.len());
        }
        Ok(out)
    }
}

/// The longest resize message kept while it is incomplete (`{"Width":65535,"Height":65535}`
/// is 31 bytes).
const MAX_RESIZE_MESSAGE: usize = 4096;

pub enum Channels {
    Ws(Box<ws::Channels>),
    Spdy(Writer, Reader),
}

pub enum Writer {
    Ws(ws::Writer),
    Spdy {
        streams: HashMap<u8, spdy::SendStream>,
        /// Kept until the session ends (the last handle dropped ends the connection).
        _conn: spdy::Connection,
        /// Watches the connection for the client's departure (see `Channels::spdy`).
        _watch: AbortOnDrop,
    },
}

/// A task that ends with the session.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub enum Reader {
    Ws(ws::Reader),
    Spdy(mpsc::Receiver<In>),
}

impl Channels {
    pub fn split(self) -> (Writer, Reader) {
        match self {
            Channels::Ws(c) => {
                let (w, r) = (*c).split();
                (Writer::Ws(w), Reader::Ws(r))
            }
            Channels::Spdy(w, r) => (w, r),
        }
    }

    /// The streams of a SPDY remote-command session: waits for those the request needs
    /// (`want`: channel numbers), replies to each, and reads stdin and resize into channel
    /// messages.
    pub async fn spdy(conn: spdy::Connection, want: &[u8]) -> Result<Channels, String> {
        let mut send = HashMap::new();
        let (tx, rx) = mpsc::channel::<In>(8);
        let mut missing: Vec<u8> = want.to_vec();
        let deadline = tokio::time::Instant::now() + STREAMS_TIMEOUT;
        while !missing.is_empty() {
            let s = tokio::time::timeout_at(deadline, conn.accept())
                .await
                .map_err(|_| format!("the client did not open streams {missing:?} in time"))?
                .ok_or("the client went away before opening its streams")?;
            let ch = match s.headers().get("streamtype") {
                Some("stdin") => 0,
                Some("stdout") => 1,
                Some("stderr") => 2,
                Some("error") => 3,
                Some("resize") => 4,
                other => {
                    s.reset(spdy::RstStatus::REFUSED_STREAM);
                    return Err(format!("unknown stream type {other:?}"));
                }
            };
            s.reply(&[]).await.map_err(|e| e.to_string())?;
            missing.retain(|c| *c != ch);
            let (mut r, w) = s.split();
            send.insert(ch, w);
            if ch == 0 || ch == 4 {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut resize = ResizeParser::default();
                    loop {
                        match r.read_chunk().await {
                            Ok(Some(b)) if ch == 0 => {
                                if tx.send(In::Data(0, b.to_vec())).await.is_err() {
                                    break;
                                }
                            }
                            // Resize: a sequence of JSON objects, sent one per message.
                            Ok(Some(b)) => match resize.push(&b) {
                                Ok(objects) => {
                                    for o in objects {
                                        if tx.send(In::Data(4, o)).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                // Not JSON, or an object longer than any size message: the
                                // resize stream is closed (the kubelet's stops at the first
                                // error too), the session carries on.
                                Err(pending) => {
                                    tracing::info!(
                                        "streaming: malformed resize stream closed ({pending} bytes pending)"
                                    );
                                    let _ = tx.send(In::Closed(ch)).await;
                                    break;
                                }
                            },
                            Ok(None) | Err(_) => {
                                let _ = tx.send(In::Closed(ch)).await;
                                break;
                            }
                        }
                    }
                });
            }
        }
        // The reader ends (None) when the client is gone, not when its input streams are
        // done: a client that half-closed stdin (`echo x | kubectl attach -i`) still reads
        // the output. accept() ends once the connection ended or either side said GOAWAY;
        // streams beyond the session's are refused meanwhile.
        let watch = {
            let conn = conn.clone();
            tokio::spawn(async move {
                while let Some(s) = conn.accept().await {
                    s.reset(spdy::RstStatus::REFUSED_STREAM);
                }
                drop(tx);
            })
        };
        Ok(Channels::Spdy(
            Writer::Spdy {
                streams: send,
                _conn: conn,
                _watch: AbortOnDrop(watch),
            },
            Reader::Spdy(rx),
        ))
    }
}

impl Writer {
    pub async fn send(&mut self, ch: u8, data: &[u8]) -> Result<(), String> {
        match self {
            Writer::Ws(w) => w.send(ch, data).await,
            // A SPDY stream carries no empty "ready" message; an unopened channel is dropped.
            Writer::Spdy { streams, .. } => match streams.get_mut(&ch) {
                Some(s) if !data.is_empty() => s.write(data).await.map_err(|e| e.to_string()),
                _ => Ok(()),
            },
        }
    }

    pub async fn close(&mut self) {
        match self {
            Writer::Ws(w) => w.close().await,
            // Every stream's data out and its FIN sent; the connection (GOAWAY, then the
            // socket) ends when the last handle is dropped.
            Writer::Spdy { streams, .. } => {
                for s in streams.values_mut() {
                    let _ = s.flush().await;
                    let _ = s.close().await;
                }
            }
        }
    }
}

impl Reader {
    /// The next channel message; None when the client is gone.
    pub async fn recv(&mut self) -> Option<Result<In, String>> {
        match self {
            Reader::Ws(r) => r.recv().await,
            Reader::Spdy(rx) => rx.recv().await.map(Ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ResizeParser, MAX_RESIZE_MESSAGE};

    #[test]
    fn resize_messages_in_pieces_and_junk() {
        let mut p = ResizeParser::default();
        assert_eq!(p.push(br#"{"Width":80,"#).unwrap().len(), 0);
        let got = p.push(br#""Height":24}{"Width":1,"Height":2}"#).unwrap();
        assert_eq!(got.len(), 2);
        let v: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
        assert_eq!(
            (v["Width"].as_u64(), v["Height"].as_u64()),
            (Some(80), Some(24))
        );
        // Junk is refused at once, not kept.
        let mut p = ResizeParser::default();
        assert!(p.push(&[b'}'; 64 * 1024]).is_err());
        // An object that never ends is refused once over the bound, not kept growing.
        let mut p = ResizeParser::default();
        assert!(p.push(br#"{"Width":""#).is_ok());
        let mut refused = false;
        for _ in 0..64 {
            if p.push(&[b'a'; 1024]).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused && p.pending.len() <= MAX_RESIZE_MESSAGE + 1024);
    }
}
