//! Three users through every kind of change a conversation goes through.

use super::local::{Device, LocalServer, added, joined, recv, removed, shown, text, users};
use crate::events::Event;
use sotto_proto::Username;
use std::sync::atomic::Ordering;

fn member_users(device: &Device, group: &str) -> Vec<String> {
    device
        .members(group)
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_chat_one_to_one_then_in_a_group_through_adds_removes_a_race_and_an_offline_device()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let carol = server.device("carol").await;

    // A one-to-one conversation, both ways.
    alice.send_text("bob", "hi bob").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "hi bob")]);
    bob.send_text("alice", "hi alice").await.unwrap();
    assert_eq!(recv(&alice).await, [text("bob", "hi alice")]);

    // A group: alice makes it with bob, then adds carol.
    let made = alice.create_group("team", &users(&["bob"])).await.unwrap();
    assert_eq!(made.len(), 1);
    assert_eq!(recv(&bob).await, [joined("alice")]);
    alice.add_members("team", &users(&["carol"])).await.unwrap();
    assert_eq!(recv(&carol).await, [joined("alice")]);
    assert_eq!(recv(&bob).await, [added("alice", "carol")]);
    carol.send_group_text("team", "hello team").await.unwrap();
    assert_eq!(recv(&alice).await, [text("carol", "hello team")]);
    assert_eq!(recv(&bob).await, [text("carol", "hello team")]);

    // Carol is offline while the group moves through five epochs: bob leaves and comes
    // back, alice leaves and comes back, bob leaves.
    let epoch_before = carol.groups().unwrap()[0].epoch;
    alice
        .remove_members("team", &users(&["bob"]))
        .await
        .unwrap();
    alice.add_members("team", &users(&["bob"])).await.unwrap();
    recv(&bob).await;
    bob.remove_members("team", &users(&["alice"]))
        .await
        .unwrap();
    bob.add_members("team", &users(&["alice"])).await.unwrap();
    recv(&alice).await;
    alice
        .remove_members("team", &users(&["bob"]))
        .await
        .unwrap();
    alice
        .send_group_text("team", "while you were away")
        .await
        .unwrap();
    assert_eq!(alice.groups().unwrap()[0].epoch, epoch_before + 5);

    // Back online, carol catches up on every commit in order, and reads the message.
    assert_eq!(
        recv(&carol).await,
        [
            removed("alice", "bob"),
            added("alice", "bob"),
            removed("bob", "alice"),
            added("bob", "alice"),
            removed("alice", "bob"),
            text("alice", "while you were away"),
        ]
    );
    // Having seen members removed, carol renewed her own keys: one epoch more.
    assert_eq!(carol.groups().unwrap()[0].epoch, epoch_before + 6);
    assert_eq!(member_users(&carol, "team"), ["alice", "carol"]);

    // Two commits race for one epoch: alice adds bob back while carol, who has not seen
    // that, removes alice. Carol's commit is refused (409), she processes alice's, rebases
    // her change on it and commits again: both changes land, in that order.
    let conflicts = server.epoch_conflicts.load(Ordering::Relaxed);
    let gid = carol.group_by_name("team").unwrap();
    alice.add_members("team", &users(&["bob"])).await.unwrap();
    let alice_name = Username::parse("alice").unwrap();
    let events = carol
        .change_members(&gid, &[], std::slice::from_ref(&alice_name))
        .await
        .unwrap();
    assert_eq!(
        server.epoch_conflicts.load(Ordering::Relaxed),
        conflicts + 1
    );
    assert_eq!(
        events,
        [Event::Removed {
            by: Username::parse("carol").unwrap(),
            user: alice_name.clone()
        }]
    );
    // She saw alice's commit on the way; her own she was told of as its result.
    assert_eq!(shown(&carol), [added("alice", "bob")]);
    // Bob was removed while away, then added back, then saw carol's commit.
    assert_eq!(
        recv(&bob).await,
        [
            removed("alice", "bob"),
            joined("alice"),
            removed("carol", "alice")
        ]
    );
    assert_eq!(member_users(&bob, "team"), ["bob", "carol"]);
    assert_eq!(member_users(&carol, "team"), ["bob", "carol"]);
    // Alice learns she was removed, and can no longer send to the group.
    assert_eq!(recv(&alice).await, [removed("carol", "alice")]);
    assert!(!alice.groups().unwrap()[0].active);
    assert!(alice.send_group_text("team", "still here?").await.is_err());
    // The others carry on in the new epoch.
    bob.send_group_text("team", "just us").await.unwrap();
    assert_eq!(recv(&carol).await, [text("bob", "just us")]);

    // Groups this small name their recipients in every message.
    assert_eq!(server.roster_sends.load(Ordering::Relaxed), 0);

    // Every group's state agrees between its members.
    let (b, c) = (bob.groups().unwrap(), carol.groups().unwrap());
    assert_eq!((b[0].epoch, b[0].devices), (c[0].epoch, c[0].devices));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_carries_the_time_its_sender_sent_it_not_the_time_it_was_read() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let sent = crate::Clock::now(server.clock.as_ref());
    alice
        .send_text("bob", "written before the trip")
        .await
        .unwrap();
    server.clock.advance(3600);
    bob.sync().await.unwrap();
    let entries = bob.unshown().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].record.sent_at, sent);
    assert_eq!(
        entries[0].record.received_at, sent,
        "the server's acceptance"
    );
}
