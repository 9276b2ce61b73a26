//! The control plane's figures through the REST API, printed:
//! `cargo bench -p wrenn --bench api` (root; needs the test template).
//!
//! Starts `wrenn up` (SQLite, in-process agent) on a scratch data directory
//! and measures create-to-running, exec, GET of one sandbox under
//! concurrent load, and 100 MiB up and down through the streamed file
//! routes. `WRENN_BENCH_RUNS` (default 3) repeats; medians are printed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Up, call, http_client, median, ms, settings};
use http_body_util::{BodyExt, Full};

#[tokio::main]
async fn main() {
    let (templates, runs) = settings();
    let up = Up::start(&templates);
    let http = http_client();
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
