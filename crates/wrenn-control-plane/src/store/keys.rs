//! API keys (only their hashes are stored).

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, now};

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

const API_KEY_COLS: &str =
    "id, team_id, created_by, name, prefix, last4, created_at, last_used_at, platform_admin";

impl Store {
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
}
