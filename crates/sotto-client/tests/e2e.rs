#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
//! End-to-end behaviour of Sotto: real server on loopback, real SQLite, real MLS, three or
//! more users. Every scenario runs on both ciphersuites.

mod harness;

use harness::{Server, client, lines, recv, reopen};
use sotto_client::ClientError;

const XWING: u16 = 0x004D;
const X25519: u16 = 0x0001;

macro_rules! on_both_suites {
    ($($name:ident),* $(,)?) => {
        mod xwing {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::XWING).await;
                }
            )*
        }
        mod x25519 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::X25519).await;
                }
            )*
        }
    };
}

on_both_suites!(
    one_to_one_both_ways,
    group_add_and_remove,
    offline_member_catches_up_across_epochs,
    concurrent_member_changes_both_land,
    server_restart_loses_nothing,
    client_restart_reloads_encrypted_store,
    concurrent_syncs_of_one_device_show_each_message_once,
    server_data_never_holds_plaintext,
    ghost_device_from_the_server_is_refused,
    one_device_in_two_processes_sends_alternately,
    send_accepted_before_a_crash_is_completed_once,
);

async fn one_to_one_both_ways(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;

    alice.send_text("bob", "hello bob").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: hello bob"]));
    bob.send_text("alice", "hi alice").await.unwrap();
    bob.send_text("alice", "how are you?").await.unwrap();
    assert_eq!(
        recv(&alice).await,
        lines(&["bob: hi alice", "bob: how are you?"])
    );
    alice.send_text("bob", "fine").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: fine"]));
    // Nothing is shown twice.
    assert!(recv(&alice).await.is_empty());
    assert!(recv(&bob).await.is_empty());
}

async fn group_add_and_remove(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;

    let events = alice.create_group("team", &["bob".into()]).await.unwrap();
    assert_eq!(events, lines(&["you added bob"]));
    alice.send_group_text("team", "welcome bob").await.unwrap();
    assert_eq!(
        recv(&bob).await,
        lines(&["* alice added you", "alice: welcome bob"])
    );

    let events = alice.add_members("team", &["carol".into()]).await.unwrap();
    assert_eq!(events, lines(&["you added carol"]));
    assert_eq!(recv(&bob).await, lines(&["* alice added carol"]));
    assert_eq!(recv(&carol).await, lines(&["* alice added you"]));
    carol.send_group_text("team", "hi all").await.unwrap();
    assert_eq!(recv(&alice).await, lines(&["carol: hi all"]));
    assert_eq!(recv(&bob).await, lines(&["carol: hi all"]));

    let members: Vec<String> = bob
        .members("team")
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(members, lines(&["alice", "bob", "carol"]));

    let events = alice.remove_members("team", &["bob".into()]).await.unwrap();
    assert_eq!(events, lines(&["you removed bob"]));
    alice.send_group_text("team", "bob is gone").await.unwrap();
    carol.send_group_text("team", "secret plans").await.unwrap();
    assert_eq!(
        recv(&carol).await,
        lines(&["* alice removed bob", "alice: bob is gone"])
    );
    assert_eq!(recv(&alice).await, lines(&["carol: secret plans"]));
    // Bob learns he was removed and receives nothing sent after it.
    assert_eq!(recv(&bob).await, lines(&["* alice removed you"]));
    assert!(recv(&bob).await.is_empty());
    let err = bob
        .send_group_text("team", "let me back")
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err:?}");
    let groups = bob.groups().unwrap();
    assert_eq!(groups.len(), 1);
    assert!(!groups[0].active);
}

async fn offline_member_catches_up_across_epochs(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    let dave = client(&server, dir.path(), "dave").await;

    alice.create_group("g", &["carol".into()]).await.unwrap();
    assert_eq!(recv(&carol).await, lines(&["* alice added you"]));
    // Carol is offline from here on, through six commits.
    alice.add_members("g", &["bob".into()]).await.unwrap();
    alice.send_group_text("g", "m1").await.unwrap();
    alice.add_members("g", &["dave".into()]).await.unwrap();
    bob.send_group_text("g", "m2").await.unwrap();
    alice.remove_members("g", &["bob".into()]).await.unwrap();
    dave.send_group_text("g", "m3").await.unwrap();
    alice.add_members("g", &["bob".into()]).await.unwrap();
    alice.remove_members("g", &["dave".into()]).await.unwrap();
    bob.send_group_text("g", "m4").await.unwrap();
    let epoch_now = alice.groups().unwrap()[0].epoch;
    assert!(epoch_now >= 6, "epoch {epoch_now}");

    assert_eq!(
        recv(&carol).await,
        lines(&[
            "* alice added bob",
            "alice: m1",
            "* alice added dave",
            "bob: m2",
            "* alice removed bob",
            "dave: m3",
            "* alice added bob",
            "* alice removed dave",
            "bob: m4",
        ])
    );
    carol.send_group_text("g", "back online").await.unwrap();
    assert_eq!(recv(&alice).await.last().unwrap(), "carol: back online");
}

