//! The sandbox proxy: requests for `{port}-{sandbox}.{domain}`, or carrying
//! `E2b-Sandbox-Id` (and `E2b-Sandbox-Port`, default envd's 49983), go to the
//! owning agent's `/proxy/{sandbox}/{port}/…` and on to that port inside the
//! sandbox: HTTP with streamed bodies, WebSocket upgrades, server-sent events.
//!
//! Access: a public port, the sandbox's envd token (`X-Access-Token`, what
//! E2B's SDKs send), its traffic token (`e2b-traffic-access-token`, or from
//! a browser `?wrenn_traffic_token=`, then a cookie), or an API key of the
//! owning team (`X-API-Key`). None of these credentials is
//! passed on to the sandbox (but `X-Access-Token` to envd, which checks it).
//!
//! A paused sandbox is resumed by traffic when it was made so (its
//! `auto_resume`: the native API's default, not E2B's) and the proxy
//! allows it; else the traffic is refused (409; E2B's 502, which its SDKs
//! read as "not running").
//! The proxy's own errors (and the agent's, which it marks) are answered in
//! the caller's API family: see [`Family`].
//! Routes of running sandboxes and API-key lookups are cached for a second,
//! so a request costs no database round trip.
//!
//! Why this file is long (~640 lines): a third of it is the table and
//! property tests of target parsing, tokens and credentials.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::App;
use crate::error::ApiError;
use crate::sandboxes::SandboxState;
use crate::store::{Host, Sandbox};
use crate::ttl::TtlMap;
use wrenn_protocol::hostagent::{PROXY_ERROR_HEADER, proxy_error};

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The domain in `{port}-{sandbox}.{domain}`, reported to E2B SDKs.
    pub domain: String,
    /// Let traffic resume paused sandboxes that allow it (each sandbox's
    /// `auto_resume`); off, none is.
    pub auto_resume: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            domain: "localhost".into(),
            auto_resume: true,
        }
    }
}

/// How long a route is reused, in milliseconds.
const CACHE_TTL_MS: u64 = 1_000;

/// A running sandbox and the host it is on.
#[derive(Clone)]
struct Route {
    sandbox: Sandbox,
    host: Host,
}

/// A short-lived cache of routes (running sandboxes only).
#[derive(Clone, Default)]
pub struct ProxyCache {
    routes: Arc<TtlMap<Route, CACHE_TTL_MS>>,
}

impl ProxyCache {
    /// Drops a sandbox's route (after a state change through this process).
    pub fn forget(&self, sandbox_id: &str) {
        self.routes.remove(sandbox_id);
    }

    fn route(&self, id: &str) -> Option<Route> {
        self.routes.get(id)
    }

    fn put_route(&self, r: Route) {
        self.routes.insert(r.sandbox.id.clone(), r);
    }
}

/// The sandbox and port a request is for, if it is proxy traffic.
pub fn target(headers: &HeaderMap) -> Option<Result<(String, u16), String>> {
    let sandbox_id = |id: &str| -> Result<String, String> {
        if crate::ids::is_valid("sb", id) {
            Ok(id.to_string())
        } else {
            Err("not a sandbox id (sb- and lowercase letters and digits)".to_string())
        }
    };
    if let Some(id) = headers.get("e2b-sandbox-id") {
        let id = match sandbox_id(id.to_str().unwrap_or_default()) {
            Ok(id) => id,
            Err(e) => return Some(Err(format!("E2b-Sandbox-Id: {e}"))),
        };
        let port = match headers.get("e2b-sandbox-port") {
            None => Ok(wrenn_protocol::envd::PORT),
            Some(p) => p
                .to_str()
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| "E2b-Sandbox-Port: not a port number".to_string()),
        };
        return Some(port.map(|p| (id, p)));
    }
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    // Host names are case-insensitive.
    let label = host.split(['.', ':']).next()?.to_ascii_lowercase();
    let (port, id) = label.split_once('-')?;
    if !id.starts_with("sb-") || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = match sandbox_id(id) {
        Ok(id) => id,
        Err(e) => return Some(Err(format!("'{id}' in the host name: {e}"))),
    };
    Some(
        port.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| (id, p))
            .ok_or_else(|| format!("'{port}' in the host name is not a port number")),
    )
}

