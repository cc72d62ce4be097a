//! Shared set-ups of the benchmark drivers: a two-member group held either in raw openmls
//! memory storage (the baseline) or in Sotto's encrypted SQLCipher stores (the engine).
//! Nothing here is used by the product.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    reason = "benchmark set-up: a failure aborts the run"
)]

use openmls::prelude::{Ciphersuite, MlsGroup};
use openmls_libcrux_crypto::{CryptoProvider, Provider};
use rusqlite::{Connection, params};
use sotto_client::store::{self, StoreProvider};
use sotto_core::MlsProvider;
use sotto_core::group::{self, Received};
use sotto_core::{Content, DeviceKey, Envelope};
use sotto_proto::{DeviceAddr, Username};

/// A device key for `name`.
pub fn device(name: &str) -> DeviceKey {
    DeviceKey::generate(Username::parse(name).unwrap())
}

/// Alice (on `pa`) creates a group and adds bob (on `pb`); returns alice's key and both
/// members' views of the group.
fn two_member_group<A: MlsProvider, B: MlsProvider>(
    pa: &A,
    pb: &B,
    suite: Ciphersuite,
) -> (DeviceKey, MlsGroup, MlsGroup) {
    let (alice, bob) = (device("alice"), device("bob"));
    let kp = group::new_key_packages(pb, &bob, suite, 1, false).unwrap();
    let kp =
        group::verify_key_package(pa, &kp.one_time[0], bob.addr(), &bob.public(), suite).unwrap();
    let mut ga = group::create(pa, &alice, suite).unwrap();
    let out = group::add(pa, &alice, &mut ga, &[kp], 0).unwrap();
    group::merge_pending(pa, &mut ga).unwrap();
    let gb = group::join(pb, &out.welcome.unwrap()).unwrap();
    (alice, ga, gb)
}

/// Raw openmls, in memory: alice and bob in one group.
pub struct MemoryPair {
    pa: Provider,
    pb: Provider,
    alice: DeviceKey,
    ga: MlsGroup,
    gb: MlsGroup,
}

impl MemoryPair {
    /// Sets up the group.
    pub fn new(suite: Ciphersuite) -> Self {
        let (pa, pb) = (Provider::new().unwrap(), Provider::new().unwrap());
        let (alice, ga, gb) = two_member_group(&pa, &pb, suite);
        MemoryPair {
            pa,
            pb,
            alice,
            ga,
            gb,
        }
    }

    /// Alice encrypts `text`, bob decrypts it.
    pub fn send_receive(&mut self, text: &str) {
        let wire = self.send(text);
        self.receive(&[wire]);
    }

    /// Alice encrypts `text`.
    pub fn send(&mut self, text: &str) -> Vec<u8> {
        let envelope = Envelope {
            sent_at: 0,
            content: Content::Text { body: text.into() },
        };
        group::encrypt(&self.pa, &self.alice, &mut self.ga, &envelope).unwrap()
    }

    /// Bob decrypts `wires`.
    pub fn receive(&mut self, wires: &[Vec<u8>]) {
        for wire in wires {
            match group::process(&self.pb, &mut self.gb, wire).unwrap() {
                Received::Content { .. } => {}
                Received::Commit(_) => panic!("expected content"),
            }
        }
    }
}

/// Sotto's engine with persistence, doing per message the local work the client does: each
/// device has its own SQLCipher store and keeps its group in memory, revalidated with
/// `PRAGMA data_version`. The sender, in one transaction, records the previous accepted send
/// (drops its outbox entry, stores the sent message), encrypts and writes the outbox entry;
/// the receiver, in one transaction, checks the message id, decrypts, stores the message and
/// its id; a batch fetched from the queue shares one transaction.
pub struct StorePair {
    _dir: tempfile::TempDir,
    crypto: CryptoProvider,
    ca: Connection,
    cb: Connection,
    alice: DeviceKey,
    ga: MlsGroup,
    gb: MlsGroup,
    gid: Vec<u8>,
    next_id: i64,
    accepted: Option<(i64, String)>,
}

fn data_version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("PRAGMA data_version", [], |r| r.get(0))
}

