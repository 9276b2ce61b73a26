//! The envd binary: `envd [--port 49983] [--default-user U] ...`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Wrenn's in-sandbox agent, wire-compatible with E2B's envd.
#[derive(Parser, Debug)]
#[command(version = envd::ENVD_VERSION)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ENVD_HOST", default_value = "0.0.0.0")]
    host: IpAddr,
    /// Port to listen on.
    #[arg(long, env = "ENVD_PORT", default_value_t = envd::DEFAULT_PORT)]
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
    /// Make servers bound to 127.0.0.1 inside the sandbox reachable on its
    /// own addresses (only inside a sandbox: on a shared host this would
    /// expose the host's loopback services).
    #[arg(long, env = "ENVD_FORWARD_LOOPBACK_PORTS")]
    forward_loopback_ports: bool,
}

/// Pid of envd proper, for the PID-1 reaper's signal forwarding.
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let child = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

/// As PID 1 of a sandbox, envd splits in two before any thread exists: the
/// parent stays PID 1 and reaps every orphan (as init must), forwarding
/// SIGTERM/SIGINT; the child goes on to be envd. The parent exits with the
/// child's status.
fn become_init_if_pid1() {
    if std::process::id() != 1 {
        return;
    }
    // SAFETY: single-threaded here; the child continues normally.
    let child = unsafe { libc::fork() };
    if child < 0 {
        eprintln!(
            "envd: fork for the PID 1 reaper failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if child == 0 {
        return;
    }
    CHILD.store(child, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: installing a handler that only calls kill.
    unsafe {
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, forward as *const () as libc::sighandler_t);
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == child {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            std::process::exit(code);
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            std::process::exit(0);
        }
    }
}

fn main() -> anyhow::Result<()> {
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
    let defaults = envd::Defaults {
        access_token: args.access_token,
        user: args.default_user,
        workdir: args.default_workdir,
        ..Default::default()
    };
    // Two worker threads: envd shares its sandbox's CPUs with the workload.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = SocketAddr::new(args.host, args.port);
        if args.forward_loopback_ports {
            tokio::spawn(envd::ports::forward_loopback_forever(
                std::time::Duration::from_millis(500),
            ));
        }
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        envd::serve(addr, envd::AppState::new(defaults), shutdown)
            .await
            .with_context(|| format!("serving on {addr}; is another envd on that port?"))
    })
}
