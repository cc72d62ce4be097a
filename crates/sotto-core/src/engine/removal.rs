//! Removing a device from this account (`devices remove ID`, from any other device), and
//! keeping every conversation to the account's devices.
//!
//! The device leaves every conversation first, by a commit each that members see, while the
//! server still delivers to it; then the account's next device list, without it, makes the
//! server forget it. A conversation it could not be taken out of is mended at a later sync:
//! a device of this account that is not in the account's list is removed wherever it is.

use super::Engine;
use crate::events::MemberChange;
use crate::store::{ClientStore, Setting, StoreTx};
use crate::{ClientError, Transport};
use serde::Serialize;
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::{DeviceAddr, ErrorCode};

/// What [`Engine::remove_device`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The device removed.
    pub device: String,
    /// Its name.
    pub name: String,
    /// The account's device-list revision without it.
    pub revision: u64,
    /// Conversations it was removed from.
    pub conversations: usize,
    /// Conversations it could not be removed from, with why (the server no longer serves
    /// it either way: its queue, tokens and KeyPackages are gone).
    pub failed: Vec<(String, String)>,
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Removes the device `id` from this account: a commit removing it from every
    /// conversation it is in (members see it), then the account's next device list without
    /// it, which makes the server drop its KeyPackages, tokens and queue. Callers sync first.
    /// This device cannot remove itself: another one does.
    pub async fn remove_device(&self, id: &str) -> Result<Removed, ClientError> {
        let removed = self.remove_device_now(id).await;
        self.recorded(removed)
    }

    async fn remove_device_now(&self, id: &str) -> Result<Removed, ClientError> {
        let device = sotto_proto::DeviceId::parse(id).map_err(|_| {
            ClientError::Usage(format!("{id:?} is not a device id (16 hex digits)"))
        })?;
        if device == self.me().device {
            return Err(ClientError::Usage(
                "this is the device you are using: remove it from another of your devices".into(),
            ));
        }
        let (_, list) = self.own_list()?;
        let entry = list.device(device).cloned().ok_or_else(|| {
            ClientError::Usage(format!(
                "your account has no device {id} (see `sotto devices list`)"
            ))
        })?;
        let addr = sotto_proto::DeviceAddr {
            user: self.me().user.clone(),
            device,
        };
        // Out of every conversation first, while the server still delivers to it: a list
        // without it first would make every message still naming it a refused send.
        let conversations = self.active_conversations()?;
        let change = MemberChange {
            remove_devices: vec![addr.clone()],
            ..MemberChange::default()
        };
        let mut removed = 0;
        let mut failed = Vec::new();
        for gid in &conversations {
            let in_group = self.tx(|tx| {
                self.with_group(tx, gid, |_, g| {
                    Ok::<_, ClientError>(crate::group::members(g)?.iter().any(|m| m.addr == addr))
                })
            })?;
            if !in_group {
                continue;
            }
            match self.commit_change(gid, &change).await {
                Ok(_) => removed += 1,
                // One conversation that cannot be checked (a member's device its owner
                // removed, kept by the server) must not keep the device in the list, where
                // every other conversation would still take it: shown, and the list goes on.
                Err(ClientError::Security(reason)) => {
                    self.tx(|tx| self.record_security(tx, Some(gid), None, &reason))?;
                    failed.push((hex::encode(gid.as_bytes()), reason));
                }
                Err(e) => failed.push((hex::encode(gid.as_bytes()), e.to_string())),
            }
        }
        let token = self.token().await?;
        let revision = self.publish_without(&token, device).await?;
        Ok(Removed {
            device: device.to_string(),
            name: entry.name,
            revision,
            conversations: removed,
            failed,
        })
    }

    /// Publishes the account's next device list without `device`, and keeps it; retries
    /// once if another device changed the list meanwhile.
    pub(super) async fn publish_without(
        &self,
        token: &str,
        device: sotto_proto::DeviceId,
    ) -> Result<u64, ClientError> {
        for attempt in 0..2 {
            if attempt > 0 {
                self.adopt_logged_own_list().await?;
            }
            self.own_list_logged().await?;
            let (signed, list) = self.own_list()?;
            if list.device(device).is_none() {
                // Another device removed it meanwhile (and the log holds that).
                return Ok(list.revision);
            }
            let devices = list
                .devices
                .iter()
                .filter(|d| d.id != device)
                .cloned()
                .collect();
            let next = list.next(&signed, devices);
            let new = self.identity.sign_device_list(&next);
            let sent = self
                .transport
                .update_device_list(
                    token,
                    &DeviceListUpdate {
                        device_list: new.clone(),
                        key_packages: Vec::new(),
                        last_resort: None,
                    },
                )
                .await;
            match sent {
                Ok(()) => {
                    self.keep_own_list(&new)?;
                    // Removed only once the log holds the list without it: until then its
                    // owner's contacts could still add it.
                    self.own_list_logged().await?;
                    return Ok(next.revision);
                }
                Err(ClientError::Refused(b)) if b.code == ErrorCode::DeviceListChanged => continue,
                Err(e) => return Err(e),
            }
        }
        Err(super::devices::list_kept_changing())
    }

    /// Takes out of every conversation each device of this account that is not in the
    /// account's list (a removal that missed a conversation, or one another device made).
    /// Runs at the end of a sync, and only for an account whose list ever changed.
    pub(super) async fn remove_unlisted_own_devices(&self) -> Result<(), ClientError> {
        let (_, list) = self.own_list()?;
        if list.revision <= 1 {
            return Ok(());
        }
        let done = self
            .store
            .read(|tx| tx.setting(Setting::OwnDevicesMended))?
            .is_some_and(|v| v == list.revision.to_be_bytes());
        if done {
            return Ok(());
        }
        let me = &self.me().user;
        let conversations = self.active_conversations()?;
        let mut mended = true;
        for gid in &conversations {
            let stale: Vec<DeviceAddr> = self.tx(|tx| {
                self.with_group(tx, gid, |_, g| {
                    Ok::<_, ClientError>(
                        crate::group::members(g)?
                            .into_iter()
                            .map(|m| m.addr)
                            .filter(|a| &a.user == me && list.device(a.device).is_none())
                            .collect(),
                    )
                })
            })?;
            if stale.is_empty() {
                continue;
            }
            let change = MemberChange {
                remove_devices: stale,
                ..MemberChange::default()
            };
            // A conversation that cannot be mended now is tried again at the next sync; it
            // must not stop this one.
            if self.commit_change(gid, &change).await.is_err() {
                mended = false;
            }
        }
        if !mended {
            return Ok(());
        }
        let revision = list.revision.to_be_bytes();
        self.tx(|tx| Ok(tx.set_setting(Setting::OwnDevicesMended, &revision)?))
    }
}
