//! What a hostile tenant can send to `wrenn server` with nothing but a
//! signed-up account: malformed and inward-pointing host records, team
//! invitations nobody asked for, and a password-guessing flood. The server
//! keeps serving, calls no address it should not, and acts for the team a
//! user chose.

mod common;

use std::time::{Duration, Instant};

use common::{ServerProc, call, call_full, http_client, signup};
use serde_json::{Value, json};

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_records_cannot_crash_the_server_or_point_inside() {
    let server = ServerProc::start("hosts", &["--reconcile-interval", "1"]);
    let (http, base) = (http_client(), server.base());
    let (_admin, _) = signup(&http, &base, "admin@t.test").await;
    let (mallory, _) = signup(&http, &base, "mallory@t.test").await;
    let auth = format!("Bearer {mallory}");
    let h = [("authorization", auth.as_str())];
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/hosts"),
        &h,
        Some(json!({"name": "evil", "team_owned": true})),
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let host = v(&body);
    let host_id = host["id"].as_str().unwrap().to_string();
    let mut token = host["registration_token"].as_str().unwrap().to_string();
    let cp = format!("127.0.0.1:{}", server.port);
    for address in [
        "x y:1",
        "host",
        "host:99999",
        "http://h:80",
        "a\nb:80",
        cp.as_str(),
        "169.254.169.254:80",
        "[::1]:80",
        "[::ffff:127.0.0.1]:80",
        "0.0.0.0:7070",
        "10.0.0.1:7070",
        "localhost:7070",
    ] {
        let (st, body) = call(
            &http,
            "POST",
            &format!("{base}/v1/hosts/register"),
            &[],
            Some(json!({"token": token, "address": address, "agent_token": "x".repeat(20)})),
        )
        .await;
        assert_eq!(st, 400, "{address:?} was accepted: {body}");
        assert!(
            v(&body)["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("address"),
            "{body}"
        );
        // A refused address may have spent the token: get a fresh one.
        let (st, body) = call(
            &http,
            "POST",
            &format!("{base}/v1/hosts/{host_id}/token"),
            &h,
            None,
        )
        .await;
        assert_eq!(st, 200, "{body}");
        token = v(&body)["registration_token"].as_str().unwrap().to_string();
    }
    // A record that is already bad (an older server accepted anything):
    // the reconciler meets it every second and the server keeps serving.
    let db = server.dir.join("wrenn.db");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c = sqlite3.connect({:?}); c.execute(\"UPDATE hosts SET address = 'x y:1', status = 'online', token = 'tok\\nen' WHERE id = ?\", ({host_id:?},)); c.commit()",
            db.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (st, body) = call(
        &http,
        "GET",
        &format!("{base}/v1/hosts/{host_id}"),
        &h,
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/sandboxes"),
        &h,
        Some(json!({"template": "base"})),
    )
    .await;
    assert!(st == 502 || st == 503, "create on a bad host: {st} {body}");
    let (st, _) = call(&http, "GET", &format!("{base}/health"), &[], None).await;
    assert_eq!(st, 200, "the server still serves");
    let mut server = server;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server process died"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn being_invited_changes_nothing_until_accepted_and_never_the_default_team() {
    let server = ServerProc::start("teams", &[]);
    let (http, base) = (http_client(), server.base());
    let (_admin, _) = signup(&http, &base, "admin@t.test").await;
    let (mallory, mallory_team) = signup(&http, &base, "mallory@t.test").await;
    let (victim, victim_team) = signup(&http, &base, "victim@t.test").await;
    let (ma, va) = (format!("Bearer {mallory}"), format!("Bearer {victim}"));
    let (mh, vh) = (
        [("authorization", ma.as_str())],
        [("authorization", va.as_str())],
    );
    // Which team a call acts for: the team of the key it creates.
    let acting_team = |hdrs: Vec<(&'static str, String)>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let hv: Vec<(&str, &str)> = hdrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (st, body) = call(&http, "POST", &format!("{base}/v1/api-keys"), &hv, None).await;
            assert_eq!(st, 201, "{body}");
            v(&body)["team_id"].as_str().unwrap_or("").to_string()
        }
    };
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/teams/{mallory_team}/members"),
        &mh,
        Some(json!({"email": "victim@t.test", "role": "admin"})),
    )
    .await;
    assert_eq!(st, 202, "an invitation, not a membership: {body}");
    let inv = v(&body)["invitation"]["id"].as_str().unwrap().to_string();
    // Not a member yet: Mallory's team lists only Mallory, and the victim
    // cannot act for it even when asking to.
    let (_, body) = call(
        &http,
        "GET",
        &format!("{base}/v1/teams/{mallory_team}/members"),
        &mh,
        None,
    )
    .await;
    assert!(!body.contains("victim@"), "{body}");
    let (st, _) = call(
        &http,
        "GET",
        &format!("{base}/v1/sandboxes"),
        &[
            ("authorization", va.as_str()),
            ("x-team-id", mallory_team.as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(
        acting_team(vec![("authorization", va.clone())]).await,
        victim_team
    );
    // The victim sees the invitation; Mallory cannot accept it for them.
    let (st, body) = call(&http, "GET", &format!("{base}/v1/invitations"), &vh, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        v(&body)["invitations"][0]["team_id"],
        mallory_team.as_str(),
        "{body}"
    );
    let (st, _) = call(
        &http,
        "POST",
        &format!("{base}/v1/invitations/{inv}/accept"),
        &mh,
        None,
    )
    .await;
    assert_eq!(st, 404, "only the invitee accepts");
    // Accepted: a member, yet calls without X-Team-Id still act for the
    // victim's own team; with it, for the chosen one.
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/invitations/{inv}/accept"),
        &vh,
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        acting_team(vec![("authorization", va.clone())]).await,
        victim_team
    );
    assert_eq!(
        acting_team(vec![
            ("authorization", va.clone()),
            ("x-team-id", mallory_team.clone())
        ])
        .await,
        mallory_team
    );
    // Declining: a second invitation, from another team, deleted by the invitee.
    let (_, other_team) = signup(&http, &base, "other@t.test").await;
    let _ = other_team;
    let (st, body) = call(&http, "GET", &format!("{base}/v1/invitations"), &vh, None).await;
    assert_eq!(
        (st, v(&body)["invitations"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (st, _) = call(
        &http,
        "POST",
        &format!("{base}/v1/invitations/{inv}/accept"),
        &vh,
        None,
    )
    .await;
    assert_eq!(st, 404, "an invitation is used once");
    // API keys have no invitations of their own.
    let (st, body) = call(&http, "POST", &format!("{base}/v1/api-keys"), &vh, None).await;
    assert_eq!(st, 201);
    let key = v(&body)["key"].as_str().unwrap_or_default().to_string();
    let (st, _) = call(
        &http,
        "GET",
        &format!("{base}/v1/invitations"),
        &[("x-api-key", key.as_str())],
        None,
    )
    .await;
    assert_eq!(st, 403);
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_backs_off_and_leaves_other_requests_fast() {
    let server = ServerProc::start("login", &[]);
    let (http, base) = (http_client(), server.base());
    let (token, _) = signup(&http, &base, "user@t.test").await;
    let auth = format!("Bearer {token}");
    let (st, body) = call(
        &http,
        "POST",
        &format!("{base}/v1/api-keys"),
        &[("authorization", auth.as_str())],
        None,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let key = v(&body)["key"].as_str().unwrap().to_string();
    let list = {
        let (http, base, key) = (http.clone(), base.clone(), key.clone());
        move || {
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            async move {
                let t = Instant::now();
                let (st, _) = call(
                    &http,
                    "GET",
                    &format!("{base}/v1/sandboxes"),
                    &[("x-api-key", key.as_str())],
                    None,
                )
                .await;
                assert_eq!(st, 200);
                t.elapsed()
            }
        }
    };
    let mut quiet = Vec::new();
    for _ in 0..200 {
        quiet.push(list().await);
    }
    // 16 clients guessing passwords for a few seconds.
    let stop = Instant::now() + Duration::from_secs(6);
    let flood: Vec<_> = (0..16)
        .map(|i| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let (mut n401, mut n429, mut retry_after) = (0, 0, false);
                while Instant::now() < stop {
                    let (st, _, hdrs) = call_full(
                        &http,
                        "POST",
                        &format!("{base}/v1/auth/login"),
                        &[],
                        Some(json!({"email": "user@t.test", "password": format!("guess {i}")})),
                    )
                    .await;
                    match st {
                        401 => n401 += 1,
                        429 | 503 => {
                            n429 += 1;
                            retry_after |= hdrs.contains_key("retry-after");
                        }
                        other => panic!("login answered {other}"),
                    }
                }
                (n401, n429, retry_after)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut loud = Vec::new();
    while Instant::now() < stop {
        loud.push(list().await);
    }
    let (mut n401, mut n429, mut retry_after) = (0, 0, false);
    for f in flood {
        let (a, b, c) = f.await.unwrap();
        n401 += a;
        n429 += b;
        retry_after |= c;
    }
    let (q, l) = (p50(quiet), p50(loud));
    println!(
        "GET /v1/sandboxes p50: quiet {q:?}, during a 16-client login flood {l:?}; logins 401: {n401}, 429/503: {n429}"
    );
    assert!(
        n401 <= 40,
        "backoff held the guesses to a few ({n401} checked)"
    );
    assert!(n429 > 50 && retry_after, "refusals carry Retry-After");
    // Within 2x, with 1 ms of slack for a sub-millisecond baseline on a
    // noisy 2-core machine.
    assert!(
        l <= q * 2 + Duration::from_millis(1),
        "other requests slowed from {q:?} to {l:?}"
    );
    // The right password is refused too while the account backs off.
    let (st, _, hdrs) = call_full(
        &http,
        "POST",
        &format!("{base}/v1/auth/login"),
        &[],
        Some(json!({"email": "user@t.test", "password": "a long password"})),
    )
    .await;
    assert_eq!(st, 429);
    assert!(hdrs.contains_key("retry-after"));
}
