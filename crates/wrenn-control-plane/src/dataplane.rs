//! The data plane: the control plane's own calls to a sandbox's envd,
//! made through the owning agent's `/proxy/{id}/49983/…` hop, the road
//! E2B's SDKs take through the proxy (see ARCHITECTURE.md, "The data
//! plane"). Bytes cross that hop unparsed; the agent only pipes them.
//!
//! Files go through envd's `/files` (contents) and its
//! `filesystem.Filesystem` (listings, directories, removal); commands,
//! their output, stdin, signals and PTYs through its `process.Process`.

use axum::body::Body;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;

use connectrpc::client::{CallOptions, ClientConfig, HttpClient, ServerStream};
use connectrpc::{ConnectError, ErrorCode};
use wrenn_protocol::envd::filesystem::FilesystemClient;
use wrenn_protocol::envd::process::{self as ep, ProcessClient};

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
    /// envd's `filesystem.Filesystem`, through the same hop; map its
    /// errors with [`Envd::failed`].
    pub fs: FilesystemClient<HttpClient>,
    /// envd's `process.Process`, through the same hop.
    process: ProcessClient<HttpClient>,
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
        let connect = app.hosts.connect_http();
        Ok(Envd {
            client: app.proxy_client.clone(),
            base,
            agent_token,
            envd_token,
            id: s.id.clone(),
            fs: FilesystemClient::new(connect.clone(), config.clone()),
            process: ProcessClient::new(connect, config),
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

    /// An error answer to a `/files` call (the agent's own, or envd's) as
    /// ours.
    async fn error(&self, resp: http::Response<hyper::body::Incoming>) -> ApiError {
        let status = resp.status();
        let hop = resp.headers().get(PROXY_ERROR_HEADER).cloned();
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
        if let Some(code) = hop {
            return self.hop_error(&code, message);
        }
        match status.as_u16() {
            400 => ApiError::bad_request(message),
            401 | 403 => ApiError::forbidden(message),
            404 => ApiError::not_found(message),
            507 => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "no_space", message),
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "envd_failed", message),
        }
    }

    /// The agent's own refusal (its `X-Wrenn-Proxy-Error` code) as ours:
    /// the sandbox left the host, stopped running, or its envd is gone.
    fn hop_error(&self, code: &HeaderValue, message: String) -> ApiError {
        use wrenn_protocol::hostagent::proxy_error as pe;
        match code.to_str().unwrap_or_default() {
            pe::NOT_FOUND => ApiError::not_found(format!("sandbox '{}'", self.id)),
            pe::INVALID_STATE => ApiError::conflict(
                "invalid_state",
                format!("sandbox {} is paused; resume it first", self.id),
            ),
            _ => ApiError::unavailable(
                "host_unavailable",
                format!(
                    "sandbox {}'s envd did not answer: {message}; try again",
                    self.id
                ),
            ),
        }
    }

    /// A failed Connect call to envd (or the hop's refusal of it) as ours.
    pub fn failed(&self, e: ConnectError) -> ApiError {
        match e.response_headers().get(PROXY_ERROR_HEADER) {
            Some(code) => {
                let code = code.clone();
                self.hop_error(&code, e.message.unwrap_or_default())
            }
            None => e.into(),
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

    /// Starts a process; `timeout` bounds it (envd kills it when the
    /// deadline passes, and the events end in `DeadlineExceeded`).
    pub async fn start(
        &self,
        req: ep::StartRequest,
        timeout: Option<std::time::Duration>,
    ) -> ApiResult<Events> {
        let mut options = CallOptions::default();
        if let Some(t) = timeout {
            options = options.with_timeout(t);
        }
        self.process
            .start_with_options(req, options)
            .await
            .map(Events::Started)
            .map_err(|e| self.failed(e))
    }

    /// Attaches to a running process: its events from now on.
    pub async fn connect(&self, pid: u32) -> ApiResult<Events> {
        self.process
            .connect(ep::ConnectRequest {
                process: selector(pid).into(),
                ..Default::default()
            })
            .await
            .map(Events::Attached)
            .map_err(|e| self.failed(e))
    }

    /// The processes envd runs (those it started).
    pub async fn processes(&self) -> ApiResult<Vec<ep::ProcessInfo>> {
        let list = self
            .process
            .list(ep::ListRequest::default())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(list.into_owned().processes)
    }

    /// Writes `data` to the process's stdin, or to its PTY.
    pub async fn send_input(&self, pid: u32, data: Vec<u8>, pty: bool) -> ApiResult<()> {
        let input = if pty {
            ep::process_input::Input::Pty(data)
        } else {
            ep::process_input::Input::Stdin(data)
        };
        let input = ep::ProcessInput {
            input: Some(input),
            ..Default::default()
        };
        self.process
            .send_input(ep::SendInputRequest {
                process: selector(pid).into(),
                input: input.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.failed(e))
    }

    /// Sends SIGKILL (`kill`) or SIGTERM to the process.
    pub async fn signal(&self, pid: u32, kill: bool) -> ApiResult<()> {
        let signal = if kill {
            ep::Signal::SIGNAL_SIGKILL
        } else {
            ep::Signal::SIGNAL_SIGTERM
        };
        self.process
            .send_signal(ep::SendSignalRequest {
                process: selector(pid).into(),
                signal: signal.into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.failed(e))
    }

    /// Sets the size of the process's PTY.
    pub async fn resize(&self, pid: u32, cols: u32, rows: u32) -> ApiResult<()> {
        self.process
            .update(ep::UpdateRequest {
                process: selector(pid).into(),
                pty: pty(cols, rows).into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.failed(e))
    }
}

/// What to start: a program, its arguments, environment, working
/// directory (envd's default when `None`), tag, and whether its stdin
/// stays open for [`Envd::send_input`].
pub fn command(
    cmd: String,
    args: Vec<String>,
    envs: impl IntoIterator<Item = (String, String)>,
    cwd: Option<String>,
    tag: Option<String>,
    stdin: bool,
) -> ep::StartRequest {
    let mut pc = ep::ProcessConfig {
        cmd,
        args,
        cwd: cwd.filter(|c| !c.is_empty()),
        ..Default::default()
    };
    pc.envs.extend(envs);
    ep::StartRequest {
        process: pc.into(),
        tag: tag.filter(|t| !t.is_empty()),
        stdin: Some(stdin),
        ..Default::default()
    }
}

/// A PTY of `cols` × `rows` (each at least 1).
pub fn pty(cols: u32, rows: u32) -> ep::PTY {
    let size = ep::pty::Size {
        cols: cols.max(1),
        rows: rows.max(1),
        ..Default::default()
    };
    ep::PTY {
        size: size.into(),
        ..Default::default()
    }
}

fn selector(pid: u32) -> ep::ProcessSelector {
    ep::ProcessSelector {
        selector: Some(ep::process_selector::Selector::Pid(pid)),
        ..Default::default()
    }
}

/// One thing a process did, as envd streams it.
#[derive(Debug)]
pub enum Event {
    /// It started, as `pid`.
    Start(u32),
    /// Bytes it wrote to stdout.
    Stdout(Vec<u8>),
    /// Bytes it wrote to stderr.
    Stderr(Vec<u8>),
    /// Bytes it wrote to its PTY.
    Pty(Vec<u8>),
    /// It ended with `exit_code` (-1 when a signal ended it).
    End(i32),
}

/// The events of a process started ([`Envd::start`]) or attached to
/// ([`Envd::connect`]). Dropping it detaches; the process runs on.
pub enum Events {
    /// From `process.Start`.
    Started(ServerStream<hyper::body::Incoming, ep::__buffa::view::StartResponseView<'static>>),
    /// From `process.Connect`.
    Attached(ServerStream<hyper::body::Incoming, ep::__buffa::view::ConnectResponseView<'static>>),
}

impl Events {
    /// The next event (keepalives skipped); `None` when the stream ended.
    /// `DeadlineExceeded` when the start's timeout passed (the process
    /// was killed).
    pub async fn next(&mut self) -> Result<Option<Event>, ConnectError> {
        use ep::process_event::{Event as E, data_event::Output};
        loop {
            let ev = match self {
                Events::Started(s) => s
                    .message::<ep::StartResponse>()
                    .await?
                    .map(|m| m.to_owned_message().event),
                Events::Attached(s) => s
                    .message::<ep::ConnectResponse>()
                    .await?
                    .map(|m| m.to_owned_message().event),
            };
            let Some(ev) = ev else { return Ok(None) };
            let ev = match ev.into_option().and_then(|e| e.event) {
                Some(E::Start(s)) => Event::Start(s.pid),
                Some(E::Data(d)) => match d.output {
                    Some(Output::Stdout(b)) => Event::Stdout(b),
                    Some(Output::Stderr(b)) => Event::Stderr(b),
                    Some(Output::Pty(b)) => Event::Pty(b),
                    None => continue,
                },
                Some(E::End(e)) => Event::End(e.exit_code),
                Some(E::Keepalive(_)) | None => continue,
            };
            return Ok(Some(ev));
        }
    }

    /// Reads until the start event: the process's pid.
    pub async fn pid(&mut self) -> Result<u32, ConnectError> {
        loop {
            match self.next().await? {
                Some(Event::Start(pid)) => return Ok(pid),
                Some(_) => continue,
                None => {
                    return Err(ConnectError::new(
                        ErrorCode::Internal,
                        "envd ended the stream before the process started",
                    ));
                }
            }
        }
    }
}
