//! The sync: fetch the queue, process each message exactly once, make the result durable,
//! acknowledge.
//!
//! A message is acknowledged only when its effects are durable, and only when it was decided:
//! processed, or refused for a verified reason. A message that could not be checked because a
//! device list could not be fetched stays in the queue for the next sync.

use super::{Engine, lock};
use crate::events::Event;
use crate::group::{self, MemberDevice, Received};
use crate::store::{ClientStore, ConversationRecord, HistoryItem, HistoryRecord, Setting, StoreTx};
use crate::{ClientError, Content, CoreError, Envelope, Transport};
use openmls::prelude::MlsGroup;
use sotto_proto::api::{QueueResponse, QueuedKind, QueuedMessage};
use sotto_proto::{DeviceAddr, GroupId, Username};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

/// Queue fetch batch size.
const FETCH_BATCH: u32 = 100;

/// Why a queued message could not be applied.
pub(super) enum ApplyError {
    /// The device lists of these users are needed before the message can be checked.
    NeedLists(Vec<Username>),
    Failed(ClientError),
}

impl<E: Into<ClientError>> From<E> for ApplyError {
    fn from(e: E) -> Self {
        ApplyError::Failed(e.into())
    }
}

/// Whether `e` is this device's own failure (its store, a bug), not something wrong with the
/// message: then the message must stay queued, not be recorded as unreadable and
/// acknowledged.
fn is_local_failure<X: StoreTx>(e: &ClientError) -> bool {
    match e {
        ClientError::Store(_) | ClientError::Internal(_) => true,
        ClientError::Engine(CoreError::Mls { source, .. }) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(c) = cause {
                if c.is::<X::MlsError>() {
                    return true;
                }
                cause = c.source();
            }
            false
        }
        _ => false,
    }
}

/// The server's count of messages dropped for this device, as last seen.
fn dropped_seen(tx: &impl StoreTx) -> Result<u64, crate::StoreError> {
    Ok(tx
        .setting(Setting::DroppedSeen)?
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes))
}

/// What [`Engine::receive`] made of a batch of the queue.
#[derive(Debug)]
pub struct Receipt {
    /// The ids to acknowledge: decided, and durable.
    pub acks: Vec<u64>,
    /// Whether the store made the batch durable; when not, nothing may be acknowledged and
    /// the batch comes again (and is skipped as processed).
    pub durable: bool,
    /// What stopped the batch before its end (a device list that could not be fetched).
    pub failure: Option<ClientError>,
}

/// What [`Engine::process`] got through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The ids of the messages decided, in order: these may be acknowledged once durable.
    pub done: Vec<u64>,
    /// The users whose device lists the next message needs checked against.
    pub need: Vec<Username>,
}

enum Handled {
    Done,
    NeedLists(Vec<Username>),
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Sends what the outbox holds, then processes everything queued for this device. Every
    /// security failure met on the way is stored as a security event; one met while
    /// processing a message refuses that message and the sync goes on.
    pub async fn sync(&self) -> Result<(), ClientError> {
        let mut result = self.exchange().await;
        if result.is_ok() {
            result = self.check_vouched_roots().await;
        }
        self.recorded(result)
    }

    /// [`Engine::sync`] for operations that record security failures themselves.
    pub(super) async fn exchange(&self) -> Result<(), ClientError> {
        self.flush_outbox().await?;
        // The own-account check runs whatever the pull met (a queue that keeps failing must
        // not keep it from running), and its alarm wins over the pull's error.
        let pulled = self.pull().await;
        match self.monitor_own_account().await {
            Err(e @ ClientError::Security(_)) => Err(e),
            // The account's list, once the log holds it, says which of its devices belong in
            // its conversations.
            Ok(true) if pulled.is_ok() => {
                self.remove_unlisted_own_devices().await?;
                self.heal_due().await
            }
            Ok(_) if pulled.is_ok() => self.heal_due().await,
            monitored => pulled.and(monitored.map(drop)),
        }
    }

    pub(super) async fn pull(&self) -> Result<(), ClientError> {
        let token = self.token().await?;
        loop {
            let queue = self.transport.queue(&token, FETCH_BATCH).await?;
            let received = self.receive(&queue).await?;
            if !received.acks.is_empty() {
                self.transport.ack(&token, received.acks).await?;
            }
            if let Some(e) = received.failure {
                return Err(e);
            }
            if queue.messages.is_empty() || !received.durable {
                // When not durable: redelivered next time, and skipped as already processed.
                break;
            }
        }
        // Best effort: what was received is done; a failed top-up is tried on the next sync.
        let _ = self.top_up_key_packages(&token).await;
        Ok(())
    }

