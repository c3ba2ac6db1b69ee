//! Operations on a live container's cgroup: update, pause/resume, stats and events, OOM
//! kills, the list of processes.

use std::time::{Duration, Instant};

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
