//! A device's view of its account: creating and unlocking it, signing in, KeyPackages, and
//! the transactions and group cache every other part runs in. The parts live in submodules:
//! [`directory`] (contacts' keys), [`sync`] (the queue), [`outbox`] (sending),
//! [`conversations`] (groups and their members) and [`messages`] (the history shown).
//!
//! Exactly-once: each queued message is processed in one local transaction that also records
//! its server id, and is acknowledged only after that transaction is on disk (a completed WAL
//! checkpoint); a redelivered id is skipped. Outgoing messages go through an outbox with a stable
//! idempotency key, so a send interrupted by a crash is completed on the next sync, once.
//! A commit that loses the race for its epoch (409) is discarded, the winner is processed, and
//! the change is recomputed and retried.

mod conversations;
mod directory;
mod messages;
mod outbox;
mod sync;
#[cfg(test)]
mod tests;

pub use conversations::{Conversation, Member};
pub use messages::{MessageKind, MessageView};
use outbox::AcceptedSend;
use sync::ApplyError;
pub use sync::FollowStatus;

use crate::ClientError;
use crate::api::Api;
use crate::keyfile::{self, KdfParams};
use crate::store::{self, StoreProvider};
use futures_util::StreamExt as _;
use openmls::prelude::{Ciphersuite, MlsGroup};
use openmls_libcrux_crypto::CryptoProvider;
use rusqlite::{Connection, OptionalExtension as _, params};
use sotto_core::group::{self, MemberDevice, Received};
use sotto_core::{Content, DeviceKey, Envelope, IdentityKey};
use sotto_proto::api::{
    ChallengeRequest, QueuedKind, QueuedMessage, RegisterRequest, SendRequest, SendResponse,
    ServerConfig, TokenRequest, UploadKeyPackagesRequest, WelcomeOut,
};
use sotto_proto::device_list::{DeviceList, parse_verifying_key};
use sotto_proto::{DeviceAddr, DeviceId, ErrorCode, GroupId, ServerId, Username};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Groups kept in memory between operations, valid while no other connection (another
/// `sotto` process on this device) has committed: `PRAGMA data_version` tells.
#[derive(Default)]
struct GroupCache {
    data_version: Option<i64>,
    groups: HashMap<Vec<u8>, MlsGroup>,
}

/// A device's client.
pub struct Client {
    conn: Connection,
    crypto: CryptoProvider,
    api: Api,
    device: DeviceKey,
    identity: IdentityKey,
    /// The server's identity, pinned at `init` (or, for a store made before there was one, at
    /// its first sign-in); every sign-in signature names it.
    server_id: Mutex<Option<ServerId>>,
    suite: Ciphersuite,
    suite_code: u16,
    token: Mutex<Option<(String, u64)>>,
    /// Device lists fetched during this sync: verified, or why not.
    lists: Mutex<HashMap<Username, Result<DeviceList, String>>>,
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

/// Whether the server may still take what failed with `e`, or answer the next time: it
/// could not be reached, failed (a 5xx, from it or a proxy in front), timed out (the request
/// may have been carried out all the same), or asked for patience.
/// Whatever failed so stays in the outbox, to be sent again with the same idempotency key.
fn is_transient(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable(_))
        || matches!(
            e.code(),
            Some(ErrorCode::Internal | ErrorCode::RateLimited | ErrorCode::RequestTimeout)
        )
}

/// The server took other commits every time this device tried: a refusal (exit code 2), to
/// be tried again later.
fn kept_changing() -> ClientError {
    ClientError::Refused(sotto_proto::ErrorBody {
        code: ErrorCode::EpochConflict,
        message: format!("the group kept changing ({MAX_ATTEMPTS} tries); try again"),
        epoch: None,
    })
}

fn crypto() -> Result<CryptoProvider, ClientError> {
    CryptoProvider::new().map_err(|e| ClientError::Internal(format!("crypto init: {e}")))
}

/// How a new account's device is set up.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Argon2id cost of the passcode ([`KdfParams::calibrated`] outside tests).
    pub kdf: KdfParams,
    /// Allow `http://` to a host that is not loopback (test networks only): remembered in
    /// the store, so every later command of this device may use it too.
    pub insecure_http: bool,
}

