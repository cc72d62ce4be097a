//! The key-transparency log's records in SQLite.

use super::{SqliteStorage, to_i64, to_u64};
use crate::storage::{KtEpoch, KtPublisher, KtState, KtStore, StorageError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use sotto_proto::Username;

#[async_trait]
impl KtStore for SqliteStorage {
    async fn kt_write(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        states: Vec<KtState>,
    ) -> Result<(), StorageError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut node = tx.prepare_cached(
                    "INSERT INTO kt_nodes (id, data) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                )?;
                for (id, data) in &nodes {
                    node.execute(params![id, data])?;
                }
                let mut state = tx.prepare_cached(
                    "INSERT INTO kt_states (label, epoch, data) VALUES (?1, ?2, ?3)
                     ON CONFLICT (label, epoch) DO UPDATE SET data = excluded.data",
                )?;
                for s in &states {
                    state.execute(params![s.label, to_i64(s.epoch), s.data])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn kt_nodes(&self, ids: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let ids = ids.to_vec();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(ids.len());
            {
                let mut get = tx.prepare_cached("SELECT data FROM kt_nodes WHERE id = ?1")?;
                for id in ids {
                    let data: Option<Vec<u8>> = get.query_row([&id], |r| r.get(0)).optional()?;
                    if let Some(data) = data {
                        out.push((id, data));
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtState>, StorageError> {
        let labels = labels.to_vec();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let mut out = Vec::new();
            {
                let mut get =
                    tx.prepare_cached("SELECT epoch, data FROM kt_states WHERE label = ?1")?;
                for label in labels {
                    let rows = get.query_map([&label], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })?;
                    for row in rows {
                        let (epoch, data) = row?;
                        out.push(KtState {
                            label: label.clone(),
                            epoch: to_u64(epoch),
                            data,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn kt_pending(&self, limit: usize) -> Result<Vec<(u64, Option<Username>)>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut get =
                conn.prepare_cached("SELECT id, user FROM kt_pending ORDER BY id LIMIT ?1")?;
            let rows = get.query_map([limit], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, user) = row?;
                out.push((to_u64(id), Username::parse(&user).ok()));
            }
            Ok(out)
        })
        .await
    }

    async fn kt_published(&self, ids: &[u64]) -> Result<(), StorageError> {
        let ids = ids.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM kt_pending WHERE id = ?1")?;
                for id in ids {
                    delete.execute([to_i64(id)])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn kt_publisher(&self) -> Result<Option<KtPublisher>, StorageError> {
        // One process owns this storage.
        Ok(Some(KtPublisher::sole()))
    }

    async fn kt_record_epoch(&self, epoch: &KtEpoch) -> Result<(), StorageError> {
        let epoch = epoch.clone();
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO kt_epochs (epoch, root, audit) VALUES (?1, ?2, ?3)
                 ON CONFLICT (epoch) DO NOTHING",
            )?
            .execute(params![to_i64(epoch.epoch), epoch.root, epoch.audit])?;
            Ok(())
        })
        .await
    }

    async fn kt_epoch(&self, epoch: u64) -> Result<Option<KtEpoch>, StorageError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT root, audit FROM kt_epochs WHERE epoch = ?1")?
                .query_row([to_i64(epoch)], |r| {
                    Ok(KtEpoch {
                        epoch,
                        root: r.get(0)?,
                        audit: r.get(1)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn kt_root(&self, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT root FROM kt_epochs WHERE epoch = ?1")?
                .query_row([to_i64(epoch)], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn kt_first_epoch(&self) -> Result<Option<u64>, StorageError> {
        self.read(|conn| {
            let first: Option<i64> =
                conn.query_row("SELECT MIN(epoch) FROM kt_epochs", [], |r| r.get(0))?;
            Ok(first.map(to_u64))
        })
        .await
    }

    async fn kt_cosign(
        &self,
        epoch: u64,
        witness: &str,
        time: u64,
        line: &str,
    ) -> Result<(), StorageError> {
        let (witness, line) = (witness.to_owned(), line.to_owned());
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO kt_cosignatures (epoch, witness, time, line) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (epoch, witness) DO UPDATE SET time = excluded.time,
                     line = excluded.line
                 WHERE excluded.time > kt_cosignatures.time",
            )?
            .execute(params![to_i64(epoch), witness, to_i64(time), line])?;
            Ok(())
        })
        .await
    }

    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<(String, String)>, StorageError> {
        self.read(move |conn| {
            let mut get = conn.prepare_cached(
                "SELECT witness, line FROM kt_cosignatures WHERE epoch = ?1 ORDER BY witness",
            )?;
            let rows = get.query_map([to_i64(epoch)], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }
}
