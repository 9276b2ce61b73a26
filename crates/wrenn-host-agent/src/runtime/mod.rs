//! The `Runtime` trait: how a host runs sandboxes, whatever isolates them.
//!
//! A runtime creates a sandbox from a [`SandboxSpec`] and hands back an
//! [`Instance`]: where envd answers and with which token. It pauses,
//! resumes and destroys sandboxes, reports their resource use, and after a
//! restart of the agent re-adopts what still runs and removes what was half
//! made. It knows nothing of HTTP, timeouts or metadata: the agent does.

#[cfg(feature = "test-double")]
pub mod memory;
pub mod namespaces;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a sandbox is asked to be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Id (`sb-` + base36); also the hostname inside.
    pub id: String,
    /// Template name.
    pub template: String,
    /// CPUs.
    pub vcpus: u32,
    /// Memory limit.
    pub memory_mb: u32,
    /// Disk size.
    pub disk_size_mb: u32,
    /// Whether it may reach the internet.
    pub allow_internet_access: bool,
    /// Environment for every process in it.
    pub envs: HashMap<String, String>,
    /// Who its commands and file calls run as, and where, when a call
    /// names neither (envd's `/init`); root in `/root` when unset.
    #[serde(default)]
    pub run_as: crate::templates::Defaults,
    /// Where it may and may not connect.
    #[serde(default)]
    pub egress: Egress,
}

/// A sandbox's egress rules (see [`wrenn_protocol::sandbox::egress`]):
/// `allow` wins over `deny`; what neither names is allowed; the host,
/// other sandboxes and private ranges are never reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Networks it may reach.
    #[serde(default)]
    pub allow: Vec<wrenn_protocol::sandbox::egress::Ipv4Net>,
    /// Networks it may not reach.
    #[serde(default)]
    pub deny: Vec<wrenn_protocol::sandbox::egress::Ipv4Net>,
}

impl Egress {
    /// Rules from the wire, each an IPv4 address or network, at most
    /// [`wrenn_protocol::sandbox::egress::MAX_RULES`] a list.
    pub fn parse(allow: &[String], deny: &[String]) -> Result<Egress, RuntimeError> {
        use wrenn_protocol::sandbox::egress::{MAX_RULES, parse};
        let list = |what: &str, rules: &[String]| {
            if rules.len() > MAX_RULES {
                return Err(RuntimeError::InvalidSpec(format!(
                    "{what}: at most {MAX_RULES} rules"
                )));
            }
            rules
                .iter()
                .map(|r| {
                    parse(r).ok_or_else(|| {
                        RuntimeError::InvalidSpec(format!(
                            "{what}: '{r}' is not an IPv4 address or network"
                        ))
                    })
                })
                .collect()
        };
        Ok(Egress {
            allow: list("allow_out", allow)?,
            deny: list("deny_out", deny)?,
        })
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Whether a sandbox's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Running.
    Running,
    /// Frozen.
    Paused,
}

/// A sandbox that exists on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// What it was created from.
    pub spec: SandboxSpec,
    /// Where its envd listens, from the host.
    pub envd_addr: SocketAddr,
    /// Token envd requires.
    pub envd_token: String,
    /// Host pid of its first process.
    pub init_pid: u32,
    /// Running or paused.
    pub state: RunState,
    /// Paused with its memory dropped: no process runs, its disk is kept,
    /// and a resume boots it again (E2B's filesystem-only pause).
    #[serde(default)]
    pub memory_dropped: bool,
}

/// Resource use of one sandbox.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// CPU time used, in microseconds.
    pub cpu_usec: u64,
    /// Memory in use.
    pub memory_bytes: u64,
    /// Memory limit.
    pub memory_limit_bytes: u64,
    /// Disk in use.
    pub disk_used_bytes: u64,
    /// Disk size.
    pub disk_limit_bytes: u64,
    /// Tasks.
    pub pids: u32,
}

