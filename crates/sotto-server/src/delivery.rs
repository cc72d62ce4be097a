//! The rules of delivery, shared by every storage backend: idempotent sends, one commit per
//! (group, epoch), a sequence number per message, the roster that says who may send, one
//! stored copy of each message with a queue entry per recipient device, and queue quotas that
//! a flood cannot turn against a device's own groups. Each operation runs within a
//! [`DeliveryTx`], alone (`submit`, `ack`) or with others in one shared transaction
//! ([`crate::group_commit`]); it applies all of its effect or none. Waking the devices that
//! got something is the caller's part (after the commit, never before).

use sotto_proto::DeviceAddr;
use sotto_proto::api::{QueuedKind, SendResponse, ValidSend};
use sotto_proto::framing::MessageKind;
use std::collections::BTreeSet;

use crate::storage::{
    DeliveryStore, DeliveryTx, GroupState, NewMessage, QueueEntry, QueueUsage, StorageError, Weight,
};

/// The most a device's queue may hold. Past either bound entries are dropped (and counted in
/// the device's `dropped_total`), so an abandoned device never blocks a group: the oldest of
/// the sender holding the most of what is over quota, never the message being queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueQuota {
    /// Entries.
    pub messages: u64,
    /// Bytes of the messages the entries refer to.
    pub bytes: u64,
}

/// Result of submitting a group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Stored and queued; the devices listed must be woken.
    Accepted {
        /// The answer for the sender.
        response: SendResponse,
        /// Devices that got a new queue entry, each once.
        wake: Vec<DeviceAddr>,
    },
    /// The message's epoch is not the group's; carries the group's epoch.
    EpochConflict(u64),
    /// The sender is not in the group's roster.
    NotAMember,
    /// A recipient device does not exist.
    UnknownRecipient,
}

/// Orders and stores one group message (with its Welcome, if any), all or nothing, in a
/// transaction of its own; see [`submit_in`].
pub async fn submit(
    store: &(dyn DeliveryStore + Send + Sync),
    sender: &DeviceAddr,
    send: &ValidSend,
    now: u64,
    quota: QueueQuota,
) -> Result<Submitted, StorageError> {
    let mut tx = store.begin().await?;
    let submitted = submit_in(tx.as_mut(), sender, send, now, quota).await?;
    tx.commit().await?;
    Ok(submitted)
}

