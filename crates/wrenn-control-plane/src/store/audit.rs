//! The audit log.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, now};

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

impl Store {
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
