//! Ordered delivery in memory: a transaction works on a copy of the state under the lock and
//! swaps it in at commit. Only the primitive operations are here; the rules are in
//! [`crate::delivery`].

use async_trait::async_trait;
use sotto_proto::api::{QueueResponse, QueuedMessage, SendResponse};
use sotto_proto::{Bytes, DeviceAddr, GroupId};
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::OwnedMutexGuard;

use super::{MemoryStorage, State, StoredMessage, count_of};
use crate::storage::{
    DeliveryStore, DeliveryTx, GroupState, NewMessage, QueueEntry, QueueUsage, StorageError, Weight,
};

/// A delivery transaction: the lock, and the copy of the state it changes.
struct MemoryTx {
    guard: OwnedMutexGuard<State>,
    work: State,
}

#[async_trait]
impl DeliveryTx for MemoryTx {
    async fn sent(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
    ) -> Result<Option<SendResponse>, StorageError> {
        Ok(self
            .work
            .sends
            .get(&(sender.clone(), client_id.to_owned()))
            .cloned())
    }

    async fn record_send(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
        response: &SendResponse,
    ) -> Result<(), StorageError> {
        self.work
            .sends
            .insert((sender.clone(), client_id.to_owned()), response.clone());
        Ok(())
    }

    async fn devices_exist(&mut self, devices: &[&DeviceAddr]) -> Result<bool, StorageError> {
        Ok(devices.iter().all(|d| self.work.devices.contains_key(*d)))
    }

    async fn group(&mut self, group: &GroupId) -> Result<Option<GroupState>, StorageError> {
        Ok(self.work.groups.get(group).copied())
    }

    async fn set_group(&mut self, group: &GroupId, state: GroupState) -> Result<(), StorageError> {
        self.work.groups.insert(group.clone(), state);
        Ok(())
    }

    async fn in_roster(
        &mut self,
        group: &GroupId,
        device: &DeviceAddr,
    ) -> Result<bool, StorageError> {
        Ok(self
            .work
            .rosters
            .get(group)
            .is_some_and(|r| r.contains(device)))
    }

    async fn set_roster(
        &mut self,
        group: &GroupId,
        devices: &[DeviceAddr],
    ) -> Result<(), StorageError> {
        self.work
            .rosters
            .insert(group.clone(), devices.iter().cloned().collect());
        Ok(())
    }

    async fn store_message(&mut self, m: NewMessage<'_>) -> Result<u64, StorageError> {
        let id = self
            .work
            .last_message_id
            .checked_add(1)
            .ok_or_else(|| StorageError::new("message ids exhausted"))?;
        self.work.last_message_id = id;
        self.work.messages.insert(
            id,
            StoredMessage {
                group: m.group.clone(),
                seq: m.seq,
                sender: m.sender.clone(),
                kind: m.kind,
                data: m.data.into(),
                accepted_at: m.accepted_at,
            },
        );
        Ok(id)
    }

