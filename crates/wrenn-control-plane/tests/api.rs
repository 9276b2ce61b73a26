//! The REST API and the agent's service without root: a control plane
//! and a real agent in this process, the agent over its in-memory runtime
//! (`MemoryRuntime`, a test double whose sandboxes are real envds on
//! loopback), driven over real HTTP by the Rust client. The tests with the
//! namespace runtime (`crates/wrenn/tests`) stay; these run in seconds.
//!
//! Why this file is long (~600 lines): one harness (a stack per backend,
//! raw and typed clients) shared by every REST test without root.

use std::sync::Arc;

use serde_json::{Value, json};
use wrenn_client::types::sandboxes::CreateSandbox;
use wrenn_control_plane::api::{create_user_with_team, issue_key};
use wrenn_control_plane::auth::KeyFormat;
use wrenn_control_plane::store::{Host, Store, now};
use wrenn_control_plane::{App, ids};
use wrenn_host_agent::agent::Agent;
use wrenn_host_agent::runtime::Runtime;
use wrenn_host_agent::runtime::memory::MemoryRuntime;

/// A control plane and one agent with a host of `memory_mb`, ready for a
/// key; everything stops (and every sandbox goes) when it is dropped.
struct Stack {
    base: String,
    key: String,
    runtime: Arc<MemoryRuntime>,
    store: Store,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    dir: std::path::PathBuf,
    /// PostgreSQL: the admin URL and the database to drop at the end.
    pg: Option<(String, String)>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((admin, db)) = self.pg.take() {
            // A thread of its own: this may run inside the test's runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    if let Ok(pool) = sqlx::AnyPool::connect(&admin).await {
                        let _ = sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
                            .execute(&pool)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

enum Backend {
    Sqlite,
    Postgres,
}

/// The store for `backend`; `None` when PostgreSQL is not available here
/// (outside CI, which must have it).
async fn store(
    backend: Backend,
    dir: &std::path::Path,
) -> Option<(Store, Option<(String, String)>)> {
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}?mode=rwc", dir.join("wrenn.db").display());
            Some((Store::connect(&url).await.expect("sqlite store"), None))
        }
        Backend::Postgres => {
            let Ok(admin) = std::env::var("WRENN_TEST_PG_URL") else {
                assert!(
                    std::env::var("CI").is_err(),
                    "CI must run the PostgreSQL tests: set WRENN_TEST_PG_URL"
                );
                eprintln!("skipped on PostgreSQL: WRENN_TEST_PG_URL is not set");
                return None;
            };
            sqlx::any::install_default_drivers();
            let db = format!("wrenn_test_{}", ids::hex(6));
            let pool = sqlx::AnyPool::connect(&admin)
                .await
                .expect("the test PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&pool)
                .await
                .expect("a test database");
            let (base, _) = admin.rsplit_once('/').expect("URL ends in /<database>");
            let store = Store::connect(&format!("{base}/{db}"))
                .await
                .expect("pg store");
            Some((store, Some((admin, db))))
        }
    }
}

