//! Each epoch's root, recorded when it is published with akd's proof that it extends the
//! epoch before, signed as a C2SP checkpoint, and cosigned by witnesses.
//!
//! akd keeps only the newest root, and can prove that an epoch extends the one before only
//! while nodes it changed have not changed again: so the proof from epoch N−1 to N is made
//! right after N is published, and kept. At every tick the publisher records the newest epoch
//! if it is not (a crash or a failure right after a publish), with its proof while it is
//! still the newest, and always before anything follows it.

use super::{Kt, KtError, Vrf};
use crate::storage::{KtEpoch, StorageError};
use akd::Directory;
use akd::storage::Database;
use ed25519_dalek::{Signer as _, SigningKey};
use sotto_proto::Bytes;
use sotto_proto::checkpoint::{WitnessKey, checkpoint_body, log_origin, note_text};
use sotto_proto::kt::{CosignRequest, EpochResponse, KtConfiguration};
use std::time::Duration;

/// The key that signs the log's checkpoints.
pub(super) struct CheckpointSigner {
    key: SigningKey,
    origin: String,
    id: u32,
}

impl CheckpointSigner {
    /// The signer of the log with VRF public key `vrf_public_key`, from its stored secret.
    pub(super) fn new(secret: &[u8; 32], vrf_public_key: &[u8]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let origin = log_origin(vrf_public_key);
        let encoded = [&[1u8][..], key.verifying_key().as_bytes()].concat();
        CheckpointSigner {
            id: signed_note::key_id(&origin, &encoded),
            key,
            origin,
        }
    }

    /// Its C2SP verifier key, which clients pin.
    pub(super) fn vkey(&self) -> String {
        sotto_proto::checkpoint::log_vkey(&self.origin, &self.key.verifying_key())
    }

    /// The checkpoint of `root` at `epoch`, and the log's signature line on it.
    fn sign(&self, epoch: u64, root: &[u8; 32]) -> Result<(Vec<u8>, String), KtError> {
        let body =
            checkpoint_body(&self.origin, epoch, root).map_err(|e| KtError(e.to_string()))?;
        let sig = signed_note::Signature::new(
            self.origin.clone(),
            self.id,
            self.key.sign(&body).to_bytes().to_vec(),
        )
        .map_err(|e| KtError(e.to_string()))?;
        let line = String::from_utf8_lossy(&sig.to_bytes())
            .trim_end()
            .to_owned();
        Ok((body, line))
    }
}

/// A cosignature the server does not keep.
#[derive(Debug, thiserror::Error)]
pub enum CosignError {
    /// The epoch is not recorded.
    #[error("no such epoch")]
    UnknownEpoch,
    /// Malformed, of an unknown witness, or not verifying.
    #[error("{0}")]
    Invalid(String),
    /// The log failed.
    #[error(transparent)]
    Kt(#[from] KtError),
}

impl From<StorageError> for CosignError {
    fn from(e: StorageError) -> Self {
        CosignError::Kt(e.into())
    }
}

/// How far ahead of the server's clock a cosignature's time may be.
const COSIGNATURE_SKEW: u64 = 600;

impl Kt {
    /// The C2SP verifier key of the log's checkpoints.
    pub fn checkpoint_key(&self) -> String {
        self.signer.vkey()
    }

    /// Records the directory's newest epoch, unless it is: its root, and akd's proof that it
    /// extends the epoch before when that one is recorded. Called by the publisher only.
    pub(super) async fn record_newest<Db: Database + 'static>(
        &self,
        directory: &Directory<KtConfiguration, Db, Vrf>,
    ) -> Result<(), KtError> {
        let newest = directory.get_epoch_hash().await?;
        let epoch = newest.epoch();
        if let Some(root) = self.storage.kt_root(epoch).await? {
            // Tables restored from another backup than the log's would serve roots the log
            // cannot prove: that stops the publisher, loudly.
            if root != newest.hash() {
                return Err(KtError(format!(
                    "the root recorded for epoch {epoch} is not the log's: kt_epochs does not \
                     match the log (restored from another backup?)"
                )));
            }
            return Ok(());
        }
        let previous = match epoch.checked_sub(1) {
            Some(p) => self.storage.kt_root(p).await?.map(|_| p),
            None => None,
        };
        let audit = match previous {
            Some(previous) => {
                let proof = directory.audit(previous, epoch).await?;
                let single = proof
                    .proofs
                    .first()
                    .ok_or_else(|| KtError("akd made an empty append-only proof".into()))?;
                let proto = akd::proto::specs::types::SingleAppendOnlyProof::from(single);
                Some(
                    protobuf::Message::write_to_bytes(&proto)
                        .map_err(|e| KtError(e.to_string()))?,
                )
            }
            None => None,
        };
        self.storage
            .kt_record_epoch(&KtEpoch {
                epoch,
                root: newest.hash().to_vec(),
                audit,
            })
            .await?;
        Ok(())
    }

