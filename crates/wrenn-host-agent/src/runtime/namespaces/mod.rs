//! The namespace runtime, Wrenn's default: each sandbox is a process tree
//! in its own user, PID, mount, UTS, IPC, network and cgroup namespaces,
//! on an overlay root over a read-only template with an ext4 upper layer
//! (the disk limit), inside a cgroup (memory, CPU, pids; freezer for pause),
//! behind a veth pair and the host firewall, under a reduced capability
//! bounding set and a seccomp filter (setuid programs inside gain no more
//! than the sandbox's root has). envd is its first process.
//!
//! Everything a sandbox has on the host is named after its id: the
//! directory `<data>/sandboxes/<id>`, the cgroup `wrenn/<id>`, and the veth
//! `wrenn<slot>` recorded in the directory's `runtime.json`. Mounts exist
//! only inside the sandbox's mount namespace, so they vanish with it.
//!
//! Why this file is long (~1,400 lines): create, teardown and `recover`
//! share one `Record` and must stay in step with each other; what stands
//! alone is already a module (init, cgroup, network, loopdev, procview,
//! limits, lock, seccomp). The next split is teardown and recover.

pub mod cgroup;
pub mod init;
pub mod limits;
pub mod lock;
pub mod loopdev;
pub mod network;
pub mod procview;
pub mod seccomp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use self::cgroup::{Cgroups, Limits};
use self::init::InitSpec;
use self::network::{Network, Slot, Slots};
use super::{Egress, Instance, RunState, Runtime, RuntimeError, SandboxSpec, Usage};
use crate::templates::TemplateStore;

/// How the namespace runtime is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the agent's data (`sandboxes/`, `templates/`, `cache/`).
    pub data_dir: PathBuf,
    /// envd binary, linked (or copied) into `<data>/envd-layer` once and
    /// from there the top layer of every sandbox's root.
    pub envd_binary: PathBuf,
    /// LXCFS, for each sandbox's own `/proc/meminfo`, CPUs and uptime;
    /// `None`: sandboxes see the host's.
    pub lxcfs_binary: Option<PathBuf>,
    /// Binary that runs `__sandbox-init` (the `wrenn` binary).
    pub init_exe: PathBuf,
    /// Host uid/gid that is root inside sandboxes.
    pub uid_base: u32,
    /// Size of the uid range.
    pub uid_count: u32,
    /// Task limit per sandbox.
    pub pids_max: u32,
    /// How long a sandbox's init may take to start envd (the agent then
    /// waits for envd to answer, within its own limit).
    pub start_timeout: Duration,
    /// The cgroup (in every hierarchy) under which sandboxes' cgroups go;
    /// each agent on a machine needs its own.
    pub cgroup_parent: String,
    /// The instance lock, when the caller took it before anything else
    /// (`wrenn up` does, before it opens its database); `new` takes it
    /// otherwise, and the runtime holds it while it lives.
    pub instance_lock: Option<Arc<lock::InstanceLock>>,
}

impl Config {
    /// Defaults for a data directory, with the binaries next to the current
    /// executable.
    pub fn new(data_dir: PathBuf) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("wrenn"));
        let envd = exe.with_file_name("envd");
        Config {
            data_dir,
            envd_binary: envd,
            lxcfs_binary: procview::find_lxcfs(),
            init_exe: exe,
            uid_base: 1_000_000_000,
            uid_count: 65536,
            pids_max: 4096,
            start_timeout: Duration::from_secs(10),
            cgroup_parent: "wrenn".into(),
            instance_lock: None,
        }
    }
}

/// What the runtime remembers of a sandbox, in `runtime.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    instance: Instance,
    slot: Slot,
    /// Start time of the init (field 22 of /proc/<pid>/stat), to tell it
    /// from a later process that reuses the pid.
    init_start_time: u64,
    /// False until the agent confirmed the sandbox (envd answered and
    /// has its environment): a record that is not ready is half made.
    ready: bool,
    /// Destroyed: being removed, never to be adopted again.
    #[serde(default)]
    destroying: bool,
}

struct Live {
    record: Record,
    watcher: Option<tokio::task::JoinHandle<()>>,
    /// A pause without memory or a boot again is under way: another one
    /// is refused (two boots would mount one disk twice).
    busy: bool,
}

impl Live {
    /// A sandbox the runtime now has, `watcher` ending it if its init dies.
    fn new(record: Record, watcher: Option<tokio::task::JoinHandle<()>>) -> Live {
        Live {
            record,
            watcher,
            busy: false,
        }
    }
}

/// The namespace runtime.
pub struct NamespaceRuntime {
    cfg: Config,
    cgroups: Box<dyn Cgroups>,
    net: Network,
    slots: Slots,
    /// Bounds the threads that make sockets inside sandboxes' namespaces.
    loopback_threads: tokio::sync::Semaphore,
    templates: TemplateStore,
    resolvers: Vec<std::net::Ipv4Addr>,
    live: Mutex<HashMap<String, Live>>,
    /// Serializes changes of egress rules (create, change, teardown).
    egress_lock: tokio::sync::Mutex<()>,
    /// Sandbox addresses whose egress chain has rules.
    egress_ips: Mutex<std::collections::HashSet<std::net::Ipv4Addr>>,
    this: std::sync::Weak<NamespaceRuntime>,
    /// envd's dynamic loader (`None`: envd is static and runs anywhere).
    envd_interp: Option<String>,
    /// The cached empty disk images.
    disks: DiskImages,
    /// The directory whose `.wrenn/envd` is every sandbox's envd.
    envd_layer: PathBuf,
    /// LXCFS, if it runs.
    procview: Option<Arc<procview::ProcView>>,
    /// Teardowns running behind answered destroys.
    teardowns: Teardowns,
    /// Keeps cgroup moves cheap while it is open
    /// ([`cgroup::favor_dynamic_moves`]).
    _dynmods: Option<std::os::fd::OwnedFd>,
}

/// The teardowns that run behind answered destroys: counted, so that
/// `settle` can wait for them, and [`TEARDOWNS_AT_ONCE`] at most at a
/// time (the kernel serializes much of the work, and each step has a
/// deadline).
struct Teardowns {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
    slots: tokio::sync::Semaphore,
}

impl Default for Teardowns {
    fn default() -> Self {
        Teardowns {
            running: std::sync::atomic::AtomicUsize::new(0),
            done: tokio::sync::Notify::new(),
            slots: tokio::sync::Semaphore::new(TEARDOWNS_AT_ONCE),
        }
    }
}

/// One counted teardown of the runtime's; uncounted when dropped, even by
/// a panic or with its task never run.
struct Counted(Arc<NamespaceRuntime>);

