//! Property tests of what a sandbox's clients send envd: Connect bodies
//! (envelopes with any flags and lengths, any bytes) and multipart
//! uploads. envd runs in this process (its router, no socket); whatever
//! arrives, the answer is never a 5xx (a panicking handler would answer 500)
//! and never hangs, and well-formed uploads come back byte for byte.
//!
//! Bodies of arbitrary bytes go only to methods that read (List, Connect,
//! Stat, ListDir, watchers): random bytes that happened to decode into a
//! valid `Remove` or `Start` must not touch the machine running the tests.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use envd::state::{AppState, Defaults};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

/// Methods fed arbitrary bytes: none of them changes anything.
const READ_ONLY: &[&str] = &[
    "/process.Process/List",
    "/process.Process/Connect",
    "/filesystem.Filesystem/Stat",
    "/filesystem.Filesystem/ListDir",
    "/filesystem.Filesystem/WatchDir",
    "/filesystem.Filesystem/GetWatcherEvents",
    "/filesystem.Filesystem/RemoveWatcher",
];

const CONTENT_TYPES: &[&str] = &[
    "application/proto",
    "application/json",
    "application/connect+proto",
    "application/connect+json",
    "application/grpc",
    "text/plain",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn state(dir: &std::path::Path) -> AppState {
    AppState::new(Defaults {
        workdir: Some(dir.to_path_buf()),
        ..Default::default()
    })
}

/// Sends one request to envd's router: the status (within 10 s) and the
/// body. A stream that stays open (a valid `WatchDir` watches until the
/// client goes) is judged by what it sent in its first 2 s.
async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        envd::router(state.clone()).oneshot(req),
    )
    .await
    .expect("envd answered within 10 s")
    .expect("infallible");
    let status = resp.status();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
    })
    .await;
    (status, got)
}

/// A 2xx or 4xx; or the two 5xx answers the Connect protocol gives to a
/// request, not a failure: `unimplemented` (501, a streaming method called
/// as unary or the reverse) and `deadline_exceeded` (504, the deadline the
/// client set ran out). 500, 502 and 503 (a bug, a panic) never.
fn acceptable(status: StatusCode, body: &[u8]) -> bool {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    !status.is_server_error()
        || (status == StatusCode::NOT_IMPLEMENTED && code == "unimplemented")
        || (status == StatusCode::GATEWAY_TIMEOUT && code == "deadline_exceeded")
}

/// A Connect envelope: flags, a declared length (true or not), a payload.
fn envelope(flags: u8, declared: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let len = declared.unwrap_or(payload.len() as u32);
    let mut b = vec![flags];
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn scratch() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "envd-fuzz-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&d).expect("a scratch directory");
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any bytes, bare or in envelopes with any flags and declared
    /// lengths (shorter, longer, 4 GiB), under any content type: a 2xx or a
    /// 4xx (a Connect error), never a 5xx, never a hang.
    #[test]
    fn connect_bodies_of_any_shape_never_get_a_5xx(
        method in proptest::sample::select(READ_ONLY),
        content_type in proptest::sample::select(CONTENT_TYPES),
        flags in proptest::num::u8::ANY,
        declared in proptest::option::of(proptest::num::u32::ANY),
        payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        framed in proptest::bool::ANY,
        timeout_ms in proptest::option::of("[0-9]{0,12}|-1|x"),
    ) {
        let dir = scratch();
        let st = state(&dir);
        let body = if framed { envelope(flags, declared, &payload) } else { payload.clone() };
        let mut req = Request::post(method).header("content-type", content_type);
        if let Some(t) = &timeout_ms {
            req = req.header("connect-timeout-ms", t.as_str());
        }
        let req = req.body(Body::from(body)).expect("a request");
        let (status, body) = runtime().block_on(send(&st, req));
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert!(
            acceptable(status, &body),
            "{method} {content_type}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Any multipart body (any boundary, parts, names, bytes) to /files: a
    /// 2xx or a 4xx, never a 5xx, and nothing written outside the
    /// directory the upload names.
    #[test]
    fn multipart_bodies_of_any_shape_never_get_a_5xx(
        boundary in "[a-zA-Z0-9'()+_,./:=? -]{1,70}",
        declared in "[a-zA-Z0-9'()+_,./:=? -]{0,70}",
        parts in proptest::collection::vec(
            ("[a-z]{0,6}", proptest::option::of("[^\"\r\n]{0,20}"), proptest::collection::vec(proptest::num::u8::ANY, 0..200)),
            0..4,
        ),
        truncate in proptest::option::of(0usize..400),
    ) {
        let dir = scratch();
        let st = state(&dir);
        let mut body = Vec::new();
        for (name, filename, data) in &parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let mut disp = format!("Content-Disposition: form-data; name=\"{name}\"");
            if let Some(f) = filename {
                disp.push_str(&format!("; filename=\"{f}\""));
            }
            body.extend_from_slice(disp.as_bytes());
            body.extend_from_slice(b"\r\n\r\n");
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        if let Some(n) = truncate {
            body.truncate(n);
        }
        let target = dir.join("upload");
        let req = Request::post(format!("/files?path={}", target.display()))
            .header("content-type", format!("multipart/form-data; boundary={declared}"))
            .body(Body::from(body))
            .expect("a request");
        let (status, resp) = runtime().block_on(send(&st, req));
        let outside = std::fs::read_dir(&dir)
            .map(|d| d.flatten().filter(|e| e.file_name() != "upload").count())
            .unwrap_or(0);
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert!(!status.is_server_error(), "{status} {}", String::from_utf8_lossy(&resp));
        prop_assert_eq!(outside, 0, "an upload wrote beside its path");
    }

    /// A well-formed upload of any bytes under any file name comes back
    /// from a download byte for byte.
    #[test]
    fn uploads_come_back_byte_for_byte(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
        filename in "[^\"\\\\\\p{C}]{1,30}",
    ) {
        let dir = scratch();
        let st = state(&dir);
        let target = dir.join("f");
        let boundary = "wrenn-fuzz-boundary-7f3a";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let rt = runtime();
        let up = Request::post(format!("/files?path={}", target.display()))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(Body::from(body))
            .expect("a request");
        let (status, resp) = rt.block_on(send(&st, up));
        prop_assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&resp));
        let down = Request::get(format!("/files?path={}", target.display()))
            .body(Body::empty())
            .expect("a request");
        let (status, got) = rt.block_on(send(&st, down));
        let _ = std::fs::remove_dir_all(&dir);
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(got, data);
    }
}
