//! `exec`: a new process in a running container, with one fork and no re-exec.
//!
//! The parent (this process) opens the namespace files of the container's init, enters
//! its pid namespace (so that the child is born inside it), connects the console socket
//! and forks. The child makes itself non-dumpable, waits until the parent has put it in
//! the container's cgroups, compiles the seccomp filter (and connects a NOTIFY agent, a
//! host path), joins the namespaces (user first), sets up a terminal, finds the program,
//! closes every inherited descriptor but stdio and `--preserve-fds`, and then takes the
//! init's last stage (`init::finish_and_exec`): rlimits, seccomp, capabilities, user,
//! cwd, no_new_privs, AppArmor, execve. The sync socket is close-on-exec: EOF tells the
//! parent the exec happened, an error message why not. Without `detach` the parent then
//! waits for the process, forwarding signals and proxying a terminal.
//!
//! The process settings come from state.json (what `create` recorded of the config), not
//! from the bundle, which may have changed since.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxSeccomp, Process};
use serde_json::{json, Value};

use crate::error::{Context, Error, Result};
use crate::init::{self, ns_name, Final, Never};
use crate::lifecycle::{self, Runtime};
use crate::state::{ContainerDir, Saved, Status};
use crate::sync::{self, Msg};
use crate::{cgroups, seccomp, sys};

/// `exec`'s options: runc's flags.
#[derive(Debug, Default, Clone)]
pub struct ExecOpts {
    pub id: String,
    /// The command (ignored with `process`).
    pub args: Vec<String>,
    /// `--process`: a runtime-spec Process (JSON) used instead of the container's.
    pub process: Option<PathBuf>,
    /// `-t`: allocate a terminal.
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub cwd: Option<String>,
    /// `-e KEY=VALUE`, added to (or replacing in) the container's environment.
    pub env: Vec<String>,
    /// `-u uid[:gid]`.
    pub user: Option<String>,
    /// `--additional-gids`, each a number or a comma-separated list.
    pub additional_gids: Vec<String>,
    /// `--cap`: capabilities added to the bounding, effective and permitted sets.
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
    pub ignore_paused: bool,
    /// `--cgroup [controller[,controller]:]path`: a sub-cgroup of the container's.
    pub cgroups: Vec<String>,
    pub apparmor: Option<String>,
    pub process_label: Option<String>,
    /// (Library only.) The process leads a process group of its own, so that its caller can
    /// signal it with everything it forks, orphans included (`kill(-PID)`). A group leader
    /// cannot call setsid(2) itself (EPERM); with a terminal the process leads a session,
    /// hence a group, anyway, and this is not applied.
    pub new_process_group: bool,
}

/// A namespace file name of state.json's list as a clone flag.
fn ns_flag(typ: &str) -> Result<CloneFlags> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    let t = match typ {
        "pid" => T::Pid,
        "network" => T::Network,
        "mount" => T::Mount,
        "ipc" => T::Ipc,
        "uts" => T::Uts,
        "user" => T::User,
        "cgroup" => T::Cgroup,
        "time" => T::Time,
        _ => {
            return Err(Error::Invalid(format!(
                "state: unknown namespace type {typ:?}"
            )))
        }
    };
    Ok(lifecycle::ns_flag(t))
}

fn parse_id(what: &str, s: &str) -> Result<u32> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| Error::Invalid(format!("{what}: {s:?} is not a numeric id")))
}

