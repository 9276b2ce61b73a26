//! The sandbox proxy with `--no-auto-resume`, through `wrenn server` in
//! front of a real agent (`--agent`): a paused sandbox's port answers 409
//! naming the way out, and answers again once the sandbox is resumed.

mod common;

use std::time::{Duration, Instant};

use common::{ServerProc, call, http_client, signup};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_sandbox_answers_409_without_auto_resume() {
    let agent = common::AgentProc::start();
    let agent_addr = format!("127.0.0.1:{}", agent.port);
    let server = ServerProc::start(
        "proxy",
        &[
            "--no-auto-resume",
            "--agent",
            &agent_addr,
            "--agent-token",
            &agent.token,
        ],
    );
    let port = server.port;
    let http = http_client();
    let base = server.base();
    let (token, _) = signup(&http, &base, "p@proxy.test").await;
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
