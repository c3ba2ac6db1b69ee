//! A minimal, synchronous D-Bus client: just what the systemd cgroup driver needs (method
//! calls to systemd's manager and waiting for its JobRemoved signal) over a blocking unix
//! socket, without threads or an event loop (the runtime forks; see docs/design.md for why
//! not zbus).
//!
//! Wire format: little-endian messages of the D-Bus specification, version 1, SASL EXTERNAL
//! authentication with the caller's uid. Only the basic types, arrays, structs and variants
//! are supported; no unix fds.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::error::{Error, Result};

/// A D-Bus value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Byte(u8),
    Bool(bool),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    Str(String),
    Path(String),
    Sig(String),
    /// Element signature and elements.
    Array(String, Vec<Value>),
    Struct(Vec<Value>),
    Variant(Box<Value>),
}

impl Value {
    pub fn signature(&self) -> String {
        match self {
            Value::Byte(_) => "y".into(),
            Value::Bool(_) => "b".into(),
            Value::I32(_) => "i".into(),
            Value::U32(_) => "u".into(),
            Value::I64(_) => "x".into(),
            Value::U64(_) => "t".into(),
            Value::Str(_) => "s".into(),
            Value::Path(_) => "o".into(),
            Value::Sig(_) => "g".into(),
            Value::Array(e, _) => format!("a{e}"),
            Value::Struct(fs) => {
                let inner: String = fs.iter().map(Value::signature).collect();
                format!("({inner})")
            }
            Value::Variant(_) => "v".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::Path(s) | Value::Sig(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Byte(v) => Some(*v as u64),
            Value::U32(v) => Some(*v as u64),
            Value::U64(v) => Some(*v),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            Value::Variant(v) => v.as_u64(),
            _ => None,
        }
    }
}

/// A `(sv)` pair, as unit properties are passed.
pub fn prop(name: &str, v: Value) -> Value {
    Value::Struct(vec![Value::Str(name.into()), Value::Variant(Box::new(v))])
}

fn align_of(sig: u8) -> usize {
    match sig {
        b'y' | b'g' | b'v' => 1,
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b's' | b'o' | b'a' | b'h' => 4,
        _ => 8, // x t d ( {
    }
}

fn pad(buf: &mut Vec<u8>, a: usize) {
    while !buf.len().is_multiple_of(a) {
        buf.push(0);
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    pad(buf, 4);
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

/// Appends `v`, aligned relative to the start of `buf` (which starts 8-aligned).
pub fn encode(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Byte(b) => buf.push(*b),
        Value::Bool(b) => {
            pad(buf, 4);
            buf.extend_from_slice(&(*b as u32).to_le_bytes());
        }
        Value::I32(n) => {
            pad(buf, 4);
            buf.extend_from_slice(&n.to_le_bytes());
        }
        Value::U32(n) => {
            pad(buf, 4);
            buf.extend_from_slice(&n.to_le_bytes());
        }
        Value::I64(n) => {
            pad(buf, 8);
            buf.extend_from_slice(&n.to_le_bytes());
        }
        Value::U64(n) => {
            pad(buf, 8);
            buf.extend_from_slice(&n.to_le_bytes());
        }
        Value::Str(s) | Value::Path(s) => put_str(buf, s),
        Value::Sig(s) => {
            buf.push(s.len() as u8);
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
        }
        Value::Array(elem, items) => {
            pad(buf, 4);
            let len_at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            pad(
                buf,
                align_of(elem.as_bytes().first().copied().unwrap_or(b'y')),
            );
            let start = buf.len();
            for it in items {
                encode(buf, it);
            }
            let n = (buf.len() - start) as u32;
            buf[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
        }
        Value::Struct(fs) => {
            pad(buf, 8);
            for f in fs {
                encode(buf, f);
            }
        }
        Value::Variant(inner) => {
            encode(buf, &Value::Sig(inner.signature()));
            encode(buf, inner);
        }
    }
}

/// The end of the single complete type starting at `sig[0]`.
fn one_type(sig: &[u8]) -> Result<usize> {
    let bad = || {
        Error::Invalid(format!(
            "D-Bus: bad signature {:?}",
            String::from_utf8_lossy(sig)
        ))
    };
    match sig.first() {
        None => Err(bad()),
        Some(b'a') => Ok(1 + one_type(&sig[1..])?),
        Some(&open @ (b'(' | b'{')) => {
            let close = if open == b'(' { b')' } else { b'}' };
            let mut i = 1;
            while sig.get(i) != Some(&close) {
                if i >= sig.len() {
                    return Err(bad());
                }
                i += one_type(&sig[i..])?;
            }
            Ok(i + 1)
        }
        Some(_) => Ok(1),
    }
}

/// Reads values from a message body (offsets relative to an 8-aligned start).
struct Decoder<'a> {
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Decoder<'_> {
    fn short(&self) -> Error {
        Error::Invalid(format!("D-Bus: message truncated at byte {}", self.pos))
    }

    fn align(&mut self, a: usize) -> Result<()> {
        let p = self.pos.div_ceil(a) * a;
        if p > self.b.len() {
            return Err(self.short());
        }
        self.pos = p;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.short())?;
        let s = self.b.get(self.pos..end).ok_or_else(|| self.short())?;
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        self.align(4)?;
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        self.align(8)?;
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, len: usize) -> Result<String> {
        let s = self.take(len)?.to_vec();
        self.take(1)?; // NUL
        String::from_utf8(s).map_err(|_| Error::Invalid("D-Bus: string is not UTF-8".into()))
    }

    /// Decodes one value of the complete type `sig`.
    fn value(&mut self, sig: &[u8]) -> Result<Value> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(Error::Invalid("D-Bus: values nested too deeply".into()));
        }
        let v = match sig[0] {
            b'y' => Value::Byte(self.take(1)?[0]),
            b'b' => Value::Bool(self.u32()? != 0),
            b'i' => Value::I32(self.u32()? as i32),
            b'u' | b'h' => Value::U32(self.u32()?),
            b'x' => Value::I64(self.u64()? as i64),
            b't' | b'd' => Value::U64(self.u64()?),
            b'n' | b'q' => {
                self.align(2)?;
                let s = self.take(2)?;
                Value::U32(u16::from_le_bytes([s[0], s[1]]) as u32)
            }
            b's' | b'o' => {
                let n = self.u32()? as usize;
                let s = self.string(n)?;
                if sig[0] == b's' {
                    Value::Str(s)
                } else {
                    Value::Path(s)
                }
            }
            b'g' => {
                let n = self.take(1)?[0] as usize;
                Value::Sig(self.string(n)?)
            }
            b'v' => {
                let n = self.take(1)?[0] as usize;
                let s = self.string(n)?;
                let end = one_type(s.as_bytes())?;
                if end != s.len() {
                    return Err(Error::Invalid(format!("D-Bus: variant signature {s:?}")));
                }
                Value::Variant(Box::new(self.value(s.as_bytes())?))
            }
            b'a' => {
                let n = self.u32()? as usize;
                let elem = &sig[1..1 + one_type(&sig[1..])?];
                self.align(align_of(elem[0]))?;
                let end = self.pos.checked_add(n).ok_or_else(|| self.short())?;
                if end > self.b.len() {
                    return Err(self.short());
                }
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.value(elem)?);
                }
                Value::Array(String::from_utf8_lossy(elem).into_owned(), items)
            }
            b'(' | b'{' => {
                self.align(8)?;
                let inner = &sig[1..one_type(sig)? - 1];
                let mut i = 0;
                let mut fs = Vec::new();
                while i < inner.len() {
                    let l = one_type(&inner[i..])?;
                    fs.push(self.value(&inner[i..i + l])?);
                    i += l;
                }
                Value::Struct(fs)
            }
            c => {
                return Err(Error::Invalid(format!(
                    "D-Bus: unsupported type {:?}",
                    c as char
                )))
            }
        };
        self.depth -= 1;
        Ok(v)
    }

    fn values(&mut self, sig: &str) -> Result<Vec<Value>> {
        let sig = sig.as_bytes();
        let mut i = 0;
        let mut out = Vec::new();
        while i < sig.len() {
            let l = one_type(&sig[i..])?;
            out.push(self.value(&sig[i..i + l])?);
            i += l;
        }
        Ok(out)
    }
}

