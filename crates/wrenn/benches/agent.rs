//! The host agent's figures, printed: `cargo bench -p wrenn --bench agent`.
//!
//! Starts a real `wrenn agent` (namespace runtime) on a scratch data
//! directory whose `base` template is the one in `WRENN_BENCH_TEMPLATES`
//! (default /var/tmp/wrenn-test-data/templates), then measures
//! create-to-ready, exec, pause/resume, 50 concurrent creates, idle density,
//! and the same create-exec-destroy done by bwrap and crun.
//! `WRENN_BENCH_RUNS` (default 3) repeats; medians are printed.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, median, ms, pct, scratch_data_dir, settings, wait_port};
use connectrpc::client::{ClientConfig, HttpClient};
use wrenn_protocol::envd::process::{self as ep, ProcessClient};
use wrenn_protocol::hostagent::v1::{self as pb, HostAgentServiceClient};

/// The agent's service, and the agent's address and token for its hop.
struct Client {
    rpc: HostAgentServiceClient<HttpClient>,
    /// Pooled connections to the agent, for the hop.
    http: HttpClient,
    port: u16,
    token: String,
}

impl std::ops::Deref for Client {
    type Target = HostAgentServiceClient<HttpClient>;
    fn deref(&self) -> &Self::Target {
        &self.rpc
    }
}

impl Client {
    /// Runs `/bin/true` in sandbox `id` through the agent's `/proxy` hop to
    /// envd (the control plane's road): its exit code.
    async fn run_true(&self, id: &str, envd_token: &str) -> i32 {
        use ep::process_event::Event as E;
        let base = format!(
            "http://127.0.0.1:{}/proxy/{id}/{}",
            self.port,
            wrenn_protocol::envd::PORT
        );
        let cfg = ClientConfig::new(base.parse().unwrap())
            .with_default_header(
                wrenn_protocol::hostagent::PROXY_TOKEN_HEADER,
                self.token.clone(),
            )
            .with_default_header("x-access-token", envd_token.to_string());
        let envd = ProcessClient::new(self.http.clone(), cfg);
        let req = ep::StartRequest {
            process: ep::ProcessConfig {
                cmd: "/bin/true".into(),
                ..Default::default()
            }
            .into(),
            stdin: Some(false),
            ..Default::default()
        };
        let mut stream = envd.start(req).await.expect("exec");
        let mut code = -1;
        while let Some(m) = stream.message::<ep::StartResponse>().await.expect("exec") {
            if let Some(E::End(e)) = m
                .to_owned_message()
                .event
                .into_option()
                .and_then(|e| e.event)
            {
                code = e.exit_code;
            }
        }
        code
    }
}

struct Agent {
    child: std::process::Child,
    data: PathBuf,
    port: u16,
    token: String,
}

impl Agent {
    fn start(templates: &std::path::Path) -> Agent {
        let data = scratch_data_dir(templates);
        let port = free_port();
        let token = "bench-token".to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "agent",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--token",
                &token,
            ])
            .env("WRENN_LOG", "warn")
            .spawn()
            .expect("start the agent");
        wait_port(port);
        Agent {
            child,
            data,
            port,
            token,
        }
    }

    fn client(&self) -> Client {
        let cfg = ClientConfig::new(format!("http://127.0.0.1:{}", self.port).parse().unwrap())
            .with_default_header("authorization", format!("Bearer {}", self.token));
        let http = HttpClient::plaintext();
        Client {
            rpc: HostAgentServiceClient::new(http.clone(), cfg),
            http,
            port: self.port,
            token: self.token.clone(),
        }
    }
}

impl Agent {
    /// Destroys every sandbox, stops the agent, removes its data.
    async fn stop(mut self) {
        let _ = self
            .client()
            .terminate(pb::TerminateRequest {
                destroy_sandboxes: true,
                ..Default::default()
            })
            .await;
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn req(id: &str) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        sandbox_id: id.into(),
        template: "base".into(),
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 512,
        allow_internet_access: true,
        ..Default::default()
    }
}

