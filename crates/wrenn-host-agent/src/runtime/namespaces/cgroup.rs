//! Cgroups for sandboxes, v1 and v2 behind one trait.
//!
//! Every sandbox gets a cgroup named after it under `wrenn/`: memory, CPU
//! (from vcpus) and pids limits, the freezer for pause and resume, and the
//! counters that sandbox metrics read.

use std::io;
use std::path::{Path, PathBuf};

/// Limits applied at creation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory (and memory + swap) limit.
    pub memory_bytes: u64,
    /// CPUs worth of CFS quota.
    pub vcpus: u32,
    /// Maximum number of tasks.
    pub pids: u32,
}

/// Usage counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU time used, in microseconds.
    pub cpu_usec: u64,
    /// Memory in use.
    pub memory_bytes: u64,
    /// Tasks in the cgroup.
    pub pids: u32,
}

/// One cgroup hierarchy layout (v1 or v2).
pub trait Cgroups: Send + Sync {
    /// "v1" or "v2".
    fn version(&self) -> &'static str;
    /// Creates the sandbox's cgroup with limits; returns the `cgroup.procs`
    /// files a process writes its pid to, to join.
    fn create(&self, id: &str, limits: &Limits) -> io::Result<Vec<PathBuf>>;
    /// Whether the sandbox's cgroup exists.
    fn exists(&self, id: &str) -> bool;
    /// Sandbox ids that have a cgroup.
    fn list(&self) -> Vec<String>;
    /// Freezes (true) or thaws (false) every task.
    fn set_frozen(&self, id: &str, frozen: bool) -> io::Result<()>;
    /// Whether the cgroup is frozen.
    fn is_frozen(&self, id: &str) -> bool;
    /// Pids in the cgroup.
    fn pids(&self, id: &str) -> Vec<u32>;
    /// Usage counters.
    fn usage(&self, id: &str) -> Usage;
    /// Removes the cgroup (it must be empty).
    fn remove(&self, id: &str) -> io::Result<()>;
}

/// Picks the layout of this host: v2 when `/sys/fs/cgroup` is a unified
/// hierarchy, else v1 (a hybrid host's `unified` mount has no controllers).
///
/// Sandboxes' cgroups go under `parent` (`wrenn` unless several agents
/// share the machine: each needs its own, as `recover` owns all of it).
pub fn detect(parent: &str) -> Box<dyn Cgroups> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        Box::new(V2 {
            root: root.join(parent),
        })
    } else {
        Box::new(V1 {
            root: root.to_path_buf(),
            parent: parent.to_string(),
        })
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn write(p: &Path, v: impl AsRef<[u8]>) -> io::Result<()> {
    std::fs::write(p, v)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", p.display())))
}

fn procs_of(p: &Path) -> Vec<u32> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn subdirs(p: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(p) else {
        return vec![];
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// cgroup v1: one hierarchy per controller.
pub struct V1 {
    root: PathBuf,
    parent: String,
}

const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "freezer"];

impl V1 {
    fn dir(&self, ctrl: &str, id: &str) -> PathBuf {
        self.root.join(ctrl).join(&self.parent).join(id)
    }

    /// Controllers mounted on this host; `cpu` and `cpuacct` may share one.
    fn controllers(&self) -> Vec<&'static str> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for c in V1_CONTROLLERS {
            let p = self.root.join(c);
            let Ok(real) = std::fs::canonicalize(&p) else {
                continue;
            };
            if !seen.contains(&real) {
                seen.push(real);
                out.push(c);
            }
        }
        out
    }
}

