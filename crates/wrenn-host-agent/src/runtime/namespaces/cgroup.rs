//! Cgroups for sandboxes, v1 and v2 behind one trait.
//!
//! Every sandbox gets a cgroup named after it under `wrenn/`: memory, CPU
//! (from vcpus) and pids limits, the freezer for pause and resume, and the
//! counters that sandbox metrics read.
//!
//! Inside it, two leaves: [`ENVD`] holds the sandbox's PID 1 and envd, and
//! [`WORK`] everything envd starts. The workload's leaf has the sandbox's
//! memory and pids limits minus a reserve for envd, and envd's leaf a
//! larger CPU weight: a fork bomb, a memory hog or a thousand busy loops
//! in the sandbox leave envd the memory, the pids and the CPU time to
//! answer (and to kill them).
//!
//! Why this file is long (~630 lines): cgroup v1 and v2 each implement
//! the `Cgroups` trait here, beside the helpers both use.

use std::io;
use std::path::{Path, PathBuf};

/// Limits applied at creation.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory (and memory + swap) limit.
    pub memory_bytes: u64,
    /// CPUs worth of CFS quota.
    pub vcpus: u32,
    /// Maximum number of tasks.
    pub pids: u32,
    /// The CPUs it runs on (v1 `cpuset`); empty for all of its parent's.
    pub cpus: Vec<usize>,
}

/// The leaf of a sandbox's cgroup that holds its PID 1 and envd.
pub const ENVD: &str = "envd";
/// The leaf that holds every process envd starts.
pub const WORK: &str = "work";

/// Memory kept for envd on top of the sandbox's own: the workload's leaf
/// is limited to the sandbox's memory, the whole cgroup to this much more.
pub const ENVD_MEMORY_RESERVE: u64 = 48 << 20;
/// Tasks kept for envd's threads and PID 1 out of the sandbox's pids limit.
pub const ENVD_PIDS_RESERVE: u32 = 64;
/// envd's CPU weight against the workload's (v1 `cpu.shares` 1024, v2
/// `cpu.weight` 100): under contention envd gets four fifths of the
/// sandbox's CPU time, and none of it when idle.
const ENVD_CPU_FACTOR: u64 = 4;

/// The `cgroup.procs` files a process writes its pid (or `0`, itself) to,
/// to join one leaf of a sandbox's cgroup, one per hierarchy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joins {
    /// For PID 1 and envd.
    pub envd: Vec<PathBuf>,
    /// For the workload.
    pub work: Vec<PathBuf>,
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
    /// Creates the sandbox's cgroup with limits, and its two leaves.
    fn create(&self, id: &str, limits: &Limits) -> io::Result<Joins>;
    /// Whether the sandbox's cgroup exists.
    fn exists(&self, id: &str) -> bool;
    /// Sandbox ids that have a cgroup.
    fn list(&self) -> Vec<String>;
    /// Freezes (true) or thaws (false) every task.
    fn set_frozen(&self, id: &str, frozen: bool) -> io::Result<()>;
    /// Whether the cgroup is frozen.
    fn is_frozen(&self, id: &str) -> bool;
    /// Pids in the cgroup and its leaves.
    fn pids(&self, id: &str) -> Vec<u32>;
    /// Usage counters.
    fn usage(&self, id: &str) -> Usage;
    /// Removes the cgroup and its leaves (they must be empty).
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

/// Name of the empty cgroup v1 hierarchy that [`favor_dynamic_moves`]
/// makes.
pub const DYNMODS_HIERARCHY: &str = "wrenn-favordynmods";

