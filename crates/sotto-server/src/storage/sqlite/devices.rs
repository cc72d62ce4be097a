//! Device-list updates and link rendezvous in SQLite.

use super::{SqliteStorage, to_i64};
use crate::storage::{Link, LinkStore, StorageError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sotto_proto::Username;
use sotto_proto::device_list::ValidDeviceListUpdate;
use sotto_proto::link::{LinkAnswer, LinkId};

/// See [`crate::storage::AccountStore::update_device_list`].
pub(super) fn update_device_list(
    conn: &mut Connection,
    update: &ValidDeviceListUpdate,
) -> Result<bool, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let list = update.device_list.list();
    let user = list.user.as_str();
    let signed = update.device_list.signed();
    // The trigger on the body queues the account for the log.
    let changed = tx.execute(
        "UPDATE accounts SET device_list_body = ?2, device_list_signature = ?3, revision = ?4
         WHERE user = ?1 AND revision = ?5",
        params![
            user,
            signed.body.as_slice(),
            signed.signature.as_slice(),
            to_i64(list.revision),
            to_i64(update.replaces)
        ],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    if let Some((addr, one_time, last_resort)) = &update.added {
        let device = addr.device.to_string();
        let key = list
            .device(addr.device)
            .ok_or_else(|| StorageError::new("the device added is not in its list"))?;
        tx.execute(
            "INSERT INTO devices (user, device, signature_key) VALUES (?1, ?2, ?3)",
            params![user, device, key.signature_key.as_slice()],
        )?;
        for kp in one_time {
            tx.execute(
                "INSERT INTO key_packages (user, device, data) VALUES (?1, ?2, ?3)",
                params![user, device, kp],
            )?;
        }
        tx.execute(
            "INSERT INTO last_resort_key_packages (user, device, data) VALUES (?1, ?2, ?3)",
            params![user, device, last_resort],
        )?;
    }
    for gone in &update.removed {
        let device = gone.device.to_string();
        for table in [
            "devices",
            "key_packages",
            "last_resort_key_packages",
            "tokens",
            "queue",
            "device_queues",
            "group_roster",
        ] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE user = ?1 AND device = ?2"),
                params![user, device],
            )?;
        }
    }
    tx.commit()?;
    Ok(true)
}

#[async_trait]
impl LinkStore for SqliteStorage {
    async fn put_link(&self, id: &LinkId, link: &Link) -> Result<bool, StorageError> {
        let (id, link) = (*id, link.clone());
        self.run(move |conn| {
            let inserted = conn.execute(
                "INSERT INTO links (id, user, offer, secret_hash, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
                params![
                    &id.0[..],
                    link.user.as_str(),
                    link.offer,
                    link.secret_hash,
                    to_i64(link.expires_at)
                ],
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn link(&self, id: &LinkId, now: u64) -> Result<Option<Link>, StorageError> {
        let id = *id;
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT user, offer, secret_hash, expires_at, sealed, archive, mac FROM links
                     WHERE id = ?1 AND expires_at > ?2",
                    params![&id.0[..], to_i64(now)],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<Vec<u8>>>(4)?,
                            r.get::<_, Option<Vec<u8>>>(5)?,
                            r.get::<_, Option<Vec<u8>>>(6)?,
                        ))
                    },
                )
                .optional()?;
            row.map(
                |(user, offer, secret_hash, expires_at, sealed, archive, mac)| {
                    Ok(Link {
                        user: Username::parse(&user)
                            .map_err(|_| StorageError::corrupt("link user"))?,
                        offer,
                        secret_hash,
                        expires_at: super::to_u64(expires_at),
                        answer: sealed.map(|sealed| LinkAnswer {
                            sealed: sealed.into(),
                            mac: mac.unwrap_or_default().into(),
                            archive: archive.unwrap_or_default().into(),
                        }),
                    })
                },
            )
            .transpose()
        })
        .await
    }

    async fn answer_link(
        &self,
        id: &LinkId,
        answer: &LinkAnswer,
        now: u64,
    ) -> Result<bool, StorageError> {
        let (id, answer) = (*id, answer.clone());
        self.run(move |conn| {
            let changed = conn.execute(
                "UPDATE links SET sealed = ?2, archive = ?3, mac = ?5
                 WHERE id = ?1 AND sealed IS NULL AND expires_at > ?4",
                params![
                    &id.0[..],
                    answer.sealed.as_slice(),
                    answer.archive.as_slice(),
                    to_i64(now),
                    answer.mac.as_slice()
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_link(&self, id: &LinkId) -> Result<(), StorageError> {
        let id = *id;
        self.run(move |conn| {
            conn.execute("DELETE FROM links WHERE id = ?1", [&id.0[..]])?;
            Ok(())
        })
        .await
    }
}
