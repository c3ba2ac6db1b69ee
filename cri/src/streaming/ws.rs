//! The Kubernetes channel protocols over WebSocket: each message is one channel's data, its
//! first byte the channel (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize). In the
//! `base64` variants a message is text: the channel as an ASCII digit, then the data in
//! base64. Version 5 adds channel 255, whose one-byte payload names a channel the client is
//! done writing (its stdin closed).

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub const PROTOCOLS: [&str; 4] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v5.base64.channel.k8s.io",
    "v4.base64.channel.k8s.io",
];

/// The kubelet's channel protocols for port-forward (two channels per port: data, error).
pub const PF_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The largest message accepted from a client: the kubelet's (x/net/websocket's default,
/// 32 MiB). A client's stdin write larger than a smaller cap ended the stream: the process
/// got its stdin cut short and an EOF.
pub const MAX_MESSAGE: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Proto {
    pub name: &'static str,
    pub v5: bool,
    pub base64: bool,
}

/// The subprotocol to answer, from the client's comma-separated offer (our order of
/// preference: the newest version, binary before base64).
pub fn choose(offered: &str) -> Option<Proto> {
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    PROTOCOLS
        .iter()
        .find(|p| offered.contains(p))
        .map(|name| Proto {
            name,
            v5: name.starts_with("v5."),
            base64: name.contains("base64"),
        })
}

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// What a client sent.
#[derive(Debug, PartialEq)]
pub enum In {
    Data(u8, Vec<u8>),
    /// v5: the client closed its side of a channel.
    Closed(u8),
}

pub type Io = super::idle::Idle<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;
type Ws = tokio_tungstenite::WebSocketStream<Io>;

pub struct Channels {
    ws: Ws,
    pub proto: Proto,
}

pub struct Writer {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    proto: Proto,
}

pub struct Reader {
    stream: futures_util::stream::SplitStream<Ws>,
    proto: Proto,
}

impl Channels {
    pub fn new(ws: Ws, proto: Proto) -> Channels {
        Channels { ws, proto }
    }

    pub fn split(self) -> (Writer, Reader) {
        let (sink, stream) = self.ws.split();
        (
            Writer {
                sink,
                proto: self.proto,
            },
            Reader {
                stream,
                proto: self.proto,
            },
        )
    }
}

/// One message of channel `ch` carrying `data`.
pub fn encode(proto: Proto, ch: u8, data: &[u8]) -> Message {
    if proto.base64 {
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push(char::from(b'0' + ch));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::text(s)
    } else {
        let mut b = Vec::with_capacity(1 + data.len());
        b.push(ch);
        b.extend_from_slice(data);
        Message::binary(b)
    }
}

/// A client's message; None for what carries no channel data (ping, pong, empty).
pub fn decode(proto: Proto, m: Message) -> Result<Option<In>, String> {
    let (ch, data) = match m {
        Message::Binary(b) if !proto.base64 => match b.split_first() {
            Some((ch, rest)) => (*ch, rest.to_vec()),
            None => return Ok(None),
        },
        Message::Text(t) if proto.base64 => {
            let t = t.as_str();
            let Some(first) = t.bytes().next() else {
                return Ok(None);
            };
            // The channel as `'0' + n` (the kubelet reads any byte from '0' on: port-forward
            // channels pass '9').
            if first < b'0' {
                return Err(format!(
                    "base64 message with channel {:?}",
                    char::from(first)
                ));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(&t[1..])
                .map_err(|e| format!("base64 message on channel {}: {e}", first - b'0'))?;
            (first - b'0', data)
        }
        Message::Binary(_) | Message::Text(_) => {
            return Err(format!(
                "a {} message under {}",
                if proto.base64 { "binary" } else { "text" },
                proto.name
            ))
        }
        _ => return Ok(None),
    };
    if proto.v5 && ch == 255 {
        return match data.as_slice() {
            [c] => Ok(Some(In::Closed(*c))),
            _ => Err("a close message must name one channel".into()),
        };
    }
    Ok(Some(In::Data(ch, data)))
}

impl Writer {
    pub async fn send(&mut self, ch: u8, data: &[u8]) -> Result<(), String> {
        self.sink
            .send(encode(self.proto, ch, data))
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn close(&mut self) {
        use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
        // A normal closure (1000): clients take anything else, even 1005, as an error.
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }
}

impl Reader {
    /// The next channel message; None when the client closed or the connection broke.
    pub async fn recv(&mut self) -> Option<Result<In, String>> {
        loop {
            match self.stream.next().await? {
                Ok(Message::Close(_)) => return None,
                Ok(m) => match decode(self.proto, m) {
                    Ok(Some(x)) => return Some(Ok(x)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_newest() {
        let p = choose("v4.channel.k8s.io, v5.channel.k8s.io").unwrap();
        assert_eq!(p.name, "v5.channel.k8s.io");
        assert!(p.v5 && !p.base64);
        let p = choose("v4.base64.channel.k8s.io").unwrap();
        assert!(!p.v5 && p.base64);
        assert_eq!(choose("channel.k8s.io, v3.channel.k8s.io"), None);
    }

    #[test]
    fn framing_round_trips() {
        for name in PROTOCOLS {
            let p = choose(name).unwrap();
            let m = encode(p, 1, b"hello\0\xff");
            // What we send a client is what a client of the same protocol sends us.
            assert_eq!(
                decode(p, m).unwrap(),
                Some(In::Data(1, b"hello\0\xff".to_vec()))
            );
        }
        let v5 = choose("v5.channel.k8s.io").unwrap();
        assert_eq!(
            decode(v5, Message::binary(vec![255u8, 0])).unwrap(),
            Some(In::Closed(0))
        );
        let v4 = choose("v4.channel.k8s.io").unwrap();
        assert_eq!(
            decode(v4, Message::binary(vec![255u8, 0])).unwrap(),
            Some(In::Data(255, vec![0]))
        );
        assert!(decode(v4, Message::text("1aGk=")).is_err());
        let b64 = choose("v5.base64.channel.k8s.io").unwrap();
        assert!(decode(b64, Message::text("x!!")).is_err());
        assert!(decode(b64, Message::text("1***")).is_err());
        assert_eq!(decode(v4, Message::binary(Vec::<u8>::new())).unwrap(), None);
    }
}
