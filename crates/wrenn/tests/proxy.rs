//! The sandbox proxy with `--no-auto-resume`, through `wrenn server` in
//! front of a real agent (`--agent`): a paused sandbox's port answers 409
//! naming the way out, and answers again once the sandbox is resumed.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn call(
    http: &Http,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, String) {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let resp = http
        .request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (st, String::from_utf8_lossy(&b).into_owned())
}

struct Server(std::process::Child, std::path::PathBuf);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_sandbox_answers_409_without_auto_resume() {
    let agent = common::AgentProc::start();
    let dir = std::path::PathBuf::from(format!("/var/tmp/wrenn-test-proxy-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--no-auto-resume",
            ])
            .args(["--agent", &format!("127.0.0.1:{}", agent.port)])
            .args(["--agent-token", &agent.token])
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn server"),
        dir.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "wrenn server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let http: Http =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let base = format!("http://127.0.0.1:{port}");
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/auth/signup"),
        &[],
        Some(json!({"email": "p@proxy.test", "password": "proxy-password"})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str())];
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/sandboxes"),
        &h,
        Some(json!({"template": "base", "memory_mb": 256, "public_ports": [8000]})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let sid = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/sandboxes/{sid}/exec"),
        &h,
        Some(json!({"cmd": "/bin/sh", "args": ["-c", "cd /tmp && echo up > index.html && exec python3 -m http.server 8000"], "background": true})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let host = format!("8000-{sid}.localhost:{port}");
    let host = [("host", host.as_str())];
    let url = format!("{base}/index.html");
    let page = || call(&http, "GET", &url, &host, None);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, body) = page().await;
        if st == 200 {
            assert_eq!(body, "up\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never answered: {st} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, _) = call(
        &http,
        "POST",
        &format!("{base}/v1/sandboxes/{sid}/pause"),
        &h,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = page().await;
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("paused") && body.contains("resume"), "{body}");
    let (st, _) = call(
        &http,
        "POST",
        &format!("{base}/v1/sandboxes/{sid}/resume"),
        &h,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = page().await;
    assert_eq!((st, body.as_str()), (200, "up\n"));
    let (st, _) = call(
        &http,
        "DELETE",
        &format!("{base}/v1/sandboxes/{sid}"),
        &h,
        None,
    )
    .await;
    assert_eq!(st, 204);
    drop(server);
    drop(agent);
}
