//! Hosts: records, registration tokens, and the agent's side
//! (register, refresh, heartbeat).

use serde::{Deserialize, Serialize};

/// `POST /v1/hosts`: every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateHost {
    /// A name (default `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels a sandbox can ask for (`host_tags`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The caller's team's own host (else a shared one: platform admins).
    #[serde(default)]
    pub team_owned: bool,
}

/// A host as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Host {
    /// `host-…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where the control plane reaches its agent (host:port); empty until
    /// it registers.
    pub address: String,
    /// pending, online or unreachable.
    pub status: String,
    /// `static` (configured) or `registered`.
    pub kind: String,
    /// The team that owns it; none for a shared host.
    pub team_id: Option<String>,
    /// Its labels.
    pub tags: Vec<String>,
    /// CPU architecture.
    pub arch: String,
    /// CPUs.
    pub cpu_count: i64,
    /// Memory, MiB.
    pub memory_mb: i64,
    /// Disk for sandboxes, MiB.
    pub disk_mb: i64,
    /// Its live sandboxes.
    pub sandboxes: i64,
    /// When it was made.
    pub created_at: Option<String>,
    /// When it was last heard from.
    pub last_seen_at: Option<String>,
}

/// A new host record with its registration token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewHost {
    /// The host.
    #[serde(flatten)]
    pub host: Host,
    /// For `wrenn agent --register`: one use, 1 hour.
    pub registration_token: String,
    /// When the token lapses.
    pub registration_expires_at: Option<String>,
}

/// `POST /v1/hosts/{id}/token`: a new registration token (the old one
/// is dead).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistrationToken {
    /// The host.
    pub id: String,
    /// One use, 1 hour.
    pub registration_token: String,
    /// When it lapses.
    pub registration_expires_at: Option<String>,
}

/// `PUT /v1/hosts/{id}/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Tags {
    /// The host's labels, replacing the old ones.
    pub tags: Vec<String>,
}

/// `POST /v1/hosts/register`: what an agent sends once, with its
/// registration token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// The registration token.
    pub token: String,
    /// Where the control plane reaches the agent, host:port.
    pub address: String,
    /// The token the agent requires on its API.
    pub agent_token: String,
    /// CPU architecture.
    #[serde(default)]
    pub arch: String,
    /// CPUs.
    #[serde(default)]
    pub cpu_count: i64,
    /// Memory, MiB.
    #[serde(default)]
    pub memory_mb: i64,
    /// Disk for sandboxes, MiB.
    #[serde(default)]
    pub disk_mb: i64,
    /// The runtime the agent runs sandboxes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The templates it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
}

/// An agent's credentials: from `register` and `refresh`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    /// The host it is.
    pub host_id: String,
    /// For `Authorization: Bearer` on heartbeats (7 days).
    pub host_jwt: String,
    /// When the JWT lapses, unix seconds (0: not said).
    #[serde(default)]
    pub host_jwt_expires_at: i64,
    /// Trades for new credentials (60 days; one use).
    pub refresh_token: String,
    /// When the refresh token lapses, unix seconds (0: not said).
    #[serde(default)]
    pub refresh_expires_at: i64,
    /// How often to send heartbeats (0: not said; the agent's own).
    #[serde(default)]
    pub heartbeat_interval_sec: u64,
}

/// `POST /v1/hosts/refresh`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    /// The refresh token to trade.
    pub refresh_token: String,
}

/// `POST /v1/hosts/heartbeat`: what the agent has now (optional; both
/// fields or neither).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    /// The runtime it runs sandboxes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// The templates it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Seen {
    /// Always true.
    pub ok: bool,
    /// How often to send heartbeats.
    pub heartbeat_interval_sec: u64,
}
