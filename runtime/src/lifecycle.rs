//! The container lifecycle of the runtime spec: create, start, run, state, kill, delete,
//! list — the runtime side (the init side is in `init`).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::config::{self, ns_file, Bundle};
use crate::error::{Context, Error, Result};
use crate::init::{self, InitArgs, StartVia};
use crate::state::{self, ContainerDir, Saved, Status};
use crate::sync::{self, Msg};
use crate::{cgroups, hooks, sys};

/// The runtime: where state lives and how cgroup errors are treated.
pub struct Runtime {
    pub root: PathBuf,
    /// Rootless mode: cgroup errors are ignored when no limits were asked for.
    pub rootless: bool,
    /// The systemd cgroup driver: each container's cgroup is a transient scope unit
    /// (`cgroups::systemd`).
    pub systemd_cgroup: bool,
}

#[derive(Default)]
pub struct CreateOpts {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
}

/// A container just created by this process (its init is our child).
struct Created {
    pid: i32,
    sync: OwnedFd,
    dir: ContainerDir,
    saved: Saved,
    /// Our end of the internal console channel (foreground `run` with a terminal).
    console: Option<UnixStream>,
}

pub(crate) fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

const NEWTIME: CloneFlags = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);

pub(crate) fn open_ro(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_ctx(|| format!("open {}", path.display()))
}

