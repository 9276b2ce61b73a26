//! What a hostile tenant's code does inside its own sandbox, through a real
//! agent: each case was seen to hurt before, and now must not.
//!
//! - descriptors the agent inherited never reach a sandbox;
//! - `kill -9 -1`, killing envd and an OOM kill of envd leave the sandbox
//!   alive, with its files, answering again within a second;
//! - a fork bomb, once over, leaves a sandbox that answers within a second;
//! - a buffered exec keeps a bounded amount of output and says so;
//! - file names no header can hold (a newline) are served, not fatal;
//! - creates racing on a fresh data dir all succeed, and a damaged cached
//!   disk image is rebuilt;
//! - a sandbox's /proc shows its own disk and no host paths;
//! - a sandbox sees its own memory, CPUs and uptime, and goes on seeing
//!   them when LXCFS dies and is started again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wrenn_protocol::envd::process as ep;
use wrenn_protocol::hostagent::v1 as pb;

async fn create(c: &Client, id: &str) {
    c.create_sandbox(create_req(id))
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
}

async fn destroy(c: &Client, id: &str) {
    c.destroy_sandbox(pb::SandboxRef {
        sandbox_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("destroy {id}: {e:?}"));
}

/// Time until `echo alive` answers in the sandbox (each try bounded).
async fn time_to_answer(c: &Client, id: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            run(c, id, command("echo alive"), deadline(2), None, false),
        )
        .await;
        if let Ok(Ok(r)) = r {
            if String::from_utf8_lossy(&r.stdout).trim() == "alive" {
                return t.elapsed();
            }
        }
        assert!(
            t.elapsed() < within,
            "sandbox {id} did not answer within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `script` (which takes envd down; its own answer does not matter),
/// then asserts the sandbox answers again within a second.
async fn answers_again_after(c: &Client, id: &str, script: &str, timeout_sec: u32) {
    let _ = run(c, id, command(script), deadline(timeout_sec), None, false).await; // the stream dies with envd
    let took = time_to_answer(c, id, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(1),
        "envd came back after {took:?} ({script})"
    );
}

fn state_of(list: &pb::ListSandboxesResponse, id: &str) -> Option<String> {
    list.sandboxes
        .iter()
        .find(|s| s.sandbox_id == id)
        .map(|s| format!("{:?}", s.state))
}

#[tokio::test]
async fn inherited_descriptors_never_reach_a_sandbox() {
    // A bait the agent inherits: a host file, open for writing, without
    // close-on-exec (what a careless parent process leaves behind).
    let bait_path = std::env::temp_dir().join(format!("wrenn-bait-{}", std::process::id()));
    let bait = std::fs::File::create(&bait_path).unwrap();
    rustix::io::fcntl_setfd(&bait, rustix::io::FdFlags::empty()).unwrap();
    let agent = AgentProc::start();
    drop(bait);
    let c = agent.client();
    let id = new_id("fds");
    create(&c, &id).await;
    let (out, _, _) = sh(
        &c,
        &id,
        "for p in /proc/[0-9]*; do for f in $p/fd/*; do echo \"$f $(readlink $f)\"; done; done 2>/dev/null",
    )
    .await;
    let bait_name = bait_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        !out.contains(&bait_name),
        "the host's descriptor is open inside:\n{out}"
    );
    // PID 1 holds exactly stdin, stdout and stderr, all /dev/null, the
    // descriptors that move envd's processes into the workload's leaf of
    // its own cgroup, and envd's listening socket.
    let pid1: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("/proc/1/fd/"))
        .collect();
    let (stdio, rest): (Vec<&str>, Vec<&str>) = pid1.iter().partition(|l| {
        ["/proc/1/fd/0 ", "/proc/1/fd/1 ", "/proc/1/fd/2 "]
            .iter()
            .any(|p| l.starts_with(p))
    });
    assert_eq!(stdio.len(), 3, "PID 1 holds {pid1:?}");
    assert!(stdio.iter().all(|l| l.ends_with(" /dev/null")), "{pid1:?}");
    let own_work = format!("/{id}/work/cgroup.procs");
    let (sockets, rest): (Vec<&&str>, Vec<&&str>) =
        rest.iter().partition(|l| l.contains(" socket:["));
    assert_eq!(sockets.len(), 1, "PID 1 holds envd's socket only: {pid1:?}");
    assert!(
        rest.iter().all(|l| l.ends_with(&own_work)),
        "PID 1 holds more than its cgroup's: {pid1:?}"
    );
    // What envd starts holds only its stdio: here, the pipes to envd.
    let (out, _, _) = sh(&c, &id, "ls /proc/self/fd | wc -l").await;
    assert_eq!(out.trim(), "4", "0, 1, 2 and the directory ls reads");
    destroy(&c, &id).await;
    let _ = std::fs::remove_file(&bait_path);
}

