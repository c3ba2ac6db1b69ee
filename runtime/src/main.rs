//! `rsrun`: runc's command line over the rsrun library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use rsrun::{log, CreateOpts, Runtime};

const USAGE: &str = "usage: rsrun [global options] COMMAND [options] [ARGS]

Global options:
  --root DIR            state directory (default /run/rsrun)
  --log FILE            log file (default: stderr)
  --log-format FORMAT   text or json
  --debug               debug logging
  --systemd-cgroup      use the systemd cgroup driver (not built: an error)
  --rootless VALUE      true|false|auto: ignore cgroup errors when no limits are set

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

Create options: --bundle B, --pid-file F, --console-socket S, --no-pivot,
  --no-new-keyring, --preserve-fds N

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
            ExitCode::from(1)
        }
    }
}

fn real_main(argv: Vec<String>) -> Result<i32> {
    let mut a = Args::new(argv);
    let mut g = Global {
        root: PathBuf::from(rsrun::state::DEFAULT_ROOT),
        rootless: false,
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
    if systemd {
        bail!("--systemd-cgroup: the systemd cgroup driver is not built into rsrun; use the cgroupfs driver");
    }
    let Some(cmd) = a.items.get(a.pos).cloned() else {
        bail!("no command given\n{USAGE}");
    };
    a.pos += 1;
    let rt = Runtime::new(g.root.clone(), g.rootless);
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
        "exec" | "ps" | "pause" | "resume" | "update" | "events" | "checkpoint" | "restore" => {
            bail!("command {cmd:?} is not implemented in this version of rsrun")
        }
        _ => bail!("unknown command {cmd:?}\n{USAGE}"),
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

fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("invalid signal number {n}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow!("unknown signal {s:?}"))
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
        [id] => (id.clone(), Signal::SIGTERM),
        [id, s] => (id.clone(), parse_signal(s)?),
        [] => bail!("kill: container ID required"),
        _ => bail!("kill: expected ID [SIGNAL]"),
    };
    rt.kill(&id, sig, all)?;
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
                serde_json::json!({
                    "ociVersion": s.oci_version, "id": s.id,
                    "pid": if *st == rsrun::state::Status::Stopped { 0 } else { s.pid },
                    "status": st.as_str(), "bundle": s.bundle, "rootfs": s.rootfs,
                    "created": s.created, "annotations": s.annotations, "owner": owner_name(s.owner)
                })
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