/// Binds or connects a unix socket at a path that may be longer than sun_path allows, by
/// going through /proc/self/fd of its directory.
pub fn short_socket_path(path: &Path) -> Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dirfd = nix::fcntl::open(
        parent,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_ctx(|| format!("open {}", parent.display()))?;
    let name = path.file_name().unwrap_or_default();
    Ok((
        PathBuf::from(format!("/proc/self/fd/{}", dirfd.as_raw_fd())).join(name),
        Some(dirfd),
    ))
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>, rootless: bool) -> Self {
        Runtime {
            root: root.into(),
            rootless,
            systemd_cgroup: false,
        }
    }

    fn dir(&self, id: &str) -> Result<ContainerDir> {
        ContainerDir::new(&self.root, id)
    }

    /// `create`: sets the container up and leaves its init waiting for `start`.
    ///
    /// A container that joins a user namespace and has a PID namespace of its own gets its
    /// init from a second fork; this process then becomes a child subreaper
    /// (PR_SET_CHILD_SUBREAPER) so that the init is its child, and stays one: a long-lived
    /// caller reaps whatever orphans of its descendants reach it (a shim is one already).
    pub fn create(&self, o: &CreateOpts) -> Result<i32> {
        let c = self.create_inner(o, false, false)?;
        Ok(c.pid)
    }

    fn create_inner(&self, o: &CreateOpts, via_sync: bool, own_console: bool) -> Result<Created> {
        let dir = self.dir(&o.id)?;
        if dir.exists() {
            return Err(Error::Exists(o.id.clone()));
        }
        let bundle = config::load_bundle(&o.bundle)?;
        dir.create()?;
        let mut cleanup = Cleanup {
            dir: Some(&dir),
            cgroups: Vec::new(),
            owned: Vec::new(),
            claim: None,
            child: None,
            unit: None,
        };
        match self.spawn(o, &bundle, &dir, via_sync, own_console, &mut cleanup) {
            Ok(c) => {
                cleanup.disarm();
                Ok(c)
            }
            Err(e) => {
                cleanup.run();
                Err(e)
            }
        }
    }

    fn spawn(
        &self,
        o: &CreateOpts,
        bundle: &Bundle,
        dir: &ContainerDir,
        via_sync: bool,
        own_console: bool,
        cleanup: &mut Cleanup,
    ) -> Result<Created> {
        let spec = &bundle.spec;
        let linux = spec.linux().as_ref();
        let nss: Vec<_> = linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .collect();
        if !nss.iter().any(|n| n.typ() == LinuxNamespaceType::Mount) {
            return Err(Error::Config(
                "linux.namespaces must include a mount namespace".into(),
            ));
        }

        // Namespaces: new ones by clone flag (cgroup and time separately), existing ones by
        // path (pid in this process before clone; the rest in the init, user first).
        let mut clone_flags = CloneFlags::empty();
        let mut unshare = CloneFlags::empty();
        let mut join: Vec<(CloneFlags, OwnedFd)> = Vec::new();
        let mut join_pid: Option<OwnedFd> = None;
        let mut new_time = false;
        for ns in &nss {
            let f = ns_flag(ns.typ());
            match ns.path() {
                None if f == CloneFlags::CLONE_NEWCGROUP => unshare |= f,
                None if f == NEWTIME => new_time = true,
                None => clone_flags |= f,
                Some(p) if f == CloneFlags::CLONE_NEWPID => join_pid = Some(open_ro(p)?),
                Some(p) => join.push((f, open_ro(p)?)),
            }
        }
        join.sort_by_key(|(f, _)| match *f {
            CloneFlags::CLONE_NEWUSER => 0,
            CloneFlags::CLONE_NEWNS => 2,
            _ => 1,
        });
        let new_user = clone_flags.contains(CloneFlags::CLONE_NEWUSER);
        if new_user && !join.is_empty() {
            return Err(Error::Unsupported(
                "joining existing namespaces together with a new user namespace".into(),
            ));
        }
        let joined_user = join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUSER);
        // A new PID namespace inside a joined user namespace (a Kubernetes pod with
        // `hostUsers: false`, whose containers each have their own): the init makes it after
        // joining, so that the user namespace owns it (else the container's root could not
        // mount its /proc), and forks into it (runc's nsexec does the same).
        let fork_into_pid_ns = joined_user && clone_flags.contains(CloneFlags::CLONE_NEWPID);
        if joined_user {
            // Created after joining the user namespace, so that it owns them.
            unshare |= clone_flags;
            clone_flags = CloneFlags::empty();
        }
        if fork_into_pid_ns {
            // The init becomes a grandchild: this process reaps it once the intermediate
            // exits (`run` waits for it; a shim is a subreaper already).
            nix::sys::prctl::set_child_subreaper(true).ctx("PR_SET_CHILD_SUBREAPER")?;
        }

        // Cgroup. Rootless, as runc and crun: when the cgroup cannot be created (or
        // joined, below) and no limits were asked for, the container stays in the caller's
        // cgroup; limits that cannot be applied are an error. Device rules are not applied
        // (an unprivileged user cannot load them; devices are bind mounts there anyway).
        let hs = cgroups::hierarchies()?;
        let cgroups_path = linux.and_then(|l| l.cgroups_path().as_deref());
        // Rootless with the systemd driver (rootless Podman's default): its scope would be the
        // user manager's, which rsrun does not drive. With no limits asked for, the container
        // stays in the caller's cgroup, as when a rootless cgroupfs cgroup cannot be made.
        let rootless_systemd = self.systemd_cgroup && self.rootless;
        let scope = if self.systemd_cgroup && !self.rootless {
            Some(cgroups::systemd::Scope::parse(
                cgroups_path.map(|p| p.to_str().unwrap_or("")),
                &o.id,
            )?)
        } else {
            None
        };
        let cg_paths = match &scope {
            Some(s) => vec![s.dir(&hs)?],
            None if rootless_systemd => Vec::new(),
            None => cgroups::paths_for(cgroups_path, &o.id, &hs)?,
        };
        let mut resources = linux.and_then(|l| l.resources().clone());
        if self.rootless {
            if let Some(r) = resources.as_mut() {
                r.set_devices(None);
            }
        }
        let limits = has_limits(resources.as_ref());
        if rootless_systemd {
            if limits {
                return Err(Error::Config(
                    "--systemd-cgroup: resource limits of a rootless container need systemd's user manager, which rsrun does not drive; use the cgroupfs driver with a delegated cgroup".into(),
                ));
            }
            crate::log::warn(
                "--systemd-cgroup: rootless, no systemd user manager: the container stays in the caller's cgroup (no limits were asked for)",
            );
        }
        // Recorded before anything is made (and completed below as the init appears), so
        // that `delete --force` can undo a create killed at any point.
        let me = std::process::id() as i32;
        let mut intent = state::Intent {
            id: o.id.clone(),
            creator: (me, sys::process_start_time(me).unwrap_or(0)),
            cgroup_paths: cg_paths.clone(),
            // (systemd's scope: owned once systemd made it, below.)
            cgroup_owned: match &scope {
                Some(_) => Vec::new(),
                None => cg_paths.iter().filter(|p| !p.exists()).cloned().collect(),
            },
            claim: cg_paths.first().map(|p| state::claim_path(&self.root, p)),
            pid: 0,
            start_time: 0,
            // (Named once the unit exists and is this container's: below.)
            systemd_unit: None,
        };
        // (Checked before anything is made.)
        let unit_props = match &scope {
            Some(_) => cgroups::systemd::create_properties(resources.as_ref())?,
            None => Vec::new(),
        };
        dir.save_intent(&intent)?;
        // The cgroup must be this container's alone: not claimed by another container of
        // this root, and holding no process.
        let created = (|| {
            if let (Some(first), Some(claim)) = (cg_paths.first(), &intent.claim) {
                state::claim_cgroup(&self.root, claim, first, &o.id)?;
                cleanup.claim = Some(claim.clone());
            }
            // (Those create is about to make are empty by construction.)
            let existing: Vec<PathBuf> = cg_paths
                .iter()
                .filter(|p| !intent.cgroup_owned.contains(p))
                .cloned()
                .collect();
            cgroups::check_empty(&existing)?;
            match &scope {
                // systemd makes the scope's cgroup once the init exists (below); until then
                // create owns nothing there (a directory of that name is not its to remove).
                Some(_) => Ok(Vec::new()),
                None => cgroups::create(&cg_paths),
            }
        })();
        match created {
            // (systemd's scope is the container's only once systemd made it: below.)
            Ok(made) if scope.is_none() => {
                cleanup.cgroups = cg_paths.clone();
                cleanup.owned = made;
            }
            Ok(_) => {}
            Err(e) if self.rootless && !limits => {
                crate::log::debug(&format!("rootless: no cgroup of its own: {e}"));
            }
            Err(e) if self.rootless => return Err(rootless_limits_error(e)),
            Err(e) => return Err(e),
        }
        if scope.is_none() {
            cgroups::apply(&cleanup.cgroups, resources.as_ref(), self.rootless)?;
        }

        // Channels to the init.
        let (parent_sock, child_sock) = sync::pair()?;
        let start = if via_sync {
            StartVia::Sync
        } else {
            let (p, _dirfd) = short_socket_path(&dir.exec_socket())?;
            // Mode 0600 from its creation, whatever the caller's umask: whoever can connect
            // can start the container. (This process is single-threaded: the umask is ours.)
            let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
            let l = UnixListener::bind(&p);
            nix::sys::stat::umask(old);
            let l = l.with_ctx(|| format!("bind {}", dir.exec_socket().display()))?;
            StartVia::Socket(OwnedFd::from(l))
        };
        let terminal = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        let mut own_console_end = None;
        let console = match (&o.console_socket, terminal) {
            (Some(path), true) => {
                let (p, _dirfd) = short_socket_path(path)?;
                Some(
                    UnixStream::connect(&p)
                        .with_ctx(|| format!("connect to console socket {}", path.display()))?,
                )
            }
            (None, true) if own_console => {
                let (a, b) = UnixStream::pair().ctx("socketpair for the terminal")?;
                own_console_end = Some(a);
                Some(b)
            }
            (None, true) => {
                return Err(Error::Invalid(
                    "process.terminal is set: --console-socket is required".into(),
                ));
            }
            (Some(_), false) => {
                return Err(Error::Invalid(
                    "--console-socket given but process.terminal is not set".into(),
                ));
            }
            (None, false) => None,
        };

        // LISTEN_FDS passthrough (socket activation), as runc does: only when the
        // descriptors were passed to this very process (LISTEN_PID is ours).
        let mut preserve = o.preserve_fds;
        let mut extra_env = Vec::new();
        let for_us = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        if let Some(n) = std::env::var("LISTEN_FDS")
            .ok()
            .filter(|_| for_us)
            .and_then(|v| v.parse::<u32>().ok())
        {
            preserve = preserve.max(n);
            extra_env.push(format!("LISTEN_FDS={n}"));
            extra_env.push("LISTEN_PID=1".to_string());
        }

        // Idmapped mounts, made in our own namespaces (before the time and pid switches
        // below: the helper it clones must not land in the container's PID namespace).
        // (Dropped once the init has them: it moves each into place.)
        let idmapped = crate::idmap::prepare(spec, &bundle.path, self.rootless)?;

        // A new time namespace is entered by our next child: set its offsets now and come
        // back to ours afterwards. A joined pid namespace likewise.
        let restore_time = if new_time {
            let mine = open_ro(Path::new("/proc/self/ns/time"))?;
            nix::sched::unshare(NEWTIME).ctx("unshare time namespace")?;
            write_time_offsets(spec)?;
            Some(mine)
        } else {
            None
        };
        let restore_pid = match &join_pid {
            Some(fd) => {
                let mine = open_ro(Path::new("/proc/self/ns/pid"))?;
                nix::sched::setns(fd, CloneFlags::CLONE_NEWPID).ctx("join pid namespace")?;
                Some(mine)
            }
            None => None,
        };

        let setgroups_allowed = true;
        let unprivileged = !nix::unistd::geteuid().is_root();
        // The init joins its cgroups without the global migration lock (`SelfJoin`); the
        // systemd driver (systemd moves it) and rootless mode (whose cgroups may not be
        // writable) join the usual way below.
        let self_join = if scope.is_none() && !self.rootless && !cleanup.cgroups.is_empty() {
            Some(cgroups::SelfJoin::open(&cg_paths, &hs)?)
        } else {
            None
        };
        let flags = clone_flags.bits() as u64;
        // (What the init does not join itself is joined below.)
        let (mut pid, to_join) = match &self_join {
            Some(j) => j.fork(flags),
            None => sys::clone_fork(flags).map(|p| (p, cg_paths.clone())),
        }
        .ctx("clone the container init")?;
        if pid == 0 {
            drop(parent_sock);
            drop(own_console_end);
            init::run(InitArgs {
                id: &o.id,
                spec,
                bundle: &bundle.path,
                rootfs: &bundle.rootfs,
                sync: child_sock,
                start,
                console,
                preserve_fds: preserve,
                no_pivot: o.no_pivot,
                join,
                unshare,
                fork_into_pid_ns,
                in_userns: new_user || joined_user,
                new_netns: clone_flags.contains(CloneFlags::CLONE_NEWNET)
                    || unshare.contains(CloneFlags::CLONE_NEWNET),
                new_cgroupns: unshare.contains(CloneFlags::CLONE_NEWCGROUP),
                setgroups_allowed,
                cgroup_paths: &cg_paths,
                self_join: self_join.as_ref(),
                idmapped: &idmapped,
                extra_env,
                new_keyring: !o.no_new_keyring,
                dumpable_until_go: new_user && unprivileged,
            });
        }
        drop(idmapped);
        drop(self_join);
        cleanup.child = Some(pid);
        intent.pid = pid;
        intent.start_time = sys::process_start_time(pid).unwrap_or(0);
        // (From here on the cgroups in the record are checked, claimed and in use.)
        intent.cgroup_paths = cleanup.cgroups.clone();
        intent.cgroup_owned = cleanup.owned.clone();
        dir.save_intent(&intent)?;
        drop(child_sock);
        drop(console);
        drop(start);
        if let Some(fd) = restore_time {
            nix::sched::setns(fd, NEWTIME).ctx("return to our time namespace")?;
        }
        if let Some(fd) = restore_pid {
            nix::sched::setns(fd, CloneFlags::CLONE_NEWPID).ctx("return to our pid namespace")?;
        }

        if new_user {
            write_id_maps(pid, spec)?;
        }
        // The init sets up its namespaces and rootfs while we put it in its cgroups (where
        // it did not join them itself: a migration by cgroup.procs waits for an RCU grace
        // period, see `SelfJoin`). It waits for `Joined` before anything that depends on
        // its cgroup (a cgroup namespace, a fork, hooks, the user's program).
        send_or_init_error(&parent_sock, &Msg::Go(pid))?;
        if let Some(s) = &scope {
            // The scope is made with the init in it; what systemd does not manage goes to
            // its files.
            // (A unit of that name that exists already is refused, and not ours to stop.)
            cgroups::systemd::start_scope(s, pid, unit_props)?;
            cleanup.unit = Some(s.unit.clone());
            cleanup.cgroups = cg_paths.clone();
            cleanup.owned = cg_paths.clone();
            intent.systemd_unit = Some(s.unit.clone());
            intent.cgroup_paths = cleanup.cgroups.clone();
            intent.cgroup_owned = cleanup.owned.clone();
            dir.save_intent(&intent)?;
            cgroups::apply(&cleanup.cgroups, resources.as_ref(), self.rootless)?;
        } else if !cleanup.cgroups.is_empty() {
            match cgroups::add_pid(&to_join, pid) {
                Ok(()) => {}
                Err(e) if self.rootless && !limits => {
                    crate::log::debug(&format!("rootless: cannot join the cgroup: {e}"));
                    let _ = cgroups::remove(&cleanup.owned);
                    cleanup.cgroups.clear();
                    cleanup.owned.clear();
                }
                Err(e) if self.rootless => return Err(rootless_limits_error(e)),
                Err(e) => return Err(e),
            }
        }
        send_or_init_error(&parent_sock, &Msg::Joined)?;

        if fork_into_pid_ns {
            // The intermediate names the init (its child, PID 1 of the new PID namespace)
            // and exits: the init is the container's process from here on.
            let init = match sync::recv(&parent_sock)? {
                Some(Msg::Init(p)) => p,
                Some(Msg::Error(e)) => return Err(Error::Init(e)),
                Some(m) => return Err(Error::Init(format!("unexpected {m:?} from init"))),
                None => {
                    return Err(Error::Init(format!(
                        "init exited during setup ({})",
                        reap_status(pid)
                    )))
                }
            };
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            pid = init;
            cleanup.child = Some(pid);
            intent.pid = pid;
            intent.start_time = sys::process_start_time(pid).unwrap_or(0);
            dir.save_intent(&intent)?;
        }
        let annotations = spec.annotations().clone().unwrap_or_default();
        let mut saved = Saved {
            oci_version: spec.version().clone(),
            id: o.id.clone(),
            pid,
            start_time: 0,
            bundle: bundle.path.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            owner: nix::unistd::geteuid().as_raw(),
            annotations,
            hooks: spec.hooks().clone(),
            cgroup_paths: cleanup.cgroups.clone(),
            cgroup_owned: Some(cleanup.owned.clone()),
            systemd_unit: scope.as_ref().map(|s| s.unit.clone()),
            namespaces: nss
                .iter()
                .map(|n| {
                    (
                        format!("{:?}", n.typ()).to_lowercase(),
                        PathBuf::from(format!("/proc/{pid}/ns/{}", ns_file(n.typ()))),
                    )
                })
                .collect(),
            process: spec.process().clone(),
            seccomp: linux.and_then(|l| l.seccomp().clone()),
            personality: linux.and_then(|l| l.personality().clone()),
        };
        loop {
            match sync::recv(&parent_sock)? {
                Some(Msg::Hooks) => {
                    // The deprecated prestart hooks keep the status they had when the spec
                    // ran them at start ("created", which runtime-tools checks); the
                    // createRuntime hooks see the container "creating".
                    let h = spec.hooks().as_ref();
                    let created = saved.spec_state(Status::Created);
                    let creating = saved.spec_state(Status::Creating);
                    let r =
                        hooks::run_all("prestart", h.and_then(|h| h.prestart().as_ref()), &created)
                            .and_then(|_| {
                                hooks::run_all(
                                    "createRuntime",
                                    h.and_then(|h| h.create_runtime().as_ref()),
                                    &creating,
                                )
                            });
                    if let Err(e) = r {
                        let _ = sync::send(&parent_sock, &Msg::Error(e.to_string()));
                        return Err(e);
                    }
                    sync::send(&parent_sock, &Msg::HooksDone)?;
                }
                Some(Msg::Ready) => break,
                Some(Msg::Error(e)) => return Err(Error::Init(e)),
                Some(m) => return Err(Error::Init(format!("unexpected {m:?} from init"))),
                None => {
                    return Err(Error::Init(format!(
                        "init exited during setup ({})",
                        reap_status(pid)
                    )))
                }
            }
        }
        saved.start_time =
            sys::process_start_time(pid).with_ctx(|| format!("read start time of pid {pid}"))?;
        dir.save(&saved)?;
        if let Some(pf) = &o.pid_file {
            write_pid_file(pf, pid)?;
        }
        if !via_sync {
            // The init waits for this before it waits for `start`: had we died before the
            // state was saved, it would see EOF instead and exit.
            sync::send(&parent_sock, &Msg::Committed)?;
        }
        Ok(Created {
            pid,
            sync: parent_sock,
            dir: ContainerDir {
                id: dir.id.clone(),
                path: dir.path.clone(),
            },
            saved,
            console: own_console_end,
        })
    }

    /// `start`: lets a created container's init exec the user program, then runs the
    /// poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        let dir = self.dir(id)?;
        let saved = load(&dir)?;
        let status = saved.status(&dir);
        if status != Status::Created {
            return Err(Error::State {
                id: id.into(),
                status: status.to_string(),
                what: "only a created container can be started".into(),
            });
        }
        let sock = dir.exec_socket();
        let (p, _dirfd) = short_socket_path(&sock)?;
        let mut c =
            UnixStream::connect(&p).with_ctx(|| format!("connect to {}", sock.display()))?;
        // From here the container counts as started, whatever happens next.
        let _ = std::fs::remove_file(&sock);
        c.write_all(b"s").ctx("send start")?;
        // The init answers with a 0 byte right before execve, then the connection closes on
        // exec; any text is its error. EOF without the marker: it died before exec (killed,
        // OOM, a seccomp kill).
        let mut reply = Vec::new();
        if let Err(e) = c.read_to_end(&mut reply) {
            return Err(Error::os(format!("wait for container {id} to start"), e));
        }
        match reply.as_slice() {
            [0] => {}
            [] => {
                return Err(Error::Init(format!(
                    "the init of container {id} exited before starting the program"
                )))
            }
            [0, err @ ..] | err => {
                return Err(Error::Init(String::from_utf8_lossy(err).into_owned()))
            }
        }
        self.poststart(&saved)
    }

    /// The runtime spec's lifecycle: "if any poststart hook fails, the runtime MUST log a
    /// warning, but the remaining hooks and lifecycle continue as if the hook had
    /// succeeded" (runc instead fails start and kills the container).
    fn poststart(&self, saved: &Saved) -> Result<()> {
        let h = saved.hooks.as_ref().and_then(|h| h.poststart().as_ref());
        hooks::run_all_logged("poststart", h, &saved.spec_state(Status::Running));
        Ok(())
    }

    /// `run`: create + start; waits for the container and returns its exit status (128+N
    /// when killed by signal N) unless `detach`.
    pub fn run(&self, o: &CreateOpts, detach: bool, keep: bool) -> Result<i32> {
        let terminal_proxy = !detach && o.console_socket.is_none();
        // Signals for the container are blocked before the clone so none is lost; the init
        // resets its mask before exec.
        let sigs = forwarded_signals();
        if !detach {
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&sigs),
                None,
            )
            .ctx("block signals")?;
        }
        let c = self.create_inner(o, true, terminal_proxy)?;
        let started = (|| {
            sync::send(&c.sync, &Msg::Start)?;
            match sync::recv(&c.sync)? {
                None => Ok(()),
                Some(Msg::Error(e)) => Err(Error::Init(e)),
                Some(m) => Err(Error::Init(format!("unexpected {m:?} from init"))),
            }
        })();
        let result = started.and_then(|_| self.poststart(&c.saved));
        if let Err(e) = result {
            let _ = nix::sys::signal::kill(Pid::from_raw(c.pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(c.pid), None);
            let _ = self.destroy(&c.dir, &c.saved);
            return Err(e);
        }
        if detach {
            return Ok(0);
        }
        let code = crate::tty::wait_forwarding(c.pid, &sigs, c.console)?;
        if !keep {
            self.destroy(&c.dir, &c.saved)?;
        }
        Ok(code)
    }

    /// `state`: the spec's state JSON plus runc's extra fields.
    pub fn state(&self, id: &str) -> Result<serde_json::Value> {
        let dir = self.dir(id)?;
        match dir.load()? {
            // A create that died half-way is stopped, as `list` shows it (Podman takes
            // nothing but created, running, paused and stopped).
            None => {
                let dead = dir.load_intent().is_some_and(|i| !i.creator_alive());
                let status = if dead { "stopped" } else { "creating" };
                Ok(serde_json::json!({
                    "ociVersion": "1.2.0", "id": id, "status": status, "pid": 0, "bundle": ""
                }))
            }
            Some(saved) => {
                let status = saved.status(&dir);
                let mut v = saved.spec_state(status);
                v["rootfs"] = saved.rootfs.to_string_lossy().into_owned().into();
                v["created"] = saved.created.clone().into();
                v["owner"] = "".into();
                if status == Status::Stopped {
                    v["pid"] = 0.into();
                }
                Ok(v)
            }
        }
    }

    /// `kill`: sends a signal to the init (or every process with `all`).
    pub fn kill(&self, id: &str, sig: impl Into<crate::signal::Signal>, all: bool) -> Result<()> {
        let sig = sig.into();
        let dir = self.dir(id)?;
        let saved = load(&dir)?;
        let status = saved.status(&dir);
        if status == Status::Stopped && !all {
            // A plain kill of a stopped container is an error (spec), worded as runc's
            // ("container not running"), which containerd's shim recognises.
            return Err(Error::Invalid(format!(
                "container not running: {id} is stopped"
            )));
        }
        // SIGKILL reaches a frozen process only once its cgroup thaws (v1): a paused
        // container is thawed after it, as runc does.
        let thaw = status == Status::Paused && sig.raw() == libc::SIGKILL;
        if all {
            // Also once the init is gone: without a PID namespace of its own, what it left
            // runs on in the cgroup (containerd's shim then kills them with `kill --all`).
            // A stopped container with no cgroup left has nothing to signal: success, as
            // runc (the shim retries it otherwise).
            // Every process of the cgroup and of the cgroups below it (as runc), each through
            // a pidfd. A PID read from cgroup.procs may have changed hands before the open:
            // only a process that /proc then shows in the cgroup is signalled (while it is
            // alive its PID is its own; once dead the pidfd reaches nobody).
            if let Ok(m) = cgroups::Manager::new(&saved.cgroup_paths) {
                // SIGKILL through cgroup.kill (v2): the kernel's, whole subtree at once.
                if sig.raw() == libc::SIGKILL && m.cgroup_kill() {
                    if thaw {
                        let _ = m.thaw();
                    }
                    return Ok(());
                }
                // Else frozen while signalled (unless paused already, and then left so),
                // so that what forks meanwhile is signalled too (as runc); where it cannot
                // be frozen, signalled as it runs.
                let (hs, dir) = (cgroups::hierarchies()?, m.pids_dir());
                let froze = status != Status::Paused && m.freeze().is_ok();
                for p in m.all_pids() {
                    if let Ok(fd) = sys::pidfd_open(p) {
                        if dir.as_ref().is_some_and(|d| cgroups::holds(d, &hs, p)) {
                            let _ = sys::pidfd_send_signal(fd.as_raw_fd(), sig.raw());
                        }
                    }
                }
                if froze {
                    let _ = m.thaw();
                }
                if thaw {
                    let _ = m.thaw();
                }
                return Ok(());
            }
            if status == Status::Stopped {
                return Ok(());
            }
            // No cgroup of its own (rootless, where cgroup errors were passed over): its
            // processes cannot be found, its init can (runc does the same). Podman's stop
            // of a container without a PID namespace is a kill --all.
            crate::log::warn(&format!(
                "kill --all: container {id} has no cgroup of its own: only its init is signalled"
            ));
        }
        let Some(pidfd) = init_pidfd(&saved).with_ctx(|| format!("kill {} {sig}", saved.pid))?
        else {
            // (Stopped meanwhile: `kill --all` has nothing left to signal, as above.)
            if all {
                return Ok(());
            }
            return Err(Error::Invalid(format!(
                "container not running: {id} is stopped"
            )));
        };
        sys::pidfd_send_signal(pidfd.as_raw_fd(), sig.raw())
            .with_ctx(|| format!("kill {} {sig}", saved.pid))?;
        if thaw {
            let _ = cgroups::thaw(&saved.cgroup_paths);
        }
        Ok(())
    }

    /// `delete`: removes a stopped container (any container with `force`: the spec wants an
    /// error for any other, also a created one, which runc kills and deletes) and runs the
    /// poststop hooks. Also a container whose create died half-way (stopped, as `state` and
    /// `list` show it), and with `force` one whose create is still running or whose state
    /// file is unreadable: what the preliminary record names is removed.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let dir = self.dir(id)?;
        let saved = match dir.load() {
            Ok(Some(s)) => s,
            // Its create died half-way: stopped, as `state` and `list` show it.
            Ok(None) if dir.load_intent().is_some_and(|i| !i.creator_alive()) => {
                return self.destroy_partial(&dir)
            }
            Ok(None) if !force => {
                return Err(Error::State {
                    id: id.into(),
                    status: "creating".into(),
                    what: "use --force to delete it".into(),
                })
            }
            Err(e @ Error::NotFound(_)) => return Err(e),
            Err(e) if !force => return Err(e),
            Ok(None) | Err(_) => return self.destroy_partial(&dir),
        };
        let status = saved.status(&dir);
        if status != Status::Stopped {
            if !force {
                return Err(Error::State {
                    id: id.into(),
                    status: status.to_string(),
                    what: "cannot delete a container that is not stopped (use --force)".into(),
                });
            }
            if status == Status::Paused {
                let _ = crate::cgroups::thaw(&saved.cgroup_paths);
            }
            kill_init(&saved);
        }
        self.destroy(&dir, &saved)
    }

    /// `delete --force` of a container with no usable state.json: its preliminary record
    /// (if any) names the init, the cgroups and the claim; then the directory goes.
    fn destroy_partial(&self, dir: &ContainerDir) -> Result<()> {
        if let Some(intent) = dir.load_intent() {
            let saved = intent.as_saved();
            kill_init(&saved);
            if intent.pid > 0 && !saved.cgroup_paths.is_empty() {
                // Recorded with the init: the cgroups were claimed and empty before it came.
                cgroups::kill_all(&saved.cgroup_paths);
            }
            // (Named in the record only once systemd made it for this init: a unit started
            // but not yet recorded empties as the init is killed, and systemd collects it.)
            if let (Some(u), Some(d)) = (&intent.systemd_unit, intent.cgroup_paths.first()) {
                cgroups::systemd::stop_unit(u, d)?;
            }
            cgroups::remove(&intent.cgroup_owned)?;
            if let Some(c) = &intent.claim {
                state::release_claim(c, &dir.id);
            }
        }
        dir.remove()
    }

    /// Removes what a container leaves: leftover processes, the cgroups it made, its
    /// claim, its state; then poststop.
    fn destroy(&self, dir: &ContainerDir, saved: &Saved) -> Result<()> {
        if !saved.cgroup_paths.is_empty() {
            if !cgroups::pids(&saved.cgroup_paths).is_empty() {
                cgroups::kill_all(&saved.cgroup_paths);
            }
            if let (Some(u), Some(d)) = (&saved.systemd_unit, saved.cgroup_paths.first()) {
                cgroups::systemd::stop_unit(u, d)?;
            }
            cgroups::remove(saved.cgroup_owned.as_ref().unwrap_or(&saved.cgroup_paths))?;
        }
        if let Some(c) = dir.load_intent().and_then(|i| i.claim) {
            state::release_claim(&c, &dir.id);
        }
        dir.remove()?;
        hooks::run_all_logged(
            "poststop",
            saved.hooks.as_ref().and_then(|h| h.poststop().as_ref()),
            &saved.spec_state(Status::Stopped),
        );
        Ok(())
    }

    /// Every container with its status.
    pub fn list(&self) -> Result<Vec<(Saved, Status)>> {
        let mut out = Vec::new();
        for id in state::list_ids(&self.root)? {
            let Ok(dir) = self.dir(&id) else { continue };
            match dir.load() {
                Ok(Some(s)) => {
                    let st = s.status(&dir);
                    out.push((s, st));
                }
                // A create still running, or one killed before it saved the state (or a
                // state file lost): listed from the preliminary record, so that it can be
                // seen and deleted.
                _ => {
                    if let Some(i) = dir.load_intent() {
                        let st = if i.creator_alive() {
                            Status::Creating
                        } else {
                            Status::Stopped
                        };
                        out.push((i.as_saved(), st));
                    }
                }
            }
        }
        Ok(out)
    }
}

