//! A compelled server against an account's devices: a device of the operator's put into a
//! list without the identity key's signature (attack a), a list rolled back to an older
//! signed revision that still holds a removed device (attack b), and a removed device kept
//! in a conversation (attack e).

use super::local::{LocalServer, event, recv, text, user};
use crate::ClientError;
use crate::events::Event;
use sotto_proto::api::ValidRegistration;
use sotto_proto::device_list::{DeviceList, SignedDeviceListIn, parse_verifying_key};
use sotto_server::storage::{AccountStore as _, ServerStore as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_added_to_a_list_without_the_identity_keys_signature_is_refused_and_gets_nothing()
{
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    bob.sync().await.unwrap();
    let storage = bob.transport().storage();
    let real = storage.account(&user("bob")).await.unwrap().unwrap();
    // The operator adds a device of its own to bob's list: the next revision, chained, but
    // it cannot sign it with bob's identity key; it publishes it in the log as well.
    let list: DeviceList = serde_json::from_slice(&real.device_list_body).unwrap();
    let ghost = crate::DeviceKey::generate(user("bob"));
    let mut devices = list.devices.clone();
    devices.push(ghost.entry("ghost", 2));
    let next = list.next(&real.signed_device_list(), devices);
    let forged = SignedDeviceListIn {
        body: next.encode().into(),
        signature: real.device_list_signature.clone().into(),
    };
    storage.plant_device(ghost.addr(), &ghost.public()).await;
    storage.set_device_list(&user("bob"), &forged, true).await;
    let before = storage.stats().await.unwrap();

    let e = alice.send_text("bob", "for bob only").await.unwrap_err();
    let ClientError::Security(reason) = e else {
        panic!("not refused as a security failure: {e:?}");
    };
    assert!(reason.contains("bob"), "{reason}");
    let after = storage.stats().await.unwrap();
    assert_eq!(after.messages, before.messages, "nothing was sent");
    assert_eq!(after.groups, before.groups);
    // Bob's own device sees a value in the log that none of his devices signed.
    let e = bob.sync().await.unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_rolled_back_to_a_signed_revision_holding_a_removed_device_alarms_its_owner() {
    let server = LocalServer::new().await;
    let bob = server.device("bob").await;
    let (laptop, ..) = server.link(&bob, "laptop", false).await;
    bob.sync().await.unwrap();
    let storage = bob.transport().storage();
    let with_laptop = storage.account(&user("bob")).await.unwrap().unwrap();
    bob.remove_device(&laptop.me().device.to_string())
        .await
        .unwrap();
    bob.sync().await.unwrap();
    assert!(recv(&bob).await.is_empty());

    // The operator puts back revision 2, which bob's identity key did sign and which still
    // holds the laptop, with the laptop's place on the server, and publishes it.
    let key = parse_verifying_key(&with_laptop.identity_key).unwrap();
    let list = with_laptop.signed_device_list().verify(&key).unwrap();
    storage
        .replace_account(
            &ValidRegistration {
                identity_key: with_laptop.identity_key.clone(),
                device_list: list,
                key_packages: Vec::new(),
                last_resort: b"last resort".to_vec(),
            },
            true,
        )
        .await;
    let e = bob.sync().await.unwrap_err();
    let ClientError::Security(reason) = e else {
        panic!("no alarm: {e:?}");
    };
    assert!(reason.contains("version"), "{reason}");
}

/// Bob removes his laptop from his list, but the commit taking it out of his conversation
/// with alice never lands (the operator held it back): alice's group still holds the laptop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_kept_in_a_conversation_gets_nothing_until_its_owner_takes_it_out() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let (laptop, ..) = server.link(&bob, "laptop", false).await;
    alice.send_text("bob", "hi both").await.unwrap();
    assert!(recv(&laptop).await.contains(&text("alice", "hi both")));
    recv(&bob).await;
    let token = bob.token().await.unwrap();
    bob.publish_without(&token, laptop.me().device)
        .await
        .unwrap();

    let storage = bob.transport().storage();
    let before = storage.stats().await.unwrap();
    let e = alice.send_text("bob", "for bob only").await.unwrap_err();
    let ClientError::Security(reason) = e else {
        panic!("not refused as a security failure: {e:?}");
    };
    let device = laptop.me().device.to_string();
    assert!(
        reason.contains("bob") && reason.contains(&device),
        "{reason}"
    );
    assert_eq!(storage.stats().await.unwrap().messages, before.messages);

    // Bob's next sync takes the laptop out; alice sees it, and writes again.
    bob.sync().await.unwrap();
    let seen = recv(&alice).await;
    assert!(
        seen.iter().any(|s| *s
            == event(
                "bob",
                Event::DeviceRemoved {
                    by: user("bob"),
                    user: user("bob"),
                    device: device.clone()
                }
            )),
        "{seen:?}"
    );
    alice.send_text("bob", "for bob only").await.unwrap();
    assert_eq!(recv(&bob).await, [text("alice", "for bob only")]);
}

/// What the check before each send costs: a contact's list proven at the newest epoch this
/// device has seen is current, so a send at that epoch looks nobody up but this account (its
/// own check at every sync); a new epoch makes the next send look its members up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_at_the_epoch_a_members_list_was_proven_at_looks_only_this_account_up() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    alice.send_text("bob", "one").await.unwrap();
    let lookups = || server.lookups.load(std::sync::atomic::Ordering::Relaxed);

    let before = lookups();
    alice.send_text("bob", "two").await.unwrap();
    assert_eq!(lookups(), before + 1, "alice's own account only");

    // Carol's account makes a new epoch: bob's list, proven at the one before, is looked up
    // again (and alice's own, which her sync looks up anyway, once more).
    let _carol = server.device("carol").await;
    let before = lookups();
    alice.send_text("bob", "three").await.unwrap();
    assert!(lookups() >= before + 2, "{} lookups", lookups() - before);
    assert_eq!(
        recv(&bob).await,
        [
            text("alice", "one"),
            text("alice", "two"),
            text("alice", "three")
        ]
    );
}
