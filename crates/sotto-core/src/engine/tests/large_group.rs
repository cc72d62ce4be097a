//! A group as large as a message names, then one device larger: up to the limit its messages
//! name their recipients; past it they go to the roster the server holds. Every member reads
//! every message either way.

use super::local::{Device, LocalServer, added, joined, recv, text};
use crate::engine::NAMED_RECIPIENTS;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_their_recipients_up_to_the_limit_go_to_the_roster_past_it_and_reach_every_member()
 {
    let server = LocalServer::new().await;
    let roster_sends = || server.roster_sends.load(Ordering::Relaxed);
    let alice = server.device("alice").await;
    // Exactly as many other devices as a message names.
    let mut members: Vec<Device> = Vec::new();
    let mut names = Vec::new();
    for i in 0..NAMED_RECIPIENTS {
        let name = format!("m{i:03}");
        members.push(server.device(&name).await);
        names.push(name);
    }
    alice.create_group("big", &names).await.unwrap();
    for m in &members {
        assert_eq!(recv(m).await, [joined("alice")]);
    }
    alice.send_group_text("big", "hello all").await.unwrap();
    assert_eq!(roster_sends(), 0, "at the limit, recipients are named");
    for m in &members {
        assert_eq!(recv(m).await, [text("alice", "hello all")]);
    }

    // One device more. The commit names the devices before it; the group's description that
    // follows every add, and every message after, go to the roster.
    let late = server.device("late").await;
    members[0]
        .add_members("big", &["late".to_owned()])
        .await
        .unwrap();
    assert_eq!(roster_sends(), 1);
    assert_eq!(recv(&late).await, [joined("m000")]);
    assert_eq!(recv(&alice).await, [added("m000", "late")]);
    for m in &members[1..] {
        assert_eq!(recv(m).await, [added("m000", "late")]);
    }
    late.send_group_text("big", "hi").await.unwrap();
    assert_eq!(roster_sends(), 2);
    assert_eq!(recv(&alice).await, [text("late", "hi")]);
    for m in &members {
        assert_eq!(recv(m).await, [text("late", "hi")]);
    }
}