/// Orders and stores one group message (with its Welcome, if any) within `tx`: at most one
/// commit per (group, epoch), a sequence number per message, one stored copy and a queue
/// entry per recipient device (the devices named, or those of the roster as it stands before
/// a commit replaces it), within each recipient's `quota`. A message with no recipients
/// is ordered (it may move the epoch) but not stored. A repeated `client_id` from the same
/// device returns the first answer and stores nothing. A refused message writes nothing, so
/// the other changes of a shared transaction stand; an `Err` leaves `tx` half-changed, to be
/// dropped.
pub async fn submit_in(
    tx: &mut dyn DeliveryTx,
    sender: &DeviceAddr,
    send: &ValidSend,
    now: u64,
    quota: QueueQuota,
) -> Result<Submitted, StorageError> {
    let req = &send.request;
    if let Some(response) = tx.sent(sender, &req.client_id).await? {
        return Ok(Submitted::Accepted {
            response,
            wake: Vec::new(),
        });
    }
    let group = &send.framing.group_id;
    let (state, new_group) = match tx.group(group).await? {
        Some(state) => {
            if !tx.in_roster(group, sender).await? {
                return Ok(Submitted::NotAMember);
            }
            (state, false)
        }
        // A new group: its creator is its only member until its first commit.
        None => (
            GroupState {
                epoch: send.framing.epoch,
                next_seq: 1,
            },
            true,
        ),
    };
    if send.framing.epoch != state.epoch {
        return Ok(Submitted::EpochConflict(state.epoch));
    }
    let welcome_recipients = req.welcome.as_ref().map_or(&[][..], |w| &w.recipients);
    let named: BTreeSet<&DeviceAddr> = req
        .recipients
        .iter()
        .chain(welcome_recipients)
        .chain(req.roster.iter().flatten())
        .collect();
    // A message to a large group names no one: no look-up.
    if !named.is_empty()
        && !tx
            .devices_exist(&named.into_iter().collect::<Vec<_>>())
            .await?
    {
        return Ok(Submitted::UnknownRecipient);
    }
    let seq = state.next_seq;
    // Validation keeps a commit's epoch below `limits::MAX_EPOCH`; checked all the same, so
    // a database edited by hand cannot make the server wrap or panic.
    let epoch = if send.framing.kind == MessageKind::Commit {
        successor(state.epoch).ok_or_else(|| StorageError::corrupt("group epoch at its limit"))?
    } else {
        state.epoch
    };
    let next_seq =
        successor(seq).ok_or_else(|| StorageError::corrupt("group sequence at its limit"))?;
    // Every check is behind us: from here on only the storage itself can fail.
    if new_group {
        tx.set_roster(group, std::slice::from_ref(sender)).await?;
    }
    tx.set_group(group, GroupState { epoch, next_seq }).await?;
    let mut wake = BTreeSet::new();
    let message = NewMessage {
        group,
        seq,
        sender,
        kind: QueuedKind::Group,
        data: req.message.as_slice(),
        accepted_at: now,
    };
    // The roster before a commit: the devices that must process it, the ones it removes
    // included (they learn of it); the devices it adds get its Welcome.
    let to = if req.to_roster {
        To::Roster
    } else {
        To::List(&req.recipients)
    };
    let id = enqueue(tx, message, to, quota, &mut wake).await?;
    if let Some(roster) = &req.roster {
        tx.set_roster(group, roster).await?;
    }
    if let Some(w) = &req.welcome {
        let welcome = NewMessage {
            kind: QueuedKind::Welcome,
            data: w.message.as_slice(),
            ..message
        };
        enqueue(tx, welcome, To::List(&w.recipients), quota, &mut wake).await?;
    }
    let response = SendResponse {
        id,
        seq,
        epoch,
        accepted_at: now,
    };
    tx.record_send(sender, &req.client_id, &response).await?;
    Ok(Submitted::Accepted {
        response,
        wake: wake.into_iter().collect(),
    })
}

/// `n + 1`, if a database can still hold it.
fn successor(n: u64) -> Option<u64> {
    n.checked_add(1).filter(|&s| i64::try_from(s).is_ok())
}

/// Whom a message is queued for.
#[derive(Clone, Copy)]
enum To<'a> {
    /// The devices the sender named.
    List(&'a [DeviceAddr]),
    /// Every device of the group's roster, as it stands.
    Roster,
}

/// Stores the message and queues it for every recipient but the sender, once each, within
/// `quota`; a message that ends up in no queue is not kept. Returns its id.
async fn enqueue(
    tx: &mut dyn DeliveryTx,
    message: NewMessage<'_>,
    to: To<'_>,
    quota: QueueQuota,
    wake: &mut BTreeSet<DeviceAddr>,
) -> Result<u64, StorageError> {
    let id = tx.store_message(message).await?;
    let entry = QueueEntry {
        message_id: id,
        size: message.data.len() as u64,
    };
    let over = |usage: &QueueUsage| usage.count > quota.messages || usage.bytes > quota.bytes;
    match to {
        To::List(recipients) => {
            let mut queued = BTreeSet::new();
            for r in recipients {
                if r == message.sender || !queued.insert(r) {
                    continue;
                }
                let usage = tx.enqueue(r, entry).await?;
                if over(&usage) {
                    drop_over_quota(tx, r, quota, id, usage).await?;
                }
                wake.insert(r.clone());
            }
        }
        To::Roster => {
            for (r, usage) in tx
                .enqueue_roster(message.group, message.sender, entry)
                .await?
            {
                if over(&usage) {
                    drop_over_quota(tx, &r, quota, id, usage).await?;
                }
                wake.insert(r);
            }
        }
    }
    tx.delete_if_unqueued(id).await?;
    Ok(id)
}

