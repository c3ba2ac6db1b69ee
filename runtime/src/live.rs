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
#[derive(Default)]
pub struct OomWatch {
    m: Option<Manager>,
    inotify: Option<Inotify>,
    /// (oom_kill, oom) when the watch began, and the highest seen since.
    base: (u64, u64),
    seen: (u64, u64),
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
        self.seen.0 > self.base.0 || (sigkilled && self.seen.1 > self.base.1)
    }
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
        if let Some(u) = &saved.systemd_unit {
            crate::cgroups::systemd::set_properties(
                u,
                crate::cgroups::systemd::properties(Some(r))?,
            )?;
        }
        m.update(r)
    }

    /// `pause`: freezes every process of a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let (_, st, m) = self.live(id, "pause")?;
        if st != Status::Running {
            return Err(Error::State {
                id: id.into(),
                status: st.to_string(),
                what: "only a running container can be paused".into(),
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
        let base = (m.oom_kill_count(), m.oom_event_count());
        Ok(OomWatch {
            m: Some(m),
            inotify,
            base,
            seen: base,
        })
    }

    /// Whether a process of the container was OOM-killed (see `oom_kill_count`).
    pub fn oom_killed(&self, id: &str) -> Result<bool> {
        Ok(self.oom_kill_count(id)? > 0)
    }

    /// Host PIDs of every process in the container's cgroup (and its sub-cgroups).
    pub fn processes(&self, id: &str) -> Result<Vec<i32>> {
        // A stopped container has no processes: an empty list, as runc prints.
        let dir = crate::state::ContainerDir::new(&self.root, id)?;
        if let Ok(saved) = crate::lifecycle::load(&dir) {
            if saved.status(&dir) == crate::state::Status::Stopped {
                return Ok(Vec::new());
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
