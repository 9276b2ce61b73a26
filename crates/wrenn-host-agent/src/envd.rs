//! The agent's own calls to the envd inside a sandbox: bringing it up
//! (`/health`, then `/init`). Commands and files do not pass through here:
//! the control plane speaks envd through the agent's `/proxy` hop.

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::runtime::Instance;

/// A body for requests to envd.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A client for one sandbox's envd.
pub struct Envd {
    base: String,
    addr: std::net::SocketAddr,
    token: String,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
}

/// Shared connection pool for every envd.
#[derive(Clone)]
pub struct Pools {
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
}

impl Default for Pools {
    fn default() -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        Pools {
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        }
    }
}

impl Envd {
    /// A client for `inst`'s envd.
    pub fn new(pools: &Pools, inst: &Instance) -> Self {
        Envd {
            base: format!("http://{}", inst.envd_addr),
            addr: inst.envd_addr,
            token: inst.envd_token.clone(),
            http: pools.http.clone(),
        }
    }
}

/// Why envd did not come up in a new sandbox.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No `204` from `/health` in time.
    #[error("envd at {addr} did not answer /health within {timeout:?}")]
    NoAnswer {
        /// Where envd should listen.
        addr: std::net::SocketAddr,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// No answer to `/init` in time.
    #[error("envd at {addr} did not answer /init within {timeout:?}")]
    InitTimeout {
        /// Where envd listens.
        addr: std::net::SocketAddr,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// `/init` was refused.
    #[error("envd refused /init: {status} {message}")]
    Init {
        /// Its status.
        status: http::StatusCode,
        /// Its message.
        message: String,
    },
    /// The request could not be made or carried.
    #[error("calling envd's {what}: {source}")]
    Http {
        /// Which call.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Envd {
    /// Brings up a new sandbox's envd: waits until `/health` answers 204
    /// (within `timeout`), then, when there are `envs` or a default user or
    /// workdir (`run_as`), hands them over with `/init`. The sandbox's init made envd's socket listen before
    /// envd ran, so the first request waits in its backlog until envd
    /// serves it; a request is made again (after 1, 2, 4 … 20 ms) only if
    /// a connection fails or envd answers anything but 204. Every
    /// runtime's sandboxes start this way.
    pub async fn start(
        &self,
        envs: &std::collections::HashMap<String, String>,
        run_as: &crate::templates::Defaults,
        timeout: std::time::Duration,
    ) -> Result<(), StartError> {
        let addr = self.addr;
        let health = async {
            let mut pause = std::time::Duration::from_millis(1);
            loop {
                let req = http::Request::get(format!("{}/health", self.base))
                    .body(Body::default())
                    .map_err(|e| StartError::Http {
                        what: "/health",
                        source: e.into(),
                    })?;
                if let Ok(resp) = self.http.request(req).await
                    && resp.status() == http::StatusCode::NO_CONTENT
                {
                    return Ok(());
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(20));
            }
        };
        tokio::time::timeout(timeout, health)
            .await
            .unwrap_or(Err(StartError::NoAnswer { addr, timeout }))?;
        if envs.is_empty() && run_as.user.is_none() && run_as.workdir.is_none() {
            return Ok(());
        }
        let body = serde_json::json!({
            "envVars": envs,
            "defaultUser": run_as.user,
            "defaultWorkdir": run_as.workdir,
        })
        .to_string();
        let req = http::Request::post(format!("{}/init", self.base))
            .header("content-type", "application/json")
            .header("x-access-token", &self.token)
            .body(whole(Bytes::from(body)))
            .map_err(|e| StartError::Http {
                what: "/init",
                source: e.into(),
            })?;
        let resp = tokio::time::timeout(timeout, self.http.request(req))
            .await
            .map_err(|_| StartError::InitTimeout { addr, timeout })?
            .map_err(|e| StartError::Http {
                what: "/init",
                source: e.into(),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = error_body(resp).await;
        Err(StartError::Init {
            status,
            message: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// A whole body.
pub fn whole(b: Bytes) -> Body {
    use http_body_util::BodyExt as _;
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed()
}

/// The body of an error answer from envd, at most 64 KiB of it (an error
/// says what went wrong in a line; a sandbox's answer is not trusted with
/// more of the agent's memory).
async fn error_body(resp: http::Response<hyper::body::Incoming>) -> Bytes {
    http_body_util::Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}