    /// The signed checkpoint of `root` at `epoch`, with the cosignatures kept for it.
    pub(super) async fn checkpoint(&self, epoch: u64, root: &[u8; 32]) -> Result<String, KtError> {
        let (body, line) = self.signer.sign(epoch, root)?;
        let mut lines = vec![line];
        lines.extend(self.cosignatures(epoch).await?);
        Ok(note_text(&body, &lines))
    }

    /// The cosignature lines kept for `epoch` of the witnesses the server is configured with
    /// now (one taken out of `--witness` is no longer served).
    async fn cosignatures(&self, epoch: u64) -> Result<Vec<String>, KtError> {
        let configured: Vec<String> = self.config.witnesses.iter().map(WitnessKey::vkey).collect();
        Ok(self
            .storage
            .kt_cosignatures(epoch)
            .await?
            .into_iter()
            .filter(|(witness, _)| configured.contains(witness))
            .map(|(_, line)| line)
            .collect())
    }

    /// How many cosignatures of configured witnesses are kept for `epoch`.
    pub(super) async fn cosignature_count(&self, epoch: u64) -> Result<usize, KtError> {
        Ok(self.cosignatures(epoch).await?.len())
    }

    /// The recorded epoch `epoch`: with its append-only proof if `proof` (as witnesses and
    /// auditors read it), or only its root and checkpoint (as a client comparing a root
    /// needs them, without reading the proof from storage).
    pub async fn recorded(
        &self,
        epoch: u64,
        proof: bool,
    ) -> Result<Option<EpochResponse>, KtError> {
        let (root, audit) = if proof {
            match self.storage.kt_epoch(epoch).await? {
                Some(record) => (record.root, record.audit),
                None => return Ok(None),
            }
        } else {
            match self.storage.kt_root(epoch).await? {
                Some(root) => (root, None),
                None => return Ok(None),
            }
        };
        let root = checked_root(epoch, &root)?;
        Ok(Some(self.response(epoch, &root, audit).await?))
    }

    /// An epoch as the server shows it: its root, its signed checkpoint with the
    /// cosignatures kept, `audit` if given, and the oldest epoch recorded.
    async fn response(
        &self,
        epoch: u64,
        root: &[u8; 32],
        audit: Option<Vec<u8>>,
    ) -> Result<EpochResponse, KtError> {
        Ok(EpochResponse {
            epoch,
            root_hash: Bytes::from(root.to_vec()),
            checkpoint: self.checkpoint(epoch, root).await?,
            audit: audit.map(Bytes::from),
            first: self.storage.kt_first_epoch().await?.unwrap_or(epoch),
        })
    }

    /// The newest epoch, recorded, without its append-only proof (which is read at
    /// [`Kt::recorded`] with `proof`), waiting up to `wait` for one newer than `after` if given and not
    /// past the newest. The publisher records an epoch right after publishing it: one not
    /// recorded yet is waited for (briefly) too.
    pub async fn newest_recorded(
        &self,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<EpochResponse, KtError> {
        // A witness ahead of the log (the log went back) is answered at once.
        if let Some(after) = after
            && after <= self.epoch().await?
        {
            self.wait_past(after, wait).await?;
        }
        for _ in 0..50 {
            if let Some(found) = self.recorded(self.epoch().await?, false).await? {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(KtError(
            "the newest epoch was not recorded within 5 s".into(),
        ))
    }

    /// Keeps a witness's cosignature on a recorded epoch, if it is of a configured witness
    /// and verifies, and its time is not ahead of the server's clock (`now`) by more than
    /// ten minutes.
    pub async fn cosign(&self, req: &CosignRequest, now: u64) -> Result<(), CosignError> {
        let witnesses: &[WitnessKey] = &self.config.witnesses;
        // Who signed is read first: nothing is read from storage for anyone else.
        sotto_proto::checkpoint::cosignature_signer(&req.cosignature, witnesses)
            .map_err(|e| CosignError::Invalid(e.to_string()))?;
        let root = self
            .storage
            .kt_root(req.epoch)
            .await?
            .ok_or(CosignError::UnknownEpoch)?;
        let root = checked_root(req.epoch, &root)?;
        let body = checkpoint_body(&self.signer.origin, req.epoch, &root)
            .map_err(|e| KtError(e.to_string()))?;
        let (witness, time) =
            sotto_proto::checkpoint::parse_cosignature(&req.cosignature, witnesses, &body)
                .map_err(|e| CosignError::Invalid(e.to_string()))?;
        if time > now.saturating_add(COSIGNATURE_SKEW) {
            return Err(CosignError::Invalid(
                "the cosignature's time is ahead of the server's clock".into(),
            ));
        }
        self.storage
            .kt_cosign(req.epoch, &witness.vkey(), time, req.cosignature.trim_end())
            .await?;
        self.cosigned.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// A recorded root, which must be 32 bytes.
fn checked_root(epoch: u64, root: &[u8]) -> Result<[u8; 32], KtError> {
    root.try_into()
        .map_err(|_| KtError(format!("the recorded root of epoch {epoch} is corrupt")))
}
