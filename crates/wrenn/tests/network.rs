//! Egress: a sandbox reaches "the internet" (a test host in a network
//! namespace this test makes, at 198.51.100.1) through NAT, unless created
//! with allow_internet_access=false.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

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
