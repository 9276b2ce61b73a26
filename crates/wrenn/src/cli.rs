//! The CLI's API commands: `login`, `sandbox …`, `key …`.
//!
//! Why this file is long (~700 lines): one small function per subcommand,
//! each printing its own table; they share the connection and the output
//! helpers here.

use std::path::PathBuf;

use anyhow::Context;
use wrenn_client::Client;
use wrenn_client::types::streams::{ProcessMessage, PtyControl, PtyMessage, PtyOpen};

use crate::server::{CliConfig, config_path};
use crate::table::{Align, Table};

/// Where to reach the API; flags beat the environment beat the saved login.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// API base URL.
    #[arg(long, global = true, env = "WRENN_BASE_URL")]
    url: Option<String>,
    /// API key.
    #[arg(long, global = true, env = "WRENN_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The saved login (default: ~/.config/wrenn/config.json).
    #[arg(long, global = true, env = "WRENN_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    fn saved(&self) -> Option<CliConfig> {
        std::fs::read(config_path(self.config.clone()))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// The API's base URL, as the commands will use it.
    fn base_url(&self) -> String {
        self.url
            .clone()
            .or_else(|| self.saved().map(|c| c.base_url))
            .unwrap_or_default()
    }

    fn client(&self) -> anyhow::Result<Client> {
        let saved = self.saved();
        let url = self
            .url
            .clone()
            .or_else(|| saved.as_ref().map(|c| c.base_url.clone()));
        let key = self
            .key
            .clone()
            .or_else(|| saved.as_ref().map(|c| c.api_key.clone()));
        let (Some(url), Some(key)) = (url, key) else {
            anyhow::bail!(
                "not logged in: run `wrenn up`, or `wrenn login --url URL --key wrn_…`, or set WRENN_BASE_URL and WRENN_API_KEY"
            );
        };
        Ok(Client::new(&url, &key)?)
    }
}

/// `wrenn sandbox …`.
#[derive(clap::Subcommand, Debug)]
pub enum SandboxCommand {
    /// Create a sandbox.
    Create {
        /// Template.
        #[arg(long, default_value = wrenn_protocol::sandbox::DEFAULT_TEMPLATE)]
        template: String,
        /// CPUs.
        #[arg(long)]
        vcpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory_mb: Option<u32>,
        /// Disk in MiB.
        #[arg(long)]
        disk_size_mb: Option<u32>,
        /// Idle timeout in seconds (0: none).
        #[arg(long)]
        timeout_sec: Option<u32>,
        /// Block egress.
        #[arg(long)]
        no_internet: bool,
        /// IPv4 addresses or networks it may reach, winning over
        /// `--deny-out` (repeat, or separate with commas).
        #[arg(long, value_delimiter = ',')]
        allow_out: Vec<String>,
        /// IPv4 addresses or networks it may not reach (`0.0.0.0/0`: all
        /// but what is allowed).
        #[arg(long, value_delimiter = ',')]
        deny_out: Vec<String>,
    },
    /// Replace a sandbox's egress rules (none given: clear them); they
    /// hold when this returns.
    Egress {
        /// Sandbox id.
        id: String,
        /// IPv4 addresses or networks it may reach.
        #[arg(long, value_delimiter = ',')]
        allow_out: Vec<String>,
        /// IPv4 addresses or networks it may not reach.
        #[arg(long, value_delimiter = ',')]
        deny_out: Vec<String>,
    },
    /// List sandboxes.
    Ls,
    /// Run a command in a sandbox; exits with its exit code.
    Exec {
        /// Sandbox id.
        id: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, required = true)]
        cmd: Vec<String>,
    },
    /// Copy a file in or out: `wrenn sandbox cp ./local sb-x:/path` or back.
    Cp {
        /// Source (`ID:PATH` for inside a sandbox).
        src: String,
        /// Destination (`ID:PATH` for inside a sandbox).
        dst: String,
    },
    /// Pause a sandbox.
    Pause {
        /// Sandbox id.
        id: String,
    },
    /// Resume a paused sandbox.
    Resume {
        /// Sandbox id.
        id: String,
    },
    /// An interactive shell (a PTY) in a sandbox; resizes follow the
    /// terminal. Exits with the shell's exit code.
    Shell {
        /// Sandbox id.
        id: String,
        /// Program to run instead of bash.
        #[arg(long)]
        cmd: Option<String>,
        /// Re-attach to a session by the tag it printed.
        #[arg(long)]
        attach: Option<String>,
    },
    /// Follow the output of a background process until it exits.
    Logs {
        /// Sandbox id.
        id: String,
        /// The process's pid (see `wrenn sandbox exec --background` or the API).
        pid: u32,
    },
    /// Destroy sandboxes.
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// `wrenn key …`.
#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key (shown once).
    Create {
        /// Label.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Issue it as `e2b_…`, the form E2B's SDKs accept (E2B_API_KEY).
        #[arg(long)]
        e2b: bool,
    },
    /// List API keys.
    Ls,
    /// Delete an API key.
    Rm {
        /// Key id (`key-…`).
        id: String,
    },
}

