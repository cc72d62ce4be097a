//! Property tests: every wire type survives an encode/decode round trip unchanged, and every
//! parser of untrusted bytes returns an error instead of panicking, whatever the input.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use ed25519_dalek::{Signer as _, SigningKey};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sotto_proto::api::*;
use sotto_proto::device_list::{DeviceEntry, DeviceList, SignedDeviceListIn};
use sotto_proto::framing::{check_key_package, check_welcome, parse_group_message};
use sotto_proto::{Bytes, DeviceAddr, DeviceId, ErrorBody, ErrorCode, GroupId, ServerId, Username};

fn username() -> impl Strategy<Value = Username> {
    "[a-z][a-z0-9_.-]{2,31}".prop_map(|s| Username::parse(&s).unwrap())
}
fn device_id() -> impl Strategy<Value = DeviceId> {
    any::<u64>().prop_map(DeviceId::new)
}
fn addr() -> impl Strategy<Value = DeviceAddr> {
    (username(), device_id()).prop_map(|(user, device)| DeviceAddr { user, device })
}
fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..200).prop_map(Bytes)
}
fn group_id() -> impl Strategy<Value = GroupId> {
    prop::collection::vec(any::<u8>(), 16..=64).prop_map(|b| GroupId::from_bytes(&b).unwrap())
}
fn signed_list() -> impl Strategy<Value = SignedDeviceListIn> {
    (bytes(), bytes()).prop_map(|(body, signature)| SignedDeviceListIn { body, signature })
}
fn addrs() -> impl Strategy<Value = Vec<DeviceAddr>> {
    prop::collection::vec(addr(), 0..5)
}
fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL)
}
fn server_id() -> impl Strategy<Value = ServerId> {
    any::<[u8; 16]>().prop_map(ServerId::from_bytes)
}

/// A valid Ed25519 public key derived from `seed`.
fn device_key(seed: u8) -> Vec<u8> {
    SigningKey::from_bytes(&[seed; 32])
        .verifying_key()
        .to_bytes()
        .to_vec()
}

/// Signs a one-device list whose device has `key` and `name`, and verifies it.
fn verify_one_device_list(key: Vec<u8>, name: &str) -> Result<(), sotto_proto::ProtoError> {
    let identity = SigningKey::from_bytes(&[1; 32]);
    let list = DeviceList {
        version: 1,
        user: Username::parse("alice").unwrap(),
        revision: 1,
        previous: None,
        devices: vec![DeviceEntry {
            id: DeviceId::new(1),
            signature_key: Bytes(key),
            name: name.into(),
            added_at: 1,
        }],
    };
    let body = list.encode();
    let signature = identity
        .sign(&DeviceList::signing_input(&body))
        .to_bytes()
        .to_vec();
    SignedDeviceListIn {
        body: Bytes(body),
        signature: Bytes(signature),
    }
    .verify(&identity.verifying_key())
    .map(|_| ())
}

/// An MLS PrivateMessage (RFC 9420 §6.3.1) with the given header and empty payloads.
fn private_message(group: &[u8], epoch: u64, content_type: u8) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, group.len() as u8];
    m.extend_from_slice(group);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&[content_type, 0, 0, 0]);
    m
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let json = serde_json::to_vec(v).unwrap();
    let back: T = serde_json::from_slice(&json).unwrap();
    assert_eq!(&back, v);
}

