//! The sandbox proxy's figures, printed: `cargo bench -p wrenn --bench proxy`
//! (root; needs the test template).
//!
//! Starts `wrenn up` and one sandbox (through the E2B API), and measures a
//! small HTTP server inside it (envd's `/health`, a few bytes from a Rust
//! server, so the server is not the bottleneck) two ways: directly at the
//! sandbox's address, and through the proxy (client → control plane →
//! agent → sandbox) with `E2b-Sandbox-Id` as E2B's SDKs send it. Prints the
//! latency the proxy adds (p50 over a kept-alive connection), requests per
//! second through it from 32 concurrent clients, and the first request to
//! a paused sandbox (resumed by the traffic). `WRENN_BENCH_RUNS` (default
//! 3) repeats; medians are printed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Http, Up, call, http_client, median, ms, pct, settings};
use http_body_util::{BodyExt, Full};

/// One GET; panics unless 200.
async fn get(http: &Http, url: &str, headers: &[(&str, &str)]) {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let st = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(st.is_success(), "{url}: {st} {body:?}");
}

/// Requests per second from `clients` concurrent loops for `secs`.
async fn rps(
    http: &Http,
    url: &str,
    headers: Vec<(String, String)>,
    clients: usize,
    secs: u64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (http, done, url, headers) =
                (http.clone(), done.clone(), url.to_string(), headers.clone());
            tokio::spawn(async move {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                while Instant::now() < stop {
                    get(&http, &url, &h).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

#[tokio::main]
async fn main() {
    let (templates, runs) = settings();
    let up = Up::start(&templates);
    let http = http_client();
    println!(
        "sandbox proxy benchmark (wrenn up, envd /health as the server): {runs} runs, medians"
    );

    let (st, body) = call(
        &http,
        &up,
        "POST",
        "/v2/sandboxes",
        Some(serde_json::json!({ "templateID": "base", "timeout": 3600 })),
    )
    .await;
    assert_eq!(st, 201, "{body:?}");
    let created: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = created["sandboxID"].as_str().unwrap().to_string();
    let token = created["envdAccessToken"].as_str().unwrap().to_string();
    let (st, body) = call(
        &http,
        &up,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(serde_json::json!({ "cmd": "hostname", "args": ["-I"] })),
    )
    .await;
    assert_eq!(st, 200, "{body:?}");
    let out: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ip = out["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let direct = format!("http://{ip}:49983/health");
    let proxied = format!("{}/health", up.base);
    let proxy_headers = [
        ("e2b-sandbox-id", id.as_str()),
        ("x-access-token", token.as_str()),
    ];

    let (mut d50, mut p50, mut p99, mut added, mut thru, mut thru_direct, mut wake) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (mut d, mut p) = (vec![], vec![]);
        for _ in 0..10 {
            for _ in 0..200 {
                let t = Instant::now();
                get(&http, &direct, &[]).await;
                d.push(ms(t.elapsed()));
            }
            for _ in 0..200 {
                let t = Instant::now();
                get(&http, &proxied, &proxy_headers).await;
                p.push(ms(t.elapsed()));
            }
        }
        let (dm, pm) = (pct(&mut d, 0.5), pct(&mut p, 0.5));
        d50.push(dm);
        p50.push(pm);
        p99.push(pct(&mut p, 0.99));
        added.push(pm - dm);
        let owned: Vec<(String, String)> = proxy_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        thru.push(rps(&http, &proxied, owned, 32, 5).await);
        thru_direct.push(rps(&http, &direct, vec![], 32, 3).await);

        let (st, _) = call(&http, &up, "POST", &format!("/sandboxes/{id}/pause"), None).await;
        assert_eq!(st, 204);
        let t = Instant::now();
        get(&http, &proxied, &proxy_headers).await;
        wake.push(ms(t.elapsed()));
    }
    call(&http, &up, "DELETE", &format!("/sandboxes/{id}"), None).await;
    println!(
        "GET direct to the sandbox p50        {:>8.3} ms",
        median(d50)
    );
    println!(
        "GET through the proxy p50 / p99      {:>8.3} / {:.3} ms",
        median(p50),
        median(p99)
    );
    println!(
        "latency the proxy adds (p50)         {:>8.3} ms    (target <= 0.5)",
        median(added)
    );
    println!(
        "through the proxy, 32 clients        {:>8.0} req/s (target >= 5000)",
        median(thru)
    );
    println!(
        "direct, 32 clients (for comparison)  {:>8.0} req/s",
        median(thru_direct)
    );
    println!(
        "first request to a paused sandbox    {:>8.2} ms    (resumed by the traffic)",
        median(wake)
    );
    drop(up);
}
