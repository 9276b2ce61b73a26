//! E2B-compatible REST: what E2B's SDKs call at `E2B_API_URL`, so they
//! work unchanged against Wrenn. Same store, same agents, same team scoping
//! as the native routes; E2B's field names and `{code, message}` errors.
//!
//! E2B templates map to Wrenn templates by name (`base` is `base`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub(super) mod bodies;

use bodies::{
    ListedSandbox, NewSandbox, Refresh, SandboxDetail, SandboxMetric, SandboxesWithMetrics, Timeout,
};
use wrenn_protocol::hostagent::v1 as pb;

use super::rfc3339;
use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::sandboxes::{self as lifecycle, Dialect, SandboxState, agent_for, find, network};
use crate::store::{Sandbox, now};

/// envd as E2B's SDKs know it: the feature level they gate on.
const ENVD_VERSION: &str = wrenn_protocol::envd::VERSION;

/// The E2B routes.
pub(super) fn routes() -> axum::Router<App> {
    axum::Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(get_one).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/metrics", get(metrics_of_many))
        .route("/sandboxes/{id}/network", axum::routing::put(set_network))
}

/// An error in E2B's shape: `{"code": <status>, "message": …}`.
pub(super) struct E2bError(ApiError);

impl From<ApiError> for E2bError {
    fn from(e: ApiError) -> Self {
        E2bError(e)
    }
}

impl From<sqlx::Error> for E2bError {
    fn from(e: sqlx::Error) -> Self {
        E2bError(e.into())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status.is_server_error() {
            tracing::warn!(code = e.code, "{}", e.message);
        }
        (
            e.status,
            Json(bodies::Error {
                code: e.status.as_u16(),
                message: e.message,
            }),
        )
            .into_response()
    }
}

type E2bResult<T> = Result<T, E2bError>;

/// The JSON body (may be empty), with a 400 in E2B's shape when it does
/// not parse.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> E2bResult<T> {
    super::optional_json(bytes).map_err(E2bError)
}

/// What create and connect answer: E2B's `Sandbox`.
fn created(app: &App, s: &Sandbox) -> bodies::Sandbox {
    bodies::Sandbox {
        template_id: s.template.clone(),
        sandbox_id: s.id.clone(),
        client_id: s.host_id.clone(),
        alias: s.template.clone(),
        envd_version: ENVD_VERSION.into(),
        envd_access_token: s.envd_token.clone(),
        traffic_access_token: (!s.network.public_traffic).then(|| s.traffic_token.clone()),
        domain: app.proxy.domain.clone(),
    }
}

/// E2B's state for a Wrenn state: only `running` and `paused` exist there.
fn e2b_state(s: &Sandbox) -> Option<&'static str> {
    match s.state {
        SandboxState::Running | SandboxState::Pending => Some("running"),
        SandboxState::Paused => Some("paused"),
        _ => None,
    }
}

/// E2B's `ListedSandbox` (and, with more fields, `SandboxDetail`).
fn listed(s: &Sandbox, end_at: i64) -> ListedSandbox {
    let started = started(s);
    ListedSandbox {
        template_id: s.template.clone(),
        alias: s.template.clone(),
        sandbox_id: s.id.clone(),
        client_id: s.host_id.clone(),
        started_at: rfc3339(started),
        end_at: rfc3339(end_at.max(started)),
        cpu_count: s.vcpus,
        memory_mb: s.memory_mb,
        disk_size_mb: s.disk_size_mb,
        metadata: s.metadata.clone(),
        state: e2b_state(s).unwrap_or("running").into(),
        envd_version: ENVD_VERSION.into(),
    }
}

fn end_estimate(s: &Sandbox) -> i64 {
    s.last_active_at.max(s.started_at) + s.timeout_sec
}

/// The caller's sandbox in a state E2B knows (running or paused), or 404.
async fn e2b_find(app: &App, caller: &Caller, id: &str) -> E2bResult<Sandbox> {
    let s = find(app, caller, id).await?;
    if e2b_state(&s).is_none() {
        return Err(ApiError::not_found(format!("sandbox '{id}'")).into());
    }
    Ok(s)
}

