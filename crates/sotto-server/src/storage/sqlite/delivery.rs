//! Ordered delivery in SQLite: groups with their epoch, sequence and roster; one stored copy
//! per message; a queue entry per recipient device, with each device's usage kept in
//! `device_queues`. Only the primitive operations are here; the rules are in
//! [`crate::delivery`].

use super::{SqliteStorage, addr, to_i64, to_u64};
use crate::storage::{
    DeliveryStore, DeliveryTx, GroupState, NewMessage, QueueEntry, QueueUsage, StorageError, Weight,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sotto_proto::api::{QueueResponse, QueuedKind, QueuedMessage, SendResponse};
use sotto_proto::{Bytes, DeviceAddr, GroupId};
use tokio::sync::OwnedMutexGuard;

const KIND_GROUP: i64 = 0;
const KIND_WELCOME: i64 = 1;

/// An open `BEGIN IMMEDIATE` transaction on the storage's connection, which it holds until it
/// ends. Dropped without a commit, it rolls back.
struct SqliteTx {
    /// `None` once committed.
    conn: Option<OwnedMutexGuard<Connection>>,
}

impl SqliteTx {
    fn conn(&self) -> Result<&Connection, StorageError> {
        self.conn
            .as_deref()
            .ok_or_else(|| StorageError::new("transaction already committed"))
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn
            && let Err(e) = conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rolling back a delivery transaction failed");
        }
    }
}

#[async_trait]
impl DeliveryTx for SqliteTx {
    async fn sent(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
    ) -> Result<Option<SendResponse>, StorageError> {
        Ok(self
            .conn()?
            .prepare_cached(
                "SELECT message_id, seq, epoch, accepted_at FROM sends
                 WHERE user = ?1 AND device = ?2 AND client_id = ?3",
            )?
            .query_row(
                params![sender.user.as_str(), sender.device.to_string(), client_id],
                |r| {
                    Ok(SendResponse {
                        id: to_u64(r.get(0)?),
                        seq: to_u64(r.get(1)?),
                        epoch: to_u64(r.get(2)?),
                        accepted_at: to_u64(r.get(3)?),
                    })
                },
            )
            .optional()?)
    }

