//! This account's devices, seen from a device it has: the list, approving a new device
//! (`devices approve CODE`), and the account's own device list as it changes.
//!
//! Approving sends the new device the account's secrets (sealed to the key in the offer the
//! code names), publishes the next signed device list, and adds the device to every
//! conversation with a commit each, which every member sees. The new device's KeyPackages
//! come in its offer: the approver adds it with some and gives the rest to the server.

use super::Engine;
use crate::events::{Event, MemberChange, NewDevice};
use crate::link::{self, Archive, ArchivedConversation, ArchivedEntry, LinkSecrets, LinkedContact};
use crate::store::{ClientStore, HistoryItem, Setting, StoreTx};
use crate::{ClientError, Transport};
use serde::Serialize;
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::device_list::{DeviceList, SignedDeviceListIn};
use sotto_proto::link::{LinkAnswer, LinkCode, LinkOffer, MAX_ARCHIVE, OfferError};
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
    /// When it last signed in to the server, seconds since the Unix epoch, as the server
    /// reports it (a device that keeps running signs in again within the hour); `None` if
    /// it never has, or the server did not say.
    pub last_seen: Option<u64>,
    /// Whether the server holds the device (it cannot sign in otherwise); `None` if the
    /// server did not answer.
    pub on_server: Option<bool>,
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
    /// Conversations it could not be added to, with why: the group kept changing, or the
    /// server could not be reached. (Adding it later is not built yet: the new device is not
    /// in these conversations.)
    pub failed: Vec<(String, String)>,
    /// History entries sent.
    pub history: usize,
    /// The oldest entries left out to keep the archive within the server's limit.
    pub left_out: u64,
}

/// Least time a code must have left for an approval to start: publishing, sealing and
/// answering happen within it.
const MIN_CODE_LIFE: u64 = 30;

/// An answer made and its device published, ready to be sent.
struct Prepared {
    answer: LinkAnswer,
    revision: u64,
    entries: usize,
    left_out: u64,
    /// Whether an earlier run had published the device already.
    resumed: bool,
}

fn parse_list(bytes: &[u8]) -> Result<SignedDeviceListIn, ClientError> {
    serde_json::from_slice(bytes).map_err(|_| ClientError::damaged("device list"))
}