#[utoipa::path(post, path = "/v2/sandboxes", tag = "e2b", request_body(content = NewSandbox, description = "E2B's NewSandbox (also at POST /sandboxes)"), responses((status = 201, description = "E2B's Sandbox", body = bodies::Sandbox), (status = 400, description = "Bad input", body = bodies::Error)), security(("api_key" = []), ("bearer" = [])))]
/// POST /sandboxes and /v2/sandboxes.
pub(super) async fn create(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    raw: axum::body::Bytes,
) -> E2bResult<(StatusCode, Json<bodies::Sandbox>)> {
    let caller = caller?;
    let r: NewSandbox = body(&raw)?;
    let net = r.network.unwrap_or_default();
    unsupported_network(&net)?;
    // As E2B's: no internet access is denying everything not allowed
    // (so `allowOut` still opens what it names).
    let mut deny_out = net.deny_out.unwrap_or_default();
    if r.allow_internet_access == Some(false) || net.allow_internet_access == Some(false) {
        deny_out.push(wrenn_protocol::sandbox::egress::ALL.into());
    }
    let spec = lifecycle::NewSandbox {
        template: r.template_id,
        timeout_sec: r.timeout,
        metadata: r.metadata.unwrap_or_default(),
        envs: r.env_vars.unwrap_or_default(),
        auto_pause: r.auto_pause.unwrap_or(false),
        auto_pause_drop_memory: r.auto_pause_memory == Some(false),
        auto_resume: r.auto_resume.map(|a| a.enabled),
        allow_out: net.allow_out.unwrap_or_default(),
        deny_out,
        public_traffic: net.allow_public_traffic,
        mask_request_host: net.mask_request_host,
        ..Default::default()
    }
    .check(Dialect::E2b)?;
    let s = lifecycle::create(&app, &caller, spec).await?;
    Ok((StatusCode::CREATED, Json(created(&app, &s))))
}

#[utoipa::path(get, path = "/sandboxes/{id}", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), responses((status = 200, description = "E2B's SandboxDetail", body = SandboxDetail), (status = 404, description = "Not found", body = bodies::Error)), security(("api_key" = []), ("bearer" = [])))]
/// GET /sandboxes/{id}: E2B's `SandboxDetail`.
pub(super) async fn get_one(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> E2bResult<Json<SandboxDetail>> {
    let caller = caller?;
    let s = e2b_find(&app, &caller, &id).await?;
    // The agent knows when the idle timer runs out and how the sandbox
    // was paused; fall back to an estimate.
    let mut end_at = end_estimate(&s);
    let mut pause_mode = None;
    if let Ok(agent) = agent_for(&app, &s).await {
        if let Ok(info) = agent
            .get_sandbox(pb::SandboxRef {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
        {
            let info = info.into_owned();
            if info.expires_at > 0 {
                end_at = info.expires_at;
            }
            if s.state == SandboxState::Paused {
                pause_mode = Some(
                    if info.memory_dropped {
                        "filesystem"
                    } else {
                        "full"
                    }
                    .into(),
                );
            }
        }
    }
    Ok(Json(SandboxDetail {
        listed: listed(&s, end_at),
        envd_access_token: s.envd_token.clone(),
        domain: app.proxy.domain.clone(),
        allow_internet_access: s.allow_internet_access && !s.network.denies_all(),
        lifecycle: bodies::Lifecycle {
            auto_resume: s.auto_resume,
            on_timeout: if s.auto_pause { "pause" } else { "kill" }.into(),
        },
        network: bodies::NetworkView {
            allow_out: s.network.allow_out.clone(),
            deny_out: s.network.deny_out.clone(),
            allow_public_traffic: s.network.public_traffic,
            mask_request_host: s.network.mask_request_host.clone(),
        },
        pause_mode,
    }))
}

/// The caller's sandboxes in E2B's states, newest first, with optional
/// `state` (comma-separated) and `metadata` (`k=v&k2=v2`, URL-encoded)
/// filters.
async fn filtered(
    app: &App,
    caller: &Caller,
    q: &HashMap<String, String>,
) -> E2bResult<Vec<Sandbox>> {
    let states: Vec<&str> = match q.get("state") {
        Some(st) => st
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        None => vec!["running", "paused"],
    };
    if let Some(bad) = states.iter().find(|s| !["running", "paused"].contains(s)) {
        return Err(ApiError::bad_request(format!(
            "state: '{bad}' is not a state; use running and/or paused"
        ))
        .into());
    }
    let wanted = match q.get("metadata") {
        Some(m) => metadata_filter(m)?,
        None => Vec::new(),
    };
    let after = match q.get("startedAfter").filter(|t| !t.is_empty()) {
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "startedAfter: '{t}' is not an RFC 3339 time ({e})"
                    ))
                })?
                .as_second(),
        ),
        None => None,
    };
    let ascending = ascending(q)?;
    let template = q.get("template").filter(|t| !t.is_empty());
    let mut list: Vec<Sandbox> = app
        .store
        .sandboxes(&caller.team_id, None)
        .await?
        .into_iter()
        .filter(|s| e2b_state(s).is_some_and(|st| states.contains(&st)))
        .filter(|s| {
            wanted
                .iter()
                .all(|(k, v)| s.metadata.get(k).is_some_and(|x| x == v))
        })
        .filter(|s| after.is_none_or(|a| started(s) >= a))
        .filter(|s| template.is_none_or(|t| &s.template == t))
        .collect();
    // By start, newest first unless `order=asc`, then by id: a stable order
    // for `nextToken`.
    list.sort_by(|a, b| order(ascending, a, b));
    Ok(list)
}

