//! Reading a queue from a point: what a socket does after each page it sent.

use super::{account, group, send};
use crate::storage::Storage;
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
