//! Reading a queue from a point (what a socket does after each page it sent), and
//! acknowledgements of many devices applied at once (a run of acks in a shared transaction).

use super::{account, group, queued, send, stats};
use crate::delivery;
use crate::storage::{NewMessage, QueueEntry, QueueUsage, Storage};
use sotto_proto::api::QueuedKind;
use std::sync::Arc;

pub async fn a_fetch_after_an_id_returns_only_the_later_messages_in_order(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(send(&group(1), n, &[&bob]).accepted(&*s, &alice).await);
    }
    let after = |id: u64| {
        let s = s.clone();
        let bob = bob.clone();
        async move {
            let q = s.fetch(&bob, id, 10, usize::MAX).await.expect("fetched");
            q.messages.iter().map(|m| m.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(after(0).await, ids);
    assert_eq!(after(ids[1]).await, ids[2..]);
    assert_eq!(after(ids[4]).await, Vec::<u64>::new());
    // Ids only grow: the next message comes after every id seen so far.
    let next = send(&group(1), 5, &[&bob]).accepted(&*s, &alice).await;
    assert_eq!(after(ids[4]).await, [next]);
}

pub async fn acks_of_several_devices_at_once_remove_only_their_entries_and_a_message_with_its_last(
    s: Arc<dyn Storage>,
) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let carol = account(&*s, "carol").await;
    let both = send(&group(30), 0, &[&bob, &carol])
        .accepted(&*s, &alice)
        .await;
    let bobs = send(&group(30), 1, &[&bob]).accepted(&*s, &alice).await;
    let kept = send(&group(30), 2, &[&bob, &carol])
        .accepted(&*s, &alice)
        .await;
    let mut tx = s.begin().await.unwrap();
    let counts = delivery::ack_all_in(
        tx.as_mut(),
        &[
            (&bob, &[both, bobs, kept + 100][..]),
            (&carol, &[both][..]),
            // The same again: already gone, counted for the first.
            (&bob, &[both][..]),
            (&carol, &[kept][..]),
        ],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(counts, [2, 1, 0, 1]);
    assert_eq!(queued(&*s, &bob).await, [kept]);
    assert!(queued(&*s, &carol).await.is_empty());
    let after = stats(&*s).await;
    assert_eq!(after.queue_entries, 1);
    assert_eq!(
        after.messages, 1,
        "only the message bob still holds is kept"
    );
    // The queues' counters followed: one more entry of no bytes makes bob's queue two
    // entries and one message's bytes, carol's one entry and none (then is rolled back).
    let mut tx = s.begin().await.unwrap();
    let g = group(30);
    let empty = NewMessage {
        group: &g,
        seq: 99,
        sender: &alice,
        kind: QueuedKind::Group,
        data: &[],
        accepted_at: 100,
    };
    let entry = QueueEntry {
        message_id: tx.store_message(empty).await.unwrap(),
        size: 0,
    };
    let usage = |count, bytes| QueueUsage { count, bytes };
    assert_eq!(tx.enqueue(&bob, entry).await.unwrap(), usage(2, 33));
    assert_eq!(tx.enqueue(&carol, entry).await.unwrap(), usage(1, 0));
    drop(tx);
    // Bob's last entry acknowledged, nothing is left.
    let mut tx = s.begin().await.unwrap();
    assert_eq!(
        delivery::ack_all_in(tx.as_mut(), &[(&bob, &[kept][..])])
            .await
            .unwrap(),
        [1]
    );
    tx.commit().await.unwrap();
    assert_eq!(stats(&*s).await.messages, 0);
}
