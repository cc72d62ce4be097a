//! Ordered delivery in PostgreSQL: the same primitive operations as the SQLite backend, for
//! the rules in [`crate::delivery`]. A delivery transaction holds one pooled connection and a
//! transaction-scoped advisory lock, so delivery transactions are serialized across every
//! node sharing the database, as the trait requires.

use super::tx::{PgTx, pair};
use super::{PostgresStorage, addr, read_committed, to_i64, to_u64};
use crate::storage::{
    DeliveryStore, DeliveryTx, GroupState, NewMessage, QueueEntry, QueueUsage, StorageError, Weight,
};
use async_trait::async_trait;
use deadpool_postgres::Object;
use sotto_proto::api::{QueueResponse, QueuedKind, QueuedMessage, SendResponse};
use sotto_proto::{Bytes, DeviceAddr, GroupId};

const KIND_GROUP: i16 = 0;
const KIND_WELCOME: i16 = 1;

/// The advisory lock every delivery transaction holds.
const DELIVERY_LOCK: i64 = 0x5077_0002;

#[async_trait]
impl DeliveryTx for PgTx {
    async fn sent(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
    ) -> Result<Option<SendResponse>, StorageError> {
        let (user, dev) = pair(sender);
        let row = self
            .query_opt(
                "SELECT message_id, seq, epoch, accepted_at FROM sends
                 WHERE username = $1 AND device = $2 AND client_id = $3",
                &[&user, &dev, &client_id],
            )
            .await?;
        Ok(row.map(|r| SendResponse {
            id: to_u64(r.get(0)),
            seq: to_u64(r.get(1)),
            epoch: to_u64(r.get(2)),
            accepted_at: to_u64(r.get(3)),
        }))
    }

