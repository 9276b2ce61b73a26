//! `wrenn server` and `wrenn up`.
//!
//! Why this file is long (~660 lines): `wrenn server` and `wrenn up` share
//! their flags, secrets files, the admin's first key and the CLI's saved
//! login, which live here beside them.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use wrenn_control_plane::App;
use wrenn_control_plane::store::{Host, Store, now};
use wrenn_host_agent::agent::Agent;
use wrenn_host_agent::runtime::Runtime;
use wrenn_host_agent::runtime::namespaces::{Config, NamespaceRuntime};

/// Flags of `wrenn server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Database: postgres://… or sqlite://… (default: SQLite in the data dir).
    #[arg(long, env = "WRENN_DATABASE_URL")]
    database_url: Option<String>,
    /// Address the API listens on.
    #[arg(long, env = "WRENN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Secret for user tokens (default: generated into <data-dir>/jwt.secret).
    #[arg(long, env = "WRENN_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// An agent to run sandboxes on, host:port (until hosts register themselves).
    #[arg(long, env = "WRENN_AGENT_ADDRESS")]
    agent: Option<String>,
    /// The agent's token.
    #[arg(long, env = "WRENN_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

/// Flags of the fleet, for `wrenn server`.
#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// Where sandboxes go: least-loaded or round-robin.
    #[arg(long, env = "WRENN_SCHEDULER", default_value = "least-loaded")]
    scheduler: String,
    /// Seconds between hosts' heartbeats (told to them at registration).
    #[arg(long, env = "WRENN_HEARTBEAT_INTERVAL", default_value_t = 30)]
    heartbeat_interval: u64,
    /// Seconds of silence after which a host is unreachable and its
    /// sandboxes missing.
    #[arg(long, env = "WRENN_HOST_TIMEOUT", default_value_t = 90)]
    host_timeout: u64,
    /// Seconds between reconciliations of the database with the agents.
    #[arg(long, env = "WRENN_RECONCILE_INTERVAL", default_value_t = 2)]
    reconcile_interval: u64,
    #[command(flatten)]
    overcommit: OvercommitArgs,
    /// Let teams register their own hosts at private addresses (10/8,
    /// 172.16/12, 192.168/16, 100.64/10, fc00::/7). Loopback, link-local and
    /// this machine's own addresses stay refused.
    #[arg(long, env = "WRENN_ALLOW_PRIVATE_HOST_ADDRESSES")]
    allow_private_host_addresses: bool,
}

impl FleetArgs {
    fn apply(&self, app: &mut App, listen: SocketAddr) -> anyhow::Result<()> {
        app.hosts =
            wrenn_control_plane::hosts::HostPool::new(wrenn_control_plane::hosts::AddressPolicy {
                allow_private: self.allow_private_host_addresses,
                own: vec![listen],
            });
        app.scheduler = wrenn_control_plane::hosts::scheduler(
            &self.scheduler,
            self.overcommit.get(SERVER_OVERCOMMIT)?,
        )
        .with_context(|| {
            format!(
                "--scheduler {}: use least-loaded or round-robin",
                self.scheduler
            )
        })?;
        app.heartbeat_interval = std::time::Duration::from_secs(self.heartbeat_interval.max(1));
        app.host_timeout = std::time::Duration::from_secs(self.host_timeout.max(1));
        app.reconcile_interval = std::time::Duration::from_secs(self.reconcile_interval.max(1));
        Ok(())
    }
}

/// How far hosts' memory and disk may be promised, for `wrenn server` and
/// `wrenn up`.
#[derive(clap::Args, Debug)]
pub struct OvercommitArgs {
    /// Memory promised to sandboxes per MiB a host has (their limits are
    /// caps, and idle sandboxes use little); 1 promises no more than there
    /// is. Default: 1 for `wrenn server`, 4 for `wrenn up`.
    #[arg(long, env = "WRENN_MEMORY_OVERCOMMIT")]
    memory_overcommit: Option<f64>,
    /// Disk promised to sandboxes per free MiB a host has (their disks are
    /// sparse). Default: 1 for `wrenn server`, 8 for `wrenn up`.
    #[arg(long, env = "WRENN_DISK_OVERCOMMIT")]
    disk_overcommit: Option<f64>,
}