/// `wrenn host …`.
#[derive(clap::Subcommand, Debug)]
pub enum HostCommand {
    /// Add a host; prints its one-time registration token (valid 1 hour)
    /// and the `wrenn agent` command to run on it.
    Create {
        /// Label.
        #[arg(long, default_value = "host")]
        name: String,
        /// Tags sandboxes can ask for (repeat).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Your team's own host (only its sandboxes run there).
        #[arg(long)]
        team: bool,
    },
    /// List hosts.
    Ls,
    /// A new registration token for a host (the old one stops working).
    Token {
        /// Host id (`host-…`).
        id: String,
    },
    /// Set a host's tags.
    Tag {
        /// Host id.
        id: String,
        /// The tags (none clears them).
        tags: Vec<String>,
    },
    /// Delete a host (refused while it has sandboxes unless --force).
    Rm {
        /// Host id.
        id: String,
        /// Destroy its sandboxes and stop its agent.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a host command.
pub fn host(conn: Conn, cmd: HostCommand) -> anyhow::Result<()> {
    let c = conn.client()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let token_hint = |token: &str| {
            println!("{token}");
            eprintln!(
                "On the host (within the hour):\n  wrenn agent --listen <its address>:7070 --control-plane {} --register {token}",
                conn.base_url(),
            );
        };
        match cmd {
            HostCommand::Create { name, tags, team } => {
                let req = wrenn_client::types::hosts::CreateHost {
                    name: Some(name),
                    tags,
                    team_owned: team,
                };
                let h = c.create_host(&req).await?;
                if conn.json {
                    print_json(&h)
                } else {
                    eprintln!("host {}", h.host.id);
                    token_hint(&h.registration_token);
                }
            }
            HostCommand::Ls => {
                let hosts = c.list_hosts().await?;
                if conn.json {
                    print_json(&hosts);
                } else {
                    let mut t = Table::new(&[
                        ("ID", Align::Left),
                        ("NAME", Align::Left),
                        ("STATUS", Align::Left),
                        ("ADDRESS", Align::Left),
                        ("CPUS", Align::Right),
                        ("MEM MB", Align::Right),
                        ("SANDBOXES", Align::Right),
                        ("TAGS", Align::Left),
                    ]);
                    for h in hosts {
                        t.row([
                            h.id,
                            h.name,
                            h.status,
                            h.address,
                            h.cpu_count.to_string(),
                            h.memory_mb.to_string(),
                            h.sandboxes.to_string(),
                            h.tags.join(","),
                        ]);
                    }
                    t.print();
                }
            }
            HostCommand::Token { id } => {
                let h = c.host_token(&id).await?;
                if conn.json {
                    print_json(&h)
                } else {
                    token_hint(&h.registration_token);
                }
            }
            HostCommand::Tag { id, tags } => {
                let h = c.set_host_tags(&id, &tags).await?;
                if conn.json {
                    print_json(&h)
                }
            }
            HostCommand::Rm { id, force } => c.delete_host(&id, force).await?,
        }
        Ok(())
    })
}

/// Prints an answer as the API gave it (`--json`).
fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("wrenn: the answer does not print as JSON: {e}"),
    }
}

fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    (id.starts_with("sb-") && path.starts_with('/')).then_some((id, path))
}