/// Makes moving a process between cgroups cheap while the returned
/// descriptor is open; `Err` where the kernel cannot (no cgroup v1, or no
/// `favordynmods`, before Linux 6.0), and moves stay as they were.
///
/// Every create moves the sandbox's first process into its cgroup, and
/// every process envd starts moves itself into the workload's leaf. By
/// default each move waits for an RCU grace period (the kernel's global
/// `cgroup_threadgroup_rwsem` favours forks and exits): ~8 ms here on a
/// quiet host, most of a create and of a first exec. `favordynmods` on any
/// hierarchy turns that around for all of them (moves ~0.3 ms; forks and
/// exits a few percent slower). It is set on an empty named v1 hierarchy
/// mounted nowhere (`fsmount`, never attached to a path): nothing on the
/// host changes, and when the agent exits and the descriptor closes, the
/// hierarchy goes and the kernel's default comes back.
pub fn favor_dynamic_moves() -> io::Result<std::os::fd::OwnedFd> {
    use rustix::mount::{
        FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsconfig_set_flag,
        fsconfig_set_string, fsmount, fsopen,
    };
    let fs = fsopen("cgroup", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_set_flag(&fs, "none")?;
    fsconfig_set_string(&fs, "name", DYNMODS_HIERARCHY)?;
    fsconfig_set_flag(&fs, "favordynmods")?;
    fsconfig_create(&fs)?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?)
}

/// How long a freeze or thaw may take to settle.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Asks for `frozen` (`request`, repeated: a v1 freezer retries the tasks
/// it could not freeze only when written again) until `settled`, for
/// `SETTLE_TIMEOUT` at most. A freeze that does not settle is undone, so
/// that a sandbox is never left half-frozen while it is said to run.
fn settle(
    frozen: bool,
    request: impl Fn(bool) -> io::Result<()>,
    settled: impl Fn() -> io::Result<bool>,
) -> io::Result<()> {
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    let mut wait = std::time::Duration::from_micros(100);
    let mut since_request = std::time::Duration::ZERO;
    request(frozen)?;
    loop {
        if settled()? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(wait);
        since_request += wait;
        wait = (wait * 2).min(std::time::Duration::from_millis(20));
        if since_request >= std::time::Duration::from_millis(50) {
            request(frozen)?;
            since_request = std::time::Duration::ZERO;
        }
    }
    if frozen {
        let _ = request(false);
        return Err(io::Error::other(format!(
            "could not freeze every process within {SETTLE_TIMEOUT:?} (one may be stuck in a system call); \
             the sandbox was thawed and keeps running: try again"
        )));
    }
    Err(io::Error::other(format!(
        "did not thaw within {SETTLE_TIMEOUT:?}"
    )))
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

/// Tasks in `dir` and every cgroup below it.
fn procs_below(dir: &Path) -> Vec<u32> {
    let mut out = procs_of(&dir.join("cgroup.procs"));
    for sub in subdirs(dir) {
        out.extend(procs_below(&dir.join(sub)));
    }
    out
}

/// Removes `dir` after every cgroup below it.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_tree(&dir.join(sub))?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("removing {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

fn mkdir(d: &Path) -> io::Result<()> {
    std::fs::create_dir_all(d)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))
}

/// Tasks the workload may have per MiB of the sandbox's memory: a fork
/// bomb meets the pids limit long before the memory limit (a memory cgroup
/// at its limit with a thousand forking tasks livelocks in the kernel's
/// reclaim, and its tasks then take many seconds to die even of SIGKILL).
pub const WORK_PIDS_PER_MIB: u64 = 2;
/// The fewest tasks the workload may have, whatever its memory.
pub const WORK_PIDS_MIN: u32 = 128;

