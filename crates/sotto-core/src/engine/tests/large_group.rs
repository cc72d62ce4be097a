//! Groups past the number of devices a message names: their messages go to the roster the
//! server holds, and reach every member; a member who declares a false roster cuts devices
//! off until the next commit names them.

use super::local::{Device, LocalServer, add_declaring, added, joined, missing, recv, text};
use crate::engine::NAMED_RECIPIENTS;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Alice, and `n` other devices (`m000`, `m001`, …) in the group `big` she made, each past
/// its Welcome.
async fn big_group(server: &Arc<LocalServer>, n: usize) -> (Device, Vec<Device>) {
    let alice = server.device("alice").await;
    let mut members = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("m{i:03}");
        members.push(server.device(&name).await);
        names.push(name);
    }
    alice.create_group("big", &names).await.unwrap();
    for m in &members {
        assert_eq!(recv(m).await, [joined("alice")]);
    }
    (alice, members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_their_recipients_up_to_the_limit_go_to_the_roster_past_it_and_reach_every_member()
 {
    let server = LocalServer::new().await;
    let roster_sends = || server.roster_sends.load(Ordering::Relaxed);
    // Exactly as many other devices as a message names.
    let (alice, mut members) = big_group(&server, NAMED_RECIPIENTS).await;
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

    // Past the limit a commit still names the devices before it (up to 5,000): only the
    // description after it goes to the roster.
    let later = server.device("later").await;
    members[1]
        .add_members("big", &["later".to_owned()])
        .await
        .unwrap();
    assert_eq!(roster_sends(), 3);
    assert_eq!(recv(&later).await, [joined("m001")]);
    assert_eq!(recv(&alice).await, [added("m001", "later")]);
    members.push(late);
    for m in members.iter().filter(|m| m.me().user.as_str() != "m001") {
        assert_eq!(recv(m).await, [added("m001", "later")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_roster_cuts_devices_off_a_large_groups_messages_until_the_next_commit_names_them()
{
    let server = LocalServer::new().await;
    let (alice, members) = big_group(&server, NAMED_RECIPIENTS + 1).await;
    let (mallory, victim, honest) = (&members[0], &members[1], &members[2]);
    let big = alice.group_by_name("big").unwrap();

    // Mallory adds dave with a real commit that names every device before it, and tells the
    // server a roster without the victim.
    let dave = server.device("dave").await;
    let others: Vec<_> = std::iter::once(&alice)
        .chain(&members[1..])
        .map(|d| d.me().clone())
        .collect();
    let mut roster: Vec<_> = others
        .iter()
        .filter(|d| *d != victim.me())
        .cloned()
        .collect();
    roster.extend([mallory.me().clone(), dave.me().clone()]);
    add_declaring(mallory, &big, &dave, others, roster).await;
    for d in std::iter::once(&alice).chain(&members[1..]) {
        assert_eq!(recv(d).await, [added("m000", "dave")]);
    }

    // Alice's next message goes to the roster: the victim never gets it.
    alice.send_group_text("big", "without you").await.unwrap();
    assert_eq!(recv(honest).await, [text("alice", "without you")]);
    assert!(recv(victim).await.is_empty());

    // An honest commit names every device before it: the victim processes it, and the roster
    // it declares holds the victim again.
    let erin = server.device("erin").await;
    honest
        .add_members("big", &["erin".to_owned()])
        .await
        .unwrap();
    assert_eq!(recv(&erin).await, [joined("m002")]);
    assert_eq!(recv(victim).await, [added("m002", "erin")]);
    alice.send_group_text("big", "with you").await.unwrap();
    // Alice's counter shows the victim what it missed.
    assert_eq!(
        recv(victim).await,
        [missing(&alice, 1), text("alice", "with you")]
    );
    victim.send_group_text("big", "back").await.unwrap();
    assert_eq!(
        recv(&alice).await,
        [added("m002", "erin"), text("m001", "back")]
    );
}