/// Saves a login after checking it works.
pub fn login(url: String, key: String, config: Option<PathBuf>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let client = Client::new(&url, &key)?;
    rt.block_on(client.list_keys())
        .context("checking the key")?;
    crate::server::save_config(
        &config_path(config.clone()),
        &CliConfig {
            base_url: url,
            api_key: key,
        },
    )?;
    println!("logged in ({})", config_path(config).display());
    Ok(())
}

/// Runs a sandbox command.
pub fn sandbox(conn: Conn, cmd: SandboxCommand) -> anyhow::Result<()> {
    let c = conn.client()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cmd {
            SandboxCommand::Create {
                template,
                vcpus,
                memory_mb,
                disk_size_mb,
                timeout_sec,
                no_internet,
                allow_out,
                deny_out,
            } => {
                let egress = (!allow_out.is_empty() || !deny_out.is_empty()).then_some(
                    wrenn_client::types::sandboxes::Egress {
                        allow_out,
                        deny_out,
                    },
                );
                let req = wrenn_client::types::sandboxes::CreateSandbox {
                    template: Some(template),
                    vcpus,
                    memory_mb,
                    disk_size_mb,
                    timeout_sec,
                    allow_internet_access: Some(!no_internet),
                    egress,
                    ..Default::default()
                };
                let sb = c.create_sandbox(&req).await?;
                if conn.json {
                    print_json(&sb)
                } else {
                    println!("{}", sb.id)
                }
            }
            SandboxCommand::Egress {
                id,
                allow_out,
                deny_out,
            } => {
                let rules = wrenn_client::types::sandboxes::Egress {
                    allow_out,
                    deny_out,
                };
                let sb = c.set_egress(&id, &rules).await?;
                if conn.json {
                    print_json(&sb)
                } else {
                    println!(
                        "{}: allow {:?}, deny {:?}",
                        sb.id, sb.egress.allow_out, sb.egress.deny_out
                    )
                }
            }
            SandboxCommand::Ls => {
                let list = c.list_sandboxes().await?;
                if conn.json {
                    print_json(&list);
                } else {
                    let mut t = Table::new(&[
                        ("ID", Align::Left),
                        ("STATUS", Align::Left),
                        ("TEMPLATE", Align::Left),
                        ("VCPUS", Align::Right),
                        ("MEM MB", Align::Right),
                        ("CREATED", Align::Left),
                    ]);
                    for s in list {
                        t.row([
                            s.id,
                            s.status,
                            s.template,
                            s.vcpus.to_string(),
                            s.memory_mb.to_string(),
                            s.created_at.unwrap_or_default(),
                        ]);
                    }
                    t.print();
                }
            }
            SandboxCommand::Exec { id, cmd } => {
                let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
                let out = match c.exec(&id, &cmd[0], &args).await {
                    Ok(out) => out,
                    Err(e) => {
                        // Like a shell: 127 for a command that is not there,
                        // 126 for one that cannot run.
                        if let Some(code) = start_failure_code(&e) {
                            eprintln!("wrenn: {}: {e}", cmd[0]);
                            std::process::exit(code);
                        }
                        return Err(e.into());
                    }
                };
                if conn.json {
                    print_json(&out);
                    return Ok(());
                }
                let decode = |s: &str| -> Vec<u8> {
                    if out.encoding == "base64" {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .unwrap_or_default()
                    } else {
                        s.as_bytes().to_vec()
                    }
                };
                use std::io::Write;
                std::io::stdout().write_all(&decode(&out.stdout))?;
                std::io::stderr().write_all(&decode(&out.stderr))?;
                let code = out.exit_code;
                if code != 0 {
                    std::process::exit(if (0..=255).contains(&code) { code } else { 1 });
                }
            }
            SandboxCommand::Cp { src, dst } => match (split_remote(&src), split_remote(&dst)) {
                (None, Some((id, path))) => {
                    let data = std::fs::read(&src).with_context(|| format!("reading {src}"))?;
                    c.write_file(id, path, data.into()).await?;
                }
                (Some((id, path)), None) => {
                    let data = c.read_file(id, path).await?;
                    std::fs::write(&dst, &data).with_context(|| format!("writing {dst}"))?;
                }
                _ => anyhow::bail!(
                    "one side of cp must be ID:/path in a sandbox and the other a local file"
                ),
            },
            SandboxCommand::Pause { id } => {
                c.set_paused(&id, true).await?;
            }
            SandboxCommand::Resume { id } => {
                c.set_paused(&id, false).await?;
            }
            SandboxCommand::Shell { id, cmd, attach } => {
                let code = shell(&c, &id, cmd, attach).await?;
                std::process::exit(code);
            }
            SandboxCommand::Logs { id, pid } => {
                let code = logs(&c, &id, pid).await?;
                std::process::exit(code);
            }
            SandboxCommand::Rm { ids } => {
                for id in ids {
                    c.destroy_sandbox(&id).await?;
                    println!("{id}");
                }
            }
        }
        Ok(())
    })
}