/// Whether `order=asc` was asked for (the default is newest first).
fn ascending(q: &HashMap<String, String>) -> E2bResult<bool> {
    match q.get("order").map(String::as_str) {
        None | Some("") | Some("desc") => Ok(false),
        Some("asc") => Ok(true),
        Some(o) => Err(ApiError::bad_request(format!("order: '{o}' is not asc or desc")).into()),
    }
}

/// A listing's order: by start (oldest or newest first), then by id.
fn order(ascending: bool, a: &Sandbox, b: &Sandbox) -> std::cmp::Ordering {
    order_of(ascending, (started(a), &a.id), (started(b), &b.id))
}

/// [`order`] on keys (start, id).
fn order_of(ascending: bool, a: (i64, &str), b: (i64, &str)) -> std::cmp::Ordering {
    let by_start = a.0.cmp(&b.0);
    let by_start = if ascending {
        by_start
    } else {
        by_start.reverse()
    };
    by_start.then_with(|| a.1.cmp(b.1))
}

/// When a sandbox started, as E2B's `startedAt` reports it.
fn started(s: &Sandbox) -> i64 {
    s.started_at.max(s.created_at)
}

/// Parses E2B's metadata filter: `k=v&k2=v2` whose keys and values the
/// SDKs percent-encode before encoding the pairs.
fn metadata_filter(m: &str) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(m).map_err(|e| {
        ApiError::bad_request(format!("metadata: expected key=value&key2=value2: {e}"))
    })?;
    Ok(pairs
        .into_iter()
        .map(|(k, v)| (percent_decode(&k), percent_decode(&v)))
        .collect())
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[utoipa::path(get, path = "/sandboxes", tag = "e2b", responses((status = 200, description = "Running sandboxes", body = [ListedSandbox])), security(("api_key" = []), ("bearer" = [])))]
/// GET /sandboxes (v1): the running sandboxes, all at once.
pub(super) async fn list_v1(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Query(mut q): Query<HashMap<String, String>>,
) -> E2bResult<Json<Vec<ListedSandbox>>> {
    let caller = caller?;
    q.entry("state".into()).or_insert_with(|| "running".into());
    let all = filtered(&app, &caller, &q).await?;
    Ok(Json(
        all.iter().map(|s| listed(s, end_estimate(s))).collect(),
    ))
}

