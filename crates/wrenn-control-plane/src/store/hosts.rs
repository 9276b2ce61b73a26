//! Hosts, their refresh tokens, and what their sandboxes were given.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, cache, now};
use crate::host_status::HostStatus;
use crate::sandbox_state::SandboxState;

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
    /// Whether it takes sandboxes.
    pub status: HostStatus,
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
    /// The runtime its agent reported (`namespaces`); empty until it did.
    pub runtime: String,
    /// The templates its agent reported; `None` when it never reported
    /// them (a static host), which scheduling takes as "may have any".
    pub templates: Option<Vec<String>>,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            id: String::new(),
            name: String::new(),
            address: String::new(),
            token: String::new(),
            status: HostStatus::Pending,
            created_at: 0,
            last_seen_at: 0,
            kind: "static".into(),
            team_id: String::new(),
            tags: Vec::new(),
            arch: String::new(),
            cpu_count: 0,
            memory_mb: 0,
            disk_mb: 0,
            runtime: String::new(),
            templates: None,
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

fn host(r: &AnyRow) -> Host {
    Host {
        id: r.get("id"),
        name: r.get("name"),
        address: r.get("address"),
        token: r.get("token"),
        status: HostStatus::parse(&r.try_get::<String, _>("status").unwrap_or_default())
            .unwrap_or(HostStatus::Unreachable),
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
        runtime: r.try_get("runtime").unwrap_or_default(),
        templates: r
            .try_get::<String, _>("templates")
            .ok()
            .filter(|t| !t.is_empty())
            .and_then(|t| serde_json::from_str(&t).ok()),
    }
}

/// `sql` (a statement ending in its WHERE clause) for online hosts only.
fn online_only(sql: &str) -> String {
    format!("{sql} AND status = '{}'", HostStatus::Online)
}

/// The `templates` column's text for a reported list.
fn templates_text(t: &Option<Vec<String>>) -> String {
    t.as_ref()
        .and_then(|t| serde_json::to_string(t).ok())
        .unwrap_or_default()
}

const HOST_COLS: &str = "id, name, address, token, status, created_at, last_seen_at, kind, team_id, tags, arch, cpu_count, memory_mb, disk_mb, runtime, templates";

