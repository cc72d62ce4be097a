//! The encrypted local store: one SQLCipher file keyed with the data key, holding MLS state
//! (through `openmls_sqlite_storage`), conversations, messages, contacts and the outbox.

use crate::ClientError;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use openmls_traits::OpenMlsProvider;
use rusqlite::Connection;
use std::fmt::Write as _;
use std::path::Path;
use zeroize::Zeroizing;

/// Numbered migrations of Sotto's own tables; entry `i` moves from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    r#"
CREATE TABLE messages_v2 (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    group_id BLOB,
    sender_user TEXT,
    sender_device TEXT,
    sender_verified INTEGER NOT NULL DEFAULT 1,
    sent_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    shown INTEGER NOT NULL DEFAULT 0
);
INSERT INTO messages_v2 (local_id, id, group_id, sender_user, sender_device, sent_at,
                         received_at, kind, body, outgoing, shown)
    SELECT local_id, id, group_id, sender_user, sender_device, sent_at, sent_at, kind, body,
           outgoing, shown FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE INDEX messages_unshown ON messages(shown, local_id);
"#,
];

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

/// Creates `dir` (and its parents) if needed, and makes it readable by its owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    let failed = |e: std::io::Error| ClientError::Store(format!("{}: {e}", dir.display()));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(failed)?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(failed)?;
    Ok(())
}

/// Creates `path` empty, readable by its owner only, unless it exists.
pub fn create_private_file(path: &Path) -> Result<(), ClientError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(|e| ClientError::Store(format!("{}: {e}", path.display())))
}

/// The statement that hands SQLCipher its raw key. The hex form is a copy of the key, so it
/// lives only in memory that is wiped when dropped.
fn key_statement(data_key: &[u8; 32]) -> Zeroizing<String> {
    let mut sql = Zeroizing::new(String::with_capacity(80));
    sql.push_str("PRAGMA key = \"x'");
    for b in data_key {
        // Writing to a String cannot fail.
        let _ = write!(sql, "{b:02x}");
    }
    sql.push_str("'\";");
    sql
}

/// Opens (creating if needed) the store at `path` with `data_key`, and migrates it. A new
/// store file is created readable by its owner only; SQLite gives its WAL and shared-memory
/// files the same permissions.
pub fn open(path: &Path, data_key: &[u8; 32]) -> Result<Connection, ClientError> {
    create_private_file(path)?;
    let mut conn = Connection::open(path)?;
    conn.execute_batch(&key_statement(data_key))?;
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
    .map_err(|_| {
        // The key file unlocked, so the key is right: the store itself is damaged.
        ClientError::Store(format!(
            "{} is damaged or not a Sotto store; it does not open with its key",
            path.display()
        ))
    })?;
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

#[cfg(test)]
mod tests {
    use super::key_statement;

    #[test]
    fn the_key_statement_is_built_in_zeroizing_memory() {
        let sql: zeroize::Zeroizing<String> = key_statement(&[0xab; 32]);
        assert_eq!(*sql, format!("PRAGMA key = \"x'{}'\";", "ab".repeat(32)));
    }
}
