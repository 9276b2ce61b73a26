//! The sandbox's first process, run as `wrenn __sandbox-init`.
//!
//! The agent starts it with a [`InitSpec`] on stdin and talks to it over
//! stdin/stdout in lines. It runs single-threaded (before any async runtime
//! exists), which `unshare(CLONE_NEWUSER)` and `fork` need:
//!
//! 1. joins the sandbox's cgroups, then unshares mount, UTS, IPC, network,
//!    cgroup and PID namespaces and forks; the parent prints `pid <host pid>`
//!    and exits, the child is PID 1 of the sandbox;
//! 2. as real root in a private mount namespace (so nothing shows on the
//!    host, and everything vanishes with the sandbox): attaches the disk
//!    image to a loop device, mounts the overlay root over the template,
//!    `/proc` (its own memory, CPUs and uptime through LXCFS), a minimal
//!    `/dev`, read-only `/sys`; envd is the overlay's top layer (meanwhile
//!    the agent wires up the network); prints `net` and waits for `go`,
//!    which the agent sends once the network is up;
//! 3. pivots into the root, unshares a user namespace, prints `userns` and
//!    waits for `mapped` while the agent writes the uid/gid maps;
//! 4. becomes root of that user namespace (an unprivileged uid range on the
//!    host), drops capabilities from the bounding set, installs the
//!    seccomp filter (without no_new_privs: the sandbox's `sudo` works, see
//!    [`seccomp::apply`]), prints `exec` and execs envd from a descriptor
//!    of its layer opened before the pivot (never by its path in the
//!    sandbox, whose upper layer the sandbox writes).
//!
//! It starts with exactly stdin, stdout and stderr: every other inherited
//! descriptor is closed first. envd gets those three, the workload
//! cgroup's `cgroup.procs` files and a socket listening on its port (bound
//! by the init once the network is up), nothing else. Any failure prints `error: <what>` and
//! exits non-zero.
//!
//! Why this file is long (~700 lines): it is one process's setup, in the
//! order the kernel requires; splitting it would scatter that order.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;
use serde::{Deserialize, Serialize};

use super::{loopdev, seccomp};

/// Everything the init needs, sent by the agent as one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    /// Sandbox id, also its hostname.
    pub sandbox_id: String,
    /// The template's root filesystem (read-only lower layer).
    pub template_rootfs: PathBuf,
    /// The sandbox's ext4 disk image (upper layer lives here).
    pub disk_image: PathBuf,
    /// Where the disk is mounted inside the sandbox's mount namespace.
    pub disk_mount: PathBuf,
    /// Where the overlay root is assembled.
    pub rootfs: PathBuf,
    /// A directory holding only `.wrenn/envd`: the overlay's top lower
    /// layer, so that envd is in the sandbox with no mount of its own
    /// (whose source would name a host path in mountinfo).
    pub envd_layer: PathBuf,
    /// The LXCFS mount whose files (`procview::FILES`) are bound over the
    /// sandbox's `/proc` and `/sys`; `None` without LXCFS.
    #[serde(default)]
    pub proc_view: Option<PathBuf>,
    /// The CPUs the sandbox runs on (its affinity, which `nproc` reports);
    /// empty for all.
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// `cgroup.procs` files to join before unsharing (envd's leaf).
    pub cgroup_procs: Vec<PathBuf>,
    /// `cgroup.procs` files of the workload's leaf: opened before
    /// unsharing and handed to envd as descriptors, into which each process
    /// it starts writes itself between fork and exec.
    #[serde(default)]
    pub work_cgroup_procs: Vec<PathBuf>,
    /// Host uid (and gid) that is root inside.
    pub uid_base: u32,
    /// Contents for /etc/resolv.conf.
    pub resolv_conf: String,
    /// Environment for envd.
    pub envd_env: Vec<(String, String)>,
    /// The open-files limit (soft, hard; `None` is unlimited) to set on
    /// itself first: the agent's own is raised, the sandbox's is not.
    #[serde(default)]
    pub nofile: Option<(Option<u64>, Option<u64>)>,
}

