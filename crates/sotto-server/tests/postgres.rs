//! A server on PostgreSQL (the database of `SOTTO_TEST_POSTGRES`, each test in a schema of
//! its own), reached through a loopback TCP relay the test can cut: while the database is
//! unreachable the server answers `503 unavailable` and stores nothing, and once it is back
//! the server carries on by itself. Without the variable the tests say they were skipped.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use reqwest::StatusCode;
use serde_json::json;
use sotto_server::Config;
use sotto_server::storage::postgres::PostgresStorage;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const POSTGRES_URL: &str = "SOTTO_TEST_POSTGRES";

/// A TCP relay to the database that can be cut (every connection through it closed, new
/// ones closed as they arrive) and restored.
struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Relay {
    async fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            live: Arc::default(),
        };
        let (open, live) = (relay.open.clone(), relay.live.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                live.lock().unwrap().push(task.abort_handle());
            }
        });
        relay
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The test database's settings, or `None` (the test is skipped) without the variable.
fn database() -> Option<tokio_postgres::Config> {
    let Ok(url) = std::env::var(POSTGRES_URL) else {
        eprintln!("skipped: set {POSTGRES_URL} to a PostgreSQL URL to run this against it");
        return None;
    };
    Some(url.parse().expect("a PostgreSQL URL"))
}

/// The address of the test database (TCP on loopback only).
fn target(config: &tokio_postgres::Config) -> SocketAddr {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addr: SocketAddr = format!("{host}:{port}").parse().expect("an IP address");
    assert!(addr.ip().is_loopback(), "tests reach only loopback");
    addr
}

/// `config` with its host and port replaced by `addr`.
fn through(config: &tokio_postgres::Config, addr: SocketAddr) -> String {
    let mut url = format!("host={} port={}", addr.ip(), addr.port());
    if let Some(user) = config.get_user() {
        url.push_str(&format!(" user={user}"));
    }
    if let Some(password) = config.get_password() {
        let password = String::from_utf8_lossy(password)
            .replace('\\', "\\\\")
            .replace('\'', "\\'");
        url.push_str(&format!(" password='{password}'"));
    }
    if let Some(db) = config.get_dbname() {
        url.push_str(&format!(" dbname={db}"));
    }
    url
}

#[tokio::test]
async fn while_postgres_is_unreachable_requests_get_503_and_the_server_recovers_by_itself() {
    let Some(config) = database() else {
        return;
    };
    let relay = Relay::to(target(&config)).await;
    let schema = common::Schema::new(&std::env::var(POSTGRES_URL).unwrap());
    let storage = PostgresStorage::connect(&through(&config, relay.addr), Some(&schema.name))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = common::start_over(Arc::new(storage), Config::default(), |s| s, dir).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    s.send_small(&alice, [7; 16], 1, &[&bob]).await;
    let before = s.stats().await;

    relay.cut();
    let (status, body) = s.get("/v1/users/bob", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(common::code(&body), "unavailable");
    let group = common::hex_of(&[7; 16]);
    let message = common::private_message(&[7; 16], 0, 1);
    let send = json!({
        "client_id": "0".repeat(32),
        "message": sotto_proto::Bytes(message),
        "recipients": [bob.device.addr()],
    });
    let response = s
        .http
        .post(format!("{}/v1/groups/{group}/messages", s.url))
        .bearer_auth(&alice.token)
        .json(&send)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");

    relay.restore();
    common::assert_unchanged(before, &s).await;
    let (status, body) = s.get("/v1/users/bob", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.send_small(&alice, [7; 16], 2, &[&bob]).await;
    assert_eq!(s.queue(&bob).await.messages.len(), 2);
}
