//! `rsrun`: runc's command line over the rsrun library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use rsrun::{log, CreateOpts, Runtime};

const USAGE: &str = "usage: rsrun [global options] COMMAND [options] [ARGS]

Global options:
  --root DIR            state directory (default /run/rsrun; $XDG_RUNTIME_DIR/rsrun when
                        not root, or root in a user namespace with $USER not root)
  --log FILE            log file (default: stderr)
  --log-format FORMAT   text or json
  --debug               debug logging
  --systemd-cgroup      use the systemd cgroup driver: cgroupsPath slice:prefix:name is a
                        transient scope prefix-name.scope (cgroup v2 only)
  --rootless VALUE      true|false|auto (default auto: not root, or in a user namespace):
                        ignore cgroup errors when no limits are set

Commands:
  spec [--bundle B] [--rootless]              write a default config.json
  create [create options] ID                  create a container, ready to start
  start ID                                    start a created container
  run [-d] [--keep] [create options] ID       create and start (and wait unless -d)
  run BUNDLE/                                 run a bundle; the ID is its directory's name
  state ID                                    print the container's state (JSON)
  kill [--all] ID [SIGNAL]                    signal the container (default SIGTERM)
  delete [--force] ID                         delete a stopped container
  list [-f table|json] [-q]                   list containers
  features                                    what this runtime implements (JSON)
  exec [exec options] ID COMMAND [ARGS]       run a process in a running container
  pause ID | resume ID | ps ID | update ID | events ID

Create options: --bundle B, --pid-file F, --console-socket S, --no-pivot,
  --no-new-keyring, --preserve-fds N

Exec options: -p/--process FILE, -t/--tty, --console-socket S, --cwd DIR, -e/--env K=V,
  -u/--user UID[:GID], -g/--additional-gids G[,G], -c/--cap CAP, --no-new-privs,
  -d/--detach, --pid-file F, --preserve-fds N, --ignore-paused,
  --cgroup [CTRL[,CTRL]:]PATH, --apparmor PROFILE, --process-label (no SELinux: an error)

An argument to `run` that contains a `/` is a bundle path (container IDs cannot contain
`/`); anything else is a container ID with the bundle in --bundle or the current directory.";

/// A minimal runc/urfave-style flag parser: `--flag value`, `--flag=value`, `-flag value`.
struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    fn new(items: Vec<String>) -> Self {
        Args { items, pos: 0 }
    }

    /// The next flag, as (name without dashes, inline value), or None at the first
    /// positional argument (or after `--`).
    fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let a = self.items.get(self.pos)?;
        if a == "--" {
            self.pos += 1;
            return None;
        }
        if !a.starts_with('-') || a == "-" {
            return None;
        }
        self.pos += 1;
        let body = a.trim_start_matches('-');
        Some(match body.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        })
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self
            .items
            .get(self.pos)
            .cloned()
            .ok_or_else(|| anyhow!("flag --{name} needs a value"))?;
        self.pos += 1;
        Ok(v)
    }

    fn bool_value(inline: Option<String>, name: &str) -> Result<bool> {
        match inline.as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(v) => bail!("flag --{name}: invalid boolean {v:?}"),
        }
    }

    fn positional(&mut self) -> Vec<String> {
        let rest = self.items[self.pos..].to_vec();
        self.pos = self.items.len();
        rest
    }
}

struct Global {
    root: PathBuf,
    rootless: bool,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match real_main(argv) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("{e:#}");
            log::error(&msg);
            if log::to_file() {
                eprintln!("rsrun: {msg}");
            }
            ExitCode::from(EXEC_FAILURE_CODE.load(std::sync::atomic::Ordering::Relaxed))
        }
    }
}

/// runc exits 255 when `exec` itself fails (as opposed to the exec'd program's own status).
static EXEC_FAILURE_CODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);