/// A received message.
#[derive(Debug)]
pub struct Message {
    pub kind: u8,
    pub serial: u32,
    pub reply_serial: Option<u32>,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub body: Vec<Value>,
}

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;
/// Largest message accepted (the specification's limit is 128 MiB; systemd's replies to
/// what we ask are small).
const MAX_MESSAGE: usize = 16 << 20;

/// Parses one complete message (`buf` holds exactly it).
pub fn parse_message(buf: &[u8]) -> Result<Message> {
    if buf.len() < 16 || buf[0] != b'l' || buf[3] != 1 {
        return Err(Error::Invalid(
            "D-Bus: not a little-endian version 1 message".into(),
        ));
    }
    let mut d = Decoder {
        b: buf,
        pos: 4,
        depth: 0,
    };
    let body_len = d.u32()? as usize;
    let serial = d.u32()?;
    let fields = d.value(b"a(yv)")?;
    d.align(8)?;
    let body_start = d.pos;
    if buf.len() != body_start + body_len {
        return Err(Error::Invalid("D-Bus: message length mismatch".into()));
    }
    let mut m = Message {
        kind: buf[1],
        serial,
        reply_serial: None,
        path: None,
        interface: None,
        member: None,
        error_name: None,
        body: Vec::new(),
    };
    let mut sig = String::new();
    if let Value::Array(_, fs) = fields {
        for f in fs {
            let Value::Struct(f) = f else { continue };
            let (Some(Value::Byte(code)), Some(Value::Variant(v))) = (f.first(), f.get(1)) else {
                continue;
            };
            let s = v.as_str().map(String::from);
            match code {
                1 => m.path = s,
                2 => m.interface = s,
                3 => m.member = s,
                4 => m.error_name = s,
                5 => m.reply_serial = v.as_u64().map(|n| n as u32),
                8 => sig = s.unwrap_or_default(),
                _ => {}
            }
        }
    }
    let mut body = Decoder {
        b: &buf[body_start..],
        pos: 0,
        depth: 0,
    };
    m.body = body.values(&sig)?;
    Ok(m)
}