proptest! {
    #[test]
    fn ids_round_trip(u in username(), d in device_id(), g in group_id(), a in addr(), s in server_id()) {
        round_trip(&s);
        prop_assert_eq!(ServerId::parse(s.as_str()).unwrap(), s);
        round_trip(&u);
        round_trip(&d);
        round_trip(&g);
        round_trip(&a);
        prop_assert_eq!(Username::parse(u.as_str()).unwrap(), u);
        prop_assert_eq!(DeviceId::parse(&d.to_string()).unwrap(), d);
        prop_assert_eq!(GroupId::parse(&g.to_string()).unwrap(), g);
        prop_assert_eq!(DeviceAddr::from_credential_identity(&a.credential_identity()).unwrap(), a);
    }

    #[test]
    fn error_body_round_trips(code in error_code(), message in ".{0,40}", epoch in any::<Option<u64>>()) {
        round_trip(&ErrorBody { code, message, epoch });
        let s = serde_json::to_string(&code).unwrap();
        prop_assert_eq!(s, format!("\"{}\"", code.as_str()));
    }

    #[test]
    fn account_and_auth_types_round_trip(
        user in username(), a in addr(), b in bytes(), c in bytes(), list in signed_list(),
        n in any::<u64>(), suite in any::<u16>(), token in "[0-9a-f]{64}", server in server_id(),
        kps in prop::collection::vec(bytes(), 0..3),
    ) {
        round_trip(&ServerConfig {
            api_version: 1, ciphersuite: suite, server_id: server, kt_vrf_key: b.clone(),
            kt_checkpoint_key: user.to_string(),
        });
        round_trip(&sotto_proto::kt::LookupResponse {
            epoch: n, root_hash: b.clone(), proof: c.clone(), checkpoint: user.to_string(),
        });
        round_trip(&RegisterRequest {
            identity_key: b.clone(), device_list: list.clone(), key_packages: kps, last_resort: c.clone(),
        });
        round_trip(&RegisterResponse { user: user.clone() });
        round_trip(&ChallengeRequest { device: a.clone() });
        round_trip(&ChallengeResponse { challenge: b.clone(), expires_at: n });
        round_trip(&TokenRequest { device: a.clone(), challenge: b.clone(), signature: c.clone() });
        round_trip(&TokenResponse { token, expires_at: n });
        round_trip(&UserResponse { user, identity_key: b, device_list: list.clone() });
        round_trip(&list);
    }

    #[test]
    fn key_package_types_round_trip(
        kps in prop::collection::vec(bytes(), 0..4), last in prop::option::of(bytes()),
        user in username(), d in device_id(), kp in bytes(), n in any::<u64>(), lr in any::<bool>(),
    ) {
        round_trip(&UploadKeyPackagesRequest { key_packages: kps, last_resort: last });
        round_trip(&KeyPackageCount { count: n, last_resort: lr });
        round_trip(&ClaimRequest { user });
        round_trip(&ClaimResponse { key_packages: vec![ClaimedKeyPackage { device: d, key_package: kp }] });
    }

    #[test]
    fn delivery_types_round_trip(
        g in group_id(), a in addr(), m in bytes(), w in bytes(), r in addrs(), roster in prop::option::of(addrs()),
        with_welcome in any::<bool>(), n in any::<u64>(), ids in prop::collection::vec(any::<u64>(), 0..10),
        client_id in "[0-9a-f]{32}", welcome_kind in any::<bool>(), to_roster in any::<bool>(),
    ) {
        let welcome = with_welcome.then(|| WelcomeOut { message: w, recipients: r.clone() });
        round_trip(&SendRequest { client_id, message: m.clone(), recipients: r, to_roster, roster, welcome });
        round_trip(&SendResponse { id: n, seq: n / 2, epoch: n / 3, accepted_at: n / 5 });
        let q = QueuedMessage {
            id: n, group_id: g, seq: n, sender: a,
            kind: if welcome_kind { QueuedKind::Welcome } else { QueuedKind::Group },
            message: m, accepted_at: n,
        };
        let queue = QueueResponse { messages: vec![q], dropped_total: n };
        round_trip(&queue);
        round_trip(&PushEvent::Messages(queue));
        round_trip(&AckRequest { ids: ids.clone() });
        round_trip(&PushRequest::Ack { ids });
    }

    #[test]
    fn signed_device_lists_verify_and_reject_tampering(
        seed in any::<[u8; 32]>(), user in username(), ids in prop::collection::btree_set(any::<u64>(), 1..5),
        revision in 1u64..1000, flip in any::<usize>(),
    ) {
        let identity = SigningKey::from_bytes(&seed);
        let devices = ids.iter().map(|&id| DeviceEntry {
            id: DeviceId::new(id),
            signature_key: Bytes(device_key((id % 251) as u8)),
            name: "phone".into(),
            added_at: 1,
        }).collect();
        let previous = (revision > 1).then(|| Bytes(vec![7; 32]));
        let list = DeviceList { version: 1, user, revision, previous, devices };
        let body = list.encode();
        let signature = identity.sign(&DeviceList::signing_input(&body)).to_bytes().to_vec();
        let signed = SignedDeviceListIn { body: Bytes(body.clone()), signature: Bytes(signature) };
        let verified = signed.clone().verify(&identity.verifying_key()).unwrap();
        prop_assert_eq!(verified.list(), &list);

        let mut tampered = body;
        let i = flip % tampered.len();
        tampered[i] ^= 0x01;
        let bad = SignedDeviceListIn { body: Bytes(tampered), signature: signed.signature.clone() };
        prop_assert!(bad.verify(&identity.verifying_key()).is_err());
        let other = SigningKey::from_bytes(&[seed[0].wrapping_add(1); 32]);
        prop_assert!(signed.verify(&other.verifying_key()).is_err());
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_group_message(&data);
        let _ = check_welcome(&data);
        let _ = check_key_package(&data);
        let _ = DeviceAddr::from_credential_identity(&data);
        let text = String::from_utf8_lossy(&data);
        let _ = Username::parse(&text);
        let _ = DeviceId::parse(&text);
        let _ = GroupId::parse(&text);
        let _ = serde_json::from_slice::<SendRequest>(&data).map(|r| r.validate(&GroupId::from_bytes(&[0; 16]).unwrap()));
        let owner = DeviceAddr { user: Username::parse("alice").unwrap(), device: DeviceId::new(1) };
        let _ = serde_json::from_slice::<UploadKeyPackagesRequest>(&data).map(|r| r.validate(&owner, &[7; 32]));
        let _ = serde_json::from_slice::<RegisterRequest>(&data).map(RegisterRequest::validate);
        let _ = serde_json::from_slice::<TokenRequest>(&data).map(TokenRequest::validate);
        let _ = serde_json::from_slice::<AckRequest>(&data).map(AckRequest::validate);
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = serde_json::from_slice::<SignedDeviceListIn>(&data).map(|l| l.verify(&key));
        let _ = SignedDeviceListIn { body: Bytes(data.clone()), signature: Bytes(data) }.verify(&key);
    }

    #[test]
    fn mls_parsers_never_panic_on_mutated_headers(tail in prop::collection::vec(any::<u8>(), 0..300), wire in 1u16..8) {
        // A valid MLS 1.0 header with each wire format, then arbitrary bytes.
        let mut data = vec![0, 1];
        data.extend_from_slice(&wire.to_be_bytes());
        data.extend(tail);
        let _ = parse_group_message(&data);
        let _ = check_welcome(&data);
        let _ = check_key_package(&data);
    }
}

