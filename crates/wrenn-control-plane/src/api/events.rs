//! The lifecycle event stream of a team (what `sandboxes::emit` sends).

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use wrenn_api_types::streams::LifecycleEvent;

use crate::App;
use crate::auth::Caller;

/// GET /v1/events/stream: server-sent lifecycle events of the caller's team.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", responses((status = 200, description = "Server-sent lifecycle events of the team, each a LifecycleEvent as JSON", content_type = "text/event-stream", body = LifecycleEvent)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn events(
    State(app): State<App>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.events.subscribe();
    let team = caller.team_id;
    let first = futures::stream::once(async {
        let connected = LifecycleEvent {
            event: "connected".into(),
            capsule_id: None,
            status: None,
            timestamp: None,
        };
        Ok(Event::default().data(serde_json::to_string(&connected).unwrap_or_default()))
    });
    let rest = futures::stream::unfold((rx, team), |(mut rx, team)| async move {
        loop {
            match rx.recv().await {
                Ok((t, v)) if t == team => {
                    let data = serde_json::to_string(&v).unwrap_or_default();
                    return Some((Ok(Event::default().data(data)), (rx, team)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::default())
}
