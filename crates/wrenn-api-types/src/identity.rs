//! Users, logins, API keys, teams, invitations and the audit log.

use serde::{Deserialize, Serialize};

/// `POST /v1/auth/signup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Signup {
    /// Login.
    pub email: String,
    /// At least 8 characters.
    pub password: String,
    /// Display name (default: the email's local part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The new team's name (default: "<name>'s team").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_name: Option<String>,
}

/// A signed-up user, their team and a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedUp {
    /// The user.
    pub user: User,
    /// Their own team, which they own.
    pub team: Team,
    /// A JWT for `Authorization: Bearer`.
    pub token: String,
}

/// A person who can log in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// `usr-…`.
    pub id: String,
    /// Login.
    pub email: String,
    /// Display name.
    pub name: String,
    /// A platform admin (manages shared hosts and templates).
    pub is_admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A team as made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Team {
    /// `team-…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// Login.
    pub email: String,
    /// Password.
    pub password: String,
}

/// A login: a token, the user and their teams.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// A JWT for `Authorization: Bearer`.
    pub token: String,
    /// The user.
    pub user: User,
    /// Their teams, with their role in each.
    pub teams: Vec<Membership>,
}

/// A team and the caller's role in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Membership {
    /// `team-…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// owner, admin or member.
    pub role: String,
}

/// `GET /v1/teams`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Teams {
    /// The caller's teams.
    pub teams: Vec<Membership>,
}

/// `POST /v1/teams`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// Its name.
    pub name: String,
}

/// `POST /v1/api-keys`: both fields optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label (default "api key").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `wrenn` (default, `wrn_…`) or `e2b` (`e2b_…`, for E2B's SDKs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// An API key (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Key {
    /// `key-…`.
    pub id: String,
    /// Its label.
    pub name: String,
    /// The start of the secret, to recognise it.
    pub prefix: String,
    /// The secret's last four characters.
    pub last4: String,
    /// The team it acts for.
    pub team_id: String,
    /// Who made it.
    pub created_by: String,
    /// When it was made.
    pub created_at: Option<String>,
    /// When it was last used (to the minute), if ever.
    pub last_used_at: Option<String>,
}

/// A new API key, its secret shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewKey {
    /// The key.
    #[serde(flatten)]
    pub info: Key,
    /// The secret, for `X-API-Key`; not kept by the server.
    pub key: String,
}

/// `GET /v1/api-keys`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Keys {
    /// The team's keys.
    pub api_keys: Vec<Key>,
}

/// `GET /v1/teams/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Members {
    /// The team's members.
    pub members: Vec<Member>,
}

/// A member of a team.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their email.
    pub email: String,
    /// owner, admin or member.
    pub role: String,
}

/// `POST /v1/teams/{id}/members`: invites a user (or changes a member's
/// role).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The user's email.
    pub email: String,
    /// owner, admin or member (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// An invitation to a team, which the invitee accepts or declines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invitation {
    /// `inv-…`.
    pub id: String,
    /// The inviting team.
    pub team_id: String,
    /// Its name.
    pub team_name: String,
    /// The invitee.
    pub user_id: String,
    /// The role on joining.
    pub role: String,
    /// Who invited.
    pub invited_by: String,
    /// When.
    pub created_at: Option<String>,
    /// When it lapses.
    pub expires_at: Option<String>,
}

/// `202` of `POST /v1/teams/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invited {
    /// The invitation.
    pub invitation: Invitation,
}

/// `GET /v1/invitations`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invitations {
    /// The caller's pending invitations.
    pub invitations: Vec<Invitation>,
}

/// `POST /v1/invitations/{id}/accept`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Joined {
    /// The team joined, and the role in it.
    pub team: Membership,
}

/// `GET /v1/audit-logs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditLog {
    /// The team's latest entries, newest first.
    pub audit_logs: Vec<AuditEntry>,
}

/// Who did what to what, when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// The entry.
    pub id: String,
    /// A user or key id.
    pub actor: String,
    /// E.g. `sandbox.create`.
    pub action: String,
    /// What it acted on.
    pub target: String,
    /// When.
    pub created_at: Option<String>,
}