impl StorePair {
    /// Sets up two stores and the group.
    pub fn new(suite: Ciphersuite) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = store::open(&dir.path().join("a.db"), &[1; 32]).unwrap();
        let cb = store::open(&dir.path().join("b.db"), &[2; 32]).unwrap();
        let crypto = CryptoProvider::new().unwrap();
        let (alice, ga, gb) = two_member_group(
            &StoreProvider::new(&crypto, &ca),
            &StoreProvider::new(&crypto, &cb),
            suite,
        );
        let gid = ga.group_id().as_slice().to_vec();
        StorePair {
            _dir: dir,
            crypto,
            ca,
            cb,
            alice,
            ga,
            gb,
            gid,
            next_id: 1,
            accepted: None,
        }
    }

    /// Alice encrypts `text`, bob decrypts it, both persisting as the client does.
    pub fn send_receive(&mut self, text: &str) {
        let wire = self.send(text);
        self.receive(&[wire]);
    }

    /// Alice encrypts `text` and writes her outbox, as the client does before posting.
    pub fn send(&mut self, text: &str) -> (i64, Vec<u8>) {
        let envelope = Envelope {
            sent_at: 0,
            content: Content::Text { body: text.into() },
        };
        let id = self.next_id;
        self.next_id += 1;
        let sender = self.alice.addr().clone();
        let wire = store::transaction(&self.ca, || {
            data_version(&self.ca)?;
            if let Some((prev, body)) = self.accepted.take() {
                self.ca.execute(
                    "DELETE FROM outbox WHERE client_id = ?1",
                    [prev.to_string()],
                )?;
                insert_message(&self.ca, prev, &self.gid, &sender, &body)?;
            }
            let p = StoreProvider::new(&self.crypto, &self.ca);
            let wire = group::encrypt(&p, &self.alice, &mut self.ga, &envelope)?;
            self.ca.execute(
                "INSERT INTO outbox (client_id, group_id, kind, request, content, created_at)
                 VALUES (?1, ?2, 'app', ?3, ?4, 0)",
                params![
                    id.to_string(),
                    self.gid,
                    wire,
                    serde_json::to_string(&envelope.content).unwrap()
                ],
            )?;
            Ok(wire)
        })
        .unwrap();
        self.accepted = Some((id, text.to_owned()));
        (id, wire)
    }

    /// Bob processes `batch` in one transaction, as the client's sync loop does with a batch
    /// fetched from its queue.
    pub fn receive(&mut self, batch: &[(i64, Vec<u8>)]) {
        store::transaction(&self.cb, || {
            data_version(&self.cb)?;
            for (id, wire) in batch {
                let seen: i64 = self.cb.query_row(
                    "SELECT COUNT(*) FROM processed WHERE server_id = ?1",
                    [id],
                    |r| r.get(0),
                )?;
                assert_eq!(seen, 0);
                self.cb.execute_batch("SAVEPOINT apply")?;
                let p = StoreProvider::new(&self.crypto, &self.cb);
                let Received::Content { sender, envelope } =
                    group::process(&p, &mut self.gb, wire)?
                else {
                    panic!("expected content")
                };
                let Content::Text { body } = envelope.content else {
                    panic!("expected text")
                };
                insert_message(&self.cb, *id, &self.gid, &sender, &body)?;
                self.cb.execute_batch("RELEASE apply")?;
                self.cb
                    .execute("INSERT INTO processed (server_id) VALUES (?1)", [id])?;
            }
            Ok(())
        })
        .unwrap();
    }
}

fn insert_message(
    conn: &Connection,
    id: i64,
    gid: &[u8],
    sender: &DeviceAddr,
    body: &str,
) -> Result<(), sotto_client::ClientError> {
    conn.execute(
        "INSERT INTO messages (id, group_id, sender_user, sender_device, sent_at, received_at,
         kind, body, outgoing) VALUES (?1, ?2, ?3, ?4, 0, 0, 'text', ?5, 0)",
        params![
            id.to_string(),
            gid,
            sender.user.as_str(),
            sender.device.to_string(),
            body
        ],
    )?;
    Ok(())
}
