//! The engine alone, in memory: the MLS operations and checks a client relies on.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use openmls::prelude::{CredentialWithKey, LeafNodeParameters, MlsGroup, NewSignerBundle};
use openmls_libcrux_crypto::Provider;
use sotto_core::group::{self, Received};
use sotto_core::suite::{XWING, ciphersuite};
use sotto_core::{Content, CoreError, DeviceKey, Envelope};
use sotto_proto::Username;
use tls_codec::Serialize as _;

fn device(name: &str) -> DeviceKey {
    DeviceKey::generate(Username::parse(name).unwrap())
}

struct Member {
    provider: Provider,
    key: DeviceKey,
}

fn member(name: &str) -> Member {
    Member {
        provider: Provider::new().unwrap(),
        key: device(name),
    }
}

fn key_package(of: &Member, checker: &Member) -> openmls::prelude::KeyPackage {
    let suite = ciphersuite(XWING).unwrap();
    let kp = group::new_key_packages(&of.provider, &of.key, suite, 1, false).unwrap();
    group::verify_key_package(
        &checker.provider,
        &kp.one_time[0],
        of.key.addr(),
        &of.key.public(),
        suite,
    )
    .unwrap()
}

/// Alice creates a group and adds bob; returns both views of it.
fn alice_adds_bob(alice: &Member, bob: &Member) -> (MlsGroup, MlsGroup) {
    let suite = ciphersuite(XWING).unwrap();
    let mut ga = group::create(&alice.provider, &alice.key, suite).unwrap();
    let out = group::add(
        &alice.provider,
        &alice.key,
        &mut ga,
        &[key_package(bob, alice)],
        1_700_000_000,
    )
    .unwrap();
    group::merge_pending(&alice.provider, &mut ga).unwrap();
    let gb = group::join(
        &bob.provider,
        &out.welcome.unwrap(),
        ga.group_id().as_slice(),
    )
    .unwrap();
    (ga, gb)
}

#[test]
fn key_packages_must_match_the_device_list() {
    let suite = ciphersuite(XWING).unwrap();
    let (alice, bob) = (member("alice"), member("bob"));
    let kp = group::new_key_packages(&bob.provider, &bob.key, suite, 1, true).unwrap();
    let bytes = &kp.one_time[0];
    let other = device("bob");
    let wrong_device = group::verify_key_package(
        &alice.provider,
        bytes,
        other.addr(),
        &bob.key.public(),
        suite,
    );
    assert!(matches!(wrong_device, Err(CoreError::Security(_))));
    let wrong_key = group::verify_key_package(
        &alice.provider,
        bytes,
        bob.key.addr(),
        &other.public(),
        suite,
    );
    assert!(matches!(wrong_key, Err(CoreError::Security(_))));
    let other_suite = group::verify_key_package(
        &alice.provider,
        bytes,
        bob.key.addr(),
        &bob.key.public(),
        ciphersuite(sotto_core::suite::X25519).unwrap(),
    );
    assert!(matches!(other_suite, Err(CoreError::Security(_))));
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(
        group::verify_key_package(
            &alice.provider,
            &tampered,
            bob.key.addr(),
            &bob.key.public(),
            suite
        )
        .is_err()
    );
    // The last-resort KeyPackage verifies too (it needs the LastResort capability).
    let last_resort = kp.last_resort.unwrap();
    group::verify_key_package(
        &alice.provider,
        &last_resort,
        bob.key.addr(),
        &bob.key.public(),
        suite,
    )
    .unwrap();
}

#[test]
fn a_losing_commit_is_discarded_and_redone_after_the_winner() {
    let (alice, bob, carol, dave) = (
        member("alice"),
        member("bob"),
        member("carol"),
        member("dave"),
    );
    let (mut ga, mut gb) = alice_adds_bob(&alice, &bob);

    // Both commit at epoch 1; the server takes alice's.
    let winner = group::add(
        &alice.provider,
        &alice.key,
        &mut ga,
        &[key_package(&carol, &alice)],
        1_700_000_000,
    )
    .unwrap();
    group::add(
        &bob.provider,
        &bob.key,
        &mut gb,
        &[key_package(&dave, &bob)],
        1_700_000_000,
    )
    .unwrap();
    group::merge_pending(&alice.provider, &mut ga).unwrap();
    // Bob rebases: drop his pending commit, process the winner, commit again.
    group::discard_pending(&bob.provider, &mut gb).unwrap();
    let Received::Commit(staged) = group::process(&bob.provider, &mut gb, &winner.commit).unwrap()
    else {
        panic!("expected a commit")
    };
    assert_eq!(staged.summary.added[0].addr, *carol.key.addr());
    group::merge_staged(&bob.provider, &mut gb, staged).unwrap();
    let again = group::add(
        &bob.provider,
        &bob.key,
        &mut gb,
        &[key_package(&dave, &bob)],
        1_700_000_000,
    )
    .unwrap();
    group::merge_pending(&bob.provider, &mut gb).unwrap();
    let Received::Commit(staged) = group::process(&alice.provider, &mut ga, &again.commit).unwrap()
    else {
        panic!("expected a commit")
    };
    group::merge_staged(&alice.provider, &mut ga, staged).unwrap();
    assert_eq!(ga.epoch(), gb.epoch());
    assert_eq!(group::members(&ga).unwrap(), group::members(&gb).unwrap());
    assert_eq!(group::members(&ga).unwrap().len(), 4);
}

