//! [`SandboxState`]: what the control plane records of a sandbox, its one
//! string form (in the database and the native API), and the changes
//! allowed between states.

use std::fmt;

/// The state of a sandbox as the control plane records it. The agents are
/// the truth about what runs; this is the database's view of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SandboxState {
    /// Recorded and placed; its agent is creating it.
    #[default]
    Pending,
    /// Running: processes run, envd answers.
    Running,
    /// Frozen; its memory and disk are kept.
    Paused,
    /// Destroyed (or gone from its host). Final.
    Stopped,
    /// Its host stopped answering; it comes back as what the host reports.
    Missing,
    /// Its creation failed or was interrupted; only destroy is left.
    Error,
}

impl SandboxState {
    /// Every state, in the order the API documents them.
    pub const ALL: [SandboxState; 6] = [
        SandboxState::Pending,
        SandboxState::Running,
        SandboxState::Paused,
        SandboxState::Stopped,
        SandboxState::Missing,
        SandboxState::Error,
    ];

    /// The string the database and the native API use.
    pub const fn as_str(self) -> &'static str {
        match self {
            SandboxState::Pending => "pending",
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Stopped => "stopped",
            SandboxState::Missing => "missing",
            SandboxState::Error => "error",
        }
    }

    /// The state named `s`, if any.
    pub fn parse(s: &str) -> Option<SandboxState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether a sandbox in this state holds its host's resources (counts
    /// in placement): all but stopped and error.
    pub const fn holds_resources(self) -> bool {
        !matches!(self, SandboxState::Stopped | SandboxState::Error)
    }

    /// The states that hold resources, as a SQL list (`'pending', …`):
    /// placement's sums and the store's queries are written from it.
    pub fn holding_sql() -> String {
        Self::ALL
            .into_iter()
            .filter(|s| s.holds_resources())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the control plane's own lifecycle (create, pause, resume,
    /// destroy) may move a sandbox from `self` to `to`; pause, resume and
    /// destroy check every change against this, and create only ever makes
    /// `pending` into `running` or `error`. What the hosts observe is recorded outside
    /// it: a silent host's sandboxes become `missing`, and the reconciler
    /// sets each sandbox to what its agent reports.
    pub const fn can_become(self, to: SandboxState) -> bool {
        use SandboxState::*;
        matches!(
            (self, to),
            (Pending, Running | Error | Stopped)
                | (Running, Paused | Stopped)
                | (Paused, Running | Stopped)
                | (Missing | Error, Stopped)
        )
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxState::parse(s).ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A string that names no [`SandboxState`].
#[derive(Debug, thiserror::Error)]
#[error(
    "'{0}' is not a sandbox state; use one of pending, running, paused, stopped, missing, error"
)]
pub struct UnknownState(pub String);

impl serde::Serialize for SandboxState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SandboxState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::{self, *};

    #[test]
    fn every_state_round_trips_through_its_string() {
        for s in SandboxState::ALL {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(SandboxState::parse("starting"), None);
        assert_eq!(SandboxState::parse("Running"), None);
        assert!("nope".parse::<SandboxState>().is_err());
    }

    #[test]
    fn transitions_follow_the_lifecycle() {
        for (from, to, ok) in [
            (Pending, Running, true),
            (Pending, Error, true),
            (Running, Paused, true),
            (Paused, Running, true),
            (Running, Stopped, true),
            (Missing, Stopped, true),
            (Missing, Running, false),
            (Running, Missing, false),
            (Error, Stopped, true),
            (Stopped, Running, false),
            (Stopped, Paused, false),
            (Error, Running, false),
            (Paused, Paused, false),
            (Running, Pending, false),
        ] {
            assert_eq!(from.can_become(to), ok, "{from} -> {to}");
        }
    }

    #[test]
    fn holding_states_are_the_live_ones() {
        assert_eq!(
            SandboxState::holding_sql(),
            "'pending', 'running', 'paused', 'missing'"
        );
    }
}
