//! The sandbox lifecycle, in one place: create (validation, defaults,
//! placement with an atomic reservation), pause, resume, destroy,
//! keep-alive and resume-for-traffic, the events they emit, and the lookups
//! every call to a sandbox makes. The native routes, the E2B routes, the
//! proxy and the host routes call these; the reconciler records what agents
//! report with the same [`SandboxState`]. Nothing here knows HTTP beyond
//! the [`ApiError`] it returns.

mod create;
mod events;
mod lifecycle;
pub mod network;

pub use crate::sandbox_state::{SandboxState, UnknownState};
pub use create::{
    CreateSpec, Dialect, MAX_TIMEOUT_SEC, NewSandbox, check_ports, check_timeout, create,
};
pub use events::{Event, emit};
pub use lifecycle::{
    destroy, keep_alive, pause, pause_dropping_memory, resume, resume_for_traffic, resume_rebooting,
};

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::hosts::AgentClient;
use crate::store::{Host, Sandbox, now};

/// The caller's sandbox, or 404 (also for another team's).
pub async fn find(app: &App, caller: &Caller, id: &str) -> ApiResult<Sandbox> {
    app.store
        .sandbox(&caller.team_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("sandbox '{id}'")))
}

/// Team `team_id`'s sandbox `id` as the database has it now, or 404: never
/// a row served from memory, which may not yet have heard of another
/// control plane's write (`store/cache.rs`). For what writes the whole
/// row back.
pub async fn find_fresh(app: &App, team_id: &str, id: &str) -> ApiResult<Sandbox> {
    app.store
        .sandbox_fresh(id)
        .await?
        .filter(|s| s.team_id == team_id)
        .ok_or_else(|| ApiError::not_found(format!("sandbox '{id}'")))
}

/// The host `s` runs on, as routing reads it (1 s cache; 503 when the
/// host is gone).
pub async fn host_of(app: &App, s: &Sandbox) -> ApiResult<Host> {
    app.hosts.row(&app.store, &s.host_id).await?.ok_or_else(|| {
        ApiError::unavailable(
            "host_unavailable",
            format!("host '{}' of sandbox {} is gone", s.host_id, s.id),
        )
    })
}

/// The client of the agent that runs `s` (503 when its host is gone).
pub async fn agent_for(app: &App, s: &Sandbox) -> ApiResult<AgentClient> {
    Ok(app.hosts.client(&host_of(app, s).await?).await?)
}

/// The caller's sandbox if it is running; 409 if it is not.
pub async fn running_sandbox(app: &App, caller: &Caller, id: &str) -> ApiResult<Sandbox> {
    let s = find(app, caller, id).await?;
    if s.state != SandboxState::Running {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {id} is {}; it must be running (resume it if paused)",
                s.state
            ),
        ));
    }
    Ok(s)
}

/// The caller's running sandbox and its agent; 409 if it is not running.
pub async fn running(app: &App, caller: &Caller, id: &str) -> ApiResult<(Sandbox, AgentClient)> {
    let s = running_sandbox(app, caller, id).await?;
    let agent = agent_for(app, &s).await?;
    Ok((s, agent))
}

/// Records the use of `s` (read before the call) in its `last_active_at`,
/// behind the answer, and at most once a second: only the use, so a pause
/// or destroy during the call stands.
pub fn touch(app: &App, s: &Sandbox) {
    let at = now();
    if s.last_active_at >= at {
        return;
    }
    let (store, id) = (app.store.clone(), s.id.clone());
    tokio::spawn(async move {
        if let Err(e) = store.touch_sandbox(&id, at).await {
            tracing::debug!(sandbox = %id, "recording its use: {e}");
        }
    });
}

/// Disk in use by `s`, in bytes, from a cache refreshed from its agent at
/// most once a second; `None` when the agent cannot say.
pub async fn disk_used(app: &App, s: &Sandbox) -> Option<u64> {
    let fresh = std::time::Duration::from_secs(1);
    if let Some((at, v)) = app.disk_used.lock().get(&s.id)
        && at.elapsed() < fresh
    {
        return Some(*v);
    }
    let agent = agent_for(app, s).await.ok()?;
    let m = agent
        .get_sandbox_metrics(wrenn_protocol::hostagent::v1::SandboxRef {
            sandbox_id: s.id.clone(),
            ..Default::default()
        })
        .await
        .ok()?;
    let bytes = m.into_owned().disk_used_bytes;
    let mut cache = app.disk_used.lock();
    cache.retain(|_, (at, _)| at.elapsed() < fresh * 60);
    cache.insert(s.id.clone(), (std::time::Instant::now(), bytes));
    Some(bytes)
}
