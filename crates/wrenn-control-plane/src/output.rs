//! Memory for command output that the control plane holds while it answers
//! a buffered exec (`POST /v1/sandboxes/{id}/exec`): output, its JSON, and
//! the serialized body.
//!
//! Each request's output is already capped (`max_output_bytes`), but many
//! requests at once would still add up to any amount. So output is read
//! from the agent's stream chunk by chunk, and every chunk kept is charged
//! against its team's budget and the process-wide one. A chunk that either
//! budget cannot take is dropped, and the answer says the output was
//! truncated, as for output past `max_output_bytes`: memory stays bounded
//! whatever sandboxes print, nothing waits on anything (so nothing can
//! wait forever), and a team that floods only truncates its own output
//! until it has taken the global budget, which is four teams' worth.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one team's buffered execs may hold at once, in bytes charged.
pub const TEAM_BUDGET_BYTES: usize = 512 << 20;
/// What all of them may hold at once.
pub const GLOBAL_BUDGET_BYTES: usize = 2 << 30;
/// What keeping `chunk` costs, in bytes: the bytes, their string (base64
/// when not UTF-8: 4/3) and their JSON in the serialized body, where a
/// control byte becomes `\u0000` (6 bytes) and `"` or `\` two — 16 MiB
/// of NULs is 96 MiB of JSON.
pub fn cost(chunk: &[u8]) -> usize {
    let json: usize = chunk
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f | 0x7f => 6,
            _ => 1,
        })
        .sum();
    // Base64 (4/3) is never more than the escaped form's worst case.
    chunk.len() + chunk.len() + json.max(chunk.len().div_ceil(3) * 4)
}

/// Permits are KiB.
const UNIT: usize = 1024;

/// The budgets.
pub struct OutputBudget {
    global: Arc<Semaphore>,
    teams: Mutex<HashMap<String, Arc<Semaphore>>>,
    team_units: usize,
}

impl Default for OutputBudget {
    fn default() -> Self {
        Self::new(TEAM_BUDGET_BYTES, GLOBAL_BUDGET_BYTES)
    }
}

/// Budget held for one answer; given back when dropped.
#[derive(Default)]
pub struct Held {
    permits: Vec<OwnedSemaphorePermit>,
}

impl OutputBudget {
    /// Budgets of `team` and `global` bytes charged.
    pub fn new(team: usize, global: usize) -> Self {
        OutputBudget {
            global: Arc::new(Semaphore::new(global / UNIT)),
            teams: Mutex::new(HashMap::new()),
            team_units: team / UNIT,
        }
    }

    fn team(&self, team: &str) -> Arc<Semaphore> {
        let mut teams = self.teams.lock();
        if teams.len() > 10_000 {
            // Teams with nothing held.
            teams.retain(|_, s| Arc::strong_count(s) > 1);
        }
        teams
            .entry(team.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.team_units)))
            .clone()
    }

    /// Charges keeping `chunk` for `team` to `held` (see [`cost`]); false,
    /// charging nothing, when the team's or the global budget has not that
    /// much left.
    pub fn try_charge(&self, team: &str, chunk: &[u8], held: &mut Held) -> bool {
        let units = cost(chunk).div_ceil(UNIT).max(1);
        let Ok(units) = u32::try_from(units) else {
            return false;
        };
        let Ok(t) = self.team(team).try_acquire_many_owned(units) else {
            return false;
        };
        let Ok(g) = self.global.clone().try_acquire_many_owned(units) else {
            return false;
        };
        held.permits.push(t);
        held.permits.push(g);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_over_its_budget_is_refused_and_others_go_on() {
        // Text costs 10/3 of its size (bytes, string, base64-sized JSON).
        let b = OutputBudget::new(100 * 1024, 200 * 1024);
        let text = |kib: usize| vec![b'a'; kib * 1024];
        let mut a1 = Held::default();
        assert!(b.try_charge("a", &text(20), &mut a1)); // 67 KiB of a's 100
        let mut a2 = Held::default();
        assert!(!b.try_charge("a", &text(12), &mut a2), "a is at its budget");
        let mut other = Held::default();
        assert!(
            b.try_charge("b", &text(20), &mut other),
            "b is not held up by a"
        );
        let mut c = Held::default();
        assert!(
            !b.try_charge("c", &text(20), &mut c),
            "the global budget is spent"
        );
        drop(a1);
        assert!(
            b.try_charge("a", &text(12), &mut a2),
            "a again, once its answer is sent"
        );
        assert!(b.try_charge("c", &text(10), &mut c));
    }

    #[test]
    fn control_bytes_cost_what_their_json_takes() {
        assert_eq!(cost(b"abc"), 3 + 3 + 4); // base64's 4 beat the text's 3
        assert_eq!(cost(&[0u8; 300]), 300 + 300 + 6 * 300);
        assert_eq!(cost(&[b'"'; 300]), 300 + 300 + 2 * 300);
    }
}
