//! Thin wrappers over the system calls that nix does not cover. This is the one module
//! of the runtime that holds `unsafe` code; every block says why it is sound.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// fork(2) with namespace flags: the child continues from the same point with a copy
/// of the address space. Returns 0 in the child and the child's PID in the parent.
///
/// The caller must be single-threaded (the runtime's binaries are): the child gets a copy
/// of one thread only.
pub fn clone_fork(flags: u64) -> io::Result<libc::pid_t> {
    // SAFETY: the raw clone syscall without CLONE_VM and with a NULL stack behaves like
    // fork(): the child runs on a copy-on-write copy of the parent's stack. No pointers are
    // passed. glibc no longer caches the PID, so getpid() stays correct in the child.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD as u64) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    check(ret).map(|p| p as libc::pid_t)
}

/// struct clone_args of clone3(2), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// clone3(2) as [`clone_fork`], the child born in the cgroup v2 directory `cgroup` (an open
/// descriptor of it): no migration afterwards, so none of the global lock that a write to
/// cgroup.procs takes (and its RCU grace period). Same caller requirements as `clone_fork`.
pub fn clone_fork_into(flags: u64, cgroup: RawFd) -> io::Result<libc::pid_t> {
    let args = CloneArgs {
        flags: flags | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    // SAFETY: `args` is a valid clone_args of the size passed, alive for the call; with a
    // zero stack the child runs on a copy-on-write copy of ours, as with fork() (see
    // `clone_fork`). No other pointer is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    check(ret).map(|p| p as libc::pid_t)
}

/// struct open_how of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub const RESOLVE_NO_XDEV: u64 = 0x01;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// How often openat2 is tried when a concurrent mount or rename makes it answer EAGAIN.
const OPENAT2_TRIES: u32 = 64;

/// openat2(2) with `resolve` flags (e.g. RESOLVE_IN_ROOT, so that absolute symlinks and
/// `..` cannot leave `dirfd`).
pub fn openat2(
    dirfd: RawFd,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve,
    };
    // The kernel answers EAGAIN when a mount or rename anywhere on the machine raced a ".."
    // step under RESOLVE_IN_ROOT/RESOLVE_BENEATH (it cannot prove the step stayed inside);
    // openat2(2) says to retry. Bounded, so a machine that mounts without pause still ends.
    let mut tries = 0;
    let ret = loop {
        // SAFETY: `how` is a valid open_how of the size passed; `path` is NUL-terminated and
        // outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        tries += 1;
        if ret >= 0
            || tries >= OPENAT2_TRIES
            || io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
        {
            break ret;
        }
    };
    // SAFETY: on success the kernel returned a new file descriptor that nothing else owns.
    check(ret).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads a small regular file of a container's root (`rel` resolved in `root` as if it were
/// `/`: absolute symlinks and `..` stay inside; no magic links), e.g. its /etc/passwd.
/// `Ok(None)` when it does not exist (or a component of its path is no directory, or a link
/// loops). Refused, without reading a byte, when it is anything but a regular file
/// (InvalidInput: a FIFO would block the reader for good, a device such as /dev/zero never
/// ends) or larger than `cap` bytes (InvalidData). Checked through an O_PATH descriptor first, so that what is found
/// there is not opened; one swapped in after that check is opened non-blocking, and refused
/// before any read.
pub fn read_regular_in_root(root: RawFd, rel: &str, cap: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    let path = cstr(rel.trim_start_matches('/'));
    let regular = |fd: &OwnedFd| -> io::Result<std::fs::Metadata> {
        let md = std::fs::File::from(fd.try_clone()?).metadata()?;
        if !md.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("/{} is not a regular file", rel.trim_start_matches('/')),
            ));
        }
        if md.len() > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "/{} is {} bytes, more than the {cap} read",
                    rel.trim_start_matches('/'),
                    md.len()
                ),
            ));
        }
        Ok(md)
    };
    // O_PATH first: opening a device or FIFO for reading can block or act (a tape rewinds).
    let probe = match openat2(root, &path, libc::O_PATH, 0, resolve) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let first = regular(&probe)?;
    let fd = openat2(
        root,
        &path,
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
        resolve,
    )?;
    let md = regular(&fd)?;
    if (md.dev(), md.ino()) != (first.dev(), first.ino()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "/{} changed while it was opened",
                rel.trim_start_matches('/')
            ),
        ));
    }
    let mut data = Vec::with_capacity(md.len() as usize);
    std::fs::File::from(fd).take(cap).read_to_end(&mut data)?;
    Ok(Some(data))
}

