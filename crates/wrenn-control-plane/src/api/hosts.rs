//! Hosts: records that admins (or team admins, for their team's own hosts)
//! manage, and the agent's side of the lifecycle: register with a one-time
//! token, refresh the host JWT with a rotating refresh token, heartbeat.
//!
//! Secrets are stored only as SHA-256 hashes: registration tokens (`wrh_`,
//! 1 hour, one use) and refresh tokens (`wrr_`, 60 days). Refresh issues
//! the new token before it revokes the old one, so a crash in between
//! leaves the host with a token that still works.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use wrenn_api_types::ErrorDetail;
use wrenn_api_types::hosts::{
    CreateHost, Credentials, Heartbeat, Host as HostView, NewHost, Refresh, Register,
    RegistrationToken, Seen, Tags,
};
use wrenn_protocol::hostagent::v1 as pb;

use super::{ApiJson, OptionalJson, rfc3339};
use crate::App;
use crate::auth::{Caller, sha256_hex};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::hosts::check_tags;
use crate::ids;
use crate::sandboxes::{self, SandboxState};
use crate::store::{Host, HostToken, now};

/// How long a registration token is valid.
pub const REGISTRATION_TTL_SECS: i64 = 3600;
/// How long a refresh token is valid.
pub const REFRESH_TTL_SECS: i64 = 60 * 86400;

/// The routes under `/v1/hosts`.
pub(super) fn routes() -> axum::Router<App> {
    axum::Router::new()
        .route("/", post(create).get(list))
        .route("/register", post(register))
        .route("/refresh", post(refresh))
        .route("/heartbeat", post(heartbeat))
        .route("/{id}", get(get_one).delete(delete))
        .route("/{id}/tags", put(set_tags))
        .route("/{id}/token", post(regenerate))
}

/// The view of a stored host with `sandboxes` live on it.
fn host_view(h: &Host, sandboxes: i64) -> HostView {
    HostView {
        id: h.id.clone(),
        name: h.name.clone(),
        address: h.address.clone(),
        status: h.status.to_string(),
        kind: h.kind.clone(),
        team_id: (!h.team_id.is_empty()).then(|| h.team_id.clone()),
        tags: h.tags.clone(),
        arch: h.arch.clone(),
        cpu_count: h.cpu_count,
        memory_mb: h.memory_mb,
        disk_mb: h.disk_mb,
        sandboxes,
        created_at: rfc3339(h.created_at),
        last_seen_at: rfc3339(h.last_seen_at),
    }
}

/// Platform admins manage every host; team owners and admins their team's.
fn may_manage(caller: &Caller, h: &Host) -> bool {
    caller.is_admin
        || (!h.team_id.is_empty()
            && h.team_id == caller.team_id
            && (caller.role == "owner" || caller.role == "admin"))
}

async fn managed(app: &App, caller: &Caller, id: &str) -> ApiResult<Host> {
    match app.store.host(id).await? {
        Some(h) if may_manage(caller, &h) => Ok(h),
        _ => Err(ApiError::not_found(format!("host '{id}'"))),
    }
}

