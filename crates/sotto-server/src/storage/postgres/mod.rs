//! PostgreSQL storage, for several server nodes sharing one database. The SQL of each concern
//! lives beside it: this file (the server's identity, accounts, sign-in and KeyPackages),
//! `delivery` (ordering and queues) and `schema` (the migrations). Every statement is prepared once per
//! connection; connections come from a pool.

mod delivery;
mod devices;
mod kt;
mod schema;
mod tx;

use schema::MIGRATIONS;

use super::{
    Account, AccountStore, AuthStore, Claim, KeyPackageStore, ServerStore, Stats, StorageError,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use sotto_proto::api::{ClaimedKeyPackage, KeyPackageCount, ValidRegistration, ValidUpload};
use sotto_proto::{DeviceAddr, DeviceId, ServerId, Username};
use tokio_postgres::NoTls;

/// The advisory lock that serializes migrations between nodes starting together.
const MIGRATION_LOCK: i64 = 0x5077_0001;

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        if unreachable(&e) {
            StorageError::unavailable(e.to_string())
        } else {
            StorageError::new(e.to_string())
        }
    }
}

/// Whether `e` says the database cannot be reached for now, rather than that it refused or
/// failed a statement: a lost or refused connection, a server shutting down or starting, no
/// connection slot free, a lock not granted in time.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            (code.code().starts_with("08") && *code != SqlState::PROTOCOL_VIOLATION)
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::LOCK_NOT_AVAILABLE,
                    SqlState::QUERY_CANCELED,
                ]
                .contains(code)
        }
        // No answer from the server at all: the connection itself failed.
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) | PoolError::Closed => StorageError::unavailable(e.to_string()),
            e => StorageError::new(e.to_string()),
        }
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn addr(user: &str, device: &str) -> Result<DeviceAddr, StorageError> {
    Ok(DeviceAddr {
        user: Username::parse(user).map_err(|_| StorageError::corrupt("user"))?,
        device: DeviceId::parse(device).map_err(|_| StorageError::corrupt("device"))?,
    })
}

/// A transaction at READ COMMITTED whatever the database's default: every statement after a
/// lock sees what the lock's previous holder committed.
async fn read_committed(
    client: &mut Object,
) -> Result<deadpool_postgres::Transaction<'_>, StorageError> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await?)
}

/// PostgreSQL-backed [`super::Storage`].
pub struct PostgresStorage {
    pool: Pool,
}

impl PostgresStorage {
    /// Connects to the database at `url` (a `postgres://` URL or key=value string), in
    /// `schema` if given (created if needed), and migrates it.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, StorageError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StorageError::new(format!("database URL: {e}")))?;
        // A statement waiting for a lock or running long, or a transaction left idle by a
        // stalled node, gives up instead of stopping every other node's sends; a database
        // that stops answering without closing the connection is noticed by TCP keepalives.
        let mut options = config.get_options().unwrap_or_default().to_owned();
        options.push_str(
            " -c lock_timeout=10s -c statement_timeout=30s \
             -c idle_in_transaction_session_timeout=60s",
        );
        config
            .connect_timeout(std::time::Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3);
        if let Some(schema) = schema {
            let valid = !schema.is_empty()
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(StorageError::new("schema names are letters, digits and _"));
            }
            options.push_str(&format!(" -c search_path={schema}"));
            config.options(options.trim());
            let (client, connection) = config.connect(NoTls).await?;
            let task = tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
            drop(client);
            let _ = task.await;
        }
        config.options(options.trim());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| StorageError::new(e.to_string()))?;
        let storage = PostgresStorage { pool };
        storage.migrate().await?;
        Ok(storage)
    }

    async fn client(&self) -> Result<Object, StorageError> {
        Ok(self.pool.get().await?)
    }

    async fn migrate(&self) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let tx = read_committed(&mut client).await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .await?;
        let current: Option<i64> = tx
            .query_opt("SELECT version FROM schema_version", &[])
            .await?
            .map(|r| r.get(0));
        let current = usize::try_from(current.unwrap_or(0))
            .map_err(|_| StorageError::corrupt("schema_version"))?;
        if current > MIGRATIONS.len() {
            return Err(StorageError::new(format!(
                "database schema version {current} is newer than this server ({})",
                MIGRATIONS.len()
            )));
        }
        for sql in MIGRATIONS.iter().skip(current) {
            tx.batch_execute(sql).await?;
        }
        let version = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        tx.execute("DELETE FROM schema_version", &[]).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        // The server's identity and challenge key are chosen once, when its storage is created.
        let id = ServerId::from_bytes(rand::random());
        tx.execute(
            "INSERT INTO server_meta (key, value) VALUES ('server_id', $1) ON CONFLICT DO NOTHING",
            &[&id.as_str().as_bytes()],
        )
        .await?;
        for name in ["challenge_key", "kt_vrf_key", "kt_checkpoint_key"] {
            let key = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
            tx.execute(
                "INSERT INTO server_meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&name, &&key[..]],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn meta(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value FROM server_meta WHERE key = $1", &[&key])
            .await?
            .ok_or_else(|| StorageError::corrupt("server_meta missing"))?;
        Ok(row.get(0))
    }

    /// A 32-byte secret of `server_meta`.
    async fn secret(&self, name: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        super::secret_key(self.meta(name).await?, name)
    }
}