/// The API family a proxied request comes from, which decides the shape
/// of the errors the proxy answers itself: E2B's SDKs send `E2b-Sandbox-Id`,
/// `X-Access-Token` or `e2b-traffic-access-token` and read E2B's
/// `{"code": <status>, "message", "sandboxId", "port"}`; everyone else
/// (`X-API-Key`, a browser's traffic token, no credential) gets the native
/// API's `{"error": {"code", "message"}}`. What a sandbox's app answers is
/// passed on untouched either way.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Family {
    /// Wrenn's own API.
    Native,
    /// E2B's SDKs.
    E2b,
}

impl Family {
    /// The family of a request, from its headers as the client sent them.
    pub fn of(headers: &HeaderMap) -> Family {
        let e2b = [
            "e2b-sandbox-id",
            "x-access-token",
            "e2b-traffic-access-token",
        ];
        if e2b.iter().any(|h| headers.contains_key(*h)) {
            Family::E2b
        } else {
            Family::Native
        }
    }

    /// `e`, about port `port` of sandbox `id`, in this family's shape; not
    /// logged (the caller logs what is the platform's business).
    fn answer(self, id: &str, port: u16, e: ApiError) -> Response {
        match self {
            Family::Native => e.quiet_response(),
            Family::E2b => {
                // E2B's proxy says 502 "… was not found" for a sandbox that
                // is not running (none, killed, paused: its SDKs look for
                // those words), and 403 for a missing credential.
                let mut e = e;
                if e.status == StatusCode::NOT_FOUND || e.code == NOT_RUNNING {
                    e.message = format!("The sandbox {id} was not found ({})", e.message);
                    e.status = StatusCode::BAD_GATEWAY;
                } else if e.status == StatusCode::UNAUTHORIZED {
                    e.status = StatusCode::FORBIDDEN;
                }
                let retry_after = e.retry_after;
                let mut resp = wrenn_http_proxy::text(
                    e.status,
                    json!({ "code": e.status.as_u16(), "message": e.message, "sandboxId": id, "port": port }),
                );
                if let Some(secs) = retry_after {
                    resp.headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                }
                resp
            }
        }
    }

    /// [`Family::answer`] for the proxy's own errors, logged as the API's
    /// are (a sandbox that is not running is the caller's news, not ours).
    fn refuse(self, id: &str, port: u16, e: ApiError) -> Response {
        if e.code != NOT_RUNNING {
            e.log();
        }
        self.answer(id, port, e)
    }
}

/// The code of the refusal of traffic to a paused sandbox that traffic
/// does not resume.
const NOT_RUNNING: &str = "not_running";

/// 502 (the host of a sandbox did not answer, or cannot be reached).
fn host_unreachable(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "host_unreachable", message)
}

/// Middleware in front of every route: proxy traffic goes to its sandbox,
/// everything else on to the API.
pub async fn intercept(State(app): State<App>, req: Request, next: Next) -> Response {
    match target(req.headers()) {
        None => next.run(req).await,
        Some(Err(message)) => {
            Family::of(req.headers()).refuse("", 0, ApiError::bad_request(message))
        }
        Some(Ok((id, port))) => handle(app, req, id, port).await,
    }
}

fn header_eq(headers: &HeaderMap, name: &str, secret: &str) -> bool {
    !secret.is_empty()
        && headers
            .get(name)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret.as_bytes())))
}

/// The team of an API key (through the shared [`crate::auth::KeyCache`]).
async fn key_team(app: &App, key: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(app.keys.lookup(&app.store, key).await?.map(|k| k.team_id))
}