#[tokio::test]
async fn root_in_a_sandbox_cannot_kill_it() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("kill");
    create(&c, &id).await;
    sh(&c, &id, "echo kept > /root/kept.txt").await;

    // 1. Every process root can signal.
    answers_again_after(&c, &id, "kill -9 -1", 5).await;
    // 2. envd itself, by pid (PID 1 is shielded by the kernel).
    answers_again_after(
        &c,
        &id,
        "for p in /proc/[0-9]*; do [ \"$(readlink $p/exe)\" = /.wrenn/envd ] && kill -9 ${p#/proc/}; done",
        5,
    )
    .await;
    // 3. The OOM killer picks envd (root made it the first choice).
    answers_again_after(
        &c,
        &id,
        "for p in /proc/[0-9]*; do [ \"$(readlink $p/exe)\" = /.wrenn/envd ] && [ ${p#/proc/} != 1 ] && echo 1000 > $p/oom_score_adj; done; \
         python3 -c 'x = bytearray(1024 << 20)'",
        20,
    )
    .await;

    // The sandbox is the same one: running, with its files.
    let (out, _, code) = sh(&c, &id, "cat /root/kept.txt").await;
    assert_eq!((out.trim(), code), ("kept", 0));
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert_eq!(
        state_of(&list, &id).as_deref(),
        Some("SANDBOX_STATE_RUNNING"),
        "{list:?}"
    );
    destroy(&c, &id).await;
    assert_no_host_traces(&agent.data_dir);
}

#[tokio::test]
async fn a_fork_bomb_that_ended_leaves_a_sandbox_that_answers() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("fbmb");
    create(&c, &id).await;
    // The bomb in the foreground of the command, so that the command's
    // deadline ends it: envd kills the command's process group then.
    let bomb = tokio::spawn({
        let (c, id) = (c.clone(), id.clone());
        async move {
            let req = command("bash -c ':(){ :|:& };:; sleep 60'");
            tokio::time::timeout(
                Duration::from_secs(40),
                run(&c, &id, req, deadline(5), None, false),
            )
            .await
        }
    });
    // While it rages, envd (its own cgroup leaf: reserved memory and pids,
    // four times the workload's CPU weight) still answers what needs no
    // new process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let hostname = read_file(&c, &id, "/etc/hostname").await;
    assert_eq!(String::from_utf8_lossy(&hostname).trim(), id);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a file read took {:?} during the bomb",
        t.elapsed()
    );
    let _ = bomb.await;
    let took = time_to_answer(&c, &id, Duration::from_secs(30)).await;
    assert!(
        took < Duration::from_secs(1),
        "the sandbox answered {took:?} after the bomb's command ended"
    );
    // The killed bomb's hundreds of processes exit and are reaped by PID 1
    // in their own time (on a loaded machine, some seconds).
    let t = Instant::now();
    loop {
        let (out, _, _) = sh(&c, &id, "ls /proc | grep -c '^[0-9]'").await;
        let left: u32 = out.trim().parse().unwrap_or(u32::MAX);
        if left < 20 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{left} processes are left in the sandbox"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    destroy(&c, &id).await;
}

/// A command's output flood crosses the agent's hop as a stream: the
/// agent holds none of it (the control plane bounds what it keeps).
#[tokio::test]
async fn an_output_flood_streams_through_the_agent() {
    use ep::process_event::{Event as E, data_event::Output as O};
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("flod");
    create(&c, &id).await;
    let hwm = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let agent_pid = agent.child.as_ref().unwrap().id();
    let mut stream = c
        .envd(&id)
        .await
        .process
        .start(command("head -c 600M /dev/zero; echo tail >&2; exit 3"))
        .await
        .unwrap();
    let (mut stdout, mut stderr, mut exit) = (0usize, Vec::new(), None);
    while let Some(m) = stream.message::<ep::StartResponse>().await.unwrap() {
        match m
            .to_owned_message()
            .event
            .into_option()
            .and_then(|e| e.event)
        {
            Some(E::Data(d)) => match d.output {
                Some(O::Stdout(b)) => stdout += b.len(),
                Some(O::Stderr(b)) => stderr.extend(b),
                _ => {}
            },
            Some(E::End(e)) => exit = Some(e.exit_code),
            _ => {}
        }
    }
    assert_eq!(stdout, 600 << 20, "every byte arrived");
    assert_eq!((stderr.as_slice(), exit), (&b"tail\n"[..], Some(3)));
    let peak_mib = hwm(agent_pid) / 1024;
    assert!(
        peak_mib < 200,
        "the agent's memory peaked at {peak_mib} MiB"
    );
    // The flood left envd and the sandbox as they were.
    time_to_answer(&c, &id, Duration::from_secs(2)).await;
    destroy(&c, &id).await;
}

