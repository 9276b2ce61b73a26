//! A sandbox's view of itself: `/proc/meminfo`, `cpuinfo`, `stat`,
//! `uptime`, `swaps` and `/sys/devices/system/cpu/online` as the sandbox's
//! cgroup sees them (its memory limit, its CPU quota, its uptime), so that
//! `free`, `nproc`, `os.cpu_count()`, JVM heaps and `make -j` size
//! themselves to the sandbox and not to the host.
//!
//! LXCFS (a Debian package) serves these files over FUSE, computing each
//! from the cgroup of the process that reads it. The agent runs one LXCFS,
//! mounted in the agent's runtime directory (`/run/wrenn/<cgroup parent>`,
//! outside the data directory, which people delete), and each sandbox's
//! init binds its files over the sandbox's own `/proc` and `/sys`.
//!
//! LXCFS is a process that can die, and a dead FUSE mount answers
//! `ENOTCONN` to every read. So a keeper thread runs it, starts it again
//! when it exits, and then binds the new mount's files into every live
//! sandbox's mount namespace (`open_tree` on the host, `setns`, detach the
//! stale bind, `move_mount`). It also dies with the agent (parent-death
//! signal: it unmounts itself), and an agent that starts again re-binds
//! the sandboxes it adopts: a sandbox's view is dead only while no agent
//! runs. LXCFS runs without its load-average thread, which would wake up
//! for every sandbox every few seconds; `/proc/loadavg` stays the host's.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

/// The files LXCFS serves that sandboxes see, relative to `/` (and to the
/// LXCFS mount).
pub const FILES: &[&str] = &[
    "proc/meminfo",
    "proc/cpuinfo",
    "proc/stat",
    "proc/uptime",
    "proc/swaps",
    "sys/devices/system/cpu/online",
];

/// How long a starting LXCFS may take before its mount serves files.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest and longest wait before LXCFS is started again.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);

/// The running LXCFS of one agent.
pub struct ProcView {
    mount: PathBuf,
}

impl ProcView {
    /// Where the LXCFS mount is; its files are `FILES` below it.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Whether the mount serves files now.
    pub fn ready(&self) -> bool {
        std::fs::read(self.mount.join(FILES[0])).is_ok_and(|b| !b.is_empty())
    }

