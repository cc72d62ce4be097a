//! `sotto-bench kt --accounts N [--changes C] [--lookups L] --json`: the key-transparency log
//! on Sotto's SQLite storage against akd's own in-memory store, in the same run, through the
//! same akd directory as the server's (Sotto's configuration, a directory and its cache per
//! operation).
//!
//! For each store it fills a log with N accounts (in epochs of 10,000, not timed), then times
//! three epochs of C changed accounts each, and L lookups of random accounts. It reports the
//! median epoch and lookup times, the ratio of SQLite to memory, the size of a lookup proof
//! as it travels (protobuf), and the time a client takes to verify one. After each timed
//! epoch it times what the server adds to it, the proof that the epoch extends the one before
//! (recorded for witnesses and auditors), and reports that proof's size and the time a
//! witness takes to verify it.

use akd::storage::Database;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::{AkdLabel, AkdValue};
use sotto_proto::kt::{LookupResponse, verify_lookup_proof};
use sotto_proto::{Bytes, Username};
use sotto_server::kt::{KtDatabase, Vrf};
use sotto_server::storage::sqlite::SqliteStorage;
use std::sync::Arc;
use std::time::Instant;

use crate::KtArgs;
use crate::drive::percentile_ms;

/// Accounts per epoch while filling the log.
const FILL: usize = 10_000;

fn label(i: usize) -> AkdLabel {
    AkdLabel::from(format!("user{i:07}").as_str())
}

fn value(i: usize, round: usize) -> AkdValue {
    AkdValue(
        sotto_proto::kt::device_list_value(&sotto_proto::device_list::SignedDeviceListIn {
            body: Bytes(format!("{i}/{round}").into_bytes()),
            signature: Bytes(Vec::new()),
        })
        .to_vec(),
    )
}

/// What one store measured.
struct Measured {
    /// Microseconds.
    epoch_us: Vec<u64>,
    /// Microseconds.
    lookup_us: Vec<u64>,
    proofs: Vec<(usize, LookupResponse)>,
    fill_s: f64,
    /// Microseconds to make each timed epoch's append-only proof.
    audit_us: Vec<u64>,
    /// The last one: the roots before and after, the epoch, the proof.
    audit: Option<([u8; 32], [u8; 32], u64, akd::SingleAppendOnlyProof)>,
}

