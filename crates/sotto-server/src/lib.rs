//! The Sotto server: account directory, KeyPackage directory, ordered MLS delivery with
//! per-device queues, and WebSocket push.
//!
//! It never holds a group secret and never sees plaintext: it reads only the public MLS
//! framing (group id, epoch, content type) to order and route. [`app`] builds the router over
//! any [`storage::Storage`]; [`serve`] runs it on a listener the caller bound.
#![forbid(unsafe_code)]
// A network service: nothing a peer sends may panic it, so no indexing, no unchecked
// arithmetic and no `expect` outside tests.
#![cfg_attr(
    not(test),
    warn(
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod auth;
pub mod client_ip;
pub mod delivery;
pub mod devices;
pub mod error;
pub mod group_commit;
pub mod kt;
pub mod limits;
mod listener;
pub mod metrics;
pub mod nats;
pub mod push;
pub mod routes;
pub mod storage;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{Request, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use sotto_proto::limits::{MAX_BODY, MAX_KEY_PACKAGES_BODY, MAX_SMALL_BODY};
use sotto_proto::{ErrorCode, ServerId};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Level;

use crate::error::ApiError;
use crate::group_commit::GroupCommit;
use crate::kt::{Kt, KtConfig};
use crate::limits::{Limits, RateLimiters};
use crate::metrics::Metrics;
use crate::push::{Push, Wake};
use crate::storage::{Storage, StorageError};

/// The post-quantum hybrid suite MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519.
pub const SUITE_XWING: u16 = 0x004D;
/// MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519.
pub const SUITE_X25519: u16 = 0x0001;
/// The ciphersuites a server may be configured with.
pub const SUPPORTED_SUITES: &[u16] = &[SUITE_XWING, SUITE_X25519];

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The MLS ciphersuite of every group on this server.
    pub ciphersuite: u16,
    /// How long an undelivered message is kept, in seconds.
    pub retention: u64,
    /// Rate limits and quotas.
    pub limits: Limits,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<IpAddr>,
    /// How the key-transparency log makes epochs.
    pub kt: KtConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ciphersuite: SUITE_XWING,
            retention: 30 * 24 * 3600,
            limits: Limits::default(),
            trusted_proxies: Vec::new(),
            kt: KtConfig::default(),
        }
    }
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    storage: Arc<dyn Storage>,
    /// Every change to delivery state goes through here, to share its commit with others.
    commit: GroupCommit,
    /// What operators see at `/metrics`.
    metrics: Arc<Metrics>,
    /// Whether wake-ups come from other processes too (and may be lost on the way).
    shared_wake: bool,
    /// This process's push sockets.
    push: Arc<Push>,
    config: Arc<Config>,
    rate: Arc<RateLimiters>,
    server_id: ServerId,
    challenge_key: Arc<zeroize::Zeroizing<[u8; 32]>>,
    kt: Arc<Kt>,
}

impl AppState {
    /// State over `storage`, with push wake-ups within this process.
    pub async fn new(storage: Arc<dyn Storage>, config: Config) -> Result<Self, StorageError> {
        let push = Arc::new(Push::default());
        let kt = Kt::open(storage.clone(), config.kt.clone())
            .await
            .map_err(|e| StorageError::new(e.to_string()))?;
        let commit = GroupCommit::start(storage.clone(), push.clone());
        Ok(AppState {
            kt: Arc::new(kt),
            server_id: storage.server_id().await?,
            challenge_key: Arc::new(storage.challenge_key().await?),
            metrics: Arc::new(Metrics::new(commit.stats(), &push)),
            commit,
            shared_wake: false,
            storage,
            push,
            rate: Arc::new(RateLimiters::new(&config.limits)),
            config: Arc::new(config),
        })
    }

    /// The same state with push wake-ups through `wake` (a bus between several server
    /// processes, say) instead of this process's own sockets only. `wake` must in turn wake
    /// the sockets of [`AppState::push`] that it is told about.
    pub fn with_wake(self, wake: Arc<dyn Wake>) -> Self {
        // The committer wakes: a new one with the new wake (the old one stops with its handle).
        let commit = GroupCommit::start(self.storage.clone(), wake.clone());
        AppState {
            metrics: Arc::new(Metrics::new(commit.stats(), &self.push)),
            commit,
            shared_wake: true,
            ..self
        }
    }

    /// This process's push sockets.
    pub fn push(&self) -> &Arc<Push> {
        &self.push
    }

    /// The server's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key-transparency log.
    pub fn kt(&self) -> &Arc<Kt> {
        &self.kt
    }

