//! [`TtlMap`]: what the control plane keeps for a moment instead of asking
//! the database again (proxy routes, API key lookups, host rows). Each
//! entry is trusted for the map's TTL, so a change made through another
//! control plane is seen within it; the one that made the change drops the
//! entry at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Entries above which expired ones are swept on the next insert: the map
/// stays bounded by what one TTL's worth of lookups can add.
const SWEEP_ABOVE: usize = 10_000;

/// Values by string key, each trusted for `TTL_MS` milliseconds after it
/// was put.
pub struct TtlMap<V, const TTL_MS: u64> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V, const TTL_MS: u64> Default for TtlMap<V, TTL_MS> {
    fn default() -> Self {
        TtlMap {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone, const TTL_MS: u64> TtlMap<V, TTL_MS> {
    /// How long an entry is trusted.
    pub const TTL: Duration = Duration::from_millis(TTL_MS);

    /// The value for `key`, if it was put less than the TTL ago.
    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock();
        let (at, v) = entries.get(key)?;
        (at.elapsed() < Self::TTL).then(|| v.clone())
    }

    /// Puts `value` for `key`, fresh from now.
    pub fn insert(&self, key: String, value: V) {
        let mut entries = self.entries.lock();
        if entries.len() > SWEEP_ABOVE {
            entries.retain(|_, (at, _)| at.elapsed() < Self::TTL);
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Drops `key`.
    pub fn remove(&self, key: &str) {
        self.entries.lock().remove(key);
    }

    /// Keeps only the values `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.entries.lock().retain(|_, (_, v)| keep(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_their_ttl_and_go_when_removed() {
        let m = TtlMap::<u32, 50>::default();
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        assert_eq!(m.get("a"), Some(1));
        m.remove("a");
        assert_eq!(m.get("a"), None);
        m.retain(|v| *v != 2);
        assert_eq!(m.get("b"), None);
        m.insert("c".into(), 3);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(m.get("c"), None, "expired");
    }
}