    async fn record_send(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
        response: &SendResponse,
    ) -> Result<(), StorageError> {
        self.conn()?
            .prepare_cached(
                "INSERT INTO sends (user, device, client_id, message_id, seq, epoch, accepted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                sender.user.as_str(),
                sender.device.to_string(),
                client_id,
                to_i64(response.id),
                to_i64(response.seq),
                to_i64(response.epoch),
                to_i64(response.accepted_at)
            ])?;
        Ok(())
    }

    async fn devices_exist(&mut self, devices: &[&DeviceAddr]) -> Result<bool, StorageError> {
        let mut exists = self
            .conn()?
            .prepare_cached("SELECT 1 FROM devices WHERE user = ?1 AND device = ?2")?;
        for d in devices {
            let found = exists
                .query_row(params![d.user.as_str(), d.device.to_string()], |_| Ok(()))
                .optional()?;
            if found.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn group(&mut self, group: &GroupId) -> Result<Option<GroupState>, StorageError> {
        let row: Option<(i64, i64)> = self
            .conn()?
            .prepare_cached("SELECT epoch, next_seq FROM groups WHERE group_id = ?1")?
            .query_row([group.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.map(|(epoch, next_seq)| GroupState {
            epoch: to_u64(epoch),
            next_seq: to_u64(next_seq),
        }))
    }

    async fn set_group(&mut self, group: &GroupId, state: GroupState) -> Result<(), StorageError> {
        self.conn()?
            .prepare_cached(
                "INSERT INTO groups (group_id, epoch, next_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_id) DO UPDATE SET epoch = excluded.epoch, next_seq = excluded.next_seq",
            )?
            .execute(params![
                group.as_bytes(),
                to_i64(state.epoch),
                to_i64(state.next_seq)
            ])?;
        Ok(())
    }

    async fn in_roster(
        &mut self,
        group: &GroupId,
        device: &DeviceAddr,
    ) -> Result<bool, StorageError> {
        Ok(self
            .conn()?
            .prepare_cached(
                "SELECT 1 FROM group_roster WHERE group_id = ?1 AND user = ?2 AND device = ?3",
            )?
            .query_row(
                params![
                    group.as_bytes(),
                    device.user.as_str(),
                    device.device.to_string()
                ],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    async fn set_roster(
        &mut self,
        group: &GroupId,
        devices: &[DeviceAddr],
    ) -> Result<(), StorageError> {
        let conn = self.conn()?;
        conn.prepare_cached("DELETE FROM group_roster WHERE group_id = ?1")?
            .execute([group.as_bytes()])?;
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO group_roster (group_id, user, device) VALUES (?1, ?2, ?3)",
        )?;
        for d in devices {
            insert.execute(params![
                group.as_bytes(),
                d.user.as_str(),
                d.device.to_string()
            ])?;
        }
        Ok(())
    }

    async fn store_message(&mut self, m: NewMessage<'_>) -> Result<u64, StorageError> {
        // Ids come from the table's AUTOINCREMENT sequence: never reused, even after a delete.
        let conn = self.conn()?;
        conn.prepare_cached(
            "INSERT INTO messages (group_id, seq, sender_user, sender_device, kind, data, accepted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            m.group.as_bytes(),
            to_i64(m.seq),
            m.sender.user.as_str(),
            m.sender.device.to_string(),
            match m.kind {
                QueuedKind::Group => KIND_GROUP,
                QueuedKind::Welcome => KIND_WELCOME,
            },
            m.data,
            to_i64(m.accepted_at)
        ])?;
        Ok(to_u64(conn.last_insert_rowid()))
    }

    async fn enqueue(
        &mut self,
        device: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<QueueUsage, StorageError> {
        let conn = self.conn()?;
        let (user, dev) = (device.user.as_str(), device.device.to_string());
        conn.prepare_cached(
            "INSERT INTO queue (user, device, message_id, size) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            user,
            dev,
            to_i64(entry.message_id),
            to_i64(entry.size)
        ])?;
        let (count, bytes): (i64, i64) = conn
            .prepare_cached(
                "INSERT INTO device_queues (user, device, count, bytes) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (user, device) DO UPDATE
                 SET count = count + 1, bytes = bytes + excluded.bytes
                 RETURNING count, bytes",
            )?
            .query_row(params![user, dev, to_i64(entry.size)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(QueueUsage {
            count: to_u64(count),
            bytes: to_u64(bytes),
        })
    }

    async fn enqueue_roster(
        &mut self,
        group: &GroupId,
        except: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<Vec<(DeviceAddr, QueueUsage)>, StorageError> {
        let conn = self.conn()?;
        let (user, dev) = (except.user.as_str(), except.device.to_string());
        let (id, size) = (to_i64(entry.message_id), to_i64(entry.size));
        conn.prepare_cached(
            "INSERT INTO queue (user, device, message_id, size)
             SELECT user, device, ?1, ?2 FROM group_roster
             WHERE group_id = ?3 AND NOT (user = ?4 AND device = ?5)",
        )?
        .execute(params![id, size, group.as_bytes(), user, dev])?;
        // The WHERE makes the SELECT's end plain to SQLite's parser before ON CONFLICT.
        let mut usage = conn.prepare_cached(
            "INSERT INTO device_queues (user, device, count, bytes)
             SELECT user, device, 1, ?1 FROM group_roster
             WHERE group_id = ?2 AND NOT (user = ?3 AND device = ?4)
             ON CONFLICT (user, device) DO UPDATE
             SET count = count + 1, bytes = bytes + excluded.bytes
             RETURNING user, device, count, bytes",
        )?;
        let rows = usage.query_map(params![size, group.as_bytes(), user, dev], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        let mut queued = Vec::new();
        for row in rows {
            let (user, device, count, bytes): (String, String, i64, i64) = row?;
            let usage = QueueUsage {
                count: to_u64(count),
                bytes: to_u64(bytes),
            };
            // A roster row the operator broke is queued for but cannot be woken or held to
            // its quota; it must not stop the group.
            match addr(user, device) {
                Ok(device) => queued.push((device, usage)),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a roster device that does not parse")
                }
            }
        }
        Ok(queued)
    }

    async fn heaviest_sender(
        &mut self,
        device: &DeviceAddr,
        weight: Weight,
        except: u64,
    ) -> Result<Option<DeviceAddr>, StorageError> {
        let sql = match weight {
            Weight::Entries => {
                "SELECT m.sender_user, m.sender_device FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.user = ?1 AND q.device = ?2 AND q.message_id != ?3
                 GROUP BY m.sender_user, m.sender_device
                 ORDER BY COUNT(*) DESC, m.sender_user, m.sender_device LIMIT 1"
            }
            Weight::Bytes => {
                "SELECT m.sender_user, m.sender_device FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.user = ?1 AND q.device = ?2 AND q.message_id != ?3
                 GROUP BY m.sender_user, m.sender_device
                 ORDER BY SUM(q.size) DESC, m.sender_user, m.sender_device LIMIT 1"
            }
        };
        let sender: Option<(String, String)> = self
            .conn()?
            .prepare_cached(sql)?
            .query_row(
                params![
                    device.user.as_str(),
                    device.device.to_string(),
                    to_i64(except)
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        sender.map(|(u, d)| addr(u, d)).transpose()
    }

    async fn entries_from(
        &mut self,
        device: &DeviceAddr,
        sender: &DeviceAddr,
        except: u64,
    ) -> Result<Vec<QueueEntry>, StorageError> {
        let rows: Vec<(i64, i64)> = self
            .conn()?
            .prepare_cached(
                "SELECT q.message_id, q.size FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.user = ?1 AND q.device = ?2 AND q.message_id != ?3
                 AND m.sender_user = ?4 AND m.sender_device = ?5 ORDER BY q.message_id",
            )?
            .query_map(
                params![
                    device.user.as_str(),
                    device.device.to_string(),
                    to_i64(except),
                    sender.user.as_str(),
                    sender.device.to_string()
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(|(id, size)| QueueEntry {
                message_id: to_u64(id),
                size: to_u64(size),
            })
            .collect())
    }

    async fn remove_entry(
        &mut self,
        device: &DeviceAddr,
        message_id: u64,
    ) -> Result<Option<QueueEntry>, StorageError> {
        let conn = self.conn()?;
        let (user, dev) = (device.user.as_str(), device.device.to_string());
        let size: Option<i64> = conn
            .prepare_cached(
                "DELETE FROM queue WHERE user = ?1 AND device = ?2 AND message_id = ?3 RETURNING size",
            )?
            .query_row(params![user, dev, to_i64(message_id)], |r| r.get(0))
            .optional()?;
        let Some(size) = size else {
            return Ok(None);
        };
        conn.prepare_cached(
            "UPDATE device_queues SET count = MAX(count - 1, 0), bytes = MAX(bytes - ?3, 0)
             WHERE user = ?1 AND device = ?2",
        )?
        .execute(params![user, dev, size])?;
        Ok(Some(QueueEntry {
            message_id,
            size: to_u64(size),
        }))
    }

    async fn count_dropped(&mut self, device: &DeviceAddr, n: u64) -> Result<(), StorageError> {
        if n == 0 {
            return Ok(());
        }
        self.conn()?
            .prepare_cached(
                "UPDATE device_queues SET dropped_total = dropped_total + ?3
                 WHERE user = ?1 AND device = ?2",
            )?
            .execute(params![
                device.user.as_str(),
                device.device.to_string(),
                to_i64(n)
            ])?;
        Ok(())
    }

    async fn delete_if_unqueued(&mut self, message_id: u64) -> Result<(), StorageError> {
        self.conn()?
            .prepare_cached(
                "DELETE FROM messages WHERE id = ?1
                 AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?1)",
            )?
            .execute([to_i64(message_id)])?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| StorageError::new("transaction already committed"))?;
        // The commit waits for the disk (`synchronous = FULL`): off the async threads.
        tokio::task::spawn_blocking(move || {
            conn.execute_batch("COMMIT").map_err(|e| {
                // A failed COMMIT may leave the transaction open; end it.
                let _ = conn.execute_batch("ROLLBACK");
                StorageError::from(e)
            })
        })
        .await
        .map_err(|e| StorageError::new(format!("storage task failed: {e}")))?
    }
}

#[async_trait]
impl DeliveryStore for SqliteStorage {
    async fn begin(&self) -> Result<Box<dyn DeliveryTx + '_>, StorageError> {
        let conn = self.conn.clone().lock_owned().await;
        // Off the async threads: another process holding the database (an operator's
        // `sqlite3`) makes BEGIN wait for the busy timeout.
        let conn = tokio::task::spawn_blocking(move || {
            // A transaction some failure left open is ended, not built upon.
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK")?;
            }
            conn.execute_batch("BEGIN IMMEDIATE")?;
            Ok::<_, StorageError>(conn)
        })
        .await
        .map_err(|e| StorageError::new(format!("storage task failed: {e}")))??;
        Ok(Box::new(SqliteTx { conn: Some(conn) }))
    }

    async fn fetch(
        &self,
        device: &DeviceAddr,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<QueueResponse, StorageError> {
        let device = device.clone();
        // One read transaction: the messages and the dropped count from one snapshot.
        self.read(move |conn| fetch(&*conn.transaction()?, &device, after, limit, max_bytes))
            .await
    }

    async fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError> {
        self.run(move |conn| {
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
            tx.execute("DELETE FROM links WHERE expires_at <= ?1", [to_i64(now)])?;
            tx.commit()?;
            Ok(deleted as u64)
        })
        .await
    }
}

/// The oldest messages queued for `device`; see [`DeliveryStore::fetch`].
fn fetch(
    conn: &Connection,
    device: &DeviceAddr,
    after: u64,
    limit: u32,
    max_bytes: usize,
) -> Result<QueueResponse, StorageError> {
    let (user, dev) = (device.user.as_str(), device.device.to_string());
    let mut stmt = conn.prepare_cached(
            "SELECT m.id, m.group_id, m.seq, m.sender_user, m.sender_device, m.kind, m.data, m.accepted_at
             FROM queue q JOIN messages m ON m.id = q.message_id
             WHERE q.user = ?1 AND q.device = ?2 AND q.message_id > ?4 ORDER BY q.message_id LIMIT ?3",
        )?;
    let rows = stmt.query_map(params![user, dev, i64::from(limit), to_i64(after)], |r| {
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
        .prepare_cached("SELECT dropped_total FROM device_queues WHERE user = ?1 AND device = ?2")?
        .query_row(params![user, dev], |r| r.get(0))
        .optional()?;
    Ok(QueueResponse {
        messages,
        dropped_total: dropped_total.map_or(0, to_u64),
    })
}
