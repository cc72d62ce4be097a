//! One test suite for every storage backend: what the traits promise, checked through the
//! traits and the delivery rules alone. A backend joins with one line at the bottom.

mod accounts;
mod backends;
mod devices;
mod group_commit;
mod kt;
mod queue;
mod roster;

pub use {accounts::*, devices::*, group_commit::*, kt::*, queue::*, roster::*};

use super::{Stats, Storage};
use crate::delivery::{self, QueueQuota, Submitted};
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::api::{QueuedKind, SendRequest, ValidRegistration, ValidSend, WelcomeOut};
use sotto_proto::device_list::parse_verifying_key;
use sotto_proto::framing::{Framing, MessageKind};
use sotto_proto::{Bytes, DeviceAddr, GroupId, Username};
use std::sync::Arc;

const ROOMY: QueueQuota = QueueQuota {
    messages: 1000,
    bytes: 1 << 30,
};

/// A registration of a fresh account `name` with `one_time` one-time KeyPackages. The
/// storage never parses KeyPackages, so they are labelled bytes here.
fn registration(name: &str, one_time: usize) -> (DeviceAddr, ValidRegistration) {
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(Username::parse(name).expect("a valid name"));
    let signed = identity.sign_device_list(&device.first_device_list("test", 1));
    let key = parse_verifying_key(&identity.public()).expect("a valid key");
    let registration = ValidRegistration {
        identity_key: identity.public().to_vec(),
        device_list: signed.verify(&key).expect("a list it signed"),
        key_packages: (0..one_time)
            .map(|i| format!("{name}-kp-{i}").into_bytes())
            .collect(),
        last_resort: format!("{name}-last-resort").into_bytes(),
    };
    (device.addr().clone(), registration)
}

async fn account(s: &dyn Storage, name: &str) -> DeviceAddr {
    let (addr, reg) = registration(name, 2);
    assert!(s.create_account(&reg, 1).await.expect("stored"));
    addr
}

fn group(n: u8) -> GroupId {
    GroupId::from_bytes(&[n; 16]).expect("a valid id")
}

struct Message {
    group: GroupId,
    epoch: u64,
    kind: MessageKind,
    n: usize,
    size: usize,
    recipients: Vec<DeviceAddr>,
    to_roster: bool,
    roster: Option<Vec<DeviceAddr>>,
    welcome: Option<Vec<DeviceAddr>>,
}

fn send(group: &GroupId, n: usize, recipients: &[&DeviceAddr]) -> Message {
    Message {
        group: group.clone(),
        epoch: 0,
        kind: MessageKind::Application,
        n,
        size: 33,
        recipients: recipients.iter().map(|&d| d.clone()).collect(),
        to_roster: false,
        roster: None,
        welcome: None,
    }
}

impl Message {
    /// The send as validation would pass it on. The rules never look inside a message, so
    /// the message is `size` bytes of filler rather than real MLS.
    fn valid(&self) -> ValidSend {
        ValidSend {
            request: SendRequest {
                client_id: format!("{:032}", self.n),
                message: Bytes(vec![0x5a; self.size]),
                recipients: self.recipients.clone(),
                to_roster: self.to_roster,
                roster: self.roster.clone(),
                welcome: self.welcome.clone().map(|recipients| WelcomeOut {
                    message: Bytes(b"welcome".to_vec()),
                    recipients,
                }),
            },
            framing: Framing {
                group_id: self.group.clone(),
                epoch: self.epoch,
                kind: self.kind,
            },
        }
    }

    async fn submit(&self, s: &dyn Storage, from: &DeviceAddr, quota: QueueQuota) -> Submitted {
        delivery::submit(s, from, &self.valid(), 100, quota)
            .await
            .expect("storage works")
    }

    /// Submits; it must be accepted. Returns the message's id.
    async fn accepted(&self, s: &dyn Storage, from: &DeviceAddr) -> u64 {
        match self.submit(s, from, ROOMY).await {
            Submitted::Accepted { response, .. } => response.id,
            other => panic!("refused: {other:?}"),
        }
    }
}

async fn queued(s: &dyn Storage, d: &DeviceAddr) -> Vec<u64> {
    let q = s.fetch(d, 0, 1000, usize::MAX).await.expect("fetched");
    q.messages.iter().map(|m| m.id).collect()
}

async fn stats(s: &dyn Storage) -> Stats {
    s.stats().await.expect("stats")
}