async fn new_registration_token(app: &App, host_id: &str) -> ApiResult<(String, i64)> {
    let token = format!("wrh_{}", ids::hex(24));
    let expires = now() + REGISTRATION_TTL_SECS;
    app.store
        .set_registration_token(host_id, &sha256_hex(&token), expires)
        .await?;
    Ok((token, expires))
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body(content = CreateHost, description = "All fields optional"), responses((status = 201, description = "The host, with `registration_token` (one use, 1 hour)", body = NewHost), (status = 403, description = "Shared hosts: platform admins only", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// POST /v1/hosts: a host record and its one-time registration token.
pub(super) async fn create(
    State(app): State<App>,
    caller: Caller,
    OptionalJson(r): OptionalJson<CreateHost>,
) -> ApiResult<(StatusCode, Json<NewHost>)> {
    if r.team_owned {
        caller.require_team_admin()?;
    } else if !caller.is_admin {
        return Err(ApiError::forbidden(
            "only platform admins add shared hosts; add your team's own with {\"team_owned\": true}",
        ));
    }
    check_tags("tags", &r.tags)?;
    let h = Host {
        id: ids::new("host"),
        name: r.name.unwrap_or_else(|| "host".into()),
        status: crate::host_status::HostStatus::Pending,
        kind: "registered".into(),
        created_at: now(),
        team_id: if r.team_owned {
            caller.team_id.clone()
        } else {
            String::new()
        },
        tags: r.tags,
        ..Default::default()
    };
    app.store.insert_host(&h).await?;
    let (token, expires) = new_registration_token(&app, &h.id).await?;
    app.store
        .audit(&caller.team_id, &caller.actor, "host.create", &h.id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewHost {
            host: host_view(&h, 0),
            registration_token: token,
            registration_expires_at: rfc3339(expires),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", responses((status = 200, description = "Every host (platform admins) or the team's own", body = [HostView])), security(("api_key" = []), ("bearer" = [])))]
/// GET /v1/hosts: every host for platform admins, else the team's own.
pub(super) async fn list(State(app): State<App>, caller: Caller) -> ApiResult<Json<Vec<HostView>>> {
    let alloc = app.store.allocations().await?;
    let hosts = app
        .store
        .hosts()
        .await?
        .iter()
        .filter(|h| caller.is_admin || (!h.team_id.is_empty() && h.team_id == caller.team_id))
        .map(|h| host_view(h, alloc.get(&h.id).map_or(0, |a| a.sandboxes)))
        .collect();
    Ok(Json(hosts))
}

#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path, description = "Host id")), responses((status = 200, description = "The host", body = HostView), (status = 404, description = "No such host you manage", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// GET /v1/hosts/{id}.
pub(super) async fn get_one(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostView>> {
    let h = managed(&app, &caller, &id).await?;
    let n = app.store.allocated_on(&h.id).await?.sandboxes;
    Ok(Json(host_view(&h, n)))
}

#[utoipa::path(put, path = "/v1/hosts/{id}/tags", tag = "hosts", params(("id" = String, Path, description = "Host id")), request_body = Tags, responses((status = 200, description = "The host with its tags", body = HostView), (status = 400, description = "Bad tag", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// PUT /v1/hosts/{id}/tags.
pub(super) async fn set_tags(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<Tags>,
) -> ApiResult<Json<HostView>> {
    let mut h = managed(&app, &caller, &id).await?;
    check_tags("tags", &r.tags)?;
    h.tags = r.tags;
    app.store.update_host(&h).await?;
    let n = app.store.allocated_on(&h.id).await?.sandboxes;
    Ok(Json(host_view(&h, n)))
}

#[utoipa::path(post, path = "/v1/hosts/{id}/token", tag = "hosts", params(("id" = String, Path, description = "Host id")), responses((status = 200, description = "A new `registration_token`; the old one is dead", body = RegistrationToken)), security(("api_key" = []), ("bearer" = [])))]
/// POST /v1/hosts/{id}/token: a new registration token (the old one dies).
pub(super) async fn regenerate(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RegistrationToken>> {
    let h = managed(&app, &caller, &id).await?;
    let (token, expires) = new_registration_token(&app, &h.id).await?;
    app.store
        .audit(&caller.team_id, &caller.actor, "host.token", &h.id)
        .await?;
    Ok(Json(RegistrationToken {
        id: h.id,
        registration_token: token,
        registration_expires_at: rfc3339(expires),
    }))
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = String, Path, description = "Host id"), ("force" = Option<bool>, Query, description = "Destroy its sandboxes and stop its agent")), responses((status = 204, description = "Deleted"), (status = 409, description = "Live sandboxes; their ids in `error.sandbox_ids`", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// DELETE /v1/hosts/{id}: 409 with the ids of its live sandboxes, unless
/// `?force=true`, which destroys them, stops the agent and revokes its
/// credentials.
pub(super) async fn delete(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Response> {
    let h = managed(&app, &caller, &id).await?;
    if h.id == crate::hosts::LOCAL_HOST_ID {
        return Err(ApiError::conflict(
            "host_is_local",
            format!(
                "{id} is the agent inside this `wrenn up` process; stop `wrenn up` (Ctrl-C) to take it down"
            ),
        ));
    }
    let live = app.store.sandboxes_on_host(&h.id).await?;
    if !live.is_empty() && !q.force {
        let ids: Vec<String> = live.iter().map(|s| s.id.clone()).collect();
        let body = ErrorBody {
            error: ErrorDetail {
                code: "host_has_sandboxes".into(),
                message: format!(
                    "host {id} has {} live sandboxes; destroy them first or delete with ?force=true",
                    ids.len()
                ),
                sandbox_ids: Some(ids),
            },
        };
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    for s in live {
        let sid = s.id.clone();
        if let Err(e) = sandboxes::destroy(&app, s.clone(), &caller.actor).await {
            // The host may be gone: the sandbox is gone with it.
            tracing::warn!(sandbox = %sid, "destroying on host delete: {e}");
            let mut s = s;
            s.state = SandboxState::Stopped;
            app.store.update_sandbox(&s).await?;
        }
    }
    app.store.revoke_host_tokens(&h.id).await?;
    // Forced: the agent stops now. Otherwise (no sandboxes) its next
    // heartbeat hears 404, and it forgets its credentials and stops.
    if q.force && h.status == crate::host_status::HostStatus::Online && !h.address.is_empty() {
        if let Ok(client) = app.hosts.client(&h).await {
            let _ = client.terminate(pb::TerminateRequest::default()).await;
        }
    }
    app.store.delete_host(&h.id).await?;
    app.hosts.evict(&h.id);
    app.store
        .audit(&caller.team_id, &caller.actor, "host.delete", &h.id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- the agent's side

/// What an agent may report of itself: a runtime name and its templates,
/// within bounds (a host is not trusted with unbounded rows).
fn check_report(runtime: &str, templates: &[String]) -> ApiResult<()> {
    let name_ok = |n: &str| !n.is_empty() && n.len() <= 256 && !n.contains(['\0', '\n']);
    if runtime.len() > 64 || templates.len() > 4096 || !templates.iter().all(|t| name_ok(t)) {
        return Err(ApiError::bad_request(
            "runtime: at most 64 characters; templates: at most 4096 names of 1-256 characters",
        ));
    }
    Ok(())
}

/// A fresh host JWT and refresh token (stored hashed).
async fn credentials(app: &App, host_id: &str) -> ApiResult<Credentials> {
    let (jwt, jwt_expires) = app.jwt.issue_host(host_id);
    let refresh = format!("wrr_{}", ids::hex(32));
    let t = HostToken {
        id: ids::new("htk"),
        host_id: host_id.to_string(),
        expires_at: now() + REFRESH_TTL_SECS,
        revoked_at: 0,
    };
    app.store
        .insert_host_token(&t, &sha256_hex(&refresh))
        .await?;
    Ok(Credentials {
        host_id: host_id.to_string(),
        host_jwt: jwt,
        host_jwt_expires_at: jwt_expires,
        refresh_token: refresh,
        refresh_expires_at: t.expires_at,
        heartbeat_interval_sec: app.heartbeat_interval.as_secs(),
    })
}

#[utoipa::path(post, path = "/v1/hosts/register", tag = "hosts", request_body = Register, responses((status = 201, description = "`host_id`, `host_jwt` (7 days), `refresh_token` (60 days), `heartbeat_interval_sec`", body = Credentials), (status = 401, description = "Token unknown, used or expired", body = ErrorBody)))]
/// POST /v1/hosts/register: the agent trades a registration token (and its
/// specs and address) for its credentials.
pub(super) async fn register(
    State(app): State<App>,
    ApiJson(r): ApiJson<Register>,
) -> ApiResult<(StatusCode, Json<Credentials>)> {
    if let Err(e) = crate::hosts::parse_address(&r.address) {
        return Err(ApiError::bad_request(format!("address: {e}")));
    }
    if r.agent_token.len() < 16
        || r.agent_token.len() > 512
        || !r.agent_token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "agent_token: 16 to 512 printable ASCII characters",
        ));
    }
    let Some(mut h) = app
        .store
        .take_registration_token(&sha256_hex(r.token.trim()))
        .await?
    else {
        return Err(ApiError::unauthorized(
            "registration token unknown, used or expired; get a new one with POST /v1/hosts/{id}/token",
        ));
    };
    if !h.team_id.is_empty() {
        // A team's host: the control plane must be allowed to call it. (The
        // token is spent either way; the team admin asks for a new one.)
        if let Err(e) = app.hosts.policy.resolve(&r.address, true).await {
            return Err(ApiError::bad_request(format!(
                "address: {e}; get a new registration token with POST /v1/hosts/{{id}}/token and register again"
            )));
        }
    }
    h.address = r.address;
    h.token = r.agent_token;
    h.arch = r.arch;
    h.cpu_count = r.cpu_count;
    h.memory_mb = r.memory_mb;
    h.disk_mb = r.disk_mb;
    if let (Some(runtime), Some(templates)) = (r.runtime, r.templates) {
        check_report(&runtime, &templates)?;
        app.store.record_reported_templates(&templates).await?;
        h.runtime = runtime;
        h.templates = Some(templates);
    }
    h.status = crate::host_status::HostStatus::Online;
    h.last_seen_at = now();
    app.store.update_host(&h).await?;
    // A host registering again starts over: old refresh tokens die.
    app.store.revoke_host_tokens(&h.id).await?;
    app.hosts.evict(&h.id);
    let creds = credentials(&app, &h.id).await?;
    tracing::info!(host = %h.id, address = %h.address, "host registered");
    Ok((StatusCode::CREATED, Json(creds)))
}

#[utoipa::path(post, path = "/v1/hosts/refresh", tag = "hosts", request_body = Refresh, responses((status = 200, description = "New credentials; the old refresh token is revoked", body = Credentials), (status = 401, description = "Token unknown, used, revoked or expired", body = ErrorBody), (status = 404, description = "The host was deleted", body = ErrorBody)))]
/// POST /v1/hosts/refresh: a new JWT and refresh token for a valid refresh
/// token, which is revoked only after the new one is stored.
pub(super) async fn refresh(
    State(app): State<App>,
    ApiJson(r): ApiJson<Refresh>,
) -> ApiResult<Json<Credentials>> {
    let old = app
        .store
        .host_token(&sha256_hex(r.refresh_token.trim()))
        .await?;
    let Some(old) = old.filter(|t| t.revoked_at == 0 && t.expires_at > now()) else {
        return Err(ApiError::unauthorized(
            "refresh token unknown, revoked or expired; register the host again",
        ));
    };
    if app.store.host(&old.host_id).await?.is_none() {
        return Err(ApiError::not_found(format!("host '{}'", old.host_id)));
    }
    let creds = credentials(&app, &old.host_id).await?;
    if std::env::var_os("WRENN_FAULT_CRASH_AFTER_REFRESH_ISSUE").is_some() {
        // Fault injection for the rotation test: die between issue and revoke.
        tracing::error!("fault injection: aborting between issue and revoke");
        std::process::abort();
    }
    app.store.revoke_host_token(&old.id).await?;
    Ok(Json(creds))
}

/// The host a request's `Authorization: Bearer <host JWT>` names.
fn host_of(app: &App, headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| app.jwt.verify_host(t.trim()))
        .ok_or_else(|| ApiError::unauthorized("missing, invalid or expired host token; refresh it"))
}

#[utoipa::path(post, path = "/v1/hosts/heartbeat", tag = "hosts", request_body(content = Heartbeat, description = "Optional: what the host has now"), responses((status = 200, description = "Seen", body = Seen), (status = 401, description = "Host JWT missing, invalid or expired: refresh", body = ErrorBody), (status = 404, description = "The host was deleted: forget the credentials", body = ErrorBody)), security(("bearer" = [])))]
/// POST /v1/hosts/heartbeat: the host is alive. 404 once it is deleted.
pub(super) async fn heartbeat(
    State(app): State<App>,
    headers: HeaderMap,
    raw: axum::body::Bytes,
) -> ApiResult<Json<Seen>> {
    let id = host_of(&app, &headers)?;
    let r: Heartbeat = super::optional_json(&raw)?;
    let report = match (&r.runtime, &r.templates) {
        (Some(runtime), Some(templates)) => {
            check_report(runtime, templates)?;
            app.store.record_reported_templates(templates).await?;
            Some((runtime.as_str(), templates.as_slice()))
        }
        _ => None,
    };
    // The common case, an online host, costs one statement (and one per
    // template it reports, each a no-op once the catalog has it).
    if !app.store.online_host_seen(&id, report).await? {
        let Some(mut h) = app.store.host(&id).await? else {
            return Err(ApiError::not_found(format!("host '{id}'")));
        };
        app.store.host_seen(&id).await?;
        app.store.online_host_seen(&id, report).await?;
        h.status = crate::host_status::HostStatus::Online;
        tracing::info!(host = %id, "host is online again; reconciling it");
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::reconcile::host_pass(&app, &h).await {
                tracing::warn!(host = %h.id, "reconciling: {e}");
            }
        });
    }
    Ok(Json(Seen {
        ok: true,
        heartbeat_interval_sec: app.heartbeat_interval.as_secs(),
    }))
}