impl Cgroups for V1 {
    fn version(&self) -> &'static str {
        "v1"
    }

    fn create(&self, id: &str, l: &Limits) -> io::Result<Vec<PathBuf>> {
        let mut procs = Vec::new();
        for c in self.controllers() {
            let d = self.dir(c, id);
            std::fs::create_dir_all(&d)
                .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))?;
            procs.push(d.join("cgroup.procs"));
        }
        let mem = self.dir("memory", id);
        write(
            &mem.join("memory.limit_in_bytes"),
            l.memory_bytes.to_string(),
        )?;
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, l.memory_bytes.to_string())?;
        }
        let cpu = self.dir("cpu", id);
        write(&cpu.join("cpu.cfs_period_us"), "100000")?;
        write(
            &cpu.join("cpu.cfs_quota_us"),
            (u64::from(l.vcpus.max(1)) * 100_000).to_string(),
        )?;
        write(&self.dir("pids", id).join("pids.max"), l.pids.to_string())?;
        Ok(procs)
    }

    fn exists(&self, id: &str) -> bool {
        self.dir("freezer", id).exists() || self.dir("memory", id).exists()
    }

    fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .controllers()
            .iter()
            .flat_map(|c| subdirs(&self.root.join(c).join(&self.parent)))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn set_frozen(&self, id: &str, frozen: bool) -> io::Result<()> {
        let state = self.dir("freezer", id).join("freezer.state");
        write(&state, if frozen { "FROZEN" } else { "THAWED" })?;
        // FREEZING is transient; wait until the kernel settles.
        for _ in 0..1000 {
            let s = std::fs::read_to_string(&state)?;
            if s.trim() == if frozen { "FROZEN" } else { "THAWED" } {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Err(io::Error::other(format!(
            "{} did not settle",
            state.display()
        )))
    }

    fn is_frozen(&self, id: &str) -> bool {
        std::fs::read_to_string(self.dir("freezer", id).join("freezer.state"))
            .is_ok_and(|s| s.trim() == "FROZEN")
    }

    fn pids(&self, id: &str) -> Vec<u32> {
        procs_of(&self.dir("pids", id).join("cgroup.procs"))
    }

    fn usage(&self, id: &str) -> Usage {
        Usage {
            cpu_usec: read_u64(&self.dir("cpuacct", id).join("cpuacct.usage")).unwrap_or(0) / 1000,
            memory_bytes: read_u64(&self.dir("memory", id).join("memory.usage_in_bytes"))
                .unwrap_or(0),
            pids: read_u64(&self.dir("pids", id).join("pids.current")).unwrap_or(0) as u32,
        }
    }

    fn remove(&self, id: &str) -> io::Result<()> {
        for c in self.controllers() {
            let d = self.dir(c, id);
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("removing {}: {e}", d.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// cgroup v2: one unified hierarchy.
pub struct V2 {
    root: PathBuf,
}

impl V2 {
    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn enable_controllers(&self) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let parent = self.root.parent().expect("wrenn has a parent");
        for dir in [parent, self.root.as_path()] {
            // Best effort on the parent: it may be managed by systemd.
            let r = write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
            if dir == self.root.as_path() {
                r?;
            }
        }
        Ok(())
    }
}

impl Cgroups for V2 {
    fn version(&self) -> &'static str {
        "v2"
    }

    fn create(&self, id: &str, l: &Limits) -> io::Result<Vec<PathBuf>> {
        self.enable_controllers()?;
        let d = self.dir(id);
        std::fs::create_dir_all(&d)?;
        write(&d.join("memory.max"), l.memory_bytes.to_string())?;
        let _ = write(&d.join("memory.swap.max"), "0");
        write(
            &d.join("cpu.max"),
            format!("{} 100000", u64::from(l.vcpus.max(1)) * 100_000),
        )?;
        write(&d.join("pids.max"), l.pids.to_string())?;
        Ok(vec![d.join("cgroup.procs")])
    }

    fn exists(&self, id: &str) -> bool {
        self.dir(id).exists()
    }

    fn list(&self) -> Vec<String> {
        subdirs(&self.root)
    }

    fn set_frozen(&self, id: &str, frozen: bool) -> io::Result<()> {
        let d = self.dir(id);
        write(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        for _ in 0..1000 {
            let ev = std::fs::read_to_string(d.join("cgroup.events"))?;
            if ev
                .lines()
                .any(|l| l == if frozen { "frozen 1" } else { "frozen 0" })
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Err(io::Error::other(format!("{} did not settle", d.display())))
    }

    fn is_frozen(&self, id: &str) -> bool {
        std::fs::read_to_string(self.dir(id).join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    fn pids(&self, id: &str) -> Vec<u32> {
        procs_of(&self.dir(id).join("cgroup.procs"))
    }

    fn usage(&self, id: &str) -> Usage {
        let d = self.dir(id);
        let cpu_usec = std::fs::read_to_string(d.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
            })
            .unwrap_or(0);
        Usage {
            cpu_usec,
            memory_bytes: read_u64(&d.join("memory.current")).unwrap_or(0),
            pids: read_u64(&d.join("pids.current")).unwrap_or(0) as u32,
        }
    }

    fn remove(&self, id: &str) -> io::Result<()> {
        match std::fs::remove_dir(self.dir(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_usage_and_freezing_on_this_host() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: cgroups need root");
            return;
        }
        let cg = detect("wrenn");
        let id = format!("unit-{}", std::process::id());
        let procs = cg
            .create(
                &id,
                &Limits {
                    memory_bytes: 64 << 20,
                    vcpus: 1,
                    pids: 16,
                },
            )
            .unwrap();
        assert!(cg.exists(&id));
        assert!(cg.list().contains(&id));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        for p in &procs {
            std::fs::write(p, child.id().to_string()).unwrap();
        }
        assert_eq!(cg.pids(&id), vec![child.id()]);
        cg.set_frozen(&id, true).unwrap();
        assert!(cg.is_frozen(&id));
        cg.set_frozen(&id, false).unwrap();
        assert!(!cg.is_frozen(&id));
        // Memory is charged where it was first touched (before the move), so
        // only the task count is certain here.
        assert_eq!(cg.usage(&id).pids, 1);
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove(&id).unwrap();
        assert!(!cg.exists(&id));
    }
}
