//! Device-list updates and link rendezvous over each backend.

use super::{group, queued, send, stats};
use crate::storage::{Link, Storage};
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::api::ValidRegistration;
use sotto_proto::device_list::ValidDeviceListUpdate;
use sotto_proto::device_list::{DeviceList, parse_verifying_key};
use sotto_proto::framing::MessageKind;
use sotto_proto::link::{LinkAnswer, LinkId};
use sotto_proto::{DeviceAddr, DeviceId, Username};
use std::sync::Arc;

/// An account `name` with one device, and what signs its lists.
async fn account_with_identity(
    s: &dyn Storage,
    name: &str,
) -> (IdentityKey, DeviceAddr, ValidRegistration) {
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(Username::parse(name).expect("a valid name"));
    let signed = identity.sign_device_list(&device.first_device_list("phone", 1));
    let key = parse_verifying_key(&identity.public()).expect("a valid key");
    let reg = ValidRegistration {
        identity_key: identity.public().to_vec(),
        device_list: signed.verify(&key).expect("a list it signed"),
        key_packages: vec![b"kp".to_vec()],
        last_resort: b"last".to_vec(),
    };
    assert!(s.create_account(&reg, 1).await.expect("stored"));
    (identity, device.addr().clone(), reg)
}

/// The update from `before` (as registered or last updated) to `devices`.
fn update(
    identity: &IdentityKey,
    before: &sotto_proto::device_list::VerifiedDeviceList,
    devices: Vec<sotto_proto::device_list::DeviceEntry>,
    added: Option<(DeviceAddr, Vec<Vec<u8>>, Vec<u8>)>,
) -> ValidDeviceListUpdate {
    let next: DeviceList = before.list().next(before.signed(), devices);
    let key = parse_verifying_key(&identity.public()).expect("a valid key");
    let removed = before
        .list()
        .devices
        .iter()
        .filter(|d| next.device(d.id).is_none())
        .map(|d| DeviceAddr {
            user: next.user.clone(),
            device: d.id,
        })
        .collect();
    ValidDeviceListUpdate {
        device_list: identity
            .sign_device_list(&next)
            .verify(&key)
            .expect("a list it signed"),
        replaces: before.list().revision,
        added,
        removed,
    }
}

async fn pending_users(s: &dyn Storage) -> Vec<Option<Username>> {
    let pending = s.kt_pending(100).await.expect("the queue");
    let ids: Vec<u64> = pending.iter().map(|(id, _)| *id).collect();
    s.kt_published(&ids).await.expect("cleared");
    pending.into_iter().map(|(_, u)| u).collect()
}

pub async fn a_device_list_update_adds_a_device_once_and_queues_the_account_for_the_log(
    s: Arc<dyn Storage>,
) {
    let (identity, phone, reg) = account_with_identity(&*s, "alice").await;
    pending_users(&*s).await;
    let laptop = DeviceKey::generate(phone.user.clone());
    let mut devices = reg.device_list.list().devices.clone();
    devices.push(laptop.entry("laptop", 2));
    let added = Some((
        laptop.addr().clone(),
        vec![b"l-kp-0".to_vec(), b"l-kp-1".to_vec()],
        b"l-last".to_vec(),
    ));
    let change = update(&identity, &reg.device_list, devices, added);
    assert!(s.update_device_list(&change).await.expect("updated"));
    let stored = s.account(&phone.user).await.expect("read").expect("exists");
    assert_eq!(
        stored.signed_device_list(),
        change.device_list.signed().clone()
    );
    assert_eq!(
        s.device_key(laptop.addr()).await.expect("read"),
        Some(laptop.public().to_vec())
    );
    let count = s.key_package_count(laptop.addr()).await.expect("count");
    assert_eq!((count.count, count.last_resort), (2, true));
    assert_eq!(pending_users(&*s).await, [Some(phone.user.clone())]);

    // The same change again (or any made from the old revision) changes nothing.
    let before = stats(&*s).await;
    assert!(!s.update_device_list(&change).await.expect("refused"));
    assert_eq!(stats(&*s).await, before);
    assert!(pending_users(&*s).await.is_empty());
}

pub async fn a_device_removed_loses_its_key_packages_tokens_queue_and_roster_places(
    s: Arc<dyn Storage>,
) {
    let (identity, phone, reg) = account_with_identity(&*s, "alice").await;
    let laptop = DeviceKey::generate(phone.user.clone());
    let mut devices = reg.device_list.list().devices.clone();
    devices.push(laptop.entry("laptop", 2));
    let added = Some((
        laptop.addr().clone(),
        vec![b"l-kp".to_vec()],
        b"l-last".to_vec(),
    ));
    let two = update(&identity, &reg.device_list, devices, added);
    assert!(s.update_device_list(&two).await.expect("updated"));
    s.put_token(b"laptop-token", laptop.addr(), 1, u64::MAX)
        .await
        .expect("token");
    s.put_token(b"phone-token", &phone, 1, u64::MAX)
        .await
        .expect("token");
    // A group of both devices, with a commit queued for the laptop.
    let mut made = send(&group(1), 0, &[laptop.addr()]);
    made.kind = MessageKind::Commit;
    made.roster = Some(vec![phone.clone(), laptop.addr().clone()]);
    made.accepted(&*s, &phone).await;
    assert_eq!(queued(&*s, laptop.addr()).await.len(), 1);
    assert_eq!(stats(&*s).await.roster_entries, 2);

    let one = update(
        &identity,
        &two.device_list,
        vec![reg.device_list.list().devices[0].clone()],
        None,
    );
    assert_eq!(one.removed, [laptop.addr().clone()]);
    assert!(s.update_device_list(&one).await.expect("updated"));
    assert!(s.device_key(laptop.addr()).await.expect("read").is_none());
    let count = s.key_package_count(laptop.addr()).await.expect("count");
    assert_eq!((count.count, count.last_resort), (0, false));
    assert!(s.token(b"laptop-token").await.expect("read").is_none());
    assert!(queued(&*s, laptop.addr()).await.is_empty());
    assert_eq!(stats(&*s).await.roster_entries, 1);
    // The device that stays keeps what it had.
    assert!(s.token(b"phone-token").await.expect("read").is_some());
    assert!(s.device_key(&phone).await.expect("read").is_some());
}

