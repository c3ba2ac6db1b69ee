//! The container log in the CRI format the kubelet parses: one record per line,
//! `TIMESTAMP STREAM TAG CONTENT\n` with an RFC 3339 timestamp (nanoseconds, UTC), STREAM
//! `stdout` or `stderr`, TAG `F` for a line's final piece and `P` for the pieces of a line
//! longer than the maximum line size (containerd's rule, 16 KiB by default), and for a
//! stream's last line when it has no newline. Bytes pass through untouched (binary, invalid
//! UTF-8) but for the "\r" of a "\r\n" line end; within a stream nothing is lost or
//! reordered.
//! A write that fails (disk full) drops that batch and counts it, and leaves no piece of it
//! in the file: the container is never blocked on its log, and every line stays readable.
//!
//! While a container writes fast (batches of [`BACKGROUND_MIN`] bytes or more), the batches
//! are written by a thread of the log's own, in order, while the monitor reads and frames
//! the next: the reading (the copy out of the pipe) and the writing (the copy into the page
//! cache) then run on two cores instead of one after the other. It allocates the log's
//! blocks ahead of the file's end (the size kept: readers see only records) and gives back
//! what it did not fill as it ends. The thread ends once no batch came for [`WRITER_IDLE`],
//! and [`CriLog::quiesce`] ends it at once, after the last batch is written: the monitor
//! calls it before anything that forks (the runtime library wants a single-threaded caller)
//! and before it records the exit.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A batch of framed records this large or more is handed to the writer thread (a read of
/// the container's output that filled most of its buffer: the container writes fast).
pub const BACKGROUND_MIN: usize = 128 * 1024;
/// How long the writer thread waits for the next batch before it ends.
pub const WRITER_IDLE: Duration = Duration::from_millis(50);

pub const DEFAULT_MAX_LINE: usize = 16 * 1024;
/// The most one write(2) of the log takes. The page cache gives a write folios as large as
/// the write (ext4's large folios): writes of 1 MiB and more then wait on the allocation of
/// contiguous memory, and with the host's memory fragmented a burst's throughput halved
/// (1.4 MiB batches: 0.31 of `cat`, written 256 KiB at a time 0.61; 64 KiB at a time 0.46,
/// small folios cost more per byte; docs/benchmarks.md).
const WRITE_MAX: usize = 256 * 1024;
/// The framing buffer's size between bursts.
const OUT_CAPACITY: usize = 64 * 1024;
/// During a burst the writer thread allocates the log's blocks this far ahead of its end
/// (fallocate, the size kept), and gives back what is left when it ends. A write into
/// allocated blocks skips ext4's per-block delayed-allocation bookkeeping: 716 MiB written
/// 256 KiB at a time took 68–72 ms instead of 117–121 ms here, and no more CPU in all once
/// written back (docs/benchmarks.md).
const AHEAD: u64 = 4 * 1024 * 1024;

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
    file: Option<Arc<File>>,
    max_line: usize,
    /// The unfinished line of each stream.
    partial: [Vec<u8>; 2],
    out: Vec<u8>,
    /// What the writer thread and this side share (also without a thread: the counts).
    shared: Arc<(Mutex<Shared>, Condvar)>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// A writer thread was started since the last [`CriLog::settle`].
    burst: bool,
}

/// The writer thread's queue and the write outcomes, under one lock.
#[derive(Default)]
struct Shared {
    /// One batch waiting for the thread (with the file it goes to: a reopen changes it).
    queue: Option<(Arc<File>, Vec<u8>)>,
    /// The thread runs (it clears this itself, under the lock, as it ends with nothing
    /// queued: a batch is queued only while it is set, so none is left behind).
    alive: bool,
    /// Asked to end once the queue is empty.
    stop: bool,
    /// Framed bytes not written (write errors), and whether the last write failed.
    dropped: u64,
    failing: bool,
    /// A failure to report in the shim's log, once per failing episode.
    message: Option<String>,
    /// Emptied batch buffers, for the next batches.
    spare: Vec<Vec<u8>>,
}