/// The process to run: `--process`'s file, or the container's process with the flags
/// applied (as runc: the flags other than -t do not change a `--process` file).
pub fn exec_process(saved: &Saved, o: &ExecOpts) -> Result<Process> {
    let mut v: Value = match &o.process {
        Some(path) => {
            let text =
                std::fs::read(path).with_ctx(|| format!("--process: read {}", path.display()))?;
            let mut de = serde_json::Deserializer::from_slice(&text);
            let p: Process = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                Error::Invalid(format!(
                    "--process {}: {}: {}",
                    path.display(),
                    e.path(),
                    e.inner()
                ))
            })?;
            let mut v =
                serde_json::to_value(&p).map_err(|e| Error::Invalid(format!("--process: {e}")))?;
            if o.tty {
                v["terminal"] = json!(true);
            }
            // What the file leaves out of the container's confinement comes from the
            // container's process, as runc takes its AppArmor profile, capabilities,
            // rlimits, scheduler and I/O priority (a minimal process.json ran unconfined,
            // with the runtime's own limits); no_new_privs too, where runc reads a missing
            // value as false (stricter: an exec never escapes the container's).
            if let Some(base) = saved
                .process
                .as_ref()
                .and_then(|b| serde_json::to_value(b).ok())
            {
                for k in [
                    "apparmorProfile",
                    "noNewPrivileges",
                    "capabilities",
                    "rlimits",
                    "scheduler",
                    "ioPriority",
                ] {
                    let missing = match v.get(k) {
                        None | Some(Value::Null) => true,
                        Some(Value::String(s)) => s.is_empty(),
                        Some(Value::Array(a)) => a.is_empty() && k == "rlimits",
                        _ => false,
                    };
                    if missing && !base[k].is_null() {
                        v[k] = base[k].clone();
                    }
                }
            }
            v
        }
        None => {
            let base = saved.process.as_ref().ok_or_else(|| {
                Error::Invalid(format!(
                    "container {} was created without a process in its config; use --process",
                    saved.id
                ))
            })?;
            let mut v = serde_json::to_value(base)
                .map_err(|e| Error::Invalid(format!("encode the container's process: {e}")))?;
            if o.args.is_empty() {
                return Err(Error::Invalid(
                    "exec: a command to run is required (or --process)".into(),
                ));
            }
            v["args"] = json!(o.args);
            if let Some(cwd) = &o.cwd {
                v["cwd"] = json!(cwd);
            }
            let env: Vec<String> = v["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(String::from))
                .collect();
            for e in &o.env {
                if !e.contains('=') {
                    return Err(Error::Invalid(format!("--env {e:?}: expected KEY=VALUE")));
                }
            }
            v["env"] = json!(init::build_env(&env, &o.env));
            if let Some(u) = &o.user {
                let (uid, gid) = match u.split_once(':') {
                    Some((uid, gid)) => (uid, Some(gid)),
                    None => (u.as_str(), None),
                };
                v["user"]["uid"] = json!(parse_id("--user uid", uid)?);
                if let Some(g) = gid {
                    v["user"]["gid"] = json!(parse_id("--user gid", g)?);
                }
            }
            if !o.additional_gids.is_empty() {
                let mut gids: Vec<u32> = v["user"]["additionalGids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|g| g.as_u64().map(|g| g as u32))
                    .collect();
                for list in &o.additional_gids {
                    for g in list.split(',').filter(|g| !g.is_empty()) {
                        gids.push(parse_id("--additional-gids", g)?);
                    }
                }
                v["user"]["additionalGids"] = json!(gids);
            }
            if !o.caps.is_empty() {
                if !v["capabilities"].is_object() {
                    v["capabilities"] = json!({});
                }
                for c in &o.caps {
                    let up = c.to_ascii_uppercase();
                    let name = if up.starts_with("CAP_") {
                        up
                    } else {
                        format!("CAP_{up}")
                    };
                    // Ambient too when the process has inheritable capabilities (ambient
                    // ones need them), as runc does.
                    let ambient = v["capabilities"]["inheritable"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty());
                    let sets: &[&str] = if ambient {
                        &["bounding", "effective", "permitted", "ambient"]
                    } else {
                        &["bounding", "effective", "permitted"]
                    };
                    for set in sets {
                        let s = &mut v["capabilities"][*set];
                        if !s.is_array() {
                            *s = json!([]);
                        }
                        let arr = s.as_array_mut().expect("just made an array");
                        if !arr.iter().any(|x| x == &json!(name)) {
                            arr.push(json!(name));
                        }
                    }
                }
            }
            if o.no_new_privs {
                v["noNewPrivileges"] = json!(true);
            }
            if let Some(a) = &o.apparmor {
                v["apparmorProfile"] = json!(a);
            }
            v["terminal"] = json!(o.tty);
            v
        }
    };
    if let Some(l) = &o.process_label {
        return Err(Error::Unsupported(format!(
            "--process-label {l:?}: SELinux is not supported by rsrun"
        )));
    }
    if v["selinuxLabel"].as_str().is_some_and(|l| !l.is_empty()) {
        return Err(Error::Unsupported(format!(
            "process.selinuxLabel {}: SELinux is not supported by rsrun",
            v["selinuxLabel"]
        )));
    }
    if v.get("user").is_none_or(|u| !u.is_object()) {
        v["user"] = json!({"uid": 0, "gid": 0});
    }
    let p: Process = serde_path_to_error::deserialize(v)
        .map_err(|e| Error::Invalid(format!("exec process: {}: {}", e.path(), e.inner())))?;
    if p.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::Invalid(
            "exec: process.args must not be empty".into(),
        ));
    }
    if !p.cwd().is_absolute() {
        return Err(Error::Invalid(format!(
            "exec: process.cwd {} must be an absolute path",
            p.cwd().display()
        )));
    }
    crate::config::check_user_ids(p.user()).map_err(|e| Error::Invalid(format!("exec: {e}")))?;
    Ok(p)
}

