//! Sandbox lifecycle through the agent: bad input, pause and resume,
//! timeouts, agent restarts, crash mid-create, and repeated create/destroy.
//!
//! Long because each lifecycle case is a test of its own over one harness.

mod common;

use std::time::{Duration, Instant};

use common::*;
use connectrpc::client::CallOptions;
use futures::StreamExt;
use wrenn_protocol::envd::filesystem as efs;
use wrenn_protocol::envd::process as ep;
use wrenn_protocol::hostagent::v1 as pb;

fn sref(id: &str) -> pb::SandboxRef {
    pb::SandboxRef {
        sandbox_id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let agent = AgentProc::start();
    let c = agent.client();
    let ok = new_id("dup");
    c.create_sandbox(create_req(&ok)).await.unwrap();
    let mut cases: Vec<(&str, pb::CreateSandboxRequest, connectrpc::ErrorCode)> = Vec::new();
    let mut r = create_req(&new_id("tpl"));
    r.template = "no-such-template".into();
    cases.push((
        "unknown template",
        r,
        connectrpc::ErrorCode::InvalidArgument,
    ));
    // A rootfs without the loader the (dynamically linked, debug) envd needs.
    std::fs::create_dir_all(agent.data_dir.join("templates/bare/rootfs/bin")).unwrap();
    let mut r = create_req(&new_id("bare"));
    r.template = "bare".into();
    cases.push((
        "template without envd's loader",
        r,
        connectrpc::ErrorCode::InvalidArgument,
    ));
    let mut r = create_req(&new_id("mem"));
    r.memory_mb = 10_000_000;
    cases.push((
        "impossible memory",
        r,
        connectrpc::ErrorCode::InvalidArgument,
    ));
    let mut r = create_req(&new_id("cpu"));
    r.vcpus = 4096;
    cases.push((
        "impossible vcpus",
        r,
        connectrpc::ErrorCode::InvalidArgument,
    ));
    let mut r = create_req(&new_id("disk"));
    r.disk_size_mb = 1;
    cases.push(("tiny disk", r, connectrpc::ErrorCode::InvalidArgument));
    cases.push((
        "bad id",
        create_req("../../etc"),
        connectrpc::ErrorCode::InvalidArgument,
    ));
    cases.push((
        "duplicate id",
        create_req(&ok),
        connectrpc::ErrorCode::AlreadyExists,
    ));
    let before = host_traces(&agent.data_dir);
    for (name, req, code) in cases {
        let err = c.create_sandbox(req).await.expect_err(name);
        assert_eq!(err.code, code, "{name}: {err:?}");
        if name.contains("loader") {
            let m = err.message.as_deref().unwrap_or_default();
            assert!(
                m.contains("dynamically linked") && m.contains("crt-static"),
                "{m}"
            );
        }
        assert!(
            err.message.as_deref().is_some_and(|m| !m.is_empty()),
            "{name}: no message"
        );
    }
    assert_eq!(
        host_traces(&agent.data_dir),
        before,
        "a refused create left something"
    );
    let err = c.destroy_sandbox(sref("sb-nosuch")).await.unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::NotFound);
    let err = run(&c, "sb-nosuch", command("true"), deadline(5), None, false)
        .await
        .unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::NotFound, "{err:?}");

    // Every call needs the token.
    let anon = wrenn_protocol::hostagent::v1::HostAgentServiceClient::new(
        connectrpc::client::HttpClient::plaintext(),
        connectrpc::client::ClientConfig::new(
            format!("http://127.0.0.1:{}", agent.port).parse().unwrap(),
        ),
    );
    let err = anon
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::Unauthenticated);
}

