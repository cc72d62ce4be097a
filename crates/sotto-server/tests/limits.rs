//! Abuse limits over a real listener: all-or-nothing KeyPackage claims, rate limits with
//! `429` and `Retry-After` (per address, per device, per claimed user), `X-Forwarded-For` from
//! trusted proxies only, the cap on outstanding challenges, and per-device queue quotas.
//! Every limit here is set explicitly; the loops are bounded.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::{TestServer, User, code, hex_of, private_message, start, start_with, with_limits};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::api::KeyPackageCount;
use sotto_proto::{Bytes, Username};
use sotto_server::limits::Limits;
use sotto_server::storage::Claim;

async fn key_package_count(s: &TestServer, u: &User) -> u64 {
    let (_, count) = s.get("/v1/keypackages/count", Some(&u.token)).await;
    serde_json::from_value::<KeyPackageCount>(count)
        .unwrap()
        .count
}

async fn claim(s: &TestServer, claimer: &User, user: &str) -> (StatusCode, Value) {
    s.post(
        "/v1/keypackages/claim",
        Some(&claimer.token),
        &json!({ "user": user }),
    )
    .await
}

/// Posts `body` to `path` with an `X-Forwarded-For` header.
async fn post_forwarded(s: &TestServer, path: &str, forwarded: &str, body: &Value) -> StatusCode {
    s.http
        .post(format!("{}{path}", s.url))
        .header("x-forwarded-for", forwarded)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

fn registration(s: &TestServer, name: &str) -> Value {
    let device = DeviceKey::generate(Username::parse(name).unwrap());
    s.register_body(&IdentityKey::generate(), &device)
}

#[tokio::test]
async fn a_claim_that_cannot_serve_every_device_takes_no_key_package() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    s.upload_key_packages(&bob, 3, false).await;
    // The operator gives bob a second device that has no KeyPackage at all.
    let db = rusqlite::Connection::open(s.data.join("sotto.db")).unwrap();
    db.execute(
        "INSERT INTO devices (user, device, signature_key) VALUES ('bob', '00000000000000aa', ?1)",
        [vec![1u8; 32]],
    )
    .unwrap();
    let (status, b) = claim(&s, &alice, "bob").await;
    assert_eq!((status, code(&b)), (StatusCode::CONFLICT, "no_key_package"));
    // The one-time KeyPackage the claim took from bob's real device went back.
    assert_eq!(key_package_count(&s, &bob).await, 3);
}