pub(crate) fn load(dir: &ContainerDir) -> Result<Saved> {
    dir.load()?.ok_or_else(|| Error::State {
        id: dir.id.clone(),
        status: "creating".into(),
        what: "not created yet".into(),
    })
}

/// Sends `m` to the init; if it has gone (it failed in its setup meanwhile), its own
/// message is what went wrong.
pub(crate) fn send_or_init_error(sock: &OwnedFd, m: &Msg) -> Result<()> {
    sync::send(sock, m).map_err(|e| match sync::recv(sock) {
        Ok(Some(Msg::Error(m))) => Error::Init(m),
        _ => e,
    })
}

/// Signals `run` and `exec` pass on to the container: every signal but those that cannot
/// be caught or that report a fault of our own; the real-time ones included (SIGRTMIN+3 is
/// systemd's stop signal), as runc forwards them. glibc's full set leaves out the two
/// signals it reserves for itself (32 and 33).
pub fn forwarded_signals() -> nix::sys::signal::SigSet {
    let mut s = nix::sys::signal::SigSet::all();
    for sig in [
        Signal::SIGKILL,
        Signal::SIGSTOP,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
    ] {
        s.remove(sig);
    }
    s
}

/// Whether `linux.resources` asks for any limit (device rules aside): a value that would
/// be written to a cgroup file.
pub fn has_limits(r: Option<&oci_spec::runtime::LinuxResources>) -> bool {
    fn set(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            serde_json::Value::Object(m) => m.values().any(set),
            _ => true,
        }
    }
    let Some(r) = r else { return false };
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("devices");
    }
    set(&v)
}

