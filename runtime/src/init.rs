//! The container's init process, from clone to execve: joins namespaces, builds the rootfs,
//! runs the in-container hooks, waits for `start`, drops privileges and execs the user
//! program. Runs in a forked copy of the (single-threaded) runtime.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::Spec;

use crate::error::{Context, Error, Result};
use crate::sync::{self, Msg};
use crate::{hooks, rootfs, seccomp, security, sys};

/// How the init learns that it may exec.
pub enum StartVia {
    /// `create`: a listening socket in the state dir; `start` connects to it.
    Socket(OwnedFd),
    /// `run`: the parent sends `Msg::Start` on the sync socket.
    Sync,
}

pub struct InitArgs<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub sync: OwnedFd,
    pub start: StartVia,
    /// Connected --console-socket, when process.terminal is set.
    pub console: Option<UnixStream>,
    /// Descriptors 3..3+preserve_fds are passed to the container.
    pub preserve_fds: u32,
    pub no_pivot: bool,
    /// Namespaces to join, in order (user first).
    pub join: Vec<(CloneFlags, OwnedFd)>,
    /// Namespaces to create after joining (cgroup, and those not made by clone).
    pub unshare: CloneFlags,
    /// `unshare` holds a new PID namespace (inside a joined user namespace, which must own
    /// it): only children enter it, so the init forks once more and the child goes on.
    pub fork_into_pid_ns: bool,
    pub in_userns: bool,
    pub new_netns: bool,
    pub new_cgroupns: bool,
    pub setgroups_allowed: bool,
    pub cgroup_paths: &'a [PathBuf],
    /// The v1 cgroups to move ourselves into first (see `cgroups::SelfJoin`).
    pub self_join: Option<&'a crate::cgroups::SelfJoin>,
    /// Idmapped bind mounts made before the clone, by mount index.
    pub idmapped: &'a crate::idmap::Prepared,
    /// Extra environment (LISTEN_FDS passthrough).
    pub extra_env: Vec<String>,
    /// Give the container its own session keyring (runc's default).
    pub new_keyring: bool,
    /// Stay dumpable until `Go`: an unprivileged parent writes our uid/gid maps (directly
    /// or through newuidmap/newgidmap), which needs /proc/PID to be owned by its user.
    pub dumpable_until_go: bool,
}

/// Runs the init; never returns. Failures are reported to whoever waits on the channel.
pub fn run(a: InitArgs) -> ! {
    let sync_fd = a.sync.as_raw_fd();
    let mut conn: Option<UnixStream> = None;
    let res = setup_and_exec(&a, &mut conn);
    // Only reached on failure (exec does not return).
    let msg = match res {
        Err(e) => e.to_string(),
        Ok(never) => match never {},
    };
    match conn {
        Some(mut c) => {
            let _ = c.write_all(msg.as_bytes());
        }
        None => {
            let _ = sync::send(sys::borrow(sync_fd), &Msg::Error(msg));
        }
    }
    sys::exit_now(127)
}

pub(crate) enum Never {}

/// Forks the process that goes on as the init, PID 1 of the PID namespace just unshared.
/// This process (the intermediate) tells the runtime the child's host PID and exits; the
/// child waits until it has (the runtime reads that message first), learns its host PID
/// through a pipe and returns it.
fn fork_into_pid_ns(sync: &OwnedFd) -> Result<i32> {
    let (r, w) = nix::unistd::pipe().ctx("pipe to the init")?;
    let child = sys::clone_fork(0).ctx("fork the init into its PID namespace")?;
    if child != 0 {
        drop(r);
        let told = sync::send(sync, &Msg::Init(child))
            .and_then(|_| nix::unistd::write(&w, &child.to_le_bytes()).ctx("write to the init"));
        sys::exit_now(if told.is_ok() { 0 } else { 1 });
    }
    drop(w);
    let mut b = [0u8; 4];
    match nix::unistd::read(&r, &mut b) {
        Ok(4) => Ok(i32::from_le_bytes(b)),
        _ => Err(Error::Init(
            "the intermediate process exited before naming the init".into(),
        )),
    }
}

