//! `sotto verify` in the engine: safety numbers, confirming them, and accepting a contact's
//! new identity key.

use super::local::{LocalServer, forged_account};
use crate::ClientError;
use sotto_proto::Username;

fn user(name: &str) -> Username {
    Username::parse(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_get_one_safety_number_and_only_that_number_marks_the_contact_verified() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let bob = server.device("bob").await;
    let seen_by_alice = alice.contact_status(&user("bob")).await.unwrap();
    let seen_by_bob = bob.contact_status(&user("alice")).await.unwrap();
    assert_eq!(seen_by_alice.safety_number, seen_by_bob.safety_number);
    assert_eq!(seen_by_alice.safety_number.len(), 60);
    assert!(!seen_by_alice.verified);
    assert!(seen_by_alice.log_epoch >= 1);

    let mut wrong = seen_by_alice.safety_number.clone().into_bytes();
    wrong[59] = if wrong[59] == b'0' { b'1' } else { b'0' };
    let e = alice
        .confirm_contact(&user("bob"), std::str::from_utf8(&wrong).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
    assert!(!alice.contact_status(&user("bob")).await.unwrap().verified);
    // What is not a safety number at all is a usage error.
    let e = alice
        .confirm_contact(&user("bob"), "12345")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
    // Nothing to accept while the key has not changed.
    let e = alice.accept_identity(&user("bob")).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
    // A typo is not kept as a security event.
    assert!(alice.unshown().unwrap().is_empty());

    let typed = crate::safety::grouped(&seen_by_bob.safety_number);
    assert!(
        alice
            .confirm_contact(&user("bob"), &typed)
            .await
            .unwrap()
            .verified
    );
    assert!(alice.contact_status(&user("bob")).await.unwrap().verified);
    let e = alice.contact_status(&user("alice")).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_key_is_refused_until_accepted_and_then_is_not_verified() {
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let _bob = server.device("bob").await;
    let before = alice.contact_status(&user("bob")).await.unwrap();
    alice
        .confirm_contact(&user("bob"), &before.safety_number)
        .await
        .unwrap();
    // Bob's account gets a new identity key: first only in the server's accounts, then in
    // the log too.
    let renewed = forged_account("bob");
    let storage = alice.transport().storage();
    storage.replace_account(&renewed, false).await;
    // A key the log does not hold cannot be accepted; the old one stays pinned.
    let e = alice.accept_identity(&user("bob")).await.unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
    storage.replace_account(&renewed, true).await;

    let e = alice.contact_status(&user("bob")).await.unwrap_err();
    let ClientError::Security(reason) = e else {
        panic!("not a security failure: {e:?}");
    };
    assert!(reason.contains("sotto verify bob --accept"), "{reason}");
    let accepted = alice.accept_identity(&user("bob")).await.unwrap();
    assert!(!accepted.verified);
    assert_ne!(accepted.safety_number, before.safety_number);
    // The refusal showed the number the accepted key has, to compare before accepting.
    assert!(
        reason.contains(&crate::safety::grouped(&accepted.safety_number)),
        "{reason}"
    );
    let now = alice.contact_status(&user("bob")).await.unwrap();
    assert_eq!(now.safety_number, accepted.safety_number);
}

/// A compelled server gives bob a new identity key it does not publish, with a list that
/// names bob's logged list as the one it replaces (so the log looks merely behind): a
/// refusal, not a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_identity_key_the_log_does_not_hold_is_refused_even_as_the_next_revision() {
    use crate::{DeviceKey, IdentityKey};
    use sotto_proto::api::ValidRegistration;
    use sotto_proto::device_list::parse_verifying_key;
    use sotto_proto::kt::device_list_value;
    use sotto_server::storage::AccountStore as _;
    let server = LocalServer::new().await;
    let alice = server.device("alice").await;
    let _bob = server.device("bob").await;
    alice.contact_status(&user("bob")).await.unwrap();
    let storage = alice.transport().storage();
    let logged = storage.account(&user("bob")).await.unwrap().unwrap();
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(user("bob"));
    let mut list = device.first_device_list("laptop", 1);
    list.revision = 2;
    list.previous = Some(
        device_list_value(&logged.signed_device_list())
            .to_vec()
            .into(),
    );
    let signed = identity.sign_device_list(&list);
    let key = parse_verifying_key(&identity.public()).unwrap();
    let forged = ValidRegistration {
        identity_key: identity.public().to_vec(),
        device_list: signed.verify(&key).unwrap(),
        key_packages: vec![b"attacker key package".to_vec()],
        last_resort: b"attacker last resort".to_vec(),
    };
    storage.replace_account(&forged, false).await;

    alice.forget_lists();
    let e = alice.contact_status(&user("bob")).await.unwrap_err();
    let ClientError::Security(reason) = e else {
        panic!("not a security failure: {e:?}");
    };
    assert!(
        reason.contains("new identity key that its key-transparency log does not hold"),
        "{reason}"
    );
    let e = alice.send_text("bob", "for bob only").await.unwrap_err();
    assert!(matches!(e, ClientError::Security(_)), "{e:?}");
}
