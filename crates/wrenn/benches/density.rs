//! Many idle sandboxes on one host, printed: `cargo bench -p wrenn --bench
//! density` (root; needs the test template).
//!
//! Starts `wrenn up --memory-overcommit 8 --disk-overcommit 32` on a scratch
//! data dir and, through the REST API, creates `WRENN_BENCH_SANDBOXES`
//! (default 1,000) sandboxes of 128 MiB (256 MiB of disk) with 8 clients, then measures with all of them alive and idle:
//! host CPU busy over 10 s, the wake-ups of the sandboxes' own processes,
//! host memory per sandbox, exec `true` p50 (against the p50 with one
//! alive); then destroys them all with 8 clients and checks that nothing is
//! left. bwrap's bare create-exec-destroy cycle, timed in the same run, is
//! printed beside as the yardstick.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Http, Up, bwrap_cycle, call, http_client, median, ms, settings};

const CLIENTS: usize = 8;

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
    let idle = v[3] + v[4];
    (total - idle, total)
}

/// Dirty and under-writeback page cache, in MiB.
fn dirty_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Dirty:") || l.starts_with("Writeback:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum::<f64>()
        / 1024.0
}

fn mem_available_mib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// (context switches, CPU ticks) so far of every process in the cgroups
/// under `parent` (the sandboxes'): each wake-up is one switch.
fn sandbox_switches(parent: &str) -> (u64, u64) {
    let mut pids = HashSet::new();
    for controller in ["pids", "memory", "unified"] {
        let root = format!("/sys/fs/cgroup/{controller}/{parent}");
        let root = if std::path::Path::new(&root).exists() {
            root
        } else {
            format!("/sys/fs/cgroup/{parent}")
        };
        let Ok(dirs) = std::fs::read_dir(&root) else {
            continue;
        };
        // Each sandbox's cgroup, and its leaves (`envd`, `work`).
        for d in dirs.flatten().filter(|d| d.path().is_dir()) {
            let leaves = std::fs::read_dir(d.path())
                .map(|l| {
                    l.flatten()
                        .map(|l| l.path())
                        .filter(|l| l.is_dir())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for dir in std::iter::once(d.path()).chain(leaves) {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(procs.lines().filter_map(|p| p.parse::<u32>().ok()));
                }
            }
        }
        if !pids.is_empty() {
            break;
        }
    }
    let ticks = pids.iter().map(|p| process_ticks(*p)).sum();
    let switches = pids
        .into_iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    (switches, ticks)
}

async fn create(http: &Http, up: &Up) -> Result<String, String> {
    let (st, body) = call(
        http,
        up,
        "POST",
        "/v1/sandboxes",
        Some(serde_json::json!({ "template": "base", "memory_mb": 128, "disk_size_mb": 256, "timeout_sec": 3600 })),
    )
    .await;
    if st != 201 {
        return Err(format!("{st}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

async fn exec_p50(http: &Http, up: &Up, id: &str, n: usize) -> f64 {
    let mut v = vec![];
    for _ in 0..n {
        let t = Instant::now();
        let (st, body) = call(
            http,
            up,
            "POST",
            &format!("/v1/sandboxes/{id}/exec"),
            Some(serde_json::json!({ "cmd": "true" })),
        )
        .await;
        v.push(ms(t.elapsed()));
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
    }
    median(v)
}

#[tokio::main]
async fn main() {
    let (templates, _) = settings();
    let n: usize = std::env::var("WRENN_BENCH_SANDBOXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let up = Arc::new(Up::start_with(
        &templates,
        &["--memory-overcommit", "8", "--disk-overcommit", "32"],
    ));
    let http = http_client();
    println!(
        "density benchmark: {n} idle sandboxes of 128 MiB through wrenn up, {CLIENTS} clients"
    );
    let bwrap = bwrap_cycle();
    // What the host does without sandboxes, over the same 10 s.
    let (b0, t0) = cpu_jiffies();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (b1, t1) = cpu_jiffies();
    let baseline = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0;

    // One alive: the baseline exec.
    let first = create(&http, &up).await.expect("first create");
    exec_p50(&http, &up, &first, 20).await;
    let exec_one = exec_p50(&http, &up, &first, 200).await;

    let mem_before = mem_available_mib();
    let ids = Arc::new(std::sync::Mutex::new(vec![first.clone()]));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let left = Arc::new(AtomicUsize::new(n - 1));
    let t = Instant::now();
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let (http, ids, errors, left) = (http.clone(), ids.clone(), errors.clone(), left.clone());
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                .is_ok()
            {
                match create(&http, &up).await {
                    Ok(id) => ids.lock().unwrap().push(id),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let create_secs = t.elapsed().as_secs_f64();
    let made = ids.lock().unwrap().len();
    let errs = errors.lock().unwrap().clone();
    println!(
        "  creates/s with {CLIENTS} clients          {:>9.1} /s   ({} made in {:.1} s, {} errors; goal >= 100/s, none)",
        (made - 1) as f64 / create_secs,
        made,
        create_secs,
        errs.len()
    );
    for e in errs.iter().take(3) {
        println!("    error: {e}");
    }

    // All alive and idle, once the creates' own background work settled:
    // the kernel writes the new disks' metadata back to their image files
    // for a while after a burst of creates.
    let settle = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    while dirty_mib() > 1.0 && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "  waited after the creates             {:>9.1} s    ({:.0} MiB still dirty; 30 s at most)",
        settle.elapsed().as_secs_f64(),
        dirty_mib()
    );
    let parent = "wrenn";
    let up_pid = up.child.id();
    let (b0, t0) = cpu_jiffies();
    let s0 = sandbox_switches(parent);
    let u0 = process_ticks(up_pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (b1, t1) = cpu_jiffies();
    let s1 = sandbox_switches(parent);
    let u1 = process_ticks(up_pid);
    assert!(
        s0.0 > 0,
        "found no sandbox processes under the cgroup parent {parent}"
    );
    let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0;
    // Of all CPUs, as the host figure (ticks of processes vs all CPUs').
    let share = |ticks: u64| ticks as f64 / (t1 - t0).max(1) as f64 * 100.0;
    println!(
        "  host CPU busy, all idle, 10 s       {busy:>9.1} %    (goal <= 5; {baseline:.1} % before any sandbox; wrenn up {:.1} %, the sandboxes' processes {:.1} %)",
        share(u1 - u0),
        share(s1.1 - s0.1)
    );
    println!(
        "  sandboxes' own wake-ups              {:>9.2} /s per sandbox ({} in 10 s)",
        (s1.0 - s0.0) as f64 / 10.0 / made as f64,
        s1.0 - s0.0
    );
    let per = (mem_before - mem_available_mib()) / (made - 1).max(1) as f64;
    println!("  host memory per idle sandbox         {per:>9.2} MiB  (goal <= 1)");
    let exec_all = exec_p50(&http, &up, &first, 200).await;
    println!(
        "  exec true p50: 1 alive / {made} alive   {exec_one:>6.2} / {exec_all:.2} ms  ({:.2}x; goal <= 1.5x)",
        exec_all / exec_one
    );

    // Destroy them all.
    let all: Vec<String> = ids.lock().unwrap().clone();
    let queue = Arc::new(std::sync::Mutex::new(all));
    let t = Instant::now();
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let (http, queue) = (http.clone(), queue.clone());
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(id) = queue.lock().unwrap().pop() else {
                    break;
                };
                let (st, body) =
                    call(&http, &up, "DELETE", &format!("/v1/sandboxes/{id}"), None).await;
                assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "  destroy all answered, {CLIENTS} clients       {:>9.2} s",
        t.elapsed().as_secs_f64()
    );
    // Destroys answer once a sandbox is stopped; the rest goes behind.
    let left = || {
        let dirs = std::fs::read_dir(up.data.join("sandboxes")).map_or(0, |d| d.count());
        let links = std::process::Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(": wrenn"))
                    .count()
            })
            .unwrap_or(0);
        (dirs, links)
    };
    let mut now_left = left();
    while now_left != (0, 0) && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now_left = left();
    }
    println!(
        "  destroy all, everything removed      {:>9.2} s    (goal <= 10)",
        t.elapsed().as_secs_f64()
    );
    let (dirs, links) = now_left;
    println!("  left behind: {dirs} sandbox dirs, {links} veths (goal 0)");
    match bwrap {
        Some(b) => println!("  bwrap create-exec-destroy p50        {b:>9.2} ms   (the yardstick)"),
        None => println!("  bwrap: not installed or not usable here"),
    }
}
