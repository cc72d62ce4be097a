//! Key transparency: an akd directory over the server's own storage, in which every
//! account's value is the hash of its signed device list (label: the username).
//!
//! An account created is queued for the log in the same transaction
//! ([`crate::storage::KtStore::kt_pending`]). One publisher (one process; on a shared
//! database, whichever node holds its lock) takes the queue in epochs: at most one every
//! [`KtConfig::epoch_interval`], of at most [`KtConfig::epoch_changes`] accounts. A value
//! already in the log is not published again, so a publisher that dies between publishing
//! and emptying the queue changes nothing when it starts over.
//!
//! Each epoch's root is recorded and signed as a checkpoint that witnesses cosign
//! (`checkpoints.rs`).

mod checkpoints;
mod database;

pub use checkpoints::CosignError;
pub use database::KtDatabase;

use crate::storage::{Storage, StorageError};
use akd::directory::ReadOnlyDirectory;
use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::types::ValueStateRetrievalFlag;
use akd::storage::{Database, StorageManager};
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, Directory};
use async_trait::async_trait;
use sotto_proto::kt::{KtConfiguration, LookupResponse, device_list_value};
use sotto_proto::{Bytes, Username};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A directory over `db` for one publish (made under the publisher's lock: over a storage
/// with no log yet, akd writes an empty one). Its reads go through a cache that lives only
/// as long as it, so that akd's preloading fetches what the publish needs in a few batches,
/// and nothing cached can go stale when another node publishes.
pub async fn directory<Db: Database + 'static>(
    db: Db,
    vrf: Vrf,
) -> Result<Directory<KtConfiguration, Db, Vrf>, KtError> {
    Ok(Directory::new(
        StorageManager::new(db, None, None, None),
        vrf,
        AzksParallelismConfig::disabled(),
    )
    .await?)
}

/// A directory over `db` for one read (a lookup, the newest epoch), cached the same way. It
/// never writes: over a storage with no log it fails.
pub async fn reader<Db: Database + 'static>(
    db: Db,
    vrf: Vrf,
) -> Result<ReadOnlyDirectory<KtConfiguration, Db, Vrf>, KtError> {
    Ok(ReadOnlyDirectory::new(
        StorageManager::new(db, None, None, None),
        vrf,
        AzksParallelismConfig::disabled(),
    )
    .await?)
}

/// How epochs are made, and who may cosign them.
#[derive(Debug, Clone)]
pub struct KtConfig {
    /// The shortest time between two epochs (default one second).
    pub epoch_interval: Duration,
    /// The most accounts one epoch publishes (default 1,000).
    pub epoch_changes: usize,
    /// The witnesses whose cosignatures the server keeps and serves (`--witness`).
    pub witnesses: Vec<sotto_proto::checkpoint::WitnessKey>,
}

impl Default for KtConfig {
    fn default() -> Self {
        KtConfig {
            epoch_interval: Duration::from_secs(1),
            epoch_changes: 1000,
            witnesses: Vec::new(),
        }
    }
}

/// A VRF secret held in memory (the server's comes from its storage).
#[derive(Clone)]
pub struct Vrf(Arc<zeroize::Zeroizing<[u8; 32]>>);

impl Vrf {
    /// The VRF of this secret key.
    pub fn new(secret: zeroize::Zeroizing<[u8; 32]>) -> Self {
        Vrf(Arc::new(secret))
    }
}

