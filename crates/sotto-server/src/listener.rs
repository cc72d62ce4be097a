//! Accepting connections. The server runs its own accept loop (rather than `axum::serve`) so
//! that every connection has a header-read timeout and every client address a cap on the
//! connections it holds open: without them, requests left half-sent from one address could
//! hold memory and file descriptors without end. Trusted proxies are exempt from the cap,
//! since every client behind them shares their address.

use crate::limits::IpKey;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tower::ServiceExt as _;

/// How long shutting down waits for requests under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections open per client address (an IPv6 /64 counts as one, as for rate limits).
#[derive(Default)]
struct OpenConnections {
    by_ip: Mutex<HashMap<IpKey, u32>>,
}

/// One open connection's place in [`OpenConnections`], given back on drop.
struct Slot {
    open: Arc<OpenConnections>,
    ip: IpKey,
}

impl OpenConnections {
    fn by_ip(&self) -> MutexGuard<'_, HashMap<IpKey, u32>> {
        // Counters only: a panic elsewhere cannot leave one half-updated.
        self.by_ip.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `ip`, if it holds fewer than `cap`.
    fn open(self: &Arc<Self>, ip: IpKey, cap: u32) -> Option<Slot> {
        let mut by_ip = self.by_ip();
        let count = by_ip.entry(ip).or_default();
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Slot {
            open: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_ip = self.open.by_ip();
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// How connections are accepted.
pub(crate) struct Accept {
    /// Connections one address may hold open.
    pub cap: u32,
    /// Addresses exempt from the cap (trusted proxies).
    pub exempt: Vec<IpAddr>,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, as `accept` says. Every request
/// carries its peer's address as `ConnectInfo<SocketAddr>`.
pub(crate) async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    accept: Accept,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Accept {
        cap,
        exempt,
        header_timeout,
    } = accept;
    let graceful = GracefulShutdown::new();
    let open = Arc::new(OpenConnections::default());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ip = peer.ip().to_canonical();
        let slot = if exempt.iter().any(|e| e.to_canonical() == ip) {
            None
        } else {
            match open.open(IpKey::from(ip), cap) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!("refused a connection: its address holds too many");
                    continue;
                }
            }
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req.map(Body::new))
        });
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection's failure is the client's affair, not the server's.
            let _ = connection.await;
            drop(slot);
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