#[test]
fn a_rotated_signature_key_is_surfaced_for_the_directory_check() {
    let (alice, bob) = (member("alice"), member("bob"));
    let (mut ga, mut gb) = alice_adds_bob(&alice, &bob);

    // Bob's device swaps in a signature key that is not in his signed device list.
    let rogue = DeviceKey::from_secret(bob.key.addr().clone(), &[42; 32]).unwrap();
    let bundle = gb
        .self_update_with_new_signer(
            &bob.provider,
            &bob.key,
            NewSignerBundle {
                signer: &rogue,
                credential_with_key: CredentialWithKey {
                    credential: rogue.credential_with_key().credential,
                    signature_key: rogue.public().to_vec().into(),
                },
            },
            LeafNodeParameters::default(),
        )
        .unwrap();
    let commit = bundle.into_commit().tls_serialize_detached().unwrap();
    let Received::Commit(staged) = group::process(&alice.provider, &mut ga, &commit).unwrap()
    else {
        panic!("expected a commit")
    };
    let proven = staged.summary.proven_devices();
    assert_eq!(proven.len(), 1);
    assert_eq!(proven[0].addr, *bob.key.addr());
    assert_eq!(proven[0].signature_key, rogue.public().to_vec());
    assert_ne!(proven[0].signature_key, bob.key.public().to_vec());
}

fn envelope(content: Content) -> Envelope {
    Envelope {
        sent_at: 1_700_000_000,
        counter: Some(1),
        log_root: None,
        content,
    }
}

#[test]
fn content_decoding_rejects_what_it_does_not_know() {
    let text = envelope(Content::Text { body: "hi".into() });
    assert_eq!(Envelope::decode(&text.encode()).unwrap(), text);
    let info = envelope(Content::GroupInfo {
        name: Some("team".into()),
    });
    assert_eq!(Envelope::decode(&info.encode()).unwrap(), info);
    for bad in [
        // Version 1 had no sender time.
        &br#"{"v":1,"type":"text","body":"hi"}"#[..],
        br#"{"v":4,"sent_at":1,"type":"text","body":"hi"}"#,
        br#"{"v":2,"type":"text","body":"hi"}"#,
        br#"{"v":2,"sent_at":1,"type":"video","url":"x"}"#,
        br#"{"v":2,"sent_at":1,"type":"group_info","name":""}"#,
        br#"{"v":2,"sent_at":1,"type":"group_info","name":"a\u202eb"}"#,
        br#"{"v":2,"sent_at":1,"type":"group_info","name":"a\u001bb"}"#,
        br#"{"v":2,"sent_at":-1,"type":"text","body":"hi"}"#,
        b"\xff\x00",
    ] {
        assert!(
            Envelope::decode(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = envelope(Content::Text {
        body: "x".repeat(sotto_core::content::MAX_TEXT + 1),
    });
    assert!(Envelope::decode(&long.encode()).is_err());
}

#[test]
fn messages_and_commits_carry_the_senders_own_time() {
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));
    let (mut ga, mut gb) = alice_adds_bob(&alice, &bob);
    let sent = envelope(Content::Text { body: "hi".into() });
    let wire = group::encrypt(&alice.provider, &alice.key, &mut ga, &sent).unwrap();
    let Received::Content { sender, envelope } =
        group::process(&bob.provider, &mut gb, &wire).unwrap()
    else {
        panic!("expected content")
    };
    assert_eq!((sender, envelope), (alice.key.addr().clone(), sent));

    let commit = group::add(
        &alice.provider,
        &alice.key,
        &mut ga,
        &[key_package(&carol, &alice)],
        1_234_567,
    )
    .unwrap();
    let Received::Commit(staged) = group::process(&bob.provider, &mut gb, &commit.commit).unwrap()
    else {
        panic!("expected a commit")
    };
    assert_eq!(staged.summary.sent_at, Some(1_234_567));
}

#[test]
fn an_mls_failure_keeps_the_openmls_error_as_its_source() {
    let (alice, bob, carol) = (member("alice"), member("bob"), member("carol"));
    let suite = ciphersuite(XWING).unwrap();
    let mut ga = group::create(&alice.provider, &alice.key, suite).unwrap();
    let out = group::add(
        &alice.provider,
        &alice.key,
        &mut ga,
        &[key_package(&bob, &alice)],
        1_700_000_000,
    )
    .unwrap();
    // Carol holds none of the KeyPackages bob's Welcome is encrypted to.
    let err = group::join(
        &carol.provider,
        &out.welcome.unwrap(),
        ga.group_id().as_slice(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            CoreError::Mls {
                op: sotto_core::MlsOp::Join,
                ..
            }
        ),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).expect("openmls's error");
    assert!(
        source.is::<openmls::prelude::WelcomeError<openmls_memory_storage::MemoryStorageError>>(),
        "{source:?}"
    );
}