#[test]
fn malformed_names_are_rejected() {
    for bad in [
        "",
        "ab",
        "Alice",
        "1abc",
        "a b c",
        "émile",
        &"a".repeat(33),
        "al/ce",
    ] {
        assert!(Username::parse(bad).is_err(), "{bad:?}");
    }
    for bad in [
        "",
        "0123",
        "0123456789ABCDEF",
        "0123456789abcdeg",
        "0123456789abcdef0",
    ] {
        assert!(DeviceId::parse(bad).is_err(), "{bad:?}");
    }
    for bad in [
        "",
        "ab",
        &"ab".repeat(15),
        &"ab".repeat(65),
        &"zz".repeat(16),
    ] {
        assert!(GroupId::parse(bad).is_err(), "{bad:?}");
    }
    let oversized = vec![0u8; sotto_proto::limits::MAX_MLS_MESSAGE + 1];
    assert!(matches!(
        parse_group_message(&oversized),
        Err(sotto_proto::ProtoError::TooLarge(_))
    ));
}

#[test]
fn device_lists_refuse_keys_that_are_not_ed25519_points() {
    verify_one_device_list(device_key(3), "phone").unwrap();
    // 32 bytes whose y coordinate is not on the curve: found by trying, the same every run.
    let not_a_point = (0u8..=255)
        .map(|b| {
            let mut k = [b; 32];
            k[31] &= 0x7f;
            k
        })
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .expect("some constant byte string is not a point");
    let err = verify_one_device_list(not_a_point.to_vec(), "phone").unwrap_err();
    assert!(err.to_string().contains("Ed25519"), "{err}");
}

#[test]
fn device_names_refuse_control_and_invisible_formatting_characters() {
    for name in ["laptop", "Jürgen's phone", "電話", "a"] {
        verify_one_device_list(device_key(3), name).unwrap();
    }
    for name in [
        "",
        "evil\u{202E}enohp",
        "nul\0",
        "esc\u{1b}[31m",
        "new\nline",
        "zero\u{200B}width",
        "isolate\u{2066}x",
        "soft\u{00AD}hyphen",
        "line\u{2028}break",
        "filler\u{3164}",
        "tag\u{E0041}",
        "   ",
        &"x".repeat(65),
    ] {
        assert!(
            verify_one_device_list(device_key(3), name).is_err(),
            "{name:?}"
        );
    }
}

