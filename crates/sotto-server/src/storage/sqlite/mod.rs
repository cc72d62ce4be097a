//! The embedded default storage: one SQLite file in the data directory, in WAL mode with
//! `synchronous = FULL`, so a message the server acknowledged survives a crash. The SQL of
//! each concern lives beside it: `accounts` (accounts, devices, sign-in), `key_packages`
//! and `delivery` (ordering and queues).

mod accounts;
mod delivery;
mod key_packages;

use super::{ServerStore, StorageError};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use sotto_proto::{DeviceAddr, DeviceId, ServerId, Username};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

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
];

/// SQLite-backed [`super::Storage`].
pub struct SqliteStorage {
    conn: Mutex<Connection>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn corrupt(what: &str) -> StorageError {
    StorageError(format!("corrupt row: {what}"))
}

impl SqliteStorage {
    /// Opens (creating if needed) `sotto.db` in `dir` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError(e.to_string()))?;
        let conn = Connection::open(dir.join("sotto.db"))?;
        Self::from_connection(conn)
    }

    fn from_connection(mut conn: Connection) -> Result<Self, StorageError> {
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
        let key = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
        conn.execute(
            "INSERT OR IGNORE INTO server_meta (key, value) VALUES ('challenge_key', ?1)",
            [&key[..]],
        )?;
        Ok(SqliteStorage {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A thread that panicked while holding the lock dropped its open transaction, which
        // rolled it back, so the connection is consistent: carry on rather than turn every
        // later request into an error.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The schema version a fresh database reaches.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).map_err(|_| corrupt("user_version"))?;
    if current > MIGRATIONS.len() {
        return Err(StorageError(format!(
            "database schema version {current} is newer than this server ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
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

impl ServerStore for SqliteStorage {
    fn server_id(&self) -> Result<ServerId, StorageError> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT value FROM server_meta WHERE key = 'server_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        ServerId::parse(&id.ok_or_else(|| corrupt("server_id missing"))?)
            .map_err(|_| corrupt("server_id"))
    }

    fn challenge_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        let key: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(
            self.conn()
                .query_row(
                    "SELECT value FROM server_meta WHERE key = 'challenge_key'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| corrupt("challenge_key missing"))?,
        );
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        if key.len() != out.len() {
            return Err(corrupt("challenge_key"));
        }
        out.copy_from_slice(&key);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteStorage;
    use crate::storage::ServerStore as _;

    #[test]
    fn a_panic_while_holding_the_connection_does_not_fail_every_later_call() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let storage = std::sync::Arc::new(SqliteStorage::open(dir.path()).expect("storage"));
        let id = storage.server_id().expect("an id");
        let holder = storage.clone();
        let panicked = std::thread::spawn(move || {
            let _conn = holder.conn();
            panic!("a bug while the lock is held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(storage.conn.is_poisoned());
        assert_eq!(storage.server_id().expect("still serving"), id);
    }
}
