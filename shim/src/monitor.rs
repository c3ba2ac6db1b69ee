//! The monitor: creates the container with its stdio on pipes (or a terminal) and runs one
//! poll loop over every descriptor until the container's init exits. Nothing wakes it
//! while the container is idle: no timer runs unless an exec_sync has a deadline, an answer is
//! being sent or a control connection has not sent its request yet.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, MsgFlags, SockFlag};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use rsrun::live::OomWatch;
use rsrun::{CreateOpts, ExecOpts, Runtime};
use serde_json::json;

use crate::crilog::{self, CriLog, Stream};
use crate::proto::{self, Request};
use crate::Opts;

/// How much output may wait for one attach client before it is dropped (a client that
/// never reads must not hold the container or the shim's memory).
const CLIENT_QUEUE_MAX: usize = 4 * 1024 * 1024;
/// Control connections waiting for their request, and attach clients: beyond, a new one is
/// refused (closed) rather than let a peer that opens connections without end exhaust the
/// shim's descriptors and memory.
const MAX_CONNS: usize = 256;
const MAX_CLIENTS: usize = 256;
/// exec_sync processes running with their answers still being sent, and interactive exec
/// processes, each counted on its own: beyond, a new exec of that kind is refused. Each
/// exec_sync may hold 32 MiB of output and three descriptors until its requester has read
/// it; a kubelet runs a few probes per container. An interactive exec outlives its client
/// when it ignores the end of its stdin (`kubectl exec … tail -f` interrupted): such
/// sessions must not take the places of the probes.
const MAX_EXECS: usize = 64;
/// How long a control connection has to send its request (the CRI server writes it as it
/// connects): one that sends nothing, or half a line, is closed, and no longer holds one
/// of the MAX_CONNS places and a request buffer. The only timer of a shim without exec
/// deadlines, and only while such a connection is open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The size asked for the container's stdout and stderr pipes.
const PIPE_SIZE: i32 = 1024 * 1024;
/// One read of container output: half the pipe (heap pages are touched only as far as reads
/// fill them, and given back after a burst). Against 256 KiB, a fast container's log
/// throughput went from 0.59-0.64 to 0.65-0.67 of `cat` here (medians of 20-30 interleaved
/// rounds, docs/benchmarks.md); reading the whole pipe (1 MiB) was as good at times and at
/// others half as fast.
const READ_BUF: usize = 512 * 1024;
/// From this size the allocator maps a block of its own, given back when freed.
const MMAP_THRESHOLD: usize = 128 * 1024;
/// How much attach input may wait for the container's stdin before attach clients are no
/// longer read (back-pressure reaches clients, never the container's output).
const STDIN_QUEUE_MAX: usize = 1024 * 1024;

struct Output {
    fd: OwnedFd,
    stream: Stream,
    open: bool,
}

struct Client {
    sock: OwnedFd,
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// Carries stdin (said so, sent some, or ended it): only such a client's going away
    /// closes the container's stdin with --stdin-once.
    carries_stdin: bool,
    dead: bool,
}

struct ControlConn {
    sock: UnixStream,
    buf: Vec<u8>,
    /// When it must have sent its request (REQUEST_TIMEOUT after its accept).
    deadline: Instant,
    /// Descriptors that came with the request (an interactive exec's stdio).
    fds: Vec<OwnedFd>,
    dead: bool,
}

struct ExecSession {
    pid: i32,
    conn: UnixStream,
    out: [Option<OwnedFd>; 2],
    data: [Vec<u8>; 2],
    truncated: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    status: Option<i32>,
    /// An exec_sync, whose requester waits on `conn` for the answer: if it goes away (a
    /// client that gave up: ExecSync cancelled or past its gRPC deadline), nobody will read
    /// the result, and the process is ended, as containerd kills an ExecSync's process
    /// when its context ends. Cleared once seen gone.
    watch_requester: bool,
    /// An interactive exec (its stdio the requester's), not an exec_sync.
    interactive: bool,
}

impl ExecSession {
    /// Reads stream `k` (at most `rounds` reads) until nothing more is there; keeps up to the
    /// CRI cap and notes what it drops. End of stream or an error closes it.
    fn read(&mut self, k: usize, rounds: usize) {
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..rounds {
            let Some(fd) = &self.out[k] else { return };
            match nix::unistd::read(fd.as_fd(), &mut buf) {
                Ok(n) if n > 0 => {
                    let room = proto::EXEC_SYNC_MAX_OUTPUT.saturating_sub(self.data[k].len());
                    if n > room {
                        self.truncated = true;
                    }
                    self.data[k].extend_from_slice(&buf[..n.min(room)]);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
                _ => {
                    self.out[k] = None;
                    return;
                }
            }
        }
    }
}

/// An exec_sync's answer (up to 32 MiB of output) being sent as its requester reads it:
/// from the loop, never blocking it, and given up on at `deadline` (a requester that reads
/// a little every few seconds held the whole shim, its container's output included).
struct PendingAnswer {
    sock: UnixStream,
    parts: VecDeque<Vec<u8>>,
    off: usize,
    deadline: Instant,
}

impl PendingAnswer {
    /// Sends what the socket takes now: Ok(true) when all is sent.
    fn send(&mut self) -> std::result::Result<bool, Errno> {
        while let Some(p) = self.parts.front() {
            if self.off == p.len() {
                self.parts.pop_front();
                self.off = 0;
                continue;
            }
            match socket::send(
                self.sock.as_raw_fd(),
                &p[self.off..],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => self.off += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// How long an exec_sync's requester has to read its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum Source {
    Signal,
    Control,
    Attach,
    Output(usize),
    Stdin,
    Conn(usize),
    Client(usize),
    Exec(usize, usize),
    ExecRequester(usize),
    Answer(usize),
    Oom,
}

pub struct Monitor {
    id: String,
    rt: Runtime,
    pid: i32,
    dir: PathBuf,
    exit_file: PathBuf,
    /// The exit record's reserved space (see `rsrun::state::Reserved`).
    exit_slot: Option<rsrun::state::Reserved>,
    delete_on_exit: bool,
    log: CriLog,
    outputs: Vec<Output>,
    /// The container's stdin (a pipe, or the terminal), while open.
    stdin: Option<OwnedFd>,
    stdin_queue: VecDeque<u8>,
    /// The container's stdin is to close once what is queued for it is written (its last
    /// attacher's input ended while the container had not read all of it yet).
    stdin_closing: bool,
    stdin_once: bool,
    master: Option<OwnedFd>,
    /// The terminal's slave side, held while the init runs: with no process holding the
    /// terminal open for a moment (an init that closed its stdio, a getty between sessions)
    /// the master would read EIO, taken for the output's end, and a process opening the
    /// terminal again would write into nothing and block once its buffer filled (conmon
    /// polls the master again instead). Dropped when the init exits, so that the output's
    /// end is seen then.
    pty_peer: Option<OwnedFd>,
    sigfd: SignalFd,
    control: UnixListener,
    attach: OwnedFd,
    conns: Vec<ControlConn>,
    clients: Vec<Client>,
    execs: Vec<ExecSession>,
    answers: Vec<PendingAnswer>,
    started_at: Option<String>,
    /// The runtime's error when the start failed (the init then exits without running the
    /// program): the exit record carries it, with exit code 128.
    start_error: Option<String>,
    oom: OomWatch,
    exited: Option<(i32, Option<i32>)>,
    /// When the init was reaped: the exit record's finished_at (not when the record is
    /// written, after the output's drain and the runtime's delete).
    finished_at: Option<String>,
    buf: Vec<u8>,
    /// A descriptor held in reserve, given up to accept and close a connection when the
    /// shim is out of descriptors (see `shed`).
    reserve: Option<OwnedFd>,
}

fn nonblocking(fd: &impl AsFd) -> Result<()> {
    let fl = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).context("F_GETFL")?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK),
    )
    .context("F_SETFL O_NONBLOCK")?;
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")
}

/// Points this process's stdio descriptor `to` (0, 1 or 2) at `from`, for the next fork
/// to inherit.
fn dup_onto(from: RawFd, to: RawFd) -> Result<()> {
    let from = rsrun::sys::borrow(from);
    match to {
        0 => nix::unistd::dup2_stdin(from),
        1 => nix::unistd::dup2_stdout(from),
        _ => nix::unistd::dup2_stderr(from),
    }
    .context("dup2")
}

fn dev_null() -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")
}

