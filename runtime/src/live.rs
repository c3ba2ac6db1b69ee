//! Operations on a live container's cgroup: update, pause/resume, stats and events, OOM
//! kills, the list of processes.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use crate::cgroups::Manager;
use crate::error::{Error, Result};
use crate::lifecycle::Runtime;
use crate::state::{ContainerDir, Saved, Status};

/// What `events` reports: runc's `{"type": "stats"|"oom", "id": ..., "data": ...}`.
pub fn event(kind: &str, id: &str, data: Option<Value>) -> Value {
    let mut v = json!({"type": kind, "id": id});
    if let Some(d) = data {
        v["data"] = d;
    }
    v
}

/// The OOM kills of one container, counted as they happen. The count in the cgroup's files
/// is gone with the cgroup, and a cgroup can go as soon as its last process exits (systemd
/// removes a scope's when it empties): a monitor polls `fd` and calls `refresh` when it is
/// readable and when the container exits, and `killed` keeps the answer after that.
///
/// When even that comes too late (the monitor starved of CPU while systemd removed the
/// emptied cgroup), `killed` asks the kernel's log: each OOM kill is printed there with the
/// victim's cgroup (`oom-kill:...,task_memcg=PATH,task=...`).
#[derive(Default)]
pub struct OomWatch {
    m: Option<Manager>,
    inotify: Option<Inotify>,
    /// (oom_kill, oom) when the watch began, and the highest seen since.
    base: (u64, u64),
    seen: (u64, u64),
    /// The CLOCK_MONOTONIC time in µs when the watch began, after which a kernel log record
    /// must be stamped (set with `inotify`).
    since_us: Option<u64>,
}

impl OomWatch {
    /// Readable when the kernel announced an OOM event (cgroup v2 with the systemd driver);
    /// None otherwise, where the cgroup stays until the container is deleted.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Reads the counts again; the highest counts seen are kept.
    pub fn refresh(&mut self) {
        if let Some(i) = &self.inotify {
            while matches!(i.read_events(), Ok(ev) if !ev.is_empty()) {}
        }
        if let Some(m) = &self.m {
            self.seen.0 = self.seen.0.max(m.oom_kill_count());
            self.seen.1 = self.seen.1.max(m.oom_event_count());
        }
    }

    /// Whether the OOM killer killed a process of the container since the watch began. The
    /// kernel announces the limit being hit (oom) before it counts the kill (oom_kill), and
    /// the cgroup may be gone by the next read: an init that died of SIGKILL after an oom
    /// event counts as killed too.
    pub fn killed(&self, sigkilled: bool) -> bool {
        if self.seen.0 > self.base.0 || (sigkilled && self.seen.1 > self.base.1) {
            return true;
        }
        // The files are gone with the cgroup before they could be read: the kernel's log,
        // which names the cgroup by its path in the hierarchy (worked out only here, on
        // this rare path).
        let (Some(since), Some(f)) = (
            self.since_us,
            self.m.as_ref().and_then(|m| m.oom_events_file()),
        ) else {
            return false;
        };
        sigkilled
            && !f.exists()
            && f.parent()
                .and_then(hierarchy_path)
                .is_some_and(|cg| kmsg_oom_kill(&cg, since.saturating_sub(KMSG_SLACK_US)))
    }
}

/// How far before the watch began a kernel log record may be stamped and still count: the
/// log's clock (local_clock) and CLOCK_MONOTONIC drift apart by a little.
const KMSG_SLACK_US: u64 = 1_000_000;

fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

/// Whether /dev/kmsg holds an OOM kill of a process in `cgroup` (a path in its hierarchy,
/// "/a/b.scope") or below it, stamped at or after `since` (µs): the kill its memory.events
/// would have counted. False when the log cannot be read or no longer holds the record.
fn kmsg_oom_kill(cgroup: &str, since: u64) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    {
        Ok(f) => f,
        Err(e) => {
            crate::log::warn(&format!("cannot read /dev/kmsg for OOM kills ({e})"));
            return false;
        }
    };
    // One record per read; the kernel's records are at most 1 KiB of text plus their
    // dictionary.
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if kmsg_record_is_oom_kill(&String::from_utf8_lossy(&buf[..n]), cgroup, since) {
                    return true;
                }
            }
            // EPIPE: records were overwritten under the reader; the next read goes on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            // EAGAIN: the end of the log.
            Err(_) => return false,
        }
    }
}

/// One /dev/kmsg record, "PRIO,SEQ,TIME_US,FLAGS;oom-kill:...,task_memcg=PATH,task=NAME,..."
/// (the message's first line; dictionary lines follow).
fn kmsg_record_is_oom_kill(rec: &str, cgroup: &str, since: u64) -> bool {
    let Some((head, msg)) = rec.split_once(';') else {
        return false;
    };
    let Some(msg) = msg.lines().next().and_then(|m| m.strip_prefix("oom-kill:")) else {
        return false;
    };
    let Some(ts) = head.split(',').nth(2).and_then(|t| t.parse::<u64>().ok()) else {
        return false;
    };
    // The victim's cgroup, where memory.events counts the kill (whichever limit was hit).
    let Some(memcg) = msg
        .split_once(",task_memcg=")
        .and_then(|(_, r)| r.rsplit_once(",task=").map(|(m, _)| m))
    else {
        return false;
    };
    let cgroup = cgroup.trim_end_matches('/');
    ts >= since
        && !cgroup.is_empty()
        && (memcg == cgroup
            || memcg
                .strip_prefix(cgroup)
                .is_some_and(|r| r.starts_with('/')))
}