async fn measure<Db: Database + Clone + 'static>(
    db: Db,
    args: &KtArgs,
    vrf: Vrf,
) -> Result<Measured, String> {
    // As the server does: a directory (and its cache) per operation.
    let publish = |batch: Vec<(AkdLabel, AkdValue)>| {
        let (db, vrf) = (db.clone(), vrf.clone());
        async move {
            sotto_server::kt::directory(db, vrf)
                .await
                .map_err(|e| e.to_string())?
                .publish(batch)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let reader = || sotto_server::kt::reader(db.clone(), vrf.clone());
    let start = Instant::now();
    let mut previous = None;
    for from in (0..args.accounts).step_by(FILL) {
        let batch = (from..args.accounts.min(from + FILL))
            .map(|i| (label(i), value(i, 0)))
            .collect();
        previous = Some(publish(batch).await?);
    }
    let fill_s = start.elapsed().as_secs_f64();
    let mut previous = previous.ok_or("no accounts")?;
    let mut epoch_us = Vec::new();
    let mut audit_us = Vec::new();
    let mut audit = None;
    for round in 1..=3 {
        // Every change a different account, spread over the whole log.
        let step = (args.accounts / args.changes).max(1);
        let batch = (0..args.changes.min(args.accounts))
            .map(|k| {
                let i = (k * step + round) % args.accounts;
                (label(i), value(i, round))
            })
            .collect();
        let start = Instant::now();
        let published = publish(batch).await?;
        epoch_us.push(micros(start));
        let start = Instant::now();
        let proof = sotto_server::kt::directory(db.clone(), vrf.clone())
            .await
            .map_err(|e| e.to_string())?
            .audit(previous.epoch(), published.epoch())
            .await
            .map_err(|e| e.to_string())?;
        audit_us.push(micros(start));
        let single = proof.proofs.into_iter().next().ok_or("an empty proof")?;
        audit = Some((previous.hash(), published.hash(), published.epoch(), single));
        previous = published;
    }
    audit_us.sort_unstable();
    let mut lookup_us = Vec::new();
    let mut proofs = Vec::new();
    for k in 0..args.lookups {
        let i = (k * 7919) % args.accounts;
        let start = Instant::now();
        let (proof, hash) = reader()
            .await
            .map_err(|e| e.to_string())?
            .lookup(label(i))
            .await
            .map_err(|e| e.to_string())?;
        lookup_us.push(micros(start));
        let proof = akd::proto::specs::types::LookupProof::from(&proof);
        let proof = protobuf::Message::write_to_bytes(&proof).map_err(|e| e.to_string())?;
        proofs.push((
            i,
            LookupResponse {
                epoch: hash.epoch(),
                root_hash: Bytes(hash.hash().to_vec()),
                proof: Bytes(proof),
                checkpoint: String::new(),
            },
        ));
    }
    epoch_us.sort_unstable();
    lookup_us.sort_unstable();
    Ok(Measured {
        epoch_us,
        lookup_us,
        proofs,
        fill_s,
        audit_us,
        audit,
    })
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The median of sorted microseconds, in milliseconds.
fn median_ms(sorted: &[u64]) -> f64 {
    percentile_ms(sorted, 0.5)
}

/// Runs the benchmark and returns its result line.
pub async fn run(
    args: &KtArgs,
    say: &impl Fn(serde_json::Value),
) -> Result<serde_json::Value, String> {
    if args.accounts == 0 || args.changes == 0 || args.lookups == 0 {
        return Err("--accounts, --changes and --lookups must be at least 1".into());
    }
    let secret = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
    let vrf = Vrf::new(secret);
    let public = *akd::ecvrf::VRFKeyStorage::get_vrf_public_key(&vrf)
        .await
        .map_err(|e| e.to_string())?
        .as_bytes();

    let memory = measure(AsyncInMemoryDatabase::new(), args, vrf.clone()).await?;
    say(serde_json::json!({
        "store": "akd-memory", "accounts": args.accounts, "fill_s": memory.fill_s,
        "epoch_ms": median_ms(&memory.epoch_us), "lookup_ms": median_ms(&memory.lookup_us),
    }));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let storage = SqliteStorage::open(dir.path()).map_err(|e| e.to_string())?;
    let sqlite = measure(KtDatabase::new(Arc::new(storage)), args, vrf).await?;
    say(serde_json::json!({
        "store": "sotto-sqlite", "accounts": args.accounts, "fill_s": sqlite.fill_s,
        "epoch_ms": median_ms(&sqlite.epoch_us), "lookup_ms": median_ms(&sqlite.lookup_us),
    }));

    let mut verify_us = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    for (i, found) in &sqlite.proofs {
        let user = Username::parse(&format!("user{i:07}")).map_err(|e| e.to_string())?;
        sizes.push(found.proof.len());
        let start = Instant::now();
        verify_lookup_proof(&public, &user, found).map_err(|e| format!("a proof {e}"))?;
        verify_us.push(micros(start));
    }
    sizes.sort_unstable();
    verify_us.sort_unstable();
    // What a witness does with the last epoch's proof from SQLite.
    let (before, after, epoch, proof) = sqlite.audit.ok_or("no append-only proof")?;
    let encoded = akd::proto::specs::types::SingleAppendOnlyProof::from(&proof);
    let audit_bytes = protobuf::Message::write_to_bytes(&encoded)
        .map_err(|e| e.to_string())?
        .len();
    let start = Instant::now();
    akd::auditor::verify_consecutive_append_only::<sotto_proto::kt::KtConfiguration>(
        &proof, before, after, epoch,
    )
    .await
    .map_err(|e| format!("the append-only proof fails: {e}"))?;
    let audit_verify_ms = start.elapsed().as_secs_f64() * 1000.0;
    let epoch_sqlite = median_ms(&sqlite.epoch_us);
    let epoch_memory = median_ms(&memory.epoch_us);
    Ok(serde_json::json!({
        "bench": "kt",
        "accounts": args.accounts,
        "changes": args.changes,
        "epoch_ms_sqlite": epoch_sqlite,
        "epoch_ms_memory": epoch_memory,
        "ratio": epoch_sqlite / epoch_memory,
        "lookup_ms_sqlite": median_ms(&sqlite.lookup_us),
        "lookup_ms_memory": median_ms(&memory.lookup_us),
        "proof_bytes_median": sizes.get(sizes.len() / 2).copied().unwrap_or(0),
        "proof_bytes_max": sizes.last().copied().unwrap_or(0),
        "verify_ms_median": median_ms(&verify_us),
        "audit_ms_sqlite": median_ms(&sqlite.audit_us),
        "audit_ms_memory": median_ms(&memory.audit_us),
        "audit_to_epoch_sqlite": median_ms(&sqlite.audit_us) / epoch_sqlite,
        "audit_proof_bytes": audit_bytes,
        "audit_verify_ms": audit_verify_ms,
    }))
}
