//! Linking a device: what the new device receives, the conversations it joins, what every
//! member sees, and the codes and offers a server could tamper with.

use super::local::{LocalServer, joined, recv, shown, text, user};
use crate::ClientError;
use crate::engine::NewAccount;
use crate::engine::linking::PendingLink;
use crate::events::Event;
use crate::store::memory::MemoryStore;
use crate::store::{HistoryItem, StoreTx};
use crate::{ClientStore, Clock, Transport};
use sotto_proto::link::{LinkCode, LinkOffer};
use sotto_server::storage::{AccountStore as _, KeyPackageStore as _, LinkStore as _};
use std::sync::Arc;

async fn linked_device_gets_the_account_and_joins_every_conversation(suite: u16) {
    let server = LocalServer::with_suite(suite).await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let carol = server.device("carol").await;
    alice.send_text("bob", "hi bob").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "hi bob")]);
    bob.send_text("alice", "hi alice").await.unwrap();
    alice
        .create_group("team", &["bob".to_owned(), "carol".to_owned()])
        .await
        .unwrap();
    recv(&bob).await;
    recv(&carol).await;
    carol.send_group_text("team", "hello team").await.unwrap();
    recv(&alice).await;
    let number = alice
        .contact_status(&user("bob"))
        .await
        .unwrap()
        .safety_number;
    alice.confirm_contact(&user("bob"), &number).await.unwrap();

    let (laptop, approved, linked) = server.link(&alice, "laptop", true).await;
    assert_eq!(approved.conversations, 2);
    assert!(approved.failed.is_empty(), "{:?}", approved.failed);
    assert_eq!(approved.revision, 2);
    assert_eq!(linked.contacts, 2);
    assert_eq!(linked.left_out, 0);
    assert_eq!(laptop.identity_key(), alice.identity_key());
    // The history came along, as the approving device held it, as history: nothing of it
    // comes out of the laptop's `recv` as new.
    let history: Vec<(String, bool)> = laptop
        .store()
        .read(|tx| tx.history())
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.item {
            HistoryItem::Text(t) => Some((t, r.outgoing)),
            _ => None,
        })
        .collect();
    assert!(history.contains(&("hi bob".into(), true)), "{history:?}");
    assert!(history.contains(&("hi alice".into(), false)), "{history:?}");
    assert!(
        history.contains(&("hello team".into(), false)),
        "{history:?}"
    );
    assert_eq!(linked.history, approved.history);
    assert!(shown(&laptop).is_empty());
    // So did the pins and the verified mark.
    let pinned = laptop.store().read(|tx| tx.contact(&user("bob"))).unwrap();
    assert!(pinned.is_some_and(|c| c.verified));

    // Everyone sees the device come in, named as the account's signed list names it.
    let device_added = (
        Some(user("alice")),
        HistoryItem::Event(Event::DeviceAdded {
            by: user("alice"),
            user: user("alice"),
            device: laptop.me().device.to_string(),
            name: "laptop".into(),
        }),
    );
    let seen_by_bob = recv(&bob).await;
    assert_eq!(
        seen_by_bob.iter().filter(|s| **s == device_added).count(),
        2,
        "{seen_by_bob:?}"
    );
    assert!(recv(&carol).await.contains(&device_added));

    // The laptop is in both conversations (the group shows who added it; the one-to-one
    // conversation stays with bob), and messages go both ways.
    assert_eq!(recv(&laptop).await, [joined("alice")]);
    let mut conversations = laptop.store().read(|tx| tx.conversations()).unwrap();
    conversations.sort_by_key(|c| c.name.clone());
    assert!(conversations.iter().all(|c| c.active), "{conversations:?}");
    assert_eq!(conversations.len(), 2);
    assert_eq!(conversations[0].peer, Some(user("bob")));
    assert_eq!(conversations[1].name.as_deref(), Some("team"));
    bob.send_text("alice", "to all of alice").await.unwrap();
    assert_eq!(recv(&laptop).await, [text("bob", "to all of alice")]);
    assert_eq!(recv(&alice).await, [text("bob", "to all of alice")]);
    laptop
        .send_group_text("team", "from the laptop")
        .await
        .unwrap();
    assert_eq!(recv(&carol).await, [text("alice", "from the laptop")]);
    assert_eq!(recv(&alice).await, [text("alice", "from the laptop")]);

    // Both devices list both, and neither alarms at its next syncs.
    async fn listed(d: &super::local::Device) -> Vec<String> {
        let mut names: Vec<String> = d
            .devices()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        names
    }
    assert_eq!(listed(&alice).await, ["laptop", "test"]);
    assert_eq!(listed(&laptop).await, ["laptop", "test"]);
    laptop.sync().await.unwrap();
    alice.sync().await.unwrap();
    assert!(shown(&alice).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_on_the_post_quantum_suite_gets_the_account_and_joins_every_conversation() {
    linked_device_gets_the_account_and_joins_every_conversation(crate::suite::XWING).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_device_on_the_classic_suite_gets_the_account_and_joins_every_conversation() {
    linked_device_gets_the_account_and_joins_every_conversation(crate::suite::X25519).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_device_linked_by_the_second_raises_no_alarm_on_the_first() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    bob.send_text("alice", "hi").await.unwrap();
    recv(&alice).await;
    let (laptop, ..) = server.link(&alice, "laptop", false).await;
    let (tablet, _, linked) = server.link(&laptop, "tablet", false).await;
    assert_eq!(linked.history, 0);
    // Without the history, the one-to-one conversation still comes out as one with bob.
    assert!(recv(&tablet).await.is_empty());
    let conversations = tablet.store().read(|tx| tx.conversations()).unwrap();
    assert_eq!(conversations.len(), 1);
    assert!(conversations[0].active);
    assert_eq!(conversations[0].peer, Some(user("bob")));
    // The first device learns of the tablet from the list its account signed, not from an
    // alarm.
    let seen = recv(&alice).await;
    assert!(
        seen.iter()
            .all(|(_, item)| matches!(item, HistoryItem::Event(Event::DeviceAdded { .. }))),
        "{seen:?}"
    );
    assert_eq!(alice.devices().await.unwrap().len(), 3);
    bob.send_text("alice", "all three").await.unwrap();
    for d in [&alice, &laptop, &tablet] {
        assert_eq!(recv(d).await, [text("bob", "all three")]);
    }
}

async fn start(
    server: &Arc<LocalServer>,
    name: &str,
) -> PendingLink<MemoryStore, super::local::LocalTransport> {
    let transport = server.transport();
    let config = transport.config().await.unwrap();
    let clock: Arc<dyn Clock> = server.clock.clone();
    PendingLink::start(
        MemoryStore::new().unwrap(),
        transport,
        clock,
        NewAccount {
            user: &user(name),
            device_name: "new",
            settings: &[],
        },
        &config,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_for_another_account_is_refused_and_changes_nothing() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let pending = start(&server, "alice").await;
    let e = bob.approve(&pending.code(), true).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
    assert!(pending.poll().await.unwrap().is_none());
    assert_eq!(bob.devices().await.unwrap().len(), 1);
    drop(alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_the_server_swapped_is_refused_by_its_code_and_nothing_is_published() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let honest = start(&server, "alice").await;
    let planted = start(&server, "alice").await;
    let code = honest.code();
    // The operator puts its own offer (its own key) where the honest one waits.
    let storage = alice.transport().storage();
    let theirs = storage
        .link(&planted.code().id, server.clock.now())
        .await
        .unwrap()
        .unwrap();
    let mut stored = storage
        .link(&code.id, server.clock.now())
        .await
        .unwrap()
        .unwrap();
    stored.offer = theirs.offer;
    storage.delete_link(&code.id).await.unwrap();
    assert!(storage.put_link(&code.id, &stored).await.unwrap());
    let before = storage.account(&user("alice")).await.unwrap().unwrap();

    let e = alice.approve(&code, true).await.unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
    let after = storage.account(&user("alice")).await.unwrap().unwrap();
    assert_eq!(before.device_list_body, after.device_list_body);
    assert!(honest.poll().await.unwrap().is_none());
    assert!(planted.poll().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_works_once_and_not_after_five_minutes() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let pending = start(&server, "alice").await;
    let code = pending.code();
    alice.approve(&code, false).await.unwrap();
    // A lost reply loses nothing: the answer stays until the new device has it.
    assert!(pending.poll().await.unwrap().is_some());
    let answer = pending.poll().await.unwrap().unwrap();
    pending.finish(answer).await.unwrap();
    // The new device has it: the rendezvous is gone, and the code with it.
    let e = alice.approve(&code, false).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");

    let late = start(&server, "alice").await;
    server.clock.advance(sotto_proto::link::LINK_TTL);
    let e = alice.approve(&late.code(), false).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
    assert!(
        late.poll().await.is_err(),
        "an expired code has no answer to pick up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_with_another_secret_fails_the_offers_mac_and_a_code_reads_back_from_its_text() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let pending = start(&server, "alice").await;
    let code = pending.code();
    assert_eq!(LinkCode::parse(&code.encode()).unwrap(), code);
    let mut wrong = code;
    wrong.secret[0] ^= 1;
    let e = alice.approve(&wrong, false).await.unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
    // The offer itself is well formed and names the account asked for.
    let stored = alice
        .transport()
        .storage()
        .link(&code.id, server.clock.now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        LinkOffer::parse(&stored.offer).unwrap().0.user,
        user("alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_server_sealed_itself_is_refused_by_the_new_device() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    // The operator's own account, whose secrets it would like the new device to take.
    let mallory = server.device("mallory").await;
    let pending = start(&server, "alice").await;
    let code = pending.code();
    let storage = alice.transport().storage();
    let stored = storage
        .link(&code.id, server.clock.now())
        .await
        .unwrap()
        .unwrap();
    let (offer, bytes) = LinkOffer::parse(&stored.offer).unwrap();
    // It seals an answer to the offer's key (which it can read) under a code of its own
    // (it never saw the real one).
    let guessed = LinkCode {
        secret: [0; sotto_proto::link::SECRET_LEN],
        ..code
    };
    let secrets = crate::link::LinkSecrets {
        identity_secret: vec![1; 32].into(),
        device_list: storage
            .account(&user("mallory"))
            .await
            .unwrap()
            .unwrap()
            .signed_device_list(),
        contacts: Vec::new(),
        archive: None,
        kt_vrf_key: alice.transport().kt().vrf_public_key().to_vec().into(),
        kt_head: None,
        kt_checkpoint_key: None,
        kt_witnesses: None,
    };
    let forged = crate::link::answer(
        &guessed,
        &bytes,
        offer.hpke_key.as_slice(),
        &secrets,
        Vec::new(),
    )
    .unwrap();
    assert!(
        storage
            .answer_link(&code.id, &forged, server.clock.now())
            .await
            .unwrap()
    );
    let answer = pending.poll().await.unwrap().unwrap();
    let e = pending.finish(answer).await.unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
    drop(mallory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_leaves_every_conversation_members_see_it_and_the_server_forgets_it() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "hi").await.unwrap();
    recv(&bob).await;
    alice
        .create_group("team", &["bob".to_owned()])
        .await
        .unwrap();
    recv(&bob).await;
    let (laptop, ..) = server.link(&alice, "laptop", false).await;
    recv(&bob).await;
    recv(&laptop).await;
    let id = laptop.me().device.to_string();

    // This device cannot remove itself; an unknown id is a usage error.
    let e = laptop.remove_device(&id).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
    let e = alice.remove_device("00000000000000ff").await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");

    alice.sync().await.unwrap();
    let removed = alice.remove_device(&id).await.unwrap();
    assert_eq!(removed.conversations, 2);
    assert!(removed.failed.is_empty(), "{:?}", removed.failed);
    assert_eq!(removed.name, "laptop");
    assert_eq!(removed.revision, 3);
    let device_removed = (
        Some(user("alice")),
        HistoryItem::Event(Event::DeviceRemoved {
            by: user("alice"),
            user: user("alice"),
            device: id.clone(),
        }),
    );
    let seen = recv(&bob).await;
    assert_eq!(
        seen.iter().filter(|s| **s == device_removed).count(),
        2,
        "{seen:?}"
    );
    // The server forgot it: no key, so no sign-in, and no KeyPackages.
    let storage = alice.transport().storage();
    assert!(storage.device_key(laptop.me()).await.unwrap().is_none());
    let left = storage.key_package_count(laptop.me()).await.unwrap();
    assert_eq!((left.count, left.last_resort), (0, false));
    bob.send_text("alice", "after the laptop").await.unwrap();
    assert_eq!(recv(&alice).await, [text("bob", "after the laptop")]);
    for g in bob.groups().unwrap() {
        let members = bob.members(g.name.as_deref().unwrap()).unwrap();
        assert!(
            members.iter().all(|m| !m.devices.contains(&id)),
            "{members:?}"
        );
    }
    assert_eq!(alice.devices().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_the_server_never_publishes_fails_and_then_alarms_the_device_that_made_it() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let (laptop, ..) = server.link(&alice, "laptop", false).await;
    let id = laptop.me().device.to_string();
    alice.sync().await.unwrap();
    server.hold_back(&user("alice"));
    // Not done until the log holds it: the command fails as the server's doing (exit 2).
    let e = alice.remove_device(&id).await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable(_)), "{e:?}");
    // The log moves on (other accounts change) without the change: after a few epochs and
    // some minutes the device that made it alarms.
    server
        .clock
        .advance(crate::engine::transparency::LAG_SECONDS + 1);
    let mut alarm = None;
    for i in 0..=crate::engine::transparency::LAG_EPOCHS + 1 {
        server.device(&format!("other{i}")).await;
        if let Err(e) = alice.sync().await {
            alarm = Some(e);
            break;
        }
    }
    let Some(ClientError::Security(reason)) = alarm else {
        panic!("no alarm: {alarm:?}");
    };
    assert!(reason.contains("holding back"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_account_no_longer_lists_is_taken_out_of_its_conversations_at_the_next_sync() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "hi").await.unwrap();
    recv(&bob).await;
    let (laptop, ..) = server.link(&alice, "laptop", false).await;
    let (tablet, ..) = server.link(&alice, "tablet", false).await;
    recv(&bob).await;
    // The tablet removes the laptop from the account's list but crashes before any commit.
    let token = tablet.token().await.unwrap();
    tablet
        .publish_without(&token, laptop.me().device)
        .await
        .unwrap();
    // Alice's first device takes the new list from the log and mends the conversation.
    alice.sync().await.unwrap();
    let seen = recv(&bob).await;
    assert!(
        seen.iter().any(|(_, item)| matches!(
            item,
            HistoryItem::Event(Event::DeviceRemoved { device, .. }) if *device == laptop.me().device.to_string()
        )),
        "{seen:?}"
    );
    assert_eq!(alice.devices().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_changes_by_another_device_while_this_one_slept_raise_no_alarm_while_the_log_catches_up()
 {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let (laptop, ..) = server.link(&alice, "laptop", false).await;
    laptop.sync().await.unwrap();
    // While the laptop sleeps, alice links a tablet, then removes it; the log has the first
    // change but not yet the second.
    let (tablet, ..) = server.link(&alice, "tablet", false).await;
    server.hold_back(&user("alice"));
    let id = tablet.me().device.to_string();
    assert!(alice.remove_device(&id).await.is_err());
    laptop.sync().await.unwrap();
    assert!(shown(&laptop).is_empty());
}
