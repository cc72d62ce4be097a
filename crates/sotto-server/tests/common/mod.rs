//! A real server on a loopback port 0 with its own SQLite directory, and a raw HTTP client
//! that plays devices, for the server's test binaries.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use openmls::prelude::MlsGroup;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sotto_core::group;
use sotto_core::{DeviceKey, IdentityKey};
use sotto_proto::api::{ChallengeResponse, ServerConfig, TokenResponse};
use sotto_proto::{Bytes, DeviceAddr, ServerId, Username};
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::storage::{Stats, Storage};
use sotto_server::{AppState, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub struct TestServer {
    pub url: String,
    pub addr: SocketAddr,
    pub data: PathBuf,
    pub http: reqwest::Client,
    pub server_id: ServerId,
    /// The storage the server runs on, shared with it.
    pub storage: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
}

pub struct User {
    pub device: DeviceKey,
    pub token: String,
}

/// A server with the default settings.
pub async fn start() -> TestServer {
    start_with(Config::default()).await
}

/// A server with explicit settings.
pub async fn start_with(config: Config) -> TestServer {
    start_shaped(config, |state| state).await
}

/// A server with explicit settings whose state `shape` may change (its wake-ups, say).
pub async fn start_shaped(config: Config, shape: impl FnOnce(AppState) -> AppState) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&data).unwrap());
    start_over(storage, config, shape, dir).await
}

/// A server over `storage`; `dir` lives as long as the server.
pub async fn start_over(
    storage: Arc<dyn Storage>,
    config: Config,
    shape: impl FnOnce(AppState) -> AppState,
    dir: tempfile::TempDir,
) -> TestServer {
    let state = shape(AppState::new(storage.clone(), config).await.unwrap());
    serve_state(state, storage, dir).await
}

/// A server of `state`, whose storage is `storage`; `dir` lives as long as the server.
pub async fn serve_state(
    state: AppState,
    storage: Arc<dyn Storage>,
    dir: tempfile::TempDir,
) -> TestServer {
    let data = dir.path().join("data");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    tokio::spawn(sotto_server::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::new();
    let cfg: ServerConfig = http
        .get(format!("{url}/v1/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    TestServer {
        url,
        addr,
        data,
        http,
        server_id: cfg.server_id,
        storage,
        _dir: dir,
    }
}

pub fn provider() -> openmls_libcrux_crypto::Provider {
    openmls_libcrux_crypto::Provider::new().unwrap()
}

pub fn suite() -> openmls::prelude::Ciphersuite {
    sotto_core::suite::ciphersuite(sotto_server::SUITE_XWING).unwrap()
}

pub fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("<none>")
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    serde_json::from_value::<Bytes>(json!(s))
        .unwrap()
        .into_vec()
}

pub fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An MLS PrivateMessage (RFC 9420 §6.3.1) with the given header and empty payloads: valid
/// framing for the delivery service, which never decrypts.
pub fn private_message(group: &[u8], epoch: u64, content_type: u8) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, group.len() as u8];
    m.extend_from_slice(group);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&[content_type, 0, 0, 0]);
    m
}

/// `n` one-time KeyPackages of `device` (and a last-resort one if asked), as the API takes
/// them.
pub fn key_packages(
    device: &DeviceKey,
    n: usize,
    last_resort: bool,
) -> (Vec<Bytes>, Option<Bytes>) {
    let kps = group::new_key_packages(&provider(), device, suite(), n, last_resort).unwrap();
    (
        kps.one_time.into_iter().map(Bytes).collect(),
        kps.last_resort.map(Bytes),
    )
}

