//! A device's view of its account: init/open, the sync loop, sending, and group changes.
//!
//! Exactly-once: each queued message is processed in one local transaction that also records
//! its server id, and is acknowledged only after that transaction (and a WAL checkpoint) is on
//! disk; a redelivered id is skipped. Outgoing messages go through an outbox with a stable
//! idempotency key, so a send interrupted by a crash is completed on the next sync, once.
//! A commit that loses the race for its epoch (409) is discarded, the winner is processed, and
//! the change is recomputed and retried.

use crate::ClientError;
use crate::api::Api;
use crate::keyfile::{self, KdfParams};
use crate::store::{self, StoreProvider};
use futures_util::StreamExt as _;
use openmls::prelude::{Ciphersuite, MlsGroup};
use openmls_libcrux_crypto::CryptoProvider;
use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::group::{self, MemberDevice, Received};
use sotto_core::{Content, DeviceKey, IdentityKey};
use sotto_proto::api::{
    ChallengeRequest, QueuedKind, QueuedMessage, RegisterRequest, SendRequest, SendResponse,
    TokenRequest, UploadKeyPackagesRequest, WelcomeOut,
};
use sotto_proto::device_list::{DeviceList, parse_verifying_key};
use sotto_proto::{DeviceAddr, DeviceId, ErrorCode, GroupId, Username};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const KEYFILE: &str = "keyfile.json";
const STORE: &str = "store.db";
/// One-time KeyPackages uploaded at a time.
const KEY_PACKAGE_BATCH: usize = 50;
/// Below this many one-time KeyPackages on the server, the device uploads a batch.
const KEY_PACKAGE_LOW: u64 = 10;
/// Attempts at sending before giving up on a group that keeps changing.
const MAX_ATTEMPTS: usize = 10;
/// Queue fetch batch size.
const FETCH_BATCH: u32 = 100;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_client_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, ClientError> {
    serde_json::to_string(v).map_err(|e| ClientError::Store(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, ClientError> {
    serde_json::from_str(s).map_err(|e| ClientError::Store(e.to_string()))
}

/// Who this device is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Whoami {
    /// The account.
    pub user: String,
    /// This device.
    pub device: String,
    /// The server URL.
    pub server: String,
    /// The identity key, hex in groups of four.
    pub identity_key: String,
    /// The MLS ciphersuite code point.
    pub ciphersuite: u16,
}

/// A message or event ready to show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageView {
    /// Stable id: the server's message id, with `.N` for the N-th event of one commit.
    pub id: String,
    /// The conversation (the MLS group id, hex).
    pub conversation: String,
    /// The group's name; absent for a one-to-one conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The other person, for a one-to-one conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Sender's username.
    pub from: String,
    /// Sender's device id.
    pub device: String,
    /// When the server accepted it, seconds since the Unix epoch.
    pub sent_at: u64,
    /// `text` or `event`.
    pub kind: String,
    /// The text, or for an event a sentence such as "alice added bob".
    pub text: String,
    #[serde(skip)]
    local_id: i64,
}

/// A conversation as `group list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conversation {
    /// MLS group id, hex.
    pub id: String,
    /// Group name; `None` for one-to-one conversations and for groups whose name has not
    /// arrived yet.
    pub name: Option<String>,
    /// The other person of a one-to-one conversation.
    pub peer: Option<String>,
    /// Number of member devices.
    pub devices: usize,
    /// Current MLS epoch.
    pub epoch: u64,
    /// False once this device was removed.
    pub active: bool,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    /// Username.
    pub user: String,
    /// Device ids in the group.
    pub devices: Vec<String>,
}

/// What a sync did.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// Security failures met (a commit or Welcome refused); shown to the user as events too.
    pub security_failures: Vec<String>,
}

enum ApplyError {
    /// The device lists of these users are needed before the message can be checked.
    NeedLists(Vec<Username>),
    Failed(ClientError),
}

impl<E: Into<ClientError>> From<E> for ApplyError {
    fn from(e: E) -> Self {
        ApplyError::Failed(e.into())
    }
}

/// A send that has not been confirmed by the server yet.
struct OutboxEntry {
    client_id: String,
    group_id: Vec<u8>,
    /// `app` or `commit`.
    kind: String,
    /// The JSON `SendRequest`, sent again unchanged.
    request: String,
    /// For `app`: the JSON `Content`, to re-encrypt if the epoch moved on.
    content: Option<String>,
}

enum Handled {
    Done,
    NeedLists(Vec<Username>),
}

/// Groups kept in memory between operations, valid while no other connection (another
/// `sotto` process on this device) has committed: `PRAGMA data_version` tells.
#[derive(Default)]
struct GroupCache {
    data_version: Option<i64>,
    groups: HashMap<Vec<u8>, MlsGroup>,
}

/// An application message the server accepted whose local bookkeeping (dropping the outbox
/// entry, recording the sent message) is folded into this device's next transaction. If the
/// process dies first, the outbox entry is replayed and the server answers it idempotently.
struct AcceptedSend {
    group: GroupId,
    client_id: String,
    content: Content,
    response: SendResponse,
}

/// A device's client.
pub struct Client {
    conn: Connection,
    crypto: CryptoProvider,
    api: Api,
    device: DeviceKey,
    identity: IdentityKey,
    suite: Ciphersuite,
    suite_code: u16,
    token: Mutex<Option<(String, u64)>>,
    lists: Mutex<HashMap<Username, DeviceList>>,
    cache: RefCell<GroupCache>,
    accepted: RefCell<Vec<AcceptedSend>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Best effort: anything left is replayed from the outbox on the next sync.
        let _ = self.finish_accepted();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.device.addr())
    }
}

