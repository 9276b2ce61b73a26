//! The bodies of E2B's REST API, as E2B's OpenAPI spec names and shapes
//! them (camelCase, `…ID`): what its SDKs send and read. In the OpenAPI
//! document each is named `E2b…`, apart from the native bodies.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// E2B's `NewSandbox` (every field optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bNewSandbox)]
pub struct NewSandbox {
    /// Template id or alias (default `base`).
    #[serde(rename = "templateID")]
    pub template_id: Option<String>,
    /// Seconds until the sandbox is killed (or paused with `autoPause`).
    pub timeout: Option<u32>,
    /// Pause instead of kill when the timeout passes.
    pub auto_pause: Option<bool>,
    /// Whether traffic resumes it when paused (default: no).
    pub auto_resume: Option<AutoResume>,
    /// With `autoPause`: `false` pauses keeping only its files (default
    /// true).
    pub auto_pause_memory: Option<bool>,
    /// Whether it may reach the internet (default true).
    #[serde(rename = "allow_internet_access", alias = "allowInternetAccess")]
    pub allow_internet_access: Option<bool>,
    /// Labels.
    pub metadata: Option<HashMap<String, String>>,
    /// Environment variables of every process in it.
    pub env_vars: Option<HashMap<String, String>>,
    /// Egress rules, public traffic, the Host its apps see.
    pub network: Option<NetworkConfig>,
}