/// `wrenn server`'s: a fleet's operator decides how far to promise.
const SERVER_OVERCOMMIT: (f64, f64) = (1.0, 1.0);
/// `wrenn up`'s: one machine, mostly idle sandboxes with sparse disks;
/// about what it allowed before it counted its real capacity.
const UP_OVERCOMMIT: (f64, f64) = (4.0, 8.0);

impl OvercommitArgs {
    fn get(
        &self,
        (memory, disk): (f64, f64),
    ) -> anyhow::Result<wrenn_control_plane::hosts::Overcommit> {
        wrenn_control_plane::hosts::Overcommit::new(
            self.memory_overcommit.unwrap_or(memory),
            self.disk_overcommit.unwrap_or(disk),
        )
        .map_err(|e| anyhow::anyhow!("--memory-overcommit/--disk-overcommit: {e}"))
    }
}

/// Flags of the sandbox proxy, for `wrenn server` and `wrenn up`.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Domain of sandbox ports: `<port>-<sandbox id>.<domain>` reaches a
    /// port (default: localhost:<listen port>, which browsers resolve).
    #[arg(long, env = "WRENN_DOMAIN")]
    domain: Option<String>,
    /// Answer 409 to traffic for a paused sandbox instead of resuming it.
    #[arg(long, env = "WRENN_NO_AUTO_RESUME")]
    no_auto_resume: bool,
}

impl ProxyArgs {
    fn config(&self, listen: SocketAddr) -> wrenn_control_plane::proxy::ProxyConfig {
        wrenn_control_plane::proxy::ProxyConfig {
            domain: self
                .domain
                .clone()
                .unwrap_or_else(|| format!("localhost:{}", listen.port())),
            auto_resume: !self.no_auto_resume,
        }
    }
}

/// `wrenn server migrate`.
#[derive(clap::Subcommand, Debug)]
pub enum ServerCommand {
    /// Apply database migrations and exit.
    Migrate,
}

/// Flags of `wrenn up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// What runs the sandboxes (as `wrenn agent --runtime`).
    #[arg(long, env = "WRENN_RUNTIME", value_enum, default_value_t = crate::agent::RuntimeKind::Namespaces)]
    runtime: crate::agent::RuntimeKind,
    /// Address the API listens on.
    #[arg(long, env = "WRENN_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Database URL (default: SQLite in the data dir).
    #[arg(long, env = "WRENN_DATABASE_URL")]
    database_url: Option<String>,
    /// Debian mirror for building the base template.
    #[arg(
        long,
        env = "WRENN_DEBIAN_MIRROR",
        default_value = "http://deb.debian.org/debian"
    )]
    mirror: String,
    /// Where the CLI login is stored (default: ~/.config/wrenn/config.json).
    #[arg(long, env = "WRENN_CONFIG")]
    config: Option<PathBuf>,
    /// envd binary to put in sandboxes (default: `envd` next to `wrenn`).
    #[arg(long, env = "WRENN_ENVD")]
    envd: Option<PathBuf>,
    #[command(flatten)]
    proxy: ProxyArgs,
    #[command(flatten)]
    overcommit: OvercommitArgs,
}

/// A secret kept in a 0600 file, made on first use.
pub fn secret_file(path: &Path, bytes: usize) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    let s = wrenn_control_plane::ids::hex(bytes);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{s}")?;
    Ok(s)
}

/// Writes `contents` to `path`, readable by its owner only (0600), replacing
/// what was there.
fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Whether secrets may be printed: only to a terminal, never into a log
/// (a redirect, a pipe, the journal).
fn stdout_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}

fn database_url(data_dir: &Path, given: Option<String>) -> String {
    given.unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("wrenn.db").display()))
}

fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
}

/// Runs `wrenn server`.
pub fn run_server(data_dir: &Path, args: ServerArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let url = database_url(data_dir, args.database_url);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let store = Store::connect(&url)
            .await
            .with_context(|| format!("connecting to the database {}", redact(&url)))?;
        if let Some(ServerCommand::Migrate) = args.command {
            println!("migrations applied ({})", store.backend);
            return Ok(());
        }
        let secret = match args.jwt_secret {
            Some(s) => s,
            None => secret_file(&data_dir.join("jwt.secret"), 32)?,
        };
        if let Some(addr) = args.agent {
            let token = args.agent_token.context("--agent needs --agent-token")?;
            store
                .upsert_host(&Host {
                    id: "host-static".into(),
                    name: addr.clone(),
                    address: addr,
                    token,
                    status: wrenn_control_plane::host_status::HostStatus::Online,
                    created_at: now(),
                    last_seen_at: now(),
                    ..Default::default()
                })
                .await?;
        }
        let mut app = App::new(store, secret.as_bytes());
        app.proxy = args.proxy.config(args.listen);
        args.fleet.apply(&mut app, args.listen)?;
        wrenn_control_plane::serve(app, args.listen, shutdown_signal())
            .await
            .with_context(|| format!("serving on {}", args.listen))
    })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://…{}", &url[..s], &url[a..]),
        _ => url.to_string(),
    }
}

