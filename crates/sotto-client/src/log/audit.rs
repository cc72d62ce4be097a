//! `sotto audit`: verifies a server's key-transparency log from the last epoch it saw to the
//! newest, one append-only proof per epoch, and keeps its own record of every root (one line
//! per epoch: the epoch and its root in hex). A root the server shows later for a recorded
//! epoch that is not the one recorded is a rewritten log, and an alarm.

use super::{fetch_epoch, signed_root, verify_step};
use crate::ClientError;
use crate::transport::Api;
use sotto_core::Transport as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const ROOTS_FILE: &str = "roots";
const LOG_KEY_FILE: &str = "log-key";
const SERVER_FILE: &str = "server";

/// What an audit verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditReport {
    /// The server audited.
    pub server: String,
    /// The epoch it started from (the last one recorded before, or the oldest the server
    /// recorded, on a first audit).
    pub from: u64,
    /// The newest epoch, now recorded.
    pub to: u64,
    /// How many append-only steps it verified.
    pub verified: u64,
    /// The root of the newest epoch, hex.
    pub root: String,
    /// Whether this was the first audit kept in its directory (its start trusted as shown).
    pub first: bool,
    /// The file of roots.
    pub record: PathBuf,
}

/// Audits the log of the server at `server`, keeping its record in `dir`. `progress` is
/// told of each epoch verified, with the newest.
pub async fn audit(
    dir: &Path,
    server: &str,
    insecure_http: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<AuditReport, ClientError> {
    let api = Api::new(server, insecure_http)?;
    crate::store::create_private_dir(dir)?;
    let read = |name: &str| -> Result<Option<String>, ClientError> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::Store(format!("{}: {e}", path.display()))),
        }
    };
    let record = dir.join(ROOTS_FILE);
    let kept = read(SERVER_FILE)?;
    if let Some(kept) = &kept
        && kept.trim() != api.base()
    {
        return Err(ClientError::Usage(format!(
            "the audit in {} is of {}; use another --data for {}",
            dir.display(),
            kept.trim(),
            api.base()
        )));
    }
    let roots = read(ROOTS_FILE)?.unwrap_or_default();
    // A line a crash cut short (no newline yet) was never verified-and-kept: it goes.
    let complete = roots.rfind('\n').map_or(0, |i| i.saturating_add(1));
    let roots = roots.get(..complete).unwrap_or_default();
    let last = roots.lines().rfind(|l| !l.is_empty()).map(parse_line);
    let (log_key, (from, mut root), first) = match (read(LOG_KEY_FILE)?, last) {
        (Some(key), Some(last)) => (key.trim().to_owned(), last?, false),
        _ => {
            // The first audit trusts the log's key and its oldest recorded root as shown.
            let log_key = api.config().await?.kt_checkpoint_key;
            let newest = api.kt_checkpoint(None).await?;
            let start = fetch_epoch(&api, newest.first).await?;
            let root = signed_root(&log_key, &start)?;
            super::write_file(&dir.join(SERVER_FILE), api.base().as_bytes())?;
            super::write_file(&dir.join(LOG_KEY_FILE), log_key.as_bytes())?;
            super::write_file(
                &record,
                format!("{} {}\n", start.epoch, hex::encode(root)).as_bytes(),
            )?;
            (log_key, (start.epoch, root), true)
        }
    };
    if !first {
        // The server still shows the root recorded last: it did not rewrite the log since.
        let shown = fetch_epoch(&api, from).await.map_err(|e| match e {
            ClientError::Refused(b) if b.code == sotto_proto::ErrorCode::NotFound => {
                ClientError::Security(format!(
                    "the server no longer shows epoch {from}, which this auditor recorded"
                ))
            }
            other => other,
        })?;
        if signed_root(&log_key, &shown)? != root {
            return Err(ClientError::Security(format!(
                "the server's root for epoch {from} is not the one this auditor recorded: the \
                 log was rewritten"
            )));
        }
    }
    let newest = api.kt_checkpoint(None).await?;
    if newest.epoch < from {
        return Err(ClientError::Security(format!(
            "the server's newest epoch {} is older than epoch {from}, which this auditor \
             recorded: the log went back",
            newest.epoch
        )));
    }
    let failed = |e: std::io::Error| ClientError::Store(format!("{}: {e}", record.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&record)
        .map_err(failed)?;
    // Appends after the last complete line (the first audit's first line included).
    let kept = if first {
        file.metadata().map_err(failed)?.len()
    } else {
        roots.len() as u64
    };
    file.set_len(kept).map_err(failed)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(failed)?;
    let mut verified = 0u64;
    for epoch in from.saturating_add(1)..=newest.epoch {
        let found = fetch_epoch(&api, epoch).await?;
        root = verify_step(&log_key, &root, &found).await?;
        writeln!(file, "{epoch} {}", hex::encode(root)).map_err(failed)?;
        verified = verified.saturating_add(1);
        progress(epoch, newest.epoch);
    }
    file.sync_all().map_err(failed)?;
    Ok(AuditReport {
        server: api.base().to_owned(),
        from,
        to: newest.epoch,
        verified,
        root: hex::encode(root),
        first,
        record,
    })
}

fn parse_line(line: &str) -> Result<(u64, [u8; 32]), ClientError> {
    let damaged = || ClientError::Store(format!("the audit record is damaged at {line:?}"));
    let (epoch, root) = line.split_once(' ').ok_or_else(damaged)?;
    let epoch = epoch.parse().map_err(|_| damaged())?;
    let root = hex::decode(root)
        .ok()
        .and_then(|r| r.try_into().ok())
        .ok_or_else(damaged)?;
    Ok((epoch, root))
}