/// Another device changed the account's list every time this one tried: a refusal (exit
/// code 2), to be tried again.
pub(super) fn list_kept_changing() -> ClientError {
    ClientError::Refused(sotto_proto::ErrorBody {
        code: ErrorCode::DeviceListChanged,
        message: "the account's device list kept changing; try again".into(),
        epoch: None,
    })
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
    /// it. Nothing is kept yet.
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
        Ok(Some((resp.device_list, list)))
    }

    /// Keeps `newer` (signed as `signed`), a list another device of the account made, in
    /// place of `old`, and shows each device it added or removed.
    pub(super) fn adopt_own_list(
        &self,
        old: &DeviceList,
        signed: &SignedDeviceListIn,
        newer: &DeviceList,
    ) -> Result<(), ClientError> {
        let json = serde_json::to_vec(signed).map_err(|e| ClientError::Internal(e.to_string()))?;
        let me = &self.me().user;
        self.tx(|tx| {
            tx.set_setting(Setting::DeviceList, &json)?;
            // Not this device's change: it does not watch for the log to publish it.
            tx.set_setting(Setting::KtOwnPosted, &[])?;
            let added = newer.devices.iter().filter(|d| old.device(d.id).is_none());
            for d in added {
                let event = Event::DeviceAdded {
                    by: me.clone(),
                    user: me.clone(),
                    device: d.id.to_string(),
                    name: d.name.clone(),
                };
                let id = format!("local-{}", super::random_client_id());
                self.record_notice(tx, id, None, HistoryItem::Event(event))?;
            }
            let removed = old.devices.iter().filter(|d| newer.device(d.id).is_none());
            for d in removed {
                let event = Event::DeviceRemoved {
                    by: me.clone(),
                    user: me.clone(),
                    device: d.id.to_string(),
                };
                let id = format!("local-{}", super::random_client_id());
                self.record_notice(tx, id, None, HistoryItem::Event(event))?;
            }
            Ok(())
        })?;
        self.forget_lists();
        Ok(())
    }

    /// The conversations this device is a member of.
    pub(super) fn active_conversations(&self) -> Result<Vec<GroupId>, ClientError> {
        Ok(self
            .store
            .read(|tx| tx.conversations())?
            .into_iter()
            .filter(|c| c.active)
            .map(|c| c.group)
            .collect())
    }

    /// This account's devices as of the last sync (its signed list, never the server's
    /// word), with when the server last saw each, if it says (it is a hint: the list does
    /// not wait for it).
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let (_, list) = self.own_list()?;
        let token = self.token().await?;
        let seen = match self.transport.devices_seen(&token).await {
            Ok(seen) => Some(seen.devices),
            Err(ClientError::Unreachable(_) | ClientError::Refused(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(list
            .devices
            .iter()
            .map(|d| {
                let held = seen
                    .as_ref()
                    .map(|seen| seen.iter().find(|s| s.device == d.id));
                DeviceInfo {
                    id: d.id.to_string(),
                    name: d.name.clone(),
                    added_at: d.added_at,
                    last_seen: held.flatten().and_then(|s| s.last_seen),
                    on_server: held.map(|s| s.is_some()),
                    this: d.id == self.me().device,
                }
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
        let (offer, bytes) =
            code.open_offer(offered.offer.as_slice()).map_err(|e| {
                match e {
            OfferError::NotTheCodes => ClientError::Security(
                "the offer waiting under this code was not made by the device showing the code \
                 (its MAC does not verify): the server replaced it; refusing it"
                    .into(),
            ),
            OfferError::Malformed(e) => {
                ClientError::Usage(format!("the new device's offer: {e}"))
            }
        }
            })?;
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
        if offered.expires_at < self.now().saturating_add(MIN_CODE_LIFE) {
            return Err(ClientError::Usage(
                "this code is about to expire; run `sotto devices link` again on the new device"
                    .into(),
            ));
        }
        let addr = offer.addr();
        let conversations = self.active_conversations()?;
        // One one-time KeyPackage per conversation while they last, then the last-resort one;
        // the server gets the rest.
        let kept = conversations.len().min(offer.key_packages.len());
        let for_groups: Vec<_> = offer.key_packages.get(..kept).unwrap_or_default().to_vec();
        let for_server: Vec<_> = offer.key_packages.get(kept..).unwrap_or_default().to_vec();
        let prepared = self
            .publish_with(&token, code, &offer, &bytes, for_server, history)
            .await?;
        match self
            .transport
            .answer_link(&token, &code.id, &prepared.answer)
            .await
        {
            Ok(()) => {}
            // An earlier run of this approval published the list and answered, then lost the
            // server's reply: the new device has its answer (or the code expired).
            Err(ClientError::Refused(b))
                if prepared.resumed && b.code == ErrorCode::UnknownLink => {}
            Err(e) => return Err(e),
        }
        let (revision, entries, left_out) =
            (prepared.revision, prepared.entries, prepared.left_out);
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

    /// Makes the answer to `offer` (its exact bytes `bytes`), then publishes the account's
    /// next device list with the offer's device in it and keeps it. Everything that could
    /// fail (the answer's size included) is done before the list is published; an approval
    /// of the same offer that stopped after publishing is resumed, not refused. Retries once
    /// if another device changed the list meanwhile.
    async fn publish_with(
        &self,
        token: &str,
        code: &LinkCode,
        offer: &LinkOffer,
        bytes: &[u8],
        one_time: Vec<sotto_proto::Bytes>,
        history: bool,
    ) -> Result<Prepared, ClientError> {
        for attempt in 0..2 {
            if attempt > 0 {
                self.adopt_logged_own_list().await?;
            }
            self.own_list_logged().await?;
            let (signed, list) = self.own_list()?;
            let (new, next) = match list.device(offer.device.id) {
                Some(d) if d.signature_key == offer.device.signature_key => (signed, None),
                Some(_) => {
                    return Err(ClientError::Usage(
                        "another device with this device's id is in the account's list".into(),
                    ));
                }
                None => {
                    let mut entry = offer.device.clone();
                    entry.added_at = self.now();
                    let mut devices = list.devices.clone();
                    devices.push(entry);
                    let next = list.next(&signed, devices);
                    (self.identity.sign_device_list(&next), Some(next))
                }
            };
            let (secrets, archive, entries) = self.secrets_for(new.clone(), history)?;
            let left_out = secrets.archive.as_ref().map_or(0, |a| a.left_out);
            let answer = link::answer(code, bytes, offer.hpke_key.as_slice(), &secrets, archive)?;
            drop(secrets);
            let answer = answer.validate().map_err(|e| {
                ClientError::Usage(format!(
                    "the answer is larger than the server takes ({e}); approve with \
                     --no-history"
                ))
            })?;
            let Some(next) = next else {
                return Ok(Prepared {
                    answer,
                    revision: list.revision,
                    entries,
                    left_out,
                    resumed: true,
                });
            };
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
                    self.keep_own_list(&new)?;
                    // The new device trusts the list only once the log holds it.
                    self.own_list_logged().await?;
                    return Ok(Prepared {
                        answer,
                        revision: next.revision,
                        entries,
                        left_out,
                        resumed: false,
                    });
                }
                Err(ClientError::Refused(b)) if b.code == ErrorCode::TooManyDevices => {
                    return Err(ClientError::Usage(b.message));
                }
                Err(ClientError::Refused(b)) if b.code == ErrorCode::DeviceListChanged => continue,
                Err(e) => return Err(e),
            }
        }
        Err(list_kept_changing())
    }

    /// Takes the account's newer list from the server, once the log holds it (another device
    /// changed the list).
    pub(super) async fn adopt_logged_own_list(&self) -> Result<(), ClientError> {
        let (_, old) = self.own_list()?;
        if let Some((signed, newer)) = self.newer_own_list().await? {
            self.check_in_log(&self.me().user, &signed).await?;
            self.adopt_own_list(&old, &signed, &newer)?;
        }
        Ok(())
    }

    /// Keeps `signed`, a list this device just published, as its account's list, with the
    /// log's epoch then (the log may lag behind it for a few epochs only).
    pub(super) fn keep_own_list(&self, signed: &SignedDeviceListIn) -> Result<(), ClientError> {
        let json = serde_json::to_vec(signed).map_err(|e| ClientError::Internal(e.to_string()))?;
        let epoch = self.log_head()?.unwrap_or(0);
        let posted = [epoch.to_be_bytes(), self.now().to_be_bytes()].concat();
        self.tx(|tx| {
            tx.set_setting(Setting::DeviceList, &json)?;
            Ok(tx.set_setting(Setting::KtOwnPosted, &posted)?)
        })?;
        self.forget_lists();
        Ok(())
    }

    /// Waits (a bounded time) until the log holds the account's list this device holds: the
    /// server takes the next change only then, and a change is done only once the log holds
    /// it.
    pub(super) async fn own_list_logged(&self) -> Result<(), ClientError> {
        let (signed, _) = self.own_list()?;
        self.check_in_log(&self.me().user, &signed).await.map(drop)
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
        let (kt_vrf_key, kt_head, kt_checkpoint_key, kt_witnesses) = self.store.read(|tx| {
            Ok::<_, ClientError>((
                tx.setting(Setting::KtVrfKey)?
                    .ok_or_else(|| ClientError::damaged("key-transparency key"))?,
                tx.setting(Setting::KtHead)?,
                tx.setting(Setting::KtCheckpointKey)?,
                tx.setting(Setting::KtWitnesses)?,
            ))
        })?;
        let kt_checkpoint_key = kt_checkpoint_key
            .map(String::from_utf8)
            .transpose()
            .map_err(|_| ClientError::damaged("checkpoint key"))?;
        Ok((
            LinkSecrets {
                identity_secret: self.identity.secret().to_vec().into(),
                device_list: signed,
                contacts,
                archive: key,
                kt_vrf_key: kt_vrf_key.into(),
                kt_head: kt_head.map(Into::into),
                kt_checkpoint_key,
                kt_witnesses: kt_witnesses.map(Into::into),
            },
            ct,
            entries,
        ))
    }
}