/// Two members change the group at once. Whichever order the server takes them in (one may
/// get `409` and rebase, which `a_commit_that_lost_its_epoch_is_redone_from_the_outbox` makes
/// certain), both changes land and every member ends in the same group.
async fn concurrent_member_changes_both_land(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    let dave = client(&server, dir.path(), "dave").await;

    alice.create_group("g", &["bob".into()]).await.unwrap();
    recv(&bob).await;
    // Both commit at the same epoch; one wins, the other rebases and retries by itself.
    let (add_carol, add_dave) = (lines(&["carol"]), lines(&["dave"]));
    let (a, b) = tokio::join!(
        alice.add_members("g", &add_carol),
        bob.add_members("g", &add_dave),
    );
    assert_eq!(a.unwrap(), lines(&["you added carol"]));
    assert_eq!(b.unwrap(), lines(&["you added dave"]));
    for c in [&alice, &bob, &carol, &dave] {
        recv(c).await;
        let members: Vec<String> = c
            .members("g")
            .unwrap()
            .into_iter()
            .map(|m| m.user)
            .collect();
        assert_eq!(members, lines(&["alice", "bob", "carol", "dave"]));
    }
    dave.send_group_text("g", "hi from dave").await.unwrap();
    for c in [&alice, &bob, &carol] {
        assert_eq!(recv(c).await, lines(&["dave: hi from dave"]));
    }
}

async fn server_restart_loses_nothing(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let carol = client(&server, dir.path(), "carol").await;
    alice
        .create_group("g", &["bob".into(), "carol".into()])
        .await
        .unwrap();
    alice.send_group_text("g", "before").await.unwrap();
    assert_eq!(
        recv(&bob).await,
        lines(&["* alice added you", "alice: before"])
    );

    server.restart().await;
    alice.send_group_text("g", "after").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: after"]));
    assert_eq!(
        recv(&carol).await,
        lines(&["* alice added you", "alice: before", "alice: after"])
    );
}

async fn client_restart_reloads_encrypted_store(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.create_group("g", &["bob".into()]).await.unwrap();
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(
        recv(&bob).await,
        lines(&["* alice added you", "alice: one"])
    );
    drop(bob);
    drop(alice);

    let alice = reopen(dir.path(), "alice");
    let bob = reopen(dir.path(), "bob");
    assert!(recv(&bob).await.is_empty());
    alice.send_group_text("g", "two").await.unwrap();
    alice.send_text("bob", "three").await.unwrap();
    assert_eq!(recv(&bob).await, lines(&["alice: two", "alice: three"]));
    bob.send_text("alice", "four").await.unwrap();
    assert_eq!(recv(&alice).await, lines(&["bob: four"]));

    let wrong = sotto_client::Client::open(&dir.path().join("bob"), "wrong");
    assert!(matches!(wrong, Err(ClientError::Locked(_))));
}

async fn concurrent_syncs_of_one_device_show_each_message_once(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    for i in 0..10 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    // Two processes of the same device (say `recv --follow` and `send`) sync at once: the
    // server may hand both the same queue; each message must be stored once.
    let bob2 = reopen(dir.path(), "bob");
    let (r1, r2) = tokio::join!(bob.sync(), bob2.sync());
    r1.unwrap();
    r2.unwrap();
    let shown: Vec<String> = bob.unshown().unwrap().into_iter().map(|m| m.text).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(shown, expected);
}

async fn server_data_never_holds_plaintext(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    let markers = [
        "MARKER-1to1-7f3a9c",
        "MARKER-group-b81d22",
        "MARKER-GROUPNAME-c0ffee",
    ];
    alice.send_text("bob", markers[0]).await.unwrap();
    alice
        .create_group(markers[2], &["bob".into()])
        .await
        .unwrap();
    alice.send_group_text(markers[2], markers[1]).await.unwrap();
    // Bob stays offline, so everything is still queued on the server.
    server.stop().await;
    drop(bob);
    drop(alice);

    let mut scanned = 0;
    let mut stack = vec![
        dir.path().join("server"),
        dir.path().join("alice"),
        dir.path().join("bob"),
    ];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        scanned += bytes.len();
        for m in markers {
            assert!(
                !bytes.windows(m.len()).any(|w| w == m.as_bytes()),
                "{m} found in {}",
                p.display()
            );
        }
    }
    assert!(scanned > 10_000, "scanned only {scanned} bytes");

    server.restart().await;
    let bob = reopen(dir.path(), "bob");
    let seen = recv(&bob).await;
    assert!(seen.contains(&format!("alice: {}", markers[0])), "{seen:?}");
    assert!(seen.contains(&format!("alice: {}", markers[1])), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_group_and_unknown_user_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let err = alice.send_group_text("nope", "x").await.unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err:?}");
    let err = alice.send_text("nobody", "x").await.unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err:?}");
    let err = alice.send_text("alice", "x").await.unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err:?}");
    assert!(alice.groups().unwrap().is_empty());
}

