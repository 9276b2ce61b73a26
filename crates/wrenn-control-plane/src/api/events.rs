//! The lifecycle event stream of a team (what `sandboxes::emit` sends).

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde_json::json;

use crate::App;
use crate::auth::Caller;

/// GET /v1/events/stream: server-sent lifecycle events of the caller's team.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", responses((status = 200, description = "Server-sent lifecycle events of the team", content_type = "text/event-stream")), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn events(
    State(app): State<App>,
    caller: Caller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.events.subscribe();
    let team = caller.team_id;
    let first = futures::stream::once(async {
        Ok(Event::default().data(json!({ "event": "connected" }).to_string()))
    });
    let rest = futures::stream::unfold((rx, team), |(mut rx, team)| async move {
        loop {
            match rx.recv().await {
                Ok((t, v)) if t == team => {
                    return Some((Ok(Event::default().data(v.to_string())), (rx, team)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::default())
}
