//! Contacts' identity keys and signed device lists: fetched, verified, checked against the
//! key-transparency log, pinned on first contact, and checked against every device a group
//! introduces (the ghost-device check).
//!
//! Only a verified mismatch is a security failure. A list that could not be fetched (the
//! network, a server error) decides nothing: the message that needed it waits in the queue.

use super::sync::ApplyError;
use super::{Engine, lock};
use crate::group::{self, MemberDevice};
use crate::store::{ClientStore, HistoryItem, StoreTx};
use crate::{ClientError, Transport, safety};
use sha2::{Digest as _, Sha256};
use sotto_proto::device_list::{DeviceList, parse_verifying_key};
use sotto_proto::{ErrorCode, GroupId, Username};
use std::sync::atomic::Ordering;

/// What a fetch does with a contact's identity key that is not the one pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnNewKey {
    /// Refuses it (a security failure).
    Refuse,
    /// Pins it in place of the old one: the user accepted it.
    Accept,
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Forgets the lists fetched so far: they change when devices are added.
    pub(super) fn forget_lists(&self) {
        lock(&self.lists).clear();
        self.head_fresh.store(false, Ordering::Relaxed);
    }

    /// Fetches `user`'s identity key and device list, checks them (see
    /// [`Engine::fetch_checked`]) and keeps the list for the rest of this sync. Errors:
    /// `Security` for a verified mismatch, `Usage` when the server says there is no such
    /// user, anything else when nothing was learned.
    pub(super) async fn fetch_device_list(
        &self,
        user: &Username,
    ) -> Result<DeviceList, ClientError> {
        if let Some(known) = lock(&self.lists).get(user).cloned() {
            return known.map_err(ClientError::Security);
        }
        let (list, _) = self.fetch_checked(user, OnNewKey::Refuse).await?;
        lock(&self.lists).insert(user.clone(), Ok(list.clone()));
        Ok(list)
    }

    /// Fetches `user`'s identity key and device list, verifies the list with the key,
    /// checks it against the key-transparency log, and pins the key on first contact. A key
    /// other than the one pinned is refused, or with [`OnNewKey::Accept`] pinned in its
    /// place once its list has passed every check. Returns the list and the key.
    pub(super) async fn fetch_checked(
        &self,
        user: &Username,
        on_new_key: OnNewKey,
    ) -> Result<(DeviceList, [u8; 32]), ClientError> {
        let token = self.token().await?;
        let resp = self
            .transport
            .user(&token, user)
            .await
            .map_err(|e| match e.code() {
                Some(ErrorCode::UnknownUser) => ClientError::Usage(format!("no such user: {user}")),
                _ => e,
            })?;
        let key = parse_verifying_key(resp.identity_key.as_slice())
            .map_err(|_| ClientError::Security(format!("{user} has a malformed identity key")))?;
        let me = *user == self.me().user;
        let pinned = if me {
            Some(self.identity.public().to_vec())
        } else {
            self.store
                .read(|tx| tx.contact(user))?
                .map(|c| c.identity_key)
        };
        let changed = pinned
            .as_ref()
            .is_some_and(|k| k.as_slice() != resp.identity_key.as_slice());
        if changed && me {
            return Err(ClientError::Security(
                "the server holds another identity key for your own account".into(),
            ));
        }
        if !changed && on_new_key == OnNewKey::Accept {
            return Err(ClientError::Usage(format!(
                "nothing to accept: the identity key of {user} has not changed"
            )));
        }
        let verified = resp.device_list.verify(&key).map_err(|e| {
            ClientError::Security(format!("the device list of {user} does not verify: {e}"))
        })?;
        if verified.list().user != *user {
            return Err(ClientError::Security(format!(
                "the server returned another account's device list for {user}"
            )));
        }
        // Signed by the key the server gave is not enough: the list must be the one the
        // key-transparency log holds for this user, which the user's own devices monitor.
        let epoch = if changed {
            self.check_new_key_in_log(user, verified.signed()).await?
        } else {
            self.check_in_log(user, verified.signed()).await?
        };
        // A new key the log does not hold was refused above as the server's lie; one it
        // holds is a key change that the contact's own devices see too.
        if changed && on_new_key == OnNewKey::Refuse {
            let new = safety::safety_number(
                (&self.me().user, &self.identity.public()),
                (user, &key.to_bytes()),
            );
            let reason = format!(
                "the identity key of {user} changed; refusing to trust it. If {user} says so \
                 (a new phone), compare your new safety number with them: {}, then accept it \
                 with `sotto verify {user} --accept`",
                safety::grouped(&new)
            );
            self.tx(|tx| self.record_key_change(tx, user, &key.to_bytes(), &reason))?;
            return Err(ClientError::Security(reason));
        }
        // Pinned only once the list it signs has passed every check.
        let at = self.now();
        let new = resp.identity_key.as_slice();
        self.tx(|tx| {
            if !me && changed {
                tx.replace_identity(user, new, at)?;
            } else if !me && pinned.is_none() {
                tx.pin_identity(user, new, at)?;
            }
            tx.set_logged_list(user, epoch, verified.signed().body.as_slice())?;
            Ok(())
        })?;
        Ok((verified.list().clone(), key.to_bytes()))
    }

    /// Shows that `user`'s identity key changed to `new` in every conversation this device
    /// has with them (or, with none, outside any), once per conversation and new key: the
    /// entry's id names both, so seeing the change again adds nothing.
    fn record_key_change(
        &self,
        tx: &impl StoreTx,
        user: &Username,
        new: &[u8; 32],
        reason: &str,
    ) -> Result<(), ClientError> {
        let key = hex::encode(Sha256::digest(new).get(..8).unwrap_or_default());
        let mut with_them = Vec::new();
        for c in tx.conversations()? {
            if !c.active {
                continue;
            }
            let member = c.peer.as_ref() == Some(user)
                || group::members(&group::load(&tx.mls(), c.group.as_bytes())?)?
                    .iter()
                    .any(|d| d.addr.user == *user);
            if member {
                with_them.push(c.group);
            }
        }
        let item = HistoryItem::Security {
            from: Some(user.clone()),
            reason: reason.to_owned(),
        };
        if with_them.is_empty() {
            let id = format!("key-change-{user}-{key}");
            return self.record_notice(tx, id, None, item);
        }
        for group in with_them {
            let id = format!("key-change-{user}-{key}-{}", hex::encode(group.as_bytes()));
            self.record_notice(tx, id, Some(&group), item.clone())?;
        }
        Ok(())
    }

    /// Takes the lists of `members`' owners that this device proved the log to hold at the
    /// newest epoch it has seen (kept from an earlier sync or process), once a proof since
    /// the lists were last forgotten (this device's own, at every sync) showed that epoch to
    /// be the log's newest: those are current, with no lookup. On a quiet server, where
    /// epochs come only when accounts change, most sends need none.
    fn recall_current_lists(&self, members: &[MemberDevice]) -> Result<(), ClientError> {
        if !self.head_fresh.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(head) = self.log_head()? else {
            return Ok(());
        };
        let mut users: Vec<&Username> = members.iter().map(|m| &m.addr.user).collect();
        users.sort();
        users.dedup();
        let kept = self.store.read(|tx| {
            let mut kept = Vec::new();
            for user in users {
                if lock(&self.lists).contains_key(user) {
                    continue;
                }
                if let Some((epoch, body)) = tx.logged_list(user)?
                    && epoch == head
                {
                    let list: DeviceList = serde_json::from_slice(&body)
                        .map_err(|_| ClientError::damaged("a kept device list"))?;
                    kept.push((user.clone(), list));
                }
            }
            Ok::<_, ClientError>(kept)
        })?;
        let mut lists = lock(&self.lists);
        for (user, list) in kept {
            lists.entry(user).or_insert(Ok(list));
        }
        Ok(())
    }

    /// Records that `user`'s devices cannot be verified, and why: the ghost-device check then
    /// refuses them with that reason for the rest of this sync.
    pub(super) fn list_unverifiable(&self, user: &Username, reason: String) {
        lock(&self.lists).insert(user.clone(), Err(reason));
    }

    /// Checks every device against its owner's signed device list (the ghost-device check).
    pub(super) fn verify_members(&self, devices: &[MemberDevice]) -> Result<(), ApplyError> {
        let lists = lock(&self.lists);
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
            let list = match lists.get(&d.addr.user) {
                Some(Ok(list)) => list,
                Some(Err(reason)) => {
                    return Err(ClientError::Security(format!(
                        "cannot verify the devices of {}: {reason}",
                        d.addr.user
                    ))
                    .into());
                }
                None => return Err(ApplyError::NeedLists(vec![d.addr.user.clone()])),
            };
            let listed = list
                .device(d.addr.device)
                .is_some_and(|e| e.signature_key.as_slice() == d.signature_key);
            if !listed {
                return Err(ClientError::Security(format!(
                    "device {} is not in the signed device list of {}; refusing it",
                    d.addr.device, d.addr.user
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Checks every device of `gid` that `stays` against its owner's device list as the log
    /// holds it (fetched once per sync), before this device encrypts anything to them: a
    /// device its owner removed, which the group still holds, is refused, and nothing is
    /// sent. (A device a commit removes gets nothing of it.)
    pub(super) async fn verify_recipients(
        &self,
        gid: &GroupId,
        stays: impl Fn(&MemberDevice) -> bool,
    ) -> Result<(), ClientError> {
        let mut members =
            self.tx(|tx| self.with_active_group(tx, gid, |_, g| Ok(group::members(g)?)))?;
        members.retain(|m| stays(m));
        self.recall_current_lists(&members)?;
        loop {
            match self.verify_members(&members) {
                Ok(()) => return Ok(()),
                Err(ApplyError::NeedLists(users)) => {
                    for user in users {
                        self.fetch_device_list(&user).await?;
                    }
                }
                Err(ApplyError::Failed(e)) => return Err(e),
            }
        }
    }
}
