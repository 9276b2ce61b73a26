//! Escapes tried from inside a sandbox, each asserted to fail, and
//! resource abuse that must stay contained.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wrenn_protocol::hostagent::v1 as pb;

async fn create(c: &Client, id: &str) {
    c.create_sandbox(create_req(id))
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
}

#[tokio::test]
async fn escapes_from_inside_fail() {
    let agent = AgentProc::start();
    let c = agent.client();
    let a = new_id("esca");
    let b = new_id("escb");
    create(&c, &a).await;
    create(&c, &b).await;
    let b_ip = c
        .get_sandbox(pb::SandboxRef {
            sandbox_id: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned()
        .envd_address;
    let b_ip = b_ip.split(':').next().unwrap().to_string();
    let a_sb = c
        .get_sandbox(pb::SandboxRef {
            sandbox_id: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    let gateway = {
        let ip: std::net::Ipv4Addr = a_sb
            .envd_address
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        std::net::Ipv4Addr::from(u32::from(ip) - 1)
    };

    // A secret on the host, and services on the host's loopback and on all
    // its addresses.
    let secret = agent.data_dir.join("host-secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let lo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let (lo_port, any_port) = (
        lo.local_addr().unwrap().port(),
        any.local_addr().unwrap().port(),
    );
    let template_file = common::template_dir().join("base/rootfs/etc/escape-test");
    let _ = std::fs::remove_file(&template_file);

    let py = |code: &str| format!("python3 -c \"{code}\" 2>&1; echo rc=$?");
    let connect = |host: &str, port: u16| {
        py(&format!(
            "import socket; s=socket.socket(); s.settimeout(2); print('CONNECTED' if s.connect_ex(('{host}', {port})) == 0 else 'refused')"
        ))
    };
    let cases: Vec<(&str, String, Box<dyn Fn(&str, i32) -> bool>)> = vec![
        (
            "read a host file",
            format!("cat {}", secret.display()),
            Box::new(|o: &str, _| !o.contains("top secret")),
        ),
        (
            "read a host file through /proc/1/root",
            format!("cat /proc/1/root{}", secret.display()),
            Box::new(|o: &str, _| !o.contains("top secret")),
        ),
        (
            "write the template",
            "echo pwned > /etc/escape-test && cat /etc/escape-test".into(),
            Box::new(|o: &str, _| o.contains("pwned")),
        ),
        (
            "see host processes",
            "ps -e -o comm= | sort -u | tr '\\n' ' '".into(),
            Box::new(|o: &str, _| {
                !o.contains("wrenn") && !o.contains("cargo") && !o.contains("process_api")
            }),
        ),
        (
            "reach the agent",
            connect("127.0.0.1", agent.port),
            Box::new(|o: &str, _| !o.contains("CONNECTED")),
        ),
        (
            "reach the agent via the gateway",
            connect(&gateway.to_string(), agent.port),
            Box::new(|o: &str, _| !o.contains("CONNECTED")),
        ),
        (
            "reach a host loopback service",
            connect("127.0.0.1", lo_port),
            Box::new(|o: &str, _| !o.contains("CONNECTED")),
        ),
        (
            "reach a host service via the gateway",
            connect(&gateway.to_string(), any_port),
            Box::new(|o: &str, _| !o.contains("CONNECTED")),
        ),
        (
            "reach another sandbox",
            connect(&b_ip, 49983),
            Box::new(|o: &str, _| !o.contains("CONNECTED")),
        ),
        (
            "mount",
            "mount -t tmpfs none /mnt 2>&1; echo rc=$?".into(),
            Box::new(|o: &str, _| !o.contains("rc=0")),
        ),
        (
            "load a module",
            py(
                "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.syscall(313,0,b'',0); print(r, os.strerror(ctypes.get_errno()))",
            ),
            Box::new(|o: &str, _| o.contains("-1 Operation not permitted")),
        ),
        (
            "open a raw socket",
            py(
                "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('RAW OK')",
            ),
            Box::new(|o: &str, _| !o.contains("RAW OK")),
        ),
        (
            "ptrace a process outside",
            py(&format!(
                "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.ptrace(16,{},0,0); print(r, os.strerror(ctypes.get_errno()))",
                std::process::id()
            )),
            Box::new(|o: &str, _| o.contains("-1 ")),
        ),
        (
            "change the clock",
            "date -s '2001-01-01 00:00:00' 2>&1; echo rc=$?".into(),
            Box::new(|o: &str, _| !o.contains("rc=0")),
        ),
        (
            "create a user namespace",
            "unshare -U -r true 2>&1; echo rc=$?".into(),
            Box::new(|o: &str, _| !o.contains("rc=0")),
        ),
        (
            // sudo works (E2B's `user` needs it) but reaches only what
            // sandbox root has: the same capabilities, and no mount.
            "gain more than sandbox root through sudo",
            // (Its filter stays: a setuid program cannot shed it.)
            "runuser -u user -- sh -c 'sudo -n id -u; grep CapEff /proc/self/status; sudo -n grep -E \"^(CapEff|CapBnd|Seccomp):\" /proc/self/status; sudo -n mount -t tmpfs none /mnt 2>&1; echo rc=$?'".into(),
            Box::new(|o: &str, _| {
                o.starts_with("0\n")
                    && o.contains(
                        "CapEff:\t0000000000000000\nCapEff:\t00000000a80405fb\nCapBnd:\t00000000a80405fb\nSeccomp:\t2\n",
                    )
                    && !o.contains("rc=0")
            }),
        ),
        (
            "reboot the host",
            py(
                "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.reboot(0x4321fedc); print(r, os.strerror(ctypes.get_errno()))",
            ),
            Box::new(|o: &str, _| o.contains("-1 ")),
        ),
    ];
    let mut failures = Vec::new();
    for (name, script, ok) in &cases {
        let (out, err, code) = sh(&c, &a, script).await;
        if !ok(&format!("{out}{err}"), code) {
            failures.push(format!("{name}: {out}{err}"));
        }
    }
    // Writing "the template" only wrote the sandbox's own layer.
    assert!(!template_file.exists(), "the template was modified");
    assert!(
        failures.is_empty(),
        "escapes that worked:\n{}",
        failures.join("\n")
    );
    drop((lo, any));
}

#[tokio::test]
async fn abuse_stays_contained() {
    let agent = AgentProc::start();
    let c = agent.client();
    let bomb = new_id("bomb");
    let other = new_id("calm");
    create(&c, &bomb).await;
    create(&c, &other).await;

    // Memory hog: killed by its cgroup; the sandbox itself lives on.
    let (out, _, _) = sh(
        &c,
        &bomb,
        "python3 -c 'x = bytearray(1024*1024*1024); print(\"allocated\")'; echo rc=$?",
    )
    .await;
    assert!(
        !out.contains("allocated") && !out.contains("rc=0"),
        "the memory hog was not stopped: {out}"
    );

    // Disk filler: stops at the disk size.
    let (out, _, _) = sh(&c, &bomb, "dd if=/dev/zero of=/fill bs=1M count=1024 2>&1 | grep -o 'No space left'; df -m / | tail -1").await;
    assert!(out.contains("No space left"), "{out}");
    let m = c
        .get_sandbox_metrics(pb::SandboxRef {
            sandbox_id: bomb.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert!(
        m.disk_used_bytes <= m.disk_limit_bytes && m.disk_limit_bytes <= 300 << 20,
        "{m:?}"
    );
    sh(&c, &bomb, "rm -f /fill").await;

    // Fork bomb, in the background; the host, the other sandbox and the
    // agent keep answering.
    spawn(&c, &bomb, "b() { b | b & }; b", "").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let (out, _, code) = sh(&c, &other, "echo still-here").await;
    assert_eq!((out.trim(), code), ("still-here", 0));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the other sandbox took {:?}",
        t.elapsed()
    );
    let m = c
        .get_sandbox_metrics(pb::SandboxRef {
            sandbox_id: bomb.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert!(m.pids <= 4096, "{m:?}");
    c.destroy_sandbox(pb::SandboxRef {
        sandbox_id: bomb.clone(),
        ..Default::default()
    })
    .await
    .expect("destroy the bomb");
    c.destroy_sandbox(pb::SandboxRef {
        sandbox_id: other.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_no_host_traces(&agent.data_dir);
}
