//! Persistence: one [`Store`] over PostgreSQL (production) or SQLite (the
//! embedded default), chosen by URL. The same SQL runs on both (`$n`
//! placeholders, portable types, unix-second timestamps, JSON as text);
//! migrations are embedded and applied on start.

mod migrations;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use migrations::MIGRATIONS;

/// Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A person who can log in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// `usr-…`.
    pub id: String,
    /// Login.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Argon2id PHC string.
    #[serde(skip)]
    pub password_hash: String,
    /// May manage hosts.
    pub is_admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// An invitation into a team, waiting for the invitee's consent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invitation {
    /// `inv-…`.
    pub id: String,
    /// The team.
    pub team_id: String,
    /// The team's name (read only).
    pub team_name: String,
    /// The invited user.
    pub user_id: String,
    /// Role on acceptance: owner, admin or member.
    pub role: String,
    /// Who invited (user or key id).
    pub invited_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; a later acceptance is refused.
    pub expires_at: i64,
}

fn invitation_from_row(r: &sqlx::any::AnyRow) -> Invitation {
    Invitation {
        id: r.get("id"),
        team_id: r.get("team_id"),
        team_name: r.get("team_name"),
        user_id: r.get("user_id"),
        role: r.get("role"),
        invited_by: r.get("invited_by"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
    }
}

/// A team: the unit that owns sandboxes and keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Team {
    /// `team-…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A member of a team.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their email.
    pub email: String,
    /// owner, admin or member.
    pub role: String,
}

/// An API key (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    /// `key-…`.
    pub id: String,
    /// Owning team.
    pub team_id: String,
    /// Who made it.
    pub created_by: String,
    /// Label.
    pub name: String,
    /// Start of the key, to recognise it.
    pub prefix: String,
    /// Its last four characters.
    pub last4: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if ever used.
    pub last_used_at: Option<i64>,
    /// Made by a platform admin: acts with platform rights.
    #[serde(skip)]
    pub platform_admin: bool,
}

/// A host running an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    /// `host-…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Agent address (host:port).
    pub address: String,
    /// Token to call the agent.
    #[serde(skip)]
    pub token: String,
    /// pending (not registered yet), online, unreachable.
    pub status: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_seen_at: i64,
    /// `static` (configured, no heartbeats) or `registered`.
    pub kind: String,
    /// Owning team: only its sandboxes run here; empty for shared hosts.
    pub team_id: String,
    /// Labels a sandbox can ask for.
    pub tags: Vec<String>,
    /// CPU architecture, as reported.
    pub arch: String,
    /// CPUs.
    pub cpu_count: i64,
    /// Memory.
    pub memory_mb: i64,
    /// Disk for sandboxes.
    pub disk_mb: i64,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            id: String::new(),
            name: String::new(),
            address: String::new(),
            token: String::new(),
            status: "pending".into(),
            created_at: 0,
            last_seen_at: 0,
            kind: "static".into(),
            team_id: String::new(),
            tags: Vec::new(),
            arch: String::new(),
            cpu_count: 0,
            memory_mb: 0,
            disk_mb: 0,
        }
    }
}

/// A host's refresh token, as stored (only its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct HostToken {
    /// `htk-…`.
    pub id: String,
    /// Its host.
    pub host_id: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds; 0 while valid.
    pub revoked_at: i64,
}

/// What the sandboxes on one host were given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allocated {
    /// Live sandboxes.
    pub sandboxes: i64,
    /// Their vcpus.
    pub vcpus: i64,
    /// Their memory.
    pub memory_mb: i64,
    /// Their disks.
    pub disk_mb: i64,
}