/// Drops entries of `device`'s queue until it is within `quota`, counting each in the
/// device's `dropped_total`. The sender holding the most of what is over quota — entries if
/// the queue has too many, bytes if it is too large — loses its oldest entries first, so a
/// stranger (or a few) flooding a device pushes out their own messages, not the commits and
/// messages of the device's groups. The entry of message `keep`, the one being queued, always
/// stays: the quota may be exceeded by that one message, never by losing it. `usage` is what
/// the queue holds now.
async fn drop_over_quota(
    tx: &mut dyn DeliveryTx,
    device: &DeviceAddr,
    quota: QueueQuota,
    keep: u64,
    mut usage: QueueUsage,
) -> Result<(), StorageError> {
    let mut dropped = 0u64;
    while usage.count > quota.messages || usage.bytes > quota.bytes {
        let weight = if usage.count > quota.messages {
            Weight::Entries
        } else {
            Weight::Bytes
        };
        // Only the entry being queued is left.
        let Some(sender) = tx.heaviest_sender(device, weight, keep).await? else {
            break;
        };
        // That sender's oldest entries go, as many as it takes or as it has.
        let before = dropped;
        for entry in tx.entries_from(device, &sender, keep).await? {
            if usage.count <= quota.messages && usage.bytes <= quota.bytes {
                break;
            }
            if tx.remove_entry(device, entry.message_id).await?.is_some() {
                tx.delete_if_unqueued(entry.message_id).await?;
                usage.count = usage.count.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(entry.size);
                dropped = dropped.saturating_add(1);
            }
        }
        if dropped == before {
            // A backend that names a sender it then has nothing of would loop forever.
            return Err(StorageError::corrupt(
                "queue usage out of step with its entries",
            ));
        }
    }
    tx.count_dropped(device, dropped).await
}

/// Removes the acknowledged entries of `device`'s queue in a transaction of its own; see
/// [`ack_in`].
pub async fn ack(
    store: &(dyn DeliveryStore + Send + Sync),
    device: &DeviceAddr,
    ids: &[u64],
) -> Result<u64, StorageError> {
    let mut tx = store.begin().await?;
    let removed = ack_in(tx.as_mut(), device, ids).await?;
    tx.commit().await?;
    Ok(removed)
}

/// Removes the acknowledged entries of `device`'s queue within `tx`, and every message no
/// queue refers to any more. Ids that are not in the queue are ignored. Returns how many
/// entries were removed.
pub async fn ack_in(
    tx: &mut dyn DeliveryTx,
    device: &DeviceAddr,
    ids: &[u64],
) -> Result<u64, StorageError> {
    Ok(ack_all_in(tx, &[(device, ids)]).await?.into_iter().sum())
}

/// Applies several acknowledgements (each a device and the ids it acknowledges) within `tx`
/// in one step, as [`ack_in`] applies one: a run of acks in a shared transaction costs the
/// storage one call. An id acknowledged twice counts for the first. Returns how many entries
/// each removed.
pub async fn ack_all_in(
    tx: &mut dyn DeliveryTx,
    acks: &[(&DeviceAddr, &[u64])],
) -> Result<Vec<u64>, StorageError> {
    let mut seen = BTreeSet::new();
    let (mut entries, mut owners) = (Vec::new(), Vec::new());
    for (k, (device, ids)) in acks.iter().enumerate() {
        for &id in *ids {
            if seen.insert((*device, id)) {
                entries.push((*device, id));
                owners.push(k);
            }
        }
    }
    let removed = tx.remove_entries(&entries).await?;
    let mut counts = vec![0u64; acks.len()];
    for (k, was) in owners.into_iter().zip(removed) {
        if was && let Some(count) = counts.get_mut(k) {
            *count = count.saturating_add(1);
        }
    }
    Ok(counts)
}
