//! Device-list updates and link rendezvous in PostgreSQL.

use super::{PostgresStorage, read_committed, to_i64, to_u64};
use crate::storage::{Link, LinkStore, StorageError};
use async_trait::async_trait;
use deadpool_postgres::Object;
use sotto_proto::Username;
use sotto_proto::device_list::ValidDeviceListUpdate;
use sotto_proto::link::{LinkAnswer, LinkId};

/// See [`crate::storage::AccountStore::update_device_list`].
pub(super) async fn update_device_list(
    client: &mut Object,
    update: &ValidDeviceListUpdate,
) -> Result<bool, StorageError> {
    let tx = read_committed(client).await?;
    let list = update.device_list.list();
    let user = list.user.as_str();
    let signed = update.device_list.signed();
    // The row lock orders concurrent updates; the trigger on the body queues the account for
    // the log.
    let changed = tx
        .execute(
            "UPDATE accounts SET device_list_body = $2, device_list_signature = $3, revision = $4
             WHERE username = $1 AND revision = $5",
            &[
                &user,
                &signed.body.as_slice(),
                &signed.signature.as_slice(),
                &to_i64(list.revision),
                &to_i64(update.replaces),
            ],
        )
        .await?;
    if changed == 0 {
        return Ok(false);
    }
    if let Some((addr, one_time, last_resort)) = &update.added {
        let device = addr.device.to_string();
        let key = list
            .device(addr.device)
            .ok_or_else(|| StorageError::new("the device added is not in its list"))?;
        tx.execute(
            "INSERT INTO devices (username, device, signature_key) VALUES ($1, $2, $3)",
            &[&user, &device, &key.signature_key.as_slice()],
        )
        .await?;
        for kp in one_time {
            tx.execute(
                "INSERT INTO key_packages (username, device, data) VALUES ($1, $2, $3)",
                &[&user, &device, kp],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO last_resort_key_packages (username, device, data) VALUES ($1, $2, $3)",
            &[&user, &device, last_resort],
        )
        .await?;
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
                &format!("DELETE FROM {table} WHERE username = $1 AND device = $2"),
                &[&user, &device],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

#[async_trait]
impl LinkStore for PostgresStorage {
    async fn put_link(&self, id: &LinkId, link: &Link) -> Result<bool, StorageError> {
        let inserted = self
            .client()
            .await?
            .execute(
                "INSERT INTO links (id, username, offer, secret_hash, expires_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                &[
                    &&id.0[..],
                    &link.user.as_str(),
                    &link.offer,
                    &link.secret_hash,
                    &to_i64(link.expires_at),
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn link(&self, id: &LinkId, now: u64) -> Result<Option<Link>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT username, offer, secret_hash, expires_at, sealed, archive, mac FROM links
                 WHERE id = $1 AND expires_at > $2",
                &[&&id.0[..], &to_i64(now)],
            )
            .await?;
        row.map(|r| {
            let user: String = r.get(0);
            let sealed: Option<Vec<u8>> = r.get(4);
            let archive: Option<Vec<u8>> = r.get(5);
            let mac: Option<Vec<u8>> = r.get(6);
            Ok(Link {
                user: Username::parse(&user).map_err(|_| StorageError::corrupt("link user"))?,
                offer: r.get(1),
                secret_hash: r.get(2),
                expires_at: to_u64(r.get(3)),
                answer: sealed.map(|sealed| LinkAnswer {
                    sealed: sealed.into(),
                    mac: mac.unwrap_or_default().into(),
                    archive: archive.unwrap_or_default().into(),
                }),
            })
        })
        .transpose()
    }

    async fn answer_link(
        &self,
        id: &LinkId,
        answer: &LinkAnswer,
        now: u64,
    ) -> Result<bool, StorageError> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE links SET sealed = $2, archive = $3, mac = $5
                 WHERE id = $1 AND sealed IS NULL AND expires_at > $4",
                &[
                    &&id.0[..],
                    &answer.sealed.as_slice(),
                    &answer.archive.as_slice(),
                    &to_i64(now),
                    &answer.mac.as_slice(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn delete_link(&self, id: &LinkId) -> Result<(), StorageError> {
        self.client()
            .await?
            .execute("DELETE FROM links WHERE id = $1", &[&&id.0[..]])
            .await?;
        Ok(())
    }
}
