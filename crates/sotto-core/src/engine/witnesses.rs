//! Signed and witnessed roots: every lookup answer carries its epoch's checkpoint, signed
//! with the log's checkpoint key (pinned at `init`) and cosigned by witnesses that verified
//! akd's append-only proof up to it. A device configured with witnesses (`init --witness`)
//! accepts a root only with cosignatures of `threshold` of them, made within `max_age`
//! seconds of its own clock: a server that shows this device a log no witness saw, or an old
//! epoch to hide what followed it, fails closed.

use super::Engine;
use crate::store::{ClientStore, Setting, StoreTx};
use crate::{ClientError, Transport};
use serde::{Deserialize, Serialize};
use sotto_proto::checkpoint::{MAX_WITNESSES, SignedCheckpoint, WitnessKey, log_origin, origin_of};
use sotto_proto::kt::Proven;

/// How old, by this device's clock, the newest cosignature of a witness may be (seconds): a
/// witness cosigns the log's newest checkpoint again and again while it stands, so an older
/// one means the log moved on since, or the witness stopped.
pub const WITNESS_MAX_AGE: u64 = 600;

/// How far ahead of this device's clock a cosignature's time may be and still count (the
/// server keeps none more than this ahead of its own).
const WITNESS_SKEW: u64 = 600;

/// The witnesses whose cosignatures this device requires on every root it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessPolicy {
    /// Their C2SP verifier keys (cosignature/v1).
    pub witnesses: Vec<String>,
    /// How many of them must have cosigned.
    pub threshold: usize,
    /// How old a cosignature may be, in seconds.
    pub max_age: u64,
}

impl WitnessPolicy {
    /// The policy of `init --witness … --witness-threshold K`: `None` without witnesses; by
    /// default every witness given must cosign.
    pub fn new(
        witnesses: &[String],
        threshold: Option<usize>,
        max_age: u64,
    ) -> Result<Option<Self>, ClientError> {
        if witnesses.is_empty() {
            return match threshold {
                Some(k) if k > 0 => Err(ClientError::Usage(
                    "--witness-threshold needs --witness keys to count".into(),
                )),
                _ => Ok(None),
            };
        }
        // One key under two names is one witness: a cosignature does not cover the name.
        let mut parsed: Vec<WitnessKey> = Vec::with_capacity(witnesses.len());
        for w in witnesses {
            let key = WitnessKey::parse(w)
                .map_err(|e| ClientError::Usage(format!("--witness {w}: {e}")))?;
            if !parsed.iter().any(|p| p.same_key(&key)) {
                parsed.push(key);
            }
        }
        let keys: Vec<String> = parsed.iter().map(WitnessKey::vkey).collect();
        if keys.len() > MAX_WITNESSES {
            return Err(ClientError::Usage(format!(
                "at most {MAX_WITNESSES} witnesses"
            )));
        }
        let threshold = threshold.unwrap_or(keys.len());
        if threshold == 0 || threshold > keys.len() {
            return Err(ClientError::Usage(format!(
                "--witness-threshold must be between 1 and the {} witnesses given",
                keys.len()
            )));
        }
        if max_age == 0 {
            return Err(ClientError::Usage(
                "--witness-max-age must be at least 1 (seconds)".into(),
            ));
        }
        Ok(Some(WitnessPolicy {
            witnesses: keys,
            threshold,
            max_age,
        }))
    }