/// Plays a compromised server: adds a device of its own to `user`'s account in the server
/// database, with a valid KeyPackage for it.
fn plant_ghost_device(server: &Server, user: &str, suite: u16) {
    use sotto_core::{DeviceKey, group, suite::ciphersuite};
    let ghost = DeviceKey::generate(sotto_proto::Username::parse(user).unwrap());
    let provider = openmls_libcrux_crypto::Provider::new().unwrap();
    let kps =
        group::new_key_packages(&provider, &ghost, ciphersuite(suite).unwrap(), 5, false).unwrap();
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).unwrap();
    let device = ghost.addr().device.to_string();
    db.execute(
        "INSERT INTO devices (user, device, signature_key) VALUES (?1, ?2, ?3)",
        rusqlite::params![user, device, ghost.public().to_vec()],
    )
    .unwrap();
    for kp in &kps.one_time {
        db.execute(
            "INSERT INTO key_packages (user, device, data) VALUES (?1, ?2, ?3)",
            rusqlite::params![user, device, kp],
        )
        .unwrap();
    }
}

async fn ghost_device_from_the_server_is_refused(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    plant_ghost_device(&server, "bob", suite);

    let err = alice.send_text("bob", "for bob only").await.unwrap_err();
    assert!(matches!(err, ClientError::Security(_)), "{err:?}");
    let err = alice.create_group("g", &["bob".into()]).await.unwrap_err();
    assert!(matches!(err, ClientError::Security(_)), "{err:?}");
    // Nothing reached bob (or the ghost); a retry is refused again, never sent to nobody.
    assert!(recv(&bob).await.is_empty());
    let err = alice.send_text("bob", "again").await.unwrap_err();
    assert!(matches!(err, ClientError::Security(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_device_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), XWING).await;
    let alice = client(&server, dir.path(), "alice").await;
    let _bob = client(&server, dir.path(), "bob").await;
    // The server rewrites bob's device list (renames his device) without his identity key.
    let db = rusqlite::Connection::open(server.data.join("sotto.db")).unwrap();
    let body: Vec<u8> = db
        .query_row(
            "SELECT device_list_body FROM accounts WHERE user = 'bob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let forged = String::from_utf8(body)
        .unwrap()
        .replace("\"cli\"", "\"evil\"");
    assert!(forged.contains("evil"));
    db.execute(
        "UPDATE accounts SET device_list_body = ?1 WHERE user = 'bob'",
        [forged.as_bytes()],
    )
    .unwrap();
    let err = alice.send_text("bob", "hi").await.unwrap_err();
    assert!(matches!(err, ClientError::Security(_)), "{err:?}");
}

async fn one_device_in_two_processes_sends_alternately(suite: u16) {
    // `recv --follow` in one terminal and `send` in another share one store: each must see
    // the other's group changes (no stale cached MLS state, no reused ratchet position).
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "start").await.unwrap();
    let bob2 = reopen(dir.path(), "bob");
    assert_eq!(recv(&bob).await, lines(&["alice: start"]));
    for i in 0..4 {
        bob.send_text("alice", &format!("from one {i}"))
            .await
            .unwrap();
        bob2.send_text("alice", &format!("from two {i}"))
            .await
            .unwrap();
    }
    let expected: Vec<String> = (0..4)
        .flat_map(|i| [format!("bob: from one {i}"), format!("bob: from two {i}")])
        .collect();
    assert_eq!(recv(&alice).await, expected);
}

async fn send_accepted_before_a_crash_is_completed_once(suite: u16) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), suite).await;
    let alice = client(&server, dir.path(), "alice").await;
    let bob = client(&server, dir.path(), "bob").await;
    alice.send_text("bob", "one").await.unwrap();
    alice.send_text("bob", "two").await.unwrap();
    // The process dies right after the server accepted "two": its local bookkeeping never
    // runs (no Drop), so the outbox still holds the send.
    std::mem::forget(alice);
    let alice = reopen(dir.path(), "alice");
    alice.sync().await.unwrap();
    alice.send_text("bob", "three").await.unwrap();
    assert_eq!(
        recv(&bob).await,
        lines(&["alice: one", "alice: two", "alice: three"])
    );
}
