//! Templates: what hosts can start, and their removal.

use serde::{Deserialize, Serialize};

/// A template the caller's online hosts have.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Template {
    /// Its name, as a create names it.
    pub name: String,
    /// `base` (built on a host).
    #[serde(rename = "type")]
    pub kind: String,
    /// The hosts that have it, of those the caller may see (every one
    /// for platform admins, else its team's own).
    pub hosts: Vec<String>,
}

/// `DELETE /v1/templates/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TemplateDeleted {
    /// The template.
    pub name: String,
    /// The hosts it was removed from.
    pub deleted_on: Vec<String>,
    /// The hosts that could not remove it, and why.
    pub failed: Vec<HostFailure>,
}

/// A host's failure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostFailure {
    /// The host.
    pub host_id: String,
    /// What it said.
    pub message: Option<String>,
}