    async fn record_send(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
        response: &SendResponse,
    ) -> Result<(), StorageError> {
        let (user, dev) = pair(sender);
        self.execute(
            "INSERT INTO sends (username, device, client_id, message_id, seq, epoch, accepted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &user,
                &dev,
                &client_id,
                &to_i64(response.id),
                &to_i64(response.seq),
                &to_i64(response.epoch),
                &to_i64(response.accepted_at),
            ],
        )
        .await?;
        Ok(())
    }

    async fn devices_exist(&mut self, devices: &[&DeviceAddr]) -> Result<bool, StorageError> {
        // One round trip, however many.
        let (users, devs): (Vec<&str>, Vec<String>) = devices.iter().map(|d| pair(d)).unzip();
        let row = self
            .query_opt(
                "SELECT COUNT(*) FROM devices d
                 JOIN UNNEST($1::text[], $2::text[]) AS r(u, dev)
                 ON d.username = r.u AND d.device = r.dev",
                &[&users, &devs],
            )
            .await?
            .ok_or_else(|| StorageError::new("no count"))?;
        let found: i64 = row.get(0);
        Ok(to_u64(found) == devices.len() as u64)
    }

    async fn group(&mut self, group: &GroupId) -> Result<Option<GroupState>, StorageError> {
        let row = self
            .query_opt(
                "SELECT epoch, next_seq FROM groups WHERE group_id = $1",
                &[&group.as_bytes()],
            )
            .await?;
        Ok(row.map(|r| GroupState {
            epoch: to_u64(r.get(0)),
            next_seq: to_u64(r.get(1)),
        }))
    }

    async fn set_group(&mut self, group: &GroupId, state: GroupState) -> Result<(), StorageError> {
        self.execute(
            "INSERT INTO groups (group_id, epoch, next_seq) VALUES ($1, $2, $3)
             ON CONFLICT (group_id) DO UPDATE
             SET epoch = EXCLUDED.epoch, next_seq = EXCLUDED.next_seq",
            &[
                &group.as_bytes(),
                &to_i64(state.epoch),
                &to_i64(state.next_seq),
            ],
        )
        .await?;
        Ok(())
    }

    async fn in_roster(
        &mut self,
        group: &GroupId,
        device: &DeviceAddr,
    ) -> Result<bool, StorageError> {
        let (user, dev) = pair(device);
        Ok(self
            .query_opt(
                "SELECT 1 FROM group_roster WHERE group_id = $1 AND username = $2 AND device = $3",
                &[&group.as_bytes(), &user, &dev],
            )
            .await?
            .is_some())
    }

    async fn set_roster(
        &mut self,
        group: &GroupId,
        devices: &[DeviceAddr],
    ) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM group_roster WHERE group_id = $1",
            &[&group.as_bytes()],
        )
        .await?;
        // One statement, however large the roster.
        let (users, devs): (Vec<&str>, Vec<String>) = devices.iter().map(pair).unzip();
        self.execute(
            "INSERT INTO group_roster (group_id, username, device)
             SELECT $1, u, d FROM UNNEST($2::text[], $3::text[]) AS r(u, d)
             ON CONFLICT DO NOTHING",
            &[&group.as_bytes(), &users, &devs],
        )
        .await?;
        Ok(())
    }

    async fn store_message(&mut self, m: NewMessage<'_>) -> Result<u64, StorageError> {
        // Ids come from a sequence: never reused, even after a delete.
        let (user, dev) = pair(m.sender);
        let kind = match m.kind {
            QueuedKind::Group => KIND_GROUP,
            QueuedKind::Welcome => KIND_WELCOME,
        };
        let row = self
            .query_opt(
                "INSERT INTO messages (group_id, seq, sender_user, sender_device, kind, data,
                 accepted_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                &[
                    &m.group.as_bytes(),
                    &to_i64(m.seq),
                    &user,
                    &dev,
                    &kind,
                    &m.data,
                    &to_i64(m.accepted_at),
                ],
            )
            .await?
            .ok_or_else(|| StorageError::new("no id for a stored message"))?;
        Ok(to_u64(row.get(0)))
    }

    async fn enqueue(
        &mut self,
        device: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<QueueUsage, StorageError> {
        let (user, dev) = pair(device);
        let size = to_i64(entry.size);
        self.execute(
            "INSERT INTO queue (username, device, message_id, size) VALUES ($1, $2, $3, $4)",
            &[&user, &dev, &to_i64(entry.message_id), &size],
        )
        .await?;
        let row = self
            .query_opt(
                "INSERT INTO device_queues (username, device, count, bytes) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (username, device) DO UPDATE
                 SET count = device_queues.count + 1, bytes = device_queues.bytes + EXCLUDED.bytes
                 RETURNING count, bytes",
                &[&user, &dev, &size],
            )
            .await?
            .ok_or_else(|| StorageError::new("no queue usage"))?;
        Ok(QueueUsage {
            count: to_u64(row.get(0)),
            bytes: to_u64(row.get(1)),
        })
    }

    async fn enqueue_roster(
        &mut self,
        group: &GroupId,
        except: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<Vec<(DeviceAddr, QueueUsage)>, StorageError> {
        let (user, dev) = pair(except);
        let (id, size) = (to_i64(entry.message_id), to_i64(entry.size));
        self.execute(
            "INSERT INTO queue (username, device, message_id, size)
             SELECT username, device, $1, $2 FROM group_roster
             WHERE group_id = $3 AND NOT (username = $4 AND device = $5)",
            &[&id, &size, &group.as_bytes(), &user, &dev],
        )
        .await?;
        let rows = self
            .query(
                "INSERT INTO device_queues (username, device, count, bytes)
                 SELECT username, device, 1, $1 FROM group_roster
                 WHERE group_id = $2 AND NOT (username = $3 AND device = $4)
                 ON CONFLICT (username, device) DO UPDATE
                 SET count = device_queues.count + 1, bytes = device_queues.bytes + EXCLUDED.bytes
                 RETURNING username, device, count, bytes",
                &[&size, &group.as_bytes(), &user, &dev],
            )
            .await?;
        let mut queued = Vec::with_capacity(rows.len());
        for row in rows {
            let usage = QueueUsage {
                count: to_u64(row.get(2)),
                bytes: to_u64(row.get(3)),
            };
            // A roster row the operator broke is queued for but cannot be woken or held to
            // its quota; it must not stop the group.
            match addr(row.get(0), row.get(1)) {
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
                 WHERE q.username = $1 AND q.device = $2 AND q.message_id <> $3
                 GROUP BY m.sender_user, m.sender_device
                 ORDER BY COUNT(*) DESC, m.sender_user COLLATE \"C\", m.sender_device COLLATE \"C\"
                 LIMIT 1"
            }
            Weight::Bytes => {
                "SELECT m.sender_user, m.sender_device FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.username = $1 AND q.device = $2 AND q.message_id <> $3
                 GROUP BY m.sender_user, m.sender_device
                 ORDER BY SUM(q.size) DESC, m.sender_user COLLATE \"C\", m.sender_device COLLATE \"C\"
                 LIMIT 1"
            }
        };
        let (user, dev) = pair(device);
        let row = self.query_opt(sql, &[&user, &dev, &to_i64(except)]).await?;
        row.map(|r| addr(r.get(0), r.get(1))).transpose()
    }

    async fn entries_from(
        &mut self,
        device: &DeviceAddr,
        sender: &DeviceAddr,
        except: u64,
    ) -> Result<Vec<QueueEntry>, StorageError> {
        let (user, dev) = pair(device);
        let (sender_user, sender_dev) = pair(sender);
        let rows = self
            .query(
                "SELECT q.message_id, q.size FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.username = $1 AND q.device = $2 AND q.message_id <> $3
                 AND m.sender_user = $4 AND m.sender_device = $5 ORDER BY q.message_id",
                &[&user, &dev, &to_i64(except), &sender_user, &sender_dev],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| QueueEntry {
                message_id: to_u64(r.get(0)),
                size: to_u64(r.get(1)),
            })
            .collect())
    }

    async fn remove_entry(
        &mut self,
        device: &DeviceAddr,
        message_id: u64,
    ) -> Result<Option<QueueEntry>, StorageError> {
        let (user, dev) = pair(device);
        let row = self
            .query_opt(
                "DELETE FROM queue WHERE id = (SELECT id FROM queue
                 WHERE username = $1 AND device = $2 AND message_id = $3 LIMIT 1) RETURNING size",
                &[&user, &dev, &to_i64(message_id)],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let size: i64 = row.get(0);
        self.execute(
            "UPDATE device_queues SET count = GREATEST(count - 1, 0),
             bytes = GREATEST(bytes - $3, 0) WHERE username = $1 AND device = $2",
            &[&user, &dev, &size],
        )
        .await?;
        Ok(Some(QueueEntry {
            message_id,
            size: to_u64(size),
        }))
    }

    async fn count_dropped(&mut self, device: &DeviceAddr, n: u64) -> Result<(), StorageError> {
        if n == 0 {
            return Ok(());
        }
        let (user, dev) = pair(device);
        self.execute(
            "UPDATE device_queues SET dropped_total = dropped_total + $3
             WHERE username = $1 AND device = $2",
            &[&user, &dev, &to_i64(n)],
        )
        .await?;
        Ok(())
    }

    async fn delete_if_unqueued(&mut self, message_id: u64) -> Result<(), StorageError> {
        self.execute(
            "DELETE FROM messages WHERE id = $1
             AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = $1)",
            &[&to_i64(message_id)],
        )
        .await?;
        Ok(())
    }

    async fn remove_entries(
        &mut self,
        entries: &[(&DeviceAddr, u64)],
    ) -> Result<Vec<bool>, StorageError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (mut users, mut devs, mut ids, mut ks) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, (device, id)) in entries.iter().enumerate() {
            let (user, dev) = pair(device);
            users.push(user);
            devs.push(dev);
            ids.push(to_i64(*id));
            ks.push(i64::try_from(k).unwrap_or(i64::MAX));
        }
        // One round trip: the entries go, their devices' counters follow, and each of their
        // messages goes too unless an entry this statement keeps still refers to it (the
        // statement's subqueries see the queue as it was before it).
        let rows = self
            .query(
                "WITH a AS (
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                         AS a(u, d, id, k)
                 ), gone AS (
                     DELETE FROM queue q USING a
                     WHERE q.username = a.u AND q.device = a.d AND q.message_id = a.id
                     RETURNING a.k, q.username, q.device, q.message_id, q.size
                 ), counters AS (
                     UPDATE device_queues dq
                     SET count = GREATEST(dq.count - s.n, 0),
                         bytes = GREATEST(dq.bytes - s.b, 0)
                     FROM (SELECT username, device, COUNT(*) AS n, SUM(size)::bigint AS b
                           FROM gone GROUP BY username, device) s
                     WHERE dq.username = s.username AND dq.device = s.device
                 ), unqueued AS (
                     DELETE FROM messages m
                     WHERE m.id IN (SELECT message_id FROM gone)
                     AND NOT EXISTS (
                         SELECT 1 FROM queue q WHERE q.message_id = m.id
                         AND NOT EXISTS (
                             SELECT 1 FROM gone g WHERE g.username = q.username
                             AND g.device = q.device AND g.message_id = q.message_id))
                 )
                 SELECT k FROM gone",
                &[&users, &devs, &ids, &ks],
            )
            .await?;
        let mut removed = vec![false; entries.len()];
        for row in rows {
            let k: i64 = row.get(0);
            if let Some(was) = usize::try_from(k).ok().and_then(|k| removed.get_mut(k)) {
                *was = true;
            }
        }
        Ok(removed)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StorageError> {
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::new("a statement of the transaction failed"));
        }
        let client = self
            .client
            .take()
            .ok_or_else(|| StorageError::new("transaction already committed"))?;
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Whatever state the failed COMMIT left, this connection is not reused.
                drop(Object::take(client));
                Err(e.into())
            }
        }
    }
}

