//! A server in the test's own process: the real storage rules and delivery rules of
//! `sotto-server` (over its in-memory storage) behind the engine's [`Transport`], without
//! HTTP. Each device gets its own [`LocalTransport`]; one can be made to believe lies.

use crate::store::memory::MemoryStore;
use crate::{ClientError, Clock, Engine, Transport};
use async_trait::async_trait;
use sotto_proto::api::{
    ChallengeRequest, ChallengeResponse, ClaimResponse, DevicesResponse, KeyPackageCount,
    QueueResponse, RegisterRequest, RegisterResponse, SendRequest, SendResponse, ServerConfig,
    TokenRequest, TokenResponse, UploadKeyPackagesRequest, UserResponse, auth_signing_input,
};
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::device_list::parse_verifying_key;
use sotto_proto::kt::{EpochResponse, LookupResponse};
use sotto_proto::link::{
    CreateLinkRequest, CreateLinkResponse, LinkAnswer, LinkId, LinkOfferResponse, PickupRequest,
    PickupResponse,
};
use sotto_proto::{API_VERSION, DeviceAddr, ErrorBody, ErrorCode, GroupId, ServerId, Username};
use sotto_server::delivery::{self, QueueQuota, Submitted};
use sotto_server::devices;
use sotto_server::kt::{Kt, KtConfig};
use sotto_server::storage::memory::MemoryStorage;
use sotto_server::storage::{
    AccountStore as _, AuthStore as _, Claim, DeliveryStore as _, KeyPackageStore as _,
    ServerStore as _,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use super::hostile::*;
pub use super::seen::*;

/// A clock the test sets.
#[derive(Default)]
pub struct TestClock(AtomicU64);

impl TestClock {
    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::Relaxed);
    }
}

impl Clock for TestClock {
    fn now(&self) -> u64 {
        1_700_000_000 + self.0.load(Ordering::Relaxed)
    }
}

pub struct LocalServer {
    storage: Arc<MemoryStorage>,
    /// The key-transparency log, which publishes what is queued before every lookup.
    kt: Kt,
    server_id: ServerId,
    tokens: Mutex<HashMap<String, DeviceAddr>>,
    /// How many sends it refused for a stale epoch.
    pub epoch_conflicts: AtomicU64,
    /// How many accepted sends went to the group's roster rather than to named recipients.
    pub roster_sends: AtomicU64,
    /// How many key-transparency lookups it answered.
    pub lookups: AtomicU64,
    /// While set, every send fails as a server whose storage fails does (500).
    pub failing_sends: std::sync::atomic::AtomicBool,
    pub clock: Arc<TestClock>,
    /// The MLS ciphersuite its groups use.
    suite: u16,
    /// Accounts whose device-list changes the operator keeps out of the log.
    held_back: Mutex<Vec<Username>>,
}

pub type Device = Engine<MemoryStore, LocalTransport>;

impl LocalServer {
    pub async fn new() -> Arc<Self> {
        Self::with_suite(crate::suite::XWING).await
    }

    /// A server whose groups use the MLS ciphersuite `suite`.
    pub async fn with_suite(suite: u16) -> Arc<Self> {
        let storage = Arc::new(MemoryStorage::new());
        let server_id = storage.server_id().await.unwrap();
        let kt = Kt::open(storage.clone(), KtConfig::default())
            .await
            .unwrap();
        Arc::new(LocalServer {
            storage,
            kt,
            server_id,
            tokens: Mutex::new(HashMap::new()),
            epoch_conflicts: AtomicU64::new(0),
            roster_sends: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            failing_sends: std::sync::atomic::AtomicBool::new(false),
            clock: Arc::new(TestClock::default()),
            suite,
            held_back: Mutex::new(Vec::new()),
        })
    }

    /// What a compelled operator can do: take `user`'s device-list changes from now on and
    /// never publish them in the log.
    pub fn hold_back(&self, user: &Username) {
        self.held_back.lock().unwrap().push(user.clone());
    }

    /// A new device's way to this server.
    pub fn transport(self: &Arc<Self>) -> LocalTransport {
        LocalTransport {
            server: self.clone(),
            log_lies: Mutex::new(HashMap::new()),
            epoch_lies: Mutex::new(HashMap::new()),
            lies: Mutex::new(HashMap::new()),
        }
    }