/// A sandbox as the control plane knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Sandbox {
    /// `sb-…`.
    pub id: String,
    /// Owning team.
    pub team_id: String,
    /// Host it runs on.
    pub host_id: String,
    /// Template.
    pub template: String,
    /// pending, starting, running, paused, stopped, missing, error.
    pub state: String,
    /// CPUs.
    pub vcpus: i64,
    /// Memory.
    pub memory_mb: i64,
    /// Disk.
    pub disk_size_mb: i64,
    /// Idle timeout.
    pub timeout_sec: i64,
    /// Egress allowed.
    pub allow_internet_access: bool,
    /// Labels.
    pub metadata: HashMap<String, String>,
    /// envd's address as the host sees it.
    pub envd_address: String,
    /// envd's token.
    #[serde(skip)]
    pub envd_token: String,
    /// Why it is in `error`.
    pub error: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds.
    pub last_active_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Token that opens the sandbox's ports through the proxy
    /// (`e2b-traffic-access-token`).
    #[serde(skip)]
    pub traffic_token: String,
    /// Ports anyone may reach through the proxy, without credentials.
    pub public_ports: Vec<u16>,
    /// Pause instead of destroy when the timeout passes (E2B `autoPause`).
    pub auto_pause: bool,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// `aud-…`.
    pub id: String,
    /// Team.
    pub team_id: String,
    /// Who (user or key id).
    pub actor: String,
    /// What, e.g. `sandbox.create`.
    pub action: String,
    /// On what.
    pub target: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// "postgres" or "sqlite".
    pub backend: &'static str,
}

fn user(r: &AnyRow) -> User {
    User {
        id: r.get("id"),
        email: r.get("email"),
        name: r.get("name"),
        password_hash: r.get("password_hash"),
        is_admin: r.get::<i64, _>("is_admin") != 0,
        created_at: r.get("created_at"),
    }
}

fn api_key(r: &AnyRow) -> ApiKey {
    ApiKey {
        id: r.get("id"),
        team_id: r.get("team_id"),
        created_by: r.get("created_by"),
        name: r.get("name"),
        prefix: r.get("prefix"),
        last4: r.get("last4"),
        created_at: r.get("created_at"),
        last_used_at: r.get("last_used_at"),
        platform_admin: r.try_get::<i64, _>("platform_admin").unwrap_or(0) != 0,
    }
}

fn host(r: &AnyRow) -> Host {
    Host {
        id: r.get("id"),
        name: r.get("name"),
        address: r.get("address"),
        token: r.get("token"),
        status: r.get("status"),
        created_at: r.get("created_at"),
        last_seen_at: r.get("last_seen_at"),
        kind: r.get("kind"),
        team_id: r.get("team_id"),
        tags: r
            .get::<String, _>("tags")
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        arch: r.get("arch"),
        cpu_count: r.get("cpu_count"),
        memory_mb: r.get("memory_mb"),
        disk_mb: r.get("disk_mb"),
    }
}