impl Counted {
    fn new(rt: Arc<NamespaceRuntime>) -> Self {
        rt.teardowns
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(rt)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let t = &self.0.teardowns;
        t.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        t.done.notify_waiters();
    }
}

impl Teardowns {
    async fn settled(&self) {
        loop {
            let done = self.done.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// The program interpreter (dynamic loader) an ELF executable names, if
/// any: `None` for a static binary.
pub fn elf_interpreter(path: &std::path::Path) -> Option<String> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let (phoff, phentsize, phnum) = (
        u64_at(0x20)? as usize,
        u16_at(0x36)? as usize,
        u16_at(0x38)?,
    );
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * phentsize;
        const PT_INTERP: u32 = 3;
        if u32_at(ph)? == PT_INTERP {
            let (off, len) = (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize);
            let raw = b.get(off..off + len)?;
            let end = raw.iter().position(|c| *c == 0).unwrap_or(raw.len());
            return Some(String::from_utf8_lossy(&raw[..end]).into_owned());
        }
    }
    None
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |e| RuntimeError::caused(what.to_string(), e)
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Checks a sandbox id: a prefix, a dash, then lowercase letters and digits.
pub fn valid_id(id: &str) -> bool {
    let Some((prefix, rest)) = id.split_once('-') else {
        return false;
    };
    !prefix.is_empty()
        && prefix.chars().all(|c| c.is_ascii_lowercase())
        && !rest.is_empty()
        && id.len() <= 63
        && rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Places envd as `<data>/envd-layer/.wrenn/envd` (a hard link, or a copy
/// across file systems) unless it is there already, and returns the layer.
/// A new envd replaces the old one by rename; sandboxes that run keep the
/// one they started with (PID 1 restarts envd by forking, never from disk).
fn envd_layer(envd: &Path, data_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let layer = data_dir.join("envd-layer");
    let dir = layer.join(".wrenn");
    std::fs::create_dir_all(&dir)?;
    for d in [&layer, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    let dest = dir.join("envd");
    let src = std::fs::metadata(envd)?;
    if let Ok(have) = std::fs::metadata(&dest) {
        let same_file = have.dev() == src.dev() && have.ino() == src.ino();
        let same_copy = have.len() == src.len() && have.modified().ok() == src.modified().ok();
        if same_file || same_copy {
            return Ok(layer);
        }
    }
    let tmp = dir.join(format!(".envd.{}.tmp", random_hex(6)));
    if std::fs::hard_link(envd, &tmp).is_err() {
        std::fs::copy(envd, &tmp)?;
        let f = std::fs::File::options().write(true).open(&tmp)?;
        f.set_modified(src.modified()?)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::rename(&tmp, &dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(layer)
}

/// The agent's directory for what lives only while it runs (the LXCFS
/// mount): one per cgroup parent, as each agent on a machine has its own.
fn run_dir(cgroup_parent: &str) -> PathBuf {
    Path::new(lock::RUN_ROOT).join(lock::sanitize(cgroup_parent))
}

/// The CPUs a sandbox with `vcpus` runs on: consecutive ones among the
/// agent's, starting where its slot falls, so that sandboxes spread over
/// the host. Empty (all CPUs) when it may use them all.
fn pick_cpus(slot: u32, vcpus: u32) -> Vec<usize> {
    let Ok(set) = rustix::thread::sched_getaffinity(None) else {
        return Vec::new();
    };
    let mine: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect();
    let n = vcpus as usize;
    if mine.is_empty() || n >= mine.len() {
        return Vec::new();
    }
    let first = slot as usize * n;
    (0..n).map(|i| mine[(first + i) % mine.len()]).collect()
}

impl NamespaceRuntime {
    /// Sets up the runtime: directories, firewall, netlink; must run inside
    /// a tokio runtime, as root.
    pub fn new(cfg: Config) -> Result<Arc<Self>, RuntimeError> {
        if !rustix::process::geteuid().is_root() {
            return Err(RuntimeError::failed(
                "the namespace runtime needs root; run the agent as root",
            ));
        }
        // Before anything is touched: another agent's sandboxes are not
        // ours. Held in `cfg` for as long as the runtime lives.
        let mut cfg = cfg;
        if cfg.instance_lock.is_none() {
            cfg.instance_lock = Some(Arc::new(
                lock::take(&cfg.cgroup_parent, &cfg.data_dir)
                    .map_err(|e| RuntimeError::failed(e.to_string()))?,
            ));
        }
        for d in ["sandboxes", "templates", "cache"] {
            let p = cfg.data_dir.join(d);
            std::fs::create_dir_all(&p).map_err(failed(format!("creating {}", p.display())))?;
        }
        if !cfg.envd_binary.exists() {
            return Err(RuntimeError::failed(format!(
                "envd binary not found at {}; build it (cargo build -p envd) or pass --envd",
                cfg.envd_binary.display()
            )));
        }
        // Sandbox inits are re-parented to us when their launcher exits;
        // being a subreaper lets us reap them.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .map_err(|e| failed("PR_SET_CHILD_SUBREAPER")(e.into()))?;
        for e in limits::raise() {
            tracing::warn!("could not raise a host limit, fewer sandboxes will fit: {e}");
        }
        let dynmods = cgroup::favor_dynamic_moves()
            .inspect_err(|e| {
                tracing::info!(
                    "cgroup moves stay slow (favordynmods unavailable: {e}); creates and first execs take ~10 ms longer"
                )
            })
            .ok();
        let resolvers = network::host_resolvers();
        // The sandboxes that may be adopted keep their egress rules in the
        // same transaction that makes the firewall anew: no moment without
        // them.
        let kept = saved_egress(&cfg.data_dir.join("sandboxes"));
        network::install_firewall(&resolvers, &kept)
            .map_err(|e| RuntimeError::failed(e.to_string()))?;
        let net = Network::new().map_err(failed("opening netlink"))?;
        let templates = TemplateStore::new(cfg.data_dir.join("templates"), cfg.uid_base);
        let envd_interp = elf_interpreter(&cfg.envd_binary);
        let envd_layer = envd_layer(&cfg.envd_binary, &cfg.data_dir)
            .map_err(failed("placing envd in <data>/envd-layer"))?;
        let run_dir = run_dir(&cfg.cgroup_parent);
        if cfg.lxcfs_binary.is_none() {
            tracing::warn!(
                "lxcfs is not installed (apt-get install lxcfs): sandboxes will see the host's memory, CPUs and uptime in /proc"
            );
        }
        Ok(Arc::new_cyclic(
            |this: &std::sync::Weak<NamespaceRuntime>| NamespaceRuntime {
                procview: cfg.lxcfs_binary.as_ref().and_then(|lxcfs| {
                    let this = this.clone();
                    procview::ProcView::start(lxcfs, &run_dir, move |view| {
                        if let Some(rt) = this.upgrade() {
                            rt.rebind_views(view);
                        }
                    })
                }),
                envd_layer,
                envd_interp,
                disks: DiskImages::default(),
                cgroups: cgroup::detect(&cfg.cgroup_parent),
                net,
                slots: Slots::default(),
                loopback_threads: tokio::sync::Semaphore::new(LOOPBACK_THREADS),
                templates,
                resolvers,
                live: Mutex::new(HashMap::new()),
                egress_lock: tokio::sync::Mutex::new(()),
                egress_ips: Mutex::new(kept.into_iter().map(|(ip, _)| ip).collect()),
                teardowns: Teardowns::default(),
                _dynmods: dynmods,
                this: this.clone(),
                cfg,
            },
        ))
    }

    /// The template store this runtime uses.
    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }

    /// "v1" or "v2".
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.data_dir.join("sandboxes").join(id)
    }

    fn save(&self, id: &str, record: &Record) -> Result<(), RuntimeError> {
        let p = self.dir(id).join("runtime.json");
        // A record describes live processes: a reboot ends them, so it
        // needs to outlive only a crash of the agent (no fsync, which costs
        // milliseconds per create on a busy disk).
        crate::write_atomic(
            &p,
            &serde_json::to_vec_pretty(record).expect("record serializes"),
            0o644,
            crate::Durability::ProcessCrash,
        )
        .map_err(failed(format!("writing {}", p.display())))
    }

    /// Removes whatever a sandbox left: processes, cgroup, veth, directory.
    /// Ends every process of a sandbox: its init, then whatever is left
    /// in its cgroup (thawed if frozen, so that the kill lands), then the
    /// cgroup itself; everything reaped.
    async fn end_processes(&self, id: &str, record: Option<&Record>) -> Result<(), RuntimeError> {
        if let Some(r) = record {
            let pid = r.instance.init_pid;
            if pid > 0 && start_time(pid) == Some(r.init_start_time) {
                kill(pid);
            }
        }
        // Tasks of the sandbox that outlive its PID 1 for a moment are
        // re-parented to the agent (a subreaper): reaped below, by pid.
        let mut killed = std::collections::HashSet::new();
        if self.cgroups.exists(id) {
            let frozen = self.cgroups.is_frozen(id);
            for p in self.cgroups.pids(id) {
                kill(p);
                killed.insert(p);
            }
            if frozen {
                let cg = self.this.upgrade().expect("runtime alive");
                let id2 = id.to_string();
                let _ =
                    tokio::task::spawn_blocking(move || cg.cgroups.set_frozen(&id2, false)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(r) = record {
                    reap(r.instance.init_pid);
                }
                let left = self.cgroups.pids(id);
                if left.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(RuntimeError::failed(format!(
                        "sandbox {id}: processes {left:?} did not die"
                    )));
                }
                for p in left {
                    kill(p);
                    killed.insert(p);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // The cgroup can stay busy for a moment after its last task.
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Err(e) = self.cgroups.remove(id) {
                if Instant::now() > deadline {
                    return Err(RuntimeError::failed(format!(
                        "removing the cgroup of {id}: {e}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if let Some(r) = record {
            // Once PID 1 is reaped, its exit has handed whatever it left to
            // the agent; then those are reaped too.
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reap(r.instance.init_pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for p in killed {
            reap(p);
        }
        Ok(())
    }

    async fn teardown(&self, id: &str, record: Option<&Record>) -> Result<(), RuntimeError> {
        self.end_processes(id, record).await?;
        // The directory before the network: a teardown tried again after
        // a failure here must not release the slot twice (a create may
        // hold it by then). A veth left by a crash in between is swept by
        // `recover`, which removes links no sandbox owns.
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::failed(format!(
                    "removing {}: {e}",
                    dir.display()
                )));
            }
            _ => {}
        }
        if let Some(r) = record {
            // Its egress chain emptied before the slot is free again. A
            // failure is logged and the slot stays marked: the next create
            // in it empties the chain first (stale rules only ever drop).
            let _turn = self.egress_lock.lock().await;
            let ip = r.slot.sandbox_ip();
            let has_rules = self.egress_ips.lock().contains(&ip);
            if has_rules && let Err(e) = self.apply_egress(id, ip, &Egress::default()).await {
                tracing::warn!(sandbox = %id, "emptying its egress rules: {e}");
            }
            drop(_turn);
            self.net
                .detach(r.slot)
                .await
                .map_err(|e| RuntimeError::failed(e.to_string()))?;
            self.slots.release(r.slot);
        }
        Ok(())
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let bad = |m: String| Err(RuntimeError::InvalidSpec(m));
        if !valid_id(&spec.id) {
            return bad(format!(
                "invalid sandbox id '{}': use a prefix, '-', then lowercase letters and digits",
                spec.id
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        if spec.vcpus == 0 || spec.vcpus > cores {
            return bad(format!(
                "vcpus must be between 1 and {cores} (this host's cores), got {}",
                spec.vcpus
            ));
        }
        let host_mb = (rustix::system::sysinfo().totalram as u64 / (1 << 20)) as u32;
        if spec.memory_mb < 32 || spec.memory_mb > host_mb {
            return bad(format!(
                "memory_mb must be between 32 and {host_mb} (this host's memory), got {}",
                spec.memory_mb
            ));
        }
        let free_mb = rustix::fs::statvfs(&self.cfg.data_dir)
            .map(|s| s.f_bavail * s.f_frsize / (1 << 20))
            .unwrap_or(0);
        if spec.disk_size_mb < 64 || u64::from(spec.disk_size_mb) > free_mb.max(64) * 16 {
            return bad(format!(
                "disk_size_mb must be at least 64 and fit this host's disk ({free_mb} MiB free), got {}",
                spec.disk_size_mb
            ));
        }
        let template = self
            .templates
            .get(&spec.template)
            .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        // A dynamically linked envd runs only where its loader exists.
        if let Some(interp) = &self.envd_interp {
            let inside = template.rootfs.join(interp.trim_start_matches('/'));
            if std::fs::symlink_metadata(&inside).is_err() {
                return bad(format!(
                    "template '{}' has no {interp}, which envd ({}) needs: it is dynamically linked; \
                     build a static envd (RUSTFLAGS=\"-C target-feature=+crt-static -C relocation-model=static\" cargo build --release -p envd --target x86_64-unknown-linux-gnu) and pass it with --envd",
                    spec.template,
                    self.cfg.envd_binary.display()
                ));
            }
        }
        Ok(())
    }

    async fn create_inner(
        &self,
        spec: &SandboxSpec,
        record: &mut Option<Record>,
    ) -> Result<Instance, RuntimeError> {
        let id = &spec.id;
        let dir = self.dir(id);
        // How long each step took, logged at debug level: where a create's
        // time goes.
        let started = Instant::now();
        let mut steps: Vec<(&str, u128)> = Vec::with_capacity(8);
        let mut step = |name: &'static str| steps.push((name, started.elapsed().as_micros()));
        let template = self
            .templates
            .get(&spec.template)
            .map_err(|e| RuntimeError::InvalidSpec(e.to_string()))?;
        for sub in ["disk", "rootfs"] {
            std::fs::create_dir(dir.join(sub)).map_err(failed("creating the sandbox directory"))?;
        }
        let disk_image = dir.join("disk.img");
        {
            let this = self.this.upgrade().expect("runtime alive");
            let (dest, mb) = (disk_image.clone(), spec.disk_size_mb);
            tokio::task::spawn_blocking(move || {
                this.disks.copy_to(
                    &this.cfg.data_dir.join("cache"),
                    this.cfg.uid_base,
                    mb,
                    &dest,
                )
            })
            .await
            .map_err(|e| RuntimeError::caused("copying the disk image", e))??;
        }
        step("disk");
        let slot = self
            .slots
            .take(spec.allow_internet_access)
            .map_err(|e| RuntimeError::Exhausted(e.to_string()))?;
        let token = random_hex(16);
        let envd_addr = SocketAddr::new(slot.sandbox_ip().into(), wrenn_protocol::envd::PORT);
        *record = Some(Record {
            instance: Instance {
                spec: spec.clone(),
                envd_addr,
                envd_token: token.clone(),
                init_pid: 0,
                state: RunState::Running,
                memory_dropped: false,
            },
            slot,
            init_start_time: 0,
            ready: false,
            destroying: false,
        });
        self.save(id, record.as_ref().expect("set"))?;
        self.boot(spec, record, &template.rootfs, started, &mut steps)
            .await
    }

    /// Starts a sandbox whose directory, disk and record exist: its
    /// cgroup, its init (which mounts the disk it finds, with whatever an
    /// earlier boot left on it), its network and rules, and envd. A create
    /// does this once; a resume after a pause that dropped the sandbox's
    /// memory does it again.
    async fn boot(
        &self,
        spec: &SandboxSpec,
        record: &mut Option<Record>,
        template_rootfs: &Path,
        started: Instant,
        steps: &mut Vec<(&'static str, u128)>,
    ) -> Result<Instance, RuntimeError> {
        let id = &spec.id;
        let dir = self.dir(id);
        let mut step = |name: &'static str| steps.push((name, started.elapsed().as_micros()));
        let (slot, token) = {
            let r = record.as_ref().expect("set");
            (r.slot, r.instance.envd_token.clone())
        };
        let disk_image = dir.join("disk.img");

        let limits = Limits {
            memory_bytes: u64::from(spec.memory_mb) << 20,
            vcpus: spec.vcpus,
            pids: self.cfg.pids_max,
            cpus: pick_cpus(slot.index, spec.vcpus),
        };
        let joins = self
            .cgroups
            .create(id, &limits)
            .map_err(failed(format!("creating the cgroup of {id}")))?;
        step("cgroup");
        let resolv_conf = if spec.allow_internet_access && !self.resolvers.is_empty() {
            self.resolvers
                .iter()
                .map(|r| format!("nameserver {r}\n"))
                .collect()
        } else {
            String::new()
        };
        let init_spec = InitSpec {
            sandbox_id: id.clone(),
            template_rootfs: template_rootfs.to_path_buf(),
            disk_image,
            disk_mount: dir.join("disk"),
            rootfs: dir.join("rootfs"),
            envd_layer: self.envd_layer.clone(),
            proc_view: self.procview.as_ref().map(|v| v.mount().to_path_buf()),
            cpus: limits.cpus.clone(),
            cgroup_procs: joins.envd,
            work_cgroup_procs: joins.work,
            uid_base: self.cfg.uid_base,
            resolv_conf,
            envd_env: vec![
                (
                    "PATH".into(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ),
                ("HOME".into(), "/root".into()),
                ("ENVD_ACCESS_TOKEN".into(), token.clone()),
                ("ENVD_LOG".into(), "envd=warn".into()),
                ("ENVD_STATE_FILE".into(), init::ENVD_STATE_FILE.into()),
            ],
            nofile: limits::original_nofile(),
        };
        let mut init = tokio::process::Command::new(&self.cfg.init_exe);
        init.arg("__sandbox-init")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // No pre_exec hook: the standard library spawns the init with
        // posix_spawn (vfork), not a fork of this large process.
        let mut child = init
            .spawn()
            .map_err(failed(format!("starting {}", self.cfg.init_exe.display())))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut line = serde_json::to_string(&init_spec).expect("spec serializes");
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(failed("sending the init spec"))?;
        let mut pid = 0;
        loop {
            let next = tokio::time::timeout(self.cfg.start_timeout, lines.next_line()).await;
            let Ok(next) = next else {
                return Err(RuntimeError::failed(format!(
                    "sandbox {id}: init did not answer within {:?}",
                    self.cfg.start_timeout
                )));
            };
            let Some(msg) = next.map_err(failed("reading from the sandbox init"))? else {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut err).await;
                }
                return Err(RuntimeError::failed(format!(
                    "sandbox {id}: init exited early: {}",
                    err.trim()
                )));
            };
            match msg
                .split_once(' ')
                .map_or((msg.as_str(), ""), |(a, b)| (a, b))
            {
                ("pid", n) => {
                    pid = n
                        .parse()
                        .map_err(|_| RuntimeError::failed(format!("bad pid line '{msg}'")))?;
                    let _ = child.wait().await; // the launcher exits right away
                    // PID 1 restarts envd when it dies; the OOM killer
                    // should never pick PID 1 itself (envd resets its own).
                    // Needs CAP_SYS_RESOURCE; without it PID 1 is merely
                    // the smallest process of the sandbox.
                    if let Err(e) = std::fs::write(format!("/proc/{pid}/oom_score_adj"), "-1000") {
                        tracing::debug!(sandbox = %id, "cannot shield PID 1 from the OOM killer: {e}");
                    }
                    let r = record.as_mut().expect("set");
                    r.instance.init_pid = pid;
                    r.init_start_time = start_time(pid).unwrap_or(0);
                    self.save(id, r)?;
                    step("init");
                    // The network namespace exists from here on: wired up
                    // while the init mounts the sandbox's file systems.
                    self.net
                        .attach(pid, slot)
                        .await
                        .map_err(|e| RuntimeError::caused(format!("sandbox {id}"), e))?;
                    // Its rules before its first process runs (and a slot's
                    // chain left with rules emptied).
                    let _turn = self.egress_lock.lock().await;
                    let ip = slot.sandbox_ip();
                    let stale = self.egress_ips.lock().contains(&ip);
                    // A boot again takes the rules as they are now (a
                    // change may have come during the boot).
                    let egress = self
                        .live
                        .lock()
                        .get(id)
                        .map(|l| l.record.instance.spec.egress.clone())
                        .unwrap_or_else(|| spec.egress.clone());
                    if !egress.is_empty() || stale {
                        self.apply_egress(id, ip, &egress).await?;
                    }
                    drop(_turn);
                    step("network");
                }
                ("net", _) => {
                    step("mounts");
                    stdin
                        .write_all(b"go\n")
                        .await
                        .map_err(failed("talking to the sandbox init"))?;
                }
                ("userns", _) => {
                    let map = format!("0 {} {}\n", self.cfg.uid_base, self.cfg.uid_count);
                    for f in ["uid_map", "gid_map"] {
                        std::fs::write(format!("/proc/{pid}/{f}"), &map)
                            .map_err(failed(format!("writing {f}")))?;
                    }
                    stdin
                        .write_all(b"mapped\n")
                        .await
                        .map_err(failed("talking to the sandbox init"))?;
                }
                ("exec", _) => {
                    step("exec");
                    break;
                }
                ("error:", e) => return Err(RuntimeError::failed(format!("sandbox {id}: {e}"))),
                _ => {
                    return Err(RuntimeError::failed(format!(
                        "sandbox {id}: unexpected init message '{msg}'"
                    )));
                }
            }
        }
        // envd runs from here on (its socket listened before it did): the
        // agent waits for it to answer, gives it the environment, then
        // confirms the sandbox (`Runtime::confirm` marks the record ready;
        // until then a restart removes it as half made).
        let r = record.as_mut().expect("set");
        tracing::debug!(sandbox = %id, ?steps, "created (µs since the start, per step)");
        Ok(r.instance.clone())
    }

    /// Binds a (re)started LXCFS into every live sandbox.
    fn rebind_views(&self, view: &procview::ProcView) {
        let pids: Vec<u32> = self
            .live
            .lock()
            .values()
            .map(|l| &l.record)
            .filter(|r| {
                r.instance.init_pid > 0
                    && start_time(r.instance.init_pid) == Some(r.init_start_time)
            })
            .map(|r| r.instance.init_pid)
            .collect();
        if pids.is_empty() {
            return;
        }
        let failed = view.rebind(&pids);
        tracing::info!(
            sandboxes = pids.len(),
            failed = failed.len(),
            "bound the restarted LXCFS into the live sandboxes"
        );
        for (pid, e) in failed {
            tracing::warn!(init_pid = pid, "a sandbox keeps a dead /proc view: {e}");
        }
    }

    /// Watches a sandbox's init; when it dies on its own, the sandbox is
    /// torn down.
    fn watch(&self, id: String, pid: u32) -> Option<tokio::task::JoinHandle<()>> {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid as i32)?,
            rustix::process::PidfdFlags::empty(),
        )
        .ok()?;
        // SAFETY: the OwnedFd stays open and unchanged while the AsyncFd owns it.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        }
        .ok()?;
        let this = self.this.clone();
        Some(tokio::spawn(async move {
            let _ = fd.readable().await;
            let Some(rt) = this.upgrade() else { return };
            let record = rt.live.lock().remove(&id).map(|l| l.record);
            if let Some(r) = record {
                tracing::warn!(sandbox = %id, "sandbox init exited; removing the sandbox");
                if let Err(e) = rt.teardown(&id, Some(&r)).await {
                    tracing::error!(sandbox = %id, "cleaning up: {e}");
                }
            }
        }))
    }

    /// Marks the sandbox `id` busy with a pause without memory or a boot
    /// again, after `first` (which may refuse, or change its record) said
    /// yes; refused while another such change runs. The caller clears
    /// `busy` when it is done.
    fn claim<R>(
        &self,
        id: &str,
        first: impl FnOnce(&mut Live) -> Result<R, RuntimeError>,
    ) -> Result<R, RuntimeError> {
        let mut live = self.live.lock();
        let l = live
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if l.busy {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox {id} is being paused or resumed"
            )));
        }
        let r = first(l)?;
        l.busy = true;
        Ok(r)
    }

    /// Boots a sandbox paused with its memory dropped: the same record
    /// (address, token, disk), a new init. The record says paused without
    /// memory until the boot is whole (an agent that dies meanwhile finds
    /// it so); on failure it stays that way, to be resumed again or
    /// destroyed; a destroy during the boot ends what the boot started.
    async fn boot_again(&self, id: &str) -> Result<Instance, RuntimeError> {
        let record = self.claim(id, |l| Ok(l.record.clone()))?;
        let template = match self.templates.get(&record.instance.spec.template) {
            Ok(t) => t,
            Err(e) => {
                if let Some(l) = self.live.lock().get_mut(id) {
                    l.busy = false;
                }
                return Err(RuntimeError::InvalidSpec(e.to_string()));
            }
        };
        let spec = record.instance.spec.clone();
        let mut slot = Some(record);
        let mut steps = Vec::with_capacity(8);
        let booted = self
            .boot(
                &spec,
                &mut slot,
                &template.rootfs,
                Instant::now(),
                &mut steps,
            )
            .await;
        let booted_record = slot.expect("kept");
        // Ok(Some(record)): booted and recorded; Ok(None): destroyed meanwhile.
        let settled: Result<Option<Record>, RuntimeError> = {
            let mut live = self.live.lock();
            match live.get_mut(id) {
                None => Ok(None),
                Some(l) => {
                    l.busy = false;
                    match booted {
                        Ok(_) => {
                            // Only what the boot changed: rules set meanwhile stay.
                            l.record.instance.init_pid = booted_record.instance.init_pid;
                            l.record.init_start_time = booted_record.init_start_time;
                            l.record.instance.state = RunState::Running;
                            l.record.instance.memory_dropped = false;
                            l.watcher = self.watch(id.to_string(), l.record.instance.init_pid);
                            Ok(Some(l.record.clone()))
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match settled {
            Ok(Some(r)) => {
                self.save(id, &r)?;
                Ok(r.instance)
            }
            Ok(None) => {
                // Destroyed meanwhile: what this boot started ends too.
                let _ = self.end_processes(id, Some(&booted_record)).await;
                Err(RuntimeError::NotFound(id.into()))
            }
            Err(e) => {
                let _ = self.end_processes(id, Some(&booted_record)).await;
                let kept = self.live.lock().get(id).map(|l| l.record.clone());
                if let Some(r) = kept {
                    let _ = self.save(id, &r);
                }
                Err(e)
            }
        }
    }

    /// Makes `egress` the firewall's rules for the sandbox at `ip`, and
    /// notes whether its chain has any. The caller holds `egress_lock`:
    /// changes, creates and teardowns of rules never interleave.
    async fn apply_egress(
        &self,
        id: &str,
        ip: std::net::Ipv4Addr,
        egress: &Egress,
    ) -> Result<(), RuntimeError> {
        let rules = egress.clone();
        tokio::task::spawn_blocking(move || network::apply_egress(ip, &rules))
            .await
            .map_err(|e| RuntimeError::caused("applying egress rules", e))?
            .map_err(|e| {
                RuntimeError::caused(format!("sandbox {id}: applying its egress rules"), e)
            })?;
        let mut used = self.egress_ips.lock();
        if egress.is_empty() {
            used.remove(&ip);
        } else {
            used.insert(ip);
        }
        Ok(())
    }

    fn set_state(&self, id: &str, state: RunState) -> Result<Instance, RuntimeError> {
        let mut live = self.live.lock();
        let l = live
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        l.record.instance.state = state;
        let r = l.record.clone();
        drop(live);
        self.save(id, &r)?;
        Ok(r.instance)
    }
}

/// The egress rules of the sandboxes recorded under `root` that a start
/// may adopt (whole, not being destroyed), by address.
fn saved_egress(root: &Path) -> Vec<(std::net::Ipv4Addr, Egress)> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let b = std::fs::read(e.path().join("runtime.json")).ok()?;
            let r: Record = serde_json::from_slice(&b).ok()?;
            (r.ready && !r.destroying && !r.instance.spec.egress.is_empty())
                .then(|| (r.slot.sandbox_ip(), r.instance.spec.egress))
        })
        .collect()
}

fn kill(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Reaps `pid` if it is our exited child; true once it is gone (reaped
/// now or before, or never ours).
fn reap(pid: u32) -> bool {
    if pid > 0 {
        let mut status = 0;
        // SAFETY: plain waitpid on a pid; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        return r != 0;
    }
    true
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The cached empty ext4 images sandbox disks are copied from, one per
/// size: each made once (under a lock, in a temporary file of its own,
/// renamed into place only when complete) and checked with `e2fsck` the
/// first time this process uses it, so that a damaged image is rebuilt
/// rather than handed to every later sandbox.
#[derive(Default)]
struct DiskImages {
    /// Images known good in this process; the lock also serializes making one.
    checked: Mutex<std::collections::HashSet<PathBuf>>,
}

impl DiskImages {
    /// Puts an empty ext4 image of `mb` MiB at `dest` (a sparse copy: a few
    /// hundred KiB of metadata). Blocks; call it off the async runtime.
    fn copy_to(
        &self,
        cache: &Path,
        uid_base: u32,
        mb: u32,
        dest: &Path,
    ) -> Result<(), RuntimeError> {
        let golden = cache.join(format!("disk-{mb}m-{uid_base}.img"));
        {
            let mut checked = self.checked.lock();
            if !checked.contains(&golden) {
                if golden.exists() && !image_is_sound(&golden, mb) {
                    tracing::warn!(image = %golden.display(), "cached disk image is damaged; making it again");
                    std::fs::remove_file(&golden)
                        .map_err(failed(format!("removing {}", golden.display())))?;
                }
                if !golden.exists() {
                    make_image(&golden, uid_base, mb)?;
                }
                checked.insert(golden.clone());
            }
        }
        sparse_copy(&golden, dest).map_err(failed(format!("copying {}", golden.display())))
    }
}

/// Whether `image` is a complete, clean ext4 file system of `mb` MiB.
fn image_is_sound(image: &Path, mb: u32) -> bool {
    let size_ok = std::fs::metadata(image).is_ok_and(|m| m.len() == u64::from(mb) << 20);
    size_ok
        && std::process::Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(image)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Makes the empty image `golden` in a temporary file unique to this call,
/// then renames it into place.
fn make_image(golden: &Path, uid_base: u32, mb: u32) -> Result<(), RuntimeError> {
    let tmp = golden.with_extension(format!("tmp-{}-{}", std::process::id(), random_hex(8)));
    let result = (|| {
        let f = std::fs::File::create(&tmp).map_err(failed("creating a disk image"))?;
        f.set_len(u64::from(mb) << 20)
            .map_err(failed("sizing a disk image"))?;
        drop(f);
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
            .arg("-E")
            .arg(format!(
                "lazy_itable_init=1,lazy_journal_init=1,root_owner={uid_base}:{uid_base}"
            ))
            .arg(&tmp)
            .output()
            .map_err(failed("running mkfs.ext4 (apt-get install e2fsprogs)"))?;
        if !out.status.success() {
            return Err(RuntimeError::failed(format!(
                "mkfs.ext4: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(failed("syncing a disk image"))?;
        std::fs::rename(&tmp, golden).map_err(failed("caching a disk image"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies `src` to `dst` keeping holes: only data extents are written.
fn sparse_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt;
    let s = std::fs::File::open(src)?;
    let len = s.metadata()?.len();
    let d = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    d.set_len(len)?;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < len {
        let start = match rustix::fs::seek(&s, SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(&s, SeekFrom::Hole(start))
            .map_err(std::io::Error::from)?
            .min(len);
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            s.read_exact_at(&mut buf[..n], off)?;
            d.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        pos = end;
    }
    Ok(())
}

/// Sockets for 127.0.0.1 and ::1 made inside the network namespace of the
/// sandbox whose init is `pid` (started at `started`), on this thread,
/// which it moves there for good. A socket stays in the namespace it was
/// made in: the caller connects it, anywhere. Quick: no connect here, so a
/// server that never accepts cannot hold the thread.
fn loopback_sockets_in(pid: u32, started: u64) -> std::io::Result<[std::os::fd::OwnedFd; 2]> {
    // Open first, then check: the namespace is the right one even if the
    // pid is reused right after.
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    if start_time(pid) != Some(started) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the sandbox's first process is gone",
        ));
    }
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    let socket = |family| {
        rustix::net::socket_with(
            family,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
            None,
        )
    };
    Ok([
        socket(rustix::net::AddressFamily::INET)?,
        socket(rustix::net::AddressFamily::INET6)?,
    ])
}

/// How many threads at once may be entering sandboxes' namespaces for the
/// proxy (each lives for microseconds; the bound keeps a flood of
/// connections to loopback-only servers from piling threads up).
const LOOPBACK_THREADS: usize = 16;

/// Tries at removing a destroyed sandbox before leaving it to `recover`.
const TEARDOWN_ATTEMPTS: u32 = 3;

/// Destroyed sandboxes removed at once, at most.
const TEARDOWNS_AT_ONCE: usize = 16;

impl Runtime for NamespaceRuntime {
    fn name(&self) -> &'static str {
        "namespaces"
    }

    async fn create(&self, spec: SandboxSpec) -> Result<Instance, RuntimeError> {
        self.validate(&spec)?;
        let id = spec.id.clone();
        let dir = self.dir(&id);
        if self.live.lock().contains_key(&id) {
            return Err(RuntimeError::AlreadyExists(id));
        }
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(id));
            }
            Err(e) => return Err(failed(format!("creating {}", dir.display()))(e)),
        }
        let mut record = None;
        match self.create_inner(&spec, &mut record).await {
            Ok(instance) => {
                let r = record.expect("set on success");
                let watcher = self.watch(id.clone(), r.instance.init_pid);
                self.live.lock().insert(id, Live::new(r, watcher));
                Ok(instance)
            }
            Err(e) => {
                if let Err(t) = self.teardown(&id, record.as_ref()).await {
                    tracing::error!(sandbox = %id, "cleaning up a failed create: {t}");
                }
                Err(e)
            }
        }
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(mut l) = self.live.lock().remove(id) else {
            return Err(RuntimeError::NotFound(id.into()));
        };
        if let Some(w) = l.watcher.take() {
            w.abort();
        }
        // Marked first: an agent that dies from here on removes it on its
        // next start instead of adopting it.
        l.record.destroying = true;
        if let Err(e) = self.save(id, &l.record) {
            tracing::warn!(sandbox = %id, "marking the sandbox destroyed: {e}");
        }
        // Stopped now (killing PID 1 ends its PID namespace); the unmounts,
        // cgroup, link and directory go behind, off the caller's clock.
        let pid = l.record.instance.init_pid;
        if pid > 0 && start_time(pid) == Some(l.record.init_start_time) {
            kill(pid);
        }
        let counted = Counted::new(self.this.upgrade().expect("runtime alive"));
        let id = id.to_string();
        tokio::spawn(async move {
            let this = &counted.0;
            let _turn = this.teardowns.slots.acquire().await;
            // A teardown that fails (a process that would not die, a busy
            // cgroup) is tried again a few times; what still stands is
            // removed by the next start's `recover`.
            for attempt in 1..=TEARDOWN_ATTEMPTS {
                match this.teardown(&id, Some(&l.record)).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(sandbox = %id, attempt, "removing a destroyed sandbox: {e}");
                        tokio::time::sleep(Duration::from_secs(attempt.into())).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn settle(&self) {
        self.teardowns.settled().await;
    }

    async fn confirm(&self, id: &str) -> Result<(), RuntimeError> {
        let record = {
            let mut live = self.live.lock();
            let l = live
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            l.record.ready = true;
            l.record.clone()
        };
        self.save(id, &record)
    }

    async fn pause(&self, id: &str) -> Result<Instance, RuntimeError> {
        let inst = self
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if inst.state == RunState::Paused {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox {id} is already paused"
            )));
        }
        let this = self.this.upgrade().expect("runtime alive");
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || this.cgroups.set_frozen(&id2, true))
            .await
            .map_err(|e| RuntimeError::failed(e.to_string()))?
            .map_err(failed(format!("freezing {id}")))?;
        self.set_state(id, RunState::Paused)
    }

    async fn resume(&self, id: &str) -> Result<Instance, RuntimeError> {
        let inst = self
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if inst.state == RunState::Running {
            return Err(RuntimeError::InvalidState(format!(
                "sandbox {id} is not paused"
            )));
        }
        if inst.memory_dropped {
            return self.boot_again(id).await;
        }
        let this = self.this.upgrade().expect("runtime alive");
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || this.cgroups.set_frozen(&id2, false))
            .await
            .map_err(|e| RuntimeError::failed(e.to_string()))?
            .map_err(failed(format!("thawing {id}")))?;
        self.set_state(id, RunState::Running)
    }

    async fn set_egress(&self, id: &str, egress: Egress) -> Result<Instance, RuntimeError> {
        // Held from the lookup to the save: a destroy in between either
        // came first (NotFound) or waits, then empties the chain.
        let _turn = self.egress_lock.lock().await;
        let slot = self
            .live
            .lock()
            .get(id)
            .map(|l| l.record.slot)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        self.apply_egress(id, slot.sandbox_ip(), &egress).await?;
        let mut live = self.live.lock();
        let l = live
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        l.record.instance.spec.egress = egress;
        let r = l.record.clone();
        drop(live);
        self.save(id, &r)?;
        Ok(r.instance)
    }

    async fn pause_dropping_memory(&self, id: &str) -> Result<Instance, RuntimeError> {
        let record = self.claim(id, |l| {
            if l.record.instance.memory_dropped {
                return Err(RuntimeError::InvalidState(format!(
                    "sandbox {id} is already paused"
                )));
            }
            // Its init ends on purpose: not a death to tear it down for.
            if let Some(w) = l.watcher.take() {
                w.abort();
            }
            // Said before anything ends: an agent that dies from here on
            // finds it paused without its memory, not a dead sandbox.
            l.record.instance.state = RunState::Paused;
            l.record.instance.memory_dropped = true;
            Ok(l.record.clone())
        })?;
        let ended = match self.save(id, &record) {
            Ok(()) => self.end_processes(id, Some(&record)).await,
            Err(e) => Err(e),
        };
        let mut live = self.live.lock();
        let Some(l) = live.get_mut(id) else {
            return Err(RuntimeError::NotFound(id.into()));
        };
        l.busy = false;
        ended?;
        l.record.instance.init_pid = 0;
        l.record.init_start_time = 0;
        let r = l.record.clone();
        drop(live);
        self.save(id, &r)?;
        Ok(r.instance)
    }

    fn get(&self, id: &str) -> Option<Instance> {
        self.live.lock().get(id).map(|l| l.record.instance.clone())
    }

    fn list(&self) -> Vec<Instance> {
        let mut v: Vec<Instance> = self
            .live
            .lock()
            .values()
            .map(|l| l.record.instance.clone())
            .collect();
        v.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        v
    }

    async fn connect_loopback(
        &self,
        id: &str,
        port: u16,
    ) -> Result<Option<tokio::net::TcpStream>, RuntimeError> {
        let (pid, started) = {
            let live = self.live.lock();
            let r = &live
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(id.into()))?
                .record;
            if r.instance.state != RunState::Running {
                return Err(RuntimeError::InvalidState(format!(
                    "sandbox {id} is paused; resume it to reach port {port}"
                )));
            }
            (r.instance.init_pid, r.init_start_time)
        };
        let why = |what: &str| format!("reaching port {port} on the loopback of {id}: {what}");
        let sockets = {
            let _slot = self
                .loopback_threads
                .acquire()
                .await
                .map_err(|_| RuntimeError::failed(why("the runtime is stopping")))?;
            // A thread of its own: it leaves the host's network namespace
            // for good, which no pooled thread may do.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("loopback-socket".into())
                .spawn(move || {
                    let _ = tx.send(loopback_sockets_in(pid, started));
                })
                .map_err(failed(why("starting a thread")))?;
            rx.await
                .map_err(|_| RuntimeError::failed(why("the thread died")))?
                .map_err(failed(why("making a socket in its namespace")))?
        };
        let [v4, v6] = sockets;
        for (fd, ip) in [
            (v4, std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            (v6, std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        ] {
            let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
            let addr = SocketAddr::new(ip, port);
            match tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await {
                Ok(Ok(stream)) => return Ok(Some(stream)),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::AddrNotAvailable
                    ) => {}
                Ok(Err(e)) => return Err(failed(why("connecting"))(e)),
                Err(_) => {
                    return Err(RuntimeError::failed(why(
                        "the server did not accept within 2 s",
                    )));
                }
            }
        }
        Ok(None)
    }

    fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let inst = self
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        let u = self.cgroups.usage(id);
        let (disk_used, disk_limit) = rustix::fs::statvfs(format!("/proc/{}/root/", inst.init_pid))
            .map(|s| {
                (
                    (s.f_blocks - s.f_bfree) * s.f_frsize,
                    s.f_blocks * s.f_frsize,
                )
            })
            .unwrap_or((0, u64::from(inst.spec.disk_size_mb) << 20));
        Ok(Usage {
            cpu_usec: u.cpu_usec,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u64::from(inst.spec.memory_mb) << 20,
            disk_used_bytes: disk_used,
            disk_limit_bytes: disk_limit,
            pids: u.pids,
        })
    }

    async fn recover(&self) -> Result<Vec<Instance>, RuntimeError> {
        let root = self.cfg.data_dir.join("sandboxes");
        let mut adopted = Vec::new();
        let entries: Vec<_> = std::fs::read_dir(&root)
            .map_err(failed(format!("reading {}", root.display())))?
            .flatten()
            .collect();
        for e in entries {
            let id = e.file_name().to_string_lossy().into_owned();
            let record: Option<Record> = std::fs::read(e.path().join("runtime.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let alive = record.as_ref().is_some_and(|r| {
                r.ready
                    && !r.destroying
                    && r.instance.init_pid > 0
                    && start_time(r.instance.init_pid) == Some(r.init_start_time)
            });
            let cold = record
                .as_ref()
                .is_some_and(|r| r.ready && !r.destroying && r.instance.memory_dropped);
            if let (true, Some(mut r)) = (cold, record.clone()) {
                // Paused without its memory (or on its way there, or back:
                // the record says so until a boot is whole): whatever of
                // it still runs ends; its disk and address wait for a
                // resume.
                self.slots.mark(r.slot);
                self.end_processes(&id, Some(&r)).await?;
                r.instance.state = RunState::Paused;
                r.instance.init_pid = 0;
                r.init_start_time = 0;
                self.save(&id, &r)?;
                adopted.push(r.instance.clone());
                tracing::info!(sandbox = %id, "re-adopted a sandbox paused without its memory");
                self.live.lock().insert(id, Live::new(r, None));
            } else if let (true, Some(mut r)) = (alive, record.clone()) {
                self.slots.mark(r.slot);
                r.instance.state = if self.cgroups.is_frozen(&id) {
                    RunState::Paused
                } else {
                    RunState::Running
                };
                let watcher = self.watch(id.clone(), r.instance.init_pid);
                adopted.push(r.instance.clone());
                tracing::info!(sandbox = %id, "re-adopted a running sandbox");
                self.live.lock().insert(id, Live::new(r, watcher));
            } else {
                tracing::info!(sandbox = %id, "removing a dead or half-made sandbox");
                if let Some(r) = &record {
                    self.slots.mark(r.slot);
                }
                self.teardown(&id, record.as_ref()).await?;
            }
        }
        // Adopted sandboxes' /proc views pointed at the LXCFS of the agent
        // before, which died with it.
        if let (Some(view), Some(this)) = (self.procview.clone(), self.this.upgrade()) {
            if !adopted.is_empty() {
                let _ = tokio::task::spawn_blocking(move || this.rebind_views(&view)).await;
            }
        }
        // Cgroups and links nobody owns any more.
        let known: Vec<String> = self.live.lock().keys().cloned().collect();
        for id in self.cgroups.list() {
            if !known.contains(&id) {
                self.teardown(&id, None).await?;
            }
        }
        let slots: Vec<u32> = self
            .live
            .lock()
            .values()
            .map(|l| l.record.slot.index)
            .collect();
        for (index, _) in self
            .net
            .host_links()
            .await
            .map_err(|e| RuntimeError::failed(e.to_string()))?
        {
            if !slots.contains(&index) {
                let _ = self
                    .net
                    .detach(Slot {
                        index,
                        internet: true,
                    })
                    .await;
            }
        }
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn elf_interpreters() {
        let sh = super::elf_interpreter(std::path::Path::new("/bin/sh"));
        assert!(
            sh.as_deref().is_some_and(|i| i.contains("ld-linux")),
            "{sh:?}"
        );
        assert_eq!(
            super::elf_interpreter(std::path::Path::new("/etc/passwd")),
            None
        );
        assert_eq!(
            super::elf_interpreter(std::path::Path::new("/nonexistent")),
            None
        );
    }

    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn ids_fit_a_dns_label() {
        for (id, ok) in [
            ("sb-abc123", true),
            ("sb-", false),
            ("sb-ABC", false),
            ("sb-a.b", false),
            ("sb-a-b", false),
            ("abc", false),
        ] {
            assert_eq!(valid_id(id), ok, "{id}");
        }
    }

    #[test]
    fn damaged_cached_disk_images_are_made_again() {
        let dir = std::env::temp_dir().join(format!("disks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let golden = dir.join("disk-64m-0.img");
        // What a racing or interrupted mkfs left: the right name, no ext4.
        std::fs::write(&golden, vec![0xAAu8; 4096]).unwrap();
        let disks = DiskImages::default();
        // Many callers at once, as concurrent creates on a fresh data dir.
        std::thread::scope(|s| {
            for i in 0..4 {
                let (disks, dir) = (&disks, &dir);
                s.spawn(move || {
                    disks
                        .copy_to(dir, 0, 64, &dir.join(format!("copy{i}.img")))
                        .unwrap()
                });
            }
        });
        assert!(image_is_sound(&golden, 64), "the cached image was rebuilt");
        for i in 0..4 {
            assert!(image_is_sound(&dir.join(format!("copy{i}.img")), 64));
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "no temporary files left: {leftovers:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = std::env::temp_dir().join(format!("sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let dst = dir.join("dst");
        sparse_copy(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(
            std::fs::metadata(&dst).unwrap().blocks() * 512 < 1 << 20,
            "the copy is sparse"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
