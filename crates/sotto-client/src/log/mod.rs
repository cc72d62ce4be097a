//! Watching a server's key-transparency log from outside: a witness (`sotto witness`) that
//! cosigns each epoch only once it verified akd's proof that the epoch extends the one it
//! cosigned before, and an auditor (`sotto audit`) that verifies the same chain and keeps its
//! own record of every root. Neither needs an account: both read what the server publishes
//! for anyone.

pub mod audit;
pub mod witness;

use crate::ClientError;
use sotto_core::Transport as _;
use sotto_proto::checkpoint::SignedCheckpoint;
use sotto_proto::kt::{EpochResponse, KtConfiguration};
use std::path::Path;

/// Largest append-only proof read (an epoch of 100,000 changes is a few tens of MB).
const MAX_AUDIT_PROOF: usize = 256 << 20;

/// An epoch's root as the server's signed checkpoint states it: checked against the log's
/// checkpoint key.
pub(crate) fn signed_root(log_key: &str, found: &EpochResponse) -> Result<[u8; 32], ClientError> {
    let epoch = found.epoch;
    let root: [u8; 32] = found.root_hash.as_slice().try_into().map_err(|_| {
        ClientError::Security(format!("the server's root for epoch {epoch} is malformed"))
    })?;
    SignedCheckpoint::open(&found.checkpoint, log_key, epoch, &root).map_err(|what| {
        ClientError::Security(format!("the server's checkpoint for epoch {epoch} {what}"))
    })?;
    Ok(root)
}

/// Verifies that `next` extends the log at `previous` (the epoch before, with this root):
/// its checkpoint is signed with the log's key, and akd's append-only proof takes the tree
/// from one root to the other, changing no leaf already in it. Returns `next`'s root.
pub(crate) async fn verify_step(
    log_key: &str,
    previous: &[u8; 32],
    next: &EpochResponse,
) -> Result<[u8; 32], ClientError> {
    let epoch = next.epoch;
    let root = signed_root(log_key, next)?;
    let refused =
        |why: &str| ClientError::Security(format!("epoch {epoch} does not extend the log: {why}"));
    let proof = next
        .audit
        .as_ref()
        .ok_or_else(|| refused("the server has no append-only proof for it"))?;
    if proof.len() > MAX_AUDIT_PROOF {
        return Err(refused("its append-only proof is too large"));
    }
    let proof: akd::proto::specs::types::SingleAppendOnlyProof =
        protobuf::Message::parse_from_bytes(proof.as_slice())
            .map_err(|_| refused("its append-only proof does not parse"))?;
    let proof = akd::SingleAppendOnlyProof::try_from(&proof)
        .map_err(|_| refused("its append-only proof does not parse"))?;
    let previous = *previous;
    // akd's verifier rebuilds the tree in memory; a panic on a hostile proof is caught by the
    // task and refused like a proof that fails.
    let checked = tokio::spawn(async move {
        akd::auditor::verify_consecutive_append_only::<KtConfiguration>(
            &proof, previous, root, epoch,
        )
        .await
        .map_err(|e| e.to_string())
    })
    .await;
    match checked {
        Ok(Ok(())) => Ok(root),
        Ok(Err(e)) => Err(refused(&format!("its append-only proof fails ({e})"))),
        Err(_) => Err(refused("its append-only proof is malformed")),
    }
}

/// Writes `bytes` to `path` through a temporary file beside it (`path` and `.tmp`), so that
/// a crash leaves the old file or the new one, with owner-only permissions; the directory is
/// synced so that the rename survives a crash too.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let failed = |e: std::io::Error| ClientError::Store(format!("{}: {e}", path.display()));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(failed)?;
        file.write_all(bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
    }
    std::fs::rename(&tmp, path).map_err(failed)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed)?;
    }
    Ok(())
}

/// Fetches epoch `epoch` from the server, refusing an answer for another epoch.
pub(crate) async fn fetch_epoch(
    api: &crate::Api,
    epoch: u64,
) -> Result<EpochResponse, ClientError> {
    let found = api.kt_epoch(epoch, true).await?;
    if found.epoch != epoch {
        return Err(ClientError::Security(format!(
            "the server answered epoch {} when asked for epoch {epoch}",
            found.epoch
        )));
    }
    Ok(found)
}