async fn stack(backend: Backend, memory_mb: i64) -> Option<Stack> {
    let dir = std::env::temp_dir().join(format!("wrenn-api-test-{}", ids::hex(6)));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let (store, pg) = store(backend, &dir).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);

    // The agent, on a loopback port, over the in-memory runtime.
    let runtime = MemoryRuntime::new(&["base"], dir.join("sandboxes"));
    let agent = Agent::new(runtime.clone(), dir.join("agent")).expect("agent");
    let token = ids::hex(16);
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent_listener.local_addr().unwrap();
    let router = wrenn_host_agent::server::router(agent, token.clone());
    let mut rx = stopped.clone();
    tokio::spawn(async move {
        let _ = axum::serve(agent_listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
    });
    store
        .upsert_host(&Host {
            id: "host-test".into(),
            name: "test".into(),
            address: agent_addr.to_string(),
            token,
            status: wrenn_control_plane::host_status::HostStatus::Online,
            created_at: now(),
            last_seen_at: now(),
            cpu_count: 64,
            memory_mb,
            disk_mb: 1 << 20,
            ..Default::default()
        })
        .await
        .unwrap();

    // The control plane, with least-loaded scheduling that never
    // overcommits (the default).
    let app = App::new(store.clone(), b"test-secret-test-secret-test-sec");
    let (user, team) =
        create_user_with_team(&app, "t@example.com", "password123", None, None, true)
            .await
            .expect("user");
    let (key, _) = issue_key(&app, &team.id, &user.id, "test", KeyFormat::Wrenn, true)
        .await
        .expect("key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut rx = stopped.clone();
    tokio::spawn(wrenn_control_plane::serve_on(app, listener, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    Some(Stack {
        base,
        key,
        runtime,
        store,
        stop: Some(stop),
        dir,
        pg,
    })
}

fn client(s: &Stack) -> wrenn_client::Client {
    wrenn_client::Client::new(&s.base, &s.key).unwrap()
}

fn status(e: &wrenn_client::Error) -> u16 {
    match e {
        wrenn_client::Error::Api { status, .. } => *status,
        other => panic!("not an API error: {other}"),
    }
}

/// A raw POST (the E2B routes, which the Rust client does not speak).
async fn post_raw(s: &Stack, path: &str, body: &Value) -> (u16, Value) {
    raw(s, "POST", path, body).await
}

/// A raw request with a JSON body; the status and the JSON answer.
async fn raw(s: &Stack, method: &str, path: &str, body: &Value) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        s.key,
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let code = text[9..12].parse().unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (code, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_lives_and_dies_through_rest() {
    let Some(s) = stack(Backend::Sqlite, 8192).await else {
        return;
    };
    let c = client(&s);
    let req = CreateSandbox {
        metadata: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    let sb = c.create_sandbox(&req).await.unwrap();
    let id = sb.id.clone();
    assert_eq!(sb.status, "running");
    assert_eq!(sb.template, "base");
    assert_eq!(sb.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!((sb.vcpus, sb.memory_mb), (1, 512));
    assert_eq!(s.runtime.list().len(), 1);

    // Commands and files reach the sandbox's envd through the agent.
    let out = c
        .exec(&id, "/bin/sh", &["-c", "echo hi; echo err >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(out.stdout, "hi\n");
    assert_eq!(out.stderr, "err\n");
    assert_eq!(out.exit_code, 3);
    let path = s.dir.join("sandboxes").join(&id).join("f.txt");
    let path = path.to_str().unwrap();
    let w = c
        .write_file(&id, path, bytes::Bytes::from_static(b"data"))
        .await
        .unwrap();
    assert_eq!((w.path.as_str(), w.size), (path, 4));
    assert_eq!(&c.read_file(&id, path).await.unwrap()[..], b"data");
    let big = bytes::Bytes::from(vec![7u8; 3 << 20]);
    c.write_file(&id, path, big.clone()).await.unwrap();
    assert_eq!(c.read_file(&id, path).await.unwrap(), big);
    let e = c.read_file(&id, "/nonexistent/f").await.unwrap_err();
    assert_eq!(status(&e), 404, "{e}");
    // Directories: made, listed, removed (envd's filesystem service).
    let dir = s.dir.join("sandboxes").join(&id).join("d");
    let dir = dir.to_str().unwrap();
    let files = format!("/v1/sandboxes/{id}/files");
    let (code, made) = post_raw(&s, &format!("{files}/mkdir"), &json!({ "path": dir })).await;
    assert_eq!(code, 200, "{made}");
    assert_eq!(made["entry"]["type"], "directory", "{made}");
    let (code, again) = post_raw(&s, &format!("{files}/mkdir"), &json!({ "path": dir })).await;
    assert_eq!(code, 409, "{again}");
    let parent = s.dir.join("sandboxes").join(&id);
    let (code, listed) = post_raw(
        &s,
        &format!("{files}/list"),
        &json!({ "path": parent.to_str().unwrap() }),
    )
    .await;
    assert_eq!(code, 200, "{listed}");
    let mut names: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["d", "f.txt"]);
    let typed = c
        .list_files(&id, parent.to_str().unwrap(), 1)
        .await
        .unwrap();
    assert!(typed.iter().any(|e| e.name == "d" && e.kind == "directory"));
    let (code, _) = post_raw(&s, &format!("{files}/remove"), &json!({ "path": dir })).await;
    assert_eq!(code, 204);
    assert!(!std::path::Path::new(dir).exists());

    // Pause: no exec; resume: exec again.
    assert_eq!(c.set_paused(&id, true).await.unwrap().status, "paused");
    let e = c.exec(&id, "/bin/true", &[]).await.unwrap_err();
    assert_eq!(status(&e), 409);
    assert_eq!(status(&c.set_paused(&id, true).await.unwrap_err()), 409);
    assert_eq!(c.set_paused(&id, false).await.unwrap().status, "running");
    assert_eq!(c.exec(&id, "/bin/true", &[]).await.unwrap().exit_code, 0);

    let list = c.list_sandboxes().await.unwrap();
    assert_eq!(list.len(), 1);
    // Listing by state; an unknown state is refused by name, and the state
    // older versions listed but never set is empty.
    let (code, paused) = raw(&s, "GET", "/v1/sandboxes?state=paused", &Value::Null).await;
    assert_eq!((code, paused), (200, json!([])));
    let (code, running) = raw(&s, "GET", "/v1/sandboxes?state=running", &Value::Null).await;
    assert_eq!((code, running.as_array().map(Vec::len)), (200, Some(1)));
    let (code, starting) = raw(&s, "GET", "/v1/sandboxes?state=starting", &Value::Null).await;
    assert_eq!((code, starting), (200, json!([])));
    let (code, bogus) = raw(&s, "GET", "/v1/sandboxes?state=bogus", &Value::Null).await;
    assert_eq!(code, 400);
    assert_eq!(bogus["error"]["message"], "state: unknown state 'bogus'");

    c.destroy_sandbox(&id).await.unwrap();
    assert!(s.runtime.list().is_empty());
    assert_eq!(status(&c.destroy_sandbox(&id).await.unwrap_err()), 404);
    assert_eq!(c.get_sandbox(&id).await.unwrap().status, "stopped");
    assert!(c.list_sandboxes().await.unwrap().is_empty());
}

/// A command streamed over the WebSocket: its events in order, typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_command_arrives_in_order() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use wrenn_client::types::streams::{ExecStart, ProcessMessage};
    let Some(s) = stack(Backend::Sqlite, 8192).await else {
        return;
    };
    let c = client(&s);
    let id = c
        .create_sandbox(&CreateSandbox::default())
        .await
        .unwrap()
        .id;
    let mut ws = c
        .websocket(&format!("/v1/sandboxes/{id}/exec/stream"))
        .await
        .unwrap();
    let start = ExecStart {
        cmd: Some("/bin/sh".into()),
        args: vec!["-c".into(), "echo out; echo err >&2; exit 2".into()],
    };
    ws.send(Message::Text(serde_json::to_string(&start).unwrap().into()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            seen.push(serde_json::from_str::<ProcessMessage>(&t).unwrap());
        }
    }
    assert!(
        matches!(seen.first(), Some(ProcessMessage::Start { pid }) if *pid > 0),
        "{seen:?}"
    );
    assert!(
        seen.contains(&ProcessMessage::Stdout {
            data: "out\n".into()
        }),
        "{seen:?}"
    );
    assert!(
        seen.contains(&ProcessMessage::Stderr {
            data: "err\n".into()
        }),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&ProcessMessage::Exit { exit_code: 2 }));
    c.destroy_sandbox(&id).await.unwrap();
}

/// Commands through REST: output kept up to its bound (the control plane
/// holds it, not the agent), a deadline that kills, background processes
/// listed and killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_bounded_timed_and_listed_through_rest() {
    let Some(s) = stack(Backend::Sqlite, 8192).await else {
        return;
    };
    let c = client(&s);
    let id = c
        .create_sandbox(&CreateSandbox::default())
        .await
        .unwrap()
        .id;
    let exec = format!("/v1/sandboxes/{id}/exec");
    let sh = |script: &str| json!({ "cmd": "/bin/sh", "args": ["-c", script] });

    let (code, out) = post_raw(
        &s,
        &exec,
        &sh("yes | head -c 20000000; echo tail >&2; exit 3"),
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        out["stdout"].as_str().map(str::len),
        Some(16 << 20),
        "16 MiB kept by default"
    );
    assert_eq!(
        (&out["stdout_truncated"], &out["stderr_truncated"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(
        (&out["stderr"], &out["exit_code"]),
        (&json!("tail\n"), &json!(3))
    );
    let mut req = sh("yes | head -c 3000");
    req["max_output_bytes"] = json!(1000);
    let (_, out) = post_raw(&s, &exec, &req).await;
    assert_eq!(out["stdout"].as_str().map(str::len), Some(1000));
    assert_eq!(out["stdout_truncated"], true);

    let mut req = sh("sleep 30");
    req["timeout_sec"] = json!(1);
    let t = std::time::Instant::now();
    let (code, out) = post_raw(&s, &exec, &req).await;
    assert_eq!(
        (code, &out["error"]["code"]),
        (504, &json!("timeout")),
        "{out}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(10));

    let mut req = sh("sleep 60");
    req["background"] = json!(true);
    req["tag"] = json!("sleeper");
    let (code, out) = post_raw(&s, &exec, &req).await;
    assert_eq!(code, 200, "{out}");
    let pid = out["pid"].as_u64().unwrap();
    assert!(pid > 0 && out["tag"] == "sleeper", "{out}");
    let procs = format!("/v1/sandboxes/{id}/processes");
    let (_, list) = raw(&s, "GET", &procs, &Value::Null).await;
    let listed = |list: &Value| {
        list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid && p["tag"] == "sleeper")
    };
    assert!(listed(&list), "{list}");
    let (code, _) = raw(&s, "DELETE", &format!("{procs}/{pid}"), &Value::Null).await;
    assert_eq!(code, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, list) = raw(&s, "GET", &procs, &Value::Null).await;
        if !listed(&list) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still listed: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, out) = raw(&s, "DELETE", &format!("{procs}/999999"), &Value::Null).await;
    assert_eq!(code, 404, "{out}");
    c.destroy_sandbox(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_creates_are_refused_by_both_apis_and_leave_nothing() {
    let Some(s) = stack(Backend::Sqlite, 8192).await else {
        return;
    };
    let c = client(&s);
    let many: std::collections::HashMap<String, String> = (0..65)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let with = |f: fn(&mut CreateSandbox)| {
        let mut r = CreateSandbox::default();
        f(&mut r);
        r
    };
    let mut too_many = CreateSandbox::default();
    too_many.metadata = Some(many.clone());
    for (req, needle) in [
        (with(|r| r.vcpus = Some(0)), "vcpus"),
        (with(|r| r.memory_mb = Some(1)), "memory_mb"),
        (too_many, "metadata"),
        (with(|r| r.template = Some("nope".into())), "nope"),
        (with(|r| r.memory_mb = Some(16384)), "no host is that large"),
    ] {
        let e = c.create_sandbox(&req).await.unwrap_err();
        assert_eq!(status(&e), 400, "{req:?}: {e}");
        assert!(e.to_string().contains(needle), "{e} !~ {needle}");
    }
    // The E2B create checks metadata as the native one does.
    let (code, body) = post_raw(
        &s,
        "/sandboxes",
        &json!({ "templateID": "base", "metadata": many }),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("metadata"),
        "{body}"
    );
    let (code, body) = post_raw(&s, "/sandboxes", &json!({})).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("templateID"),
        "{body}"
    );
    // A host that fails the create: recorded error, nothing on the host.
    s.runtime.fail_next_creates(1);
    let e = c
        .create_sandbox(&CreateSandbox::default())
        .await
        .unwrap_err();
    assert_eq!(status(&e), 500, "{e}");
    assert!(s.runtime.list().is_empty());
    // Nothing but the errored one is listed, and it can be destroyed.
    let listed = c.list_sandboxes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "error");
    c.destroy_sandbox(&listed[0].id).await.unwrap();
    assert!(c.list_sandboxes().await.unwrap().is_empty());
    // An E2B create works and defaults its timeout to the 300 s E2B's
    // documentation promises.
    let (code, body) = post_raw(&s, "/sandboxes", &json!({ "templateID": "base" })).await;
    assert_eq!(code, 201, "{body}");
    let id = body["sandboxID"].as_str().unwrap();
    assert_eq!(c.get_sandbox(id).await.unwrap().timeout_sec, 300);
    assert_eq!(body["envdVersion"], wrenn_protocol::envd::VERSION);
}

/// 50 creates at once against a host with room for 4: exactly 4 run, the
/// others are told there is no room, and the host is never promised more
/// than it has.
async fn concurrent_creates_never_overcommit(backend: Backend) {
    let Some(s) = stack(backend, 2048).await else {
        return;
    };
    let c = client(&s);
    let calls = (0..50).map(|_| {
        let c = c.clone();
        async move {
            let req = CreateSandbox {
                memory_mb: Some(512),
                timeout_sec: Some(0),
                ..Default::default()
            };
            c.create_sandbox(&req).await
        }
    });
    let results = futures::future::join_all(calls).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<u16> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(status)
        .collect();
    assert_eq!(created, 4, "refusals: {refused:?}");
    assert!(refused.iter().all(|&s| s == 503), "{refused:?}");
    assert_eq!(s.runtime.list().len(), 4);
    let held = s.store.allocated_on("host-test").await.unwrap();
    assert_eq!((held.sandboxes, held.memory_mb), (4, 2048));
    for sb in c.list_sandboxes().await.unwrap() {
        c.destroy_sandbox(&sb.id).await.unwrap();
    }
    assert!(s.runtime.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overcommit_on_sqlite() {
    concurrent_creates_never_overcommit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overcommit_on_postgres() {
    concurrent_creates_never_overcommit(Backend::Postgres).await;
}

/// A host that reported its templates gets only sandboxes of those; the
/// template list comes from the reports, and a template removed from a
/// host leaves its report at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_get_only_templates_they_reported() {
    let Some(s) = stack(Backend::Sqlite, 8192).await else {
        return;
    };
    let c = client(&s);
    let report = vec!["base".to_string(), "tools".to_string()];
    assert!(
        s.store
            .online_host_seen("host-test", Some(("memory", &report)))
            .await
            .unwrap()
    );
    let h = s.store.host("host-test").await.unwrap().unwrap();
    assert_eq!(
        (h.runtime.as_str(), h.templates.clone()),
        ("memory", Some(report.clone()))
    );
    // Reported names enter the catalog once, as shared base templates.
    for _ in 0..2 {
        s.store.record_reported_templates(&report).await.unwrap();
    }
    let catalog = s.store.templates_for("any-team").await.unwrap();
    let kinds: Vec<(&str, &str, &str)> = catalog
        .iter()
        .map(|t| (t.name.as_str(), t.kind.as_str(), t.team_id.as_str()))
        .collect();
    assert_eq!(kinds, vec![("base", "base", ""), ("tools", "base", "")]);
    // Not on the host: refused by the control plane, naming the template.
    let e = c
        .create_sandbox(&CreateSandbox {
            template: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status(&e), 400);
    assert!(
        e.to_string().contains("template 'nope' is on no host"),
        "{e}"
    );
    // Listed from the report (the agent itself has only `base`).
    let names: Vec<String> = c
        .list_templates()
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names, report);
    // Removed where it was: no longer reported, no longer placed there.
    let (code, body) = raw(&s, "DELETE", "/v1/templates/base", &Value::Null).await;
    assert_eq!(code, 200, "{body}");
    let h = s.store.host("host-test").await.unwrap().unwrap();
    assert_eq!(h.templates, Some(vec!["tools".to_string()]));
    let e = c
        .create_sandbox(&CreateSandbox::default())
        .await
        .unwrap_err();
    assert_eq!(status(&e), 400, "{e}");
    assert!(
        e.to_string().contains("template 'base' is on no host"),
        "{e}"
    );
}