/// Marks every descriptor from `first` upwards close-on-exec.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; no memory is touched.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    check(ret).map(|_| ())
}

/// Closes every descriptor from `first` upwards except those in `keep`.
pub fn close_from_except(first: RawFd, keep: &[RawFd]) -> io::Result<()> {
    let mut lo = first;
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&k| k >= first).collect();
    keep.sort_unstable();
    keep.dedup();
    for k in keep {
        if k > lo {
            close_range(lo as u32, (k - 1) as u32)?;
        }
        lo = k + 1;
    }
    close_range(lo as u32, u32::MAX)
}

fn close_range(lo: u32, hi: u32) -> io::Result<()> {
    // SAFETY: closing descriptors is memory-safe; callers only close descriptors that no
    // live Rust object in this process still uses (the init process is about to exec).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
    check(ret).map(|_| ())
}

/// pidfd_open(2): a descriptor that becomes readable when the process exits.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    // SAFETY: a new descriptor owned by nobody else.
    check(ret).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// pidfd_send_signal(2).
pub fn pidfd_send_signal(pidfd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: NULL siginfo is allowed; integer arguments otherwise.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd, sig, 0usize, 0u32) };
    check(ret).map(|_| ())
}

/// The extended attributes of the open file `fd`, names and values (none where its file
/// system keeps none). One that cannot be read (an LSM's refusal, a file capability of a
/// user namespace this one cannot express: EOVERFLOW) or is gone since it was listed is left
/// out.
pub fn fxattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let raw = fd.as_raw_fd();
    let names = match sized(|buf| {
        // SAFETY: buf is writable for buf.len() bytes (none: a size query).
        unsafe { libc::flistxattr(raw, buf.as_mut_ptr().cast(), buf.len()) }
    }) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let value = sized(|buf| {
            // SAFETY: name is NUL-terminated; buf is writable for buf.len() bytes.
            unsafe { libc::fgetxattr(raw, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
        });
        if let Ok(v) = value {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// What `f` fills: asked for its size with an empty buffer, then into one of that size; again
/// when it grew in between (ERANGE).
fn sized(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = check(f(&mut []) as libc::c_long)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; n as usize];
        match check(f(&mut buf) as libc::c_long) {
            Ok(m) => {
                buf.truncate(m as usize);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
            Err(e) => return Err(e),
        }
    }
}

/// fsetxattr(2).
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: name is NUL-terminated; value points to value.len() readable bytes.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    check(ret as libc::c_long).map(|_| ())
}

/// kill(2) by raw signal number: real-time signals have no `nix` `Signal`.
pub fn kill(pid: libc::pid_t, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::kill(pid, sig) };
    check(ret as libc::c_long).map(|_| ())
}

/// setrlimit(2) by raw resource number.
pub fn setrlimit(resource: i32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; the old-limit pointer is NULL.
    let ret = unsafe { libc::prlimit(0, resource as _, &lim, std::ptr::null_mut()) };
    check(ret as libc::c_long).map(|_| ())
}

