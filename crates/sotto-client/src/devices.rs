//! Linking, approving, removing and listing this account's devices.

use crate::ClientError;
use crate::account::{Client, InitOptions, NewHome};
use crate::store::SqlCipherStore;
use crate::transport::Api;
use sotto_core::SystemClock;
use sotto_core::engine::NewAccount;
use sotto_core::engine::devices::{Approved, DeviceInfo};
use sotto_core::engine::linking::PendingLink;
use sotto_core::engine::removal::Removed;
use sotto_core::store::Setting;
use sotto_proto::link::LinkCode;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often a device waiting to be linked asks whether it was approved.
const POLL: Duration = Duration::from_millis(250);

/// A new device waiting for one of its account's devices to approve it.
pub struct Linking {
    pending: PendingLink<SqlCipherStore, Api>,
    home: NewHome,
}

impl std::fmt::Debug for Linking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Linking({})", self.home.user)
    }
}

/// What a linked device received.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkedView {
    /// The account.
    pub user: String,
    /// This device.
    pub device: String,
    /// Contacts received, with their pinned keys and verification marks.
    pub contacts: usize,
    /// History entries received.
    pub history: usize,
    /// The oldest entries the approving device left out (the archive's size limit).
    pub history_left_out: u64,
}

impl Linking {
    /// Makes this device's keys in a new store in `home` (locked by `passcode`) and asks
    /// `server` to let it wait, as `name`, for a device of `user` to approve it.
    pub async fn start(
        home: &Path,
        server: &str,
        user: &str,
        name: &str,
        passcode: &str,
        options: InitOptions,
    ) -> Result<Linking, ClientError> {
        sotto_proto::device_list::check_device_name(name)
            .map_err(|e| ClientError::Usage(format!("device name: {e}")))?;
        let new = NewHome::prepare(home, server, user, passcode, options).await?;
        let started = async {
            let store = new.store(passcode)?;
            let settings = new.settings()?;
            let settings: Vec<(Setting, &[u8])> =
                settings.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            PendingLink::start(
                store,
                new.api.clone(),
                Arc::new(SystemClock),
                NewAccount {
                    user: &new.user,
                    device_name: name,
                    settings: &settings,
                },
                &new.config,
            )
            .await
        }
        .await;
        match started {
            Ok(pending) => Ok(Linking { pending, home: new }),
            Err(e) => {
                new.remove();
                Err(e)
            }
        }
    }

    /// The code to type (or scan) on a device of the account.
    pub fn code(&self) -> String {
        self.pending.code().encode()
    }

    /// When the code stops working, seconds since the Unix epoch.
    pub fn expires_at(&self) -> u64 {
        self.pending.expires_at()
    }

    /// Waits for the approval (until the code expires, or Ctrl-C), then checks what it
    /// brought and becomes the account's device. Whatever fails, nothing is left in the home
    /// directory.
    pub async fn wait(self) -> Result<(Client, LinkedView), ClientError> {
        let Linking { pending, home } = self;
        let waited = async {
            let answer = loop {
                match pending.poll().await {
                    Ok(Some(answer)) => break answer,
                    Ok(None) => {}
                    // The answer waits on the server: a failure on the way is tried again.
                    Err(e) if e.is_transient() => {}
                    Err(e) if e.code() == Some(sotto_proto::ErrorCode::UnknownLink) => {
                        return Err(ClientError::Usage(
                            "the code expired before a device approved it (five minutes); \
                             run `sotto devices link` again"
                                .into(),
                        ));
                    }
                    Err(e) => return Err(e),
                }
                if sotto_core::Clock::now(&SystemClock) >= pending.expires_at() {
                    return Err(ClientError::Usage(
                        "the code expired before a device approved it (five minutes); \
                         run `sotto devices link` again"
                            .into(),
                    ));
                }
                tokio::time::sleep(POLL).await;
            };
            pending.finish(answer).await
        };
        let done = tokio::select! {
            done = waited => done,
            _ = tokio::signal::ctrl_c() => Err(ClientError::Usage("interrupted".into())),
        };
        match done {
            Ok((engine, linked)) => {
                let me = engine.me().clone();
                let client = Client { engine };
                Ok((
                    client,
                    LinkedView {
                        user: me.user.to_string(),
                        device: me.device.to_string(),
                        contacts: linked.contacts,
                        history: linked.history,
                        history_left_out: linked.left_out,
                    },
                ))
            }
            Err(e) => {
                home.remove();
                Err(e)
            }
        }
    }
}

impl Client {
    /// This account's devices, after a sync.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        self.engine.sync().await?;
        self.engine.devices().await
    }

    /// Removes the device `id` from this account and from every conversation.
    pub async fn remove_device(&self, id: &str) -> Result<Removed, ClientError> {
        self.engine.sync().await?;
        self.engine.remove_device(id).await
    }

    /// Approves the new device whose code is `code` (as the new device shows it): hands it
    /// the account (and the history, with `history`), publishes it in the account's device
    /// list, and adds it to every conversation.
    pub async fn approve(&self, code: &str, history: bool) -> Result<Approved, ClientError> {
        let code = LinkCode::parse(code).map_err(|e| ClientError::Usage(e.to_string()))?;
        self.engine.sync().await?;
        self.engine.approve(&code, history).await
    }
}
