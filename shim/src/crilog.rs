//! The container log in the CRI format the kubelet parses: one record per line,
//! `TIMESTAMP STREAM TAG CONTENT\n` with an RFC 3339 timestamp (nanoseconds, UTC), STREAM
//! `stdout` or `stderr`, TAG `F` for a line's final piece and `P` for the pieces of a line
//! longer than the maximum line size (containerd's rule, 16 KiB by default), and for a
//! stream's last line when it has no newline. Bytes pass through untouched (binary, invalid
//! UTF-8) but for the "\r" of a "\r\n" line end; within a stream nothing is lost or
//! reordered.
//! A write that fails (disk full) drops that batch and counts it, and leaves no piece of it
//! in the file: the container is never blocked on its log, and every line stays readable.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }
}

pub struct CriLog {
    path: PathBuf,
    file: Option<File>,
    max_line: usize,
    /// The unfinished line of each stream.
    partial: [Vec<u8>; 2],
    /// Framed bytes not written (write errors), and whether the last write failed.
    pub dropped: u64,
    failing: bool,
    out: Vec<u8>,
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl CriLog {
    pub fn open(path: &Path, max_line: usize) -> std::io::Result<CriLog> {
        Ok(CriLog {
            path: path.to_path_buf(),
            file: Some(open(path)?),
            max_line: max_line.max(1),
            partial: [Vec::new(), Vec::new()],
            dropped: 0,
            failing: false,
            out: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens the log path again (the kubelet renamed the file to rotate it, or it is gone:
    /// its directory too, made again 0755 as containerd does). The new file replaces the old
    /// one only once open: a reopen that fails leaves the records going where they went, which
    /// is where the kubelet, undoing its rename, then expects them.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        self.file = Some(open(&self.path)?);
        Ok(())
    }

    /// Frames `data` of `stream` and appends the complete records. Returns an error
    /// message the first time writing fails after having worked (for the shim's own log).
    pub fn write(&mut self, stream: Stream, data: &[u8], ts: &[u8]) -> Option<String> {
        let max = self.max_line;
        let hf = header(ts, stream, b'F');
        let hp = header(ts, stream, b'P');
        let partial = &mut self.partial[stream as usize];
        let out = &mut self.out;
        out.clear();
        let mut rest = data;
        loop {
            match memchr::memchr(b'\n', rest) {
                Some(nl) => {
                    if partial.is_empty() {
                        frame_line(out, &hf, &hp, &rest[..=nl], max);
                    } else {
                        partial.extend_from_slice(&rest[..=nl]);
                        frame_line(out, &hf, &hp, partial, max);
                        partial.clear();
                    }
                    rest = &rest[nl + 1..];
                }
                None => {
                    partial.extend_from_slice(rest);
                    // Pieces of a long line go out once the line is known to be longer than
                    // a piece (one of exactly `max` bytes may still end with the next byte:
                    // then it is one F record, as containerd's reader splits only what is
                    // longer than the maximum).
                    // (Two when the last byte is a "\r": a "\r\n" split between writes ends
                    // the line as it would in one.)
                    let keep = if partial.last() == Some(&b'\r') { 2 } else { 1 };
                    let full = partial.len().saturating_sub(keep) / max * max;
                    if full > 0 {
                        for piece in partial[..full].chunks(max) {
                            record(out, &hp, piece);
                        }
                        partial.drain(..full);
                    }
                    break;
                }
            }
        }
        self.flush_out()
    }

    /// At the end of a stream: its unfinished line goes out as a partial piece (P), as
    /// containerd writes it. The kubelet keeps an F record's newline (`echo -n DONE` would
    /// read back as "DONE\n", in `kubectl logs` and in a termination message taken from the
    /// log) and drops a P record's.
    pub fn finish(&mut self, stream: Stream, ts: &[u8]) -> Option<String> {
        let partial = std::mem::take(&mut self.partial[stream as usize]);
        if partial.is_empty() {
            return None;
        }
        self.out.clear();
        record(&mut self.out, &header(ts, stream, b'P'), &partial);
        self.flush_out()
    }

    fn flush_out(&mut self) -> Option<String> {
        if self.out.is_empty() {
            return None;
        }
        let r = match self.file.as_mut() {
            Some(f) => write_whole(f, &self.out),
            None => Err(std::io::Error::other("log file not open")),
        };
        match r {
            Ok(()) => {
                self.failing = false;
                None
            }
            Err(e) => {
                self.dropped += self.out.len() as u64;
                let first = !self.failing;
                self.failing = true;
                first.then(|| {
                    format!(
                        "write {}: {e}; dropping log records (counted) until writes succeed",
                        self.path.display()
                    )
                })
            }
        }
    }
}

/// Appends `data` whole or not at all: a write that fails part way (the disk filled up) is
/// cut back off the file, or its torn last record would have the next batch glued to it, a
/// line the kubelet's parser cannot read.
fn write_whole(f: &mut File, data: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match f.write(&data[done..]) {
            Ok(0) => {
                return Err(cut_back(f, done, std::io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cut_back(f, done, e)),
        }
    }
    Ok(())
}

/// Removes the last `written` bytes of the (append-only) file; returns `e`.
fn cut_back(f: &File, written: usize, e: std::io::Error) -> std::io::Error {
    if written > 0 {
        if let Ok(m) = f.metadata() {
            let _ = f.set_len(m.len().saturating_sub(written as u64));
        }
    }
    e
}

/// `TIMESTAMP STREAM TAG `, the start of every record of one write.
fn header(ts: &[u8], stream: Stream, tag: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(ts.len() + 10);
    h.extend_from_slice(ts);
    h.push(b' ');
    h.extend_from_slice(stream.name());
    h.extend_from_slice(&[b' ', tag, b' ']);
    h
}

/// A complete line, `line` with its newline: pieces of `max` bytes (P) while more than `max`
/// bytes are left, and the rest (F): a line of exactly `max` bytes is one F record, as
/// containerd writes it (`kubectl logs --tail=1` counts records: an empty F after a full P
/// would read as an empty last line). A line
/// ending in "\r\n" (a terminal's output) loses its "\r" with the newline, as containerd's
/// reader takes "\r\n" for the end of a line: `kubectl logs` of a `tty: true` container shows
/// no carriage returns.
fn frame_line(out: &mut Vec<u8>, hf: &[u8], hp: &[u8], line: &[u8], max: usize) {
    let content = &line[..line.len() - 1];
    if content.len() <= max && content.last() != Some(&b'\r') {
        // The common case: the header, then the line and its newline as they came.
        out.extend_from_slice(hf);
        out.extend_from_slice(line);
        return;
    }
    let mut content = content.strip_suffix(b"\r").unwrap_or(content);
    while content.len() > max {
        record(out, hp, &content[..max]);
        content = &content[max..];
    }
    record(out, hf, content);
}

/// One record: its header, `content` and a newline.
fn record(out: &mut Vec<u8>, header: &[u8], content: &[u8]) {
    out.extend_from_slice(header);
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// The current time as RFC 3339 with nanoseconds, UTC.
pub fn timestamp() -> String {
    rsrun::state::now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(max: usize) -> (CriLog, PathBuf) {
        let p = std::env::temp_dir().join(format!(
            "crilog-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        (CriLog::open(&p, max).unwrap(), p)
    }

    /// Reassembles a stream from the records: P pieces joined, F ends a line.
    fn reassemble(text: &[u8], stream: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for rec in text.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            let mut f = rec.splitn(4, |b| *b == b' ');
            let (_ts, s, tag) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let content = f.next().unwrap_or(b"");
            if s != stream.as_bytes() {
                continue;
            }
            out.extend_from_slice(content);
            if tag == b"F" {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn lines_pieces_and_streams() {
        let (mut l, p) = log(4);
        let ts = b"2026-12-02T00:00:00.000000000Z";
        l.write(Stream::Stdout, b"ab\ncdefgh", ts);
        l.write(Stream::Stderr, b"err\n", ts);
        l.write(Stream::Stdout, b"ij\n\n", ts);
        l.write(Stream::Stdout, b"tail", ts);
        l.write(Stream::Stderr, b"cr\r\nx\ry\r", ts);
        l.finish(Stream::Stdout, ts);
        l.finish(Stream::Stderr, ts);
        let text = std::fs::read(&p).unwrap();
        let s = String::from_utf8(text.clone()).unwrap();
        let recs: Vec<&str> = s
            .split_terminator('\n')
            .map(|r| &r[ts.len() + 1..])
            .collect();
        assert_eq!(
            recs,
            [
                "stdout F ab",
                "stdout P cdef",
                "stderr F err",
                // Exactly the maximum, its newline in the next write: one final record (as
                // containerd's reader splits only what is longer).
                "stdout F ghij",
                "stdout F ",
                // "\r\n" ends a line as "\n" does; a lone "\r" is content; the stream's
                // unfinished line at its end is a partial piece (the kubelet adds no newline).
                // (stdout's "tail", exactly the maximum, waits for what follows it: its end.)
                "stderr F cr",
                "stdout P tail",
                "stderr P x\ry\r",
            ],
            "{s:?}"
        );
        assert_eq!(reassemble(&text, "stdout"), b"ab\ncdefghij\n\ntail");
        assert_eq!(reassemble(&text, "stderr"), b"err\ncr\nx\ry\r");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn reopen_makes_a_removed_directory_and_keeps_the_old_file_on_failure() {
        let dir = std::env::temp_dir().join(format!("crilog-reopen-{}", std::process::id()));
        let path = dir.join("c").join("0.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut l = CriLog::open(&path, 16).unwrap();
        l.write(Stream::Stdout, b"one\n", b"T");
        // The kubelet rotates: renames the file away, asks for a new one.
        std::fs::rename(&path, dir.join("rotated")).unwrap();
        std::fs::remove_dir(path.parent().unwrap()).unwrap();
        l.reopen().unwrap();
        l.write(Stream::Stdout, b"two\n", b"T");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "T stdout F two\n");
        // A reopen that cannot open (a directory where the file was): an error, and the
        // records still reach the file that was open.
        std::fs::rename(&path, dir.join("rotated2")).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(l.reopen().is_err());
        assert!(l.write(Stream::Stdout, b"three\n", b"T").is_none());
        assert_eq!(
            std::fs::read_to_string(dir.join("rotated2")).unwrap(),
            "T stdout F two\nT stdout F three\n"
        );
        assert_eq!(l.dropped, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_of_exactly_the_maximum_is_one_record() {
        let (mut l, p) = log(4);
        let ts = b"T";
        l.write(Stream::Stdout, b"abcd\n", ts);
        l.write(Stream::Stdout, b"efgh", ts);
        l.write(Stream::Stdout, b"\n", ts);
        l.write(Stream::Stdout, b"ijklmnop\nqrstu", ts);
        l.finish(Stream::Stdout, ts);
        // A terminal's "\r\n" after exactly the maximum, split between two writes.
        l.write(Stream::Stdout, b"vwxy\r", ts);
        l.write(Stream::Stdout, b"\n", ts);
        let s = String::from_utf8(std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            s,
            "T stdout F abcd\nT stdout F efgh\nT stdout P ijkl\nT stdout F mnop\nT stdout P qrst\nT stdout P u\nT stdout F vwxy\n"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn binary_and_long_lines_round_trip() {
        let (mut l, p) = log(16);
        let ts = b"T";
        let mut data = Vec::new();
        for i in 0..5000u32 {
            data.push((i * 7919 % 256) as u8);
        }
        for chunk in data.chunks(333) {
            l.write(Stream::Stdout, chunk, ts);
        }
        l.finish(Stream::Stdout, ts);
        let text = std::fs::read(&p).unwrap();
        let want = data.clone();
        let got = reassemble(&text, "stdout");
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want);
        // No record is longer than the maximum.
        for rec in text.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            assert!(rec.len() <= 1 + 1 + 6 + 1 + 1 + 1 + 16, "{}", rec.len());
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn random_writes_of_two_streams_round_trip() {
        // Lines of every length around the maximum (empty ones too) in writes of random
        // sizes, both streams interleaved: each stream reads back as written, and no record
        // is longer than the maximum. ("\r" is the test above's.)
        let (mut l, p) = log(8);
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut want = [Vec::new(), Vec::new()];
        for _ in 0..3000 {
            let s = next(2) as usize;
            let len = next(40) as usize;
            let chunk: Vec<u8> = (0..len)
                .map(|_| match next(10) {
                    0 | 1 => b'\n',
                    _ => b'a' + next(26) as u8,
                })
                .collect();
            let stream = [Stream::Stdout, Stream::Stderr][s];
            assert!(l.write(stream, &chunk, b"T").is_none());
            want[s].extend_from_slice(&chunk);
        }
        l.finish(Stream::Stdout, b"T");
        l.finish(Stream::Stderr, b"T");
        let text = std::fs::read(&p).unwrap();
        for (s, name) in [(0, "stdout"), (1, "stderr")] {
            assert_eq!(reassemble(&text, name), want[s], "{name}");
        }
        for rec in text.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            assert!(
                rec.len() <= "T stdout F ".len() + 8,
                "{:?}",
                String::from_utf8_lossy(rec)
            );
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn write_failures_are_counted_not_fatal() {
        let mut l = CriLog::open(Path::new("/dev/full"), 8).unwrap();
        let msg = l.write(Stream::Stdout, b"hello\n", b"T");
        assert!(msg.is_some_and(|m| m.contains("/dev/full")));
        assert_eq!(l.dropped, b"T stdout F hello\n".len() as u64);
        // Said once per failing episode.
        assert!(l.write(Stream::Stdout, b"x\n", b"T").is_none());
        assert_eq!(l.dropped, 17 + 13);
    }
}