#[async_trait]
impl DeliveryStore for PostgresStorage {
    async fn begin(&self) -> Result<Box<dyn DeliveryTx + '_>, StorageError> {
        let client = self.client().await?;
        let tx = PgTx {
            client: Some(client),
            failed: std::sync::atomic::AtomicBool::new(false),
        };
        let begun = tx
            .client()?
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await;
        tx.note(begun)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DELIVERY_LOCK])
            .await?;
        Ok(Box::new(tx))
    }

    async fn fetch(
        &self,
        device: &DeviceAddr,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<QueueResponse, StorageError> {
        let mut client = self.client().await?;
        // One snapshot: the messages and the dropped count agree.
        let snapshot = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let (user, dev) = pair(device);
        let rows = snapshot
            .query(
                "SELECT m.id, m.group_id, m.seq, m.sender_user, m.sender_device, m.kind, m.data,
                        m.accepted_at
                 FROM queue q JOIN messages m ON m.id = q.message_id
                 WHERE q.username = $1 AND q.device = $2 AND q.message_id > $4
                 ORDER BY q.message_id LIMIT $3",
                &[&user, &dev, &i64::from(limit), &to_i64(after)],
            )
            .await?;
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for r in rows {
            let (id, data): (i64, Vec<u8>) = (r.get(0), r.get(6));
            if !messages.is_empty() && bytes.saturating_add(data.len()) > max_bytes {
                break;
            }
            // A row the operator broke is left out (and logged), not allowed to stop the
            // device from receiving everything after it.
            let group: Vec<u8> = r.get(1);
            let (Ok(group_id), Ok(sender)) =
                (GroupId::from_bytes(&group), addr(r.get(3), r.get(4)))
            else {
                tracing::warn!(message = id, "skipping a queued message with a corrupt row");
                continue;
            };
            bytes = bytes.saturating_add(data.len());
            messages.push(QueuedMessage {
                id: to_u64(id),
                group_id,
                seq: to_u64(r.get(2)),
                sender,
                kind: if r.get::<_, i16>(5) == KIND_WELCOME {
                    QueuedKind::Welcome
                } else {
                    QueuedKind::Group
                },
                message: Bytes(data),
                accepted_at: to_u64(r.get(7)),
            });
        }
        let dropped = snapshot
            .query_opt(
                "SELECT dropped_total FROM device_queues WHERE username = $1 AND device = $2",
                &[&user, &dev],
            )
            .await?;
        snapshot.commit().await?;
        Ok(QueueResponse {
            messages,
            dropped_total: dropped.map_or(0, |r| to_u64(r.get(0))),
        })
    }

    async fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError> {
        let mut client = self.client().await?;
        let tx = read_committed(&mut client).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DELIVERY_LOCK])
            .await?;
        let cutoff = to_i64(cutoff);
        // Every queue entry that expires unread is a message its device will never get.
        tx.execute(
            "UPDATE device_queues d SET dropped_total = dropped_total + (
                SELECT COUNT(*) FROM queue q JOIN messages m ON m.id = q.message_id
                WHERE q.username = d.username AND q.device = d.device AND m.accepted_at < $1)",
            &[&cutoff],
        )
        .await?;
        let deleted = tx
            .execute("DELETE FROM messages WHERE accepted_at < $1", &[&cutoff])
            .await?;
        tx.execute(
            "UPDATE device_queues d SET
                count = (SELECT COUNT(*) FROM queue q
                         WHERE q.username = d.username AND q.device = d.device),
                bytes = (SELECT COALESCE(SUM(size), 0) FROM queue q
                         WHERE q.username = d.username AND q.device = d.device)",
            &[],
        )
        .await?;
        tx.execute("DELETE FROM sends WHERE accepted_at < $1", &[&cutoff])
            .await?;
        tx.execute(
            "DELETE FROM used_challenges WHERE expires_at <= $1",
            &[&to_i64(now)],
        )
        .await?;
        tx.execute("DELETE FROM tokens WHERE expires_at <= $1", &[&to_i64(now)])
            .await?;
        tx.execute("DELETE FROM links WHERE expires_at <= $1", &[&to_i64(now)])
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}