fn wait_for(sync: &OwnedFd, want: &Msg) -> Result<Msg> {
    match sync::recv(sync)? {
        Some(Msg::Go(p)) if matches!(want, Msg::Go(_)) => Ok(Msg::Go(p)),
        Some(m) if &m == want => Ok(m),
        Some(Msg::Error(e)) => Err(Error::Init(e)),
        Some(m) => Err(Error::Init(format!("unexpected {m:?} from the runtime"))),
        None => Err(Error::Init("the runtime went away".into())),
    }
}

fn setup_and_exec(a: &InitArgs, conn: &mut Option<UnixStream>) -> Result<Never> {
    if let Some(j) = a.self_join {
        j.join_v1()?;
    }
    // CVE-2019-5736: until exec, this process is the runtime binary inside the container.
    // Non-dumpable, its /proc/PID/exe cannot be opened by container processes (ptrace
    // access checks need CAP_SYS_PTRACE in the host user namespace).
    // (Rootless: after `Go`. Until then nothing runs in the new namespaces but this
    // process, and whoever could trace it has the parent's uid anyway.)
    if !a.dumpable_until_go {
        nix::sys::prctl::set_dumpable(false).ctx("prctl(PR_SET_DUMPABLE)")?;
    }
    // Our own binary, to refuse exec'ing it as the container's program.
    let self_id = crate::seal::runtime_identity()?;
    let mut host_pid = match wait_for(&a.sync, &Msg::Go(0))? {
        Msg::Go(p) => p,
        _ => unreachable_msg()?,
    };
    if a.dumpable_until_go {
        nix::sys::prctl::set_dumpable(false).ctx("prctl(PR_SET_DUMPABLE)")?;
    }
    for (flag, fd) in &a.join {
        nix::sched::setns(fd, *flag).with_ctx(|| format!("join {} namespace", ns_name(*flag)))?;
    }
    if a.in_userns {
        // Become root of the user namespace: our host uid is not mapped in it, and files
        // we create must be owned by a mapped id.
        let root_g = nix::unistd::Gid::from_raw(0);
        let root_u = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_g, root_g, root_g).ctx("setresgid 0 in the user namespace")?;
        nix::unistd::setresuid(root_u, root_u, root_u).ctx("setresuid 0 in the user namespace")?;
    }
    // An unprivileged parent that mapped only its own gid had to deny setgroups.
    let setgroups_allowed = a.setgroups_allowed
        && !(a.in_userns
            && std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny"));
    // In our cgroups from `Joined` on: a cgroup namespace is rooted where we are when it
    // is made, and what we fork or run from here is the container's to account.
    let mut joined = false;
    let join = |joined: &mut bool| -> Result<()> {
        if !*joined {
            wait_for(&a.sync, &Msg::Joined)?;
            *joined = true;
        }
        Ok(())
    };
    if a.unshare.contains(CloneFlags::CLONE_NEWCGROUP) || a.fork_into_pid_ns {
        join(&mut joined)?;
    }
    if !a.unshare.is_empty() {
        nix::sched::unshare(a.unshare).with_ctx(|| format!("unshare {:?}", a.unshare))?;
    }
    if a.fork_into_pid_ns {
        host_pid = fork_into_pid_ns(&a.sync)?;
    }
    let spec = a.spec;
    if a.new_keyring {
        let name = sys::cstr(&format!("_ses.{}", a.id));
        match sys::join_session_keyring(&name) {
            Ok(()) => {}
            // No keyrings in this kernel, or not allowed here: runc carries on too.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES)
                ) => {}
            Err(e) => return Err(Error::os("join a new session keyring", e)),
        }
    }
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).with_ctx(|| format!("sethostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        sys::setdomainname(d.as_bytes()).with_ctx(|| format!("setdomainname {d:?}"))?;
    }
    let process = spec.process().as_ref();
    if let Some(p) = process {
        security::set_oom_score_adj(p)?;
    }

    let setup = rootfs::Setup {
        spec,
        bundle: a.bundle,
        rootfs: a.rootfs,
        in_userns: a.in_userns,
        new_cgroupns: a.new_cgroupns,
        new_netns: a.new_netns,
        cgroup_paths: a.cgroup_paths,
        idmapped: a.idmapped,
    };
    let root = rootfs::prepare(&setup)?;
    let devnull = rootfs::open_devnull()?;
    join(&mut joined)?;

    let hooks = spec.hooks().as_ref();
    let state = |status: &str| {
        let mut v = serde_json::json!({
            "ociVersion": spec.version(),
            "id": a.id,
            "status": status,
            "pid": host_pid,
            "bundle": a.bundle,
        });
        if let Some(an) = spec.annotations().as_ref().filter(|m| !m.is_empty()) {
            v["annotations"] = serde_json::to_value(an).unwrap_or_default();
        }
        v
    };
    if hooks.is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    }) {
        sync::send(&a.sync, &Msg::Hooks)?;
        wait_for(&a.sync, &Msg::HooksDone)?;
    }
    // createContainer hooks run in the container's namespaces with the rootfs as their
    // working directory (as runc: hooks such as ldconfig helpers use relative paths).
    if hooks.is_some_and(|h| h.create_container().as_ref().is_some_and(|v| !v.is_empty())) {
        nix::unistd::fchdir(&root).with_ctx(|| format!("chdir {}", a.rootfs.display()))?;
    }
    hooks::run_all(
        "createContainer",
        hooks.and_then(|h| h.create_container().as_ref()),
        &state("creating"),
    )?;

    // The seccomp filter is compiled now, and the SCMP_ACT_NOTIFY agent's socket (a host
    // path) connected while the host's filesystem is still reachable; loaded at the end.
    // The agent gets the state as of the exec: created, with the start already requested.
    let sec = seccomp::prepare(spec, state("created"))?;

    rootfs::finish_paths(spec, root.as_raw_fd(), &devnull)?;
    drop(devnull);
    rootfs::enter(&root, a.rootfs, a.no_pivot)?;
    drop(root);
    // A working directory the image lacks is made (0755, as root, before the root may turn
    // read-only), as runc does: Kubernetes' workingDir need not exist in the image. Resolved
    // in the new root, so that `..`, symlinks and /proc/self/fd/N (a descriptor of the host
    // still open here: CVE-2024-21626) cannot leave it.
    if let Some(p) = process {
        let cwd = p.cwd();
        if cwd != std::path::Path::new("/") {
            let top = nix::fcntl::open(
                "/",
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ctx("open / for process.cwd")?;
            rootfs::mkdir_all_in_root(top.as_raw_fd(), cwd, rootfs::Kind::Dir).map_err(
                |e| match e {
                    Error::Os { context, err } => Error::Os {
                        context: format!("process.cwd {}: create: {context}", cwd.display()),
                        err,
                    },
                    e => e,
                },
            )?;
        }
    }
    rootfs::finish_root(spec, a.in_userns)?;

    // A config without `process` may be created; `start` then fails (runtime spec).
    let mut prepared = None;
    if let Some(process) = process {
        if process.terminal().unwrap_or(false) {
            setup_console(a, process)?;
        }
        let mut env = build_env(process.env().as_deref().unwrap_or(&[]), &a.extra_env);
        ensure_home(&mut env, process.user().uid());
        let args = process.args().as_deref().unwrap_or(&[]);
        let exe = find_executable(&args[0], &env, process.cwd())?;
        refuse_runtime_binary(&exe, self_id)?;
        check_apparmor(process)?;
        prepared = Some((process, env, args, exe));
    }

    // Nothing of the host may stay open: only stdio, the preserved descriptors and our
    // own channels (close-on-exec) survive.
    let keep_from = 3 + a.preserve_fds as RawFd;
    let mut keep = vec![a.sync.as_raw_fd()];
    if let StartVia::Socket(l) = &a.start {
        keep.push(l.as_raw_fd());
    }
    keep.extend(sec.as_ref().and_then(|s| s.listener_fd()));
    keep.extend(crate::log::file_fd());
    sys::close_from_except(keep_from, &keep).ctx("close inherited descriptors")?;

    sync::send(&a.sync, &Msg::Ready)?;
    match &a.start {
        StartVia::Sync => {
            wait_for(&a.sync, &Msg::Start)?;
        }
        StartVia::Socket(l) => {
            // Not before the parent has saved the state: if it dies first, nobody could
            // ever find or start us (EOF here ends the init).
            wait_for(&a.sync, &Msg::Committed)?;
            let fd = loop {
                match nix::sys::socket::accept4(l, nix::sys::socket::SockFlag::SOCK_CLOEXEC) {
                    Ok(fd) => break fd,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(Error::os("wait for start (accept)", e)),
                }
            };
            let mut c = UnixStream::from(fd);
            let mut b = [0u8; 1];
            c.read_exact(&mut b).ctx("read start request")?;
            *conn = Some(c);
        }
    }
    let Some((process, env, args, exe)) = prepared else {
        return Err(Error::Config(
            "process is required to start a container".into(),
        ));
    };
    hooks::run_all(
        "startContainer",
        hooks.and_then(|h| h.start_container().as_ref()),
        &state("created"),
    )?;

    let personality = spec.linux().as_ref().and_then(|l| l.personality().as_ref());
    finish_and_exec(Final {
        process,
        personality,
        seccomp: sec,
        exe: &exe,
        args,
        env: &env,
        self_id,
        setgroups_allowed,
        exec_marker: conn.as_ref().map(|c| c.as_raw_fd()),
    })
}