    /// A new device of `approver`'s account named `name`, linked by `approver` (with the
    /// history, if `history`), in memory, with what it was sent.
    pub async fn link(
        self: &Arc<Self>,
        approver: &Device,
        name: &str,
        history: bool,
    ) -> (
        Device,
        crate::engine::devices::Approved,
        crate::engine::linking::Linked,
    ) {
        let transport = self.transport();
        let config = transport.config().await.unwrap();
        let clock: Arc<dyn Clock> = self.clock.clone();
        let account = crate::engine::NewAccount {
            user: &approver.me().user,
            device_name: name,
            settings: &[],
        };
        let pending = crate::engine::linking::PendingLink::start(
            MemoryStore::new().unwrap(),
            transport,
            clock,
            account,
            &config,
        )
        .await
        .unwrap();
        assert!(pending.poll().await.unwrap().is_none(), "not approved yet");
        approver.sync().await.unwrap();
        let approved = approver.approve(&pending.code(), history).await.unwrap();
        let answer = pending.poll().await.unwrap().expect("approved");
        let (device, linked) = pending.finish(answer).await.unwrap();
        (device, approved, linked)
    }

    /// A new account `name` with one device, in memory.
    pub async fn device(self: &Arc<Self>, name: &str) -> Device {
        let transport = self.transport();
        let config = transport.config().await.unwrap();
        let user = Username::parse(name).unwrap();
        let clock: Arc<dyn Clock> = self.clock.clone();
        let account = crate::engine::NewAccount {
            user: &user,
            device_name: "test",
            settings: &[],
        };
        Engine::create(
            MemoryStore::new().unwrap(),
            transport,
            clock,
            account,
            &config,
        )
        .await
        .unwrap()
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn signed_in(&self, token: &str) -> Result<DeviceAddr, ClientError> {
        self.tokens
            .lock()
            .unwrap()
            .get(token)
            .cloned()
            .ok_or_else(|| refused(ErrorCode::Unauthorized, "unknown token"))
    }
}

fn refused(code: ErrorCode, message: &str) -> ClientError {
    ClientError::Refused(ErrorBody {
        code,
        message: message.into(),
        epoch: None,
    })
}

fn invalid(e: impl std::fmt::Display) -> ClientError {
    refused(ErrorCode::InvalidField, &e.to_string())
}

fn failed(e: impl std::fmt::Display) -> ClientError {
    refused(ErrorCode::Internal, &e.to_string())
}

/// One device's way to the [`LocalServer`].
pub struct LocalTransport {
    server: Arc<LocalServer>,
    /// Lookups this device is answered with instead of the log's: a server lying to it.
    log_lies: Mutex<HashMap<Username, LookupResponse>>,
    /// Recorded epochs this device is shown instead of the log's, or the error it gets.
    epoch_lies: Mutex<HashMap<u64, Result<EpochResponse, ErrorCode>>>,
    /// KeyPackages this device is offered when it claims those of a user: a server lying to
    /// it.
    lies: Mutex<HashMap<Username, ClaimResponse>>,
}

impl LocalTransport {
    /// From now on, a claim of `user`'s KeyPackages by this device gets `offer`.
    pub fn lie_about_claims(&self, user: &Username, offer: ClaimResponse) {
        self.lies.lock().unwrap().insert(user.clone(), offer);
    }

    /// From now on, a lookup of `user` in the log by this device gets `answer`.
    pub fn lie_about_log(&self, user: &Username, answer: LookupResponse) {
        self.log_lies.lock().unwrap().insert(user.clone(), answer);
    }

    /// From now on, this device asking for the recorded epoch `epoch` gets `answer`, or a
    /// refusal with that code (`not_found`: the server says it never recorded it).
    pub fn lie_about_epoch(&self, epoch: u64, answer: Result<EpochResponse, ErrorCode>) {
        self.epoch_lies.lock().unwrap().insert(epoch, answer);
    }

    /// The server's key-transparency log.
    pub fn kt(&self) -> &Kt {
        &self.server.kt
    }

    /// The server's storage, as its operator sees it.
    pub fn storage(&self) -> &MemoryStorage {
        &self.server.storage
    }
}

fn api(e: sotto_server::error::ApiError) -> ClientError {
    ClientError::Refused(e.body().clone())
}

#[async_trait]
impl Transport for LocalTransport {
    async fn update_device_list(
        &self,
        token: &str,
        req: &DeviceListUpdate,
    ) -> Result<(), ClientError> {
        let device = self.server.signed_in(token)?;
        self.server.kt.publish_pending().await.map_err(failed)?;
        let kt = &self.server.kt;
        devices::update_device_list(self.storage(), kt, &device, req.clone(), 10, 1000)
            .await
            .map_err(api)?;
        if self.server.held_back.lock().unwrap().contains(&device.user) {
            use sotto_server::storage::KtStore as _;
            let pending = self.storage().kt_pending(1000).await.map_err(failed)?;
            let ids: Vec<u64> = pending
                .into_iter()
                .filter(|(_, u)| u.as_ref() == Some(&device.user))
                .map(|(id, _)| id)
                .collect();
            self.storage().kt_published(&ids).await.map_err(failed)?;
        }
        Ok(())
    }

