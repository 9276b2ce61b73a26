//! [`HostStatus`]: what the control plane records of a host, and its one
//! string form (in the database and the API).

use std::fmt;

/// Whether a host takes sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HostStatus {
    /// Added, not registered yet: no agent has claimed it.
    #[default]
    Pending,
    /// Its agent answers (registered hosts: heartbeats arrive).
    Online,
    /// Silent past the host timeout; its sandboxes are `missing`.
    Unreachable,
}

impl HostStatus {
    /// Every status.
    pub const ALL: [HostStatus; 3] = [
        HostStatus::Pending,
        HostStatus::Online,
        HostStatus::Unreachable,
    ];

    /// The string the database and the API use.
    pub const fn as_str(self) -> &'static str {
        match self {
            HostStatus::Pending => "pending",
            HostStatus::Online => "online",
            HostStatus::Unreachable => "unreachable",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<HostStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for HostStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for HostStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for HostStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        HostStatus::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("'{s}' is not a host status")))
    }
}

#[cfg(test)]
mod tests {
    use super::HostStatus;

    #[test]
    fn every_status_round_trips_through_its_string() {
        for s in HostStatus::ALL {
            assert_eq!(HostStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(HostStatus::parse("Online"), None);
    }
}
