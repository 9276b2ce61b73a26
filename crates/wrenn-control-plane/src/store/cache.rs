//! Sandbox rows read by id, kept in memory so that the request path (a GET,
//! and every exec, file and process call, which look their sandbox up
//! first) needs no query for a sandbox that did not change.
//!
//! Correct across writers, not only within one process:
//! - every write of a `sandboxes` row through this [`Store`](super::Store)
//!   forgets that row here (all rows, for a write by host) and bumps a
//!   generation; a read that began before a write it might have missed
//!   never fills the cache (it compares the generation it began with);
//! - a write whose caller goes away while it is in flight (it still lands)
//!   forgets all the same (a guard made before the write);
//! - on PostgreSQL, where several control planes share the database, each
//!   write also sends `NOTIFY wrenn_sandboxes, '<id>'` (`*` for all), and
//!   every store listens on that channel and forgets what it names. While
//!   the listening connection is down, or its heartbeat does not come back,
//!   the cache is off (every read goes to the database) and it starts
//!   empty once it is back;
//! - a row is kept [`MAX_AGE`] at most, which bounds what a lost
//!   notification could leave stale, and what a write made outside a
//!   `Store` (by hand, by an older control plane) stays unseen;
//! - what changes a sandbox acts on a row read afresh
//!   ([`Store::sandbox_fresh`](super::Store::sandbox_fresh)), so a
//!   notification still on its way never becomes a lost update;
//! - SQLite is one control plane's: [`Store::connect`](super::Store::connect)
//!   takes a lock beside the database file and refuses a second process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Sandbox;

/// The PostgreSQL channel on which sandbox writes are announced.
pub(super) const CHANNEL: &str = "wrenn_sandboxes";

/// What a notification on [`CHANNEL`] carries to mean every row.
pub(super) const ALL: &str = "*";

/// How long a row is served from memory at most.
pub(super) const MAX_AGE: Duration = Duration::from_secs(5);

/// How many rows are kept at most; past it the cache starts over.
const MAX_ROWS: usize = 100_000;

/// The cache of sandbox rows (see the module's documentation).
pub(super) struct RowCache {
    inner: Mutex<Inner>,
    /// Whether rows may be served: always on SQLite, and on PostgreSQL
    /// only while this store listens for other control planes' writes.
    live: AtomicBool,
}

struct Inner {
    rows: HashMap<String, (Instant, Sandbox)>,
    /// Bumped by every write; a read fills only under the generation it
    /// began with.
    generation: u64,
}

impl RowCache {
    /// An empty cache, serving rows at once (`live`) or only once
    /// [`RowCache::set_live`] says so.
    pub(super) fn new(live: bool) -> RowCache {
        RowCache {
            inner: Mutex::new(Inner {
                rows: HashMap::new(),
                generation: 0,
            }),
            live: AtomicBool::new(live),
        }
    }

    /// The row of `id`, if kept and fresh.
    pub(super) fn get(&self, id: &str) -> Option<Sandbox> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let inner = self.inner.lock();
        let (at, s) = inner.rows.get(id)?;
        (at.elapsed() < MAX_AGE).then(|| s.clone())
    }

    /// The generation a read begins under; pass it to [`RowCache::fill`].
    pub(super) fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Keeps `s`, read by a read that began under `generation`, unless a
    /// write came meanwhile (the read may have seen the row before it).
    pub(super) fn fill(&self, generation: u64, s: &Sandbox) {
        if !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return;
        }
        if inner.rows.len() >= MAX_ROWS {
            inner.rows.clear();
        }
        inner.rows.insert(s.id.clone(), (Instant::now(), s.clone()));
    }

    /// Forgets the row of `id` (or every row, for [`ALL`]): it was written.
    pub(super) fn forget(&self, id: &str) {
        let mut inner = self.inner.lock();
        inner.generation = inner.generation.wrapping_add(1);
        if id == ALL {
            inner.rows.clear();
        } else {
            inner.rows.remove(id);
        }
    }

    /// Whether rows are served.
    pub(super) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Turns serving on or off; either way it starts over empty.
    pub(super) fn set_live(&self, live: bool) {
        self.forget(ALL);
        self.live.store(live, Ordering::Release);
    }
}

