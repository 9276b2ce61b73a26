//! Reconciliation: the agents are the truth about what runs.
//!
//! Every pass: registered hosts silent past the host timeout become
//! `unreachable` and their live sandboxes `missing`; then, on every online
//! host, each sandbox takes the state its agent reports (`missing` comes
//! back as `running` or `paused`), sandboxes the agent no longer has are
//! `stopped`, and sandboxes the agent has but the database does not know
//! (or knows as stopped) are destroyed.

use std::collections::HashMap;
use std::time::Duration;

use wrenn_protocol::hostagent::v1 as pb;

use crate::App;
use crate::sandboxes::SandboxState;
use crate::store::{Host, now};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Hosts looked at.
    pub hosts: usize,
    /// Hosts newly marked unreachable.
    pub unreachable: usize,
    /// Sandboxes whose state changed.
    pub changed: usize,
    /// Orphans destroyed.
    pub orphans: usize,
}

/// One pass over every host.
pub async fn pass(app: &App) -> Result<PassReport, crate::error::ApiError> {
    let mut report = PassReport::default();
    let cutoff = now() - app.host_timeout.as_secs() as i64;
    for id in app.store.mark_silent_hosts(cutoff).await? {
        tracing::warn!(host = %id, "host silent past the timeout: unreachable, its sandboxes missing");
        report.unreachable += 1;
    }
    let online: Vec<Host> = app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == crate::host_status::HostStatus::Online && !h.address.is_empty())
        .collect();
    // Hosts are independent: ask them all at once.
    let results = futures::future::join_all(online.iter().map(|h| host_pass(app, h))).await;
    for (h, r) in online.iter().zip(results) {
        report.hosts += 1;
        match r {
            Ok((changed, orphans)) => {
                report.changed += changed;
                report.orphans += orphans;
            }
            Err(e) => tracing::warn!(host = %h.id, "reconciling: {e}"),
        }
    }
    Ok(report)
}

/// Longer than creates take (well under a second; a create that hits
/// every start-up timeout takes 30 s): a sandbox `pending` for longer,
/// that its host does not list, lost the process that was creating it and
/// is marked `error`. A create slower than this still records its own
/// outcome when it ends, which then stands.
pub const PENDING_GRACE_SECS: i64 = 15;

/// Reconciles one online host: (state changes, orphans destroyed).
pub async fn host_pass(app: &App, host: &Host) -> Result<(usize, usize), crate::error::ApiError> {
    let client = app.hosts.client(host).await?;
    // Rows changed since (or in the second of) the listing may describe
    // what the listing has not seen yet (a create or resume that finished
    // after it): they wait for the next pass.
    let listed_at = now();
    let listed = client
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await?
        .into_owned();
    let alive: HashMap<String, &pb::Sandbox> = listed
        .sandboxes
        .iter()
        .map(|s| (s.sandbox_id.clone(), s))
        .collect();
    let mut changed = 0;
    let known = app.store.sandboxes_on_host(&host.id).await?;
    let now = crate::store::now();
    for mut s in known.iter().cloned() {
        if s.updated_at >= listed_at {
            continue;
        }
        let read_state = s.state;
        // A create whose control plane died before it recorded the answer
        // stays `pending`; past the longest a create takes, the host says
        // what became of it.
        let interrupted =
            s.state == SandboxState::Pending && now - s.created_at > PENDING_GRACE_SECS;
        let now_state = match alive.get(&s.id) {
            None if interrupted => {
                s.error = "its creation was interrupted (the control plane restarted); destroy it and create another".into();
                SandboxState::Error
            }
            None if matches!(s.state, SandboxState::Pending | SandboxState::Error) => continue,
            None => SandboxState::Stopped,
            Some(a) => {
                if s.envd_address.is_empty() {
                    // What the interrupted create would have recorded.
                    s.envd_address = a.envd_address.clone();
                    s.envd_token = a.envd_access_token.clone();
                    s.started_at = now;
                    s.last_active_at = now;
                }
                match a.state.as_known() {
                    Some(pb::SandboxState::SANDBOX_STATE_PAUSED) => SandboxState::Paused,
                    _ => SandboxState::Running,
                }
            }
        };
        if now_state != s.state {
            s.state = now_state;
            // Someone changed it since it was read: theirs stands.
            if !app
                .store
                .update_sandbox_if_unchanged(&s, read_state)
                .await?
            {
                continue;
            }
            tracing::info!(sandbox = %s.id, from = %read_state, to = %now_state, "reconciled");
            app.proxy_cache.forget(&s.id);
            changed += 1;
            crate::sandboxes::emit(app, &s, crate::sandboxes::Event::StateChanged);
        }
    }
    let mut orphans = 0;
    for id in alive.keys() {
        if known.iter().any(|s| &s.id == id) {
            continue;
        }
        // Not live in the database (unknown, or stopped while the host was
        // away): nobody can reach it, so it goes.
        match client
            .destroy_sandbox(pb::SandboxRef {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {
                tracing::warn!(host = %host.id, sandbox = %id, "destroyed an orphan sandbox (running, unknown to the database)");
                orphans += 1;
            }
            // Destroyed through the API since the listing: nothing to do.
            Err(e) if e.code == connectrpc::ErrorCode::NotFound => {
                tracing::debug!(host = %host.id, sandbox = %id, "orphan already gone")
            }
            Err(e) => tracing::warn!(sandbox = %id, "destroying an orphan: {e:?}"),
        }
    }
    Ok((changed, orphans))
}

/// Reconciles every `period`.
pub async fn run_forever(app: App, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        use futures::FutureExt;
        // A panic in one pass is logged and the next pass runs.
        match std::panic::AssertUnwindSafe(pass(&app))
            .catch_unwind()
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("reconciliation: {e}"),
            Err(_) => tracing::error!("a reconciliation pass panicked; the next one runs as usual"),
        }
    }
}
