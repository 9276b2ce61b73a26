//! Sandboxes (also served as `/v1/capsules`): lifecycle, exec, processes,
//! files, metrics, templates and the event stream.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use wrenn_protocol::hostagent::v1::{self as pb, exec_event};

use super::{ApiJson, OptionalJson, rfc3339};
use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::hosts::{AgentClient, Candidate, Demand};
use crate::ids;
use crate::store::{Sandbox, now};

/// The routes under `/v1/sandboxes` and `/v1/capsules`.
pub(super) fn routes() -> axum::Router<App> {
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

/// A sandbox as the API shows it (the `Capsule` of the Wrenn SDK).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SandboxView {
    /// `sb-…`.
    pub id: String,
    /// pending, starting, running, paused, stopped, missing or error.
    pub status: String,
    /// Template.
    pub template: String,
    /// CPUs.
    pub vcpus: i64,
    /// Memory in MiB.
    pub memory_mb: i64,
    /// Disk in MiB.
    pub disk_size_mb: i64,
    /// Idle timeout in seconds; 0 = none.
    pub timeout_sec: i64,
    /// Whether egress is allowed.
    pub allow_internet_access: bool,
    /// Labels given at creation.
    pub metadata: HashMap<String, String>,
    /// Host it runs on.
    pub host_id: String,
    /// Why it is in `error`.
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub last_active_at: Option<String>,
    /// RFC 3339.
    pub last_updated: Option<String>,
    /// Ports anyone may reach through the proxy, without credentials.
    pub public_ports: Vec<u16>,
    /// Opens every port through the proxy (`e2b-traffic-access-token`).
    pub traffic_token: String,
    /// Disk in use, MiB (on GET of one running sandbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_used_mb: Option<u64>,
}

/// The view of a stored sandbox.
pub fn sandbox_view(s: &Sandbox) -> SandboxView {
    SandboxView {
        id: s.id.clone(),
        status: s.state.clone(),
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
        disk_used_mb: None,
    }
}

/// The sandbox as JSON.
pub fn sandbox_json(s: &Sandbox) -> Value {
    serde_json::to_value(sandbox_view(s)).expect("view serializes")
}

pub(super) fn emit(app: &App, team: &str, event: &str, s: &Sandbox) {
    let _ = app.events.send((team.to_string(), json!({ "event": event, "capsule_id": s.id, "status": s.state, "timestamp": rfc3339(now()) })));
}

/// The caller's sandbox, or 404 (also for another team's).
pub(super) async fn find(app: &App, caller: &Caller, id: &str) -> ApiResult<Sandbox> {
    app.store
        .sandbox(&caller.team_id, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("sandbox '{id}'")))
}

pub(super) async fn agent_for(app: &App, s: &Sandbox) -> ApiResult<AgentClient> {
    let host = app
        .hosts
        .row(&app.store, &s.host_id)
        .await?
        .ok_or_else(|| {
            ApiError::unavailable(
                "host_unavailable",
                format!("host '{}' of sandbox {} is gone", s.host_id, s.id),
            )
        })?;
    Ok(app.hosts.client(&host).await?)
}

/// The caller's running sandbox and its agent; 409 if not running.
async fn running(app: &App, caller: &Caller, id: &str) -> ApiResult<(Sandbox, AgentClient)> {
    let s = find(app, caller, id).await?;
    if s.state != "running" {
        return Err(ApiError::conflict(
            "invalid_state",
            format!(
                "sandbox {id} is {}; it must be running (resume it if paused)",
                s.state
            ),
        ));
    }
    let agent = agent_for(app, &s).await?;
    Ok((s, agent))
}

#[derive(Deserialize, utoipa::ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSandboxReq {
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    vcpus: Option<u32>,
    #[serde(default)]
    memory_mb: Option<u32>,
    #[serde(default)]
    disk_size_mb: Option<u32>,
    #[serde(default)]
    timeout_sec: Option<u32>,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
    #[serde(default)]
    envs: Option<HashMap<String, String>>,
    #[serde(default)]
    allow_internet_access: Option<bool>,
    /// Ports reachable through the proxy without credentials.
    #[serde(default)]
    public_ports: Option<Vec<u16>>,
    /// Only hosts with all these tags.
    #[serde(default)]
    host_tags: Option<Vec<String>>,
}