fn rootless_limits_error(e: Error) -> Error {
    Error::Unsupported(format!(
        "rootless: linux.resources sets limits, but the container's cgroup cannot be created or joined ({e}); \
         limits need a cgroup (v2) delegated to this user, e.g. by systemd"
    ))
}

/// `--rootless auto` (runc's default): not root, or root of a user namespace.
pub fn rootless_auto() -> bool {
    !nix::unistd::geteuid().is_root()
        || std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// Writes the init's uid and gid maps. As root, directly. Otherwise the kernel lets a
/// process map only its own id: such a mapping is written directly too (gid_map after
/// setgroups "deny", which the kernel requires then); anything more goes through the
/// setuid helpers newuidmap/newgidmap (Debian's uidmap package), which check the ranges
/// against /etc/subuid and /etc/subgid.
fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    use oci_spec::runtime::LinuxIdMapping;
    let linux = spec.linux().as_ref();
    let uids: &[LinuxIdMapping] = linux
        .and_then(|l| l.uid_mappings().as_deref())
        .unwrap_or(&[]);
    let gids: &[LinuxIdMapping] = linux
        .and_then(|l| l.gid_mappings().as_deref())
        .unwrap_or(&[]);
    let fmt = |m: &[LinuxIdMapping]| {
        m.iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let root = nix::unistd::geteuid().is_root();
    let just = |m: &[LinuxIdMapping], id: u32| matches!(m, [one] if one.size() == 1 && one.host_id() == id);
    let (uid, gid) = (fmt(uids), fmt(gids));
    if root || just(uids, nix::unistd::geteuid().as_raw()) {
        std::fs::write(format!("/proc/{pid}/uid_map"), &uid)
            .with_ctx(|| format!("linux.uidMappings: write uid_map {uid:?}"))?;
    } else {
        id_map_helper("newuidmap", "linux.uidMappings", "/etc/subuid", pid, uids)?;
    }
    if root {
        std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
            .with_ctx(|| format!("linux.gidMappings: write gid_map {gid:?}"))?;
    } else if just(gids, nix::unistd::getegid().as_raw()) {
        std::fs::write(format!("/proc/{pid}/setgroups"), "deny")
            .with_ctx(|| format!("write /proc/{pid}/setgroups"))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), &gid)
            .with_ctx(|| format!("linux.gidMappings: write gid_map {gid:?}"))?;
    } else {
        id_map_helper("newgidmap", "linux.gidMappings", "/etc/subgid", pid, gids)?;
    }
    Ok(())
}

