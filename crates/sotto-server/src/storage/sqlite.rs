//! The embedded default storage: one SQLite file in the data directory, in WAL mode with
//! `synchronous = FULL`, so a message the server acknowledged survives a crash.

use super::{
    Account, AccountStore, AuthStore, Claimed, DeliveryStore, KeyPackageStore, StorageError,
    Submitted,
};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sotto_proto::api::{KeyPackageCount, QueuedKind, QueuedMessage, SendResponse, ValidSend};
use sotto_proto::device_list::VerifiedDeviceList;
use sotto_proto::framing::MessageKind;
use sotto_proto::{Bytes, DeviceAddr, DeviceId, GroupId, Username, limits};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Numbered migrations; entry `i` moves the schema from version `i` to `i + 1`. Never edit an
/// entry that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

const KIND_GROUP: i64 = 0;
const KIND_WELCOME: i64 = 1;

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
        Ok(SqliteStorage {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StorageError> {
        self.conn
            .lock()
            .map_err(|_| StorageError("storage lock poisoned".into()))
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

impl AccountStore for SqliteStorage {
    fn create_account(
        &self,
        identity_key: &[u8],
        list: &VerifiedDeviceList,
        now: u64,
    ) -> Result<bool, StorageError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let l = list.list();
        let inserted = tx.execute(
            "INSERT INTO accounts (user, identity_key, device_list_body, device_list_signature, revision, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (user) DO NOTHING",
            params![
                l.user.as_str(),
                identity_key,
                list.signed().body.as_slice(),
                list.signed().signature.as_slice(),
                to_i64(l.revision),
                to_i64(now)
            ],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        for d in &l.devices {
            tx.execute(
                "INSERT INTO devices (user, device, signature_key) VALUES (?1, ?2, ?3)",
                params![
                    l.user.as_str(),
                    d.id.to_string(),
                    d.signature_key.as_slice()
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn account(&self, user: &Username) -> Result<Option<Account>, StorageError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT identity_key, device_list_body, device_list_signature FROM accounts WHERE user = ?1",
                [user.as_str()],
                |r| {
                    Ok(Account {
                        identity_key: r.get(0)?,
                        device_list_body: r.get(1)?,
                        device_list_signature: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT signature_key FROM devices WHERE user = ?1 AND device = ?2",
                params![device.user.as_str(), device.device.to_string()],
                |r| r.get(0),
            )
            .optional()?)
    }
}

impl AuthStore for SqliteStorage {
    fn put_challenge(
        &self,
        challenge: &[u8],
        device: &DeviceAddr,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        self.conn()?.execute(
            "INSERT INTO challenges (challenge, user, device, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                challenge,
                device.user.as_str(),
                device.device.to_string(),
                to_i64(expires_at)
            ],
        )?;
        Ok(())
    }

    fn take_challenge(
        &self,
        challenge: &[u8],
        device: &DeviceAddr,
        now: u64,
    ) -> Result<bool, StorageError> {
        let row: Option<(String, String, i64)> = self
            .conn()?
            .query_row(
                "DELETE FROM challenges WHERE challenge = ?1 RETURNING user, device, expires_at",
                [challenge],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row.is_some_and(|(u, d, exp)| {
            u == device.user.as_str() && d == device.device.to_string() && to_u64(exp) > now
        }))
    }

    fn put_token(
        &self,
        token_hash: &[u8],
        device: &DeviceAddr,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        self.conn()?.execute(
            "INSERT INTO tokens (token_hash, user, device, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                token_hash,
                device.user.as_str(),
                device.device.to_string(),
                to_i64(expires_at)
            ],
        )?;
        Ok(())
    }

    fn token(&self, token_hash: &[u8]) -> Result<Option<(DeviceAddr, u64)>, StorageError> {
        let row: Option<(String, String, i64)> = self
            .conn()?
            .query_row(
                "SELECT user, device, expires_at FROM tokens WHERE token_hash = ?1",
                [token_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(u, d, exp)| Ok((addr(u, d)?, to_u64(exp))))
            .transpose()
    }
}

fn count_key_packages(
    conn: &Connection,
    device: &DeviceAddr,
) -> Result<KeyPackageCount, StorageError> {
    let dev = device.device.to_string();
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM key_packages WHERE user = ?1 AND device = ?2",
        params![device.user.as_str(), dev],
        |r| r.get(0),
    )?;
    let last_resort: i64 = conn.query_row(
        "SELECT COUNT(*) FROM last_resort_key_packages WHERE user = ?1 AND device = ?2",
        params![device.user.as_str(), dev],
        |r| r.get(0),
    )?;
    Ok(KeyPackageCount {
        count: to_u64(count),
        last_resort: last_resort > 0,
    })
}

impl KeyPackageStore for SqliteStorage {
    fn add_key_packages(
        &self,
        device: &DeviceAddr,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Option<KeyPackageCount>, StorageError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let before = count_key_packages(&tx, device)?;
        if to_i64(before.count).saturating_add(to_i64(one_time.len() as u64))
            > to_i64(limits::MAX_KEY_PACKAGES_STORED as u64)
        {
            return Ok(None);
        }
        let dev = device.device.to_string();
        for kp in one_time {
            tx.execute(
                "INSERT INTO key_packages (user, device, data) VALUES (?1, ?2, ?3)",
                params![device.user.as_str(), dev, kp],
            )?;
        }
        if let Some(kp) = last_resort {
            tx.execute(
                "INSERT INTO last_resort_key_packages (user, device, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, device) DO UPDATE SET data = excluded.data",
                params![device.user.as_str(), dev, kp],
            )?;
        }
        let after = count_key_packages(&tx, device)?;
        tx.commit()?;
        Ok(Some(after))
    }

    fn key_package_count(&self, device: &DeviceAddr) -> Result<KeyPackageCount, StorageError> {
        let conn = self.conn()?;
        count_key_packages(&conn, device)
    }

    fn claim_key_packages(&self, user: &Username) -> Result<Option<Vec<Claimed>>, StorageError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let devices: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT device FROM devices WHERE user = ?1 ORDER BY device")?;
            stmt.query_map([user.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        if devices.is_empty() {
            return Ok(None);
        }
        let mut claimed = Vec::with_capacity(devices.len());
        for dev in devices {
            let one_time: Option<Vec<u8>> = tx
                .query_row(
                    "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages
                     WHERE user = ?1 AND device = ?2 ORDER BY id LIMIT 1) RETURNING data",
                    params![user.as_str(), dev],
                    |r| r.get(0),
                )
                .optional()?;
            let key_package = match one_time {
                Some(kp) => Some(kp),
                None => tx
                    .query_row(
                        "SELECT data FROM last_resort_key_packages WHERE user = ?1 AND device = ?2",
                        params![user.as_str(), dev],
                        |r| r.get(0),
                    )
                    .optional()?,
            };
            claimed.push(Claimed {
                device: DeviceId::parse(&dev).map_err(|_| corrupt("device"))?,
                key_package,
            });
        }
        tx.commit()?;
        Ok(Some(claimed))
    }
}

fn device_exists(conn: &Connection, d: &DeviceAddr) -> Result<bool, StorageError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM devices WHERE user = ?1 AND device = ?2",
            params![d.user.as_str(), d.device.to_string()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn insert_message(
    conn: &Connection,
    group: &GroupId,
    seq: u64,
    sender: &DeviceAddr,
    kind: i64,
    data: &[u8],
    now: u64,
) -> Result<u64, StorageError> {
    conn.execute(
        "INSERT INTO messages (group_id, seq, sender_user, sender_device, kind, data, accepted_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            group.as_bytes(),
            to_i64(seq),
            sender.user.as_str(),
            sender.device.to_string(),
            kind,
            data,
            to_i64(now)
        ],
    )?;
    Ok(to_u64(conn.last_insert_rowid()))
}

fn enqueue(
    conn: &Connection,
    message_id: u64,
    recipients: &[DeviceAddr],
    sender: &DeviceAddr,
    wake: &mut Vec<DeviceAddr>,
) -> Result<(), StorageError> {
    for r in recipients {
        if r == sender || wake.contains(r) {
            continue;
        }
        conn.execute(
            "INSERT INTO queue (user, device, message_id) VALUES (?1, ?2, ?3)",
            params![r.user.as_str(), r.device.to_string(), to_i64(message_id)],
        )?;
        wake.push(r.clone());
    }
    Ok(())
}

impl DeliveryStore for SqliteStorage {
    fn submit(
        &self,
        sender: &DeviceAddr,
        send: &ValidSend,
        now: u64,
    ) -> Result<Submitted, StorageError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let req = &send.request;
        let sender_dev = sender.device.to_string();
        let earlier = tx
            .query_row(
                "SELECT message_id, seq, epoch, accepted_at FROM sends
                 WHERE user = ?1 AND device = ?2 AND client_id = ?3",
                params![sender.user.as_str(), sender_dev, req.client_id],
                |r| {
                    Ok(SendResponse {
                        id: to_u64(r.get(0)?),
                        seq: to_u64(r.get(1)?),
                        epoch: to_u64(r.get(2)?),
                        accepted_at: to_u64(r.get(3)?),
                    })
                },
            )
            .optional()?;
        if let Some(response) = earlier {
            return Ok(Submitted::Accepted {
                response,
                wake: Vec::new(),
            });
        }
        let group = &send.framing.group_id;
        let state: Option<(i64, i64)> = tx
            .query_row(
                "SELECT epoch, next_seq FROM groups WHERE group_id = ?1",
                [group.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (epoch, seq) = match state {
            Some((epoch, seq)) => {
                let member = tx
                    .query_row(
                        "SELECT 1 FROM group_roster WHERE group_id = ?1 AND user = ?2 AND device = ?3",
                        params![group.as_bytes(), sender.user.as_str(), sender_dev],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !member {
                    return Ok(Submitted::NotAMember);
                }
                (to_u64(epoch), to_u64(seq))
            }
            None => {
                // A new group: its creator is its only member until its first commit.
                tx.execute(
                    "INSERT INTO groups (group_id, epoch, next_seq) VALUES (?1, ?2, 1)",
                    params![group.as_bytes(), to_i64(send.framing.epoch)],
                )?;
                tx.execute(
                    "INSERT INTO group_roster (group_id, user, device) VALUES (?1, ?2, ?3)",
                    params![group.as_bytes(), sender.user.as_str(), sender_dev],
                )?;
                (send.framing.epoch, 1)
            }
        };
        if send.framing.epoch != epoch {
            return Ok(Submitted::EpochConflict(epoch));
        }
        let welcome_recipients = req.welcome.as_ref().map_or(&[][..], |w| &w.recipients);
        for r in req
            .recipients
            .iter()
            .chain(welcome_recipients)
            .chain(req.roster.iter().flatten())
        {
            if !device_exists(&tx, r)? {
                return Ok(Submitted::UnknownRecipient);
            }
        }
        let new_epoch = if send.framing.kind == MessageKind::Commit {
            epoch + 1
        } else {
            epoch
        };
        tx.execute(
            "UPDATE groups SET epoch = ?2, next_seq = ?3 WHERE group_id = ?1",
            params![group.as_bytes(), to_i64(new_epoch), to_i64(seq + 1)],
        )?;
        if let Some(roster) = &req.roster {
            tx.execute(
                "DELETE FROM group_roster WHERE group_id = ?1",
                [group.as_bytes()],
            )?;
            for d in roster {
                tx.execute(
                    "INSERT OR IGNORE INTO group_roster (group_id, user, device) VALUES (?1, ?2, ?3)",
                    params![group.as_bytes(), d.user.as_str(), d.device.to_string()],
                )?;
            }
        }
        let id = insert_message(
            &tx,
            group,
            seq,
            sender,
            KIND_GROUP,
            req.message.as_slice(),
            now,
        )?;
        let mut wake = Vec::new();
        enqueue(&tx, id, &req.recipients, sender, &mut wake)?;
        if let Some(w) = &req.welcome {
            let wid = insert_message(
                &tx,
                group,
                seq,
                sender,
                KIND_WELCOME,
                w.message.as_slice(),
                now,
            )?;
            let mut welcomed = Vec::new();
            enqueue(&tx, wid, &w.recipients, sender, &mut welcomed)?;
            wake.extend(welcomed.into_iter().filter(|d| !req.recipients.contains(d)));
        }
        tx.execute(
            "INSERT INTO sends (user, device, client_id, message_id, seq, epoch, accepted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                sender.user.as_str(),
                sender_dev,
                req.client_id,
                to_i64(id),
                to_i64(seq),
                to_i64(new_epoch),
                to_i64(now)
            ],
        )?;
        tx.commit()?;
        Ok(Submitted::Accepted {
            response: SendResponse {
                id,
                seq,
                epoch: new_epoch,
                accepted_at: now,
            },
            wake,
        })
    }

    fn fetch(&self, device: &DeviceAddr, limit: u32) -> Result<Vec<QueuedMessage>, StorageError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT m.id, m.group_id, m.seq, m.sender_user, m.sender_device, m.kind, m.data, m.accepted_at
             FROM queue q JOIN messages m ON m.id = q.message_id
             WHERE q.user = ?1 AND q.device = ?2 ORDER BY q.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                device.user.as_str(),
                device.device.to_string(),
                i64::from(limit)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            },
        )?;
        rows.map(|row| {
            let (id, group, seq, user, dev, kind, data, at) = row?;
            Ok(QueuedMessage {
                id: to_u64(id),
                group_id: GroupId::from_bytes(&group).map_err(|_| corrupt("group id"))?,
                seq: to_u64(seq),
                sender: addr(user, dev)?,
                kind: if kind == KIND_WELCOME {
                    QueuedKind::Welcome
                } else {
                    QueuedKind::Group
                },
                message: Bytes(data),
                accepted_at: to_u64(at),
            })
        })
        .collect()
    }

    fn ack(&self, device: &DeviceAddr, ids: &[u64]) -> Result<u64, StorageError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let dev = device.device.to_string();
        let mut removed = 0;
        for id in ids {
            let n = tx.execute(
                "DELETE FROM queue WHERE user = ?1 AND device = ?2 AND message_id = ?3",
                params![device.user.as_str(), dev, to_i64(*id)],
            )?;
            if n > 0 {
                removed += n as u64;
                tx.execute(
                    "DELETE FROM messages WHERE id = ?1
                     AND NOT EXISTS (SELECT 1 FROM queue WHERE message_id = ?1)",
                    [to_i64(*id)],
                )?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let deleted = tx.execute(
            "DELETE FROM messages WHERE accepted_at < ?1",
            [to_i64(cutoff)],
        )?;
        tx.execute("DELETE FROM sends WHERE accepted_at < ?1", [to_i64(cutoff)])?;
        tx.execute(
            "DELETE FROM challenges WHERE expires_at <= ?1",
            [to_i64(now)],
        )?;
        tx.execute("DELETE FROM tokens WHERE expires_at <= ?1", [to_i64(now)])?;
        tx.commit()?;
        Ok(deleted as u64)
    }
}
