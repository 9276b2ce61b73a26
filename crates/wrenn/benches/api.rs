//! The control plane's figures through the REST API, printed:
//! `cargo bench -p wrenn --bench api` (root; needs the test template).
//!
//! Starts `wrenn up` (SQLite, in-process agent) on a scratch data directory
//! and measures create-to-running, exec, GET of one sandbox under
//! concurrent load, and 100 MiB up and down through the streamed file
//! routes. `WRENN_BENCH_RUNS` (default 3) repeats; medians are printed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Http = Client<HttpConnector, Full<Bytes>>;

struct Up {
    child: Child,
    data: PathBuf,
    base: String,
    key: String,
}

impl Up {
    fn start(templates: &std::path::Path) -> Up {
        let data = PathBuf::from(format!("/var/tmp/wrenn-bench-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(data.join("templates")).unwrap();
        std::os::unix::fs::symlink(templates.join("base"), data.join("templates/base")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = data.join("cli.json");
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(&data)
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn up");
        while !(config.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
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

async fn call(
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let templates = PathBuf::from(
        std::env::var("WRENN_BENCH_TEMPLATES")
            .unwrap_or_else(|_| "/var/tmp/wrenn-test-data/templates".into()),
    );
    let runs: usize = std::env::var("WRENN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let up = Up::start(&templates);
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let http: Http = Client::builder(TokioExecutor::new()).build(conn);
    println!("control plane benchmark (wrenn up: SQLite, in-process agent): {runs} runs, medians");

    let (mut create, mut exec, mut rps, mut upload, mut download) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let mut c = vec![];
        for _ in 0..20 {
            let t = Instant::now();
            let (st, body) = call(
                &http,
                &up,
                "POST",
                "/v1/sandboxes",
                Some(serde_json::json!({ "template": "base" })),
            )
            .await;
            c.push(ms(t.elapsed()));
            assert_eq!(st, 201, "{body:?}");
            let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            call(&http, &up, "DELETE", &format!("/v1/sandboxes/{id}"), None).await;
        }
        create.push(median(c));

        let (_, body) = call(
            &http,
            &up,
            "POST",
            "/v1/sandboxes",
            Some(serde_json::json!({ "template": "base", "disk_size_mb": 1024 })),
        )
        .await;
        let id = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut e = vec![];
        for _ in 0..200 {
            let t = Instant::now();
            let (st, _) = call(
                &http,
                &up,
                "POST",
                &format!("/v1/sandboxes/{id}/exec"),
                Some(serde_json::json!({ "cmd": "/bin/true" })),
            )
            .await;
            e.push(ms(t.elapsed()));
            assert_eq!(st, 200);
        }
        exec.push(median(e));

        // GET one sandbox from 64 concurrent clients for 5 seconds.
        let done = Arc::new(AtomicU64::new(0));
        let stop = Instant::now() + Duration::from_secs(5);
        let path = format!("{}/v1/sandboxes/{id}", up.base);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (http, done, path, key) =
                    (http.clone(), done.clone(), path.clone(), up.key.clone());
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        let req = http::Request::get(&path)
                            .header("x-api-key", &key)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let resp = http.request(req).await.unwrap();
                        assert_eq!(resp.status(), 200);
                        resp.into_body().collect().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        rps.push(done.load(Ordering::Relaxed) as f64 / 5.0);

        // 100 MiB up (multipart, streamed) and down.
        let data = vec![0x5au8; 100 << 20];
        let boundary = "wrennbenchboundary";
        let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/root/big.bin\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let t = Instant::now();
        let req = http::Request::post(format!("{}/v1/sandboxes/{id}/files/stream/write", up.base))
            .header("x-api-key", &up.key)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        let st = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(st.is_success(), "{st} {b:?}");
        upload.push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        let t = Instant::now();
        let (st, got) = call(
            &http,
            &up,
            "POST",
            &format!("/v1/sandboxes/{id}/files/stream/read"),
            Some(serde_json::json!({ "path": "/root/big.bin" })),
        )
        .await;
        assert_eq!((st, got.len()), (200, data.len()));
        download.push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        call(&http, &up, "DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    }
    println!(
        "create-to-running p50 (REST)         {:>8.1} ms    (target <= 60)",
        median(create)
    );
    println!(
        "exec /bin/true p50 (REST)            {:>8.2} ms    (target <= 5)",
        median(exec)
    );
    println!(
        "GET one sandbox, 64 concurrent       {:>8.0} req/s (target >= 10000)",
        median(rps)
    );
    println!(
        "upload 100 MiB (multipart, streamed) {:>8.0} MB/s  (target >= 300)",
        median(upload)
    );
    println!(
        "download 100 MiB (streamed)          {:>8.0} MB/s  (target >= 300)",
        median(download)
    );
    drop(up);
}
