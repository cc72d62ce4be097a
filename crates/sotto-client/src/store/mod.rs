//! The encrypted local store: one SQLCipher file keyed with the data key, holding MLS state
//! (through `openmls_sqlite_storage`), conversations, the history, contacts and the outbox.
//! [`SqlCipherStore`] is the engine's [`ClientStore`]; the SQL of each domain lives beside it
//! (`settings`, `conversations`, `history`, `outbox`), this file opens and migrates.

mod conversations;
mod counters;
mod history;
mod outbox;
mod provider;
mod settings;

pub use provider::{JsonCodec, StoreProvider};

use crate::ClientError;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_sqlite_storage::SqliteStorageProvider;
use rusqlite::Connection;
use sotto_core::StoreError;
use sotto_core::store::{
    ClientStore, Contact, ConversationRecord, HistoryRecord, KeptRoot, OutboxEntry, OutboxRecord,
    Setting, StoreTx, Unshown, UnshownEntry,
};
use sotto_proto::{DeviceAddr, GroupId, Username};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
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
    // Events and security events as data (JSON): the words are chosen when they are shown.
    // Entries stored before keep their text in `body`.
    r#"
ALTER TABLE messages ADD COLUMN event TEXT;
"#,
    r#"
ALTER TABLE contacts ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
"#,
    // Each sender's message counter per group, the log roots seen, the device lists proven
    // in the log (with the epoch), a message's counter in the outbox, and when this device
    // last updated its own leaf in each group.
    r#"
CREATE TABLE counters (
    group_id BLOB NOT NULL,
    user TEXT NOT NULL,
    device TEXT NOT NULL,
    counter INTEGER NOT NULL,
    PRIMARY KEY (group_id, user, device)
);
CREATE TABLE log_roots (
    epoch INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    vouched_user TEXT,
    vouched_device TEXT
);
CREATE TABLE logged_lists (user TEXT PRIMARY KEY, epoch INTEGER NOT NULL, body BLOB NOT NULL);
ALTER TABLE outbox ADD COLUMN counter INTEGER;
ALTER TABLE conversations ADD COLUMN healed_at INTEGER;
"#,
    // Whether a root a member vouched for was compared with the log's signed checkpoint, and
    // since when (and how many times) the server has not answered for it.
    r#"
ALTER TABLE log_roots ADD COLUMN checked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE log_roots ADD COLUMN unanswered_since INTEGER;
ALTER TABLE log_roots ADD COLUMN unanswered_last INTEGER;
ALTER TABLE log_roots ADD COLUMN unanswered_tries INTEGER NOT NULL DEFAULT 0;
"#,
];

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
    open_connection(path, data_key).map_err(|e| match e {
        OpenFailure::Damaged(e) => e,
        OpenFailure::Sql(e) => ClientError::Store(e.to_string()),
    })
}