    /// Starts LXCFS (`binary`) on `<run_dir>/lxcfs-<agent pid>` under a keeper thread
    /// and waits (a few seconds at most) until it serves files. After every
    /// start, the keeper calls `on_start` (which may `rebind`). `None`, with
    /// a warning, when LXCFS cannot start at all.
    pub fn start(
        binary: &Path,
        run_dir: &Path,
        on_start: impl Fn(&ProcView) + Send + 'static,
    ) -> Option<Arc<ProcView>> {
        // Named after this agent: an LXCFS of an agent before that is
        // still on its way out unmounts its own path, never ours.
        let me = std::process::id();
        let mount = run_dir.join(format!("lxcfs-{me}"));
        clean_stale(run_dir, me);
        if let Err(e) = std::fs::create_dir_all(&mount) {
            tracing::warn!(
                "sandboxes will see the host's /proc/meminfo and CPUs: creating {}: {e}",
                mount.display()
            );
            return None;
        }
        let view = Arc::new(ProcView { mount });
        let (first_tx, first_rx) = std::sync::mpsc::channel::<bool>();
        let keeper = view.clone();
        let binary = binary.to_path_buf();
        let log = run_dir.join(format!("lxcfs-{me}.log"));
        let log_shown = log.clone();
        let pidfile = run_dir.join(format!("lxcfs-{me}.pid"));
        let spawned = std::thread::Builder::new()
            .name("wrenn-lxcfs".into())
            .spawn(move || {
                let mut delay = RESTART_MIN;
                let mut first = Some(first_tx);
                loop {
                    let started = Instant::now();
                    let ok = keeper.run_once(&binary, &log, &pidfile, &on_start, &mut first);
                    if !ok {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(false);
                        }
                    }
                    delay = if started.elapsed() > Duration::from_secs(30) {
                        RESTART_MIN
                    } else {
                        (delay * 2).min(RESTART_MAX)
                    };
                    std::thread::sleep(delay);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("sandboxes will see the host's /proc/meminfo and CPUs: {e}");
            return None;
        }
        match first_rx.recv_timeout(READY_TIMEOUT + Duration::from_secs(1)) {
            Ok(true) => {}
            _ => tracing::warn!(
                "LXCFS is not serving yet (see {}); sandboxes see the host's /proc/meminfo until it does",
                log_shown.display()
            ),
        }
        Some(view)
    }

    /// One run of LXCFS: start, wait until it serves, call `on_start`,
    /// wait for its exit. False if it never served.
    fn run_once(
        &self,
        binary: &Path,
        log: &Path,
        pidfile: &Path,
        on_start: &impl Fn(&ProcView),
        first: &mut Option<std::sync::mpsc::Sender<bool>>,
    ) -> bool {
        use std::os::unix::process::CommandExt;
        let out = match std::fs::File::create(log) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("LXCFS: creating {}: {e}", log.display());
                return false;
            }
        };
        let err = match out.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("LXCFS: {e}");
                return false;
            }
        };
        let mut cmd = std::process::Command::new(binary);
        cmd.arg("-f")
            .arg("--enable-cfs")
            .arg("-p")
            .arg(pidfile)
            .arg(&self.mount)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl only, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // With the agent gone, LXCFS unmounts itself and exits; the
                // next agent starts its own. This thread never ends, so the
                // signal comes only with the process.
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("LXCFS: starting {}: {e}", binary.display());
                return false;
            }
        };
        // Polled only while it starts, a few milliseconds.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut served = false;
        while Instant::now() < deadline {
            if self.ready() {
                served = true;
                break;
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if served {
            tracing::debug!(pid = child.id(), "LXCFS serves {}", self.mount.display());
            on_start(self);
            if let Some(tx) = first.take() {
                let _ = tx.send(true);
            }
        } else {
            let _ = child.kill();
        }
        let status = child.wait();
        tracing::warn!(
            "LXCFS exited ({}); starting it again (log: {})",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            log.display()
        );
        let _ = rustix::mount::unmount(&self.mount, UnmountFlags::DETACH);
        served
    }

    /// Binds the view's files over `/proc/…` and `/sys/…` in the mount
    /// namespaces of `pids` (sandboxes' PID 1s), replacing binds to a LXCFS
    /// that died. Runs on a thread of its own (`setns` into a mount
    /// namespace needs an unshared file-system context); the sandboxes it
    /// could not bind, with why.
    pub fn rebind(&self, pids: &[u32]) -> Vec<(u32, std::io::Error)> {
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                // SAFETY: FS only, not FILES: descriptors stay shared.
                if let Err(e) = unsafe { rustix::thread::unshare_unsafe(UnshareFlags::FS) } {
                    let e = std::io::Error::other(format!("unshare(CLONE_FS): {e}"));
                    return pids
                        .iter()
                        .map(|&p| (p, std::io::Error::new(e.kind(), e.to_string())))
                        .collect();
                }
                let mut failed = Vec::new();
                for &pid in pids {
                    match self.rebind_one(pid) {
                        Ok(()) => {}
                        Err(Rebind::Sandbox(e)) => failed.push((pid, e)),
                        Err(Rebind::Stranded(e)) => {
                            // This thread is in a sandbox's namespace: it
                            // goes no further.
                            failed.push((pid, e));
                            break;
                        }
                    }
                }
                failed
            });
            worker.join().unwrap_or_else(|_| {
                vec![(0, std::io::Error::other("the re-binding thread panicked"))]
            })
        })
    }

    fn rebind_one(&self, pid: u32) -> Result<(), Rebind> {
        let open = |p: String| {
            rustix::fs::open(
                p,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| Rebind::Sandbox(e.into()))
        };
        let own = open("/proc/thread-self/ns/mnt".into())?;
        let theirs = open(format!("/proc/{pid}/ns/mnt"))?;
        // Detached copies of the files, made here, moved in there.
        let mut trees: Vec<(OwnedFd, &str)> = Vec::with_capacity(FILES.len());
        for f in FILES {
            let tree = rustix::mount::open_tree(
                rustix::fs::CWD,
                self.mount.join(f),
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map_err(|e| Rebind::Sandbox(e.into()))?;
            trees.push((tree, f));
        }
        rustix::thread::move_into_link_name_space(theirs.as_fd(), Some(LinkNameSpaceType::Mount))
            .map_err(|e| Rebind::Sandbox(e.into()))?;
        let mut result = Ok(());
        for (tree, f) in &trees {
            let target = Path::new("/").join(f);
            // A bind to a dead LXCFS, or nothing (EINVAL) if the sandbox
            // started while LXCFS was down.
            let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
            if let Err(e) = rustix::mount::move_mount(
                tree.as_fd(),
                "",
                rustix::fs::CWD,
                &target,
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            ) {
                result = Err(Rebind::Sandbox(std::io::Error::other(format!(
                    "binding {} into the sandbox: {e}",
                    target.display()
                ))));
            }
        }
        // Back home, whatever happened in there.
        rustix::thread::move_into_link_name_space(own.as_fd(), Some(LinkNameSpaceType::Mount))
            .map_err(|e| {
                Rebind::Stranded(std::io::Error::other(format!(
                    "returning to the host's mount namespace: {e}"
                )))
            })?;
        result
    }
}

enum Rebind {
    /// This sandbox could not be bound.
    Sandbox(std::io::Error),
    /// The thread could not leave the sandbox's namespace.
    Stranded(std::io::Error),
}

/// Removes what agents gone before left in `run_dir`: their LXCFS mounts
/// (detached; dead, or dying with them), pid files and logs.
fn clean_stale(run_dir: &Path, me: u32) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("lxcfs-") else {
            continue;
        };
        let pid = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = e.path();
        if rest.contains('.') {
            let _ = std::fs::remove_file(&path);
        } else {
            let _ = rustix::mount::unmount(&path, UnmountFlags::DETACH);
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// `lxcfs` on `PATH`, if installed.
pub fn find_lxcfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("lxcfs"))
        .find(|p| p.is_file())
}
