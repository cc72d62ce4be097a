//! Accounts, their devices, and sign-in (used challenges and token hashes) in SQLite.

use super::{SqliteStorage, addr, corrupt, to_i64, to_u64};
use crate::storage::{Account, AccountStore, AuthStore, StorageError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use sotto_proto::api::ValidRegistration;
use sotto_proto::device_list::ValidDeviceListUpdate;
use sotto_proto::{DeviceAddr, DeviceId, Username};

#[async_trait]
impl AccountStore for SqliteStorage {
    async fn create_account(
        &self,
        account: &ValidRegistration,
        now: u64,
    ) -> Result<bool, StorageError> {
        let account = account.clone();
        self.run(move |conn| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let list = account.device_list.list();
        let user = list.user.as_str();
        let inserted = tx.execute(
            "INSERT INTO accounts (user, identity_key, device_list_body, device_list_signature, revision, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (user) DO NOTHING",
            params![
                user,
                account.identity_key,
                account.device_list.signed().body.as_slice(),
                account.device_list.signed().signature.as_slice(),
                to_i64(list.revision),
                to_i64(now)
            ],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        for d in &list.devices {
            let device = d.id.to_string();
            tx.execute(
                "INSERT INTO devices (user, device, signature_key) VALUES (?1, ?2, ?3)",
                params![user, device, d.signature_key.as_slice()],
            )?;
            // Registration carries the KeyPackages of its one device.
            for kp in &account.key_packages {
                tx.execute(
                    "INSERT INTO key_packages (user, device, data) VALUES (?1, ?2, ?3)",
                    params![user, device, kp],
                )?;
            }
            tx.execute(
                "INSERT INTO last_resort_key_packages (user, device, data) VALUES (?1, ?2, ?3)",
                params![user, device, account.last_resort],
            )?;
        }
        tx.commit()?;
        Ok(true)
        })
        .await
    }

    async fn account(&self, user: &Username) -> Result<Option<Account>, StorageError> {
        let user = user.clone();
        self.read(move |conn| {
        Ok(conn
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
        })
        .await
    }

    async fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError> {
        let device = device.clone();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT signature_key FROM devices WHERE user = ?1 AND device = ?2",
                )?
                .query_row(
                    params![device.user.as_str(), device.device.to_string()],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn devices_seen(
        &self,
        user: &Username,
    ) -> Result<Vec<(DeviceId, Option<u64>)>, StorageError> {
        let user = user.clone();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT device, last_seen FROM devices WHERE user = ?1 ORDER BY device",
            )?;
            let rows = statement.query_map([user.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })?;
            let mut seen = Vec::new();
            for row in rows {
                let (device, last_seen) = row?;
                let device = DeviceId::parse(&device).map_err(|_| corrupt("device"))?;
                seen.push((device, last_seen.map(to_u64)));
            }
            Ok(seen)
        })
        .await
    }

    async fn update_device_list(
        &self,
        update: &ValidDeviceListUpdate,
    ) -> Result<bool, StorageError> {
        let update = update.clone();
        self.run(move |conn| super::devices::update_device_list(conn, &update))
            .await
    }
}

#[async_trait]
impl AuthStore for SqliteStorage {
    async fn use_challenge(
        &self,
        challenge_hash: &[u8],
        expires_at: u64,
    ) -> Result<bool, StorageError> {
        let challenge_hash = challenge_hash.to_vec();
        self.run(move |conn| {
            let inserted = conn.execute(
            "INSERT OR IGNORE INTO used_challenges (challenge_hash, expires_at) VALUES (?1, ?2)",
            params![&challenge_hash, to_i64(expires_at)],
        )?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn put_token(
        &self,
        token_hash: &[u8],
        device: &DeviceAddr,
        now: u64,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        let (token_hash, device) = (token_hash.to_vec(), device.clone());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (user, id) = (device.user.as_str(), device.device.to_string());
            tx.execute(
                "INSERT INTO tokens (token_hash, user, device, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&token_hash, user, &id, to_i64(expires_at)],
            )?;
            tx.execute(
                "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?3)
                 WHERE user = ?1 AND device = ?2",
                params![user, &id, to_i64(now)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn token(&self, token_hash: &[u8]) -> Result<Option<(DeviceAddr, u64)>, StorageError> {
        let token_hash = token_hash.to_vec();
        self.read(move |conn| {
            let row: Option<(String, String, i64)> = conn
                .prepare_cached(
                    "SELECT user, device, expires_at FROM tokens WHERE token_hash = ?1",
                )?
                .query_row([&token_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            row.map(|(u, d, exp)| Ok((addr(u, d)?, to_u64(exp))))
                .transpose()
        })
        .await
    }
}
