//! The key-transparency log over each backend: akd's own storage tests, and the queue of
//! accounts to publish.

use super::{account, registration};
use crate::kt::{Kt, KtConfig, KtDatabase};
use crate::storage::Storage;
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
        kt.lookup(&alice.user, None, std::time::Duration::ZERO)
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
            .lookup(user, None, std::time::Duration::ZERO)
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
