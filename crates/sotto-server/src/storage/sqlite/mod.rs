//! The embedded default storage: one SQLite file in the data directory, in WAL mode with
//! `synchronous = FULL`, so a message the server acknowledged survives a crash. The SQL of
//! each concern lives beside it: `accounts` (accounts, devices, sign-in), `key_packages`
//! and `delivery` (ordering and queues).

mod accounts;
mod delivery;
mod devices;
mod key_packages;
mod kt;

use super::{ServerStore, Stats, StorageError};
use async_trait::async_trait;
use rusqlite::OpenFlags;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use sotto_proto::{DeviceAddr, DeviceId, ServerId, Username};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Numbered migrations; entry `i` moves the schema from version `i` to `i + 1`. Never edit an
/// entry that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    user TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    device_list_body BLOB NOT NULL,
    device_list_signature BLOB NOT NULL,
    revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE devices (
    user TEXT NOT NULL REFERENCES accounts(user),
    device TEXT NOT NULL,
    signature_key BLOB NOT NULL,
    PRIMARY KEY (user, device)
);
CREATE TABLE challenges (
    challenge BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE tokens (
    token_hash BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE key_packages (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX key_packages_device ON key_packages(user, device, id);
CREATE TABLE last_resort_key_packages (
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (user, device)
);
CREATE TABLE groups (
    group_id BLOB PRIMARY KEY,
    epoch INTEGER NOT NULL,
    next_seq INTEGER NOT NULL
);
CREATE TABLE group_roster (
    group_id BLOB NOT NULL,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    PRIMARY KEY (group_id, user, device)
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,
    accepted_at INTEGER NOT NULL
);
CREATE INDEX messages_accepted ON messages(accepted_at);
CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE
);
CREATE INDEX queue_device ON queue(user, device, id);
CREATE INDEX queue_message ON queue(message_id);
CREATE TABLE sends (
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    client_id TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    accepted_at INTEGER NOT NULL,
    PRIMARY KEY (user, device, client_id)
);
CREATE INDEX sends_accepted ON sends(accepted_at);
"#,
    r#"
CREATE TABLE server_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
DROP TABLE challenges;
CREATE TABLE used_challenges (
    challenge_hash BLOB PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX used_challenges_expiry ON used_challenges(expires_at);
ALTER TABLE queue ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE queue SET size = (SELECT length(data) FROM messages WHERE messages.id = queue.message_id);
CREATE TABLE device_queues (
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    dropped_total INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, device)
);
INSERT INTO device_queues (user, device, count, bytes)
    SELECT user, device, COUNT(*), SUM(size) FROM queue GROUP BY user, device;
"#,
    // A device's entries by message id: an acknowledgement finds its entry directly, not
    // among the entries of every device that got the message (which made a group of N
    // devices cost N² for its acknowledgements).
    r#"
DROP INDEX IF EXISTS queue_device;
CREATE INDEX queue_device ON queue(user, device, message_id);
"#,
    // The key-transparency log (akd's records, opaque here) and the accounts waiting to be
    // published in it: every account that existed before the log.
    r#"
CREATE TABLE kt_nodes (id BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE kt_states (
    label BLOB NOT NULL,
    epoch INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (label, epoch)
) WITHOUT ROWID;
CREATE TABLE kt_pending (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL);
INSERT INTO kt_pending (user) SELECT user FROM accounts ORDER BY created_at, user;
"#,
    // Every account created is queued for the log by the database itself, in the insert's
    // transaction, whatever inserts it.
    r#"
CREATE TRIGGER IF NOT EXISTS accounts_to_kt AFTER INSERT ON accounts
BEGIN
    INSERT INTO kt_pending (user) VALUES (NEW.user);
END;
"#,
    // Device lists change (devices are linked and removed): each change is queued for the
    // log like a new account, and devices being linked wait at a rendezvous.
    r#"
CREATE TRIGGER IF NOT EXISTS device_lists_to_kt AFTER UPDATE OF device_list_body ON accounts
BEGIN
    INSERT INTO kt_pending (user) VALUES (NEW.user);
END;
CREATE TABLE links (
    id BLOB PRIMARY KEY,
    user TEXT NOT NULL,
    offer BLOB NOT NULL,
    secret_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    sealed BLOB,
    mac BLOB,
    archive BLOB
);
CREATE INDEX links_expiry ON links(expires_at);
"#,
    // Each epoch's root as published, with akd's proof that it extends the one before, and
    // the witnesses' cosignatures on its checkpoint.
    r#"
CREATE TABLE kt_epochs (epoch INTEGER PRIMARY KEY, root BLOB NOT NULL, audit BLOB);
CREATE TABLE kt_cosignatures (
    epoch INTEGER NOT NULL REFERENCES kt_epochs(epoch),
    witness TEXT NOT NULL,
    time INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (epoch, witness)
);
"#,
    // When each device last signed in, for its owner's `devices list`.
    "ALTER TABLE devices ADD COLUMN last_seen INTEGER;",
];

/// SQLite-backed [`super::Storage`]: one writing connection, used by one operation at a time,
/// and a few read-only ones beside it (WAL lets readers run alongside the writer), so token
/// lookups and fetches never wait for a commit. Whole operations run on the blocking pool; a
/// [`DeliveryTx`](super::DeliveryTx) runs its statements in place (they touch only the page
/// cache and the WAL) and its commit, which waits for the disk, on the blocking pool.
pub struct SqliteStorage {
    conn: Arc<tokio::sync::Mutex<Connection>>,
    readers: Arc<Readers>,
}

/// How many read-only connections serve reads at once.
const READERS: usize = 4;

/// The read-only connections: idle ones, and a permit for each that may be in use.
struct Readers {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
}

impl Readers {
    fn open(&self) -> Result<Connection, StorageError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // A list of connections holds no invariant a panic could break.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::new(e.to_string())
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn corrupt(what: &str) -> StorageError {
    StorageError::corrupt(what)
}

impl SqliteStorage {
    /// Opens (creating if needed) `sotto.db` in `dir` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::new(e.to_string()))?;
        let path = dir.join("sotto.db");
        let mut conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        // The server's identity is chosen once, when its storage is created.
        conn.execute(
            "INSERT OR IGNORE INTO server_meta (key, value) VALUES ('server_id', ?1)",
            [ServerId::from_bytes(rand::random()).as_str()],
        )?;
        for name in ["challenge_key", "kt_vrf_key", "kt_checkpoint_key"] {
            let key = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
            conn.execute(
                "INSERT OR IGNORE INTO server_meta (key, value) VALUES (?1, ?2)",
                rusqlite::params![name, &key[..]],
            )?;
        }
        Ok(SqliteStorage {
            conn: Arc::new(tokio::sync::Mutex::new(conn)),
            readers: Arc::new(Readers {
                path,
                idle: std::sync::Mutex::new(Vec::with_capacity(READERS)),
                permits: tokio::sync::Semaphore::new(READERS),
            }),
        })
    }

    /// A 32-byte secret of `server_meta`.
    async fn secret(
        &self,
        name: &'static str,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        let bytes = self.run(move |c| meta(c, name)).await?;
        super::secret_key(bytes.ok_or_else(|| corrupt(name))?, name)
    }

    /// Runs `f` on the connection, on the blocking pool. A panic in `f` rolls back whatever
    /// transaction it had open (the transaction is dropped) and comes back as an error.
    async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let mut conn = self.conn.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || f(&mut conn))
            .await
            .map_err(|e| StorageError::new(format!("storage task failed: {e}")))?
    }

    /// Runs `f` on a read-only connection, on the blocking pool, beside the writer and other
    /// readers. A connection lost to a panic in `f` is replaced by a new one when needed.
    async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let _permit = self
            .readers
            .permits
            .acquire()
            .await
            .map_err(|e| StorageError::new(e.to_string()))?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let idle = readers.idle().pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => readers.open()?,
            };
            let result = f(&mut conn);
            readers.idle().push(conn);
            result
        })
        .await
        .map_err(|e| StorageError::new(format!("storage task failed: {e}")))?
    }
}

