//! akd's [`Database`] over the server's [`KtStore`]: akd's records are encoded with postcard
//! and stored opaquely, tree records by their binary id and value states by (label, epoch),
//! so every backend that implements the store holds the log.

use crate::storage::{KtState, KtStore, Storage, StorageError};
use akd::errors::StorageError as AkdStorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;

/// The log's records in the server's storage.
#[derive(Clone)]
pub struct KtDatabase {
    storage: Arc<dyn Storage>,
}

impl KtDatabase {
    /// The records kept in `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        KtDatabase { storage }
    }

    fn store(&self) -> &dyn KtStore {
        &*self.storage
    }

    /// Every state of each of `labels`, decoded, by label.
    async fn states(
        &self,
        labels: &[Vec<u8>],
    ) -> Result<HashMap<Vec<u8>, Vec<ValueState>>, AkdStorageError> {
        let mut by_label: HashMap<Vec<u8>, Vec<ValueState>> = HashMap::new();
        for row in self.store().kt_states(labels).await.map_err(failed)? {
            let state: ValueState = decode(&row.data)?;
            by_label.entry(row.label).or_default().push(state);
        }
        Ok(by_label)
    }
}

fn failed(e: StorageError) -> AkdStorageError {
    AkdStorageError::Connection(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AkdStorageError> {
    postcard::to_stdvec(value).map_err(|e| AkdStorageError::Other(format!("encoding: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AkdStorageError> {
    postcard::from_bytes(bytes)
        .map_err(|e| AkdStorageError::Other(format!("a stored record does not decode: {e}")))
}

/// The state `flag` asks for among `states` (one label's).
fn select(states: &[ValueState], flag: ValueStateRetrievalFlag) -> Option<&ValueState> {
    match flag {
        ValueStateRetrievalFlag::MaxEpoch => states.iter().max_by_key(|s| s.epoch),
        ValueStateRetrievalFlag::MinEpoch => states.iter().min_by_key(|s| s.epoch),
        ValueStateRetrievalFlag::SpecificVersion(v) => states.iter().find(|s| s.version == v),
        ValueStateRetrievalFlag::SpecificEpoch(e) => states.iter().find(|s| s.epoch == e),
        ValueStateRetrievalFlag::LeqEpoch(e) => states
            .iter()
            .filter(|s| s.epoch <= e)
            .max_by_key(|s| s.epoch),
    }
}

#[async_trait]
impl Database for KtDatabase {
    async fn set(&self, record: DbRecord) -> Result<(), AkdStorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), AkdStorageError> {
        let mut nodes = Vec::new();
        let mut states = Vec::new();
        for record in records {
            match &record {
                DbRecord::ValueState(state) => states.push(KtState {
                    label: state.username.to_vec(),
                    epoch: state.epoch,
                    data: encode(state)?,
                }),
                DbRecord::Azks(_) | DbRecord::TreeNode(_) => {
                    nodes.push((record.get_full_binary_id(), encode(&record)?));
                }
            }
        }
        self.store().kt_write(nodes, states).await.map_err(failed)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, AkdStorageError> {
        self.batch_get::<St>(std::slice::from_ref(id))
            .await?
            .pop()
            .ok_or_else(|| AkdStorageError::NotFound(format!("{:?} {id:?}", St::data_type())))
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, AkdStorageError> {
        let binary: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
        if St::data_type() == StorageType::ValueState {
            let mut keys = Vec::with_capacity(binary.len());
            for id in &binary {
                let ValueStateKey(label, epoch) =
                    ValueState::key_from_full_binary(id).map_err(AkdStorageError::Other)?;
                keys.push((label, epoch));
            }
            let labels: Vec<Vec<u8>> = keys.iter().map(|(l, _)| l.clone()).collect();
            let states = self.states(&labels).await?;
            return Ok(keys
                .iter()
                .filter_map(|(label, epoch)| states.get(label)?.iter().find(|s| s.epoch == *epoch))
                .map(|s| DbRecord::ValueState(s.clone()))
                .collect());
        }
        let mut out = Vec::with_capacity(binary.len());
        for (_, data) in self.store().kt_nodes(&binary).await.map_err(failed)? {
            out.push(decode(&data)?);
        }
        Ok(out)
    }

    async fn get_user_data(&self, label: &AkdLabel) -> Result<KeyData, AkdStorageError> {
        let mut states = self
            .states(std::slice::from_ref(&label.0))
            .await?
            .remove(&label.0)
            .unwrap_or_default();
        if states.is_empty() {
            return Err(AkdStorageError::NotFound(format!("ValueState {label:?}")));
        }
        states.sort_by_key(|s| s.epoch);
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        label: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, AkdStorageError> {
        let states = self.states(std::slice::from_ref(&label.0)).await?;
        states
            .get(&label.0)
            .and_then(|s| select(s, flag))
            .cloned()
            .ok_or_else(|| AkdStorageError::NotFound(format!("ValueState {label:?}")))
    }

    async fn get_user_state_versions(
        &self,
        labels: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, AkdStorageError> {
        let raw: Vec<Vec<u8>> = labels.iter().map(|l| l.0.clone()).collect();
        let states = self.states(&raw).await?;
        Ok(states
            .values()
            .filter_map(|s| select(s, flag))
            .map(|s| (s.username.clone(), (s.version, s.value.clone())))
            .collect())
    }
}
