//! What the server refuses, over a real listener: sign-ins meant for another server, epochs
//! its database cannot hold, keys that are not keys, names that are not printable, KeyPackages
//! in someone else's name, and every malformed request the framework itself rejects. Each
//! refusal changes nothing and carries a JSON body with a stable code.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{assert_unchanged, code, hex_of, private_message, start};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::{Bytes, Username};
use sotto_server::storage::ServerStore as _;

#[tokio::test]
async fn a_sign_in_signature_made_for_another_server_is_refused() {
    // A malicious server relays this server's challenge to alice, who signs it as a sign-in
    // to the server she is talking to; the signature names that server, so it fails here.
    let s = start().await;
    let elsewhere = start().await;
    assert_ne!(s.server_id, elsewhere.server_id);
    let alice = s.user("alice").await;
    let challenge = s.challenge(&alice.device).await;
    let relayed = elsewhere.answer(&alice.device, &challenge);
    let (status, b) = s.post("/v1/auth/token", None, &relayed).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    // The server's id is stable across restarts: it is stored with its data.
    assert_eq!(
        sotto_server::storage::sqlite::SqliteStorage::open(&s.data)
            .unwrap()
            .server_id()
            .await
            .unwrap(),
        s.server_id
    );
}

#[tokio::test]
async fn a_commit_at_an_epoch_the_database_cannot_hold_is_refused_and_the_server_carries_on() {
    let s = start().await;
    let alice = s.user("alice").await;
    let before = s.stats().await;
    let group = [0x6b; 16];
    let path = format!("/v1/groups/{}/messages", hex_of(&group));
    for epoch in [u64::MAX, i64::MAX as u64, i64::MAX as u64 + 1] {
        let body = json!({
            "client_id": "7".repeat(32),
            "message": Bytes(private_message(&group, epoch, 3)),
            "recipients": [],
            "roster": [alice.device.addr()],
        });
        let (status, b) = s.post(&path, Some(&alice.token), &body).await;
        assert_eq!(
            (status, code(&b)),
            (StatusCode::BAD_REQUEST, "invalid_mls_message"),
            "epoch {epoch}"
        );
    }
    assert_unchanged(before, &s).await;
    // The server still serves: the largest epoch that leaves room for one more commit works.
    let body = json!({
        "client_id": "8".repeat(32),
        "message": Bytes(private_message(&group, i64::MAX as u64 - 1, 3)),
        "recipients": [],
        "roster": [alice.device.addr()],
    });
    let (status, b) = s.post(&path, Some(&alice.token), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    assert_eq!(b["epoch"], json!(i64::MAX as u64));
    let (status, _) = s.get("/v1/keypackages/count", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn registration_refuses_keys_that_are_not_ed25519_points_and_unprintable_names() {
    let s = start().await;
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(Username::parse("mallory").unwrap());
    let not_a_point = (0u8..=255)
        .map(|b| {
            let mut k = [b; 32];
            k[31] &= 0x7f;
            k
        })
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    let before = s.stats().await;
    let with_device = |signature_key: Vec<u8>, name: &str| {
        let mut list = device.first_device_list(name, 1);
        list.devices[0].signature_key = Bytes(signature_key);
        list.devices[0].name = name.to_owned();
        let mut body = s.register_body(&identity, &device);
        body["device_list"] = json!(identity.sign_device_list(&list));
        body
    };
    for (body, why) in [
        (with_device(not_a_point.to_vec(), "phone"), "not a point"),
        (
            with_device(device.public().to_vec(), "\u{202E}enohp"),
            "bidi override",
        ),
        (with_device(device.public().to_vec(), "a\0b"), "NUL"),
        (with_device(device.public().to_vec(), "\u{1b}[2J"), "ESC"),
    ] {
        let (status, b) = s.post("/v1/accounts", None, &body).await;
        assert_eq!(
            (status, code(&b)),
            (StatusCode::BAD_REQUEST, "invalid_field"),
            "{why}: {b}"
        );
    }
    let mut bad_identity = s.register_body(&identity, &device);
    bad_identity["identity_key"] = json!(Bytes(not_a_point.to_vec()));
    let (status, b) = s.post("/v1/accounts", None, &bad_identity).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_field"),
        "{b}"
    );
    assert_unchanged(before, &s).await;
}

#[tokio::test]
async fn key_packages_must_name_the_device_that_uploads_them() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let before = s.stats().await;
    // Alice uploads KeyPackages made in bob's name (his real device and key).
    let (forged, _) = common::key_packages(&bob.device, 2, false);
    let (status, b) = s
        .post(
            "/v1/keypackages",
            Some(&alice.token),
            &json!({ "key_packages": forged }),
        )
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    // Or in her own name with a key that is not her device's.
    let impostor = DeviceKey::from_secret(alice.device.addr().clone(), &[9; 32]).unwrap();
    let (forged, last_resort) = common::key_packages(&impostor, 1, true);
    let (status, b) = s
        .post(
            "/v1/keypackages",
            Some(&alice.token),
            &json!({ "key_packages": forged, "last_resort": last_resort }),
        )
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    // A registration whose KeyPackages name another device is refused whole.
    let identity = IdentityKey::generate();
    let carol = DeviceKey::generate(Username::parse("carol").unwrap());
    let mut body = s.register_body(&identity, &carol);
    body["last_resort"] = json!(common::key_packages(&bob.device, 0, true).1);
    let (status, b) = s.post("/v1/accounts", None, &body).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_field")
    );
    assert_unchanged(before, &s).await;
    // Her own are taken.
    let count = s.upload_key_packages(&alice, 3, false).await;
    assert_eq!(count["count"], 3);
}

#[tokio::test]
async fn every_rejection_has_a_json_body_with_a_stable_code() {
    let s = start().await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let raw = |method: reqwest::Method, path: &str| {
        s.http
            .request(method, format!("{}{path}", s.url))
            .bearer_auth(&alice.token)
    };
    let cases = [
        (
            raw(reqwest::Method::GET, "/v1/queue?limit=abc"),
            400,
            "malformed_request",
        ),
        (
            raw(reqwest::Method::GET, "/v1/queue?limit=-1"),
            400,
            "malformed_request",
        ),
        (
            raw(reqwest::Method::GET, "/v1/users/%FF"),
            400,
            "malformed_request",
        ),
        (
            raw(reqwest::Method::GET, "/v1/ws"),
            400,
            "malformed_request",
        ),
        (
            raw(reqwest::Method::GET, "/v1/queue/ack"),
            405,
            "method_not_allowed",
        ),
        (
            raw(reqwest::Method::DELETE, "/v1/accounts"),
            405,
            "method_not_allowed",
        ),
        (raw(reqwest::Method::GET, "/nothing/here"), 404, "not_found"),
        (raw(reqwest::Method::GET, "/v1/"), 404, "not_found"),
        (
            raw(reqwest::Method::POST, "/v1/queue/ack").body("{}"),
            400,
            "malformed_request",
        ),
    ];
    for (req, status, expected) in cases {
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, code(&body)),
            (status, expected),
            "{body} ({content_type:?})"
        );
        assert!(body["message"].is_string(), "{body}");
    }
    // The queue itself still answers, with its limit clamped.
    let (status, _) = s.get("/v1/queue?limit=99999", t).await;
    assert_eq!(status, StatusCode::OK);
}
