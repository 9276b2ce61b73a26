//! The sandbox routes (mounted at `/v1/sandboxes` and `/v1/capsules`):
//! lifecycle here, commands in [`exec`], files in [`files`], WebSocket
//! streams in [`ws`]. Each handler translates HTTP to a call of
//! [`crate::sandboxes`] or of the sandbox's agent, and back.
//! (Templates are in `api/templates.rs`, the event stream in
//! `api/events.rs`.)

pub(super) mod exec;
pub(super) mod files;
pub(super) mod ws;

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use wrenn_api_types::sandboxes::{
    CreateSandbox, Egress, Metrics, MetricsPoint, PublicPorts, Sandbox as SandboxView,
};
use wrenn_protocol::hostagent::v1 as pb;

use super::{ApiJson, OptionalJson, rfc3339};
use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::sandboxes::{
    self as lifecycle, Dialect, NewSandbox, SandboxState, agent_for, find, network, running_sandbox,
};
use crate::store::Sandbox;

/// The routes under `/v1/sandboxes` and `/v1/capsules`.
pub(super) fn routes() -> axum::Router<App> {
    use exec::{exec, kill, processes};
    use files::{file_list, file_mkdir, file_read, file_remove, file_write};
    axum::Router::new()
        .route("/", post(create).get(list))
        .route("/{id}", get(get_one).delete(destroy))
        .route("/{id}/exec", post(exec))
        .route("/{id}/exec/stream", get(ws::exec_stream))
        .route("/{id}/pty", get(ws::pty))
        .route("/{id}/processes/{pid}/stream", get(ws::process_stream))
        .route("/{id}/processes", get(processes))
        .route("/{id}/processes/{pid}", delete(kill))
        .route("/{id}/ping", post(ping))
        .route("/{id}/pause", post(pause))
        .route("/{id}/resume", post(resume))
        .route("/{id}/metrics", get(metrics))
        .route("/{id}/public-ports", axum::routing::put(set_public_ports))
        .route("/{id}/egress", axum::routing::put(set_egress))
        .route("/{id}/files/read", post(file_read))
        .route("/{id}/files/stream/read", post(file_read))
        // Uploads stream to the sandbox; no body limit applies to them.
        .route(
            "/{id}/files/write",
            post(file_write).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            "/{id}/files/stream/write",
            post(file_write).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/{id}/files/list", post(file_list))
        .route("/{id}/files/mkdir", post(file_mkdir))
        .route("/{id}/files/remove", post(file_remove))
}

/// The view of a stored sandbox.
pub fn sandbox_view(s: &Sandbox) -> SandboxView {
    SandboxView {
        id: s.id.clone(),
        status: s.state.to_string(),
        template: s.template.clone(),
        vcpus: s.vcpus,
        memory_mb: s.memory_mb,
        disk_size_mb: s.disk_size_mb,
        timeout_sec: s.timeout_sec,
        allow_internet_access: s.allow_internet_access,
        metadata: s.metadata.clone(),
        host_id: s.host_id.clone(),
        error: (!s.error.is_empty()).then(|| s.error.clone()),
        created_at: rfc3339(s.created_at),
        started_at: rfc3339(s.started_at),
        last_active_at: rfc3339(s.last_active_at),
        last_updated: rfc3339(s.updated_at.max(s.created_at)),
        public_ports: s.public_ports.clone(),
        traffic_token: s.traffic_token.clone(),
        auto_resume: s.auto_resume,
        egress: Egress {
            allow_out: s.network.allow_out.clone(),
            deny_out: s.network.deny_out.clone(),
        },
        disk_used_mb: None,
    }
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body(content = CreateSandbox, description = "All fields optional"), responses((status = 201, description = "Running", body = SandboxView), (status = 400, description = "Bad input", body = ErrorBody), (status = 503, description = "No host available", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn create(
    State(app): State<App>,
    caller: Caller,
    OptionalJson(r): OptionalJson<CreateSandbox>,
) -> ApiResult<(StatusCode, Json<SandboxView>)> {
    let spec = NewSandbox {
        template: r.template,
        vcpus: r.vcpus,
        memory_mb: r.memory_mb,
        disk_size_mb: r.disk_size_mb,
        timeout_sec: r.timeout_sec,
        metadata: r.metadata.unwrap_or_default(),
        envs: r.envs.unwrap_or_default(),
        allow_internet_access: r.allow_internet_access,
        auto_pause: false,
        auto_pause_drop_memory: false,
        auto_resume: r.auto_resume,
        public_ports: r.public_ports.unwrap_or_default(),
        host_tags: r.host_tags.unwrap_or_default(),
        allow_out: r.egress.clone().unwrap_or_default().allow_out,
        deny_out: r.egress.unwrap_or_default().deny_out,
        public_traffic: None,
        mask_request_host: None,
    }
    .check(Dialect::Native)?;
    let s = lifecycle::create(&app, &caller, spec).await?;
    Ok((StatusCode::CREATED, Json(sandbox_view(&s))))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/egress", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = Egress, responses((status = 200, description = "The sandbox with its new egress rules, in force", body = SandboxView), (status = 400, description = "Bad rule", body = ErrorBody), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Neither running nor paused", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// Replaces a sandbox's egress rules; they hold when this answers.
pub(super) async fn set_egress(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Egress>,
) -> ApiResult<Json<SandboxView>> {
    let (allow, deny) = network::check_egress(Dialect::Native, r.allow_out, r.deny_out)?;
    let s = find(&app, &caller, &id).await?;
    let s = network::set_egress(&app, s, allow, deny).await?;
    app.store
        .audit(&caller.team_id, &caller.actor, "sandbox.egress", &id)
        .await?;
    Ok(Json(sandbox_view(&s)))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/public-ports", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PublicPorts, responses((status = 200, description = "The sandbox with its new public ports", body = SandboxView), (status = 400, description = "Bad port", body = ErrorBody), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn set_public_ports(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PublicPorts>,
) -> ApiResult<Json<SandboxView>> {
    // Read afresh: the whole row is written back.
    let mut s = lifecycle::find_fresh(&app, &caller.team_id, &id).await?;
    s.public_ports = lifecycle::check_ports(r.ports)?;
    app.store.update_sandbox(&s).await?;
    app.proxy_cache.forget(&id);
    app.store
        .audit(&caller.team_id, &caller.actor, "sandbox.public_ports", &id)
        .await?;
    Ok(Json(sandbox_view(&s)))
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(("state" = Option<String>, Query, description = "Only this state; default: all but stopped")), responses((status = 200, description = "The team's sandboxes; `metadata.KEY=VALUE` query parameters filter", body = [SandboxView])), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn list(
    State(app): State<App>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Vec<SandboxView>>> {
    let state = match q.get("state").map(String::as_str) {
        // A state older versions listed but never set: nothing is in it.
        Some("starting") => return Ok(Json(Vec::new())),
        Some(st) => Some(
            st.parse::<SandboxState>()
                .map_err(|_| ApiError::bad_request(format!("state: unknown state '{st}'")))?,
        ),
        None => None,
    };
    let filters: Vec<(&str, &str)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())))
        .collect();
    let items: Vec<SandboxView> = app
        .store
        .sandboxes(&caller.team_id, state)
        .await?
        .iter()
        .filter(|s| {
            filters
                .iter()
                .all(|(k, v)| s.metadata.get(*k).map(String::as_str) == Some(*v))
        })
        .map(sandbox_view)
        .collect();
    Ok(Json(items))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, description = "The sandbox, with disk_used_mb while it runs", body = SandboxView), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn get_one(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxView>> {
    let s = find(&app, &caller, &id).await?;
    let mut view = sandbox_view(&s);
    if matches!(s.state, SandboxState::Running | SandboxState::Paused) {
        view.disk_used_mb = lifecycle::disk_used(&app, &s)
            .await
            .map(|bytes| bytes >> 20);
    }
    Ok(Json(view))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 204, description = "Destroyed"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn destroy(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = find(&app, &caller, &id).await?;
    lifecycle::destroy(&app, s, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, body = SandboxView, description = "Paused"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn pause(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxView>> {
    let s = find(&app, &caller, &id).await?;
    let s = lifecycle::pause(&app, s, &caller.actor).await?;
    Ok(Json(sandbox_view(&s)))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, body = SandboxView, description = "Running again"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn resume(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxView>> {
    let s = find(&app, &caller, &id).await?;
    let s = lifecycle::resume(&app, s, &caller.actor).await?;
    Ok(Json(sandbox_view(&s)))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/ping", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 204, description = "Idle timer restarted"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn ping(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = running_sandbox(&app, &caller, &id).await?;
    lifecycle::keep_alive(&app, s, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, description = "CPU, memory, disk and pids", body = Metrics), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn metrics(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Metrics>> {
    let s = find(&app, &caller, &id).await?;
    let agent = agent_for(&app, &s).await?;
    let m = agent
        .get_sandbox_metrics(pb::SandboxRef {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_owned();
    Ok(Json(Metrics {
        sandbox_id: id,
        points: vec![MetricsPoint {
            timestamp_unix: m.timestamp,
            cpu_pct: m.cpu_used_pct,
            mem_bytes: m.memory_bytes,
            mem_limit_bytes: m.memory_limit_bytes,
            disk_bytes: m.disk_used_bytes,
            disk_limit_bytes: m.disk_limit_bytes,
            pids: m.pids,
        }],
    }))
}
