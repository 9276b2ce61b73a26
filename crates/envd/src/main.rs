//! The envd binary: `envd [--port 49983] [--default-user U] ...`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Wrenn's in-sandbox agent, wire-compatible with E2B's envd.
#[derive(Parser, Debug)]
#[command(version = wrenn_protocol::envd::VERSION)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ENVD_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on.
    #[arg(long, env = "ENVD_PORT", default_value_t = wrenn_protocol::envd::PORT)]
    port: u16,
    /// User for calls that name none (default: the user envd runs as).
    #[arg(long, env = "ENVD_DEFAULT_USER")]
    default_user: Option<String>,
    /// Working directory for processes and relative paths (default: the
    /// user's home).
    #[arg(long, env = "ENVD_DEFAULT_WORKDIR")]
    default_workdir: Option<PathBuf>,
    /// Access token to require from the start (otherwise `/init` sets it).
    #[arg(long, env = "ENVD_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// File where `/init` saves its settings, and from which a restarted
    /// envd takes them back (its directory must exist).
    #[arg(long, env = "ENVD_STATE_FILE")]
    state_file: Option<PathBuf>,
}

/// Pid of envd proper, for the PID-1 supervisor's signal forwarding.
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Set once the supervisor was asked to stop: the child is not restarted.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn forward(sig: libc::c_int) {
    STOPPING.store(true, std::sync::atomic::Ordering::Relaxed);
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

/// What envd was handed by the sandbox's init.
struct Inherited {
    /// The workload cgroup's `cgroup.procs` files.
    work_cgroup: Vec<std::os::fd::OwnedFd>,
    /// A socket listening on envd's port.
    listener: Option<std::os::fd::OwnedFd>,
}

/// Descriptor numbers above stderr named by `var` (comma-separated).
fn fds_in(var: &str) -> Vec<u32> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|f| f.trim().parse().ok())
        .filter(|&f| f > 2)
        .collect()
}

/// Closes every descriptor above stderr that envd inherited, but for the
/// workload cgroup's and the listening socket (named in
/// `ENVD_WORK_CGROUP_FDS` and `ENVD_LISTEN_FD` by the sandbox's init):
/// whatever started envd (an agent, a shell, a test runner) may have left
/// some open without close-on-exec, and nothing inside a sandbox may reach
/// them. Runs first thing, before envd opens anything of its own. The kept
/// descriptors become close-on-exec.
fn close_inherited_fds() -> Inherited {
    let mut work = fds_in(envd::process::WORK_CGROUP_FDS_ENV);
    work.sort_unstable();
    work.dedup();
    let listen = fds_in(wrenn_protocol::envd::LISTEN_FD_ENV).first().copied();
    let mut keep: Vec<u32> = work.iter().copied().chain(listen).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for &fd in keep.iter().chain(std::iter::once(&u32::MAX)) {
        if fd > from {
            close_range(from, fd - 1);
        }
        from = fd.saturating_add(1);
    }
    let own = |fd: u32| {
        // SAFETY: only borrowed for a flag change; one that is not open
        // fails here and is never owned (dropping it would close a
        // descriptor that is not ours).
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd as i32) };
        rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC).ok()?;
        // SAFETY: open, handed to envd for this use, owned by nothing else.
        Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
    };
    Inherited {
        work_cgroup: work
            .into_iter()
            .filter(|f| Some(*f) != listen)
            .filter_map(own)
            .collect(),
        listener: listen.and_then(own),
    }
}

/// Closes descriptors `first..=last`.
fn close_range(first: u32, last: u32) {
    // SAFETY: close_range on descriptors nothing in this process uses yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r != 0 {
        // Kernels before 5.9: close them one by one.
        let max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1024)
            .min(1 << 20);
        for fd in first..=last.min(max as u32) {
            // SAFETY: as above.
            unsafe { libc::close(fd as i32) };
        }
    }
}

/// Shortest and longest wait before envd is started again after it died.
const RESTART_MIN: std::time::Duration = std::time::Duration::from_millis(50);
const RESTART_MAX: std::time::Duration = std::time::Duration::from_millis(800);

/// As PID 1 of a sandbox, envd splits in two before any thread exists: the
/// parent stays PID 1, reaps every orphan (as init must), forwards
/// SIGTERM/SIGINT, and starts envd again whenever it dies (`kill -9 -1`,
/// `pkill envd` or the OOM killer in the sandbox take envd, never PID 1,
/// which the kernel shields from signals sent inside its namespace). The
/// child goes on to be envd. The parent exits, with the child's status,
/// only once it was told to stop.
fn become_init_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    // SAFETY: installing a handler that only stores and calls kill.
    unsafe {
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, forward as *const () as libc::sighandler_t);
    }
    let mut delay = RESTART_MIN;
    loop {
        // SAFETY: single-threaded here; the child continues normally.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // envd proper: default signal handling, and the OOM killer's
            // ordinary treatment (PID 1 may be shielded from it).
            // SAFETY: resetting handlers in a fresh single-threaded child.
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::signal(libc::SIGINT, libc::SIG_DFL);
            }
            let _ = std::fs::write("/proc/self/oom_score_adj", "0");
            return;
        }
        if child < 0 {
            // Out of pids (a fork bomb): reap, wait and try again.
            reap_all_nohang();
            std::thread::sleep(RESTART_MIN);
            continue;
        }
        CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        let code = wait_for(child);
        CHILD.store(0, std::sync::atomic::Ordering::Relaxed);
        if STOPPING.load(std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(code);
        }
        // Back off when envd dies right after starting; a long-lived envd
        // that was killed comes back at once.
        delay = if started.elapsed() > std::time::Duration::from_secs(5) {
            RESTART_MIN
        } else {
            (delay * 2).min(RESTART_MAX)
        };
        std::thread::sleep(delay);
    }
}

/// Reaps children until `child` exits; its status as an exit code.
fn wait_for(child: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return 0;
        }
    }
}

fn reap_all_nohang() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer; WNOHANG never blocks.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let inherited = close_inherited_fds();
    become_init_if_pid1();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENVD_LOG")
                .unwrap_or_else(|_| "envd=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(u) = &args.default_user {
        envd::users::lookup(u).with_context(|| format!("--default-user {u}"))?;
    }
    let defaults = args
        .state_file
        .as_deref()
        .and_then(envd::Defaults::load)
        .unwrap_or(envd::Defaults {
            access_token: args.access_token,
            user: args.default_user,
            workdir: args.default_workdir,
            ..Default::default()
        });
    envd::process::start_children_in(inherited.work_cgroup);
    // Two worker threads: envd shares its sandbox's CPUs with the workload,
    // and a handler that blocks for a moment (an upload handing a chunk to
    // its writer, a large `Remove`) never stalls the rest of envd.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = inherited.listener;
    rt.block_on(async move {
        let addr = SocketAddr::new(args.host, args.port);
        let listener = match listener {
            Some(fd) => {
                let std = std::net::TcpListener::from(fd);
                std.set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(std))
                    .context("taking the listening socket the sandbox's init handed over")?
            }
            None => tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}; is another envd on that port?"))?,
        };
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        envd::serve_on(
            listener,
            envd::AppState::with_state_file(defaults, args.state_file),
            shutdown,
        )
        .await
        .with_context(|| format!("serving on {addr}"))
    })
}
