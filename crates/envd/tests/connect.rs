//! envd over the Connect protocol, driven by the generated Rust client
//! (binary and JSON) and by raw HTTP for malformed input.

mod common;

use std::time::{Duration, Instant};

use common::{Envd, http};
use connectrpc::client::{CallOptions, ClientConfig, HttpClient};
use wrenn_protocol::envd::filesystem::{FilesystemClient, StatRequest};
use wrenn_protocol::envd::process::{
    self as pb, ProcessClient, process_event, process_input, process_selector, stream_input_request,
};

type Client = ProcessClient<HttpClient>;

fn client(envd: &Envd, json: bool) -> Client {
    let mut config = ClientConfig::new(envd.url("").parse().unwrap())
        .with_default_header("x-access-token", envd.token.as_str());
    if json {
        config = config.json();
    }
    ProcessClient::new(HttpClient::plaintext(), config)
}

fn start_req(cmd: &str, args: &[&str], stdin: bool) -> pb::StartRequest {
    pb::StartRequest {
        process: pb::ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .into(),
        stdin: Some(stdin),
        ..Default::default()
    }
}

/// What one Start stream produced.
#[derive(Default, Debug)]
struct Run {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    end: Option<process_event::EndEvent>,
}

async fn run(c: &Client, req: pb::StartRequest) -> Run {
    let mut stream = c.start(req).await.expect("start");
    let mut r = Run::default();
    while let Some(msg) = stream.message::<pb::StartResponse>().await.expect("stream") {
        let ev = msg
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
            .expect("event");
        match ev {
            process_event::Event::Start(s) => r.pid = s.pid,
            process_event::Event::Data(d) => match d.output {
                Some(process_event::data_event::Output::Stdout(b)) => r.stdout.extend(b),
                Some(process_event::data_event::Output::Stderr(b)) => r.stderr.extend(b),
                _ => {}
            },
            process_event::Event::End(e) => r.end = Some(*e),
            process_event::Event::Keepalive(_) => {}
        }
    }
    r
}

fn selector(pid: u32) -> pb::ProcessSelector {
    pb::ProcessSelector {
        selector: Some(process_selector::Selector::Pid(pid)),
        ..Default::default()
    }
}

#[tokio::test]
async fn start_reports_output_and_exit_in_binary_and_json() {
    let envd = Envd::start();
    for json in [false, true] {
        let c = client(&envd, json);
        let r = run(
            &c,
            start_req("/bin/sh", &["-c", "echo out; echo err >&2; exit 7"], false),
        )
        .await;
        assert!(r.pid > 0, "json={json}: start event carries the pid");
        assert_eq!(r.stdout, b"out\n", "json={json}");
        assert_eq!(r.stderr, b"err\n", "json={json}");
        let end = r.end.expect("end event");
        assert_eq!(
            (end.exit_code, end.exited, end.status.as_str()),
            (7, true, "exit status 7"),
            "json={json}"
        );
    }
}

