//! Shared set-ups of the benchmark drivers: a two-member group held either in raw openmls
//! memory storage (the baseline) or by Sotto's engine over its encrypted SQLCipher stores.
//! Nothing here is used by the product.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    reason = "benchmark set-up: a failure aborts the run"
)]

use openmls::prelude::{Ciphersuite, MlsGroup};
use openmls_libcrux_crypto::Provider;
use sotto_client::store::SqlCipherStore;
use sotto_core::group::{self, Received};
use sotto_core::store::{ClientStore as _, ConversationRecord, Setting, StoreTx as _};
use sotto_core::{
    ClientError, Content, DeviceKey, Engine, Envelope, IdentityKey, LogRoot, MlsProvider,
    SystemClock, Transport,
};
use sotto_proto::api::{
    ChallengeRequest, ChallengeResponse, ClaimResponse, DevicesResponse, KeyPackageCount,
    QueueResponse, QueuedKind, QueuedMessage, RegisterRequest, RegisterResponse, SendRequest,
    SendResponse, ServerConfig, TokenRequest, TokenResponse, UploadKeyPackagesRequest,
    UserResponse,
};
use sotto_proto::{GroupId, Username};
use std::sync::Arc;

/// The key-transparency root the benchmarks' messages vouch for, as a client's do: its size
/// and its check are part of what a message costs.
pub const VOUCHED_ROOT: LogRoot = LogRoot {
    epoch: 1,
    root: [7; 32],
};

/// A device key for `name`.
pub fn device(name: &str) -> DeviceKey {
    DeviceKey::generate(Username::parse(name).unwrap())
}

/// Alice (on `pa`) creates a group and adds bob (on `pb`); returns alice's key and both
/// members' views of the group.
fn two_member_group<A: MlsProvider, B: MlsProvider>(
    pa: &A,
    pb: &B,
    suite: Ciphersuite,
) -> (DeviceKey, MlsGroup, MlsGroup) {
    let (alice, bob) = (device("alice"), device("bob"));
    let kp = group::new_key_packages(pb, &bob, suite, 1, false).unwrap();
    let kp =
        group::verify_key_package(pa, &kp.one_time[0], bob.addr(), &bob.public(), suite).unwrap();
    let mut ga = group::create(pa, &alice, suite).unwrap();
    let out = group::add(pa, &alice, &mut ga, &[kp], 0).unwrap();
    group::merge_pending(pa, &mut ga).unwrap();
    let gb = group::join(pb, &out.welcome.unwrap(), ga.group_id().as_slice()).unwrap();
    (alice, ga, gb)
}

/// Raw openmls, in memory: alice and bob in one group.
pub struct MemoryPair {
    pa: Provider,
    pb: Provider,
    alice: DeviceKey,
    ga: MlsGroup,
    gb: MlsGroup,
}

impl MemoryPair {
    /// Sets up the group.
    pub fn new(suite: Ciphersuite) -> Self {
        let (pa, pb) = (Provider::new().unwrap(), Provider::new().unwrap());
        let (alice, ga, gb) = two_member_group(&pa, &pb, suite);
        MemoryPair {
            pa,
            pb,
            alice,
            ga,
            gb,
        }
    }

    /// Alice encrypts `text`, bob decrypts it.
    pub fn send_receive(&mut self, text: &str) {
        let wire = self.send(text);
        self.receive(&[wire]);
    }

    /// Alice encrypts `text`.
    pub fn send(&mut self, text: &str) -> Vec<u8> {
        let envelope = Envelope {
            sent_at: 0,
            counter: Some(1),
            log_root: Some(VOUCHED_ROOT),
            content: Content::Text { body: text.into() },
        };
        group::encrypt(&self.pa, &self.alice, &mut self.ga, &envelope).unwrap()
    }

    /// Bob decrypts `wires`.
    pub fn receive(&mut self, wires: &[Vec<u8>]) {
        for wire in wires {
            match group::process(&self.pb, &mut self.gb, wire).unwrap() {
                Received::Content { .. } => {}
                Received::Commit(_) => panic!("expected content"),
            }
        }
    }
}

/// The server, as far as these benchmarks go: not there. Only the engine's local work is
/// measured, so nothing may reach for the network; anything that did would fail loudly.
pub struct Offline;

fn offline<T>() -> Result<T, ClientError> {
    Err(ClientError::Unreachable(
        "the benchmark measures local work only".into(),
    ))
}

use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::link::{
    CreateLinkRequest, CreateLinkResponse, LinkAnswer, LinkId, LinkOfferResponse, PickupRequest,
    PickupResponse,
};

