#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
//! Signed, witnessed roots of the key-transparency log, over a real server on loopback and
//! its real SQLite storage: `sotto audit` over a hundred epochs, `sotto witness` refusing a
//! log that does not extend what it cosigned, and a client configured with a witness that
//! fails closed without its cosignature.

mod harness;

use ed25519_dalek::{Signer as _, SigningKey};
use harness::{Server, client, recv};
use rusqlite::Connection;
use sotto_client::log::audit::audit;
use sotto_client::log::witness::Witness;
use sotto_client::{Api, Client, ClientError, InitOptions, KdfParams, WitnessPolicy};
use sotto_core::Transport as _;
use sotto_proto::checkpoint::{
    SignedCheckpoint, WitnessKey, checkpoint_body, cosignature_line, cosigned_message,
};
use sotto_proto::kt::CosignRequest;
use sotto_server::Config;
use sotto_server::kt::KtConfig;
use std::path::Path;
use std::time::Duration;

const X25519: u16 = 0x0001;

/// A server that makes an epoch as soon as something changes, keeping the cosignatures of
/// `witnesses`.
async fn server(dir: &Path, witnesses: Vec<WitnessKey>) -> Server {
    let mut config = Config {
        ciphersuite: X25519,
        kt: KtConfig {
            epoch_interval: Duration::from_millis(10),
            witnesses,
            ..KtConfig::default()
        },
        ..Config::default()
    };
    config.limits.set("register_per_ip=1000/1h").unwrap();
    Server::start_with(&dir.join("server"), config).await
}

fn db(server: &Server) -> Connection {
    let db = Connection::open(server.data.join("sotto.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db
}

/// The operator changes `user`'s entry (new bytes as its list's signature, each time others)
/// and waits for the epoch that publishes it; `count` times. Returns the newest epoch.
async fn new_epochs(server: &Server, user: &str, count: usize) -> u64 {
    let api = Api::new(&server.url, false).unwrap();
    // Whatever was queued before (an account just made) is published first.
    for _ in 0..500 {
        let queued: i64 = db(server)
            .query_row("SELECT COUNT(*) FROM kt_pending", [], |r| r.get(0))
            .unwrap();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut epoch = api.kt_checkpoint(None).await.unwrap().epoch;
    for _ in 0..count {
        db(server)
            .execute(
                "UPDATE accounts SET device_list_body = device_list_body,
                 device_list_signature = ?1 WHERE user = ?2",
                rusqlite::params![rand::random::<[u8; 16]>().to_vec(), user],
            )
            .unwrap();
        // Each look waits up to 5 s for a newer epoch; the publisher makes one in 10 ms.
        let mut next = epoch;
        for _ in 0..6 {
            next = api.kt_checkpoint(Some(epoch)).await.unwrap().epoch;
            if next > epoch {
                break;
            }
        }
        assert!(next > epoch, "no epoch published the change");
        epoch = next;
    }
    epoch
}

fn recorded_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("roots"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_verifies_a_hundred_epochs_keeps_every_root_and_next_time_only_the_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Vec::new()).await;
    client(&server, dir.path(), "alice").await;
    let newest = new_epochs(&server, "alice", 100).await;
    assert!(newest >= 100);

    let record = dir.path().join("audit");
    let first = audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap();
    // The server recorded every epoch from the empty log on.
    assert_eq!((first.first, first.from, first.to), (true, 0, newest));
    assert_eq!(first.verified, newest);
    let lines = recorded_lines(&record);
    assert_eq!(lines.len() as u64, newest + 1);
    let api = Api::new(&server.url, false).unwrap();
    for epoch in [0, 50, newest] {
        let shown = api.kt_epoch(epoch, true).await.unwrap();
        assert_eq!(
            lines[epoch as usize],
            format!("{epoch} {}", hex::encode(shown.root_hash.as_slice()))
        );
    }

    let later = new_epochs(&server, "alice", 3).await;
    let second = audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        (second.first, second.from, second.to, second.verified),
        (false, newest, later, 3)
    );
    assert_eq!(recorded_lines(&record).len() as u64, later + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_refuses_a_rewritten_root_and_an_epoch_whose_proof_does_not_extend_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Vec::new()).await;
    client(&server, dir.path(), "alice").await;
    let newest = new_epochs(&server, "alice", 2).await;
    let record = dir.path().join("audit");
    audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap();

    // The operator rewrites the root of the epoch the auditor recorded last.
    let kept: Vec<u8> = db(&server)
        .query_row(
            "SELECT root FROM kt_epochs WHERE epoch = ?1",
            [newest as i64],
            |r| r.get(0),
        )
        .unwrap();
    db(&server)
        .execute(
            "UPDATE kt_epochs SET root = ?1 WHERE epoch = ?2",
            rusqlite::params![vec![7u8; 32], newest as i64],
        )
        .unwrap();
    let err = audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Security(m) if m.contains("was rewritten")),
        "{err}"
    );
    db(&server)
        .execute(
            "UPDATE kt_epochs SET root = ?1 WHERE epoch = ?2",
            rusqlite::params![kept, newest as i64],
        )
        .unwrap();

    // A new epoch whose recorded proof is another epoch's: it does not take the tree from
    // the recorded root to the new one.
    let next = new_epochs(&server, "alice", 1).await;
    db(&server)
        .execute(
            "UPDATE kt_epochs SET audit = (SELECT audit FROM kt_epochs WHERE epoch = ?1)
             WHERE epoch = ?2",
            [newest as i64, next as i64],
        )
        .unwrap();
    let err = audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Security(m) if m.contains(&format!("epoch {next} does not extend the log"))),
        "{err}"
    );
    // Nothing past the last verified epoch was recorded.
    assert_eq!(recorded_lines(&record).len() as u64, newest + 1);
}

