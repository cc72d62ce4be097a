//! Behaviour that needs the real store or a second connection to it: these tests drive a
//! real server and real clients, and reach into one client's store where another process of
//! the device (or someone holding its key) would. The protocol's own decisions are tested in
//! `sotto-core`'s engine tests, without files or network.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

#[path = "../tests/harness/mod.rs"]
mod harness;

use crate::account::{KEYFILE, STORE};
use crate::{Client, keyfile, store};
use harness::{Server, client, lines, recv, shown};
use sotto_core::store::{ClientStore as _, HistoryItem, HistoryRecord, StoreTx as _, Unshown};

const XWING: u16 = 0x004D;

/// `Client` can be shared between threads, and what its calls return can be awaited on any
/// of them: an axum handler can hold an `Arc<Client>` and call it.
#[test]
fn a_client_is_send_and_sync_and_so_are_its_calls() {
    fn shared<T: Send + Sync>() {}
    fn sendable<T: Send>(_: &T) {}
    shared::<Client>();
    // Checked by the compiler; the futures are never run.
    let calls = |c: &Client| {
        sendable(&c.sync());
        sendable(&c.send_text("bob", "hi"));
        sendable(&c.send_group_text("team", "hi"));
        sendable(&c.create_group("team", &[]));
        sendable(&c.add_members("team", &[]));
        sendable(&c.remove_members("team", &[]));
    };
    let _ = calls;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_acknowledged_only_after_a_complete_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    // Another connection to bob's store (another process of his device) holds a read open,
    // so the log cannot be written back into the database file.
    let home = dir.path().join("bob");
    let key = keyfile::unlock(&home.join(KEYFILE), "correct horse").unwrap();
    let reader = store::open(&home.join(STORE), &key).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    reader
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let queued = async |s: &Server| {
        let storage = sotto_server::storage::sqlite::SqliteStorage::open(&s.data).unwrap();
        sotto_server::storage::DeliveryStore::fetch(&storage, bob.engine.me(), 0, 100, usize::MAX)
            .await
            .unwrap()
            .messages
            .len()
    };
    let waiting = queued(&server).await;
    assert!(waiting > 0);
    bob.sync().await.unwrap();
    assert_eq!(
        queued(&server).await,
        waiting,
        "acknowledged before it was durable"
    );
    // Once the reader is done, the next sync writes back, acknowledges, and shows nothing
    // twice.
    reader.execute_batch("COMMIT").unwrap();
    bob.sync().await.unwrap();
    assert_eq!(queued(&server).await, 0);
    assert_eq!(shown(&bob), lines(&["alice: one"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_before_server_ids_pins_one_at_its_first_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let pinned = alice.engine.store().transaction(|tx| {
        Ok::<_, crate::ClientError>(tx.setting(sotto_core::store::Setting::ServerId)?)
    });
    let pinned = pinned.unwrap().unwrap();
    alice.engine.store().with_connection(|conn| {
        conn.execute(
            "DELETE FROM meta WHERE key IN ('server_id', 'insecure_http')",
            [],
        )
        .unwrap();
    });
    drop(alice);
    let alice = harness::reopen(dir.path(), "alice");
    alice.send_text("bob", "still works").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: still works"]));
    let stored = alice.engine.store().transaction(|tx| {
        Ok::<_, crate::ClientError>(tx.setting(sotto_core::store::Setting::ServerId)?)
    });
    assert_eq!(stored.unwrap().unwrap(), pinned);
}

#[test]
fn a_senders_clock_past_what_sqlite_holds_is_clamped_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::SqlCipherStore::open(&dir.path().join("store.db"), &[7; 32]).unwrap();
    let entry = HistoryRecord {
        id: "1".into(),
        group: None,
        sender: None,
        sent_at: u64::MAX,
        received_at: 5,
        item: HistoryItem::Text("from the far future".into()),
        outgoing: false,
    };
    let seen = store
        .transaction(|tx| {
            tx.add_history(&entry)?;
            tx.unshown(Unshown::All)
        })
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].record.sent_at, i64::MAX as u64);
    assert_eq!(seen[0].record.received_at, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_outbox_entry_or_event_is_reported_not_fatal_to_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    // A disk fault (or an edit) damages an outbox entry of alice's and one of bob's events.
    alice.engine.store().with_connection(|conn| {
        conn.execute(
            "INSERT INTO outbox (client_id, group_id, kind, request, content, created_at)
             VALUES ('00', x'00', 'app', 'not json', 'not json', 0)",
            [],
        )
        .unwrap();
    });
    bob.engine.store().with_connection(|conn| {
        conn.execute(
            "INSERT INTO messages (id, sent_at, received_at, kind, body, event, outgoing)
             VALUES ('local-x', 0, 0, 'event', '', '{\"type\": 7', 0)",
            [],
        )
        .unwrap();
    });
    // Alice's sync drops the entry and tells her; everything else carries on.
    alice.send_group_text("team", "two").await.unwrap();
    let told = shown(&alice);
    assert!(
        told.iter()
            .any(|l| l.contains("could not be delivered") && l.contains("damaged")),
        "{told:?}"
    );
    assert_eq!(
        recv(&bob).await,
        lines(&[
            "* something happened that this version of Sotto cannot describe",
            "alice: two"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_mls_state_stops_the_sync_and_leaves_the_message_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    recv(&bob).await;
    alice.send_text("bob", "two").await.unwrap();
    // A disk fault (or an edit) damages bob's MLS state of the conversation.
    bob.engine.store().with_connection(|conn| {
        let damaged = conn
            .execute(
                "UPDATE openmls_group_data SET group_data = x'7b' WHERE data_type = 'message_secrets'",
                [],
            )
            .unwrap();
        assert_eq!(damaged, 1);
    });
    drop(bob);
    let bob = harness::reopen(dir.path(), "bob");
    // It is bob's failure, not a message alice sent wrong: the sync fails (exit 5) and the
    // message stays queued, rather than being shown as unreadable and acknowledged.
    let err = bob.sync().await.unwrap_err();
    assert!(
        matches!(
            err,
            crate::ClientError::Engine(_) | crate::ClientError::Store(_)
        ),
        "{err:?}"
    );
    assert!(bob.unshown().unwrap().is_empty());
    let storage = sotto_server::storage::sqlite::SqliteStorage::open(&server.data).unwrap();
    let queued =
        sotto_server::storage::DeliveryStore::fetch(&storage, bob.engine.me(), 0, 10, usize::MAX)
            .await
            .unwrap();
    assert_eq!(queued.messages.len(), 1);
}