#[async_trait::async_trait]
impl Transport for Offline {
    async fn config(&self) -> Result<ServerConfig, ClientError> {
        offline()
    }
    async fn register(&self, _: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        offline()
    }
    async fn challenge(&self, _: &ChallengeRequest) -> Result<ChallengeResponse, ClientError> {
        offline()
    }
    async fn token(&self, _: &TokenRequest) -> Result<TokenResponse, ClientError> {
        offline()
    }
    async fn user(&self, _: &str, _: &Username) -> Result<UserResponse, ClientError> {
        offline()
    }
    async fn kt_epoch(
        &self,
        _: u64,
        _: bool,
    ) -> Result<sotto_proto::kt::EpochResponse, ClientError> {
        offline()
    }
    async fn kt_lookup(
        &self,
        _: &str,
        _: &Username,
        _: Option<u64>,
        _: usize,
    ) -> Result<sotto_proto::kt::LookupResponse, ClientError> {
        offline()
    }
    async fn upload_key_packages(
        &self,
        _: &str,
        _: &UploadKeyPackagesRequest,
    ) -> Result<KeyPackageCount, ClientError> {
        offline()
    }
    async fn key_package_count(&self, _: &str) -> Result<KeyPackageCount, ClientError> {
        offline()
    }
    async fn claim(&self, _: &str, _: &Username) -> Result<ClaimResponse, ClientError> {
        offline()
    }
    async fn send(
        &self,
        _: &str,
        _: &GroupId,
        _: &SendRequest,
    ) -> Result<SendResponse, ClientError> {
        offline()
    }
    async fn queue(&self, _: &str, _: u32) -> Result<QueueResponse, ClientError> {
        offline()
    }
    async fn ack(&self, _: &str, _: Vec<u64>) -> Result<(), ClientError> {
        offline()
    }
    async fn update_device_list(&self, _: &str, _: &DeviceListUpdate) -> Result<(), ClientError> {
        offline()
    }
    async fn devices_seen(&self, _: &str) -> Result<DevicesResponse, ClientError> {
        offline()
    }
    async fn create_link(&self, _: &CreateLinkRequest) -> Result<CreateLinkResponse, ClientError> {
        offline()
    }
    async fn link_offer(&self, _: &str, _: &LinkId) -> Result<LinkOfferResponse, ClientError> {
        offline()
    }
    async fn answer_link(&self, _: &str, _: &LinkId, _: &LinkAnswer) -> Result<(), ClientError> {
        offline()
    }
    async fn pickup(&self, _: &LinkId, _: &PickupRequest) -> Result<PickupResponse, ClientError> {
        offline()
    }
    async fn link_done(&self, _: &LinkId, _: &PickupRequest) -> Result<(), ClientError> {
        offline()
    }
}

type DeviceEngine = Engine<SqlCipherStore, Offline>;

/// Writes the account of `device` into `store`, as `init` would.
fn account(store: &SqlCipherStore, device: &DeviceKey, suite: u16) {
    let identity = IdentityKey::generate();
    store
        .transaction(|tx| {
            tx.set_setting(Setting::User, device.addr().user.as_str().as_bytes())?;
            tx.set_setting(Setting::Device, device.addr().device.to_string().as_bytes())?;
            tx.set_setting(Setting::Suite, &suite.to_be_bytes())?;
            tx.set_setting(Setting::IdentitySecret, &identity.secret())?;
            tx.set_setting(Setting::DeviceSecret, &device.secret())?;
            Ok::<_, ClientError>(())
        })
        .unwrap();
}

fn conversation(group: &GroupId) -> ConversationRecord {
    ConversationRecord {
        group: group.clone(),
        name: Some("bench".into()),
        peer: None,
        announced: true,
        active: true,
        created_at: 0,
    }
}

/// Sotto's engine over its encrypted SQLCipher stores: each device has its own store, and
/// the engine does per message exactly the local work it does in the client. The sender,
/// in one transaction, records the previous accepted send (drops its outbox entry, stores
/// the sent message), encrypts and writes the outbox entry; the receiver, in one
/// transaction, checks the message id, decrypts, stores the message and its id; a batch
/// fetched from the queue shares one transaction. Only the network is left out.
pub struct EnginePair {
    dir: tempfile::TempDir,
    alice: DeviceEngine,
    bob: DeviceEngine,
    group: GroupId,
    next_id: u64,
}