#[async_trait]
impl ServerStore for PostgresStorage {
    async fn server_id(&self) -> Result<ServerId, StorageError> {
        let id = self.meta("server_id").await?;
        std::str::from_utf8(&id)
            .ok()
            .and_then(|id| ServerId::parse(id).ok())
            .ok_or_else(|| StorageError::corrupt("server_id"))
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
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT (SELECT COUNT(*) FROM accounts), (SELECT COUNT(*) FROM devices),
                        (SELECT COUNT(*) FROM tokens), (SELECT COUNT(*) FROM used_challenges),
                        (SELECT COUNT(*) FROM key_packages),
                        (SELECT COUNT(*) FROM last_resort_key_packages),
                        (SELECT COUNT(*) FROM groups), (SELECT COUNT(*) FROM group_roster),
                        (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM queue),
                        (SELECT COUNT(*) FROM sends)",
                &[],
            )
            .await?;
        let n = |i: usize| to_u64(row.get::<_, i64>(i));
        Ok(Stats {
            accounts: n(0),
            devices: n(1),
            tokens: n(2),
            used_challenges: n(3),
            key_packages: n(4),
            last_resort_key_packages: n(5),
            groups: n(6),
            roster_entries: n(7),
            messages: n(8),
            queue_entries: n(9),
            sends: n(10),
        })
    }
}

#[async_trait]
impl AccountStore for PostgresStorage {
    async fn create_account(
        &self,
        account: &ValidRegistration,
        now: u64,
    ) -> Result<bool, StorageError> {
        let mut client = self.client().await?;
        let tx = read_committed(&mut client).await?;
        let list = account.device_list.list();
        let user = list.user.as_str();
        let inserted = tx
            .execute(
                "INSERT INTO accounts (username, identity_key, device_list_body,
                 device_list_signature, revision, created_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (username) DO NOTHING",
                &[
                    &user,
                    &account.identity_key,
                    &account.device_list.signed().body.as_slice(),
                    &account.device_list.signed().signature.as_slice(),
                    &to_i64(list.revision),
                    &to_i64(now),
                ],
            )
            .await?;
        if inserted == 0 {
            return Ok(false);
        }
        for d in &list.devices {
            let device = d.id.to_string();
            tx.execute(
                "INSERT INTO devices (username, device, signature_key) VALUES ($1, $2, $3)",
                &[&user, &device, &d.signature_key.as_slice()],
            )
            .await?;
            // Registration carries the KeyPackages of its one device.
            for kp in &account.key_packages {
                tx.execute(
                    "INSERT INTO key_packages (username, device, data) VALUES ($1, $2, $3)",
                    &[&user, &device, kp],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO last_resort_key_packages (username, device, data) VALUES ($1, $2, $3)",
                &[&user, &device, &account.last_resort],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn account(&self, user: &Username) -> Result<Option<Account>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT identity_key, device_list_body, device_list_signature FROM accounts
                 WHERE username = $1",
                &[&user.as_str()],
            )
            .await?;
        Ok(row.map(|r| Account {
            identity_key: r.get(0),
            device_list_body: r.get(1),
            device_list_signature: r.get(2),
        }))
    }

    async fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT signature_key FROM devices WHERE username = $1 AND device = $2",
                &[&device.user.as_str(), &device.device.to_string()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn devices_seen(
        &self,
        user: &Username,
    ) -> Result<Vec<(DeviceId, Option<u64>)>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT device, last_seen FROM devices WHERE username = $1 ORDER BY device",
                &[&user.as_str()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let device =
                    DeviceId::parse(r.get(0)).map_err(|_| StorageError::corrupt("device"))?;
                Ok((device, r.get::<_, Option<i64>>(1).map(to_u64)))
            })
            .collect()
    }

    async fn update_device_list(
        &self,
        update: &sotto_proto::device_list::ValidDeviceListUpdate,
    ) -> Result<bool, StorageError> {
        let mut client = self.client().await?;
        devices::update_device_list(&mut client, update).await
    }
}

#[async_trait]
impl AuthStore for PostgresStorage {
    async fn use_challenge(
        &self,
        challenge_hash: &[u8],
        expires_at: u64,
    ) -> Result<bool, StorageError> {
        let inserted = self
            .client()
            .await?
            .execute(
                "INSERT INTO used_challenges (challenge_hash, expires_at) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[&challenge_hash, &to_i64(expires_at)],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn put_token(
        &self,
        token_hash: &[u8],
        device: &DeviceAddr,
        now: u64,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        // One statement, so the token and the sign-in time are stored together.
        self.client()
            .await?
            .execute(
                "WITH token AS (
                     INSERT INTO tokens (token_hash, username, device, expires_at)
                     VALUES ($1, $2, $3, $4)
                 )
                 UPDATE devices SET last_seen = GREATEST(COALESCE(last_seen, 0), $5)
                 WHERE username = $2 AND device = $3",
                &[
                    &token_hash,
                    &device.user.as_str(),
                    &device.device.to_string(),
                    &to_i64(expires_at),
                    &to_i64(now),
                ],
            )
            .await?;
        Ok(())
    }

