//! The control plane with a fleet, printed: `cargo bench -p wrenn --bench fleet`
//! (root).
//!
//! Starts a real `wrenn server` (SQLite) and one real `wrenn agent`, then
//! registers 200 simulated hosts: real host records and credentials that
//! all point at that one agent (which runs no sandboxes, so each answers
//! `ListSandboxes` like an idle host). 200 clients heartbeat once a second
//! with their host JWTs. Prints the control plane's CPU time per heartbeat
//! (from /proc, utime + stime), heartbeat latency, and the time of one full
//! reconciliation pass over the 200 hosts (the library's `reconcile::pass`
//! against the server's database). `WRENN_BENCH_HOSTS` (default 200),
//! `WRENN_BENCH_RUNS` (default 3).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Http, free_port, http_client, median, ms, wait_port};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

struct Procs {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn post(http: &Http, url: &str, bearer: &str, body: Value) -> (u16, Value) {
    let mut req = http::Request::post(url).header("content-type", "application/json");
    if !bearer.is_empty() {
        req = req.header("authorization", format!("Bearer {bearer}"));
    }
    let resp = http
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let st = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // USER_HZ: 100 on every Linux architecture Wrenn runs on.
    ticks / 100.0
}

#[tokio::main]
async fn main() {
    let hosts: usize = std::env::var("WRENN_BENCH_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runs: usize = std::env::var("WRENN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let exe = env!("CARGO_BIN_EXE_wrenn");
    let dir = PathBuf::from(format!("/var/tmp/wrenn-bench-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut procs = Procs {
        children: vec![],
        dir: dir.clone(),
    };
    let (agent_port, cp_port) = (free_port(), free_port());
    let agent_token = format!("bench-agent-token-{}", std::process::id());
    procs.children.push(
        Command::new(exe)
            .arg("--data-dir")
            .arg(dir.join("agent"))
            .args(["agent", "--listen", &format!("127.0.0.1:{agent_port}")])
            .args([
                "--token",
                &agent_token,
                "--cgroup-parent",
                "wrenn-bench-fleet",
            ])
            .env("WRENN_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn agent"),
    );
    procs.children.push(
        Command::new(exe)
            .arg("--data-dir")
            .arg(dir.join("cp"))
            .args(["server", "--listen", &format!("127.0.0.1:{cp_port}")])
            .args(["--reconcile-interval", "3600", "--host-timeout", "3600"])
            .env("WRENN_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start wrenn server"),
    );
    // panic = "abort" in benchmarks: no Drop on a failed assertion, so the
    // panic hook kills what we started (by pid) and removes the directory.
    let (pids, hook_dir) = (
        procs.children.iter().map(Child::id).collect::<Vec<_>>(),
        dir.clone(),
    );
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        for pid in &pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(&hook_dir);
    }));
    wait_port(agent_port);
    wait_port(cp_port);
    let cp_pid = procs.children[1].id();
    let base = format!("http://127.0.0.1:{cp_port}");
    let http = http_client();
    println!(
        "fleet benchmark: wrenn server (SQLite) with {hosts} simulated hosts, {runs} runs, medians"
    );

    let (st, v) = post(
        &http,
        &format!("{base}/v1/auth/signup"),
        "",
        json!({"email": "admin@bench.test", "password": "bench-password"}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let admin = v["token"].as_str().unwrap().to_string();
    let t = Instant::now();
    let mut jwts = vec![];
    for i in 0..hosts {
        let (st, v) = post(
            &http,
            &format!("{base}/v1/hosts"),
            &admin,
            json!({"name": format!("sim{i}")}),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        let token = v["registration_token"].as_str().unwrap();
        let (st, v) = post(
            &http,
            &format!("{base}/v1/hosts/register"),
            "",
            json!({"token": token, "address": format!("127.0.0.1:{agent_port}"), "agent_token": agent_token,
                   "arch": "x86_64", "cpu_count": 64, "memory_mb": 262144, "disk_mb": 2000000}),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        jwts.push(v["host_jwt"].as_str().unwrap().to_string());
    }
    let register_ms = ms(t.elapsed()) / hosts as f64;

    // Beside the server, which holds its SQLite file.
    let store = wrenn_control_plane::store::Store::connect_beside(&format!(
        "sqlite://{}",
        dir.join("cp/wrenn.db").display()
    ))
    .await
    .expect("open the server's database");
    let app = wrenn_control_plane::App::new(store, b"bench secret, not used for passes");

    let (mut cpu_per_hb, mut hb_p50, mut pass_ms) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        // Every host heartbeats once a second for 10 seconds.
        let done = Arc::new(AtomicU64::new(0));
        let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
        let cpu0 = cpu_secs(cp_pid);
        let tasks: Vec<_> = jwts
            .iter()
            .enumerate()
            .map(|(i, jwt)| {
                let (http, url, jwt, done, lat) = (
                    http.clone(),
                    format!("{base}/v1/hosts/heartbeat"),
                    jwt.clone(),
                    done.clone(),
                    lat.clone(),
                );
                tokio::spawn(async move {
                    // Spread the hosts over the second, as real ones drift.
                    tokio::time::sleep(Duration::from_millis((i * 1000 / hosts.max(1)) as u64))
                        .await;
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    for _ in 0..10 {
                        tick.tick().await;
                        let t = Instant::now();
                        let (st, v) = post(&http, &url, &jwt, json!({"sandboxes": 0})).await;
                        assert_eq!(st, 200, "{v}");
                        lat.lock().unwrap().push(ms(t.elapsed()));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let cpu = cpu_secs(cp_pid) - cpu0;
        let n = done.load(Ordering::Relaxed) as f64;
        cpu_per_hb.push(cpu / n * 1e6);
        hb_p50.push(median(lat.lock().unwrap().clone()));

        let t = Instant::now();
        let report = wrenn_control_plane::reconcile::pass(&app).await.unwrap();
        pass_ms.push(ms(t.elapsed()));
        assert_eq!(report.hosts, hosts, "{report:?}");
    }
    println!(
        "registration (create + register) per host {:>8.2} ms",
        register_ms
    );
    println!(
        "control-plane CPU per heartbeat           {:>8.0} us    ({hosts} hosts, 1/s each: {:.1}% of one core)",
        median(cpu_per_hb.clone()),
        median(cpu_per_hb) * hosts as f64 / 1e4
    );
    println!(
        "heartbeat latency p50                     {:>8.2} ms",
        median(hb_p50)
    );
    println!(
        "one reconciliation pass over {hosts} hosts   {:>8.1} ms",
        median(pass_ms)
    );
    drop(procs);
}
