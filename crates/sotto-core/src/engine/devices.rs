//! This account's devices, seen from a device it has: the list, approving a new device
//! (`devices approve CODE`), and the account's own device list as it changes.
//!
//! Approving sends the new device the account's secrets (sealed to the key in the offer the
//! code names), publishes the next signed device list, and adds the device to every
//! conversation with a commit each, which every member sees. The new device's KeyPackages
//! come in its offer: the approver adds it with some and gives the rest to the server.

use super::Engine;
use crate::events::{MemberChange, NewDevice};
use crate::link::{self, Archive, ArchivedConversation, ArchivedEntry, LinkSecrets, LinkedContact};
use crate::store::{ClientStore, Setting, StoreTx};
use crate::{ClientError, Transport};
use serde::Serialize;
use sotto_proto::device_list::{DeviceList, SignedDeviceListIn};
use sotto_proto::link::{DeviceListUpdate, LinkAnswer, LinkCode, LinkOffer, MAX_ARCHIVE};
use sotto_proto::{ErrorCode, GroupId};

/// A device of this account, as `devices list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was added, seconds since the Unix epoch.
    pub added_at: u64,
    /// Whether it is the device asking.
    pub this: bool,
}

/// What [`Engine::approve`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approved {
    /// The device linked.
    pub device: String,
    /// Its name.
    pub name: String,
    /// The account's device-list revision that added it.
    pub revision: u64,
    /// Conversations it was added to.
    pub conversations: usize,
    /// Conversations it could not be added to yet, with why (it is added by the next
    /// change, or by removing and re-adding it).
    pub failed: Vec<(String, String)>,
    /// History entries sent.
    pub history: usize,
    /// The oldest entries left out to keep the archive within the server's limit.
    pub left_out: u64,
}

