//! Accounts, sign-in and the KeyPackage directory over each backend.

use super::{account, registration, stats};
use crate::storage::{Claim, Stats, Storage};
use sotto_proto::Username;
use sotto_proto::api::ValidUpload;
use std::sync::Arc;

pub async fn the_server_identity_and_challenge_key_stay_the_same(s: Arc<dyn Storage>) {
    let id = s.server_id().await.unwrap();
    let key = s.challenge_key().await.unwrap();
    assert_eq!(s.server_id().await.unwrap(), id);
    assert_eq!(*s.challenge_key().await.unwrap(), *key);
    assert_eq!(stats(&*s).await, Stats::default());
}

pub async fn an_account_is_created_once_with_its_device_and_key_packages(s: Arc<dyn Storage>) {
    let (alice, reg) = registration("alice", 3);
    assert!(s.create_account(&reg, 1).await.unwrap());
    let before = stats(&*s).await;
    let (_, again) = registration("alice", 1);
    assert!(!s.create_account(&again, 2).await.unwrap(), "name taken");
    assert_eq!(stats(&*s).await, before, "a taken name changes nothing");
    let stored = s.account(&alice.user).await.unwrap().expect("stored");
    assert_eq!(stored.identity_key, reg.identity_key);
    assert_eq!(
        stored.device_list_body,
        reg.device_list.signed().body.as_slice().to_vec()
    );
    assert_eq!(
        s.device_key(&alice).await.unwrap(),
        Some(
            reg.device_list.list().devices[0]
                .signature_key
                .as_slice()
                .to_vec()
        )
    );
    let count = s.key_package_count(&alice).await.unwrap();
    assert_eq!((count.count, count.last_resort), (3, true));
    let nobody = Username::parse("nobody").unwrap();
    assert!(s.account(&nobody).await.unwrap().is_none());
}

pub async fn a_challenge_is_used_once_and_tokens_are_found_by_hash(s: Arc<dyn Storage>) {
    let alice = account(&*s, "alice").await;
    assert!(s.use_challenge(b"c1", 50).await.unwrap());
    assert!(!s.use_challenge(b"c1", 50).await.unwrap(), "a replay");
    s.put_token(b"t1", &alice, 40, 50).await.unwrap();
    assert_eq!(s.token(b"t1").await.unwrap(), Some((alice, 50)));
    assert_eq!(s.token(b"t2").await.unwrap(), None);
    // Expired at 50: purged then, not before.
    s.purge(0, 49).await.unwrap();
    assert_eq!(stats(&*s).await.used_challenges, 1);
    s.purge(0, 50).await.unwrap();
    assert!(s.token(b"t1").await.unwrap().is_none());
    assert_eq!(stats(&*s).await.used_challenges, 0);
}

pub async fn key_packages_are_claimed_oldest_first_then_the_last_resort_one(s: Arc<dyn Storage>) {
    let bob = account(&*s, "bob").await;
    let upload = ValidUpload {
        one_time: vec![b"kp-a".to_vec()],
        last_resort: Some(b"new-last-resort".to_vec()),
    };
    let count = s.add_key_packages(&bob, &upload, 3).await.unwrap();
    assert_eq!(count.map(|c| c.count), Some(3));
    // Past the cap nothing is added.
    assert!(
        s.add_key_packages(&bob, &upload, 3)
            .await
            .unwrap()
            .is_none()
    );
    let mut handed = Vec::new();
    for _ in 0..4 {
        let Claim::Claimed(kps) = s.claim_key_packages(&bob.user, true).await.unwrap() else {
            panic!("bob has KeyPackages");
        };
        assert_eq!(kps.len(), 1);
        assert_eq!(kps[0].device, bob.device);
        handed.push(kps[0].key_package.as_slice().to_vec());
    }
    assert_eq!(
        handed,
        [
            b"bob-kp-0".to_vec(),
            b"bob-kp-1".to_vec(),
            b"kp-a".to_vec(),
            b"new-last-resort".to_vec()
        ]
    );
    let count = s.key_package_count(&bob).await.unwrap();
    assert_eq!((count.count, count.last_resort), (0, true));
    let nobody = Username::parse("nobody").unwrap();
    assert_eq!(
        s.claim_key_packages(&nobody, true).await.unwrap(),
        Claim::UnknownUser
    );
}

pub async fn a_claim_without_one_time_hands_out_the_last_resort_and_takes_nothing(
    s: Arc<dyn Storage>,
) {
    let bob = account(&*s, "bob").await;
    let Claim::Claimed(kps) = s.claim_key_packages(&bob.user, false).await.unwrap() else {
        panic!("bob has a last-resort KeyPackage");
    };
    assert_eq!(kps[0].key_package.as_slice().to_vec(), b"bob-last-resort");
    assert_eq!(s.key_package_count(&bob).await.unwrap().count, 2);
}

pub async fn concurrent_claims_each_get_a_different_key_package_until_only_the_last_resort_is_left(
    s: Arc<dyn Storage>,
) {
    let bob = account(&*s, "bob").await;
    let claims: Vec<_> = (0..5)
        .map(|_| {
            let (s, user) = (s.clone(), bob.user.clone());
            tokio::spawn(async move { s.claim_key_packages(&user, true).await })
        })
        .collect();
    let mut handed = Vec::new();
    for claim in claims {
        let Claim::Claimed(kps) = claim.await.unwrap().unwrap() else {
            panic!("bob has a last-resort KeyPackage");
        };
        handed.push(kps[0].key_package.as_slice().to_vec());
    }
    handed.sort();
    assert_eq!(
        handed,
        [
            b"bob-kp-0".to_vec(),
            b"bob-kp-1".to_vec(),
            b"bob-last-resort".to_vec(),
            b"bob-last-resort".to_vec(),
            b"bob-last-resort".to_vec(),
        ]
    );
}
