//! The server's HTTP API over a real listener on loopback and a real SQLite directory:
//! registration, KeyPackages, ordered delivery and queues, and the rule that bad
//! input gets a 4xx with a stable code and changes nothing.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{assert_unchanged, code, hex_of, private_message, start, start_with};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::api::{KeyPackageCount, QueueResponse, SendResponse};
use sotto_proto::{Bytes, ErrorCode, Username};
use sotto_server::Config;
use sotto_server::limits::Limits;

#[tokio::test]
async fn health_config_and_openapi_cover_every_route() {
    let s = start().await;
    let resp = s
        .http
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "ok");
    let (status, cfg) = s.get("/v1/config", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cfg["ciphersuite"], 0x004D);
    let (status, doc) = s.get("/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/healthz",
        "/v1/openapi.json",
        "/v1/config",
        "/v1/accounts",
        "/v1/auth/challenge",
        "/v1/auth/token",
        "/v1/users/{user}",
        "/v1/kt/users/{user}",
        "/v1/kt/checkpoint",
        "/v1/kt/epochs/{epoch}",
        "/v1/kt/cosignatures",
        "/v1/keypackages",
        "/v1/keypackages/count",
        "/v1/keypackages/claim",
        "/v1/groups/{group_id}/messages",
        "/v1/queue",
        "/v1/queue/ack",
        "/v1/ws",
        "/v1/links",
        "/v1/links/{id}",
        "/v1/links/{id}/pickup",
        "/v1/links/{id}/done",
        "/v1/devices",
    ] {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    // Every documented path is routed: none answers `not_found`.
    for (path, ops) in paths {
        let concrete = path
            .replace("{user}", "alice")
            .replace("{group_id}", &"ab".repeat(16));
        for method in ops.as_object().unwrap().keys() {
            let req = match method.as_str() {
                "get" => s.http.get(format!("{}{concrete}", s.url)),
                _ => s.http.post(format!("{}{concrete}", s.url)).json(&json!({})),
            };
            let body: Value = req
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            assert_ne!(code(&body), "not_found", "{method} {path}");
        }
    }
    // The error codes the document lists are exactly the ones the code has.
    let documented: Vec<&str> =
        doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
    let in_code: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, in_code);
}

#[tokio::test]
async fn registration_checks_signatures_and_uniqueness() {
    let s = start().await;
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(Username::parse("alice").unwrap());
    let body = s.register_body(&identity, &device);
    let (status, _) = s.post("/v1/accounts", None, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = s.stats().await;

    let (status, b) = s.post("/v1/accounts", None, &body).await;
    assert_eq!((status, code(&b)), (StatusCode::CONFLICT, "username_taken"));
    // Signed by another identity key than the one presented.
    let mut forged = body.clone();
    forged["identity_key"] = json!(Bytes(IdentityKey::generate().public().to_vec()));
    let (status, b) = s.post("/v1/accounts", None, &forged).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_signature")
    );
    let (status, b) = s
        .post_raw("/v1/accounts", None, b"{not json".to_vec())
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "malformed_request")
    );
    let (status, b) = s
        .post("/v1/accounts", None, &json!({ "identity_key": "AAAA" }))
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "malformed_request")
    );
    let (status, b) = s
        .post_raw(
            "/v1/accounts",
            None,
            vec![b' '; sotto_proto::limits::MAX_BODY + 1],
        )
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_unchanged(before, &s).await;
}

