//! Fan-out to a group's roster: a message that names no recipients is queued for every
//! device of the roster the server holds (the sender's own excepted), in one step however
//! large the group.

use super::{Message, ROOMY, account, group, queued, send, stats};
use crate::delivery::{QueueQuota, Submitted};
use crate::storage::Storage;
use sotto_proto::DeviceAddr;
use sotto_proto::framing::MessageKind;
use std::sync::Arc;

/// A message of `n` to the roster of `g`, at `epoch`.
fn to_roster(g: u8, n: usize, epoch: u64) -> Message {
    let mut m = send(&group(g), n, &[]);
    m.to_roster = true;
    m.epoch = epoch;
    m
}

/// The commit that makes `roster` the roster of the new group `g`, by its creator.
async fn make_group(s: &dyn Storage, g: u8, creator: &DeviceAddr, roster: &[&DeviceAddr]) {
    let mut commit = to_roster(g, 1000, 0);
    commit.kind = MessageKind::Commit;
    commit.roster = Some(roster.iter().map(|&d| d.clone()).collect());
    commit.accepted(s, creator).await;
}

pub async fn a_message_to_the_roster_is_queued_once_for_each_roster_device_but_the_sender(
    s: Arc<dyn Storage>,
) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let carol = account(&*s, "carol").await;
    let dave = account(&*s, "dave").await;
    make_group(&*s, 20, &alice, &[&alice, &bob, &carol]).await;
    let before = stats(&*s).await;
    let Submitted::Accepted { response, mut wake } =
        to_roster(20, 0, 1).submit(&*s, &alice, ROOMY).await
    else {
        panic!("a member sends to the roster");
    };
    wake.sort();
    let mut expected = vec![bob.clone(), carol.clone()];
    expected.sort();
    assert_eq!(wake, expected, "each roster device but the sender is woken");
    assert_eq!(queued(&*s, &bob).await, [response.id]);
    assert_eq!(queued(&*s, &carol).await, [response.id]);
    assert!(queued(&*s, &alice).await.is_empty(), "not the sender");
    assert!(queued(&*s, &dave).await.is_empty(), "not a stranger");
    let after = stats(&*s).await;
    assert_eq!(after.messages, before.messages + 1, "stored once");
    assert_eq!(after.queue_entries, before.queue_entries + 2);
}

pub async fn a_commit_to_the_roster_reaches_the_roster_before_it_and_the_next_message_the_one_after(
    s: Arc<dyn Storage>,
) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let carol = account(&*s, "carol").await;
    let dave = account(&*s, "dave").await;
    make_group(&*s, 21, &alice, &[&alice, &bob, &carol]).await;
    // Carol out, dave in.
    let mut commit = to_roster(21, 1, 1);
    commit.kind = MessageKind::Commit;
    commit.roster = Some(vec![alice.clone(), bob.clone(), dave.clone()]);
    commit.welcome = Some(vec![dave.clone()]);
    let commit_id = commit.accepted(&*s, &alice).await;
    assert_eq!(queued(&*s, &bob).await, [commit_id]);
    assert_eq!(
        queued(&*s, &carol).await,
        [commit_id],
        "the removed learn of it"
    );
    let welcome = queued(&*s, &dave).await;
    assert_eq!(welcome.len(), 1, "the added get the Welcome only");
    assert_ne!(welcome, [commit_id]);
    let next = to_roster(21, 2, 2).accepted(&*s, &bob).await;
    assert_eq!(queued(&*s, &alice).await, [next]);
    assert_eq!(queued(&*s, &dave).await, [welcome[0], next]);
    assert_eq!(
        queued(&*s, &carol).await,
        [commit_id],
        "no longer in the roster"
    );
}

pub async fn a_message_to_the_roster_keeps_every_queue_within_its_quota(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let carol = account(&*s, "carol").await;
    make_group(&*s, 22, &alice, &[&alice, &bob, &carol]).await;
    let quota = QueueQuota {
        messages: 2,
        bytes: 1 << 20,
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        match to_roster(22, n, 1).submit(&*s, &alice, quota).await {
            Submitted::Accepted { response, .. } => ids.push(response.id),
            other => panic!("a full queue never refuses: {other:?}"),
        }
    }
    for device in [&bob, &carol] {
        assert_eq!(queued(&*s, device).await, ids[1..], "the oldest went");
        let q = s.fetch(device, 0, 10, usize::MAX).await.unwrap();
        assert_eq!(q.dropped_total, 1);
    }
}