/// Why opening failed: a verdict already made (damage, a newer version), or SQLite's error.
enum OpenFailure {
    Damaged(ClientError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for OpenFailure {
    fn from(e: rusqlite::Error) -> Self {
        OpenFailure::Sql(e)
    }
}

impl From<ClientError> for OpenFailure {
    fn from(e: ClientError) -> Self {
        OpenFailure::Damaged(e)
    }
}

fn open_connection(path: &Path, data_key: &[u8; 32]) -> Result<Connection, OpenFailure> {
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
        OpenFailure::Damaged(ClientError::Store(format!(
            "{} is damaged or not a Sotto store; it does not open with its key",
            path.display()
        )))
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

fn migrate(conn: &mut Connection) -> Result<(), OpenFailure> {
    let tx = conn.transaction()?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(OpenFailure::Damaged(ClientError::Store(
            "the local store was written by a newer Sotto".into(),
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()?;
    Ok(())
}

fn integer(n: u64) -> i64 {
    // A sender's clock may say anything; SQLite's integers stop at i64::MAX.
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn group_id(bytes: &[u8]) -> Result<GroupId, StoreError> {
    GroupId::from_bytes(bytes).map_err(|_| StoreError::new("damaged group id"))
}

fn username(s: &str) -> Result<Username, StoreError> {
    Username::parse(s).map_err(|_| StoreError::new("damaged username"))
}

/// The device's store: one SQLCipher connection, used by one transaction at a time.
pub struct SqlCipherStore {
    conn: Mutex<Connection>,
    crypto: CryptoProvider,
}

impl SqlCipherStore {
    /// Opens (creating if needed) the store at `path` with `data_key`.
    pub fn open(path: &Path, data_key: &[u8; 32]) -> Result<Self, ClientError> {
        Ok(SqlCipherStore {
            conn: Mutex::new(open(path, data_key)?),
            crypto: CryptoProvider::new()
                .map_err(|e| ClientError::Internal(format!("crypto init: {e}")))?,
        })
    }

    /// Takes the connection and starts a transaction with `statement`, first ending one that
    /// a panic left open.
    fn begin(&self, statement: &str) -> Result<SqlTx<'_>, StoreError> {
        let conn = self.conn();
        if !conn.is_autocommit() {
            conn.execute_batch("ROLLBACK")?;
        }
        conn.execute_batch(statement)?;
        Ok(SqlTx {
            conn,
            crypto: &self.crypto,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held left at most an open transaction, which the next
        // `begin` rolls back: the connection stays usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the connection itself, outside the engine: for tests that play another
    /// process or an attacker with the key.
    #[cfg(test)]
    pub(crate) fn with_connection<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.conn())
    }
}

impl std::fmt::Debug for SqlCipherStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlCipherStore")
    }
}

/// An open `BEGIN IMMEDIATE` transaction, holding the connection.
pub struct SqlTx<'a> {
    conn: MutexGuard<'a, Connection>,
    crypto: &'a CryptoProvider,
}

impl ClientStore for SqlCipherStore {
    type Tx<'a> = SqlTx<'a>;

    fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self::Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self.begin("BEGIN IMMEDIATE")?;
        match f(&tx) {
            Ok(v) => {
                tx.conn.execute_batch("COMMIT").map_err(StoreError::from)?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self::Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        // Deferred: a snapshot for reading, which neither waits for nor blocks a writer.
        let tx = self.begin("BEGIN DEFERRED")?;
        let result = f(&tx);
        tx.conn
            .execute_batch("ROLLBACK")
            .map_err(StoreError::from)?;
        result
    }

    /// Writes everything committed so far back into the database file and syncs it (a
    /// complete WAL checkpoint). False if another connection's open read kept part of the
    /// log from being written back.
    fn make_durable(&self) -> Result<bool, StoreError> {
        let (busy, log, done): (i64, i64, i64) =
            self.conn()
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
        Ok(busy == 0 && log == done)
    }
}

impl StoreTx for SqlTx<'_> {
    type MlsError = rusqlite::Error;
    type Mls<'a>
        = StoreProvider<'a>
    where
        Self: 'a;

    fn mls(&self) -> StoreProvider<'_> {
        StoreProvider::new(self.crypto, &self.conn)
    }

    fn savepoint<T, E: From<StoreError>>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        self.conn
            .execute_batch("SAVEPOINT apply")
            .map_err(StoreError::from)?;
        let result = f();
        let sql = if result.is_ok() {
            "RELEASE apply"
        } else {
            "ROLLBACK TO apply; RELEASE apply"
        };
        self.conn.execute_batch(sql).map_err(StoreError::from)?;
        result
    }

    fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    fn setting(&self, key: Setting) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(settings::get(&self.conn, key)?)
    }

    fn set_setting(&self, key: Setting, value: &[u8]) -> Result<(), StoreError> {
        Ok(settings::set(&self.conn, key, value)?)
    }

    fn conversation(&self, group: &GroupId) -> Result<Option<ConversationRecord>, StoreError> {
        conversations::get(&self.conn, group)
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        conversations::all(&self.conn)
    }

    fn upsert_conversation(&self, c: &ConversationRecord) -> Result<(), StoreError> {
        Ok(conversations::upsert(&self.conn, c)?)
    }

    fn describe_conversation(
        &self,
        group: &GroupId,
        name: Option<&str>,
        peer: Option<&Username>,
    ) -> Result<(), StoreError> {
        Ok(conversations::describe(&self.conn, group, name, peer)?)
    }

    fn deactivate_conversation(&self, group: &GroupId) -> Result<(), StoreError> {
        Ok(conversations::deactivate(&self.conn, group)?)
    }

    fn unhealed_since(&self, cutoff: u64) -> Result<Vec<GroupId>, StoreError> {
        conversations::unhealed_since(&self.conn, cutoff)
    }

    fn set_healed_at(&self, group: &GroupId, at: u64) -> Result<(), StoreError> {
        Ok(conversations::set_healed_at(&self.conn, group, at)?)
    }

    fn counter(&self, group: &GroupId, sender: &DeviceAddr) -> Result<Option<u64>, StoreError> {
        Ok(counters::counter(&self.conn, group, sender)?)
    }

    fn set_counter(
        &self,
        group: &GroupId,
        sender: &DeviceAddr,
        counter: u64,
    ) -> Result<(), StoreError> {
        Ok(counters::set_counter(&self.conn, group, sender, counter)?)
    }

    fn forget_counters(&self, group: &GroupId, keep: &DeviceAddr) -> Result<(), StoreError> {
        Ok(counters::forget(&self.conn, group, keep)?)
    }

    fn logged_list(&self, user: &Username) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(counters::logged_list(&self.conn, user)?)
    }

