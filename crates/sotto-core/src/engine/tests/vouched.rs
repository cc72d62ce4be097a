//! A lying delivery service against what members vouch for in their messages: a message
//! withheld (attack g), a message replayed (attack h), and users shown different logs
//! (attack d, caught by the roots members vouch for).

use super::local::{Device, LocalServer, missing, recv, shown, text, user};
use crate::ClientError;
use crate::Transport as _;
use crate::store::{ClientStore as _, HistoryItem, StoreTx as _};
use sotto_proto::api::{QueuedMessage, SendRequest};
use sotto_proto::limits::MAX_FETCH_BYTES;
use sotto_server::storage::{DeliveryStore as _, ServerStore as _};

/// What the server holds in `device`'s queue, as its operator sees it.
async fn queued(device: &Device) -> Vec<QueuedMessage> {
    let storage = device.transport().storage();
    storage
        .fetch(device.me(), 0, 100, MAX_FETCH_BYTES)
        .await
        .unwrap()
        .messages
}

/// The newest key-transparency epoch `device` verified.
fn head(device: &Device) -> u64 {
    device.log_head().unwrap().unwrap()
}

/// Whether `reason` is the alarm of a server showing its users different logs.
fn is_split_view(reason: &str) -> bool {
    reason.contains("the server is showing its users different logs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_withholds_shows_as_missing_with_the_next_one_from_its_sender() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    alice.send_text("bob", "two").await.unwrap();
    alice.send_text("bob", "three").await.unwrap();
    // The operator deletes "two" and "three" from bob's queue.
    let withheld: Vec<u64> = queued(&bob).await.iter().map(|m| m.id).collect();
    assert_eq!(withheld.len(), 2);
    sotto_server::delivery::ack(bob.transport().storage(), bob.me(), &withheld)
        .await
        .unwrap();

    alice.send_text("bob", "four").await.unwrap();
    assert_eq!(
        recv(&bob).await,
        [missing(&alice, 2), text("alice", "four")]
    );
    // Told once: the count goes on from there.
    alice.send_text("bob", "five").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "five")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_queues_again_is_refused_as_a_replay() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "pay carol 100").await.unwrap();
    let original = queued(&bob).await.pop().unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "pay carol 100")]);
    // The operator queues the same ciphertext for bob again, as a new message from alice.
    let token = alice.token().await.unwrap();
    let again = SendRequest {
        client_id: hex::encode(rand::random::<[u8; 16]>()),
        message: original.message.clone(),
        recipients: vec![bob.me().clone()],
        to_roster: false,
        roster: None,
        welcome: None,
    };
    alice
        .transport()
        .send(&token, &original.group_id, &again)
        .await
        .unwrap();

    let seen = recv(&bob).await;
    assert!(
        matches!(&seen[..], [(_, HistoryItem::Security { reason, .. })] if reason.contains("a replay, refused")),
        "{seen:?}"
    );
    // The conversation goes on.
    alice.send_text("bob", "that was all").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "that was all")]);
}

/// MLS itself refuses a ciphertext it decrypted before; a message whose counter is not past
/// the last one seen (a device whose store went back, as after a restore) is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_counter_is_not_past_the_last_one_seen_is_refused_as_a_replay() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    let gid = bob.direct_conversation(&user("alice")).unwrap().unwrap();
    bob.store()
        .transaction(|tx| tx.set_counter(&gid, alice.me(), 100))
        .unwrap();
    alice.send_text("bob", "two").await.unwrap();
    let seen = recv(&bob).await;
    assert!(
        matches!(&seen[..], [(_, HistoryItem::Security { reason, .. })]
            if reason.contains("is not past 100") && reason.contains("a replay, refused")),
        "{seen:?}"
    );
}

/// Bob was shown a log of the server's own for the coming epochs (planted in his store as if
/// he had verified it); alice, shown the real one, vouches for it in her next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_vouching_for_another_root_than_this_devices_for_an_epoch_raises_an_alarm() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    let from = head(&alice).max(head(&bob)) + 1;
    bob.store()
        .transaction(|tx| {
            for epoch in from..from + 20 {
                tx.put_log_root(epoch, &[0xee; 32])?;
            }
            Ok::<_, ClientError>(())
        })
        .unwrap();
    // Alice moves to a newer epoch (she looks carol up), then writes to bob.
    let _carol = server.device("carol").await;
    alice.send_text("carol", "hi").await.unwrap();
    assert!((from..from + 20).contains(&head(&alice)));
    alice.send_text("bob", "two").await.unwrap();

    // Bob reads the message, with an alarm naming alice as the one who vouched; his own
    // lookup at that epoch, which follows, is refused as well.
    let e = bob.sync().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Security(r) if is_split_view(r)),
        "{e:?}"
    );
    let seen = shown(&bob);
    assert!(
        matches!(&seen[..], [
            (_, HistoryItem::Security { from: Some(from), reason }),
            message,
            (_, HistoryItem::Security { from: None, reason: own }),
        ] if *from == user("alice") && is_split_view(reason) && is_split_view(own)
            && *message == text("alice", "two")),
        "{seen:?}"
    );
}

/// The other way round: alice vouched for a root, and the server then shows bob another one
/// for that epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_at_an_epoch_a_member_vouched_another_root_for_is_refused() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    let from = head(&bob) + 1;
    bob.store()
        .transaction(|tx| {
            for epoch in from..from + 20 {
                tx.put_log_root(epoch, &[0xee; 32])?;
            }
            Ok::<_, ClientError>(())
        })
        .unwrap();
    let _carol = server.device("carol").await;
    let before = bob.transport().storage().stats().await.unwrap();
    let e = bob.send_text("carol", "hi").await.unwrap_err();
    let ClientError::Security(reason) = e else {
        panic!("not refused as a security failure: {e:?}");
    };
    assert!(is_split_view(&reason), "{reason}");
    let after = bob.transport().storage().stats().await.unwrap();
    assert_eq!(after.messages, before.messages, "nothing was sent");
}
