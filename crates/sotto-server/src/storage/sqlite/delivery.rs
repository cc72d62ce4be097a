//! Ordered delivery in SQLite: groups with their epoch, sequence and roster; one stored copy
//! per message; a queue entry per recipient device within that device's quota.

use super::{SqliteStorage, addr, corrupt, to_i64, to_u64};
use crate::storage::{DeliveryStore, QueueQuota, StorageError, Submitted};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sotto_proto::api::{QueueResponse, QueuedKind, QueuedMessage, SendResponse, ValidSend};
use sotto_proto::framing::MessageKind;
use sotto_proto::{Bytes, DeviceAddr, GroupId};
use std::collections::HashSet;

const KIND_GROUP: i64 = 0;
const KIND_WELCOME: i64 = 1;

fn device_exists(conn: &Connection, d: &DeviceAddr) -> Result<bool, StorageError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM devices WHERE user = ?1 AND device = ?2")?
        .query_row(params![d.user.as_str(), d.device.to_string()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// A message to store once and queue for its recipients.
struct Stored<'a> {
    group: &'a GroupId,
    seq: u64,
    sender: &'a DeviceAddr,
    kind: i64,
    data: &'a [u8],
    now: u64,
}

impl Stored<'_> {
    /// Stores the message and queues it for every recipient but the sender, once each, within
    /// `quota`; a message that ends up in no queue is not kept. Returns its id (ids come from
    /// the table's AUTOINCREMENT sequence, so an id is never reused even then).
    fn enqueue(
        &self,
        conn: &Connection,
        recipients: &[DeviceAddr],
        quota: QueueQuota,
        wake: &mut Vec<DeviceAddr>,
    ) -> Result<u64, StorageError> {
        conn.prepare_cached(
            "INSERT INTO messages (group_id, seq, sender_user, sender_device, kind, data, accepted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            self.group.as_bytes(),
            to_i64(self.seq),
            self.sender.user.as_str(),
            self.sender.device.to_string(),
            self.kind,
            self.data,
            to_i64(self.now)
        ])?;
        let id = to_u64(conn.last_insert_rowid());
        let size = self.data.len() as u64;
        let mut queued = HashSet::new();
        for r in recipients {
            if r == self.sender || !queued.insert(r) {
                continue;
            }
            conn.prepare_cached(
                "INSERT INTO queue (user, device, message_id, size) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                r.user.as_str(),
                r.device.to_string(),
                to_i64(id),
                to_i64(size)
            ])?;
            let (count, bytes): (i64, i64) = conn
                .prepare_cached(
                    "INSERT INTO device_queues (user, device, count, bytes) VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (user, device) DO UPDATE
                     SET count = count + 1, bytes = bytes + excluded.bytes
                     RETURNING count, bytes",
                )?
                .query_row(
                    params![r.user.as_str(), r.device.to_string(), to_i64(size)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
            if to_u64(count) > quota.messages || to_u64(bytes) > quota.bytes {
                drop_over_quota(conn, r, quota, id)?;
            }
            wake.push(r.clone());
        }
        delete_if_unqueued(conn, id)?;
        Ok(id)
    }
}

