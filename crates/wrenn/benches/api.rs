//! The control plane's figures through the REST API, printed:
//! `cargo bench -p wrenn --bench api` (root; needs the test template).
//!
//! Starts `wrenn up` (SQLite, in-process agent) on a scratch data directory
//! and measures create-to-running, create-to-first-exec, exec, the answer
//! to a destroy, GET of one sandbox under concurrent load, and 100 MiB up
//! and down through the streamed file routes. `WRENN_BENCH_RUNS` (default
//! 3) repeats; medians are printed, with the goals and bwrap's bare
//! create-exec-destroy of the same run beside them as the yardstick.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Http, Up, bwrap_cycle, call, http_client, median, ms, settings};
use http_body_util::{BodyExt, Full};

/// Creates a sandbox; its id.
async fn create(http: &Http, up: &Up, body: serde_json::Value) -> String {
    let (st, got) = call(http, up, "POST", "/v1/sandboxes", Some(body)).await;
    assert_eq!(st, 201, "{got:?}");
    serde_json::from_slice::<serde_json::Value>(&got).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn exec_true(http: &Http, up: &Up, id: &str) {
    let (st, got) = call(
        http,
        up,
        "POST",
        &format!("/v1/sandboxes/{id}/exec"),
        Some(serde_json::json!({ "cmd": "/bin/true" })),
    )
    .await;
    assert_eq!(st, 200, "{got:?}");
}

#[tokio::main]
async fn main() {
    let (templates, runs) = settings();
    let up = Up::start(&templates);
    let http = http_client();
    println!("control plane benchmark (wrenn up: SQLite, in-process agent): {runs} runs, medians");
    let bwrap = bwrap_cycle();

    let (mut create_p50, mut first_exec_p50, mut exec, mut destroy_p50) =
        (vec![], vec![], vec![], vec![]);
    let (mut rps, mut upload, mut download) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let (mut c, mut f, mut d) = (vec![], vec![], vec![]);
        for _ in 0..20 {
            let t = Instant::now();
            let id = create(&http, &up, serde_json::json!({ "template": "base" })).await;
            c.push(ms(t.elapsed()));
            exec_true(&http, &up, &id).await;
            f.push(ms(t.elapsed()));
            let t = Instant::now();
            let (st, _) = call(&http, &up, "DELETE", &format!("/v1/sandboxes/{id}"), None).await;
            d.push(ms(t.elapsed()));
            assert_eq!(st, 204);
        }
        create_p50.push(median(c));
        first_exec_p50.push(median(f));
        destroy_p50.push(median(d));

        let id = create(
            &http,
            &up,
            serde_json::json!({ "template": "base", "disk_size_mb": 1024 }),
        )
        .await;
        let mut e = vec![];
        for _ in 0..200 {
            let t = Instant::now();
            exec_true(&http, &up, &id).await;
            e.push(ms(t.elapsed()));
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

        // 100 MiB up (multipart, streamed) and down (counted as it comes,
        // never gathered in one buffer).
        let data = vec![0x5au8; 100 << 20];
        let boundary = "wrennbenchboundary";
        let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n/root/big.bin\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n").into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = Bytes::from(body);
        let t = Instant::now();
        let req = http::Request::post(format!("{}/v1/sandboxes/{id}/files/stream/write", up.base))
            .header("x-api-key", &up.key)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Full::new(body))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        let st = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(st.is_success(), "{st} {b:?}");
        upload.push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        let t = Instant::now();
        let req = http::Request::post(format!("{}/v1/sandboxes/{id}/files/stream/read", up.base))
            .header("x-api-key", &up.key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(r#"{"path":"/root/big.bin"}"#)))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(chunk) = frame.unwrap().into_data() {
                got += chunk.len();
            }
        }
        assert_eq!(got, data.len());
        download.push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
        call(&http, &up, "DELETE", &format!("/v1/sandboxes/{id}"), None).await;
    }
    let yardstick = |v: f64| match bwrap {
        Some(b) => format!("{:>5.1}x bwrap", v / b),
        None => String::new(),
    };
    let rows = [
        ("create-to-running p50", median(create_p50), "ms", "<= 15"),
        (
            "create-to-first-exec p50",
            median(first_exec_p50),
            "ms",
            "<= 20",
        ),
        ("exec /bin/true p50", median(exec), "ms", "<= 1.5"),
        ("destroy answered p50", median(destroy_p50), "ms", "<= 5"),
    ];
    for (what, v, unit, goal) in rows {
        println!(
            "{what:<38}{v:>9.2} {unit:<6}(goal {goal})  {}",
            yardstick(v)
        );
    }
    let rows = [
        (
            "GET one sandbox, 64 clients",
            median(rps),
            "req/s",
            ">= 30000",
        ),
        (
            "upload 100 MiB (multipart, streamed)",
            median(upload),
            "MB/s",
            ">= 1000",
        ),
        (
            "download 100 MiB (streamed)",
            median(download),
            "MB/s",
            ">= 1000",
        ),
    ];
    for (what, v, unit, goal) in rows {
        println!("{what:<38}{v:>9.0} {unit:<6}(goal {goal})");
    }
    match bwrap {
        Some(b) => println!(
            "{:<38}{b:>9.2} ms    (the yardstick)",
            "bwrap create-exec-destroy p50"
        ),
        None => println!("bwrap: not installed or not usable here"),
    }
    drop(up);
}
