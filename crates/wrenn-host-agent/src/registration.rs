//! The agent's side of a fleet: register with the control plane once, keep
//! the credentials in a 0600 file, heartbeat, refresh the host JWT.
//!
//! - A 401/403 on a heartbeat triggers a refresh; a refused refresh pauses
//!   every sandbox on the host (nobody could manage them) and keeps trying.
//! - A 404 means the host was deleted: the credentials are forgotten and
//!   the agent stops.
//! - The new credentials are written to a temporary file and renamed over
//!   the old, so a crash never leaves a half-written file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use wrenn_api_types::hosts as api;

use crate::agent::Agent;
use crate::runtime::{RunState, Runtime};

/// What the control plane gave this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Credentials {
    /// The control plane's base URL.
    pub control_plane: String,
    /// This host's id.
    pub host_id: String,
    /// Bearer token for heartbeats (7 days).
    pub host_jwt: String,
    /// Unix seconds.
    pub host_jwt_expires_at: i64,
    /// One-use token for the next JWT (60 days).
    pub refresh_token: String,
    /// Unix seconds.
    pub refresh_expires_at: i64,
}

/// What went wrong talking to the control plane.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// It refused the token (401/403).
    #[error("the control plane refused the credentials: {0}")]
    Refused(String),
    /// The host no longer exists there (404).
    #[error("the control plane does not know this host any more: {0}")]
    Gone(String),
    /// Anything else: unreachable, 5xx, bad answers.
    #[error("talking to the control plane at {0}: {1}")]
    Failed(String, String),
}

/// This machine's specs, as registration reports them.
#[derive(Debug, Clone, Serialize)]
pub struct Specs {
    /// CPU architecture.
    pub arch: String,
    /// CPUs.
    pub cpu_count: i64,
    /// Memory.
    pub memory_mb: i64,
    /// Free disk under the data directory.
    pub disk_mb: i64,
}

/// What a host tells the control plane it runs, at registration and in
/// every heartbeat: the scheduler sends a sandbox only to a host that has
/// its template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The runtime's name (`namespaces`).
    pub runtime: String,
    /// The templates the runtime can start sandboxes from.
    pub templates: Vec<String>,
}

impl Report {
    /// What `agent` has now.
    pub fn of<R: Runtime + crate::service::TemplateList>(agent: &Agent<R>) -> Report {
        let mut templates = agent.runtime.template_names();
        templates.sort();
        Report {
            runtime: agent.runtime.name().to_string(),
            templates,
        }
    }
}

impl Specs {
    /// Reads them off this machine (`data_dir` for the disk).
    pub fn of_this_machine(data_dir: &Path) -> Specs {
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<i64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        let disk_mb = rustix::fs::statvfs(data_dir)
            .map(|s| (s.f_bavail as i64 * s.f_frsize as i64) >> 20)
            .unwrap_or(0);
        Specs {
            arch: std::env::consts::ARCH.into(),
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as i64),
            memory_mb,
            disk_mb,
        }
    }
}

impl Credentials {
    /// The saved credentials, if any.
    pub fn load(path: &Path) -> Option<Credentials> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Saves them (0600) by writing a new file and renaming it into place.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::write_atomic(path, &data, 0o600, crate::Durability::Reboot)
    }
}

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// A client for the control plane's host routes.
#[derive(Clone)]
pub struct ControlPlane {
    base: String,
    http: Http,
}

impl ControlPlane {
    /// For the control plane at `base` (`http://host:port`).
    pub fn new(base: &str) -> ControlPlane {
        let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
        c.set_connect_timeout(Some(Duration::from_secs(5)));
        ControlPlane {
            base: base.trim_end_matches('/').to_string(),
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(c),
        }
    }

    /// Posts `body` to `path` and reads the answer as `T`.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &impl Serialize,
    ) -> Result<T, RegistrationError> {
        let failed = |e: String| RegistrationError::Failed(self.base.clone(), e);
        let mut req = http::Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = serde_json::to_vec(body).map_err(|e| failed(e.to_string()))?;
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(15), self.http.request(req))
            .await
            .map_err(|_| failed("no answer in 15 s".into()))?
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| failed(format!("unexpected answer from {path}: {e}")));
        }
        let message = serde_json::from_slice::<wrenn_api_types::ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        match status.as_u16() {
            401 | 403 => Err(RegistrationError::Refused(message)),
            404 => Err(RegistrationError::Gone(message)),
            _ => Err(failed(format!("{status}: {message}"))),
        }
    }

    /// What the control plane answered, as this host keeps it.
    fn credentials(&self, c: api::Credentials) -> Credentials {
        Credentials {
            control_plane: self.base.clone(),
            host_id: c.host_id,
            host_jwt: c.host_jwt,
            host_jwt_expires_at: c.host_jwt_expires_at,
            refresh_token: c.refresh_token,
            refresh_expires_at: c.refresh_expires_at,
        }
    }

    /// Registers with a one-time token.
    pub async fn register(
        &self,
        token: &str,
        address: &str,
        agent_token: &str,
        specs: &Specs,
        report: &Report,
    ) -> Result<Credentials, RegistrationError> {
        let req = api::Register {
            token: token.to_string(),
            address: address.to_string(),
            agent_token: agent_token.to_string(),
            arch: specs.arch.clone(),
            cpu_count: specs.cpu_count,
            memory_mb: specs.memory_mb,
            disk_mb: specs.disk_mb,
            runtime: Some(report.runtime.clone()),
            templates: Some(report.templates.clone()),
        };
        let c = self.post("/v1/hosts/register", None, &req).await?;
        Ok(self.credentials(c))
    }

    /// Trades the refresh token for new credentials.
    pub async fn refresh(&self, c: &Credentials) -> Result<Credentials, RegistrationError> {
        let req = api::Refresh {
            refresh_token: c.refresh_token.clone(),
        };
        let c = self.post("/v1/hosts/refresh", None, &req).await?;
        Ok(self.credentials(c))
    }

    /// One heartbeat.
    pub async fn heartbeat(
        &self,
        c: &Credentials,
        report: &Report,
    ) -> Result<(), RegistrationError> {
        let req = api::Heartbeat {
            runtime: Some(report.runtime.clone()),
            templates: Some(report.templates.clone()),
        };
        // The answer's body is not needed: a 2xx is the news.
        self.post::<serde::de::IgnoredAny>("/v1/hosts/heartbeat", Some(&c.host_jwt), &req)
            .await
            .map(|_| ())
    }
}