fn sref(id: &str) -> pb::SandboxRef {
    pb::SandboxRef {
        sandbox_id: id.into(),
        ..Default::default()
    }
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

async fn cycle(c: &Client, id: &str) -> Duration {
    let t = Instant::now();
    let sb = c
        .create_sandbox(req(id))
        .await
        .expect("create")
        .into_owned();
    assert_eq!(c.run_true(id, &sb.envd_access_token).await, 0);
    c.destroy_sandbox(sref(id)).await.expect("destroy");
    t.elapsed()
}

/// bwrap doing create-exec-destroy of /bin/true on the same rootfs.
fn bwrap_cycle(rootfs: &std::path::Path) -> Option<Duration> {
    let t = Instant::now();
    let st = Command::new("bwrap")
        .arg("--ro-bind")
        .arg(rootfs)
        .args([
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--unshare-all",
            "--die-with-parent",
            "/bin/true",
        ])
        .status()
        .ok()?;
    st.success().then(|| t.elapsed())
}

/// crun doing create-exec-destroy of /bin/true, `n` times, in one private
/// mount namespace without the hybrid host's cgroup2 mount (crun refuses
/// the hybrid layout otherwise). Returns per-run durations.
fn crun_cycles(rootfs: &std::path::Path, n: usize) -> Option<Vec<Duration>> {
    let bundle = std::env::temp_dir().join(format!("wrenn-bench-crun-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::create_dir_all(&bundle).ok()?;
    let spec = Command::new("crun")
        .arg("spec")
        .current_dir(&bundle)
        .status()
        .ok()?;
    if !spec.success() {
        return None;
    }
    let path = bundle.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    cfg["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&path, serde_json::to_vec(&cfg).ok()?).ok()?;
    let script = format!(
        "umount /sys/fs/cgroup/unified 2>/dev/null; for i in $(seq 1 {n}); do s=$EPOCHREALTIME; crun run --bundle {b} wrenn-bench-$$-$i >/dev/null 2>&1 || exit 1; e=$EPOCHREALTIME; echo $s $e; done",
        b = bundle.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", &script])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&bundle);
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (s, e) = l.split_once(' ')?;
                let (s, e): (f64, f64) = (s.parse().ok()?, e.parse().ok()?);
                Some(Duration::from_secs_f64(e - s))
            })
            .collect(),
    )
}

#[tokio::main]
async fn main() {
    let (templates, runs) = settings();
    let density_target: usize = std::env::var("WRENN_BENCH_DENSITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let agent = Agent::start(&templates);
    let c = agent.client();
    println!("host agent benchmark (namespace runtime): {runs} runs, medians of per-run figures");

    // Warm-up: disk image cache, page cache of the template.
    for i in 0..3 {
        cycle(&c, &format!("sb-warm{i}")).await;
    }

    let (mut c50, mut c99, mut e50, mut p50, mut r50, mut d50, mut cyc) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let (mut create, mut exec, mut pause, mut resume, mut destroy, mut cycles) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for i in 0..40 {
            let id = format!("sb-r{run}n{i}");
            let t = Instant::now();
            let sb = c
                .create_sandbox(req(&id))
                .await
                .expect("create")
                .into_owned();
            create.push(ms(t.elapsed()));
            for _ in 0..5 {
                let t = Instant::now();
                assert_eq!(c.run_true(&id, &sb.envd_access_token).await, 0);
                exec.push(ms(t.elapsed()));
            }
            let t = Instant::now();
            c.pause_sandbox(pb::PauseRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            pause.push(ms(t.elapsed()));
            let t = Instant::now();
            c.resume_sandbox(pb::ResumeRequest {
                sandbox_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            resume.push(ms(t.elapsed()));
            let t = Instant::now();
            c.destroy_sandbox(sref(&id)).await.unwrap();
            destroy.push(ms(t.elapsed()));
        }
        for i in 0..20 {
            cycles.push(ms(cycle(&c, &format!("sb-c{run}n{i}")).await));
        }
        c50.push(pct(&mut create, 0.5));
        c99.push(pct(&mut create, 0.99));
        e50.push(pct(&mut exec, 0.5));
        p50.push(pct(&mut pause, 0.5));
        r50.push(pct(&mut resume, 0.5));
        d50.push(pct(&mut destroy, 0.5));
        cyc.push(pct(&mut cycles, 0.5));
    }
    println!(
        "create-to-ready p50                  {:>8.1} ms   (target <= 50)",
        median(c50)
    );
    println!(
        "create-to-ready p99                  {:>8.1} ms   (target <= 150)",
        median(c99)
    );
    println!(
        "exec /bin/true via the agent p50     {:>8.2} ms   (target <= 3)",
        median(e50)
    );
    println!(
        "pause p50                            {:>8.2} ms   (target <= 10)",
        median(p50)
    );
    println!(
        "resume p50                           {:>8.2} ms   (target <= 10)",
        median(r50)
    );
    println!(
        "destroy p50                          {:>8.1} ms",
        median(d50)
    );

    // 50 at once.
    let mut all = vec![];
    for run in 0..runs {
        let t = Instant::now();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    c.create_sandbox(req(&format!("sb-p{run}n{i}")))
                        .await
                        .map(|_| ())
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(e) => println!("concurrent create failed: {e:?}"),
            }
        }
        all.push(ms(t.elapsed()));
        if ok != 50 {
            agent.stop().await;
            panic!("{ok}/50 concurrent creates succeeded");
        }
        for i in 0..50 {
            c.destroy_sandbox(sref(&format!("sb-p{run}n{i}")))
                .await
                .unwrap();
        }
    }
    println!(
        "50 concurrent creates, all ready     {:>8.0} ms   (50/50 succeeded)",
        median(all)
    );

    // Density: idle sandboxes side by side.
    let avail0 = mem_available_kib();
    let t = Instant::now();
    let mut n = 0;
    while n < density_target {
        let mut r = req(&format!("sb-d{n}"));
        r.memory_mb = 64;
        r.disk_size_mb = 64;
        if let Err(e) = c.create_sandbox(r).await {
            println!("density: create #{n} failed: {e:?}");
            break;
        }
        n += 1;
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used_kib = avail0.saturating_sub(mem_available_kib());
    println!(
        "idle sandboxes running at once       {:>8}      (target >= 500; created in {:.1} s)",
        n,
        took.as_secs_f64()
    );
    println!(
        "host memory per idle sandbox         {:>8.2} MiB",
        used_kib as f64 / 1024.0 / n.max(1) as f64
    );
    for i in 0..n {
        c.destroy_sandbox(sref(&format!("sb-d{i}"))).await.unwrap();
    }

    // The same create-exec-destroy with bwrap and crun.
    let rootfs = std::fs::canonicalize(templates.join("base/rootfs")).unwrap();
    let wrenn_cycle = median(cyc);
    let bw: Vec<f64> = (0..30)
        .filter_map(|_| bwrap_cycle(&rootfs))
        .map(ms)
        .collect();
    println!(
        "wrenn create+exec+destroy p50        {:>8.1} ms",
        wrenn_cycle
    );
    if bw.is_empty() {
        println!("bwrap: not available (apt-get install bubblewrap)");
    } else {
        let b = median(bw);
        println!(
            "bwrap create+exec+destroy p50        {:>8.1} ms   (wrenn/bwrap = {:.1}x)",
            b,
            wrenn_cycle / b
        );
    }
    match crun_cycles(&rootfs, 30) {
        Some(v) if !v.is_empty() => {
            let cr = median(v.into_iter().map(ms).collect());
            println!(
                "crun create+exec+destroy p50         {:>8.1} ms   (wrenn/crun = {:.1}x)",
                cr,
                wrenn_cycle / cr
            );
        }
        _ => println!("crun: not available (apt-get install crun)"),
    }
    println!("(bwrap and crun set up no network, cgroup limits, disk or envd; wrenn does.)");
    agent.stop().await;
}
