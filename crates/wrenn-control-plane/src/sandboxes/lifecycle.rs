//! Pause, resume, destroy and keep-alive of a sandbox that exists: each
//! asks its agent, then records the new state, audits and emits the event.

use wrenn_protocol::hostagent::v1 as pb;

use super::events::{Event, emit};
use super::{SandboxState, agent_for, find_fresh};
use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::{Sandbox, now};

/// Moves `s` to `to` in memory, refusing a change the lifecycle does not
/// allow (see [`SandboxState::can_become`]) with 409.
fn set_state(s: &mut Sandbox, to: SandboxState) -> ApiResult<()> {
    if !s.state.can_become(to) {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("sandbox {} is {}; it cannot become {to}", s.id, s.state),
        ));
    }
    s.state = to;
    Ok(())
}

/// Records `s` and its `event` (the audit entry for `actor`, the event on
/// the team's stream).
async fn record(app: &App, s: &Sandbox, actor: &str, event: Event) -> ApiResult<()> {
    app.store.update_sandbox(s).await?;
    if let Some(action) = event.audit_action() {
        app.store.audit(&s.team_id, actor, action, &s.id).await?;
    }
    emit(app, s, event);
    Ok(())
}

/// Destroys `s` on its agent (gone there already is fine) and records it
/// `stopped`; 404 if it already is. A `missing` sandbox (host away) is
/// recorded stopped at once and destroyed by the reconciler, as an orphan,
/// when its host is back.
pub async fn destroy(app: &App, s: Sandbox, actor: &str) -> ApiResult<()> {
    // As the database has it now (see `find_fresh`).
    let mut s = find_fresh(app, &s.team_id, &s.id).await?;
    let id = s.id.clone();
    if s.state == SandboxState::Stopped {
        return Err(ApiError::not_found(format!("sandbox '{id}'")));
    }
    if let Ok(agent) = agent_for(app, &s).await {
        let r = agent
            .destroy_sandbox(pb::SandboxRef {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.code == connectrpc::ErrorCode::NotFound => {}
            Err(e) if matches!(s.state, SandboxState::Error | SandboxState::Pending) => {
                tracing::warn!("destroying {id}: {e:?}")
            }
            Err(e) if s.state == SandboxState::Missing => {
                tracing::warn!("destroying {id} while its host is away: {e:?}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    set_state(&mut s, SandboxState::Stopped)?;
    app.proxy_cache.forget(&id);
    record(app, &s, actor, Event::Destroy).await
}

/// Pauses `s` on its agent and records it; 409 unless it is running.
pub async fn pause(app: &App, s: Sandbox, actor: &str) -> ApiResult<Sandbox> {
    change_pause(app, s, actor, true, false).await
}

/// Pauses `s` dropping its memory: every process ends, its files stay,
/// and a resume boots it again (E2B's filesystem-only pause).
pub async fn pause_dropping_memory(app: &App, s: Sandbox, actor: &str) -> ApiResult<Sandbox> {
    change_pause(app, s, actor, true, true).await
}

/// Resumes `s` on its agent and records it; 409 unless it is paused.
pub async fn resume(app: &App, s: Sandbox, actor: &str) -> ApiResult<Sandbox> {
    change_pause(app, s, actor, false, false).await
}

/// Resumes `s` booting it again from its disk, whatever memory its pause
/// kept (E2B's `on_resume="reboot"`).
pub async fn resume_rebooting(app: &App, s: Sandbox, actor: &str) -> ApiResult<Sandbox> {
    change_pause(app, s, actor, false, true).await
}

/// A pause (`pause`) or resume, `cold`: dropping its memory, or booting
/// it again.
async fn change_pause(
    app: &App,
    s: Sandbox,
    actor: &str,
    pause: bool,
    cold: bool,
) -> ApiResult<Sandbox> {
    // As the database has it now (see `find_fresh`).
    let mut s = find_fresh(app, &s.team_id, &s.id).await?;
    let id = s.id.clone();
    let (from, to, action, event) = if pause {
        (
            SandboxState::Running,
            SandboxState::Paused,
            "pause",
            Event::Pause,
        )
    } else {
        (
            SandboxState::Paused,
            SandboxState::Running,
            "resume",
            Event::Resume,
        )
    };
    if s.state != from {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {id} is {}; only a {from} sandbox can {action}",
                s.state
            ),
        ));
    }
    let agent = agent_for(app, &s).await?;
    app.proxy_cache.forget(&id);
    if pause {
        agent
            .pause_sandbox(pb::PauseRequest {
                sandbox_id: id.clone(),
                drop_memory: cold,
                ..Default::default()
            })
            .await?;
    } else {
        agent
            .resume_sandbox(pb::ResumeRequest {
                sandbox_id: id.clone(),
                reboot: cold,
                ..Default::default()
            })
            .await?;
    }
    set_state(&mut s, to)?;
    s.last_active_at = now();
    record(app, &s, actor, event).await?;
    Ok(s)
}

/// Resumes a paused sandbox because traffic arrived for it; a concurrent
/// resume that won the race counts as success.
pub async fn resume_for_traffic(app: &App, s: Sandbox) -> ApiResult<Sandbox> {
    let id = s.id.clone();
    match resume(app, s, "proxy").await {
        Ok(s) => Ok(s),
        Err(e) => match app.store.sandbox_fresh(&id).await? {
            Some(now) if now.state == SandboxState::Running => Ok(now),
            _ => Err(e),
        },
    }
}

/// Restarts the idle timer of `s` (on its agent, when it runs), with
/// `timeout_sec` as its new timeout if given, and records it.
pub async fn keep_alive(app: &App, s: Sandbox, timeout_sec: Option<u32>) -> ApiResult<Sandbox> {
    // As the database has it now (see `find_fresh`).
    let mut s = find_fresh(app, &s.team_id, &s.id).await?;
    if s.state == SandboxState::Running {
        agent_for(app, &s)
            .await?
            .ping(pb::PingRequest {
                sandbox_id: s.id.clone(),
                timeout_sec,
                ..Default::default()
            })
            .await?;
    }
    if let Some(t) = timeout_sec {
        s.timeout_sec = i64::from(t);
    }
    s.last_active_at = now();
    app.store.update_sandbox(&s).await?;
    Ok(s)
}
