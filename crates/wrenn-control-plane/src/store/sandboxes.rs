//! Sandboxes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Allocated, Host, Store, now};
use crate::sandbox_state::SandboxState;

/// What [`Store::insert_sandbox_if_fits`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The sandbox is recorded on its host.
    Inserted,
    /// The host is online but has no room left for it.
    NoRoom,
    /// The host is gone or no longer online.
    HostGone,
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
    /// Where it is in its lifecycle.
    pub state: SandboxState,
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
    /// Traffic through the proxy resumes it when paused (E2B
    /// `autoResume`).
    pub auto_resume: bool,
    /// Egress rules, public traffic, the Host its apps see.
    pub network: crate::sandboxes::network::Network,
}

fn sandbox(r: &AnyRow) -> Sandbox {
    let meta: String = r.get("metadata");
    Sandbox {
        id: r.get("id"),
        team_id: r.get("team_id"),
        host_id: r.get("host_id"),
        template: r.get("template"),
        state: state_of(r),
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
        auto_resume: r.get::<i64, _>("auto_resume") != 0,
        network: crate::sandboxes::network::Network::from_column(&r.get::<String, _>("network")),
    }
}

/// A row's state; a name this version does not know (written by a newer
/// one) reads as `error`, which only lets the sandbox be destroyed.
fn state_of(r: &AnyRow) -> SandboxState {
    let name: String = r.try_get("state").unwrap_or_default();
    SandboxState::parse(&name).unwrap_or_else(|| {
        tracing::warn!(state = %name, "a sandbox row has a state this version does not know; treating it as error");
        SandboxState::Error
    })
}

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

const SANDBOX_COLS: &str = "id, team_id, host_id, template, state, vcpus, memory_mb, disk_size_mb, timeout_sec, allow_internet_access, metadata, envd_address, envd_token, error, created_at, started_at, last_active_at, updated_at, traffic_token, public_ports, auto_pause, auto_resume, network";

impl Store {
    /// Records a new sandbox (normally `pending`) without looking at its
    /// host: for tests and imports. A create goes through
    /// [`Store::insert_sandbox_if_fits`].
    pub async fn insert_sandbox(&self, s: &Sandbox) -> Result<(), sqlx::Error> {
        let written = self.writing(&s.id);
        let done = insert(&self.pool, s).await;
        written.announce().await;
        done
    }

    /// Records a new sandbox on its host (`s.host_id`) only if the host is
    /// online and `fits` says the sandbox fits beside what the host's
    /// sandboxes already hold; the check and the insert are atomic against
    /// every other placement on that host. The host's row is written first
    /// in a transaction: PostgreSQL then holds its row lock until the
    /// commit, and SQLite its one write lock, so a concurrent placement on
    /// the same host waits and then counts this sandbox.
    pub async fn insert_sandbox_if_fits(
        &self,
        s: &Sandbox,
        fits: impl FnOnce(&Host, &Allocated) -> bool,
    ) -> Result<Reserved, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let locked = sqlx::query("UPDATE hosts SET last_seen_at = last_seen_at WHERE id = $1")
            .bind(&s.host_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let host = match locked {
            0 => None,
            _ => super::hosts::host_by_id(&mut *tx, &s.host_id).await?,
        };
        let Some(host) = host.filter(|h| h.status == crate::host_status::HostStatus::Online) else {
            return Ok(Reserved::HostGone);
        };
        let held = super::hosts::allocated(&mut *tx, Some(&s.host_id))
            .await?
            .remove(&s.host_id)
            .unwrap_or_default();
        if !fits(&host, &held) {
            return Ok(Reserved::NoRoom);
        }
        insert(&mut *tx, s).await?;
        let written = self.writing(&s.id);
        let done = tx.commit().await;
        written.announce().await;
        done?;
        Ok(Reserved::Inserted)
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
        guard: Option<(SandboxState, i64)>,
    ) -> Result<bool, sqlx::Error> {
        let sql = match guard {
            None => {
                "UPDATE sandboxes SET state = $1, host_id = $2, envd_address = $3, envd_token = $4, error = $5, started_at = $6, last_active_at = $7, updated_at = $8, timeout_sec = $9, public_ports = $10, network = $11 WHERE id = $12"
            }
            Some(_) => {
                "UPDATE sandboxes SET state = $1, host_id = $2, envd_address = $3, envd_token = $4, error = $5, started_at = $6, last_active_at = $7, updated_at = $8, timeout_sec = $9, public_ports = $10, network = $11 WHERE id = $12 AND state = $13 AND updated_at = $14"
            }
        };
        let mut q = sqlx::query(sql)
            .bind(s.state.as_str())
            .bind(&s.host_id)
            .bind(&s.envd_address)
            .bind(&s.envd_token)
            .bind(&s.error)
            .bind(s.started_at)
            .bind(s.last_active_at)
            .bind(now())
            .bind(s.timeout_sec)
            .bind(ports_text(&s.public_ports))
            .bind(s.network.to_column())
            .bind(&s.id);
        if let Some((state, updated_at)) = guard {
            q = q.bind(state.as_str()).bind(updated_at);
        }
        let written = self.writing(&s.id);
        let done = q.execute(&self.pool).await;
        written.announce().await;
        Ok(done?.rows_affected() == 1)
    }