/// What the last stage before execve needs (shared by the container's init and `exec`).
pub(crate) struct Final<'a> {
    pub process: &'a oci_spec::runtime::Process,
    pub personality: Option<&'a oci_spec::runtime::LinuxPersonality>,
    pub seccomp: Option<seccomp::Prepared>,
    /// The resolved executable (checked against the runtime binary again here).
    pub exe: &'a str,
    pub args: &'a [String],
    pub env: &'a [String],
    /// Device and inode of the runtime binary.
    pub self_id: (u64, u64),
    pub setgroups_allowed: bool,
    /// Where to write one 0 byte just before execve (the `start` connection), so that the
    /// waiter can tell "about to exec" (marker, then EOF) from "died before" (no marker).
    pub exec_marker: Option<RawFd>,
}

/// The last steps, in this order: rlimits, scheduler, I/O priority, personality, seccomp
/// (early or late, see below), bounding set, user, capabilities, cwd, umask, no_new_privs,
/// AppArmor, signal state, the runtime-binary check, execve. Returns only on failure.
pub(crate) fn finish_and_exec(f: Final) -> Result<Never> {
    let process = f.process;
    let mut sec = f.seccomp;
    // Privileges, last: rlimits and caps need the privileges we are about to drop.
    security::set_rlimits(process)?;
    if let Some(s) = process.scheduler() {
        security::set_scheduler(s)?;
    }
    if let Some(p) = process.io_priority() {
        security::set_io_priority(p)?;
    }
    if let Some(pers) = f.personality {
        let dom = match pers.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0x0000,
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
        };
        sys::personality(dom).ctx("personality")?;
    }
    // No capabilities section means no capabilities at all, bounding set included (as
    // runc): a uid-0 process would otherwise regain the full bounding set at exec.
    let caps = Some(match process.capabilities() {
        Some(c) => security::cap_sets(c)?,
        None => security::no_caps(),
    });
    // When to load the seccomp filter. Loading one needs no_new_privs or CAP_SYS_ADMIN,
    // and every syscall the init makes after loading must pass the filter. As runc and
    // crun do: with no_new_privs, or when the process keeps CAP_SYS_ADMIN, the filter is
    // loaded at the very end, just before execve, so that it only has to allow execve
    // (and sendmsg for a NOTIFY listener). Otherwise it must be loaded here, while the init
    // still has CAP_SYS_ADMIN, and the profile has to allow what the init does after this
    // point: prctl, capget/capset, setgroups, setresgid/setresuid, chdir, getcwd, umask,
    // rt_sigprocmask, statx/newfstatat, openat, read, close, write, execve. Every
    // RuntimeDefault-style profile (containerd's, CRI-O's, seccomp::runtime_default_profile)
    // allows them; a profile that denies one fails the start with that step's error.
    // The working directory, entered while still root (retried as the user below when root
    // may not enter it), and checked before any filter can deny getcwd.
    let cwd = process.cwd();
    let cwd_early = nix::unistd::chdir(cwd.as_path());
    if cwd_early.is_ok() {
        check_cwd(cwd)?;
    }
    let keeps_sys_admin = caps
        .as_ref()
        .is_some_and(|c| c.has_effective(caps::Capability::CAP_SYS_ADMIN));
    if !process.no_new_privileges().unwrap_or(false) && !keeps_sys_admin {
        if let Some(s) = sec.take() {
            s.load()?;
        }
    }
    if let Some(c) = &caps {
        security::drop_bounding(c)?;
    }
    security::set_user(process, f.setgroups_allowed)?;
    if let Some(c) = &caps {
        security::apply_caps(c)?;
    }
    if cwd_early.is_err() {
        nix::unistd::chdir(cwd.as_path()).with_ctx(|| format!("process.cwd {}", cwd.display()))?;
        check_cwd(cwd)?;
    }
    sys::umask(process.user().umask().unwrap_or(0o022));
    if process.no_new_privileges().unwrap_or(false) {
        security::set_no_new_privs()?;
    }
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        // Applied at exec, like runc: the profile confines the user program. Written through
        // the container's procfs checked as the sysctls are (CVE-2025-52881: a symlink or a
        // mount on the way would take the write, and the process would run unconfined).
        write_apparmor_exec(&format!("exec {profile}"))
            .with_ctx(|| format!("process.apparmorProfile {profile:?}"))?;
    }
    // Default signal dispositions and an empty mask for the user program.
    sys::reset_signal_dispositions();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .ctx("reset signal mask")?;

    // Checked again at the last moment: the file may have changed since create.
    refuse_runtime_binary(f.exe, f.self_id)?;
    let cargs: Vec<CString> = f.args.iter().map(|s| sys::cstr(s)).collect();
    let cenv: Vec<CString> = f.env.iter().map(|s| sys::cstr(s)).collect();
    let cexe = sys::cstr(f.exe);
    if let Some(fd) = f.exec_marker {
        nix::unistd::write(sys::borrow(fd), &[0u8]).ctx("tell start the exec is next")?;
    }
    if let Some(s) = sec.take() {
        s.load()?;
    }
    let e = nix::unistd::execve(&cexe, &cargs, &cenv).unwrap_err();
    Err(Error::os(format!("exec {}", f.exe), e))
}

