//! The key-transparency log over each backend: akd's own storage tests, and the queue of
//! accounts to publish.

use super::{account, registration};
use crate::kt::{Kt, KtConfig, KtDatabase};
use crate::storage::{KtEpoch, Storage};
use sotto_proto::kt::device_list_value;
use std::sync::Arc;

pub async fn akds_own_storage_tests_pass(s: Arc<dyn Storage>) {
    akd::storage::tests::run_test_cases_for_storage_impl(KtDatabase::new(s)).await;
}

pub async fn a_new_account_is_published_once_with_a_lookup_proof_of_its_device_list(
    s: Arc<dyn Storage>,
) {
    let alice = account(&*s, "alice").await;
    let bob = account(&*s, "bob").await;
    let kt = Kt::open(s.clone(), KtConfig::default())
        .await
        .expect("the log");
    assert_eq!(kt.epoch().await.expect("an epoch"), 0);
    assert!(
        kt.lookup(&alice.user, None, 0, std::time::Duration::ZERO)
            .await
            .expect("a lookup")
            == Err(0),
        "nobody is in the log before its first epoch"
    );

    assert_eq!(kt.publish_pending().await.expect("published"), Some(1));
    assert!(s.kt_pending(10).await.expect("the queue").is_empty());
    // Nothing changed since: no new epoch.
    assert_eq!(kt.publish_pending().await.expect("nothing to do"), None);

    for user in [&alice.user, &bob.user] {
        let found = kt
            .lookup(user, None, 0, std::time::Duration::ZERO)
            .await
            .expect("a lookup")
            .expect("in the log");
        assert_eq!(found.epoch, 1);
        let verified = sotto_proto::kt::verify_lookup_proof(&kt.vrf_public_key(), user, &found)
            .expect("the proof verifies");
        let account = s.account(user).await.expect("read").expect("exists");
        assert_eq!(
            verified.value,
            device_list_value(&account.signed_device_list())
        );
        assert_eq!(verified.epoch, 1);
    }
}

pub async fn each_queued_account_is_published_once_and_the_log_survives_reopening(
    s: Arc<dyn Storage>,
) {
    account(&*s, "alice").await;
    let kt = Kt::open(s.clone(), KtConfig::default())
        .await
        .expect("the log");
    assert_eq!(kt.publish_pending().await.expect("published"), Some(1));
    // Only the account queued since is in the next epoch; alice is not queued again.
    let (_, carol) = registration("carol", 1);
    assert!(s.create_account(&carol, 2).await.expect("stored"));
    assert_eq!(s.kt_pending(10).await.expect("the queue").len(), 1);
    assert_eq!(kt.publish_pending().await.expect("published"), Some(2));
    assert_eq!(kt.publish_pending().await.expect("nothing to do"), None);
    // The log survives reopening: the same epoch and key.
    let key = kt.vrf_public_key();
    drop(kt);
    let kt = Kt::open(s, KtConfig::default()).await.expect("the log");
    assert_eq!(kt.epoch().await.expect("an epoch"), 2);
    assert_eq!(kt.vrf_public_key(), key);
}

pub async fn each_epoch_is_recorded_with_a_proof_that_it_extends_the_one_before(
    s: Arc<dyn Storage>,
) {
    let kt = Kt::open(s.clone(), KtConfig::default())
        .await
        .expect("the log");
    // The empty log is recorded when it is made; nothing comes before it.
    let empty = s
        .kt_epoch(0)
        .await
        .expect("read")
        .expect("epoch 0 recorded");
    assert_eq!(empty.audit, None);
    assert_eq!(s.kt_first_epoch().await.expect("read"), Some(0));
    account(&*s, "alice").await;
    assert_eq!(kt.publish_pending().await.expect("published"), Some(1));
    let one = s
        .kt_epoch(1)
        .await
        .expect("read")
        .expect("epoch 1 recorded");
    let shown = kt.recorded(1, true).await.expect("read").expect("epoch 1");
    assert_eq!(shown.root_hash.as_slice(), one.root.as_slice());
    let proof: akd::proto::specs::types::SingleAppendOnlyProof =
        protobuf::Message::parse_from_bytes(&one.audit.clone().expect("a proof"))
            .expect("it parses");
    let proof = akd::SingleAppendOnlyProof::try_from(&proof).expect("it converts");
    let root = |r: &[u8]| -> [u8; 32] { r.try_into().expect("32 bytes") };
    akd::auditor::verify_consecutive_append_only::<sotto_proto::kt::KtConfiguration>(
        &proof,
        root(&empty.root),
        root(&one.root),
        1,
    )
    .await
    .expect("epoch 1 extends epoch 0");
    // A second record of an epoch changes nothing.
    s.kt_record_epoch(&KtEpoch {
        epoch: 1,
        root: vec![7; 32],
        audit: None,
    })
    .await
    .expect("ignored");
    assert_eq!(s.kt_root(1).await.expect("read"), Some(one.root.clone()));
    assert_eq!(s.kt_epoch(1).await.expect("read"), Some(one));
    assert_eq!(s.kt_root(2).await.expect("read"), None);
    assert_eq!(s.kt_epoch(2).await.expect("read"), None);
}

pub async fn a_witness_cosignature_is_kept_per_epoch_and_witness_the_newest_winning(
    s: Arc<dyn Storage>,
) {
    Kt::open(s.clone(), KtConfig::default())
        .await
        .expect("the log");
    s.kt_cosign(0, "w2", 5, "line w2 at 5").await.expect("kept");
    s.kt_cosign(0, "w2", 3, "line w2 at 3")
        .await
        .expect("older: ignored");
    s.kt_cosign(0, "w1", 4, "line w1 at 4").await.expect("kept");
    assert_eq!(
        s.kt_cosignatures(0).await.expect("read"),
        vec![
            ("w1".to_owned(), "line w1 at 4".to_owned()),
            ("w2".to_owned(), "line w2 at 5".to_owned())
        ]
    );
    s.kt_cosign(0, "w2", 9, "line w2 at 9")
        .await
        .expect("newer: kept");
    assert_eq!(
        s.kt_cosignatures(0).await.expect("read"),
        vec![
            ("w1".to_owned(), "line w1 at 4".to_owned()),
            ("w2".to_owned(), "line w2 at 9".to_owned())
        ]
    );
    assert!(s.kt_cosignatures(1).await.expect("read").is_empty());
}