/// A cgroup v2 directory's path in its hierarchy ("/test.slice/x.scope"), as the kernel
/// names cgroups in its log.
fn hierarchy_path(dir: &std::path::Path) -> Option<String> {
    let h = crate::cgroups::hierarchies().ok()?;
    let h = h.iter().find(|h| h.v2 && dir.starts_with(&h.mountpoint))?;
    let rel = dir.strip_prefix(&h.mountpoint).ok()?;
    let root = std::path::Path::new(if h.root.is_empty() { "/" } else { &h.root });
    Some(root.join(rel).to_string_lossy().into_owned())
}

impl Runtime {
    fn saved(&self, id: &str) -> Result<(Saved, Status)> {
        let dir = ContainerDir::new(&self.root, id)?;
        let saved = dir.load()?.ok_or_else(|| Error::State {
            id: id.into(),
            status: "creating".into(),
            what: "not created yet".into(),
        })?;
        let st = saved.status(&dir);
        Ok((saved, st))
    }

    fn live(&self, id: &str, what: &str) -> Result<(Saved, Status, Manager)> {
        let (saved, st) = self.saved(id)?;
        if st == Status::Stopped {
            return Err(Error::State {
                id: id.into(),
                status: st.to_string(),
                what: format!("cannot {what} a stopped container"),
            });
        }
        let m = Manager::new(&saved.cgroup_paths)?;
        Ok((saved, st, m))
    }

    /// `update`: changes the limits of a created, running or paused container. Only the
    /// fields present change; if one write fails the others are restored.
    pub fn update(&self, id: &str, r: &LinuxResources) -> Result<()> {
        let (saved, _, m) = self.live(id, "update")?;
        let Some(u) = &saved.systemd_unit else {
            return m.update(r);
        };
        // The files first (every check, the usage one included, before anything changes),
        // then systemd's properties: a refused update leaves the unit as it was, and one that
        // systemd refuses restores the files.
        let props = crate::cgroups::systemd::properties(Some(r))?;
        m.update_then(r, || crate::cgroups::systemd::set_properties(u, props))
    }

    /// `pause`: freezes every process of a running or created container (as runc: a created
    /// one reads "paused" until resumed, then "created" again, and cannot start meanwhile).
    pub fn pause(&self, id: &str) -> Result<()> {
        let (_, st, m) = self.live(id, "pause")?;
        if st != Status::Running && st != Status::Created {
            return Err(Error::State {
                id: id.into(),
                status: st.to_string(),
                what: "only a running or created container can be paused".into(),
            });
        }
        m.freeze()
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let (_, st, m) = self.live(id, "resume")?;
        if st != Status::Paused {
            return Err(Error::State {
                id: id.into(),
                status: st.to_string(),
                what: "only a paused container can be resumed".into(),
            });
        }
        m.thaw()
    }

    /// Resource usage in runc's stats shape (the `data` of a stats event).
    pub fn stats(&self, id: &str) -> Result<Value> {
        let (_, _, m) = self.live(id, "read the stats of")?;
        Ok(m.stats())
    }

    /// How many of the container's processes the OOM killer killed. Works until `delete`,
    /// also after the container stopped, so a caller can report reason OOMKilled.
    pub fn oom_kill_count(&self, id: &str) -> Result<u64> {
        let (saved, _) = self.saved(id)?;
        Ok(Manager::new(&saved.cgroup_paths)?.oom_kill_count())
    }