/// Where envd appears inside the sandbox.
pub const ENVD_PATH: &str = "/.wrenn/envd";

/// Where envd keeps what `/init` set, so that a restarted envd has it.
pub const ENVD_STATE_FILE: &str = "/.wrenn/envd-state.json";

struct Fail(String);

impl<E: std::fmt::Display> From<(&str, E)> for Fail {
    fn from((what, e): (&str, E)) -> Self {
        Fail(format!("{what}: {e}"))
    }
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl AsRef<str>) -> Result<T, Fail> {
    r.map_err(|e| Fail(format!("{}: {e}", what.as_ref())))
}

fn say(line: &str) -> Result<(), Fail> {
    let mut out = std::io::stdout().lock();
    ctx(
        writeln!(out, "{line}").and_then(|_| out.flush()),
        "writing to the agent",
    )
}

fn wait_for(word: &str) -> Result<(), Fail> {
    let mut line = String::new();
    ctx(
        std::io::stdin().lock().read_line(&mut line),
        "reading from the agent",
    )?;
    if line.trim() != word {
        return Err(Fail(format!(
            "expected '{word}' from the agent, got '{}'",
            line.trim()
        )));
    }
    Ok(())
}

/// Runs the init; never returns on success (it becomes envd).
pub fn main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(Fail(msg)) => {
            let _ = say(&format!("error: {msg}"));
            1
        }
    };
    std::process::exit(code)
}

/// Closes every descriptor above stderr: the agent (or whatever started
/// it) may hold some without close-on-exec, and none may reach a sandbox.
fn close_inherited_fds() -> Result<(), Fail> {
    // SAFETY: nothing in this process uses descriptors above 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        return Err(Fail(format!(
            "close_range: {} (Linux 5.9 or later is needed)",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn run() -> Result<(), Fail> {
    close_inherited_fds()?;
    let mut line = String::new();
    ctx(
        std::io::stdin().lock().read_line(&mut line),
        "reading the init spec",
    )?;
    let spec: InitSpec = ctx(serde_json::from_str(&line), "parsing the init spec")?;
    if let Some((current, maximum)) = spec.nofile {
        ctx(
            rustix::process::setrlimit(
                rustix::process::Resource::Nofile,
                rustix::process::Rlimit { current, maximum },
            ),
            "setting the open-files limit",
        )?;
    }

    let me = std::process::id().to_string();
    for procs in &spec.cgroup_procs {
        ctx(
            std::fs::write(procs, &me),
            format!("joining cgroup {}", procs.display()),
        )?;
    }
    // Opened as host root in the host's cgroup namespace: the kernel checks
    // a write against these credentials, so the sandbox's root can move its
    // own processes into the workload's leaf through them, and nowhere else.
    let mut work_fds = Vec::new();
    for procs in &spec.work_cgroup_procs {
        let f = ctx(
            std::fs::OpenOptions::new().write(true).open(procs),
            format!("opening {}", procs.display()),
        )?;
        ctx(
            rustix::io::fcntl_setfd(&f, rustix::io::FdFlags::empty()),
            "keeping a cgroup descriptor open for envd",
        )?;
        work_fds.push(std::os::fd::IntoRawFd::into_raw_fd(f).to_string());
    }
    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWUTS
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWCGROUP
        | UnshareFlags::NEWPID;
    // SAFETY: FILES is not among the flags.
    ctx(
        unsafe { rustix::thread::unshare_unsafe(flags) },
        "unsharing namespaces",
    )?;
    // SAFETY: this process is single-threaded (no runtime has started).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Fail(format!("fork: {}", std::io::Error::last_os_error())));
    }
    if pid > 0 {
        say(&format!("pid {pid}"))?;
        std::process::exit(0);
    }
    sandbox_init(&spec, &work_fds.join(","))
}

fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), Fail> {
    let data = CString::new(data).expect("mount data has no NUL");
    ctx(
        rustix::mount::mount(source, target, fstype, flags, Some(data.as_c_str())),
        format!("mounting {fstype} on {}", target.display()),
    )
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), Fail> {
    ctx(
        rustix::mount::mount_bind(source, target),
        format!("binding {} to {}", source.display(), target.display()),
    )?;
    if readonly {
        ctx(
            rustix::mount::mount_remount(
                target,
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID,
                "",
            ),
            format!("making {} read-only", target.display()),
        )?;
    }
    Ok(())
}

fn chown_root(path: &Path, base: u32) -> Result<(), Fail> {
    ctx(
        std::os::unix::fs::lchown(path, Some(base), Some(base)),
        format!("chown {}", path.display()),
    )
}

fn mkdir_owned(path: &Path, base: u32, mode: u32) -> Result<(), Fail> {
    if !path.exists() {
        ctx(
            std::fs::create_dir_all(path),
            format!("mkdir {}", path.display()),
        )?;
        chown_root(path, base)?;
        use std::os::unix::fs::PermissionsExt;
        ctx(
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
            format!("chmod {}", path.display()),
        )?;
    }
    Ok(())
}

/// The entries of the root the init mounts on or writes below while it
/// is still host root (before the pivot).
const TOP_DIRS: [&str; 6] = ["proc", "dev", "sys", "tmp", "etc", ".wrenn"];

/// Makes sure none of [`TOP_DIRS`] leads out of the root: on a boot over
/// an upper layer the sandbox wrote (a resume after a pause without its
/// memory), any of them that is not a real directory, a symlink to a host
/// path above all, is removed (a whiteout in the upper layer) before
/// anything below it is touched. Nothing of the sandbox runs meanwhile,
/// so nothing can put it back. What the init writes deeper (`/etc/hosts`
/// and its neighbours) it first unlinks, so a symlink there is replaced,
/// not followed.
fn own_top_dirs(root: &Path) -> Result<(), Fail> {
    for d in TOP_DIRS {
        let p = root.join(d);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => ctx(
                std::fs::remove_file(&p),
                format!("removing /{d}, which is not a directory"),
            )?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Fail(format!("inspecting /{d}: {e}"))),
        }
    }
    Ok(())
}

/// A random (version 4) UUID, as the kernel writes a boot id.
fn random_uuid() -> Result<String, Fail> {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        filled += ctx(
            rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()),
            "getrandom",
        )?;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// `/proc/partitions` and `/proc/diskstats` showing the sandbox's disk
/// (the loop device behind `image`) and nothing of the host's.
fn own_partitions(loop_dev: &str, image: &Path) -> Result<(String, String), Fail> {
    let st = ctx(rustix::fs::stat(loop_dev), format!("stat {loop_dev}"))?;
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    let kib = ctx(
        std::fs::metadata(image),
        format!("stat {}", image.display()),
    )?
    .len()
        / 1024;
    let name = loop_dev.rsplit('/').next().unwrap_or("loop");
    Ok((
        format!("major minor  #blocks  name\n\n{major:4} {minor:7} {kib:10} {name}\n"),
        format!("{major:4} {minor:7} {name} 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"),
    ))
}

