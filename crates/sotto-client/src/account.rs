//! A device's account on disk: creating it (`init`) and unlocking it (`open`) in a home
//! directory, and [`Client`], the engine over the SQLCipher store and the HTTP transport,
//! with the words of its events chosen for people.

use crate::ClientError;
use crate::keyfile::{self, KdfParams};
use crate::messages::{MessageView, describe};
use crate::store::{self, SqlCipherStore};
use crate::transport::Api;
use sotto_core::engine::NewAccount;
use sotto_core::engine::conversations::{Conversation, Member};
use sotto_core::store::{ClientStore as _, Setting, StoreTx as _};
use sotto_core::{Engine, Event, SystemClock, Transport as _};
use sotto_proto::Username;
use sotto_proto::api::SendResponse;
use std::path::Path;
use std::sync::Arc;

pub(crate) const KEYFILE: &str = "keyfile.json";
pub(crate) const STORE: &str = "store.db";

/// Shortest passcode accepted.
pub const MIN_PASSCODE_CHARS: usize = 6;

/// Files `init` creates in the home directory; removed again if it fails.
const HOME_FILES: [&str; 4] = [KEYFILE, STORE, "store.db-wal", "store.db-shm"];

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

/// What `sotto verify` shows of a contact.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContactView {
    /// The contact.
    pub user: String,
    /// 60 digits over both identity keys, the same on both sides.
    pub safety_number: String,
    /// Whether you confirmed this safety number.
    pub verified: bool,
    /// The key-transparency epoch at which the contact's devices were just checked.
    pub kt_epoch: u64,
}

/// What `sotto verify` does besides showing.
#[derive(Debug, Clone, Copy)]
pub enum VerifyAction<'a> {
    /// Only shows.
    Show,
    /// Marks the contact verified, if this is their safety number.
    Confirm(&'a str),
    /// Trusts the contact's new identity key.
    Accept,
}

/// How a new account's device is set up.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Argon2id cost of the passcode ([`KdfParams::calibrated`] outside tests).
    pub kdf: KdfParams,
    /// Allow `http://` to a host that is not loopback (test networks only): remembered in
    /// the store, so every later command of this device may use it too.
    pub insecure_http: bool,
    /// The witnesses whose cosignatures every log root must carry (`init --witness`).
    pub witnesses: Option<sotto_core::engine::WitnessPolicy>,
}

impl InitOptions {
    /// Options with the passcode cost `kdf` and nothing else unusual.
    pub fn new(kdf: KdfParams) -> Self {
        InitOptions {
            kdf,
            insecure_http: false,
            witnesses: None,
        }
    }
}

/// A home directory being made into a device's home: checked empty, with the server's
/// settings fetched. [`NewHome::remove`] takes back whatever was made in it.
pub(crate) struct NewHome {
    pub(crate) home: std::path::PathBuf,
    pub(crate) user: Username,
    pub(crate) api: Api,
    pub(crate) config: sotto_proto::api::ServerConfig,
    kdf: KdfParams,
    insecure_http: bool,
    witnesses: Option<sotto_core::engine::WitnessPolicy>,
    created: bool,
}

impl NewHome {
    /// Checks that `home` holds no account and `passcode` is long enough, and asks `server`
    /// for its settings.
    pub(crate) async fn prepare(
        home: &Path,
        server: &str,
        user: &str,
        passcode: &str,
        options: InitOptions,
    ) -> Result<NewHome, ClientError> {
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
        let config = api.config().await?;
        if sotto_core::suite::ciphersuite(config.ciphersuite).is_err() {
            return Err(ClientError::Usage(format!(
                "the server uses MLS ciphersuite {:#06x}, which this Sotto does not support",
                config.ciphersuite
            )));
        }
        let created = !home.exists();
        store::create_private_dir(home)?;
        Ok(NewHome {
            home: home.to_owned(),
            user,
            api,
            config,
            kdf: options.kdf,
            insecure_http: options.insecure_http,
            witnesses: options.witnesses,
            created,
        })
    }

    /// The key file and the empty store.
    pub(crate) fn store(&self, passcode: &str) -> Result<SqlCipherStore, ClientError> {
        let key = keyfile::create(&self.home.join(KEYFILE), passcode, self.kdf)?;
        SqlCipherStore::open(&self.home.join(STORE), &key)
    }

    /// The settings the shell keeps in the store beside the account's own.
    pub(crate) fn settings(&self) -> Result<Vec<(Setting, Vec<u8>)>, ClientError> {
        let mut settings = vec![
            (Setting::Server, self.api.base().as_bytes().to_vec()),
            (Setting::InsecureHttp, vec![u8::from(self.insecure_http)]),
        ];
        if let Some(policy) = &self.witnesses {
            settings.push((Setting::KtWitnesses, policy.to_setting()?));
        }
        Ok(settings)
    }

    /// Removes what was made in the home directory (and the directory, if it was made).
    pub(crate) fn remove(&self) {
        for f in HOME_FILES {
            let _ = std::fs::remove_file(self.home.join(f));
        }
        if self.created {
            let _ = std::fs::remove_dir(&self.home);
        }
    }
}