    async fn devices_seen(&self, token: &str) -> Result<DevicesResponse, ClientError> {
        let device = self.server.signed_in(token)?;
        devices::devices_seen(self.storage(), &device)
            .await
            .map_err(api)
    }

    async fn create_link(
        &self,
        req: &CreateLinkRequest,
    ) -> Result<CreateLinkResponse, ClientError> {
        devices::create_link(self.storage(), req.clone(), self.server.now())
            .await
            .map_err(api)
    }

    async fn link_offer(&self, token: &str, id: &LinkId) -> Result<LinkOfferResponse, ClientError> {
        let device = self.server.signed_in(token)?;
        devices::link_offer(self.storage(), &device, &id.to_string(), self.server.now())
            .await
            .map_err(api)
    }

    async fn answer_link(
        &self,
        token: &str,
        id: &LinkId,
        answer: &LinkAnswer,
    ) -> Result<(), ClientError> {
        let device = self.server.signed_in(token)?;
        let now = self.server.now();
        devices::answer_link(
            self.storage(),
            &device,
            &id.to_string(),
            answer.clone(),
            now,
        )
        .await
        .map_err(api)
    }

    async fn pickup(
        &self,
        id: &LinkId,
        req: &PickupRequest,
    ) -> Result<PickupResponse, ClientError> {
        devices::pickup(
            self.storage(),
            &id.to_string(),
            req.clone(),
            self.server.now(),
        )
        .await
        .map_err(api)
    }

    async fn link_done(&self, id: &LinkId, req: &PickupRequest) -> Result<(), ClientError> {
        let now = self.server.now();
        devices::link_done(self.storage(), &id.to_string(), req.clone(), now)
            .await
            .map_err(api)
    }

    async fn config(&self) -> Result<ServerConfig, ClientError> {
        Ok(ServerConfig {
            api_version: API_VERSION,
            ciphersuite: self.server.suite,
            server_id: self.server.server_id.clone(),
            kt_vrf_key: self.server.kt.vrf_public_key().to_vec().into(),
            kt_checkpoint_key: self.server.kt.checkpoint_key(),
        })
    }

    async fn kt_epoch(&self, epoch: u64, proof: bool) -> Result<EpochResponse, ClientError> {
        if let Some(lie) = self.epoch_lies.lock().unwrap().get(&epoch).cloned() {
            return lie.map_err(|code| refused(code, "as the operator wants it"));
        }
        let found = self
            .server
            .kt
            .recorded(epoch, proof)
            .await
            .map_err(failed)?;
        found.ok_or_else(|| refused(ErrorCode::NotFound, "no such epoch recorded"))
    }

    async fn kt_lookup(
        &self,
        token: &str,
        user: &Username,
        _after: Option<u64>,
        cosigned: usize,
    ) -> Result<LookupResponse, ClientError> {
        self.server.signed_in(token)?;
        self.server.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(lie) = self.log_lies.lock().unwrap().get(user).cloned() {
            return Ok(lie);
        }
        let kt = &self.server.kt;
        kt.publish_pending().await.map_err(failed)?;
        kt.lookup(user, None, cosigned, Duration::ZERO)
            .await
            .map_err(failed)?
            .map_err(|epoch| {
                ClientError::Refused(ErrorBody {
                    code: ErrorCode::NotInLog,
                    message: "not in the log".into(),
                    epoch: Some(epoch),
                })
            })
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        let account = req.clone().validate().map_err(invalid)?;
        let user = account.device_list.list().user.clone();
        let now = self.server.now();
        if !self
            .storage()
            .create_account(&account, now)
            .await
            .map_err(failed)?
        {
            return Err(refused(ErrorCode::UsernameTaken, "username taken"));
        }
        Ok(RegisterResponse { user })
    }

    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, ClientError> {
        let known = self
            .storage()
            .device_key(&req.device)
            .await
            .map_err(failed)?;
        if known.is_none() {
            return Err(refused(ErrorCode::UnknownDevice, "no such device"));
        }
        Ok(ChallengeResponse {
            challenge: rand::random::<[u8; 32]>().to_vec().into(),
            expires_at: self.server.now() + 60,
        })
    }