/// Creates a sandbox on a host the scheduler picks: recorded `pending`,
/// then `running` or `error` with the agent's message.
pub async fn create_sandbox(app: &App, caller: &Caller, r: CreateReqPublic) -> ApiResult<Sandbox> {
    // How long each step took, logged at debug level.
    let started = std::time::Instant::now();
    let mut steps: Vec<(&str, u128)> = Vec::with_capacity(5);
    let mut step = |name: &'static str| steps.push((name, started.elapsed().as_micros()));
    let alloc = app.store.allocations().await?;
    let tagged: Vec<_> = app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.team_id.is_empty() || h.team_id == caller.team_id)
        .filter(|h| r.host_tags.iter().all(|t| h.tags.contains(t)))
        .collect();
    if tagged.is_empty() && !r.host_tags.is_empty() {
        // Not a passing shortage: no host, up or down, would ever do.
        return Err(ApiError::bad_request(format!(
            "host_tags: no host has all of the tags {:?}; tag a host (PUT /v1/hosts/{{id}}/tags) or drop host_tags",
            r.host_tags
        )));
    }
    // A sandbox bigger than every host will never fit: the request is
    // wrong, not the moment.
    let demand = Demand {
        vcpus: i64::from(r.vcpus),
        memory_mb: i64::from(r.memory_mb),
        disk_mb: i64::from(r.disk_size_mb),
    };
    if !tagged.is_empty()
        && !tagged
            .iter()
            .any(|h| crate::hosts::could_ever_fit(h, &demand))
    {
        let most = |i: usize| {
            tagged
                .iter()
                .map(|h| {
                    let c = crate::hosts::capacity(h);
                    [c.0, c.1, c.2][i]
                })
                .max()
                .unwrap_or(0)
        };
        return Err(ApiError::bad_request(format!(
            "no host is that large: the largest has {} vCPUs, {} MiB of memory and {} MiB of disk (asked: {}, {}, {}); ask for less",
            most(0),
            most(1),
            most(2),
            r.vcpus,
            r.memory_mb,
            r.disk_size_mb
        )));
    }
    let candidates: Vec<Candidate> = tagged
        .into_iter()
        .filter(|h| h.status == "online")
        .map(|h| Candidate {
            allocated: alloc.get(&h.id).copied().unwrap_or_default(),
            host: h,
        })
        .collect();
    let Some(host) = app.scheduler.pick(&candidates, &demand).cloned() else {
        let why = if candidates.is_empty() && !r.host_tags.is_empty() {
            format!(
                "no host with the tags {:?} is online; start one, tag another (PUT /v1/hosts/{{id}}/tags) or drop host_tags",
                r.host_tags
            )
        } else if candidates.is_empty() {
            "no host is online to run the sandbox; start an agent or register a host".to_string()
        } else {
            "no online host has room for the sandbox (memory or disk); destroy sandboxes, add a host, or let hosts promise more than they have (--memory-overcommit, --disk-overcommit)".to_string()
        };
        return Err(ApiError::unavailable("no_hosts_available", why));
    };
    let mut s = Sandbox {
        id: ids::new("sb"),
        team_id: caller.team_id.clone(),
        host_id: host.id.clone(),
        template: r.template,
        state: "pending".into(),
        vcpus: i64::from(r.vcpus),
        memory_mb: i64::from(r.memory_mb),
        disk_size_mb: i64::from(r.disk_size_mb),
        timeout_sec: i64::from(r.timeout_sec),
        allow_internet_access: r.allow_internet_access,
        metadata: r.metadata.clone(),
        created_at: now(),
        traffic_token: ids::hex(16),
        auto_pause: r.auto_pause,
        public_ports: r.public_ports.clone(),
        ..Default::default()
    };
    step("placed");
    app.store.insert_sandbox(&s).await?;
    step("inserted");
    let req = pb::CreateSandboxRequest {
        sandbox_id: s.id.clone(),
        template: s.template.clone(),
        vcpus: r.vcpus,
        memory_mb: r.memory_mb,
        disk_size_mb: r.disk_size_mb,
        timeout_sec: r.timeout_sec,
        allow_internet_access: r.allow_internet_access,
        envs: r.envs.into_iter().collect(),
        metadata: r.metadata.into_iter().collect(),
        auto_pause: r.auto_pause,
        ..Default::default()
    };
    let client = match app.hosts.client(&host).await {
        Ok(c) => c,
        Err(e) => {
            let err = ApiError::from(e);
            s.state = "error".into();
            s.error = err.message.clone();
            app.store.update_sandbox(&s).await?;
            return Err(err);
        }
    };
    match client.create_sandbox(req).await {
        Ok(resp) => {
            let info = resp.into_owned();
            s.state = "running".into();
            s.envd_address = info.envd_address;
            s.envd_token = info.envd_access_token;
            s.started_at = now();
            s.last_active_at = s.started_at;
            step("agent");
            app.store.update_sandbox(&s).await?;
            step("updated");
            app.store
                .audit(&caller.team_id, &caller.actor, "sandbox.create", &s.id)
                .await?;
            step("audited");
            tracing::debug!(sandbox = %s.id, ?steps, "created (µs since the start, per step)");
            emit(app, &caller.team_id, "capsule.create", &s);
            Ok(s)
        }
        Err(e) => {
            let err = ApiError::from(e);
            if err.status.is_client_error() {
                // The request was wrong (an unknown template, limits the
                // host cannot give): nothing exists, nothing to list.
                app.store.delete_sandbox(&s.id).await?;
            } else {
                s.state = "error".into();
                s.error = err.message.clone();
                app.store.update_sandbox(&s).await?;
            }
            Err(err)
        }
    }
}

/// A create request with defaults applied.
pub struct CreateReqPublic {
    /// Template.
    pub template: String,
    /// CPUs.
    pub vcpus: u32,
    /// Memory.
    pub memory_mb: u32,
    /// Disk.
    pub disk_size_mb: u32,
    /// Idle timeout; 0 = none.
    pub timeout_sec: u32,
    /// Labels.
    pub metadata: HashMap<String, String>,
    /// Environment.
    pub envs: HashMap<String, String>,
    /// Egress.
    pub allow_internet_access: bool,
    /// Pause rather than destroy at the timeout.
    pub auto_pause: bool,
    /// Ports open to anyone through the proxy.
    pub public_ports: Vec<u16>,
    /// Only hosts with all these tags.
    pub host_tags: Vec<String>,
}

