//! Reconciliation: the agents are the truth about what runs. Sandboxes the
//! database thinks alive but an online agent does not have are `stopped`
//! (destroyed by a timeout, or their init died).

use std::time::Duration;

use wrenn_protocol::hostagent::v1 as pb;

use crate::App;

/// One pass over every online host.
pub async fn pass(app: &App) -> Result<(), crate::error::ApiError> {
    for host in app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == "online")
    {
        let listed = match app
            .hosts
            .client(&host)
            .list_sandboxes(pb::ListSandboxesRequest::default())
            .await
        {
            Ok(l) => l.into_owned(),
            Err(e) => {
                tracing::warn!(host = %host.id, "listing sandboxes: {e:?}");
                continue;
            }
        };
        let alive: std::collections::HashMap<String, pb::SandboxState> = listed
            .sandboxes
            .iter()
            .map(|s| {
                (
                    s.sandbox_id.clone(),
                    s.state
                        .as_known()
                        .unwrap_or(pb::SandboxState::SANDBOX_STATE_UNSPECIFIED),
                )
            })
            .collect();
        for mut s in app.store.sandboxes_on_host(&host.id).await? {
            let now_state = match alive.get(&s.id) {
                None if s.state == "pending" || s.state == "error" => continue,
                None => "stopped",
                Some(pb::SandboxState::SANDBOX_STATE_PAUSED) => "paused",
                Some(_) => "running",
            };
            if now_state != s.state {
                tracing::info!(sandbox = %s.id, from = %s.state, to = now_state, "reconciled");
                s.state = now_state.into();
                app.store.update_sandbox(&s).await?;
                let _ = app.events.send((s.team_id.clone(), serde_json::json!({ "event": "capsule.state.changed", "capsule_id": s.id, "status": s.state })));
            }
        }
    }
    Ok(())
}

/// Reconciles every `period`.
pub async fn run_forever(app: App, period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&app).await {
            tracing::warn!("reconciliation: {e}");
        }
    }
}