/// What went wrong in a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Bad request: unknown template, impossible limits, bad id.
    #[error("{0}")]
    InvalidSpec(String),
    /// The id is taken.
    #[error("sandbox '{0}' already exists on this host; pick another id")]
    AlreadyExists(String),
    /// No such sandbox.
    #[error("sandbox '{0}' not found on this host")]
    NotFound(String),
    /// Wrong state for the call (e.g. resume of a running sandbox).
    #[error("{0}")]
    InvalidState(String),
    /// The host ran out of something (slots, memory, disk).
    #[error("{0}")]
    Exhausted(String),
    /// Anything else: what was being done, and the error that stopped it
    /// (kept as the source, and shown after a colon).
    #[error("{what}{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Failed {
        /// What was being done (e.g. "creating the cgroup of sb-1").
        what: String,
        /// Why it failed, when another error says so.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl RuntimeError {
    /// A failure described by `what` alone.
    pub fn failed(what: impl Into<String>) -> Self {
        RuntimeError::Failed {
            what: what.into(),
            source: None,
        }
    }

    /// A failure while doing `what`, caused by `source`.
    pub fn caused(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        RuntimeError::Failed {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A way of running sandboxes on this host.
pub trait Runtime: Send + Sync + 'static {
    /// Its name: "namespaces", "firecracker", ...
    fn name(&self) -> &'static str;

    /// Creates and starts a sandbox; returns once envd was started and its
    /// port at [`Instance::envd_addr`] accepts connections (the agent then
    /// waits for envd to answer: the runtime speaks no HTTP). On failure
    /// nothing of it remains.
    fn create(
        &self,
        spec: SandboxSpec,
    ) -> impl Future<Output = Result<Instance, RuntimeError>> + Send;

    /// Called once the agent brought a new sandbox's envd up: from here on
    /// the sandbox is whole, and `recover` adopts it after a restart
    /// (before, it removes it as half made).
    fn confirm(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = id;
        async { Ok(()) }
    }

    /// Stops a sandbox and removes everything it had. May answer once the
    /// sandbox is stopped (gone from `get` and `list`, its processes
    /// killed) and remove the rest behind; [`Runtime::settle`] waits for
    /// that, and a restart's `recover` finishes what a crash interrupted.
    fn destroy(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Waits until every sandbox destroyed so far is wholly removed.
    fn settle(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Freezes every process of a sandbox.
    fn pause(&self, id: &str) -> impl Future<Output = Result<Instance, RuntimeError>> + Send;

    /// Thaws a paused sandbox; one whose memory was dropped is booted
    /// again from its disk (the agent then brings envd up and confirms it,
    /// as after a create).
    fn resume(&self, id: &str) -> impl Future<Output = Result<Instance, RuntimeError>> + Send;

    /// Pauses a sandbox (running, or paused with its memory) dropping its
    /// memory: every process ends, its disk and address stay, and
    /// [`Runtime::resume`] boots it again. Runtimes that cannot, refuse.
    fn pause_dropping_memory(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Instance, RuntimeError>> + Send {
        let what = format!(
            "sandbox {id}: this runtime cannot pause a sandbox dropping its memory; pause it with its memory"
        );
        async move { Err(RuntimeError::InvalidState(what)) }
    }

    /// Replaces a sandbox's egress rules (running or paused); they hold
    /// within a second, and across pause, resume and an agent restart.
    fn set_egress(
        &self,
        id: &str,
        egress: Egress,
    ) -> impl Future<Output = Result<Instance, RuntimeError>> + Send;

    /// One sandbox.
    fn get(&self, id: &str) -> Option<Instance>;

    /// Every sandbox on this host.
    fn list(&self) -> Vec<Instance>;

    /// Resource use.
    fn usage(&self, id: &str) -> Result<Usage, RuntimeError>;

    /// A connection to `port` on the sandbox's own loopback (127.0.0.1,
    /// then ::1): how the proxy reaches a server that listens only there,
    /// when the sandbox's address refused. `Ok(None)` when nothing listens
    /// there either. Made when asked, so nothing watches for listeners.
    fn connect_loopback(
        &self,
        id: &str,
        port: u16,
    ) -> impl Future<Output = Result<Option<tokio::net::TcpStream>, RuntimeError>> + Send;

    /// After a start: adopts sandboxes that still run, removes half-made or
    /// dead ones; returns the adopted.
    fn recover(&self) -> impl Future<Output = Result<Vec<Instance>, RuntimeError>> + Send;
}