fn id_map_helper(
    helper: &str,
    field: &str,
    subids: &str,
    pid: i32,
    maps: &[oci_spec::runtime::LinuxIdMapping],
) -> Result<()> {
    let mut args = vec![pid.to_string()];
    for m in maps {
        args.extend([
            m.container_id().to_string(),
            m.host_id().to_string(),
            m.size().to_string(),
        ]);
    }
    let out = std::process::Command::new(helper)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (install the uidmap package)"
            } else {
                ""
            };
            Error::os(format!("{field}: run {helper}{hint}"), e)
        })?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "{field}: `{helper} {}` failed ({}): {} (the ranges must be granted to this user in {subids})",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn write_time_offsets(spec: &Spec) -> Result<()> {
    let Some(offs) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
    else {
        return Ok(());
    };
    let mut s = String::new();
    for (clock, o) in offs {
        if clock != "monotonic" && clock != "boottime" {
            return Err(Error::Config(format!(
                "linux.timeOffsets: unknown clock {clock:?} (monotonic or boottime)"
            )));
        }
        s.push_str(&format!(
            "{clock} {} {}\n",
            o.secs().unwrap_or(0),
            o.nanosecs().unwrap_or(0)
        ));
    }
    std::fs::write("/proc/self/timens_offsets", &s)
        .with_ctx(|| format!("linux.timeOffsets: write {s:?}"))
}

pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = std::path::absolute(path).with_ctx(|| format!("pid file {}", path.display()))?;
    state::write_file_atomic(&path, pid.to_string().as_bytes(), false)
}

fn reap_status(pid: i32) -> String {
    match nix::sys::wait::waitpid(Pid::from_raw(pid), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => format!("exit status {c}"),
        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => format!("killed by {s}"),
        Ok(s) => format!("{s:?}"),
        Err(e) => format!("wait: {e}"),
    }
}

/// A pidfd of the container's init, taken before re-checking its start time: a PID reused
/// by another process in between is never signalled through it. None when it is gone.
fn init_pidfd(saved: &Saved) -> std::io::Result<Option<OwnedFd>> {
    let fd = sys::pidfd_open(saved.pid)?;
    Ok(saved.alive().then_some(fd))
}

/// SIGKILLs the container's init through a pidfd taken before re-checking its start time
/// (a reused PID is never signalled), then waits (bounded) until it is gone.
fn kill_init(saved: &Saved) {
    if saved.pid <= 0 {
        return;
    }
    let Ok(Some(pidfd)) = init_pidfd(saved) else {
        return;
    };
    let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), Signal::SIGKILL as i32);
    wait_pidfd(&pidfd, Duration::from_secs(10));
}

/// Waits until the process of `fd` (a pidfd; it may not be our child) has exited, up to
/// `timeout`.
fn wait_pidfd(fd: &OwnedFd, timeout: Duration) {
    let mut pfd = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let _ = nix::poll::poll(
        &mut pfd,
        nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
    );
}

