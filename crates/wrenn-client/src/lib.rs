//! A client for Wrenn's REST API (`/v1/...`), as the `wrenn` CLI uses it.
//!
//! Every body is a type of [`types`] (`wrenn-api-types`), the same the
//! server serializes and its OpenAPI document describes.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wrenn_client::Error> {
//! use wrenn_client::types::sandboxes::CreateSandbox;
//! let c = wrenn_client::Client::new("http://127.0.0.1:8080", "wrn_...")?;
//! let req = CreateSandbox { template: Some("base".into()), ..Default::default() };
//! let sb = c.create_sandbox(&req).await?;
//! let out = c.exec(&sb.id, "echo", &["hi"]).await?;
//! println!("{}", out.stdout);
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
pub use wrenn_api_types as types;
use wrenn_api_types::ErrorBody;
use wrenn_api_types::files::{Entries, Entry, PathRequest, Written};
use wrenn_api_types::hosts::{CreateHost, Host, NewHost, RegistrationToken, Tags};
use wrenn_api_types::identity::{CreateKey, Key, Keys, NewKey};
use wrenn_api_types::processes::{Exec, ExecOutput, ExecResult, Process, Processes};
use wrenn_api_types::sandboxes::{CreateSandbox, Egress, Metrics, Sandbox};
use wrenn_api_types::templates::{Template, TemplateDeleted};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The API's error code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach {url}: {source}; is `wrenn up` (or `wrenn server`) running?")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        source: hyper_util::client::legacy::Error,
    },
    /// A bad base URL or an unreadable answer.
    #[error("{0}")]
    Invalid(String),
}

