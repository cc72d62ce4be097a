//! The encrypted local store: one SQLCipher file keyed with the data key, holding MLS state
//! (through `openmls_sqlite_storage`), conversations, messages, contacts and the outbox.

use crate::ClientError;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;
use std::path::Path;
use zeroize::Zeroizing;

/// Numbered migrations of Sotto's own tables; entry `i` moves from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE conversations (
    group_id BLOB PRIMARY KEY,
    name TEXT,
    peer TEXT,
    announced INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);
CREATE TABLE messages (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    group_id BLOB NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_unshown ON messages(shown, local_id);
CREATE TABLE processed (server_id INTEGER PRIMARY KEY);
CREATE TABLE contacts (
    user TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    first_seen INTEGER NOT NULL
);
CREATE TABLE outbox (
    client_id TEXT PRIMARY KEY,
    group_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    content TEXT,
    created_at INTEGER NOT NULL
);
"#];

/// JSON codec for openmls state in SQLite.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;

    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }

    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The openmls provider of a device: libcrux crypto over the encrypted store.
pub struct StoreProvider<'a> {
    crypto: &'a CryptoProvider,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> StoreProvider<'a> {
    /// A provider over `conn`.
    pub fn new(crypto: &'a CryptoProvider, conn: &'a Connection) -> Self {
        StoreProvider {
            crypto,
            storage: SqliteStorageProvider::new(conn),
        }
    }
}

impl<'a> OpenMlsProvider for StoreProvider<'a> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// Opens (creating if needed) the store at `path` with `data_key`, and migrates it.
pub fn open(path: &Path, data_key: &[u8; 32]) -> Result<Connection, ClientError> {
    let mut conn = Connection::open(path)?;
    let key = Zeroizing::new(format!("x'{}'", hex::encode(data_key)));
    conn.pragma_update(None, "key", key.as_str())?;
    // Page HMAC with SHA-256 rather than SQLCipher's default SHA-512: the same integrity
    // guarantee for a 256-bit key, and about 10% less time per message (docs/benchmarks.md).
    conn.pragma_update(None, "cipher_hmac_algorithm", "HMAC_SHA256")?;
    // Every dirty page is encrypted and authenticated whole; a message dirties about five,
    // so 2 KiB pages cost ~12% less per message than 4 KiB (docs/benchmarks.md).
    conn.pragma_update(None, "cipher_page_size", 2048)?;
    // The first read fails if the key is wrong or the file is not a store.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|_| ClientError::Locked("the local store does not open with this key".into()))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode survives a killed process (the WAL is in the OS page cache); what
    // must also survive a power loss is made durable explicitly: the sync loop checkpoints
    // before it acknowledges messages to the server. Lost sender-side state after a power
    // loss cannot cause nonce reuse: MLS mixes a random reuse guard into every nonce.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    migrate(&mut conn)?;
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut conn)
        .run_migrations()
        .map_err(|e| ClientError::Store(format!("MLS storage migration: {e}")))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), ClientError> {
    let tx = conn.transaction()?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(ClientError::Store(
            "the local store was written by a newer Sotto".into(),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Runs `f` in one transaction: all of its writes land, or none.
pub fn transaction<T>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match f() {
        Ok(v) => {
            conn.execute_batch("COMMIT")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Reads a value of the `meta` table.
pub fn meta(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
    use rusqlite::OptionalExtension as _;
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Writes a value of the `meta` table.
pub fn set_meta(conn: &Connection, key: &str, value: &[u8]) -> Result<(), ClientError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![key, value],
    )?;
    Ok(())
}