    async fn token(&self, req: &TokenRequest) -> Result<TokenResponse, ClientError> {
        let key = self
            .storage()
            .device_key(&req.device)
            .await
            .map_err(failed)?
            .ok_or_else(|| refused(ErrorCode::UnknownDevice, "no such device"))?;
        let key = parse_verifying_key(&key).map_err(failed)?;
        let signature =
            ed25519_dalek::Signature::from_slice(req.signature.as_slice()).map_err(invalid)?;
        let input = auth_signing_input(
            &self.server.server_id,
            &req.device,
            req.challenge.as_slice(),
        );
        key.verify_strict(&input, &signature)
            .map_err(|_| refused(ErrorCode::InvalidSignature, "signature does not verify"))?;
        let token = hex::encode(rand::random::<[u8; 16]>());
        self.storage()
            .put_token(token.as_bytes(), &req.device, self.server.now(), u64::MAX)
            .await
            .map_err(failed)?;
        self.server
            .tokens
            .lock()
            .unwrap()
            .insert(token.clone(), req.device.clone());
        Ok(TokenResponse {
            token,
            expires_at: u64::MAX,
        })
    }

    async fn user(&self, token: &str, user: &Username) -> Result<UserResponse, ClientError> {
        self.server.signed_in(token)?;
        let account = self
            .storage()
            .account(user)
            .await
            .map_err(failed)?
            .ok_or_else(|| refused(ErrorCode::UnknownUser, "no such user"))?;
        Ok(UserResponse {
            user: user.clone(),
            device_list: account.signed_device_list(),
            identity_key: account.identity_key.into(),
        })
    }

    async fn upload_key_packages(
        &self,
        token: &str,
        req: &UploadKeyPackagesRequest,
    ) -> Result<KeyPackageCount, ClientError> {
        let device = self.server.signed_in(token)?;
        let key = self
            .storage()
            .device_key(&device)
            .await
            .map_err(failed)?
            .ok_or_else(|| refused(ErrorCode::Unauthorized, "unknown device"))?;
        let upload = req.clone().validate(&device, &key).map_err(invalid)?;
        self.storage()
            .add_key_packages(&device, &upload, 1000)
            .await
            .map_err(failed)?
            .ok_or_else(|| invalid("too many KeyPackages"))
    }

    async fn key_package_count(&self, token: &str) -> Result<KeyPackageCount, ClientError> {
        let device = self.server.signed_in(token)?;
        self.storage()
            .key_package_count(&device)
            .await
            .map_err(failed)
    }

    async fn claim(&self, token: &str, user: &Username) -> Result<ClaimResponse, ClientError> {
        self.server.signed_in(token)?;
        if let Some(lie) = self.lies.lock().unwrap().get(user) {
            return Ok(lie.clone());
        }
        match self
            .storage()
            .claim_key_packages(user, true)
            .await
            .map_err(failed)?
        {
            Claim::Claimed(key_packages) => Ok(ClaimResponse { key_packages }),
            Claim::UnknownUser => Err(refused(ErrorCode::UnknownUser, "no such user")),
            Claim::Exhausted => Err(refused(ErrorCode::NoKeyPackage, "no KeyPackage left")),
        }
    }

    async fn send(
        &self,
        token: &str,
        group: &GroupId,
        req: &SendRequest,
    ) -> Result<SendResponse, ClientError> {
        let sender = self.server.signed_in(token)?;
        if self.server.failing_sends.load(Ordering::Relaxed) {
            return Err(refused(ErrorCode::Internal, "storage failed"));
        }
        let valid = req.clone().validate(group).map_err(invalid)?;
        let quota = QueueQuota {
            messages: 10_000,
            bytes: 1 << 30,
        };
        let now = self.server.now();
        match delivery::submit(self.storage(), &sender, &valid, now, quota)
            .await
            .map_err(failed)?
        {
            Submitted::Accepted { response, .. } => {
                if req.to_roster {
                    self.server.roster_sends.fetch_add(1, Ordering::Relaxed);
                }
                Ok(response)
            }
            Submitted::EpochConflict(epoch) => {
                self.server.epoch_conflicts.fetch_add(1, Ordering::Relaxed);
                Err(ClientError::Refused(ErrorBody {
                    code: ErrorCode::EpochConflict,
                    message: "epoch conflict".into(),
                    epoch: Some(epoch),
                }))
            }
            Submitted::NotAMember => Err(refused(ErrorCode::NotAGroupMember, "not a member")),
            Submitted::UnknownRecipient => Err(refused(ErrorCode::UnknownDevice, "no such device")),
        }
    }

    async fn queue(&self, token: &str, limit: u32) -> Result<QueueResponse, ClientError> {
        let device = self.server.signed_in(token)?;
        self.storage()
            .fetch(&device, 0, limit, sotto_proto::limits::MAX_FETCH_BYTES)
            .await
            .map_err(failed)
    }

    async fn ack(&self, token: &str, ids: Vec<u64>) -> Result<(), ClientError> {
        let device = self.server.signed_in(token)?;
        delivery::ack(self.storage(), &device, &ids)
            .await
            .map_err(failed)?;
        Ok(())
    }
}