#[utoipa::path(get, path = "/v2/sandboxes", tag = "e2b", params(("state" = Option<String>, Query, description = "running,paused"), ("metadata" = Option<String>, Query, description = "k=v&k2=v2, encoded"), ("order" = Option<String>, Query, description = "asc or desc (default) by startedAt"), ("startedAfter" = Option<String>, Query, description = "RFC 3339: only sandboxes started then or later"), ("template" = Option<String>, Query, description = "Only sandboxes of this template"), ("limit" = Option<u32>, Query, description = "1-1000, default 100"), ("nextToken" = Option<String>, Query, description = "From X-Next-Token")), responses((status = 200, description = "A page; the next page's token in X-Next-Token", body = [ListedSandbox])), security(("api_key" = []), ("bearer" = [])))]
/// GET /v2/sandboxes: pages of `limit` (default 100, at most 1000); the
/// next page's token is in `X-Next-Token`.
pub(super) async fn list_v2(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Query(q): Query<HashMap<String, String>>,
) -> E2bResult<Response> {
    let caller = caller?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| ApiError::bad_request("limit: a number from 1 to 1000"))?,
        None => 100,
    };
    let all = filtered(&app, &caller, &q).await?;
    // The token is the key (start, id) of the last sandbox of the previous
    // page: the next page starts after that key in the listing's order,
    // whether or not that sandbox is still there.
    let start = match q.get("nextToken").filter(|t| !t.is_empty()) {
        Some(t) => {
            let (at, last) = t
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id)))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "nextToken: not a token of this listing; list again from the start",
                    )
                })?;
            let asc = ascending(&q)?;
            all.iter()
                .position(|s| {
                    order_of(asc, (started(s), &s.id), (at, last)) == std::cmp::Ordering::Greater
                })
                .unwrap_or(all.len())
        }
        None => 0,
    };
    let page: Vec<ListedSandbox> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| listed(s, end_estimate(s)))
        .collect();
    let mut headers = HeaderMap::new();
    if start + limit < all.len() {
        let last = &all[start + limit - 1];
        if let Ok(v) = HeaderValue::from_str(&format!("{}.{}", started(last), last.id)) {
            headers.insert("x-next-token", v);
        }
    }
    Ok((headers, Json(page)).into_response())
}

