//! Time to ready of the README's start command, `scripts/up.sh`, printed:
//! `cargo bench -p wrenn --bench up` (root; needs the test template).
//!
//! Ready means the API answers an authenticated request with the key the
//! start wrote (`<data dir>/api-key`). Figures:
//! - template cached, binaries built: a first start on a fresh data dir
//!   (admin, team, key made) and a restart on the same one; the goal is
//!   ≤ 2 s. `WRENN_BENCH_RUNS` (default 5) repeats; medians are printed,
//!   with what the script's no-op `cargo build`s and `wrenn up` alone take.
//! - from nothing: an empty data dir, so `base` is built with debootstrap
//!   (needs a Debian mirror; `WRENN_BENCH_FROM_NOTHING=0` skips it); with
//!   `WRENN_BENCH_COLD_BUILD=1` also from a fresh clone of HEAD with an
//!   empty target directory (the release build, ~8 minutes on 2 cores).
//!
//! Each start is stopped with Ctrl-C (SIGINT, by pid); what it made is
//! removed.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_static_envd, free_port, median, settings};

/// The repository this bench is part of.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One start of `scripts/up.sh` in `repo` on `data`.
struct Start {
    child: Child,
    data: PathBuf,
    port: u16,
}

impl Start {
    fn spawn(repo: &Path, data: &Path, target: &Path, prefix: &Path) -> Start {
        let port = free_port();
        let child = Command::new(repo.join("scripts/up.sh"))
            .current_dir(repo)
            .env("WRENN_DATA_DIR", data)
            .env("WRENN_LISTEN", format!("127.0.0.1:{port}"))
            .env("WRENN_CONFIG", data.join("cli.json"))
            .env("WRENN_PREFIX", prefix)
            .env("CARGO_TARGET_DIR", target)
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start scripts/up.sh");
        Start {
            child,
            data: data.to_path_buf(),
            port,
        }
    }

    /// Waits until the API answers the start's key; how long that took
    /// since `t`.
    fn ready(&mut self, t: Instant, limit: Duration) -> Duration {
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("scripts/up.sh exited ({st}) before it was ready");
            }
            assert!(t.elapsed() < limit, "not ready after {limit:?}");
            if let Ok(key) = std::fs::read_to_string(self.data.join("api-key")) {
                if answers(self.port, key.trim()) {
                    return t.elapsed();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ctrl-C, and wait for it to exit (it destroys its sandboxes).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Whether `GET /v1/sandboxes` with `key` answers 200.
fn answers(port: u16, key: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "GET /v1/sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A fresh data dir, with the cached `base` of `templates` if given.
fn data_dir(name: &str, templates: Option<&Path>) -> PathBuf {
    let d = PathBuf::from(format!(
        "/var/tmp/wrenn-bench-up-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("templates")).unwrap();
    if let Some(t) = templates {
        std::os::unix::fs::symlink(t.join("base"), d.join("templates/base")).unwrap();
    }
    d
}

/// The builds `scripts/up.sh` runs (wrenn, then the static envd), into
/// `target`; whether both succeeded.
fn script_builds(target: &Path) -> bool {
    let wrenn = Command::new("cargo")
        .args(["build", "--release", "--locked", "-p", "wrenn"])
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    wrenn && build_static_envd(target, Stdio::null())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    let (templates, _) = settings();
    let runs: usize = std::env::var("WRENN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let target = PathBuf::from(
        std::env::var("CARGO_TARGET_DIR")
            .unwrap_or_else(|_| repo().join("target").display().to_string()),
    );
    let prefix = PathBuf::from(format!(
        "/var/tmp/wrenn-bench-up-{}-bin",
        std::process::id()
    ));
    let scratch = format!("/var/tmp/wrenn-bench-up-{}-", std::process::id());
    // A failed assertion leaves at most the one start it was waiting for.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!(
            "a start may be left running on {scratch}*: stop it (Ctrl-C) and remove those directories"
        );
    }));
    println!("time to ready of scripts/up.sh (the README's start command): {runs} runs, medians");

    // The script's own cost: its cargo builds with nothing to do.
    let t = Instant::now();
    assert!(script_builds(&target), "cargo build --release failed");
    let build_once = t.elapsed();
    let mut noop = vec![];
    let (mut first, mut again, mut bare) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let t = Instant::now();
        script_builds(&target);
        noop.push(secs(t.elapsed()));

        let data = data_dir(&format!("cached-{i}"), Some(&templates));
        let t = Instant::now();
        let mut s = Start::spawn(&repo(), &data, &target, &prefix);
        first.push(secs(s.ready(t, Duration::from_secs(120))));
        s.stop();
        let t = Instant::now();
        let mut s = Start::spawn(&repo(), &data, &target, &prefix);
        again.push(secs(s.ready(t, Duration::from_secs(120))));
        s.stop();
        std::fs::remove_dir_all(&data).unwrap();

        // `wrenn up` alone, without the script.
        let data = data_dir(&format!("bare-{i}"), Some(&templates));
        let port = free_port();
        let t = Instant::now();
        let child = Command::new(prefix.join("wrenn"))
            .arg("--data-dir")
            .arg(&data)
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(data.join("cli.json"))
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wrenn up");
        let mut s = Start {
            child,
            data: data.clone(),
            port,
        };
        bare.push(secs(s.ready(t, Duration::from_secs(120))));
        s.stop();
        std::fs::remove_dir_all(&data).unwrap();
    }
    println!(
        "  {:<58} {:>7.2} s  (goal ≤ 2 s)",
        "template cached, first start on a fresh data dir",
        median(first)
    );
    println!(
        "  {:<58} {:>7.2} s",
        "template cached, restart on the same data dir",
        median(again)
    );
    println!(
        "  {:<58} {:>7.2} s",
        "  of which the script's cargo build with nothing to do",
        median(noop)
    );
    println!(
        "  {:<58} {:>7.2} s",
        "  wrenn up alone (no script), fresh data dir",
        median(bare)
    );
    println!(
        "  {:<58} {:>7.2} s",
        "(first cargo build of this bench, maybe incremental)",
        secs(build_once)
    );

    if std::env::var("WRENN_BENCH_FROM_NOTHING").as_deref() != Ok("0") {
        let cold = std::env::var("WRENN_BENCH_COLD_BUILD").as_deref() == Ok("1");
        let (repo_dir, target_dir) = if cold {
            let clone = PathBuf::from(format!(
                "/var/tmp/wrenn-bench-up-{}-clone",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&clone);
            let st = Command::new("git")
                .args(["clone", "-q"])
                .arg(repo())
                .arg(&clone)
                .status()
                .expect("git clone");
            assert!(st.success(), "git clone failed");
            (clone.clone(), clone.join("target"))
        } else {
            (repo(), target.clone())
        };
        let data = data_dir("nothing", None);
        let t = Instant::now();
        let mut s = Start::spawn(&repo_dir, &data, &target_dir, &prefix);
        let took = s.ready(t, Duration::from_secs(40 * 60));
        s.stop();
        let what = if cold {
            "from nothing: fresh clone, empty target dir, no template"
        } else {
            "from nothing but the binaries: no template (debootstrap)"
        };
        println!("  {what:<58} {:>7.1} s", secs(took));
        std::fs::remove_dir_all(&data).unwrap();
        if cold {
            std::fs::remove_dir_all(&repo_dir).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&prefix);
}