/// Refreshes and saves; on success the new credentials replace `creds`.
async fn refresh_and_save(
    cp: &ControlPlane,
    creds: &mut Credentials,
    path: &Path,
) -> Result<(), RegistrationError> {
    let new = cp.refresh(creds).await?;
    if let Err(e) = new.save(path) {
        // The old token is revoked now; keep the new one in memory at least.
        tracing::error!("saving refreshed credentials to {}: {e}", path.display());
    }
    *creds = new;
    tracing::info!(host = %creds.host_id, "host credentials refreshed");
    Ok(())
}

async fn pause_all<R: Runtime>(agent: &Agent<R>) {
    for inst in agent.runtime.list() {
        if inst.state == RunState::Running {
            match agent.runtime.pause(&inst.spec.id).await {
                Ok(_) => {
                    tracing::warn!(sandbox = %inst.spec.id, "paused: this host lost its control plane")
                }
                Err(e) => tracing::error!(sandbox = %inst.spec.id, "pausing: {e}"),
            }
        }
    }
}

/// Heartbeats every `interval` until the agent stops. Refreshes the JWT a
/// day before it expires or when refused; pauses every sandbox when the
/// refresh is refused; forgets the credentials and stops the agent when
/// the host is gone.
pub async fn heartbeat_forever<R: Runtime + crate::service::TemplateList>(
    agent: Arc<Agent<R>>,
    mut creds: Credentials,
    path: PathBuf,
    interval: Duration,
) {
    let cp = ControlPlane::new(&creds.control_plane);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused_for_auth = false;
    loop {
        tick.tick().await;
        use futures::FutureExt;
        let beat = std::panic::AssertUnwindSafe(heartbeat_once(
            &agent,
            &cp,
            &mut creds,
            &path,
            &mut paused_for_auth,
        ))
        .catch_unwind()
        .await;
        match beat {
            Ok(Beat::Continue) => {}
            Ok(Beat::Stop) => return,
            Err(_) => tracing::error!("a heartbeat panicked; the next one runs as usual"),
        }
    }
}

/// Whether the heartbeat loop goes on.
enum Beat {
    Continue,
    Stop,
}

/// One heartbeat: refresh when due or refused, pause everything when the
/// control plane refuses the host for good, stop when it was deleted.
async fn heartbeat_once<R: Runtime + crate::service::TemplateList>(
    agent: &Arc<Agent<R>>,
    cp: &ControlPlane,
    creds: &mut Credentials,
    path: &std::path::Path,
    paused_for_auth: &mut bool,
) -> Beat {
    if creds.host_jwt_expires_at > 0 && creds.host_jwt_expires_at - crate::agent::now() < 86400 {
        if let Err(e) = refresh_and_save(cp, creds, path).await {
            tracing::warn!("refreshing ahead of expiry: {e}");
        }
    }
    let report = Report::of(agent);
    let mut result = cp.heartbeat(creds, &report).await;
    if let Err(RegistrationError::Refused(_)) = &result {
        result = match refresh_and_save(cp, creds, path).await {
            Ok(()) => cp.heartbeat(creds, &report).await,
            Err(e) => Err(e),
        };
    }
    match result {
        Ok(()) => *paused_for_auth = false,
        Err(RegistrationError::Gone(m)) => {
            tracing::error!("{m}: this host was deleted; forgetting its credentials and stopping");
            let _ = std::fs::remove_file(path);
            let _ = agent.shutdown.send(true);
            return Beat::Stop;
        }
        Err(RegistrationError::Refused(m)) => {
            if !*paused_for_auth {
                tracing::error!("{m}: pausing every sandbox until the host is registered again");
                pause_all(agent).await;
                *paused_for_auth = true;
            }
        }
        Err(e) => tracing::warn!("heartbeat: {e}"),
    }
    Beat::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_with_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wrenn-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("credentials.json");
        let c = Credentials {
            control_plane: "http://cp:8080".into(),
            host_id: "host-1".into(),
            host_jwt: "jwt".into(),
            host_jwt_expires_at: 1,
            refresh_token: "wrr_x".into(),
            refresh_expires_at: 2,
        };
        c.save(&p).unwrap();
        assert_eq!(Credentials::load(&p), Some(c));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!p.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        let s = Specs::of_this_machine(Path::new("/"));
        assert!(
            s.cpu_count >= 1 && s.memory_mb > 0 && s.disk_mb > 0,
            "{s:?}"
        );
    }
}
