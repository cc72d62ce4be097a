//! The server's HTTP API over a real listener on loopback and a real SQLite directory:
//! registration, sign-in, KeyPackages, ordered delivery and queues, and the rule that bad
//! input gets a 4xx with a stable code and changes nothing.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use openmls::prelude::MlsGroup;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sotto_core::group;
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::api::{
    ChallengeResponse, KeyPackageCount, QueueResponse, SendResponse, TokenResponse,
};
use sotto_proto::{Bytes, DeviceAddr, Username};
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::storage::{AuthStore, DeliveryStore};
use sotto_server::{AppState, Config};
use std::path::PathBuf;
use std::sync::Arc;

struct TestServer {
    url: String,
    data: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state = AppState::new(
        Arc::new(SqliteStorage::open(&data).unwrap()),
        Config::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sotto_server::serve(listener, state, std::future::pending()));
    TestServer {
        url,
        data,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

struct User {
    device: DeviceKey,
    token: String,
}

impl TestServer {
    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    fn register_body(&self, identity: &IdentityKey, device: &DeviceKey) -> Value {
        let list = identity.sign_device_list(&device.first_device_list("test", 1));
        json!({ "identity_key": Bytes(identity.public().to_vec()), "device_list": list })
    }

    async fn challenge(&self, device: &DeviceKey) -> Vec<u8> {
        let (status, body) = self
            .post(
                "/v1/auth/challenge",
                None,
                &json!({ "device": device.addr() }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let ch: ChallengeResponse = serde_json::from_value(body).unwrap();
        ch.challenge.into_vec()
    }

    async fn sign_in(&self, device: &DeviceKey) -> String {
        let challenge = self.challenge(device).await;
        let body = json!({
            "device": device.addr(),
            "signature": Bytes(device.sign_challenge(&challenge)),
            "challenge": Bytes(challenge),
        });
        let (status, body) = self.post("/v1/auth/token", None, &body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value::<TokenResponse>(body).unwrap().token
    }

    async fn user(&self, name: &str) -> User {
        let identity = IdentityKey::generate();
        let device = DeviceKey::generate(Username::parse(name).unwrap());
        let (status, body) = self
            .post(
                "/v1/accounts",
                None,
                &self.register_body(&identity, &device),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = self.sign_in(&device).await;
        User { device, token }
    }

    /// Every row of every table, as text: equal snapshots mean no state changed.
    fn snapshot(&self) -> String {
        let db = rusqlite::Connection::open(self.data.join("sotto.db")).unwrap();
        let mut out = String::new();
        for table in [
            "accounts",
            "devices",
            "tokens",
            "key_packages",
            "last_resort_key_packages",
            "groups",
            "group_roster",
            "messages",
            "queue",
            "sends",
        ] {
            let mut stmt = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get_ref(i).map(|v| format!("{v:?}")))
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap();
            for row in rows {
                out.push_str(&format!("{table}: {}\n", row.unwrap().join(",")));
            }
        }
        out
    }
}

/// Fails (without printing whole tables) if the database differs from `before`.
fn assert_unchanged(before: &str, s: &TestServer) {
    let after = s.snapshot();
    let changed: Vec<&str> = after.lines().filter(|l| !before.contains(l)).collect();
    assert!(
        before == after,
        "state changed: {} row(s) differ, in tables {:?}",
        changed.len(),
        changed
            .iter()
            .map(|l| l.split(':').next().unwrap_or(""))
            .collect::<Vec<_>>()
    );
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("<none>")
}

fn provider() -> openmls_libcrux_crypto::Provider {
    openmls_libcrux_crypto::Provider::new().unwrap()
}

fn suite() -> openmls::prelude::Ciphersuite {
    sotto_core::suite::ciphersuite(sotto_server::SUITE_XWING).unwrap()
}

async fn upload_key_packages(s: &TestServer, u: &User, n: usize, last_resort: bool) -> Value {
    let p = provider();
    let kps = group::new_key_packages(&p, &u.device, suite(), n, last_resort).unwrap();
    let body = json!({
        "key_packages": kps.one_time.into_iter().map(Bytes).collect::<Vec<_>>(),
        "last_resort": kps.last_resort.map(Bytes),
    });
    let (status, body) = s.post("/v1/keypackages", Some(&u.token), &body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

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
        "/v1/keypackages",
        "/v1/keypackages/count",
        "/v1/keypackages/claim",
        "/v1/groups/{group_id}/messages",
        "/v1/queue",
        "/v1/queue/ack",
        "/v1/ws",
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
    let documented = doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(documented, 18);
}

#[tokio::test]
async fn registration_checks_signatures_and_uniqueness() {
    let s = start().await;
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(Username::parse("alice").unwrap());
    let body = s.register_body(&identity, &device);
    let (status, _) = s.post("/v1/accounts", None, &body).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = s.snapshot();

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
    assert_unchanged(&before, &s);
}

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
    let answer = json!({
        "device": alice.device.addr(),
        "signature": Bytes(alice.device.sign_challenge(&challenge)),
        "challenge": Bytes(challenge.clone()),
    });
    let (status, _) = s.post("/v1/auth/token", None, &answer).await;
    assert_eq!(status, StatusCode::OK);
    let (status, b) = s.post("/v1/auth/token", None, &answer).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_challenge")
    );

    // A wrong signature burns the challenge too.
    let challenge = s.challenge(&alice.device).await;
    let wrong = json!({
        "device": alice.device.addr(),
        "signature": Bytes(ghost.sign_challenge(&challenge)),
        "challenge": Bytes(challenge.clone()),
    });
    let (status, b) = s.post("/v1/auth/token", None, &wrong).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_signature")
    );
    let retry = json!({
        "device": alice.device.addr(),
        "signature": Bytes(alice.device.sign_challenge(&challenge)),
        "challenge": Bytes(challenge),
    });
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
    let storage = SqliteStorage::open(&s.data).unwrap();
    let expired = "ab".repeat(32);
    let hash = <sha2::Sha256 as sha2::Digest>::digest(expired.as_bytes()).to_vec();
    storage
        .put_token(&hash, alice.device.addr(), sotto_server::now() - 1)
        .unwrap();
    let (status, b) = s.get("/v1/keypackages/count", Some(&expired)).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );
}

#[tokio::test]
async fn each_one_time_key_package_goes_to_exactly_one_claimer() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let count = upload_key_packages(&s, &bob, 5, true).await;
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

    let before = s.snapshot();
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
            "/v1/keypackages/claim",
            Some(&bob.token),
            &json!({ "user": "alice" }),
        )
        .await;
    assert_eq!((status, code(&b)), (StatusCode::CONFLICT, "no_key_package"));
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
    assert_unchanged(&before, &s);
}

