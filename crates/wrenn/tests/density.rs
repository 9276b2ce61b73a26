//! Many idle sandboxes on one host, scaled down from the `density`
//! benchmark: 200 sandboxes of 128 MiB created through the REST API by 8
//! clients at once (`wrenn server` in front of a real agent, reconciling
//! every second) all succeed and stay running,
//! exec latency with all of them alive stays near what it is with one,
//! idle sandboxes do not keep the host busy, and destroying them leaves
//! nothing on the host.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{AgentProc, ServerProc, call, http_client, signup};
use serde_json::{Value, json};

const SANDBOXES: usize = 200;
const CLIENTS: usize = 8;

async fn exec_p50(http: &common::Http, base: &str, h: &[(&str, &str)], id: &str) -> f64 {
    let mut v = vec![];
    for _ in 0..40 {
        let t = Instant::now();
        let (st, body) = call(
            http,
            "POST",
            &format!("{base}/v1/sandboxes/{id}/exec"),
            h,
            Some(json!({ "cmd": "true" })),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (busy, total) jiffies of all CPUs.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4], total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_idle_sandboxes_keep_exec_flat_and_leave_nothing() {
    let agent = AgentProc::start();
    let agent_addr = format!("127.0.0.1:{}", agent.port);
    let server = ServerProc::start(
        "density",
        // Reconciliation every second, racing the creates: none of them
        // may be taken for an orphan.
        &[
            "--agent",
            &agent_addr,
            "--agent-token",
            &agent.token,
            "--reconcile-interval",
            "1",
        ],
    );
    let http = http_client();
    let base = server.base();
    let (token, _) = signup(&http, &base, "d@density.test").await;
    let auth = format!("Bearer {token}");
    let h = [("authorization", auth.as_str())];
    let create = json!({ "template": "base", "memory_mb": 128, "timeout_sec": 900 });

    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/sandboxes"),
        &h,
        Some(create.clone()),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let first = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    exec_p50(&http, &base, &h, &first).await;
    let alone = exec_p50(&http, &base, &h, &first).await;

    let ids = Arc::new(Mutex::new(vec![first.clone()]));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = vec![];
    for c in 0..CLIENTS {
        let (http, base, auth, create) = (http.clone(), base.clone(), auth.clone(), create.clone());
        let (ids, errors) = (ids.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let n = (SANDBOXES - 1) / CLIENTS + usize::from(c < (SANDBOXES - 1) % CLIENTS);
            for _ in 0..n {
                let (st, body) = call(
                    &http,
                    "POST",
                    &format!("{base}/v1/sandboxes"),
                    &[("authorization", auth.as_str())],
                    Some(create.clone()),
                )
                .await;
                if st == 201 {
                    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    ids.lock().unwrap().push(id);
                } else {
                    errors.lock().unwrap().push(format!("{st}: {body}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<String> = ids.lock().unwrap().clone();
    let errs = errors.lock().unwrap().clone();
    let check = || -> Result<(), String> {
        if !errs.is_empty() {
            return Err(format!(
                "{} creates failed, e.g. {:?}",
                errs.len(),
                &errs[..errs.len().min(3)]
            ));
        }
        Ok(())
    };
    let outcome = async {
        check()?;
        if all.len() != SANDBOXES {
            return Err(format!("{} sandboxes, not {SANDBOXES}", all.len()));
        }
        // Idle means idle: the host is not kept busy by 200 sleeping sandboxes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (st, body) = call(&http, "GET", &format!("{base}/v1/sandboxes"), &h, None).await;
        let listed: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        let running = listed.iter().filter(|s| s["status"] == "running").count();
        if st != 200 || running != SANDBOXES {
            return Err(format!(
                "{running} of {SANDBOXES} running after the creates: {st}"
            ));
        }
        let (b0, t0) = cpu_jiffies();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (b1, t1) = cpu_jiffies();
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0;
        if busy > 25.0 {
            return Err(format!(
                "host {busy:.0}% busy with {SANDBOXES} idle sandboxes"
            ));
        }
        let crowded = exec_p50(&http, &base, &h, &first).await;
        // Flat: within 2x (and a millisecond of noise) of exec alone.
        if crowded > alone * 2.0 + 1.0 {
            return Err(format!(
                "exec p50 {crowded:.2} ms with {SANDBOXES} alive, {alone:.2} ms alone"
            ));
        }
        Ok(())
    }
    .await;

    // Destroyed whatever happened above, by 8 clients at once.
    let queue = Arc::new(Mutex::new(all));
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let (http, base, auth, queue) = (http.clone(), base.clone(), auth.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(id) = queue.lock().unwrap().pop() else {
                    break;
                };
                let (st, body) = call(
                    &http,
                    "DELETE",
                    &format!("{base}/v1/sandboxes/{id}"),
                    &[("authorization", auth.as_str())],
                    None,
                )
                .await;
                assert_eq!(st, 204, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    outcome.unwrap();
    common::assert_no_host_traces(&agent.data_dir);
}
