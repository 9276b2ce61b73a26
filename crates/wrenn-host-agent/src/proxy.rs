//! `/proxy/{sandbox}/{port}/{path}`: the last hop of the sandbox proxy, from
//! the agent to a port of a sandbox on this host (HTTP, streamed bodies,
//! WebSocket upgrades). The control plane has already checked that the
//! caller may reach the sandbox; the agent checks only its own token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::json;
use wrenn_protocol::hostagent::{PROXY_ERROR_HEADER, proxy_error};

use crate::agent::Agent;
use crate::runtime::{RunState, Runtime};

/// What the proxy route needs.
pub struct ProxyState<R: Runtime> {
    /// Where sandboxes are looked up.
    pub agent: Arc<Agent<R>>,
    /// Pooled connections to sandbox ports.
    pub client: wrenn_http_proxy::Client<wrenn_http_proxy::FallbackConnector>,
}

impl<R: Runtime> ProxyState<R> {
    /// The proxy of `agent`'s sandboxes: a port that refuses on the
    /// sandbox's address is tried on the sandbox's own loopback (a server
    /// bound to 127.0.0.1 inside), through the runtime, when asked.
    pub fn new(agent: Arc<Agent<R>>) -> Self {
        let runtime_of = agent.clone();
        let fallback: wrenn_http_proxy::Fallback = Arc::new(move |addr: std::net::SocketAddr| {
            let agent = runtime_of.clone();
            Box::pin(async move {
                let id = agent
                    .runtime
                    .list()
                    .into_iter()
                    .find(|i| i.envd_addr.ip() == addr.ip())?
                    .spec
                    .id;
                match agent.runtime.connect_loopback(&id, addr.port()).await {
                    Ok(Some(stream)) => Some(Ok(stream)),
                    Ok(None) => None,
                    Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
                }
            })
        });
        ProxyState {
            agent,
            client: wrenn_http_proxy::client_with_fallback(fallback),
        }
    }
}

impl<R: Runtime> Clone for ProxyState<R> {
    fn clone(&self) -> Self {
        ProxyState {
            agent: self.agent.clone(),
            client: self.client.clone(),
        }
    }
}

/// `(sandbox id, port, rest of the path and query)` from
/// `/proxy/{id}/{port}[/rest][?query]`.
pub fn parse_target(path_and_query: &str) -> Option<(&str, u16, String)> {
    let rest = path_and_query.strip_prefix("/proxy/")?;
    let (id, rest) = rest.split_once('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let port: u16 = rest[..end].parse().ok().filter(|p| *p > 0)?;
    let tail = &rest[end..];
    let tail = if tail.starts_with('/') {
        tail.to_string()
    } else {
        format!("/{tail}")
    };
    (!id.is_empty()).then_some((id, port, tail))
}

/// An error of this route's own, marked as such for the control plane.
fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut resp = wrenn_http_proxy::text(status, json!({ "code": code, "message": message }));
    resp.headers_mut()
        .insert(PROXY_ERROR_HEADER, http::HeaderValue::from_static(code));
    resp
}