fn real_main(argv: Vec<String>) -> Result<i32> {
    let mut a = Args::new(argv);
    let mut g = Global {
        root: default_root(),
        rootless: rsrun::lifecycle::rootless_auto(),
    };
    let mut log_path: Option<String> = None;
    let mut log_format = log::Format::Text;
    let mut debug = false;
    let mut systemd = false;
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "root" => g.root = PathBuf::from(a.value(&k, v)?),
            "log" => log_path = Some(a.value(&k, v)?),
            "log-format" => {
                log_format = match a.value(&k, v)?.as_str() {
                    "text" => log::Format::Text,
                    "json" => log::Format::Json,
                    f => bail!("--log-format: unknown format {f:?} (text or json)"),
                }
            }
            "debug" => debug = Args::bool_value(v, &k)?,
            "systemd-cgroup" => systemd = Args::bool_value(v, &k)?,
            "rootless" => {
                g.rootless = match v.as_deref() {
                    None | Some("true") => true,
                    Some("false") => false,
                    Some("auto") => !nix::unistd::geteuid().is_root(),
                    Some(x) => bail!("--rootless: invalid value {x:?} (true, false or auto)"),
                }
            }
            "criu" => {
                a.value(&k, v)?;
            }
            "h" | "help" => {
                println!("{USAGE}");
                return Ok(0);
            }
            "v" | "version" => {
                println!("rsrun version {}\nspec: 1.2.0", env!("CARGO_PKG_VERSION"));
                return Ok(0);
            }
            _ => bail!("unknown global flag --{k}\n{USAGE}"),
        }
    }
    log::init(log_path.as_deref(), log_format, debug)
        .with_context(|| format!("open log file {log_path:?}"))?;
    let Some(cmd) = a.items.get(a.pos).cloned() else {
        bail!("no command given\n{USAGE}");
    };
    a.pos += 1;
    if matches!(cmd.as_str(), "create" | "run" | "exec") {
        // These put a process of ours into a container: from a sealed binary only (this
        // re-execs, once, unless the binary already is).
        rsrun::seal::ensure_sealed()?;
    }
    let mut rt = Runtime::new(g.root.clone(), g.rootless);
    rt.systemd_cgroup = systemd;
    match cmd.as_str() {
        "spec" => cmd_spec(&mut a),
        "create" => {
            let (o, _, _) = create_opts(&mut a, false)?;
            rt.create(&o)?;
            Ok(0)
        }
        "run" => {
            let (o, detach, keep) = create_opts(&mut a, true)?;
            Ok(rt.run(&o, detach, keep)?)
        }
        "start" => {
            let id = one_id(&mut a, "start")?;
            rt.start(&id)?;
            Ok(0)
        }
        "state" => {
            let id = one_id(&mut a, "state")?;
            let v = rt.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(0)
        }
        "kill" => cmd_kill(&rt, &mut a),
        "delete" => {
            let mut force = false;
            while let Some((k, v)) = a.next_flag() {
                match k.as_str() {
                    "f" | "force" => force = Args::bool_value(v, &k)?,
                    _ => bail!("delete: unknown flag --{k}"),
                }
            }
            let ids = a.positional();
            if ids.is_empty() {
                bail!("delete: container ID required");
            }
            for id in ids {
                match rt.delete(&id, force) {
                    Ok(()) => {}
                    // Like runc: deleting a missing container with --force is not an error.
                    Err(rsrun::Error::NotFound(_)) if force => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(0)
        }
        "list" | "ps" if cmd == "list" => cmd_list(&rt, &mut a),
        "features" => {
            println!(
                "{}",
                serde_json::to_string_pretty(&rsrun::spec::features())?
            );
            Ok(0)
        }
        "ps" => cmd_ps(&rt, &mut a),
        "pause" => {
            let id = one_id(&mut a, "pause")?;
            rt.pause(&id)?;
            Ok(0)
        }
        "resume" => {
            let id = one_id(&mut a, "resume")?;
            rt.resume(&id)?;
            Ok(0)
        }
        "update" => cmd_update(&rt, &mut a),
        "events" => cmd_events(&rt, &mut a),
        "exec" => {
            EXEC_FAILURE_CODE.store(255, std::sync::atomic::Ordering::Relaxed);
            cmd_exec(&rt, &mut a)
        }
        "checkpoint" | "restore" => {
            bail!("command {cmd:?} is not implemented in this version of rsrun")
        }
        _ => bail!("unknown command {cmd:?}\n{USAGE}"),
    }
}

/// `exec [options] ID COMMAND [ARGS...]` (or `--process FILE` instead of the command).
fn cmd_exec(rt: &Runtime, a: &mut Args) -> Result<i32> {
    let mut o = rsrun::ExecOpts::default();
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "p" | "process" => o.process = Some(PathBuf::from(a.value(&k, v)?)),
            "t" | "tty" => o.tty = Args::bool_value(v, &k)?,
            "console-socket" => o.console_socket = Some(PathBuf::from(a.value(&k, v)?)),
            "cwd" => o.cwd = Some(a.value(&k, v)?),
            "e" | "env" => o.env.push(a.value(&k, v)?),
            "u" | "user" => o.user = Some(a.value(&k, v)?),
            "g" | "additional-gids" => o.additional_gids.push(a.value(&k, v)?),
            "c" | "cap" => o.caps.push(a.value(&k, v)?),
            "no-new-privs" => o.no_new_privs = Args::bool_value(v, &k)?,
            "d" | "detach" => o.detach = Args::bool_value(v, &k)?,
            "pid-file" => o.pid_file = Some(PathBuf::from(a.value(&k, v)?)),
            "preserve-fds" => {
                let s = a.value(&k, v)?;
                o.preserve_fds = s
                    .parse()
                    .with_context(|| format!("--preserve-fds: {s:?} is not a number"))?;
            }
            "ignore-paused" => o.ignore_paused = Args::bool_value(v, &k)?,
            "cgroup" => o.cgroups.push(a.value(&k, v)?),
            "apparmor" => o.apparmor = Some(a.value(&k, v)?),
            "process-label" => o.process_label = Some(a.value(&k, v)?),
            _ => bail!("exec: unknown flag --{k}"),
        }
    }
    let mut pos = a.positional().into_iter();
    o.id = pos
        .next()
        .ok_or_else(|| anyhow!("exec: container ID required"))?;
    o.args = pos.collect();
    if o.args.first().map(String::as_str) == Some("--") {
        o.args.remove(0);
    }
    Ok(rt.exec(&o)?)
}