#[tokio::test]
async fn each_one_time_key_package_goes_to_exactly_one_claimer() {
    let mut limits = Limits::default();
    limits.set("claim_per_target=100/1m").unwrap();
    limits.set("claim_per_pair=100/1m").unwrap();
    let s = start_with(Config {
        limits,
        ..Config::default()
    })
    .await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let count = s.upload_key_packages(&bob, 5, true).await;
    assert_eq!(count["count"], 5);
    assert_eq!(count["last_resort"], true);

    let claim = json!({ "user": "bob" });
    let claims = (0..12).map(|_| s.post("/v1/keypackages/claim", Some(&alice.token), &claim));
    let results = futures_util::future::join_all(claims).await;
    let mut handed = Vec::new();
    for (status, body) in results {
        assert_eq!(status, StatusCode::OK, "{body}");
        let kps = body["key_packages"].as_array().unwrap();
        assert_eq!(kps.len(), 1);
        handed.push(kps[0]["key_package"].as_str().unwrap().to_owned());
    }
    handed.sort();
    let distinct = {
        let mut d = handed.clone();
        d.dedup();
        d
    };
    // Five one-time KeyPackages, once each, then the last-resort one for the other seven.
    assert_eq!(distinct.len(), 6);
    let (_, count) = s.get("/v1/keypackages/count", Some(&bob.token)).await;
    let count: KeyPackageCount = serde_json::from_value(count).unwrap();
    assert_eq!((count.count, count.last_resort), (0, true));

    let before = s.stats().await;
    let (status, b) = s
        .post(
            "/v1/keypackages/claim",
            Some(&alice.token),
            &json!({ "user": "nobody" }),
        )
        .await;
    assert_eq!((status, code(&b)), (StatusCode::NOT_FOUND, "unknown_user"));
    let (status, b) = s
        .post(
            "/v1/keypackages",
            Some(&alice.token),
            &json!({ "key_packages": [Bytes(vec![1, 2, 3])] }),
        )
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_mls_message")
    );
    assert_unchanged(before, &s).await;
}