    async fn enqueue(
        &mut self,
        device: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<QueueUsage, StorageError> {
        let q = self.work.queues.entry(device.clone()).or_default();
        if q.entries.insert(entry.message_id, entry.size).is_none() {
            q.usage.count = q.usage.count.saturating_add(1);
            q.usage.bytes = q.usage.bytes.saturating_add(entry.size);
        }
        Ok(q.usage)
    }

    async fn enqueue_roster(
        &mut self,
        group: &GroupId,
        except: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<Vec<(DeviceAddr, QueueUsage)>, StorageError> {
        let roster: Vec<DeviceAddr> = self
            .work
            .rosters
            .get(group)
            .into_iter()
            .flatten()
            .filter(|d| *d != except)
            .cloned()
            .collect();
        let mut queued = Vec::with_capacity(roster.len());
        for device in roster {
            let usage = self.enqueue(&device, entry).await?;
            queued.push((device, usage));
        }
        Ok(queued)
    }

    async fn heaviest_sender(
        &mut self,
        device: &DeviceAddr,
        weight: Weight,
        except: u64,
    ) -> Result<Option<DeviceAddr>, StorageError> {
        let Some(q) = self.work.queues.get(device) else {
            return Ok(None);
        };
        let mut load: BTreeMap<&DeviceAddr, u64> = BTreeMap::new();
        for (id, size) in q.entries.iter().filter(|(id, _)| **id != except) {
            let Some(m) = self.work.messages.get(id) else {
                continue;
            };
            let w = load.entry(&m.sender).or_default();
            *w = w.saturating_add(match weight {
                Weight::Entries => 1,
                Weight::Bytes => *size,
            });
        }
        // Ties go to the smallest address (the map iterates in order; a later one must weigh
        // strictly more to win).
        let mut heaviest: Option<(&DeviceAddr, u64)> = None;
        for (d, w) in load {
            if heaviest.is_none_or(|(_, most)| w > most) {
                heaviest = Some((d, w));
            }
        }
        Ok(heaviest.map(|(d, _)| d.clone()))
    }

    async fn entries_from(
        &mut self,
        device: &DeviceAddr,
        sender: &DeviceAddr,
        except: u64,
    ) -> Result<Vec<QueueEntry>, StorageError> {
        let Some(q) = self.work.queues.get(device) else {
            return Ok(Vec::new());
        };
        Ok(q.entries
            .iter()
            .filter(|(id, _)| **id != except)
            .filter(|(id, _)| {
                self.work
                    .messages
                    .get(id)
                    .is_some_and(|m| &m.sender == sender)
            })
            .map(|(&message_id, &size)| QueueEntry { message_id, size })
            .collect())
    }

    async fn remove_entry(
        &mut self,
        device: &DeviceAddr,
        message_id: u64,
    ) -> Result<Option<QueueEntry>, StorageError> {
        let Some(q) = self.work.queues.get_mut(device) else {
            return Ok(None);
        };
        let Some(size) = q.entries.remove(&message_id) else {
            return Ok(None);
        };
        q.usage.count = q.usage.count.saturating_sub(1);
        q.usage.bytes = q.usage.bytes.saturating_sub(size);
        Ok(Some(QueueEntry { message_id, size }))
    }

    async fn count_dropped(&mut self, device: &DeviceAddr, n: u64) -> Result<(), StorageError> {
        if n > 0 {
            let q = self.work.queues.entry(device.clone()).or_default();
            q.dropped_total = q.dropped_total.saturating_add(n);
        }
        Ok(())
    }

    async fn delete_if_unqueued(&mut self, message_id: u64) -> Result<(), StorageError> {
        let queued = self
            .work
            .queues
            .values()
            .any(|q| q.entries.contains_key(&message_id));
        if !queued {
            self.work.messages.remove(&message_id);
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StorageError> {
        let MemoryTx { mut guard, work } = *self;
        *guard = work;
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for MemoryStorage {
    async fn begin(&self) -> Result<Box<dyn DeliveryTx + '_>, StorageError> {
        let guard = self.state.clone().lock_owned().await;
        let work = guard.clone();
        Ok(Box::new(MemoryTx { guard, work }))
    }

    async fn fetch(
        &self,
        device: &DeviceAddr,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<QueueResponse, StorageError> {
        let s = self.state.lock().await;
        let Some(q) = s.queues.get(device) else {
            return Ok(QueueResponse {
                messages: Vec::new(),
                dropped_total: 0,
            });
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        let later = (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded);
        for id in q
            .entries
            .range(later)
            .map(|(id, _)| id)
            .take(limit as usize)
        {
            let Some(m) = s.messages.get(id) else {
                tracing::warn!(message = id, "skipping a queue entry without its message");
                continue;
            };
            if !messages.is_empty() && bytes.saturating_add(m.data.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(m.data.len());
            messages.push(QueuedMessage {
                id: *id,
                group_id: m.group.clone(),
                seq: m.seq,
                sender: m.sender.clone(),
                kind: m.kind,
                message: Bytes(m.data.to_vec()),
                accepted_at: m.accepted_at,
            });
        }
        Ok(QueueResponse {
            messages,
            dropped_total: q.dropped_total,
        })
    }

    async fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError> {
        let mut s = self.state.lock().await;
        let expired: BTreeSet<u64> = s
            .messages
            .iter()
            .filter(|(_, m)| m.accepted_at < cutoff)
            .map(|(id, _)| *id)
            .collect();
        for q in s.queues.values_mut() {
            let gone: Vec<(u64, u64)> = q
                .entries
                .iter()
                .filter(|(id, _)| expired.contains(id))
                .map(|(&id, &size)| (id, size))
                .collect();
            for (id, size) in gone {
                q.entries.remove(&id);
                q.usage.count = q.usage.count.saturating_sub(1);
                q.usage.bytes = q.usage.bytes.saturating_sub(size);
                q.dropped_total = q.dropped_total.saturating_add(1);
            }
        }
        s.messages.retain(|id, _| !expired.contains(id));
        s.sends.retain(|_, r| r.accepted_at >= cutoff);
        s.used_challenges.retain(|_, expires_at| *expires_at > now);
        s.tokens.retain(|_, (_, expires_at)| *expires_at > now);
        s.links.retain(|_, l| l.expires_at > now);
        Ok(count_of(expired.len()))
    }
}