/// What a store sends on [`CHANNEL`] to hear itself: its listener is
/// alive while these come back.
const HEARTBEAT: &str = "~";

/// How often the listener checks that its connection still delivers;
/// silent for two of these, it counts as down.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Tells every listening control plane that the row `id` (or [`ALL`])
/// was written. A failure is logged: the others keep the row [`MAX_AGE`]
/// at most.
pub(super) async fn notify(pool: &sqlx::AnyPool, id: &str) {
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(id)
        .execute(pool)
        .await
    {
        tracing::warn!(sandbox = %id, "announcing a sandbox change: {e}");
    }
}

/// Listens for other control planes' sandbox writes on PostgreSQL and
/// forgets the rows they name, for as long as the store lives (the task
/// is aborted when the last clone of the store is dropped). Rows are
/// served only while it listens: off when the connection drops, or when
/// its own heartbeat (sent through `pool` every second) has not come
/// back for two seconds (a connection that died without a word);
/// reconnects after a second.
pub(super) fn listen(
    url: String,
    pool: sqlx::AnyPool,
    cache: std::sync::Arc<RowCache>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => match listener.listen(CHANNEL).await {
                    Ok(()) => {
                        cache.set_live(true);
                        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
                        let mut heard = Instant::now();
                        loop {
                            tokio::select! {
                                got = listener.try_recv() => match got {
                                    Ok(Some(n)) if n.payload() == HEARTBEAT => heard = Instant::now(),
                                    Ok(Some(n)) => cache.forget(n.payload()),
                                    // The connection dropped: what was
                                    // announced meanwhile is unknown.
                                    Ok(None) | Err(_) => break,
                                },
                                _ = tick.tick() => {
                                    if heard.elapsed() > 2 * HEARTBEAT_EVERY + HEARTBEAT_EVERY / 2 {
                                        tracing::warn!("no word from the database's notifications for 2 s; serving sandbox rows from it alone until they are back");
                                        break;
                                    }
                                    let pool = pool.clone();
                                    tokio::spawn(async move { notify(&pool, HEARTBEAT).await });
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!("listening for sandbox changes: {e}"),
                },
                Err(e) => tracing::debug!("connecting to listen for sandbox changes: {e}"),
            }
            cache.set_live(false);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Aborts the listening task when dropped (with the last store clone).
pub(super) struct ListenGuard(pub(super) tokio::task::JoinHandle<()>);

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: crate::sandbox_state::SandboxState) -> Sandbox {
        Sandbox {
            id: id.into(),
            state,
            ..Default::default()
        }
    }

    #[test]
    fn a_read_that_began_before_a_write_does_not_fill() {
        use crate::sandbox_state::SandboxState::*;
        let c = RowCache::new(true);
        let g = c.generation();
        // A write lands while the read is in flight with the old row.
        c.forget("sb-1");
        c.fill(g, &row("sb-1", Running));
        assert_eq!(c.get("sb-1"), None);
        // A read after it fills, and a later write forgets.
        let g = c.generation();
        c.fill(g, &row("sb-1", Paused));
        assert_eq!(c.get("sb-1").map(|s| s.state), Some(Paused));
        c.forget("sb-1");
        assert_eq!(c.get("sb-1"), None);
    }

    #[test]
    fn all_forgets_every_row_and_off_serves_nothing() {
        use crate::sandbox_state::SandboxState::*;
        let c = RowCache::new(true);
        let g = c.generation();
        c.fill(g, &row("sb-1", Running));
        c.fill(g, &row("sb-2", Running));
        c.forget(ALL);
        assert_eq!((c.get("sb-1"), c.get("sb-2")), (None, None));

        let c = RowCache::new(false);
        let g = c.generation();
        c.fill(g, &row("sb-1", Running));
        assert_eq!(c.get("sb-1"), None);
        c.set_live(true);
        let g = c.generation();
        c.fill(g, &row("sb-1", Running));
        assert!(c.get("sb-1").is_some());
        c.set_live(false);
        assert_eq!(c.get("sb-1"), None);
    }
}
