//! Chaos: `wrenn server`, its agent and PostgreSQL are killed with SIGKILL
//! at random points of a create/exec/pause/resume/destroy workload, and
//! started again. Afterwards every sandbox is in a state its user can see
//! and act on, nothing acknowledged is lost (a sandbox whose create or
//! resume was answered runs, a paused one resumes, a destroyed one is gone
//! from the host), the database and the host agree, and once everything is
//! destroyed nothing is left on the host.
//!
//! The run is seeded (`WRENN_CHAOS_SEED`; printed) and bounded
//! (`WRENN_CHAOS_ROUNDS`, 30 by default).
//!
//! Long because it is one seeded scenario with its own process harness.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Http, assert_no_host_traces, http_client, terminate_agent};
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn kill_pid(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Waits for `pids` to be gone; SIGKILLs (by pid) those left after `within`.
fn wait_gone(pids: &[u32], within: Duration) {
    let t = Instant::now();
    while pids
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        if t.elapsed() > within {
            for &p in pids {
                kill_pid(p, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A throwaway PostgreSQL of this test, run as the `postgres` user.
struct Pg {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    child: Option<Child>,
    /// Backends of postmasters this test killed: they exit on their own
    /// once they notice, and are killed by pid if they do not.
    orphans: Vec<u32>,
}

impl Pg {
    fn new() -> Pg {
        let bin = std::env::var("WRENN_TEST_PGBIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .expect("PostgreSQL is installed (scripts/test.sh installs it)")
                    .flatten()
                    .map(|e| e.path().join("bin"))
                    .filter(|p| p.join("postgres").exists())
                    .collect();
                bins.sort();
                bins.pop().expect("a PostgreSQL server binary")
            });
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        let dir = PathBuf::from(format!(
            "/var/tmp/wrenn-test-chaos-pg-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        use std::os::unix::process::CommandExt;
        let st = Command::new(bin.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "wrenn"])
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "initdb failed");
        Pg {
            bin,
            dir,
            port: free_port(),
            uid,
            gid,
            child: None,
            orphans: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("postgres://wrenn@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the postmaster, again and again until it stays up (one that
    /// was killed leaves backends on its shared memory for a moment).
    fn start(&mut self) {
        use std::os::unix::process::CommandExt;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(self.bin.join("postgres"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(&self.dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .uid(self.uid)
                .gid(self.gid)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if listening(self.port) {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "PostgreSQL did not start again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.orphans.extend(children_of(c.id()));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let kids = children_of(c.id());
            // Immediate shutdown.
            kill_pid(c.id(), rustix::process::Signal::QUIT);
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            wait_gone(&kids, Duration::from_secs(5));
        }
        wait_gone(&self.orphans, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The three processes under test and how to start them again.
struct Platform {
    pg: Pg,
    dir: PathBuf,
    cp_port: u16,
    agent_port: u16,
    agent_token: String,
    server: Option<Child>,
    agent: Option<Child>,
    http: Http,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    Server,
    Agent,
    Postgres,
}

impl Platform {
    fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }

    fn start_server(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(self.dir.join("cp"))
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.cp_port)])
            .args(["--database-url", &self.pg.url()])
            .args(common::FAST_SERVER_FLAGS)
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wrenn server");
        self.server = Some(child);
    }

    fn start_agent(&mut self, register: Option<&str>) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wrenn"));
        c.arg("--data-dir")
            .arg(self.agent_dir())
            .args([
                "agent",
                "--listen",
                &format!("127.0.0.1:{}", self.agent_port),
            ])
            .args(["--token", &self.agent_token])
            .args([
                "--control-plane",
                &format!("http://127.0.0.1:{}", self.cp_port),
            ])
            .args(["--heartbeat-interval", "1"])
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = register {
            c.args(["--register", t]);
        }
        self.agent = Some(c.spawn().expect("start wrenn agent"));
    }

    fn pid_of(&self, v: Victim) -> Option<u32> {
        match v {
            Victim::Server => self.server.as_ref().map(Child::id),
            Victim::Agent => self.agent.as_ref().map(Child::id),
            Victim::Postgres => self.pg.child.as_ref().map(Child::id),
        }
    }

    fn kill(&mut self, v: Victim) {
        let child = match v {
            Victim::Server => self.server.take(),
            Victim::Agent => self.agent.take(),
            Victim::Postgres => {
                self.pg.kill();
                None
            }
        };
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start(&mut self, v: Victim) {
        match v {
            Victim::Server => self.start_server(),
            Victim::Agent => self.start_agent(None),
            Victim::Postgres => self.pg.start(),
        }
    }

    /// One request; `None` when there was no answer (refused, reset, 30 s).
    async fn api(
        &self,
        method: &str,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        use http_body_util::BodyExt;
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.cp_port))
            .header("authorization", format!("Bearer {auth}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body
            .map(|b| bytes::Bytes::from(b.to_string()))
            .unwrap_or_default();
        let req = req.body(http_body_util::Full::new(body)).ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(30), async {
            let resp = self.http.request(req).await.ok()?;
            let st = resp.status().as_u16();
            let b = resp.into_body().collect().await.ok()?.to_bytes();
            Some((st, serde_json::from_slice(&b).unwrap_or(Value::Null)))
        })
        .await;
        resp.ok().flatten()
    }

    /// Until the agent listens and the API answers with the host online
    /// (everything is back).
    async fn wait_healthy(&self, auth: &str) {
        let t = Instant::now();
        while !listening(self.agent_port) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the agent did not come back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        loop {
            if let Some((200, v)) = self.api("GET", "/v1/hosts", auth, None).await {
                if v.as_array()
                    .is_some_and(|h| h.iter().any(|h| h["status"] == "online"))
                {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the platform did not come back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if self.agent.is_none() {
            self.start_agent(None);
            let t = Instant::now();
            while !listening(self.agent_port) && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        terminate_agent(&format!("127.0.0.1:{}", self.agent_port), &self.agent_token);
        for c in [self.agent.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            common::reap(c);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the workload was told about a sandbox.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    Running,
    Paused,
    Destroyed,
    /// A call on it got no answer or an error: it may be in either state.
    Unsure,
}

/// A tiny deterministic generator (xorshift), so a failing run can be
/// repeated with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_server_agent_or_postgres_loses_nothing_acknowledged() {
    let seed = std::env::var("WRENN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: usize = std::env::var("WRENN_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    println!("chaos seed {seed} ({rounds} rounds): WRENN_CHAOS_SEED={seed} repeats it");
    let mut rng = Rng(seed);

    let dir = PathBuf::from(format!("/var/tmp/wrenn-test-chaos-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("agent/templates")).unwrap();
    std::os::unix::fs::symlink(
        common::template_dir().join("base"),
        dir.join("agent/templates/base"),
    )
    .unwrap();
    let mut p = Platform {
        pg: Pg::new(),
        dir,
        cp_port: free_port(),
        agent_port: free_port(),
        agent_token: format!("chaos-agent-{seed}"),
        server: None,
        agent: None,
        http: http_client(),
    };
    p.pg.start();
    p.start_server();
    let t = Instant::now();
    while !listening(p.cp_port) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "wrenn server did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first user is the platform's admin, who adds the (shared) host.
    let (st, v) = p
        .api(
            "POST",
            "/v1/auth/signup",
            "",
            Some(json!({"email": "admin@chaos.test", "password": "a long password"})),
        )
        .await
        .expect("signup answered");
    assert_eq!(st, 201, "{v}");
    let auth = v["token"].as_str().unwrap().to_string();
    let (st, v) = p
        .api("POST", "/v1/hosts", &auth, Some(json!({"name": "chaos"})))
        .await
        .expect("host answered");
    assert_eq!(st, 201, "{v}");
    let reg = v["registration_token"].as_str().unwrap().to_string();
    p.start_agent(Some(&reg));
    p.wait_healthy(&auth).await;

    let mut known: HashMap<String, Known> = HashMap::new();
    let mut kills: HashMap<String, usize> = HashMap::new();
    let mut answered = 0usize;
    for round in 0..rounds {
        let live: Vec<String> = known
            .iter()
            .filter(|(_, k)| **k != Known::Destroyed)
            .map(|(id, _)| id.clone())
            .collect();
        let pick = |rng: &mut Rng| live[rng.below(live.len() as u64) as usize].clone();
        let op = if live.len() < 2 { 0 } else { rng.below(5) };
        let (method, path, body, target) = match op {
            0 => (
                "POST",
                "/v1/sandboxes".to_string(),
                Some(json!({"memory_mb": 128, "disk_size_mb": 128, "timeout_sec": 0})),
                None,
            ),
            1 => {
                let id = pick(&mut rng);
                (
                    "POST",
                    format!("/v1/sandboxes/{id}/exec"),
                    Some(json!({"cmd": "/bin/echo", "args": ["ok"]})),
                    Some(id),
                )
            }
            2 => {
                let id = pick(&mut rng);
                ("POST", format!("/v1/sandboxes/{id}/pause"), None, Some(id))
            }
            3 => {
                let id = pick(&mut rng);
                ("POST", format!("/v1/sandboxes/{id}/resume"), None, Some(id))
            }
            _ => {
                let id = pick(&mut rng);
                ("DELETE", format!("/v1/sandboxes/{id}"), None, Some(id))
            }
        };
        // Two rounds in three, one process dies while the call is under way.
        let victim = match rng.below(6) {
            0 | 1 => Some(Victim::Server),
            2 | 3 => Some(Victim::Agent),
            4 => Some(Victim::Postgres),
            _ => None,
        };
        let delay = Duration::from_millis(rng.below(150));
        let victim_pid = victim.and_then(|v| p.pid_of(v));
        // The kill lands `delay` into the call, whether or not it ended.
        let (result, orphans) = tokio::join!(p.api(method, &path, &auth, body), async {
            tokio::time::sleep(delay).await;
            let Some(pid) = victim_pid else {
                return Vec::new();
            };
            let kids = children_of(pid);
            kill_pid(pid, rustix::process::Signal::KILL);
            kids
        });
        if let Some(v) = victim {
            if v == Victim::Postgres {
                p.pg.orphans.extend(orphans);
            }
            p.kill(v); // reaps it
            *kills.entry(format!("{v:?}")).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
            p.start(v);
        }
        p.wait_healthy(&auth).await;
        let ok = matches!(result, Some((s, _)) if (200..300).contains(&s));
        println!(
            "round {round}: {method} {path}, {victim:?} killed after {delay:?}: {:?}",
            result.as_ref().map(|(s, v)| (
                s,
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            ))
        );
        answered += usize::from(ok);
        match (op, &target, &result) {
            (0, _, Some((201, v))) => {
                known.insert(v["id"].as_str().unwrap().to_string(), Known::Running);
            }
            (1, Some(_), Some((200, v))) => {
                assert_eq!(v["stdout"], "ok\n", "round {round}: exec answered {v}");
            }
            (2, Some(id), _) if ok => {
                known.insert(id.clone(), Known::Paused);
            }
            (3, Some(id), _) if ok => {
                known.insert(id.clone(), Known::Running);
            }
            (4, Some(id), _) if ok => {
                known.insert(id.clone(), Known::Destroyed);
            }
            (1, Some(_), _) => {}
            (_, Some(id), _) if !ok => {
                known.insert(id.clone(), Known::Unsure);
            }
            _ => {}
        }
    }
    println!("{rounds} rounds, {answered} answered with success, kills {kills:?}");

    // Let reconciliation settle (an interrupted create is resolved once it
    // is older than any create takes), then check what the user sees.
    let settled = Instant::now();
    let listed: HashMap<String, String> = loop {
        let (st, all) = p
            .api("GET", "/v1/sandboxes", &auth, None)
            .await
            .expect("list answered");
        assert_eq!(st, 200, "{all}");
        let listed: HashMap<String, String> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let moving = listed.values().any(|s| s == "pending" || s == "missing");
        if !moving || settled.elapsed() > Duration::from_secs(30) {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (id, state) in &listed {
        assert!(
            ["running", "paused", "stopped", "error"].contains(&state.as_str()),
            "{id} is left '{state}', which no one can act on"
        );
    }
    // Processes in the sandbox's cgroup (v1 memory or v2), its leaves
    // included: a destroy answers once it killed them and removes the
    // cgroup itself behind.
    let on_host = |id: &str| {
        ["/sys/fs/cgroup/memory/wrenn", "/sys/fs/cgroup/wrenn"]
            .iter()
            .any(|root| {
                ["", "/envd", "/work"].iter().any(|leaf| {
                    std::fs::read_to_string(format!("{root}/{id}{leaf}/cgroup.procs"))
                        .is_ok_and(|p| !p.trim().is_empty())
                })
            })
    };
    for (id, state) in &listed {
        let live = state == "running" || state == "paused";
        assert_eq!(
            live,
            on_host(id),
            "{id}: listed '{state}', on the host: {}",
            on_host(id)
        );
    }
    for (id, k) in &known {
        let state = listed.get(id).map(String::as_str);
        match k {
            Known::Running => {
                assert_eq!(state, Some("running"), "{id} was acknowledged running");
                let r = p
                    .api(
                        "POST",
                        &format!("/v1/sandboxes/{id}/exec"),
                        &auth,
                        Some(json!({"cmd": "/bin/echo", "args": ["ok"]})),
                    )
                    .await;
                assert!(
                    matches!(&r, Some((200, v)) if v["stdout"] == "ok\n"),
                    "{id}: {r:?}"
                );
            }
            Known::Paused => {
                assert_eq!(state, Some("paused"), "{id} was acknowledged paused");
                let r = p
                    .api("POST", &format!("/v1/sandboxes/{id}/resume"), &auth, None)
                    .await;
                assert!(matches!(&r, Some((200, _))), "{id}: resume {r:?}");
            }
            Known::Destroyed => {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while on_host(id) && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                assert!(!on_host(id), "{id} was destroyed and still runs");
                assert!(matches!(state, None | Some("stopped")), "{id}: {state:?}");
            }
            Known::Unsure => {}
        }
    }
    // Everything destroyed through the API leaves nothing on the host.
    for (id, state) in &listed {
        if state != "stopped" {
            let r = p
                .api("DELETE", &format!("/v1/sandboxes/{id}"), &auth, None)
                .await;
            assert!(
                matches!(r, Some((204, _)) | Some((404, _))),
                "destroy {id}: {r:?}"
            );
        }
    }
    assert_no_host_traces(&p.agent_dir());
}