#[utoipa::path(delete, path = "/sandboxes/{id}", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), responses((status = 204, description = "Killed"), (status = 404, description = "Not found")), security(("api_key" = []), ("bearer" = [])))]
/// DELETE /sandboxes/{id}: 204.
pub(super) async fn kill(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let caller = caller?;
    let s = find(&app, &caller, &id).await?;
    lifecycle::destroy(&app, s, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restarts the idle timer, with `timeout` (checked as E2B's create
/// checks it) as the new timeout if given.
async fn retime(app: &App, s: Sandbox, timeout: Option<u32>) -> E2bResult<Sandbox> {
    if let Some(t) = timeout {
        lifecycle::check_timeout(Dialect::E2b, t)?;
    }
    Ok(lifecycle::keep_alive(app, s, timeout).await?)
}

#[utoipa::path(post, path = "/sandboxes/{id}/timeout", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), request_body = Timeout, responses((status = 204, description = "Timer restarted with the new timeout; with 0, the sandbox's time is up now")), security(("api_key" = []), ("bearer" = [])))]
/// POST /sandboxes/{id}/timeout `{timeout}`: 204. As E2B's, the sandbox's
/// end becomes now plus `timeout`, so `0` ends it now: what its timeout
/// does (paused with `autoPause`, else killed) is done before the answer.
pub(super) async fn set_timeout(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> E2bResult<StatusCode> {
    let caller = caller?;
    let r: Timeout = body(&raw)?;
    let Some(t) = r.timeout else {
        return Err(ApiError::bad_request("timeout: required, in seconds").into());
    };
    let s = e2b_find(&app, &caller, &id).await?;
    if t == 0 {
        match s.state {
            SandboxState::Paused => {}
            _ if s.auto_pause => {
                // Paused as its timeout would pause it: the agent knows
                // whether that keeps its memory (autoPauseMemory).
                let drop_memory = match agent_for(&app, &s).await {
                    Ok(agent) => agent
                        .get_sandbox(pb::SandboxRef {
                            sandbox_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .is_ok_and(|info| info.into_owned().auto_pause_drop_memory),
                    Err(_) => false,
                };
                if drop_memory {
                    lifecycle::pause_dropping_memory(&app, s, &caller.actor).await?;
                } else {
                    lifecycle::pause(&app, s, &caller.actor).await?;
                }
            }
            _ => lifecycle::destroy(&app, s, &caller.actor).await?,
        }
        return Ok(StatusCode::NO_CONTENT);
    }
    retime(&app, s, Some(t)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/sandboxes/{id}/refreshes", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), request_body(content = Refresh, description = "Optional"), responses((status = 204, description = "Kept alive")), security(("api_key" = []), ("bearer" = [])))]
/// POST /sandboxes/{id}/refreshes `{duration}`: keeps it alive; 204.
pub(super) async fn refresh(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> E2bResult<StatusCode> {
    let caller = caller?;
    let r: Refresh = body(&raw)?;
    let s = e2b_find(&app, &caller, &id).await?;
    retime(&app, s, r.duration).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/sandboxes/{id}/pause", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), request_body(content = bodies::Pause, description = "Optional: memory=false keeps only its files"), responses((status = 204, description = "Paused"), (status = 409, description = "Already paused")), security(("api_key" = []), ("bearer" = [])))]
/// POST /sandboxes/{id}/pause `{memory?}`: 204; 409 when already paused.
/// `memory: false` keeps only its files: every process ends and a resume
/// boots it again.
pub(super) async fn pause(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> E2bResult<StatusCode> {
    let caller = caller?;
    let r: bodies::Pause = body(&raw)?;
    let s = e2b_find(&app, &caller, &id).await?;
    if r.memory == Some(false) {
        lifecycle::pause_dropping_memory(&app, s, &caller.actor).await?;
    } else {
        lifecycle::pause(&app, s, &caller.actor).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes a paused `s`: booting it again when `memory` is `false`.
async fn resume_as_asked(
    app: &App,
    s: Sandbox,
    actor: &str,
    memory: Option<bool>,
) -> E2bResult<Sandbox> {
    Ok(if memory == Some(false) {
        lifecycle::resume_rebooting(app, s, actor).await?
    } else {
        lifecycle::resume(app, s, actor).await?
    })
}

#[utoipa::path(post, path = "/sandboxes/{id}/resume", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), responses((status = 201, description = "Resumed", body = bodies::Sandbox), (status = 409, description = "Running")), security(("api_key" = []), ("bearer" = [])))]
/// POST /sandboxes/{id}/resume (E2B's older call): 201; 409 when running.
pub(super) async fn resume(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> E2bResult<(StatusCode, Json<bodies::Sandbox>)> {
    let caller = caller?;
    let r: Timeout = body(&raw)?;
    let s = e2b_find(&app, &caller, &id).await?;
    let s = resume_as_asked(&app, s, &caller.actor, r.memory).await?;
    let s = retime(&app, s, r.timeout).await?;
    Ok((StatusCode::CREATED, Json(created(&app, &s))))
}

#[utoipa::path(post, path = "/v2/sandboxes/{id}/connect", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), request_body = Timeout, responses((status = 200, description = "Was running", body = bodies::Sandbox), (status = 201, description = "Was paused; resumed", body = bodies::Sandbox)), security(("api_key" = []), ("bearer" = [])))]
/// POST /v2/sandboxes/{id}/connect `{timeout}`: 200 if it was running,
/// 201 if it was paused and is now resumed.
pub(super) async fn connect(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> E2bResult<(StatusCode, Json<bodies::Sandbox>)> {
    let caller = caller?;
    let r: Timeout = body(&raw)?;
    let s = e2b_find(&app, &caller, &id).await?;
    // As E2B's, a connect never shortens a sandbox's time: without a
    // timeout it restarts the sandbox's timer; with one, the longer of it
    // and the sandbox's own becomes its timeout (a sandbox without one,
    // made through the native API, keeps none).
    let timeout = match (r.timeout, u32::try_from(s.timeout_sec)) {
        (None, _) | (Some(_), Ok(0)) => None,
        (Some(t), Ok(own)) => Some(t.max(own)),
        (Some(t), Err(_)) => Some(t),
    };
    let (status, s) = if s.state == SandboxState::Paused {
        let s = resume_as_asked(&app, s, &caller.actor, r.memory).await?;
        (StatusCode::CREATED, s)
    } else {
        (StatusCode::OK, s)
    };
    let s = retime(&app, s, timeout).await?;
    Ok((status, Json(created(&app, &s))))
}

/// A 400 for the parts of E2B's network settings Wrenn does not have.
fn unsupported_network(n: &bodies::NetworkConfig) -> E2bResult<()> {
    let no = |what: &str| -> E2bResult<()> {
        Err(ApiError::bad_request(format!("network.{what} is not supported by Wrenn yet")).into())
    };
    if let Some(d) = &n.dns_servers
        && (d.len() > 10 || d.iter().any(|a| a.parse::<std::net::Ipv4Addr>().is_err()))
    {
        return Err(ApiError::bad_request("network.dnsServers: up to 10 IPv4 addresses").into());
    }
    if n.egress_proxy.as_ref().is_some_and(|v| !v.is_null()) {
        return no("egressProxy");
    }
    if n.https_ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return no("httpsPorts");
    }
    if n.rules
        .as_ref()
        .is_some_and(|r| !r.is_null() && r.as_object().is_none_or(|o| !o.is_empty()))
    {
        return no("rules");
    }
    Ok(())
}

#[utoipa::path(put, path = "/sandboxes/{id}/network", tag = "e2b", params(("id" = String, Path, description = "Sandbox id")), request_body = bodies::NetworkConfig, responses((status = 204, description = "The new rules hold"), (status = 400, description = "Bad rule", body = bodies::Error), (status = 404, description = "Not found", body = bodies::Error), (status = 409, description = "Neither running nor paused", body = bodies::Error)), security(("api_key" = []), ("bearer" = [])))]
/// PUT /sandboxes/{id}/network: replaces the egress rules (what the body
/// leaves out is cleared; `allow_internet_access: false` denies
/// everything not allowed); they hold when this answers 204.
pub(super) async fn set_network(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> E2bResult<StatusCode> {
    let caller = caller?;
    let n: bodies::NetworkConfig = body(&raw)?;
    unsupported_network(&n)?;
    if n.allow_public_traffic.is_some() || n.mask_request_host.is_some() {
        return Err(ApiError::bad_request(
            "allowPublicTraffic and maskRequestHost are set at create only",
        )
        .into());
    }
    let mut deny = n.deny_out.unwrap_or_default();
    if n.allow_internet_access == Some(false) {
        deny.push(wrenn_protocol::sandbox::egress::ALL.into());
    }
    let (allow, deny) = network::check_egress(Dialect::E2b, n.allow_out.unwrap_or_default(), deny)?;
    let s = e2b_find(&app, &caller, &id).await?;
    network::set_egress(&app, s, allow, deny).await?;
    app.store
        .audit(&caller.team_id, &caller.actor, "sandbox.egress", &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// E2B's `SandboxMetric` of one agent sample of `s`.
fn e2b_metric(s: &Sandbox, m: &pb::SandboxMetrics) -> SandboxMetric {
    let ts = if m.timestamp > 0 { m.timestamp } else { now() };
    SandboxMetric {
        timestamp: rfc3339(ts),
        timestamp_unix: ts,
        cpu_count: s.vcpus,
        cpu_used_pct: m.cpu_used_pct,
        mem_used: m.memory_bytes,
        mem_total: m.memory_limit_bytes,
        mem_cache: 0,
        disk_used: m.disk_used_bytes,
        disk_total: m.disk_limit_bytes,
    }
}

/// A unix-seconds query parameter (`start`, `end`), if given.
fn unix_param(q: &HashMap<String, String>, name: &str) -> E2bResult<Option<i64>> {
    match q.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|t| *t >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{name}: '{v}' is not a time in unix seconds")).into()
            }),
    }
}

#[utoipa::path(get, path = "/sandboxes/{id}/metrics", tag = "e2b", params(("id" = String, Path, description = "Sandbox id"), ("start" = Option<i64>, Query, description = "Unix seconds: samples from then (default: all kept)"), ("end" = Option<i64>, Query, description = "Unix seconds: samples until then (default: now)")), responses((status = 200, description = "Samples oldest first: the agent's (every 5 s, the last hour), and one taken now when the range reaches now", body = [SandboxMetric]), (status = 400, description = "Bad start or end", body = bodies::Error)), security(("api_key" = []), ("bearer" = [])))]
/// GET /sandboxes/{id}/metrics?start=&end=: E2B's `[SandboxMetric]`, the
/// samples the sandbox's agent kept in the range (every 5 s over the last
/// hour), oldest first, and, when the range reaches now and the sandbox
/// runs, one taken now.
pub(super) async fn metrics(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> E2bResult<Json<Vec<SandboxMetric>>> {
    let caller = caller?;
    let (start, end) = (unix_param(&q, "start")?, unix_param(&q, "end")?);
    if let (Some(a), Some(b)) = (start, end)
        && a > b
    {
        return Err(ApiError::bad_request("start: after end").into());
    }
    let s = e2b_find(&app, &caller, &id).await?;
    let agent = agent_for(&app, &s).await?;
    let history = agent
        .get_sandbox_metric_history(pb::MetricHistoryRequest {
            sandbox_id: id.clone(),
            start: start.unwrap_or(0),
            end: end.unwrap_or(0),
            ..Default::default()
        })
        .await
        .map_err(ApiError::from)?
        .into_owned();
    let mut out: Vec<SandboxMetric> = history.samples.iter().map(|m| e2b_metric(&s, m)).collect();
    let t = now();
    let reaches_now = end.is_none_or(|e| e >= t) && start.is_none_or(|a| a <= t);
    if s.state == SandboxState::Running
        && reaches_now
        && out.last().is_none_or(|l| l.timestamp_unix < t)
    {
        let m = agent
            .get_sandbox_metrics(pb::SandboxRef {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .map_err(ApiError::from)?
            .into_owned();
        out.push(e2b_metric(&s, &m));
    }
    Ok(Json(out))
}

/// The most sandboxes one `GET /sandboxes/metrics` may name.
const MAX_METRICS_IDS: usize = 100;

#[utoipa::path(get, path = "/sandboxes/metrics", tag = "e2b", params(("sandbox_ids" = String, Query, description = "Comma-separated sandbox ids, at most 100")), responses((status = 200, description = "The newest metric of each of the caller's running sandboxes named", body = SandboxesWithMetrics), (status = 400, description = "No ids, or too many", body = bodies::Error)), security(("api_key" = []), ("bearer" = [])))]
/// GET /sandboxes/metrics?sandbox_ids=a,b: the metric of each named
/// sandbox of the caller's that runs, taken now; others are left out.
pub(super) async fn metrics_of_many(
    State(app): State<App>,
    caller: Result<Caller, ApiError>,
    Query(q): Query<HashMap<String, String>>,
) -> E2bResult<Json<SandboxesWithMetrics>> {
    let caller = caller?;
    let mut ids: Vec<&str> = q
        .get("sandbox_ids")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() || ids.len() > MAX_METRICS_IDS {
        return Err(ApiError::bad_request(format!(
            "sandbox_ids: from 1 to {MAX_METRICS_IDS} comma-separated sandbox ids"
        ))
        .into());
    }
    let one = |id: &str| {
        let (app, caller, id) = (&app, &caller, id.to_string());
        async move {
            let s = find(app, caller, &id).await.ok()?;
            if s.state != SandboxState::Running {
                return None;
            }
            let m = agent_for(app, &s)
                .await
                .ok()?
                .get_sandbox_metrics(pb::SandboxRef {
                    sandbox_id: id.clone(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_owned();
            Some((id, e2b_metric(&s, &m)))
        }
    };
    let sandboxes = futures::future::join_all(ids.into_iter().map(one))
        .await
        .into_iter()
        .flatten()
        .collect();
    Ok(Json(SandboxesWithMetrics { sandboxes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2b_states() {
        let s = |state: &str| Sandbox {
            state: state.parse().unwrap(),
            ..Default::default()
        };
        assert_eq!(e2b_state(&s("running")), Some("running"));
        assert_eq!(e2b_state(&s("paused")), Some("paused"));
        assert_eq!(e2b_state(&s("stopped")), None);
        assert_eq!(e2b_state(&s("error")), None);
    }

    #[test]
    fn metadata_filters_decode_like_the_sdk_encodes() {
        // urlencode({quote(k): quote(v)}) in the Python SDK, as the query
        // string decoder hands it over.
        let pairs = metadata_filter("user%253Fid=a%2520b&kind=x%2526y&plain=v").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("user?id".into(), "a b".into()),
                ("kind".into(), "x&y".into()),
                ("plain".into(), "v".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
