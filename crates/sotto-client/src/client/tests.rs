//! Behaviour that needs a member to misbehave, or a second connection to the store: these
//! tests drive a real server and real clients, and reach into one client where an attacker
//! (a malicious member, another process on the device) would.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

#[path = "../../tests/harness/mod.rs"]
mod harness;

use super::*;
use harness::{Server, client, lines, recv, shown};

const XWING: u16 = 0x004D;

fn gid_of(c: &Client, name: &str) -> GroupId {
    c.group_by_name(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_info_without_a_name_cannot_turn_a_group_into_a_one_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    alice
        .create_group("team", &["bob".into(), "carol".into()])
        .await
        .unwrap();
    recv(&bob).await;
    recv(&carol).await;
    // Alice, a member, describes the group as her one-to-one conversation with bob.
    let gid = gid_of(&alice, "team");
    let unnamed = Content::GroupInfo { name: None };
    alice.send_content(&gid, &unnamed, now()).await.unwrap();
    assert_eq!(
        recv(&bob).await,
        lines(&["* alice tried to make this group a one-to-one conversation; ignored"])
    );
    assert_eq!(bob.groups().unwrap()[0].name.as_deref(), Some("team"));
    // So bob's message to alice goes to a conversation of their own, not to the group.
    bob.send_text("alice", "just for you").await.unwrap();
    recv(&carol).await;
    assert_eq!(recv(&alice).await, lines(&["bob: just for you"]));
    assert!(recv(&carol).await.is_empty());
    assert_ne!(
        bob.direct_conversation(&alice.me().user).unwrap(),
        Some(gid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_name_from_a_member_is_shown_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    let renamed = Content::GroupInfo {
        name: Some("crew".into()),
    };
    alice
        .send_content(&gid_of(&alice, "team"), &renamed, now())
        .await
        .unwrap();
    assert_eq!(
        recv(&bob).await,
        lines(&[r#"* alice renamed the group "team" to "crew""#])
    );
    assert_eq!(bob.groups().unwrap()[0].name.as_deref(), Some("crew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_a_one_to_one_conversation_that_holds_a_third_person() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    alice.send_text("bob", "hi").await.unwrap();
    recv(&bob).await;
    // Bob adds carol to his one-to-one conversation with alice.
    let gid = bob.direct_conversation(&alice.me().user).unwrap().unwrap();
    let carol_name = carol.me().user.clone();
    bob.change_members(&gid, &[carol_name], &[]).await.unwrap();
    assert_eq!(recv(&alice).await, lines(&["* bob added carol"]));
    let err = alice.send_text("bob", "secret").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Security(s) if s.contains("includes carol")),
        "{err:?}"
    );
    assert!(!recv(&carol).await.contains(&"alice: secret".to_owned()));
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
        sotto_server::storage::DeliveryStore::fetch(&storage, bob.me(), 100, usize::MAX)
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
async fn a_ghost_device_added_by_a_member_is_refused_by_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let _carol = client(&server, dir.path(), "carol").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;

    // The server plants a ghost device for carol, with KeyPackages; alice's client believes
    // a carol device list that includes it (alice is compromised, or lied to).
    let carol = Username::parse("carol").unwrap();
    let ghost = DeviceKey::generate(carol.clone());
    let provider = openmls_libcrux_crypto::Provider::new().unwrap();
    let kps = group::new_key_packages(&provider, &ghost, alice.suite, 2, false).unwrap();
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).unwrap();
    let ghost_id = ghost.addr().device.to_string();
    db.execute(
        "INSERT INTO devices (user, device, signature_key) VALUES ('carol', ?1, ?2)",
        params![ghost_id, ghost.public().to_vec()],
    )
    .unwrap();
    for kp in &kps.one_time {
        db.execute(
            "INSERT INTO key_packages (user, device, data) VALUES ('carol', ?1, ?2)",
            params![ghost_id, kp],
        )
        .unwrap();
    }
    let mut believed = alice.fetch_device_list(&carol).await.unwrap();
    believed.devices.push(ghost.entry("ghost", 1));
    alice.lists().insert(carol.clone(), Ok(believed));
    let gid = gid_of(&alice, "team");
    alice.change_members(&gid, &[carol], &[]).await.unwrap();

    // Bob checks every new leaf against carol's real list and refuses the commit (and so
    // cannot read what alice sends in the epoch it made).
    bob.sync().await.unwrap();
    let seen = shown(&bob);
    assert!(seen[0].starts_with("SECURITY: "), "{seen:?}");
    assert!(seen[0].contains(&ghost_id), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains("added")), "{seen:?}");
    let members: Vec<String> = bob
        .members("team")
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(members, lines(&["alice", "bob"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_before_server_ids_pins_one_at_its_first_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let pinned = alice.server_id().await.unwrap();
    alice
        .conn
        .execute(
            "DELETE FROM meta WHERE key IN ('server_id', 'insecure_http')",
            [],
        )
        .unwrap();
    drop(alice);
    let alice = harness::reopen(dir.path(), "alice");
    alice.send_text("bob", "still works").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: still works"]));
    let stored = store::meta(&alice.conn, "server_id").unwrap().unwrap();
    assert_eq!(stored, pinned.as_str().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_clock_past_what_sqlite_holds_is_clamped_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.create_group("team", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    let text = Content::Text {
        body: "from the far future".into(),
    };
    alice
        .send_content(&gid_of(&alice, "team"), &text, u64::MAX)
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let seen = bob.unshown().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sent_at, i64::MAX as u64);
}
