//! `wrenn agent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wrenn_host_agent::agent::Agent;
use wrenn_host_agent::runtime::namespaces::{Config, NamespaceRuntime};

/// Flags of `wrenn agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Address the agent's API listens on.
    #[arg(long, env = "WRENN_AGENT_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Token callers must send as `Authorization: Bearer <token>`
    /// (default: read from, or generated into, <data-dir>/agent.token).
    #[arg(long, env = "WRENN_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// envd binary to put in sandboxes (default: `envd` next to `wrenn`).
    #[arg(long, env = "WRENN_ENVD")]
    envd: Option<PathBuf>,
}

/// The agent token: given, or kept in a 0600 file.
fn token(data_dir: &Path, given: Option<String>) -> anyhow::Result<String> {
    match given.filter(|t| !t.is_empty()) {
        Some(t) => Ok(t),
        None => crate::server::secret_file(&data_dir.join("agent.token"), 24),
    }
}

/// Runs the agent until Ctrl-C, SIGTERM or a Terminate call.
pub fn run(data_dir: &Path, args: AgentArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let token = token(data_dir, args.token)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let mut cfg = Config::new(data_dir.to_path_buf());
        if let Some(e) = args.envd {
            cfg.envd_binary = e;
        }
        let runtime = NamespaceRuntime::new(cfg).context("setting up the namespace runtime")?;
        tracing::info!(cgroups = runtime.cgroup_version(), templates = ?runtime.templates().list(), "namespace runtime ready");
        let agent = Agent::new(runtime, data_dir.join("agent")).context("creating the agent's state directory")?;
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        wrenn_host_agent::server::serve(agent, args.listen, token, shutdown)
            .await
            .with_context(|| format!("serving the agent on {}", args.listen))
    })
}