#[tokio::test]
async fn pause_freezes_and_resume_continues() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("pause");
    c.create_sandbox(create_req(&id)).await.unwrap();
    spawn(
        &c,
        &id,
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done",
        "",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let sb = c
        .pause_sandbox(pause_req(&id, false))
        .await
        .unwrap()
        .into_owned();
    let pause_ms = t.elapsed();
    assert_eq!(
        sb.state.as_known(),
        Some(pb::SandboxState::SANDBOX_STATE_PAUSED)
    );
    // The agent's hop refuses calls into a paused sandbox, in its own name.
    let err = run(&c, &id, command("true"), deadline(5), None, false)
        .await
        .unwrap_err();
    assert_eq!(
        err.response_headers()
            .get(wrenn_protocol::hostagent::PROXY_ERROR_HEADER)
            .map(|v| v.to_str().unwrap()),
        Some(wrenn_protocol::hostagent::proxy_error::INVALID_STATE),
        "{err:?}"
    );
    let err = c.pause_sandbox(pause_req(&id, false)).await.unwrap_err();
    assert_eq!(
        err.code,
        connectrpc::ErrorCode::FailedPrecondition,
        "pausing twice"
    );
    let t = Instant::now();
    c.resume_sandbox(resume_req(&id, false)).await.unwrap();
    let resume_ms = t.elapsed();
    let (a, _, _) = sh(&c, &id, "cat /tmp/count").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (b, _, _) = sh(&c, &id, "cat /tmp/count").await;
    let (a, b): (u32, u32) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
    assert!(
        b > a,
        "the background loop did not continue after resume: {a} then {b}"
    );
    assert!(pause_ms < Duration::from_secs(1) && resume_ms < Duration::from_secs(1));
    let err = c.resume_sandbox(resume_req(&id, false)).await.unwrap_err();
    assert_eq!(
        err.code,
        connectrpc::ErrorCode::FailedPrecondition,
        "resuming a running sandbox"
    );
}