    /// Writes a sandbox's network settings, and nothing else (a change of
    /// them must not write back a state that changed meanwhile).
    pub async fn set_sandbox_network(
        &self,
        id: &str,
        network: &crate::sandboxes::network::Network,
    ) -> Result<(), sqlx::Error> {
        let written = self.writing(id);
        let done = sqlx::query("UPDATE sandboxes SET network = $1, updated_at = $2 WHERE id = $3")
            .bind(network.to_column())
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await;
        written.announce().await;
        done.map(|_| ())
    }

    /// Records that a sandbox was used at `at` (its `last_active_at`), and
    /// nothing else: a caller that read the row before a long call (an
    /// exec) must not write back a state that changed meanwhile.
    pub async fn touch_sandbox(&self, id: &str, at: i64) -> Result<(), sqlx::Error> {
        let written = self.writing(id);
        let done = sqlx::query("UPDATE sandboxes SET last_active_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await;
        written.announce().await;
        done.map(|_| ())
    }

    /// Like [`Store::update_sandbox`], but only if nobody changed the row
    /// since `s` was read from it (same state, same `updated_at`); false
    /// when someone did, and nothing was written. For writers that act on
    /// what they read a while ago (reconciliation).
    pub async fn update_sandbox_if_unchanged(
        &self,
        s: &Sandbox,
        read_state: SandboxState,
    ) -> Result<bool, sqlx::Error> {
        self.write_sandbox(s, Some((read_state, s.updated_at)))
            .await
    }

    /// Forgets a sandbox that never existed anywhere (a create its host
    /// refused as invalid).
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), sqlx::Error> {
        let written = self.writing(id);
        let done = sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await;
        written.announce().await;
        done.map(|_| ())
    }

    /// A team's sandbox; `None` for other teams' sandboxes too.
    pub async fn sandbox(&self, team_id: &str, id: &str) -> Result<Option<Sandbox>, sqlx::Error> {
        Ok(self
            .sandbox_by_id(id)
            .await?
            .filter(|s| s.team_id == team_id))
    }

    /// Any team's sandbox read from the database, never from memory: for
    /// what changes it (a row served from memory may not yet have heard
    /// of another control plane's write).
    pub async fn sandbox_fresh(&self, id: &str) -> Result<Option<Sandbox>, sqlx::Error> {
        let generation = self.rows.generation();
        let found = sqlx::query(&format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| sandbox(&r));
        if let Some(s) = &found {
            self.rows.fill(generation, s);
        }
        Ok(found)
    }

    /// Any team's sandbox, for routing proxy traffic (which proves access
    /// by other means than a team's credentials). Served from memory when
    /// the row has not been written since it was read (`cache.rs`).
    pub async fn sandbox_by_id(&self, id: &str) -> Result<Option<Sandbox>, sqlx::Error> {
        if let Some(s) = self.rows.get(id) {
            return Ok(Some(s));
        }
        self.sandbox_fresh(id).await
    }

    /// A team's sandboxes, optionally in one state, newest first.
    pub async fn sandboxes(
        &self,
        team_id: &str,
        state: Option<SandboxState>,
    ) -> Result<Vec<Sandbox>, sqlx::Error> {
        let rows = match state {
            Some(st) => {
                sqlx::query(&format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND state = $2 ORDER BY created_at DESC, id"))
                    .bind(team_id)
                    .bind(st.as_str())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("SELECT {SANDBOX_COLS} FROM sandboxes WHERE team_id = $1 AND state <> '{}' ORDER BY created_at DESC, id", SandboxState::Stopped))
                    .bind(team_id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.iter().map(sandbox).collect())
    }

    /// Sandboxes on a host that are not stopped.
    pub async fn sandboxes_on_host(&self, host_id: &str) -> Result<Vec<Sandbox>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {SANDBOX_COLS} FROM sandboxes WHERE host_id = $1 AND state <> '{}' ORDER BY id",
            SandboxState::Stopped
        ))
        .bind(host_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(sandbox).collect())
    }
}

/// Inserts `s`, through any executor (the pool, or a transaction).
async fn insert<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    s: &Sandbox,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO sandboxes ({SANDBOX_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"))
        .bind(&s.id)
        .bind(&s.team_id)
        .bind(&s.host_id)
        .bind(&s.template)
        .bind(s.state.as_str())
        .bind(s.vcpus)
        .bind(s.memory_mb)
        .bind(s.disk_size_mb)
        .bind(s.timeout_sec)
        .bind(i64::from(s.allow_internet_access))
        .bind(serde_json::to_string(&s.metadata).unwrap_or_else(|_| "{}".into()))
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
        .bind(i64::from(s.auto_resume))
        .bind(s.network.to_column())
        .execute(db)
        .await?;
    Ok(())
}