/// Bob uploads KeyPackages, alice claims one through the API and builds two different
/// commits adding him at epoch 0 of a new group.
async fn rival_commits_adding(
    s: &TestServer,
    alice: &User,
    bob: &User,
) -> (MlsGroup, Bytes, Bytes) {
    upload_key_packages(s, bob, 1, true).await;
    let (_, claimed) = s
        .post(
            "/v1/keypackages/claim",
            Some(&alice.token),
            &json!({ "user": "bob" }),
        )
        .await;
    let bob_kp = base64_decode(claimed["key_packages"][0]["key_package"].as_str().unwrap());
    two_rival_commits(&alice.device, &bob_kp, bob.device.addr())
}

/// Alice's group with bob's KeyPackage claimed: returns two different commits for epoch 0.
fn two_rival_commits(
    alice: &DeviceKey,
    bob_kp: &[u8],
    bob: &DeviceAddr,
) -> (MlsGroup, Bytes, Bytes) {
    let p = provider();
    let mut g = group::create(&p, alice, suite()).unwrap();
    let bob_sig = {
        use openmls::prelude::tls_codec::Deserialize as _;
        let msg = openmls::prelude::MlsMessageIn::tls_deserialize_exact(bob_kp).unwrap();
        let openmls::prelude::MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            panic!("not a KeyPackage")
        };
        kp.unverified_credential().signature_key.as_slice().to_vec()
    };
    let kp = group::verify_key_package(&p, bob_kp, bob, &bob_sig, suite()).unwrap();
    let first = group::add(&p, alice, &mut g, std::slice::from_ref(&kp)).unwrap();
    group::discard_pending(&p, &mut g).unwrap();
    let second = group::add(&p, alice, &mut g, &[kp]).unwrap();
    (g, Bytes(first.commit), Bytes(second.commit))
}