/// The CLI's stored login.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CliConfig {
    /// API base URL.
    pub base_url: String,
    /// API key.
    pub api_key: String,
}

/// Where the CLI login lives.
pub fn config_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        PathBuf::from(home).join(".config/wrenn/config.json")
    })
}

/// Runs `wrenn up`: control plane and one agent in this process, SQLite,
/// the `base` template, an admin with a key, and the CLI logged in.
pub fn run_up(data_dir: &Path, args: UpArgs) -> anyhow::Result<()> {
    if !wrenn_host_agent_is_root() {
        anyhow::bail!(
            "wrenn up runs sandboxes with namespaces, cgroups and veths: run it as root (sudo wrenn up)"
        );
    }
    let overcommit = args.overcommit.get(UP_OVERCOMMIT)?;
    match args.runtime {
        crate::agent::RuntimeKind::Namespaces => {
            let (runtime_cfg, api_listener) = prepare_namespaces(data_dir, &args)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let runtime = NamespaceRuntime::new(runtime_cfg)
                    .context("setting up the namespace runtime")?;
                up(data_dir, args, overcommit, api_listener, runtime).await
            })
        }
    }
}

/// What `wrenn up` does before the namespace runtime starts: the lock that
/// keeps a second instance off this host's sandboxes (taken before anything
/// is touched), the API's listener, the host packages, and the `base`
/// template (built when missing).
fn prepare_namespaces(
    data_dir: &Path,
    args: &UpArgs,
) -> anyhow::Result<(Config, std::net::TcpListener)> {
    let mut runtime_cfg = Config::new(data_dir.to_path_buf());
    if let Some(e) = &args.envd {
        runtime_cfg.envd_binary = e.clone();
    }
    // Before anything is touched: a second instance on this host would
    // take over the first one's sandboxes.
    runtime_cfg.instance_lock = Some(std::sync::Arc::new(
        wrenn_host_agent::runtime::namespaces::lock::take(&runtime_cfg.cgroup_parent, data_dir)
            .map_err(|e| anyhow::anyhow!("wrenn up cannot start: {e}"))?,
    ));
    let api_listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!(
            "listening on {}: is another program using it? Pass --listen with a free address",
            args.listen
        )
    })?;
    api_listener.set_nonblocking(true)?;
    ensure_host_packages()?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let templates = wrenn_host_agent::templates::TemplateStore::new(
        data_dir.join("templates"),
        runtime_cfg.uid_base,
    );
    std::fs::create_dir_all(templates.dir())?;
    if templates.get("base").is_err() {
        eprintln!(
            "The base template is missing; building it (Debian bookworm via debootstrap, about a minute)."
        );
        crate::template::build_base(&templates, &args.mirror)?;
    } else if !templates.base_is_current() {
        eprintln!(
            "The base template is from an older recipe (without sudo and `python` for E2B's `user`); \
             `wrenn --data-dir {} template build base` builds the current one.",
            data_dir.display()
        );
    }
    Ok((runtime_cfg, api_listener))
}