/// Runs a key command.
pub fn key(conn: Conn, cmd: KeyCommand) -> anyhow::Result<()> {
    let c = conn.client()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        match cmd {
            KeyCommand::Create { name, e2b } => {
                let k = c
                    .create_key(&name, if e2b { "e2b" } else { "wrenn" })
                    .await?;
                if conn.json {
                    print_json(&k)
                } else {
                    println!("{}", k.key)
                }
            }
            KeyCommand::Ls => {
                let keys = c.list_keys().await?;
                if conn.json {
                    print_json(&keys);
                } else {
                    let mut t = Table::new(&[
                        ("ID", Align::Left),
                        ("NAME", Align::Left),
                        ("KEY", Align::Left),
                        ("LAST USED", Align::Left),
                    ]);
                    for k in keys {
                        t.row([
                            k.id,
                            k.name,
                            format!("{}…{}", k.prefix, k.last4),
                            k.last_used_at.unwrap_or_else(|| "never".into()),
                        ]);
                    }
                    t.print();
                }
            }
            KeyCommand::Rm { id } => c.delete_key(&id).await?,
        }
        Ok(())
    })
}

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Puts the terminal in raw mode until dropped.
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = rustix::stdio::stdin();
        match rustix::termios::tcgetattr(stdin) {
            Ok(orig) => {
                let mut raw = orig.clone();
                raw.make_raw();
                let _ =
                    rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw);
                RawMode(Some(orig))
            }
            Err(_) => RawMode(None), // not a terminal
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(orig) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                orig,
            );
        }
    }
}

fn term_size() -> (u16, u16) {
    rustix::termios::tcgetwinsize(rustix::stdio::stdout())
        .map(|w| (w.ws_col, w.ws_row))
        .ok()
        .filter(|(c, r)| *c > 0 && *r > 0)
        .unwrap_or((80, 24))
}

/// `wrenn sandbox shell`: a PTY over the API's WebSocket.
async fn shell(
    c: &Client,
    id: &str,
    cmd: Option<String>,
    attach: Option<String>,
) -> anyhow::Result<i32> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = c.websocket(&format!("/v1/sandboxes/{id}/pty")).await?;
    let (mut tx, mut rx) = ws.split();
    let (cols, rows) = term_size();
    let first = match &attach {
        Some(tag) => PtyOpen::Connect { tag: tag.clone() },
        None => PtyOpen::Start {
            cmd,
            args: Vec::new(),
            cols: Some(cols.into()),
            rows: Some(rows.into()),
            envs: Default::default(),
            cwd: None,
        },
    };
    tx.send(Message::Text(serde_json::to_string(&first)?.into()))
        .await?;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if !interactive {
        eprintln!(
            "wrenn: standard input is not a terminal: what it holds goes to the shell, which then gets end of input"
        );
    }
    let mut input_open = true;
    let _raw = RawMode::enter();
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<PtyMessage>(&t) {
                    Ok(PtyMessage::Started { tag, .. }) if attach.is_none() => {
                        eprint!("[wrenn: session {tag} — reattach with --attach {tag}]\r\n");
                    }
                    Ok(PtyMessage::Exit { exit_code }) => return Ok(exit_code.clamp(0, 255)),
                    Ok(PtyMessage::Error { data, .. }) => anyhow::bail!("{data}"),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => return Ok(0),
                Some(Ok(_)) => {}
                Some(Err(e)) => anyhow::bail!("the connection broke: {e}; the session lives on, reattach with --attach"),
            },
            n = stdin.read(&mut buf), if input_open => match n? {
                0 => {
                    // End of input (not a terminal): one ^D, then wait for
                    // the shell to end.
                    input_open = false;
                    tx.send(Message::Binary(vec![4u8].into())).await?;
                }
                n => tx.send(Message::Binary(buf[..n].to_vec().into())).await?,
            },
            _ = winch.recv() => {
                let (cols, rows) = term_size();
                let resize = PtyControl::Resize { cols: Some(cols.into()), rows: Some(rows.into()) };
                tx.send(Message::Text(serde_json::to_string(&resize)?.into())).await?;
            }
        }
    }
}