    /// The group committer of delivery changes.
    pub fn group_commit(&self) -> &GroupCommit {
        &self.commit
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The OpenAPI description of the `/v1` API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn fallback(uri: Uri) -> ApiError {
    let path = uri.path();
    let version = path
        .strip_prefix("/v")
        .and_then(|rest| rest.split('/').next())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
    match version {
        Some(v) if v != sotto_proto::API_VERSION.to_string() => ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UnsupportedVersion,
            "unsupported API version; this server speaks /v1",
        ),
        _ => ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route"),
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    ApiError::internal("handler panicked").into_response()
}

/// The span of one request: method and route template, never the path itself, whose
/// parameters name users and groups.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("<no route>", MatchedPath::as_str);
    tracing::info_span!("request", method = %req.method(), route)
}

/// The router.
pub fn app(state: AppState) -> Router {
    let request_timeout = Duration::from_secs(state.config.limits.request_timeout.0);
    let small = DefaultBodyLimit::max(MAX_SMALL_BODY);
    let key_packages = DefaultBodyLimit::max(MAX_KEY_PACKAGES_BODY);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/config", get(routes::config))
        .route("/v1/accounts", post(routes::register).layer(key_packages))
        .route("/v1/auth/challenge", post(auth::challenge).layer(small))
        .route("/v1/auth/token", post(auth::token).layer(small))
        .route("/v1/users/{user}", get(routes::user))
        .route("/v1/kt/users/{user}", get(routes::kt_lookup))
        .route("/v1/kt/checkpoint", get(routes::kt_checkpoint))
        .route("/v1/kt/epochs/{epoch}", get(routes::kt_epoch))
        .route("/v1/kt/cosignatures", post(routes::kt_cosign).layer(small))
        .route(
            "/v1/keypackages",
            post(routes::upload_key_packages).layer(key_packages),
        )
        .route("/v1/keypackages/count", get(routes::key_package_count))
        .route(
            "/v1/keypackages/claim",
            post(routes::claim_key_packages).layer(small),
        )
        .route("/v1/groups/{group_id}/messages", post(routes::send))
        .route("/v1/queue", get(routes::fetch_queue))
        .route("/v1/queue/ack", post(routes::ack).layer(small))
        .route("/v1/ws", get(push::websocket))
        .route(
            "/v1/links",
            post(devices::create_link_route).layer(key_packages),
        )
        .route(
            "/v1/links/{id}",
            get(devices::link_offer_route).put(devices::answer_link_route),
        )
        .route(
            "/v1/links/{id}/pickup",
            post(devices::pickup_route).layer(small),
        )
        .route(
            "/v1/links/{id}/done",
            post(devices::link_done_route).layer(small),
        )
        .route(
            "/v1/devices",
            post(devices::update_device_list_route)
                .layer(key_packages)
                .get(devices::devices_seen_route),
        )
        .fallback(fallback)
        // Only a send and a link's answer (both signed in) may be large; every other body is
        // bounded by what it can carry, so an unauthenticated request cannot make the server
        // buffer much.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // A request, its body included, must arrive and be answered within this.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // One structured line per request: method, route template, status, latency. Paths
        // (which name users and groups), headers (bearer tokens) and bodies are never logged.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::record,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(tower_http::trace::DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}

/// Serves `app(state)` on an already-bound listener until `shutdown` resolves. Every minute it
/// forgets idle rate-limit buckets; every hour it purges expired messages.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let housekeeping = tokio::spawn(housekeeping(state.clone()));
    let publisher = tokio::spawn(state.kt.clone().run_publisher());
    let accept = listener::Accept {
        cap: state.config.limits.connections_per_ip,
        exempt: state.config.trusted_proxies.clone(),
        header_timeout: Duration::from_secs(state.config.limits.header_timeout.0),
        write_timeout: Duration::from_secs(state.config.limits.write_timeout.0),
    };
    let result = listener::accept_loop(listener, app(state), accept, shutdown).await;
    housekeeping.abort();
    publisher.abort();
    result
}

/// Serves `/metrics` (Prometheus text format) for `state` on a listener of its own, which
/// should not be reachable from the Internet, until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let accept = listener::Accept {
        cap: state.config.limits.connections_per_ip,
        exempt: Vec::new(),
        header_timeout: Duration::from_secs(state.config.limits.header_timeout.0),
        write_timeout: Duration::from_secs(state.config.limits.write_timeout.0),
    };
    let app = Router::new()
        .route("/metrics", get(metrics::render))
        .with_state(state);
    listener::accept_loop(listener, app, accept, shutdown).await
}

async fn housekeeping(state: AppState) {
    let mut minute = tokio::time::interval(Duration::from_secs(60));
    for n in 0u64.. {
        minute.tick().await;
        state.rate.forget_idle();
        if n % 60 != 0 {
            continue;
        }
        let retention = state.config.retention;
        let purged = state
            .storage
            .purge(now().saturating_sub(retention), now())
            .await;
        match purged {
            Ok(n) if n > 0 => tracing::info!(messages = n, "purged expired messages"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "purge failed"),
        }
    }
}