#[tokio::test]
async fn output_streams_before_the_process_exits() {
    let envd = Envd::start();
    let c = client(&envd, false);
    let t0 = Instant::now();
    let mut stream = c
        .start(start_req(
            "/bin/sh",
            &["-c", "echo first; sleep 3; echo second"],
            false,
        ))
        .await
        .unwrap();
    loop {
        let msg = stream
            .message::<pb::StartResponse>()
            .await
            .unwrap()
            .expect("event before end");
        if let Some(process_event::Event::Data(_)) = msg
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            break;
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "first line arrived after {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn client_streamed_input_reaches_stdin_in_order() {
    let envd = Envd::start();
    let c = client(&envd, false);
    let mut stream = c.start(start_req("/bin/cat", &[], true)).await.unwrap();
    let first = stream
        .message::<pb::StartResponse>()
        .await
        .unwrap()
        .unwrap()
        .to_owned_message();
    let Some(process_event::Event::Start(s)) = first.event.into_option().and_then(|e| e.event)
    else {
        panic!("start first")
    };
    let mut msgs = vec![pb::StreamInputRequest {
        event: Some(
            stream_input_request::StartEvent {
                process: selector(s.pid).into(),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }];
    for i in 0..50 {
        msgs.push(pb::StreamInputRequest {
            event: Some(
                stream_input_request::DataEvent {
                    input: pb::ProcessInput {
                        input: Some(process_input::Input::Stdin(format!("{i},").into_bytes())),
                        ..Default::default()
                    }
                    .into(),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        });
    }
    c.stream_input(futures::stream::iter(msgs))
        .await
        .expect("stream input");
    c.close_stdin(pb::CloseStdinRequest {
        process: selector(s.pid).into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    while let Some(msg) = stream.message::<pb::StartResponse>().await.unwrap() {
        if let Some(process_event::Event::Data(d)) = msg
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            if let Some(process_event::data_event::Output::Stdout(b)) = d.output {
                out.extend(b);
            }
        }
    }
    let want: String = (0..50).map(|i| format!("{i},")).collect();
    assert_eq!(String::from_utf8(out).unwrap(), want);
}

#[tokio::test]
async fn the_request_deadline_kills_the_process() {
    let envd = Envd::start();
    let c = client(&envd, false);
    let opts = CallOptions::default().with_timeout(Duration::from_millis(300));
    let mut stream = c
        .start_with_options(start_req("/bin/sleep", &["30"], false), opts)
        .await
        .unwrap();
    let mut pid = 0;
    let err = loop {
        match stream.message::<pb::StartResponse>().await {
            Ok(Some(m)) => {
                if let Some(process_event::Event::Start(s)) = m
                    .to_owned_message()
                    .event
                    .into_option()
                    .and_then(|e| e.event)
                {
                    pid = s.pid;
                }
            }
            Ok(None) => panic!("stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code, connectrpc::ErrorCode::DeadlineExceeded, "{err:?}");
    assert!(pid > 0);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let list = c
            .list(pb::ListRequest::default())
            .await
            .unwrap()
            .into_owned();
        if list.processes.iter().all(|p| p.pid != pid)
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep {pid} still alive after its deadline"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unknown_process_and_path_are_not_found() {
    let envd = Envd::start();
    let c = client(&envd, false);
    let err = c
        .send_signal(pb::SendSignalRequest {
            process: selector(999_999).into(),
            signal: pb::Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::NotFound);
    let fs = FilesystemClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(envd.url("").parse().unwrap())
            .with_default_header("x-access-token", envd.token.as_str()),
    );
    let err = fs
        .stat(StatRequest {
            path: "/no/such/path".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::NotFound);

    let r = http(
        "GET",
        &envd.url("/files?path=/no/such/file"),
        &[("x-access-token", &envd.token)],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], 404);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/file")
    );
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_and_unknown_fields_ignored() {
    let envd = Envd::start();
    let tok = envd.token.as_str();
    let cases: &[(&str, &str, &[u8], u16, Option<&str>)] = &[
        (
            "/filesystem.Filesystem/Stat",
            "application/json",
            b"{not json",
            400,
            Some("invalid_argument"),
        ),
        (
            "/filesystem.Filesystem/Stat",
            "application/json",
            b"{\"path\": 5}",
            400,
            Some("invalid_argument"),
        ),
        (
            "/filesystem.Filesystem/Stat",
            "application/proto",
            b"\xff\xff\xff\xff\xff",
            400,
            Some("invalid_argument"),
        ),
        (
            "/filesystem.Filesystem/Stat",
            "application/json",
            b"{\"path\":\"/\",\"bogus\":1}",
            200,
            None,
        ),
        // field 99 (varint) is unknown to StatRequest
        (
            "/filesystem.Filesystem/Stat",
            "application/proto",
            b"\x0a\x01/\xb8\x06\x01",
            200,
            None,
        ),
        (
            "/process.Process/Start",
            "application/connect+json",
            b"\x00\x00\x00\x00\x03{x}",
            200,
            Some("invalid_argument"),
        ),
    ];
    for (path, ct, body, status, code) in cases {
        let r = http(
            "POST",
            &envd.url(path),
            &[("content-type", ct), ("x-access-token", tok)],
            body.to_vec(),
        )
        .await;
        assert_eq!(r.status, *status, "{path} {ct} {body:?}: {:?}", r.body);
        if let Some(code) = code {
            let text = String::from_utf8_lossy(&r.body);
            assert!(
                text.contains(code),
                "{path} {ct} {body:?}: want {code}, got {text}"
            );
        }
    }
    // envd still answers after all of that.
    assert_eq!(http("GET", &envd.url("/health"), &[], "").await.status, 204);
}

#[tokio::test]
async fn the_access_token_guards_everything_but_health_and_init() {
    let envd = Envd::start();
    assert_eq!(http("GET", &envd.url("/health"), &[], "").await.status, 204);
    let r = http(
        "POST",
        &envd.url("/process.Process/List"),
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthenticated");
    let r = http(
        "GET",
        &envd.url("/envs"),
        &[("x-access-token", "wrong")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    // /init cannot change the token without the current one.
    let r = http(
        "POST",
        &envd.url("/init"),
        &[("content-type", "application/json")],
        r#"{"accessToken":"mine"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = http(
        "POST",
        &envd.url("/init"),
        &[
            ("content-type", "application/json"),
            ("x-access-token", &envd.token),
        ],
        r#"{"envVars":{"A":"1"},"defaultWorkdir":"/tmp"}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = http(
        "GET",
        &envd.url("/envs"),
        &[("x-access-token", &envd.token)],
        "",
    )
    .await;
    assert_eq!(r.json()["A"], "1");
}

#[tokio::test]
async fn signed_file_urls_read_and_write_until_they_expire() {
    let envd = Envd::start();
    let dir = std::env::temp_dir().join(format!("envd-signed-{}", envd.port));
    let path = dir.join("s.txt").display().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig =
        |op: &str, exp: Option<i64>| envd::auth::file_signature(&path, op, "", &envd.token, exp);
    let enc = |s: String| {
        s.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    };

    let w = sig("write", Some(now + 60));
    let url = envd.url(&format!(
        "/files?path={path}&signature={}&signature_expiration={}",
        enc(w),
        now + 60
    ));
    let r = http(
        "POST",
        &url,
        &[("content-type", "application/octet-stream")],
        "signed!",
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let url = envd.url(&format!(
        "/files?path={path}&signature={}",
        enc(sig("read", None))
    ));
    let r = http("GET", &url, &[], "").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"signed!"[..]));

    // A write signature does not read, and an expired one does nothing.
    let url = envd.url(&format!(
        "/files?path={path}&signature={}",
        enc(sig("write", None))
    ));
    assert_eq!(http("GET", &url, &[], "").await.status, 401);
    let url = envd.url(&format!(
        "/files?path={path}&signature={}&signature_expiration={}",
        enc(sig("read", Some(now - 10))),
        now - 10
    ));
    let r = http("GET", &url, &[], "").await;
    assert_eq!(r.status, 401);
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn dropped_streams_leave_processes_running_and_leak_nothing() {
    let envd = Envd::start();
    let c = client(&envd, false);
    // Warm up lazily created runtime resources before the baseline.
    let _ = run(&c, start_req("/bin/true", &[], false)).await;
    let baseline = envd.fd_count();
    let mut pids = Vec::new();
    for _ in 0..20 {
        let mut stream = c
            .start(start_req(
                "/bin/sh",
                &["-c", "while :; do echo tick; sleep 0.01; done"],
                true,
            ))
            .await
            .unwrap();
        // Read the start event and some output, then hang up mid-stream.
        for _ in 0..3 {
            let m = stream
                .message::<pb::StartResponse>()
                .await
                .unwrap()
                .unwrap()
                .to_owned_message();
            if let Some(process_event::Event::Start(s)) =
                m.event.into_option().and_then(|e| e.event)
            {
                pids.push(s.pid);
            }
        }
        drop(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed: Vec<u32> = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_owned()
        .processes
        .iter()
        .map(|p| p.pid)
        .collect();
    for pid in &pids {
        assert!(listed.contains(pid), "process {pid} died with its stream");
    }
    // Re-attach to one of them, then hang up again.
    let mut attached = c
        .connect(pb::ConnectRequest {
            process: selector(pids[0]).into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = attached
        .message::<pb::ConnectResponse>()
        .await
        .unwrap()
        .unwrap()
        .to_owned_message();
    assert!(
        matches!(first.event.into_option().and_then(|e| e.event), Some(process_event::Event::Start(s)) if s.pid == pids[0])
    );
    drop(attached);
    for pid in &pids {
        c.send_signal(pb::SendSignalRequest {
            process: selector(*pid).into(),
            signal: pb::Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = c
            .list(pb::ListRequest::default())
            .await
            .unwrap()
            .into_owned()
            .processes
            .len();
        let settled = left == 0 && envd.children().is_empty() && envd.fd_count() <= baseline;
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after kill: {left} listed, children {:?}, zombies {:?}, fds {} (baseline {baseline})",
            envd.children(),
            envd.zombie_children(),
            envd.fd_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