/// Whether the request may reach `port` of `s`; `Err` is the refusal.
async fn authorize(app: &App, headers: &HeaderMap, s: &Sandbox, port: u16) -> Result<(), ApiError> {
    // Public traffic (E2B's default) opens every port but envd's, which
    // keeps its own token.
    let public = s.network.public_traffic && port != wrenn_protocol::envd::PORT;
    if public
        || s.public_ports.contains(&port)
        || header_eq(headers, "x-access-token", &s.envd_token)
        || header_eq(headers, "e2b-traffic-access-token", &s.traffic_token)
    {
        return Ok(());
    }
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        match key_team(app, key).await {
            Ok(Some(team)) if team == s.team_id => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                return Err(ApiError::unavailable(
                    "unavailable",
                    format!("checking the API key: {e}; try again"),
                ));
            }
        }
        // Another team's key: as if the sandbox did not exist.
        return Err(ApiError::not_found(format!("sandbox {}", s.id)));
    }
    let offered = ["x-access-token", "e2b-traffic-access-token"]
        .iter()
        .any(|h| headers.contains_key(*h));
    Err(if offered {
        ApiError::forbidden(format!("wrong access token for sandbox {}", s.id))
    } else {
        ApiError::unauthorized(format!(
            "port {port} of sandbox {} is private: send X-API-Key (a key of its team), X-Access-Token (its envd token) or e2b-traffic-access-token; in a browser add ?wrenn_traffic_token=<its traffic token> once; or make the port public (PUT /v1/sandboxes/{{id}}/public-ports)",
            s.id
        ))
    })
}

/// The route to a sandbox: from the cache while it runs, else from the
/// store, resuming it if it is paused and traffic resumes sandboxes.
async fn route(app: &App, id: &str, port: u16, headers: &HeaderMap) -> Result<Route, ApiError> {
    if let Some(r) = app.proxy_cache.route(id) {
        authorize(app, headers, &r.sandbox, port).await?;
        return Ok(r);
    }
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(
            "unavailable",
            format!("looking up sandbox {id}: {e}; try again"),
        )
    };
    let not_found = || ApiError::not_found(format!("sandbox {id}"));
    let mut s = match app.store.sandbox_by_id(id).await {
        Ok(Some(s)) if s.state != SandboxState::Stopped => s,
        Ok(_) => return Err(not_found()),
        Err(e) => return Err(unavailable(&e)),
    };
    authorize(app, headers, &s, port).await?;
    match s.state {
        SandboxState::Running => {}
        SandboxState::Paused if app.proxy.auto_resume && s.auto_resume => {
            s = crate::sandboxes::resume_for_traffic(app, s).await?;
        }
        SandboxState::Paused => {
            let message = format!(
                "sandbox {id} is paused; resume it (POST /v1/sandboxes/{id}/resume or Sandbox.connect) to reach port {port}"
            );
            // To E2B's SDKs a paused sandbox is one that is not running
            // (`Family::answer` says so in their words).
            return Err(match Family::of(headers) {
                Family::E2b => ApiError::conflict(NOT_RUNNING, message),
                Family::Native => ApiError::conflict("invalid_state", message),
            });
        }
        SandboxState::Missing => {
            return Err(host_unreachable(format!(
                "the host of sandbox {id} is not answering; try again when it is back"
            )));
        }
        other => {
            return Err(ApiError::conflict(
                "invalid_state",
                format!("sandbox {id} is {other}, not running; try again when it is running"),
            ));
        }
    }
    let host = match app.store.host(&s.host_id).await {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Err(host_unreachable(format!(
                "host '{}' of sandbox {id} is gone",
                s.host_id
            )));
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let r = Route { sandbox: s, host };
    app.proxy_cache.put_route(r.clone());
    Ok(r)
}

/// The query parameter that carries the traffic token from a browser.
pub const TOKEN_PARAM: &str = "wrenn_traffic_token";
/// The cookie it is kept in afterwards (scoped to the port's host name).
pub const TOKEN_COOKIE: &str = "wrenn-traffic-token";