fn sandbox(r: &AnyRow) -> Sandbox {
    let meta: String = r.get("metadata");
    Sandbox {
        id: r.get("id"),
        team_id: r.get("team_id"),
        host_id: r.get("host_id"),
        template: r.get("template"),
        state: r.get("state"),
        vcpus: r.get("vcpus"),
        memory_mb: r.get("memory_mb"),
        disk_size_mb: r.get("disk_size_mb"),
        timeout_sec: r.get("timeout_sec"),
        allow_internet_access: r.get::<i64, _>("allow_internet_access") != 0,
        metadata: serde_json::from_str(&meta).unwrap_or_default(),
        envd_address: r.get("envd_address"),
        envd_token: r.get("envd_token"),
        error: r.get("error"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        last_active_at: r.get("last_active_at"),
        updated_at: r.get("updated_at"),
        traffic_token: r.get("traffic_token"),
        public_ports: r
            .get::<String, _>("public_ports")
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect(),
        auto_pause: r.get::<i64, _>("auto_pause") != 0,
    }
}

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

// Tables are read by naming their columns, never `SELECT *`: sqlx caches a
// statement's columns on each connection, and a migration that adds a
// column under a cached `SELECT *` makes the next row read panic in sqlx's
// worker (seen once in a test after `users` gained `home_team_id`).
const USER_COLS: &str = "id, email, name, password_hash, is_admin, created_at";
const API_KEY_COLS: &str =
    "id, team_id, created_by, name, prefix, last4, created_at, last_used_at, platform_admin";
const HOST_COLS: &str = "id, name, address, token, status, created_at, last_seen_at, kind, team_id, tags, arch, cpu_count, memory_mb, disk_mb";
const SANDBOX_COLS: &str = "id, team_id, host_id, template, state, vcpus, memory_mb, disk_size_mb, timeout_sec, allow_internet_access, metadata, envd_address, envd_token, error, created_at, started_at, last_active_at, updated_at, traffic_token, public_ports, auto_pause";

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and applies
    /// migrations.
    pub async fn connect(url: &str) -> Result<Store, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        let mut opts =
            AnyPoolOptions::new().max_connections(if backend == "sqlite" { 8 } else { 16 });
        if backend == "sqlite" {
            private_sqlite_file(url);
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not yet applied.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        for (version, statements) in MIGRATIONS {
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for s in statements.iter() {
                sqlx::query(s).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(now())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    // ---- users and teams

    /// Creates a user.
    pub async fn create_user(&self, u: &User) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO users (id, email, name, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&u.id)
            .bind(&u.email)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(i64::from(u.is_admin))
            .bind(u.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the team a user's calls act for by default (made at signup).
    pub async fn set_home_team(&self, user_id: &str, team_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE users SET home_team_id = $1 WHERE id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A user by email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, sqlx::Error> {
        Ok(
            sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE email = $1"))
                .bind(email)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| user(&r)),
        )
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        Ok(
            sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| user(&r)),
        )
    }

    /// Creates a team.
    pub async fn create_team(&self, t: &Team) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A team by id.
    pub async fn team(&self, id: &str) -> Result<Option<Team>, sqlx::Error> {
        Ok(
            sqlx::query("SELECT id, name, created_at FROM teams WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Team {
                    id: r.get("id"),
                    name: r.get("name"),
                    created_at: r.get("created_at"),
                }),
        )
    }

    /// Adds (or re-roles) a member.
    pub async fn set_member(
        &self,
        team_id: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a member; false if they were not one.
    pub async fn remove_member(&self, team_id: &str, user_id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Invites `user_id` into a team (again: the invitation is renewed).
    pub async fn invite(&self, inv: &Invitation) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM team_invitations WHERE team_id = $1 AND user_id = $2")
            .bind(&inv.team_id)
            .bind(&inv.user_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO team_invitations (id, team_id, user_id, role, invited_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&inv.id)
        .bind(&inv.team_id)
        .bind(&inv.user_id)
        .bind(&inv.role)
        .bind(&inv.invited_by)
        .bind(inv.created_at)
        .bind(inv.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A user's unexpired invitations, newest first.
    pub async fn invitations_of(&self, user_id: &str) -> Result<Vec<Invitation>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT i.id AS id, i.team_id AS team_id, t.name AS team_name, i.user_id AS user_id, i.role AS role, i.invited_by AS invited_by, i.created_at AS created_at, i.expires_at AS expires_at FROM team_invitations i JOIN teams t ON t.id = i.team_id WHERE i.user_id = $1 AND i.expires_at > $2 ORDER BY i.created_at DESC, i.id",
        )
        .bind(user_id)
        .bind(now())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(invitation_from_row).collect())
    }

    /// Takes (deletes and returns) an unexpired invitation of `user_id`.
    pub async fn take_invitation(
        &self,
        id: &str,
        user_id: &str,
    ) -> Result<Option<Invitation>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT i.id AS id, i.team_id AS team_id, t.name AS team_name, i.user_id AS user_id, i.role AS role, i.invited_by AS invited_by, i.created_at AS created_at, i.expires_at AS expires_at FROM team_invitations i JOIN teams t ON t.id = i.team_id WHERE i.id = $1 AND i.user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let taken = sqlx::query("DELETE FROM team_invitations WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(row
            .filter(|_| taken.rows_affected() > 0)
            .map(|r| invitation_from_row(&r))
            .filter(|i| i.expires_at > now()))
    }

    /// Withdraws a team's invitation (by a team admin).
    pub async fn withdraw_invitation(&self, team_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM team_invitations WHERE id = $1 AND team_id = $2")
            .bind(id)
            .bind(team_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Members of a team.
    pub async fn members(&self, team_id: &str) -> Result<Vec<Member>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT m.user_id AS user_id, u.email AS email, m.role AS role FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY u.email",
        )
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Member {
                user_id: r.get("user_id"),
                email: r.get("email"),
                role: r.get("role"),
            })
            .collect())
    }

    /// A user's role in a team, if a member.
    pub async fn role(&self, team_id: &str, user_id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Teams a user belongs to, with their role: the user's home team (made
    /// at signup) first, as the one a call without `X-Team-Id` acts for, so
    /// joining another team never changes it; then in the order joined.
    pub async fn teams_of(&self, user_id: &str) -> Result<Vec<(Team, String)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT t.id AS id, t.name AS name, t.created_at AS created_at, m.role AS role FROM teams t JOIN team_members m ON m.team_id = t.id JOIN users u ON u.id = m.user_id WHERE m.user_id = $1 ORDER BY CASE WHEN t.id = u.home_team_id THEN 0 ELSE 1 END, m.created_at, t.created_at, t.id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    Team {
                        id: r.get("id"),
                        name: r.get("name"),
                        created_at: r.get("created_at"),
                    },
                    r.get("role"),
                )
            })
            .collect())
    }

    // ---- API keys

    /// Stores a key by the SHA-256 of its secret.
    pub async fn create_api_key(&self, k: &ApiKey, hash: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO api_keys (id, team_id, created_by, name, key_hash, prefix, last4, created_at, last_used_at, platform_admin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)")
            .bind(&k.id)
            .bind(&k.team_id)
            .bind(&k.created_by)
            .bind(&k.name)
            .bind(hash)
            .bind(&k.prefix)
            .bind(&k.last4)
            .bind(k.created_at)
            .bind(i64::from(k.platform_admin))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The key whose secret hashes to `hash`.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, sqlx::Error> {
        Ok(sqlx::query(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| api_key(&r)))
    }

    /// Marks a key used now.
    pub async fn touch_api_key(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A team's keys.
    pub async fn api_keys(&self, team_id: &str) -> Result<Vec<ApiKey>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {API_KEY_COLS} FROM api_keys WHERE team_id = $1 ORDER BY created_at, id"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(api_key).collect())
    }

    /// Deletes a team's key; false if it has none by that id.
    pub async fn delete_api_key(&self, team_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM api_keys WHERE team_id = $1 AND id = $2")
            .bind(team_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    // ---- hosts

    /// Creates or updates a host.
    pub async fn upsert_host(&self, h: &Host) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(&h.id)
            .execute(&self.pool)
            .await?;
        self.insert_host(h).await
    }

    /// Records a new host.
    pub async fn insert_host(&self, h: &Host) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO hosts (id, name, address, token, status, created_at, last_seen_at, kind, team_id, tags, arch, cpu_count, memory_mb, disk_mb) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
            .bind(&h.id)
            .bind(&h.name)
            .bind(&h.address)
            .bind(&h.token)
            .bind(&h.status)
            .bind(h.created_at)
            .bind(h.last_seen_at)
            .bind(&h.kind)
            .bind(&h.team_id)
            .bind(h.tags.join(","))
            .bind(&h.arch)
            .bind(h.cpu_count)
            .bind(h.memory_mb)
            .bind(h.disk_mb)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes a host's mutable fields.
    pub async fn update_host(&self, h: &Host) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE hosts SET name = $1, address = $2, token = $3, status = $4, last_seen_at = $5, tags = $6, arch = $7, cpu_count = $8, memory_mb = $9, disk_mb = $10 WHERE id = $11")
            .bind(&h.name)
            .bind(&h.address)
            .bind(&h.token)
            .bind(&h.status)
            .bind(h.last_seen_at)
            .bind(h.tags.join(","))
            .bind(&h.arch)
            .bind(h.cpu_count)
            .bind(h.memory_mb)
            .bind(h.disk_mb)
            .bind(&h.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a heartbeat: online, seen now. False if the host is gone.
    pub async fn host_seen(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("UPDATE hosts SET status = 'online', last_seen_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A heartbeat from a host that is online already: one statement, true
    /// if the host is online (false: gone, or coming back).
    pub async fn online_host_seen(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r =
            sqlx::query("UPDATE hosts SET last_seen_at = $1 WHERE id = $2 AND status = 'online'")
                .bind(now())
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Removes a host and its refresh tokens.
    pub async fn delete_host(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM host_tokens WHERE host_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM hosts WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets the hash and expiry of a host's one-time registration token.
    pub async fn set_registration_token(
        &self,
        host_id: &str,
        hash: &str,
        expires_at: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE hosts SET reg_token_hash = $1, reg_expires_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(expires_at)
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Uses a registration token: the host it was for, if it is valid; it
    /// cannot be used again.
    pub async fn take_registration_token(&self, hash: &str) -> Result<Option<Host>, sqlx::Error> {
        if hash.is_empty() {
            return Ok(None);
        }
        let Some(h) = sqlx::query(&format!(
            "SELECT {HOST_COLS} FROM hosts WHERE reg_token_hash = $1 AND reg_expires_at > $2"
        ))
        .bind(hash)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?
        .map(|r| host(&r)) else {
            return Ok(None);
        };
        // Claimed by whoever clears it first.
        let r = sqlx::query(
            "UPDATE hosts SET reg_token_hash = '' WHERE id = $1 AND reg_token_hash = $2",
        )
        .bind(&h.id)
        .bind(hash)
        .execute(&self.pool)
        .await?;
        Ok((r.rows_affected() == 1).then_some(h))
    }

    /// Stores a new refresh token of a host.
    pub async fn insert_host_token(&self, t: &HostToken, hash: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO host_tokens (id, host_id, token_hash, expires_at, revoked_at, created_at) VALUES ($1, $2, $3, $4, 0, $5)")
            .bind(&t.id)
            .bind(&t.host_id)
            .bind(hash)
            .bind(t.expires_at)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A refresh token by its hash (valid or not).
    pub async fn host_token(&self, hash: &str) -> Result<Option<HostToken>, sqlx::Error> {
        Ok(sqlx::query(
            "SELECT id, host_id, expires_at, revoked_at FROM host_tokens WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| HostToken {
            id: r.get("id"),
            host_id: r.get("host_id"),
            expires_at: r.get("expires_at"),
            revoked_at: r.get("revoked_at"),
        }))
    }

    /// Revokes one refresh token.
    pub async fn revoke_host_token(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE host_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at = 0")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes every refresh token of a host.
    pub async fn revoke_host_tokens(&self, host_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE host_tokens SET revoked_at = $1 WHERE host_id = $2 AND revoked_at = 0")
            .bind(now())
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Registered hosts silent since before `cutoff` that are still
    /// `online`: marked `unreachable`, their live sandboxes `missing`.
    /// Returns the hosts marked.
    pub async fn mark_silent_hosts(&self, cutoff: i64) -> Result<Vec<String>, sqlx::Error> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM hosts WHERE kind = 'registered' AND status = 'online' AND last_seen_at < $1")
            .bind(cutoff)
            .fetch_all(&self.pool)
            .await?;
        for id in &ids {
            let mut tx = self.pool.begin().await?;
            sqlx::query("UPDATE hosts SET status = 'unreachable' WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE sandboxes SET state = 'missing', updated_at = $1 WHERE host_id = $2 AND state IN ('running', 'paused', 'starting')")
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(ids)
    }

    /// Resources given to live sandboxes, per host.
    pub async fn allocations(&self) -> Result<HashMap<String, Allocated>, sqlx::Error> {
        self.allocated(None).await
    }

    /// Resources given to live sandboxes on one host.
    pub async fn allocated_on(&self, host_id: &str) -> Result<Allocated, sqlx::Error> {
        Ok(self
            .allocated(Some(host_id))
            .await?
            .remove(host_id)
            .unwrap_or_default())
    }

    async fn allocated(
        &self,
        host: Option<&str>,
    ) -> Result<HashMap<String, Allocated>, sqlx::Error> {
        let one = if host.is_some() {
            "AND host_id = $1"
        } else {
            ""
        };
        let sql = format!(
            "SELECT host_id, COUNT(*) AS n, CAST(SUM(vcpus) AS BIGINT) AS v, CAST(SUM(memory_mb) AS BIGINT) AS m, CAST(SUM(disk_size_mb) AS BIGINT) AS d FROM sandboxes WHERE state IN ('pending', 'starting', 'running', 'paused', 'missing') {one} GROUP BY host_id"
        );
        let mut q = sqlx::query(&sql);
        if let Some(h) = host {
            q = q.bind(h);
        }
        let rows = q.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("host_id"),
                    Allocated {
                        sandboxes: r.get("n"),
                        vcpus: r.try_get("v").unwrap_or(0),
                        memory_mb: r.try_get("m").unwrap_or(0),
                        disk_mb: r.try_get("d").unwrap_or(0),
                    },
                )
            })
            .collect())
    }

    /// How many users exist.
    pub async fn user_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
    }

    /// Every host.
    pub async fn hosts(&self) -> Result<Vec<Host>, sqlx::Error> {
        Ok(sqlx::query(&format!(
            "SELECT {HOST_COLS} FROM hosts ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(host)
        .collect())
    }

    /// One host.
    pub async fn host(&self, id: &str) -> Result<Option<Host>, sqlx::Error> {
        Ok(
            sqlx::query(&format!("SELECT {HOST_COLS} FROM hosts WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| host(&r)),
        )
    }

    // ---- sandboxes

    /// Records a new sandbox (normally `pending`).
    pub async fn insert_sandbox(&self, s: &Sandbox) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("INSERT INTO sandboxes ({SANDBOX_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"))
            .bind(&s.id)
            .bind(&s.team_id)
            .bind(&s.host_id)
            .bind(&s.template)
            .bind(&s.state)
            .bind(s.vcpus)
            .bind(s.memory_mb)
            .bind(s.disk_size_mb)
            .bind(s.timeout_sec)
            .bind(i64::from(s.allow_internet_access))
            .bind(serde_json::to_string(&s.metadata).expect("map serializes"))
            .bind(&s.envd_address)
            .bind(&s.envd_token)
            .bind(&s.error)
            .bind(s.created_at)
            .bind(s.started_at)
            .bind(s.last_active_at)
            .bind(s.updated_at)
            .bind(&s.traffic_token)
            .bind(ports_text(&s.public_ports))
            .bind(i64::from(s.auto_pause))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes every mutable field of a sandbox.
    pub async fn update_sandbox(&self, s: &Sandbox) -> Result<(), sqlx::Error> {
        self.write_sandbox(s, None).await.map(|_| ())
    }

    /// Writes every mutable field of `s`; with `guard` (state, updated_at)
    /// only if the row still has them. Whether a row was written.
    async fn write_sandbox(
        &self,
        s: &Sandbox,
        guard: Option<(&str, i64)>,
    ) -> Result<bool, sqlx::Error> {
        let sql = match guard {
            None => {
                "UPDATE sandboxes SET state = $1, host_id = $2, envd_address = $3, envd_token = $4, error = $5, started_at = $6, last_active_at = $7, updated_at = $8, timeout_sec = $9, public_ports = $10 WHERE id = $11"
            }
            Some(_) => {
                "UPDATE sandboxes SET state = $1, host_id = $2, envd_address = $3, envd_token = $4, error = $5, started_at = $6, last_active_at = $7, updated_at = $8, timeout_sec = $9, public_ports = $10 WHERE id = $11 AND state = $12 AND updated_at = $13"
            }
        };
        let mut q = sqlx::query(sql)
            .bind(&s.state)
            .bind(&s.host_id)
            .bind(&s.envd_address)
            .bind(&s.envd_token)
            .bind(&s.error)
            .bind(s.started_at)
            .bind(s.last_active_at)
            .bind(now())
            .bind(s.timeout_sec)
            .bind(ports_text(&s.public_ports))
            .bind(&s.id);
        if let Some((state, updated_at)) = guard {
            q = q.bind(state).bind(updated_at);
        }
        Ok(q.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Records that a sandbox was used at `at` (its `last_active_at`), and
    /// nothing else: a caller that read the row before a long call (an
    /// exec) must not write back a state that changed meanwhile.
    pub async fn touch_sandbox(&self, id: &str, at: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sandboxes SET last_active_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Like [`Store::update_sandbox`], but only if nobody changed the row
    /// since `s` was read from it (same state, same `updated_at`); false
    /// when someone did, and nothing was written. For writers that act on
    /// what they read a while ago (reconciliation).
    pub async fn update_sandbox_if_unchanged(
        &self,
        s: &Sandbox,
        read_state: &str,
    ) -> Result<bool, sqlx::Error> {
        self.write_sandbox(s, Some((read_state, s.updated_at)))
            .await
    }

    /// Forgets a sandbox that never existed anywhere (a create its host
    /// refused as invalid).
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A team's sandbox; `None` for other teams' sandboxes too.
    pub async fn sandbox(&self, team_id: &str, id: &str) -> Result<Option<Sandbox>, sqlx::Error> {
        Ok(sqlx::query(&format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND id = $2"
        ))
        .bind(team_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| sandbox(&r)))
    }

    /// Any team's sandbox, for routing proxy traffic (which proves access
    /// by other means than a team's credentials).
    pub async fn sandbox_by_id(&self, id: &str) -> Result<Option<Sandbox>, sqlx::Error> {
        Ok(sqlx::query(&format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| sandbox(&r)))
    }

    /// A team's sandboxes, optionally in one state, newest first.
    pub async fn sandboxes(
        &self,
        team_id: &str,
        state: Option<&str>,
    ) -> Result<Vec<Sandbox>, sqlx::Error> {
        let rows = match state {
            Some(st) => {
                sqlx::query(&format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND state = $2 ORDER BY created_at DESC, id"))
                    .bind(team_id)
                    .bind(st)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND state <> 'stopped' ORDER BY created_at DESC, id"))
                    .bind(team_id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(sandbox).collect())
    }

    /// Sandboxes on a host that are not stopped.
    pub async fn sandboxes_on_host(&self, host_id: &str) -> Result<Vec<Sandbox>, sqlx::Error> {
        let rows = sqlx::query(&format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE host_id = $1 AND state <> 'stopped' ORDER BY id"))
            .bind(host_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(sandbox).collect())
    }

    // ---- audit

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        team_id: &str,
        actor: &str,
        action: &str,
        target: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO audit_logs (id, team_id, actor, action, target, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(crate::ids::new("aud"))
            .bind(team_id)
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A team's most recent audit entries.
    pub async fn audit_log(
        &self,
        team_id: &str,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query("SELECT id, team_id, actor, action, target, created_at FROM audit_logs WHERE team_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2")
            .bind(team_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get("id"),
                team_id: r.get("team_id"),
                actor: r.get("actor"),
                action: r.get("action"),
                target: r.get("target"),
                created_at: r.get("created_at"),
            })
            .collect())
    }
}

/// Creates the SQLite file of `url` readable by its owner only (0600)
/// before SQLite opens it: it holds password hashes and the agents'
/// credentials. SQLite gives its `-wal` and `-shm` files the same mode.
/// An existing file (and those) is made 0600; a URL without a file
/// (`:memory:`) is left alone.
fn private_sqlite_file(url: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return;
    }
    if std::path::Path::new(path).exists() {
        // Made by an older version, perhaps readable by all: no longer.
        use std::os::unix::fs::PermissionsExt;
        for f in [
            path.to_string(),
            format!("{path}-wal"),
            format!("{path}-shm"),
        ] {
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
        }
        return;
    }
    // If this fails, SQLite's own open reports the error.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
}
