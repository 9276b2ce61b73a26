//! Sandboxes: create, the sandbox as shown, public ports, metrics.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/sandboxes`: every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Template name (default `base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// CPUs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Memory in MiB (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Disk in MiB (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_mb: Option<u32>,
    /// Idle timeout in seconds (default 300; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<u32>,
    /// Labels, returned as given and usable as list filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<HashMap<String, String>>,
    /// Environment variables of every process in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<HashMap<String, String>>,
    /// Whether it may reach the internet (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
    /// Ports reachable through the proxy without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ports: Option<Vec<u16>>,
    /// Whether traffic through the proxy resumes it when paused (default
    /// true; false: such traffic is refused until it is resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<bool>,
    /// Only hosts with all these tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_tags: Option<Vec<String>>,
    /// Where it may and may not connect (default: anywhere public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
}

/// A sandbox's egress rules (`PUT /v1/sandboxes/{id}/egress` replaces
/// them): IPv4 addresses or networks (`1.2.3.4`, `10.0.0.0/8`), at most
/// 256 each. An allowed one wins over a denied one; what neither names is
/// allowed; the host, other sandboxes and private ranges are never
/// reachable. `deny_out: ["0.0.0.0/0"]` with a few allowed is an allow
/// list (DNS included: allow the resolver too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// What it may reach.
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// What it may not reach.
    #[serde(default)]
    pub deny_out: Vec<String>,
}

/// A sandbox as the API shows it (the `Capsule` of the `wrenn` SDK).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sandbox {
    /// `sb-…`.
    pub id: String,
    /// pending, running, paused, stopped, missing or error.
    pub status: String,
    /// The template it was made from.
    pub template: String,
    /// CPUs.
    pub vcpus: i64,
    /// Memory in MiB.
    pub memory_mb: i64,
    /// Disk in MiB.
    pub disk_size_mb: i64,
    /// Idle timeout in seconds; 0 = none.
    pub timeout_sec: i64,
    /// Whether egress is allowed.
    pub allow_internet_access: bool,
    /// Labels given at creation.
    pub metadata: HashMap<String, String>,
    /// The host it runs on.
    pub host_id: String,
    /// Why it is in `error`.
    pub error: Option<String>,
    /// When it was made.
    pub created_at: Option<String>,
    /// When it last started or resumed.
    pub started_at: Option<String>,
    /// When it was last used.
    pub last_active_at: Option<String>,
    /// When its record last changed.
    pub last_updated: Option<String>,
    /// Ports anyone may reach through the proxy, without credentials.
    pub public_ports: Vec<u16>,
    /// Opens every port through the proxy (`e2b-traffic-access-token`).
    pub traffic_token: String,
    /// Whether traffic through the proxy resumes it when paused (servers
    /// older than this field always did).
    #[serde(default = "yes")]
    pub auto_resume: bool,
    /// Its egress rules (servers older than this field had none).
    #[serde(default)]
    pub egress: Egress,
    /// Disk in use, MiB (on GET of one running or paused sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_mb: Option<u64>,
}

/// `PUT /v1/sandboxes/{id}/public-ports`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PublicPorts {
    /// The ports anyone may reach; the others need credentials.
    pub ports: Vec<u16>,
}

/// `GET /v1/sandboxes/{id}/metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Metrics {
    /// The sandbox.
    pub sandbox_id: String,
    /// Samples, oldest first (today: one, taken now).
    pub points: Vec<MetricsPoint>,
}

/// One sample of a sandbox's use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsPoint {
    /// When, in unix seconds.
    pub timestamp_unix: i64,
    /// CPU in use, percent of its vCPUs.
    pub cpu_pct: f32,
    /// Memory in use.
    pub mem_bytes: u64,
    /// Its memory limit.
    pub mem_limit_bytes: u64,
    /// Disk in use.
    pub disk_bytes: u64,
    /// Its disk's size.
    pub disk_limit_bytes: u64,
    /// Processes and threads.
    pub pids: u32,
}

/// `true`, for fields whose absence means yes.
fn yes() -> bool {
    true
}