pub async fn messages_get_sequence_numbers_and_a_commit_moves_the_epoch(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let g = group(1);
    let first = send(&g, 0, &[&bob]);
    let Submitted::Accepted { response, wake } = first.submit(&*s, &alice, ROOMY).await else {
        panic!("the creator may send");
    };
    assert_eq!((response.seq, response.epoch), (1, 0));
    assert_eq!(wake, std::slice::from_ref(&bob));
    let mut commit = send(&g, 1, &[&bob]);
    commit.kind = MessageKind::Commit;
    commit.roster = Some(vec![alice.clone(), bob.clone()]);
    let Submitted::Accepted { response, .. } = commit.submit(&*s, &alice, ROOMY).await else {
        panic!("a commit at the group's epoch");
    };
    assert_eq!((response.seq, response.epoch), (2, 1));
    // A second commit for epoch 0 lost the race.
    let mut late = send(&g, 2, &[&bob]);
    late.kind = MessageKind::Commit;
    late.roster = Some(vec![alice.clone()]);
    assert_eq!(
        late.submit(&*s, &alice, ROOMY).await,
        Submitted::EpochConflict(1)
    );
    // Bob is in the roster now, and may send at epoch 1.
    let mut reply = send(&g, 0, &[&alice]);
    reply.epoch = 1;
    let Submitted::Accepted { response, .. } = reply.submit(&*s, &bob, ROOMY).await else {
        panic!("a member may send");
    };
    assert_eq!((response.seq, response.epoch), (3, 1));
}

pub async fn only_roster_members_may_send(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let mallory = account(&*s, "mallory").await;
    let g = group(2);
    send(&g, 0, &[]).accepted(&*s, &alice).await;
    let before = stats(&*s).await;
    assert_eq!(
        send(&g, 0, &[&alice]).submit(&*s, &mallory, ROOMY).await,
        Submitted::NotAMember
    );
    assert_eq!(stats(&*s).await, before, "a refusal changes nothing");
}

pub async fn a_send_to_an_unknown_device_is_refused_whole(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let ghost = DeviceAddr {
        user: Username::parse("ghost").unwrap(),
        device: bob.device,
    };
    let before = stats(&*s).await;
    assert_eq!(
        send(&group(3), 0, &[&bob, &ghost])
            .submit(&*s, &alice, ROOMY)
            .await,
        Submitted::UnknownRecipient
    );
    assert_eq!(stats(&*s).await, before, "not even the group was created");
}

pub async fn a_repeated_client_id_returns_the_first_answer_and_stores_nothing(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let m = send(&group(4), 7, &[&bob]);
    let first = m.submit(&*s, &alice, ROOMY).await;
    let before = stats(&*s).await;
    let Submitted::Accepted { response, wake } = m.submit(&*s, &alice, ROOMY).await else {
        panic!("a repeat is accepted");
    };
    let Submitted::Accepted {
        response: original, ..
    } = first
    else {
        panic!("accepted");
    };
    assert_eq!(response, original);
    assert!(wake.is_empty(), "nobody is woken twice");
    assert_eq!(stats(&*s).await, before);
    assert_eq!(queued(&*s, &bob).await, [original.id]);
}

pub async fn a_message_is_stored_once_and_deleted_when_every_queue_acked_it(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let carol = account(&*s, "carol").await;
    // The sender and a repeated recipient are left out of the fan-out.
    let id = send(&group(5), 0, &[&bob, &carol, &bob, &alice])
        .accepted(&*s, &alice)
        .await;
    let counts = stats(&*s).await;
    assert_eq!((counts.messages, counts.queue_entries), (1, 2));
    assert!(queued(&*s, &alice).await.is_empty());
    assert_eq!(delivery::ack(&*s, &bob, &[id, id + 100]).await.unwrap(), 1);
    assert_eq!(delivery::ack(&*s, &bob, &[id]).await.unwrap(), 0);
    assert_eq!(stats(&*s).await.messages, 1, "carol has not acked");
    assert_eq!(delivery::ack(&*s, &carol, &[id]).await.unwrap(), 1);
    assert_eq!(stats(&*s).await.messages, 0);
    // A message for nobody is ordered but not stored, and ids are never reused.
    let lone = send(&group(5), 1, &[]).accepted(&*s, &alice).await;
    assert!(lone > id);
    assert_eq!(stats(&*s).await.messages, 0);
}

