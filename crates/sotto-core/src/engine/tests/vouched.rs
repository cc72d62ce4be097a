//! A lying delivery service against what members vouch for in their messages: a message
//! withheld (attack g), a message replayed (attack h), and users shown different logs
//! (attack d, caught by the roots members vouch for, whichever of two members sees its root
//! first).

use super::local::{Device, LocalServer, missing, queued, recv, shown, text, user};
use crate::Transport as _;
use crate::engine::outbox::OUTBOX_PATIENCE;
use crate::events::Event;
use crate::store::{ClientStore as _, HistoryItem, StoreTx as _};
use crate::{Content, Envelope, LogRoot};
use sotto_proto::api::SendRequest;
use std::sync::atomic::Ordering;

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
        matches!(&seen[..], [(_, HistoryItem::Security { reason, .. })]
            if reason.contains("its key is used up") && reason.contains("a replay, refused")),
        "{seen:?}"
    );
    // The conversation goes on.
    alice.send_text("bob", "that was all").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "that was all")]);
}

/// A message the server keeps failing on goes before any newer one to its group, for a day;
/// then it is given up (the user told), and its number shows as missing to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_messages_leave_in_counter_order_and_one_failing_for_a_day_is_given_up() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);

    server.failing_sends.store(true, Ordering::Relaxed);
    let e = alice.send_text("bob", "two").await.unwrap_err();
    assert_eq!(e.code(), Some(sotto_proto::ErrorCode::Internal), "{e:?}");
    let e = alice.send_text("bob", "three").await.unwrap_err();
    assert!(e.to_string().contains("still waiting"), "{e:?}");
    server.clock.advance(OUTBOX_PATIENCE + 1);
    alice.sync().await.unwrap();
    let told = shown(&alice);
    assert!(
        matches!(
            &told[..],
            [(_, HistoryItem::Event(Event::Undelivered { .. }))]
        ),
        "{told:?}"
    );

    server.failing_sends.store(false, Ordering::Relaxed);
    alice.send_text("bob", "four").await.unwrap();
    assert_eq!(
        recv(&bob).await,
        [missing(&alice, 1), text("alice", "four")]
    );
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