/// A witness's verifier key, made before the server that is configured with it.
fn new_witness(dir: &Path) -> WitnessKey {
    let w = Witness::open(dir, "http://127.0.0.1:1", Some("w.test/1"), false).unwrap();
    WitnessKey::parse(&w.vkey()).unwrap()
}

fn cosignatures(server: &Server, epoch: u64) -> i64 {
    db(server)
        .query_row(
            "SELECT COUNT(*) FROM kt_cosignatures WHERE epoch = ?1",
            [epoch as i64],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosigns_each_epoch_whose_proof_verifies_and_refuses_a_root_that_does_not_extend_it()
 {
    let dir = tempfile::tempdir().unwrap();
    let witness_dir = dir.path().join("witness");
    let key = new_witness(&witness_dir);
    let server = server(dir.path(), vec![key.clone()]).await;
    client(&server, dir.path(), "alice").await;
    let start = new_epochs(&server, "alice", 1).await;

    let mut witness = Witness::open(&witness_dir, &server.url, None, false).unwrap();
    let first = witness.round(false, 60, &mut |_, _| {}).await.unwrap();
    assert_eq!(first.cosigned, vec![start]);
    let newest = new_epochs(&server, "alice", 2).await;
    let round = witness.round(false, 60, &mut |_, _| {}).await.unwrap();
    assert_eq!(round.cosigned, (start + 1..=newest).collect::<Vec<_>>());
    assert!(newest >= start + 2);
    // The server serves the cosignature with the checkpoint, and it verifies.
    let api = Api::new(&server.url, false).unwrap();
    let shown = api.kt_epoch(newest, true).await.unwrap();
    assert_eq!(api.kt_checkpoint(None).await.unwrap().epoch, newest);
    let config = sotto_core::Transport::config(&api).await.unwrap();
    let root: [u8; 32] = shown.root_hash.as_slice().try_into().unwrap();
    let signed =
        SignedCheckpoint::open(&shown.checkpoint, &config.kt_checkpoint_key, newest, &root)
            .unwrap();
    assert_eq!(
        signed.cosigners(std::slice::from_ref(&key)).unwrap().len(),
        1
    );

    // The operator publishes an epoch, then records another root for it (and signs that:
    // the server holds the checkpoint key). The witness refuses it and cosigns nothing.
    let forged = new_epochs(&server, "alice", 1).await;
    db(&server)
        .execute(
            "UPDATE kt_epochs SET root = ?1 WHERE epoch = ?2",
            rusqlite::params![vec![7u8; 32], forged as i64],
        )
        .unwrap();
    let err = witness.round(false, 60, &mut |_, _| {}).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Security(m) if m.contains(&format!("epoch {forged} does not extend the log"))),
        "{err}"
    );
    assert_eq!(cosignatures(&server, forged), 0);
    assert_eq!(witness.epoch(), Some(newest));
    // It keeps refusing: what it cosigned last is kept on disk.
    let err = Witness::open(&witness_dir, &server.url, None, false)
        .unwrap()
        .round(false, 60, &mut |_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(&err, ClientError::Security(_)), "{err}");
    assert_eq!(cosignatures(&server, forged), 0);
}