/// The cgroups the process joins: the container's, or the sub-cgroups `--cgroup` names
/// (`path` for every hierarchy, `ctrl[,ctrl]:path` for those of v1 controllers).
/// On cgroup v2, a container whose own cgroup hands controllers down to cgroups below it
/// (systemd as the container's init moves itself into init.scope and enables them) takes no
/// process of its own ("no internal processes"): the exec'd process goes where the init is,
/// as runc retries it. None when the container's cgroup can take it, or the init's is not
/// inside it.
fn init_leaf_cgroup(paths: &[PathBuf], init: i32) -> Option<PathBuf> {
    let [top] = paths else { return None };
    let delegated = std::fs::read_to_string(top.join("cgroup.subtree_control"))
        .is_ok_and(|s| !s.trim().is_empty());
    if !delegated {
        return None;
    }
    let mount = cgroups::hierarchies()
        .ok()?
        .into_iter()
        .find(|h| h.v2 && top.starts_with(&h.mountpoint))?;
    let own = std::fs::read_to_string(format!("/proc/{init}/cgroup")).ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = rel
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(rel);
    let p = mount.mountpoint.join(rel.trim_start_matches('/'));
    (p != *top && p.starts_with(top)).then_some(p)
}

pub fn exec_cgroups(paths: &[PathBuf], args: &[String]) -> Result<Vec<PathBuf>> {
    if args.is_empty() {
        return Ok(paths.to_vec());
    }
    if paths.is_empty() {
        return Err(Error::Invalid(
            "--cgroup: the container has no cgroup of its own".into(),
        ));
    }
    let mut bare: Option<String> = None;
    let mut by_ctrl: Vec<(String, String)> = Vec::new();
    for a in args {
        let (ctrls, sub) = match a.split_once(':') {
            Some((c, s)) => (c, s),
            None => ("", a.as_str()),
        };
        let sub = sub.trim_start_matches('/');
        if sub.is_empty() || sub.split('/').any(|c| c == "..") {
            return Err(Error::Invalid(format!(
                "--cgroup {a:?}: expected a relative sub-cgroup path without .."
            )));
        }
        if ctrls.is_empty() {
            if bare.replace(sub.to_string()).is_some() {
                return Err(Error::Invalid(format!(
                    "--cgroup {a:?}: only one path without controllers may be given"
                )));
            }
        } else {
            for c in ctrls.split(',') {
                by_ctrl.push((c.to_string(), sub.to_string()));
            }
        }
    }
    let hs = cgroups::hierarchies()?;
    if cgroups::is_unified(&hs) && !by_ctrl.is_empty() {
        return Err(Error::Invalid(
            "--cgroup: per-controller paths (controller:path) need cgroup v1; on cgroup v2 give a path only"
                .into(),
        ));
    }
    let ctrls_of = |p: &Path| -> Vec<String> {
        hs.iter()
            .filter(|h| p.starts_with(&h.mountpoint))
            .max_by_key(|h| h.mountpoint.as_os_str().len())
            .map(|h| h.controllers.clone())
            .unwrap_or_default()
    };
    for (c, _) in &by_ctrl {
        if !paths.iter().any(|p| ctrls_of(p).contains(c)) {
            return Err(Error::Invalid(format!(
                "--cgroup: the container has no cgroup for controller {c:?}"
            )));
        }
    }
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let ctrls = ctrls_of(p);
        let sub = by_ctrl
            .iter()
            .find(|(c, _)| ctrls.contains(c))
            .map(|(_, s)| s.clone())
            .or_else(|| bare.clone());
        match sub {
            Some(s) => {
                let d = p.join(&s);
                if !d.is_dir() {
                    return Err(Error::Invalid(format!(
                        "--cgroup: sub-cgroup {} does not exist",
                        d.display()
                    )));
                }
                out.push(d);
            }
            None => out.push(p.clone()),
        }
    }
    Ok(out)
}