#[tokio::test]
async fn file_names_no_header_can_hold_are_served() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("nlfn");
    create(&c, &id).await;
    for path in ["/tmp/a\nb", "/tmp/q\"uote", "/tmp/é ü", "/tmp/cr\rlf"] {
        write_file(&c, &id, path, b"odd name").await;
        assert_eq!(read_file(&c, &id, path).await, b"odd name", "{path:?}");
    }
    time_to_answer(&c, &id, Duration::from_secs(2)).await;
    let list = c
        .list_sandboxes(pb::ListSandboxesRequest::default())
        .await
        .unwrap()
        .into_owned();
    assert!(state_of(&list, &id).is_some(), "the sandbox is still there");
    destroy(&c, &id).await;
}

#[tokio::test]
async fn concurrent_creates_on_a_fresh_data_dir_share_one_sound_disk_image() {
    let agent = AgentProc::start();
    let c = agent.client();
    // A size no other test uses, so its cached image is made here, by
    // several creates at once.
    let ids: Vec<String> = (0..4).map(|i| new_id(&format!("race{i}"))).collect();
    let creates = ids.iter().map(|id| {
        let mut req = create_req(id);
        req.disk_size_mb = 321;
        c.create_sandbox(req)
    });
    for (id, r) in ids.iter().zip(futures::future::join_all(creates).await) {
        r.unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    }
    for id in &ids {
        let (out, _, code) = sh(&c, id, "echo ok > /root/f && cat /root/f").await;
        assert_eq!((out.trim(), code), ("ok", 0), "{id}");
        destroy(&c, id).await;
    }
    // Damage the cached image: the next create notices and makes it again.
    let cache = agent.data_dir.join("cache");
    let golden = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("disk-321m"))
        .expect("the cached image");
    let leftovers: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "temporary images left: {leftovers:?}");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&golden)
            .unwrap();
        f.write_all_at(&[0u8; 8192], 0).unwrap(); // the superblock
    }
    // A fresh agent process checks the images it uses once.
    let mut agent = agent;
    agent.kill();
    agent.spawn();
    let c = agent.client();
    let id = new_id("racez");
    let mut req = create_req(&id);
    req.disk_size_mb = 321;
    c.create_sandbox(req).await.expect("create after damage");
    let (out, _, code) = sh(&c, &id, "echo ok > /root/f && cat /root/f").await;
    assert_eq!((out.trim(), code), ("ok", 0));
    destroy(&c, &id).await;
}

#[tokio::test]
async fn a_sandbox_sees_its_own_disk_and_no_host_paths() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("view");
    create(&c, &id).await;
    let (mounts, _, code) = sh(&c, &id, "cat /proc/mounts").await;
    assert_eq!(code, 0);
    let data_dir = agent.data_dir.display().to_string();
    assert!(
        !mounts.contains(&data_dir)
            && !mounts.contains("/sandboxes/")
            && !mounts.contains("/templates/"),
        "host paths in the sandbox's mounts:\n{mounts}"
    );
    assert!(
        mounts.contains("lowerdir=envd:lower,upperdir=disk/upper"),
        "{mounts}"
    );
    let (mountinfo, _, _) = sh(&c, &id, "cat /proc/self/mountinfo").await;
    for host_path in [
        data_dir.as_str(),
        "/var/",
        "/run/",
        env!("CARGO_BIN_EXE_wrenn")
            .rsplit_once('/')
            .map_or("", |(d, _)| d),
    ] {
        assert!(
            !mountinfo.contains(host_path),
            "host path {host_path} in the sandbox's mountinfo:\n{mountinfo}"
        );
    }
    for file in ["/proc/partitions", "/proc/diskstats"] {
        let (out, _, code) = sh(&c, &id, &format!("cat {file}")).await;
        assert_eq!(code, 0, "{file}");
        let disks: Vec<&str> = out
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.parse::<u32>().is_ok())
            })
            .collect();
        assert_eq!(disks.len(), 1, "{file} shows one disk:\n{out}");
        assert!(disks[0].contains("loop"), "{file}: {out}");
    }
    // 256 MiB disk: 262144 KiB.
    let (out, _, _) = sh(&c, &id, "grep loop /proc/partitions").await;
    assert_eq!(out.split_whitespace().nth(2), Some("262144"), "{out}");
    destroy(&c, &id).await;
    assert_no_host_traces(&agent.data_dir);
}