/// Browsers cannot send headers: a traffic token may come as
/// `?wrenn_traffic_token=…` (then kept in a cookie for the host name) or
/// in that cookie. Either becomes the `e2b-traffic-access-token` header
/// here, and neither reaches the app. Returns the token to set as a cookie.
fn browser_token(req: &mut Request) -> Option<String> {
    let mut from_query = None;
    if let Some(q) = req.uri().query() {
        let mut kept = Vec::new();
        for pair in q.split('&') {
            match pair.split_once('=') {
                Some((k, v)) if k == TOKEN_PARAM => from_query = Some(v.to_string()),
                _ => kept.push(pair),
            }
        }
        if from_query.is_some() {
            let path = req.uri().path();
            let pq = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            };
            if let Ok(uri) = pq.parse() {
                *req.uri_mut() = uri;
            }
        }
    }
    let headers = req.headers_mut();
    let mut from_cookie = None;
    if let Some(c) = headers
        .get(http::header::COOKIE)
        .and_then(|v| v.to_str().ok())
    {
        let mut kept = Vec::new();
        for part in c.split(';').map(str::trim) {
            match part.split_once('=') {
                Some((k, v)) if k == TOKEN_COOKIE => from_cookie = Some(v.to_string()),
                _ if !part.is_empty() => kept.push(part),
                _ => {}
            }
        }
        if from_cookie.is_some() {
            match HeaderValue::from_str(&kept.join("; ")) {
                Ok(v) if !kept.is_empty() => {
                    headers.insert(http::header::COOKIE, v);
                }
                _ => {
                    headers.remove(http::header::COOKIE);
                }
            }
        }
    }
    let token = from_query.clone().or(from_cookie)?;
    if !headers.contains_key("e2b-traffic-access-token") {
        if let Ok(v) = HeaderValue::from_str(&token) {
            headers.insert("e2b-traffic-access-token", v);
        }
    }
    from_query
}

async fn handle(app: App, mut req: Request, id: String, port: u16) -> Response {
    let family = Family::of(req.headers());
    match forward(&app, &mut req, &id, port).await {
        Ok(resp) => match resp.headers().get(PROXY_ERROR_HEADER) {
            // The agent's own error (a port nothing listens on, an app
            // that failed): in the caller's shape, not logged, with the
            // cookie the proxy was setting.
            Some(code) => {
                let code = proxy_error::ALL
                    .into_iter()
                    .find(|c| code.as_bytes() == c.as_bytes())
                    .unwrap_or(proxy_error::UPSTREAM_FAILED);
                let status = resp.status();
                let resp_cookie = resp.headers().get(http::header::SET_COOKIE).cloned();
                let body = axum::body::to_bytes(resp.into_body(), AGENT_ERROR_MAX_BYTES)
                    .await
                    .unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("the host of sandbox {id} answered {status}"));
                let cookie = resp_cookie;
                // The agent paused or lost it before the store knew (a
                // timeout's pause, a destroy elsewhere): look again next time.
                // To E2B's clients a sandbox paused on its host is one that
                // is not running, as when the store knows it.
                let code = match code {
                    proxy_error::INVALID_STATE | proxy_error::NOT_FOUND => {
                        app.proxy_cache.forget(&id);
                        if family == Family::E2b && code == proxy_error::INVALID_STATE {
                            NOT_RUNNING
                        } else {
                            code
                        }
                    }
                    other => other,
                };
                let mut out = family.answer(&id, port, ApiError::new(status, code, message));
                if let Some(c) = cookie {
                    out.headers_mut().append(http::header::SET_COOKIE, c);
                }
                out
            }
            None => resp,
        },
        Err(e) => family.refuse(&id, port, e),
    }
}

/// The most of an agent's error body read (they are a line of JSON).
const AGENT_ERROR_MAX_BYTES: usize = 64 << 10;

