//! What the REST benchmarks share: `wrenn up` on a scratch data directory,
//! an HTTP client, and medians.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1.1 client.
pub type Http = Client<HttpConnector, Full<Bytes>>;

/// `wrenn up` running on a scratch data directory.
pub struct Up {
    /// Its process.
    pub child: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The admin's API key.
    pub key: String,
}

impl Up {
    /// Starts it with the test `base` template of `templates`.
    pub fn start(templates: &std::path::Path) -> Up {
        Self::start_with(templates, &[])
    }

    /// Starts it with the test `base` template and `extra` flags of `up`.
    pub fn start_with(templates: &std::path::Path, extra: &[&str]) -> Up {
        let data = scratch_data_dir(templates);
        let port = free_port();
        let config = data.join("cli.json");
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(&data)
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .arg("--envd")
            .arg(static_envd())
            .args(extra)
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn up");
        while !(config.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        // Benchmarks build with panic = "abort": no Drop runs on a failed
        // assertion, but the panic hook does. It stops `wrenn up` (which
        // destroys its sandboxes) and removes the data directory.
        let (pid, dir) = (child.id(), data.clone());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            for _ in 0..300 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                    })
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }));
        Up {
            child,
            data,
            base: format!("http://127.0.0.1:{port}"),
            key: cfg["api_key"].as_str().unwrap().to_string(),
        }
    }
}

impl Drop for Up {
    /// Ctrl-C: wrenn up destroys its sandboxes and exits; then its data
    /// goes. Runs on a panic too.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// One API call with the admin key: (status, body).
pub async fn call(
    http: &Http,
    up: &Up,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, Bytes) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", up.base))
        .header("x-api-key", &up.key);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let resp = http
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

/// The target triple the static envd is built for: this host's.
pub fn envd_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Builds envd as `scripts/up.sh` does (release, static, not
/// position-independent, for [`envd_triple`]) into `target`, with cargo's
/// output to `output`; whether it succeeded.
pub fn build_static_envd(target: &std::path::Path, output: Stdio) -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "-p", "envd", "--target"])
        .arg(envd_triple())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .stdout(Stdio::null())
        .stderr(output)
        .status()
        .is_ok_and(|s| s.success())
}

/// envd as `scripts/up.sh` builds and installs it, built now if it is not
/// up to date: the figures are for what users run.
pub fn static_envd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let wrenn = PathBuf::from(env!("CARGO_BIN_EXE_wrenn"));
            let target = wrenn.parent().and_then(|p| p.parent()).unwrap();
            assert!(
                build_static_envd(target, Stdio::inherit()),
                "building the static envd failed"
            );
            target.join(envd_triple()).join("release").join("envd")
        })
        .clone()
}

/// bwrap's create-exec-destroy of `true` in new namespaces, p50 of 20 in
/// ms: the yardstick the figures are set against. `None` when bwrap is
/// missing or cannot run here.
pub fn bwrap_cycle() -> Option<f64> {
    let mut v = vec![];
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let st = Command::new("bwrap")
            .args([
                "--ro-bind",
                "/",
                "/",
                "--unshare-all",
                "--die-with-parent",
                "true",
            ])
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        v.push(ms(t.elapsed()));
    }
    Some(median(v))
}

/// The median.
pub fn median(mut v: Vec<f64>) -> f64 {
    pct(&mut v, 0.5)
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; sorts `v`.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (up to 20 s) until something listens on 127.0.0.1:`port`.
pub fn wait_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh `/var/tmp/wrenn-bench-<pid>` whose `base` template is the one
/// in `templates`.
pub fn scratch_data_dir(templates: &std::path::Path) -> PathBuf {
    let data = PathBuf::from(format!("/var/tmp/wrenn-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(data.join("templates")).unwrap();
    std::os::unix::fs::symlink(templates.join("base"), data.join("templates/base")).unwrap();
    data
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A client with `TCP_NODELAY`.
pub fn http_client() -> Http {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(conn)
}

/// Where the benchmarks find the test template, and how many runs.
pub fn settings() -> (PathBuf, usize) {
    let templates = PathBuf::from(
        std::env::var("WRENN_BENCH_TEMPLATES")
            .unwrap_or_else(|_| "/var/tmp/wrenn-test-data/templates".into()),
    );
    assert!(
        templates.join("base/rootfs/bin").exists(),
        "no base template in {}; build one with `wrenn template build base`",
        templates.display()
    );
    let runs: usize = std::env::var("WRENN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    (templates, runs)
}
