//! One store test suite, run against SQLite and PostgreSQL.
//!
//! PostgreSQL comes from `WRENN_TEST_PG_URL` (scripts/test.sh starts a
//! throwaway server and sets it); each run makes and drops its own database.

use std::collections::HashMap;
use wrenn_control_plane::sandboxes::SandboxState;

use wrenn_control_plane::ids;
use wrenn_control_plane::store::{ApiKey, Host, Sandbox, Store, Team, User, now};

async fn suite(store: &Store) {
    // Migrations are idempotent.
    store.migrate().await.unwrap();

    let u = User {
        id: ids::new("usr"),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        password_hash: "h".into(),
        is_admin: true,
        created_at: now(),
    };
    store.create_user(&u).await.unwrap();
    assert!(store.create_user(&u).await.is_err(), "duplicate email");
    assert_eq!(
        store.user_by_email("ada@example.com").await.unwrap(),
        Some(u.clone())
    );
    assert_eq!(
        store.user_by_id(&u.id).await.unwrap().unwrap().email,
        "ada@example.com"
    );
    assert!(
        store
            .user_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_none()
    );

    let t1 = Team {
        id: ids::new("team"),
        name: "one".into(),
        created_at: now(),
    };
    let t2 = Team {
        id: ids::new("team"),
        name: "two".into(),
        created_at: now() + 1,
    };
    store.create_team(&t1).await.unwrap();
    store.create_team(&t2).await.unwrap();
    store.set_member(&t1.id, &u.id, "owner").await.unwrap();
    store.set_member(&t2.id, &u.id, "member").await.unwrap();
    store.set_member(&t2.id, &u.id, "admin").await.unwrap();
    let teams = store.teams_of(&u.id).await.unwrap();
    assert_eq!(
        teams
            .iter()
            .map(|(t, r)| (t.name.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        vec![("one", "owner"), ("two", "admin")]
    );
    assert_eq!(
        store.role(&t2.id, &u.id).await.unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(store.members(&t1.id).await.unwrap().len(), 1);
    assert!(store.remove_member(&t2.id, &u.id).await.unwrap());
    assert!(!store.remove_member(&t2.id, &u.id).await.unwrap());
    assert_eq!(store.role(&t2.id, &u.id).await.unwrap(), None);

    let k = ApiKey {
        id: ids::new("key"),
        team_id: t1.id.clone(),
        created_by: u.id.clone(),
        name: "ci".into(),
        prefix: "wrn_ab12".into(),
        last4: "ff00".into(),
        created_at: now(),
        last_used_at: None,
        platform_admin: true,
    };
    store.create_api_key(&k, "hash-1").await.unwrap();
    assert_eq!(
        store.api_key_by_hash("hash-1").await.unwrap(),
        Some(k.clone())
    );
    store.touch_api_key(&k.id).await.unwrap();
    assert!(
        store
            .api_key_by_hash("hash-1")
            .await
            .unwrap()
            .unwrap()
            .last_used_at
            .is_some()
    );
    assert_eq!(store.api_keys(&t1.id).await.unwrap().len(), 1);
    assert!(
        !store.delete_api_key(&t2.id, &k.id).await.unwrap(),
        "another team cannot delete it"
    );
    assert!(store.delete_api_key(&t1.id, &k.id).await.unwrap());
    assert!(store.api_key_by_hash("hash-1").await.unwrap().is_none());

    let h = Host {
        id: ids::new("host"),
        name: "local".into(),
        address: "127.0.0.1:7070".into(),
        token: "t".into(),
        status: wrenn_control_plane::host_status::HostStatus::Online,
        created_at: now(),
        last_seen_at: now(),
        ..Default::default()
    };
    store.upsert_host(&h).await.unwrap();
    store.upsert_host(&h).await.unwrap();
    assert_eq!(store.hosts().await.unwrap(), vec![h.clone()]);

    let mut s = Sandbox {
        id: ids::new("sb"),
        team_id: t1.id.clone(),
        host_id: h.id.clone(),
        template: "base".into(),
        state: SandboxState::Pending,
        vcpus: 1,
        memory_mb: 512,
        disk_size_mb: 1024,
        timeout_sec: 300,
        allow_internet_access: true,
        metadata: HashMap::from([("project".to_string(), "x".to_string())]),
        created_at: now(),
        ..Default::default()
    };
    store.insert_sandbox(&s).await.unwrap();
    assert_eq!(store.sandbox(&t1.id, &s.id).await.unwrap(), Some(s.clone()));
    assert_eq!(
        store.sandbox(&t2.id, &s.id).await.unwrap(),
        None,
        "team scoping"
    );
    s.state = SandboxState::Running;
    s.envd_address = "10.200.0.2:49983".into();
    s.started_at = now();
    store.update_sandbox(&s).await.unwrap();
    let got = store.sandbox(&t1.id, &s.id).await.unwrap().unwrap();
    assert_eq!(
        (got.state.as_str(), got.envd_address.as_str()),
        ("running", "10.200.0.2:49983")
    );
    assert_eq!(got.metadata.get("project").map(String::as_str), Some("x"));
    assert_eq!(store.sandboxes(&t1.id, None).await.unwrap().len(), 1);
    assert_eq!(
        store
            .sandboxes(&t1.id, Some(SandboxState::Paused))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(store.sandboxes_on_host(&h.id).await.unwrap().len(), 1);
    // A writer acting on an old read loses to whoever wrote since.
    let read = store.sandbox(&t1.id, &s.id).await.unwrap().unwrap();
    let mut paused = read.clone();
    paused.state = SandboxState::Paused;
    paused.updated_at -= 1; // as if read before another write
    assert!(
        !store
            .update_sandbox_if_unchanged(&paused, SandboxState::Running)
            .await
            .unwrap()
    );
    paused.updated_at = read.updated_at;
    assert!(
        !store
            .update_sandbox_if_unchanged(&paused, SandboxState::Missing)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .sandbox(&t1.id, &s.id)
            .await
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "running"
    );
    assert!(
        store
            .update_sandbox_if_unchanged(&paused, SandboxState::Running)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .sandbox(&t1.id, &s.id)
            .await
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "paused"
    );
    s.state = SandboxState::Stopped;
    store.update_sandbox(&s).await.unwrap();
    assert_eq!(
        store.sandboxes(&t1.id, None).await.unwrap().len(),
        0,
        "stopped ones are not listed by default"
    );
    assert_eq!(
        store
            .sandboxes(&t1.id, Some(SandboxState::Stopped))
            .await
            .unwrap()
            .len(),
        1
    );

    store
        .audit(&t1.id, &u.id, "sandbox.create", &s.id)
        .await
        .unwrap();
    store
        .audit(&t1.id, &u.id, "sandbox.destroy", &s.id)
        .await
        .unwrap();
    let log = store.audit_log(&t1.id, 10).await.unwrap();
    assert_eq!(log.len(), 2);
    assert!(store.audit_log(&t2.id, 10).await.unwrap().is_empty());

    hosts_suite(store, &t1.id).await;
}

/// Registration and refresh tokens, allocations, the silent-host monitor.
async fn hosts_suite(store: &Store, team: &str) {
    let mut h = Host {
        id: ids::new("host"),
        name: "r1".into(),
        kind: "registered".into(),
        status: wrenn_control_plane::host_status::HostStatus::Pending,
        created_at: now(),
        tags: vec!["gpu".into(), "eu".into()],
        ..Default::default()
    };
    store.insert_host(&h).await.unwrap();
    // A registration token works once, and not after it expired.
    store
        .set_registration_token(&h.id, "reg-1", now() + 3600)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_registration_token("reg-1")
            .await
            .unwrap()
            .map(|x| x.id),
        Some(h.id.clone())
    );
    assert_eq!(
        store.take_registration_token("reg-1").await.unwrap(),
        None,
        "used"
    );
    store
        .set_registration_token(&h.id, "reg-2", now() - 1)
        .await
        .unwrap();
    assert_eq!(
        store.take_registration_token("reg-2").await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(store.take_registration_token("").await.unwrap(), None);

    // Refresh tokens: stored by hash, revocable one by one or per host.
    let t = wrenn_control_plane::store::HostToken {
        id: ids::new("htk"),
        host_id: h.id.clone(),
        expires_at: now() + 60,
        revoked_at: 0,
    };
    store.insert_host_token(&t, "rt-1").await.unwrap();
    assert_eq!(store.host_token("rt-1").await.unwrap(), Some(t.clone()));
    store.revoke_host_token(&t.id).await.unwrap();
    assert!(store.host_token("rt-1").await.unwrap().unwrap().revoked_at > 0);
    let t2 = wrenn_control_plane::store::HostToken {
        id: ids::new("htk"),
        ..t.clone()
    };
    store.insert_host_token(&t2, "rt-2").await.unwrap();
    store.revoke_host_tokens(&h.id).await.unwrap();
    assert!(store.host_token("rt-2").await.unwrap().unwrap().revoked_at > 0);

    // Online, then silent: unreachable, its live sandboxes missing.
    h.status = wrenn_control_plane::host_status::HostStatus::Online;
    h.last_seen_at = now() - 100;
    h.cpu_count = 8;
    store.update_host(&h).await.unwrap();
    let got = store.host(&h.id).await.unwrap().unwrap();
    assert_eq!(
        (got.cpu_count, got.tags.clone()),
        (8, vec!["gpu".to_string(), "eu".to_string()])
    );
    let sb = Sandbox {
        id: ids::new("sb"),
        team_id: team.into(),
        host_id: h.id.clone(),
        template: "base".into(),
        state: SandboxState::Running,
        vcpus: 2,
        memory_mb: 256,
        disk_size_mb: 512,
        created_at: now(),
        ..Default::default()
    };
    store.insert_sandbox(&sb).await.unwrap();
    let a = store.allocations().await.unwrap()[&h.id];
    assert_eq!(store.allocated_on(&h.id).await.unwrap(), a);
    assert_eq!(
        store.allocated_on("host-none").await.unwrap(),
        Default::default()
    );
    assert_eq!(
        (a.sandboxes, a.vcpus, a.memory_mb, a.disk_mb),
        (1, 2, 256, 512)
    );
    assert_eq!(
        store.mark_silent_hosts(now() - 90).await.unwrap(),
        vec![h.id.clone()]
    );
    assert_eq!(
        store.host(&h.id).await.unwrap().unwrap().status.as_str(),
        "unreachable"
    );
    assert_eq!(
        store
            .sandbox(team, &sb.id)
            .await
            .unwrap()
            .unwrap()
            .state
            .as_str(),
        "missing"
    );
    assert!(
        store
            .mark_silent_hosts(now() - 90)
            .await
            .unwrap()
            .is_empty(),
        "once"
    );
    assert!(store.host_seen(&h.id).await.unwrap());
    assert_eq!(
        store.host(&h.id).await.unwrap().unwrap().status.as_str(),
        "online"
    );
    store.delete_host(&h.id).await.unwrap();
    assert!(!store.host_seen(&h.id).await.unwrap(), "gone");
}

/// What one control plane (`other`) writes, the other (`store`) reads at
/// once, although it serves sandbox rows from memory.
async fn another_control_plane_writes(store: &Store, other: &Store) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(store.caches_rows() && other.caches_rows()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the stores never listened for each other's writes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let team = Team {
        id: ids::new("team"),
        name: "shared".into(),
        created_at: now(),
    };
    store.create_team(&team).await.unwrap();
    let mut s = Sandbox {
        id: ids::new("sb"),
        team_id: team.id.clone(),
        host_id: "host-x".into(),
        template: "base".into(),
        state: SandboxState::Running,
        created_at: now(),
        ..Default::default()
    };
    store.insert_sandbox(&s).await.unwrap();
    for _ in 0..3 {
        // Read twice: the second from memory.
        for _ in 0..2 {
            assert_eq!(
                store.sandbox_by_id(&s.id).await.unwrap().map(|r| r.state),
                Some(s.state)
            );
        }
        s.state = match s.state {
            SandboxState::Running => SandboxState::Paused,
            _ => SandboxState::Running,
        };
        other.update_sandbox(&s).await.unwrap();
        // Seen well within the 5 s a row is kept at most.
        let seen = std::time::Instant::now();
        while store.sandbox_by_id(&s.id).await.unwrap().map(|r| r.state) != Some(s.state) {
            assert!(
                seen.elapsed() < std::time::Duration::from_secs(1),
                "a write by another control plane went unseen for a second"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    other.touch_sandbox(&s.id, 12345).await.unwrap();
    let seen = std::time::Instant::now();
    while store
        .sandbox(&team.id, &s.id)
        .await
        .unwrap()
        .map(|r| r.last_active_at)
        != Some(12345)
    {
        assert!(
            seen.elapsed() < std::time::Duration::from_secs(1),
            "touch unseen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_second_control_plane_on_one_sqlite_file_is_refused() {
    let path = std::env::temp_dir().join(format!("wrenn-store-sole-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let first = Store::connect(&url).await.unwrap();
    assert!(first.caches_rows());
    let err = Store::connect(&url)
        .await
        .err()
        .expect("a second store refused");
    assert!(
        err.to_string().contains("another control plane"),
        "says why: {err}"
    );
    drop(first);
    let again = Store::connect(&url)
        .await
        .expect("free once the first is gone");
    drop(again);
    for ext in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let path = std::env::temp_dir().join(format!("wrenn-store-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    assert_eq!(store.backend, "sqlite");
    suite(&store).await;
    drop(store);
    for ext in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let Ok(admin_url) = std::env::var("WRENN_TEST_PG_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run the PostgreSQL store tests: set WRENN_TEST_PG_URL"
        );
        eprintln!(
            "skipped: WRENN_TEST_PG_URL is not set (scripts/test.sh starts a PostgreSQL and sets it)"
        );
        return;
    };
    sqlx::any::install_default_drivers();
    let db = format!("wrenn_test_{}", ids::hex(6));
    let admin = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&admin)
        .await
        .unwrap();
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => panic!("WRENN_TEST_PG_URL must end in /<database>"),
    };
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.backend, "postgres");
    suite(&store).await;
    // A second control plane on the same database.
    let other = Store::connect(&url).await.unwrap();
    another_control_plane_writes(&store, &other).await;
    drop(other);
    drop(store);
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}
