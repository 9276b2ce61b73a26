//! Lifecycle events: what `GET /v1/events/stream` sends a team, and the
//! audit action recorded beside each.
//!
//! Events are named `capsule.*` because that is the `wrenn` SDK's wire
//! contract (its `Event` enum: `capsule.create`, `capsule.pause`, …); the
//! audit log, Wrenn's own, says `sandbox.*`. Both names live here.

use wrenn_api_types::streams::LifecycleEvent;

use crate::App;
use crate::store::{Sandbox, now, rfc3339};

/// A change in a sandbox's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Created and running.
    Create,
    /// Paused by a caller.
    Pause,
    /// Resumed by a caller (or by traffic).
    Resume,
    /// Destroyed by a caller.
    Destroy,
    /// Its state changed because its agent said so (reconciliation).
    StateChanged,
}

impl Event {
    /// The event's name on the stream (the `wrenn` SDK's).
    pub const fn name(self) -> &'static str {
        match self {
            Event::Create => "capsule.create",
            Event::Pause => "capsule.pause",
            Event::Resume => "capsule.resume",
            Event::Destroy => "capsule.destroy",
            Event::StateChanged => "capsule.state.changed",
        }
    }

    /// The action the audit log records for it (`None`: not audited, as
    /// the agents, not a caller, made the change).
    pub const fn audit_action(self) -> Option<&'static str> {
        match self {
            Event::Create => Some("sandbox.create"),
            Event::Pause => Some("sandbox.pause"),
            Event::Resume => Some("sandbox.resume"),
            Event::Destroy => Some("sandbox.destroy"),
            Event::StateChanged => None,
        }
    }
}

/// Sends `event` about `s` to the subscribers of its team.
pub fn emit(app: &App, s: &Sandbox, event: Event) {
    let body = LifecycleEvent {
        event: event.name().into(),
        capsule_id: Some(s.id.clone()),
        status: Some(s.state.to_string()),
        timestamp: rfc3339(now()),
    };
    let _ = app.events.send((s.team_id.clone(), body));
}