impl Shared {
    /// Accounts a batch of `len` bytes written (or not: `r`).
    fn account(&mut self, path: &Path, len: usize, r: std::io::Result<()>) {
        match r {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.dropped += len as u64;
                if !self.failing {
                    self.message = Some(format!(
                        "write {}: {e}; dropping log records (counted) until writes succeed",
                        path.display()
                    ));
                }
                self.failing = true;
            }
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The blocks the writer thread allocated past a log file's end.
#[derive(Default)]
struct Ahead {
    /// The file, and the offset up to which its blocks are allocated.
    file: Option<(Arc<File>, u64)>,
    /// The file refused (no fallocate there, or no space): no more tries for this burst.
    refused: bool,
    /// Blocks may be allocated past the file's end (to give back).
    held: bool,
}

impl Ahead {
    /// Makes sure the blocks for `len` bytes past `size`, the end of `file`, are allocated.
    fn reserve(&mut self, file: &Arc<File>, size: u64, len: usize) {
        if self
            .file
            .as_ref()
            .is_some_and(|(f, _)| !Arc::ptr_eq(f, file))
        {
            self.release();
        }
        let end = size + len as u64;
        if self.refused || self.file.as_ref().is_some_and(|&(_, to)| end <= to) {
            return;
        }
        let want = AHEAD.max(len as u64);
        let r = nix::fcntl::fallocate(
            file.as_ref(),
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            size as libc::off_t,
            want as libc::off_t,
        );
        // (A refusal for want of space may still have allocated a part, on ext4: given
        // back with the rest; a file system without fallocate has nothing to give back.)
        self.refused = r.is_err();
        self.held |= matches!(
            r,
            Ok(()) | Err(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT)
        );
        self.file = Some((file.clone(), if r.is_ok() { size + want } else { 0 }));
    }

    /// Gives back the blocks past the file's end: its size set to what it is frees them.
    /// Called while no other write of the file can come (by the writer thread, before it
    /// says it has ended).
    fn release(&mut self) {
        self.refused = false;
        let held = std::mem::take(&mut self.held);
        if let Some((f, _)) = self.file.take().filter(|_| held) {
            if let Ok(m) = f.metadata() {
                let _ = f.set_len(m.len());
            }
        }
    }
}

/// The writer thread: the queued batches in order, until told to stop or idle.
fn write_batches(shared: Arc<(Mutex<Shared>, Condvar)>, path: PathBuf) {
    let (m, cv) = &*shared;
    let mut ahead = Ahead::default();
    let mut g = lock(m);
    loop {
        if let Some((file, mut data)) = g.queue.take() {
            cv.notify_all();
            drop(g);
            // The file's size (appends go there), and its blocks ahead when it is a file.
            let at = match file.metadata() {
                Ok(meta) => {
                    if meta.is_file() {
                        ahead.reserve(&file, meta.len(), data.len());
                    }
                    meta.len()
                }
                Err(_) => 0,
            };
            let r = write_whole_at(&file, &data, at);
            drop(file);
            g = lock(m);
            g.account(&path, data.len(), r);
            data.clear();
            if g.spare.len() < 2 {
                g.spare.push(data);
            }
            continue;
        }
        if g.stop {
            break;
        }
        let (g2, t) = cv
            .wait_timeout(g, WRITER_IDLE)
            .unwrap_or_else(|e| e.into_inner());
        g = g2;
        if t.timed_out() && g.queue.is_none() {
            break;
        }
    }
    // The burst is over: its blocks past the end and its buffers go back (under the lock:
    // no batch is written elsewhere until `alive` is cleared).
    ahead.release();
    g.spare = Vec::new();
    g.alive = false;
    cv.notify_all();
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
            file: Some(Arc::new(open(path)?)),
            max_line: max_line.max(1),
            partial: [Vec::new(), Vec::new()],
            out: Vec::with_capacity(OUT_CAPACITY),
            shared: Arc::default(),
            writer: None,
            burst: false,
        })
    }

    /// Framed bytes not written (write errors) so far, of the batches written so far.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.0).dropped
    }

    /// Waits until every batch handed to the writer thread is written, and ends the thread:
    /// then this process has one thread again. Returns a failure to report, as `write`.
    pub fn quiesce(&mut self) -> Option<String> {
        let first = self.flush_out();
        if let Some(h) = self.writer.take() {
            let (m, cv) = &*self.shared;
            lock(m).stop = true;
            cv.notify_all();
            let _ = h.join();
            let mut g = lock(m);
            g.stop = false;
            g.alive = false;
            // (The thread writes what is queued before it ends; should a batch be left, it is
            // written here, never dropped unsaid.)
            if let Some((f, data)) = g.queue.take() {
                drop(g);
                let r = write_whole(&f, &data);
                lock(m).account(&self.path, data.len(), r);
            }
        }
        first.or_else(|| lock(&self.shared.0).message.take())
    }

    /// Whether a burst of output is going on or has not been settled yet: the caller then
    /// calls [`CriLog::settle`] within [`WRITER_IDLE`] or so of its last write.
    pub fn bursting(&self) -> bool {
        self.burst
    }

    /// After a burst (its writer thread ended idle, or was ended): joins the thread and gives
    /// back the burst's batch buffer, and returns true, for the caller to give back its own.
    /// False while the thread still runs, and when no burst happened.
    pub fn settle(&mut self) -> bool {
        if !self.burst || self.writer.as_ref().is_some_and(|h| !h.is_finished()) {
            return false;
        }
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        self.burst = false;
        if self.out.is_empty() && self.out.capacity() > OUT_CAPACITY {
            self.out = Vec::with_capacity(OUT_CAPACITY);
        }
        // An unfinished line holds less than a piece between writes; a burst of long lines
        // grew it to a read's size.
        for p in &mut self.partial {
            p.shrink_to_fit();
        }
        true
    }

    /// Opens the log path again (the kubelet renamed the file to rotate it, or it is gone:
    /// its directory too, made again 0755 as containerd does). The new file replaces the old
    /// one only once open: a reopen that fails leaves the records going where they went, which
    /// is where the kubelet, undoing its rename, then expects them.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        // What was read before goes to the file it was read for (the rotated one); a write
        // failure said by the thread is said at the next write.
        if let Some(m) = self.quiesce() {
            lock(&self.shared.0).message = Some(m);
        }
        if let Some(dir) = self.path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        self.file = Some(Arc::new(open(&self.path)?));
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
        record(&mut self.out, &header(ts, stream, b'P'), &partial);
        self.flush_out()
    }

    fn flush_out(&mut self) -> Option<String> {
        if self.out.is_empty() {
            return None;
        }
        if self.writer.is_some() && !lock(&self.shared.0).alive {
            // Ended idle: small batches are written here again.
            if let Some(h) = self.writer.take() {
                let _ = h.join();
            }
        }
        if let Some(file) = self.file.clone() {
            if (self.writer.is_some() || self.out.len() >= BACKGROUND_MIN) && self.hand_off(file) {
                return lock(&self.shared.0).message.take();
            }
        }
        let r = match self.file.as_deref() {
            Some(f) => write_whole(f, &self.out),
            None => Err(std::io::Error::other("log file not open")),
        };
        let mut g = lock(&self.shared.0);
        g.account(&self.path, self.out.len(), r);
        self.out.clear();
        g.message.take()
    }

    /// Queues the framed batch for the writer thread (started if it is not running; a
    /// batch already waiting is waited for: one written, one waiting, one being framed).
    /// False when no thread could be started: the caller writes it.
    fn hand_off(&mut self, file: Arc<File>) -> bool {
        let shared = self.shared.clone();
        let (m, cv) = &*shared;
        let mut g = lock(m);
        while g.queue.is_some() && g.alive {
            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        let start = !g.alive;
        if start {
            // Ended idle (or never started): joined, and a new one started below. The batch
            // is queued first, under the lock that says the thread runs: a thread that found
            // nothing queued could otherwise end idle before the batch came, and leave it.
            if let Some(h) = self.writer.take() {
                drop(g);
                let _ = h.join();
                g = lock(m);
            }
            g.alive = true;
        }
        let next = g
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(64 * 1024));
        g.queue = Some((file, std::mem::replace(&mut self.out, next)));
        cv.notify_all();
        drop(g);
        if start {
            let (s, path) = (self.shared.clone(), self.path.clone());
            match std::thread::Builder::new()
                .name("log-writer".into())
                .stack_size(64 * 1024)
                .spawn(move || write_batches(s, path))
            {
                Ok(h) => {
                    self.writer = Some(h);
                    self.burst = true;
                }
                Err(_) => {
                    // No thread: the batch comes back, for the caller to write.
                    let mut g = lock(m);
                    g.alive = false;
                    if let Some((_, data)) = g.queue.take() {
                        self.out = data;
                    }
                    return false;
                }
            }
        }
        true
    }
}