    /// A watch on the container's OOM kills that outlives its cgroup (see `OomWatch`).
    pub fn oom_watch(&self, id: &str) -> Result<OomWatch> {
        let (saved, _) = self.saved(id)?;
        // (A rootless container may have no cgroup: then no count, and no kills seen.)
        if saved.cgroup_paths.is_empty() {
            return Ok(OomWatch::default());
        }
        let m = Manager::new(&saved.cgroup_paths)?;
        // Only where the cgroup can go before the exit is read (systemd's scopes): an
        // inotify instance per container counts against fs.inotify.max_user_instances.
        let inotify = match (&saved.systemd_unit, m.oom_events_file()) {
            (Some(_), Some(f)) => {
                let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                    .and_then(|i| i.add_watch(&f, AddWatchFlags::IN_MODIFY).map(|_| i));
                match watch {
                    Ok(i) => Some(i),
                    // (No memory controller in the cgroup: no file, and nothing to watch.)
                    Err(Errno::ENOENT) => None,
                    Err(e) => {
                        crate::log::warn(&format!(
                            "{id}: cannot watch {} ({e}): an OOM kill is seen only if the cgroup is still there at the exit",
                            f.display()
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        let since_us = inotify.as_ref().map(|_| monotonic_us());
        let base = (m.oom_kill_count(), m.oom_event_count());
        Ok(OomWatch {
            m: Some(m),
            inotify,
            base,
            seen: base,
            since_us,
        })
    }

    /// Whether a process of the container was OOM-killed (see `oom_kill_count`).
    pub fn oom_killed(&self, id: &str) -> Result<bool> {
        Ok(self.oom_kill_count(id)? > 0)
    }

    /// Host PIDs of every process in the container's cgroup (and its sub-cgroups).
    pub fn processes(&self, id: &str) -> Result<Vec<i32>> {
        // A stopped container: what its cgroup still holds (without a PID namespace of its
        // own, what the init left runs on), else an empty list, as runc prints.
        let dir = crate::state::ContainerDir::new(&self.root, id)?;
        if let Ok(saved) = crate::lifecycle::load(&dir) {
            if saved.status(&dir) == crate::state::Status::Stopped {
                return Ok(crate::cgroups::Manager::new(&saved.cgroup_paths)
                    .map(|m| m.all_pids())
                    .unwrap_or_default());
            }
        }
        let (_, _, m) = self.live(id, "list the processes of")?;
        Ok(m.all_pids())
    }

    /// `events`: with `once`, one stats event; otherwise a stats event every `interval` and
    /// an oom event whenever the OOM killer strikes, until the container stops.
    pub fn events(
        &self,
        id: &str,
        interval: Duration,
        once: bool,
        out: &mut dyn FnMut(Value) -> Result<()>,
    ) -> Result<()> {
        let (_, _, m) = self.live(id, "watch the events of")?;
        if once {
            return out(event("stats", id, Some(m.stats())));
        }
        let mut ooms = m.oom_kill_count();
        let mut under_oom = m.oom_seen();
        let mut next = Instant::now();
        loop {
            let (_, st) = self.saved(id)?;
            let n = m.oom_kill_count();
            let seen = m.oom_seen();
            if n > ooms || (seen && !under_oom && n == ooms) {
                out(event("oom", id, None))?;
            }
            ooms = n;
            under_oom = seen;
            if st == Status::Stopped {
                return Ok(());
            }
            if Instant::now() >= next {
                out(event("stats", id, Some(m.stats())))?;
                next = Instant::now() + interval;
            }
            std::thread::sleep(Duration::from_millis(100).min(interval));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kmsg_record_is_oom_kill;

    // As the kernel prints them (mm/oom_kill.c dump_oom_victim), a memcg and a global OOM.
    const MEMCG: &str = "6,1523,5000000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),\
cpuset=rsrun-a.scope,mems_allowed=0-1,oom_memcg=/t.slice/rsrun-a.scope,\
task_memcg=/t.slice/rsrun-a.scope/sub,task=tail,pid=1234,uid=0\n SUBSYSTEM=x\n";
    const GLOBAL: &str = "6,9,7000000,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),\
cpuset=/,mems_allowed=0,global_oom,task_memcg=/t.slice/rsrun-b.scope,task=x,pid=9,uid=0\n";

    #[test]
    fn a_kill_counts_for_the_victims_cgroup_and_its_ancestors_only() {
        assert!(kmsg_record_is_oom_kill(MEMCG, "/t.slice/rsrun-a.scope", 0));
        assert!(kmsg_record_is_oom_kill(MEMCG, "/t.slice/rsrun-a.scope/", 0));
        assert!(kmsg_record_is_oom_kill(
            MEMCG,
            "/t.slice/rsrun-a.scope/sub",
            0
        ));
        assert!(!kmsg_record_is_oom_kill(MEMCG, "/t.slice/rsrun-a.scop", 0));
        assert!(!kmsg_record_is_oom_kill(MEMCG, "/t.slice/rsrun-b.scope", 0));
        assert!(!kmsg_record_is_oom_kill(MEMCG, "", 0));
        assert!(kmsg_record_is_oom_kill(GLOBAL, "/t.slice/rsrun-b.scope", 0));
    }

    #[test]
    fn a_kill_before_the_watch_or_another_message_does_not_count() {
        assert!(!kmsg_record_is_oom_kill(
            MEMCG,
            "/t.slice/rsrun-a.scope",
            5_000_001
        ));
        assert!(kmsg_record_is_oom_kill(
            MEMCG,
            "/t.slice/rsrun-a.scope",
            5_000_000
        ));
        let other = MEMCG.replace("oom-kill:", "not-oom:");
        assert!(!kmsg_record_is_oom_kill(
            &other,
            "/t.slice/rsrun-a.scope",
            0
        ));
        assert!(!kmsg_record_is_oom_kill(
            "garbage",
            "/t.slice/rsrun-a.scope",
            0
        ));
        assert!(!kmsg_record_is_oom_kill(
            "6,1,x,-;oom-kill:,task_memcg=/a,task=b",
            "/a",
            0
        ));
    }
}