/// `wrenn up` with `runtime`: the store, this host's agent on a loopback
/// port, its host row, the admin and its key, the API until a signal; then
/// every sandbox destroyed. Nothing here knows which runtime it is.
async fn up<R: Runtime + wrenn_host_agent::service::TemplateList>(
    data_dir: &Path,
    args: UpArgs,
    overcommit: wrenn_control_plane::hosts::Overcommit,
    api_listener: std::net::TcpListener,
    runtime: std::sync::Arc<R>,
) -> anyhow::Result<()> {
    let url = database_url(data_dir, args.database_url);
    let secret = secret_file(&data_dir.join("jwt.secret"), 32)?;
    let agent_token = secret_file(&data_dir.join("agent.token"), 24)?;
    let config_file = config_path(args.config);
    let listen = args.listen;
    {
        let store = Store::connect(&url)
            .await
            .with_context(|| format!("opening the database {}", redact(&url)))?;
        // The host agent, in this process, on a loopback port of its own.
        let agent = Agent::new(runtime.clone(), data_dir.join("agent"))
            .context("creating the agent's state directory")?;
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let agent_addr = probe.local_addr()?;
        drop(probe);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut rx = stop_rx.clone();
        let agent_task = tokio::spawn(wrenn_host_agent::server::serve(
            agent.clone(),
            agent_addr,
            agent_token.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        while tokio::net::TcpStream::connect(agent_addr).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // What this machine has, as a registered agent would report it.
        let specs = wrenn_host_agent::registration::Specs::of_this_machine(data_dir);
        store
            .upsert_host(&Host {
                id: wrenn_control_plane::hosts::LOCAL_HOST_ID.into(),
                name: "local".into(),
                address: agent_addr.to_string(),
                token: agent_token.clone(),
                status: wrenn_control_plane::host_status::HostStatus::Online,
                created_at: now(),
                last_seen_at: now(),
                arch: specs.arch,
                cpu_count: specs.cpu_count,
                memory_mb: specs.memory_mb,
                disk_mb: specs.disk_mb,
                runtime: runtime.name().into(),
                // Not reported: templates built or imported while it runs
                // are usable at once (scheduling takes it to have any).
                templates: None,
                ..Default::default()
            })
            .await?;
        let mut app = App::new(store.clone(), secret.as_bytes());
        app.scheduler = std::sync::Arc::new(wrenn_control_plane::hosts::LeastLoaded { overcommit });
        app.proxy = args.proxy.config(listen);
        let domain = app.proxy.domain.clone();
        let key = admin_key(&app, data_dir, &config_file, listen).await?;
        let key_file = data_dir.join(API_KEY_FILE);
        write_secret(&key_file, format!("{key}\n").as_bytes())?;
        // On a terminal, the key itself; in a log, where to read it.
        let key_ref = if stdout_is_terminal() {
            key.clone()
        } else {
            format!(
                "\"$(cat '{}')\"",
                key_file.display().to_string().replace('\'', "'\\''")
            )
        };
        let base = format!("http://{listen}");
        // The API listener is bound (above): what follows works as printed.
        println!("\nWrenn is up at {base} (Ctrl-C stops it and destroys its sandboxes).\n");
        println!(
            "The CLI is logged in ({}). For curl, the SDKs and scripts, paste:\n",
            config_file.display()
        );
        println!("  export WRENN_BASE_URL={base} WRENN_API_KEY={key_ref}");
        println!("  export E2B_API_URL={base} E2B_SANDBOX_URL={base} E2B_API_KEY={key_ref}\n");
        println!("Then, for example:\n");
        println!(
            "  curl -s -X POST \"$WRENN_BASE_URL/v1/sandboxes\" -H \"X-API-Key: $WRENN_API_KEY\" -H 'Content-Type: application/json' -d '{{\"template\":\"base\"}}'"
        );
        println!("  wrenn sandbox create && wrenn sandbox ls\n");
        println!("A sandbox's port is at http://<port>-<sandbox id>.{domain}/ (with X-API-Key).");
        println!("(`wrenn key create --e2b` makes an e2b_… key, which E2B's JS SDK wants.)\n");
        let mut rx = stop_rx.clone();
        let api_listener = tokio::net::TcpListener::from_std(api_listener)?;
        let served = wrenn_control_plane::serve_on(app, api_listener, async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = rx.wait_for(|s| *s) => {}
            }
        })
        .await;
        eprintln!("stopping: destroying this host's sandboxes");
        // Several at once: each waits mostly on the kernel (unmounts,
        // namespaces going away).
        use futures::StreamExt;
        futures::stream::iter(runtime.list())
            .for_each_concurrent(8, |inst| {
                let agent = agent.clone();
                async move {
                    if let Err(e) = agent.destroy(&inst.spec.id).await {
                        eprintln!("destroying {}: {e}", inst.spec.id);
                    }
                }
            })
            .await;
        runtime.settle().await;
        for mut s in store
            .sandboxes_on_host(wrenn_control_plane::hosts::LOCAL_HOST_ID)
            .await
            .unwrap_or_default()
        {
            s.state = wrenn_control_plane::sandboxes::SandboxState::Stopped;
            let _ = store.update_sandbox(&s).await;
        }
        let _ = stop_tx.send(true);
        let _ = agent_task.await;
        served.with_context(|| format!("serving on {listen}"))
    }
}