/// /run/rsrun, or $XDG_RUNTIME_DIR/rsrun where runc takes $XDG_RUNTIME_DIR/runc: when not
/// root, and when root in a user namespace (not the node's) unless $USER says root. Rootless
/// Podman runs the runtime as root in its user namespace with XDG_RUNTIME_DIR set and no
/// --root: /run/rsrun is not its to write.
fn default_root() -> PathBuf {
    let honor = || {
        rsrun::lifecycle::rootless_auto()
            && (!nix::unistd::geteuid().is_root()
                || std::env::var_os("USER").is_none_or(|u| u != "root"))
    };
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() && honor() => PathBuf::from(x).join("rsrun"),
        _ => PathBuf::from(rsrun::state::DEFAULT_ROOT),
    }
}

fn one_id(a: &mut Args, cmd: &str) -> Result<String> {
    if let Some((k, _)) = a.next_flag() {
        bail!("{cmd}: unknown flag --{k}");
    }
    let p = a.positional();
    match p.as_slice() {
        [id] => Ok(id.clone()),
        [] => bail!("{cmd}: container ID required"),
        _ => bail!("{cmd}: expected one container ID, got {}", p.len()),
    }
}

fn create_opts(a: &mut Args, is_run: bool) -> Result<(CreateOpts, bool, bool)> {
    let mut o = CreateOpts::default();
    let mut bundle: Option<PathBuf> = None;
    let (mut detach, mut keep) = (false, false);
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "b" | "bundle" => bundle = Some(PathBuf::from(a.value(&k, v)?)),
            "pid-file" => o.pid_file = Some(PathBuf::from(a.value(&k, v)?)),
            "console-socket" => o.console_socket = Some(PathBuf::from(a.value(&k, v)?)),
            "no-pivot" => o.no_pivot = Args::bool_value(v, &k)?,
            "no-new-keyring" => o.no_new_keyring = Args::bool_value(v, &k)?,
            "preserve-fds" => {
                let s = a.value(&k, v)?;
                o.preserve_fds = s
                    .parse()
                    .with_context(|| format!("--preserve-fds: {s:?} is not a number"))?;
            }
            "d" | "detach" if is_run => detach = Args::bool_value(v, &k)?,
            "keep" if is_run => keep = Args::bool_value(v, &k)?,
            "no-subreaper" if is_run => {}
            _ => bail!("unknown flag --{k}"),
        }
    }
    let pos = a.positional();
    let arg = match pos.as_slice() {
        [x] => x.clone(),
        [] => bail!("container ID required"),
        _ => bail!("expected one container ID, got {}: {:?}", pos.len(), pos),
    };
    if is_run && bundle.is_none() && (arg.contains('/') || arg == "." || arg == "..") {
        // `rsrun run path/to/bundle/`: the ID is the bundle directory's name.
        let path = std::path::absolute(&arg).with_context(|| format!("bundle {arg}"))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("bundle {arg}"))?;
        o.id = id_from_dir(&path)?;
        o.bundle = path;
    } else {
        o.id = arg;
        o.bundle = bundle.unwrap_or_else(|| PathBuf::from("."));
    }
    Ok((o, detach, keep))
}

