//! Persistence: one [`Store`] over PostgreSQL (production) or SQLite (the
//! embedded default), chosen by URL. The same SQL runs on both (`$n`
//! placeholders, portable types, unix-second timestamps, JSON as text);
//! migrations are embedded and applied on start.

mod audit;
mod cache;
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
    /// Sandbox rows by id (see `cache.rs` for why it is correct).
    rows: std::sync::Arc<cache::RowCache>,
    /// Listens for other control planes' writes (PostgreSQL); stops with
    /// the last clone.
    _listening: Option<std::sync::Arc<cache::ListenGuard>>,
    /// SQLite: this process's hold on the database file; another control
    /// plane on it could not tell this one's cache of its writes.
    _sole: Option<std::sync::Arc<std::fs::File>>,
}

/// Why [`Store::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The database refused or failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Another process has the SQLite file open as its control plane.
    #[error(
        "another control plane (wrenn server or wrenn up) uses the SQLite database {0}; stop it first, or share a PostgreSQL database between control planes (--database-url postgres://…)"
    )]
    SqliteInUse(String),
    /// The lock file beside the SQLite database could not be made.
    #[error("making {0}, which holds the SQLite database for this control plane: {1}")]
    SqliteHold(String, #[source] std::io::Error),
}

// Tables are read by naming their columns, never `SELECT *`: sqlx caches a
// statement's columns on each connection, and a migration that adds a
// column under a cached `SELECT *` makes the next row read panic in sqlx's
// worker (seen once in a test after `users` gained `home_team_id`).
// Each table's columns are listed once, beside its row type.

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and applies
    /// migrations. A SQLite file is held for as long as the store lives:
    /// a second process's store on it is refused
    /// ([`ConnectError::SqliteInUse`]).
    pub async fn connect(url: &str) -> Result<Store, ConnectError> {
        Store::open(url, true).await
    }

    /// Connects to a database a control plane holds, for tools and
    /// benchmarks beside it: no lock is taken and no sandbox row is served
    /// from memory. Its writes of sandboxes reach that control plane's
    /// memory only on PostgreSQL; on SQLite only after 5 s.
    pub async fn connect_beside(url: &str) -> Result<Store, ConnectError> {
        Store::open(url, false).await
    }

    async fn open(url: &str, hold: bool) -> Result<Store, ConnectError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        let mut opts =
            AnyPoolOptions::new().max_connections(if backend == "sqlite" { 8 } else { 16 });
        let mut sole = None;
        if backend == "sqlite" {
            if let Some(path) = private_sqlite_file(url)
                && hold
            {
                sole = Some(std::sync::Arc::new(hold_sqlite(&path)?));
            }
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;").await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(url).await?;
        // On SQLite every writer is this process; on PostgreSQL rows are
        // served only while the listener hears the others' writes.
        let rows = std::sync::Arc::new(cache::RowCache::new(backend == "sqlite" && sole.is_some()));
        let listening = (backend == "postgres" && hold).then(|| {
            std::sync::Arc::new(cache::ListenGuard(cache::listen(
                url.to_string(),
                pool.clone(),
                rows.clone(),
            )))
        });
        let store = Store {
            pool,
            backend,
            rows,
            _listening: listening,
            _sole: sole,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Whether sandbox rows read by id are served from memory now: on
    /// SQLite always; on PostgreSQL while this store hears the other
    /// control planes' writes.
    pub fn caches_rows(&self) -> bool {
        self.rows.is_live()
    }

    /// Made before a write of the sandbox row `id` (or of every row, for
    /// `"*"`); [`Written::announce`] it once the write returned, whether
    /// it succeeded or not (a failed write may have landed). Dropped
    /// without it (the caller went away while the write was in flight,
    /// which still lands), it forgets the row all the same and announces
    /// it on a task of its own.
    fn writing(&self, id: &str) -> Written<'_> {
        Written {
            store: self,
            id: Some(id.to_string()),
        }
    }
}

/// A write of sandbox rows in progress (see [`Store::writing`]).
struct Written<'a> {
    store: &'a Store,
    /// `None` once announced.
    id: Option<String>,
}

impl Written<'_> {
    /// This store forgets the row, and on PostgreSQL the other control
    /// planes are told.
    async fn announce(mut self) {
        let Some(id) = self.id.take() else { return };
        self.store.rows.forget(&id);
        if self.store.backend == "postgres" {
            cache::notify(&self.store.pool, &id).await;
        }
    }
}

impl Drop for Written<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        self.store.rows.forget(&id);
        if self.store.backend == "postgres"
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let pool = self.store.pool.clone();
            rt.spawn(async move { cache::notify(&pool, &id).await });
        }
    }
}

impl Store {
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

/// Holds the SQLite database at `path` for this process: an exclusive
/// `flock` on `<path>.lock` beside it (not on the database file, whose
/// descriptors SQLite's own POSIX locks must not see closed), kept until
/// the returned file is dropped.
fn hold_sqlite(path: &str) -> Result<std::fs::File, ConnectError> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock)
        .map_err(|e| ConnectError::SqliteHold(lock.clone(), e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(ConnectError::SqliteInUse(path.to_string())),
        Err(e) => Err(ConnectError::SqliteHold(lock, e.into())),
    }
}

/// Creates the SQLite file of `url` readable by its owner only (0600)
/// before SQLite opens it: it holds password hashes and the agents'
/// credentials. SQLite gives its `-wal` and `-shm` files the same mode.
/// An existing file (and those) is made 0600; a URL without a file
/// (`:memory:`) is left alone. The file's path, if it has one.
fn private_sqlite_file(url: &str) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return None;
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
        return Some(path.to_string());
    }
    // If this fails, SQLite's own open reports the error.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    Some(path.to_string())
}