/// `from` sends `text` to `to` vouching for `root`, whatever it verified: a device shown
/// another log than the one `to` was shown (or a device that lies).
async fn send_vouching(from: &Device, to: &Device, text: &str, root: LogRoot) {
    let gid = from.direct_conversation(&to.me().user).unwrap().unwrap();
    let mut envelope = Envelope {
        sent_at: 1,
        counter: None,
        log_root: Some(root),
        content: Content::Text { body: text.into() },
    };
    let req = from.prepare_message(&gid, &mut envelope).unwrap();
    let response = from.post(&gid, &req).await.unwrap();
    from.accepted(&gid, req.client_id, envelope, response);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_vouching_for_another_root_than_the_one_this_device_verified_raises_one_alarm_naming_the_member()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    let forked = LogRoot {
        epoch: head(&bob),
        root: [0xee; 32],
    };
    send_vouching(&alice, &bob, "two", forked).await;
    send_vouching(&alice, &bob, "three", forked).await;

    let seen = recv(&bob).await;
    assert!(
        matches!(&seen[..], [
            (_, HistoryItem::Security { from: Some(from), reason }),
            two,
            three,
        ] if *from == user("alice") && is_split_view(reason)
            && reason.contains(&alice.me().to_string())
            && *two == text("alice", "two") && *three == text("alice", "three")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_at_an_epoch_a_member_vouched_another_root_for_raises_an_alarm_naming_the_member() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    // Alice vouches for the next epoch, which bob holds nothing for yet: kept, no alarm.
    let next = head(&bob) + 1;
    let forked = LogRoot {
        epoch: next,
        root: [0xee; 32],
    };
    send_vouching(&alice, &bob, "two", forked).await;
    // One too far ahead of bob is not kept: a member cannot fill his store with them.
    let far = head(&bob) + crate::engine::vouched::VOUCHED_AHEAD + 1;
    send_vouching(
        &alice,
        &bob,
        "far",
        LogRoot {
            epoch: far,
            ..forked
        },
    )
    .await;
    assert_eq!(
        recv(&bob).await,
        [text("alice", "two"), text("alice", "far")]
    );
    let kept = |epoch| bob.store().read(|tx| tx.log_root(epoch)).unwrap();
    assert!(kept(next).is_some_and(|k| k.vouched_by.as_ref() == Some(alice.me())));
    assert_eq!(kept(far), None);

    // Carol's account makes that epoch; the server's proof there carries its real root.
    let _carol = server.device("carol").await;
    bob.send_text("carol", "hi").await.unwrap();
    assert!(head(&bob) >= next);
    let alarms = bob.unseen_security_events().unwrap();
    assert!(
        matches!(&alarms[..], [a] if matches!(&a.record.item, HistoryItem::Security { from: Some(from), reason }
            if *from == user("alice") && is_split_view(reason)
                && reason.contains(&format!("epoch {next}")))),
        "{alarms:?}"
    );
}

/// Alice vouches, to bob, for roots at epochs that bob's device then passes without
/// verifying: the next three epochs, made after bob's last lookup. Returns them.
async fn epochs_bob_skips(
    server: &std::sync::Arc<LocalServer>,
    alice: &Device,
    bob: &Device,
) -> [u64; 3] {
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(bob).await, [text("alice", "one")]);
    let made = new_epochs(server, bob, ["carol", "dave", "erin"]).await;
    assert!(made[0] > head(bob));
    made
}

/// One new epoch for each account made, in order.
async fn new_epochs<const N: usize>(
    server: &std::sync::Arc<LocalServer>,
    any: &Device,
    names: [&str; N],
) -> [u64; N] {
    let mut made = [0; N];
    for (i, name) in names.into_iter().enumerate() {
        let _ = server.device(name).await;
        made[i] = any
            .transport()
            .kt()
            .publish_pending()
            .await
            .unwrap()
            .unwrap();
    }
    made
}

/// Bob's vouched roots not compared with the log yet.
fn unchecked(bob: &Device) -> Vec<u64> {
    let rows = bob
        .store()
        .read(|tx| tx.unchecked_vouched_roots(u64::MAX, 100))
        .unwrap();
    rows.into_iter().map(|(epoch, _)| epoch).collect()
}

/// The reasons of the security events `device` has not shown, sorted.
fn alarms(device: &Device) -> Vec<String> {
    let mut reasons: Vec<String> = device
        .unseen_security_events()
        .unwrap()
        .into_iter()
        .map(|e| match e.record.item {
            HistoryItem::Security { reason, .. } => reason,
            other => panic!("{other:?}"),
        })
        .collect();
    reasons.sort();
    reasons
}

/// The log's signed checkpoint of `epoch`, as the server records it.
async fn recorded(device: &Device, epoch: u64) -> sotto_proto::kt::EpochResponse {
    device
        .transport()
        .kt()
        .recorded(epoch, false)
        .await
        .unwrap()
        .unwrap()
}

fn root_of(found: &sotto_proto::kt::EpochResponse) -> [u8; 32] {
    found.root_hash.as_slice().try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_vouched_for_at_an_epoch_this_device_skipped_is_compared_once_with_the_logs_checkpoint()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let [forked, honest, _] = epochs_bob_skips(&server, &alice, &bob).await;
    let real = root_of(&recorded(&bob, honest).await);
    send_vouching(
        &alice,
        &bob,
        "two",
        LogRoot {
            epoch: forked,
            root: [0xee; 32],
        },
    )
    .await;
    send_vouching(
        &alice,
        &bob,
        "three",
        LogRoot {
            epoch: honest,
            root: real,
        },
    )
    .await;
    // Bob's sync takes both while his newest epoch is older than theirs, then looks his own
    // account up at the log's newest (past both) and compares them with the log.
    bob.sync().await.unwrap();
    assert!(head(&bob) > honest);
    let alarms = bob.unseen_security_events().unwrap();
    assert!(
        matches!(&alarms[..], [a] if matches!(&a.record.item, HistoryItem::Security { from: Some(from), reason }
            if *from == user("alice") && is_split_view(reason)
                && reason.contains(&format!("at epoch {forked}"))
                && reason.contains("signed checkpoint"))),
        "{alarms:?}"
    );
    // Each is compared once: nothing waits, a later sync adds nothing, and without
    // witnesses the matching root stays the member's word, not this device's.
    assert_eq!(unchecked(&bob), [0u64; 0]);
    bob.sync().await.unwrap();
    assert_eq!(bob.unseen_security_events().unwrap().len(), 1);
    let kept = bob.store().read(|tx| tx.log_root(honest)).unwrap().unwrap();
    assert_eq!(kept.vouched_by.as_ref(), Some(alice.me()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vouched_epoch_the_server_hides_or_signs_badly_raises_an_alarm_for_each_and_the_sync_succeeds()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let [hidden, garbled, later] = epochs_bob_skips(&server, &alice, &bob).await;
    for epoch in [hidden, garbled, later] {
        let root = root_of(&recorded(&bob, epoch).await);
        send_vouching(&alice, &bob, "vouching", LogRoot { epoch, root }).await;
    }
    // The server says it never recorded one epoch, and signs another badly.
    bob.transport()
        .lie_about_epoch(hidden, Err(sotto_proto::ErrorCode::NotFound));
    let mut bad = recorded(&bob, garbled).await;
    bad.checkpoint = bad.checkpoint.replacen('\n', "\nX", 1);
    bob.transport().lie_about_epoch(garbled, Ok(bad));

    bob.sync().await.unwrap();
    let reasons = alarms(&bob);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains(&format!("vouched for key-transparency epoch {hidden}")));
    assert!(reasons[0].contains("hiding part of its log"), "{reasons:?}");
    assert!(
        reasons[1].contains(&format!("checkpoint for epoch {garbled}")),
        "{reasons:?}"
    );
    assert_eq!(unchecked(&bob), [0u64; 0], "each settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_claiming_its_records_start_later_can_hide_only_epochs_before_this_device_first_looked()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let [early] = new_epochs(&server, &alice, ["carol"]).await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "one")]);
    assert!(head(&bob) > early, "bob first looked after it");
    let [later, newest] = new_epochs(&server, &bob, ["dave", "erin"]).await;
    // The server says its records start after `later` and it has neither epoch.
    let mut claims = recorded(&bob, newest).await;
    claims.first = later + 1;
    bob.transport().lie_about_epoch(newest, Ok(claims));
    for epoch in [early, later] {
        bob.transport()
            .lie_about_epoch(epoch, Err(sotto_proto::ErrorCode::NotFound));
        let root = root_of(&recorded(&bob, epoch).await);
        send_vouching(&alice, &bob, "vouching", LogRoot { epoch, root }).await;
    }
    bob.sync().await.unwrap();
    assert_eq!(head(&bob), newest);
    // Before bob first looked, bob cannot tell: settled, no alarm. After it, bob verified
    // a checkpoint the server records, so its records start no later: hidden.
    let reasons = alarms(&bob);
    assert!(
        matches!(&reasons[..], [r] if r.contains(&format!("epoch {later}, which the server says it never recorded"))),
        "{reasons:?}"
    );
    assert_eq!(unchecked(&bob), [0u64; 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vouched_epoch_the_server_will_not_show_raises_an_alarm_only_after_three_tries_hours_apart_over_a_day()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let [withheld, honest, _] = epochs_bob_skips(&server, &alice, &bob).await;
    bob.transport()
        .lie_about_epoch(withheld, Err(sotto_proto::ErrorCode::Internal));
    for epoch in [withheld, honest] {
        let root = root_of(&recorded(&bob, epoch).await);
        send_vouching(&alice, &bob, "vouching", LogRoot { epoch, root }).await;
    }
    // The server fails for one epoch: it waits, and the one after it is still compared.
    bob.sync().await.unwrap();
    assert_eq!(alarms(&bob), [""; 0]);
    assert_eq!(unchecked(&bob), [withheld]);
    // Asleep for two days, then failures in quick succession (as `recv --follow` meets
    // them): they count as one more try, and two are not enough.
    server.clock.advance(2 * 24 * 3600);
    for _ in 0..3 {
        bob.sync().await.unwrap();
    }
    assert_eq!(alarms(&bob), [""; 0]);
    assert_eq!(unchecked(&bob), [withheld]);
    // The third, an hour later and more than a day after the first: an alarm, and the
    // epoch is settled.
    server.clock.advance(3600);
    bob.sync().await.unwrap();
    let reasons = alarms(&bob);
    assert!(
        matches!(&reasons[..], [r] if r.contains(&format!("the server has not shown key-transparency epoch {withheld}"))),
        "{reasons:?}"
    );
    assert_eq!(unchecked(&bob), [0u64; 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_checkpoint_this_devices_witnesses_cosigned_makes_the_logs_root_verified_in_place_of_a_members()
 {
    use ed25519_dalek::Signer as _;
    use sotto_proto::checkpoint::{
        WitnessKey, checkpoint_body, cosignature_line, cosigned_message, origin_of, witness_vkey,
    };
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let [bare, cosigned, forked] = epochs_bob_skips(&server, &alice, &bob).await;
    // As a message from alice leaves them (the last with another root than the log's); a
    // send (not a sync) then takes bob past them.
    for epoch in [bare, cosigned, forked] {
        let root = if epoch == forked {
            [0xee; 32]
        } else {
            root_of(&recorded(&bob, epoch).await)
        };
        bob.store()
            .transaction(|tx| tx.put_log_root(epoch, &root, Some(alice.me())))
            .unwrap();
    }
    let _ = new_epochs(&server, &bob, ["frank"]).await;
    bob.send_text("alice", "next").await.unwrap();
    assert!(head(&bob) > forked);
    // From now on bob requires one witness; the server shows its cosignature on one epoch.
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let vkey = witness_vkey("witness-1", &key.verifying_key());
    let policy = crate::engine::WitnessPolicy::new(std::slice::from_ref(&vkey), None, 600)
        .unwrap()
        .unwrap();
    bob.store()
        .transaction(|tx| {
            tx.set_setting(
                crate::store::Setting::KtWitnesses,
                &policy.to_setting().unwrap(),
            )
        })
        .unwrap();
    let origin = origin_of(&server_checkpoint_key(&bob).await).to_owned();
    let witness = WitnessKey::parse(&vkey).unwrap();
    for epoch in [cosigned, forked] {
        let mut shown = recorded(&bob, epoch).await;
        let body = checkpoint_body(&origin, epoch, &root_of(&shown)).unwrap();
        let signature = key.sign(&cosigned_message(1, &body)).to_bytes();
        shown
            .checkpoint
            .push_str(&cosignature_line(&witness, 1, &signature));
        shown.checkpoint.push('\n');
        bob.transport().lie_about_epoch(epoch, Ok(shown));
    }

    bob.check_vouched_roots().await.unwrap();
    let kept = |epoch| bob.store().read(|tx| tx.log_root(epoch)).unwrap().unwrap();
    assert_eq!(kept(cosigned).vouched_by, None, "witnessed: verified");
    assert_eq!(
        kept(bare).vouched_by.as_ref(),
        Some(alice.me()),
        "not witnessed"
    );
    // Alice's other root alarms, naming her, and the log's witnessed root takes its place.
    let reasons = alarms(&bob);
    assert!(
        matches!(&reasons[..], [r] if is_split_view(r) && r.contains(&format!("at epoch {forked}"))),
        "{reasons:?}"
    );
    let log_root = root_of(&recorded(&bob, forked).await);
    assert_eq!(
        (kept(forked).root, kept(forked).vouched_by),
        (log_root, None)
    );
}

async fn server_checkpoint_key(device: &Device) -> String {
    device.transport().config().await.unwrap().kt_checkpoint_key
}
