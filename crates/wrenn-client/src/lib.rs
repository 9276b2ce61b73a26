//! A client for Wrenn's REST API (`/v1/...`), as the `wrenn` CLI uses it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wrenn_client::Error> {
//! let c = wrenn_client::Client::new("http://127.0.0.1:8080", "wrn_...")?;
//! let sb = c.create_sandbox(&serde_json::json!({ "template": "base" })).await?;
//! let out = c.exec(sb["id"].as_str().unwrap(), "echo", &["hi"]).await?;
//! println!("{}", out["stdout"]);
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(Error::Api {
                status,
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        Ok(bytes)
    }

    async fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let (ct, b) = match body {
            Some(v) => (Some("application/json"), Bytes::from(v.to_string())),
            None => (None, Bytes::new()),
        };
        let bytes = self.send(method, path, ct, b).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("unreadable answer from {path}: {e}")))
    }

    /// POST /v1/sandboxes.
    pub async fn create_sandbox(&self, req: &Value) -> Result<Value, Error> {
        self.json("POST", "/v1/sandboxes", Some(req)).await
    }

    /// GET /v1/sandboxes.
    pub async fn list_sandboxes(&self) -> Result<Vec<Value>, Error> {
        Ok(self
            .json("GET", "/v1/sandboxes", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// GET /v1/sandboxes/{id}.
    pub async fn get_sandbox(&self, id: &str) -> Result<Value, Error> {
        self.json("GET", &format!("/v1/sandboxes/{id}"), None).await
    }

    /// DELETE /v1/sandboxes/{id}.
    pub async fn destroy_sandbox(&self, id: &str) -> Result<(), Error> {
        self.json("DELETE", &format!("/v1/sandboxes/{id}"), None)
            .await
            .map(|_| ())
    }

    /// POST /v1/sandboxes/{id}/pause or /resume.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<Value, Error> {
        self.json(
            "POST",
            &format!(
                "/v1/sandboxes/{id}/{}",
                if pause { "pause" } else { "resume" }
            ),
            None,
        )
        .await
    }

    /// POST /v1/sandboxes/{id}/exec, in the foreground.
    pub async fn exec(&self, id: &str, cmd: &str, args: &[&str]) -> Result<Value, Error> {
        let body = serde_json::json!({ "cmd": cmd, "args": args });
        self.json("POST", &format!("/v1/sandboxes/{id}/exec"), Some(&body))
            .await
    }

    /// Writes `data` to `path` in the sandbox.
    pub async fn write_file(&self, id: &str, path: &str, data: Bytes) -> Result<(), Error> {
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
        self.send(
            "POST",
            &format!("/v1/sandboxes/{id}/files/write"),
            Some(&ct),
            Bytes::from(body),
        )
        .await
        .map(|_| ())
    }

    /// Reads `path` from the sandbox.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Bytes, Error> {
        let body = serde_json::json!({ "path": path });
        self.send(
            "POST",
            &format!("/v1/sandboxes/{id}/files/read"),
            Some("application/json"),
            Bytes::from(body.to_string()),
        )
        .await
    }

    /// POST /v1/api-keys.
    /// `format` is `wrenn` (`wrn_…`) or `e2b` (`e2b_…`).
    pub async fn create_key(&self, name: &str, format: &str) -> Result<Value, Error> {
        self.json(
            "POST",
            "/v1/api-keys",
            Some(&serde_json::json!({ "name": name, "format": format })),
        )
        .await
    }

    /// GET /v1/api-keys.
    pub async fn list_keys(&self) -> Result<Vec<Value>, Error> {
        Ok(self.json("GET", "/v1/api-keys", None).await?["api_keys"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// DELETE /v1/api-keys/{id}.
    pub async fn delete_key(&self, id: &str) -> Result<(), Error> {
        self.json("DELETE", &format!("/v1/api-keys/{id}"), None)
            .await
            .map(|_| ())
    }

    /// POST /v1/hosts: a host record with its one-time registration token.
    pub async fn create_host(
        &self,
        name: &str,
        tags: &[String],
        team_owned: bool,
    ) -> Result<Value, Error> {
        self.json(
            "POST",
            "/v1/hosts",
            Some(&serde_json::json!({ "name": name, "tags": tags, "team_owned": team_owned })),
        )
        .await
    }

    /// GET /v1/hosts.
    pub async fn list_hosts(&self) -> Result<Vec<Value>, Error> {
        Ok(self
            .json("GET", "/v1/hosts", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// DELETE /v1/hosts/{id} (`force`: destroy its sandboxes first).
    pub async fn delete_host(&self, id: &str, force: bool) -> Result<(), Error> {
        let q = if force { "?force=true" } else { "" };
        self.json("DELETE", &format!("/v1/hosts/{id}{q}"), None)
            .await
            .map(|_| ())
    }

    /// POST /v1/hosts/{id}/token: a new registration token.
    pub async fn host_token(&self, id: &str) -> Result<Value, Error> {
        self.json("POST", &format!("/v1/hosts/{id}/token"), None)
            .await
    }

    /// PUT /v1/hosts/{id}/tags.
    pub async fn set_host_tags(&self, id: &str, tags: &[String]) -> Result<Value, Error> {
        self.json(
            "PUT",
            &format!("/v1/hosts/{id}/tags"),
            Some(&serde_json::json!({ "tags": tags })),
        )
        .await
    }

    /// GET /v1/templates.
    pub async fn list_templates(&self) -> Result<Vec<Value>, Error> {
        Ok(self
            .json("GET", "/v1/templates", None)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// DELETE /v1/templates/{name} (platform admins): removes a template
    /// from every online host; the answer lists the hosts.
    pub async fn delete_template(&self, name: &str) -> Result<Value, Error> {
        self.json(
            "DELETE",
            &format!("/v1/templates/{}", path_segment(name)),
            None,
        )
        .await
    }
}

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
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                Err(Error::Api {
                    status,
                    code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                    message: v["error"]["message"]
                        .as_str()
                        .unwrap_or("WebSocket refused")
                        .to_string(),
                })
            }
            Err(e) => Err(Error::Invalid(format!("WebSocket to {path}: {e}"))),
        }
    }
}

/// `s` as one URL path segment: bytes other than letters, digits and
/// `-._~` percent-encoded, so a name cannot reach another route.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