/// `wrenn sandbox logs`: a background process's output until it exits.
async fn logs(c: &Client, id: &str, pid: u32) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut ws = c
        .websocket(&format!("/v1/sandboxes/{id}/processes/{pid}/stream"))
        .await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        match serde_json::from_str::<ProcessMessage>(&t) {
            Ok(ProcessMessage::Stdout { data }) => std::io::stdout().write_all(data.as_bytes())?,
            Ok(ProcessMessage::Stderr { data }) => std::io::stderr().write_all(data.as_bytes())?,
            Ok(ProcessMessage::Exit { exit_code }) => return Ok(exit_code.clamp(0, 255)),
            Ok(ProcessMessage::Error { data }) => anyhow::bail!("{data}"),
            Ok(ProcessMessage::Start { .. }) | Err(_) => {}
        }
    }
    Ok(0)
}

/// A shell's exit code for a command the sandbox could not start: 127 when
/// it is not there, 126 when it is but cannot run; `None` for any other
/// error. (envd says "could not start" with the OS error.)
fn start_failure_code(e: &wrenn_client::Error) -> Option<i32> {
    let wrenn_client::Error::Api {
        status: 400,
        message,
        ..
    } = e
    else {
        return None;
    };
    if !message.contains("could not start") {
        return None;
    }
    if message.contains("(os error 2)") || message.contains("(os error 20)") {
        Some(127)
    } else if message.contains("(os error 13)") || message.contains("(os error 8)") {
        Some(126)
    } else {
        None
    }
}

/// `wrenn template ls`: the templates the control plane's online hosts
/// have, and on which hosts.
pub fn list_templates(conn: Conn) -> anyhow::Result<()> {
    let c = conn.client()?;
    let rt = tokio::runtime::Runtime::new()?;
    let list = rt
        .block_on(c.list_templates())
        .with_context(|| format!("listing the templates of {}", conn.base_url()))?;
    if conn.json {
        print_json(&list);
        return Ok(());
    }
    let mut t = Table::new(&[("NAME", Align::Left), ("HOSTS", Align::Left)]);
    for tpl in list {
        t.row([tpl.name, tpl.hosts.join(",")]);
    }
    t.print();
    Ok(())
}

/// `wrenn template rm NAME`: removed from every online host.
pub fn remove_template(conn: Conn, name: &str) -> anyhow::Result<()> {
    let c = conn.client()?;
    let rt = tokio::runtime::Runtime::new()?;
    let r = rt
        .block_on(c.delete_template(name))
        .with_context(|| format!("removing template '{name}' through {}", conn.base_url()))?;
    if conn.json {
        print_json(&r);
        return Ok(());
    }
    println!("removed template {name} from {}", r.deleted_on.join(", "));
    if !r.failed.is_empty() {
        for f in &r.failed {
            eprintln!(
                "not removed from host {}: {}",
                f.host_id,
                f.message.as_deref().unwrap_or("no reason given")
            );
        }
        anyhow::bail!("template '{name}' is still on {} hosts", r.failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod start_failure_tests {
    use super::start_failure_code;

    #[test]
    fn exit_codes_like_a_shell() {
        let api = |status: u16, message: &str| wrenn_client::Error::Api {
            status,
            code: "invalid_request".into(),
            message: message.into(),
        };
        for (e, want) in [
            (
                api(
                    400,
                    "could not start 'nope': No such file or directory (os error 2)",
                ),
                Some(127),
            ),
            (
                api(
                    400,
                    "could not start '/etc/passwd': Permission denied (os error 13)",
                ),
                Some(126),
            ),
            (api(400, "cmd: must not be empty"), None),
            (api(404, "sandbox 'x' not found"), None),
        ] {
            assert_eq!(start_failure_code(&e), want, "{e}");
        }
    }
}