/// What the forked child needs.
struct Child<'a> {
    sync: OwnedFd,
    /// Namespaces to join, user first.
    join: Vec<(CloneFlags, OwnedFd)>,
    /// The parent already joined the container's user namespace.
    in_userns: bool,
    process: &'a Process,
    seccomp: Option<&'a LinuxSeccomp>,
    personality: Option<&'a oci_spec::runtime::LinuxPersonality>,
    oci_version: &'a str,
    state: Value,
    console: Option<UnixStream>,
    preserve_fds: u32,
    /// The v1 cgroups to move ourselves into first (see `cgroups::SelfJoin`).
    self_join: Option<&'a cgroups::SelfJoin>,
    new_process_group: bool,
}

impl Runtime {
    /// `exec`: runs a process in a running container. Returns its exit status (128+N when
    /// killed by signal N), or 0 at once with `detach`.
    pub fn exec(&self, o: &ExecOpts) -> Result<i32> {
        self.exec_impl(o)
            .map(|(v, detached)| if detached { 0 } else { v })
    }

    /// Starts an exec process with `o.detach` set and returns its PID: a child of the caller,
    /// which must reap it. Its stdio is the caller's 0, 1 and 2 (or the terminal sent to
    /// `o.console_socket`). The caller must be single-threaded (this forks).
    pub fn exec_detached(&self, o: &ExecOpts) -> Result<i32> {
        if !o.detach {
            return Err(Error::Invalid(
                "exec_detached needs ExecOpts::detach".into(),
            ));
        }
        self.exec_impl(o).map(|(pid, _)| pid)
    }