pub(super) fn check_range(name: &str, v: u32, lo: u32, hi: u32) -> ApiResult<u32> {
    if v < lo || v > hi {
        return Err(ApiError::bad_request(format!(
            "{name}: must be between {lo} and {hi}, got {v}"
        )));
    }
    Ok(v)
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body(content = CreateSandboxReq, description = "All fields optional"), responses((status = 201, description = "Running", body = SandboxView), (status = 400, description = "Bad input", body = ErrorBody), (status = 503, description = "No host available", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn create(
    State(app): State<App>,
    caller: Caller,
    OptionalJson(r): OptionalJson<CreateSandboxReq>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let metadata = r.metadata.unwrap_or_default();
    if metadata.len() > 64
        || metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 1024)
    {
        return Err(ApiError::bad_request(
            "metadata: at most 64 keys, keys 1-128 and values up to 1024 characters",
        ));
    }
    let public = CreateReqPublic {
        template: r
            .template
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "base".into()),
        vcpus: check_range("vcpus", r.vcpus.unwrap_or(1), 1, 64)?,
        memory_mb: check_range("memory_mb", r.memory_mb.unwrap_or(512), 32, 1 << 20)?,
        disk_size_mb: check_range("disk_size_mb", r.disk_size_mb.unwrap_or(1024), 64, 1 << 22)?,
        timeout_sec: check_range("timeout_sec", r.timeout_sec.unwrap_or(300), 0, 30 * 86400)?,
        metadata,
        envs: r.envs.unwrap_or_default(),
        allow_internet_access: r.allow_internet_access.unwrap_or(true),
        auto_pause: false,
        public_ports: check_ports(r.public_ports.unwrap_or_default())?,
        host_tags: r.host_tags.unwrap_or_default(),
    };
    super::hosts::check_tags("host_tags", &public.host_tags)?;
    let s = create_sandbox(&app, &caller, public).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&s))))
}

