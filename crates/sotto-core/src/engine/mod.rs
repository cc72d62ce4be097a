//! The client engine: every decision a device makes, over a [`ClientStore`], a [`Transport`]
//! and a [`Clock`] it is given, so the whole protocol runs in a test without files or
//! network. The parts: [`directory`] (contacts' keys and the ghost-device check),
//! `key_packages` (this device's KeyPackages on the server), [`sync`] (the queue, processed
//! exactly once), [`outbox`] (sending, replay and rebase), [`conversations`] (groups and
//! membership), [`history`] (what is shown), [`transparency`] (the key-transparency log),
//! [`devices`], [`linking`] and [`removal`] (an account's devices), `vouched` (the counters
//! and log roots messages carry) and `healing` (leaf renewal on a schedule).
//!
//! Exactly-once: each queued message is processed in one store transaction that also records
//! its server id, and is acknowledged only after that transaction is durable; a redelivered
//! id is skipped. Outgoing messages go through an outbox with a stable idempotency key, so a
//! send interrupted by a crash is completed on the next sync, once. A commit that loses the
//! race for its epoch (409) is discarded, the winner is processed, and the change is
//! recomputed and retried.

pub mod contacts;
pub mod conversations;
pub mod devices;
pub mod directory;
mod healing;
pub mod history;
mod key_packages;
pub mod linking;
pub mod outbox;
pub mod removal;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod transparency;
mod vouched;
mod witnesses;

pub use witnesses::{WITNESS_MAX_AGE, WitnessPolicy};

use crate::store::{ClientStore, Setting, StoreTx};
use crate::{ClientError, Clock, DeviceKey, IdentityKey, Transport, group};
use openmls::prelude::{Ciphersuite, MlsGroup};
use outbox::AcceptedSend;
use sotto_proto::api::{ChallengeRequest, RegisterRequest, ServerConfig, TokenRequest};
use sotto_proto::device_list::DeviceList;
use sotto_proto::{DeviceAddr, DeviceId, ErrorCode, GroupId, ServerId, Username};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Attempts at sending before giving up on a group that keeps changing.
const MAX_ATTEMPTS: usize = 10;

/// Most other devices an application message names; a larger group's messages go to the
/// roster the server holds (`to_roster`). Naming them keeps delivery in the sender's hands: a
/// member who declared a false roster with a commit cannot stop a small group's messages
/// reaching anyone. A large group trades that for messages that do not carry thousands of
/// names, until the next commit, which names every device before it (up to
/// `limits::MAX_RECIPIENTS`) and so reaches the ones a false roster left out.
pub const NAMED_RECIPIENTS: usize = 64;

/// Checks what a server says of itself before an account is made on it: a ciphersuite this
/// Sotto speaks, and a key-transparency key.
pub(super) fn check_server(config: &ServerConfig) -> Result<(), ClientError> {
    crate::suite::ciphersuite(config.ciphersuite).map_err(|_| {
        ClientError::Usage(format!(
            "the server uses MLS ciphersuite {:#06x}, which this Sotto does not support",
            config.ciphersuite
        ))
    })?;
    if config.kt_vrf_key.len() != 32 {
        return Err(ClientError::Usage(
            "the server has no valid key-transparency key; is it a Sotto server?".into(),
        ));
    }
    witnesses::check_checkpoint_key(&config.kt_checkpoint_key, config.kt_vrf_key.as_slice())
}

fn random_client_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each of the engine's maps holds independent entries: a panic elsewhere cannot leave one
    // half-changed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Groups kept in memory between operations, valid while no other connection has committed
/// (the store's data version tells).
#[derive(Default)]
struct GroupCache {
    data_version: Option<i64>,
    groups: HashMap<GroupId, MlsGroup>,
}

/// What [`Engine::create`] makes.
#[derive(Debug, Clone, Copy)]
pub struct NewAccount<'a> {
    /// The username.
    pub user: &'a Username,
    /// The name of this, its first device, shown to its contacts (`laptop`, `cli`).
    pub device_name: &'a str,
    /// Settings the shell keeps beside the account's own (its server's address, say).
    pub settings: &'a [(Setting, &'a [u8])],
}

