//! A compelled server: its operator edits the storage or lies in its answers, and the
//! devices must catch it. Each test asserts what the affected devices see, and that nothing
//! reaches the attacker.

use super::local::{LocalServer, forged_account};
use crate::ClientError;
use crate::store::HistoryItem;
use sotto_proto::Username;
use sotto_proto::api::ValidRegistration;
use sotto_proto::device_list::parse_verifying_key;
use sotto_server::storage::{AccountStore as _, ServerStore as _};
use std::time::Duration;

fn user(name: &str) -> Username {
    Username::parse(name).unwrap()
}

fn security_reason(e: &ClientError) -> &str {
    match e {
        ClientError::Security(reason) => reason,
        other => panic!("not a security failure: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_swapped_before_first_contact_but_not_in_the_log_is_refused_and_gets_nothing() {
    let server = LocalServer::new().await;
    let erin = server.device("erin").await;
    let _bob = server.device("bob").await;
    erin.sync().await.unwrap();
    // Before erin's first message, the operator swaps bob's account for one it holds the
    // keys of, and leaves the log alone.
    let storage = erin.transport().storage();
    storage.replace_account(&forged_account("bob"), false).await;
    let before = storage.stats().await.unwrap();

    let e = erin.send_text("bob", "for bob only").await.unwrap_err();
    let reason = security_reason(&e);
    assert!(reason.contains("bob"), "{reason}");
    assert!(reason.contains("key-transparency log"), "{reason}");
    // Nothing was sent or claimed: the attacker's KeyPackage is still there.
    let after = storage.stats().await.unwrap();
    assert_eq!(after.messages, before.messages);
    assert_eq!(after.key_packages, before.key_packages);
    assert_eq!(after.groups, before.groups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_published_for_an_account_by_someone_else_raise_one_alarm_on_its_device() {
    let server = LocalServer::new().await;
    let bob = server.device("bob").await;
    bob.sync().await.unwrap();
    assert!(bob.unshown().unwrap().is_empty());
    // The operator swaps bob's account and publishes the swap in the log.
    let storage = bob.transport().storage();
    storage.replace_account(&forged_account("bob"), true).await;

    let e = bob.sync().await.unwrap_err();
    let reason = security_reason(&e).to_owned();
    assert!(reason.contains("none of your devices made"), "{reason}");
    let alarms: Vec<_> = bob
        .unshown()
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.record.item, HistoryItem::Security { .. }))
        .collect();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    // Kept until shown, raised once: not again at a later epoch (carol makes one).
    let _carol = server.device("carol").await;
    bob.sync().await.unwrap();
    assert_eq!(bob.unshown().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_published_for_an_account_and_then_reverted_between_its_syncs_still_raise_an_alarm() {
    let server = LocalServer::new().await;
    let bob = server.device("bob").await;
    bob.sync().await.unwrap();
    let storage = bob.transport().storage();
    let real = storage.account(&user("bob")).await.unwrap().unwrap();
    let key = parse_verifying_key(&real.identity_key).unwrap();
    let device_list = real.signed_device_list().verify(&key).unwrap();
    let real = ValidRegistration {
        identity_key: real.identity_key,
        device_list,
        key_packages: Vec::new(),
        last_resort: b"last resort".to_vec(),
    };
    // Between two of bob's syncs, the log holds the operator's keys for one epoch (others
    // may trust them then), and bob's own again after.
    storage.replace_account(&forged_account("bob"), true).await;
    bob.transport()
        .kt()
        .publish_pending()
        .await
        .unwrap()
        .unwrap();
    storage.replace_account(&real, true).await;
    bob.transport()
        .kt()
        .publish_pending()
        .await
        .unwrap()
        .unwrap();

    let e = bob.sync().await.unwrap_err();
    let reason = security_reason(&e).to_owned();
    assert!(reason.contains("at version 3"), "{reason}");
    assert!(reason.contains("revision 1 of the device"), "{reason}");
    bob.sync().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_key_published_for_a_contact_is_refused_and_shown_once_in_each_conversation_with_them()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let _carol = server.device("carol").await;
    alice.send_text("bob", "hi").await.unwrap();
    alice
        .create_group("team", &["bob".into(), "carol".into()])
        .await
        .unwrap();
    alice
        .create_group("others", &["carol".into()])
        .await
        .unwrap();
    bob.sync().await.unwrap();
    let shown = |d: &super::local::Device| {
        if let Some(last) = d.unshown().unwrap().last() {
            d.mark_shown(last.position).unwrap();
        }
    };
    shown(&alice);
    let storage = alice.transport().storage();
    storage.replace_account(&forged_account("bob"), true).await;
    // Bob's own device alarms; alice, who pinned bob's key, refuses the new one when she
    // next fetches his devices.
    security_reason(&bob.sync().await.unwrap_err());
    alice.forget_lists();
    let before = storage.stats().await.unwrap();
    let e = alice.send_text("bob", "still you?").await.unwrap_err();
    let reason = security_reason(&e).to_owned();
    assert!(reason.contains("identity key of bob changed"), "{reason}");

    // Shown in both conversations with bob (not in the one without him), from bob, once.
    let notices = |d: &super::local::Device| {
        let mut seen: Vec<(Option<String>, Option<String>)> = d
            .unseen_security_events()
            .unwrap()
            .into_iter()
            .map(|e| match e.record.item {
                HistoryItem::Security { from, reason: r } => {
                    assert_eq!(r, reason);
                    assert_eq!(from, Some(user("bob")));
                    (e.peer, e.group_name)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        seen.sort();
        seen
    };
    let expected = [
        (None, Some("team".to_owned())),
        (Some("bob".to_owned()), None),
    ];
    assert_eq!(notices(&alice), expected);
    // Seeing the change again, in either conversation, adds nothing; the conversation
    // without bob is untouched.
    alice.forget_lists();
    let e = alice.send_group_text("team", "bob?").await.unwrap_err();
    assert_eq!(security_reason(&e), reason);
    alice.forget_lists();
    security_reason(&alice.send_text("bob", "again").await.unwrap_err());
    assert_eq!(notices(&alice), expected);
    let after = storage.stats().await.unwrap();
    assert_eq!(
        after.messages, before.messages,
        "nothing sent to bob's new key"
    );
    alice.send_group_text("others", "carol only").await.unwrap();

    // Accepted, it is pinned; the notices stay in the history.
    alice.accept_identity(&user("bob")).await.unwrap();
    alice.forget_lists();
    alice.contact_status(&user("bob")).await.unwrap();
    assert_eq!(notices(&alice), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_from_an_older_epoch_or_with_a_forged_root_is_refused() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    alice.sync().await.unwrap();
    let kt = alice.transport().kt();
    let old = kt
        .lookup(&user("alice"), None, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let _bob = server.device("bob").await;
    let _carol = server.device("carol").await;
    // Alice sees a newer epoch (bob and carol published).
    alice.send_text("bob", "hi").await.unwrap();
    alice.sync().await.unwrap();

    // Replaying alice's own older lookup: the log cannot go back.
    alice.transport().lie_about_log(&user("alice"), old.clone());
    let e = alice.sync().await.unwrap_err();
    assert!(security_reason(&e).contains("cannot go back"), "{e:?}");

    // A root that is not the one the proof was made for.
    let mut forged = kt
        .lookup(&user("alice"), None, 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let mut root = forged.root_hash.as_slice().to_vec();
    root[0] ^= 1;
    forged.root_hash = root.into();
    alice.transport().lie_about_log(&user("alice"), forged);
    let e = alice.sync().await.unwrap_err();
    assert!(security_reason(&e).contains("does not verify"), "{e:?}");
}