/// The schema version a fresh database reaches.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).map_err(|_| corrupt("user_version"))?;
    if current > MIGRATIONS.len() {
        return Err(StorageError::new(format!(
            "database schema version {current} is newer than this server ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i.saturating_add(1))?;
    }
    tx.commit()?;
    Ok(())
}

fn addr(user: String, device: String) -> Result<DeviceAddr, StorageError> {
    Ok(DeviceAddr {
        user: Username::parse(&user).map_err(|_| corrupt("user"))?,
        device: DeviceId::parse(&device).map_err(|_| corrupt("device"))?,
    })
}

fn meta<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StorageError> {
    Ok(conn
        .query_row("SELECT value FROM server_meta WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

#[async_trait]
impl ServerStore for SqliteStorage {
    async fn server_id(&self) -> Result<ServerId, StorageError> {
        let id: Option<String> = self.run(|c| meta(c, "server_id")).await?;
        ServerId::parse(&id.ok_or_else(|| corrupt("server_id missing"))?)
            .map_err(|_| corrupt("server_id"))
    }

    async fn challenge_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        self.secret("challenge_key").await
    }

    async fn kt_vrf_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        self.secret("kt_vrf_key").await
    }

    async fn kt_checkpoint_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        self.secret("kt_checkpoint_key").await
    }

    async fn stats(&self) -> Result<Stats, StorageError> {
        self.read(|c| {
            let c = c.transaction()?;
            let count = |table: &str| -> Result<u64, StorageError> {
                let n: i64 =
                    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
                Ok(to_u64(n))
            };
            Ok(Stats {
                accounts: count("accounts")?,
                devices: count("devices")?,
                tokens: count("tokens")?,
                used_challenges: count("used_challenges")?,
                key_packages: count("key_packages")?,
                last_resort_key_packages: count("last_resort_key_packages")?,
                groups: count("groups")?,
                roster_entries: count("group_roster")?,
                messages: count("messages")?,
                queue_entries: count("queue")?,
                sends: count("sends")?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteStorage;
    use crate::storage::ServerStore as _;

    #[tokio::test]
    async fn a_panic_inside_an_operation_is_an_error_and_rolls_its_transaction_back() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let storage = SqliteStorage::open(dir.path()).expect("storage");
        let id = storage.server_id().await.expect("an id");
        let failed = storage
            .run(|conn| -> Result<(), _> {
                let tx = conn.transaction()?;
                tx.execute("DELETE FROM server_meta", [])?;
                panic!("a bug in the middle of a transaction");
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(storage.server_id().await.expect("still serving"), id);
    }
}