/// Drops entries of `device`'s queue until it is within `quota`, counting each in the
/// device's `dropped_total`. The sender holding the most of what is over quota — entries if
/// the queue has too many, bytes if it is too large — loses its oldest entries first, so a
/// stranger (or a few) flooding a device pushes out their own messages, not the commits and
/// messages of the device's groups. The entry of message `keep`, the one being queued, always
/// stays: the quota may be exceeded by that one message, never by losing it.
fn drop_over_quota(
    conn: &Connection,
    device: &DeviceAddr,
    quota: QueueQuota,
    keep: u64,
) -> Result<(), StorageError> {
    let (user, dev) = (device.user.as_str(), device.device.to_string());
    let (count, bytes): (i64, i64) = conn.query_row(
        "SELECT count, bytes FROM device_queues WHERE user = ?1 AND device = ?2",
        params![user, dev],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (mut count, mut bytes) = (to_u64(count), to_u64(bytes));
    let (mut dropped, mut freed) = (0u64, 0u64);
    while count > quota.messages || bytes > quota.bytes {
        let heaviest = if count > quota.messages {
            "SELECT m.sender_user, m.sender_device FROM queue q JOIN messages m ON m.id = q.message_id
             WHERE q.user = ?1 AND q.device = ?2 AND q.message_id != ?3
             GROUP BY m.sender_user, m.sender_device ORDER BY COUNT(*) DESC LIMIT 1"
        } else {
            "SELECT m.sender_user, m.sender_device FROM queue q JOIN messages m ON m.id = q.message_id
             WHERE q.user = ?1 AND q.device = ?2 AND q.message_id != ?3
             GROUP BY m.sender_user, m.sender_device ORDER BY SUM(q.size) DESC LIMIT 1"
        };
        let sender: Option<(String, String)> = conn
            .prepare_cached(heaviest)?
            .query_row(params![user, dev, to_i64(keep)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        // Only the entry being queued is left.
        let Some((sender_user, sender_device)) = sender else {
            break;
        };
        let entries: Vec<(i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT q.id, q.message_id, q.size FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.user = ?1 AND q.device = ?2 AND q.message_id != ?3
                 AND m.sender_user = ?4 AND m.sender_device = ?5 ORDER BY q.id",
            )?
            .query_map(
                params![user, dev, to_i64(keep), sender_user, sender_device],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        // That sender's oldest entries go, as many as it takes or as it has.
        for (queue_id, message_id, size) in entries {
            if count <= quota.messages && bytes <= quota.bytes {
                break;
            }
            conn.prepare_cached("DELETE FROM queue WHERE id = ?1")?
                .execute([queue_id])?;
            delete_if_unqueued(conn, to_u64(message_id))?;
            let size = to_u64(size);
            count = count.saturating_sub(1);
            bytes = bytes.saturating_sub(size);
            dropped += 1;
            freed += size;
        }
    }
    conn.execute(
        "UPDATE device_queues SET count = count - ?3, bytes = bytes - ?4,
         dropped_total = dropped_total + ?3 WHERE user = ?1 AND device = ?2",
        params![user, dev, to_i64(dropped), to_i64(freed)],
    )?;
    Ok(())
}

/// Deletes message `id` if no queue refers to it any more.
fn delete_if_unqueued(conn: &Connection, id: u64) -> Result<(), StorageError> {
    conn.prepare_cached(
        "DELETE FROM messages WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?1)",
    )?
    .execute([to_i64(id)])?;
    Ok(())
}

impl DeliveryStore for SqliteStorage {
    fn submit(
        &self,
        sender: &DeviceAddr,
        send: &ValidSend,
        now: u64,
        quota: QueueQuota,
    ) -> Result<Submitted, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let req = &send.request;
        let sender_dev = sender.device.to_string();
        let earlier = tx
            .prepare_cached(
                "SELECT message_id, seq, epoch, accepted_at FROM sends
                 WHERE user = ?1 AND device = ?2 AND client_id = ?3",
            )?
            .query_row(
                params![sender.user.as_str(), sender_dev, req.client_id],
                |r| {
                    Ok(SendResponse {
                        id: to_u64(r.get(0)?),
                        seq: to_u64(r.get(1)?),
                        epoch: to_u64(r.get(2)?),
                        accepted_at: to_u64(r.get(3)?),
                    })
                },
            )
            .optional()?;
        if let Some(response) = earlier {
            return Ok(Submitted::Accepted {
                response,
                wake: Vec::new(),
            });
        }
        let group = &send.framing.group_id;
        let state: Option<(i64, i64)> = tx
            .prepare_cached("SELECT epoch, next_seq FROM groups WHERE group_id = ?1")?
            .query_row([group.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (epoch, seq) = match state {
            Some((epoch, seq)) => {
                let member = tx
                    .prepare_cached(
                        "SELECT 1 FROM group_roster WHERE group_id = ?1 AND user = ?2 AND device = ?3",
                    )?
                    .query_row(
                        params![group.as_bytes(), sender.user.as_str(), sender_dev],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !member {
                    return Ok(Submitted::NotAMember);
                }
                (to_u64(epoch), to_u64(seq))
            }
            None => {
                // A new group: its creator is its only member until its first commit.
                tx.execute(
                    "INSERT INTO groups (group_id, epoch, next_seq) VALUES (?1, ?2, 1)",
                    params![group.as_bytes(), to_i64(send.framing.epoch)],
                )?;
                tx.execute(
                    "INSERT INTO group_roster (group_id, user, device) VALUES (?1, ?2, ?3)",
                    params![group.as_bytes(), sender.user.as_str(), sender_dev],
                )?;
                (send.framing.epoch, 1)
            }
        };
        if send.framing.epoch != epoch {
            return Ok(Submitted::EpochConflict(epoch));
        }
        let welcome_recipients = req.welcome.as_ref().map_or(&[][..], |w| &w.recipients);
        for r in req
            .recipients
            .iter()
            .chain(welcome_recipients)
            .chain(req.roster.iter().flatten())
        {
            if !device_exists(&tx, r)? {
                return Ok(Submitted::UnknownRecipient);
            }
        }
        // Validation keeps a commit's epoch below `limits::MAX_EPOCH`; checked all the same,
        // so a database edited by hand cannot make the server wrap or panic.
        let new_epoch = if send.framing.kind == MessageKind::Commit {
            epoch
                .checked_add(1)
                .filter(|&e| i64::try_from(e).is_ok())
                .ok_or_else(|| corrupt("group epoch at its limit"))?
        } else {
            epoch
        };
        let next_seq = seq
            .checked_add(1)
            .filter(|&s| i64::try_from(s).is_ok())
            .ok_or_else(|| corrupt("group sequence at its limit"))?;
        tx.prepare_cached("UPDATE groups SET epoch = ?2, next_seq = ?3 WHERE group_id = ?1")?
            .execute(params![
                group.as_bytes(),
                to_i64(new_epoch),
                to_i64(next_seq)
            ])?;
        if let Some(roster) = &req.roster {
            tx.execute(
                "DELETE FROM group_roster WHERE group_id = ?1",
                [group.as_bytes()],
            )?;
            for d in roster {
                tx.execute(
                    "INSERT OR IGNORE INTO group_roster (group_id, user, device) VALUES (?1, ?2, ?3)",
                    params![group.as_bytes(), d.user.as_str(), d.device.to_string()],
                )?;
            }
        }
        let mut wake = Vec::new();
        let message = Stored {
            group,
            seq,
            sender,
            kind: KIND_GROUP,
            data: req.message.as_slice(),
            now,
        };
        let id = message.enqueue(&tx, &req.recipients, quota, &mut wake)?;
        if let Some(w) = &req.welcome {
            let welcome = Stored {
                kind: KIND_WELCOME,
                data: w.message.as_slice(),
                ..message
            };
            welcome.enqueue(&tx, &w.recipients, quota, &mut wake)?;
            wake.sort();
            wake.dedup();
        }
        tx.prepare_cached(
            "INSERT INTO sends (user, device, client_id, message_id, seq, epoch, accepted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            sender.user.as_str(),
            sender_dev,
            req.client_id,
            to_i64(id),
            to_i64(seq),
            to_i64(new_epoch),
            to_i64(now)
        ])?;
        tx.commit()?;
        Ok(Submitted::Accepted {
            response: SendResponse {
                id,
                seq,
                epoch: new_epoch,
                accepted_at: now,
            },
            wake,
        })
    }

    fn fetch(
        &self,
        device: &DeviceAddr,
        limit: u32,
        max_bytes: usize,
    ) -> Result<QueueResponse, StorageError> {
        let conn = self.conn();
        let (user, dev) = (device.user.as_str(), device.device.to_string());
        let mut stmt = conn.prepare_cached(
            "SELECT m.id, m.group_id, m.seq, m.sender_user, m.sender_device, m.kind, m.data, m.accepted_at
             FROM queue q JOIN messages m ON m.id = q.message_id
             WHERE q.user = ?1 AND q.device = ?2 ORDER BY q.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![user, dev, i64::from(limit)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Vec<u8>>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let (id, group, seq, user, dev, kind, data, at) = row?;
            if !messages.is_empty() && bytes.saturating_add(data.len()) > max_bytes {
                break;
            }
            // A row the operator broke is left out (and logged), not allowed to stop the
            // device from receiving everything after it.
            let (Ok(group_id), Ok(sender)) = (GroupId::from_bytes(&group), addr(user, dev)) else {
                tracing::warn!(message = id, "skipping a queued message with a corrupt row");
                continue;
            };
            bytes = bytes.saturating_add(data.len());
            messages.push(QueuedMessage {
                id: to_u64(id),
                group_id,
                seq: to_u64(seq),
                sender,
                kind: if kind == KIND_WELCOME {
                    QueuedKind::Welcome
                } else {
                    QueuedKind::Group
                },
                message: Bytes(data),
                accepted_at: to_u64(at),
            });
        }
        let dropped_total: Option<i64> = conn
            .prepare_cached(
                "SELECT dropped_total FROM device_queues WHERE user = ?1 AND device = ?2",
            )?
            .query_row(params![user, dev], |r| r.get(0))
            .optional()?;
        Ok(QueueResponse {
            messages,
            dropped_total: dropped_total.map_or(0, to_u64),
        })
    }

    fn ack(&self, device: &DeviceAddr, ids: &[u64]) -> Result<u64, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (user, dev) = (device.user.as_str(), device.device.to_string());
        let (mut removed, mut bytes) = (0u64, 0i64);
        for &id in ids {
            let size: Option<i64> = tx
                .prepare_cached(
                    "DELETE FROM queue WHERE user = ?1 AND device = ?2 AND message_id = ?3 RETURNING size",
                )?
                .query_row(params![user, dev, to_i64(id)], |r| r.get(0))
                .optional()?;
            if let Some(size) = size {
                removed += 1;
                bytes = bytes.saturating_add(size);
                delete_if_unqueued(&tx, id)?;
            }
        }
        if removed > 0 {
            tx.execute(
                "UPDATE device_queues SET count = count - ?3, bytes = bytes - ?4
                 WHERE user = ?1 AND device = ?2",
                params![user, dev, to_i64(removed), bytes],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }

    fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let cutoff = to_i64(cutoff);
        // Every queue entry that expires unread is a message its device will never get.
        tx.execute(
            "UPDATE device_queues SET dropped_total = dropped_total + (
                SELECT COUNT(*) FROM queue q JOIN messages m ON m.id = q.message_id
                WHERE q.user = device_queues.user AND q.device = device_queues.device
                AND m.accepted_at < ?1)",
            [cutoff],
        )?;
        let deleted = tx.execute("DELETE FROM messages WHERE accepted_at < ?1", [cutoff])?;
        tx.execute(
            "UPDATE device_queues SET
                count = (SELECT COUNT(*) FROM queue q
                         WHERE q.user = device_queues.user AND q.device = device_queues.device),
                bytes = (SELECT COALESCE(SUM(size), 0) FROM queue q
                         WHERE q.user = device_queues.user AND q.device = device_queues.device)",
            [],
        )?;
        tx.execute("DELETE FROM sends WHERE accepted_at < ?1", [cutoff])?;
        tx.execute(
            "DELETE FROM used_challenges WHERE expires_at <= ?1",
            [to_i64(now)],
        )?;
        tx.execute("DELETE FROM tokens WHERE expires_at <= ?1", [to_i64(now)])?;
        tx.commit()?;
        Ok(deleted as u64)
    }
}