#[test]
fn epochs_beyond_the_database_range_are_refused() {
    let group = [0x5a; 16];
    let gid = GroupId::from_bytes(&group).unwrap();
    assert_eq!(
        parse_group_message(&private_message(&group, 7, 3))
            .unwrap()
            .epoch,
        7
    );
    let max = sotto_proto::limits::MAX_EPOCH;
    assert!(parse_group_message(&private_message(&group, max, 1)).is_ok());
    assert!(parse_group_message(&private_message(&group, max + 1, 1)).is_err());
    assert!(parse_group_message(&private_message(&group, u64::MAX, 3)).is_err());
    let send = |epoch: u64| SendRequest {
        client_id: "0".repeat(32),
        message: Bytes(private_message(&group, epoch, 3)),
        recipients: vec![],
        to_roster: false,
        roster: Some(vec![]),
        welcome: None,
    };
    assert!(send(max - 1).validate(&gid).is_ok());
    // A commit at the last storable epoch would need one more.
    assert!(send(max).validate(&gid).is_err());
}

#[test]
fn device_lists_are_bounded_each_device_named_once_and_recipients_named_one_way() {
    use sotto_proto::ProtoError;
    use sotto_proto::limits::{MAX_RECIPIENTS, MAX_ROSTER};
    let group = [0x5a; 16];
    let gid = GroupId::from_bytes(&group).unwrap();
    let devices = |n: usize| -> Vec<DeviceAddr> {
        (0..n)
            .map(|i| DeviceAddr {
                user: Username::parse(&format!("u{i:06}")).unwrap(),
                device: DeviceId::parse(&format!("{i:016x}")).unwrap(),
            })
            .collect()
    };
    let request = |content_type: u8| SendRequest {
        client_id: "0".repeat(32),
        message: Bytes(private_message(&group, 7, content_type)),
        recipients: vec![],
        to_roster: false,
        roster: None,
        welcome: None,
    };
    let (application, commit) = (1, 3);
    let check = |r: SendRequest| r.validate(&gid).map(|_| ());

    let mut r = request(commit);
    r.roster = Some(devices(MAX_ROSTER));
    assert_eq!(check(r.clone()), Ok(()));
    r.roster = Some(devices(MAX_ROSTER + 1));
    assert_eq!(check(r), Err(ProtoError::TooLarge("roster")));

    let mut r = request(application);
    r.recipients = devices(MAX_RECIPIENTS);
    assert_eq!(check(r.clone()), Ok(()));
    r.recipients = devices(MAX_RECIPIENTS + 1);
    assert_eq!(check(r), Err(ProtoError::TooLarge("recipients")));

    let mut r = request(commit);
    r.roster = Some(vec![]);
    r.welcome = Some(WelcomeOut {
        message: Bytes(vec![]),
        recipients: devices(MAX_RECIPIENTS + 1),
    });
    assert_eq!(check(r), Err(ProtoError::TooLarge("recipients")));

    let twice = Err(ProtoError::Invalid("a device named twice"));
    let mut r = request(application);
    r.recipients = devices(2);
    r.recipients.push(r.recipients[0].clone());
    assert_eq!(check(r), twice);
    let mut r = request(commit);
    let mut roster = devices(3);
    roster.push(roster[2].clone());
    r.roster = Some(roster);
    assert_eq!(check(r), twice);
    let mut r = request(commit);
    r.roster = Some(vec![]);
    r.welcome = Some(WelcomeOut {
        message: Bytes(vec![]),
        recipients: vec![devices(1)[0].clone(), devices(1)[0].clone()],
    });
    assert_eq!(check(r), twice);

    let mut r = request(application);
    r.to_roster = true;
    assert_eq!(check(r.clone()), Ok(()));
    r.recipients = devices(1);
    assert_eq!(
        check(r),
        Err(ProtoError::Invalid("recipients or to_roster, not both"))
    );
}

proptest! {
    /// A lookup answer of arbitrary bytes (a proof that does not parse, or parses into
    /// nonsense, or a root of any length) is refused with an error, never a panic, and
    /// never proves a value.
    #[test]
    fn arbitrary_lookup_answers_prove_nothing(
        epoch in any::<u64>(),
        root in prop::collection::vec(any::<u8>(), 0..40),
        proof in prop::collection::vec(any::<u8>(), 0..512),
        vrf_key in prop::array::uniform32(any::<u8>()),
        user in username(),
    ) {
        let found = sotto_proto::kt::LookupResponse {
            epoch,
            root_hash: Bytes(root),
            proof: Bytes(proof),
            checkpoint: String::new(),
        };
        prop_assert!(sotto_proto::kt::verify_lookup_proof(&vrf_key, &user, &found).is_err());
    }
}