/// Undoes a failed create: the init, the cgroups, the state dir.
struct Cleanup<'a> {
    dir: Option<&'a ContainerDir>,
    /// The container's cgroups (its processes are killed) and those create made (removed).
    cgroups: Vec<PathBuf>,
    owned: Vec<PathBuf>,
    claim: Option<PathBuf>,
    child: Option<i32>,
    /// The systemd scope that create may have started.
    unit: Option<String>,
}

impl Cleanup<'_> {
    fn disarm(&mut self) {
        self.dir = None;
        self.cgroups.clear();
        self.owned.clear();
        self.claim = None;
        self.child = None;
        self.unit = None;
    }

    fn run(&mut self) {
        if let Some(pid) = self.child.take() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        if !self.cgroups.is_empty() {
            // Only set once the cgroups were found empty and claimed: whatever is in them now
            // is the container's.
            cgroups::kill_all(&self.cgroups);
        }
        if let (Some(u), Some(d)) = (self.unit.take(), self.owned.first()) {
            if let Err(e) = cgroups::systemd::stop_unit(&u, d) {
                crate::log::debug(&format!("stop {u} after a failed create: {e}"));
            }
        }
        let _ = cgroups::remove(&self.owned);
        if let (Some(c), Some(d)) = (&self.claim, self.dir) {
            state::release_claim(c, &d.id);
        }
        if let Some(d) = self.dir.take() {
            let _ = d.remove();
        }
    }
}