fn id_from_dir(p: &Path) -> Result<String> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            anyhow!(
                "bundle {} has no directory name to use as container ID",
                p.display()
            )
        })?;
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+-.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    rsrun::config::validate_id(&id)?;
    Ok(id)
}

fn cmd_spec(a: &mut Args) -> Result<i32> {
    let mut bundle = PathBuf::from(".");
    let mut rootless = false;
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "b" | "bundle" => bundle = PathBuf::from(a.value(&k, v)?),
            "rootless" => rootless = Args::bool_value(v, &k)?,
            _ => bail!("spec: unknown flag --{k}"),
        }
    }
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("spec: {} already exists; remove it first", path.display());
    }
    let text = serde_json::to_string_pretty(&rsrun::spec::default_spec(rootless))?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(0)
}

fn cmd_kill(rt: &Runtime, a: &mut Args) -> Result<i32> {
    let mut all = false;
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "a" | "all" => all = Args::bool_value(v, &k)?,
            _ => bail!("kill: unknown flag --{k}"),
        }
    }
    let p = a.positional();
    let (id, sig) = match p.as_slice() {
        [id] => (id.clone(), "TERM"),
        [id, s] => (id.clone(), s.as_str()),
        [] => bail!("kill: container ID required"),
        _ => bail!("kill: expected ID [SIGNAL]"),
    };
    if sig == "0" && all {
        // Nothing is signalled; --all never fails on a stopped container.
        rt.state(&id)?;
        return Ok(0);
    }
    if sig == "0" {
        // Signal 0 only asks whether the container still runs (as kill(2) and runc).
        let st = rt.state(&id)?;
        if st["status"] == "stopped" {
            bail!("container not running: {id} is stopped");
        }
        return Ok(0);
    }
    rt.kill(&id, rsrun::signal::Signal::parse(sig)?, all)?;
    Ok(0)
}

fn cmd_list(rt: &Runtime, a: &mut Args) -> Result<i32> {
    let mut json = false;
    let mut quiet = false;
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "f" | "format" => {
                json = match a.value(&k, v)?.as_str() {
                    "json" => true,
                    "table" => false,
                    f => bail!("list: unknown format {f:?} (table or json)"),
                }
            }
            "q" | "quiet" => quiet = Args::bool_value(v, &k)?,
            _ => bail!("list: unknown flag --{k}"),
        }
    }
    let all = rt.list()?;
    if quiet {
        for (s, _) in &all {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|(s, st)| {
                let mut o = serde_json::json!({
                    "ociVersion": s.oci_version, "id": s.id,
                    "pid": if *st == rsrun::state::Status::Stopped { 0 } else { s.pid },
                    "status": st.as_str(), "bundle": s.bundle, "rootfs": s.rootfs,
                    "created": s.created, "owner": owner_name(s.owner)
                });
                // runc's field order, annotations only when there are some.
                if !s.annotations.is_empty() {
                    let owner = o.as_object_mut().and_then(|m| m.remove("owner"));
                    o["annotations"] = serde_json::to_value(&s.annotations).unwrap_or_default();
                    if let Some(owner) = owner {
                        o["owner"] = owner;
                    }
                }
                o
            })
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(0);
    }
    println!(
        "{:<12} {:<10} {:<10} {:<40} {:<31} OWNER",
        "ID", "PID", "STATUS", "BUNDLE", "CREATED"
    );
    for (s, st) in &all {
        let pid = if *st == rsrun::state::Status::Stopped {
            0
        } else {
            s.pid
        };
        println!(
            "{:<12} {:<10} {:<10} {:<40} {:<31} {}",
            s.id,
            pid,
            st.as_str(),
            s.bundle.display(),
            s.created,
            owner_name(s.owner)
        );
    }
    Ok(0)
}

fn owner_name(uid: u32) -> String {
    // /etc/passwd directly: the release binary is static, without NSS modules.
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("#{uid}"))
}

