//! Conversations: one-to-one and named groups, their members, and membership changes.

use super::{Engine, MAX_ATTEMPTS, kept_changing, random_client_id};
use crate::events::{Event, MemberChange, NewDevice};
use crate::group;
use crate::store::{ClientStore, ConversationRecord, OutboxRecord, Outgoing, StoreTx};
use crate::{ClientError, Content, CoreError, Transport};
use sotto_proto::api::{SendRequest, SendResponse, WelcomeOut};
use sotto_proto::{DeviceAddr, ErrorCode, GroupId, Username};
use std::collections::{BTreeMap, BTreeSet};

/// A conversation as a list shows it.
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

fn text_content(text: &str) -> Result<Content, ClientError> {
    Content::Text {
        body: text.to_owned(),
    }
    .check()
    .map_err(|e| ClientError::Usage(e.to_string()))
}

fn parse_users(users: &[String]) -> Result<Vec<Username>, ClientError> {
    users
        .iter()
        .map(|u| Username::parse(u).map_err(|e| ClientError::Usage(format!("{u:?}: {e}"))))
        .collect()
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Adds `add` and removes `remove` (users, with all their devices) in one commit,
    /// retrying on concurrent commits. Returns the events it caused.
    pub(super) async fn change_members(
        &self,
        gid: &GroupId,
        add: &[Username],
        remove: &[Username],
    ) -> Result<Vec<Event>, ClientError> {
        self.commit_change(
            gid,
            &MemberChange {
                add: add.to_vec(),
                remove: remove.to_vec(),
                ..MemberChange::default()
            },
        )
        .await
    }

    /// Makes `change` in one commit, retrying on concurrent commits. A device to add on its
    /// own must be in its owner's signed device list, as the key-transparency log holds it.
    /// Returns the events it caused.
    pub(super) async fn commit_change(
        &self,
        gid: &GroupId,
        change: &MemberChange,
    ) -> Result<Vec<Event>, ClientError> {
        let (add, remove) = (&change.add[..], &change.remove[..]);
        for attempt in 0..MAX_ATTEMPTS {
            // Callers sync first; a retry must first process the commit that won the race.
            if attempt > 0 {
                self.pull().await?;
            }
            // Path secrets go to every leaf that stays: each must still be in its owner's
            // list.
            self.verify_recipients(gid, |m| {
                !remove.contains(&m.addr.user) && !change.remove_devices.contains(&m.addr)
            })
            .await?;
            let members =
                self.tx(|tx| self.with_active_group(tx, gid, |_, g| Ok(group::members(g)?)))?;
            let is_member = |u: &Username| members.iter().any(|m| &m.addr.user == u);
            let to_add: Vec<&Username> = add.iter().filter(|u| !is_member(u)).collect();
            let to_remove: Vec<DeviceAddr> = members
                .iter()
                .filter(|m| {
                    remove.contains(&m.addr.user) || change.remove_devices.contains(&m.addr)
                })
                .map(|m| m.addr.clone())
                .collect();
            let devices: Vec<&NewDevice> = change
                .add_devices
                .iter()
                .filter(|d| !members.iter().any(|m| m.addr == d.addr))
                .collect();
            if to_add.is_empty() && to_remove.is_empty() && devices.is_empty() && !change.heal {
                return Ok(Vec::new());
            }
            let mut claimed = Vec::new();
            for d in &devices {
                let list = self.fetch_device_list(&d.addr.user).await?;
                let entry = list.device(d.addr.device).ok_or_else(|| {
                    ClientError::Security(format!(
                        "device {} is not in the signed device list of {}; refusing it",
                        d.addr.device, d.addr.user
                    ))
                })?;
                claimed.push((
                    d.addr.clone(),
                    d.key_package.clone(),
                    entry.signature_key.clone(),
                ));
            }
            for user in &to_add {
                let list = self.fetch_device_list(user).await?;
                let token = self.token().await?;
                let offered =
                    self.transport
                        .claim(&token, user)
                        .await
                        .map_err(|e| match e.code() {
                            Some(ErrorCode::UnknownUser) => {
                                ClientError::Usage(format!("no such user: {user}"))
                            }
                            _ => e,
                        })?;
                for c in offered.key_packages {
                    let addr = DeviceAddr {
                        user: (*user).clone(),
                        device: c.device,
                    };
                    let entry = list.device(c.device).ok_or_else(|| {
                        ClientError::Security(format!("the server offered device {addr}, which is not in {user}'s signed device list"))
                    })?;
                    claimed.push((addr, c.key_package, entry.signature_key.clone()));
                }
            }
            let sent_at = self.now();
            let req = self.tx(|tx| {
                let mut key_packages = Vec::with_capacity(claimed.len());
                for (addr, kp, key) in &claimed {
                    let checked = group::verify_key_package(
                        &tx.mls(),
                        kp.as_slice(),
                        addr,
                        key.as_slice(),
                        self.suite,
                    );
                    // The server handed it out: a KeyPackage that is not what it must be is
                    // the server's doing, not this device's.
                    key_packages.push(checked.map_err(|e| match e {
                        CoreError::Security(reason) => ClientError::Security(reason),
                        other => ClientError::Security(format!(
                            "the server offered an invalid KeyPackage for {addr}: {other}"
                        )),
                    })?);
                }
                // The devices before the commit, every one of which must process it, named
                // unless there are more than a message may name: the next honest commit then
                // reaches the devices a false roster left out, and mends it.
                let made = self.with_active_group(tx, gid, |p, g| {
                    // Another process of this device may have moved the group on since the
                    // members were read: the roster would be theirs, not the group's.
                    if group::members(g)? != members {
                        return Ok(None);
                    }
                    let addressing = self.addressing(g, sotto_proto::limits::MAX_RECIPIENTS)?;
                    let out = if !key_packages.is_empty() {
                        group::add(p, &self.device, g, &key_packages, sent_at)?
                    } else if !to_remove.is_empty() {
                        group::remove(p, &self.device, g, &to_remove, sent_at)?
                    } else {
                        group::update(p, &self.device, g, sent_at)?
                    };
                    Ok(Some((addressing, out)))
                })?;
                let Some(((mut recipients, to_roster), out)) = made else {
                    return Ok(None);
                };
                // A device removed from its account may be gone from the server already: it
                // is not sent the commit that removes it.
                recipients.retain(|a| !change.remove_devices.contains(a));
                let new_devices: Vec<DeviceAddr> =
                    claimed.iter().map(|(a, ..)| a.clone()).collect();
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
                    to_roster,
                    roster: Some(roster),
                    welcome: out.welcome.map(|w| WelcomeOut {
                        message: w.into(),
                        recipients: new_devices,
                    }),
                };
                tx.put_outbox(&OutboxRecord {
                    client_id: req.client_id.clone(),
                    group: gid.clone(),
                    request: req.clone(),
                    outgoing: Outgoing::Commit(change.clone()),
                    created_at: sent_at,
                    counter: None,
                })?;
                Ok(Some(req))
            })?;
            let Some(req) = req else {
                continue;
            };
            match self.post(gid, &req).await {
                Ok(resp) => {
                    let mut events =
                        self.tx(|tx| self.finish_commit(tx, gid, &req.client_id, &resp))?;
                    if !to_add.is_empty() || !devices.is_empty() {
                        self.send_group_info(gid).await?;
                    }
                    if !remove.is_empty() && to_remove.is_empty() {
                        events.push(Event::NobodyToRemove);
                    }
                    return Ok(events);
                }
                // The server may have taken it: the outbox keeps it, the next sync replays it.
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    self.abandon_commit(gid, &req.client_id)?;
                    if e.code() != Some(ErrorCode::EpochConflict) {
                        return Err(e);
                    }
                }
            }
        }
        Err(kept_changing())
    }

    /// Sends the conversation's description (its name, or none for a one-to-one
    /// conversation), as after every commit that adds members.
    pub(super) async fn send_group_info(&self, gid: &GroupId) -> Result<(), ClientError> {
        let name = self
            .store
            .read(|tx| tx.conversation(gid))?
            .and_then(|c| c.name);
        self.send_content(gid, &Content::GroupInfo { name }, self.now(), None)
            .await
            .map(drop)
    }

    fn create_local_group(
        &self,
        name: Option<&str>,
        peer: Option<&Username>,
    ) -> Result<GroupId, ClientError> {
        let created_at = self.now();
        self.tx(|tx| {
            let g = group::create(&tx.mls(), &self.device, self.suite)?;
            let gid = GroupId::from_bytes(g.group_id().as_slice())?;
            tx.upsert_conversation(&ConversationRecord {
                group: gid.clone(),
                name: name.map(str::to_owned),
                peer: peer.cloned(),
                announced: true,
                active: true,
                created_at,
            })?;
            Ok(gid)
        })
    }

    pub(super) fn direct_conversation(
        &self,
        peer: &Username,
    ) -> Result<Option<GroupId>, ClientError> {
        let all = self.store.read(|tx| tx.conversations())?;
        // The newest, if a first attempt left an older one behind.
        Ok(all
            .into_iter()
            .rev()
            .find(|c| c.peer.as_ref() == Some(peer) && c.name.is_none() && c.active)
            .map(|c| c.group))
    }

    pub(super) fn group_by_name(&self, name: &str) -> Result<GroupId, ClientError> {
        let all = self.store.read(|tx| tx.conversations())?;
        let named: Vec<_> = all
            .iter()
            .filter(|c| c.name.as_deref() == Some(name))
            .collect();
        let active: Vec<_> = named.iter().filter(|c| c.active).collect();
        match (active.as_slice(), named.is_empty()) {
            ([one], _) => Ok(one.group.clone()),
            ([], false) => Err(ClientError::Usage(format!(
                "you were removed from the group {name:?}"
            ))),
            ([], true) => Err(ClientError::Usage(format!("no group named {name:?}"))),
            _ => Err(ClientError::Usage(format!(
                "several groups are named {name:?}; rename one first"
            ))),
        }
    }

    /// Sends `text` to `user` in your one-to-one conversation, starting it if needed. Refuses
    /// if that conversation holds anyone but the two of you.
    pub async fn send_text(&self, user: &str, text: &str) -> Result<SendResponse, ClientError> {
        let peer = Username::parse(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if peer == self.me().user {
            return Err(ClientError::Usage(
                "you cannot start a conversation with yourself".into(),
            ));
        }
        let content = text_content(text)?;
        let sent = async {
            self.exchange().await?;
            let gid = match self.direct_conversation(&peer)? {
                Some(g) => g,
                None => {
                    self.fetch_device_list(&peer).await?;
                    self.create_local_group(None, Some(&peer))?
                }
            };
            let users: BTreeSet<Username> = self.tx(|tx| {
                self.with_active_group(tx, &gid, |_, g| {
                    Ok(group::members(g)?
                        .into_iter()
                        .map(|m| m.addr.user)
                        .collect())
                })
            })?;
            if let Some(other) = users.iter().find(|u| **u != peer && **u != self.me().user) {
                return Err(ClientError::Security(format!(
                    "your one-to-one conversation with {peer} now includes {other}; not sending"
                )));
            }
            // Also completes a conversation whose first add failed (network, refused device).
            if !users.contains(&peer) {
                self.change_members(&gid, std::slice::from_ref(&peer), &[])
                    .await?;
            }
            self.send_content(&gid, &content, self.now(), None).await
        }
        .await;
        self.recorded(sent)
    }

    /// Sends `text` to the group named `name`.
    pub async fn send_group_text(
        &self,
        name: &str,
        text: &str,
    ) -> Result<SendResponse, ClientError> {
        let content = text_content(text)?;
        let sent = async {
            self.exchange().await?;
            let gid = self.group_by_name(name)?;
            self.send_content(&gid, &content, self.now(), None).await
        }
        .await;
        self.recorded(sent)
    }

    /// Creates a group named `name` with `members`. Returns the events it caused.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<Vec<Event>, ClientError> {
        Content::GroupInfo {
            name: Some(name.to_owned()),
        }
        .check()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
        let members = parse_users(members)?;
        let created = async {
            self.exchange().await?;
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
        .await;
        self.recorded(created)
    }

    /// Adds users to a group. Returns the events it caused.
    pub async fn add_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<Event>, ClientError> {
        let users = parse_users(users)?;
        let changed = async {
            self.exchange().await?;
            let gid = self.group_by_name(name)?;
            self.change_members(&gid, &users, &[]).await
        }
        .await;
        self.recorded(changed)
    }

    /// Removes users from a group. Returns the events it caused.
    pub async fn remove_members(
        &self,
        name: &str,
        users: &[String],
    ) -> Result<Vec<Event>, ClientError> {
        let users = parse_users(users)?;
        if users.contains(&self.me().user) {
            return Err(ClientError::Usage(
                "leaving a group is not supported yet".into(),
            ));
        }
        let changed = async {
            self.exchange().await?;
            let gid = self.group_by_name(name)?;
            self.change_members(&gid, &[], &users).await
        }
        .await;
        self.recorded(changed)
    }

    /// Groups of this device (one-to-one conversations left out).
    pub fn groups(&self) -> Result<Vec<Conversation>, ClientError> {
        self.store.read(|tx| {
            tx.conversations()?
                .into_iter()
                .filter(|c| c.peer.is_none())
                .map(|c| {
                    // A conversation that came with a linked device's history has no group
                    // state until this device is added to it.
                    let (devices, epoch) = match group::load(&tx.mls(), c.group.as_bytes()) {
                        Ok(g) => (g.members().count(), g.epoch().as_u64()),
                        Err(_) if !c.active => (0, 0),
                        Err(e) => return Err(e.into()),
                    };
                    Ok(Conversation {
                        id: hex::encode(c.group.as_bytes()),
                        name: c.name,
                        peer: None,
                        devices,
                        epoch,
                        active: c.active,
                    })
                })
                .collect()
        })
    }

    /// Members of the group named `name`, by user.
    pub fn members(&self, name: &str) -> Result<Vec<Member>, ClientError> {
        let gid = self.group_by_name(name)?;
        let members = self.store.read(|tx| {
            let g = group::load(&tx.mls(), gid.as_bytes())?;
            Ok::<_, ClientError>(group::members(&g)?)
        })?;
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in members {
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
}
