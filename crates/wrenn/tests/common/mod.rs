//! Starts a real `wrenn agent` for integration tests, with its own data
//! directory whose `base` template is the shared test template.
//!
//! Why this file is long (~600 lines): the one harness of every agent
//! test: the agent process, its clients (the RPC service and envd through
//! the hop), commands and files through envd, and the host-trace checks.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use connectrpc::ConnectError;
use connectrpc::client::{CallOptions, ClientConfig, HttpClient};
use wrenn_protocol::envd::filesystem::FilesystemClient;
use wrenn_protocol::envd::process::{self as ep, ProcessClient};
use wrenn_protocol::hostagent::v1::{self as pb, HostAgentServiceClient};

/// One agent per host at a time: tests take this lock.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Where the shared `base` template lives (built by scripts/test.sh).
pub fn template_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("WRENN_TEST_TEMPLATES")
            .unwrap_or_else(|_| "/var/tmp/wrenn-test-data/templates".into()),
    )
}

/// A client for one agent: its `hostagent.v1` service (what it derefs
/// to), and through its `/proxy` hop the envd of each of its sandboxes —
/// the road the control plane takes for commands and files.
#[derive(Clone)]
pub struct Client {
    rpc: HostAgentServiceClient<HttpClient>,
    addr: String,
    token: String,
}

impl std::ops::Deref for Client {
    type Target = HostAgentServiceClient<HttpClient>;
    fn deref(&self) -> &Self::Target {
        &self.rpc
    }
}

/// envd's services in one sandbox, through the agent's hop.
pub struct Envd {
    pub process: ProcessClient<HttpClient>,
    pub fs: FilesystemClient<HttpClient>,
}

impl Client {
    /// `http://<agent>/proxy/<id>/<envd port>`.
    pub fn envd_base(&self, id: &str) -> String {
        format!(
            "http://{}/proxy/{id}/{}",
            self.addr,
            wrenn_protocol::envd::PORT
        )
    }

    /// The envd access token of sandbox `id` (the agent's runtime made it);
    /// empty when the agent has no such sandbox.
    pub async fn envd_token(&self, id: &str) -> String {
        self.get_sandbox(pb::SandboxRef {
            sandbox_id: id.into(),
            ..Default::default()
        })
        .await
        .map(|s| s.into_owned().envd_access_token)
        .unwrap_or_default()
    }

    /// The envd of sandbox `id`, with its access token.
    pub async fn envd(&self, id: &str) -> Envd {
        let config = ClientConfig::new(self.envd_base(id).parse().unwrap())
            .with_default_header(
                wrenn_protocol::hostagent::PROXY_TOKEN_HEADER,
                self.token.clone(),
            )
            .with_default_header("x-access-token", self.envd_token(id).await);
        Envd {
            process: ProcessClient::new(HttpClient::plaintext(), config.clone()),
            fs: FilesystemClient::new(HttpClient::plaintext(), config),
        }
    }

    /// A plain HTTP call to envd's `path_and_query` in sandbox `id`:
    /// status and body.
    pub async fn envd_http(
        &self,
        id: &str,
        method: http::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> (http::StatusCode, Vec<u8>) {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.envd_base(id)))
            .header(wrenn_protocol::hostagent::PROXY_TOKEN_HEADER, &self.token)
            .header("x-access-token", self.envd_token(id).await)
            .header("content-type", "application/octet-stream")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }
}

/// What a command did.
#[derive(Debug, Default)]
pub struct Output {
    pub pid: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// `/bin/sh -c script`, its stdin closed.
pub fn command(script: &str) -> ep::StartRequest {
    ep::StartRequest {
        process: ep::ProcessConfig {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }
        .into(),
        stdin: Some(false),
        ..Default::default()
    }
}

/// A call that envd ends (killing its process) after `secs`; 0: never.
pub fn deadline(secs: u32) -> CallOptions {
    let options = CallOptions::default();
    if secs == 0 {
        return options;
    }
    options.with_timeout(Duration::from_secs(u64::from(secs)))
}

/// Starts `req` in sandbox `id` with `options` (a deadline: [`deadline`];
/// the user: an `authorization` header) and, unless `background`, collects
/// its output until it ends. With `stdin`, writes it and closes stdin
/// first.
pub async fn run(
    c: &Client,
    id: &str,
    mut req: ep::StartRequest,
    options: CallOptions,
    stdin: Option<&[u8]>,
    background: bool,
) -> Result<Output, ConnectError> {
    use ep::process_event::{Event as E, data_event::Output as O};
    let envd = c.envd(id).await;
    if stdin.is_some() {
        req.stdin = Some(true);
    }
    let mut stream = envd.process.start_with_options(req, options).await?;
    let mut out = Output::default();
    while let Some(m) = stream.message::<ep::StartResponse>().await? {
        match m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            Some(E::Start(s)) => {
                out.pid = s.pid;
                if let Some(data) = stdin {
                    envd.process
                        .send_input(ep::SendInputRequest {
                            process: selector(s.pid).into(),
                            input: ep::ProcessInput {
                                input: Some(ep::process_input::Input::Stdin(data.to_vec())),
                                ..Default::default()
                            }
                            .into(),
                            ..Default::default()
                        })
                        .await?;
                    envd.process
                        .close_stdin(ep::CloseStdinRequest {
                            process: selector(s.pid).into(),
                            ..Default::default()
                        })
                        .await?;
                }
                if background {
                    break;
                }
            }
            Some(E::Data(d)) => match d.output {
                Some(O::Stdout(b) | O::Pty(b)) => out.stdout.extend(b),
                Some(O::Stderr(b)) => out.stderr.extend(b),
                None => {}
            },
            Some(E::End(e)) => out.exit_code = e.exit_code,
            _ => {}
        }
    }
    Ok(out)
}