    /// As kept in the store.
    pub fn to_setting(&self) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(self).map_err(|e| ClientError::Internal(e.to_string()))
    }

    /// As kept in the store (or sent by the device that approved this one), checked as
    /// `init` checks it.
    fn from_setting(kept: &[u8]) -> Result<Self, ClientError> {
        let damaged = || ClientError::damaged("witness keys");
        let kept: WitnessPolicy = serde_json::from_slice(kept).map_err(|_| damaged())?;
        WitnessPolicy::new(&kept.witnesses, Some(kept.threshold), kept.max_age)
            .ok()
            .flatten()
            .filter(|checked| *checked == kept)
            .ok_or_else(damaged)
    }

    fn keys(&self) -> Result<Vec<WitnessKey>, ClientError> {
        self.witnesses
            .iter()
            .map(|w| WitnessKey::parse(w).map_err(|_| ClientError::damaged("witness keys")))
            .collect()
    }
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// The witnesses this device requires, if any.
    pub fn witness_policy(&self) -> Result<Option<WitnessPolicy>, ClientError> {
        let Some(kept) = self.store.read(|tx| tx.setting(Setting::KtWitnesses))? else {
            return Ok(None);
        };
        WitnessPolicy::from_setting(&kept).map(Some)
    }

    /// How many cosignatures a lookup asks the server to wait for.
    pub(super) fn cosignatures_wanted(&self) -> Result<usize, ClientError> {
        Ok(self.witness_policy()?.map_or(0, |p| p.threshold))
    }

    /// Opens `checkpoint`, which must be signed with the pinned checkpoint key for exactly
    /// `epoch` and `root`, and returns this device's witness policy (if it has one) with the
    /// times at which its witnesses cosigned the checkpoint.
    async fn open_checkpoint(
        &self,
        checkpoint: &str,
        epoch: u64,
        root: &[u8; 32],
    ) -> Result<Option<(WitnessPolicy, Vec<u64>)>, ClientError> {
        let refused = |what| {
            ClientError::Security(format!(
                "the server's key-transparency checkpoint for epoch {epoch} {what}"
            ))
        };
        let key = self.checkpoint_key().await?;
        let signed = SignedCheckpoint::open(checkpoint, &key, epoch, root).map_err(refused)?;
        let Some(policy) = self.witness_policy()? else {
            return Ok(None);
        };
        let keys = policy.keys()?;
        let times = signed
            .cosigners(&keys)
            .map_err(refused)?
            .into_iter()
            .map(|(_, time)| time)
            .collect();
        Ok(Some((policy, times)))
    }

    /// Whether `checkpoint` is the log's signed checkpoint of `epoch` and `root` (a security
    /// failure if it is not) cosigned, at any time, by as many of this device's witnesses as
    /// it requires: then the witnesses checked that the log's chain runs through it. `false`
    /// on a device that requires no witnesses.
    pub(super) async fn witnessed(
        &self,
        checkpoint: &str,
        epoch: u64,
        root: &[u8; 32],
    ) -> Result<bool, ClientError> {
        Ok(self
            .open_checkpoint(checkpoint, epoch, root)
            .await?
            .is_some_and(|(policy, times)| times.len() >= policy.threshold))
    }

    /// Checks the checkpoint of a verified lookup answer: signed with the pinned checkpoint
    /// key for exactly its epoch and root, and cosigned as this device's witnesses require.
    pub(super) async fn check_checkpoint(
        &self,
        checkpoint: &str,
        proven: &Proven,
    ) -> Result<(), ClientError> {
        let epoch = proven.epoch;
        let Some((policy, cosigners)) = self
            .open_checkpoint(checkpoint, epoch, &proven.root)
            .await?
        else {
            return Ok(());
        };
        let now = self.clock.now();
        let fresh = cosigners
            .iter()
            .filter(|time| {
                time.saturating_add(policy.max_age) >= now
                    && **time <= now.saturating_add(WITNESS_SKEW)
            })
            .count();
        if fresh < policy.threshold {
            let stale = cosigners.len().saturating_sub(fresh);
            let stale = if stale > 0 {
                format!(" ({stale} more cosigned it outside that time)")
            } else {
                String::new()
            };
            return Err(ClientError::Unreachable(format!(
                "the key-transparency log's epoch {epoch} is cosigned by {fresh} of the {} \
                 witnesses this device requires ({} needed) within the last {} seconds{stale}: \
                 the witnesses may be down or behind, or the server shows this device a log \
                 they did not see",
                policy.witnesses.len(),
                policy.threshold,
                policy.max_age,
            )));
        }
        Ok(())
    }

    /// The log's checkpoint key, pinned at `init`; a store from before checkpoints pins the
    /// server's key now (trusting it on first use, as it did the VRF key).
    async fn checkpoint_key(&self) -> Result<String, ClientError> {
        if let Some(key) = self.store.read(|tx| tx.setting(Setting::KtCheckpointKey))? {
            return String::from_utf8(key).map_err(|_| ClientError::damaged("checkpoint key"));
        }
        let key = self.transport.config().await?.kt_checkpoint_key;
        check_checkpoint_key(&key, &self.vrf_key().await?)?;
        self.tx(|tx| Ok(tx.set_setting(Setting::KtCheckpointKey, key.as_bytes())?))?;
        Ok(key)
    }
}

/// Checks that a server's checkpoint key is a C2SP Ed25519 verifier key named after the log's
/// VRF key.
pub(super) fn check_checkpoint_key(key: &str, vrf_key: &[u8]) -> Result<(), ClientError> {
    if sotto_proto::checkpoint::check_log_key(key).is_err() || origin_of(key) != log_origin(vrf_key)
    {
        return Err(ClientError::Usage(
            "the server has no valid key-transparency checkpoint key (an older Sotto server \
             signs none)"
                .into(),
        ));
    }
    Ok(())
}
