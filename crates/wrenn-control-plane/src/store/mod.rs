//! Persistence: one [`Store`] over PostgreSQL (production) or SQLite (the
//! embedded default), chosen by URL. The same SQL runs on both (`$n`
//! placeholders, portable types, unix-second timestamps, JSON as text);
//! migrations are embedded and applied on start.

mod audit;
mod hosts;
mod keys;
mod migrations;
mod sandboxes;
mod templates;
mod users;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

pub use audit::AuditEntry;
pub use hosts::{Allocated, Host, HostToken};
pub use keys::ApiKey;
pub use migrations::MIGRATIONS;
pub use sandboxes::{Reserved, Sandbox};
pub use templates::Template;
pub use users::{Invitation, Member, Team, User};

/// Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// RFC 3339 from unix seconds; `None` for 0 (never).
pub fn rfc3339(secs: i64) -> Option<String> {
    (secs > 0).then(|| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
        )
        .to_string()
    })
}

/// The database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// "postgres" or "sqlite".
    pub backend: &'static str,
}

// Tables are read by naming their columns, never `SELECT *`: sqlx caches a
// statement's columns on each connection, and a migration that adds a
// column under a cached `SELECT *` makes the next row read panic in sqlx's
// worker (seen once in a test after `users` gained `home_team_id`).
// Each table's columns are listed once, beside its row type.

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