/// Installs, with apt-get, the Debian packages the namespace runtime calls
/// (debootstrap, nft, mkfs.ext4, ip, lxcfs) when any is missing.
fn ensure_host_packages() -> anyhow::Result<()> {
    let needed = [
        ("debootstrap", "debootstrap"),
        ("nft", "nftables"),
        ("mkfs.ext4", "e2fsprogs"),
        ("ip", "iproute2"),
        ("lxcfs", "lxcfs"),
    ];
    let on_path = |bin: &str| {
        std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .any(|d| Path::new(d).join(bin).exists())
    };
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        anyhow::bail!(
            "missing programs from the packages {}; install them and run wrenn up again",
            missing.join(" ")
        );
    }
    eprintln!("Installing {} with apt-get.", missing.join(" "));
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let st = std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        anyhow::ensure!(
            st.success(),
            "apt-get {} failed; install {} by hand",
            args.join(" "),
            missing.join(" ")
        );
        Ok(())
    };
    run(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq"];
    install.extend(&missing);
    run(&install)
}

fn wrenn_host_agent_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Where `wrenn up` keeps the admin's first password, in its data dir (0600).
const ADMIN_PASSWORD_FILE: &str = "admin-password";
/// Where `wrenn up` keeps the admin's API key, in its data dir (0600), for
/// the `export` lines it prints when its output is not a terminal.
const API_KEY_FILE: &str = "api-key";

/// The admin's API key: the stored CLI login if it still works, else a new
/// key (creating admin, team on first start). Saves the CLI login (the
/// caller keeps the key in `<data dir>/api-key`).
async fn admin_key(
    app: &App,
    app_data_dir: &Path,
    config_file: &Path,
    listen: SocketAddr,
) -> anyhow::Result<String> {
    let admin_email = "admin@localhost";
    let user = match app.store.user_by_email(admin_email).await? {
        Some(u) => u,
        None => {
            let password = wrenn_control_plane::ids::hex(12);
            let (u, _) = wrenn_control_plane::api::create_user_with_team(
                app,
                admin_email,
                &password,
                Some("admin"),
                Some("default"),
                true,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let file = app_data_dir.join(ADMIN_PASSWORD_FILE);
            write_secret(&file, format!("{password}\n").as_bytes())?;
            if stdout_is_terminal() {
                println!(
                    "Created the admin user {admin_email} with password {password} (also in {}, root only).",
                    file.display()
                );
            } else {
                println!(
                    "Created the admin user {admin_email}; its password is in {} (root only).",
                    file.display()
                );
            }
            u
        }
    };
    let base_url = format!("http://{listen}");
    if let Ok(bytes) = std::fs::read(config_file) {
        if let Ok(cfg) = serde_json::from_slice::<CliConfig>(&bytes) {
            let hash = wrenn_control_plane::auth::sha256_hex(&cfg.api_key);
            if app.store.api_key_by_hash(&hash).await?.is_some() {
                save_config(
                    config_file,
                    &CliConfig {
                        base_url,
                        api_key: cfg.api_key.clone(),
                    },
                )?;
                return Ok(cfg.api_key);
            }
        }
    }
    let (team, _) = app
        .store
        .teams_of(&user.id)
        .await?
        .into_iter()
        .next()
        .context("the admin has no team")?;
    let (secret, _) = wrenn_control_plane::api::issue_key(
        app,
        &team.id,
        &user.id,
        "wrenn up",
        wrenn_control_plane::auth::KeyFormat::Wrenn,
        true,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    save_config(
        config_file,
        &CliConfig {
            base_url,
            api_key: secret.clone(),
        },
    )?;
    Ok(secret)
}

/// Saves the CLI login (0600).
pub fn save_config(path: &Path, cfg: &CliConfig) -> anyhow::Result<()> {
    write_secret(path, &serde_json::to_vec_pretty(cfg)?)
        .with_context(|| format!("saving the CLI login to {}", path.display()))
}
