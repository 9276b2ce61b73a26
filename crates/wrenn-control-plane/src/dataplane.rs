//! The data plane: the control plane's own calls to a sandbox's envd,
//! made through the owning agent's `/proxy/{id}/49983/…` hop, the road
//! E2B's SDKs take through the proxy (see ARCHITECTURE.md, "The data
//! plane"). Bytes cross that hop unparsed; the agent only pipes them.
//!
//! Files move this way now (contents through envd's `/files`, listings,
//! directories and removal through its `filesystem.Filesystem`); exec,
//! processes and the PTY still go through the agent's `hostagent.v1`
//! relays until they move too.

use axum::body::Body;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;

use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_protocol::envd::filesystem::FilesystemClient;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::store::Sandbox;
use wrenn_protocol::hostagent::{PROXY_ERROR_HEADER, PROXY_TOKEN_HEADER, PROXY_TOUCH_HEADER};

/// A sandbox's envd, reached through its agent.
pub struct Envd {
    client: wrenn_http_proxy::Client,
    /// `http://<agent>/proxy/<id>/<envd port>`.
    base: String,
    agent_token: HeaderValue,
    envd_token: HeaderValue,
    id: String,
    /// envd's `filesystem.Filesystem`, through the same hop.
    pub fs: FilesystemClient<HttpClient>,
}

impl Envd {
    /// The envd of `s` (a running sandbox), through its host's agent.
    pub async fn of(app: &App, s: &Sandbox) -> ApiResult<Envd> {
        let host = crate::sandboxes::host_of(app, s).await?;
        let (_, addr) = app.hosts.endpoint(&host).await?;
        let header = |v: &str, what: &str| {
            HeaderValue::from_str(v).map_err(|_| {
                ApiError::internal(format!(
                    "the {what} of sandbox {} is not a header value",
                    s.id
                ))
            })
        };
        let base = format!(
            "http://{addr}/proxy/{}/{}",
            s.id,
            wrenn_protocol::envd::PORT
        );
        let agent_token = header(&host.token, "host token")?;
        let envd_token = header(&s.envd_token, "envd token")?;
        let uri = base
            .parse()
            .map_err(|_| ApiError::internal(format!("no URI for sandbox {}", s.id)))?;
        let config = ClientConfig::new(uri)
            .with_default_header(PROXY_TOKEN_HEADER, agent_token.clone())
            .with_default_header("x-access-token", envd_token.clone())
            .with_default_header(PROXY_TOUCH_HEADER, HeaderValue::from_static("1"))
            // Listings are small and a veth away: not worth compressing.
            .with_compression(connectrpc::compression::CompressionRegistry::new());
        Ok(Envd {
            client: app.proxy_client.clone(),
            base,
            agent_token,
            envd_token,
            id: s.id.clone(),
            fs: FilesystemClient::new(app.hosts.connect_http(), config),
        })
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: String,
        body: Body,
        content_type: Option<&str>,
    ) -> ApiResult<http::Response<hyper::body::Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(PROXY_TOKEN_HEADER, self.agent_token.clone())
            // A call of a caller of ours: the sandbox's idle timer restarts.
            .header(PROXY_TOUCH_HEADER, "1")
            .header("x-access-token", self.envd_token.clone());
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(body)
            .map_err(|e| ApiError::bad_request(format!("a request to sandbox {}: {e}", self.id)))?;
        let resp = self.client.request(req).await.map_err(|e| {
            ApiError::unavailable(
                "host_unavailable",
                format!(
                    "the host of sandbox {} did not answer: {e}; try again",
                    self.id
                ),
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error(resp).await)
    }

    /// An error answer (the agent's own, or envd's) as ours.
    async fn error(&self, resp: http::Response<hyper::body::Incoming>) -> ApiError {
        let status = resp.status();
        let from_agent = resp.headers().get(PROXY_ERROR_HEADER).is_some();
        // Error bodies are small; a huge one is cut.
        let bytes = http_body_util::Limited::new(resp.into_body(), 64 << 10)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        if from_agent {
            return match status {
                StatusCode::NOT_FOUND => ApiError::not_found(format!("sandbox '{}'", self.id)),
                StatusCode::CONFLICT => ApiError::conflict("invalid_state", message),
                _ => ApiError::unavailable("host_unavailable", message),
            };
        }
        match status.as_u16() {
            400 => ApiError::bad_request(message),
            401 | 403 => ApiError::forbidden(message),
            404 => ApiError::not_found(message),
            507 => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message),
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "envd_failed", message),
        }
    }

    /// Opens `path` for reading: the body streams its bytes.
    pub async fn read_file(&self, path: &str) -> ApiResult<hyper::body::Incoming> {
        let resp = self
            .call(
                Method::GET,
                wrenn_protocol::envd::files_path(path, ""),
                Body::empty(),
                None,
            )
            .await?;
        Ok(resp.into_body())
    }

    /// Writes `path` from `body` (streamed, made with its parents).
    pub async fn write_file(&self, path: &str, body: Body) -> ApiResult<()> {
        self.call(
            Method::POST,
            wrenn_protocol::envd::files_path(path, ""),
            body,
            Some("application/octet-stream"),
        )
        .await
        .map(|_| ())
    }
}