pub async fn a_welcome_is_queued_for_the_devices_a_commit_adds(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let g = group(6);
    let mut commit = send(&g, 0, &[]);
    commit.kind = MessageKind::Commit;
    commit.roster = Some(vec![alice.clone(), bob.clone()]);
    commit.welcome = Some(vec![bob.clone()]);
    let Submitted::Accepted { wake, .. } = commit.submit(&*s, &alice, ROOMY).await else {
        panic!("accepted");
    };
    assert_eq!(wake, std::slice::from_ref(&bob));
    let q = s.fetch(&bob, 0, 10, usize::MAX).await.unwrap();
    assert_eq!(q.messages.len(), 1);
    assert_eq!(q.messages[0].kind, QueuedKind::Welcome);
    assert_eq!(q.messages[0].group_id, g);
    assert_eq!(q.messages[0].message.as_slice().to_vec(), b"welcome");
}

pub async fn a_fetch_is_bounded_by_count_and_bytes_but_returns_the_first(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let mut m = send(&group(7), n, &[&bob]);
        m.size = 1000;
        ids.push(m.accepted(&*s, &alice).await);
    }
    let fetch = |limit, bytes| {
        let (s, bob) = (s.clone(), bob.clone());
        async move {
            let q = s.fetch(&bob, 0, limit, bytes).await.unwrap();
            q.messages.iter().map(|m| m.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(fetch(2, usize::MAX).await, ids[..2]);
    assert_eq!(fetch(10, 2100).await, ids[..2]);
    assert_eq!(fetch(10, 1).await, ids[..1], "the first always comes");
    assert_eq!(fetch(10, usize::MAX).await, ids);
}

pub async fn a_full_queue_drops_the_heaviest_senders_oldest_entries(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let mallory = account(&*s, "mallory").await;
    let bob = account(&*s, "bob").await;
    let quota = QueueQuota {
        messages: 3,
        bytes: 1 << 20,
    };
    let from_alice = send(&group(8), 0, &[&bob]).accepted(&*s, &alice).await;
    let mut flood = Vec::new();
    for n in 0..4 {
        match send(&group(9), n, &[&bob])
            .submit(&*s, &mallory, quota)
            .await
        {
            Submitted::Accepted { response, .. } => flood.push(response.id),
            other => panic!("a full queue never refuses: {other:?}"),
        }
    }
    // Mallory's oldest went, alice's message stayed.
    assert_eq!(
        queued(&*s, &bob).await,
        [from_alice, flood[2], flood[3]],
        "{flood:?}"
    );
    let q = s.fetch(&bob, 0, 10, usize::MAX).await.unwrap();
    assert_eq!(q.dropped_total, 2);
    assert_eq!(stats(&*s).await.messages, 3, "dropped messages are deleted");
}

pub async fn a_queue_over_its_byte_quota_keeps_the_message_being_queued(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let quota = QueueQuota {
        messages: 100,
        bytes: 1500,
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        let mut m = send(&group(10), n, &[&bob]);
        m.size = 1000;
        match m.submit(&*s, &alice, quota).await {
            Submitted::Accepted { response, .. } => ids.push(response.id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(queued(&*s, &bob).await, [ids[2]]);
    let q = s.fetch(&bob, 0, 10, usize::MAX).await.unwrap();
    assert_eq!(q.dropped_total, 2);
}

pub async fn purge_deletes_old_messages_and_counts_them_as_dropped(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    send(&group(11), 0, &[&bob]).accepted(&*s, &alice).await;
    assert_eq!(
        s.purge(100, 0).await.unwrap(),
        0,
        "accepted at 100: not older"
    );
    assert_eq!(s.purge(101, 0).await.unwrap(), 1);
    let q = s.fetch(&bob, 0, 10, usize::MAX).await.unwrap();
    assert!(q.messages.is_empty());
    assert_eq!(q.dropped_total, 1);
    let counts = stats(&*s).await;
    assert_eq!(
        (counts.messages, counts.queue_entries, counts.sends),
        (0, 0, 0)
    );
    // The queue's usage went with it: a quota of one fits a new message.
    let quota = QueueQuota {
        messages: 1,
        bytes: 1 << 20,
    };
    send(&group(11), 1, &[&bob])
        .submit(&*s, &alice, quota)
        .await;
    assert_eq!(
        s.fetch(&bob, 0, 10, usize::MAX)
            .await
            .unwrap()
            .dropped_total,
        1
    );
}

pub async fn a_transaction_dropped_before_its_commit_changes_nothing(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let before = stats(&*s).await;
    {
        let mut tx = s.begin().await.unwrap();
        tx.set_roster(&group(12), std::slice::from_ref(&alice))
            .await
            .unwrap();
        tx.set_group(
            &group(12),
            super::GroupState {
                epoch: 0,
                next_seq: 1,
            },
        )
        .await
        .unwrap();
        // Dropped: a cancelled request or a panic.
    }
    assert_eq!(stats(&*s).await, before);
    // The storage carries on.
    send(&group(12), 0, &[]).accepted(&*s, &alice).await;
}

pub async fn of_two_racing_commits_for_one_epoch_exactly_one_wins(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let g = group(13);
    send(&g, 0, &[]).accepted(&*s, &alice).await;
    let race = |n| {
        let (s, alice, g) = (s.clone(), alice.clone(), g.clone());
        tokio::spawn(async move {
            let mut commit = send(&g, n, &[]);
            commit.kind = MessageKind::Commit;
            commit.roster = Some(vec![alice.clone()]);
            commit.submit(&*s, &alice, ROOMY).await
        })
    };
    let (a, b) = (race(1), race(2));
    let outcomes = [a.await.unwrap(), b.await.unwrap()];
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, Submitted::Accepted { .. }))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| **o == Submitted::EpochConflict(1))
        .count();
    assert_eq!((won, lost), (1, 1), "{outcomes:?}");
}

/// Runs every test of the suite against the backend `make` builds (`async`, `None` when the
/// backend is not available here, for example no database URL), one `#[tokio::test]` each.
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            conformance!(@tests $make;
                the_server_identity_and_challenge_key_stay_the_same,
                an_account_is_created_once_with_its_device_and_key_packages,
                a_challenge_is_used_once_and_tokens_are_found_by_hash,
                each_devices_last_sign_in_is_recorded_and_forgotten_with_the_device,
                key_packages_are_claimed_oldest_first_then_the_last_resort_one,
                a_claim_without_one_time_hands_out_the_last_resort_and_takes_nothing,
                concurrent_claims_each_get_a_different_key_package_until_only_the_last_resort_is_left,
                messages_get_sequence_numbers_and_a_commit_moves_the_epoch,
                only_roster_members_may_send,
                a_send_to_an_unknown_device_is_refused_whole,
                a_repeated_client_id_returns_the_first_answer_and_stores_nothing,
                a_message_is_stored_once_and_deleted_when_every_queue_acked_it,
                a_welcome_is_queued_for_the_devices_a_commit_adds,
                a_fetch_is_bounded_by_count_and_bytes_but_returns_the_first,
                a_full_queue_drops_the_heaviest_senders_oldest_entries,
                a_queue_over_its_byte_quota_keeps_the_message_being_queued,
                purge_deletes_old_messages_and_counts_them_as_dropped,
                a_transaction_dropped_before_its_commit_changes_nothing,
                of_two_racing_commits_for_one_epoch_exactly_one_wins,
                changes_that_wait_share_one_transaction_and_each_gets_its_own_answer,
                a_change_the_storage_fails_fails_alone_and_the_rest_of_its_batch_commits,
                a_fetch_after_an_id_returns_only_the_later_messages_in_order,
                a_message_to_the_roster_is_queued_once_for_each_roster_device_but_the_sender,
                a_commit_to_the_roster_reaches_the_roster_before_it_and_the_next_message_the_one_after,
                a_message_to_the_roster_keeps_every_queue_within_its_quota,
                acks_of_several_devices_at_once_remove_only_their_entries_and_a_message_with_its_last,
                akds_own_storage_tests_pass,
                a_new_account_is_published_once_with_a_lookup_proof_of_its_device_list,
                each_queued_account_is_published_once_and_the_log_survives_reopening,
                each_epoch_is_recorded_with_a_proof_that_it_extends_the_one_before,
                a_witness_cosignature_is_kept_per_epoch_and_witness_the_newest_winning,
                a_device_list_update_adds_a_device_once_and_queues_the_account_for_the_log,
                a_device_removed_loses_its_key_packages_tokens_queue_and_roster_places,
                a_link_is_answered_once_and_not_found_once_expired,
            );
        }
    };
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some((storage, _guard)) = $make.await else {
                    return;
                };
                super::$test(storage).await;
            }
        )*
    };
}

conformance!(memory, super::backends::memory());
conformance!(sqlite, super::backends::sqlite());
conformance!(postgres, super::backends::postgres());