/// CVE-2024-21626: the working directory must resolve inside the container's root (a
/// directory reached through a leaked host descriptor reads as "(unreachable)/...").
pub(crate) fn check_cwd(cwd: &Path) -> Result<()> {
    let real = nix::unistd::getcwd()
        .with_ctx(|| format!("process.cwd {} is not reachable", cwd.display()))?;
    if !real.is_absolute() {
        return Err(Error::Invalid(format!(
            "process.cwd {} resolves outside the container",
            cwd.display()
        )));
    }
    Ok(())
}

/// A process.apparmorProfile on a host without AppArmor is an error, not silently ignored.
pub(crate) fn check_apparmor(process: &oci_spec::runtime::Process) -> Result<()> {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        if !apparmor_enabled() {
            return Err(Error::Unsupported(format!(
                "process.apparmorProfile {profile:?}: AppArmor is not enabled on this host"
            )));
        }
    }
    Ok(())
}

/// Writes `attr` to this process's AppArmor exec attribute (the newer per-LSM file first).
fn write_apparmor_exec(attr: &str) -> std::io::Result<()> {
    let root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // By the process's number in the procfs' PID namespace, its own (/proc/self is a
    // symlink, which the checked open refuses).
    let pid = nix::unistd::getpid();
    let fd = crate::rootfs::open_proc_file(
        root.as_raw_fd(),
        &format!("{pid}/attr/apparmor/exec"),
        libc::O_WRONLY | libc::O_CLOEXEC,
    )
    .or_else(|_| {
        crate::rootfs::open_proc_file(
            root.as_raw_fd(),
            &format!("{pid}/attr/exec"),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    })?;
    nix::unistd::write(&fd, attr.as_bytes())?;
    Ok(())
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

fn unreachable_msg() -> Result<i32> {
    Err(Error::Init("unexpected message".into()))
}

pub(crate) fn ns_name(f: CloneFlags) -> &'static str {
    match f {
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWNS => "mount",
        CloneFlags::CLONE_NEWNET => "network",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        _ => "time",
    }
}

/// Sets HOME, when the config does not, from the container's /etc/passwd for `uid` (else
/// "/"), as runc does. Call after pivot_root. Only a regular file of at most 4 MiB is read:
/// a FIFO there would block create for good (its parent waits for this process), a link to
/// /dev/zero would never end; either gives "/" (said in the log), as an unreadable one does.
pub(crate) fn ensure_home(env: &mut Vec<String>, uid: u32) {
    if env.iter().any(|e| e.starts_with("HOME=")) {
        return;
    }
    let passwd = std::fs::File::open("/")
        .and_then(|root| sys::read_regular_in_root(root.as_raw_fd(), "etc/passwd", 4 << 20));
    let passwd = match passwd {
        Ok(p) => p,
        Err(e) => {
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            ) {
                crate::log::warn(&format!("HOME for uid {uid}: {e}: \"/\""));
            }
            None
        }
    };
    let home = passwd
        .and_then(|p| {
            String::from_utf8_lossy(&p).lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 5 && f[2].parse() == Ok(uid) && !f[5].is_empty())
                    .then(|| f[5].to_string())
            })
        })
        .unwrap_or_else(|| "/".to_string());
    env.push(format!("HOME={home}"));
}

