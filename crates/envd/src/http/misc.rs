//! `/health`, `/init`, `/envs` and `/metrics`.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::http_error;
use crate::auth::token_matches;
use crate::state::AppState;

/// `GET /health`: 204 while envd serves.
pub async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Body of `POST /init`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Token later calls must carry.
    pub access_token: Option<String>,
    /// Environment for every process.
    pub env_vars: Option<HashMap<String, String>>,
    /// User for calls that name none.
    pub default_user: Option<String>,
    /// Working directory for processes and relative paths.
    pub default_workdir: Option<String>,
    /// The host's clock (RFC 3339). Accepted; a namespace sandbox shares
    /// the host's clock, so there is nothing to set.
    pub timestamp: Option<String>,
}

/// `POST /init`: sets the access token, environment, default user and
/// workdir. Once a token is set, changing it needs the current one.
pub async fn init(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let req: InitRequest = if body.is_empty() {
        InitRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return http_error(StatusCode::BAD_REQUEST, format!("invalid /init body: {e}"));
            }
        }
    };
    if let Some(user) = req.default_user.as_deref().filter(|u| !u.is_empty()) {
        if let Err(e) = crate::users::lookup(user) {
            return http_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    }
    let mut d = state.defaults.write();
    if let Some(current) = &d.access_token {
        let same = req.access_token.as_deref() == Some(current.as_str());
        if !same && !token_matches(&headers, current) {
            return http_error(
                StatusCode::UNAUTHORIZED,
                "envd already has an access token; call /init with X-Access-Token set to it",
            );
        }
    }
    if let Some(t) = req.access_token.filter(|t| !t.is_empty()) {
        d.access_token = Some(t);
    }
    if let Some(env) = req.env_vars {
        d.env_vars.extend(env);
    }
    if let Some(u) = req.default_user.filter(|u| !u.is_empty()) {
        d.user = Some(u);
    }
    if let Some(w) = req.default_workdir.filter(|w| !w.is_empty()) {
        d.workdir = Some(PathBuf::from(w));
    }
    let saved = d.clone();
    drop(d);
    if let Some(path) = &state.state_file {
        if let Err(e) = saved.save(path) {
            return http_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "saving the settings to {}: {e}; they hold until envd restarts",
                    path.display()
                ),
            );
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /envs`: the environment every process gets.
pub async fn envs(State(state): State<AppState>) -> Json<HashMap<String, String>> {
    Json(state.defaults().env_vars)
}

/// Body of `GET /metrics`, in E2B's field names.
#[derive(Debug, Serialize)]
pub struct Metrics {
    /// Unix time in seconds.
    pub ts: i64,
    /// CPUs online.
    pub cpu_count: u32,
    /// CPU use since the previous call, percent of all CPUs.
    pub cpu_used_pct: f32,
    /// Memory in bytes.
    pub mem_total: u64,
    /// Memory in use in bytes (total minus available).
    pub mem_used: u64,
    /// Bytes used on the root filesystem.
    pub disk_used: u64,
    /// Size of the root filesystem in bytes.
    pub disk_total: u64,
}

fn cpu_sample() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total, idle))
}

fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal:");
    (total, total.saturating_sub(field("MemAvailable:")))
}

/// `GET /metrics`: CPU, memory and disk of the system envd sees.
pub async fn metrics(State(state): State<AppState>) -> Json<Metrics> {
    let now = cpu_sample();
    let cpu_used_pct = {
        let mut last = state.last_cpu.lock();
        let pct = match (*last, now) {
            (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
                let busy = (t1 - t0).saturating_sub(i1.saturating_sub(i0));
                100.0 * busy as f32 / (t1 - t0) as f32
            }
            _ => 0.0,
        };
        *last = now;
        pct
    };
    let (mem_total, mem_used) = meminfo();
    let (disk_total, disk_used) = rustix::fs::statvfs("/")
        .map(|s| {
            let total = s.f_blocks * s.f_frsize;
            (total, total.saturating_sub(s.f_bfree * s.f_frsize))
        })
        .unwrap_or((0, 0));
    Json(Metrics {
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        cpu_used_pct,
        mem_total,
        mem_used,
        disk_used,
        disk_total,
    })
}
