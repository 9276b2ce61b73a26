//! Identity: argon2id passwords, HS256 JWTs for users, `wrn_` API keys
//! (only their SHA-256 is stored), and the [`Caller`] every route gets.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::App;
use crate::error::ApiError;

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes encode");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes")
        .to_string()
}

/// Checks a password against its PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Password hashing and checking off the async runtime: argon2id costs
/// tens of milliseconds of CPU, so at most `permits` run at once (one core
/// is left for every other request) on the blocking pool, and a queue
/// longer than `max_waiting` is refused at once with 503.
pub struct Passwords {
    permits: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
    max_waiting: usize,
}

impl Default for Passwords {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Passwords::new(cores.saturating_sub(1).max(1), 64)
    }
}

impl Passwords {
    /// At most `permits` hashes at once, at most `max_waiting` queued.
    pub fn new(permits: usize, max_waiting: usize) -> Self {
        Passwords {
            permits: tokio::sync::Semaphore::new(permits),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max_waiting,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        use std::sync::atomic::Ordering;
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        struct Leave<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _leave = Leave(&self.waiting);
        if queued >= self.max_waiting {
            let mut e =
                ApiError::unavailable("busy", "too many logins at once; try again in a second");
            e.retry_after = Some(1);
            return Err(e);
        }
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ApiError::internal("password checks are shut down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::internal(format!("password check failed: {e}")))
    }

    /// [`hash_password`], off the runtime.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_password(&password)).await
    }

    /// [`verify_password`] against `phc`, or against a decoy hash when the
    /// account does not exist (same cost, same answer: no).
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, ApiError> {
        /// The hash unknown accounts are checked against, made (on the
        /// blocking pool, like every hash) by the first such check.
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        self.run(move || match phc {
            Some(phc) => verify_password(&password, &phc),
            None => {
                let decoy = DECOY.get_or_init(|| hash_password(&crate::ids::hex(16)));
                // The same work as for a real account, and the answer no.
                std::hint::black_box(verify_password(&password, decoy));
                false
            }
        })
        .await
    }
}

/// Failed logins, per account and per client address, with exponential
/// backoff once the free attempts are used: a password-guessing flood is
/// answered 429 before any hashing, and memory stays bounded.
pub struct LoginGuard {
    inner: parking_lot::Mutex<std::collections::HashMap<String, Failures>>,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: std::time::Instant,
    blocked_until: std::time::Instant,
}

/// Failures an account may have before backoff starts.
pub const FREE_ACCOUNT_FAILURES: u32 = 5;
/// Failures one address may have (across accounts) before backoff starts.
pub const FREE_ADDRESS_FAILURES: u32 = 20;
/// Quiet time after which failures are forgotten; also the longest block.
pub const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const MAX_TRACKED: usize = 100_000;
/// How long a login refused for backoff waits before its 429 goes out.
pub const LOGIN_REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

impl Default for LoginGuard {
    fn default() -> Self {
        LoginGuard {
            inner: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl LoginGuard {
    fn keys(email: &str, ip: Option<std::net::IpAddr>) -> Vec<(String, u32)> {
        let mut k = vec![(
            format!("account:{}", email.trim().to_lowercase()),
            FREE_ACCOUNT_FAILURES,
        )];
        if let Some(ip) = ip {
            k.push((format!("address:{ip}"), FREE_ADDRESS_FAILURES));
        }
        k
    }

    /// `Err(seconds)` while the account or the address must wait.
    pub fn check(&self, email: &str, ip: Option<std::net::IpAddr>) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let map = self.inner.lock();
        let wait = Self::keys(email, ip)
            .iter()
            .filter_map(|(k, _)| map.get(k))
            .filter(|f| f.blocked_until > now)
            .map(|f| (f.blocked_until - now).as_secs() + 1)
            .max();
        match wait {
            Some(w) => Err(w),
            None => Ok(()),
        }
    }

    /// Records a failed login.
    pub fn failed(&self, email: &str, ip: Option<std::net::IpAddr>) {
        let now = std::time::Instant::now();
        let mut map = self.inner.lock();
        if map.len() >= MAX_TRACKED {
            map.retain(|_, f| now.duration_since(f.last) < LOGIN_WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        for (key, free) in Self::keys(email, ip) {
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: now,
            });
            if now.duration_since(f.last) >= LOGIN_WINDOW {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
            if f.count >= free {
                let secs = 1u64 << (f.count - free).min(10);
                f.blocked_until = now + std::time::Duration::from_secs(secs).min(LOGIN_WINDOW);
            }
        }
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, email: &str) {
        let key = format!("account:{}", email.trim().to_lowercase());
        self.inner.lock().remove(&key);
    }
}

/// The client's address, when the server was started with connection info
/// (`wrenn server` and `wrenn up` are); `None` in tests that call the router
/// directly.
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// SHA-256 of a secret, hex.
pub fn sha256_hex(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(secret.as_bytes()) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// How long a looked-up API key is trusted without asking the database, in
/// milliseconds: a key deleted through any control plane stops working
/// everywhere within this (through the one that deleted it, at once, but
/// for a lookup that was already under way).
pub const KEY_CACHE_TTL_MS: u64 = 1_000;

/// How often a key's `last_used_at` is written, at most (per control plane).
const KEY_TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Keys marked used above which those not touched within
/// `KEY_TOUCH_EVERY` are swept.
const KEY_TOUCH_SWEEP: usize = 10_000;

/// API keys looked up recently, by the SHA-256 of their secret (unknown
/// ones too, so a flood of bad keys costs one query per key and second),
/// and when each was last marked used. Shared by the REST API and the
/// sandbox proxy, so that a request costs no database write and, within
/// [`KEY_CACHE_TTL_MS`], no read for its key.
#[derive(Default)]
pub struct KeyCache {
    found: crate::ttl::TtlMap<Option<crate::store::ApiKey>, KEY_CACHE_TTL_MS>,
    touched: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl KeyCache {
    /// The key whose secret is `secret`, if any; marks it used (in the
    /// background, once a minute at most).
    pub async fn lookup(
        &self,
        store: &crate::store::Store,
        secret: &str,
    ) -> Result<Option<crate::store::ApiKey>, sqlx::Error> {
        let hash = sha256_hex(secret.trim());
        let key = match self.found.get(&hash) {
            Some(k) => k,
            None => {
                let k = store.api_key_by_hash(&hash).await?;
                self.found.insert(hash, k.clone());
                k
            }
        };
        if let Some(k) = &key {
            self.touch(store, &k.id);
        }
        Ok(key)
    }

    fn touch(&self, store: &crate::store::Store, id: &str) {
        let now = std::time::Instant::now();
        {
            let mut touched = self.touched.lock();
            if touched
                .get(id)
                .is_some_and(|at| now.duration_since(*at) < KEY_TOUCH_EVERY)
            {
                return;
            }
            if touched.len() > KEY_TOUCH_SWEEP {
                touched.retain(|_, at| now.duration_since(*at) < KEY_TOUCH_EVERY);
            }
            touched.insert(id.to_string(), now);
        }
        let (store, id) = (store.clone(), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(&id).await {
                tracing::debug!(key = %id, "marking an API key used: {e}");
            }
        });
    }

    /// Forgets key `id` (deleted through this control plane).
    pub fn forget(&self, id: &str) {
        self.found.retain(|k| k.as_ref().is_none_or(|k| k.id != id));
        self.touched.lock().remove(id);
    }
}

/// How an API key's secret looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// `wrn_` + 32 hex.
    #[default]
    Wrenn,
    /// `e2b_` + 40 hex, the form E2B's SDKs validate.
    E2b,
}

/// A new API key: (secret, its hash, display prefix, last 4).
pub fn new_api_key(format: KeyFormat) -> (String, String, String, String) {
    let secret = match format {
        KeyFormat::Wrenn => format!("wrn_{}", crate::ids::hex(16)),
        KeyFormat::E2b => format!("e2b_{}", crate::ids::hex(20)),
    };
    let hash = sha256_hex(&secret);
    let prefix = secret[..8].to_string();
    let last4 = secret[secret.len() - 4..].to_string();
    (secret, hash, prefix, last4)
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    /// `host` for host tokens; empty (or `user`) for users'.
    #[serde(default)]
    typ: String,
}

/// Issues and checks user JWTs (HS256).
#[derive(Clone)]
pub struct Jwt {
    secret: Vec<u8>,
}

/// How long a login lasts.
pub const JWT_TTL_SECS: u64 = 24 * 3600;

/// How long a host's JWT lasts.
pub const HOST_JWT_TTL_SECS: u64 = 7 * 24 * 3600;

impl Jwt {
    /// With `secret` (at least 16 bytes).
    pub fn new(secret: &[u8]) -> Self {
        Jwt {
            secret: secret.to_vec(),
        }
    }

    /// A token for `user_id`.
    pub fn issue(&self, user_id: &str) -> String {
        self.encode(user_id, "user", JWT_TTL_SECS)
    }

    /// A host's token (7 days) and when it expires.
    pub fn issue_host(&self, host_id: &str) -> (String, i64) {
        let exp = crate::store::now() + HOST_JWT_TTL_SECS as i64;
        (self.encode(host_id, "host", HOST_JWT_TTL_SECS), exp)
    }

    fn encode(&self, sub: &str, typ: &str, ttl: u64) -> String {
        let now = crate::store::now() as u64;
        let claims = Claims {
            sub: sub.into(),
            iat: now,
            exp: now + ttl,
            typ: typ.into(),
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 encodes")
    }

    /// The user a valid user token names.
    pub fn verify(&self, token: &str) -> Option<String> {
        self.decode(token)
            .filter(|c| c.typ != "host")
            .map(|c| c.sub)
    }

    /// The host a valid host token names.
    pub fn verify_host(&self, token: &str) -> Option<String> {
        self.decode(token)
            .filter(|c| c.typ == "host")
            .map(|c| c.sub)
    }

    fn decode(&self, token: &str) -> Option<Claims> {
        let v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(&self.secret),
            &v,
        )
        .ok()
        .map(|d| d.claims)
    }
}

/// Who is calling, and for which team.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The team the call acts for.
    pub team_id: String,
    /// User id or API key id, for the audit log.
    pub actor: String,
    /// The user, when logged in as one.
    pub user_id: Option<String>,
    /// owner, admin or member (API keys act as admin of their team).
    pub role: String,
    /// Whether the user is a platform admin.
    pub is_admin: bool,
}

impl Caller {
    /// Refuses callers below `admin` in their team.
    pub fn require_team_admin(&self) -> Result<(), ApiError> {
        if self.role == "owner" || self.role == "admin" {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this needs the owner or admin role in the team",
            ))
        }
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        if let Some(key) = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            let Some(k) = app.keys.lookup(&app.store, key).await? else {
                return Err(ApiError::unauthorized(
                    "invalid API key; create one with `wrenn key create` or POST /v1/api-keys",
                ));
            };
            return Ok(Caller {
                team_id: k.team_id,
                actor: k.id,
                user_id: None,
                role: "admin".into(),
                is_admin: k.platform_admin,
            });
        }
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = bearer else {
            return Err(ApiError::unauthorized(
                "missing credentials: send X-API-Key: wrn_… (or e2b_…) or Authorization: Bearer <token from /v1/auth/login>",
            ));
        };
        let user_id = app
            .jwt
            .verify(token.trim())
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token; log in again"))?;
        let user = app
            .store
            .user_by_id(&user_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))?;
        let teams = app.store.teams_of(&user_id).await?;
        let wanted = parts.headers.get("x-team-id").and_then(|v| v.to_str().ok());
        let (team, role) = match wanted {
            Some(t) => teams
                .into_iter()
                .find(|(team, _)| team.id == t)
                .ok_or_else(|| ApiError::not_found(format!("team '{t}'")))?,
            None => teams.into_iter().next().ok_or_else(|| {
                ApiError::forbidden("you belong to no team; create one with POST /v1/teams")
            })?,
        };
        Ok(Caller {
            team_id: team.id,
            actor: user.id.clone(),
            user_id: Some(user.id),
            role,
            is_admin: user.is_admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_back_off_per_account_and_per_address() {
        let g = LoginGuard::default();
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..FREE_ACCOUNT_FAILURES - 1 {
            assert!(g.check("v@x", Some(ip)).is_ok());
            g.failed("v@x", Some(ip));
        }
        g.failed("v@x", Some(ip));
        let wait = g.check("V@X ", None).unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        // Another account from another address is unaffected.
        assert!(g.check("other@x", None).is_ok());
        // One address spraying many accounts is held back too.
        let spray: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        for i in 0..FREE_ADDRESS_FAILURES {
            g.failed(&format!("u{i}@x"), Some(spray));
        }
        assert!(g.check("fresh@x", Some(spray)).is_err());
        assert!(g.check("fresh@x", None).is_ok());
        g.succeeded("v@x");
        assert!(g.check("v@x", None).is_ok());
    }

    #[tokio::test]
    async fn password_checks_run_off_the_runtime_with_a_bounded_queue() {
        let p = std::sync::Arc::new(Passwords::new(1, 2));
        let h = p.hash("pw".into()).await.unwrap();
        assert!(p.verify("pw".into(), Some(h.clone())).await.unwrap());
        assert!(!p.verify("pw".into(), None).await.unwrap());
        // More callers than the queue holds: the extra ones hear 503 at once.
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let (p, h) = (p.clone(), h.clone());
                tokio::spawn(async move { p.verify("x".into(), Some(h)).await })
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                assert_eq!(e.status, http::StatusCode::SERVICE_UNAVAILABLE);
                busy += 1;
            }
        }
        assert!(busy >= 1, "a full queue refuses");
    }