/// Binds a socket with mode 0600 whatever the umask.
fn with_private_umask<T>(f: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let r = f();
    nix::sys::stat::umask(old);
    r
}

impl Monitor {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Creates the container. On failure nothing is left: no container, no socket, and no
    /// directory if this call made it.
    pub fn start(o: &Opts) -> Result<Monitor> {
        let made_dir = !o.dir.exists();
        if made_dir {
            std::fs::create_dir_all(&o.dir)
                .with_context(|| format!("create {}", o.dir.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&o.dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("chmod {}", o.dir.display()))?;
        }
        let r = Self::start_inner(o);
        if r.is_err() {
            for f in ["control", "attach", "console.sock", "shim.pid", "shim.log"] {
                let _ = std::fs::remove_file(o.dir.join(f));
            }
            if made_dir {
                let _ = std::fs::remove_dir(&o.dir);
            }
        }
        r
    }

    fn start_inner(o: &Opts) -> Result<Monitor> {
        let shim_log = o.dir.join("shim.log");
        rsrun::log::init(shim_log.to_str(), rsrun::log::Format::Json, false)
            .with_context(|| format!("open {}", shim_log.display()))?;
        // SIGCHLD through a signalfd: blocked before the container exists, so no exit is
        // missed. The termination signals too, read there and passed over: a `systemctl
        // kill` of the CRI server's unit (the shims stay in its cgroup) or a stray kill
        // ended the shim without an exit record, its container left unmonitored to die of
        // SIGPIPE at its next write. The shim ends when its container does; SIGKILL ends it
        // at once. (Every process started from here resets its mask before exec.)
        let mut sigs = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            sigs.add(s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&sigs), None)
            .context("block SIGCHLD and the termination signals")?;
        let sigfd = SignalFd::with_flags(&sigs, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("signalfd")?;
        let log = CriLog::open(&o.log_path, o.max_line)
            .with_context(|| format!("open the container log {}", o.log_path.display()))?;
        let mut rt = Runtime::new(o.root.clone(), false);
        rt.systemd_cgroup = o.systemd_cgroup;
        let null = dev_null()?;

        // The container's stdio: our 0, 1, 2 at the moment of the fork.
        let mut outputs = Vec::new();
        let mut stdin = None;
        let mut console_listener = None;
        let console_path = o.dir.join("console.sock");
        let created = if o.terminal {
            let _ = std::fs::remove_file(&console_path);
            let (short, _dirfd) = rsrun::lifecycle::short_socket_path(&console_path)?;
            let l = with_private_umask(|| UnixListener::bind(&short))
                .with_context(|| format!("bind {}", console_path.display()))?;
            console_listener = Some(l);
            rt.create(&CreateOpts {
                id: o.id.clone(),
                bundle: o.bundle.clone(),
                console_socket: Some(console_path.clone()),
                ..Default::default()
            })
        } else {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            // Larger pipes: a container that writes fast wakes the shim less often (the
            // pages are used only while output is waiting). Best effort (pipe-max-size).
            for p in [&out_r, &err_r] {
                let _ = nix::fcntl::fcntl(p, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
            }
            let in_r = if o.stdin {
                let (r, w) = pipe()?;
                stdin = Some(w);
                Some(r)
            } else {
                None
            };
            dup_onto(in_r.as_ref().map_or(null.as_raw_fd(), |r| r.as_raw_fd()), 0)?;
            dup_onto(out_w.as_raw_fd(), 1)?;
            dup_onto(err_w.as_raw_fd(), 2)?;
            let r = rt.create(&CreateOpts {
                id: o.id.clone(),
                bundle: o.bundle.clone(),
                ..Default::default()
            });
            for fd in 0..3 {
                dup_onto(null.as_raw_fd(), fd)?;
            }
            outputs.push(Output {
                fd: out_r,
                stream: Stream::Stdout,
                open: true,
            });
            outputs.push(Output {
                fd: err_r,
                stream: Stream::Stderr,
                open: true,
            });
            r
        };
        let pid = created.map_err(|e| anyhow::anyhow!("{e}"))?;
        let undo = |e: anyhow::Error| {
            let _ = rt.delete(&o.id, true);
            e
        };
        let mut master = None;
        if let Some(l) = console_listener {
            let (c, _) = l
                .accept()
                .context("accept on the console socket")
                .map_err(undo)?;
            let fd = rsrun::sys::recv_fd(c.as_raw_fd())
                .context("receive the terminal")
                .map_err(undo)?;
            let _ = std::fs::remove_file(&console_path);
            let out = fd.try_clone().context("dup the terminal").map_err(undo)?;
            if o.stdin {
                stdin = Some(fd.try_clone().context("dup the terminal").map_err(undo)?);
            }
            outputs.push(Output {
                fd: out,
                stream: Stream::Stdout,
                open: true,
            });
            master = Some(fd);
        }
        let pty_peer = match &master {
            Some(m) => Some(
                rsrun::sys::pty_peer(m.as_raw_fd())
                    .context("open the terminal's slave side (TIOCGPTPEER)")
                    .map_err(undo)?,
            ),
            None => None,
        };
        for out in &outputs {
            nonblocking(&out.fd).map_err(undo)?;
        }
        if let Some(s) = &stdin {
            nonblocking(s).map_err(undo)?;
        }
        let (control, attach) = Self::sockets(&o.dir).map_err(undo)?;
        let pid_file = o.dir.join("shim.pid");
        std::fs::write(&pid_file, std::process::id().to_string())
            .with_context(|| format!("write {}", pid_file.display()))
            .map_err(undo)?;
        // The exit record's disk space, taken now: a container that fills the disk must not
        // cost its exit record (written into this space at the exit).
        let exit_slot = rsrun::state::Reserved::new(&o.exit_file)
            .map_err(|e| {
                rsrun::log::warn(&format!(
                    "container {}: no space reserved for the exit record: {e}",
                    o.id
                ))
            })
            .ok();
        // (Without a record to find the cgroup by, no OOM kill can be reported.)
        let oom = rt.oom_watch(&o.id).unwrap_or_else(|e| {
            rsrun::log::warn(&format!("container {}: no OOM watch: {e}", o.id));
            OomWatch::default()
        });
        // Parsing the config and creating the container allocated much that is free now:
        // an idle shim keeps none of it.
        rsrun::sys::malloc_trim();
        // The output buffers (the read buffer and a burst's batches) are mappings of their
        // own: given back after a burst, and untouched until reads fill them.
        rsrun::sys::malloc_mmap_threshold(MMAP_THRESHOLD);
        rsrun::log::info(&format!("container {}: created, init pid {pid}", o.id));
        Ok(Monitor {
            id: o.id.clone(),
            rt,
            pid,
            dir: o.dir.clone(),
            exit_file: o.exit_file.clone(),
            exit_slot,
            delete_on_exit: o.delete_on_exit,
            log,
            outputs,
            stdin,
            stdin_queue: VecDeque::new(),
            stdin_closing: false,
            stdin_once: o.stdin_once,
            master,
            pty_peer,
            sigfd,
            control,
            attach,
            conns: Vec::new(),
            clients: Vec::new(),
            execs: Vec::new(),
            answers: Vec::new(),
            started_at: None,
            start_error: None,
            oom,
            exited: None,
            finished_at: None,
            buf: vec![0; READ_BUF],
            reserve: dev_null().ok().map(OwnedFd::from),
        })
    }

    fn sockets(dir: &Path) -> Result<(UnixListener, OwnedFd)> {
        let cp = dir.join("control");
        let ap = dir.join("attach");
        for p in [&cp, &ap] {
            let _ = std::fs::remove_file(p);
        }
        // Paths longer than a socket address holds go through /proc/self/fd of the directory.
        let (cp_short, _d1) = rsrun::lifecycle::short_socket_path(&cp)?;
        let (ap_short, _d2) = rsrun::lifecycle::short_socket_path(&ap)?;
        let control = with_private_umask(|| UnixListener::bind(&cp_short))
            .with_context(|| format!("bind {}", cp.display()))?;
        control.set_nonblocking(true).context("control socket")?;
        let attach = socket::socket(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("attach socket")?;
        let addr = socket::UnixAddr::new(&ap_short).with_context(|| format!("{}", ap.display()))?;
        with_private_umask(|| socket::bind(attach.as_raw_fd(), &addr))
            .with_context(|| format!("bind {}", ap.display()))?;
        socket::listen(&attach, socket::Backlog::new(64).context("backlog")?)
            .with_context(|| format!("listen {}", ap.display()))?;
        Ok((control, attach))
    }

    /// The loop, until the container's init has exited and its exit is recorded.
    pub fn run(&mut self) -> Result<i32> {
        loop {
            let timeout = self
                .execs
                .iter()
                .filter(|e| !e.timed_out)
                .filter_map(|e| e.deadline)
                .chain(self.answers.iter().map(|a| a.deadline))
                .chain(self.conns.iter().map(|c| c.deadline))
                // After a burst of output, a look once its writer thread may have ended.
                .chain(
                    self.log
                        .bursting()
                        .then(|| Instant::now() + crilog::WRITER_IDLE),
                )
                .min()
                .map(|d| {
                    let ms = d.saturating_duration_since(Instant::now()).as_millis() + 1;
                    PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
                })
                .unwrap_or(PollTimeout::NONE);
            let ready = self.poll(timeout)?;
            for (src, ev) in ready {
                self.dispatch(src, ev);
            }
            if self.log.settle() {
                // The burst's read buffer (all of it touched) for one untouched.
                self.buf = vec![0; READ_BUF];
                rsrun::sys::malloc_trim();
            }
            self.expire_execs();
            self.answer_finished_execs();
            self.expire_answers();
            self.expire_conns();
            self.conns.retain(|c| !c.dead);
            // An attacher that carried stdin gone for any reason (detached, its connection
            // broken, dropped for not reading or for a bad message) is the end of its input:
            // with --stdin-once and no terminal, the first one closes the container's stdin
            // (containerd's rule). One without stdin changes nothing; a terminal's input stays
            // open for the next attacher (`kubectl attach -it` after a dropped session), as
            // containerd leaves it: EOF cannot be sent through a terminal without hanging it up.
            if self.stdin_once
                && self.master.is_none()
                && self.stdin.is_some()
                && !self.stdin_closing
                && self.clients.iter().any(|c| c.dead && c.carries_stdin)
            {
                self.close_stdin();
            }
            self.clients.retain(|c| !c.dead);
            if let Some((code, signal)) = self.exited {
                self.finish(code, signal);
                return Ok(0);
            }
        }
    }

    fn poll(&self, timeout: PollTimeout) -> Result<Vec<(Source, PollFlags)>> {
        let inp = PollFlags::POLLIN;
        let mut fds = vec![
            PollFd::new(self.sigfd.as_fd(), inp),
            PollFd::new(self.control.as_fd(), inp),
            PollFd::new(self.attach.as_fd(), inp),
        ];
        let mut srcs = vec![Source::Signal, Source::Control, Source::Attach];
        if let Some(fd) = self.oom.fd() {
            fds.push(PollFd::new(fd, inp));
            srcs.push(Source::Oom);
        }
        for (i, o) in self.outputs.iter().enumerate().filter(|(_, o)| o.open) {
            fds.push(PollFd::new(o.fd.as_fd(), inp));
            srcs.push(Source::Output(i));
        }
        if let Some(s) = self.stdin.as_ref().filter(|_| !self.stdin_queue.is_empty()) {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLOUT));
            srcs.push(Source::Stdin);
        }
        for (i, c) in self.conns.iter().enumerate() {
            fds.push(PollFd::new(c.sock.as_fd(), inp));
            srcs.push(Source::Conn(i));
        }
        let read_clients = self.stdin_queue.len() < STDIN_QUEUE_MAX;
        for (i, c) in self.clients.iter().enumerate() {
            let mut ev = PollFlags::empty();
            if read_clients {
                ev |= inp;
            }
            if !c.queue.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.sock.as_fd(), ev));
            srcs.push(Source::Client(i));
        }
        for (i, e) in self.execs.iter().enumerate() {
            for (k, fd) in e.out.iter().enumerate() {
                if let Some(fd) = fd {
                    fds.push(PollFd::new(fd.as_fd(), inp));
                    srcs.push(Source::Exec(i, k));
                }
            }
            if e.watch_requester && e.status.is_none() {
                // No events asked: poll reports POLLHUP once the requester has closed its
                // end (a half-close by shutdown(2) is not a departure).
                fds.push(PollFd::new(e.conn.as_fd(), PollFlags::empty()));
                srcs.push(Source::ExecRequester(i));
            }
        }
        for (i, a) in self.answers.iter().enumerate() {
            fds.push(PollFd::new(a.sock.as_fd(), PollFlags::POLLOUT));
            srcs.push(Source::Answer(i));
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => bail!("poll: {e}"),
        }
        Ok(fds
            .iter()
            .zip(srcs)
            .filter_map(|(f, s)| f.revents().filter(|r| !r.is_empty()).map(|r| (s, r)))
            .collect())
    }

    fn dispatch(&mut self, src: Source, ev: PollFlags) {
        match src {
            Source::Signal => self.reap(),
            Source::Control => self.accept_control(),
            Source::Attach => self.accept_attach(),
            Source::Output(i) => self.read_output(i),
            Source::Stdin => self.write_stdin(),
            Source::Conn(i) => self.read_conn(i),
            Source::Client(i) => {
                if ev.contains(PollFlags::POLLOUT) {
                    self.flush_client(i);
                }
                if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    self.read_client(i);
                }
            }
            Source::Exec(i, k) => self.read_exec(i, k),
            Source::ExecRequester(i) => {
                // Not once reaped in this round (its PID may be another's by now).
                if ev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
                    && self.execs[i].status.is_none()
                {
                    let e = &mut self.execs[i];
                    e.watch_requester = false;
                    rsrun::log::warn(&format!(
                        "container {}: exec_sync requester gone: ending process {}",
                        self.id, e.pid
                    ));
                    kill_tree(e.pid);
                }
            }
            Source::Answer(i) => {
                let a = &mut self.answers[i];
                match a.send() {
                    Ok(false) => {}
                    // Sent, or the requester is gone: dropped after this round.
                    Ok(true) | Err(_) => {
                        a.parts.clear();
                        a.deadline = Instant::now();
                    }
                }
            }
            Source::Oom => self.oom.refresh(),
        }
    }

    /// Drops the answers sent, and those whose requester did not read them in time.
    fn expire_answers(&mut self) {
        let now = Instant::now();
        let before = self.answers.len();
        self.answers.retain(|a| {
            if a.deadline > now {
                return true;
            }
            if !a.parts.is_empty() {
                rsrun::log::warn(&format!(
                    "container {}: exec_sync requester did not read its answer within {} s: dropped",
                    self.id,
                    ANSWER_TIMEOUT.as_secs()
                ));
            }
            false
        });
        if self.answers.len() < before {
            rsrun::sys::malloc_trim();
        }
    }

    /// Sends the answers still pending before the shim goes, as far as their requesters
    /// read them by `deadline`.
    fn drain_answers(&mut self, deadline: Instant) {
        while !self.answers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds: Vec<PollFd> = self
                .answers
                .iter()
                .map(|a| PollFd::new(a.sock.as_fd(), PollFlags::POLLOUT))
                .collect();
            if !ready_within(&mut fds, left) {
                return;
            }
            drop(fds);
            self.answers.retain_mut(|a| matches!(a.send(), Ok(false)));
        }
    }

    // --- exits -----------------------------------------------------------------------

    fn reap(&mut self) {
        while let Ok(Some(si)) = self.sigfd.read_signal() {
            if si.ssi_signo != Signal::SIGCHLD as u32 {
                let name = Signal::try_from(si.ssi_signo as i32).map_or("a signal", |s| s.as_str());
                rsrun::log::warn(&format!(
                    "container {}: {name} from pid {} passed over: the shim ends when its container does (SIGKILL ends it now)",
                    self.id, si.ssi_pid
                ));
            }
        }
        loop {
            let st = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(s) => s,
            };
            let (pid, code, signal) = match st {
                WaitStatus::Exited(p, c) => (p.as_raw(), c, None),
                WaitStatus::Signaled(p, s, _) => (p.as_raw(), 128 + s as i32, Some(s as i32)),
                _ => continue,
            };
            if pid == self.pid {
                // The count before the cgroup can go (systemd removes an emptied scope's).
                self.oom.refresh();
                self.exited = Some((code, signal));
                self.finished_at = Some(crilog::timestamp());
            } else if let Some(e) = self.execs.iter_mut().find(|e| e.pid == pid) {
                e.status = Some(code);
            }
        }
    }

    /// Answers the exec sessions whose process has exited (after a dispatch round: the
    /// round's indices stay valid until then).
    fn answer_finished_execs(&mut self) {
        let mut i = 0;
        while i < self.execs.len() {
            if self.execs[i].status.is_some() {
                let e = self.execs.remove(i);
                self.answer_exec(e);
            } else {
                i += 1;
            }
        }
    }

    /// The init has exited: the rest of its output, the exit record, the attachers told.
    fn finish(&mut self, code: i32, signal: Option<i32>) {
        self.pty_peer = None;
        // No new connection from here: the sockets' names go first (a connect fails at
        // once), and what waits in their backlogs is served as far as an exited container
        // can be: an attach gets the rest of the output and the exit code with the other
        // clients, a control request an answer that the container exited. (They waited for
        // the shim's end, up to some 12 s, and then got a reset: an attach ended without its
        // exit code, an ExecSync failed on a "connection reset".)
        for f in ["control", "attach"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
        self.accept_attach();
        self.refuse_control();
        // What the container wrote before it exited is in the pipes: read it all. Writers
        // that outlive the init (no pid namespace of its own) get a short grace, also when
        // they keep writing (a `yes &` the init left would hold the record forever; the
        // runtime's delete ends them).
        // Both streams in turn (a bounded number of reads each per round), so that a
        // writer that keeps one of them busy does not take the other's share of the grace.
        let grace = Instant::now() + Duration::from_secs(1);
        loop {
            let open: Vec<usize> = (0..self.outputs.len())
                .filter(|i| self.outputs[*i].open)
                .collect();
            for &i in &open {
                for _ in 0..16 {
                    match self.read_output_once(i) {
                        Some(true) => {}
                        Some(false) => {
                            self.outputs[i].open = false;
                            break;
                        }
                        None => break,
                    }
                }
            }
            let left = grace.saturating_duration_since(Instant::now());
            if left.is_zero() || self.outputs.iter().all(|o| !o.open) {
                break;
            }
            let mut p: Vec<PollFd> = self
                .outputs
                .iter()
                .filter(|o| o.open)
                .map(|o| PollFd::new(o.fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::ZERO);
            if nix::poll::poll(&mut p, ms).unwrap_or(0) == 0 {
                break;
            }
        }
        for i in 0..self.outputs.len() {
            let ts = crilog::timestamp();
            let stream = self.outputs[i].stream;
            if let Some(m) = self.log.finish(stream, ts.as_bytes()) {
                rsrun::log::warn(&format!("container {}: {m}", self.id));
            }
        }
        // Every record written, and one thread again (the delete below may fork hooks).
        if let Some(m) = self.log.quiesce() {
            rsrun::log::warn(&format!("container {}: {m}", self.id));
        }
        self.oom.refresh();
        let oom = self.oom.killed(signal == Some(Signal::SIGKILL as i32));
        // The runtime's part goes before the record, so that a reader of the record finds
        // the container's cgroups gone (and no delete of its own racing this one).
        if self.delete_on_exit {
            if let Err(e) = self.rt.delete(&self.id, true) {
                rsrun::log::error(&format!("container {}: delete at exit: {e}", self.id));
            }
        }
        let mut record = json!({
            "id": self.id,
            "pid": self.pid,
            "exit_code": code,
            "signal": signal,
            "started_at": self.started_at,
            "finished_at": self.finished_at.take().unwrap_or_else(crilog::timestamp),
            "oom_killed": oom,
            "log_dropped_bytes": self.log.dropped(),
        });
        // A process that never ran as asked (its start failed): 128 for the record and for
        // the attached clients alike.
        let code = if self.start_error.is_some() {
            128
        } else {
            code
        };
        if let Some(e) = &self.start_error {
            record["exit_code"] = json!(code);
            record["start_error"] = json!(e);
        }
        // A reader sees no record or the whole of it, also after a crash.
        let data = record.to_string();
        let written = match self.exit_slot.take() {
            Some(r) => r.commit(data.as_bytes()),
            None => rsrun::state::write_file_atomic(&self.exit_file, data.as_bytes(), true),
        };
        if let Err(e) = written {
            rsrun::log::error(&format!("container {}: exit record: {e:#}", self.id));
        }
        rsrun::log::info(&format!(
            "container {}: exited with {code} (oom {oom}, log bytes dropped {})",
            self.id,
            self.log.dropped()
        ));
        let mut msg = vec![proto::ATTACH_EXIT];
        msg.extend_from_slice(&code.to_le_bytes());
        for i in 0..self.clients.len() {
            self.enqueue(i, msg.clone());
            self.flush_client(i);
        }
        self.drain_clients(Instant::now() + Duration::from_secs(5));
        self.end_execs();
        self.drain_answers(Instant::now() + Duration::from_secs(5));
        for f in ["control", "attach", "shim.pid"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }

    /// Exec sessions still running when the container has exited end with it: their
    /// processes are killed (in a PID namespace of its own the kernel did it already; in the
    /// node's they would run on), and each is answered with its exit status and its output
    /// up to then, as containerd reports an exec the container's end killed (137), not an
    /// error that reads as a failure of the runtime.
    fn end_execs(&mut self) {
        let execs = std::mem::take(&mut self.execs);
        for e in execs.iter().filter(|e| e.status.is_none()) {
            kill_tree(e.pid);
        }
        let until = Instant::now() + Duration::from_secs(1);
        for mut e in execs {
            while e.status.is_none() {
                let pid = nix::unistd::Pid::from_raw(e.pid);
                match nix::sys::wait::waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, c)) => e.status = Some(c),
                    Ok(WaitStatus::Signaled(_, sig, _)) => e.status = Some(128 + sig as i32),
                    Ok(WaitStatus::StillAlive) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(Errno::EINTR) => {}
                    _ => break,
                }
            }
            if e.status.is_some() {
                self.answer_exec(e);
            } else {
                let _ = reply(
                    &e.conn,
                    &json!({"error": "the container exited; the exec's process did not end"}),
                );
            }
        }
    }

    // --- container output and input ----------------------------------------------------

    fn read_output(&mut self, i: usize) {
        // A bounded number of reads per wakeup keeps the other descriptors served.
        for _ in 0..16 {
            match self.read_output_once(i) {
                Some(true) => continue,
                Some(false) => {
                    self.outputs[i].open = false;
                    let ts = crilog::timestamp();
                    let stream = self.outputs[i].stream;
                    if let Some(m) = self.log.finish(stream, ts.as_bytes()) {
                        rsrun::log::warn(&format!("container {}: {m}", self.id));
                    }
                    break;
                }
                None => break,
            }
        }
    }

    /// One read: Some(true) data, Some(false) end of stream, None nothing now.
    fn read_output_once(&mut self, i: usize) -> Option<bool> {
        let n = match nix::unistd::read(self.outputs[i].fd.as_fd(), &mut self.buf) {
            Ok(0) => return Some(false),
            Ok(n) => n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return None,
            // A terminal whose other side is gone reads EIO.
            Err(_) => return Some(false),
        };
        let stream = self.outputs[i].stream;
        let ts = crilog::timestamp();
        let data = std::mem::take(&mut self.buf);
        if let Some(m) = self.log.write(stream, &data[..n], ts.as_bytes()) {
            rsrun::log::warn(&format!("container {}: {m}", self.id));
        }
        if !self.clients.is_empty() {
            let kind = match stream {
                Stream::Stdout => proto::ATTACH_STDOUT,
                Stream::Stderr => proto::ATTACH_STDERR,
            };
            for chunk in data[..n].chunks(proto::ATTACH_MAX - 1) {
                let mut msg = Vec::with_capacity(chunk.len() + 1);
                msg.push(kind);
                msg.extend_from_slice(chunk);
                for c in 0..self.clients.len() {
                    self.enqueue(c, msg.clone());
                }
            }
            for c in 0..self.clients.len() {
                self.flush_client(c);
            }
        }
        self.buf = data;
        Some(true)
    }

    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_queue.clear();
            return;
        };
        while !self.stdin_queue.is_empty() {
            let (a, _) = self.stdin_queue.as_slices();
            match nix::unistd::write(fd, a) {
                Ok(n) => {
                    self.stdin_queue.drain(..n);
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
                Err(e) => {
                    rsrun::log::warn(&format!("container {}: stdin: {e}", self.id));
                    self.stdin_queue.clear();
                    self.stdin = None;
                    self.stdin_closing = false;
                    return;
                }
            }
        }
        if self.stdin_closing {
            self.stdin_closing = false;
            self.stdin = None;
        }
    }

    /// Closes the container's stdin once what is queued for it is written: the input that
    /// came before its end is the container's to read, however slowly it reads it (the
    /// queue is bounded, and clients are not read while it is full).
    fn close_stdin(&mut self) {
        self.stdin_closing = true;
        self.write_stdin();
    }

    // --- attach ------------------------------------------------------------------------

    /// Out of descriptors (EMFILE, ENFILE): the connection waiting in `listener`'s backlog
    /// would keep it readable, and the loop would spin on it for as long. It is accepted on
    /// the descriptor held in reserve for this, and closed at once (its client reads EOF).
    fn shed(&mut self, listener: RawFd, why: Errno) {
        self.reserve = None;
        // (Accepted and dropped: closed.)
        let _ = socket::accept4(rsrun::sys::borrow(listener), SockFlag::SOCK_CLOEXEC);
        self.reserve = dev_null().ok().map(OwnedFd::from);
        rsrun::log::warn(&format!(
            "container {}: a connection refused: {why} (out of descriptors)",
            self.id
        ));
    }

    fn accept_attach(&mut self) {
        loop {
            match socket::accept4(
                &self.attach,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(sock) if self.clients.len() >= MAX_CLIENTS => {
                    drop(sock);
                    rsrun::log::warn(&format!(
                        "container {}: an attach client refused: {MAX_CLIENTS} are attached",
                        self.id
                    ));
                }
                Ok(sock) => {
                    self.clients.push(Client {
                        sock,
                        queue: VecDeque::new(),
                        queued: 0,
                        carries_stdin: false,
                        dead: false,
                    });
                }
                Err(Errno::EINTR) => continue,
                Err(e @ (Errno::EMFILE | Errno::ENFILE)) => {
                    self.shed(self.attach.as_raw_fd(), e);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    fn enqueue(&mut self, i: usize, msg: Vec<u8>) {
        let c = &mut self.clients[i];
        if c.dead {
            return;
        }
        c.queued += msg.len();
        c.queue.push_back(msg);
        if c.queued > CLIENT_QUEUE_MAX {
            rsrun::log::warn(&format!(
                "container {}: dropping an attach client that does not read",
                self.id
            ));
            c.dead = true;
        }
    }

    /// Sends what waits for the attachers (the output's end, the exit) before the shim
    /// goes, as far as they read it by `deadline`: a client slower than the socket's buffer
    /// would lose the end of the output and never learn the exit.
    fn drain_clients(&mut self, deadline: Instant) {
        loop {
            let waiting: Vec<usize> = (0..self.clients.len())
                .filter(|i| !self.clients[*i].dead && !self.clients[*i].queue.is_empty())
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if waiting.is_empty() || left.is_zero() {
                return;
            }
            let mut fds: Vec<PollFd> = waiting
                .iter()
                .map(|i| PollFd::new(self.clients[*i].sock.as_fd(), PollFlags::POLLOUT))
                .collect();
            if !ready_within(&mut fds, left) {
                return;
            }
            drop(fds);
            for i in waiting {
                self.flush_client(i);
            }
        }
    }

    fn flush_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while let Some(m) = c.queue.front() {
            match socket::send(
                c.sock.as_raw_fd(),
                m,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => {
                    c.queued -= m.len();
                    c.queue.pop_front();
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        }
    }

    fn read_client(&mut self, i: usize) {
        let mut buf = [0u8; proto::ATTACH_MAX];
        // MSG_TRUNC: the packet's whole length, also when it did not fit (the rest is gone).
        let n = match socket::recv(
            self.clients[i].sock.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
        ) {
            Ok(n) => n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return,
            Err(_) => 0,
        };
        if n == 0 {
            // Detached (stdin_once is applied when the client is removed).
            self.clients[i].dead = true;
            return;
        }
        if n > buf.len() {
            // Its stdin would reach the container with bytes missing: dropped instead.
            rsrun::log::warn(&format!(
                "container {}: attach packet of {n} bytes, over the {} the protocol allows: client dropped",
                self.id,
                buf.len()
            ));
            self.clients[i].dead = true;
            return;
        }
        let msg = &buf[..n];
        match msg[0] {
            proto::ATTACH_STDIN if self.stdin.is_some() && !self.stdin_closing => {
                self.clients[i].carries_stdin = true;
                self.stdin_queue.extend(&msg[1..]);
                self.write_stdin();
            }
            proto::ATTACH_STDIN => {}
            proto::ATTACH_RESIZE if msg.len() == 5 => {
                let rows = u16::from_le_bytes([msg[1], msg[2]]);
                let cols = u16::from_le_bytes([msg[3], msg[4]]);
                if let Some(m) = &self.master {
                    let _ = rsrun::sys::set_winsize(m.as_raw_fd(), rows, cols);
                }
            }
            // The client's input ended. With --stdin-once and no terminal that closes the
            // container's stdin and the client stays for the output until the exit; else
            // stdin stays open for the next attacher and this attachment ends (as containerd
            // ends such an attach: the client is not left waiting for an exit that input will
            // not bring).
            proto::ATTACH_CLOSE_STDIN if msg.len() == 1 => {
                self.clients[i].carries_stdin = true;
                if self.stdin_once && self.master.is_none() {
                    self.close_stdin();
                } else {
                    self.flush_client(i);
                    self.clients[i].dead = true;
                }
            }
            k => {
                rsrun::log::warn(&format!(
                    "container {}: attach client sent a bad message (kind {k}, {n} bytes): dropped",
                    self.id
                ));
                self.clients[i].dead = true;
            }
        }
    }

    // --- control -----------------------------------------------------------------------

    fn accept_control(&mut self) {
        loop {
            match self.control.accept() {
                Ok((sock, _)) if self.conns.len() >= MAX_CONNS => {
                    let _ = reply(&sock, &json!({"error": "too many control connections"}));
                    rsrun::log::warn(&format!(
                        "container {}: a control connection refused: {MAX_CONNS} are open",
                        self.id
                    ));
                }
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_ok() {
                        self.conns.push(ControlConn {
                            sock,
                            buf: Vec::new(),
                            deadline: Instant::now() + REQUEST_TIMEOUT,
                            fds: Vec::new(),
                            dead: false,
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Some(why @ (Errno::EMFILE | Errno::ENFILE)) =
                        e.raw_os_error().map(Errno::from_raw)
                    {
                        self.shed(self.control.as_raw_fd(), why);
                    }
                    break;
                }
            }
        }
    }

    /// Answers every control connection, open or waiting to be accepted, that the container
    /// has exited (the shim is finishing: it serves no more requests).
    fn refuse_control(&mut self) {
        let msg = json!({"error": format!("container {} has exited", self.id)});
        for c in std::mem::take(&mut self.conns) {
            let _ = reply(&c.sock, &msg);
        }
        loop {
            match self.control.accept() {
                Ok((sock, _)) => {
                    let _ = reply(&sock, &msg);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Closes the control connections that did not send their request in time.
    fn expire_conns(&mut self) {
        let now = Instant::now();
        for c in self
            .conns
            .iter_mut()
            .filter(|c| !c.dead && c.deadline <= now)
        {
            let _ = reply(
                &c.sock,
                &json!({"error": format!("no request within {} s", REQUEST_TIMEOUT.as_secs())}),
            );
            rsrun::log::warn(&format!(
                "container {}: a control connection closed: no request within {} s ({} bytes)",
                self.id,
                REQUEST_TIMEOUT.as_secs(),
                c.buf.len()
            ));
            c.dead = true;
        }
    }

    fn read_conn(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        let c = &mut self.conns[i];
        // Only what arrives now is searched for the line's end (a request sent a byte at a
        // time was scanned again from its start at each byte).
        let seen = c.buf.len();
        let eof = loop {
            match rsrun::sys::recv_with_fds(c.sock.as_raw_fd(), &mut buf) {
                Ok((0, _)) => break true,
                Ok((n, fds)) => {
                    c.fds.extend(fds);
                    if c.fds.len() > 3 {
                        let _ = reply(&c.sock, &json!({"error": "too many descriptors"}));
                        c.dead = true;
                        return;
                    }
                    c.buf.extend_from_slice(&buf[..n]);
                    if c.buf.len() > proto::CONTROL_MAX {
                        let _ = reply(&c.sock, &json!({"error": "control request too long"}));
                        c.dead = true;
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.dead = true;
                    return;
                }
            }
        };
        let line = match memchr::memchr(b'\n', &c.buf[seen..]) {
            Some(nl) => c.buf[..seen + nl].to_vec(),
            None if eof => std::mem::take(&mut c.buf),
            None => return,
        };
        c.dead = true;
        let fds = std::mem::take(&mut c.fds);
        let sock = match c.sock.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        };
        let req = match proto::parse(&line) {
            Ok(r) => r,
            Err(e) => {
                rsrun::log::warn(&format!("container {}: {e}", self.id));
                let _ = reply(&sock, &json!({"error": e}));
                return;
            }
        };
        let answer = match req {
            Request::Start {} => self.start_container(),
            Request::ReopenLog {} => self
                .log
                .reopen()
                .map(|_| json!({"ok": true}))
                .map_err(|e| format!("reopen the container log: {e}")),
            Request::Status {} => Ok(json!({
                "ok": true, "pid": self.pid, "started_at": self.started_at,
                "log_dropped_bytes": self.log.dropped(),
            })),
            Request::Resize { rows, cols } => match &self.master {
                Some(m) => rsrun::sys::set_winsize(m.as_raw_fd(), rows, cols)
                    .map(|_| json!({"ok": true}))
                    .map_err(|e| format!("resize the terminal: {e}")),
                None => Err("the container has no terminal".into()),
            },
            Request::ExecSync { .. } if self.exec_busy(false) => Err(format!(
                "container {}: {MAX_EXECS} exec_sync sessions are running or being answered",
                self.id
            )),
            Request::Exec { .. } if self.exec_busy(true) => Err(format!(
                "container {}: {MAX_EXECS} interactive exec sessions are running",
                self.id
            )),
            Request::ExecSync {
                args,
                env,
                cwd,
                user,
                timeout_ms,
            } => match self.exec_sync(sock.try_clone(), args, env, cwd, user, timeout_ms) {
                // Answered when it ends.
                Ok(()) => return,
                Err(e) => Err(e),
            },
            Request::Exec {
                args,
                env,
                cwd,
                user,
                tty,
                console_socket,
            } => {
                let o = ExecOpts {
                    id: self.id.clone(),
                    args,
                    env,
                    cwd,
                    user,
                    tty,
                    console_socket: console_socket.map(PathBuf::from),
                    detach: true,
                    ..Default::default()
                };
                match self.exec(sock.try_clone(), o, fds) {
                    // Answered (the PID) already, and again when it ends.
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            }
        };
        let v = answer.unwrap_or_else(|e| {
            rsrun::log::warn(&format!("container {}: {e}", self.id));
            json!({ "error": e })
        });
        let _ = reply(&sock, &v);
    }

    /// Ends the log's writer thread (its batches written) before the runtime library forks:
    /// it wants a single-threaded caller.
    fn single_threaded(&mut self) {
        if let Some(m) = self.log.quiesce() {
            rsrun::log::warn(&format!("container {}: {m}", self.id));
        }
    }

    fn exec_busy(&self, interactive: bool) -> bool {
        let running = self
            .execs
            .iter()
            .filter(|e| e.interactive == interactive)
            .count();
        let answering = if interactive { 0 } else { self.answers.len() };
        running + answering >= MAX_EXECS
    }

    fn start_container(&mut self) -> std::result::Result<serde_json::Value, String> {
        if self.started_at.is_some() {
            return Err(format!("container {} is already started", self.id));
        }
        self.single_threaded();
        if let Err(e) = self.rt.start(&self.id) {
            let msg = format!("start container {}: {e}", self.id);
            self.start_error = Some(msg.clone());
            return Err(msg);
        }
        self.started_at = Some(crilog::timestamp());
        rsrun::log::info(&format!("container {}: started", self.id));
        Ok(json!({"ok": true, "started_at": self.started_at, "pid": self.pid}))
    }

    // --- exec_sync -----------------------------------------------------------------------

    fn exec_sync(
        &mut self,
        conn: std::io::Result<UnixStream>,
        args: Vec<String>,
        env: Vec<String>,
        cwd: Option<String>,
        user: Option<String>,
        timeout_ms: u64,
    ) -> std::result::Result<(), String> {
        let conn = conn.map_err(|e| format!("control connection: {e}"))?;
        if args.is_empty() {
            return Err("exec_sync: args must not be empty".into());
        }
        // The runtime library forks: the log's writer thread ends first.
        self.single_threaded();
        let spawn = || -> Result<(i32, OwnedFd, OwnedFd)> {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let null = dev_null()?;
            dup_onto(out_w.as_raw_fd(), 1)?;
            dup_onto(err_w.as_raw_fd(), 2)?;
            let r = self.rt.exec_detached(&ExecOpts {
                id: self.id.clone(),
                args: args.clone(),
                env: env.clone(),
                cwd: cwd.clone(),
                user: user.clone(),
                detach: true,
                new_process_group: true,
                ..Default::default()
            });
            dup_onto(null.as_raw_fd(), 1)?;
            dup_onto(null.as_raw_fd(), 2)?;
            let pid = r.map_err(|e| anyhow::anyhow!("{e}"))?;
            nonblocking(&out_r)?;
            nonblocking(&err_r)?;
            Ok((pid, out_r, err_r))
        };
        let (pid, out, err) = spawn().map_err(|e| format!("exec_sync: {e:#}"))?;
        self.execs.push(ExecSession {
            pid,
            conn,
            out: [Some(out), Some(err)],
            data: [Vec::new(), Vec::new()],
            truncated: false,
            deadline: (timeout_ms > 0)
                .then(|| Instant::now() + Duration::from_millis(timeout_ms.min(1 << 40))),
            timed_out: false,
            status: None,
            watch_requester: true,
            interactive: false,
        });
        Ok(())
    }

    /// An interactive exec: its stdio is the three descriptors its requester sent (or a
    /// terminal whose master goes to the console socket); the shim keeps none of them and
    /// only waits for the process, to report its exit code.
    fn exec(
        &mut self,
        conn: std::io::Result<UnixStream>,
        o: ExecOpts,
        fds: Vec<OwnedFd>,
    ) -> std::result::Result<(), String> {
        let conn = conn.map_err(|e| format!("control connection: {e}"))?;
        if o.args.is_empty() {
            return Err("exec: args must not be empty".into());
        }
        match (o.tty, o.console_socket.is_some(), fds.len()) {
            (true, true, 0) | (false, false, 3) => {}
            (true, _, _) => {
                return Err("exec: a terminal needs console_socket and no descriptors".into())
            }
            (false, _, n) => {
                return Err(format!(
                    "exec: without a terminal, three descriptors (stdin, stdout, stderr) must come with the request, not {n}"
                ))
            }
        }
        // The runtime library forks: the log's writer thread ends first.
        self.single_threaded();
        let spawn = || -> Result<i32> {
            let null = dev_null()?;
            for (i, fd) in fds.iter().enumerate() {
                dup_onto(fd.as_raw_fd(), i as RawFd)?;
            }
            let r = self.rt.exec_detached(&o);
            for i in 0..3 {
                dup_onto(null.as_raw_fd(), i)?;
            }
            r.map_err(|e| anyhow::anyhow!("{e}"))
        };
        let pid = spawn().map_err(|e| format!("exec: {e:#}"))?;
        drop(fds);
        if let Err(e) = reply(&conn, &json!({"ok": true, "pid": pid})) {
            // Its requester is gone: the process is not waited on by anyone; end it.
            rsrun::log::warn(&format!("container {}: exec requester gone: {e}", self.id));
            kill_tree(pid);
        }
        self.execs.push(ExecSession {
            pid,
            conn,
            out: [None, None],
            data: [Vec::new(), Vec::new()],
            truncated: false,
            deadline: None,
            timed_out: false,
            status: None,
            watch_requester: false,
            interactive: true,
        });
        Ok(())
    }

    fn read_exec(&mut self, i: usize, k: usize) {
        // A bounded number of reads per wakeup keeps the other descriptors served.
        self.execs[i].read(k, 16);
    }

    fn expire_execs(&mut self) {
        let now = Instant::now();
        for e in &mut self.execs {
            // A reaped one is answered after this round: its PID may be another's.
            if !e.timed_out && e.status.is_none() && e.deadline.is_some_and(|d| d <= now) {
                e.timed_out = true;
                // The whole tree: a shell's children must not outlive the probe.
                kill_tree(e.pid);
            }
        }
    }

    fn answer_exec(&mut self, mut e: ExecSession) {
        // Its output up to now (writers that outlive it are not waited for, nor read for
        // longer than what a full pipe and the output cap hold: a child that keeps writing
        // must not hold the shim here).
        let rounds = (proto::EXEC_SYNC_MAX_OUTPUT + (1 << 20)) / (16 * 1024);
        for k in 0..2 {
            e.read(k, rounds);
            e.out[k] = None;
        }
        let code = if e.timed_out {
            -1
        } else {
            e.status.unwrap_or(-1)
        };
        let head = json!({
            "ok": true,
            "exit_code": code,
            "timed_out": e.timed_out,
            "truncated": e.truncated,
            "stdout_len": e.data[0].len(),
            "stderr_len": e.data[1].len(),
        });
        let mut line = head.to_string().into_bytes();
        line.push(b'\n');
        let [out, err] = std::mem::take(&mut e.data);
        let mut a = PendingAnswer {
            sock: e.conn,
            parts: VecDeque::from([line, out, err]),
            off: 0,
            deadline: Instant::now() + ANSWER_TIMEOUT,
        };
        if !matches!(a.send(), Ok(false)) {
            // All sent at once (the common case), or the requester is gone.
            drop(a);
            rsrun::sys::malloc_trim();
            return;
        }
        self.answers.push(a);
    }
}

/// Polls `fds` for at most `left`: false when nothing became ready in time or poll failed
/// (true on EINTR: the caller looks again).
fn ready_within(fds: &mut [PollFd], left: Duration) -> bool {
    let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::ZERO);
    match nix::poll::poll(fds, ms) {
        Ok(0) => false,
        Ok(_) | Err(Errno::EINTR) => true,
        Err(_) => false,
    }
}

fn reply(mut sock: &UnixStream, v: &serde_json::Value) -> std::io::Result<()> {
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_write_timeout(Some(Duration::from_secs(10)));
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    sock.write_all(&line)
}

/// SIGKILLs `root`, its process group (execs lead one: it holds the orphans that a shell's
/// `(cmd &)` left with the container's init) and every descendant (from /proc's parent
/// links: a child that made a group or session of its own). The tree is stopped first, from
/// the root down, and killed only when a scan finds no member not yet stopped: a killed
/// parent's children move to the reaper at once and their parent link no longer leads here,
/// and a stopped process can neither fork nor exit, so no member escapes the scan.
fn kill_tree(root: i32) {
    use nix::sys::signal::{kill, killpg};
    use nix::unistd::Pid;
    // (`root` is our child, not yet reaped: the group of that number is its own.)
    let group = Pid::from_raw(root);
    let _ = killpg(group, Signal::SIGSTOP);
    let _ = kill(group, Signal::SIGSTOP);
    let mut held: Vec<i32> = vec![root];
    for _ in 0..16 {
        let links = parent_links();
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let p = tree[i];
            for (c, pp) in &links {
                if *pp == p && !tree.contains(c) {
                    tree.push(*c);
                }
            }
            i += 1;
        }
        let new: Vec<i32> = tree.into_iter().filter(|p| !held.contains(p)).collect();
        if new.is_empty() {
            break;
        }
        for p in &new {
            let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
        }
        held.extend(new);
    }
    let _ = killpg(group, Signal::SIGKILL);
    for p in held {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

/// (pid, parent pid) of every process /proc shows.
fn parent_links() -> Vec<(i32, i32)> {
    let mut links = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(pp) = ppid {
            links.push((pid, pp));
        }
    }
    links
}