#[tokio::test]
async fn claims_cannot_drain_a_user_nor_stop_others_adding_them() {
    // Explicit rates (an hour, so that no refill happens during the test): one device may
    // claim one user's KeyPackages 10 times; 20 one-time KeyPackages of one user go out, to
    // anyone, and after that claims get the last-resort one.
    let s = start_with(with_limits(&[
        "claim_per_pair=10/1h",
        "claim_per_target=20/1h",
    ]))
    .await;
    let (alice, bob, carol, dave) = (
        s.user("alice").await,
        s.user("bob").await,
        s.user("carol").await,
        s.user("dave").await,
    );
    s.upload_key_packages(&bob, 50, false).await;
    let mut granted = 0;
    let mut refused = Vec::new();
    for _ in 0..55 {
        let (status, b) = claim(&s, &alice, "bob").await;
        match status {
            StatusCode::OK => granted += 1,
            _ => refused.push((status, code(&b).to_owned())),
        }
    }
    assert_eq!(granted, 10);
    assert!(
        refused
            .iter()
            .all(|r| *r == (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())),
        "{refused:?}"
    );
    assert_eq!(key_package_count(&s, &bob).await, 40);
    // Another claimer takes one-time KeyPackages until bob's one-time rate is used up...
    for _ in 0..10 {
        assert_eq!(claim(&s, &carol, "bob").await.0, StatusCode::OK);
    }
    assert_eq!(key_package_count(&s, &bob).await, 30);
    // ...and then anyone can still add bob, through his last-resort KeyPackage.
    let Claim::Claimed(last_resort) = s
        .storage
        .claim_key_packages(&bob.device.addr().user, false)
        .await
        .unwrap()
    else {
        panic!("bob has a last-resort KeyPackage");
    };
    let last_resort = last_resort[0].key_package.as_slice().to_vec();
    let (status, b) = claim(&s, &dave, "bob").await;
    assert_eq!(status, StatusCode::OK);
    let handed = common::base64_decode(b["key_packages"][0]["key_package"].as_str().unwrap());
    assert_eq!(handed, last_resort);
    assert_eq!(key_package_count(&s, &bob).await, 30);
    // The limits are per claimed user: alice may still add someone else.
    assert_eq!(claim(&s, &alice, "dave").await.0, StatusCode::OK);
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_device() {
    let s = start_with(with_limits(&[
        "register_per_ip=3/1h",
        "challenge_per_device_and_ip=3/1h",
        "send_per_device=2/1h",
        "claim_per_device=2/1h",
        "websocket_per_device=1/1h",
        "lookup_per_device=2/1h",
        "ack_per_device=2/1h",
    ]))
    .await;
    let alice = s.user("alice").await;
    let _bob = s.user("bob").await;
    let expect_limited = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&retry), "Retry-After {retry}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), "rate_limited");
    };
    let post = |path: &str, token: Option<&str>, body: &Value| {
        let mut req = s.http.post(format!("{}{path}", s.url)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // Acknowledgements over HTTP by one device.
    for _ in 0..2 {
        let resp = post("/v1/queue/ack", Some(&alice.token), &json!({ "ids": [1] }))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    expect_limited(
        post("/v1/queue/ack", Some(&alice.token), &json!({ "ids": [1] }))
            .await
            .unwrap(),
    )
    .await;
    // Registration, per address: alice and bob used two of three.
    let carol = registration(&s, "carol");
    assert_eq!(
        post("/v1/accounts", None, &carol).await.unwrap().status(),
        201
    );
    expect_limited(
        post("/v1/accounts", None, &registration(&s, "dan"))
            .await
            .unwrap(),
    )
    .await;
    // Look-ups of users by one device (enumeration).
    for name in ["bob", "nobody"] {
        let resp = s
            .http
            .get(format!("{}/v1/users/{name}", s.url))
            .bearer_auth(&alice.token)
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let third = s
        .http
        .get(format!("{}/v1/users/carol", s.url))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    expect_limited(third).await;
    // Challenges for one device from one address: signing in used one of three.
    let ask = json!({ "device": alice.device.addr() });
    for _ in 0..2 {
        assert_eq!(
            post("/v1/auth/challenge", None, &ask)
                .await
                .unwrap()
                .status(),
            200
        );
    }
    expect_limited(post("/v1/auth/challenge", None, &ask).await.unwrap()).await;
    // Sends by one device.
    let group = [0x11; 16];
    let path = format!("/v1/groups/{}/messages", hex_of(&group));
    for i in 0..3 {
        let body = json!({
            "client_id": format!("{i:032}"),
            "message": Bytes(private_message(&group, 0, 1)),
            "recipients": [],
        });
        let resp = post(&path, Some(&alice.token), &body).await.unwrap();
        if i < 2 {
            assert_eq!(resp.status(), StatusCode::CREATED);
        } else {
            expect_limited(resp).await;
        }
    }
    // Claims by one device.
    let want = json!({ "user": "bob" });
    for _ in 0..2 {
        let resp = post("/v1/keypackages/claim", Some(&alice.token), &want).await;
        assert_eq!(resp.unwrap().status(), StatusCode::OK);
    }
    expect_limited(
        post("/v1/keypackages/claim", Some(&alice.token), &want)
            .await
            .unwrap(),
    )
    .await;
    // WebSockets opened by one device: the second upgrade is refused before it happens.
    let _first = common::websocket(&s, &alice.token).await;
    let resp = s
        .http
        .get(format!("{}/v1/ws", s.url))
        .bearer_auth(&alice.token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    expect_limited(resp).await;
}

#[tokio::test]
async fn per_address_limits_read_forwarded_for_only_from_a_trusted_proxy() {
    let mut config = with_limits(&["register_per_ip=1/1h"]);
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let behind_proxy = start_with(config).await;
    // Two clients behind the proxy (loopback here) each get their own bucket.
    let s = &behind_proxy;
    let first = registration(s, "alice");
    assert_eq!(
        post_forwarded(s, "/v1/accounts", "192.0.2.1", &first).await,
        StatusCode::CREATED
    );
    assert_eq!(
        post_forwarded(s, "/v1/accounts", "192.0.2.1", &registration(s, "bob")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        post_forwarded(s, "/v1/accounts", "192.0.2.2", &registration(s, "carol")).await,
        StatusCode::CREATED
    );
    // A client that claims another address to an untrusted peer gains nothing: without a
    // trusted proxy the header is ignored and the connection's address counts.
    let direct = start_with(with_limits(&["register_per_ip=1/1h"])).await;
    let s = &direct;
    assert_eq!(
        post_forwarded(s, "/v1/accounts", "192.0.2.1", &registration(s, "alice")).await,
        StatusCode::CREATED
    );
    assert_eq!(
        post_forwarded(s, "/v1/accounts", "192.0.2.9", &registration(s, "bob")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_challenge_stays_good_however_many_more_are_asked_for() {
    // Challenges are not stored: asking for more cannot crowd out the one being answered.
    let s = start_with(with_limits(&["challenge_per_device_and_ip=100/1m"])).await;
    let alice = s.user("alice").await;
    let first = s.challenge(&alice.device).await;
    for _ in 0..50 {
        s.challenge(&alice.device).await;
    }
    assert_eq!(
        s.stats().await.used_challenges,
        1,
        "only the one answered at sign-in is recorded"
    );
    let (status, _) = s
        .post("/v1/auth/token", None, &s.answer(&alice.device, &first))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_queue_drops_its_oldest_entries_and_counts_them() {
    let s = start_with(with_limits(&["queue_messages=3"])).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        // Bob's full queue never blocks alice: every send is accepted.
        ids.push(s.send_small(&alice, [0x22; 16], n, &[&bob]).await);
    }
    let q = s.queue(&bob).await;
    let kept: Vec<u64> = q.messages.iter().map(|m| m.id).collect();
    assert_eq!(kept, ids[2..]);
    assert_eq!(q.dropped_total, 2);
    // Dropped messages are gone from the server, not just from the queue.
    assert_eq!(s.stats().await.messages, 3);
    // Acknowledging frees room; the total only grows.
    let (status, _) = s
        .post("/v1/queue/ack", Some(&bob.token), &json!({ "ids": kept }))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let q = s.queue(&bob).await;
    assert_eq!((q.messages.len(), q.dropped_total), (0, 2));
}

#[tokio::test]
async fn a_queue_over_its_byte_quota_drops_its_oldest_entries() {
    let s = start_with(with_limits(&["queue_bytes=100"])).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    // Each message is 33 bytes: three fit in 100, a fourth pushes the first out.
    assert_eq!(private_message(&[0x33; 16], 0, 1).len(), 33);
    for n in 0..4 {
        s.send_small(&alice, [0x33; 16], n, &[&bob]).await;
    }
    let q = s.queue(&bob).await;
    assert_eq!((q.messages.len(), q.dropped_total), (3, 1));
}

#[tokio::test]
async fn a_message_larger_than_the_byte_quota_is_still_queued_for_every_recipient() {
    let s = start_with(with_limits(&["queue_bytes=10"])).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let carol = s.user("carol").await;
    for n in 0..2 {
        s.send_small(&alice, [0x55; 16], n, &[&bob, &carol]).await;
    }
    // Each queue keeps the newest message, over quota by that one, and counts the other.
    for u in [&bob, &carol] {
        let q = s.queue(u).await;
        assert_eq!((q.messages.len(), q.dropped_total), (1, 1));
    }
}

#[test]
fn the_limits_table_in_the_design_notes_matches_the_code() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/design.md"),
    )
    .unwrap();
    let rows: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("| `") && !l.contains("| limit |"))
        .collect();
    let expected: Vec<String> = Limits::default()
        .describe()
        .into_iter()
        .map(|(name, value, meaning)| format!("| `{name}` | `{value}` | {meaning} |"))
        .collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn a_flood_of_challenges_from_one_address_does_not_lock_a_device_out() {
    let mut config = with_limits(&["challenge_per_device_and_ip=3/1h"]);
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let s = start_with(config).await;
    let alice = s.user("alice").await;
    let ask = json!({ "device": alice.device.addr() });
    // Someone at one address asks for alice's challenges until refused...
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(post_forwarded(&s, "/v1/auth/challenge", "192.0.2.66", &ask).await);
    }
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    // ...and alice, elsewhere, still signs in.
    let resp = s
        .http
        .post(format!("{}/v1/auth/challenge", s.url))
        .header("x-forwarded-for", "192.0.2.7")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let challenge: sotto_proto::api::ChallengeResponse = resp.json().await.unwrap();
    let (status, _) = s
        .post(
            "/v1/auth/token",
            None,
            &s.answer(&alice.device, challenge.challenge.as_slice()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_stranger_flooding_a_device_pushes_out_their_own_messages_not_its_groups() {
    let s = start_with(with_limits(&["queue_messages=5"])).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mallory = s.user("mallory").await;
    // Bob's group traffic from alice, then a flood from mallory, a stranger to bob.
    let mut from_alice = Vec::new();
    for n in 0..2 {
        from_alice.push(s.send_small(&alice, [0x66; 16], n, &[&bob]).await);
    }
    for n in 0..20 {
        s.send_small(&mallory, [0x77; 16], 100 + n, &[&bob]).await;
    }
    let q = s.queue(&bob).await;
    let kept: Vec<u64> = q.messages.iter().map(|m| m.id).collect();
    assert_eq!(kept.len(), 5);
    assert_eq!(
        kept[..2],
        from_alice[..],
        "alice's messages were pushed out"
    );
    assert_eq!(q.dropped_total, 17);
}

#[tokio::test]
async fn a_fetch_returns_at_most_its_byte_bound_but_always_one_message() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    for n in 0..3 {
        s.send_small(&alice, [0x88; 16], n, &[&bob]).await;
    }
    let mut fetched = Vec::new();
    for max_bytes in [usize::MAX, 66, 65, 1] {
        let q = s
            .storage
            .fetch(bob.device.addr(), 0, 100, max_bytes)
            .await
            .unwrap();
        fetched.push(q.messages.len());
    }
    // Each message is 33 bytes.
    assert_eq!(fetched, [3, 2, 1, 1]);
}

#[tokio::test]
async fn a_corrupt_queued_row_is_skipped_not_fatal_to_the_queue() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(s.send_small(&alice, [0x99; 16], n, &[&bob]).await);
    }
    let db = rusqlite::Connection::open(s.data.join("sotto.db")).unwrap();
    db.execute(
        "UPDATE messages SET sender_user = 'NOT VALID' WHERE id = ?1",
        [ids[0] as i64],
    )
    .unwrap();
    let q = s.queue(&bob).await;
    assert_eq!(
        q.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [ids[1]]
    );
}

#[tokio::test]
async fn many_tiny_messages_cannot_push_out_a_members_larger_commit() {
    // Over the count quota, the sender with the most entries pays, whatever their size.
    let s = start_with(with_limits(&["queue_messages=5"])).await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let mallory = s.user("mallory").await;
    // Alice's message is large (a commit, say): its ciphertext is 128 bytes, not 0.
    let mut large = private_message(&[0xaa; 16], 0, 1);
    large.truncate(large.len() - 1);
    large.extend_from_slice(&[0x40, 0x80]);
    large.extend(std::iter::repeat_n(0u8, 128));
    let from_alice = s.send_framed(&alice, [0xaa; 16], large, 0, &[&bob]).await;
    // Mallory's are as small as messages get.
    for n in 0..10 {
        s.send_small(&mallory, [0xbb; 16], 100 + n, &[&bob]).await;
    }
    let q = s.queue(&bob).await;
    assert_eq!(q.messages.len(), 5);
    assert_eq!(
        q.messages[0].id, from_alice,
        "alice's message was pushed out"
    );
}