/// Builds a method call.
pub fn method_call(
    serial: u32,
    dest: &str,
    path: &str,
    iface: &str,
    member: &str,
    args: &[Value],
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut sig = String::new();
    for a in args {
        encode(&mut body, a);
        sig.push_str(&a.signature());
    }
    let field =
        |code: u8, v: Value| Value::Struct(vec![Value::Byte(code), Value::Variant(Box::new(v))]);
    let mut fields = vec![
        field(1, Value::Path(path.into())),
        field(2, Value::Str(iface.into())),
        field(3, Value::Str(member.into())),
        field(6, Value::Str(dest.into())),
    ];
    if !sig.is_empty() {
        fields.push(field(8, Value::Sig(sig)));
    }
    let mut msg = vec![b'l', METHOD_CALL, 0, 1];
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(&serial.to_le_bytes());
    encode(&mut msg, &Value::Array("(yv)".into(), fields));
    pad(&mut msg, 8);
    msg.extend_from_slice(&body);
    msg
}

/// A connection to a bus or to a peer (systemd's private socket).
pub struct Conn {
    sock: UnixStream,
    serial: u32,
    /// Signals read while waiting for a reply, in order.
    pub signals: Vec<Message>,
    what: String,
}

impl Conn {
    /// Connects to the unix socket at `path` and authenticates as this process's uid. On a
    /// message bus (`bus`), also says Hello.
    pub fn connect(path: &str, bus: bool, timeout: Duration) -> Result<Conn> {
        let what = format!("D-Bus socket {path}");
        let sock =
            UnixStream::connect(path).map_err(|e| Error::os(format!("connect to {what}"), e))?;
        sock.set_read_timeout(Some(timeout))
            .and_then(|_| sock.set_write_timeout(Some(timeout)))
            .map_err(|e| Error::os(format!("set timeouts on {what}"), e))?;
        let mut c = Conn {
            sock,
            serial: 0,
            signals: Vec::new(),
            what,
        };
        c.auth()?;
        if bus {
            c.call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "Hello",
                &[],
            )?;
        }
        Ok(c)
    }

    fn io(&self, op: &str, e: std::io::Error) -> Error {
        Error::os(format!("{op} {}", self.what), e)
    }

    fn auth(&mut self) -> Result<()> {
        let uid = nix::unistd::geteuid().as_raw().to_string();
        let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
        let hello = format!("\0AUTH EXTERNAL {hex}\r\n");
        self.sock
            .write_all(hello.as_bytes())
            .map_err(|e| self.io("authenticate on", e))?;
        // One line back: "OK <guid>" or "REJECTED ...".
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() > 512 {
                return Err(Error::Invalid(format!(
                    "{}: authentication reply too long",
                    self.what
                )));
            }
            let n = self
                .sock
                .read(&mut b)
                .map_err(|e| self.io("authenticate on", e))?;
            if n == 0 {
                return Err(Error::Invalid(format!(
                    "{}: closed during authentication",
                    self.what
                )));
            }
            line.push(b[0]);
        }
        if !line.starts_with(b"OK ") {
            return Err(Error::Invalid(format!(
                "{}: authentication refused: {}",
                self.what,
                String::from_utf8_lossy(&line).trim()
            )));
        }
        self.sock
            .write_all(b"BEGIN\r\n")
            .map_err(|e| self.io("authenticate on", e))
    }

    /// Reads the next message.
    pub fn read_message(&mut self) -> Result<Message> {
        let mut head = [0u8; 16];
        self.sock
            .read_exact(&mut head)
            .map_err(|e| self.io("read from", e))?;
        let body_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let fields_len = u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize;
        let total = (16 + fields_len).div_ceil(8) * 8 + body_len;
        if head[0] != b'l' || total > MAX_MESSAGE {
            return Err(Error::Invalid(format!(
                "{}: unsupported or oversized message ({total} bytes, endianness {:?})",
                self.what, head[0] as char
            )));
        }
        let mut buf = vec![0u8; total];
        buf[..16].copy_from_slice(&head);
        self.sock
            .read_exact(&mut buf[16..])
            .map_err(|e| self.io("read from", e))?;
        let m = parse_message(&buf)?;
        crate::log::debug(&format!(
            "D-Bus: got kind {} serial {} reply to {:?} {:?} {:?} {:?}",
            m.kind, m.serial, m.reply_serial, m.member, m.error_name, m.body
        ));
        Ok(m)
    }

    /// Calls a method and waits for its reply; a D-Bus error becomes `Err` naming it.
    /// Signals that arrive meanwhile are kept in `signals`.
    pub fn call(
        &mut self,
        dest: &str,
        path: &str,
        iface: &str,
        member: &str,
        args: &[Value],
    ) -> Result<Vec<Value>> {
        self.serial += 1;
        let serial = self.serial;
        let msg = method_call(serial, dest, path, iface, member, args);
        crate::log::debug(&format!("D-Bus: call {member} serial {serial}"));
        self.sock
            .write_all(&msg)
            .map_err(|e| self.io("write to", e))?;
        loop {
            let m = self.read_message()?;
            match m.kind {
                SIGNAL => self.signals.push(m),
                METHOD_RETURN if m.reply_serial == Some(serial) => return Ok(m.body),
                ERROR if m.reply_serial == Some(serial) => {
                    let text = m
                        .body
                        .first()
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    return Err(Error::Invalid(format!(
                        "{member}: {}: {text}",
                        m.error_name.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
    }

    /// The next signal (kept ones first), or None when none arrives within `wait`.
    pub fn next_signal(&mut self, wait: Duration) -> Result<Option<Message>> {
        if !self.signals.is_empty() {
            return Ok(Some(self.signals.remove(0)));
        }
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // Poll first: a read timeout in the middle of a message would lose its start.
            let mut pfd = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&self.sock),
                nix::poll::PollFlags::POLLIN,
            )];
            let n = nix::poll::poll(
                &mut pfd,
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
            )
            .map_err(|e| self.io("poll", e.into()))?;
            if n == 0 {
                return Ok(None);
            }
            let m = self.read_message()?;
            if m.kind == SIGNAL {
                return Ok(Some(m));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_unit_properties() {
        let args = vec![
            Value::Str("rsrun-x.scope".into()),
            Value::Str("fail".into()),
            Value::Array(
                "(sv)".into(),
                vec![
                    prop("Delegate", Value::Bool(true)),
                    prop("PIDs", Value::Array("u".into(), vec![Value::U32(42)])),
                    prop("MemoryMax", Value::U64(1 << 30)),
                    prop(
                        "AllowedCPUs",
                        Value::Array("y".into(), vec![Value::Byte(5)]),
                    ),
                ],
            ),
            Value::Array("(sa(sv))".into(), vec![]),
        ];
        let msg = method_call(7, "d", "/o", "i.f", "M", &args);
        let m = parse_message(&msg).unwrap();
        assert_eq!(m.kind, METHOD_CALL);
        assert_eq!(m.serial, 7);
        assert_eq!(m.member.as_deref(), Some("M"));
        assert_eq!(m.path.as_deref(), Some("/o"));
        assert_eq!(m.body, args);
    }

    #[test]
    fn known_bytes_of_a_hello_call() {
        // As dbus-send/sd-bus lay it out: header fields array padded to 8, empty body.
        let msg = method_call(
            1,
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "Hello",
            &[],
        );
        assert_eq!(&msg[..4], b"l\x01\x00\x01");
        assert_eq!(u32::from_le_bytes(msg[4..8].try_into().unwrap()), 0);
        assert_eq!(msg.len() % 8, 0);
        // Path field: code 1, signature "o", length 21, "/org/freedesktop/DBus".
        assert_eq!(&msg[16..24], b"\x01\x01o\x00\x15\x00\x00\x00");
        assert_eq!(&msg[24..45], b"/org/freedesktop/DBus");
    }

    #[test]
    fn hostile_messages_are_errors() {
        let good = method_call(1, "d", "/o", "i.f", "M", &[Value::Str("abc".into())]);
        for cut in 0..good.len() {
            assert!(parse_message(&good[..cut]).is_err(), "cut at {cut}");
        }
        // An array claiming more bytes than there are.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_message(&bad).is_err());
        // Deep nesting of variants is refused, not a stack overflow.
        let mut v = Value::U32(1);
        for _ in 0..100 {
            v = Value::Variant(Box::new(v));
        }
        let deep = method_call(1, "d", "/o", "i.f", "M", &[v]);
        assert!(parse_message(&deep).is_err());
    }
}