/// The workload's share of the sandbox's limits: (memory, tasks).
pub fn work_limits(l: &Limits) -> (u64, u32) {
    let by_memory = ((l.memory_bytes >> 20) * WORK_PIDS_PER_MIB).min(u64::from(u32::MAX)) as u32;
    let pids = by_memory
        .max(WORK_PIDS_MIN)
        .min(l.pids.saturating_sub(ENVD_PIDS_RESERVE))
        .max(1);
    (l.memory_bytes, pids)
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

const V1_CONTROLLERS: [&str; 6] = ["memory", "cpu", "cpuacct", "pids", "freezer", "cpuset"];

/// A new v1 cpuset has no CPUs and no memory nodes, and takes no task
/// until it has both: fills in what `dir` and each of its ancestors below
/// `root` lack from the one above.
fn cpuset_inherit(root: &Path, dir: &Path) -> io::Result<()> {
    let Ok(rel) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut above = root.to_path_buf();
    for part in rel.components() {
        let here = above.join(part);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let mine = std::fs::read_to_string(here.join(f)).unwrap_or_default();
            if mine.trim().is_empty() {
                let theirs = std::fs::read_to_string(above.join(f))?;
                write(&here.join(f), theirs.trim())?;
            }
        }
        above = here;
    }
    Ok(())
}

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

    fn create(&self, id: &str, l: &Limits) -> io::Result<Joins> {
        let mut joins = Joins::default();
        for c in self.controllers() {
            let d = self.dir(c, id);
            mkdir(&d)?;
            if c == "memory" {
                // The leaves' usage counts against the sandbox's limit
                // (always so on recent kernels, where writing it is a no-op).
                write(&d.join("memory.use_hierarchy"), "1").ok();
            }
            if c == "cpuset" {
                // Also where LXCFS (5.0) reads a sandbox's CPU quota from.
                cpuset_inherit(&self.root.join(c), &d)?;
                if !l.cpus.is_empty() {
                    let list: Vec<String> = l.cpus.iter().map(|c| c.to_string()).collect();
                    write(&d.join("cpuset.cpus"), list.join(","))?;
                }
            }
            for (leaf, list) in [(ENVD, &mut joins.envd), (WORK, &mut joins.work)] {
                mkdir(&d.join(leaf))?;
                if c == "cpuset" {
                    cpuset_inherit(&self.root.join(c), &d.join(leaf))?;
                }
                list.push(d.join(leaf).join("cgroup.procs"));
            }
        }
        let (work_mem, work_pids) = work_limits(l);
        let mem = self.dir("memory", id);
        // envd's leaf is capped at the sandbox's own size too: its reserve
        // is what the workload cannot take (the parent's extra), and LXCFS,
        // which reads the cgroup of the sandbox's PID 1 (in this leaf),
        // reports the size the sandbox was created with.
        for (dir, bytes) in [
            (mem.clone(), l.memory_bytes + ENVD_MEMORY_RESERVE),
            (mem.join(ENVD), l.memory_bytes),
            (mem.join(WORK), work_mem),
        ] {
            write(&dir.join("memory.limit_in_bytes"), bytes.to_string())?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, bytes.to_string())?;
            }
        }
        let cpu = self.dir("cpu", id);
        let quota = (u64::from(l.vcpus.max(1)) * 100_000).to_string();
        // On the leaves too, where LXCFS reads the sandbox's CPU count.
        for dir in [cpu.clone(), cpu.join(ENVD), cpu.join(WORK)] {
            write(&dir.join("cpu.cfs_period_us"), "100000")?;
            write(&dir.join("cpu.cfs_quota_us"), &quota)?;
        }
        write(
            &cpu.join(ENVD).join("cpu.shares"),
            (1024 * ENVD_CPU_FACTOR).to_string(),
        )?;
        let pids = self.dir("pids", id);
        write(&pids.join("pids.max"), l.pids.to_string())?;
        write(&pids.join(WORK).join("pids.max"), work_pids.to_string())?;
        Ok(joins)
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
        let want = if frozen { "FROZEN" } else { "THAWED" };
        // FREEZING is transient, and v1 freezes only the tasks it can at
        // the time of a write (one in a system call it cannot leave stays
        // FREEZING): each write tries again.
        settle(
            frozen,
            |f| write(&state, if f { "FROZEN" } else { "THAWED" }),
            || Ok(std::fs::read_to_string(&state)?.trim() == want),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", state.display())))
    }

    fn is_frozen(&self, id: &str) -> bool {
        std::fs::read_to_string(self.dir("freezer", id).join("freezer.state"))
            .is_ok_and(|s| s.trim() == "FROZEN")
    }

    fn pids(&self, id: &str) -> Vec<u32> {
        procs_below(&self.dir("pids", id))
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
            remove_tree(&self.dir(c, id))?;
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

    fn create(&self, id: &str, l: &Limits) -> io::Result<Joins> {
        self.enable_controllers()?;
        let d = self.dir(id);
        mkdir(&d)?;
        write(
            &d.join("memory.max"),
            (l.memory_bytes + ENVD_MEMORY_RESERVE).to_string(),
        )?;
        let _ = write(&d.join("memory.swap.max"), "0");
        let cpu_max = format!("{} 100000", u64::from(l.vcpus.max(1)) * 100_000);
        write(&d.join("cpu.max"), &cpu_max)?;
        write(&d.join("pids.max"), l.pids.to_string())?;
        // Processes live only in the leaves ("no internal processes").
        write(&d.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
        let (work_mem, work_pids) = work_limits(l);
        let (envd, work) = (d.join(ENVD), d.join(WORK));
        mkdir(&envd)?;
        mkdir(&work)?;
        write(
            &envd.join("cpu.weight"),
            (100 * ENVD_CPU_FACTOR).to_string(),
        )?;
        // As in v1: the sandbox's own size, for LXCFS; the reserve is the
        // parent's extra, which the workload cannot take.
        write(&envd.join("memory.max"), l.memory_bytes.to_string())?;
        write(&envd.join("cpu.max"), &cpu_max)?;
        write(&work.join("memory.max"), work_mem.to_string())?;
        let _ = write(&work.join("memory.swap.max"), "0");
        write(&work.join("cpu.max"), &cpu_max)?;
        write(&work.join("pids.max"), work_pids.to_string())?;
        Ok(Joins {
            envd: vec![envd.join("cgroup.procs")],
            work: vec![work.join("cgroup.procs")],
        })
    }

    fn exists(&self, id: &str) -> bool {
        self.dir(id).exists()
    }

    fn list(&self) -> Vec<String> {
        subdirs(&self.root)
    }

    fn set_frozen(&self, id: &str, frozen: bool) -> io::Result<()> {
        let d = self.dir(id);
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        settle(
            frozen,
            |f| write(&d.join("cgroup.freeze"), if f { "1" } else { "0" }),
            || {
                Ok(std::fs::read_to_string(d.join("cgroup.events"))?
                    .lines()
                    .any(|l| l == want))
            },
        )
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", d.display())))
    }

    fn is_frozen(&self, id: &str) -> bool {
        std::fs::read_to_string(self.dir(id).join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
    }

    fn pids(&self, id: &str) -> Vec<u32> {
        procs_below(&self.dir(id))
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
        remove_tree(&self.dir(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_gets_the_memory_and_a_pids_limit_that_memory_can_hold() {
        for (mb, pids, want) in [
            (256, 4096, 512),
            (32, 4096, WORK_PIDS_MIN),
            (8192, 4096, 4096 - ENVD_PIDS_RESERVE),
            (256, 100, 100 - ENVD_PIDS_RESERVE),
            (256, 10, 1),
        ] {
            let l = Limits {
                memory_bytes: mb << 20,
                vcpus: 1,
                pids,
                cpus: vec![],
            };
            assert_eq!(work_limits(&l), (mb << 20, want), "{mb} MiB, {pids} pids");
        }
    }

    #[test]
    fn limits_usage_and_freezing_on_this_host() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: cgroups need root");
            return;
        }
        let cg = detect("wrenn");
        let id = format!("unit-{}", std::process::id());
        let joins = cg
            .create(
                &id,
                &Limits {
                    memory_bytes: 64 << 20,
                    vcpus: 1,
                    pids: 16,
                    cpus: vec![0],
                },
            )
            .unwrap();
        assert!(cg.exists(&id));
        assert!(cg.list().contains(&id));
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut envd = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        for p in &joins.work {
            std::fs::write(p, child.id().to_string()).unwrap();
        }
        for p in &joins.envd {
            std::fs::write(p, envd.id().to_string()).unwrap();
        }
        let mut pids = cg.pids(&id);
        pids.sort();
        let mut want = vec![child.id(), envd.id()];
        want.sort();
        assert_eq!(pids, want, "tasks of both leaves");
        cg.set_frozen(&id, true).unwrap();
        assert!(cg.is_frozen(&id));
        cg.set_frozen(&id, false).unwrap();
        assert!(!cg.is_frozen(&id));
        // Memory is charged where it was first touched (before the move), so
        // only the task count is certain here.
        assert_eq!(cg.usage(&id).pids, 2);
        for c in [&mut child, &mut envd] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        cg.remove(&id).unwrap();
        assert!(!cg.exists(&id));
    }
}
