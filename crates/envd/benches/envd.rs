//! envd's figures, printed: `cargo bench -p envd --bench envd`.
//!
//! Starts the real (release) envd on loopback and measures
//! - `process.Process/Start` round trips from the Rust client, for
//!   `/bin/true` and for what `commands.run("true")` sends (`bash -l -c true`);
//! - envd's idle RSS;
//! - upload and download of a 100 MiB file through `/files`;
//! - a process writing 1 GiB to stdout: throughput and envd's peak RSS.
//!
//! Each figure is the median of several runs; set `ENVD_BENCH_RUNS`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use connectrpc::client::{ClientConfig, HttpClient};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wrenn_protocol::envd::process::{self as pb, ProcessClient, process_event};

struct Envd {
    child: Child,
    port: u16,
}

impl Envd {
    fn start() -> Envd {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_envd"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("ENVD_LOG", "envd=warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start envd");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Envd { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Context switches of all its threads so far: each wake-up is one.
    fn switches(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Envd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn start_req(cmd: &str, args: &[&str]) -> pb::StartRequest {
    pb::StartRequest {
        process: pb::ProcessConfig {
            cmd: cmd.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .into(),
        stdin: Some(false),
        ..Default::default()
    }
}

/// Runs a command to its end; returns the stdout bytes seen.
async fn run(c: &ProcessClient<HttpClient>, req: pb::StartRequest) -> u64 {
    let mut s = c.start(req).await.expect("start");
    let mut n = 0u64;
    let mut ended = false;
    while let Some(m) = s.message::<pb::StartResponse>().await.expect("stream") {
        match m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            Some(process_event::Event::Data(d)) => {
                if let Some(process_event::data_event::Output::Stdout(b)) = d.output {
                    n += b.len() as u64;
                }
            }
            Some(process_event::Event::End(e)) => {
                assert_eq!(e.exit_code, 0, "{e:?}");
                ended = true;
            }
            _ => {}
        }
    }
    assert!(ended, "stream ended without an end event");
    n
}

/// Round-trip latencies in ms: (p50, p99) over `n` calls.
async fn round_trips(
    c: &ProcessClient<HttpClient>,
    cmd: &str,
    args: &[&str],
    n: usize,
) -> (f64, f64) {
    for _ in 0..20 {
        run(c, start_req(cmd, args)).await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        run(c, start_req(cmd, args)).await;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

async fn transfer(envd: &Envd, data: Bytes) -> (f64, f64) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let path = format!("/tmp/envd-bench-{}.bin", envd.port);
    let len = data.len() as f64;
    let t = Instant::now();
    let req = http::Request::post(envd.url(&format!("/files?path={path}")))
        .header("content-type", "application/octet-stream")
        .body(Full::new(data))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let up = len / t.elapsed().as_secs_f64() / 1e6;
    let t = Instant::now();
    let req = http::Request::get(envd.url(&format!("/files?path={path}")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame.unwrap().into_data() {
            got += d.len();
        }
    }
    assert_eq!(got as f64, len);
    let down = len / t.elapsed().as_secs_f64() / 1e6;
    std::fs::remove_file(&path).unwrap();
    (up, down)
}

fn client(envd: &Envd) -> ProcessClient<HttpClient> {
    ProcessClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(envd.url("").parse().unwrap()),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let runs: usize = std::env::var("ENVD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    println!("envd benchmark: {runs} runs each, medians shown; loopback, HTTP/1.1");

    let mut idle = Vec::new();
    let (mut t50, mut t99, mut b50, mut b99, mut up, mut down) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let data = Bytes::from(vec![0x5au8; 100 << 20]);
    for _ in 0..runs {
        let envd = Envd::start();
        std::thread::sleep(Duration::from_millis(200));
        idle.push(envd.status_kib("VmRSS:") as f64 / 1024.0);
        let c = client(&envd);
        let (p50, p99) = round_trips(&c, "/bin/true", &[], 500).await;
        t50.push(p50);
        t99.push(p99);
        let (p50, p99) = round_trips(&c, "/bin/bash", &["-l", "-c", "true"], 200).await;
        b50.push(p50);
        b99.push(p99);
        let (u, d) = transfer(&envd, data.clone()).await;
        up.push(u);
        down.push(d);
    }
    println!(
        "idle RSS                          {:>8.2} MiB   (target <= 8)",
        median(idle)
    );
    // Wake-ups of an idle envd (one that served calls, then nothing).
    let secs: u64 = std::env::var("ENVD_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let envd = Envd::start();
    let c = client(&envd);
    round_trips(&c, "/bin/true", &[], 20).await;
    std::thread::sleep(Duration::from_millis(500));
    let before = envd.switches();
    std::thread::sleep(Duration::from_secs(secs));
    let woke = envd.switches() - before;
    println!(
        "idle wake-ups                     {:>8.2} /s    (target 0; {woke} in {secs} s)",
        woke as f64 / secs as f64
    );
    println!(
        "Start /bin/true round trip p50    {:>8.3} ms    (target <= 1.5)",
        median(t50)
    );
    println!("Start /bin/true round trip p99    {:>8.3} ms", median(t99));
    println!(
        "commands.run(\"true\") (bash -l)   p50 {:>8.3} ms",
        median(b50)
    );
    println!(
        "commands.run(\"true\") (bash -l)   p99 {:>8.3} ms",
        median(b99)
    );
    println!(
        "upload 100 MiB                    {:>8.0} MB/s  (target >= 500)",
        median(up)
    );
    println!(
        "download 100 MiB                  {:>8.0} MB/s  (target >= 500)",
        median(down)
    );

    let (mut rate, mut peak) = (vec![], vec![]);
    for _ in 0..runs.min(3) {
        let envd = Envd::start();
        let c = client(&envd);
        let t = Instant::now();
        let n = run(
            &c,
            start_req("/bin/sh", &["-c", "head -c 1073741824 /dev/zero"]),
        )
        .await;
        assert_eq!(n, 1 << 30);
        rate.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        peak.push(envd.status_kib("VmHWM:") as f64 / 1024.0);
    }
    println!(
        "1 GiB of stdout streamed          {:>8.0} MB/s",
        median(rate)
    );
    println!(
        "envd peak RSS while streaming it  {:>8.2} MiB   (target < 64)",
        median(peak)
    );
}