/// A client bound to one server and key.
#[derive(Clone)]
pub struct Client {
    base: String,
    key: String,
    http: Hyper<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for `base_url` using API key `key`.
    pub fn new(base_url: &str, key: &str) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(Error::Invalid(format!(
                "base URL '{base}' must start with http://"
            )));
        }
        Ok(Client {
            base,
            key: key.to_string(),
            http: Hyper::builder(TokioExecutor::new()).build_http(),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, Error> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("x-api-key", &self.key);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|source| Error::Connect {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Invalid(e.to_string()))?
            .to_bytes();
        if status >= 400 {
            return Err(api_error(status, &bytes, None));
        }
        Ok(bytes)
    }

    /// Sends `body` (as JSON, when given) and reads the answer as `T`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, Error> {
        let (ct, b) = match body {
            Some(v) => (
                Some("application/json"),
                Bytes::from(serde_json::to_vec(v).map_err(|e| Error::Invalid(e.to_string()))?),
            ),
            None => (None, Bytes::new()),
        };
        let bytes = self.send(method, path, ct, b).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("unreadable answer from {path}: {e}")))
    }

    /// Sends a request whose answer has no body (204).
    async fn call_empty(&self, method: &str, path: &str) -> Result<(), Error> {
        self.send(method, path, None, Bytes::new())
            .await
            .map(|_| ())
    }

    /// `POST /v1/sandboxes`: a running sandbox.
    pub async fn create_sandbox(&self, req: &CreateSandbox) -> Result<Sandbox, Error> {
        self.call("POST", "/v1/sandboxes", Some(req)).await
    }

    /// `PUT /v1/sandboxes/{id}/egress`: replaces its egress rules; they
    /// hold when this returns.
    pub async fn set_egress(&self, id: &str, rules: &Egress) -> Result<Sandbox, Error> {
        let path = format!("/v1/sandboxes/{}/egress", path_segment(id));
        self.call("PUT", &path, Some(rules)).await
    }

    /// `GET /v1/sandboxes`: the team's sandboxes (all but stopped ones).
    pub async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, Error> {
        self.call("GET", "/v1/sandboxes", NO_BODY).await
    }

    /// `GET /v1/sandboxes/{id}`, with its disk use while it runs.
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, Error> {
        let path = format!("/v1/sandboxes/{}", path_segment(id));
        self.call("GET", &path, NO_BODY).await
    }

    /// `DELETE /v1/sandboxes/{id}`.
    pub async fn destroy_sandbox(&self, id: &str) -> Result<(), Error> {
        let path = format!("/v1/sandboxes/{}", path_segment(id));
        self.call_empty("DELETE", &path).await
    }

    /// `POST /v1/sandboxes/{id}/pause` (`pause`) or `/resume`.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<Sandbox, Error> {
        let action = if pause { "pause" } else { "resume" };
        let path = format!("/v1/sandboxes/{}/{action}", path_segment(id));
        self.call("POST", &path, NO_BODY).await
    }

    /// `GET /v1/sandboxes/{id}/metrics`.
    pub async fn metrics(&self, id: &str) -> Result<Metrics, Error> {
        let path = format!("/v1/sandboxes/{}/metrics", path_segment(id));
        self.call("GET", &path, NO_BODY).await
    }

    /// `POST /v1/sandboxes/{id}/exec` of `cmd` with `args`, in the
    /// foreground, with the server's defaults.
    pub async fn exec(&self, id: &str, cmd: &str, args: &[&str]) -> Result<ExecOutput, Error> {
        let req = Exec {
            cmd: cmd.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        match self.run(id, &req).await? {
            ExecResult::Finished(out) => Ok(out),
            ExecResult::Started(_) => Err(Error::Invalid(
                "the server started the command in the background; use `run`".into(),
            )),
        }
    }

    /// `POST /v1/sandboxes/{id}/exec` as `req` says: its output, or (with
    /// `background`) its pid.
    pub async fn run(&self, id: &str, req: &Exec) -> Result<ExecResult, Error> {
        let path = format!("/v1/sandboxes/{}/exec", path_segment(id));
        self.call("POST", &path, Some(req)).await
    }

    /// `GET /v1/sandboxes/{id}/processes`.
    pub async fn processes(&self, id: &str) -> Result<Vec<Process>, Error> {
        let path = format!("/v1/sandboxes/{}/processes", path_segment(id));
        Ok(self
            .call::<Processes>("GET", &path, NO_BODY)
            .await?
            .processes)
    }

    /// `DELETE /v1/sandboxes/{id}/processes/{pid}`: SIGKILL.
    pub async fn kill_process(&self, id: &str, pid: u32) -> Result<(), Error> {
        let path = format!("/v1/sandboxes/{}/processes/{pid}", path_segment(id));
        self.call_empty("DELETE", &path).await
    }

    /// Writes `data` to `path` in the sandbox (made with its parents).
    pub async fn write_file(&self, id: &str, path: &str, data: Bytes) -> Result<Written, Error> {
        let boundary = format!(
            "wrenn{:016x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        );
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n{path}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={boundary}");
        let answer = self
            .send(
                "POST",
                &format!("/v1/sandboxes/{}/files/write", path_segment(id)),
                Some(&ct),
                Bytes::from(body),
            )
            .await?;
        serde_json::from_slice(&answer)
            .map_err(|e| Error::Invalid(format!("unreadable answer from files/write: {e}")))
    }

    /// Reads `path` from the sandbox.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Bytes, Error> {
        let body = PathRequest {
            path: path.to_string(),
            depth: None,
        };
        let body = serde_json::to_vec(&body).map_err(|e| Error::Invalid(e.to_string()))?;
        self.send(
            "POST",
            &format!("/v1/sandboxes/{}/files/read", path_segment(id)),
            Some("application/json"),
            Bytes::from(body),
        )
        .await
    }

    /// Lists the directory `path` to `depth` (1: its own entries).
    pub async fn list_files(&self, id: &str, path: &str, depth: u32) -> Result<Vec<Entry>, Error> {
        let body = PathRequest {
            path: path.to_string(),
            depth: Some(depth),
        };
        let path = format!("/v1/sandboxes/{}/files/list", path_segment(id));
        Ok(self
            .call::<Entries>("POST", &path, Some(&body))
            .await?
            .entries)
    }

    /// `POST /v1/api-keys`: a key, its secret shown this once.
    /// `format` is `wrenn` (`wrn_…`) or `e2b` (`e2b_…`).
    pub async fn create_key(&self, name: &str, format: &str) -> Result<NewKey, Error> {
        let req = CreateKey {
            name: Some(name.to_string()),
            format: Some(format.to_string()),
        };
        self.call("POST", "/v1/api-keys", Some(&req)).await
    }

    /// `GET /v1/api-keys`.
    pub async fn list_keys(&self) -> Result<Vec<Key>, Error> {
        Ok(self
            .call::<Keys>("GET", "/v1/api-keys", NO_BODY)
            .await?
            .api_keys)
    }

    /// `DELETE /v1/api-keys/{id}`.
    pub async fn delete_key(&self, id: &str) -> Result<(), Error> {
        self.call_empty("DELETE", &format!("/v1/api-keys/{}", path_segment(id)))
            .await
    }

    /// `POST /v1/hosts`: a host record with its one-time registration token.
    pub async fn create_host(&self, req: &CreateHost) -> Result<NewHost, Error> {
        self.call("POST", "/v1/hosts", Some(req)).await
    }

    /// `GET /v1/hosts`.
    pub async fn list_hosts(&self) -> Result<Vec<Host>, Error> {
        self.call("GET", "/v1/hosts", NO_BODY).await
    }

    /// `DELETE /v1/hosts/{id}` (`force`: destroy its sandboxes first).
    pub async fn delete_host(&self, id: &str, force: bool) -> Result<(), Error> {
        let q = if force { "?force=true" } else { "" };
        self.call_empty("DELETE", &format!("/v1/hosts/{}{q}", path_segment(id)))
            .await
    }

    /// `POST /v1/hosts/{id}/token`: a new registration token.
    pub async fn host_token(&self, id: &str) -> Result<RegistrationToken, Error> {
        let path = format!("/v1/hosts/{}/token", path_segment(id));
        self.call("POST", &path, NO_BODY).await
    }

    /// `PUT /v1/hosts/{id}/tags`.
    pub async fn set_host_tags(&self, id: &str, tags: &[String]) -> Result<Host, Error> {
        let req = Tags {
            tags: tags.to_vec(),
        };
        let path = format!("/v1/hosts/{}/tags", path_segment(id));
        self.call("PUT", &path, Some(&req)).await
    }

    /// `GET /v1/templates`.
    pub async fn list_templates(&self) -> Result<Vec<Template>, Error> {
        self.call("GET", "/v1/templates", NO_BODY).await
    }

    /// `DELETE /v1/templates/{name}` (platform admins): removes a template
    /// from every online host; the answer lists the hosts.
    pub async fn delete_template(&self, name: &str) -> Result<TemplateDeleted, Error> {
        let path = format!("/v1/templates/{}", path_segment(name));
        self.call("DELETE", &path, NO_BODY).await
    }
}