/// A device's client: the engine over its encrypted store and the server's HTTP API. It is
/// `Send + Sync`, so a web server can share one between requests.
pub struct Client {
    pub(crate) engine: Engine<SqlCipherStore, Api>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Best effort: anything left is replayed from the outbox on the next sync.
        let _ = self.engine.finish_accepted();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.engine.me())
    }
}

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
        let new = NewHome::prepare(home, server, user, passcode, options).await?;
        let made = async {
            let store = new.store(passcode)?;
            let settings = new.settings()?;
            let settings: Vec<(Setting, &[u8])> =
                settings.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let account = NewAccount {
                user: &new.user,
                device_name: "cli",
                settings: &settings,
            };
            Engine::create(
                store,
                new.api.clone(),
                Arc::new(SystemClock),
                account,
                &new.config,
            )
            .await
        }
        .await;
        match made {
            Ok(engine) => Ok(Client { engine }),
            Err(e) => {
                new.remove();
                Err(e)
            }
        }
    }

    /// Unlocks the local store in `home` with `passcode`. Needs no network.
    pub fn open(home: &Path, passcode: &str) -> Result<Client, ClientError> {
        let key = keyfile::unlock(&home.join(KEYFILE), passcode)?;
        let store = SqlCipherStore::open(&home.join(STORE), &key)?;
        let (server, insecure_http) = store.read(|tx| {
            let server = tx.setting(Setting::Server)?.ok_or_else(|| {
                ClientError::Store("store lacks server; was init interrupted?".into())
            })?;
            // Stores made before this setting existed do not have it.
            let insecure = tx.setting(Setting::InsecureHttp)?.is_some_and(|v| v == [1]);
            Ok::<_, ClientError>((server, insecure))
        })?;
        let server = String::from_utf8(server).map_err(|_| ClientError::damaged("server URL"))?;
        let api =
            Api::new(&server, insecure_http).map_err(|_| ClientError::damaged("server URL"))?;
        let engine = Engine::open(store, api, Arc::new(SystemClock))?;
        Ok(Client { engine })
    }

    /// Who this device is.
    pub fn whoami(&self) -> Whoami {
        let hex = hex::encode(self.engine.identity_key());
        let grouped = hex
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Whoami {
            user: self.engine.me().user.to_string(),
            device: self.engine.me().device.to_string(),
            server: self.engine.transport().base().to_owned(),
            identity_key: grouped,
            ciphersuite: self.engine.suite(),
        }
    }

    fn words(&self, events: Vec<Event>) -> Vec<String> {
        events
            .iter()
            .map(|e| describe(e, &self.engine.me().user))
            .collect()
    }

    /// Sends `text` to `user` in your one-to-one conversation, starting it if needed. Refuses
    /// if that conversation holds anyone but the two of you.
    pub async fn send_text(&self, user: &str, text: &str) -> Result<SendResponse, ClientError> {
        self.engine.send_text(user, text).await
    }

    /// Sends `text` to the group named `name`.
    pub async fn send_group_text(
        &self,
        name: &str,
        text: &str,
    ) -> Result<SendResponse, ClientError> {
        self.engine.send_group_text(name, text).await
    }

    /// Creates a group named `name` with `members`; returns what happened, in words.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<Vec<String>, ClientError> {
        Ok(self.words(self.engine.create_group(name, members).await?))
    }

    /// Adds users to a group; returns what happened, in words.
    pub async fn add_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<String>, ClientError> {
        Ok(self.words(self.engine.add_members(name, users).await?))
    }

    /// Removes users from a group; returns what happened, in words.
    pub async fn remove_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<String>, ClientError> {
        Ok(self.words(self.engine.remove_members(name, users).await?))
    }

    /// Checks `user`'s keys now and shows their safety number; confirms or accepts it.
    pub async fn verify(
        &self,
        user: &str,
        action: VerifyAction<'_>,
    ) -> Result<ContactView, ClientError> {
        let user = Username::parse(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        let status = match action {
            VerifyAction::Show => self.engine.contact_status(&user).await?,
            VerifyAction::Confirm(number) => self.engine.confirm_contact(&user, number).await?,
            VerifyAction::Accept => self.engine.accept_identity(&user).await?,
        };
        Ok(ContactView {
            user: status.user.to_string(),
            safety_number: status.safety_number,
            verified: status.verified,
            kt_epoch: status.log_epoch,
        })
    }

    /// Groups of this device.
    pub fn groups(&self) -> Result<Vec<Conversation>, ClientError> {
        self.engine.groups()
    }

    /// Members of the group named `name`, by user.
    pub fn members(&self, name: &str) -> Result<Vec<Member>, ClientError> {
        self.engine.members(name)
    }

    /// Sends what the outbox holds, then processes everything queued for this device. Every
    /// security failure met on the way is stored as a security event (see
    /// [`Client::unseen_security_events`]); one met while processing a message refuses that
    /// message and the sync goes on.
    pub async fn sync(&self) -> Result<(), ClientError> {
        self.engine.sync().await
    }

    /// Messages and events not yet shown, oldest first. Call [`Client::mark_shown`] once
    /// they are displayed.
    pub fn unshown(&self) -> Result<Vec<MessageView>, ClientError> {
        let me = &self.engine.me().user;
        Ok(self
            .engine
            .unshown()?
            .into_iter()
            .map(|e| MessageView::of(e, me))
            .collect())
    }

    /// Security events `recv` has not shown yet. Every command reports them (and exits 3)
    /// until `recv` has shown them.
    pub fn unseen_security_events(&self) -> Result<Vec<MessageView>, ClientError> {
        let me = &self.engine.me().user;
        Ok(self
            .engine
            .unseen_security_events()?
            .into_iter()
            .map(|e| MessageView::of(e, me))
            .collect())
    }

    /// Marks everything up to and including `messages` as shown.
    pub fn mark_shown(&self, messages: &[MessageView]) -> Result<(), ClientError> {
        match messages.last() {
            Some(last) => self.engine.mark_shown(last.position),
            None => Ok(()),
        }
    }
}