/// Reads what programs size themselves from, inside the sandbox.
async fn own_view(c: &Client, id: &str) -> (u64, String, String, f64) {
    let (out, err, code) = sh(
        c,
        id,
        "grep MemTotal /proc/meminfo; nproc; getconf _NPROCESSORS_ONLN; grep -c ^processor /proc/cpuinfo; cat /proc/uptime",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let kib = lines[0]
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("MemTotal: {out}"));
    let uptime = lines[4]
        .split_whitespace()
        .next()
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("uptime: {out}"));
    (
        kib,
        format!("{} {}", lines[1], lines[2]),
        lines[3].to_string(),
        uptime,
    )
}

#[tokio::test]
async fn a_sandbox_sees_its_own_memory_cpus_and_uptime() {
    if std::process::Command::new("lxcfs")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("lxcfs is not installed: scripts/test.sh installs it (apt-get install lxcfs)");
    }
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("self");
    create(&c, &id).await; // 1 vCPU, 256 MiB
    let (kib, nproc, cpuinfo, uptime) = own_view(&c, &id).await;
    assert!(
        (200 * 1024..=256 * 1024).contains(&kib),
        "MemTotal of a 256 MiB sandbox: {kib} kB"
    );
    assert_eq!(
        (nproc.as_str(), cpuinfo.as_str()),
        ("1 1", "1"),
        "nproc, sysconf and /proc/cpuinfo of a 1-vCPU sandbox"
    );
    assert!(
        uptime < 60.0,
        "the sandbox's uptime, not the host's: {uptime}"
    );
    let (free, _, _) = sh(&c, &id, "free -m | awk '/^Mem:/ {print $2}'").await;
    assert!(
        free.trim()
            .parse::<u32>()
            .is_ok_and(|m| (200..=256).contains(&m)),
        "free -m: {free}"
    );

    // LXCFS dies (as any process can): the agent starts it again and binds
    // it into the sandbox, which reads its own view again within seconds.
    let pid = lxcfs_pid_of(&agent);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let (out, _, code) = sh(&c, &id, "grep MemTotal /proc/meminfo").await;
        if code == 0 && out.contains("MemTotal") {
            let kib: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!((200 * 1024..=256 * 1024).contains(&kib), "{out}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no /proc/meminfo 5 s after LXCFS died: {out}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(lxcfs_pid_of(&agent), pid, "LXCFS was started again");

    // An agent that starts again re-binds the sandboxes it adopts.
    let mut agent = agent;
    agent.kill();
    agent.spawn();
    let c = agent.client();
    let (kib, nproc, _, _) = own_view(&c, &id).await;
    assert!((200 * 1024..=256 * 1024).contains(&kib), "{kib}");
    assert_eq!(nproc, "1 1");
    destroy(&c, &id).await;
}

/// The pid of the LXCFS the agent runs (from its pid file), waiting for
/// one to run.
fn lxcfs_pid_of(agent: &AgentProc) -> u32 {
    let agent_pid = agent.child.as_ref().expect("agent runs").id();
    let file = format!("/run/wrenn/wrenn/lxcfs-{agent_pid}.pid");
    let t = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            return pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no LXCFS runs ({file})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls racing a destroy hear from the agent's hop that the sandbox is
/// gone (not found), never a broken connection to its envd (503 through
/// the REST API).
#[tokio::test]
async fn calls_racing_a_destroy_hear_not_found() {
    let agent = AgentProc::start();
    let c = agent.client();
    for round in 0..5 {
        let id = new_id("race");
        create(&c, &id).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut callers = Vec::new();
        for _ in 0..4 {
            let (envd, stop) = (c.envd(&id).await, stop.clone());
            callers.push(tokio::spawn(async move {
                let mut codes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = envd.process.list(ep::ListRequest::default()).await;
                    if let Err(e) = r {
                        codes.push(format!("{:?}: {:?}", e.code, e.message));
                    }
                }
                codes
            }));
        }
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        destroy(&c, &id).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in callers {
            for code in h.await.unwrap() {
                assert!(
                    code.starts_with("NotFound"),
                    "a call racing the destroy: {code}"
                );
            }
        }
    }
}
