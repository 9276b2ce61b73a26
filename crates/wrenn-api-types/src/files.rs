//! Files in a sandbox: paths, entries, what a write did.

use serde::{Deserialize, Serialize};

/// The body of `files/read`, `files/list`, `files/mkdir` and
/// `files/remove`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PathRequest {
    /// The path in the sandbox (relative ones start at the user's home).
    pub path: String,
    /// For `files/list`: how deep to list (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
}

/// What `files/write` wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Written {
    /// The path.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// A file, directory or symlink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Its absolute path.
    pub path: String,
    /// `file`, `directory` or `symlink`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes.
    pub size: i64,
    /// Permission bits.
    pub mode: u32,
    /// Owning user.
    pub owner: String,
    /// Owning group.
    pub group: String,
    /// Last change, unix seconds.
    pub modified_at: i64,
}

/// `files/list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entries {
    /// What the directory holds, to the depth asked.
    pub entries: Vec<Entry>,
}

/// `files/mkdir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DirMade {
    /// The new directory (absent if it vanished at once).
    pub entry: Option<Entry>,
}