/// Sends `req` on to the agent of sandbox `id`, after the access checks;
/// `Err` is the proxy's own refusal or failure.
async fn forward(app: &App, req: &mut Request, id: &str, port: u16) -> Result<Response, ApiError> {
    let set_cookie = browser_token(req);
    let r = route(app, id, port, req.headers()).await?;
    let h = req.headers_mut();
    for name in [
        "x-api-key",
        "e2b-traffic-access-token",
        "e2b-sandbox-id",
        "e2b-sandbox-port",
    ] {
        h.remove(name);
    }
    if port != wrenn_protocol::envd::PORT {
        h.remove("x-access-token");
    }
    if let Ok(v) = HeaderValue::from_str(&r.host.token) {
        h.insert(wrenn_protocol::hostagent::PROXY_TOKEN_HEADER, v);
    }
    // The Host its apps see, when the sandbox masks it (checked at create
    // to be a valid host[:port]).
    if let Some(masked) = r.sandbox.network.masked_host(port)
        && let Ok(v) = HeaderValue::from_str(&masked)
    {
        h.insert(http::header::HOST, v);
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (_, addr) = app.hosts.endpoint(&r.host).await?;
    let target = format!("http://{addr}/proxy/{id}/{port}{pq}")
        .parse()
        .map_err(|_| ApiError::bad_request(format!("cannot proxy the path '{pq}'")))?;
    let req = std::mem::take(req);
    match wrenn_http_proxy::forward(&app.proxy_client, req, target).await {
        Ok(mut resp) => {
            if let Some(t) = set_cookie {
                let c = format!("{TOKEN_COOKIE}={t}; Path=/; HttpOnly; SameSite=Lax");
                if let Ok(v) = HeaderValue::from_str(&c) {
                    resp.headers_mut().append(http::header::SET_COOKIE, v);
                }
            }
            Ok(resp)
        }
        Err(e) => {
            app.proxy_cache.forget(id);
            Err(host_unreachable(format!(
                "the host of sandbox {id} ({}) did not answer: {e}",
                r.host.id
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_host_names_and_e2b_headers() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::HOST, h.parse().unwrap());
            target(&m)
        };
        assert_eq!(
            host("8000-sb-abc123.localhost:8080"),
            Some(Ok(("sb-abc123".into(), 8000)))
        );
        assert_eq!(
            host("3000-sb-x.wrenn.example.com"),
            Some(Ok(("sb-x".into(), 3000)))
        );
        assert_eq!(host("localhost:8080"), None);
        assert_eq!(host("api.wrenn.example.com"), None);
        assert_eq!(host("8000-other.example.com"), None);
        assert!(matches!(host("99999-sb-x.localhost"), Some(Err(_))));
        let mut m = HeaderMap::new();
        m.insert("e2b-sandbox-id", "sb-q".parse().unwrap());
        assert_eq!(
            target(&m),
            Some(Ok(("sb-q".into(), wrenn_protocol::envd::PORT)))
        );
        m.insert("e2b-sandbox-port", "8888".parse().unwrap());
        assert_eq!(target(&m), Some(Ok(("sb-q".into(), 8888))));
        m.insert("e2b-sandbox-port", "x".parse().unwrap());
        assert!(matches!(target(&m), Some(Err(_))));
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                m.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("a header name"),
                    v,
                );
            }
        }
        m
    }

    proptest::proptest! {
        /// Whatever a client puts in Host or the E2B headers: no panic, and
        /// anything taken for proxy traffic names a well-formed sandbox id
        /// and a port from 1 to 65535.
        #[test]
        fn any_host_or_e2b_header_gives_a_valid_target_or_none(
            host in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            id in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
            port in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..8)),
        ) {
            let mut pairs: Vec<(&str, &[u8])> = vec![("host", &host)];
            if let Some(id) = &id {
                pairs.push(("e2b-sandbox-id", id));
            }
            if let Some(port) = &port {
                pairs.push(("e2b-sandbox-port", port));
            }
            if let Some(Ok((id, port))) = target(&headers(&pairs)) {
                proptest::prop_assert!(crate::ids::is_valid("sb", &id), "{id}");
                proptest::prop_assert!(port > 0);
            }
        }

        /// Well-formed sandbox host names are routed, in any letter case,
        /// whatever the domain and port after them.
        #[test]
        fn sandbox_host_names_route_to_their_sandbox_and_port(
            port in 1u16..,
            tail in "[a-z0-9]{1,20}",
            domain in "(\\.[a-z0-9-]{1,10}){0,3}(:[0-9]{1,5})?",
            upper in proptest::bool::ANY,
        ) {
            let mut host = format!("{port}-sb-{tail}{domain}");
            if upper {
                host = host.to_ascii_uppercase();
            }
            let got = target(&headers(&[("host", host.as_bytes())]));
            proptest::prop_assert_eq!(got, Some(Ok((format!("sb-{tail}"), port))));
        }

        /// The traffic token is taken out of the query and the cookie, and
        /// nothing else of either changes; no input panics.
        #[test]
        fn browser_tokens_never_reach_the_sandbox_in_the_url_or_cookie(
            path in "/[a-zA-Z0-9/._~-]{0,20}",
            query in proptest::collection::vec("[a-z_]{1,20}(=[a-zA-Z0-9%]{0,10})?", 0..5),
            cookie in proptest::collection::vec("[a-z-]{1,20}=[a-zA-Z0-9]{0,10}", 0..5),
            with_token in proptest::bool::ANY,
        ) {
            let mut q = query.clone();
            let mut c = cookie.clone();
            if with_token {
                q.push(format!("{TOKEN_PARAM}=secret"));
                c.push(format!("{TOKEN_COOKIE}=secret"));
            }
            let uri = if q.is_empty() { path.clone() } else { format!("{path}?{}", q.join("&")) };
            let Ok(mut req) = Request::get(uri)
                .header(http::header::COOKIE, c.join("; "))
                .body(axum::body::Body::empty())
            else {
                return Ok(());
            };
            let _ = browser_token(&mut req);
            let (param, cookie_name) = (format!("{TOKEN_PARAM}="), format!("{TOKEN_COOKIE}="));
            let left_query = req.uri().query().unwrap_or_default().to_string();
            proptest::prop_assert!(!left_query.split('&').any(|p| p.starts_with(&param)));
            let left_cookie = req
                .headers()
                .get(http::header::COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            proptest::prop_assert!(!left_cookie.contains(&cookie_name));
            if !query.iter().any(|p| p.starts_with(&param)) {
                proptest::prop_assert_eq!(left_query.split('&').filter(|p| !p.is_empty()).count(), query.len());
            }
        }
    }

    #[test]
    fn browser_tokens_come_from_the_query_or_the_cookie_and_go_no_further() {
        let mut req = Request::get("/a/b?x=1&wrenn_traffic_token=tok&y=2")
            .header(http::header::COOKIE, "theme=dark")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(browser_token(&mut req).as_deref(), Some("tok"));
        assert_eq!(req.uri().to_string(), "/a/b?x=1&y=2");
        assert_eq!(req.headers()["e2b-traffic-access-token"], "tok");
        assert_eq!(req.headers()[http::header::COOKIE], "theme=dark");

        let mut req = Request::get("/")
            .header(http::header::COOKIE, "a=1; wrenn-traffic-token=tok; b=2")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(browser_token(&mut req), None, "a cookie is not set again");
        assert_eq!(req.headers()["e2b-traffic-access-token"], "tok");
        assert_eq!(req.headers()[http::header::COOKIE], "a=1; b=2");

        let mut req = Request::get("/?wrenn_traffic_token=t")
            .header(http::header::COOKIE, "wrenn-traffic-token=old")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(
            browser_token(&mut req).as_deref(),
            Some("t"),
            "the query wins"
        );
        assert_eq!(req.uri().to_string(), "/");
        assert!(!req.headers().contains_key(http::header::COOKIE));
    }

    #[test]
    fn header_secrets_compare_whole() {
        let mut m = HeaderMap::new();
        m.insert("x-access-token", "secret".parse().unwrap());
        assert!(header_eq(&m, "x-access-token", "secret"));
        assert!(!header_eq(&m, "x-access-token", "secre"));
        assert!(!header_eq(&m, "x-access-token", ""));
        assert!(!header_eq(&m, "e2b-traffic-access-token", "secret"));
    }
}