impl Store {
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
        sqlx::query(&format!("INSERT INTO hosts ({HOST_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"))
            .bind(&h.id)
            .bind(&h.name)
            .bind(&h.address)
            .bind(&h.token)
            .bind(h.status.as_str())
            .bind(h.created_at)
            .bind(h.last_seen_at)
            .bind(&h.kind)
            .bind(&h.team_id)
            .bind(h.tags.join(","))
            .bind(&h.arch)
            .bind(h.cpu_count)
            .bind(h.memory_mb)
            .bind(h.disk_mb)
            .bind(&h.runtime)
            .bind(templates_text(&h.templates))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes a host's mutable fields.
    pub async fn update_host(&self, h: &Host) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE hosts SET name = $1, address = $2, token = $3, status = $4, last_seen_at = $5, tags = $6, arch = $7, cpu_count = $8, memory_mb = $9, disk_mb = $10, runtime = $11, templates = $12 WHERE id = $13")
            .bind(&h.name)
            .bind(&h.address)
            .bind(&h.token)
            .bind(h.status.as_str())
            .bind(h.last_seen_at)
            .bind(h.tags.join(","))
            .bind(&h.arch)
            .bind(h.cpu_count)
            .bind(h.memory_mb)
            .bind(h.disk_mb)
            .bind(&h.runtime)
            .bind(templates_text(&h.templates))
            .bind(&h.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes `name` off the templates host `id` reported (it removed it),
    /// until its next report says otherwise.
    pub async fn drop_reported_template(&self, id: &str, name: &str) -> Result<(), sqlx::Error> {
        let Some(h) = self.host(id).await? else {
            return Ok(());
        };
        if let Some(mut t) = h.templates {
            t.retain(|n| n != name);
            sqlx::query("UPDATE hosts SET templates = $1 WHERE id = $2")
                .bind(templates_text(&Some(t)))
                .bind(id)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Records a heartbeat: online, seen now. False if the host is gone.
    pub async fn host_seen(&self, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(&format!(
            "UPDATE hosts SET status = '{}', last_seen_at = $1 WHERE id = $2",
            HostStatus::Online
        ))
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A heartbeat from a host that is online already: one statement, true
    /// if the host is online (false: gone, or coming back).
    ///
    /// With `report` (runtime, templates), what the host has is recorded
    /// in the same statement.
    pub async fn online_host_seen(
        &self,
        id: &str,
        report: Option<(&str, &[String])>,
    ) -> Result<bool, sqlx::Error> {
        let sql = match report {
            None => online_only("UPDATE hosts SET last_seen_at = $1 WHERE id = $2"),
            Some(_) => online_only(
                "UPDATE hosts SET last_seen_at = $1, runtime = $2, templates = $3 WHERE id = $4",
            ),
        };
        let r = match report {
            None => sqlx::query(&sql).bind(now()).bind(id),
            Some((runtime, templates)) => sqlx::query(&sql)
                .bind(now())
                .bind(runtime.to_string())
                .bind(templates_text(&Some(templates.to_vec())))
                .bind(id),
        }
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
        let ids: Vec<String> = sqlx::query_scalar(&online_only(
            "SELECT id FROM hosts WHERE kind = 'registered' AND last_seen_at < $1",
        ))
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        for id in &ids {
            let mut tx = self.pool.begin().await?;
            sqlx::query(&format!(
                "UPDATE hosts SET status = '{}' WHERE id = $1",
                HostStatus::Unreachable
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "UPDATE sandboxes SET state = '{}', updated_at = $1 WHERE host_id = $2 AND state IN ('{}', '{}')",
                SandboxState::Missing, SandboxState::Running, SandboxState::Paused
            ))
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let written = self.writing(cache::ALL);
            let done = tx.commit().await;
            written.announce().await;
            done?;
        }
        Ok(ids)
    }

    /// Resources given to live sandboxes, per host.
    pub async fn allocations(&self) -> Result<HashMap<String, Allocated>, sqlx::Error> {
        allocated(&self.pool, None).await
    }

    /// Resources given to live sandboxes on one host.
    pub async fn allocated_on(&self, host_id: &str) -> Result<Allocated, sqlx::Error> {
        Ok(allocated(&self.pool, Some(host_id))
            .await?
            .remove(host_id)
            .unwrap_or_default())
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
        host_by_id(&self.pool, id).await
    }
}

/// Host `id`, through any executor (the pool, or a transaction).
pub(super) async fn host_by_id<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<Host>, sqlx::Error> {
    Ok(
        sqlx::query(&format!("SELECT {HOST_COLS} FROM hosts WHERE id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?
            .map(|r| host(&r)),
    )
}

/// What the sandboxes that hold resources (see
/// [`SandboxState::holds_resources`]) were given, per host, or on one host;
/// through any executor (the pool, or a transaction).
pub(super) async fn allocated<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    host: Option<&str>,
) -> Result<HashMap<String, Allocated>, sqlx::Error> {
    let one = if host.is_some() {
        "AND host_id = $1"
    } else {
        ""
    };
    let sql = format!(
        "SELECT host_id, COUNT(*) AS n, CAST(SUM(vcpus) AS BIGINT) AS v, CAST(SUM(memory_mb) AS BIGINT) AS m, CAST(SUM(disk_size_mb) AS BIGINT) AS d FROM sandboxes WHERE state IN ({}) {one} GROUP BY host_id",
        SandboxState::holding_sql()
    );
    let mut q = sqlx::query(&sql);
    if let Some(h) = host {
        q = q.bind(h);
    }
    let rows = q.fetch_all(db).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.try_get::<String, _>("host_id").unwrap_or_default(),
                Allocated {
                    sandboxes: r.try_get("n").unwrap_or(0),
                    vcpus: r.try_get("v").unwrap_or(0),
                    memory_mb: r.try_get("m").unwrap_or(0),
                    disk_mb: r.try_get("d").unwrap_or(0),
                },
            )
        })
        .collect())
}
