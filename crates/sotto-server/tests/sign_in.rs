//! Signing in over a real listener on loopback and a real SQLite directory: challenges are
//! single-use, tokens expire, and a sign-in is what `GET /v1/devices` reports as a device's
//! last sign-in, to its own account only.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{code, start};
use reqwest::StatusCode;
use serde_json::json;
use sotto_core::DeviceKey;
use sotto_proto::{Bytes, Username};

#[tokio::test]
async fn sign_in_challenges_are_single_use_and_tokens_expire() {
    let s = start().await;
    let alice = s.user("alice").await;
    let ghost = DeviceKey::generate(Username::parse("alice").unwrap());

    let (status, b) = s
        .post(
            "/v1/auth/challenge",
            None,
            &json!({ "device": ghost.addr() }),
        )
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::NOT_FOUND, "unknown_device")
    );

    // A valid answer, then the same answer replayed.
    let challenge = s.challenge(&alice.device).await;
    let answer = s.answer(&alice.device, &challenge);
    let (status, _) = s.post("/v1/auth/token", None, &answer).await;
    assert_eq!(status, StatusCode::OK);
    let (status, b) = s.post("/v1/auth/token", None, &answer).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_challenge")
    );

    // A wrong signature burns the challenge too.
    let challenge = s.challenge(&alice.device).await;
    let mut wrong = s.answer(&alice.device, &challenge);
    wrong["signature"] = json!(Bytes(ghost.sign_challenge(&s.server_id, &challenge)));
    let (status, b) = s.post("/v1/auth/token", None, &wrong).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    let retry = s.answer(&alice.device, &challenge);
    let (status, b) = s.post("/v1/auth/token", None, &retry).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_challenge")
    );

    let (status, _) = s.get("/v1/keypackages/count", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    for bad in [None, Some("not-a-token"), Some(&"x".repeat(4000) as &str)] {
        let (status, b) = s.get("/v1/keypackages/count", bad).await;
        assert_eq!(
            (status, code(&b)),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
    }
    // A token that expired a second ago.
    let expired = "ab".repeat(32);
    let hash = <sha2::Sha256 as sha2::Digest>::digest(expired.as_bytes()).to_vec();
    s.storage
        .put_token(
            &hash,
            alice.device.addr(),
            sotto_server::now() - 3601,
            sotto_server::now() - 1,
        )
        .await
        .unwrap();
    let (status, b) = s.get("/v1/keypackages/count", Some(&expired)).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );
}

#[tokio::test]
async fn a_device_sees_when_its_own_accounts_devices_last_signed_in_and_no_one_elses() {
    let s = start().await;
    let before = sotto_server::now();
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let after = sotto_server::now();

    let (status, b) = s.get("/v1/devices", None).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, listed) = s.get("/v1/devices", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let devices = listed["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{listed}");
    assert_eq!(devices[0]["device"], alice.device.addr().device.to_string());
    let seen = devices[0]["last_seen"].as_u64().unwrap();
    assert!((before..=after).contains(&seen), "{seen}");
    // Bob's answer names his device only (the conformance suite checks an account of two).
    let (_, listed) = s.get("/v1/devices", Some(&bob.token)).await;
    assert_eq!(
        listed["devices"][0]["device"],
        bob.device.addr().device.to_string()
    );
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1);
}