#[async_trait]
impl VRFKeyStorage for Vrf {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// The root of a lookup answer this server made.
fn root_of(found: &LookupResponse) -> Result<[u8; 32], KtError> {
    found
        .root_hash
        .as_slice()
        .try_into()
        .map_err(|_| KtError("a lookup answer without a 32-byte root".into()))
}

/// The log failed: its storage, or akd itself.
#[derive(Debug, thiserror::Error)]
#[error("key transparency: {0}")]
pub struct KtError(String);

impl From<StorageError> for KtError {
    fn from(e: StorageError) -> Self {
        KtError(e.to_string())
    }
}

impl From<akd::errors::AkdError> for KtError {
    fn from(e: akd::errors::AkdError) -> Self {
        KtError(e.to_string())
    }
}

/// The server's key-transparency log.
pub struct Kt {
    db: KtDatabase,
    vrf: Vrf,
    storage: Arc<dyn Storage>,
    vrf_public_key: [u8; 32],
    config: KtConfig,
    /// The newest epoch this process published.
    published: tokio::sync::watch::Sender<u64>,
    /// The key that signs checkpoints.
    signer: checkpoints::CheckpointSigner,
    /// Bumped at each cosignature this process kept.
    cosigned: tokio::sync::watch::Sender<u64>,
}

/// How long a lookup waits for a newer epoch than the one the client has seen.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(5);

impl Kt {
    /// The log kept in `storage` (created empty at epoch 0 if it has none).
    pub async fn open(storage: Arc<dyn Storage>, config: KtConfig) -> Result<Self, KtError> {
        let vrf = Vrf::new(storage.kt_vrf_key().await?);
        let vrf_public_key = *vrf
            .get_vrf_public_key()
            .await
            .map_err(|e| KtError(e.to_string()))?
            .as_bytes();
        let signer = checkpoints::CheckpointSigner::new(
            &*storage.kt_checkpoint_key().await?,
            &vrf_public_key,
        );
        let db = KtDatabase::new(storage.clone());
        // The empty log is written by one process only (nodes may start together): the
        // first directory made over a storage without one writes it.
        let mut publisher = None;
        for _ in 0..600 {
            publisher = storage.kt_publisher().await?;
            if publisher.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if publisher.is_none() {
            return Err(KtError(
                "another node has held the key-transparency publisher's lock for 30 s".into(),
            ));
        }
        let dir = directory(db.clone(), vrf.clone()).await?;
        let epoch = dir.get_epoch_hash().await?.epoch();
        let kt = Kt {
            db,
            vrf,
            storage,
            vrf_public_key,
            config,
            published: tokio::sync::watch::Sender::new(epoch),
            signer,
            cosigned: tokio::sync::watch::Sender::new(0),
        };
        kt.record_newest(&dir).await?;
        Ok(kt)
    }

    /// The VRF public key clients check lookups with.
    pub fn vrf_public_key(&self) -> [u8; 32] {
        self.vrf_public_key
    }

    /// The newest epoch.
    pub async fn epoch(&self) -> Result<u64, KtError> {
        Ok(self.reader().await?.get_epoch_hash().await?.epoch())
    }

    async fn reader(&self) -> Result<ReadOnlyDirectory<KtConfiguration, KtDatabase, Vrf>, KtError> {
        reader(self.db.clone(), self.vrf.clone()).await
    }

    /// A proof of `user`'s current value at the newest epoch, waiting up to `wait` for an
    /// epoch newer than `after` if the newest is not, and then (within the same `wait`) for
    /// the answer's epoch to carry `cosigned` cosignatures; if the user is not in the log,
    /// the newest epoch.
    pub async fn lookup(
        &self,
        user: &Username,
        after: Option<u64>,
        cosigned: usize,
        wait: Duration,
    ) -> Result<Result<LookupResponse, u64>, KtError> {
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(wait).unwrap_or(now);
        if let Some(after) = after {
            self.wait_past(after, wait).await?;
        }
        let mut more = self.cosigned.subscribe();
        let mut found = self.lookup_now(user).await?;
        // More cosignatures than there are witnesses never come; and a user not in the log
        // has no checkpoint to wait for.
        if cosigned == 0 || cosigned > self.config.witnesses.len() {
            return Ok(found);
        }
        loop {
            let epoch = match &found {
                Ok(found) => found.epoch,
                Err(_) => return Ok(found),
            };
            if tokio::time::Instant::now() >= deadline
                || self.cosignature_count(epoch).await? >= cosigned
            {
                // With the cosignatures kept by now.
                if let Ok(found) = &mut found {
                    found.checkpoint = self.checkpoint(epoch, &root_of(found)?).await?;
                }
                return Ok(found);
            }
            // A cosignature kept by another node is seen at the next look.
            tokio::select! {
                _ = more.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
            // Past a newer epoch the answer is made again, at it.
            if self.epoch().await? != epoch {
                found = self.lookup_now(user).await?;
            }
        }
    }

    /// A proof of `user`'s current value at the newest epoch, or the newest epoch.
    async fn lookup_now(&self, user: &Username) -> Result<Result<LookupResponse, u64>, KtError> {
        let label = AkdLabel::from(user.as_str());
        // Only a user with a value in the log has a proof.
        let known = self
            .db
            .get_user_state_versions(
                std::slice::from_ref(&label),
                ValueStateRetrievalFlag::MaxEpoch,
            )
            .await
            .map_err(|e| KtError(e.to_string()))?;
        let reader = self.reader().await?;
        if known.is_empty() {
            return Ok(Err(reader.get_epoch_hash().await?.epoch()));
        }
        let (proof, epoch_hash) = reader.lookup(label).await?;
        let proof = akd::proto::specs::types::LookupProof::from(&proof);
        let proof =
            protobuf::Message::write_to_bytes(&proof).map_err(|e| KtError(e.to_string()))?;
        Ok(Ok(LookupResponse {
            epoch: epoch_hash.epoch(),
            root_hash: Bytes::from(epoch_hash.hash().to_vec()),
            proof: Bytes::from(proof),
            checkpoint: self
                .checkpoint(epoch_hash.epoch(), &epoch_hash.hash())
                .await?,
        }))
    }

    /// Waits up to `wait` until an epoch newer than `after` exists. Another node may publish
    /// it: the storage is read again every 100 ms as well.
    async fn wait_past(&self, after: u64, wait: Duration) -> Result<(), KtError> {
        let mut published = self.published.subscribe();
        let newer = async {
            while self.epoch().await? <= after {
                tokio::select! {
                    _ = published.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            Ok(())
        };
        // Past the wait, the answer is at the newest epoch there is.
        tokio::time::timeout(wait, newer).await.unwrap_or(Ok(()))
    }

    /// Publishes one epoch of the queued accounts whose value changed, if any are queued and
    /// this process may publish now. Returns the new epoch, if it made one. The newest epoch
    /// is recorded first if it is not (a failure after a publish left it so).
    pub async fn publish_pending(&self) -> Result<Option<u64>, KtError> {
        // The queue is looked at first: on a shared database the lock costs a connection.
        let queued = !self.storage.kt_pending(1).await?.is_empty();
        if !queued && self.storage.kt_root(self.epoch().await?).await?.is_some() {
            return Ok(None);
        }
        let Some(_publisher) = self.storage.kt_publisher().await? else {
            return Ok(None);
        };
        // Only `open` makes a log: a storage that lost its own is an error, not a new log.
        self.reader().await?;
        let dir = directory(self.db.clone(), self.vrf.clone()).await?;
        // Before another epoch can follow it.
        self.record_newest(&dir).await?;
        let pending = self.storage.kt_pending(self.config.epoch_changes).await?;
        if pending.is_empty() {
            return Ok(None);
        }
        let ids: Vec<u64> = pending.iter().map(|(id, _)| *id).collect();
        let mut values: HashMap<AkdLabel, AkdValue> = HashMap::new();
        for user in pending.into_iter().filter_map(|(id, user)| {
            if user.is_none() {
                tracing::warn!(id, "a key-transparency queue row names no valid user");
            }
            user
        }) {
            // An account the operator deleted has nothing to publish.
            if let Some(account) = self.storage.account(&user).await? {
                let value = device_list_value(&account.signed_device_list());
                values.insert(AkdLabel::from(user.as_str()), AkdValue(value.to_vec()));
            }
        }
        let labels: Vec<AkdLabel> = values.keys().cloned().collect();
        let current = self
            .db
            .get_user_state_versions(&labels, ValueStateRetrievalFlag::MaxEpoch)
            .await
            .map_err(|e| KtError(e.to_string()))?;
        let updates: Vec<(AkdLabel, AkdValue)> = values
            .into_iter()
            .filter(|(label, value)| current.get(label).is_none_or(|(_, v)| v != value))
            .collect();
        let epoch = if updates.is_empty() {
            None
        } else {
            let count = updates.len();
            let epoch = dir.publish(updates).await?.epoch();
            self.record_newest(&dir).await?;
            tracing::info!(epoch, count, "key-transparency epoch published");
            self.published.send_replace(epoch);
            Some(epoch)
        };
        self.storage.kt_published(&ids).await?;
        Ok(epoch)
    }

    /// Publishes queued changes for as long as the server runs, an epoch at most every
    /// [`KtConfig::epoch_interval`]. A failure is logged and tried again at the next tick.
    pub async fn run_publisher(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.epoch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.publish_pending().await {
                tracing::error!(error = %e, "publishing a key-transparency epoch failed");
            }
        }
    }
}
