//! A group larger than a message names: its messages and commits go to the roster the server
//! holds, and reach every member all the same.

use super::local::{Device, LocalServer, added, joined, recv, text};
use crate::engine::NAMED_RECIPIENTS;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_past_the_named_recipients_limit_is_sent_to_by_roster_and_every_member_reads_it() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    // One past the limit: alice's messages name no one.
    let mut members: Vec<Device> = Vec::new();
    let mut names = Vec::new();
    for i in 0..=NAMED_RECIPIENTS {
        let name = format!("m{i:03}");
        members.push(server.device(&name).await);
        names.push(name);
    }
    alice.create_group("big", &names).await.unwrap();
    for m in &members {
        assert_eq!(recv(m).await, [joined("alice")]);
    }
    // Its messages go to the roster (the group's first commit had nobody to go to).
    let before = server.roster_sends.load(Ordering::Relaxed);
    alice.send_group_text("big", "hello all").await.unwrap();
    assert_eq!(server.roster_sends.load(Ordering::Relaxed), before + 1);
    for m in &members {
        assert_eq!(recv(m).await, [text("alice", "hello all")]);
    }
    // A commit goes to the roster before it (and the group's description after it, as after
    // every add); the device it adds gets the Welcome.
    let late = server.device("late").await;
    members[0]
        .add_members("big", &["late".to_owned()])
        .await
        .unwrap();
    assert_eq!(server.roster_sends.load(Ordering::Relaxed), before + 3);
    assert_eq!(recv(&late).await, [joined("m000")]);
    assert_eq!(recv(&alice).await, [added("m000", "late")]);
    for m in &members[1..] {
        assert_eq!(recv(m).await, [added("m000", "late")]);
    }
    late.send_group_text("big", "hi").await.unwrap();
    assert_eq!(recv(&alice).await, [text("late", "hi")]);
    assert_eq!(recv(&members[NAMED_RECIPIENTS]).await, [text("late", "hi")]);
}
