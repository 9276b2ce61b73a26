//! A fleet on one machine: one `wrenn server` and three `wrenn agent`s, each
//! agent in its own network namespace (its own address, firewall table and
//! sandbox links), data directory and cgroup parent, registered with
//! one-time tokens. Shows registration and refusals, credential rotation
//! across a control-plane crash, scheduling, a host that dies and comes
//! back, orphan clean-up, and host deletion.
//!
//! Long because each fleet scenario is a test of its own over one harness
//! of three agents and a server.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

type Http = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

const HOSTS: usize = 3;

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// The control plane, the agents, their namespaces and directories;
/// everything is removed on drop, also when a test fails.
struct Fleet {
    tag: String,
    dir: PathBuf,
    port: u16,
    cp: Option<Child>,
    agents: Vec<Option<Child>>,
    agent_tokens: Vec<String>,
    http: Http,
}

impl Fleet {
    fn new() -> Fleet {
        let tag = format!("{:x}", unique() % 0xffff_ffff);
        let dir = PathBuf::from(format!("/var/tmp/wrenn-test-fleet-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = Fleet {
            tag,
            dir,
            port,
            cp: None,
            agents: (0..HOSTS).map(|_| None).collect(),
            agent_tokens: (0..HOSTS)
                .map(|i| format!("fleet-agent-token-{i}-{}", unique()))
                .collect(),
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http(),
        };
        for i in 0..HOSTS {
            let ns = f.netns(i);
            ip(&["netns", "add", &ns]);
            let (h, a) = f.links(i);
            ip(&["link", "add", &h, "type", "veth", "peer", "name", &a]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["addr", "add", &format!("{}/30", f.cp_ip(i)), "dev", &h]);
            ip(&["link", "set", &h, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/30", f.agent_ip(i)),
                "dev",
                &a,
            ]);
            ip(&["-n", &ns, "link", "set", &a, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let data = f.agent_dir(i);
            std::fs::create_dir_all(data.join("templates")).unwrap();
            std::os::unix::fs::symlink(
                common::template_dir().join("base"),
                data.join("templates/base"),
            )
            .unwrap();
            // A small template of its own, for the fleet-wide delete.
            std::fs::create_dir_all(data.join("templates/tiny/rootfs/bin")).unwrap();
        }
        f
    }

    fn netns(&self, i: usize) -> String {
        format!("wrnfl{}{i}", &self.tag[..4])
    }
    fn links(&self, i: usize) -> (String, String) {
        (
            format!("wfl{}{i}h", &self.tag[..4]),
            format!("wfl{}{i}a", &self.tag[..4]),
        )
    }
    fn cp_ip(&self, i: usize) -> String {
        format!("10.251.{}.1", 4 * i)
    }
    fn agent_ip(&self, i: usize) -> String {
        format!("10.251.{}.2", 4 * i)
    }
    fn agent_addr(&self, i: usize) -> String {
        format!("{}:7070", self.agent_ip(i))
    }
    /// Agent `i`'s saved credentials.
    fn credentials(&self, i: usize) -> Value {
        let path = self.agent_dir(i).join("credentials.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }
    /// A client for agent `i`'s own API.
    fn agent(&self, i: usize) -> common::Client {
        common::agent_client(&self.agent_addr(i), &self.agent_tokens[i])
    }
    fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent{i}"))
    }
    fn cgroup_parent(&self, i: usize) -> String {
        format!("wrenn-fleet-{}-{i}", self.tag)
    }
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the control plane; `extra` flags and environment.
    fn start_cp(&mut self, flags: &[&str], env: &[(&str, &str)]) {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wrenn"));
        c.arg("--data-dir")
            .arg(self.dir.join("cp"))
            .args(["server", "--listen", &format!("0.0.0.0:{}", self.port)])
            .args(common::FAST_SERVER_FLAGS)
            // The test's agents sit at private addresses (10.251.x).
            .arg("--allow-private-host-addresses")
            .args(flags)
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        self.cp = Some(c.spawn().expect("start wrenn server"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "wrenn server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_cp(&mut self) {
        if let Some(mut c) = self.cp.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts agent `i` in its namespace; with a registration token the
    /// first time, without one afterwards (it keeps its credentials).
    fn start_agent(&mut self, i: usize, registration: Option<&str>) {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns(i)))
            .arg(env!("CARGO_BIN_EXE_wrenn"))
            .arg("--data-dir")
            .arg(self.agent_dir(i))
            .args(["agent", "--listen", &format!("{}:7070", self.agent_ip(i))])
            .args(["--token", &self.agent_tokens[i]])
            .args(["--cgroup-parent", &self.cgroup_parent(i)])
            .args([
                "--control-plane",
                &format!("http://{}:{}", self.cp_ip(i), self.port),
            ])
            .args(["--heartbeat-interval", "1"])
            .env("WRENN_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(t) = registration {
            c.args(["--register", t]);
        }
        self.agents[i] = Some(c.spawn().expect("start wrenn agent"));
    }

    /// SIGKILL, by pid.
    fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn agent_exited(&mut self, i: usize) -> bool {
        match self.agents[i].as_mut() {
            None => true,
            Some(c) => c.try_wait().ok().flatten().is_some(),
        }
    }

    /// Whether every sandbox of `ids` is listed in `state`.
    async fn all_in_state(&self, auth: &str, state: &str, ids: &[String]) -> bool {
        let (_, v) = self
            .api("GET", &format!("/v1/sandboxes?state={state}"), auth, None)
            .await;
        let listed: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        ids.iter().all(|s| listed.contains(&s.as_str()))
    }

    /// Signs a user up or logs them in (`action`); their token.
    async fn user_token(&self, action: &str, email: &str, want: u16) -> String {
        let body = json!({"email": email, "password": "fleet-password"});
        let (st, v) = self
            .api("POST", &format!("/v1/auth/{action}"), "", Some(body))
            .await;
        assert_eq!(st, want, "{action} {email}: {v}");
        v["token"].as_str().unwrap().to_string()
    }

    async fn api(&self, method: &str, path: &str, auth: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base()))
            .header("content-type", "application/json");
        if !auth.is_empty() {
            req = req.header("authorization", format!("Bearer {auth}"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = self
            .http
            .request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let st = resp.status().as_u16();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
}

/// Waits until `f` holds, or fails naming `what`.
async fn until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until agent `i` no longer has sandbox `id`.
async fn gone_from_host(f: &Fleet, i: usize, id: &str, what: &str) {
    let c = f.agent(i);
    let (c, id) = (&c, id);
    until(what, Duration::from_secs(10), || async move {
        let l = c
            .list_sandboxes(wrenn_protocol::hostagent::v1::ListSandboxesRequest::default())
            .await
            .unwrap()
            .into_owned();
        !l.sandboxes.iter().any(|s| s.sandbox_id == id)
    })
    .await;
}

/// Creates `n` sandboxes and asserts they spread evenly over `hosts`;
/// returns (sandbox id, host id) of each.
async fn create_evenly(
    f: &Fleet,
    admin: &str,
    body: &Value,
    n: usize,
    hosts: &[String],
    how: &str,
) -> Vec<(String, String)> {
    let mut made = Vec::new();
    for _ in 0..n {
        let (st, v) = f
            .api("POST", "/v1/sandboxes", admin, Some(body.clone()))
            .await;
        assert_eq!(st, 201, "{v}");
        made.push((
            v["id"].as_str().unwrap().to_string(),
            v["host_id"].as_str().unwrap().to_string(),
        ));
    }
    for id in hosts {
        assert_eq!(
            made.iter().filter(|(_, h)| h == id).count(),
            n / hosts.len(),
            "{how} spreads evenly"
        );
    }
    made
}

/// Waits for agent `i` to exit by itself.
async fn exited(f: &mut Fleet, i: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f.agent_exited(i) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.agents[i] = None;
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..HOSTS {
            // Terminate through the agent's API (destroying its sandboxes),
            // then kill by pid whatever is left.
            if self.agents[i].is_none() {
                continue;
            }
            common::terminate_agent(&self.agent_addr(i), &self.agent_tokens[i]);
            if let Some(c) = self.agents[i].take() {
                common::reap(c);
            }
        }
        self.stop_cp();
        for i in 0..HOSTS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns(i)])
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.links(i).0])
                .stderr(Stdio::null())
                .status();
            for ctrl in ["memory", "cpu", "cpuacct", "pids", "freezer", ""] {
                let _ = std::fs::remove_dir(
                    PathBuf::from("/sys/fs/cgroup")
                        .join(ctrl)
                        .join(self.cgroup_parent(i)),
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn host_of(hosts: &Value, id: &str) -> Value {
    hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_register_fail_come_back_and_are_deleted() {
    let _serial = common::SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut f = Fleet::new();
    f.start_cp(&["--scheduler", "round-robin"], &[]);

    // The first user of a server is its admin.
    let admin = f.user_token("signup", "admin@fleet.test", 201).await;
    let user = f.user_token("signup", "user@fleet.test", 201).await;
    let (st, v) = f
        .api("POST", "/v1/hosts", &user, Some(json!({"name": "nope"})))
        .await;
    assert_eq!(st, 403, "a member may not add shared hosts: {v}");
    let (st, v) = f
        .api(
            "POST",
            "/v1/hosts",
            &user,
            Some(json!({"name": "mine", "team_owned": true})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let team_host = v["id"].as_str().unwrap().to_string();
    let (_, v) = f.api("GET", "/v1/hosts", &user, None).await;
    assert_eq!(
        v.as_array().unwrap().len(),
        1,
        "a team sees only its own hosts: {v}"
    );
    let (st, _) = f
        .api("DELETE", &format!("/v1/hosts/{team_host}"), &user, None)
        .await;
    assert_eq!(st, 204);

    // Three hosts, three one-time tokens.
    let mut host_ids = vec![];
    let mut tokens = vec![];
    for i in 0..HOSTS {
        let (st, v) = f
            .api(
                "POST",
                "/v1/hosts",
                &admin,
                Some(json!({"name": format!("h{i}")})),
            )
            .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["status"], "pending");
        host_ids.push(v["id"].as_str().unwrap().to_string());
        tokens.push(v["registration_token"].as_str().unwrap().to_string());
    }
    let reg = |token: &str| json!({"token": token, "address": "10.0.0.1:7070", "agent_token": "x".repeat(20)});
    let (st, _) = f
        .api("POST", "/v1/hosts/register", "", Some(reg("wrh_bogus")))
        .await;
    assert_eq!(st, 401, "an unknown token is refused");
    // A regenerated token replaces the old one.
    let (st, v) = f
        .api(
            "POST",
            &format!("/v1/hosts/{}/token", host_ids[2]),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = f
        .api("POST", "/v1/hosts/register", "", Some(reg(&tokens[2])))
        .await;
    assert_eq!(st, 401, "the replaced token is refused");
    tokens[2] = v["registration_token"].as_str().unwrap().to_string();

    for i in 0..HOSTS {
        f.start_agent(i, Some(&tokens[i].clone()));
    }
    let (fr, ids, adm) = (&f, &host_ids, &admin);
    until(
        "three hosts online with their specs, their agents with credentials saved",
        Duration::from_secs(30),
        || async move {
            // The control plane records the host before the agent has the
            // answer (and writes its credentials file).
            let saved = (0..HOSTS).all(|i| fr.agent_dir(i).join("credentials.json").exists());
            let (_, v) = fr.api("GET", "/v1/hosts", adm, None).await;
            saved
                && ids.iter().all(|id| {
                    let h = host_of(&v, id);
                    h["status"] == "online"
                        && h["cpu_count"].as_i64() > Some(0)
                        && h["memory_mb"].as_i64() > Some(0)
                })
        },
    )
    .await;
    for i in 0..HOSTS {
        let creds = f.agent_dir(i).join("credentials.json");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (st, _) = f
        .api("POST", "/v1/hosts/register", "", Some(reg(&tokens[0])))
        .await;
    assert_eq!(st, 401, "a used token is refused");

    // Round-robin: 30 sandboxes, 10 on each host.
    let create = |tags: Value| json!({"template": "base", "memory_mb": 128, "disk_size_mb": 128, "timeout_sec": 0, "host_tags": tags});
    let mut sandboxes =
        create_evenly(&f, &admin, &create(json!([])), 30, &host_ids, "round-robin").await;
    for (id, _) in sandboxes.drain(..) {
        let (st, _) = f
            .api("DELETE", &format!("/v1/sandboxes/{id}"), &admin, None)
            .await;
        assert_eq!(st, 204);
    }

    // Rotation survives a crash between issuing the new refresh token and
    // revoking the old: the old one still works once, then never again.
    let creds = f.credentials(0);
    let old_refresh = creds["refresh_token"].as_str().unwrap().to_string();
    f.stop_cp();
    f.start_cp(
        &["--scheduler", "least-loaded"],
        &[("WRENN_FAULT_CRASH_AFTER_REFRESH_ISSUE", "1")],
    );
    let req = http::Request::post(format!("{}/v1/hosts/refresh", f.base()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"refresh_token": old_refresh}).to_string(),
        )))
        .unwrap();
    assert!(
        f.http.request(req).await.is_err(),
        "the control plane crashed mid-rotation"
    );
    let _ = f.cp.as_mut().unwrap().wait();
    f.cp = None;
    f.start_cp(&["--scheduler", "least-loaded"], &[]);
    let (st, v) = f
        .api(
            "POST",
            "/v1/hosts/refresh",
            "",
            Some(json!({"refresh_token": old_refresh})),
        )
        .await;
    assert_eq!(st, 200, "the old token survived the crash: {v}");
    let (st, _) = f
        .api(
            "POST",
            "/v1/hosts/refresh",
            "",
            Some(json!({"refresh_token": old_refresh})),
        )
        .await;
    assert_eq!(st, 401, "a used refresh token is refused");

    // Least-loaded: 30 more, even over equal hosts; tags pin.
    sandboxes.extend(
        create_evenly(
            &f,
            &admin,
            &create(json!([])),
            30,
            &host_ids,
            "least-loaded",
        )
        .await,
    );
    let (st, _) = f
        .api(
            "PUT",
            &format!("/v1/hosts/{}/tags", host_ids[1]),
            &admin,
            Some(json!({"tags": ["gpu"]})),
        )
        .await;
    assert_eq!(st, 200);
    let (st, v) = f
        .api(
            "POST",
            "/v1/sandboxes",
            &admin,
            Some(create(json!(["gpu"]))),
        )
        .await;
    assert_eq!(
        (st, v["host_id"].as_str()),
        (201, Some(host_ids[1].as_str())),
        "{v}"
    );
    sandboxes.push((v["id"].as_str().unwrap().into(), host_ids[1].clone()));
    let (st, v) = f
        .api(
            "POST",
            "/v1/sandboxes",
            &admin,
            Some(create(json!(["tpu"]))),
        )
        .await;
    // No host has it, online or not: the request is wrong, not the moment.
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tpu"),
        "{v}"
    );
    // Keep a marker in one sandbox of host 0.
    let on0: Vec<String> = sandboxes
        .iter()
        .filter(|(_, h)| *h == host_ids[0])
        .map(|(s, _)| s.clone())
        .collect();
    let (st, v) = f
        .api(
            "POST",
            &format!("/v1/sandboxes/{}/exec", on0[0]),
            &admin,
            Some(json!({"cmd": "/bin/sh", "args": ["-c", "echo kept > /root/marker"]})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // kill -9 of host 0: unreachable, its sandboxes missing; new ones go elsewhere.
    f.kill_agent(0);
    let t = Instant::now();
    let (fr, ids, adm, first) = (&f, &host_ids, &admin, &on0[0]);
    until(
        "host 0 unreachable and its sandboxes missing",
        Duration::from_secs(15),
        || async move {
            let (_, v) = fr.api("GET", "/v1/hosts", adm, None).await;
            if host_of(&v, &ids[0])["status"] != "unreachable" {
                return false;
            }
            let (_, v) = fr
                .api("GET", &format!("/v1/sandboxes/{first}"), adm, None)
                .await;
            v["status"] == "missing"
        },
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(4 + 1 + 3),
        "noticed within the threshold: {:?}",
        t.elapsed()
    );
    for _ in 0..4 {
        let (st, v) = f
            .api("POST", "/v1/sandboxes", &admin, Some(create(json!([]))))
            .await;
        assert_eq!(st, 201, "{v}");
        assert_ne!(
            v["host_id"], host_ids[0],
            "nothing lands on an unreachable host"
        );
        sandboxes.push((
            v["id"].as_str().unwrap().into(),
            v["host_id"].as_str().unwrap().into(),
        ));
    }

    // A missing sandbox can be destroyed while its host is away: stopped
    // now, destroyed on the host when it is back.
    let gone_while_away = on0.last().unwrap().clone();
    let (st, v) = f
        .api(
            "DELETE",
            &format!("/v1/sandboxes/{gone_while_away}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, 204, "{v}");
    let on0: Vec<String> = on0[..on0.len() - 1].to_vec();

    // It comes back (same credentials): online, its sandboxes running, the marker there.
    f.start_agent(0, None);
    let (fr, ids, adm, on0r) = (&f, &host_ids, &admin, &on0);
    until(
        "host 0 online and its sandboxes running",
        Duration::from_secs(20),
        || async move {
            let (_, v) = fr.api("GET", "/v1/hosts", adm, None).await;
            if host_of(&v, &ids[0])["status"] != "online" {
                return false;
            }
            fr.all_in_state(adm, "running", on0r).await
        },
    )
    .await;
    let (st, v) = f
        .api(
            "POST",
            &format!("/v1/sandboxes/{}/exec", on0[0]),
            &admin,
            Some(json!({"cmd": "cat", "args": ["/root/marker"]})),
        )
        .await;
    assert_eq!((st, v["stdout"].as_str()), (200, Some("kept\n")), "{v}");

    // An orphan (on the agent, unknown to the database) is destroyed.
    let orphan = common::new_id("orphan");
    f.agent(2)
        .create_sandbox(common::create_req(&orphan))
        .await
        .unwrap();
    gone_from_host(&f, 2, &orphan, "the orphan destroyed").await;

    // And the sandbox destroyed while host 0 was away is gone from it.
    gone_from_host(
        &f,
        0,
        &gone_while_away,
        "the sandbox destroyed while its host was away gone from the host",
    )
    .await;
    let (_, v) = f
        .api(
            "GET",
            &format!("/v1/sandboxes/{gone_while_away}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(v["status"], "stopped");

    // A host whose refresh is refused pauses every sandbox. Host 0's refresh
    // token was used up above; a new JWT secret makes every host JWT invalid:
    // hosts 1 and 2 refresh and carry on, host 0 cannot.
    f.stop_cp();
    f.start_cp(
        &[
            "--scheduler",
            "least-loaded",
            "--jwt-secret",
            "a-new-secret-for-every-token-0123",
        ],
        &[],
    );
    let admin = f.user_token("login", "admin@fleet.test", 200).await;
    let user = f.user_token("login", "user@fleet.test", 200).await;
    let (fr, adm, on0r) = (&f, &admin, &on0);
    until(
        "host 0's sandboxes paused",
        Duration::from_secs(20),
        || async move { fr.all_in_state(adm, "paused", on0r).await },
    )
    .await;
    let (_, v) = f.api("GET", "/v1/hosts", &admin, None).await;
    assert_eq!(
        host_of(&v, &host_ids[1])["status"],
        "online",
        "host 1 refreshed its credentials"
    );
    let on1 = sandboxes
        .iter()
        .find(|(_, h)| *h == host_ids[1])
        .unwrap()
        .0
        .clone();
    let (_, v) = f
        .api("GET", &format!("/v1/sandboxes/{on1}"), &admin, None)
        .await;
    assert_eq!(v["status"], "running");

    // Delete host 0 with live sandboxes: 409 naming them; with force: gone,
    // its agent stopped, its credentials revoked.
    let (st, v) = f
        .api(
            "DELETE",
            &format!("/v1/hosts/{}", host_ids[0]),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let listed: Vec<&str> = v["error"]["sandbox_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    for s in &on0 {
        assert!(listed.contains(&s.as_str()), "{s} listed in {v}");
    }
    let creds0 = f.credentials(0);
    let (st, _) = f
        .api(
            "DELETE",
            &format!("/v1/hosts/{}?force=true", host_ids[0]),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, 204);
    for s in &on0 {
        let (_, v) = f
            .api("GET", &format!("/v1/sandboxes/{s}"), &admin, None)
            .await;
        assert_eq!(v["status"], "stopped");
    }
    exited(&mut f, 0, "agent 0 stopped by the forced delete").await;
    let (st, _) = f
        .api(
            "POST",
            "/v1/hosts/refresh",
            "",
            Some(json!({"refresh_token": creds0["refresh_token"]})),
        )
        .await;
    assert_eq!(st, 401, "a deleted host's refresh token is refused");

    // Delete host 2 once its sandboxes are gone: its agent hears 404 on the
    // next heartbeat, forgets its credentials and stops.
    for (id, h) in &sandboxes {
        if *h == host_ids[2] {
            let (st, _) = f
                .api("DELETE", &format!("/v1/sandboxes/{id}"), &admin, None)
                .await;
            assert_eq!(st, 204);
        }
    }
    let (st, v) = f
        .api(
            "DELETE",
            &format!("/v1/hosts/{}", host_ids[2]),
            &admin,
            None,
        )
        .await;
    assert_eq!(st, 204, "{v}");
    exited(&mut f, 2, "agent 2 stopped after its host was deleted").await;
    assert!(
        !f.agent_dir(2).join("credentials.json").exists(),
        "credentials forgotten"
    );

    for (id, h) in &sandboxes {
        if *h == host_ids[1] {
            let (st, _) = f
                .api("DELETE", &format!("/v1/sandboxes/{id}"), &admin, None)
                .await;
            assert_eq!(st, 204);
        }
    }

    // A template deleted through the control plane goes from every online
    // host (only host 1 is left); the shared `base` stays.
    let (st, v) = f.api("GET", "/v1/templates", &admin, None).await;
    assert_eq!(st, 200);
    assert!(
        v.as_array().unwrap().iter().any(|t| t["name"] == "tiny"),
        "{v}"
    );
    let (st, _) = f.api("DELETE", "/v1/templates/tiny", &user, None).await;
    assert_eq!(st, 403, "members do not delete templates");
    let (st, v) = f.api("DELETE", "/v1/templates/tiny", &admin, None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["deleted_on"], json!([host_ids[1]]), "{v}");
    assert!(!f.agent_dir(1).join("templates/tiny").exists());
    assert!(common::template_dir().join("base/rootfs/bin").exists());
    let (st, _) = f.api("DELETE", "/v1/templates/tiny", &admin, None).await;
    assert_eq!(st, 404);
}