    /// Processes a batch of the queue (from `GET /v1/queue` or the push socket): each message
    /// exactly once, fetching the device lists the checks need, then makes the result
    /// durable. Returns the ids to acknowledge, and the failure that stopped the batch
    /// early, if any: the messages from there on stay queued for the next sync.
    pub async fn receive(&self, queue: &QueueResponse) -> Result<Receipt, ClientError> {
        self.note_dropped(queue.dropped_total)?;
        // Device lists are checked as they are now, not as they were at an earlier batch: a
        // socket followed for hours must see a contact's new device.
        self.forget_lists();
        let batch = &queue.messages;
        if batch.is_empty() {
            return Ok(Receipt {
                acks: Vec::new(),
                durable: true,
                failure: None,
            });
        }
        let mut acks = Vec::with_capacity(batch.len());
        let mut failure = None;
        'batch: while acks.len() < batch.len() {
            // One transaction for as much of the batch as can be checked without network.
            let processed = self.process(batch.get(acks.len()..).unwrap_or_default())?;
            acks.extend(processed.done);
            for user in processed.need {
                match self.fetch_device_list(&user).await {
                    Ok(_) => {}
                    // Verified, or the server's word that there is no such account: the
                    // devices cannot be proven, so the check refuses them.
                    Err(ClientError::Security(reason) | ClientError::Usage(reason)) => {
                        self.list_unverifiable(&user, reason);
                    }
                    // Nothing learned: leave this message queued for the next sync.
                    Err(e) => {
                        failure = Some(e);
                        break 'batch;
                    }
                }
            }
        }
        let durable = self.store.make_durable()?;
        if !durable {
            acks.clear();
        }
        Ok(Receipt {
            acks,
            durable,
            failure,
        })
    }

    /// Processes queued messages in order, in one transaction, each exactly once (an id
    /// processed before is skipped), until one needs device lists not fetched yet. Every
    /// message it gets to is decided: applied, or recorded as refused or unreadable.
    pub fn process(&self, batch: &[QueuedMessage]) -> Result<Processed, ClientError> {
        self.tx(|tx| {
            let mut done = Vec::with_capacity(batch.len());
            for m in batch {
                if let Handled::NeedLists(need) = self.handle(tx, m)? {
                    return Ok(Processed { done, need });
                }
                done.push(m.id);
            }
            Ok(Processed {
                done,
                need: Vec::new(),
            })
        })
    }

    /// Notes when the server reports more messages dropped for this device than it did last
    /// time (a full queue, or messages that outlived the retention period).
    fn note_dropped(&self, total: u64) -> Result<(), ClientError> {
        // Nearly always unchanged: checked without taking the write lock.
        if self.store.read(|tx| dropped_seen(tx))? == total {
            return Ok(());
        }
        self.tx(|tx| {
            let seen = dropped_seen(tx)?;
            // A lower count is an older answer (a socket's first page, read before a sync's
            // fetch): the count only grows. A server whose data was reset is another server
            // (a new server id), which the client refuses anyway.
            if total > seen {
                let id = format!("dropped-{total}");
                let count = total.saturating_sub(seen);
                self.record_notice(tx, id, None, HistoryItem::Event(Event::Dropped { count }))?;
                tx.set_setting(Setting::DroppedSeen, &total.to_be_bytes())?;
            }
            Ok(())
        })
    }

    fn handle<X: StoreTx>(&self, tx: &X, m: &QueuedMessage) -> Result<Handled, ClientError> {
        if tx.is_processed(m.id)? {
            return Ok(Handled::Done);
        }
        match tx.savepoint(|| self.apply(tx, m)) {
            Ok(()) => {}
            Err(ApplyError::NeedLists(users)) => {
                self.forget_groups();
                return Ok(Handled::NeedLists(users));
            }
            Err(ApplyError::Failed(e)) if is_local_failure::<X>(&e) => {
                self.forget_groups();
                return Err(e);
            }
            Err(ApplyError::Failed(e)) => {
                self.forget_groups();
                // Only the server says who sent a message that did not verify or decrypt.
                let item = match e {
                    ClientError::Security(reason) => HistoryItem::Security {
                        from: Some(m.sender.user.clone()),
                        reason,
                    },
                    other => HistoryItem::Event(Event::Unreadable {
                        from: m.sender.user.clone(),
                        reason: other.to_string(),
                    }),
                };
                self.add_history_visibly(
                    tx,
                    HistoryRecord {
                        id: m.id.to_string(),
                        group: Some(m.group_id.clone()),
                        sender: Some((m.sender.clone(), false)),
                        sent_at: m.accepted_at,
                        received_at: m.accepted_at,
                        item,
                        outgoing: false,
                    },
                )?;
            }
        }
        tx.mark_processed(m.id)?;
        Ok(Handled::Done)
    }

    fn apply(&self, tx: &impl StoreTx, m: &QueuedMessage) -> Result<(), ApplyError> {
        let gid = &m.group_id;
        match m.kind {
            QueuedKind::Welcome => {
                if self.conversation_exists(tx, gid)? {
                    return Ok(());
                }
                // The state this device kept from before it was removed, if any: a Welcome
                // into an epoch not past it is an old one, replayed to take the device back.
                let left_at = match group::load(&tx.mls(), gid.as_bytes()) {
                    Ok(old) => Some(old.epoch().as_u64()),
                    Err(CoreError::State(_)) => None,
                    Err(e) => return Err(e.into()),
                };
                lock(&self.cache).groups.remove(gid);
                let g = group::join(&tx.mls(), m.message.as_slice(), gid.as_bytes())?;
                let epoch = g.epoch().as_u64();
                if let Some(left_at) = left_at.filter(|left| epoch <= *left) {
                    return Err(ClientError::Security(format!(
                        "a Welcome into epoch {epoch} of a conversation this device left at \
                         epoch {left_at}: an old one, replayed; refused"
                    ))
                    .into());
                }
                self.verify_members(&group::members(&g)?)?;
                // Counted afresh from here: what others sent while this device was out of
                // the group (removed and added back) is not missing.
                tx.forget_counters(gid, self.me())?;
                // A member removed earlier and added back rejoins its conversation, which
                // stays what it was (a group, or a one-to-one conversation).
                tx.upsert_conversation(&ConversationRecord {
                    group: gid.clone(),
                    name: None,
                    peer: None,
                    announced: false,
                    active: true,
                    created_at: m.accepted_at,
                })?;
                // Its leaf is new: the next renewal is a week from now, by this device's
                // clock (not the server's word).
                tx.set_healed_at(gid, self.now())?;
                Ok(())
            }
            QueuedKind::Group => {
                if !self.conversation_exists(tx, gid)? {
                    // Not (or no longer) in this group on this device: nothing to show.
                    return Ok(());
                }
                self.with_group(tx, gid, |provider, g| {
                    match group::process(provider, g, m.message.as_slice())? {
                        Received::Content { sender, envelope } => {
                            self.apply_content(tx, m, g, &sender, envelope)?;
                        }
                        Received::Commit(staged) => {
                            self.verify_members(&staged.summary.proven_devices())?;
                            let before = group::members(g)?;
                            let summary = group::merge_staged(provider, g, staged)?;
                            let after = group::members(g)?;
                            let events = self.describe(&summary.committer, &before, &after);
                            // After a removal this device renews its leaf too (DESIGN G2):
                            // a theft of its leaf secrets heals when the membership changes.
                            if super::healing::removes_any(&before, &after) && !summary.self_removed
                            {
                                tx.set_healed_at(gid, 0)?;
                                self.heal_wanted.store(true, Ordering::Relaxed);
                            }
                            for (i, event) in events.into_iter().enumerate() {
                                // The commit is the group's now: its events are shown,
                                // whatever id the server gave it.
                                self.add_history_visibly(
                                    tx,
                                    HistoryRecord {
                                        id: format!("{}.{i}", m.id),
                                        group: Some(gid.clone()),
                                        sender: Some((summary.committer.clone(), true)),
                                        sent_at: summary.sent_at.unwrap_or(m.accepted_at),
                                        received_at: m.accepted_at,
                                        item: HistoryItem::Event(event),
                                        outgoing: false,
                                    },
                                )?;
                            }
                            if summary.self_removed {
                                tx.deactivate_conversation(gid)?;
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
        tx: &impl StoreTx,
        m: &QueuedMessage,
        g: &MlsGroup,
        sender: &DeviceAddr,
        envelope: Envelope,
    ) -> Result<(), ClientError> {
        self.check_vouched(tx, &m.group_id, m.id, sender, &envelope)?;
        let item = match envelope.content {
            Content::Text { body } => Some(HistoryItem::Text(body)),
            Content::GroupInfo { name } => {
                // Who is in the group matters only to a description (and reading the tree
                // for every text would cost more than the rest of receiving it).
                let users = group::members(g)?
                    .into_iter()
                    .map(|d| d.addr.user)
                    .collect();
                self.describe_conversation(tx, &m.group_id, sender, name, &users)?
                    .map(HistoryItem::Event)
            }
        };
        let Some(item) = item else {
            return Ok(());
        };
        let added = tx.add_history(&HistoryRecord {
            id: m.id.to_string(),
            group: Some(m.group_id.clone()),
            sender: Some((sender.clone(), true)),
            sent_at: envelope.sent_at,
            received_at: m.accepted_at,
            item,
            outgoing: false,
        })?;
        if !added {
            // Under the id of something this device sent: it would vanish behind it.
            return Err(ClientError::Security(format!(
                "the server delivered a message from {sender} under id {}, which this device's \
                 history already holds: refused",
                m.id
            )));
        }
        Ok(())
    }

    /// Applies a member's description of the conversation (`GroupInfo`). The first one
    /// fixes what the conversation is: a named group, or a one-to-one conversation with its
    /// sender, which it can only be while the two of you are its only members. After that a
    /// group can be renamed, but nobody can turn a group into a one-to-one conversation or
    /// back. Returns the event to show, if any.
    fn describe_conversation(
        &self,
        tx: &impl StoreTx,
        gid: &GroupId,
        sender: &DeviceAddr,
        name: Option<String>,
        users: &BTreeSet<Username>,
    ) -> Result<Option<Event>, ClientError> {
        let c = tx
            .conversation(gid)?
            .ok_or_else(|| ClientError::damaged("conversation"))?;
        let by = sender.user.clone();
        let set =
            |name: Option<&str>, peer: Option<&Username>| tx.describe_conversation(gid, name, peer);
        Ok(match (c.name, c.peer, name) {
            (None, None, Some(new)) => {
                set(Some(&new), None)?;
                Some(Event::Joined { by })
            }
            (None, None, None) => {
                let just_us = users.len() == 2 && users.contains(&by);
                // Described by another device of this account: the peer is the other user.
                let peer = users.iter().find(|u| **u != self.me().user);
                match peer {
                    Some(peer) if just_us => set(None, Some(peer))?,
                    _ => {
                        return Ok(Some(Event::NotOneToOne {
                            by,
                            people: users.len(),
                        }));
                    }
                }
                None
            }
            (Some(old), peer, Some(new)) if old != new => {
                set(Some(&new), peer.as_ref())?;
                Some(Event::Renamed {
                    by,
                    from: old,
                    to: new,
                })
            }
            (Some(old), peer, Some(_)) => {
                if c.announced {
                    None
                } else {
                    set(Some(&old), peer.as_ref())?;
                    Some(Event::Joined { by })
                }
            }
            (Some(_), _, None) => Some(Event::GroupStaysGroup { by }),
            (None, Some(_), Some(new)) => Some(Event::OneToOneStaysUnnamed { by, name: new }),
            (None, Some(peer), None) => {
                if !c.announced {
                    set(None, Some(&peer))?;
                }
                None
            }
        })
    }

    /// The events of a commit by `committer` that took the group from the members `before`
    /// to `after`: each user added (or device added to a member), then each user removed (or
    /// device removed from one who stays).
    pub(super) fn describe(
        &self,
        committer: &DeviceAddr,
        before: &[MemberDevice],
        after: &[MemberDevice],
    ) -> Vec<Event> {
        let users = |ms: &[MemberDevice]| {
            ms.iter()
                .map(|m| m.addr.user.clone())
                .collect::<BTreeSet<Username>>()
        };
        let (was, is) = (users(before), users(after));
        let by = &committer.user;
        let name = |d: &DeviceAddr| {
            lock(&self.lists)
                .get(&d.user)
                .and_then(|l| l.as_ref().ok())
                .and_then(|l| l.device(d.device).map(|e| e.name.clone()))
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        let added: Vec<&MemberDevice> = after.iter().filter(|m| !before.contains(m)).collect();
        let removed: Vec<&MemberDevice> = before.iter().filter(|m| !after.contains(m)).collect();
        for user in is.difference(&was) {
            out.push(Event::Added {
                by: by.clone(),
                user: user.clone(),
            });
        }
        for d in added.iter().filter(|m| was.contains(&m.addr.user)) {
            out.push(Event::DeviceAdded {
                by: by.clone(),
                user: d.addr.user.clone(),
                device: d.addr.device.to_string(),
                name: name(&d.addr),
            });
        }
        for user in was.difference(&is) {
            out.push(Event::Removed {
                by: by.clone(),
                user: user.clone(),
            });
        }
        for d in removed.iter().filter(|m| is.contains(&m.addr.user)) {
            out.push(Event::DeviceRemoved {
                by: by.clone(),
                user: d.addr.user.clone(),
                device: d.addr.device.to_string(),
            });
        }
        out
    }
}
