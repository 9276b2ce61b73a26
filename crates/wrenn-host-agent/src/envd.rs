//! Talking to the envd inside a sandbox: Connect for processes and the
//! filesystem, plain HTTP for file contents.

use bytes::Bytes;
use connectrpc::ConnectError;
use connectrpc::client::{ClientConfig, HttpClient};
use http_body_util::BodyExt;
use wrenn_protocol::envd::filesystem::FilesystemClient;
use wrenn_protocol::envd::process::ProcessClient;

use crate::runtime::Instance;

/// A body for requests to envd: whole or streamed.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Clients for one sandbox's envd.
pub struct Envd {
    /// `process.Process`.
    pub process: ProcessClient<HttpClient>,
    /// `filesystem.Filesystem`.
    pub fs: FilesystemClient<HttpClient>,
    base: String,
    addr: std::net::SocketAddr,
    token: String,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
}

/// Shared connection pools for every envd.
#[derive(Clone)]
pub struct Pools {
    connect: HttpClient,
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
            connect: HttpClient::plaintext(),
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        }
    }
}

/// `Authorization: Basic` selecting a user, as envd expects.
pub fn basic_user(user: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:"))
    )
}

impl Envd {
    /// Clients for `inst`'s envd.
    pub fn new(pools: &Pools, inst: &Instance) -> Self {
        let base = format!("http://{}", inst.envd_addr);
        let config = ClientConfig::new(base.parse().expect("valid uri"))
            .with_default_header("x-access-token", inst.envd_token.as_str())
            // A veth away: compressing costs more than it saves.
            .with_compression(connectrpc::compression::CompressionRegistry::new());
        Envd {
            process: ProcessClient::new(pools.connect.clone(), config.clone()),
            fs: FilesystemClient::new(pools.connect.clone(), config),
            base,
            addr: inst.envd_addr,
            token: inst.envd_token.clone(),
            http: pools.http.clone(),
        }
    }

    fn files_url(&self, path: &str, user: &str) -> String {
        format!(
            "{}{}",
            self.base,
            wrenn_protocol::envd::files_path(path, user)
        )
    }

    /// Writes a file from `body`.
    pub async fn write_file(&self, path: &str, user: &str, body: Body) -> Result<(), ConnectError> {
        let req = http::Request::post(self.files_url(path, user))
            .header("x-access-token", &self.token)
            .header("content-type", "application/octet-stream")
            .body(body)
            .map_err(|e| ConnectError::internal(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ConnectError::unavailable(format!("envd: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = error_body(resp).await;
        Err(files_error(status, &body))
    }

    /// Opens a file for reading: the response body streams its bytes.
    pub async fn read_file(
        &self,
        path: &str,
        user: &str,
    ) -> Result<hyper::body::Incoming, ConnectError> {
        let req = http::Request::get(self.files_url(path, user))
            .header("x-access-token", &self.token)
            .body(Body::default())
            .map_err(|e| ConnectError::internal(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ConnectError::unavailable(format!("envd: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let body = error_body(resp).await;
        Err(files_error(status, &body))
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
    /// (within `timeout`), then, when there are `envs`, hands them over
    /// with `/init`. The sandbox's init made envd's socket listen before
    /// envd ran, so the first request waits in its backlog until envd
    /// serves it; a request is made again (after 1, 2, 4 … 20 ms) only if
    /// a connection fails or envd answers anything but 204. Every
    /// runtime's sandboxes start this way.
    pub async fn start(
        &self,
        envs: &std::collections::HashMap<String, String>,
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
        if envs.is_empty() {
            return Ok(());
        }
        let body = serde_json::json!({ "envVars": envs }).to_string();
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

fn files_error(status: http::StatusCode, body: &[u8]) -> ConnectError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    match status.as_u16() {
        400 => ConnectError::invalid_argument(message),
        401 | 403 => ConnectError::permission_denied(message),
        404 => ConnectError::not_found(message),
        507 => ConnectError::resource_exhausted(message),
        _ => ConnectError::internal(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth() {
        assert_eq!(basic_user("root"), "Basic cm9vdDo=");
        assert_eq!(basic_user("user"), "Basic dXNlcjo=");
        assert_eq!(basic_user("ab"), "Basic YWI6");
    }
}