/// A device's engine.
pub struct Engine<S, T> {
    store: S,
    transport: T,
    clock: Arc<dyn Clock>,
    device: DeviceKey,
    identity: IdentityKey,
    /// The server's identity, pinned at account creation (or, for a store made before there
    /// was one, at its first sign-in); every sign-in signature names it.
    server_id: Mutex<Option<ServerId>>,
    suite: Ciphersuite,
    suite_code: u16,
    token: Mutex<Option<(String, u64)>>,
    /// Device lists fetched during this sync: verified, or why not.
    lists: Mutex<HashMap<Username, Result<DeviceList, String>>>,
    cache: Mutex<GroupCache>,
    accepted: Mutex<Vec<AcceptedSend>>,
    /// Whether a commit processed since the last renewal pass removed someone.
    heal_wanted: std::sync::atomic::AtomicBool,
    /// Whether a proof verified since the lists were last forgotten showed the log's newest
    /// epoch: only then are lists proven at that epoch current.
    head_fresh: std::sync::atomic::AtomicBool,
}

impl<S, T> std::fmt::Debug for Engine<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.device.addr())
    }
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Creates an account with this device as its first device, in an empty `store`, and
    /// registers it with the server whose settings are `config`. Registration carries the
    /// first KeyPackages, all or nothing; if the server created the account but its answer
    /// was lost, the name stays taken (registration is never sent twice).
    pub async fn create(
        store: S,
        transport: T,
        clock: Arc<dyn Clock>,
        account: NewAccount<'_>,
        config: &ServerConfig,
    ) -> Result<Self, ClientError> {
        let NewAccount {
            user,
            device_name,
            settings,
        } = account;
        check_server(config)?;
        let identity = IdentityKey::generate();
        let device = DeviceKey::generate(user.clone());
        let list = device.first_device_list(device_name, clock.now());
        let signed = identity.sign_device_list(&list);
        let engine = Engine::assemble(
            (store, transport, clock),
            device,
            identity,
            Some(config.server_id.clone()),
            config.ciphersuite,
        )?;
        let list = serde_json::to_vec(&signed).map_err(|e| ClientError::Internal(e.to_string()))?;
        // The first KeyPackages are made (their secrets stored) with the account, and go to
        // the server in the registration itself.
        let key_packages = engine.tx(|tx| {
            engine.write_account(tx, settings, &list)?;
            tx.set_setting(Setting::KtVrfKey, config.kt_vrf_key.as_slice())?;
            tx.set_setting(
                Setting::KtCheckpointKey,
                config.kt_checkpoint_key.as_bytes(),
            )?;
            engine.new_key_packages(tx, true)
        })?;
        let last_resort = key_packages
            .last_resort
            .ok_or_else(|| ClientError::Internal("no last-resort KeyPackage made".into()))?;
        engine
            .transport
            .register(&RegisterRequest {
                identity_key: engine.identity.public().to_vec().into(),
                device_list: signed,
                key_packages: key_packages.one_time.into_iter().map(Into::into).collect(),
                last_resort: last_resort.into(),
            })
            .await?;
        Ok(engine)
    }

    /// Writes this device's account into the store: the shell's `settings`, the server's
    /// identity, who this device is, its keys, the suite and the account's signed device list
    /// (`list`, JSON).
    pub(super) fn write_account(
        &self,
        tx: &impl StoreTx,
        settings: &[(Setting, &[u8])],
        list: &[u8],
    ) -> Result<(), ClientError> {
        for (key, value) in settings {
            tx.set_setting(*key, value)?;
        }
        let server_id = lock(&self.server_id)
            .clone()
            .ok_or_else(|| ClientError::Internal("no server identity to keep".into()))?;
        tx.set_setting(Setting::ServerId, server_id.as_str().as_bytes())?;
        tx.set_setting(Setting::User, self.me().user.as_str().as_bytes())?;
        tx.set_setting(Setting::Device, self.me().device.to_string().as_bytes())?;
        tx.set_setting(Setting::IdentitySecret, &self.identity.secret())?;
        tx.set_setting(Setting::DeviceSecret, &self.device.secret())?;
        tx.set_setting(Setting::Suite, &self.suite_code.to_be_bytes())?;
        tx.set_setting(Setting::DeviceList, list)?;
        Ok(())
    }

    /// The engine of the account in `store`.
    pub fn open(store: S, transport: T, clock: Arc<dyn Clock>) -> Result<Self, ClientError> {
        let read = |tx: &S::Tx<'_>| -> Result<_, ClientError> {
            let get = |k: Setting| -> Result<Vec<u8>, ClientError> {
                tx.setting(k)?.ok_or_else(|| {
                    ClientError::Store(format!("store lacks {}; was init interrupted?", k.as_str()))
                })
            };
            let text = |k: Setting| -> Result<String, ClientError> {
                String::from_utf8(get(k)?).map_err(|_| ClientError::damaged(k.as_str()))
            };
            let user =
                Username::parse(&text(Setting::User)?).map_err(|_| ClientError::damaged("user"))?;
            let device = DeviceId::parse(&text(Setting::Device)?)
                .map_err(|_| ClientError::damaged("device"))?;
            let suite: [u8; 2] = get(Setting::Suite)?
                .try_into()
                .map_err(|_| ClientError::damaged("suite"))?;
            // Stores made before the server had an identity have none.
            let server_id = tx
                .setting(Setting::ServerId)?
                .map(|id| {
                    std::str::from_utf8(&id)
                        .ok()
                        .and_then(|id| ServerId::parse(id).ok())
                        .ok_or_else(|| ClientError::damaged("server id"))
                })
                .transpose()?;
            let identity = IdentityKey::from_secret(&get(Setting::IdentitySecret)?)?;
            let device =
                DeviceKey::from_secret(DeviceAddr { user, device }, &get(Setting::DeviceSecret)?)?;
            Ok((identity, device, u16::from_be_bytes(suite), server_id))
        };
        let (identity, device, suite_code, server_id) = store.read(read)?;
        Engine::assemble(
            (store, transport, clock),
            device,
            identity,
            server_id,
            suite_code,
        )
    }

    /// An engine over `parts` (store, transport, clock) for this device of this account.
    pub(super) fn assemble(
        parts: (S, T, Arc<dyn Clock>),
        device: DeviceKey,
        identity: IdentityKey,
        server_id: Option<ServerId>,
        suite_code: u16,
    ) -> Result<Self, ClientError> {
        let (store, transport, clock) = parts;
        Ok(Engine {
            store,
            transport,
            clock,
            device,
            identity,
            server_id: Mutex::new(server_id),
            suite: crate::suite::ciphersuite(suite_code)?,
            suite_code,
            token: Mutex::new(None),
            lists: Mutex::new(HashMap::new()),
            cache: Mutex::default(),
            accepted: Mutex::default(),
            heal_wanted: std::sync::atomic::AtomicBool::new(false),
            head_fresh: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This device.
    pub fn me(&self) -> &DeviceAddr {
        self.device.addr()
    }

    /// The account's identity public key.
    pub fn identity_key(&self) -> [u8; 32] {
        self.identity.public()
    }

    /// The MLS ciphersuite code point.
    pub fn suite(&self) -> u16 {
        self.suite_code
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Runs `f` in one transaction, after the bookkeeping of accepted sends. If it rolls
    /// back, cached groups may be ahead of the store and are forgotten.
    fn tx<R>(
        &self,
        f: impl FnOnce(&S::Tx<'_>) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let accepted = std::mem::take(&mut *lock(&self.accepted));
        self.store
            .transaction(|tx| {
                for a in &accepted {
                    self.finish_message(tx, a)?;
                }
                f(tx)
            })
            .inspect_err(|_| self.forget_groups())
    }

    /// Records the sends the server accepted since the last transaction, if there are any.
    pub fn finish_accepted(&self) -> Result<(), ClientError> {
        if lock(&self.accepted).is_empty() {
            return Ok(());
        }
        self.tx(|_| Ok(()))
    }

    fn forget_groups(&self) {
        lock(&self.cache).groups.clear();
    }

    /// Runs `f` on the group, loading it unless the cached copy is still current. Every
    /// change to a group goes through here, inside a transaction.
    fn with_group<'t, X: StoreTx, R, E: From<ClientError>>(
        &self,
        tx: &'t X,
        gid: &GroupId,
        f: impl FnOnce(&X::Mls<'t>, &mut MlsGroup) -> Result<R, E>,
    ) -> Result<R, E> {
        let version = tx.data_version().map_err(ClientError::from)?;
        let cached = {
            let mut cache = lock(&self.cache);
            if cache.data_version != Some(version) {
                cache.groups.clear();
                cache.data_version = Some(version);
            }
            cache.groups.remove(gid)
        };
        let provider = tx.mls();
        let mut g = match cached {
            Some(g) => g,
            None => group::load(&provider, gid.as_bytes()).map_err(ClientError::from)?,
        };
        let result = f(&provider, &mut g);
        if result.is_ok() {
            lock(&self.cache).groups.insert(gid.clone(), g);
        }
        result
    }

    /// Runs `f` on a group this device is still a member of.
    fn with_active_group<'t, X: StoreTx, R>(
        &self,
        tx: &'t X,
        gid: &GroupId,
        f: impl FnOnce(&X::Mls<'t>, &mut MlsGroup) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let gone = || ClientError::Usage("you are no longer a member of this conversation".into());
        if !self.conversation_exists(tx, gid)? {
            return Err(gone());
        }
        self.with_group(tx, gid, |p, g| {
            if !g.is_active() {
                return Err(gone());
            }
            f(p, g)
        })
    }

    fn conversation_exists(&self, tx: &impl StoreTx, gid: &GroupId) -> Result<bool, ClientError> {
        Ok(tx.conversation(gid)?.is_some_and(|c| c.active))
    }

    /// Whom a message to `g` goes to, as it stands: its other devices by name (the
    /// recipients, `to_roster` false), or, in a group of more than `up_to` other devices, the
    /// roster the server holds (no recipients, `to_roster` true).
    fn addressing(
        &self,
        g: &MlsGroup,
        up_to: usize,
    ) -> Result<(Vec<DeviceAddr>, bool), ClientError> {
        let others: Vec<DeviceAddr> = group::members(g)?
            .into_iter()
            .map(|m| m.addr)
            .filter(|a| a != self.me())
            .collect();
        Ok(if others.len() > up_to {
            (Vec::new(), true)
        } else {
            (others, false)
        })
    }

    /// A bearer token for this device, signing in when the last one is close to expiring.
    pub async fn token(&self) -> Result<String, ClientError> {
        if let Some((t, exp)) = lock(&self.token).clone()
            && exp > self.now().saturating_add(30)
        {
            return Ok(t);
        }
        let server_id = self.server_id().await?;
        let ch = self
            .transport
            .challenge(&ChallengeRequest {
                device: self.me().clone(),
            })
            .await?;
        let tok = self
            .transport
            .token(&TokenRequest {
                device: self.me().clone(),
                signature: self
                    .device
                    .sign_challenge(&server_id, ch.challenge.as_slice())
                    .into(),
                challenge: ch.challenge,
            })
            .await?;
        *lock(&self.token) = Some((tok.token.clone(), tok.expires_at));
        Ok(tok.token)
    }

    /// The pinned server identity; a store made before there was one pins it now.
    async fn server_id(&self) -> Result<ServerId, ClientError> {
        if let Some(id) = lock(&self.server_id).clone() {
            return Ok(id);
        }
        let id = self.transport.config().await?.server_id;
        self.tx(|tx| Ok(tx.set_setting(Setting::ServerId, id.as_str().as_bytes())?))?;
        *lock(&self.server_id) = Some(id.clone());
        Ok(id)
    }

    /// Passes `result` on, first recording a security failure in it as a security event, so
    /// that its reason outlives the command that met it.
    pub(super) fn recorded<R>(&self, result: Result<R, ClientError>) -> Result<R, ClientError> {
        if let Err(ClientError::Security(reason)) = &result {
            // The failure is reported to the caller either way; the record is best effort.
            let _ = self.tx(|tx| self.record_security(tx, None, None, reason));
        }
        result
    }
}