pub async fn each_devices_last_sign_in_is_recorded_and_forgotten_with_the_device(
    s: Arc<dyn Storage>,
) {
    let (identity, phone, reg) = account_with_identity(&*s, "alice").await;
    let (_, bob, _) = account_with_identity(&*s, "bob").await;
    let laptop = DeviceKey::generate(phone.user.clone());
    let mut devices = reg.device_list.list().devices.clone();
    devices.push(laptop.entry("laptop", 2));
    let added = Some((laptop.addr().clone(), Vec::new(), b"l-last".to_vec()));
    let two = update(&identity, &reg.device_list, devices, added);
    assert!(s.update_device_list(&two).await.expect("updated"));
    let seen = |mut v: Vec<(DeviceId, Option<u64>)>| {
        v.sort();
        v
    };
    // Registered and linked, but neither signed in yet.
    assert_eq!(
        s.devices_seen(&phone.user).await.expect("read"),
        seen(vec![(phone.device, None), (laptop.addr().device, None)])
    );
    s.put_token(b"phone-1", &phone, 100, 3700)
        .await
        .expect("token");
    s.put_token(b"laptop-1", laptop.addr(), 120, 3720)
        .await
        .expect("token");
    s.put_token(b"phone-2", &phone, 150, 3750)
        .await
        .expect("token");
    s.put_token(b"bob-1", &bob, 200, 3800).await.expect("token");
    // A sign-in that raced a later one and was stored after it does not move it back.
    s.put_token(b"phone-0", &phone, 90, 3690)
        .await
        .expect("token");
    assert_eq!(
        s.devices_seen(&phone.user).await.expect("read"),
        seen(vec![
            (phone.device, Some(150)),
            (laptop.addr().device, Some(120))
        ])
    );
    assert_eq!(
        s.devices_seen(&bob.user).await.expect("read"),
        [(bob.device, Some(200))]
    );
    let nobody = Username::parse("nobody").expect("a valid name");
    assert!(s.devices_seen(&nobody).await.expect("read").is_empty());

    let one = update(
        &identity,
        &two.device_list,
        vec![reg.device_list.list().devices[0].clone()],
        None,
    );
    assert!(s.update_device_list(&one).await.expect("updated"));
    assert_eq!(
        s.devices_seen(&phone.user).await.expect("read"),
        [(phone.device, Some(150))]
    );
}

pub async fn a_link_is_answered_once_and_not_found_once_expired(s: Arc<dyn Storage>) {
    let id = LinkId([1, 2, 3, 4, 5, 6]);
    let link = Link {
        user: Username::parse("alice").expect("a valid name"),
        offer: b"offer".to_vec(),
        secret_hash: vec![7; 32],
        expires_at: 100,
        answer: None,
    };
    assert!(s.put_link(&id, &link).await.expect("stored"));
    assert!(!s.put_link(&id, &link).await.expect("taken"));
    assert_eq!(s.link(&id, 99).await.expect("read"), Some(link.clone()));
    let answer = LinkAnswer {
        sealed: b"sealed".to_vec().into(),
        mac: vec![3; 32].into(),
        archive: b"archive".to_vec().into(),
    };
    assert!(s.answer_link(&id, &answer, 99).await.expect("answered"));
    let other = LinkAnswer {
        sealed: b"other".to_vec().into(),
        mac: vec![4; 32].into(),
        archive: Vec::new().into(),
    };
    assert!(!s.answer_link(&id, &other, 99).await.expect("once"));
    assert_eq!(
        s.link(&id, 99).await.expect("read").and_then(|l| l.answer),
        Some(answer)
    );
    // Expired at 100: not found, not answerable, and purged.
    assert_eq!(s.link(&id, 100).await.expect("read"), None);
    let later = LinkId([9; 6]);
    assert!(s.put_link(&later, &link).await.expect("stored"));
    assert!(!s.answer_link(&later, &other, 100).await.expect("expired"));
    s.purge(0, 100).await.expect("purged");
    assert!(s.put_link(&id, &link).await.expect("free again"));
    s.delete_link(&id).await.expect("deleted");
    assert_eq!(s.link(&id, 0).await.expect("read"), None);
}
