//! The key-transparency log's records in memory.

use super::MemoryStorage;
use crate::storage::{KtEpoch, KtPublisher, KtState, KtStore, StorageError};
use async_trait::async_trait;
use sotto_proto::Username;
use std::collections::{BTreeMap, HashMap};

/// akd's tree records by id, and its value states by label and epoch.
#[derive(Default)]
pub(super) struct KtRecords {
    nodes: HashMap<Vec<u8>, Vec<u8>>,
    states: HashMap<Vec<u8>, BTreeMap<u64, Vec<u8>>>,
    epochs: BTreeMap<u64, KtEpoch>,
    /// Cosignatures by epoch and witness, as (time, line).
    cosignatures: BTreeMap<u64, BTreeMap<String, (u64, String)>>,
}

impl MemoryStorage {
    fn kt(&self) -> std::sync::MutexGuard<'_, KtRecords> {
        // Maps of bytes hold no invariant a panic could break.
        self.kt
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl KtStore for MemoryStorage {
    async fn kt_write(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        states: Vec<KtState>,
    ) -> Result<(), StorageError> {
        let mut kt = self.kt();
        kt.nodes.extend(nodes);
        for s in states {
            kt.states
                .entry(s.label)
                .or_default()
                .insert(s.epoch, s.data);
        }
        Ok(())
    }

    async fn kt_nodes(&self, ids: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let kt = self.kt();
        Ok(ids
            .iter()
            .filter_map(|id| kt.nodes.get(id).map(|n| (id.clone(), n.clone())))
            .collect())
    }

    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtState>, StorageError> {
        let kt = self.kt();
        let mut out = Vec::new();
        for label in labels {
            for (epoch, data) in kt.states.get(label).into_iter().flatten() {
                out.push(KtState {
                    label: label.clone(),
                    epoch: *epoch,
                    data: data.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn kt_pending(&self, limit: usize) -> Result<Vec<(u64, Option<Username>)>, StorageError> {
        let s = self.state.lock().await;
        Ok(s.kt_pending
            .iter()
            .take(limit)
            .map(|(id, user)| (*id, Some(user.clone())))
            .collect())
    }

    async fn kt_published(&self, ids: &[u64]) -> Result<(), StorageError> {
        let mut s = self.state.lock().await;
        for id in ids {
            s.kt_pending.remove(id);
        }
        Ok(())
    }

    async fn kt_publisher(&self) -> Result<Option<KtPublisher>, StorageError> {
        // One process owns this storage.
        Ok(Some(KtPublisher::sole()))
    }

    async fn kt_record_epoch(&self, epoch: &KtEpoch) -> Result<(), StorageError> {
        self.kt()
            .epochs
            .entry(epoch.epoch)
            .or_insert_with(|| epoch.clone());
        Ok(())
    }

    async fn kt_epoch(&self, epoch: u64) -> Result<Option<KtEpoch>, StorageError> {
        Ok(self.kt().epochs.get(&epoch).cloned())
    }

    async fn kt_root(&self, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.kt().epochs.get(&epoch).map(|e| e.root.clone()))
    }

    async fn kt_first_epoch(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.kt().epochs.keys().next().copied())
    }

    async fn kt_cosign(
        &self,
        epoch: u64,
        witness: &str,
        time: u64,
        line: &str,
    ) -> Result<(), StorageError> {
        let mut kt = self.kt();
        if !kt.epochs.contains_key(&epoch) {
            return Err(StorageError::new(format!("epoch {epoch} is not recorded")));
        }
        let kept = kt
            .cosignatures
            .entry(epoch)
            .or_default()
            .entry(witness.to_owned())
            .or_insert_with(|| (time, line.to_owned()));
        if time > kept.0 {
            *kept = (time, line.to_owned());
        }
        Ok(())
    }

    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<(String, String)>, StorageError> {
        Ok(self
            .kt()
            .cosignatures
            .get(&epoch)
            .into_iter()
            .flat_map(|w| w.iter().map(|(w, (_, line))| (w.clone(), line.clone())))
            .collect())
    }
}