#[tokio::test]
async fn one_commit_per_epoch_and_queues_deliver_once() {
    let s = start().await;
    let alice = s.user("alice").await;
    let bob = s.user("bob").await;
    let (g, first, second) = rival_commits_adding(&s, &alice, &bob).await;
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
    let before = s.snapshot();
    let mut to_ghost = send(&first, &"9".repeat(32));
    to_ghost["recipients"] = json!([{ "user": "bob", "device": "00000000deadbeef" }]);
    let (status, b) = s.post(&path, Some(&alice.token), &to_ghost).await;
    assert_eq!(
        (status, code(&b)),
        (StatusCode::NOT_FOUND, "unknown_device")
    );
    assert_unchanged(&before, &s);
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
    let before = s.snapshot();
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
    assert_unchanged(&before, &s);

    // Bob's queue holds the commit exactly once until he acknowledges it.
    let (_, q) = s.get("/v1/queue", Some(&bob.token)).await;
    let q: QueueResponse = serde_json::from_value(q).unwrap();
    assert_eq!(q.messages.len(), 1);
    assert_eq!(q.messages[0].id, accepted.id);
    let (_, q2) = s.get("/v1/queue", Some(&bob.token)).await;
    assert_eq!(serde_json::from_value::<QueueResponse>(q2).unwrap(), q);
    // Alice cannot acknowledge bob's messages.
    let (status, _) = s
        .post(
            "/v1/queue/ack",
            Some(&alice.token),
            &json!({ "ids": [accepted.id] }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
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
    let db = rusqlite::Connection::open(s.data.join("sotto.db")).unwrap();
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "a fully acknowledged message is deleted");
}

fn base64_decode(s: &str) -> Vec<u8> {
    serde_json::from_value::<Bytes>(json!(s))
        .unwrap()
        .into_vec()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn bad_requests_get_stable_4xx_codes_and_change_nothing() {
    let s = start().await;
    let alice = s.user("alice").await;
    let t = Some(alice.token.as_str());
    let before = s.snapshot();
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
    assert_unchanged(&before, &s);
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
    let (g, commit, _) = rival_commits_adding(&s, &alice, &bob).await;
    let body = json!({
        "client_id": "4".repeat(32),
        "message": commit,
        "recipients": [bob.device.addr()],
        "roster": [alice.device.addr(), bob.device.addr()],
    });
    let path = format!("/v1/groups/{}/messages", hex_of(g.group_id().as_slice()));
    let (status, _) = s.post(&path, Some(&alice.token), &body).await;
    assert_eq!(status, StatusCode::CREATED);

    let storage = SqliteStorage::open(&s.data).unwrap();
    let now = sotto_server::now();
    // A cutoff before the message keeps it; one after it deletes it with its queue entry.
    assert_eq!(storage.purge(now - 60, now).unwrap(), 0);
    assert_eq!(storage.fetch(bob.device.addr(), 10).unwrap().len(), 1);
    assert_eq!(storage.purge(now + 1, now).unwrap(), 1);
    assert!(storage.fetch(bob.device.addr(), 10).unwrap().is_empty());
}