#[test]
fn a_lookup_proof_past_the_size_limit_is_refused_before_parsing() {
    let found = sotto_proto::kt::LookupResponse {
        epoch: 1,
        root_hash: Bytes(vec![0; 32]),
        proof: Bytes(vec![0; sotto_proto::kt::MAX_PROOF + 1]),
        checkpoint: String::new(),
    };
    let user = Username::parse("bob").unwrap();
    assert_eq!(
        sotto_proto::kt::verify_lookup_proof(&[0; 32], &user, &found),
        Err("is too large")
    );
}

/// A checkpoint of `root` at `epoch`, signed by the log key of seed 7 and cosigned at `time`
/// by the witness key of seed 1; with the log's and the witness's verifier keys.
fn cosigned_checkpoint(epoch: u64, root: &[u8; 32], time: u64) -> (String, String, WitnessKey) {
    use sotto_proto::checkpoint::*;
    let log = SigningKey::from_bytes(&[7; 32]);
    let log_key = log_vkey("sotto-kt/0707", &log.verifying_key());
    let body = checkpoint_body("sotto-kt/0707", epoch, root).unwrap();
    let id = u32::from_str_radix(log_key.split('+').nth(1).unwrap(), 16).unwrap();
    let sig = [&id.to_be_bytes()[..], &log.sign(&body).to_bytes()[..]].concat();
    let log_line = format!(
        "— sotto-kt/0707 {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sig)
    );
    let witness = SigningKey::from_bytes(&[1; 32]);
    let key = WitnessKey::parse(&witness_vkey("w.test/1", &witness.verifying_key())).unwrap();
    let cosig = witness.sign(&cosigned_message(time, &body)).to_bytes();
    let line = cosignature_line(&key, time, &cosig);
    (note_text(&body, &[log_line, line]), log_key, key)
}

use sotto_proto::checkpoint::{SignedCheckpoint, WitnessKey};

proptest! {
    #[test]
    fn any_checkpoint_signed_and_cosigned_opens_with_the_time_it_was_cosigned(
        epoch in any::<u64>(), root in prop::array::uniform32(any::<u8>()), time in any::<u64>(),
    ) {
        let (note, log_key, witness) = cosigned_checkpoint(epoch, &root, time);
        let opened = SignedCheckpoint::open(&note, &log_key, epoch, &root).unwrap();
        let cosigners = opened.cosigners(std::slice::from_ref(&witness)).unwrap();
        prop_assert_eq!(cosigners, vec![(&witness, time)]);
    }

    #[test]
    fn any_text_as_a_checkpoint_cosignature_or_witness_key_is_refused_without_a_panic(
        text in ".{0,300}", bytes in prop::collection::vec(any::<u8>(), 0..300),
        epoch in any::<u64>(), root in prop::array::uniform32(any::<u8>()),
    ) {
        let (_, log_key, witness) = cosigned_checkpoint(1, &[0; 32], 1);
        let lossy = String::from_utf8_lossy(&bytes);
        for t in [text.as_str(), &*lossy] {
            prop_assert!(SignedCheckpoint::open(t, &log_key, epoch, &root).is_err());
            prop_assert!(sotto_proto::checkpoint::parse_cosignature(
                t, std::slice::from_ref(&witness), &bytes
            ).is_err());
            prop_assert!(WitnessKey::parse(t).is_err());
        }
    }

    #[test]
    fn a_checkpoint_with_a_byte_of_its_text_or_log_signature_changed_is_refused(
        epoch in any::<u64>(), root in prop::array::uniform32(any::<u8>()),
        at in any::<prop::sample::Index>(), to in any::<u8>(),
    ) {
        let (note, log_key, _) = cosigned_checkpoint(epoch, &root, 5);
        // Bytes a text can hold (an ASCII change keeps it text).
        let to = to & 0x7f;
        // The text and the log's signature line, before the witness's.
        let signed_part = note.find("\n— w.test/1").unwrap();
        let mut bytes = note.into_bytes();
        let i = at.index(signed_part);
        prop_assume!(bytes[i] != to);
        bytes[i] = to;
        let changed = String::from_utf8(bytes);
        prop_assume!(changed.is_ok());
        let changed = changed.unwrap();
        prop_assert!(SignedCheckpoint::open(&changed, &log_key, epoch, &root).is_err());
    }
}
