//! Accepting connections. The server runs its own accept loop (rather than `axum::serve`) so
//! that every connection has a header-read timeout, a write-stall timeout, and every client
//! address a cap on the connections it holds open: without them, requests left half-sent, or
//! answers left unread, from one address could hold memory and file descriptors without end.
//! Trusted proxies are exempt from the cap, since every client behind them shares their
//! address. Only HTTP/1.1 is spoken (clients need nothing else, and one HTTP/2 connection
//! could hold hundreds of unread answers).

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
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
        *count = count.saturating_add(1);
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
    /// Time a write may wait on a client that reads nothing.
    pub write_timeout: Duration,
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
        write_timeout,
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
        let mut builder = Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let stream = WriteTimeout::new(stream, write_timeout);
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

/// A stream whose writes fail once they have made no progress for `timeout`: a client that
/// stops reading cannot keep an answer (or a WebSocket) in the server's memory.
pub(crate) struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write waits; dropped as soon as one makes progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes on a write's outcome; a write still waiting fails once the timeout is up.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client stopped reading",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::WriteTimeout;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_write_to_a_peer_that_reads_nothing_fails() {
        // The peer stays open (so the write waits rather than fails) but never reads.
        let (ours, theirs) = tokio::io::duplex(64);
        let mut ours = WriteTimeout::new(ours, Duration::from_millis(50));
        let err = ours
            .write_all(&[7; 4096])
            .await
            .expect_err("the write stalled");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(theirs);
        // A peer that reads lets writes through, however long they take in all.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut ours = WriteTimeout::new(ours, Duration::from_millis(50));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.map(|_| all.len())
        });
        ours.write_all(&[7; 4096]).await.expect("the peer reads");
        drop(ours);
        assert_eq!(reader.await.expect("joined").expect("read"), 4096);
    }
}