    /// (PID, true) when detached, else (exit status, false).
    fn exec_impl(&self, o: &ExecOpts) -> Result<(i32, bool)> {
        let dir = ContainerDir::new(&self.root, &o.id)?;
        let saved = lifecycle::load(&dir)?;
        let status = saved.status(&dir);
        match status {
            // Like runc, a created container accepts exec (its init waits for start).
            Status::Running | Status::Created => {}
            Status::Paused if o.ignore_paused => {}
            Status::Paused => {
                return Err(Error::State {
                    id: o.id.clone(),
                    status: status.to_string(),
                    what: "cannot exec in a paused container (resume it, or use --ignore-paused)"
                        .into(),
                })
            }
            _ => {
                return Err(Error::State {
                    id: o.id.clone(),
                    status: status.to_string(),
                    what: "cannot exec: the container must be running".into(),
                })
            }
        }
        let process = exec_process(&saved, o)?;
        let terminal = process.terminal().unwrap_or(false);
        match (&o.console_socket, terminal) {
            (Some(_), false) => {
                return Err(Error::Invalid(
                    "--console-socket needs a terminal (-t, or terminal in --process)".into(),
                ))
            }
            (None, true) if o.detach => {
                return Err(Error::Invalid(
                    "a terminal with --detach needs --console-socket".into(),
                ))
            }
            _ => {}
        }
        let mut cgroup_paths = exec_cgroups(&saved.cgroup_paths, &o.cgroups)?;
        if o.cgroups.is_empty() {
            if let Some(p) = init_leaf_cgroup(&cgroup_paths, saved.pid) {
                cgroup_paths = vec![p];
            }
        }

        // The init's namespaces, opened while it is known to be the container's init.
        let mut join: Vec<(CloneFlags, OwnedFd)> = Vec::new();
        for (typ, path) in &saved.namespaces {
            join.push((ns_flag(typ)?, lifecycle::open_ro(path)?));
        }
        if !saved.alive() {
            return Err(Error::State {
                id: o.id.clone(),
                status: Status::Stopped.to_string(),
                what: "cannot exec: the container must be running".into(),
            });
        }
        join.sort_by_key(|(f, _)| match *f {
            CloneFlags::CLONE_NEWUSER => 0,
            CloneFlags::CLONE_NEWNS => 2,
            _ => 1,
        });
        let pid_ns = join
            .iter()
            .position(|(f, _)| *f == CloneFlags::CLONE_NEWPID)
            .map(|i| join.remove(i).1);

        let (parent_sock, child_sock) = sync::pair()?;
        let mut own_console = None;
        let console = match (&o.console_socket, terminal) {
            (Some(path), _) => {
                let (p, _dirfd) = lifecycle::short_socket_path(path)?;
                Some(
                    UnixStream::connect(&p)
                        .with_ctx(|| format!("connect to console socket {}", path.display()))?,
                )
            }
            (None, true) => {
                let (a, b) = UnixStream::pair().ctx("socketpair for the terminal")?;
                own_console = Some(a);
                Some(b)
            }
            (None, false) => None,
        };

        // Signals for the process are blocked before the fork so none is lost; the child
        // resets its mask before exec.
        let sigs = lifecycle::forwarded_signals();
        let mut old_mask = SigSet::empty();
        if !o.detach {
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&sigs), Some(&mut old_mask))
                .ctx("block signals")?;
        }
        let restore_mask = |detach: bool| {
            if !detach {
                let _ =
                    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            }
        };
        // The process joins its cgroups itself where it can (see `cgroups::SelfJoin`);
        // rootless, whose cgroups may not be writable, the usual way.
        let self_join = if self.rootless || cgroup_paths.is_empty() {
            None
        } else {
            cgroups::SelfJoin::open_existing(&cgroup_paths)
        };
        let cgroups_of = (cgroup_paths.as_slice(), self_join.as_ref());
        let spawned = self.spawn_exec(
            &saved, &process, join, pid_ns, child_sock, console, o, cgroups_of,
        );
        drop(self_join);
        let (pid, cgroup_paths) = match spawned {
            Ok(p) => p,
            Err(e) => {
                restore_mask(o.detach);
                return Err(e);
            }
        };
        let started = (|| {
            if !cgroup_paths.is_empty() {
                cgroups::add_pid(&cgroup_paths, pid)?;
            }
            // The container's OOM score (the process's own, else its init's), as runc gives
            // every exec: inherited, the caller's would be the exec's (a shim's, often far
            // below the container's, so that the kernel killed the container's main
            // process rather than an exec or a probe).
            let adj = process
                .oom_score_adj()
                .or_else(|| saved.process.as_ref().and_then(|p| p.oom_score_adj()));
            if let Some(adj) = adj {
                crate::security::write_oom_score_adj(&pid.to_string(), adj)?;
            }
            lifecycle::send_or_init_error(&parent_sock, &Msg::Go(pid))?;
            match sync::recv(&parent_sock)? {
                None => Ok(()),
                Some(Msg::Error(e)) => {
                    Err(Error::Invalid(format!("exec in container {}: {e}", o.id)))
                }
                Some(m) => Err(Error::Init(format!(
                    "unexpected {m:?} from the exec'd process"
                ))),
            }
        })();
        if let Err(e) = started {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            restore_mask(o.detach);
            return Err(e);
        }
        if let Some(pf) = &o.pid_file {
            lifecycle::write_pid_file(pf, pid)?;
        }
        if o.detach {
            return Ok((pid, true));
        }
        let code = crate::tty::wait_forwarding(pid, &sigs, own_console);
        restore_mask(false);
        code.map(|c| (c, false))
    }

    /// Enters the pid namespace and forks the child; returns its PID.
    #[allow(clippy::too_many_arguments)]
    fn spawn_exec(
        &self,
        saved: &Saved,
        process: &Process,
        mut join: Vec<(CloneFlags, OwnedFd)>,
        pid_ns: Option<OwnedFd>,
        child_sock: OwnedFd,
        console: Option<UnixStream>,
        o: &ExecOpts,
        (cgroup_paths, self_join): (&[PathBuf], Option<&cgroups::SelfJoin>),
    ) -> Result<(i32, Vec<PathBuf>)> {
        // The child must be born in the container's pid namespace: enter it for our
        // children now. Without CAP_SYS_ADMIN in our own user namespace (rootless), that
        // needs the container's user namespace first; this process then stays in it, so
        // it makes itself non-dumpable (CVE-2019-5736: it is the host's binary).
        let mut in_userns = false;
        // Non-dumpable before the child is born in the container's pid namespace: until it
        // makes itself so, a container process with CAP_SYS_PTRACE could attach to it (a
        // host-root process there with the host's descriptors). It inherits this; we
        // restore ours once it is forked.
        let was_dumpable = nix::sys::prctl::get_dumpable().unwrap_or(true);
        nix::sys::prctl::set_dumpable(false).ctx("prctl(PR_SET_DUMPABLE)")?;
        let restore_pid = match &pid_ns {
            Some(fd) => {
                let mine = lifecycle::open_ro(Path::new("/proc/self/ns/pid"))?;
                match nix::sched::setns(fd, CloneFlags::CLONE_NEWPID) {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EPERM)
                        if join
                            .first()
                            .is_some_and(|(f, _)| *f == CloneFlags::CLONE_NEWUSER) =>
                    {
                        let (_, user) = join.remove(0);
                        nix::sched::setns(&user, CloneFlags::CLONE_NEWUSER)
                            .ctx("join the container's user namespace")?;
                        in_userns = true;
                        nix::sched::setns(fd, CloneFlags::CLONE_NEWPID)
                            .ctx("join the container's pid namespace")?;
                    }
                    Err(e) => return Err(Error::os("join the container's pid namespace", e)),
                }
                Some(mine)
            }
            None => None,
        };
        let state = saved.spec_state(Status::Running);
        // (Returned: the cgroups the child did not join itself.)
        let pid = match self_join {
            Some(j) => j.fork(0),
            None => sys::clone_fork(0).map(|p| (p, cgroup_paths.to_vec())),
        }
        .ctx("fork the exec process");
        if let Ok((0, _)) = pid {
            run_child(Child {
                sync: child_sock,
                join,
                in_userns,
                process,
                seccomp: saved.seccomp.as_ref(),
                personality: saved.personality.as_ref(),
                oci_version: &saved.oci_version,
                state,
                console,
                preserve_fds: o.preserve_fds,
                self_join,
                new_process_group: o.new_process_group,
            });
        }
        // Non-dumpable for good once in the container's user namespace (CVE-2019-5736: this
        // is the host's binary).
        if was_dumpable && !in_userns {
            let _ = nix::sys::prctl::set_dumpable(true);
        }
        if let Some(fd) = restore_pid {
            // Not possible (nor needed: we fork no more) after joining a user namespace.
            if let Err(e) = nix::sched::setns(fd, CloneFlags::CLONE_NEWPID) {
                if !in_userns {
                    return Err(Error::os("return to our pid namespace", e));
                }
            }
        }
        pid
    }
}