/// setdomainname(2).
pub fn setdomainname(name: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`.
    let ret = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    check(ret as libc::c_long).map(|_| ())
}

/// personality(2).
pub fn personality(persona: libc::c_ulong) -> io::Result<()> {
    // SAFETY: integer argument only.
    let ret = unsafe { libc::personality(persona) };
    check(ret as libc::c_long).map(|_| ())
}

/// The kernel's `struct sched_attr` (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

/// sched_setattr(2) of this thread.
pub fn sched_setattr(attr: &mut SchedAttr) -> io::Result<()> {
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: `attr` is a live sched_attr of the size it states; the kernel only reads it
    // (and writes `size` back on E2BIG).
    check(unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *mut SchedAttr, 0) })
        .map(|_| ())
}

/// ioprio_set(2) of this process (IOPRIO_WHO_PROCESS, 0).
pub fn ioprio_set(ioprio: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, ioprio) }).map(|_| ())
}

/// The slave side of the pty whose master is `master` (TIOCGPTPEER: through the master's own
/// devpts instance, whatever mount namespace it is in).
pub fn pty_peer(master: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags as an integer and returns a new descriptor.
    let fd = check(unsafe {
        libc::ioctl(
            master,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    } as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Makes `fd` (a terminal) the controlling terminal of this session.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    check(ret as libc::c_long).map(|_| ())
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    check(ret as libc::c_long).map(|_| ())
}

/// Opens a new pseudo-terminal master from the ptmx device at `ptmx` and returns it with the
/// path of its slave.
pub fn open_pty(ptmx: &CStr) -> io::Result<(OwnedFd, String)> {
    // No magic link on the way (a container's /dev/ptmx pointing at /proc/self/fd/N would
    // reopen one of the caller's descriptors), and it must be the ptmx device (5:2).
    let master = openat2(
        libc::AT_FDCWD,
        ptmx,
        libc::O_RDWR | libc::O_NOCTTY,
        0,
        RESOLVE_NO_MAGICLINKS,
    )?;
    let st = nix::sys::stat::fstat(&master)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(5, 2) {
        return Err(io::Error::other(format!(
            "{} is not the ptmx device (5:2)",
            ptmx.to_string_lossy()
        )));
    }
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int that lives across the call.
    check(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) } as libc::c_long,
    )?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int that lives across the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } as libc::c_long)?;
    Ok((master, format!("/dev/pts/{n}")))
}

/// Sets the calling process's umask.
pub fn umask(mask: u32) {
    // SAFETY: integer argument only; umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Exits immediately without running destructors or atexit handlers (for forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which
/// with the PID identifies a process across PID reuse.
pub fn process_start_time(pid: libc::pid_t) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); start time is field 22.
    let start = fields
        .nth(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    Ok(start)
}

/// The state letter of a process (field 3 of /proc/PID/stat), e.g. 'Z' for a zombie.
pub fn process_state(pid: libc::pid_t) -> io::Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))
}

pub fn cstr(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s)
        .unwrap_or_else(|_| std::ffi::CString::new(s.replace('\0', "")).unwrap_or_default())
}

/// Borrows a raw descriptor that the caller knows to be open for the borrow's use.
pub fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass descriptors owned by an object that outlives every use of the
    // borrow (the init's sync socket, held by its arguments until exit).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of a descriptor a call that yields a RawFd just returned (accept4,
/// libseccomp's notification fd), which nothing else owns.
pub fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel through such a call and nothing else
    // owns or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, prog): installs a classic BPF program on this
/// thread (inherited across fork and execve). With SECCOMP_FILTER_FLAG_NEW_LISTENER the
/// kernel returns the notification fd.
pub fn seccomp_set_filter(
    flags: libc::c_ulong,
    prog: &[libc::sock_filter],
) -> io::Result<Option<OwnedFd>> {
    const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, `len` instructions that outlive the call; the kernel
    // copies the program and writes nothing through the pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER == 0 {
        // Above 0: with TSYNC, the thread that could not be synchronized; nothing was
        // installed.
        if r > 0 {
            return Err(io::Error::other(format!(
                "seccomp TSYNC: thread {r} could not take the filter; none was loaded"
            )));
        }
        return Ok(None);
    }
    let fd = RawFd::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    Ok(Some(own(fd)))
}

/// Sends `fd` over the unix socket `sock` with SCM_RIGHTS, `name` as the payload.
pub fn send_fd(sock: RawFd, fd: RawFd, name: &str) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(name.as_bytes())];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)?;
    Ok(())
}

/// Sends `payload` over the unix socket `sock` with `fds` attached (SCM_RIGHTS; none if
/// empty). Returns the bytes sent.
pub fn send_with_fds(sock: RawFd, payload: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [io::IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsg: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock, &iov, cmsg, MsgFlags::empty(), None).map_err(io::Error::from)
}

/// Reads from the unix socket `sock` into `buf`, with the descriptors (at most 4) that came
/// attached (SCM_RIGHTS, close-on-exec). Returns the bytes read and the descriptors.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(got) = c {
            fds.extend(got.into_iter().map(own));
        }
    }
    Ok((msg.bytes, fds))
}

/// Receives one descriptor sent with SCM_RIGHTS on `sock`.
pub fn recv_fd(sock: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                return Ok(own(fd));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no descriptor received",
    ))
}

/// A terminal's window size as (rows, cols).
pub fn get_winsize(fd: RawFd) -> io::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize struct that lives across the call.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    check(ret as libc::c_long).map(|_| (ws.ws_row, ws.ws_col))
}

/// Gives the process a new session keyring named `name` (keyctl JOIN_SESSION_KEYRING).
pub fn join_session_keyring(name: &CStr) -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    check(ret).map(|_| ())
}

/// Restores the default disposition of every signal (Rust's runtime ignores SIGPIPE; the
/// container's program must not inherit that).
pub fn reset_signal_dispositions() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler; failures (invalid numbers) are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// The CLONE_NEW* type of a namespace file (ioctl NS_GET_NSTYPE); fails with ENOTTY for a
/// file that is not a namespace.
pub fn ns_type(fd: RawFd) -> io::Result<i32> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the type as the result.
    let ret = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    check(ret as libc::c_long).map(|t| t as i32)
}

// The new mount API (Linux 5.2; mount_setattr 5.12).
pub const OPEN_TREE_CLONE: u32 = 1;
pub const AT_RECURSIVE: u32 = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// open_tree(2) of `dirfd` itself (AT_EMPTY_PATH), or of `path` below it: with
/// OPEN_TREE_CLONE, a detached copy of the mount (AT_RECURSIVE: of the whole subtree).
pub fn open_tree(dirfd: RawFd, path: &CStr, flags: u32) -> io::Result<OwnedFd> {
    let mut flags = flags | libc::O_CLOEXEC as u32;
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as u32;
    }
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    // SAFETY: a new descriptor owned by nobody else.
    check(ret).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// move_mount(2) of the (detached) mount `from` onto the directory `to`, both descriptors.
pub fn move_mount(from: RawFd, to: RawFd) -> io::Result<()> {
    let empty = c"";
    // SAFETY: empty NUL-terminated strings with AT_EMPTY_PATH semantics; integer fds.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from,
            empty.as_ptr(),
            to,
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(ret).map(|_| ())
}

/// struct mount_attr of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on the mount `fd` refers to: sets the MOUNT_ATTR_* bits in `set`.
pub fn mount_setattr(fd: RawFd, set: u64) -> io::Result<()> {
    setattr(fd, set, 0, 0, 0)
}

const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Binds the directory `src` onto the directory `target` as an idmapped mount: owners on
/// disk are seen through the user namespace `userns` (an owner k on disk shows as the host
/// ID that container ID k maps to), so that root of that user namespace owns what host root
/// owns. The filesystem must support idmapped mounts (ext4, xfs, btrfs, tmpfs...).
pub fn bind_idmapped(
    src: &std::path::Path,
    target: &std::path::Path,
    userns: RawFd,
) -> io::Result<()> {
    let tree = idmapped_tree(src, userns, false, false)?;
    let to = std::fs::File::open(target)?;
    move_mount(tree.as_raw_fd(), to.as_raw_fd())
}

/// A detached copy of the mount at `src` (with the mounts below it: `rbind`), idmapped
/// through the user namespace `userns` (the mounts below too: `recursive`), for
/// move_mount(2) to put in place.
pub fn idmapped_tree(
    src: &std::path::Path,
    userns: RawFd,
    rbind: bool,
    recursive: bool,
) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(src.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let clone = OPEN_TREE_CLONE | if rbind { AT_RECURSIVE } else { 0 };
    let tree = open_tree(libc::AT_FDCWD, &c, clone)?;
    // The copy joins the source's peer group when that is shared (a plain bind made in the
    // container's rslave tree would not): a slave, so that nothing mounted under it in the
    // container propagates back to the host. A propagation option of the mount still applies
    // after the move.
    setattr_propagation(tree.as_raw_fd(), libc::MS_SLAVE, AT_RECURSIVE)?;
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    setattr(tree.as_raw_fd(), MOUNT_ATTR_IDMAP, 0, flags, userns as u64)?;
    Ok(tree)
}

/// mount_setattr(2) with AT_RECURSIVE: sets `set` and clears `clr` on the mount `fd` refers
/// to and every mount below it.
pub fn mount_setattr_recursive(fd: RawFd, set: u64, clr: u64) -> io::Result<()> {
    setattr(fd, set, clr, AT_RECURSIVE, 0)
}

/// Whether the kernel has mount_setattr(2) (Linux 5.12): a call on an invalid descriptor
/// fails with EBADF rather than ENOSYS.
pub fn mount_setattr_supported() -> bool {
    setattr(-1, 0, 0, 0, 0).err().and_then(|e| e.raw_os_error()) != Some(libc::ENOSYS)
}

fn setattr(fd: RawFd, set: u64, clr: u64, flags: u32, userns_fd: u64) -> io::Result<()> {
    setattr_full(
        fd,
        MountAttr {
            attr_set: set,
            attr_clr: clr,
            propagation: 0,
            userns_fd,
        },
        flags,
    )
}

/// mount_setattr(2) setting only the propagation type (MS_SLAVE, MS_PRIVATE...).
fn setattr_propagation(fd: RawFd, propagation: u64, flags: u32) -> io::Result<()> {
    setattr_full(
        fd,
        MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation,
            userns_fd: 0,
        },
        flags,
    )
}

fn setattr_full(fd: RawFd, attr: MountAttr, flags: u32) -> io::Result<()> {
    let empty = c"";
    // SAFETY: `attr` outlives the call and its size is passed; empty path with
    // AT_EMPTY_PATH.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as u32 | flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret).map(|_| ())
}

/// execveat(2) of the file `fd` refers to (AT_EMPTY_PATH). Returns only on failure.
pub fn execveat_fd(fd: RawFd, argv: &[std::ffi::CString], envp: &[std::ffi::CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    let empty = c"";
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to NUL-terminated strings
    // that live (in `argv`, `envp`) until the call returns, which it does only on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            a.as_ptr(),
            e.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// Returns the free memory at the top of the heap and in free chunks to the kernel
/// (glibc's malloc_trim): for long-lived callers after a burst of allocation.
pub fn malloc_trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Fixes the size from which glibc's malloc serves an allocation with a mapping of its own
/// (M_MMAP_THRESHOLD; glibc otherwise raises it to the size of each such block freed): a
/// long-lived caller's large buffers then go back to the kernel as they are freed, and a
/// new one (calloc, `vec![0; n]`) is untouched memory that reads fill page by page, where a
/// block reused from the heap is zeroed, all of it resident at once.
pub fn malloc_mmap_threshold(bytes: usize) {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt sets one of the allocator's parameters; no pointer is passed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes);
    }
}

/// Sets the network interface `name` up (SIOCSIFFLAGS IFF_UP) in the calling thread's network
/// namespace: a new namespace's loopback starts down.
pub fn set_link_up(name: &str) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed, which outlives the calls;
    // the name is NUL-terminated (shorter than IFNAMSIZ, the rest zeroed).
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A path field of /proc/*/mountinfo as it is: the kernel escapes space, tab, newline and
/// backslash as `\ooo` (octal).
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(n) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Every rename on the machine bumps the kernel's rename sequence, which a ".." step under
    /// RESOLVE_IN_ROOT checks; a thread renaming without pause makes openat2 answer EAGAIN
    /// often. The wrapper must ride that out.
    #[test]
    fn openat2_survives_concurrent_renames() {
        let dir = std::env::temp_dir().join(format!("rsrun-openat2-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/f"), b"x").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let renamer = {
            let (stop, dir) = (stop.clone(), dir.clone());
            std::thread::spawn(move || {
                std::fs::write(dir.join("r1"), b"").unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(dir.join("r1"), dir.join("r2")).unwrap();
                    std::fs::rename(dir.join("r2"), dir.join("r1")).unwrap();
                }
            })
        };
        let root = std::fs::File::open(&dir).unwrap();
        let path = CString::new("a/b/../b/../../a/b/../f").unwrap();
        let mut failures = Vec::new();
        for _ in 0..20_000 {
            if let Err(e) = openat2(root.as_raw_fd(), &path, libc::O_RDONLY, 0, RESOLVE_IN_ROOT) {
                failures.push(e.to_string());
            }
        }
        stop.store(true, Ordering::Relaxed);
        renamer.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            failures.is_empty(),
            "{} of 20000 failed: {:?}",
            failures.len(),
            failures.first()
        );
    }
}
