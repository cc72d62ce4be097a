#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
//! Delivery under faults, with a real server and real clients: a network cut while a message
//! is checked, KeyPackages drained by others, a commit that lost its epoch while its device
//! was cut off, values the server chose or changed, and messages the server had to drop.

mod harness;

use harness::{CutProxy, Server, client, client_via, lines, recv, shown};
use sotto_client::{ClientError, MessageKind};
use sotto_proto::Username;
use sotto_server::Config;
use sotto_server::limits::Limits;
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::storage::{AccountStore, DeliveryStore, KeyPackageStore};

const XWING: u16 = 0x004D;

fn storage(server: &Server) -> SqliteStorage {
    SqliteStorage::open(&server.data).unwrap()
}

async fn queued(server: &Server, user: &str, device: &str) -> usize {
    let addr = sotto_proto::DeviceAddr {
        user: Username::parse(user).unwrap(),
        device: sotto_proto::DeviceId::parse(device).unwrap(),
    };
    storage(server)
        .fetch(&addr, 0, 500, usize::MAX)
        .await
        .unwrap()
        .messages
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_list_that_cannot_be_fetched_leaves_the_message_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let proxy = CutProxy::start(&server).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client_via(&proxy.url, dir.path(), "bob").await;
    let _carol = client(&server, dir.path(), "carol").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["* alice added you"]));
    alice.add_members("team", &["carol".into()]).await.unwrap();

    // Bob's connection drops whenever he asks for carol's device list.
    proxy.cut(Some("GET /v1/users/carol"));
    let err = bob.sync().await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable(_)), "{err:?}");
    let bob_device = bob.whoami().device;
    assert_eq!(
        queued(&server, "bob", &bob_device).await,
        2,
        "commit and group info"
    );
    assert!(shown(&bob).is_empty(), "nothing decided, nothing shown");

    proxy.cut(None);
    assert_eq!(recv(&bob).await, lines(&["* alice added carol"]));
    assert_eq!(queued(&server, "bob", &bob_device).await, 0);
    assert!(bob.unseen_security_events().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_lost_its_epoch_is_redone_from_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let proxy = CutProxy::start(&server).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client_via(&proxy.url, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    let dave = client(&server, dir.path(), "dave").await;
    alice.create_group("g", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    let epoch = bob.groups().unwrap()[0].epoch;

    // Bob's commit adding dave is made at `epoch` and kept in his outbox, but never reaches
    // the server.
    proxy.cut(Some("POST /v1/groups/"));
    let err = bob.add_members("g", &["dave".into()]).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable(_)), "{err:?}");
    // Meanwhile alice's commit takes that epoch.
    alice.add_members("g", &["carol".into()]).await.unwrap();
    assert_eq!(alice.groups().unwrap()[0].epoch, epoch + 1);

    // Bob's next sync replays the stale commit; the server must answer 409 (it is at
    // epoch + 1), and bob processes alice's commit and adds dave again on top of it.
    proxy.cut(None);
    bob.sync().await.unwrap();
    assert_eq!(bob.groups().unwrap()[0].epoch, epoch + 2);
    assert_eq!(recv(&alice).await, lines(&["* bob added dave"]));
    assert_eq!(
        recv(&carol).await,
        lines(&["* alice added you", "* bob added dave"])
    );
    assert_eq!(recv(&dave).await, lines(&["* bob added you"]));
    for c in [&alice, &bob, &carol, &dave] {
        let members: Vec<String> = c
            .members("g")
            .unwrap()
            .into_iter()
            .map(|m| m.user)
            .collect();
        assert_eq!(members, lines(&["alice", "bob", "carol", "dave"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_topped_up_on_every_sync_after_being_drained() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let me = sotto_proto::DeviceAddr {
        user: Username::parse("alice").unwrap(),
        device: sotto_proto::DeviceId::parse(&alice.whoami().device).unwrap(),
    };
    let storage = storage(&server);
    assert_eq!(storage.key_package_count(&me).await.unwrap().count, 50);
    for _ in 0..45 {
        storage
            .claim_key_packages(&Username::parse("alice").unwrap(), true)
            .await
            .unwrap();
    }
    assert_eq!(storage.key_package_count(&me).await.unwrap().count, 5);
    alice.sync().await.unwrap();
    assert_eq!(storage.key_package_count(&me).await.unwrap().count, 55);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_whose_key_packages_are_refused_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.set("key_packages_per_device=10").unwrap();
    let config = Config {
        limits,
        ..Config::default()
    };
    let server = Server::start_with(&dir.path().join("server"), config).await;
    let home = dir.path().join("alice");
    let err = sotto_client::Client::init(
        &home,
        &server.url,
        "alice",
        "correct horse",
        sotto_client::InitOptions::new(sotto_client::KdfParams::INSECURE_TEST),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.code(),
        Some(sotto_proto::ErrorCode::InvalidField),
        "{err:?}"
    );
    assert!(!home.exists(), "{home:?} was left behind");
    let alice = Username::parse("alice").unwrap();
    assert!(storage(&server).account(&alice).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_at_is_the_senders_time_and_received_at_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let before = sotto_server::now();
    alice.create_group("team", &["bob".into()]).await.unwrap();
    alice.send_text("bob", "hello").await.unwrap();
    // The operator backdates everything queued for bob.
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).unwrap();
    db.execute("UPDATE messages SET accepted_at = 1000", [])
        .unwrap();
    bob.sync().await.unwrap();
    let seen = bob.unshown().unwrap();
    assert!(!seen.is_empty());
    for m in &seen {
        assert_eq!(m.received_at, 1000, "{m:?}");
        assert!(m.sent_at >= before, "{m:?}");
        assert!(m.sender_verified, "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_cannot_be_read_names_its_sender_as_the_servers_word() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let _carol = client(&server, dir.path(), "carol").await;
    alice.send_text("bob", "first").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: first"]));
    alice.send_text("bob", "second").await.unwrap();
    // The operator corrupts the ciphertext and blames carol.
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).unwrap();
    let data: Vec<u8> = db
        .query_row("SELECT data FROM messages", [], |r| r.get(0))
        .unwrap();
    let mut corrupt = data.clone();
    *corrupt.last_mut().unwrap() ^= 1;
    db.execute(
        "UPDATE messages SET data = ?1, sender_user = 'carol'",
        [corrupt],
    )
    .unwrap();
    bob.sync().await.unwrap();
    let seen = bob.unshown().unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let notice = &seen[0];
    assert_eq!(notice.kind, MessageKind::Event);
    assert_eq!(notice.from.as_deref(), Some("carol"));
    assert!(!notice.sender_verified);
    assert!(
        notice.text.contains("as the server says"),
        "{}",
        notice.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_server_dropped_are_told_to_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut limits = Limits::default();
    limits.set("queue_messages=3").unwrap();
    let config = Config {
        limits,
        ..Config::default()
    };
    let server = Server::start_with(&dir.path().join("server"), config).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: one"]));
    for text in ["two", "three", "four", "five", "six"] {
        alice.send_text("bob", text).await.unwrap();
    }
    let seen = recv(&bob).await;
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen[0].starts_with("* the server dropped 2 message(s) for this device"),
        "{seen:?}"
    );
    // And alice's counter, which the server cannot change, says the same.
    assert!(
        seen[1].starts_with("* 2 message(s) from alice (device "),
        "{seen:?}"
    );
    assert_eq!(
        seen[2..],
        lines(&["alice: four", "alice: five", "alice: six"])
    );
    // Told once.
    alice.send_text("bob", "seven").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: seven"]));
}

/// The operator breaks the server's row of the (only) group, so that every send to it fails
/// with 500; calling what it returns mends the row.
fn break_the_group(server: &Server) -> impl FnOnce() {
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).unwrap();
    let next_seq: i64 = db
        .query_row("SELECT next_seq FROM groups", [], |r| r.get(0))
        .unwrap();
    db.execute("UPDATE groups SET next_seq = 'broken'", [])
        .unwrap();
    move || {
        db.execute("UPDATE groups SET next_seq = ?1", [next_seq])
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_failed_on_is_kept_and_sent_once_later_before_any_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: one"]));
    // The server fails on this group (a row it cannot read): 500 to the send.
    let mended = break_the_group(&server);
    let err = alice.send_text("bob", "two").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(sotto_proto::ErrorCode::Internal),
        "{err:?}"
    );
    // Meanwhile a new message to bob is refused: it would overtake "two", whose counter
    // comes first.
    let err = alice.send_text("bob", "three").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("an earlier message to this conversation is still waiting"),
        "{err:?}"
    );
    // Once it is mended, alice's next send sends what it kept first, once, then the new one:
    // bob reads both in order, with nothing missing and nothing refused.
    mended();
    alice.send_text("bob", "four").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: two", "alice: four"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_the_server_failed_on_is_replayed_with_the_group_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    let mended = break_the_group(&server);
    let err = alice
        .add_members("team", &["carol".into()])
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(sotto_proto::ErrorCode::Internal),
        "{err:?}"
    );
    mended();
    alice.sync().await.unwrap();
    assert_eq!(recv(&carol).await, lines(&["* alice added you"]));
    assert_eq!(carol.groups().unwrap()[0].name.as_deref(), Some("team"));
    assert_eq!(recv(&bob).await, lines(&["* alice added carol"]));
}