pub(crate) fn build_env(env: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = env.to_vec();
    for e in extra {
        let key = e.split('=').next().unwrap_or("");
        out.retain(|x| x.split('=').next() != Some(key));
        out.push(e.clone());
    }
    out
}

/// CVE-2019-5736: a container whose program is (or is a script interpreted by) the
/// runtime's own binary, e.g. `#!/proc/self/exe`, would run the host's rsrun binary as a
/// container process, and could then reopen it for writing through /proc/PID/exe after it
/// exits. The exec follows the interpreter chain the way the kernel does and refuses any
/// link of it that is our binary.
pub(crate) fn refuse_runtime_binary(exe: &str, self_id: (u64, u64)) -> Result<()> {
    let mut path = exe.to_string();
    for _ in 0..6 {
        let meta = std::fs::metadata(&path).with_ctx(|| format!("exec {path:?}"))?;
        if (meta.dev(), meta.ino()) == self_id {
            return Err(Error::Invalid(format!(
                "exec {exe:?}: refusing to run the runtime binary inside the container (via {path:?}; CVE-2019-5736)"
            )));
        }
        // Only a regular file can be a script: a FIFO named as an interpreter would block
        // this open for good (and the exec's caller with it); execve refuses it anyway.
        if !meta.is_file() {
            return Ok(());
        }
        let mut head = [0u8; 256];
        let n = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&path)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        if n < 2 || &head[..2] != b"#!" {
            return Ok(());
        }
        let line = head[2..n].split(|b| *b == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        match line.split_whitespace().next() {
            Some(interp) => path = interp.to_string(),
            None => return Ok(()),
        }
    }
    Ok(())
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Finds args[0] as execve will: a path with `/` as is, else the first executable regular
/// file in the container's PATH.
/// Relative names (`./server`, and relative or empty PATH entries) resolve against the
/// process's working directory `cwd`, where the program will run, as execve would there.
pub fn find_executable(arg0: &str, env: &[String], cwd: &Path) -> Result<String> {
    let is_exec = |p: &Path| -> bool {
        std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
            && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if arg0.contains('/') {
        let full = cwd.join(arg0);
        let p = full.as_path();
        return match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Err(Error::Invalid(format!("exec {arg0:?}: is a directory"))),
            Ok(_) if is_exec(p) => Ok(p.to_string_lossy().into_owned()),
            Ok(_) => Err(Error::Invalid(format!("exec {arg0:?}: permission denied"))),
            Err(e) => Err(Error::os(format!("exec {arg0:?}"), e)),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let cand = cwd.join(dir).join(arg0);
        if is_exec(&cand) {
            return Ok(cand.to_string_lossy().into_owned());
        }
    }
    Err(Error::Invalid(format!(
        "exec {arg0:?}: executable file not found in $PATH"
    )))
}

/// Creates the container's terminal from its own devpts, sends the master to the console
/// socket and makes the slave the process's stdio and controlling terminal.
fn setup_console(a: &InitArgs, p: &oci_spec::runtime::Process) -> Result<()> {
    let sock = a.console.as_ref().ok_or_else(|| {
        Error::Invalid("process.terminal is set but no --console-socket was given".into())
    })?;
    attach_terminal(sock, p, true)
}

/// Opens a new terminal from the devpts of the current mount namespace (/dev/ptmx), sends
/// its master over `sock`, and makes the slave this process's stdio and controlling
/// terminal in a new session. With `dev_console`, /dev/console is bound to it too.
pub(crate) fn attach_terminal(
    sock: &UnixStream,
    p: &oci_spec::runtime::Process,
    dev_console: bool,
) -> Result<()> {
    let (master, slave_path) =
        sys::open_pty(c"/dev/ptmx").ctx("open /dev/ptmx in the container")?;
    // The slave through the master itself, not by its path: a path in the container's /dev
    // can lead elsewhere (CVE-2025-52565: the terminal "bound to /dev/console" was then a
    // file of the container's choosing, such as a /proc/sys file).
    let slave = sys::pty_peer(master.as_raw_fd())
        .with_ctx(|| format!("open the terminal's slave side {slave_path} (TIOCGPTPEER)"))?;
    if let Some(sz) = p.console_size() {
        sys::set_winsize(slave.as_raw_fd(), sz.height() as u16, sz.width() as u16)
            .ctx("set console size")?;
    }
    // /dev/console is the container's terminal too: the slave's own mount (open_tree of its
    // descriptor, no path) onto /dev/console itself (no symlink followed, never on procfs).
    if let Some(target) = if dev_console { console_target()? } else { None } {
        let tree = sys::open_tree(slave.as_raw_fd(), c"", sys::OPEN_TREE_CLONE)
            .ctx("clone the terminal's mount for /dev/console")?;
        sys::move_mount(tree.as_raw_fd(), target.as_raw_fd())
            .ctx("bind the terminal to /dev/console")?;
    }
    sys::send_fd(sock.as_raw_fd(), master.as_raw_fd(), &slave_path)
        .ctx("send the terminal to the console socket")?;
    drop(master);
    nix::unistd::setsid().ctx("setsid")?;
    sys::set_controlling_tty(slave.as_raw_fd()).ctx("set controlling terminal")?;
    nix::unistd::dup2_stdin(&slave).ctx("dup terminal to stdin")?;
    nix::unistd::dup2_stdout(&slave).ctx("dup terminal to stdout")?;
    nix::unistd::dup2_stderr(&slave).ctx("dup terminal to stderr")?;
    Ok(())
}

/// /dev/console of the container, made (an empty file) if missing: the file itself, reached
/// without a symlink and not on procfs or sysfs, a regular file or a character device. None
/// where it cannot be made (a read-only /dev): the terminal is then not bound there, as
/// before.
fn console_target() -> Result<Option<OwnedFd>> {
    let root = open_root()?;
    let Ok(made) = rootfs::mkdir_all_in_root(
        root.as_raw_fd(),
        Path::new("/dev/console"),
        rootfs::Kind::File,
    ) else {
        return Ok(None);
    };
    let fd = sys::openat2(
        root.as_raw_fd(),
        c"dev/console",
        libc::O_PATH,
        0,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_SYMLINKS,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => Error::Invalid(
            "/dev/console (or /dev) is a symlink in the container: refused as the terminal's \
             mount point"
                .into(),
        ),
        _ => Error::os("open /dev/console", e),
    })?;
    let (a, b) = (
        nix::sys::stat::fstat(&made).ctx("stat /dev/console")?,
        nix::sys::stat::fstat(&fd).ctx("stat /dev/console")?,
    );
    let kind = b.st_mode & libc::S_IFMT;
    let fs = nix::sys::statfs::fstatfs(&fd)
        .ctx("statfs /dev/console")?
        .filesystem_type();
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)
        || !(kind == libc::S_IFREG || kind == libc::S_IFCHR)
        || fs == nix::sys::statfs::PROC_SUPER_MAGIC
        || fs == nix::sys::statfs::SYSFS_MAGIC
    {
        return Err(Error::Invalid(
            "/dev/console in the container is not a file of its /dev: refused as the \
             terminal's mount point"
                .into(),
        ));
    }
    Ok(Some(fd))
}

fn open_root() -> Result<OwnedFd> {
    nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx("open /")
}