#[tokio::test]
async fn one_commit_per_epoch_and_queues_deliver_once() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (g, first, second) = s.rival_commits_adding(&alice, &bob).await;
    let gid = hex_of(g.group_id().as_slice());
    let roster = json!([alice.device.addr(), bob.device.addr()]);
    let send = |message: &Bytes, client_id: &str| {
        json!({
            "client_id": client_id,
            "message": message,
            "recipients": [bob.device.addr()],
            "roster": roster,
        })
    };
    let path = format!("/v1/groups/{gid}/messages");
    // A recipient device that does not exist: refused, and the new group is not created.
    let before = s.stats().await;
    let mut to_ghost = send(&first, &"9".repeat(32));
    to_ghost["recipients"] = json!([{ "user": "bob", "device": "00000000deadbeef" }]);
    let (status, b) = s.post(&path, Some(&alice.token), &to_ghost).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::NOT_FOUND, "unknown_device")
    );
    assert_unchanged(before, &s).await;
    let (status, b) = s
        .post(&path, Some(&alice.token), &send(&first, &"1".repeat(32)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{b}");
    let accepted: SendResponse = serde_json::from_value(b).unwrap();
    assert_eq!((accepted.seq, accepted.epoch), (1, 1));
    // The same request again (a retry): same answer, nothing stored twice.
    let (status, b) = s
        .post(&path, Some(&alice.token), &send(&first, &"1".repeat(32)))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(serde_json::from_value::<SendResponse>(b).unwrap(), accepted);
    // The rival commit for epoch 0 loses.
    let carol = s.user("carol").await;
    let before = s.stats().await;
    let (status, b) = s
        .post(&path, Some(&alice.token), &send(&second, &"2".repeat(32)))
        .await;
    assert_eq!((status, code(&b)), (StatusCode::CONFLICT, "epoch_conflict"));
    assert_eq!(b["epoch"], 1);
    // A device outside the roster may not post to the group.
    let (status, b) = s
        .post(&path, Some(&carol.token), &send(&second, &"3".repeat(32)))
        .await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::FORBIDDEN, "not_a_group_member")
    );
    assert_unchanged(before, &s).await;

    // Bob's queue holds the commit exactly once until he acknowledges it.
    let (_, q) = s.get("/v1/queue", Some(&bob.token)).await;
    let q: QueueResponse = serde_json::from_value(q).unwrap();
    assert_eq!(q.messages.len(), 1);
    assert_eq!(q.messages[0].id, accepted.id);
    let (_, q2) = s.get("/v1/queue", Some(&bob.token)).await;
    assert_eq!(serde_json::from_value::<QueueResponse>(q2).unwrap(), q);
    // Alice cannot acknowledge bob's messages: her ack touches only her own queue.
    let (status, _) = s
        .post(
            "/v1/queue/ack",
            Some(&alice.token),
            &json!({ "ids": [accepted.id] }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, q3) = s.get("/v1/queue", Some(&bob.token)).await;
    assert_eq!(serde_json::from_value::<QueueResponse>(q3).unwrap(), q);
    let (status, _) = s
        .post(
            "/v1/queue/ack",
            Some(&bob.token),
            &json!({ "ids": [accepted.id] }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, q) = s.get("/v1/queue", Some(&bob.token)).await;
    assert!(q["messages"].as_array().unwrap().is_empty());
    assert_eq!(
        s.stats().await.messages,
        0,
        "a fully acknowledged message is deleted"
    );
}

#[tokio::test]
async fn bad_requests_get_stable_4xx_codes_and_change_nothing() {
    let s = start().await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let before = s.stats().await;
    let gid = "ab".repeat(16);
    let msgs = format!("/v1/groups/{gid}/messages");
    let good_send = json!({
        "client_id": "0".repeat(32),
        "message": Bytes(vec![0, 1, 0, 1]),
        "recipients": [],
    });
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            msgs.as_str(),
            good_send.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_mls_message",
        ),
        (
            "/v1/groups/zz/messages",
            good_send.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            msgs.as_str(),
            json!({ "client_id": "short", "message": "", "recipients": [] }),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            msgs.as_str(),
            json!({ "client_id": "0".repeat(32), "message": "", "recipients": [alice.device.addr()], "to_roster": true }),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            msgs.as_str(),
            json!({ "client_id": "0".repeat(32), "message": "", "roster": vec![alice.device.addr(); sotto_proto::limits::MAX_ROSTER + 1] }),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            msgs.as_str(),
            json!({ "client_id": 5 }),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "/v1/queue/ack",
            json!({ "ids": vec![1; 1001] }),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "/v1/queue/ack",
            json!({ "ids": "all" }),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "/v1/keypackages",
            json!({ "key_packages": ["!!"] }),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "/v1/keypackages/claim",
            json!({ "user": "Not A Name" }),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "/v1/auth/challenge",
            json!({ "device": { "user": "alice", "device": "xyz" } }),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            "/v1/auth/token",
            json!({ "device": alice.device.addr(), "challenge": Bytes(vec![0; 32]), "signature": Bytes(vec![0; 3]) }),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "/v2/queue/ack",
            json!({}),
            StatusCode::BAD_REQUEST,
            "unsupported_version",
        ),
        ("/v1/nothing", json!({}), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (path, body, status, expected) in cases {
        let (got, b) = s.post(path, t, &body).await;
        assert_eq!((got, code(&b)), (status, expected), "POST {path} {body}");
    }
    let (got, b) = s.get("/v1/users/NOPE", t).await;
    assert_eq!((got, code(&b)), (StatusCode::BAD_REQUEST, "invalid_field"));
    let (got, b) = s.get("/v1/users/nobody", t).await;
    assert_eq!((got, code(&b)), (StatusCode::NOT_FOUND, "unknown_user"));
    let (got, b) = s.get("/v9/config", None).await;
    assert_eq!(
        (got, code(&b)),
        (StatusCode::BAD_REQUEST, "unsupported_version")
    );
    assert_unchanged(before, &s).await;
}

#[tokio::test]
async fn random_and_mutated_bodies_never_cause_a_5xx() {
    let s = start().await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let gid = "cd".repeat(16);
    let msgs = format!("/v1/groups/{gid}/messages");
    let seeds: Vec<(String, Value)> = vec![
        (
            msgs.clone(),
            json!({ "client_id": "0".repeat(32), "message": Bytes(vec![0, 1, 0, 2, 0, 0]), "recipients": [alice.device.addr()], "roster": [alice.device.addr()] }),
        ),
        (
            "/v1/accounts".into(),
            s.register_body(
                &IdentityKey::generate(),
                &DeviceKey::generate(Username::parse("zed").unwrap()),
            ),
        ),
        (
            "/v1/auth/token".into(),
            json!({ "device": alice.device.addr(), "challenge": Bytes(vec![7; 32]), "signature": Bytes(vec![9; 64]) }),
        ),
        (
            "/v1/keypackages".into(),
            json!({ "key_packages": [Bytes(vec![0, 1, 0, 5, 0, 1])] }),
        ),
        ("/v1/keypackages/claim".into(), json!({ "user": "alice" })),
        ("/v1/queue/ack".into(), json!({ "ids": [1, 2, 3] })),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9420);
    for (path, seed) in &seeds {
        let bytes = serde_json::to_vec(seed).unwrap();
        for _ in 0..150 {
            let mut body = bytes.clone();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..body.len());
                match rng.gen_range(0..3) {
                    0 => body[i] = rng.r#gen(),
                    1 => {
                        body.remove(i);
                    }
                    _ => body.insert(i, rng.r#gen()),
                }
            }
            let (status, b) = s.post_raw(path, t, body).await;
            assert!(status.as_u16() < 500, "{path}: {status} {b}");
        }
    }
}

