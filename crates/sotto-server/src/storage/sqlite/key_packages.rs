//! The KeyPackage directory in SQLite: one-time KeyPackages taken once each, and one
//! last-resort KeyPackage per device.

use super::{SqliteStorage, corrupt, to_u64};
use crate::storage::{Claim, KeyPackageStore, StorageError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sotto_proto::api::{ClaimedKeyPackage, KeyPackageCount, ValidUpload};
use sotto_proto::{DeviceAddr, DeviceId, Username};

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

#[async_trait]
impl KeyPackageStore for SqliteStorage {
    async fn add_key_packages(
        &self,
        device: &DeviceAddr,
        upload: &ValidUpload,
        max_stored: u64,
    ) -> Result<Option<KeyPackageCount>, StorageError> {
        let (device, upload) = (device.clone(), upload.clone());
        self.run(move |conn| {
            let device = &device;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let before = count_key_packages(&tx, device)?;
            if before.count.saturating_add(upload.one_time.len() as u64) > max_stored {
                return Ok(None);
            }
            let dev = device.device.to_string();
            for kp in &upload.one_time {
                tx.execute(
                    "INSERT INTO key_packages (user, device, data) VALUES (?1, ?2, ?3)",
                    params![device.user.as_str(), dev, kp],
                )?;
            }
            if let Some(kp) = &upload.last_resort {
                tx.execute(
                    "INSERT INTO last_resort_key_packages (user, device, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user, device) DO UPDATE SET data = excluded.data",
                    params![device.user.as_str(), dev, kp],
                )?;
            }
            let after = count_key_packages(&tx, device)?;
            tx.commit()?;
            Ok(Some(after))
        })
        .await
    }

    async fn key_package_count(
        &self,
        device: &DeviceAddr,
    ) -> Result<KeyPackageCount, StorageError> {
        let device = device.clone();
        self.read(move |conn| count_key_packages(conn, &device))
            .await
    }

    async fn claim_key_packages(
        &self,
        user: &Username,
        one_time: bool,
    ) -> Result<Claim, StorageError> {
        let user = user.clone();
        self.run(move |conn| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let devices: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT device FROM devices WHERE user = ?1 ORDER BY device")?;
            stmt.query_map([user.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        if devices.is_empty() {
            return Ok(Claim::UnknownUser);
        }
        let mut claimed = Vec::with_capacity(devices.len());
        for dev in devices {
            let taken: Option<Vec<u8>> = if one_time {
                tx.query_row(
                    "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages
                     WHERE user = ?1 AND device = ?2 ORDER BY id LIMIT 1) RETURNING data",
                    params![user.as_str(), dev],
                    |r| r.get(0),
                )
                .optional()?
            } else {
                None
            };
            let key_package = match taken {
                Some(kp) => kp,
                None => {
                    let last_resort: Option<Vec<u8>> = tx
                        .query_row(
                            "SELECT data FROM last_resort_key_packages WHERE user = ?1 AND device = ?2",
                            params![user.as_str(), dev],
                            |r| r.get(0),
                        )
                        .optional()?;
                    // Dropping the transaction rolls back what was taken for other devices.
                    let Some(kp) = last_resort else {
                        return Ok(Claim::Exhausted);
                    };
                    kp
                }
            };
            claimed.push(ClaimedKeyPackage {
                device: DeviceId::parse(&dev).map_err(|_| corrupt("device"))?,
                key_package: key_package.into(),
            });
        }
        tx.commit()?;
        Ok(Claim::Claimed(claimed))
        })
        .await
    }
}