fn crypto() -> Result<CryptoProvider, ClientError> {
    CryptoProvider::new().map_err(|e| ClientError::Engine(format!("crypto init: {e:?}")))
}

impl Client {
    /// Creates an account `user` on `server` with this device as its first device, and a
    /// local store in `home` locked by `passcode` at Argon2id cost `kdf`
    /// ([`KdfParams::calibrated`] outside tests).
    pub async fn init(
        home: &Path,
        server: &str,
        user: &str,
        passcode: &str,
        kdf: KdfParams,
    ) -> Result<Client, ClientError> {
        let user = Username::parse(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if home.join(KEYFILE).exists() {
            return Err(ClientError::Usage(format!(
                "{} already holds a Sotto account; use another --home",
                home.display()
            )));
        }
        if passcode.is_empty() {
            return Err(ClientError::Usage("the passcode must not be empty".into()));
        }
        let api = Api::new(server)?;
        let cfg = api.config().await?;
        let suite = sotto_core::suite::ciphersuite(cfg.ciphersuite)?;
        let identity = IdentityKey::generate();
        let device = DeviceKey::generate(user.clone());
        let signed = identity.sign_device_list(&device.first_device_list("cli", now()));

        std::fs::create_dir_all(home)
            .map_err(|e| ClientError::Store(format!("{}: {e}", home.display())))?;
        let key = keyfile::create(&home.join(KEYFILE), passcode, kdf)?;
        let conn = store::open(&home.join(STORE), &key)?;
        let setup = || -> Result<(), ClientError> {
            store::set_meta(&conn, "server", api.base().as_bytes())?;
            store::set_meta(&conn, "user", user.as_str().as_bytes())?;
            store::set_meta(&conn, "device", device.addr().device.to_string().as_bytes())?;
            store::set_meta(&conn, "identity_secret", &identity.secret())?;
            store::set_meta(&conn, "device_secret", &device.secret())?;
            store::set_meta(&conn, "suite", &cfg.ciphersuite.to_be_bytes())?;
            store::set_meta(&conn, "device_list", json(&signed)?.as_bytes())?;
            Ok(())
        };
        let registered = match store::transaction(&conn, setup) {
            Ok(()) => {
                api.register(&RegisterRequest {
                    identity_key: identity.public().to_vec().into(),
                    device_list: signed,
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = registered {
            drop(conn);
            for f in [KEYFILE, STORE, "store.db-wal", "store.db-shm"] {
                let _ = std::fs::remove_file(home.join(f));
            }
            return Err(e);
        }
        let client = Client {
            conn,
            crypto: crypto()?,
            api,
            device,
            identity,
            suite,
            suite_code: cfg.ciphersuite,
            token: Mutex::new(None),
            lists: Mutex::new(HashMap::new()),
            cache: RefCell::default(),
            accepted: RefCell::default(),
        };
        client.top_up_key_packages().await?;
        Ok(client)
    }

    /// Unlocks the local store in `home` with `passcode`. Needs no network.
    pub fn open(home: &Path, passcode: &str) -> Result<Client, ClientError> {
        let key = keyfile::unlock(&home.join(KEYFILE), passcode)?;
        let conn = store::open(&home.join(STORE), &key)?;
        let get = |k: &str| -> Result<Vec<u8>, ClientError> {
            store::meta(&conn, k)?.ok_or_else(|| {
                ClientError::Store(format!("store lacks {k}; was init interrupted?"))
            })
        };
        let text = |k: &str| -> Result<String, ClientError> {
            String::from_utf8(get(k)?).map_err(|_| ClientError::Store(format!("bad {k}")))
        };
        let user = Username::parse(&text("user")?)?;
        let device = DeviceId::parse(&text("device")?)?;
        let suite_raw: [u8; 2] = get("suite")?
            .try_into()
            .map_err(|_| ClientError::Store("bad suite".into()))?;
        let suite_code = u16::from_be_bytes(suite_raw);
        let api = Api::new(&text("server")?)?;
        let identity = IdentityKey::from_secret(&get("identity_secret")?)?;
        let device = DeviceKey::from_secret(DeviceAddr { user, device }, &get("device_secret")?)?;
        Ok(Client {
            crypto: crypto()?,
            conn,
            api,
            device,
            identity,
            suite: sotto_core::suite::ciphersuite(suite_code)?,
            suite_code,
            token: Mutex::new(None),
            lists: Mutex::new(HashMap::new()),
            cache: RefCell::default(),
            accepted: RefCell::default(),
        })
    }

    fn provider(&self) -> StoreProvider<'_> {
        StoreProvider::new(&self.crypto, &self.conn)
    }

    fn me(&self) -> &DeviceAddr {
        self.device.addr()
    }

    /// Records the sends the server accepted since the last transaction, if there are any.
    fn finish_accepted(&self) -> Result<(), ClientError> {
        if self.accepted.borrow().is_empty() {
            return Ok(());
        }
        self.tx(|| Ok(()))
    }

    /// Runs `f` in one transaction, after the bookkeeping of accepted sends. If it rolls
    /// back, cached groups may be ahead of the store and are forgotten.
    fn tx<T>(&self, f: impl FnOnce() -> Result<T, ClientError>) -> Result<T, ClientError> {
        store::transaction(&self.conn, || {
            for a in self.accepted.take() {
                self.finish_app(&a.group, &a.client_id, &a.content, &a.response)?;
            }
            f()
        })
        .inspect_err(|_| self.forget_groups())
    }

    fn forget_groups(&self) {
        self.cache.borrow_mut().groups.clear();
    }

    /// Runs `f` on the group, loading it unless the cached copy is still current. Every
    /// change to a group goes through here, inside a transaction.
    fn with_group<T, E: From<ClientError>>(
        &self,
        gid: &[u8],
        f: impl FnOnce(&StoreProvider<'_>, &mut MlsGroup) -> Result<T, E>,
    ) -> Result<T, E> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(ClientError::from)?;
        let cached = {
            let mut cache = self.cache.borrow_mut();
            if cache.data_version != Some(version) {
                cache.groups.clear();
                cache.data_version = Some(version);
            }
            cache.groups.remove(gid)
        };
        let provider = self.provider();
        let mut g = match cached {
            Some(g) => g,
            None => group::load(&provider, gid).map_err(ClientError::from)?,
        };
        let result = f(&provider, &mut g);
        if result.is_ok() {
            self.cache.borrow_mut().groups.insert(gid.to_vec(), g);
        }
        result
    }

    /// Who this device is.
    pub fn whoami(&self) -> Whoami {
        let hex = hex::encode(self.identity.public());
        let grouped = hex
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Whoami {
            user: self.me().user.to_string(),
            device: self.me().device.to_string(),
            server: self.api.base().to_owned(),
            identity_key: grouped,
            ciphersuite: self.suite_code,
        }
    }

    async fn token(&self) -> Result<String, ClientError> {
        if let Some((t, exp)) = self.token.lock().ok().and_then(|g| g.clone())
            && exp > now() + 30
        {
            return Ok(t);
        }
        let ch = self
            .api
            .challenge(&ChallengeRequest {
                device: self.me().clone(),
            })
            .await?;
        let tok = self
            .api
            .token(&TokenRequest {
                device: self.me().clone(),
                signature: self.device.sign_challenge(ch.challenge.as_slice()).into(),
                challenge: ch.challenge,
            })
            .await?;
        if let Ok(mut g) = self.token.lock() {
            *g = Some((tok.token.clone(), tok.expires_at));
        }
        Ok(tok.token)
    }

    async fn top_up_key_packages(&self) -> Result<(), ClientError> {
        let token = self.token().await?;
        let count = self.api.key_package_count(&token).await?;
        if count.count >= KEY_PACKAGE_LOW && count.last_resort {
            return Ok(());
        }
        let fresh = self.tx(|| {
            Ok(group::new_key_packages(
                &self.provider(),
                &self.device,
                self.suite,
                KEY_PACKAGE_BATCH,
                !count.last_resort,
            )?)
        })?;
        self.api
            .upload_key_packages(
                &token,
                &UploadKeyPackagesRequest {
                    key_packages: fresh.one_time.into_iter().map(Into::into).collect(),
                    last_resort: fresh.last_resort.map(Into::into),
                },
            )
            .await?;
        Ok(())
    }

    /// Fetches, verifies and pins `user`'s identity key and device list.
    async fn fetch_device_list(&self, user: &Username) -> Result<DeviceList, ClientError> {
        if let Some(l) = self.lists.lock().ok().and_then(|m| m.get(user).cloned()) {
            return Ok(l);
        }
        let token = self.token().await?;
        let resp = self
            .api
            .user(&token, user)
            .await
            .map_err(|e| match e.code() {
                Some(ErrorCode::UnknownUser) => ClientError::Usage(format!("no such user: {user}")),
                _ => e,
            })?;
        let key = parse_verifying_key(resp.identity_key.as_slice())
            .map_err(|_| ClientError::Security(format!("{user} has a malformed identity key")))?;
        let pinned: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT identity_key FROM contacts WHERE user = ?1",
                [user.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        let expected = if *user == self.me().user {
            Some(self.identity.public().to_vec())
        } else {
            pinned
        };
        match expected {
            Some(k) if k != resp.identity_key.as_slice() => {
                return Err(ClientError::Security(format!(
                    "the identity key of {user} changed; refusing to trust it"
                )));
            }
            Some(_) => {}
            None => {
                self.conn.execute(
                    "INSERT INTO contacts (user, identity_key, first_seen) VALUES (?1, ?2, ?3)",
                    params![user.as_str(), resp.identity_key.as_slice(), now() as i64],
                )?;
            }
        }
        let verified = resp.device_list.verify(&key).map_err(|e| {
            ClientError::Security(format!("the device list of {user} does not verify: {e}"))
        })?;
        if verified.list().user != *user {
            return Err(ClientError::Security(format!(
                "the server returned another account's device list for {user}"
            )));
        }
        let list = verified.list().clone();
        if let Ok(mut m) = self.lists.lock() {
            m.insert(user.clone(), list.clone());
        }
        Ok(list)
    }

    /// Checks every device against its owner's signed device list (the ghost-device check).
    fn verify_members(&self, devices: &[MemberDevice]) -> Result<(), ApplyError> {
        let lists = self
            .lists
            .lock()
            .map_err(|_| ClientError::Store("lock poisoned".into()))?;
        let mut missing: Vec<Username> = devices
            .iter()
            .map(|d| d.addr.user.clone())
            .filter(|u| !lists.contains_key(u))
            .collect();
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Err(ApplyError::NeedLists(missing));
        }
        for d in devices {
            let ok = lists
                .get(&d.addr.user)
                .and_then(|l| l.device(d.addr.device))
                .is_some_and(|e| e.signature_key.as_slice() == d.signature_key);
            if !ok {
                return Err(ClientError::Security(format!(
                    "device {} is not in the signed device list of {}; refusing it",
                    d.addr.device, d.addr.user
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Sends what the outbox holds, then processes everything queued for this device.
    pub async fn sync(&self) -> Result<SyncReport, ClientError> {
        self.flush_outbox().await?;
        self.pull().await
    }

    async fn pull(&self) -> Result<SyncReport, ClientError> {
        let token = self.token().await?;
        let mut report = SyncReport::default();
        let mut welcomed = false;
        // Device lists are fetched fresh on every pull: they change when devices are added.
        if let Ok(mut m) = self.lists.lock() {
            m.clear();
        }
        loop {
            let batch = self.api.queue(&token, FETCH_BATCH).await?.messages;
            if batch.is_empty() {
                break;
            }
            let mut acks = Vec::with_capacity(batch.len());
            let mut next = 0;
            while next < batch.len() {
                // One transaction for as much of the batch as can be checked without network.
                let need = self.tx(|| {
                    while let Some(m) = batch.get(next) {
                        if let Handled::NeedLists(users) = self.handle(m, &mut report)? {
                            return Ok(Some(users));
                        }
                        welcomed |= m.kind == QueuedKind::Welcome;
                        acks.push(m.id);
                        next += 1;
                    }
                    Ok(None)
                })?;
                for u in need.into_iter().flatten() {
                    if let Err(e) = self.fetch_device_list(&u).await {
                        // Record an unverifiable list as empty: the check then refuses the
                        // message with a clear reason.
                        if let Ok(mut l) = self.lists.lock() {
                            l.insert(
                                u.clone(),
                                DeviceList {
                                    version: 1,
                                    user: u.clone(),
                                    revision: 0,
                                    devices: vec![],
                                },
                            );
                        }
                        report.security_failures.push(e.to_string());
                    }
                }
            }
            // Make the processed batch durable before the server may delete it.
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            self.api.ack(&token, acks).await?;
        }
        if welcomed {
            self.top_up_key_packages().await?;
        }
        Ok(report)
    }

    fn is_processed(&self, id: u64) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM processed WHERE server_id = ?1",
                [id as i64],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn handle(&self, m: &QueuedMessage, report: &mut SyncReport) -> Result<Handled, ClientError> {
        if self.is_processed(m.id)? {
            return Ok(Handled::Done);
        }
        let outcome = (|| {
            self.conn.execute_batch("SAVEPOINT apply")?;
            let r = self.apply(m);
            let sql = if r.is_ok() {
                "RELEASE apply"
            } else {
                self.forget_groups();
                "ROLLBACK TO apply; RELEASE apply"
            };
            self.conn.execute_batch(sql)?;
            Ok::<_, ClientError>(r)
        })()?;
        match outcome {
            Ok(()) => {}
            Err(ApplyError::NeedLists(users)) => return Ok(Handled::NeedLists(users)),
            Err(ApplyError::Failed(e)) => {
                let text = match &e {
                    ClientError::Security(s) => {
                        report.security_failures.push(s.clone());
                        format!("SECURITY: refused a message from {}: {s}", m.sender.user)
                    }
                    other => format!(
                        "a message from {} could not be read: {other}",
                        m.sender.user
                    ),
                };
                self.insert_message(
                    &format!("{}", m.id),
                    &m.group_id,
                    &m.sender,
                    m.accepted_at,
                    "event",
                    &text,
                    false,
                )?;
            }
        }
        self.conn.execute(
            "INSERT INTO processed (server_id) VALUES (?1)",
            [m.id as i64],
        )?;
        Ok(Handled::Done)
    }

    fn apply(&self, m: &QueuedMessage) -> Result<(), ApplyError> {
        let provider = self.provider();
        let gid = &m.group_id;
        match m.kind {
            QueuedKind::Welcome => {
                if self.conversation_exists(gid)? {
                    return Ok(());
                }
                self.cache.borrow_mut().groups.remove(gid.as_bytes());
                let g = group::join(&provider, m.message.as_slice())?;
                self.verify_members(&group::members(&g)?)?;
                // Upsert: a member removed earlier and added back rejoins its conversation.
                self.conn.execute(
                    "INSERT INTO conversations (group_id, created_at) VALUES (?1, ?2)
                     ON CONFLICT (group_id) DO UPDATE SET active = 1, announced = 0",
                    params![gid.as_bytes(), m.accepted_at as i64],
                )?;
                Ok(())
            }
            QueuedKind::Group => {
                if !self.conversation_exists(gid)? {
                    // Not (or no longer) in this group on this device: nothing to show.
                    return Ok(());
                }
                self.with_group(gid.as_bytes(), |provider, g| {
                    match group::process(provider, g, m.message.as_slice())? {
                        Received::Content { sender, content } => {
                            self.apply_content(m, &sender, content)?;
                        }
                        Received::Commit(staged) => {
                            self.verify_members(&staged.summary.proven_devices())?;
                            let summary = group::merge_staged(provider, g, staged)?;
                            let events =
                                self.describe(&summary.committer, &summary.added, &summary.removed);
                            for (i, text) in events.iter().enumerate() {
                                self.insert_message(
                                    &format!("{}.{i}", m.id),
                                    gid,
                                    &summary.committer,
                                    m.accepted_at,
                                    "event",
                                    text,
                                    false,
                                )?;
                            }
                            if summary.self_removed {
                                self.conn.execute(
                                    "UPDATE conversations SET active = 0 WHERE group_id = ?1",
                                    [gid.as_bytes()],
                                )?;
                            }
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    fn apply_content(
        &self,
        m: &QueuedMessage,
        sender: &DeviceAddr,
        content: Content,
    ) -> Result<(), ClientError> {
        let gid = &m.group_id;
        match content {
            Content::Text { body } => self.insert_message(
                &m.id.to_string(),
                gid,
                sender,
                m.accepted_at,
                "text",
                &body,
                false,
            ),
            Content::GroupInfo { name } => {
                let announced: bool = self.conn.query_row(
                    "SELECT announced FROM conversations WHERE group_id = ?1",
                    [gid.as_bytes()],
                    |r| r.get(0),
                )?;
                let peer = name.is_none().then(|| sender.user.to_string());
                self.conn.execute(
                    "UPDATE conversations SET name = ?2, peer = ?3, announced = 1 WHERE group_id = ?1",
                    params![gid.as_bytes(), name, peer],
                )?;
                if !announced && name.is_some() {
                    let text = format!("{} added you", sender.user);
                    self.insert_message(
                        &m.id.to_string(),
                        gid,
                        sender,
                        m.accepted_at,
                        "event",
                        &text,
                        false,
                    )?;
                }
                Ok(())
            }
        }
    }

    fn describe(
        &self,
        committer: &DeviceAddr,
        added: &[MemberDevice],
        removed: &[DeviceAddr],
    ) -> Vec<String> {
        let name = |u: &Username| {
            if *u == self.me().user {
                "you".to_owned()
            } else {
                u.to_string()
            }
        };
        let users = |devs: &mut dyn Iterator<Item = &Username>| {
            let mut v: Vec<Username> = devs.cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let who = name(&committer.user);
        let mut out = Vec::new();
        for u in users(&mut added.iter().map(|d| &d.addr.user)) {
            out.push(format!("{who} added {}", name(&u)));
        }
        for u in users(&mut removed.iter().map(|d| &d.user)) {
            out.push(format!("{who} removed {}", name(&u)));
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_message(
        &self,
        id: &str,
        gid: &GroupId,
        sender: &DeviceAddr,
        sent_at: u64,
        kind: &str,
        body: &str,
        outgoing: bool,
    ) -> Result<(), ClientError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO messages (id, group_id, sender_user, sender_device, sent_at, kind, body, outgoing, shown)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                id,
                gid.as_bytes(),
                sender.user.as_str(),
                sender.device.to_string(),
                sent_at as i64,
                kind,
                body,
                outgoing
            ],
        )?;
        Ok(())
    }

    fn conversation_exists(&self, gid: &GroupId) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM conversations WHERE group_id = ?1 AND active = 1",
                [gid.as_bytes()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn others(&self, g: &MlsGroup) -> Result<Vec<DeviceAddr>, ClientError> {
        Ok(group::members(g)?
            .into_iter()
            .map(|m| m.addr)
            .filter(|a| a != self.me())
            .collect())
    }

    /// Runs `f` on a group this device is still a member of.
    fn with_active_group<T>(
        &self,
        gid: &GroupId,
        f: impl FnOnce(&StoreProvider<'_>, &mut MlsGroup) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if !self.conversation_exists(gid)? {
            return Err(ClientError::Usage(
                "you are no longer a member of this conversation".into(),
            ));
        }
        self.with_group(gid.as_bytes(), |p, g| {
            if !g.is_active() {
                return Err(ClientError::Usage(
                    "you are no longer a member of this conversation".into(),
                ));
            }
            f(p, g)
        })
    }

    async fn post(&self, gid: &GroupId, req: &SendRequest) -> Result<SendResponse, ClientError> {
        let token = self.token().await?;
        self.api.send(&token, gid, req).await
    }

    /// Encrypts and sends `content` to a group, rebasing on concurrent commits.
    async fn send_content(
        &self,
        gid: &GroupId,
        content: &Content,
    ) -> Result<SendResponse, ClientError> {
        for _ in 0..MAX_ATTEMPTS {
            let req = self.tx(|| {
                let req = self.with_active_group(gid, |p, g| {
                    Ok(SendRequest {
                        client_id: random_client_id(),
                        message: group::encrypt(p, &self.device, g, content)?.into(),
                        recipients: self.others(g)?,
                        roster: None,
                        welcome: None,
                    })
                })?;
                self.conn.execute(
                    "INSERT INTO outbox (client_id, group_id, kind, request, content, created_at) VALUES (?1, ?2, 'app', ?3, ?4, ?5)",
                    params![req.client_id, gid.as_bytes(), json(&req)?, json(content)?, now() as i64],
                )?;
                Ok(req)
            })?;
            match self.post(gid, &req).await {
                Ok(resp) => {
                    self.accepted.borrow_mut().push(AcceptedSend {
                        group: gid.clone(),
                        client_id: req.client_id,
                        content: content.clone(),
                        response: resp.clone(),
                    });
                    return Ok(resp);
                }
                Err(e) if e.code() == Some(ErrorCode::EpochConflict) => {
                    self.drop_outbox(&req.client_id)?;
                    self.pull().await?;
                }
                // Unreachable: the outbox keeps it and the next sync sends it.
                Err(e @ ClientError::Unreachable(_)) => return Err(e),
                Err(e) => {
                    self.drop_outbox(&req.client_id)?;
                    return Err(e);
                }
            }
        }
        Err(ClientError::Engine(
            "the conversation kept changing; try again".into(),
        ))
    }

    /// Drops a commit the server refused, and its outbox entry.
    fn abandon_commit(&self, gid: &GroupId, client_id: &str) -> Result<(), ClientError> {
        self.tx(|| {
            self.drop_outbox(client_id)?;
            self.with_group(gid.as_bytes(), |p, g| Ok(group::discard_pending(p, g)?))
        })
    }

    fn drop_outbox(&self, client_id: &str) -> Result<(), ClientError> {
        self.conn
            .execute("DELETE FROM outbox WHERE client_id = ?1", [client_id])?;
        Ok(())
    }

    fn finish_app(
        &self,
        gid: &GroupId,
        client_id: &str,
        content: &Content,
        resp: &SendResponse,
    ) -> Result<(), ClientError> {
        self.drop_outbox(client_id)?;
        if let Content::Text { body } = content {
            self.insert_message(
                &resp.id.to_string(),
                gid,
                self.me(),
                resp.accepted_at,
                "text",
                body,
                true,
            )?;
        }
        Ok(())
    }

    fn finish_commit(
        &self,
        gid: &GroupId,
        client_id: &str,
        resp: &SendResponse,
    ) -> Result<Vec<String>, ClientError> {
        self.drop_outbox(client_id)?;
        let (before, after) = self.with_group(gid.as_bytes(), |p, g| {
            let before = group::members(g)?;
            group::merge_pending(p, g)?;
            Ok::<_, ClientError>((before, group::members(g)?))
        })?;
        let added: Vec<MemberDevice> = after
            .iter()
            .filter(|m| !before.contains(m))
            .cloned()
            .collect();
        let removed: Vec<DeviceAddr> = before
            .iter()
            .filter(|m| !after.contains(m))
            .map(|m| m.addr.clone())
            .collect();
        let events = self.describe(self.me(), &added, &removed);
        for (i, text) in events.iter().enumerate() {
            self.insert_message(
                &format!("{}.{i}", resp.id),
                gid,
                self.me(),
                resp.accepted_at,
                "event",
                text,
                true,
            )?;
        }
        Ok(events)
    }

    /// Sends whatever an interrupted run left in the outbox, with its original idempotency
    /// key, so the server stores it at most once.
    async fn flush_outbox(&self) -> Result<(), ClientError> {
        // Bookkeeping of sends already accepted first: they need no replay.
        self.finish_accepted()?;
        let entries: Vec<OutboxEntry> = {
            let mut stmt = self.conn.prepare(
                "SELECT client_id, group_id, kind, request, content FROM outbox ORDER BY created_at, rowid",
            )?;
            stmt.query_map([], |r| {
                Ok(OutboxEntry {
                    client_id: r.get(0)?,
                    group_id: r.get(1)?,
                    kind: r.get(2)?,
                    request: r.get(3)?,
                    content: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?
        };
        for OutboxEntry {
            client_id,
            group_id: gid,
            kind,
            request,
            content,
        } in entries
        {
            let gid = GroupId::from_bytes(&gid)?;
            let req: SendRequest = from_json(&request)?;
            let result = self.post(&gid, &req).await;
            match (kind.as_str(), result) {
                (_, Err(e @ ClientError::Unreachable(_))) => return Err(e),
                ("app", Ok(resp)) => {
                    let content: Content = from_json(content.as_deref().unwrap_or("null"))?;
                    self.tx(|| self.finish_app(&gid, &client_id, &content, &resp))?;
                }
                ("app", Err(e)) => {
                    self.drop_outbox(&client_id)?;
                    if e.code() == Some(ErrorCode::EpochConflict) {
                        let content: Content = from_json(content.as_deref().unwrap_or("null"))?;
                        self.pull().await?;
                        self.send_content(&gid, &content).await?;
                    }
                }
                (_, Ok(resp)) => {
                    self.tx(|| self.finish_commit(&gid, &client_id, &resp))?;
                }
                (_, Err(_)) => self.abandon_commit(&gid, &client_id)?,
            }
        }
        Ok(())
    }

    /// Adds `add` and removes `remove` (users, with all their devices) in one commit,
    /// retrying on concurrent commits. Returns the events it caused.
    async fn change_members(
        &self,
        gid: &GroupId,
        add: &[Username],
        remove: &[Username],
    ) -> Result<Vec<String>, ClientError> {
        for attempt in 0..MAX_ATTEMPTS {
            // Callers sync first; a retry must first process the commit that won the race.
            if attempt > 0 {
                self.pull().await?;
            }
            let members = self.tx(|| self.with_active_group(gid, |_, g| Ok(group::members(g)?)))?;
            let is_member = |u: &Username| members.iter().any(|m| &m.addr.user == u);
            let to_add: Vec<&Username> = add.iter().filter(|u| !is_member(u)).collect();
            let to_remove: Vec<DeviceAddr> = members
                .iter()
                .filter(|m| remove.contains(&m.addr.user))
                .map(|m| m.addr.clone())
                .collect();
            if to_add.is_empty() && to_remove.is_empty() {
                return Ok(Vec::new());
            }
            let mut key_packages = Vec::new();
            for user in &to_add {
                let list = self.fetch_device_list(user).await?;
                let token = self.token().await?;
                let claimed = self
                    .api
                    .claim(&token, user)
                    .await
                    .map_err(|e| match e.code() {
                        Some(ErrorCode::UnknownUser) => {
                            ClientError::Usage(format!("no such user: {user}"))
                        }
                        _ => e,
                    })?;
                for c in claimed.key_packages {
                    let addr = DeviceAddr {
                        user: (*user).clone(),
                        device: c.device,
                    };
                    let entry = list.device(c.device).ok_or_else(|| {
                        ClientError::Security(format!("the server offered device {addr}, which is not in {user}'s signed device list"))
                    })?;
                    let kp = group::verify_key_package(
                        &self.provider(),
                        c.key_package.as_slice(),
                        &addr,
                        entry.signature_key.as_slice(),
                        self.suite,
                    )?;
                    key_packages.push((addr, kp));
                }
            }
            let req = self.tx(|| {
                let kps: Vec<_> = key_packages.iter().map(|(_, kp)| kp.clone()).collect();
                let (recipients, out) = self.with_active_group(gid, |p, g| {
                    let recipients = self.others(g)?;
                    let out = if kps.is_empty() {
                        group::remove(p, &self.device, g, &to_remove)?
                    } else {
                        group::add(p, &self.device, g, &kps)?
                    };
                    Ok((recipients, out))
                })?;
                let new_devices: Vec<DeviceAddr> =
                    key_packages.iter().map(|(a, _)| a.clone()).collect();
                let mut roster: Vec<DeviceAddr> = members
                    .iter()
                    .map(|m| m.addr.clone())
                    .filter(|a| !to_remove.contains(a))
                    .collect();
                roster.extend(new_devices.iter().cloned());
                let req = SendRequest {
                    client_id: random_client_id(),
                    message: out.commit.into(),
                    recipients,
                    roster: Some(roster),
                    welcome: out.welcome.map(|w| WelcomeOut {
                        message: w.into(),
                        recipients: new_devices,
                    }),
                };
                self.conn.execute(
                    "INSERT INTO outbox (client_id, group_id, kind, request, created_at) VALUES (?1, ?2, 'commit', ?3, ?4)",
                    params![req.client_id, gid.as_bytes(), json(&req)?, now() as i64],
                )?;
                Ok(req)
            })?;
            match self.post(gid, &req).await {
                Ok(resp) => {
                    let mut events = self.tx(|| self.finish_commit(gid, &req.client_id, &resp))?;
                    if !to_add.is_empty() {
                        let name: Option<String> = self.conn.query_row(
                            "SELECT name FROM conversations WHERE group_id = ?1",
                            [gid.as_bytes()],
                            |r| r.get(0),
                        )?;
                        self.send_content(gid, &Content::GroupInfo { name }).await?;
                    }
                    if !remove.is_empty() && to_remove.is_empty() {
                        events.push("nobody to remove".into());
                    }
                    return Ok(events);
                }
                Err(e @ ClientError::Unreachable(_)) => return Err(e),
                Err(e) => {
                    self.abandon_commit(gid, &req.client_id)?;
                    if e.code() != Some(ErrorCode::EpochConflict) {
                        return Err(e);
                    }
                }
            }
        }
        Err(ClientError::Engine(
            "the group kept changing; try again".into(),
        ))
    }

    fn create_local_group(
        &self,
        name: Option<&str>,
        peer: Option<&Username>,
    ) -> Result<GroupId, ClientError> {
        self.tx(|| {
            let g = group::create(&self.provider(), &self.device, self.suite)?;
            let gid = GroupId::from_bytes(g.group_id().as_slice())?;
            self.conn.execute(
                "INSERT INTO conversations (group_id, name, peer, announced, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
                params![gid.as_bytes(), name, peer.map(|p| p.as_str()), now() as i64],
            )?;
            Ok(gid)
        })
    }

    fn direct_conversation(&self, peer: &Username) -> Result<Option<GroupId>, ClientError> {
        let gid: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT group_id FROM conversations WHERE peer = ?1 AND name IS NULL AND active = 1
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [peer.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        gid.map(|g| GroupId::from_bytes(&g).map_err(ClientError::from))
            .transpose()
    }

    fn group_by_name(&self, name: &str) -> Result<GroupId, ClientError> {
        let mut stmt = self
            .conn
            .prepare("SELECT group_id FROM conversations WHERE name = ?1 AND active = 1")?;
        let ids: Vec<Vec<u8>> = stmt
            .query_map([name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        match ids.as_slice() {
            [one] => Ok(GroupId::from_bytes(one)?),
            [] => {
                let removed = self
                    .conn
                    .query_row(
                        "SELECT 1 FROM conversations WHERE name = ?1 AND active = 0",
                        [name],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                Err(ClientError::Usage(if removed {
                    format!("you were removed from the group {name:?}")
                } else {
                    format!("no group named {name:?}")
                }))
            }
            _ => Err(ClientError::Usage(format!(
                "several groups are named {name:?}; rename one first"
            ))),
        }
    }

    fn text_content(text: &str) -> Result<Content, ClientError> {
        Content::Text {
            body: text.to_owned(),
        }
        .check()
        .map_err(|e| ClientError::Usage(e.to_string()))
    }

    /// Sends `text` to `user` in your one-to-one conversation, starting it if needed.
    pub async fn send_text(&self, user: &str, text: &str) -> Result<SendResponse, ClientError> {
        let peer = Username::parse(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if peer == self.me().user {
            return Err(ClientError::Usage(
                "you cannot start a conversation with yourself".into(),
            ));
        }
        let content = Self::text_content(text)?;
        self.sync().await?;
        let gid = match self.direct_conversation(&peer)? {
            Some(g) => g,
            None => {
                self.fetch_device_list(&peer).await?;
                self.create_local_group(None, Some(&peer))?
            }
        };
        // Also completes a conversation whose first add failed (network, refused device).
        let joined = self.tx(|| {
            self.with_active_group(&gid, |_, g| {
                Ok(group::members(g)?.iter().any(|m| m.addr.user == peer))
            })
        })?;
        if !joined {
            self.change_members(&gid, std::slice::from_ref(&peer), &[])
                .await?;
        }
        self.send_content(&gid, &content).await
    }

    /// Sends `text` to the group named `name`.
    pub async fn send_group_text(
        &self,
        name: &str,
        text: &str,
    ) -> Result<SendResponse, ClientError> {
        let content = Self::text_content(text)?;
        self.sync().await?;
        let gid = self.group_by_name(name)?;
        self.send_content(&gid, &content).await
    }

    fn parse_users(users: &[String]) -> Result<Vec<Username>, ClientError> {
        users
            .iter()
            .map(|u| Username::parse(u).map_err(|e| ClientError::Usage(format!("{u:?}: {e}"))))
            .collect()
    }

    /// Creates a group named `name` with `members`.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<Vec<String>, ClientError> {
        Content::GroupInfo {
            name: Some(name.to_owned()),
        }
        .check()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
        let members = Self::parse_users(members)?;
        self.sync().await?;
        if self.group_by_name(name).is_ok() {
            return Err(ClientError::Usage(format!(
                "you already have a group named {name:?}"
            )));
        }
        for m in &members {
            self.fetch_device_list(m).await?;
        }
        let gid = self.create_local_group(Some(name), None)?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        self.change_members(&gid, &members, &[]).await
    }

    /// Adds users to a group.
    pub async fn add_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<String>, ClientError> {
        let users = Self::parse_users(users)?;
        self.sync().await?;
        let gid = self.group_by_name(name)?;
        self.change_members(&gid, &users, &[]).await
    }

    /// Removes users from a group.
    pub async fn remove_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<String>, ClientError> {
        let users = Self::parse_users(users)?;
        if users.contains(&self.me().user) {
            return Err(ClientError::Usage(
                "leaving a group is not supported yet".into(),
            ));
        }
        self.sync().await?;
        let gid = self.group_by_name(name)?;
        self.change_members(&gid, &[], &users).await
    }

    /// Groups of this device.
    pub fn groups(&self) -> Result<Vec<Conversation>, ClientError> {
        type Row = (Vec<u8>, Option<String>, Option<String>, bool);
        let rows: Vec<Row> = {
            let mut stmt = self.conn.prepare(
                "SELECT group_id, name, peer, active FROM conversations WHERE peer IS NULL ORDER BY created_at, rowid",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()?
        };
        rows.into_iter()
            .map(|(gid, name, peer, active)| {
                let g = group::load(&self.provider(), &gid)?;
                Ok(Conversation {
                    id: hex::encode(&gid),
                    name,
                    peer,
                    devices: g.members().count(),
                    epoch: g.epoch().as_u64(),
                    active,
                })
            })
            .collect()
    }

    /// Members of the group named `name`, by user.
    pub fn members(&self, name: &str) -> Result<Vec<Member>, ClientError> {
        let gid = self.group_by_name(name)?;
        let g = group::load(&self.provider(), gid.as_bytes())?;
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in group::members(&g)? {
            by_user
                .entry(m.addr.user.to_string())
                .or_default()
                .push(m.addr.device.to_string());
        }
        Ok(by_user
            .into_iter()
            .map(|(user, devices)| Member { user, devices })
            .collect())
    }

    /// Messages and events not yet shown, oldest first. Call [`Client::mark_shown`] once
    /// they are displayed.
    pub fn unshown(&self) -> Result<Vec<MessageView>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT m.local_id, m.id, m.group_id, c.name, c.peer, m.sender_user, m.sender_device, m.sent_at, m.kind, m.body
             FROM messages m LEFT JOIN conversations c ON c.group_id = m.group_id
             WHERE m.shown = 0 ORDER BY m.local_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MessageView {
                local_id: r.get(0)?,
                id: r.get(1)?,
                conversation: hex::encode(r.get::<_, Vec<u8>>(2)?),
                group: r.get(3)?,
                peer: r.get(4)?,
                from: r.get(5)?,
                device: r.get(6)?,
                sent_at: u64::try_from(r.get::<_, i64>(7)?).unwrap_or(0),
                kind: r.get(8)?,
                text: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks everything up to and including `messages` as shown.
    pub fn mark_shown(&self, messages: &[MessageView]) -> Result<(), ClientError> {
        if let Some(last) = messages.last() {
            self.conn.execute(
                "UPDATE messages SET shown = 1 WHERE shown = 0 AND local_id <= ?1",
                [last.local_id],
            )?;
        }
        Ok(())
    }

    /// Opens the push WebSocket, signed in with this device's token.
    async fn connect_push(
        &self,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        ClientError,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = self
            .api
            .ws_url()
            .into_client_request()
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let auth = format!("Bearer {}", self.token().await?)
            .parse()
            .map_err(|_| ClientError::Engine("token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (stream, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        Ok(stream)
    }

    /// Syncs and hands new messages to `emit` until `deadline` (forever if `None`), waking on
    /// WebSocket pushes. With `until_first`, returns after the first non-empty batch.
    pub async fn follow(
        &self,
        deadline: Option<Instant>,
        until_first: bool,
        mut emit: impl FnMut(&[MessageView]) -> Result<(), ClientError>,
    ) -> Result<SyncReport, ClientError> {
        let mut report = SyncReport::default();
        let mut ws = None;
        loop {
            match self.sync().await {
                Ok(r) => report.security_failures.extend(r.security_failures),
                // A server restart or a network blip: keep following, try again shortly.
                Err(ClientError::Unreachable(_)) => {
                    ws = None;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(report);
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let batch = self.unshown()?;
            if !batch.is_empty() {
                emit(&batch)?;
                self.mark_shown(&batch)?;
                if until_first {
                    return Ok(report);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(report);
            }
            if ws.is_none() {
                // The socket opens with one push event; the loop fetches again on it.
                ws = self.connect_push().await.ok();
                if ws.is_none() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let sleep = tokio::time::sleep_until(deadline.unwrap_or(far));
            if let Some(stream) = ws.as_mut() {
                tokio::select! {
                    ev = stream.next() => {
                        if !matches!(ev, Some(Ok(_))) {
                            ws = None;
                        }
                    }
                    () = sleep => {}
                }
            }
        }
    }
}