/// Starts `script` in the background (tagged `tag` unless empty): its pid.
pub async fn spawn(c: &Client, id: &str, script: &str, tag: &str) -> u32 {
    let mut req = command(script);
    if !tag.is_empty() {
        req.tag = Some(tag.into());
    }
    run(c, id, req, deadline(0), None, true)
        .await
        .unwrap_or_else(|e| panic!("start {script:?} in {id}: {e:?}"))
        .pid
}

/// Selects process `pid`.
pub fn selector(pid: u32) -> ep::ProcessSelector {
    ep::ProcessSelector {
        selector: Some(ep::process_selector::Selector::Pid(pid)),
        ..Default::default()
    }
}

/// A running agent, terminated (destroying its sandboxes) on drop.
pub struct AgentProc {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub token: String,
    _guard: std::sync::MutexGuard<'static, ()>,
}

impl AgentProc {
    pub fn start() -> AgentProc {
        let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let data_dir = PathBuf::from(format!(
            "/var/tmp/wrenn-test-agent-{}-{n}",
            std::process::id()
        ));
        let base = template_dir().join("base");
        assert!(
            base.join("rootfs/bin").exists(),
            "no test template at {}; run scripts/test.sh or `wrenn template build base`",
            base.display()
        );
        std::fs::create_dir_all(data_dir.join("templates")).unwrap();
        std::os::unix::fs::symlink(&base, data_dir.join("templates/base")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = format!("test-token-{n}");
        let mut agent = AgentProc {
            child: None,
            data_dir,
            port,
            token,
            _guard: guard,
        };
        agent.spawn();
        agent
    }

    /// Starts (or restarts) the agent process on the same data directory.
    pub fn spawn(&mut self) {
        let exe = env!("CARGO_BIN_EXE_wrenn");
        let envd = PathBuf::from(exe).with_file_name("envd");
        assert!(
            envd.exists(),
            "envd is not built next to wrenn: run `cargo build -p envd`"
        );
        let child = Command::new(exe)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "agent",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--token",
                &self.token,
            ])
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "agent did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> Client {
        agent_client(&format!("127.0.0.1:{}", self.port), &self.token)
    }

    /// SIGKILLs the agent (sandboxes keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
        // Destroy every sandbox through the agent, then let it exit.
        terminate_agent(&format!("127.0.0.1:{}", self.port), &self.token);
        if let Some(c) = self.child.take() {
            reap(c);
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Gives a process we started 10 s to exit by itself, then kills it (by
/// pid) and reaps it.
pub fn reap(mut c: Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// A client for the agent at `addr` (host:port) with its token.
pub fn agent_client(addr: &str, token: &str) -> Client {
    let config = ClientConfig::new(format!("http://{addr}").parse().unwrap())
        .with_default_header("authorization", format!("Bearer {token}"))
        .with_default_max_message_size(wrenn_protocol::hostagent::MAX_MESSAGE_BYTES);
    Client {
        rpc: HostAgentServiceClient::new(HttpClient::plaintext(), config),
        addr: addr.to_string(),
        token: token.to_string(),
    }
}

/// Asks the agent at `addr` to destroy its sandboxes and exit (from any
/// context, sync or async: on a thread of its own), waiting at most 60 s.
pub fn terminate_agent(addr: &str, token: &str) {
    let c = agent_client(addr, token);
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                c.terminate(pb::TerminateRequest {
                    destroy_sandboxes: true,
                    ..Default::default()
                }),
            )
            .await;
        })
    })
    .join();
}

/// A pause of `id`; `drop_memory`: keep only its files.
pub fn pause_req(id: &str, drop_memory: bool) -> pb::PauseRequest {
    pb::PauseRequest {
        sandbox_id: id.into(),
        drop_memory,
        ..Default::default()
    }
}

/// A resume of `id`; `reboot`: boot it again from its disk.
pub fn resume_req(id: &str, reboot: bool) -> pb::ResumeRequest {
    pb::ResumeRequest {
        sandbox_id: id.into(),
        reboot,
        ..Default::default()
    }
}