impl InitOptions {
    /// Options with the passcode cost `kdf` and nothing else unusual.
    pub fn new(kdf: KdfParams) -> Self {
        InitOptions {
            kdf,
            insecure_http: false,
        }
    }
}

/// Shortest passcode accepted.
pub const MIN_PASSCODE_CHARS: usize = 6;

/// Files `init` creates in the home directory; removed again if it fails.
const HOME_FILES: [&str; 4] = [KEYFILE, STORE, "store.db-wal", "store.db-shm"];

impl Client {
    /// Creates an account `user` on `server` with this device as its first device, and a
    /// local store in `home` locked by `passcode`. On failure nothing is left in `home`, and
    /// the server holds no half-made account: registration carries the first KeyPackages, all
    /// or nothing. (If the server created the account but its answer was lost, the name stays
    /// taken: registration is never sent twice.)
    pub async fn init(
        home: &Path,
        server: &str,
        user: &str,
        passcode: &str,
        options: InitOptions,
    ) -> Result<Client, ClientError> {
        let user = Username::parse(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if home.join(KEYFILE).exists() {
            return Err(ClientError::Usage(format!(
                "{} already holds a Sotto account; use another --home",
                home.display()
            )));
        }
        // A store without a key file is no account, but it is not ours to delete either.
        if let Some(f) = HOME_FILES.iter().find(|f| home.join(f).exists()) {
            return Err(ClientError::Usage(format!(
                "{} already holds {f} of an earlier Sotto; use another --home",
                home.display()
            )));
        }
        if passcode.chars().count() < MIN_PASSCODE_CHARS {
            return Err(ClientError::Usage(format!(
                "the passcode must have at least {MIN_PASSCODE_CHARS} characters"
            )));
        }
        let api = Api::new(server, options.insecure_http)?;
        let cfg = api.config().await?;
        let suite = sotto_core::suite::ciphersuite(cfg.ciphersuite)?;
        let created_home = !home.exists();
        store::create_private_dir(home)?;
        let made = Self::create(home, api, &user, passcode, options, cfg, suite).await;
        if made.is_err() {
            for f in HOME_FILES {
                let _ = std::fs::remove_file(home.join(f));
            }
            if created_home {
                let _ = std::fs::remove_dir(home);
            }
        }
        made
    }

    async fn create(
        home: &Path,
        api: Api,
        user: &Username,
        passcode: &str,
        options: InitOptions,
        cfg: ServerConfig,
        suite: Ciphersuite,
    ) -> Result<Client, ClientError> {
        let identity = IdentityKey::generate();
        let device = DeviceKey::generate(user.clone());
        let signed = identity.sign_device_list(&device.first_device_list("cli", now()));
        let key = keyfile::create(&home.join(KEYFILE), passcode, options.kdf)?;
        let conn = store::open(&home.join(STORE), &key)?;
        let client = Client {
            conn,
            crypto: crypto()?,
            api,
            device,
            identity,
            server_id: Mutex::new(Some(cfg.server_id.clone())),
            suite,
            suite_code: cfg.ciphersuite,
            token: Mutex::new(None),
            lists: Mutex::new(HashMap::new()),
            cache: RefCell::default(),
            accepted: RefCell::default(),
        };
        // The first KeyPackages are made (their secrets stored) with the account, and go to
        // the server in the registration itself.
        let key_packages = client.tx(|| {
            let c = &client;
            store::set_meta(&c.conn, "server", c.api.base().as_bytes())?;
            store::set_meta(&c.conn, "insecure_http", &[u8::from(options.insecure_http)])?;
            store::set_meta(&c.conn, "server_id", cfg.server_id.as_str().as_bytes())?;
            store::set_meta(&c.conn, "user", user.as_str().as_bytes())?;
            store::set_meta(&c.conn, "device", c.me().device.to_string().as_bytes())?;
            store::set_meta(&c.conn, "identity_secret", &c.identity.secret())?;
            store::set_meta(&c.conn, "device_secret", &c.device.secret())?;
            store::set_meta(&c.conn, "suite", &cfg.ciphersuite.to_be_bytes())?;
            store::set_meta(&c.conn, "device_list", json(&signed)?.as_bytes())?;
            c.new_key_packages(true)
        })?;
        client
            .api
            .register(&RegisterRequest {
                identity_key: client.identity.public().to_vec().into(),
                device_list: signed,
                key_packages: key_packages.one_time.into_iter().map(Into::into).collect(),
                last_resort: key_packages
                    .last_resort
                    .ok_or_else(|| ClientError::Internal("no last-resort KeyPackage made".into()))?
                    .into(),
            })
            .await?;
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
        let user = Username::parse(&text("user")?).map_err(|_| ClientError::damaged("user"))?;
        let device =
            DeviceId::parse(&text("device")?).map_err(|_| ClientError::damaged("device"))?;
        let suite_raw: [u8; 2] = get("suite")?
            .try_into()
            .map_err(|_| ClientError::Store("bad suite".into()))?;
        let suite_code = u16::from_be_bytes(suite_raw);
        // Stores made before these settings existed have neither.
        let insecure_http = store::meta(&conn, "insecure_http")?.is_some_and(|v| v == [1]);
        let api = Api::new(&text("server")?, insecure_http)
            .map_err(|_| ClientError::damaged("server URL"))?;
        let server_id = store::meta(&conn, "server_id")?
            .map(|id| {
                std::str::from_utf8(&id)
                    .ok()
                    .and_then(|id| ServerId::parse(id).ok())
                    .ok_or_else(|| ClientError::Store("bad server_id".into()))
            })
            .transpose()?;
        let identity = IdentityKey::from_secret(&get("identity_secret")?)?;
        let device = DeviceKey::from_secret(DeviceAddr { user, device }, &get("device_secret")?)?;
        Ok(Client {
            crypto: crypto()?,
            conn,
            api,
            device,
            identity,
            server_id: Mutex::new(server_id),
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
            for accepted in self.accepted.take() {
                self.finish_app(&accepted)?;
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
        let server_id = self.server_id().await?;
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
                signature: self
                    .device
                    .sign_challenge(&server_id, ch.challenge.as_slice())
                    .into(),
                challenge: ch.challenge,
            })
            .await?;
        if let Ok(mut g) = self.token.lock() {
            *g = Some((tok.token.clone(), tok.expires_at));
        }
        Ok(tok.token)
    }

    /// The pinned server identity; a store made before there was one pins it now.
    async fn server_id(&self) -> Result<ServerId, ClientError> {
        if let Some(id) = self.server_id.lock().ok().and_then(|g| g.clone()) {
            return Ok(id);
        }
        let id = self.api.config().await?.server_id;
        store::set_meta(&self.conn, "server_id", id.as_str().as_bytes())?;
        if let Ok(mut pinned) = self.server_id.lock() {
            *pinned = Some(id.clone());
        }
        Ok(id)
    }

    /// Makes a batch of one-time KeyPackages (and a last-resort one if asked), keeping their
    /// secrets in the store. Runs inside a transaction.
    fn new_key_packages(&self, last_resort: bool) -> Result<group::NewKeyPackages, ClientError> {
        Ok(group::new_key_packages(
            &self.provider(),
            &self.device,
            self.suite,
            KEY_PACKAGE_BATCH,
            last_resort,
        )?)
    }

    /// Uploads a batch of KeyPackages when the server holds fewer than the low mark (or no
    /// last-resort one): others may have claimed them while this device was away.
    async fn top_up_key_packages(&self, token: &str) -> Result<(), ClientError> {
        let count = self.api.key_package_count(token).await?;
        if count.count >= KEY_PACKAGE_LOW && count.last_resort {
            return Ok(());
        }
        let fresh = self.tx(|| self.new_key_packages(!count.last_resort))?;
        self.api
            .upload_key_packages(
                token,
                &UploadKeyPackagesRequest {
                    key_packages: fresh.one_time.into_iter().map(Into::into).collect(),
                    last_resort: fresh.last_resort.map(Into::into),
                },
            )
            .await?;
        Ok(())
    }

    /// Passes `result` on, first recording a security failure in it as a security event, so
    /// that its reason outlives the command that met it.
    fn recorded<T>(&self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(ClientError::Security(reason)) = &result {
            // The failure is reported to the caller either way; the record is best effort.
            let _ = self.record_security(None, reason);
        }
        result
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
}
