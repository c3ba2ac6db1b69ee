//! `rsrun-image`: the operator's command for the image store (like `ctr images`).

use anyhow::{anyhow, bail, Context, Result};
use rsrun_image::{
    AuthFile, Cancel, Credentials, ImageStore, LayerEvent, Platform, Progress, PullOptions,
    RegistryConfig,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: rsrun-image [--root DIR] [--config FILE] COMMAND [ARGS]

commands:
  pull [--creds USER:PASS] [--auth-file FILE] [--platform OS/ARCH[/VARIANT]]
       [--plain-http] [--timeout SECONDS] [--progress-timeout SECONDS]
       [--concurrency N] [-q] IMAGE
                         pull and unpack an image; prints its ID. --timeout: overall
                         deadline (none by default); --progress-timeout: fail when no
                         byte arrives for that long (default 300, 0 = never)
  list [-q]              list images (ID, size, tags)
  inspect IMAGE          record, manifest and config as JSON
  remove IMAGE...        remove by tag, ID or digest (missing ones succeed)
  prune                  delete blobs and snapshots nothing references
  mount [--rw] IMAGE DIR mount the image's rootfs at DIR (read-only unless --rw)
  unmount DIR            unmount it (and drop --rw changes)
  fsinfo                 image and container filesystem usage as JSON

--root defaults to $RSRUN_IMAGE_ROOT or /var/lib/rsrun/images; --config (registry
mirrors, insecure hosts, CAs; JSON, see docs/image-store.md) to $RSRUN_REGISTRY_CONFIG
or /etc/rsrun/registries.json when it exists.";

fn main() {
    if let Err(e) = run() {
        // Registry text in the message is escaped by the library; escape again here so
        // that nothing in an error can drive the operator's terminal.
        eprintln!(
            "rsrun-image: {}",
            rsrun_image::text::clean_unbounded(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

fn take_value(args: &mut Vec<String>, i: usize, flag: &str) -> Result<String> {
    if i + 1 >= args.len() {
        bail!("{flag} needs a value");
    }
    args.remove(i);
    Ok(args.remove(i))
}

fn run() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut root =
        std::env::var("RSRUN_IMAGE_ROOT").unwrap_or_else(|_| rsrun_image::DEFAULT_ROOT.to_string());
    let mut config_path = std::env::var("RSRUN_REGISTRY_CONFIG").ok();
    while let Some(a) = args.first().cloned() {
        match a.as_str() {
            "--root" => root = take_value(&mut args, 0, "--root")?,
            "--config" => config_path = Some(take_value(&mut args, 0, "--config")?),
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ if a.starts_with('-') => bail!("unknown option {a}\n{USAGE}"),
            _ => break,
        }
    }
    if args.is_empty() {
        bail!("no command given\n{USAGE}");
    }
    let cmd = args.remove(0);
    let mut config = match &config_path {
        Some(p) => RegistryConfig::load(Path::new(p))?,
        None if Path::new("/etc/rsrun/registries.json").exists() => {
            RegistryConfig::load(Path::new("/etc/rsrun/registries.json"))?
        }
        None => RegistryConfig::default(),
    };
    match cmd.as_str() {
        "pull" => {
            let mut opts = PullOptions::default();
            let mut quiet = false;
            let mut i = 0;
            let mut plain_http = false;
            while i < args.len() {
                match args[i].as_str() {
                    "--creds" | "-u" => {
                        opts.credentials = Some(Credentials::parse_user_pass(&take_value(
                            &mut args, i, "--creds",
                        )?)?)
                    }
                    "--auth-file" => {
                        let p = take_value(&mut args, i, "--auth-file")?;
                        opts.auth_file = Some(AuthFile::load(Path::new(&p))?);
                    }
                    "--platform" => {
                        opts.platform = Platform::parse(&take_value(&mut args, i, "--platform")?)?
                    }
                    "--timeout" => {
                        let v = take_value(&mut args, i, "--timeout")?;
                        let secs: f64 = v
                            .parse()
                            .ok()
                            .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                            .ok_or_else(|| anyhow!("--timeout {v:?} is not a number of seconds"))?;
                        opts.cancel =
                            Cancel::with_deadline(Instant::now() + Duration::from_secs_f64(secs));
                    }
                    "--progress-timeout" => {
                        let v = take_value(&mut args, i, "--progress-timeout")?;
                        let secs: f64 = v
                            .parse()
                            .ok()
                            .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                            .ok_or_else(|| {
                                anyhow!("--progress-timeout {v:?} is not a number of seconds")
                            })?;
                        opts.progress_timeout = (secs > 0.0).then(|| Duration::from_secs_f64(secs));
                    }
                    "--concurrency" => {
                        let v = take_value(&mut args, i, "--concurrency")?;
                        opts.concurrency = v
                            .parse()
                            .map_err(|_| anyhow!("--concurrency {v:?} is not a number"))?;
                    }
                    "--plain-http" => {
                        args.remove(i);
                        plain_http = true;
                    }
                    "-q" | "--quiet" => {
                        args.remove(i);
                        quiet = true;
                    }
                    a if a.starts_with('-') => bail!("pull: unknown option {a}"),
                    _ => i += 1,
                }
            }
            let [image] = args.as_slice() else {
                bail!("pull needs exactly one IMAGE")
            };
            if plain_http {
                let r = rsrun_image::Reference::parse(image)?;
                config.set_insecure(&r.domain);
            }
            let store = ImageStore::open(&root, config)?;
            let tty = !quiet && rsrun_image_isatty();
            let progress = tty.then(|| Arc::new(TtyProgress::new()));
            if let Some(p) = &progress {
                opts.progress = Some(p.clone() as Arc<dyn Progress>);
            }
            let start = Instant::now();
            let img = store
                .pull(image, &opts)
                .with_context(|| format!("pulling {image}"))?;
            if let Some(p) = &progress {
                p.draw(true);
                eprintln!("pulled {image} in {:.2}s", start.elapsed().as_secs_f64());
            }
            println!("{}", img.id);
        }
        "list" | "ls" => {
            let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");
            let store = ImageStore::open(&root, config)?;
            let mut imgs = store.list()?;
            imgs.sort_by_key(|i| std::cmp::Reverse(i.created));
            if quiet {
                for i in imgs {
                    println!("{}", i.id);
                }
            } else {
                println!(
                    "{:<14} {:>10} {:<12} TAGS / DIGESTS",
                    "IMAGE ID", "SIZE", "PLATFORM"
                );
                for i in imgs {
                    let names = if i.repo_tags.is_empty() {
                        i.repo_digests.join(",")
                    } else {
                        i.repo_tags.join(",")
                    };
                    println!(
                        "{:<14} {:>10} {:<12} {}",
                        &i.id.hex()[..12],
                        human(i.size),
                        i.platform,
                        names
                    );
                }
            }
        }
        "inspect" => {
            let [image] = args.as_slice() else {
                bail!("inspect needs exactly one IMAGE")
            };
            let store = ImageStore::open(&root, config)?;
            let i = store.inspect(image)?;
            println!("{}", serde_json::to_string_pretty(&i)?);
        }
        "remove" | "rm" | "rmi" => {
            if args.is_empty() {
                bail!("remove needs at least one IMAGE");
            }
            let store = ImageStore::open(&root, config)?;
            for a in &args {
                if store.remove(a)? {
                    println!("removed {a}");
                }
            }
        }
        "prune" => {
            let store = ImageStore::open(&root, config)?;
            let s = store.prune()?;
            println!(
                "removed {} blobs, {} snapshots, {} temp entries; freed {}",
                s.blobs_removed,
                s.snapshots_removed,
                s.temp_removed,
                human(s.bytes_freed)
            );
        }
        "mount" => {
            let rw = args.iter().any(|a| a == "--rw");
            args.retain(|a| a != "--rw");
            let [image, dir] = args.as_slice() else {
                bail!("mount needs IMAGE DIR")
            };
            let store = ImageStore::open(&root, config)?;
            store.mount_image(image, &PathBuf::from(dir), rw)?;
        }
        "unmount" | "umount" => {
            let [dir] = args.as_slice() else {
                bail!("unmount needs DIR")
            };
            let store = ImageStore::open(&root, config)?;
            store.unmount_image(&PathBuf::from(dir))?;
        }
        "fsinfo" => {
            let store = ImageStore::open(&root, config)?;
            let v = serde_json::json!({ "image_fs": store.fs_info()?, "container_fs": store.container_fs_info()? });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}

fn rsrun_image_isatty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

fn human(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", units[u])
    }
}

struct LayerLine {
    size: u64,
    done: u64,
    started: Instant,
    state: &'static str,
}

/// Per-layer bytes and rate, redrawn in place on a terminal.
struct TtyProgress {
    layers: Mutex<(BTreeMap<String, LayerLine>, usize, Instant)>,
}

impl TtyProgress {
    fn new() -> TtyProgress {
        TtyProgress {
            layers: Mutex::new((BTreeMap::new(), 0, Instant::now() - Duration::from_secs(1))),
        }
    }

    fn draw(&self, force: bool) {
        let mut g = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        let (layers, drawn, last) = &mut *g;
        if !force && last.elapsed() < Duration::from_millis(100) {
            return;
        }
        *last = Instant::now();
        let mut out = String::new();
        if *drawn > 0 {
            out.push_str(&format!("\x1b[{drawn}A"));
        }
        for (d, l) in layers.iter() {
            let secs = l.started.elapsed().as_secs_f64().max(0.001);
            out.push_str(&format!(
                "\x1b[2K{} {:<11} {:>9} / {:<9} {:>9}/s\n",
                &d[7..19],
                l.state,
                human(l.done),
                human(l.size),
                human((l.done as f64 / secs) as u64)
            ));
        }
        *drawn = layers.len();
        let _ = std::io::stderr().write_all(out.as_bytes());
    }
}

impl Progress for TtyProgress {
    fn event(&self, ev: LayerEvent) {
        {
            let mut g = self.layers.lock().unwrap_or_else(|p| p.into_inner());
            match ev {
                LayerEvent::Start { digest, size } => {
                    g.0.insert(
                        digest.to_string(),
                        LayerLine {
                            size,
                            done: 0,
                            started: Instant::now(),
                            state: "downloading",
                        },
                    );
                }
                LayerEvent::Bytes { digest, done } => {
                    if let Some(l) = g.0.get_mut(digest.as_str()) {
                        l.done = done;
                    }
                }
                LayerEvent::Done { digest, cached } => {
                    let l = g.0.entry(digest.to_string()).or_insert(LayerLine {
                        size: 0,
                        done: 0,
                        started: Instant::now(),
                        state: "",
                    });
                    l.state = if cached { "exists" } else { "done" };
                    if !cached {
                        l.done = l.size;
                    }
                }
            }
        }
        self.draw(false);
    }
}