pub fn create_req(id: &str) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        sandbox_id: id.into(),
        template: "base".into(),
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 256,
        allow_internet_access: true,
        ..Default::default()
    }
}

/// The content of `path` in sandbox `id`, read through the agent's hop.
pub async fn read_file(c: &Client, id: &str, path: &str) -> Vec<u8> {
    let q = wrenn_protocol::envd::files_path(path, "");
    let (status, body) = c.envd_http(id, http::Method::GET, &q, Vec::new()).await;
    assert!(
        status.is_success(),
        "read {path:?} in {id}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    body
}

/// Writes `data` to `path` in sandbox `id` through the agent's hop.
pub async fn write_file(c: &Client, id: &str, path: &str, data: &[u8]) {
    let q = wrenn_protocol::envd::files_path(path, "");
    let (status, body) = c.envd_http(id, http::Method::POST, &q, data.to_vec()).await;
    assert!(
        status.is_success(),
        "write {path:?} in {id}: {status} {}",
        String::from_utf8_lossy(&body)
    );
}

/// Runs a shell script in a sandbox (30 s at most): (stdout, stderr, exit
/// code).
pub async fn sh(c: &Client, id: &str, script: &str) -> (String, String, i32) {
    let r = run(c, id, command(script), deadline(30), None, false)
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e:?}"));
    (
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
        r.exit_code,
    )
}

/// A unique sandbox id.
pub fn new_id(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!("sb-{tag}{n}")
}

/// What a sandbox leaves on the host: dirs, cgroups, links, mounts.
pub fn host_traces(data_dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(data_dir.join("sandboxes")) {
        out.extend(rd.flatten().map(|e| format!("dir {}", e.path().display())));
    }
    for c in ["memory", "pids", "freezer", "cpu", "cpuset"] {
        let p = PathBuf::from(format!("/sys/fs/cgroup/{c}/wrenn"));
        if let Ok(rd) = std::fs::read_dir(&p) {
            out.extend(
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| format!("cgroup {}", e.path().display())),
            );
        }
    }
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        out.extend(
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("wrenn"))
                .map(|n| format!("link {n}")),
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&data_dir.display().to_string()))
            .map(|l| format!("mount {l}")),
    );
    out
}

/// Asserts that nothing of a sandbox is left on the host (see
/// [`host_traces`]), listing what is.
///
/// A destroy answers once the sandbox is stopped and removes the rest
/// behind, so the host has 10 s to become clean.
pub fn assert_no_host_traces(data_dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut traces = host_traces(data_dir);
    while !traces.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        traces = host_traces(data_dir);
    }
    assert!(traces.is_empty(), "left on the host: {traces:?}");
}

/// An HTTP client for tests.
pub type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// A new [`Http`].
pub fn http_client() -> Http {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One request: (status, body as text, response headers).
pub async fn call_full(
    http: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, String, http::HeaderMap) {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body
        .map(|b| bytes::Bytes::from(b.to_string()))
        .unwrap_or_default();
    let resp = http
        .request(req.body(http_body_util::Full::new(body)).unwrap())
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let headers = resp.headers().clone();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (st, String::from_utf8_lossy(&b).into_owned(), headers)
}

/// Signs `email` up (password "a long password") on the server at `base`:
/// (user JWT, id of the team made for them).
pub async fn signup(http: &Http, base: &str, email: &str) -> (String, String) {
    let (st, body) = call(
        http,
        "POST",
        &format!("{base}/v1/auth/signup"),
        &[],
        Some(serde_json::json!({"email": email, "password": "a long password"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let b: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    (
        b["token"].as_str().unwrap().to_string(),
        b["team"]["id"].as_str().unwrap().to_string(),
    )
}

/// One request: (status, body as text).
pub async fn call(
    http: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let (st, b, _) = call_full(http, method, url, headers, body).await;
    (st, b)
}

/// `wrenn server` flags for tests that watch hosts come and go: heartbeats
/// every second, a host silent for 4 s is unreachable, reconciliation
/// every second.
pub const FAST_SERVER_FLAGS: [&str; 6] = [
    "--heartbeat-interval",
    "1",
    "--host-timeout",
    "4",
    "--reconcile-interval",
    "1",
];

/// A `wrenn server` on a loopback port with its own data directory (and
/// SQLite), killed and removed on drop.
pub struct ServerProc {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl ServerProc {
    /// Starts `wrenn server` with `args` after `--listen`, and waits until
    /// it listens.
    pub fn start(tag: &str, args: &[&str]) -> ServerProc {
        let dir = PathBuf::from(format!(
            "/var/tmp/wrenn-test-{tag}-{}-{}",
            std::process::id(),
            new_id("")
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["server", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn server");
        let server = ServerProc { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "wrenn server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