    #[test]
    fn passwords_keys_and_tokens() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        let (secret, hash, prefix, last4) = new_api_key(KeyFormat::Wrenn);
        assert!(secret.starts_with("wrn_") && secret.len() == 36);
        let (e2b, e2b_hash, ..) = new_api_key(KeyFormat::E2b);
        assert!(e2b.starts_with("e2b_") && e2b.len() == 44, "{e2b}");
        assert!(e2b[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(e2b_hash, sha256_hex(&e2b));
        assert_eq!(hash, sha256_hex(&secret));
        assert!(secret.starts_with(&prefix) && secret.ends_with(&last4));
        let jwt = Jwt::new(b"0123456789abcdef0123456789abcdef");
        let t = jwt.issue("usr-1");
        assert_eq!(jwt.verify(&t).as_deref(), Some("usr-1"));
        assert_eq!(
            Jwt::new(b"another secret, another secret!").verify(&t),
            None
        );
        assert_eq!(jwt.verify("garbage"), None);
        // Host and user tokens are not interchangeable.
        let (h, exp) = jwt.issue_host("host-1");
        assert!(exp > crate::store::now() + 6 * 86400);
        assert_eq!(jwt.verify_host(&h).as_deref(), Some("host-1"));
        assert_eq!(jwt.verify(&h), None);
        assert_eq!(jwt.verify_host(&t), None);
    }
}