fn check_ports(mut ports: Vec<u16>) -> ApiResult<Vec<u16>> {
    if ports.contains(&0) || ports.len() > 64 {
        return Err(ApiError::bad_request(
            "public_ports: up to 64 port numbers from 1 to 65535",
        ));
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PublicPortsReq {
    /// The ports anyone may reach; the others need credentials.
    ports: Vec<u16>,
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/public-ports", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PublicPortsReq, responses((status = 200, description = "The sandbox with its new public ports", body = SandboxView), (status = 400, description = "Bad port", body = ErrorBody), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn set_public_ports(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PublicPortsReq>,
) -> ApiResult<Json<SandboxView>> {
    let mut s = find(&app, &caller, &id).await?;
    s.public_ports = check_ports(r.ports)?;
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
) -> ApiResult<Json<Value>> {
    let state = q.get("state").map(String::as_str);
    if let Some(st) = state {
        if ![
            "pending", "starting", "running", "paused", "stopped", "missing", "error",
        ]
        .contains(&st)
        {
            return Err(ApiError::bad_request(format!(
                "state: unknown state '{st}'"
            )));
        }
    }
    let filters: Vec<(&str, &str)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())))
        .collect();
    let items: Vec<Value> = app
        .store
        .sandboxes(&caller.team_id, state)
        .await?
        .iter()
        .filter(|s| {
            filters
                .iter()
                .all(|(k, v)| s.metadata.get(*k).map(String::as_str) == Some(*v))
        })
        .map(sandbox_json)
        .collect();
    Ok(Json(Value::Array(items)))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, description = "The sandbox, with disk_used_mb while it runs", body = SandboxView), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn get_one(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SandboxView>> {
    let s = find(&app, &caller, &id).await?;
    let mut view = sandbox_view(&s);
    if s.state == "running" || s.state == "paused" {
        view.disk_used_mb = disk_used(&app, &s).await.map(|bytes| bytes >> 20);
    }
    Ok(Json(view))
}

/// Disk in use, from a cache refreshed from the agent at most once a second.
async fn disk_used(app: &App, s: &Sandbox) -> Option<u64> {
    let fresh = std::time::Duration::from_secs(1);
    if let Some((at, v)) = app.disk_used.lock().get(&s.id) {
        if at.elapsed() < fresh {
            return Some(*v);
        }
    }
    let agent = agent_for(app, s).await.ok()?;
    let m = agent
        .get_sandbox_metrics(pb::SandboxRef {
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

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 204, description = "Destroyed"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn destroy(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = find(&app, &caller, &id).await?;
    destroy_sandbox(&app, s, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Destroys `s` on its agent (gone there already is fine) and records it
/// `stopped`; 404 if it already is. A `missing` sandbox (host away) is
/// recorded stopped at once and destroyed when its host is back.
pub async fn destroy_sandbox(app: &App, mut s: Sandbox, actor: &str) -> ApiResult<()> {
    let id = s.id.clone();
    if s.state == "stopped" {
        return Err(ApiError::not_found(format!("sandbox '{id}'")));
    }
    if let Ok(agent) = agent_for(app, &s).await {
        match agent
            .destroy_sandbox(pb::SandboxRef {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == connectrpc::ErrorCode::NotFound => {}
            Err(e) if s.state == "error" || s.state == "pending" => {
                tracing::warn!("destroying {id}: {e:?}")
            }
            // Its host is away: recorded stopped now, and destroyed by the
            // reconciler (as an orphan) when the host answers again.
            Err(e) if s.state == "missing" => {
                tracing::warn!("destroying {id} while its host is away: {e:?}")
            }
            Err(e) => return Err(e.into()),
        }
    }
    s.state = "stopped".into();
    app.proxy_cache.forget(&id);
    app.store.update_sandbox(&s).await?;
    app.store
        .audit(&s.team_id, actor, "sandbox.destroy", &id)
        .await?;
    emit(app, &s.team_id, "capsule.destroy", &s);
    Ok(())
}

async fn set_paused(app: App, caller: Caller, id: String, pause: bool) -> ApiResult<Json<Value>> {
    let s = find(&app, &caller, &id).await?;
    let s = apply_pause(&app, s, &caller.actor, pause).await?;
    Ok(Json(sandbox_json(&s)))
}

/// Pauses or resumes `s` on its agent and records it; 409 unless it is
/// running (to pause) or paused (to resume).
pub async fn apply_pause(
    app: &App,
    mut s: Sandbox,
    actor: &str,
    pause: bool,
) -> ApiResult<Sandbox> {
    let id = s.id.clone();
    let (from, to, action) = if pause {
        ("running", "paused", "pause")
    } else {
        ("paused", "running", "resume")
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
    let r = pb::SandboxRef {
        sandbox_id: id.clone(),
        ..Default::default()
    };
    app.proxy_cache.forget(&id);
    if pause {
        agent.pause_sandbox(r).await?;
    } else {
        agent.resume_sandbox(r).await?;
    }
    s.state = to.into();
    s.last_active_at = now();
    app.store.update_sandbox(&s).await?;
    app.store
        .audit(&s.team_id, actor, &format!("sandbox.{action}"), &id)
        .await?;
    emit(app, &s.team_id, &format!("capsule.{action}"), &s);
    Ok(s)
}

/// Resumes a paused sandbox because traffic arrived for it; a concurrent
/// resume that won the race counts as success.
pub async fn resume_for_traffic(app: &App, s: Sandbox) -> ApiResult<Sandbox> {
    let id = s.id.clone();
    match apply_pause(app, s, "proxy", false).await {
        Ok(s) => Ok(s),
        Err(e) => match app.store.sandbox_by_id(&id).await? {
            Some(now) if now.state == "running" => Ok(now),
            _ => Err(e),
        },
    }
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, body = SandboxView, description = "Paused"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn pause(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(app, caller, id, true).await
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, body = SandboxView, description = "Running again"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn resume(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_paused(app, caller, id, false).await
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/ping", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 204, description = "Idle timer restarted"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn ping(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (mut s, agent) = running(&app, &caller, &id).await?;
    agent
        .ping(pb::PingRequest {
            sandbox_id: id,
            ..Default::default()
        })
        .await?;
    s.last_active_at = now();
    app.store.update_sandbox(&s).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/metrics", tag = "sandboxes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, description = "CPU, memory, disk and pids"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn metrics(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = find(&app, &caller, &id).await?;
    let agent = agent_for(&app, &s).await?;
    let m = agent
        .get_sandbox_metrics(pb::SandboxRef {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_owned();
    Ok(Json(json!({
        "sandbox_id": id,
        "points": [{
            "timestamp_unix": m.timestamp,
            "cpu_pct": m.cpu_used_pct,
            "mem_bytes": m.memory_bytes,
            "mem_limit_bytes": m.memory_limit_bytes,
            "disk_bytes": m.disk_used_bytes,
            "disk_limit_bytes": m.disk_limit_bytes,
            "pids": m.pids,
        }],
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExecReq {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: HashMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    timeout_sec: Option<u32>,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    tag: Option<String>,
    /// Most bytes of stdout (and of stderr) to return; the rest is dropped
    /// and `stdout_truncated`/`stderr_truncated` say so. Default 16 MiB,
    /// at most 64 MiB.
    #[serde(default)]
    max_output_bytes: Option<u64>,
}

fn text_or_base64(stdout: Vec<u8>, stderr: Vec<u8>) -> (String, String, &'static str) {
    match (String::from_utf8(stdout), String::from_utf8(stderr)) {
        (Ok(o), Ok(e)) => (o, e, "utf-8"),
        (o, e) => {
            let b = |r: Result<String, std::string::FromUtf8Error>| match r {
                Ok(s) => s.into_bytes(),
                Err(e) => e.into_bytes(),
            };
            let enc = base64::engine::general_purpose::STANDARD;
            (enc.encode(b(o)), enc.encode(b(e)), "base64")
        }
    }
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "processes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = ExecReq, responses((status = 200, description = "stdout, stderr (utf-8 or base64 per `encoding`; each at most `max_output_bytes`, 16 MiB by default, with `stdout_truncated`/`stderr_truncated` set when more was dropped), exit_code, duration_ms; or pid and tag when background"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Wrong state (e.g. paused)", body = ErrorBody), (status = 504, description = "timeout_sec passed; the command was killed", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn exec(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<ExecReq>,
) -> ApiResult<Response> {
    if r.cmd.is_empty() {
        return Err(ApiError::bad_request("cmd: must not be empty"));
    }
    let (s, agent) = running(&app, &caller, &id).await?;
    let timeout_sec = r.timeout_sec.unwrap_or(if r.background { 0 } else { 60 });
    let req = pb::ExecRequest {
        sandbox_id: id.clone(),
        cmd: r.cmd.clone(),
        args: r.args.clone(),
        envs: r.envs.into_iter().collect(),
        cwd: r.cwd.unwrap_or_default(),
        timeout_sec,
        background: r.background,
        tag: r.tag.clone().unwrap_or_default(),
        close_stdin: true,
        ..Default::default()
    };
    if r.background {
        let out = agent.exec(req).await?.into_owned();
        touch(&app, &s);
        return Ok(Json(
            json!({ "sandbox_id": id, "pid": out.pid, "tag": r.tag.unwrap_or_default() }),
        )
        .into_response());
    }
    let limit = wrenn_protocol::hostagent::exec_output_limit(r.max_output_bytes.unwrap_or(0));
    let started = std::time::Instant::now();
    let mut stream = agent.exec_stream(req).await?;
    // Output is kept chunk by chunk, each charged to the team's and the
    // global budget (crate::output), until the answer is sent.
    let mut held = crate::output::Held::default();
    let mut kept = [Vec::new(), Vec::new()];
    let mut truncated = [false, false];
    let mut exit_code = -1;
    loop {
        let ev = match stream.message::<pb::ExecEvent>().await {
            Ok(Some(m)) => m.to_owned_message().event,
            Ok(None) => break,
            Err(e) if e.code == connectrpc::ErrorCode::DeadlineExceeded => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "the command did not finish within timeout_sec={timeout_sec}; it was killed"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let (i, bytes) = match ev {
            Some(exec_event::Event::Stdout(b)) | Some(exec_event::Event::Pty(b)) => (0, b),
            Some(exec_event::Event::Stderr(b)) => (1, b),
            Some(exec_event::Event::End(e)) => {
                exit_code = e.exit_code;
                continue;
            }
            _ => continue,
        };
        let take = bytes.len().min(limit - kept[i].len());
        if take > 0
            && app
                .output
                .try_charge(&caller.team_id, &bytes[..take], &mut held)
        {
            kept[i].extend_from_slice(&bytes[..take]);
        } else if take > 0 {
            truncated[i] = true;
        }
        truncated[i] |= take < bytes.len();
    }
    touch(&app, &s);
    let [stdout, stderr] = kept;
    let (stdout, stderr, encoding) = text_or_base64(stdout, stderr);
    let cmd = std::iter::once(r.cmd)
        .chain(r.args)
        .collect::<Vec<_>>()
        .join(" ");
    let body = json!({
        "sandbox_id": id, "cmd": cmd, "stdout": stdout, "stderr": stderr,
        "exit_code": exit_code, "duration_ms": started.elapsed().as_millis() as u64, "encoding": encoding,
        "stdout_truncated": truncated[0], "stderr_truncated": truncated[1],
    });
    // Serialized while the budget is held: the body is the largest copy.
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    drop(body);
    let resp = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response();
    drop(held);
    Ok(resp)
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "processes", params(("id" = String, Path, description = "Sandbox id (sb-…)")), responses((status = 200, description = "Running processes"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn processes(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (_, agent) = running(&app, &caller, &id).await?;
    let list = agent
        .list_processes(pb::SandboxRef {
            sandbox_id: id,
            ..Default::default()
        })
        .await?
        .into_owned();
    let processes: Vec<Value> = list
        .processes
        .into_iter()
        .map(|p| json!({ "pid": p.pid, "tag": p.tag, "cmd": p.cmd, "args": p.args }))
        .collect();
    Ok(Json(json!({ "processes": processes })))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes", params(("id" = String, Path), ("pid" = u32, Path)), responses((status = 204, description = "Killed"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn kill(
    State(app): State<App>,
    caller: Caller,
    Path((id, pid)): Path<(String, u32)>,
) -> ApiResult<StatusCode> {
    let (_, agent) = running(&app, &caller, &id).await?;
    agent
        .kill_process(pb::KillProcessRequest {
            sandbox_id: id,
            pid,
            signal: 9,
            ..Default::default()
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PathReq {
    path: String,
    #[serde(default)]
    depth: Option<u32>,
}

fn check_path(p: &str) -> ApiResult<()> {
    if p.is_empty() || p.contains('\0') {
        return Err(ApiError::bad_request("path: must be a non-empty path"));
    }
    Ok(())
}

/// Records the use of `s` (read before the call) in its `last_active_at`,
/// behind the answer, and at most once a second: only the use, so a pause
/// or destroy during the call stands.
fn touch(app: &App, s: &Sandbox) {
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

/// POST files/read and files/stream/read: the file's bytes, streamed.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/read", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathReq, responses((status = 200, description = "The file's bytes (streamed)", content_type = "application/octet-stream"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn file_read(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathReq>,
) -> ApiResult<Response> {
    check_path(&r.path)?;
    let (_, agent) = running(&app, &caller, &id).await?;
    let mut stream = agent
        .read_file_stream(pb::FileRef {
            sandbox_id: id,
            path: r.path,
            ..Default::default()
        })
        .await?;
    // The first message tells a missing file from a present one.
    let first = stream.message::<pb::FileChunk>().await?;
    let head = first.map(|m| bytes::Bytes::from(m.to_owned_message().data));
    let rest = futures::stream::unfold(Some(stream), |st| async move {
        let mut s = st?;
        match s.message::<pb::FileChunk>().await {
            Ok(Some(m)) => Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from(m.to_owned_message().data)),
                Some(s),
            )),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(format!("{e:?}"))), None)),
        }
    });
    let body = futures::stream::iter(head.map(Ok)).chain(rest);
    Ok((
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

/// POST files/write and files/stream/write: multipart `path` then `file`,
/// streamed to the sandbox in chunks (a large upload never sits in memory).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/write", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body(content_type = "multipart/form-data", description = "Parts `path` then `file`; streamed, no size limit"), responses((status = 200, description = "Path and size written"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn file_write(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<Value>> {
    let (_, agent) = running(&app, &caller, &id).await?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("multipart body: {}", e.body_text()))
    };
    let mut path: Option<String> = None;
    let mut buffered: Option<Vec<u8>> = None;
    let mut written = None;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("path") => path = Some(field.text().await.map_err(bad)?),
            Some("file") => match &path {
                Some(p) => {
                    check_path(p)?;
                    let (tx, rx) = tokio::sync::mpsc::channel::<pb::WriteFileChunk>(8);
                    let first = pb::WriteFileChunk {
                        chunk: Some(
                            pb::FileRef {
                                sandbox_id: id.clone(),
                                path: p.clone(),
                                ..Default::default()
                            }
                            .into(),
                        ),
                        ..Default::default()
                    };
                    tx.send(first).await.expect("fresh channel");
                    let upload = agent
                        .write_file_stream(futures::stream::unfold(rx, |mut rx| async move {
                            rx.recv().await.map(|c| (c, rx))
                        }));
                    let feed = async {
                        while let Some(chunk) = field.chunk().await.map_err(bad)? {
                            let msg = pb::WriteFileChunk {
                                chunk: Some(pb::write_file_chunk::Chunk::Data(chunk.to_vec())),
                                ..Default::default()
                            };
                            if tx.send(msg).await.is_err() {
                                break;
                            }
                        }
                        drop(tx);
                        Ok::<_, ApiError>(())
                    };
                    let (up, fed) = tokio::join!(upload, feed);
                    fed?;
                    written = Some(up?.into_owned());
                }
                None => {
                    let mut data = Vec::new();
                    while let Some(c) = field.chunk().await.map_err(bad)? {
                        if data.len() + c.len() > 64 << 20 {
                            return Err(ApiError::new(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "too_large",
                                "send the path part before the file part for uploads over 64 MiB",
                            ));
                        }
                        data.extend_from_slice(&c);
                    }
                    buffered = Some(data);
                }
            },
            _ => {}
        }
    }
    if let (Some(p), Some(data)) = (&path, buffered) {
        check_path(p)?;
        let w = pb::WriteFileRequest {
            sandbox_id: id.clone(),
            path: p.clone(),
            content: data,
            ..Default::default()
        };
        written = Some(agent.write_file(w).await.map(|r| r.into_owned())?);
    }
    let Some(w) = written else {
        return Err(ApiError::bad_request(
            "multipart body needs a 'path' part and a 'file' part",
        ));
    };
    Ok(Json(json!({ "path": w.path, "size": w.size })))
}

fn entry_json(e: &pb::DirEntry) -> Value {
    json!({
        "name": e.name, "path": e.path, "type": e.r#type, "size": e.size, "mode": e.mode,
        "owner": e.owner, "group": e.group, "modified_at": e.modified_unix,
    })
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/list", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathReq, responses((status = 200, description = "Entries"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn file_list(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathReq>,
) -> ApiResult<Json<Value>> {
    check_path(&r.path)?;
    let (_, agent) = running(&app, &caller, &id).await?;
    let l = agent
        .list_dir(pb::ListDirRequest {
            sandbox_id: id,
            path: r.path,
            depth: r.depth.unwrap_or(1).max(1),
            ..Default::default()
        })
        .await?
        .into_owned();
    Ok(Json(
        json!({ "entries": l.entries.iter().map(entry_json).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathReq, responses((status = 200, description = "The new directory"), (status = 404, description = "No such sandbox in the team", body = ErrorBody), (status = 409, description = "Already exists", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn file_mkdir(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathReq>,
) -> ApiResult<Json<Value>> {
    check_path(&r.path)?;
    let (_, agent) = running(&app, &caller, &id).await?;
    agent
        .make_dir(pb::FileRef {
            sandbox_id: id.clone(),
            path: r.path.clone(),
            ..Default::default()
        })
        .await?;
    // Describe the new directory from its parent's listing.
    let parent = std::path::Path::new(&r.path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/".into());
    let l = agent
        .list_dir(pb::ListDirRequest {
            sandbox_id: id,
            path: parent,
            depth: 1,
            ..Default::default()
        })
        .await?
        .into_owned();
    let entry = l.entries.iter().find(|e| e.path == r.path).map(entry_json);
    Ok(Json(json!({ "entry": entry })))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/remove", tag = "files", params(("id" = String, Path, description = "Sandbox id (sb-…)")), request_body = PathReq, responses((status = 204, description = "Removed"), (status = 404, description = "No such sandbox in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn file_remove(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<PathReq>,
) -> ApiResult<StatusCode> {
    check_path(&r.path)?;
    let (_, agent) = running(&app, &caller, &id).await?;
    agent
        .remove_path(pb::FileRef {
            sandbox_id: id,
            path: r.path,
            ..Default::default()
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates", params(("name" = String, Path, description = "Template name")), responses((status = 200, description = "Removed; `deleted_on` lists the hosts"), (status = 403, description = "Not a platform admin", body = ErrorBody), (status = 404, description = "No online host has it", body = ErrorBody), (status = 409, description = "A sandbox uses it", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// DELETE /v1/templates/{name} (platform admins): removed from every
/// online host at once. 404 when no host had it; 409 when a sandbox uses it
/// somewhere (removed where it was free).
pub(super) async fn delete_template(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    if !caller.is_admin {
        return Err(ApiError::forbidden("only platform admins delete templates"));
    }
    let hosts: Vec<_> = app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == "online")
        .collect();
    let calls = hosts.iter().map(|h| {
        let (name, pool) = (name.clone(), &app.hosts);
        async move {
            let c = pool
                .client(h)
                .await
                .map_err(|e| connectrpc::ConnectError::unavailable(e.to_string()))?;
            c.delete_template(pb::DeleteTemplateRequest {
                name,
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let (mut deleted, mut in_use, mut failed) = (vec![], vec![], vec![]);
    for (h, r) in hosts.iter().zip(results) {
        match r {
            Ok(_) => deleted.push(h.id.clone()),
            Err(e) if e.code == connectrpc::ErrorCode::NotFound => {}
            Err(e) if e.code == connectrpc::ErrorCode::FailedPrecondition => {
                in_use.push(json!({ "host_id": h.id, "message": e.message }))
            }
            Err(e) => failed.push(json!({ "host_id": h.id, "message": e.message })),
        }
    }
    app.store
        .audit(&caller.team_id, &caller.actor, "template.delete", &name)
        .await?;
    if !in_use.is_empty() {
        return Err(ApiError::conflict(
            "template_in_use",
            format!(
                "template '{name}' is in use: {}; removed from {} other hosts",
                serde_json::to_string(&in_use).unwrap_or_default(),
                deleted.len()
            ),
        ));
    }
    if deleted.is_empty() && failed.is_empty() {
        return Err(ApiError::not_found(format!(
            "template '{name}' on any online host"
        )));
    }
    Ok(Json(
        json!({ "name": name, "deleted_on": deleted, "failed": failed }),
    ))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates", responses((status = 200, description = "Templates the caller's online hosts have: `[{name, type, hosts}]` (host ids for admins and the team's own hosts)")), security(("api_key" = []), ("bearer" = [])))]
/// GET /v1/templates: what the online hosts the caller can use (shared and
/// its team's) can start, each with the ids of the hosts that have it that
/// the caller may see (all for admins, else its team's own).
pub(super) async fn list_templates(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<Value>> {
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    // The hosts the caller's sandboxes can go to: shared ones and its team's.
    for h in app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == "online")
        .filter(|h| h.team_id.is_empty() || h.team_id == caller.team_id)
    {
        let Ok(client) = app.hosts.client(&h).await else {
            continue;
        };
        if let Ok(info) = client.get_host(pb::GetHostRequest::default()).await {
            // Host ids are for admins and for the team's own hosts, as
            // `GET /v1/hosts` shows them.
            let shown = caller.is_admin || !h.team_id.is_empty();
            for n in info.into_owned().templates {
                let hosts = names.entry(n).or_default();
                if shown {
                    hosts.push(h.id.clone());
                }
            }
        }
    }
    Ok(Json(json!(
        names
            .into_iter()
            .map(|(n, hosts)| json!({ "name": n, "type": "base", "hosts": hosts }))
            .collect::<Vec<_>>()
    )))
}

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

/// Streamed exec and interactive PTYs over WebSocket.
pub(super) mod ws {
    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
    use axum::extract::{Path, State};
    use axum::response::Response;
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use wrenn_protocol::hostagent::v1::{self as pb, exec_event};

    use super::running;
    use crate::App;
    use crate::auth::Caller;
    use crate::error::ApiResult;
    use crate::hosts::AgentClient;

    fn text(v: Value) -> Message {
        Message::Text(v.to_string().into())
    }

    async fn first_json(socket: &mut WebSocket) -> Option<Value> {
        while let Some(Ok(msg)) = socket.recv().await {
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
        None
    }

    /// GET /{id}/exec/stream: `{"type":"start","cmd","args"}` in; `start`,
    /// `stdout`, `stderr`, `exit` or `error` events out.
    pub async fn exec_stream(
        State(app): State<App>,
        caller: Caller,
        Path(id): Path<String>,
        upgrade: WebSocketUpgrade,
    ) -> ApiResult<Response> {
        let (_, agent) = running(&app, &caller, &id).await?;
        Ok(upgrade.on_upgrade(move |mut socket| async move {
            let Some(start) = first_json(&mut socket).await else {
                return;
            };
            let cmd = start["cmd"].as_str().unwrap_or("/bin/sh").to_string();
            let args: Vec<String> = start["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let req = pb::ExecRequest {
                sandbox_id: id,
                cmd,
                args,
                ..Default::default()
            };
            relay(agent.exec_stream(req).await, socket).await
        }))
    }

    /// Sends an agent's error as an `error` message.
    async fn send_error(socket: &mut WebSocket, e: connectrpc::ConnectError) {
        let _ = socket
            .send(text(
                json!({ "type": "error", "data": e.message.unwrap_or_default() }),
            ))
            .await;
    }

    /// Forwards an agent's exec events (or its refusal to start them) to a
    /// socket as `start`, `stdout`, `stderr`, `exit` or `error` JSON
    /// messages, then closes it.
    async fn relay(
        started: Result<
            connectrpc::client::ServerStream<
                hyper::body::Incoming,
                pb::__buffa::view::ExecEventView<'static>,
            >,
            connectrpc::ConnectError,
        >,
        mut socket: WebSocket,
    ) {
        let mut stream = match started {
            Ok(s) => s,
            Err(e) => return send_error(&mut socket, e).await,
        };
        loop {
            let ev = match stream.message::<pb::ExecEvent>().await {
                Ok(Some(m)) => m.to_owned_message().event,
                Ok(None) => break,
                Err(e) => {
                    send_error(&mut socket, e).await;
                    break;
                }
            };
            let out = match ev {
                Some(exec_event::Event::Start(s)) => json!({ "type": "start", "pid": s.pid }),
                Some(exec_event::Event::Stdout(b)) | Some(exec_event::Event::Pty(b)) => {
                    json!({ "type": "stdout", "data": String::from_utf8_lossy(&b) })
                }
                Some(exec_event::Event::Stderr(b)) => {
                    json!({ "type": "stderr", "data": String::from_utf8_lossy(&b) })
                }
                Some(exec_event::Event::End(e)) => {
                    json!({ "type": "exit", "exit_code": e.exit_code })
                }
                None => continue,
            };
            if socket.send(text(out)).await.is_err() {
                return; // the caller left; the process runs on
            }
        }
        let _ = socket.close().await;
    }

    /// GET /{id}/processes/{pid}/stream: re-attaches to a running process;
    /// the same events as exec/stream, from now on.
    pub async fn process_stream(
        State(app): State<App>,
        caller: Caller,
        Path((id, pid)): Path<(String, u32)>,
        upgrade: WebSocketUpgrade,
    ) -> ApiResult<Response> {
        let (_, agent) = running(&app, &caller, &id).await?;
        Ok(upgrade.on_upgrade(move |socket| async move {
            let started = agent
                .connect_process(pb::ProcessRef {
                    sandbox_id: id,
                    pid,
                    ..Default::default()
                })
                .await;
            relay(started, socket).await
        }))
    }

    /// GET /{id}/pty: `start` (cmd, args, cols, rows, envs, cwd) or
    /// `connect` (tag) in; binary frames are keystrokes; `resize`, `kill`.
    /// Out: `started` {pid, tag}, binary output, `exit`. The process outlives
    /// a dropped socket; `connect` with its tag re-attaches.
    pub async fn pty(
        State(app): State<App>,
        caller: Caller,
        Path(id): Path<String>,
        upgrade: WebSocketUpgrade,
    ) -> ApiResult<Response> {
        let (_, agent) = running(&app, &caller, &id).await?;
        Ok(upgrade.on_upgrade(move |socket| pty_session(agent, id, socket)))
    }

    async fn pty_session(agent: AgentClient, id: String, mut socket: WebSocket) {
        let Some(first) = first_json(&mut socket).await else {
            return;
        };
        let fail = |m: String| text(json!({ "type": "error", "data": m, "fatal": true }));
        let (stream, pid, tag) = match first["type"].as_str() {
            Some("start") => {
                let tag = format!("pty-{}", crate::ids::hex(6));
                let mut req = pb::PtyStartRequest {
                    sandbox_id: id.clone(),
                    cmd: first["cmd"].as_str().unwrap_or_default().to_string(),
                    args: first["args"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    cols: first["cols"].as_u64().unwrap_or(80) as u32,
                    rows: first["rows"].as_u64().unwrap_or(24) as u32,
                    cwd: first["cwd"].as_str().unwrap_or_default().to_string(),
                    tag: tag.clone(),
                    ..Default::default()
                };
                if let Some(envs) = first["envs"].as_object() {
                    req.envs.extend(
                        envs.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))),
                    );
                }
                let mut stream = match agent.pty_start(req).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = socket.send(fail(e.message.unwrap_or_default())).await;
                        return;
                    }
                };
                let pid = match stream.message::<pb::ExecEvent>().await {
                    Ok(Some(m)) => match m.to_owned_message().event {
                        Some(exec_event::Event::Start(s)) => s.pid,
                        _ => 0,
                    },
                    _ => 0,
                };
                (stream, pid, tag)
            }
            Some("connect") => {
                let tag = first["tag"].as_str().unwrap_or_default().to_string();
                let procs = agent
                    .list_processes(pb::SandboxRef {
                        sandbox_id: id.clone(),
                        ..Default::default()
                    })
                    .await;
                let pid = procs.ok().and_then(|p| {
                    p.into_owned()
                        .processes
                        .into_iter()
                        .find(|p| p.tag == tag)
                        .map(|p| p.pid)
                });
                let Some(pid) = pid else {
                    let _ = socket
                        .send(fail(format!(
                            "no PTY session with tag '{tag}'; it may have exited"
                        )))
                        .await;
                    return;
                };
                let mut stream = match agent
                    .connect_process(pb::ProcessRef {
                        sandbox_id: id.clone(),
                        pid,
                        ..Default::default()
                    })
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = socket.send(fail(e.message.unwrap_or_default())).await;
                        return;
                    }
                };
                let _ = stream.message::<pb::ExecEvent>().await; // its start event
                (stream, pid, tag)
            }
            _ => {
                let _ = socket.send(fail("the first message must be {\"type\":\"start\"} or {\"type\":\"connect\",\"tag\":…}".into())).await;
                return;
            }
        };
        if socket
            .send(text(json!({ "type": "started", "pid": pid, "tag": tag })))
            .await
            .is_err()
        {
            return;
        }
        let (mut tx, mut rx) = socket.split();
        let mut stream = stream;
        let output = async {
            loop {
                match stream.message::<pb::ExecEvent>().await {
                    Ok(Some(m)) => match m.to_owned_message().event {
                        Some(exec_event::Event::Pty(b))
                        | Some(exec_event::Event::Stdout(b))
                        | Some(exec_event::Event::Stderr(b)) => {
                            if tx.send(Message::Binary(b.into())).await.is_err() {
                                return;
                            }
                        }
                        Some(exec_event::Event::End(e)) => {
                            let _ = tx
                                .send(text(json!({ "type": "exit", "exit_code": e.exit_code })))
                                .await;
                            let _ = tx.close().await;
                            return;
                        }
                        _ => {}
                    },
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(text(json!({ "type": "error", "data": e.message.unwrap_or_default(), "fatal": true }))).await;
                        return;
                    }
                }
            }
        };
        let input = async {
            while let Some(Ok(msg)) = rx.next().await {
                let r = match msg {
                    Message::Binary(b) => agent
                        .send_input(pb::SendInputRequest {
                            sandbox_id: id.clone(),
                            pid,
                            data: b.to_vec(),
                            pty: true,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        match v["type"].as_str() {
                            Some("resize") => agent
                                .pty_resize(pb::PtyResizeRequest {
                                    sandbox_id: id.clone(),
                                    pid,
                                    cols: v["cols"].as_u64().unwrap_or(80) as u32,
                                    rows: v["rows"].as_u64().unwrap_or(24) as u32,
                                    ..Default::default()
                                })
                                .await
                                .map(|_| ()),
                            Some("kill") => agent
                                .kill_process(pb::KillProcessRequest {
                                    sandbox_id: id.clone(),
                                    pid,
                                    signal: 9,
                                    ..Default::default()
                                })
                                .await
                                .map(|_| ()),
                            Some("input") => agent
                                .send_input(pb::SendInputRequest {
                                    sandbox_id: id.clone(),
                                    pid,
                                    data: v["data"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .as_bytes()
                                        .to_vec(),
                                    pty: true,
                                    ..Default::default()
                                })
                                .await
                                .map(|_| ()),
                            _ => Ok(()),
                        }
                    }
                    Message::Close(_) => break,
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    tracing::debug!("pty input: {e:?}");
                }
            }
        };
        // Whichever side ends first ends the session; the process lives on
        // unless it exited or was killed. When the output side ends first
        // (the client is closing), what the client sent before its close
        // (a resize, last keystrokes) is still carried out, for 2 s at most.
        tokio::pin!(output, input);
        tokio::select! {
            _ = &mut output => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut input).await;
            }
            _ = &mut input => {}
        }
    }
}