/// `ps [-f table|json] ID [PS ARGS]`: the container's processes. json: their PIDs; table:
/// the host's `ps` (default `-ef`) filtered to them, as runc does.
fn cmd_ps(rt: &Runtime, a: &mut Args) -> Result<i32> {
    let mut json = false;
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "f" | "format" => {
                json = match a.value(&k, v)?.as_str() {
                    "json" => true,
                    "table" => false,
                    f => bail!("ps: unknown format {f:?} (table or json)"),
                }
            }
            _ => bail!("ps: unknown flag --{k}"),
        }
    }
    let pos = a.positional();
    let Some(id) = pos.first() else {
        bail!("ps: container ID required");
    };
    let mut ps_args: Vec<String> = pos[1..].to_vec();
    if ps_args.first().map(String::as_str) == Some("--") {
        ps_args.remove(0);
    }
    let pids = rt.processes(id)?;
    if json {
        if !ps_args.is_empty() {
            bail!("ps: ps arguments cannot be combined with --format json");
        }
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    if ps_args.is_empty() {
        ps_args.push("-ef".into());
    }
    let out = std::process::Command::new("ps")
        .args(&ps_args)
        .output()
        .with_context(|| format!("ps: run `ps {}`", ps_args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ps: `ps {}` failed: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let Some(col) = header.split_whitespace().position(|h| h == "PID") else {
        bail!(
            "ps: the output of `ps {}` has no PID column",
            ps_args.join(" ")
        );
    };
    println!("{header}");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{l}");
        }
    }
    Ok(0)
}

/// A byte count as runc's update accepts it: "-1", "1048576", "512m", "1.5g", "1GiB".
fn parse_bytes(flag: &str, s: &str) -> Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let t = t.strip_suffix('i').unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some('p') => (&t[..t.len() - 1], 1 << 50),
        _ => (t, 1),
    };
    let num = num.trim();
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0 && !num.starts_with('+'))
        .ok_or_else(|| {
            anyhow!(
                "--{flag}: invalid size {s:?} (bytes, or with k, m, g, t suffix; -1 for no limit)"
            )
        })?;
    let bytes = v * mult as f64;
    if bytes > i64::MAX as f64 {
        bail!("--{flag}: {s:?} is too large");
    }
    Ok(bytes as i64)
}