/// No request body.
const NO_BODY: Option<&()> = None;

/// A WebSocket to the API.
pub type WebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client {
    /// Opens a WebSocket on `path` (e.g. `/v1/sandboxes/{id}/pty`).
    pub async fn websocket(&self, path: &str) -> Result<WebSocket, Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{path}", self.base.replacen("http://", "ws://", 1));
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        req.headers_mut().insert(
            "x-api-key",
            self.key
                .parse()
                .map_err(|_| Error::Invalid("the API key is not a valid header".into()))?,
        );
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                Err(api_error(status, &body, Some("WebSocket refused")))
            }
            Err(e) => Err(Error::Invalid(format!("WebSocket to {path}: {e}"))),
        }
    }
}

/// An error answer as [`Error::Api`]: the API's code and message, or
/// (an answer not in its shape) `fallback`, else the body's text.
fn api_error(status: u16, body: &[u8], fallback: Option<&str>) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => Error::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => Error::Api {
            status,
            code: "unknown".into(),
            message: fallback
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        },
    }
}

/// What a path segment keeps as it is: letters, digits and `-._~`.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` as one URL path segment: every other byte percent-encoded, so a
/// name cannot reach another route.
fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

#[cfg(test)]
mod path_tests {
    #[test]
    fn names_stay_one_path_segment() {
        for (name, want) in [
            ("base", "base"),
            ("my.tpl-1_x~", "my.tpl-1_x~"),
            ("../hosts", "..%2Fhosts"),
            ("a b?c#d", "a%20b%3Fc%23d"),
            ("é", "%C3%A9"),
        ] {
            assert_eq!(super::path_segment(name), want, "{name}");
        }
    }
}
