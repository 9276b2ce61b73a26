//! Serving the agent: the Connect service behind a bearer-token check,
//! the timeout reaper, and a clean stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use connectrpc::ConnectRpcService;
use subtle::ConstantTimeEq;
use wrenn_protocol::hostagent::PROXY_TOKEN_HEADER;

use crate::agent::Agent;
use crate::runtime::Runtime;
use crate::service::{HostAgentService, TemplateList};

#[derive(Clone)]
struct Token(Arc<String>);

async fn require_token(State(token): State<Token>, mut req: Request, next: Next) -> Response {
    let matches = |v: &str| bool::from(v.as_bytes().ct_eq(token.0.as_bytes()));
    let ok = if req.uri().path().starts_with("/proxy/") {
        let ok = req
            .headers()
            .get(PROXY_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(matches);
        req.headers_mut().remove(PROXY_TOKEN_HEADER);
        ok
    } else {
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(matches)
    };
    if ok {
        return next.run(req).await;
    }
    let body = serde_json::json!({
        "code": "unauthenticated",
        "message": "missing or wrong agent token; send `Authorization: Bearer <token>` (see the agent's token file)"
    });
    (http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// The agent's HTTP app: every route needs `Authorization: Bearer <token>`
/// (`/proxy/…` takes it in [`PROXY_TOKEN_HEADER`]).
pub fn router<R: Runtime + TemplateList>(agent: Arc<Agent<R>>, token: String) -> axum::Router {
    let connect =
        connectrpc::Router::new().add_service(Arc::new(HostAgentService::new(agent.clone())));
    axum::Router::new()
        .route(
            "/proxy/{*rest}",
            axum::routing::any(crate::proxy::handle::<R>)
                .with_state(crate::proxy::ProxyState::new(agent)),
        )
        .fallback_service(ConnectRpcService::new(connect))
        .layer(axum::middleware::from_fn_with_state(
            Token(Arc::new(token)),
            require_token,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// A handler that panicked (a bug of ours) answers a Connect `internal`
/// error; the panic hook logged where, and the agent and its sandboxes go on.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    let body = serde_json::json!({
        "code": "internal",
        "message": "the agent hit a bug handling this request (it was logged); try again or report it"
    });
    (http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

/// Re-adopts sandboxes, starts the reaper and the metrics sampler, and
/// serves on `addr` until
/// `shutdown` resolves or a Terminate call arrives.
pub async fn serve<R: Runtime + TemplateList>(
    agent: Arc<Agent<R>>,
    addr: SocketAddr,
    token: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let adopted = agent.recover().await.map_err(std::io::Error::other)?;
    if !adopted.is_empty() {
        tracing::info!(count = adopted.len(), "re-adopted running sandboxes");
    }
    let reaper = tokio::spawn(agent.clone().reap_forever(Duration::from_secs(1)));
    let sampler = tokio::spawn(agent.clone().sample_forever(crate::metrics::PERIOD));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, runtime = agent.runtime.name(), "host agent listening");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let mut terminate = agent.shutdown.subscribe();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = terminate.wait_for(|t| *t) => {}
        }
    };
    let r = axum::serve(listener, router(agent, token))
        .with_graceful_shutdown(stop)
        .await;
    reaper.abort();
    sampler.abort();
    r
}
