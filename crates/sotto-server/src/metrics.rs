//! Operator metrics in the Prometheus text format, served by [`crate::serve_metrics`] on a
//! listener of their own (never on the API's): request counts and latencies per route
//! template, the group committer's transactions (on SQLite, one fsync each), changes and
//! batch sizes, open push sockets, changes waiting to be committed, and what the storage
//! holds. No label ever names a user, a device or a group.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Instant;

use crate::AppState;

/// A request's labels: its method, route template and status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// A route's label: its template.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// Every metric of one server process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    waiting: Gauge,
    queue_entries: Gauge,
    messages: Gauge,
}

impl Metrics {
    /// The metrics of `state`'s committer and push sockets, with request metrics to fill.
    pub(crate) fn new(
        commit: &crate::group_commit::CommitStats,
        push: &crate::push::Push,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("sotto");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.1 ms to about 52 s (a request has at most a minute).
            Histogram::new(exponential_buckets(0.0001, 2.0, 20))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's headers to its answer, by route template",
            latency.clone(),
        );
        commit.register(&mut registry);
        registry.register("push_sockets", "Open push WebSockets", push.sockets_gauge());
        let waiting = Gauge::default();
        registry.register(
            "commit_waiting_changes",
            "Sends and acks waiting for the group committer",
            waiting.clone(),
        );
        let queue_entries = Gauge::default();
        registry.register(
            "queue_entries",
            "Entries in every device's queue",
            queue_entries.clone(),
        );
        let messages = Gauge::default();
        registry.register(
            "stored_messages",
            "Messages stored (each once, however many queues refer to it)",
            messages.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            waiting,
            queue_entries,
            messages,
        }
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = RequestLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let route = RouteLabels {
            route: route.to_owned(),
        };
        self.latency.get_or_create(&route).observe(seconds);
    }
}

/// Middleware: counts and times every request by its route template.
pub(crate) async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Only the methods the API has: anything else would let a stranger add series at will.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<no route>".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    state.metrics.observe(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`, on the metrics listener.
pub(crate) async fn render(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.waiting
        .set(i64::try_from(state.group_commit().waiting()).unwrap_or(i64::MAX));
    match state.storage.stats().await {
        Ok(stats) => {
            m.queue_entries
                .set(i64::try_from(stats.queue_entries).unwrap_or(i64::MAX));
            m.messages
                .set(i64::try_from(stats.messages).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: storage counts unavailable"),
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &m.registry) {
        return crate::error::ApiError::internal(e).into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
