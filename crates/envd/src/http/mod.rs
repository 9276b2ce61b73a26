//! envd's plain HTTP endpoints: `/health`, `/init`, `/envs`, `/metrics`,
//! `/files`, and the access-token check in front of everything.

pub mod files;
pub mod misc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{token_matches, verify_file_signature};
use crate::state::AppState;

/// An error in E2B's envd HTTP shape: `{"message", "code"}` where code is
/// the HTTP status.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "message": message.into(), "code": status.as_u16() });
    (status, Json(body)).into_response()
}

fn connect_unauthenticated(message: &str) -> Response {
    let body = serde_json::json!({ "code": "unauthenticated", "message": message });
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// Query parameters that carry a signed `/files` URL.
#[derive(serde::Deserialize, Default)]
struct SignedQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

/// Refuses calls without the access token once `/init` has set one.
/// `/health` and `/init` are always open; `/files` also accepts a signed URL.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" || path == "/init" {
        return next.run(req).await;
    }
    let Some(token) = state.defaults().access_token else {
        return next.run(req).await;
    };
    if token_matches(req.headers(), &token) {
        return next.run(req).await;
    }
    if path == "/files" {
        let q: SignedQuery = req
            .uri()
            .query()
            .and_then(|q| serde_urlencoded_lite(q))
            .unwrap_or_default();
        let Some(sig) = q.signature else {
            return http_error(
                StatusCode::UNAUTHORIZED,
                "missing X-Access-Token header or signed URL",
            );
        };
        let op = if req.method() == http::Method::GET {
            "read"
        } else {
            "write"
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        return match verify_file_signature(
            &sig,
            q.path.as_deref().unwrap_or(""),
            op,
            q.username.as_deref().unwrap_or(""),
            &token,
            q.signature_expiration,
            now,
        ) {
            Ok(()) => next.run(req).await,
            Err(e) => http_error(StatusCode::UNAUTHORIZED, e.to_string()),
        };
    }
    connect_unauthenticated("missing or wrong X-Access-Token; pass the sandbox's envd access token")
}

/// Parses a query string into [`SignedQuery`].
fn serde_urlencoded_lite(q: &str) -> Option<SignedQuery> {
    axum::extract::Query::<SignedQuery>::try_from_uri(&format!("/?{q}").parse().ok()?)
        .ok()
        .map(|q| q.0)
}
