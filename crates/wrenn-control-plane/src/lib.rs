//! Wrenn's control plane: the REST API, identity, persistence and the
//! scheduling of sandboxes onto host agents. Stateless: everything lives in
//! the [`store::Store`], so several can share one database.
//!
//! - [`store`]: PostgreSQL or SQLite behind one `Store`;
//! - [`auth`]: passwords, JWTs, API keys and the `Caller` extractor;
//! - [`hosts`]: agent clients, candidate hosts and schedulers;
//! - [`sandboxes`]: the sandbox lifecycle (create, pause, resume, destroy)
//!   that every API, the proxy and the host routes call;
//! - [`api`]: the routes (Wrenn's and E2B's); [`proxy`]: traffic to sandbox
//!   ports; [`reconcile`]: database against agents.

pub mod api;
pub mod auth;
pub mod dataplane;
pub mod error;
pub mod host_status;
pub mod hosts;
pub mod ids;
pub mod output;
pub mod proxy;
pub mod reconcile;
pub mod sandbox_state;
pub mod sandboxes;
pub mod store;
pub mod ttl;

use std::sync::Arc;

/// Everything a handler needs: one shared [`AppParts`], so that the clone
/// each request makes of it (axum's `State`) is one reference count, not
/// a copy of every part's own (a fifth of a GET's time before). Its parts
/// are set through `DerefMut` before it is shared (copied on write after).
#[derive(Clone)]
pub struct App(Arc<AppParts>);

impl std::ops::Deref for App {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl std::ops::DerefMut for App {
    fn deref_mut(&mut self) -> &mut AppParts {
        Arc::make_mut(&mut self.0)
    }
}

/// The parts of an [`App`].
#[derive(Clone)]
pub struct AppParts {
    /// The database.
    pub store: store::Store,
    /// User tokens.
    pub jwt: auth::Jwt,
    /// Agent clients.
    pub hosts: hosts::HostPool,
    /// Where new sandboxes go.
    pub scheduler: Arc<dyn hosts::Scheduler>,
    /// Lifecycle events, by team.
    pub events: tokio::sync::broadcast::Sender<(String, wrenn_api_types::streams::LifecycleEvent)>,
    /// Disk use per sandbox, as last asked of its agent (GET shows it; one
    /// agent call a second per sandbox is plenty).
    pub disk_used:
        Arc<parking_lot::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>>,
    /// The sandbox proxy's settings.
    pub proxy: proxy::ProxyConfig,
    /// Pooled connections to agents for proxied traffic.
    pub proxy_client: wrenn_http_proxy::Client,
    /// Routes the proxy looked up recently.
    pub proxy_cache: proxy::ProxyCache,
    /// API keys looked up recently (REST and proxy).
    pub keys: Arc<auth::KeyCache>,
    /// How often registered hosts heartbeat (told to them).
    pub heartbeat_interval: std::time::Duration,
    /// Silence after which a registered host is `unreachable`.
    pub host_timeout: std::time::Duration,
    /// How often the database is reconciled with the agents.
    pub reconcile_interval: std::time::Duration,
    /// Password hashing, bounded and off the async runtime.
    pub passwords: Arc<auth::Passwords>,
    /// Backoff for failed logins.
    pub login_guard: Arc<auth::LoginGuard>,
    /// Memory for buffered exec output, per team and in all.
    pub output: Arc<output::OutputBudget>,
}

impl App {
    /// An app over `store` with the JWT secret and least-loaded scheduling.
    pub fn new(store: store::Store, jwt_secret: &[u8]) -> App {
        App(Arc::new(AppParts {
            store,
            jwt: auth::Jwt::new(jwt_secret),
            hosts: hosts::HostPool::default(),
            scheduler: Arc::new(hosts::LeastLoaded::default()),
            events: tokio::sync::broadcast::channel(1024).0,
            disk_used: Arc::default(),
            proxy: proxy::ProxyConfig::default(),
            proxy_client: wrenn_http_proxy::client(),
            proxy_cache: proxy::ProxyCache::default(),
            keys: Arc::default(),
            heartbeat_interval: std::time::Duration::from_secs(30),
            host_timeout: std::time::Duration::from_secs(90),
            reconcile_interval: std::time::Duration::from_secs(2),
            passwords: Arc::default(),
            login_guard: Arc::default(),
            output: Arc::default(),
        }))
    }
}

/// Serves the API on `addr` until `shutdown` resolves, reconciling the
/// database with the agents in the background.
pub async fn serve(
    app: App,
    addr: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(app, listener, shutdown).await
}

/// [`serve`] on a listener already bound (so that a caller can say it is
/// up only once it is).
pub async fn serve_on(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|t| {
        let _ = t.set_nodelay(true);
    });
    tracing::info!(%addr, backend = app.store.backend, "control plane listening");
    let reconciler = tokio::spawn(reconcile::run_forever(app.clone(), app.reconcile_interval));
    let service = api::router(app).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let r = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await;
    reconciler.abort();
    r
}