/// A pause that drops the memory ends every process and keeps the files;
/// the resume boots the sandbox again (a new boot id, its environment and
/// default user again, the same address); a reboot does the same to a
/// sandbox paused with its memory; a restarted agent adopts such a
/// sandbox paused and can resume it.
#[tokio::test]
async fn a_pause_without_memory_boots_again_on_resume() {
    let mut agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("cold");
    let mut r = create_req(&id);
    r.envs.insert("GREETING".into(), "hi".into());
    let made = c.create_sandbox(r).await.unwrap().into_owned();
    write_file(&c, &id, "/root/kept.txt", b"kept").await;
    spawn(&c, &id, "sleep 1000", "sleeper").await;
    let boot = |c: Client| {
        let id = id.clone();
        async move { sh(&c, &id, "cat /proc/sys/kernel/random/boot_id").await.0 }
    };
    let first = boot(c.clone()).await;
    assert_eq!(first.trim().len(), 36, "a boot id of its own: {first:?}");
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(first, host_boot_id, "not the host's");
    // What the next boot's init (host root until its pivot) must not
    // follow out of the sandbox: its own /tmp and /etc/hosts made into
    // links to host paths.
    let escape_dir = agent.data_dir.join("escape-tmp");
    let escape_file = agent.data_dir.join("escape-hosts");
    sh(
        &c,
        &id,
        &format!(
            // And an envd of its own, which the boot must not run.
            "rm -rf /tmp && ln -s {} /tmp && ln -sf {} /etc/hosts && rm -f /.wrenn/envd && printf '#!/bin/sh\\nexit 3\\n' > /.wrenn/envd && chmod 755 /.wrenn/envd",
            escape_dir.display(),
            escape_file.display()
        ),
    )
    .await;

    let sb = c
        .pause_sandbox(pause_req(&id, true))
        .await
        .unwrap()
        .into_owned();
    assert!(sb.memory_dropped);
    assert_eq!(
        sb.state.as_known(),
        Some(pb::SandboxState::SANDBOX_STATE_PAUSED)
    );
    let err = c.pause_sandbox(pause_req(&id, true)).await.unwrap_err();
    assert_eq!(err.code, connectrpc::ErrorCode::FailedPrecondition, "twice");

    // Adopted as it is by a restarted agent.
    agent.kill();
    agent.spawn();
    let c = agent.client();
    let sb = c
        .get_sandbox(pb::SandboxRef {
            sandbox_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert!(sb.memory_dropped && sb.init_pid == 0, "{sb:?}");
    assert_eq!(
        sb.state.as_known(),
        Some(pb::SandboxState::SANDBOX_STATE_PAUSED)
    );
    // Two resumes at once: one boots it, the other is refused; never two
    // boots of one disk.
    let (a, b) = tokio::join!(
        c.resume_sandbox(resume_req(&id, false)),
        c.resume_sandbox(resume_req(&id, false))
    );
    let ok: Vec<_> = [a, b].into_iter().filter_map(Result::ok).collect();
    assert_eq!(ok.len(), 1, "exactly one resume boots it");
    let sb = ok.into_iter().next().unwrap().into_owned();
    assert!(
        !escape_dir.exists() && !escape_file.exists(),
        "the boot followed a link out of the sandbox"
    );
    assert!(!sb.memory_dropped);
    assert_eq!(sb.envd_address, made.envd_address, "the same address");
    let second = boot(c.clone()).await;
    assert_ne!(first, second, "booted again");
    assert_eq!(read_file(&c, &id, "/root/kept.txt").await, b"kept");
    let (ps, _, _) = sh(&c, &id, "pgrep -x sleep || echo none").await;
    assert_eq!(ps.trim(), "none", "its processes ended");
    assert_eq!(
        sh(&c, &id, "echo $GREETING").await.0,
        "hi\n",
        "its environment again"
    );

    // A reboot of a sandbox paused with its memory.
    spawn(&c, &id, "sleep 1000", "sleeper").await;
    c.pause_sandbox(pause_req(&id, false)).await.unwrap();
    c.resume_sandbox(resume_req(&id, true)).await.unwrap();
    assert_ne!(boot(c.clone()).await, second, "rebooted");
    let (ps, _, _) = sh(&c, &id, "pgrep -x sleep || echo none").await;
    assert_eq!(ps.trim(), "none");

    // Destroyed while paused without memory: nothing of it stays.
    c.pause_sandbox(pause_req(&id, true)).await.unwrap();
    c.destroy_sandbox(pb::SandboxRef {
        sandbox_id: id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_no_host_traces(&agent.data_dir);
}

#[tokio::test]
async fn timeout_destroys_and_ping_extends() {
    let agent = AgentProc::start();
    let c = agent.client();
    let short = new_id("short");
    let kept = new_id("kept");
    let mut r = create_req(&short);
    r.timeout_sec = 2;
    c.create_sandbox(r).await.unwrap();
    let mut r = create_req(&kept);
    r.timeout_sec = 2;
    c.create_sandbox(r).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        c.ping(pb::PingRequest {
            sandbox_id: kept.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let err = c.get_sandbox(sref(&short)).await.unwrap_err();
    assert_eq!(
        err.code,
        connectrpc::ErrorCode::NotFound,
        "the timed-out sandbox is still there"
    );
    assert!(
        c.get_sandbox(sref(&kept)).await.is_ok(),
        "pinged sandbox was reaped"
    );
    // Its directory goes behind the destroy.
    let dir = agent.data_dir.join("sandboxes").join(&short);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dir.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dir.exists(), "the timed-out sandbox's directory is left");
}

#[tokio::test]
async fn agent_restart_readopts_running_sandboxes() {
    let mut agent = AgentProc::start();
    let id = new_id("adopt");
    {
        let c = agent.client();
        c.create_sandbox(create_req(&id)).await.unwrap();
        spawn(&c, &id, "sleep 1000", "sleeper").await;
    }
    agent.kill();
    // The sandbox keeps running while the agent is down.
    let pids_before = std::fs::read_to_string(
        agent
            .data_dir
            .join("sandboxes")
            .join(&id)
            .join("runtime.json"),
    )
    .unwrap();
    assert!(pids_before.contains("init_pid"));
    agent.spawn();
    let c = agent.client();
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert_eq!(
        list.sandboxes
            .iter()
            .map(|s| s.sandbox_id.as_str())
            .collect::<Vec<_>>(),
        vec![id.as_str()]
    );
    let procs = c
        .envd(&id)
        .await
        .process
        .list(ep::ListRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert!(
        procs
            .processes
            .iter()
            .any(|p| p.tag.as_deref() == Some("sleeper")),
        "{procs:?}"
    );
    assert_eq!(sh(&c, &id, "echo back").await.0, "back\n");
}

#[tokio::test]
async fn agent_killed_mid_create_leaves_nothing_after_restart() {
    let mut agent = AgentProc::start();
    let id = new_id("crash");
    let c = agent.client();
    let create = tokio::spawn(async move { c.create_sandbox(create_req(&id)).await });
    // Let it get part of the way.
    tokio::time::sleep(Duration::from_millis(15)).await;
    agent.kill();
    let _ = create.await;
    agent.spawn();
    let c = agent.client();
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_owned();
    // Either it finished before the kill (then it was adopted) or nothing
    // of it is left.
    for s in list.sandboxes {
        c.destroy_sandbox(sref(&s.sandbox_id)).await.unwrap();
    }
    assert_no_host_traces(&agent.data_dir);
}

/// Commands, files, PTYs and processes through the agent's `/proxy` hop
/// to envd (the control plane's road): streamed both ways, unbuffered.
#[tokio::test]
async fn streams_files_pty_and_processes() {
    use ep::process_event::{Event as E, data_event::Output as O};
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("io");
    let mut r = create_req(&id);
    r.envs.insert("GREETING".into(), "hi".into());
    c.create_sandbox(r).await.unwrap();
    assert_eq!(
        sh(&c, &id, "echo $GREETING").await.0,
        "hi\n",
        "sandbox envs reach processes"
    );
    let envd = c.envd(&id).await;

    // A command with stdin, cwd, user, envs.
    let mut req = command("cat; pwd; id -un; echo $X");
    let mut config = req.process.clone().into_option().unwrap();
    config.cwd = Some("/tmp".into());
    config.envs.insert("X".into(), "y".into());
    req.process = config.into();
    let as_user = CallOptions::default().with_header("authorization", "Basic dXNlcjo=");
    let out = run(&c, &id, req, as_user, Some(b"from stdin\n"), false)
        .await
        .unwrap();
    assert!(out.pid > 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from stdin\n/tmp\nuser\ny\n"
    );

    // Events arrive in order, output as it happens.
    let mut s = envd
        .process
        .start(command("echo a; echo b >&2; exit 4"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(m) = s.message::<ep::StartResponse>().await.unwrap() {
        if let Some(e) = m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            seen.push(e);
        }
    }
    assert!(matches!(seen.first(), Some(E::Start(_))), "{seen:?}");
    let has = |want: &[u8], stderr: bool| {
        seen.iter().any(|e| match e {
            E::Data(d) => match &d.output {
                Some(O::Stdout(b)) => !stderr && b == want,
                Some(O::Stderr(b)) => stderr && b == want,
                _ => false,
            },
            _ => false,
        })
    };
    assert!(has(b"a\n", false) && has(b"b\n", true), "{seen:?}");
    assert!(matches!(seen.last(), Some(E::End(e)) if e.exit_code == 4));

    // Files: 4 MiB each way, streamed through the hop.
    let blob: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    write_file(&c, &id, "/data/big.bin", &blob).await;
    write_file(&c, &id, "/data/a.txt", b"whole").await;
    assert_eq!(read_file(&c, &id, "/data/a.txt").await, b"whole");
    let back = read_file(&c, &id, "/data/big.bin").await;
    assert!(back == blob, "the read differs ({} bytes)", back.len());
    envd.fs
        .make_dir(efs::MakeDirRequest {
            path: "/data/sub".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ls = envd
        .fs
        .list_dir(efs::ListDirRequest {
            path: "/data".into(),
            depth: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    let mut names: Vec<(String, bool)> = ls
        .entries
        .iter()
        .map(|e| {
            let dir = e.r#type.as_known() == Some(efs::FileType::FILE_TYPE_DIRECTORY);
            (e.name.clone(), dir)
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("a.txt".into(), false),
            ("big.bin".into(), false),
            ("sub".into(), true)
        ]
    );
    envd.fs
        .remove(efs::RemoveRequest {
            path: "/data".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let q = wrenn_protocol::envd::files_path("/data/a.txt", "");
    let (status, _) = c.envd_http(&id, http::Method::GET, &q, Vec::new()).await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);

    // PTY: start, type, resize, exit.
    let mut req = command("exec /bin/bash -i");
    req.stdin = Some(true);
    req.pty = ep::PTY {
        size: ep::pty::Size {
            cols: 80,
            rows: 24,
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
    .into();
    let mut pty = envd.process.start(req).await.unwrap();
    let first = pty
        .message::<ep::StartResponse>()
        .await
        .unwrap()
        .unwrap()
        .to_owned_message();
    let Some(E::Start(start)) = first.event.into_option().and_then(|e| e.event) else {
        panic!("start first")
    };
    let send = |data: &str| ep::SendInputRequest {
        process: selector(start.pid).into(),
        input: ep::ProcessInput {
            input: Some(ep::process_input::Input::Pty(data.as_bytes().to_vec())),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    envd.process
        .send_input(send("stty size; echo marker-$((40+2))\n"))
        .await
        .unwrap();
    let mut screen = String::new();
    let mut resized = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(m)) =
        tokio::time::timeout_at(deadline.into(), pty.message::<ep::StartResponse>())
            .await
            .unwrap_or(Ok(None))
    {
        match m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            Some(E::Data(d)) => {
                if let Some(O::Pty(b)) = d.output {
                    screen.push_str(&String::from_utf8_lossy(&b));
                }
            }
            Some(E::End(_)) => break,
            _ => {}
        }
        if !resized && screen.contains("marker-42") {
            resized = true;
            let size = ep::pty::Size {
                cols: 100,
                rows: 30,
                ..Default::default()
            };
            envd.process
                .update(ep::UpdateRequest {
                    process: selector(start.pid).into(),
                    pty: ep::PTY {
                        size: size.into(),
                        ..Default::default()
                    }
                    .into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            envd.process
                .send_input(send("stty size; exit\n"))
                .await
                .unwrap();
        }
    }
    assert!(
        screen.contains("24 80") && screen.contains("30 100"),
        "{screen}"
    );

    // Processes: list, connect, kill.
    let pid = spawn(&c, &id, "while true; do echo tick; sleep 0.1; done", "").await;
    let procs = envd
        .process
        .list(ep::ListRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert!(procs.processes.iter().any(|p| p.pid == pid));
    let mut attached = envd
        .process
        .connect(ep::ConnectRequest {
            process: selector(pid).into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ticks = 0;
    while ticks < 2 {
        let m = attached
            .message::<ep::ConnectResponse>()
            .await
            .unwrap()
            .unwrap();
        if let Some(E::Data(d)) = m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
            && let Some(O::Stdout(b)) = d.output
        {
            ticks += String::from_utf8_lossy(&b).matches("tick").count();
        }
    }
    envd.process
        .send_signal(ep::SendSignalRequest {
            process: selector(pid).into(),
            signal: ep::Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ended = false;
    while let Ok(Some(m)) = attached.message::<ep::ConnectResponse>().await {
        if let Some(E::End(e)) = m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            assert_eq!(e.exit_code, -1);
            ended = true;
        }
    }
    assert!(ended);

    // Metrics.
    let m = c.get_sandbox_metrics(sref(&id)).await.unwrap().into_owned();
    assert!(
        m.memory_bytes > 0
            && m.memory_limit_bytes == 256 << 20
            && m.pids >= 2
            && m.cpu_usage_usec > 0,
        "{m:?}"
    );
    let host = c
        .get_host(pb::GetHostRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert_eq!((host.runtime.as_str(), host.sandboxes), ("namespaces", 1));
    assert!(host.templates.contains(&"base".to_string()));
    let _ = StreamExt::count(futures::stream::empty::<()>()).await;
}

#[tokio::test]
async fn two_hundred_cycles_leave_the_host_as_it_was() {
    let agent = AgentProc::start();
    let c = agent.client();
    // One cycle first, so lazily made things (disk image cache) exist.
    let warm = new_id("warm");
    c.create_sandbox(create_req(&warm)).await.unwrap();
    c.destroy_sandbox(sref(&warm)).await.unwrap();
    // Its teardown runs behind the answer: the baseline is taken after it.
    assert_no_host_traces(&agent.data_dir);
    let agent_pid = agent.child.as_ref().unwrap().id();
    let snapshot = || {
        let fds = std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
            .unwrap()
            .count();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count();
        let links = std::fs::read_dir("/sys/class/net").unwrap().count();
        // User-space processes only: the kernel's worker threads (children
        // of kthreadd, pid 2) grow with the cgroups it has to retire.
        let procs = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| {
                let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                let ppid = status
                    .lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .map(str::trim);
                ppid.is_some_and(|p| p != "2" && p != "0")
            })
            .count();
        let netns = std::fs::read_dir("/var/run/netns")
            .map(|r| r.count())
            .unwrap_or(0);
        let files = std::fs::read_dir(agent.data_dir.join("sandboxes"))
            .unwrap()
            .count();
        let cgroups = host_traces(&agent.data_dir).len();
        (fds, mounts, links, netns, files, cgroups, procs)
    };
    let before = snapshot();
    let n: usize = std::env::var("WRENN_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for i in 0..n {
        let id = format!("sb-cycle{i}x{}", std::process::id());
        c.create_sandbox(create_req(&id))
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: {e:?}"));
        c.destroy_sandbox(sref(&id)).await.unwrap();
    }
    // Destroys finish removing behind their answer: give them 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = snapshot();
    let six =
        |s: &(usize, usize, usize, usize, usize, usize, usize)| (s.0, s.1, s.2, s.3, s.4, s.5);
    while six(&before) != six(&after) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = snapshot();
    }
    // Processes of the rest of the machine come and go; allow a little.
    assert_eq!(
        (before.0, before.1, before.2, before.3, before.4, before.5),
        (after.0, after.1, after.2, after.3, after.4, after.5)
    );
    let children: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
            };
            (field("PPid:")? == agent_pid.to_string()).then(|| {
                format!(
                    "{} {:?} {:?}",
                    e.file_name().to_string_lossy(),
                    field("Name:"),
                    field("State:")
                )
            })
        })
        .collect();
    assert!(
        after.6 <= before.6 + 5,
        "processes {} -> {}; the agent's children: {children:?}",
        before.6,
        after.6
    );
}

/// Runs `wrenn <args>` to its end (30 s at most): (exit code, stderr).
fn run_wrenn(args: &[&str]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wrenn"))
        .args(args)
        .env("WRENN_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wrenn {args:?} did not exit: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_second_instance_refuses_and_leaves_the_first_ones_sandboxes_alone() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("first");
    c.create_sandbox(create_req(&id)).await.unwrap();
    let first_pid = agent.child.as_ref().unwrap().id();
    let other = std::env::temp_dir().join(format!("wrenn-second-{}", std::process::id()));
    let other_s = other.display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    for args in [
        // Another agent, its own data dir, the same cgroup parent.
        vec![
            "--data-dir",
            &other_s,
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "x",
        ],
        // `wrenn up`, its own data dir and port.
        vec![
            "--data-dir",
            &other_s,
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    ] {
        let (code, err) = run_wrenn(&args);
        assert_ne!(code, Some(0), "{args:?} started beside another agent");
        assert!(
            err.contains(&format!("pid {first_pid}"))
                && err.contains(&agent.data_dir.display().to_string()),
            "{args:?}: the refusal names the running instance: {err}"
        );
        let (out, _, code) = sh(&c, &id, "echo still here").await;
        assert_eq!((out.trim(), code), ("still here", 0), "after {args:?}");
    }
    assert!(
        !other.join("sandboxes").exists(),
        "the refused instance touched nothing"
    );
    let _ = std::fs::remove_dir_all(&other);
    c.destroy_sandbox(sref(&id)).await.unwrap();
}

#[tokio::test]
async fn a_create_whose_caller_hangs_up_is_finished_not_left_half_made() {
    let agent = AgentProc::start();
    for delay_ms in [5u64, 30, 80, 150] {
        // A client of its own, dropped with the request: the connection
        // closes, as when a control plane dies mid-create.
        let c = agent.client();
        let id = new_id("hup");
        let _ = tokio::time::timeout(
            Duration::from_millis(delay_ms),
            c.create_sandbox(create_req(&id)),
        )
        .await;
        drop(c);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = agent.client();
    let listed: Vec<String> = c
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_owned()
        .sandboxes
        .into_iter()
        .map(|s| s.sandbox_id)
        .collect();
    let dirs: Vec<String> = std::fs::read_dir(agent.data_dir.join("sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for d in &dirs {
        assert!(
            listed.contains(d),
            "{d} was left half made (listed: {listed:?})"
        );
    }
    for id in &listed {
        c.destroy_sandbox(sref(id)).await.unwrap();
    }
    assert_no_host_traces(&agent.data_dir);
}