fn parse_list(bytes: &[u8]) -> Result<SignedDeviceListIn, ClientError> {
    serde_json::from_slice(bytes).map_err(|_| ClientError::damaged("device list"))
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// The signed device list this device holds for its account, verified.
    pub(super) fn own_list(&self) -> Result<(SignedDeviceListIn, DeviceList), ClientError> {
        let bytes = self
            .store
            .read(|tx| tx.setting(Setting::DeviceList))?
            .ok_or_else(|| ClientError::damaged("device list"))?;
        let signed = parse_list(&bytes)?;
        let list = self.verify_own(&signed)?;
        Ok((signed, list))
    }

    /// Verifies a device list of this account with its identity key.
    fn verify_own(&self, signed: &SignedDeviceListIn) -> Result<DeviceList, ClientError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.identity.public())
            .map_err(|_| ClientError::damaged("identity key"))?;
        let list = signed
            .clone()
            .verify(&key)
            .map_err(|_| ClientError::damaged("device list"))?;
        if list.list().user != self.me().user {
            return Err(ClientError::damaged("device list"));
        }
        Ok(list.list().clone())
    }

    /// The account's list as the server holds it, if this account's identity key signed it
    /// and it is newer than the one this device holds: another device of the account changed
    /// it. It is then kept as this device's.
    pub(super) async fn newer_own_list(
        &self,
    ) -> Result<Option<(SignedDeviceListIn, DeviceList)>, ClientError> {
        let (_, mine) = self.own_list()?;
        let token = self.token().await?;
        let resp = self.transport.user(&token, &self.me().user).await?;
        if resp.identity_key.as_slice() != self.identity.public() {
            return Ok(None);
        }
        let Ok(list) = self.verify_own(&resp.device_list) else {
            return Ok(None);
        };
        if list.revision <= mine.revision {
            return Ok(None);
        }
        let json = serde_json::to_vec(&resp.device_list)
            .map_err(|e| ClientError::Internal(e.to_string()))?;
        self.tx(|tx| Ok(tx.set_setting(Setting::DeviceList, &json)?))?;
        self.forget_lists();
        Ok(Some((resp.device_list, list)))
    }

    /// This account's devices, as of the last sync.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let (_, list) = self.own_list()?;
        Ok(list
            .devices
            .iter()
            .map(|d| DeviceInfo {
                id: d.id.to_string(),
                name: d.name.clone(),
                added_at: d.added_at,
                this: d.id == self.me().device,
            })
            .collect())
    }

    /// Approves the new device whose code is `code`: hands it the account's secrets (and the
    /// history, with `history`), publishes the device list with it, and adds it to every
    /// conversation. Callers sync first. A security failure is kept as a security event.
    pub async fn approve(&self, code: &LinkCode, history: bool) -> Result<Approved, ClientError> {
        let approved = self.approve_now(code, history).await;
        self.recorded(approved)
    }

    async fn approve_now(&self, code: &LinkCode, history: bool) -> Result<Approved, ClientError> {
        let token = self.token().await?;
        let offered = self
            .transport
            .link_offer(&token, &code.id)
            .await
            .map_err(|e| match e {
                ClientError::Refused(b) if b.code == ErrorCode::UnknownLink => {
                    ClientError::Usage(format!("{} (check the code on the new device)", b.message))
                }
                other => other,
            })?;
        let bytes = offered.offer.as_slice();
        if !code.matches(bytes) {
            return Err(ClientError::Security(
                "the server answered the code with an offer the new device did not make \
                 (its fingerprint differs): refusing it"
                    .into(),
            ));
        }
        let offer = LinkOffer::parse(bytes)
            .map_err(|e| ClientError::Usage(format!("the new device's offer: {e}")))?;
        if offer.user != self.me().user {
            return Err(ClientError::Usage(format!(
                "this code asks to join the account {}, not yours",
                offer.user
            )));
        }
        if offer.ciphersuite != self.suite_code {
            return Err(ClientError::Usage(format!(
                "the new device uses MLS ciphersuite {:#06x}; this account uses {:#06x}",
                offer.ciphersuite, self.suite_code
            )));
        }
        let addr = offer.addr();
        let conversations: Vec<GroupId> = self
            .store
            .read(|tx| tx.conversations())?
            .into_iter()
            .filter(|c| c.active)
            .map(|c| c.group)
            .collect();
        // One one-time KeyPackage per conversation while they last, then the last-resort one;
        // the server gets the rest.
        let kept = conversations.len().min(offer.key_packages.len());
        let for_groups: Vec<_> = offer.key_packages.get(..kept).unwrap_or_default().to_vec();
        let for_server: Vec<_> = offer.key_packages.get(kept..).unwrap_or_default().to_vec();
        let (signed, revision) = self.publish_with(&token, &offer, for_server).await?;
        let secrets = self.secrets_for(signed, history)?;
        let (secrets, archive, entries) = secrets;
        let left_out = secrets.archive.as_ref().map_or(0, |a| a.left_out);
        let sealed = link::seal(bytes, offer.hpke_key.as_slice(), &secrets)?;
        drop(secrets);
        self.transport
            .answer_link(
                &token,
                &code.id,
                &LinkAnswer {
                    sealed: sealed.into(),
                    archive: archive.into(),
                },
            )
            .await?;
        let mut added = 0;
        let mut failed = Vec::new();
        for (i, gid) in conversations.iter().enumerate() {
            let key_package = for_groups
                .get(i)
                .cloned()
                .unwrap_or_else(|| offer.last_resort.clone());
            let change = MemberChange {
                add_devices: vec![NewDevice {
                    addr: addr.clone(),
                    key_package,
                }],
                ..MemberChange::default()
            };
            match self.commit_change(gid, &change).await {
                Ok(_) => added += 1,
                Err(e @ ClientError::Security(_)) => return Err(e),
                Err(e) => failed.push((hex::encode(gid.as_bytes()), e.to_string())),
            }
        }
        Ok(Approved {
            device: addr.device.to_string(),
            name: offer.device.name,
            revision,
            conversations: added,
            failed,
            history: entries,
            left_out,
        })
    }

    /// Publishes the account's next device list, with the offer's device in it, and keeps
    /// it; retries once if another device changed the list meanwhile.
    async fn publish_with(
        &self,
        token: &str,
        offer: &LinkOffer,
        one_time: Vec<sotto_proto::Bytes>,
    ) -> Result<(SignedDeviceListIn, u64), ClientError> {
        for attempt in 0..2 {
            if attempt > 0 {
                self.newer_own_list().await?;
            }
            let (signed, list) = self.own_list()?;
            if list.device(offer.device.id).is_some() {
                return Err(ClientError::Usage(
                    "this device is in the account's list already".into(),
                ));
            }
            let mut entry = offer.device.clone();
            entry.added_at = self.now();
            let mut devices = list.devices.clone();
            devices.push(entry);
            let next = list.next(&signed, devices);
            let new = self.identity.sign_device_list(&next);
            let sent = self
                .transport
                .update_device_list(
                    token,
                    &DeviceListUpdate {
                        device_list: new.clone(),
                        key_packages: one_time.clone(),
                        last_resort: Some(offer.last_resort.clone()),
                    },
                )
                .await;
            match sent {
                Ok(()) => {
                    let json = serde_json::to_vec(&new)
                        .map_err(|e| ClientError::Internal(e.to_string()))?;
                    self.tx(|tx| Ok(tx.set_setting(Setting::DeviceList, &json)?))?;
                    self.forget_lists();
                    return Ok((new, next.revision));
                }
                Err(ClientError::Refused(b)) if b.code == ErrorCode::TooManyDevices => {
                    return Err(ClientError::Usage(b.message));
                }
                Err(ClientError::Refused(b)) if b.code == ErrorCode::DeviceListChanged => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Refused(sotto_proto::ErrorBody {
            code: ErrorCode::DeviceListChanged,
            message: "the account's device list kept changing; try again".into(),
            epoch: None,
        }))
    }

    /// The secrets a new device gets with the list `signed`, and the history archive (empty
    /// without `history`) with the number of its entries.
    fn secrets_for(
        &self,
        signed: SignedDeviceListIn,
        history: bool,
    ) -> Result<(LinkSecrets, Vec<u8>, usize), ClientError> {
        let (contacts, archive) = self.store.read(|tx| {
            let contacts = tx
                .contacts()?
                .into_iter()
                .map(|(user, c)| LinkedContact {
                    user,
                    identity_key: c.identity_key.into(),
                    verified: c.verified,
                })
                .collect::<Vec<_>>();
            let archive = if history {
                Some(Archive {
                    conversations: tx
                        .conversations()?
                        .into_iter()
                        .map(|c| ArchivedConversation {
                            group: c.group,
                            name: c.name,
                            peer: c.peer,
                            created_at: c.created_at,
                        })
                        .collect(),
                    entries: tx.history()?.iter().filter_map(ArchivedEntry::of).collect(),
                })
            } else {
                None
            };
            Ok::<_, ClientError>((contacts, archive))
        })?;
        let (ct, key, entries) = match archive {
            Some(archive) => {
                let total = archive.entries.len();
                let (ct, key) = link::encrypt_archive(archive, MAX_ARCHIVE)?;
                let sent = total.saturating_sub(usize::try_from(key.left_out).unwrap_or(total));
                (ct, Some(key), sent)
            }
            None => (Vec::new(), None, 0),
        };
        Ok((
            LinkSecrets {
                identity_secret: self.identity.secret().to_vec().into(),
                device_list: signed,
                contacts,
                archive: key,
            },
            ct,
            entries,
        ))
    }
}