fn sandbox_init(spec: &InitSpec, work_fds: &str) -> Result<(), Fail> {
    let base = spec.uid_base;
    if !spec.cpus.is_empty() {
        let mut set = rustix::thread::CpuSet::new();
        for &c in &spec.cpus {
            set.set(c);
        }
        // Best effort: a CPU gone offline leaves the sandbox on all.
        let _ = rustix::thread::sched_setaffinity(None, &set);
    }
    ctx(
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
        ),
        "making / private",
    )?;

    // The disk: an ext4 image on a loop device that detaches itself once
    // the last mount of it (in this namespace) goes away.
    let (loop_dev, loop_fd) = ctx(
        loopdev::attach(&spec.disk_image),
        format!("attaching {}", spec.disk_image.display()),
    )?;
    mount_fs(
        &loop_dev,
        &spec.disk_mount,
        "ext4",
        MountFlags::NOSUID | MountFlags::NODEV,
        "noinit_itable",
    )?;
    drop(loop_fd);
    let upper = spec.disk_mount.join("upper");
    let work = spec.disk_mount.join("work");
    mkdir_owned(&upper, base, 0o755)?;
    mkdir_owned(&work, 0, 0o700)?;
    // The overlay's options show in the sandbox's /proc/mounts: paths
    // relative to the sandbox's directory (the template bound in as
    // `lower`) say nothing of the host's layout.
    let sandbox_dir = spec
        .rootfs
        .parent()
        .ok_or_else(|| Fail("the root file system has no parent directory".into()))?;
    let lower = sandbox_dir.join("lower");
    mkdir_owned(&lower, 0, 0o755)?;
    bind(&spec.template_rootfs, &lower, false)?;
    let envd_layer = sandbox_dir.join("envd");
    mkdir_owned(&envd_layer, 0, 0o755)?;
    bind(&spec.envd_layer, &envd_layer, true)?;
    // envd is run from this descriptor of its layer's file, not by its
    // path in the sandbox: the upper layer is the sandbox's own, and on a
    // boot again an `/.wrenn/envd` it wrote there would shadow ours.
    let envd_file = ctx(
        rustix::fs::open(
            envd_layer.join(ENVD_PATH.trim_start_matches('/')),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ),
        "opening envd in its layer",
    )?;
    let rel = |p: &Path| -> Result<String, Fail> {
        p.strip_prefix(sandbox_dir)
            .map(|r| r.display().to_string())
            .map_err(|_| Fail(format!("{} is outside the sandbox directory", p.display())))
    };
    let opts = format!(
        "lowerdir=envd:lower,upperdir={},workdir={}",
        rel(&upper)?,
        rel(&work)?
    );
    ctx(
        std::env::set_current_dir(sandbox_dir),
        "chdir to the sandbox directory",
    )?;
    mount_fs(
        "overlay",
        &spec.rootfs,
        "overlay",
        MountFlags::empty(),
        &opts,
    )?;
    let root = &spec.rootfs;
    own_top_dirs(root)?;
    let partitions = own_partitions(&loop_dev, &spec.disk_image)?;

    // /proc for this PID namespace, with the host-revealing files masked.
    let proc_dir = root.join("proc");
    mkdir_owned(&proc_dir, base, 0o555)?;
    mount_fs(
        "proc",
        &proc_dir,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;
    for masked in [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "sysrq-trigger",
    ] {
        let p = proc_dir.join(masked);
        if p.exists() {
            bind(Path::new("/dev/null"), &p, true)?;
        }
    }
    // Its own disk only, not the host's (the counters of /proc/diskstats
    // would need a view that is live; it shows the disk with none yet).
    // Written to a small tmpfs of this mount namespace, so that even
    // mountinfo's root of the binds names no host path.
    let view = sandbox_dir.join("view");
    mkdir_owned(&view, 0, 0o755)?;
    mount_fs(
        "tmpfs",
        &view,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=755,size=16k",
    )?;
    for (name, content) in [
        ("partitions", partitions.0.as_str()),
        ("diskstats", partitions.1.as_str()),
    ] {
        let file = view.join(name);
        ctx(
            std::fs::write(&file, content),
            format!("writing {}", file.display()),
        )?;
        let p = proc_dir.join(name);
        if p.exists() {
            bind(&file, &p, true)?;
        }
    }
    for ro in ["sys", "irq", "bus", "fs"] {
        let p = proc_dir.join(ro);
        if p.exists() {
            bind(&p, &p, true)?;
        }
    }
    // A boot id of its own, new at every boot (a create, or a resume after
    // a pause that dropped its memory), as a machine's is: bound over the
    // read-only /proc/sys made just above.
    let boot_id = view.join("boot_id");
    ctx(
        std::fs::write(&boot_id, format!("{}\n", random_uuid()?)),
        format!("writing {}", boot_id.display()),
    )?;
    let p = proc_dir.join("sys/kernel/random/boot_id");
    if p.exists() {
        bind(&boot_id, &p, true)?;
    }

    // A minimal /dev.
    let dev = root.join("dev");
    mkdir_owned(&dev, base, 0o755)?;
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=755,size=64k",
    )?;
    let devfd = ctx(
        rustix::fs::open(
            &dev,
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            Mode::empty(),
        ),
        "opening /dev",
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        ctx(
            rustix::fs::mknodat(
                devfd.as_fd(),
                name,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o666),
                rustix::fs::makedev(major, minor),
            ),
            format!("mknod /dev/{name}"),
        )?;
        // mknod honours the umask; make the mode exact.
        ctx(
            rustix::fs::chmodat(
                devfd.as_fd(),
                name,
                Mode::from_raw_mode(0o666),
                rustix::fs::AtFlags::empty(),
            ),
            "chmod",
        )?;
    }
    for (dir, mode) in [("pts", 0o755), ("shm", 0o1777)] {
        ctx(
            std::fs::create_dir(dev.join(dir)),
            format!("mkdir /dev/{dir}"),
        )?;
        use std::os::unix::fs::PermissionsExt;
        ctx(
            std::fs::set_permissions(dev.join(dir), std::fs::Permissions::from_mode(mode)),
            "chmod",
        )?;
    }
    mount_fs(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        &format!("newinstance,ptmxmode=0666,mode=620,gid={}", base + 5),
    )?;
    mount_fs(
        "shm",
        &dev.join("shm"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        &format!("mode=1777,size=64m,uid={base},gid={base}"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(
            std::os::unix::fs::symlink(target, dev.join(link)),
            format!("symlink /dev/{link}"),
        )?;
    }

    // Read-only /sys for this network namespace.
    let sys = root.join("sys");
    mkdir_owned(&sys, base, 0o555)?;
    mount_fs(
        "sysfs",
        &sys,
        "sysfs",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )?;

    // The sandbox's own memory, CPUs and uptime. A LXCFS that is down
    // now is bound by the agent once it is back.
    if let Some(view) = &spec.proc_view {
        for f in super::procview::FILES {
            let target = root.join(f);
            if target.exists() {
                let _ = bind(&view.join(f), &target, false);
            }
        }
    }

    mkdir_owned(&root.join("tmp"), base, 0o1777)?;

    // Identity and name resolution.
    ctx(
        rustix::system::sethostname(spec.sandbox_id.as_bytes()),
        "setting the hostname",
    )?;
    let etc = root.join("etc");
    mkdir_owned(&etc, base, 0o755)?;
    for (name, content) in [
        ("hostname", format!("{}\n", spec.sandbox_id)),
        (
            "hosts",
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
                spec.sandbox_id
            ),
        ),
        ("resolv.conf", spec.resolv_conf.clone()),
    ] {
        let p = etc.join(name);
        let _ = std::fs::remove_file(&p);
        ctx(std::fs::write(&p, content), format!("writing /etc/{name}"))?;
        chown_root(&p, base)?;
    }

    // envd comes from its layer; its directory (copied up by the chown)
    // belongs to the sandbox's root, for the state file.
    let wrenn_dir = root.join(".wrenn");
    mkdir_owned(&wrenn_dir, base, 0o755)?;
    chown_root(&wrenn_dir, base)?;

    say("net")?;
    wait_for("go")?;

    // envd's socket, listening before envd runs (see
    // `wrenn_protocol::envd::LISTEN_FD_ENV`): the agent's first request
    // waits in the backlog instead of polling for envd to come up.
    let listener = ctx(
        std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, wrenn_protocol::envd::PORT)),
        format!("listening on envd's port {}", wrenn_protocol::envd::PORT),
    )?;
    ctx(
        rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()),
        "keeping envd's socket open for envd",
    )?;
    let listen_fd = std::os::fd::IntoRawFd::into_raw_fd(listener).to_string();

    // Into the new root; the old one is detached and gone.
    ctx(std::env::set_current_dir(root), "chdir to the new root")?;
    ctx(rustix::process::pivot_root(".", "."), "pivot_root")?;
    ctx(
        rustix::mount::unmount(".", UnmountFlags::DETACH),
        "detaching the old root",
    )?;
    ctx(std::env::set_current_dir("/"), "chdir /")?;

    // Root inside is an unprivileged uid range on the host.
    // SAFETY: FILES is not among the flags.
    ctx(
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER) },
        "unsharing the user namespace",
    )?;
    say("userns")?;
    wait_for("mapped")?;
    ctx(
        rustix::thread::set_thread_groups(&[rustix::process::Gid::ROOT]),
        "setgroups",
    )?;
    ctx(
        rustix::thread::set_thread_res_gid(
            rustix::process::Gid::ROOT,
            rustix::process::Gid::ROOT,
            rustix::process::Gid::ROOT,
        ),
        "setresgid",
    )?;
    ctx(
        rustix::thread::set_thread_res_uid(
            rustix::process::Uid::ROOT,
            rustix::process::Uid::ROOT,
            rustix::process::Uid::ROOT,
        ),
        "setresuid",
    )?;
    drop_capabilities()?;
    let filter = ctx(seccomp::filter(), "building the seccomp filter")?;

    let envd = CString::new(ENVD_PATH).expect("static path");
    let argv = [envd.clone()];
    let work = (!work_fds.is_empty()).then(|| {
        (
            wrenn_protocol::envd::WORK_CGROUP_FDS_ENV.to_string(),
            work_fds.to_string(),
        )
    });
    let listen = (wrenn_protocol::envd::LISTEN_FD_ENV.to_string(), listen_fd);
    let envp: Vec<CString> = spec
        .envd_env
        .iter()
        .chain(work.iter())
        .chain(std::iter::once(&listen))
        .map(|(k, v)| CString::new(format!("{k}={v}")).expect("env has no NUL"))
        .collect();
    say("exec")?;
    // envd's output goes nowhere; the status pipe closes with the exec.
    let null = ctx(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null"),
        "opening /dev/null",
    )?;
    for fd in 0..3 {
        // SAFETY: 0, 1 and 2 are ours.
        ctx(unsafe { dup_to(&null, fd) }, "redirecting stdio")?;
    }
    drop(null);
    ctx(seccomp::apply(&filter), "installing the seccomp filter")?;
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // SAFETY: argv and envp are NUL-terminated arrays of valid C
    // strings; the path is empty and AT_EMPTY_PATH runs the descriptor's
    // file (an ELF binary, so its close-on-exec flag does not matter).
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            std::os::fd::AsRawFd::as_raw_fd(&envd_file),
            c"".as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(Fail(format!(
        "exec envd (from its layer, shown as {ENVD_PATH}): {}",
        std::io::Error::last_os_error()
    )))
}

/// dup2 of `fd` onto descriptor number `target`.
///
/// # Safety
/// `target` must be 0, 1 or 2, which this process owns.
unsafe fn dup_to(fd: &std::fs::File, target: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: both descriptors are open; dup2 replaces target atomically.
    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Capabilities sandbox root keeps (Docker's defaults less NET_RAW); the
/// rest leave the bounding set, so no exec can regain them.
fn drop_capabilities() -> Result<(), Fail> {
    use rustix::thread::CapabilitySet as C;
    let keep = C::CHOWN
        | C::DAC_OVERRIDE
        | C::FOWNER
        | C::FSETID
        | C::KILL
        | C::SETGID
        | C::SETUID
        | C::SETPCAP
        | C::NET_BIND_SERVICE
        | C::SYS_CHROOT
        | C::MKNOD
        | C::AUDIT_WRITE
        | C::SETFCAP;
    for bit in 0..64 {
        let cap = C::from_bits_retain(1 << bit);
        if keep.contains(cap) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // EINVAL: the kernel has no such capability.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => {
                return Err(Fail(format!(
                    "dropping capability {bit} from the bounding set: {e}"
                )));
            }
        }
    }
    Ok(())
}