    async fn token(&self, token_hash: &[u8]) -> Result<Option<(DeviceAddr, u64)>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT username, device, expires_at FROM tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .await?;
        row.map(|r| {
            let (user, device): (String, String) = (r.get(0), r.get(1));
            Ok((addr(&user, &device)?, to_u64(r.get(2))))
        })
        .transpose()
    }
}

async fn count_key_packages(
    client: &impl deadpool_postgres::GenericClient,
    device: &DeviceAddr,
) -> Result<KeyPackageCount, StorageError> {
    let (user, dev) = (device.user.as_str(), device.device.to_string());
    let row = client
        .query_one(
            "SELECT (SELECT COUNT(*) FROM key_packages WHERE username = $1 AND device = $2),
                    (SELECT COUNT(*) FROM last_resort_key_packages
                     WHERE username = $1 AND device = $2)",
            &[&user, &dev],
        )
        .await?;
    Ok(KeyPackageCount {
        count: to_u64(row.get(0)),
        last_resort: row.get::<_, i64>(1) > 0,
    })
}

#[async_trait]
impl KeyPackageStore for PostgresStorage {
    async fn add_key_packages(
        &self,
        device: &DeviceAddr,
        upload: &ValidUpload,
        max_stored: u64,
    ) -> Result<Option<KeyPackageCount>, StorageError> {
        let mut client = self.client().await?;
        let tx = read_committed(&mut client).await?;
        let (user, dev) = (device.user.as_str(), device.device.to_string());
        // One upload at a time per device, so that two cannot both pass the cap.
        tx.execute(
            "SELECT 1 FROM devices WHERE username = $1 AND device = $2 FOR UPDATE",
            &[&user, &dev],
        )
        .await?;
        let before = count_key_packages(&tx, device).await?;
        if before.count.saturating_add(upload.one_time.len() as u64) > max_stored {
            return Ok(None);
        }
        for kp in &upload.one_time {
            tx.execute(
                "INSERT INTO key_packages (username, device, data) VALUES ($1, $2, $3)",
                &[&user, &dev, kp],
            )
            .await?;
        }
        if let Some(kp) = &upload.last_resort {
            tx.execute(
                "INSERT INTO last_resort_key_packages (username, device, data) VALUES ($1, $2, $3)
                 ON CONFLICT (username, device) DO UPDATE SET data = EXCLUDED.data",
                &[&user, &dev, kp],
            )
            .await?;
        }
        let after = count_key_packages(&tx, device).await?;
        tx.commit().await?;
        Ok(Some(after))
    }

    async fn key_package_count(
        &self,
        device: &DeviceAddr,
    ) -> Result<KeyPackageCount, StorageError> {
        let client = self.client().await?;
        count_key_packages(&client, device).await
    }

    async fn claim_key_packages(
        &self,
        user: &Username,
        one_time: bool,
    ) -> Result<Claim, StorageError> {
        let mut client = self.client().await?;
        let tx = read_committed(&mut client).await?;
        let devices: Vec<String> = tx
            .query(
                "SELECT device FROM devices WHERE username = $1 ORDER BY device",
                &[&user.as_str()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if devices.is_empty() {
            return Ok(Claim::UnknownUser);
        }
        let mut claimed = Vec::with_capacity(devices.len());
        for dev in devices {
            let taken: Option<Vec<u8>> = if one_time {
                // Each one-time KeyPackage goes to exactly one claimer, oldest first: a row
                // another claim has locked is waited for (that claim may yet roll back).
                tx.query_opt(
                    "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages
                     WHERE username = $1 AND device = $2 ORDER BY id LIMIT 1
                     FOR UPDATE) RETURNING data",
                    &[&user.as_str(), &dev],
                )
                .await?
                .map(|r| r.get(0))
            } else {
                None
            };
            let key_package = match taken {
                Some(kp) => kp,
                None => {
                    let last_resort = tx
                        .query_opt(
                            "SELECT data FROM last_resort_key_packages
                             WHERE username = $1 AND device = $2",
                            &[&user.as_str(), &dev],
                        )
                        .await?;
                    // Dropping the transaction rolls back what was taken for other devices.
                    let Some(row) = last_resort else {
                        return Ok(Claim::Exhausted);
                    };
                    row.get(0)
                }
            };
            claimed.push(ClaimedKeyPackage {
                device: DeviceId::parse(&dev).map_err(|_| StorageError::corrupt("device"))?,
                key_package: key_package.into(),
            });
        }
        tx.commit().await?;
        Ok(Claim::Claimed(claimed))
    }
}