impl TestServer {
    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(
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

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    /// A registration of `device` under `identity`, with a last-resort KeyPackage and no
    /// one-time ones.
    pub fn register_body(&self, identity: &IdentityKey, device: &DeviceKey) -> Value {
        let list = identity.sign_device_list(&device.first_device_list("test", 1));
        let (key_packages, last_resort) = key_packages(device, 0, true);
        json!({
            "identity_key": Bytes(identity.public().to_vec()),
            "device_list": list,
            "key_packages": key_packages,
            "last_resort": last_resort,
        })
    }

    pub async fn challenge(&self, device: &DeviceKey) -> Vec<u8> {
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

    /// The answer to `challenge` by `device`, signed for this server.
    pub fn answer(&self, device: &DeviceKey, challenge: &[u8]) -> Value {
        json!({
            "device": device.addr(),
            "signature": Bytes(device.sign_challenge(&self.server_id, challenge)),
            "challenge": Bytes(challenge.to_vec()),
        })
    }

    pub async fn sign_in(&self, device: &DeviceKey) -> String {
        let challenge = self.challenge(device).await;
        let (status, body) = self
            .post("/v1/auth/token", None, &self.answer(device, &challenge))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_value::<TokenResponse>(body).unwrap().token
    }

    pub async fn user(&self, name: &str) -> User {
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

    pub async fn upload_key_packages(&self, u: &User, n: usize, last_resort: bool) -> Value {
        let (key_packages, last_resort) = key_packages(&u.device, n, last_resort);
        let body = json!({ "key_packages": key_packages, "last_resort": last_resort });
        let (status, body) = self.post("/v1/keypackages", Some(&u.token), &body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// How many of each thing the server stores: equal counts mean no request added or took
    /// anything.
    pub async fn stats(&self) -> Stats {
        self.storage.stats().await.unwrap()
    }

    /// Bob uploads KeyPackages, alice claims one through the API and builds two different
    /// commits adding him at epoch 0 of a new group.
    pub async fn rival_commits_adding(&self, alice: &User, bob: &User) -> (MlsGroup, Bytes, Bytes) {
        self.upload_key_packages(bob, 1, false).await;
        let (_, claimed) = self
            .post(
                "/v1/keypackages/claim",
                Some(&alice.token),
                &json!({ "user": bob.device.addr().user }),
            )
            .await;
        let bob_kp = base64_decode(claimed["key_packages"][0]["key_package"].as_str().unwrap());
        two_rival_commits(&alice.device, &bob_kp, bob.device.addr())
    }
}

/// Fails if the server stores more or fewer of anything than `before`.
pub async fn assert_unchanged(before: Stats, s: &TestServer) {
    assert_eq!(s.stats().await, before, "state changed");
}

/// Alice's group with bob's KeyPackage claimed: returns two different commits for epoch 0.
pub fn two_rival_commits(
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
    let first = group::add(&p, alice, &mut g, std::slice::from_ref(&kp), 0).unwrap();
    group::discard_pending(&p, &mut g).unwrap();
    let second = group::add(&p, alice, &mut g, &[kp], 0).unwrap();
    (g, Bytes(first.commit), Bytes(second.commit))
}

/// Opens the push WebSocket of the device holding `token`.
/// A push WebSocket, client side.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn websocket(s: &TestServer, token: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Settings with these limits changed (`NAME=VALUE` each), everything else default.
pub fn with_limits(settings: &[&str]) -> Config {
    let mut limits = sotto_server::limits::Limits::default();
    for s in settings {
        limits.set(s).unwrap();
    }
    Config {
        limits,
        ..Config::default()
    }
}

impl TestServer {
    /// `from` sends `message` (MLS framing for `group`) to `to`, as its `n`-th send; it must
    /// be accepted. Returns its id.
    pub async fn send_framed(
        &self,
        from: &User,
        group: [u8; 16],
        message: Vec<u8>,
        n: usize,
        to: &[&User],
    ) -> u64 {
        let recipients: Vec<&DeviceAddr> = to.iter().map(|u| u.device.addr()).collect();
        let body = json!({
            "client_id": format!("{n:032}"),
            "message": Bytes(message),
            "recipients": recipients,
        });
        let path = format!("/v1/groups/{}/messages", hex_of(&group));
        let (status, b) = self.post(&path, Some(&from.token), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        b["id"].as_u64().unwrap()
    }

    /// [`TestServer::send_framed`] of the smallest application message (33 bytes).
    pub async fn send_small(&self, from: &User, group: [u8; 16], n: usize, to: &[&User]) -> u64 {
        self.send_framed(from, group, private_message(&group, 0, 1), n, to)
            .await
    }

    /// `u`'s queue, fetched through the API.
    pub async fn queue(&self, u: &User) -> sotto_proto::api::QueueResponse {
        let (status, q) = self.get("/v1/queue", Some(&u.token)).await;
        assert_eq!(status, StatusCode::OK, "{q}");
        serde_json::from_value(q).unwrap()
    }
}

/// A PostgreSQL schema of its own in the database at `url`, with a fresh name, dropped when
/// the test ends, passed or failed.
pub struct Schema {
    url: String,
    pub name: String,
}

impl Schema {
    pub fn new(url: &str) -> Schema {
        Schema {
            url: url.to_owned(),
            name: format!("sotto_test_{}", hex::encode(rand::random::<[u8; 8]>())),
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Outside the test's runtime, which may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                // The test's servers may still hold a transaction on the schema, on a runtime
                // this drop now blocks (it would stay open until PostgreSQL's idle timeout):
                // their connections go first.
                client
                    .execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                         JOIN pg_class c ON c.oid = l.relation
                         JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&name],
                    )
                    .await
                    .unwrap();
                client
                    .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                    .await
                    .unwrap();
            });
        })
        .join();
    }
}