/// E2B's `SandboxNetworkConfig` (create) and `SandboxNetworkUpdateConfig`
/// (`PUT /sandboxes/{id}/network`, which replaces the rules: what it
/// leaves out is cleared).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bNetworkConfig)]
pub struct NetworkConfig {
    /// IPv4 addresses or networks it may reach (domains: not yet).
    pub allow_out: Option<Vec<String>>,
    /// IPv4 addresses or networks it may not reach.
    pub deny_out: Option<Vec<String>>,
    /// Anyone may reach its ports (default true); false: the
    /// `trafficAccessToken` of the create answer is needed. Create only.
    pub allow_public_traffic: Option<bool>,
    /// The Host its apps see, `${PORT}` for the port. Create only.
    pub mask_request_host: Option<String>,
    /// DNS servers for domain rules: accepted; without domain rules they
    /// change nothing, as on E2B.
    pub dns_servers: Option<Vec<String>>,
    /// A SOCKS5 proxy for egress: not supported (400).
    #[schema(value_type = Option<Object>)]
    pub egress_proxy: Option<serde_json::Value>,
    /// Ports whose URLs re-encrypt to the sandbox: not supported (400).
    pub https_ports: Option<Vec<u16>>,
    /// Header rules by domain: not supported (400).
    #[schema(value_type = Option<Object>)]
    pub rules: Option<serde_json::Value>,
    /// `false`: the same as `denyOut: ["0.0.0.0/0"]` (update only).
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

/// E2B's network settings, as `GET /sandboxes/{id}` reports them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bNetworkView)]
pub struct NetworkView {
    /// What it may reach.
    pub allow_out: Vec<String>,
    /// What it may not reach.
    pub deny_out: Vec<String>,
    /// Anyone may reach its ports.
    pub allow_public_traffic: bool,
    /// The Host its apps see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
}

/// E2B's `SandboxAutoResumeConfig`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = E2bAutoResume)]
pub struct AutoResume {
    /// Traffic resumes the paused sandbox.
    #[serde(default)]
    pub enabled: bool,
}

/// E2B's `SandboxLifecycle`, as `GET /sandboxes/{id}` reports it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bLifecycle)]
pub struct Lifecycle {
    /// Traffic resumes it when paused.
    pub auto_resume: bool,
    /// `kill` or `pause` when its timeout passes.
    pub on_timeout: String,
}

/// E2B's `Sandbox`: what create, resume and connect answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = E2bSandbox)]
pub struct Sandbox {
    /// The template it was made from.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The host it runs on.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The template's alias.
    pub alias: String,
    /// The envd protocol version its envd speaks.
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    /// For envd's `X-Access-Token`.
    #[serde(rename = "envdAccessToken")]
    pub envd_access_token: String,
    /// For `e2b-traffic-access-token` on its ports, when they are not
    /// public (`allowPublicTraffic: false`).
    #[serde(rename = "trafficAccessToken")]
    pub traffic_access_token: Option<String>,
    /// The domain of `{port}-{sandboxID}.{domain}`.
    pub domain: String,
}

/// E2B's `ListedSandbox`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bListedSandbox)]
pub struct ListedSandbox {
    /// The template it was made from.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The template's alias.
    pub alias: String,
    /// Its id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// The host it runs on.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// When it started (RFC 3339).
    pub started_at: Option<String>,
    /// When its timeout runs out (RFC 3339).
    pub end_at: Option<String>,
    /// CPUs.
    pub cpu_count: i64,
    /// Memory, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: i64,
    /// Disk, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: i64,
    /// Labels.
    pub metadata: HashMap<String, String>,
    /// `running` or `paused`.
    pub state: String,
    /// The envd protocol version its envd speaks.
    pub envd_version: String,
}

/// E2B's `SandboxDetail`: a listed sandbox with its access details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bSandboxDetail)]
pub struct SandboxDetail {
    /// What a listing shows.
    #[serde(flatten)]
    pub listed: ListedSandbox,
    /// For envd's `X-Access-Token`.
    pub envd_access_token: String,
    /// The domain of `{port}-{sandboxID}.{domain}`.
    pub domain: String,
    /// Whether it may reach the internet.
    pub allow_internet_access: bool,
    /// What its timeout does, and whether traffic resumes it.
    pub lifecycle: Lifecycle,
    /// Its network settings.
    pub network: NetworkView,
    /// While paused: `full` (memory kept) or `filesystem` (files only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<String>,
}

/// E2B's `SandboxMetric`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bSandboxMetric)]
pub struct SandboxMetric {
    /// When (RFC 3339).
    pub timestamp: Option<String>,
    /// When, unix seconds.
    pub timestamp_unix: i64,
    /// CPUs.
    pub cpu_count: i64,
    /// CPU in use, percent.
    pub cpu_used_pct: f32,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Memory limit, bytes.
    pub mem_total: u64,
    /// Page cache, bytes (not reported: 0).
    pub mem_cache: u64,
    /// Disk in use, bytes.
    pub disk_used: u64,
    /// Disk size, bytes.
    pub disk_total: u64,
}

/// E2B's `SandboxesWithMetrics`: the newest metric of each sandbox asked
/// for, by id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = E2bSandboxesWithMetrics)]
pub struct SandboxesWithMetrics {
    /// Sandbox id → its metric (only the caller's running sandboxes).
    pub sandboxes: std::collections::BTreeMap<String, SandboxMetric>,
}

/// E2B's `Error`: `{code, message}`, the code being the HTTP status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = E2bError)]
pub struct Error {
    /// The HTTP status.
    pub code: u16,
    /// What went wrong.
    pub message: String,
}

/// The body of `POST /sandboxes/{id}/timeout`, `…/connect` and
/// `…/resume`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = E2bTimeout)]
pub struct Timeout {
    /// Seconds from now.
    pub timeout: Option<u32>,
    /// Connect and resume: `false` boots a paused sandbox again from its
    /// disk, whatever memory it kept (E2B's `on_resume="reboot"`).
    pub memory: Option<bool>,
}

/// The body of `POST /sandboxes/{id}/pause` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = E2bPause)]
pub struct Pause {
    /// `false`: keep only its files; every process ends, and a resume
    /// boots it again (E2B's `mode="filesystem"`). Default true.
    pub memory: Option<bool>,
    // `requireHealthyGuest` is accepted and ignored: a namespace
    // sandbox's pause does not need its envd.
}

/// The body of `POST /sandboxes/{id}/refreshes`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = E2bRefresh)]
pub struct Refresh {
    /// Seconds to keep it alive from now.
    pub duration: Option<u32>,
}