/// `update [flags] ID` or `update -r FILE|- ID`: changes the container's limits.
fn cmd_update(rt: &Runtime, a: &mut Args) -> Result<i32> {
    let mut file: Option<String> = None;
    let mut mem = serde_json::Map::new();
    let mut cpu = serde_json::Map::new();
    let mut res = serde_json::Map::new();
    let num = |flag: &str, s: &str| -> Result<i64> {
        s.parse::<i64>()
            .map_err(|_| anyhow!("--{flag}: {s:?} is not a number"))
    };
    let unsigned = |flag: &str, s: &str| -> Result<u64> {
        s.parse::<u64>()
            .map_err(|_| anyhow!("--{flag}: {s:?} is not a non-negative number"))
    };
    // Flags may also follow the container ID (runc accepts `update ID --memory X`).
    let mut pos = Vec::new();
    loop {
        let Some((k, v)) = a.next_flag() else {
            match a.items.get(a.pos).cloned() {
                Some(x) => {
                    pos.push(x);
                    a.pos += 1;
                    continue;
                }
                None => break,
            }
        };
        let flag = k.clone();
        match k.as_str() {
            "r" | "resources" => file = Some(a.value(&k, v)?),
            "memory" | "memory-swap" | "memory-reservation" | "kernel-memory"
            | "kernel-memory-tcp" => {
                let n = parse_bytes(&flag, &a.value(&k, v)?)?;
                let key = match k.as_str() {
                    "memory" => "limit",
                    "memory-swap" => "swap",
                    "memory-reservation" => "reservation",
                    "kernel-memory" => "kernel",
                    _ => "kernelTCP",
                };
                mem.insert(key.into(), n.into());
            }
            // runc's flag is --cpu-share; --cpu-shares is accepted too.
            "cpu-share" | "cpu-shares" => {
                cpu.insert("shares".into(), unsigned(&flag, &a.value(&k, v)?)?.into());
            }
            "cpu-quota" => {
                cpu.insert("quota".into(), num(&flag, &a.value(&k, v)?)?.into());
            }
            "cpu-period" => {
                cpu.insert("period".into(), unsigned(&flag, &a.value(&k, v)?)?.into());
            }
            // runc's too: burst (µs above the quota) and SCHED_IDLE for the cgroup (0 or 1).
            "cpu-burst" => {
                cpu.insert("burst".into(), unsigned(&flag, &a.value(&k, v)?)?.into());
            }
            "cpu-idle" => {
                let s = a.value(&k, v)?;
                let i: i64 = match s.as_str() {
                    "0" => 0,
                    "1" => 1,
                    _ => bail!("--cpu-idle: {s:?} is not 0 or 1"),
                };
                cpu.insert("idle".into(), i.into());
            }
            "cpu-rt-runtime" => {
                cpu.insert(
                    "realtimeRuntime".into(),
                    num(&flag, &a.value(&k, v)?)?.into(),
                );
            }
            "cpu-rt-period" => {
                cpu.insert(
                    "realtimePeriod".into(),
                    unsigned(&flag, &a.value(&k, v)?)?.into(),
                );
            }
            "cpuset-cpus" => {
                cpu.insert("cpus".into(), a.value(&k, v)?.into());
            }
            "cpuset-mems" => {
                cpu.insert("mems".into(), a.value(&k, v)?.into());
            }
            "pids-limit" => {
                res.insert(
                    "pids".into(),
                    serde_json::json!({"limit": num(&flag, &a.value(&k, v)?)?}),
                );
            }
            "blkio-weight" => {
                let s = a.value(&k, v)?;
                let w: u16 = s
                    .parse()
                    .map_err(|_| anyhow!("--blkio-weight: {s:?} is not a weight (10 to 1000)"))?;
                res.insert("blockIO".into(), serde_json::json!({"weight": w}));
            }
            "l3-cache-schema" | "mem-bw-schema" => {
                bail!("update: --{k}: Intel RDT is not supported by rsrun")
            }
            _ => bail!("update: unknown flag --{k}"),
        }
    }
    let id = match pos.as_slice() {
        [id] => id.clone(),
        [] => bail!("update: container ID required"),
        _ => bail!("update: expected one container ID, got {}", pos.len()),
    };
    if !mem.is_empty() {
        res.insert("memory".into(), mem.into());
    }
    if !cpu.is_empty() {
        res.insert("cpu".into(), cpu.into());
    }
    let (text, source) = match &file {
        Some(_) if !res.is_empty() => {
            bail!("update: -r/--resources cannot be combined with other limit flags")
        }
        Some(f) if f == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("update: read resources from stdin")?;
            (s, "stdin".to_string())
        }
        Some(f) => (
            std::fs::read_to_string(f).with_context(|| format!("update: read {f}"))?,
            f.clone(),
        ),
        None if res.is_empty() => bail!("update: nothing to update (give limit flags or -r FILE)"),
        None => (serde_json::Value::Object(res).to_string(), "flags".into()),
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    let r: oci_spec::runtime::LinuxResources =
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            anyhow!(
                "update: resources from {source}: {}: {}",
                e.path(),
                e.inner()
            )
        })?;
    rt.update(&id, &r)?;
    Ok(0)
}

/// A duration as runc's --interval takes it: "5s", "500ms", "1m", "1.5s".
fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let v: f64 = num
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .ok_or_else(|| anyhow!("--interval: invalid duration {s:?} (e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "ns" => v / 1e9,
        "us" | "µs" => v / 1e6,
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => bail!("--interval: unknown unit in {s:?} (ns, us, ms, s, m, h)"),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `events [--stats] [--interval D] ID`: runc's JSON events, one per line.
fn cmd_events(rt: &Runtime, a: &mut Args) -> Result<i32> {
    let mut once = false;
    let mut interval = std::time::Duration::from_secs(5);
    while let Some((k, v)) = a.next_flag() {
        match k.as_str() {
            "stats" => once = Args::bool_value(v, &k)?,
            "interval" => interval = parse_duration(&a.value(&k, v)?)?,
            _ => bail!("events: unknown flag --{k}"),
        }
    }
    let pos = a.positional();
    let id = match pos.as_slice() {
        [id] => id.clone(),
        [] => bail!("events: container ID required"),
        _ => bail!("events: expected one container ID, got {}", pos.len()),
    };
    rt.events(&id, interval, once, &mut |ev| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let line = serde_json::to_string(&ev)
            .map_err(|e| rsrun::Error::Invalid(format!("encode event: {e}")))?;
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| rsrun::Error::os("write event to stdout", e))
    })?;
    Ok(0)
}
