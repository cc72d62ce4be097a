//! Two server nodes on one PostgreSQL schema (`SOTTO_TEST_POSTGRES`) that wake each other's
//! sockets through NATS (`SOTTO_TEST_NATS`): a message accepted on one node reaches a socket
//! held by the other; with NATS unreachable it still arrives, at the socket's next check.
//! Without the variables the tests say they were skipped.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use futures_util::StreamExt as _;
use sotto_proto::api::PushEvent;
use sotto_server::AppState;
use sotto_server::nats::NatsWake;
use sotto_server::storage::Storage;
use sotto_server::storage::postgres::PostgresStorage;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A bound on waits that only a broken server reaches; never a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

/// The database and NATS URLs, or `None` (the test is skipped) without them.
fn services() -> Option<(String, String)> {
    match (
        std::env::var("SOTTO_TEST_POSTGRES"),
        std::env::var("SOTTO_TEST_NATS"),
    ) {
        (Ok(db), Ok(nats)) => Some((db, nats)),
        _ => {
            eprintln!("skipped: set SOTTO_TEST_POSTGRES and SOTTO_TEST_NATS to run this");
            None
        }
    }
}

/// A node on `schema`, waking the others through the NATS server at `nats`; `ping` is its
/// sockets' ping interval (and so how often they check their queue unprompted).
async fn node(db: &str, schema: &common::Schema, nats: &str, ping: &str) -> common::TestServer {
    let storage: Arc<dyn Storage> = Arc::new(
        PostgresStorage::connect(db, Some(&schema.name))
            .await
            .unwrap(),
    );
    let config = common::with_limits(&[&format!("websocket_ping={ping}")]);
    let state = AppState::new(storage.clone(), config).await.unwrap();
    let wake = NatsWake::start(nats, state.push().clone()).await.unwrap();
    common::serve_state(state.with_wake(wake), storage, tempfile::tempdir().unwrap()).await
}

/// The ids of the messages in the next frame of `ws` that carries messages.
async fn next_ids(ws: &mut common::Socket) -> Vec<u64> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str(t.as_str()).unwrap() {
                PushEvent::Messages(q) => return q.messages.iter().map(|m| m.id).collect(),
            },
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("expected messages, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_message_accepted_on_one_node_reaches_each_recipients_socket_on_another_through_nats() {
    let Some((db, nats)) = services() else {
        return;
    };
    let schema = common::Schema::new(&db);
    // Pings an hour apart: within the wait, only a wake-up through NATS can move a socket.
    let a = node(&db, &schema, &nats, "1h").await;
    let b = node(&db, &schema, &nats, "1h").await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let carol = a.user("carol").await;
    // A socket's first page carries what was queued before it opened; once it has, only a
    // wake-up can bring the next message.
    let first = a.send_small(&alice, [0x51; 16], 1, &[&bob, &carol]).await;
    let mut bob_ws = common::websocket(&b, &bob.token).await;
    let mut carol_ws = common::websocket(&b, &carol.token).await;
    assert_eq!(next_ids(&mut bob_ws).await, [first]);
    assert_eq!(next_ids(&mut carol_ws).await, [first]);
    // Two wake-ups, which NATS may carry in one message, a line each.
    let id = a.send_small(&alice, [0x51; 16], 2, &[&bob, &carol]).await;
    assert_eq!(next_ids(&mut bob_ws).await, [id]);
    assert_eq!(next_ids(&mut carol_ws).await, [id]);
}

#[tokio::test]
async fn with_nats_unreachable_a_message_still_arrives_at_the_sockets_next_check() {
    let Ok(db) = std::env::var("SOTTO_TEST_POSTGRES") else {
        eprintln!("skipped: set SOTTO_TEST_POSTGRES to run this");
        return;
    };
    let schema = common::Schema::new(&db);
    // A loopback port where no NATS server listens (bound, then given back).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let nowhere = format!("nats://{closed}");
    let a = node(&db, &schema, &nowhere, "1s").await;
    let b = node(&db, &schema, &nowhere, "1s").await;
    let alice = a.user("alice").await;
    let bob = a.user("bob").await;
    let first = a.send_small(&alice, [0x52; 16], 1, &[&bob]).await;
    let mut ws = common::websocket(&b, &bob.token).await;
    assert_eq!(next_ids(&mut ws).await, [first]);
    let id = a.send_small(&alice, [0x52; 16], 2, &[&bob]).await;
    assert_eq!(next_ids(&mut ws).await, [id]);
}