#[tokio::test]
async fn retention_purges_undelivered_messages() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (g, commit, _) = s.rival_commits_adding(&alice, &bob).await;
    let body = json!({
        "client_id": "4".repeat(32),
        "message": commit,
        "recipients": [bob.device.addr()],
        "roster": [alice.device.addr(), bob.device.addr()],
    });
    let path = format!("/v1/groups/{}/messages", hex_of(g.group_id().as_slice()));
    let (status, _) = s.post(&path, Some(&alice.token), &body).await;
    assert_eq!(status, StatusCode::CREATED);

    let storage = &s.storage;
    let now = sotto_server::now();
    // A cutoff before the message keeps it; one after it deletes it with its queue entry,
    // and bob is told one message expired unread.
    assert_eq!(storage.purge(now - 60, now).await.unwrap(), 0);
    let queue = storage
        .fetch(bob.device.addr(), 0, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!((queue.messages.len(), queue.dropped_total), (1, 0));
    assert_eq!(storage.purge(now + 1, now).await.unwrap(), 1);
    let queue = storage
        .fetch(bob.device.addr(), 0, 10, usize::MAX)
        .await
        .unwrap();
    assert_eq!((queue.messages.len(), queue.dropped_total), (0, 1));
}

#[tokio::test]
async fn a_message_with_no_recipients_moves_the_epoch_but_is_not_stored() {
    let s = start().await;
    let alice = s.user("alice").await;
    let group = [0x3c; 16];
    let path = format!("/v1/groups/{}/messages", hex_of(&group));
    let mut ids = Vec::new();
    for (i, (epoch, kind)) in [(0, 3), (1, 1), (1, 3)].into_iter().enumerate() {
        let body = json!({
            "client_id": format!("{i:032}"),
            "message": Bytes(private_message(&group, epoch, kind)),
            "recipients": [],
            "roster": if kind == 3 { json!([alice.device.addr()]) } else { Value::Null },
        });
        let (status, b) = s.post(&path, Some(&alice.token), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        ids.push(b["id"].as_u64().unwrap());
    }
    // Ordered (the epoch moved twice), each with its own id, and nothing kept for 30 days.
    let body = json!({
        "client_id": format!("{:032}", 9),
        "message": Bytes(private_message(&group, 1, 1)),
        "recipients": [],
    });
    let (status, b) = s.post(&path, Some(&alice.token), &body).await;
    assert_eq!((status, &b["epoch"]), (StatusCode::CONFLICT, &json!(2)));
    assert_eq!(s.stats().await.messages, 0);
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");
}