impl EnginePair {
    /// Sets up two stores, the accounts and the group.
    pub fn new(code: u16) -> Self {
        let suite = sotto_core::suite::ciphersuite(code).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sa = SqlCipherStore::open(&dir.path().join("a.db"), &[1; 32]).unwrap();
        let sb = SqlCipherStore::open(&dir.path().join("b.db"), &[2; 32]).unwrap();
        let (alice, bob) = (device("alice"), device("bob"));
        account(&sa, &alice, code);
        account(&sb, &bob, code);
        let kp = sb
            .transaction(|tx| {
                Ok::<_, ClientError>(group::new_key_packages(&tx.mls(), &bob, suite, 1, false)?)
            })
            .unwrap();
        let (group, welcome) = sa
            .transaction(|tx| {
                let p = tx.mls();
                let kp = group::verify_key_package(
                    &p,
                    &kp.one_time[0],
                    bob.addr(),
                    &bob.public(),
                    suite,
                )?;
                let mut g = group::create(&p, &alice, suite)?;
                let out = group::add(&p, &alice, &mut g, &[kp], 0)?;
                group::merge_pending(&p, &mut g)?;
                let gid = GroupId::from_bytes(g.group_id().as_slice())?;
                tx.upsert_conversation(&conversation(&gid))?;
                Ok::<_, ClientError>((gid, out.welcome.unwrap()))
            })
            .unwrap();
        sb.transaction(|tx| {
            group::join(&tx.mls(), &welcome, group.as_bytes())?;
            tx.upsert_conversation(&conversation(&group))?;
            Ok::<_, ClientError>(())
        })
        .unwrap();
        let clock = Arc::new(SystemClock);
        EnginePair {
            dir,
            alice: Engine::open(sa, Offline, clock.clone()).unwrap(),
            bob: Engine::open(sb, Offline, clock).unwrap(),
            group,
            next_id: 1,
        }
    }

    /// Alice sends `text`, bob receives it, both as the client does.
    pub fn send_receive(&mut self, text: &str) {
        let message = self.send(text);
        self.receive(&[message]);
    }

    /// Alice encrypts `text` and writes her outbox, as the client does before posting; the
    /// server's acceptance is noted for her next transaction. Returns the message as bob's
    /// queue would hold it.
    pub fn send(&mut self, text: &str) -> QueuedMessage {
        let id = self.next_id;
        let mut envelope = Envelope {
            sent_at: 0,
            // Given the device's next counter in the transaction, as a client's is.
            counter: None,
            log_root: Some(VOUCHED_ROOT),
            content: Content::Text { body: text.into() },
        };
        let req = self
            .alice
            .prepare_message(&self.group, &mut envelope)
            .unwrap();
        self.next_id += 1;
        let response = SendResponse {
            id,
            seq: id,
            epoch: 1,
            accepted_at: 0,
        };
        self.alice
            .accepted(&self.group, req.client_id, envelope, response);
        QueuedMessage {
            id,
            group_id: self.group.clone(),
            seq: id,
            sender: self.alice.me().clone(),
            kind: QueuedKind::Group,
            message: req.message,
            accepted_at: 0,
        }
    }

    /// SQLCipher pages each side writes per message sent and received on its own (WAL frames
    /// counted over `n` messages by a second connection), and the size of the receiver's
    /// stored MLS message secrets, for the profile in `docs/benchmarks.md`.
    pub fn pages_written_per_message(&mut self, n: usize) -> (f64, f64, i64) {
        let open = |name: &str, key: [u8; 32]| {
            sotto_client::store::open(&self.dir.path().join(name), &key).unwrap()
        };
        let (a, b) = (open("a.db", [1; 32]), open("b.db", [2; 32]));
        let frames = |c: &rusqlite::Connection, mode: &str| -> i64 {
            c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
                .unwrap()
        };
        frames(&a, "TRUNCATE");
        frames(&b, "TRUNCATE");
        for _ in 0..n {
            self.send_receive("a typical chat message of about sixty bytes, give or take");
        }
        let per = |c| frames(c, "PASSIVE") as f64 / n as f64;
        // openmls keeps a group's message secrets in one value, rewritten by every message.
        let secrets: i64 = b
            .query_row(
                "SELECT length(group_data) FROM openmls_group_data WHERE data_type = 'message_secrets'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (per(&a), per(&b), secrets)
    }

    /// Bob processes `batch` in one transaction, as the client's sync does with a batch
    /// fetched from its queue.
    pub fn receive(&mut self, batch: &[QueuedMessage]) {
        let processed = self.bob.process(batch).unwrap();
        assert_eq!(processed.done.len(), batch.len());
    }
}
