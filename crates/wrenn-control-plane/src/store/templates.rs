//! The template catalog: every template a team may start sandboxes from,
//! shared (`team_id` empty) or, with builds and snapshots, a team's own.
//! Which hosts have a template is in each host's reported list
//! (`hosts.templates`); this table is the catalog itself.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, now};

/// A template in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Template {
    /// `tpl-…`.
    pub id: String,
    /// Owning team; empty for shared templates.
    pub team_id: String,
    /// Its name (what a create asks for).
    pub name: String,
    /// `base` (built on the hosts, as `base` by debootstrap); builds and
    /// snapshots add their kinds.
    pub kind: String,
    /// The runtime it needs; empty: any.
    pub runtime: String,
    /// `ready` once hosts have it.
    pub status: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

const TEMPLATE_COLS: &str = "id, team_id, name, kind, runtime, status, created_at, updated_at";

fn template(r: &AnyRow) -> Template {
    Template {
        id: r.try_get("id").unwrap_or_default(),
        team_id: r.try_get("team_id").unwrap_or_default(),
        name: r.try_get("name").unwrap_or_default(),
        kind: r.try_get("kind").unwrap_or_default(),
        runtime: r.try_get("runtime").unwrap_or_default(),
        status: r.try_get("status").unwrap_or_default(),
        created_at: r.try_get("created_at").unwrap_or_default(),
        updated_at: r.try_get("updated_at").unwrap_or_default(),
    }
}

impl Store {
    /// Enters the names a host reported that the catalog does not have
    /// yet, as shared `base` templates (an existing entry stays as it is).
    pub async fn record_reported_templates(&self, names: &[String]) -> Result<(), sqlx::Error> {
        for name in names {
            sqlx::query(&format!("INSERT INTO templates ({TEMPLATE_COLS}) VALUES ($1, '', $2, 'base', '', 'ready', $3, $3) ON CONFLICT (team_id, name) DO NOTHING"))
                .bind(crate::ids::new("tpl"))
                .bind(name)
                .bind(now())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The templates `team_id` may use: shared ones and its own, by name.
    pub async fn templates_for(&self, team_id: &str) -> Result<Vec<Template>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {TEMPLATE_COLS} FROM templates WHERE team_id = '' OR team_id = $1 ORDER BY name, team_id"
        ))
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(template).collect())
    }

    /// Removes a shared template named `name` from the catalog (after the
    /// hosts removed it); whether there was one.
    pub async fn delete_shared_template(&self, name: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM templates WHERE team_id = '' AND name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }
}
