//! `wrenn agent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wrenn_host_agent::agent::Agent;
use wrenn_host_agent::registration::{ControlPlane, Credentials, Report, Specs};
use wrenn_host_agent::runtime::Runtime;
use wrenn_host_agent::runtime::namespaces::{Config, NamespaceRuntime};
use wrenn_host_agent::service::TemplateList;

/// The runtimes a host can run sandboxes with (`--runtime`). Each is a
/// `wrenn_host_agent::runtime` module; the agent, its service and the
/// control plane are the same whichever runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Linux namespaces, cgroups and an overlay root (needs root).
    #[default]
    Namespaces,
}

/// Flags of `wrenn agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// What runs this host's sandboxes.
    #[arg(long, env = "WRENN_RUNTIME", value_enum, default_value_t = RuntimeKind::Namespaces)]
    runtime: RuntimeKind,
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
    /// Register with a control plane using this one-time token (from
    /// `POST /v1/hosts`); needs --control-plane. Ignored once registered.
    #[arg(long, env = "WRENN_REGISTRATION_TOKEN", hide_env_values = true)]
    register: Option<String>,
    /// The control plane's URL, e.g. http://10.0.0.1:8080.
    #[arg(long, env = "WRENN_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// host:port where the control plane reaches this agent (default: --listen).
    #[arg(long, env = "WRENN_AGENT_ADDRESS")]
    address: Option<String>,
    /// cgroup under which sandboxes' cgroups go (one per agent on a machine).
    #[arg(long, env = "WRENN_CGROUP_PARENT", default_value = "wrenn")]
    cgroup_parent: String,
    /// Seconds between heartbeats to the control plane.
    #[arg(long, env = "WRENN_HEARTBEAT_INTERVAL", default_value_t = 30)]
    heartbeat_interval: u64,
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
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        match args.runtime {
            RuntimeKind::Namespaces => {
                let mut cfg = Config::new(data_dir.to_path_buf());
                if let Some(e) = args.envd.clone() {
                    cfg.envd_binary = e;
                }
                cfg.cgroup_parent = args.cgroup_parent.clone();
                let runtime = NamespaceRuntime::new(cfg).context("setting up the namespace runtime")?;
                tracing::info!(cgroups = runtime.cgroup_version(), templates = ?runtime.templates().list(), "namespace runtime ready");
                serve(data_dir, args, runtime).await
            }
        }
    })
}

/// Serves `runtime` as this host's agent: registration, heartbeats, the
/// API, and a settled stop.
async fn serve<R: Runtime + TemplateList>(
    data_dir: &Path,
    args: AgentArgs,
    runtime: std::sync::Arc<R>,
) -> anyhow::Result<()> {
    let token = token(data_dir, args.token.clone())?;
    let token_for_cp = token.clone();
    {
        let agent = Agent::new(runtime, data_dir.join("agent"))
            .context("creating the agent's state directory")?;
        let creds_path = data_dir.join("credentials.json");
        let creds = match (Credentials::load(&creds_path), &args.register) {
            (Some(c), _) => {
                tracing::info!(host = %c.host_id, control_plane = %c.control_plane, "registered before; reusing the credentials");
                Some(c)
            }
            (None, Some(token)) => {
                let cp = args
                    .control_plane
                    .as_deref()
                    .context("--register needs --control-plane URL")?;
                let address = args
                    .address
                    .clone()
                    .unwrap_or_else(|| args.listen.to_string());
                let specs = Specs::of_this_machine(data_dir);
                let c = ControlPlane::new(cp)
                    .register(token, &address, &token_for_cp, &specs, &Report::of(&agent))
                    .await
                    .context("registering with the control plane")?;
                c.save(&creds_path)
                    .with_context(|| format!("saving {}", creds_path.display()))?;
                tracing::info!(host = %c.host_id, "registered");
                Some(c)
            }
            (None, None) => None,
        };
        if let Some(c) = creds {
            tokio::spawn(wrenn_host_agent::registration::heartbeat_forever(
                agent.clone(),
                c,
                creds_path,
                std::time::Duration::from_secs(args.heartbeat_interval.max(1)),
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
        let runtime = agent.runtime.clone();
        let served = wrenn_host_agent::server::serve(agent, args.listen, token, shutdown)
            .await
            .with_context(|| format!("serving the agent on {}", args.listen));
        // Sandboxes destroyed before the stop (a `Terminate` that destroys
        // them all among them) are wholly removed before the agent exits.
        runtime.settle().await;
        served
    }
}
