//! envd: the agent inside every Wrenn sandbox.
//!
//! It speaks E2B's envd protocol so that E2B's SDKs work unchanged:
//! - Connect services `process.Process` ([`process::service`]) and
//!   `filesystem.Filesystem` ([`filesystem::service`]);
//! - HTTP `/health`, `/init`, `/envs`, `/metrics` and `/files` ([`http`]);
//! - the `X-Access-Token` check, `Authorization: Basic` user selection and
//!   signed file URLs ([`auth`]).
//!
//! [`router`] assembles everything into one axum app; [`serve`] runs it.

pub mod auth;
pub mod errors;
pub mod filesystem;
pub mod http;
pub mod process;
pub mod state;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use connectrpc::{ConnectRpcService, DeadlinePolicy};

pub use state::{AppState, Defaults};

/// Builds envd's whole HTTP app over `state`.
pub fn router(state: AppState) -> axum::Router {
    let connect = connectrpc::Router::new()
        .add_service(Arc::new(process::service::ProcessService::new(
            state.clone(),
        )))
        .add_service(Arc::new(filesystem::service::FilesystemService::new(
            state.clone(),
        )));
    // Connect-Timeout-Ms bounds streams too, as E2B clients expect.
    let connect = ConnectRpcService::new(connect)
        .with_deadline_policy(DeadlinePolicy::new().with_enforce_on_streams(true));
    axum::Router::new()
        .route("/health", get(http::misc::health))
        .route("/init", post(http::misc::init))
        .route("/envs", get(http::misc::envs))
        .route("/metrics", get(http::misc::metrics))
        .route(
            "/files",
            get(http::files::download).post(http::files::upload),
        )
        .layer(DefaultBodyLimit::disable())
        .fallback_service(connect)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::require_token,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(state)
}

/// A handler that panicked (a bug of ours) answers a Connect `internal`
/// error instead of taking envd, and with it the sandbox, down.
fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("a request handler panicked");
    http::http_error(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "envd hit a bug handling this request; try again or report it",
    )
}

/// Serves envd on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, state, shutdown).await
}

/// [`serve`] on a socket that already listens (handed over by the
/// sandbox's init; see `wrenn_protocol::envd::LISTEN_FD_ENV`).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, version = wrenn_protocol::envd::VERSION, "envd listening");
    // Events are small writes; without TCP_NODELAY, Nagle's algorithm and
    // delayed ACKs hold them back by tens of milliseconds.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
