//! Post-compromise healing: each device renews its own leaf in each conversation a week
//! after the last renewal, and after a member is removed (at its next sync, or right after
//! the pushed batch that held the removal).

use super::local::{Device, LocalServer, recv, removed, text, users};
use crate::Transport as _;
use crate::engine::healing::HEAL_EVERY;

fn epoch(device: &Device) -> u64 {
    device.groups().unwrap()[0].epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_after_its_last_renewal_a_device_renews_its_leaf_once_at_its_next_sync_and_again_a_week_later()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.create_group("team", &users(&["bob"])).await.unwrap();
    recv(&bob).await;
    let start = epoch(&alice);

    // Not due yet a second before the week is out.
    server.clock.advance(HEAL_EVERY - 1);
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!((epoch(&alice), epoch(&bob)), (start, start));

    // Then each renews once, with a commit nobody is shown.
    server.clock.advance(1);
    alice.sync().await.unwrap();
    assert_eq!(epoch(&alice), start + 1);
    assert!(recv(&bob).await.is_empty());
    assert_eq!(epoch(&bob), start + 2);
    assert!(recv(&alice).await.is_empty());
    assert_eq!(epoch(&alice), start + 2);
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!((epoch(&alice), epoch(&bob)), (start + 2, start + 2));

    // The conversation goes on in the renewed epochs.
    bob.send_group_text("team", "still here").await.unwrap();
    assert_eq!(recv(&alice).await, [text("bob", "still here")]);

    // A week after the renewal, not after the start: once more each.
    server.clock.advance(HEAL_EVERY);
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    alice.sync().await.unwrap();
    assert_eq!((epoch(&alice), epoch(&bob)), (start + 4, start + 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_member_is_removed_every_remaining_device_renews_its_leaf() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let carol = server.device("carol").await;
    alice
        .create_group("team", &users(&["bob", "carol"]))
        .await
        .unwrap();
    recv(&bob).await;
    recv(&carol).await;
    let start = epoch(&alice);

    // The remover's own commit renews its leaf; bob renews his at his next sync.
    alice
        .remove_members("team", &users(&["carol"]))
        .await
        .unwrap();
    assert_eq!(epoch(&alice), start + 1);
    assert_eq!(recv(&bob).await, [removed("alice", "carol")]);
    assert_eq!(epoch(&bob), start + 2);
    assert!(recv(&alice).await.is_empty());
    assert_eq!(epoch(&alice), start + 2);
    // Once: nothing more to renew.
    alice.sync().await.unwrap();
    bob.sync().await.unwrap();
    assert_eq!((epoch(&alice), epoch(&bob)), (start + 2, start + 2));
    bob.send_group_text("team", "just us").await.unwrap();
    assert_eq!(recv(&alice).await, [text("bob", "just us")]);
}

/// A process that takes pushed batches between syncs (`recv --follow`) renews after a
/// removal as soon as it has processed the batch that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_batch_holding_a_removal_is_followed_by_a_renewal() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let _carol = server.device("carol").await;
    alice
        .create_group("team", &users(&["bob", "carol"]))
        .await
        .unwrap();
    recv(&bob).await;
    alice
        .remove_members("team", &users(&["carol"]))
        .await
        .unwrap();
    let start = epoch(&bob);

    let token = bob.token().await.unwrap();
    let pushed = bob.transport().queue(&token, 100).await.unwrap();
    let receipt = bob.receive(&pushed).await.unwrap();
    bob.transport().ack(&token, receipt.acks).await.unwrap();
    assert_eq!(epoch(&bob), start + 1);
    bob.heal_after_removals().await.unwrap();
    assert_eq!(epoch(&bob), start + 2);
    // Once: nothing is wanted any more.
    bob.heal_after_removals().await.unwrap();
    assert_eq!(epoch(&bob), start + 2);
}