impl Drop for CriLog {
    /// What is queued or gathered is written before the log goes (a monitor ending on an
    /// error, without its exit's quiesce).
    fn drop(&mut self) {
        let _ = self.quiesce();
    }
}

/// Appends `data` whole or not at all: a write that fails part way (the disk filled up) is
/// cut back off the file, or its torn last record would have the next batch glued to it, a
/// line the kubelet's parser cannot read.
///
/// A batch larger than one write goes in pieces that end at the file's multiples of
/// [`WRITE_MAX`]: every piece but the batch's last ends on a large folio's boundary, and every
/// piece but its first begins on one, where pieces cut from the batch's own start began and
/// ended inside folios, with a ramp of smaller ones at each start (the file's end is seldom
/// aligned: records have any length): 2.3 times fewer folios for the same log
/// (docs/benchmarks.md).
fn write_whole(f: &File, data: &[u8]) -> std::io::Result<()> {
    // The file's size (appends go there): where the first piece ends.
    let at = if data.len() > WRITE_MAX {
        f.metadata().map_or(0, |m| m.len())
    } else {
        0
    };
    write_whole_at(f, data, at)
}

/// [`write_whole`] of a file whose size is `at`.
fn write_whole_at(mut f: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    let mut done = 0;
    let mut at = at as usize;
    while done < data.len() {
        let piece = (WRITE_MAX - at % WRITE_MAX).min(data.len() - done);
        match f.write(&data[done..done + piece]) {
            Ok(0) => {
                return Err(cut_back(f, done, std::io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => {
                done += n;
                at += n;
            }
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

    /// A xorshift generator: each call gives a number below its argument.
    fn rng(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
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
        assert_eq!(l.dropped(), 0);
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
        let mut next = rng(0x2545f4914f6cdd1d);
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

    /// Batches large enough for the writer thread, mixed with small ones (written here
    /// while no thread runs, through it while one does), a reopen in between: every byte of
    /// each stream in order, the batches before the reopen in the old file; the thread ends
    /// when asked (quiesce) and on its own once idle.
    #[test]
    fn the_writer_thread_keeps_the_order() {
        let (mut l, p) = log(16 * 1024);
        let mut next = rng(0x9e3779b97f4a7c15);
        let mut want = [Vec::new(), Vec::new()];
        let mut threaded = 0;
        let rotated = p.with_extension("rotated");
        for i in 0..60 {
            let s = next(2) as usize;
            // Mostly large (a thread's batch), some small.
            let len = if next(3) == 0 {
                next(2000)
            } else {
                150_000 + next(200_000)
            } as usize;
            let chunk: Vec<u8> = (0..len)
                .map(|_| match next(60) {
                    0 => b'\n',
                    _ => b'a' + next(26) as u8,
                })
                .collect();
            let stream = [Stream::Stdout, Stream::Stderr][s];
            assert!(l.write(stream, &chunk, b"T").is_none());
            threaded += l.writer.is_some() as usize;
            want[s].extend_from_slice(&chunk);
            if i == 30 {
                // The kubelet's rotation: what was written before stays in the old file.
                std::fs::rename(&p, &rotated).unwrap();
                l.reopen().unwrap();
                assert!(l.writer.is_none(), "a reopen ends the thread first");
            }
        }
        l.finish(Stream::Stdout, b"T");
        l.finish(Stream::Stderr, b"T");
        assert!(l.quiesce().is_none());
        assert!(l.writer.is_none());
        assert!(threaded > 10, "the thread wrote {threaded} batches");
        let mut text = std::fs::read(&rotated).unwrap();
        text.extend_from_slice(&std::fs::read(&p).unwrap());
        for (s, name) in [(0, "stdout"), (1, "stderr")] {
            assert!(reassemble(&text, name) == want[s], "{name} differs");
        }
        assert_eq!(l.dropped(), 0);
        // Idle, the thread ends on its own.
        l.write(Stream::Stdout, &vec![b'x'; 200_000], b"T");
        assert!(l.writer.is_some());
        let t = std::time::Instant::now();
        while lock(&l.shared.0).alive && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !lock(&l.shared.0).alive,
            "the writer thread did not end idle"
        );
        // A small batch is then written here, after the thread's.
        l.write(Stream::Stdout, b"\nlast\n", b"T");
        assert!(l.writer.is_none());
        let text = std::fs::read(&p).unwrap();
        assert!(text.ends_with(b"T stdout F last\n"));
        std::fs::remove_file(p).unwrap();
        std::fs::remove_file(rotated).unwrap();
    }

    /// While the writer thread runs, the log's blocks are allocated ahead of its end (the
    /// size kept); once it has ended, what was not written into is given back.
    #[test]
    fn a_burst_allocates_blocks_ahead_and_gives_back_the_rest() {
        use std::os::unix::fs::MetadataExt;
        let (mut l, p) = log(16 * 1024);
        let line = [&[b'a'; 99][..], b"\n"].concat();
        let data = line.repeat(3000);
        // "T stdout F " and the line, per line.
        let record = 11 + line.len() as u64;
        let mut written = 0;
        let mut seen = false;
        for _ in 0..5 {
            l.write(Stream::Stdout, &data, b"T");
            assert!(l.writer.is_some(), "a batch this large goes to the thread");
            written += 3000 * record;
            // Under the lock the thread gives the blocks back before it says it has ended.
            let t = std::time::Instant::now();
            let m = loop {
                let g = lock(&l.shared.0);
                let m = std::fs::metadata(&p).unwrap();
                if m.len() == written || !g.alive || t.elapsed() > Duration::from_secs(10) {
                    break g.alive.then_some(m);
                }
                drop(g);
                std::thread::yield_now();
            };
            // (The thread ended idle before it was looked at: a busy machine; again.)
            if let Some(m) = m {
                assert_eq!(m.len(), written);
                assert!(
                    m.blocks() * 512 >= written.max(AHEAD),
                    "{} bytes allocated for {} written",
                    m.blocks() * 512,
                    m.len()
                );
                seen = true;
                break;
            }
        }
        assert!(seen, "the writer thread was never seen running");
        assert!(l.quiesce().is_none());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), written);
        assert!(
            m.blocks() * 512 < written + 64 * 1024,
            "{} bytes still allocated for {} written",
            m.blocks() * 512,
            m.len()
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn write_failures_of_the_writer_thread_are_counted() {
        let mut l = CriLog::open(Path::new("/dev/full"), 16 * 1024).unwrap();
        let data = vec![b'y'; 300_000];
        // Said once: by the write if the thread failed before it returned, else at the end.
        let first = l.write(Stream::Stdout, &data, b"T");
        let msg = first.or_else(|| l.quiesce());
        assert!(msg.is_some_and(|m| m.contains("/dev/full")));
        // 18 pieces of 16 KiB framed ("T stdout P " and a newline each); the rest waits.
        assert_eq!(l.dropped(), 18 * (16 * 1024 + 12));
    }

    #[test]
    fn write_failures_are_counted_not_fatal() {
        let mut l = CriLog::open(Path::new("/dev/full"), 8).unwrap();
        let msg = l.write(Stream::Stdout, b"hello\n", b"T");
        assert!(msg.is_some_and(|m| m.contains("/dev/full")));
        assert_eq!(l.dropped(), b"T stdout F hello\n".len() as u64);
        // Said once per failing episode.
        assert!(l.write(Stream::Stdout, b"x\n", b"T").is_none());
        assert_eq!(l.dropped(), 17 + 13);
    }
}