/// A cosignature by the witness kept in `dir`, made at `time`, of the checkpoint of
/// `signed_epoch`, posted as one of `epoch`.
async fn cosign_at(
    dir: &Path,
    server: &Server,
    epoch: u64,
    signed_epoch: u64,
    time: u64,
) -> Result<(), ClientError> {
    #[derive(serde::Deserialize)]
    struct KeyFile {
        name: String,
        secret: String,
    }
    let file: KeyFile =
        serde_json::from_slice(&std::fs::read(dir.join("witness.key")).unwrap()).unwrap();
    let secret: [u8; 32] = hex::decode(file.secret).unwrap().try_into().unwrap();
    let key = SigningKey::from_bytes(&secret);
    let public = WitnessKey::parse(&sotto_proto::checkpoint::witness_vkey(
        &file.name,
        &key.verifying_key(),
    ))
    .unwrap();
    let api = Api::new(&server.url, false).unwrap();
    let config = sotto_core::Transport::config(&api).await.unwrap();
    let origin = config.kt_checkpoint_key.split('+').next().unwrap();
    let root: [u8; 32] = api
        .kt_epoch(signed_epoch, true)
        .await
        .unwrap()
        .root_hash
        .as_slice()
        .try_into()
        .unwrap();
    let body = checkpoint_body(origin, signed_epoch, &root).unwrap();
    let sig = key.sign(&cosigned_message(time, &body)).to_bytes();
    api.kt_cosign(&CosignRequest {
        epoch,
        cosignature: cosignature_line(&public, time, &sig),
    })
    .await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn refused(result: Result<(), ClientError>, code: sotto_proto::ErrorCode) {
    assert!(
        matches!(&result, Err(ClientError::Refused(b)) if b.code == code),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_only_verifying_cosignatures_of_its_witnesses_not_ahead_of_its_clock() {
    let dir = tempfile::tempdir().unwrap();
    let witness_dir = dir.path().join("witness");
    let key = new_witness(&witness_dir);
    let server = server(dir.path(), vec![key]).await;
    client(&server, dir.path(), "alice").await;
    let epoch = new_epochs(&server, "alice", 2).await;
    use sotto_proto::ErrorCode::{InvalidField, NotFound};

    // A witness the server is not configured with (same name, another key).
    let stranger = dir.path().join("stranger");
    new_witness(&stranger);
    refused(
        cosign_at(&stranger, &server, epoch, epoch, now()).await,
        InvalidField,
    );
    // The right witness, over another epoch's checkpoint; from an hour ahead; for an epoch
    // that does not exist.
    refused(
        cosign_at(&witness_dir, &server, epoch, epoch - 1, now()).await,
        InvalidField,
    );
    refused(
        cosign_at(&witness_dir, &server, epoch, epoch, now() + 3600).await,
        InvalidField,
    );
    refused(
        cosign_at(&witness_dir, &server, epoch + 100, epoch, now()).await,
        NotFound,
    );
    assert_eq!(cosignatures(&server, epoch), 0);
    assert_eq!(cosignatures(&server, epoch - 1), 0);
    // And what verifies is kept.
    cosign_at(&witness_dir, &server, epoch, epoch, now())
        .await
        .unwrap();
    assert_eq!(cosignatures(&server, epoch), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_left_unrecorded_is_recorded_with_its_proof_at_the_publishers_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), Vec::new()).await;
    client(&server, dir.path(), "alice").await;
    let newest = new_epochs(&server, "alice", 2).await;
    let record = dir.path().join("audit");
    audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap();
    // As a failure right after a publish leaves it: published, not recorded.
    db(&server)
        .execute("DELETE FROM kt_epochs WHERE epoch = ?1", [newest as i64])
        .unwrap();
    let api = Api::new(&server.url, false).unwrap();
    assert_eq!(api.kt_checkpoint(None).await.unwrap().epoch, newest);
    assert!(api.kt_epoch(newest, true).await.unwrap().audit.is_some());
    // The same root, and its proof verifies: the auditor takes it.
    let later = new_epochs(&server, "alice", 1).await;
    let report = audit(&record, &server.url, false, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!((report.from, report.to), (newest, later));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_requires_a_witness_sends_only_on_roots_it_cosigned_lately() {
    let dir = tempfile::tempdir().unwrap();
    let witness_dir = dir.path().join("witness");
    let key = new_witness(&witness_dir);
    let server = server(dir.path(), vec![key.clone()]).await;
    let policy = WitnessPolicy::new(&[key.vkey()], None, 600).unwrap();
    let mut options = InitOptions::new(KdfParams::INSECURE_TEST);
    options.witnesses = policy;
    let alice = Client::init(
        &dir.path().join("alice"),
        &server.url,
        "alice",
        "correct horse",
        options,
    )
    .await
    .unwrap();
    let bob = client(&server, dir.path(), "bob").await;

    // No witness has cosigned anything: alice sends nothing.
    let err = alice.send_text("bob", "hello").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Unreachable(m) if m.contains("cosigned by 0 of the 1 witnesses")),
        "{err}"
    );

    // The witness runs: alice's messages go out.
    let mut witness = Witness::open(&witness_dir, &server.url, None, false).unwrap();
    let running = tokio::spawn(async move {
        loop {
            witness.round(true, 60, &mut |_, _| {}).await.unwrap();
        }
    });
    alice.send_text("bob", "hello").await.unwrap();
    assert_eq!(recv(&bob).await, vec!["alice: hello".to_owned()]);

    // The witness stops; a new epoch comes. A cosignature an hour old is not enough.
    running.abort();
    let _ = running.await;
    let api = Api::new(&server.url, false).unwrap();
    let before = api.kt_checkpoint(None).await.unwrap().epoch;
    client(&server, dir.path(), "carol").await;
    let mut epoch = before;
    while epoch == before {
        epoch = api.kt_checkpoint(Some(before)).await.unwrap().epoch;
    }
    let hour_ago = now() - 3600;
    cosign_at(&witness_dir, &server, epoch, epoch, hour_ago)
        .await
        .unwrap();
    let err = alice.send_text("bob", "again").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Unreachable(m) if m.contains("cosigned by 0 of the 1 witnesses") && m.contains("1 more cosigned it outside that time")),
        "{err}"
    );
    // A fresh one is.
    cosign_at(&witness_dir, &server, epoch, epoch, now())
        .await
        .unwrap();
    alice.send_text("bob", "again").await.unwrap();
    assert_eq!(recv(&bob).await, vec!["alice: again".to_owned()]);
}