/// Forwards one request to a sandbox's port.
pub async fn handle<R: Runtime>(State(st): State<ProxyState<R>>, mut req: Request) -> Response {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_string();
    let Some((id, port, tail)) = parse_target(&pq) else {
        return error(
            StatusCode::BAD_REQUEST,
            proxy_error::INVALID_REQUEST,
            format!("bad proxy path '{pq}'; expected /proxy/<sandbox>/<port>/<path>"),
        );
    };
    let Some(inst) = st.agent.runtime.get(id) else {
        return error(
            StatusCode::NOT_FOUND,
            proxy_error::NOT_FOUND,
            format!("sandbox '{id}' is not on this host"),
        );
    };
    if inst.state == RunState::Paused {
        return error(
            StatusCode::CONFLICT,
            proxy_error::INVALID_STATE,
            format!("sandbox {id} is paused; resume it to reach port {port}"),
        );
    }
    if req
        .headers_mut()
        .remove(wrenn_protocol::hostagent::PROXY_TOUCH_HEADER)
        .is_some()
    {
        st.agent.touch(id, None);
    }
    let target = format!("http://{}:{port}{tail}", inst.envd_addr.ip());
    let Ok(target) = target.parse() else {
        return error(
            StatusCode::BAD_REQUEST,
            proxy_error::INVALID_REQUEST,
            format!("bad proxy path '{pq}'"),
        );
    };
    let forwarded = wrenn_http_proxy::forward(&st.client, req, target).await;
    if forwarded.is_err() {
        // A sandbox destroyed or paused while the request ran is said to
        // be so, not blamed on its port.
        match st.agent.runtime.get(id) {
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    proxy_error::NOT_FOUND,
                    format!("sandbox '{id}' was destroyed while the request ran"),
                );
            }
            Some(i) if i.state == RunState::Paused => {
                return error(
                    StatusCode::CONFLICT,
                    proxy_error::INVALID_STATE,
                    format!("sandbox {id} was paused while the request ran; resume it"),
                );
            }
            Some(_) => {}
        }
    }
    match forwarded {
        Ok(mut resp) => {
            // Only this route's own errors carry the mark.
            resp.headers_mut().remove(PROXY_ERROR_HEADER);
            resp
        }
        Err(wrenn_http_proxy::ForwardError::Connect(e)) => error(
            StatusCode::BAD_GATEWAY,
            proxy_error::PORT_NOT_OPEN,
            format!(
                "nothing is listening on port {port} in sandbox {id} ({e}); start a server on 0.0.0.0:{port} or 127.0.0.1:{port} inside it"
            ),
        ),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            proxy_error::UPSTREAM_FAILED,
            format!("port {port} of sandbox {id}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn proxy_paths() {
        let cases = [
            ("/proxy/sb-1/8000/", Some(("sb-1", 8000, "/"))),
            ("/proxy/sb-1/8000", Some(("sb-1", 8000, "/"))),
            ("/proxy/sb-1/8000?x=1", Some(("sb-1", 8000, "/?x=1"))),
            (
                "/proxy/sb-1/49983/files?path=/a",
                Some(("sb-1", 49983, "/files?path=/a")),
            ),
            ("/proxy/sb-1/0/", None),
            ("/proxy/sb-1/99999/", None),
            ("/proxy/sb-1/x/", None),
            ("/proxy//80/", None),
            ("/other/sb-1/80/", None),
        ];
        for (path, want) in cases {
            let got = parse_target(path);
            let got = got.as_ref().map(|(i, p, t)| (*i, *p, t.as_str()));
            assert_eq!(got, want, "{path}");
        }
    }

    proptest::proptest! {
        /// No path panics the parser, and what it returns is a port from 1
        /// to 65535 and a path that starts with '/' (so it can only name a
        /// path on the sandbox's port, never another host).
        #[test]
        fn any_path_parses_to_a_port_and_an_absolute_path_or_nothing(pq in "\\PC{0,60}") {
            if let Some((id, port, tail)) = parse_target(&pq) {
                proptest::prop_assert!(!id.is_empty() && !id.contains('/'));
                proptest::prop_assert!(port > 0);
                proptest::prop_assert!(tail.starts_with('/'), "{tail}");
            }
        }

        /// Every well-formed proxy path gives back its parts.
        #[test]
        fn proxy_paths_round_trip(
            id in "sb-[a-z0-9]{1,12}",
            port in 1u16..,
            rest in "(/[a-zA-Z0-9._~-]{0,8}){0,3}(\\?[a-z]=[0-9]{0,4})?",
        ) {
            let path = format!("/proxy/{id}/{port}{rest}");
            let got = parse_target(&path);
            let want_tail = if rest.starts_with('/') { rest.clone() } else { format!("/{rest}") };
            proptest::prop_assert_eq!(got, Some((id.as_str(), port, want_tail)));
        }
    }
}
