//! Egress: a sandbox reaches "the internet" (a test host in a network
//! namespace this test makes, at 198.51.100.1) through NAT, unless created
//! with allow_internet_access=false.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use wrenn_protocol::hostagent::v1 as pb;

/// A web server in its own network namespace, joined to the host by a veth.
struct FakeInternet {
    ns: String,
    server: Child,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeInternet {
    fn start() -> FakeInternet {
        let ns = format!("wrenn-inet-{}", std::process::id());
        let host_if = format!("wrinet{}", std::process::id() % 100000);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", "198.51.100.2/24", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &ns, "addr", "add", "198.51.100.1/24", "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "198.51.100.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let inet = FakeInternet { ns, server };
        for _ in 0..100 {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &inet.ns,
                    "python3",
                    "-c",
                    "import socket; socket.create_connection(('198.51.100.1', 8080), 1)",
                ])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        inet
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test]
async fn internet_access_can_be_switched_off() {
    let agent = AgentProc::start();
    let inet = FakeInternet::start();
    let c = agent.client();
    let open = new_id("open");
    let closed = new_id("closed");
    c.create_sandbox(create_req(&open)).await.unwrap();
    let mut r = create_req(&closed);
    r.allow_internet_access = false;
    c.create_sandbox(r).await.unwrap();
    let fetch =
        "curl -s -m 3 -o /dev/null -w '%{http_code}' http://198.51.100.1:8080/; echo ' rc='$?";
    let (out, _, _) = sh(&c, &open, fetch).await;
    assert!(
        out.starts_with("200"),
        "a sandbox with internet access could not fetch: {out}"
    );
    let (out, _, _) = sh(&c, &closed, fetch).await;
    assert!(
        !out.starts_with("200"),
        "a sandbox without internet access fetched: {out}"
    );
    assert_eq!(
        sh(&c, &closed, "cat /etc/resolv.conf").await.0,
        "",
        "no name servers without internet"
    );
    drop(inet);
}

/// Egress rules hold from the create, change at once, and survive an
/// agent that is killed and started again (whose start makes the firewall
/// anew): the rules are the sandbox's, not the firewall's memory.
#[tokio::test]
async fn egress_rules_hold_and_survive_an_agent_restart() {
    let mut agent = AgentProc::start();
    let inet = FakeInternet::start();
    let c = agent.client();
    let id = new_id("egress");
    let mut r = create_req(&id);
    r.egress = pb::Egress {
        deny_out: vec!["0.0.0.0/0".into()],
        ..Default::default()
    }
    .into();
    c.create_sandbox(r).await.unwrap();
    let fetch =
        "curl -s -m 2 -o /dev/null -w '%{http_code}' http://198.51.100.1:8080/; echo ' rc='$?";
    let code = |c: Client, id: String| async move { sh(&c, &id, fetch).await.0[..3].to_string() };
    assert_eq!(
        code(c.clone(), id.clone()).await,
        "000",
        "denied from the create"
    );
    let set = |allow: &[&str], deny: &[&str]| pb::SetEgressRequest {
        sandbox_id: id.clone(),
        egress: pb::Egress {
            allow_out: allow.iter().map(|s| s.to_string()).collect(),
            deny_out: deny.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    c.set_sandbox_egress(set(&["198.51.100.1"], &["0.0.0.0/0"]))
        .await
        .unwrap();
    assert_eq!(code(c.clone(), id.clone()).await, "200", "allowed wins");
    c.set_sandbox_egress(set(&[], &["198.51.100.0/24"]))
        .await
        .unwrap();
    assert_eq!(code(c.clone(), id.clone()).await, "000", "denied again");

    agent.kill();
    agent.spawn();
    let c = agent.client();
    assert_eq!(
        code(c.clone(), id.clone()).await,
        "000",
        "the rule holds after the agent's restart"
    );
    let e = c
        .set_sandbox_egress(set(&["example.com"], &[]))
        .await
        .expect_err("a domain is not an address");
    assert!(format!("{e:?}").contains("not an IPv4"), "{e:?}");
    c.set_sandbox_egress(set(&[], &[])).await.unwrap();
    assert_eq!(code(c.clone(), id.clone()).await, "200", "cleared");

    // Allowing private ranges opens neither the host nor the agent.
    c.set_sandbox_egress(set(&["10.0.0.0/8", "127.0.0.0/8"], &["0.0.0.0/0"]))
        .await
        .unwrap();
    let addr = c
        .get_sandbox(pb::SandboxRef {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .envd_address;
    let ip: std::net::Ipv4Addr = addr.split(':').next().unwrap().parse().unwrap();
    let gateway = std::net::Ipv4Addr::from(u32::from(ip) - 1);
    let (out, _, _) = sh(
        &c,
        &id,
        &format!(
            "curl -s -m 2 -o /dev/null -w '%{{http_code}}' http://{gateway}:{}/; echo ' rc='$?",
            agent.port
        ),
    )
    .await;
    assert!(
        out.starts_with("000"),
        "allowed private range reached the agent: {out}"
    );

    // A sandbox with rules destroyed: the next one in its slot has none.
    c.set_sandbox_egress(set(&[], &["0.0.0.0/0"]))
        .await
        .unwrap();
    c.destroy_sandbox(pb::SandboxRef {
        sandbox_id: id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Its teardown runs behind the answer; slots go lowest first.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let next = new_id("egress2");
    let made = c
        .create_sandbox(create_req(&next))
        .await
        .unwrap()
        .into_owned();
    assert_eq!(
        made.envd_address, addr,
        "the new sandbox took the freed slot"
    );
    assert_eq!(
        code(c.clone(), next.clone()).await,
        "200",
        "a new sandbox in a freed slot inherits no rules"
    );
    drop(inet);
}
