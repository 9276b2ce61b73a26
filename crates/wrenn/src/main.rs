//! `wrenn`: the one binary users run.
//!
//! - `wrenn up` starts everything on one machine;
//! - `wrenn server` runs the control plane;
//! - `wrenn agent` runs the host agent (namespace runtime);
//! - `wrenn template ls|rm` asks the control plane (`--local`: this host's
//!   store); `wrenn template build|import` makes templates on this host;
//! - `wrenn login`, `wrenn sandbox …`, `wrenn key …`, `wrenn host …` use
//!   the REST API.
//!
//! `wrenn __sandbox-init` is internal: the agent runs it as the first
//! process of every sandbox.

mod agent;
mod cli;
mod server;
mod table;
mod template;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Self-hostable sandboxes for code that AI agents write.
#[derive(Parser, Debug)]
#[command(name = "wrenn", version)]
struct Cli {
    /// Where Wrenn keeps its state (templates, sandboxes, tokens).
    #[arg(
        long,
        global = true,
        env = "WRENN_DATA_DIR",
        default_value = "/var/lib/wrenn"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host agent: it owns the sandboxes on this host.
    Agent(agent::AgentArgs),
    /// Start Wrenn on this machine: control plane, one host agent, SQLite,
    /// the base template; prints the URL and an API key.
    Up(server::UpArgs),
    /// Run the control plane (the REST API).
    Server(server::ServerArgs),
    /// Save the API URL and key the other commands use.
    Login {
        /// API base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key (`wrn_…`).
        #[arg(long, env = "WRENN_API_KEY", hide_env_values = true)]
        key: String,
        /// Where to save it (default: ~/.config/wrenn/config.json).
        #[arg(long, env = "WRENN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Create, list, use and destroy sandboxes.
    Sandbox {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        command: cli::SandboxCommand,
    },
    /// Manage API keys.
    Key {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        command: cli::KeyCommand,
    },
    /// Manage the hosts sandboxes run on (register agents with the tokens).
    Host {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        command: cli::HostCommand,
    },
    /// Manage the templates sandboxes start from.
    Template {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        command: template::TemplateCommand,
    },
}

fn main() {
    if let Err(e) = run() {
        // The chain of causes, each naming what failed; no backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Whether to colour what goes to `stream`: only a terminal, and not when
/// `NO_COLOR` is set (<https://no-color.org>); logs get plain text.
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run() -> anyhow::Result<()> {
    // The sandbox init must run before anything starts a thread.
    if std::env::args().nth(1).as_deref() == Some("__sandbox-init") {
        wrenn_host_agent::runtime::namespaces::init::main();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRENN_LOG")
                .unwrap_or_else(|_| "wrenn=info,wrenn_host_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => agent::run(&cli.data_dir, args),
        Command::Up(args) => server::run_up(&cli.data_dir, args),
        Command::Server(args) => server::run_server(&cli.data_dir, args),
        Command::Template { conn, command } => template::run(&cli.data_dir, conn, command),
        Command::Login { url, key, config } => cli::login(url, key, config),
        Command::Sandbox { conn, command } => cli::sandbox(conn, command),
        Command::Key { conn, command } => cli::key(conn, command),
        Command::Host { conn, command } => cli::host(conn, command),
    }
}