    fn set_logged_list(&self, user: &Username, epoch: u64, body: &[u8]) -> Result<(), StoreError> {
        Ok(counters::set_logged_list(&self.conn, user, epoch, body)?)
    }

    fn log_root(&self, epoch: u64) -> Result<Option<KeptRoot>, StoreError> {
        counters::log_root(&self.conn, epoch)
    }

    fn put_log_root(
        &self,
        epoch: u64,
        root: &[u8; 32],
        vouched_by: Option<&DeviceAddr>,
    ) -> Result<(), StoreError> {
        Ok(counters::put_log_root(&self.conn, epoch, root, vouched_by)?)
    }

    fn unchecked_vouched_roots(
        &self,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, KeptRoot)>, StoreError> {
        counters::unchecked_vouched_roots(&self.conn, up_to, limit)
    }

    fn mark_vouched_root_checked(&self, epoch: u64) -> Result<(), StoreError> {
        Ok(counters::mark_vouched_root_checked(&self.conn, epoch)?)
    }

    fn vouched_root_unanswered(
        &self,
        epoch: u64,
        now: u64,
        gap: u64,
    ) -> Result<(u64, u64), StoreError> {
        Ok(counters::vouched_root_unanswered(
            &self.conn, epoch, now, gap,
        )?)
    }

    fn add_history(&self, entry: &HistoryRecord) -> Result<bool, StoreError> {
        history::add(&self.conn, entry)
    }

    fn unshown(&self, which: Unshown) -> Result<Vec<UnshownEntry>, StoreError> {
        history::unshown(&self.conn, which)
    }

    fn history(&self) -> Result<Vec<HistoryRecord>, StoreError> {
        history::all(&self.conn)
    }

    fn mark_shown(&self, position: i64) -> Result<(), StoreError> {
        Ok(history::mark_shown(&self.conn, position)?)
    }

    fn is_processed(&self, id: u64) -> Result<bool, StoreError> {
        Ok(history::is_processed(&self.conn, id)?)
    }

    fn mark_processed(&self, id: u64) -> Result<(), StoreError> {
        Ok(history::mark_processed(&self.conn, id)?)
    }

    fn contact(&self, user: &Username) -> Result<Option<Contact>, StoreError> {
        Ok(settings::contact(&self.conn, user)?)
    }

    fn contacts(&self) -> Result<Vec<(Username, Contact)>, StoreError> {
        settings::contacts(&self.conn)
    }

    fn pin_identity(&self, user: &Username, key: &[u8], at: u64) -> Result<(), StoreError> {
        Ok(settings::pin_identity(&self.conn, user, key, at)?)
    }

    fn replace_identity(&self, user: &Username, key: &[u8], at: u64) -> Result<(), StoreError> {
        Ok(settings::replace_identity(&self.conn, user, key, at)?)
    }

    fn mark_verified(&self, user: &Username, key: &[u8]) -> Result<bool, StoreError> {
        Ok(settings::mark_verified(&self.conn, user, key)?)
    }

    fn put_outbox(&self, entry: &OutboxRecord) -> Result<(), StoreError> {
        outbox::put(&self.conn, entry)
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        outbox::all(&self.conn)
    }

    fn remove_outbox(&self, client_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(outbox::remove(&self.conn, client_id)?)
    }
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
