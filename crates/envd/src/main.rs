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
}

fn main() -> anyhow::Result<()> {
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