/// The child: never returns. Failures go to the parent on the sync socket.
/// Nothing of `c` is dropped: its descriptors may be closed already (close_from_except),
/// and the process ends with `_exit`.
fn run_child(c: Child) -> ! {
    let msg = match child_setup(&c) {
        Err(e) => e.to_string(),
        Ok(never) => match never {},
    };
    let _ = sync::send(&c.sync, &Msg::Error(msg));
    sys::exit_now(127)
}

fn child_setup(c: &Child) -> Result<Never> {
    // CVE-2019-5736: until exec this is the runtime binary; nothing in the container may
    // open its /proc/PID/exe (made non-dumpable before any namespace is joined).
    nix::sys::prctl::set_dumpable(false).ctx("prctl(PR_SET_DUMPABLE)")?;
    if c.new_process_group && !c.process.terminal().unwrap_or(false) {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
            .ctx("setpgid")?;
    }
    if let Some(j) = c.self_join {
        j.join_v1()?;
    }
    let self_id = crate::seal::runtime_identity()?;
    let host_pid = match sync::recv(&c.sync)? {
        Some(Msg::Go(p)) => p,
        Some(Msg::Error(e)) => return Err(Error::Init(e)),
        Some(m) => return Err(Error::Init(format!("unexpected {m:?} from the runtime"))),
        None => return Err(Error::Init("the runtime went away".into())),
    };
    // The filter is compiled, and a NOTIFY agent (a host path) connected, before the
    // mount namespace is joined.
    let sec = match c.seccomp {
        Some(s) => Some(seccomp::prepare_section(
            s,
            c.oci_version,
            host_pid.into(),
            c.state.clone(),
        )?),
        None => None,
    };
    // Whether the user namespace allows setgroups, read through the host's /proc: before the
    // container's mount namespace is joined (its /proc may be the container's own making,
    // and a fake "deny" would leave the caller's supplementary groups on the process).
    let setgroups_here = || {
        std::fs::read_to_string("/proc/self/setgroups")
            .map(|s| s.trim() != "deny")
            .unwrap_or(true)
    };
    let mut in_userns = c.in_userns;
    let mut setgroups_allowed = !in_userns || setgroups_here();
    for (flag, fd) in &c.join {
        nix::sched::setns(fd, *flag)
            .with_ctx(|| format!("join the container's {} namespace", ns_name(*flag)))?;
        if *flag == CloneFlags::CLONE_NEWUSER {
            in_userns = true;
            setgroups_allowed = setgroups_here();
        }
    }
    if in_userns {
        // Root of the user namespace, as the init is (our host uid need not be mapped).
        let root_g = nix::unistd::Gid::from_raw(0);
        let root_u = nix::unistd::Uid::from_raw(0);
        nix::unistd::setresgid(root_g, root_g, root_g).ctx("setresgid 0 in the user namespace")?;
        nix::unistd::setresuid(root_u, root_u, root_u).ctx("setresuid 0 in the user namespace")?;
    }
    // CVE-2024-21626: nothing of the host stays open but stdio, the preserved descriptors,
    // and our own close-on-exec channels; closed before anything of the container is opened
    // (its /dev/ptmx or /etc/passwd could be a magic link back to one of them).
    let mut keep: Vec<RawFd> = vec![c.sync.as_raw_fd()];
    keep.extend(sec.as_ref().and_then(|s| s.listener_fd()));
    keep.extend(crate::log::file_fd());
    keep.extend(c.console.as_ref().map(|s| s.as_raw_fd()));
    sys::close_from_except(3 + c.preserve_fds as RawFd, &keep)
        .ctx("close inherited descriptors")?;
    let p = c.process;
    if p.terminal().unwrap_or(false) {
        let sock = c
            .console
            .as_ref()
            .ok_or_else(|| Error::Invalid("a terminal needs a console socket".into()))?;
        init::attach_terminal(sock, p, false)?;
    }
    let mut env = init::build_env(p.env().as_deref().unwrap_or(&[]), &[]);
    init::ensure_home(&mut env, p.user().uid());
    let args = p.args().as_deref().unwrap_or(&[]);
    let exe = init::find_executable(&args[0], &env, p.cwd())?;
    init::refuse_runtime_binary(&exe, self_id)?;
    init::check_apparmor(p)?;
    init::finish_and_exec(Final {
        process: p,
        personality: c.personality,
        seccomp: sec,
        exe: &exe,
        args,
        env: &env,
        self_id,
        setgroups_allowed,
        exec_marker: None,
    })
}
