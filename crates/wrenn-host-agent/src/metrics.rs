//! Each sandbox's recent usage, for E2B's metrics over a time range: one
//! sampler per agent (not a timer per sandbox) records every running
//! sandbox's CPU, memory and disk each [`PERIOD`], keeping the last
//! [`KEPT`] samples (an hour) per sandbox in memory. Paused sandboxes are
//! not sampled; a destroyed sandbox's series goes with it. An agent that
//! restarts starts its series afresh.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::runtime::Usage;

/// How often every running sandbox is sampled (E2B's collection period).
pub const PERIOD: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: an hour of them (48 bytes each, 35 KiB a
/// sandbox after an hour; grown as they come, never past it, so a young
/// or short-lived sandbox holds only what it has).
pub const KEPT: usize = 720;

/// Samples a series makes room for at first: a minute of them.
const FIRST: usize = 12;

/// One sample of a sandbox's usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    /// CPU use since the previous sample, percent of the sandbox's vCPUs.
    pub cpu_pct: f32,
    /// CPU time used so far, microseconds.
    pub cpu_usec: u64,
    /// Memory in use.
    pub memory_bytes: u64,
    /// Disk in use.
    pub disk_used_bytes: u64,
    /// Disk size (the file system's, a little under the disk's).
    pub disk_limit_bytes: u64,
}

#[derive(Debug, Default)]
struct Series {
    /// When the newest sample's CPU time was read (for the next rate).
    last_read: Option<(Instant, u64)>,
    samples: VecDeque<Sample>,
}

/// The samples of every sandbox on this host.
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<String, Series>>,
}

/// CPU use between two readings, percent of `vcpus`.
fn rate(prev: Option<(Instant, u64)>, now: Instant, cpu_usec: u64, vcpus: u32) -> f32 {
    match prev {
        Some((t, before)) if now > t => {
            let wall = now.duration_since(t).as_micros() as f64 * f64::from(vcpus.max(1));
            (100.0 * cpu_usec.saturating_sub(before) as f64 / wall) as f32
        }
        _ => 0.0,
    }
}

impl History {
    /// Records a sample of `id` read at `read` (unix second `at`).
    pub fn record(&self, id: &str, read: Instant, at: i64, u: &Usage, vcpus: u32) -> Sample {
        let mut all = self.series.lock();
        let s = all.entry(id.to_string()).or_insert_with(|| Series {
            last_read: None,
            samples: VecDeque::with_capacity(FIRST),
        });
        let sample = Sample {
            at,
            cpu_pct: rate(s.last_read, read, u.cpu_usec, vcpus),
            cpu_usec: u.cpu_usec,
            memory_bytes: u.memory_bytes,
            disk_used_bytes: u.disk_used_bytes,
            disk_limit_bytes: u.disk_limit_bytes,
        };
        s.last_read = Some((read, u.cpu_usec));
        if s.samples.len() >= KEPT {
            s.samples.pop_front();
        } else if s.samples.len() == s.samples.capacity() {
            // Doubling, but to KEPT exactly at the end.
            let more = s.samples.len().min(KEPT - s.samples.len());
            s.samples.reserve_exact(more);
        }
        s.samples.push_back(sample);
        sample
    }

    /// CPU use of `id` from its newest sample until a reading now of
    /// `cpu_usec`, without recording it (0 without a sample).
    pub fn rate_since_last(&self, id: &str, now: Instant, cpu_usec: u64, vcpus: u32) -> f32 {
        let last = self.series.lock().get(id).and_then(|s| s.last_read);
        rate(last, now, cpu_usec, vcpus)
    }

    /// `id`'s samples taken from `start` to `end` (unix seconds, both
    /// included; `None` is open), oldest first.
    pub fn range(&self, id: &str, start: Option<i64>, end: Option<i64>) -> Vec<Sample> {
        self.series
            .lock()
            .get(id)
            .map(|s| {
                s.samples
                    .iter()
                    .filter(|x| start.is_none_or(|t| x.at >= t) && end.is_none_or(|t| x.at <= t))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets `id`.
    pub fn forget(&self, id: &str) {
        self.series.lock().remove(id);
    }

    /// Forgets every sandbox not in `live`.
    pub fn retain(&self, live: &HashSet<String>) {
        self.series.lock().retain(|id, _| live.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu_usec: u64, memory_bytes: u64) -> Usage {
        Usage {
            cpu_usec,
            memory_bytes,
            memory_limit_bytes: 1 << 30,
            disk_used_bytes: 7,
            disk_limit_bytes: 1 << 30,
            pids: 1,
        }
    }

    #[test]
    fn samples_rate_cpu_and_keep_an_hour() {
        let h = History::default();
        let t0 = Instant::now();
        let first = h.record("a", t0, 100, &usage(0, 10), 2);
        assert_eq!(first.cpu_pct, 0.0, "no rate without an earlier reading");
        // One of two vCPUs busy for the whole second: 50 %.
        let second = h.record(
            "a",
            t0 + Duration::from_secs(1),
            101,
            &usage(1_000_000, 20),
            2,
        );
        assert!((second.cpu_pct - 50.0).abs() < 0.01, "{}", second.cpu_pct);
        let now = t0 + Duration::from_secs(2);
        assert!((h.rate_since_last("a", now, 3_000_000, 2) - 100.0).abs() < 0.01);
        assert_eq!(h.range("a", None, None).len(), 2, "a rate is not a sample");

        for i in 0..KEPT as i64 + 10 {
            h.record(
                "b",
                t0 + Duration::from_secs(i as u64),
                1000 + i,
                &usage(0, 1),
                1,
            );
        }
        let all = h.range("b", None, None);
        assert_eq!(all.len(), KEPT);
        {
            let series = h.series.lock();
            // Grown to an hour, not past it; a young series holds a minute.
            assert!(series["b"].samples.capacity() < KEPT + KEPT / 8);
            assert!(series["a"].samples.capacity() <= 2 * FIRST);
        }
        assert_eq!(all[0].at, 1010, "the oldest went first");
        assert_eq!(
            h.range("b", Some(1700), Some(1702))
                .iter()
                .map(|s| s.at)
                .collect::<Vec<_>>(),
            vec![1700, 1701, 1702]
        );
        assert!(h.range("b", Some(5000), None).is_empty());
        assert!(h.range("nope", None, None).is_empty());

        h.retain(&HashSet::from(["b".to_string()]));
        assert!(h.range("a", None, None).is_empty());
        h.forget("b");
        assert!(h.range("b", None, None).is_empty());
    }
}
