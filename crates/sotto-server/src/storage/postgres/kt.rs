//! The key-transparency log's records in PostgreSQL, and the lock that lets one node at a
//! time publish.

use super::{PostgresStorage, to_i64, to_u64};
use crate::storage::{KtEpoch, KtPublisher, KtState, KtStore, StorageError};
use async_trait::async_trait;
use sotto_proto::Username;
use std::collections::HashMap;

/// The advisory lock held by the node that publishes the log's next epoch.
const PUBLISHER_LOCK: i64 = 0x5077_0002;

#[async_trait]
impl KtStore for PostgresStorage {
    async fn kt_write(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        states: Vec<KtState>,
    ) -> Result<(), StorageError> {
        // One statement may not touch a row twice: the last record of an id wins.
        let nodes: HashMap<Vec<u8>, Vec<u8>> = nodes.into_iter().collect();
        let (ids, data): (Vec<Vec<u8>>, Vec<Vec<u8>>) = nodes.into_iter().unzip();
        let states: HashMap<(Vec<u8>, i64), Vec<u8>> = states
            .into_iter()
            .map(|s| ((s.label, to_i64(s.epoch)), s.data))
            .collect();
        let mut labels = Vec::with_capacity(states.len());
        let mut epochs = Vec::with_capacity(states.len());
        let mut values = Vec::with_capacity(states.len());
        for ((label, epoch), value) in states {
            labels.push(label);
            epochs.push(epoch);
            values.push(value);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO kt_nodes (id, data) SELECT * FROM UNNEST($1::bytea[], $2::bytea[])
             ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
            &[&ids, &data],
        )
        .await?;
        tx.execute(
            "INSERT INTO kt_states (label, epoch, data)
             SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bytea[])
             ON CONFLICT (label, epoch) DO UPDATE SET data = EXCLUDED.data",
            &[&labels, &epochs, &values],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn kt_nodes(&self, ids: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, data FROM kt_nodes WHERE id = ANY($1::bytea[])",
                &[&ids],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtState>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT label, epoch, data FROM kt_states WHERE label = ANY($1::bytea[])",
                &[&labels],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| KtState {
                label: r.get(0),
                epoch: to_u64(r.get(1)),
                data: r.get(2),
            })
            .collect())
    }

    async fn kt_pending(&self, limit: usize) -> Result<Vec<(u64, Option<Username>)>, StorageError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, username FROM kt_pending ORDER BY id LIMIT $1",
                &[&limit],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let user: String = r.get(1);
                (to_u64(r.get(0)), Username::parse(&user).ok())
            })
            .collect())
    }

    async fn kt_published(&self, ids: &[u64]) -> Result<(), StorageError> {
        let ids: Vec<i64> = ids.iter().map(|id| to_i64(*id)).collect();
        self.client()
            .await?
            .execute(
                "DELETE FROM kt_pending WHERE id = ANY($1::bigint[])",
                &[&ids],
            )
            .await?;
        Ok(())
    }

    async fn kt_publisher(&self) -> Result<Option<KtPublisher>, StorageError> {
        // A session lock on a connection of its own, taken out of the pool: it is released
        // when the guard drops the connection, or when the node dies and the database closes
        // its session.
        let client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PUBLISHER_LOCK])
            .await?
            .get(0);
        if !locked {
            return Ok(None);
        }
        let own = deadpool_postgres::Object::take(client);
        Ok(Some(KtPublisher::holding(Box::new(own))))
    }

    async fn kt_record_epoch(&self, epoch: &KtEpoch) -> Result<(), StorageError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO kt_epochs (epoch, root, audit) VALUES ($1, $2, $3)
                 ON CONFLICT (epoch) DO NOTHING",
                &[&to_i64(epoch.epoch), &epoch.root, &epoch.audit],
            )
            .await?;
        Ok(())
    }

    async fn kt_epoch(&self, epoch: u64) -> Result<Option<KtEpoch>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT root, audit FROM kt_epochs WHERE epoch = $1",
                &[&to_i64(epoch)],
            )
            .await?;
        Ok(row.map(|r| KtEpoch {
            epoch,
            root: r.get(0),
            audit: r.get(1),
        }))
    }

    async fn kt_root(&self, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT root FROM kt_epochs WHERE epoch = $1",
                &[&to_i64(epoch)],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn kt_first_epoch(&self) -> Result<Option<u64>, StorageError> {
        let first: Option<i64> = self
            .client()
            .await?
            .query_one("SELECT MIN(epoch) FROM kt_epochs", &[])
            .await?
            .get(0);
        Ok(first.map(to_u64))
    }

    async fn kt_cosign(
        &self,
        epoch: u64,
        witness: &str,
        time: u64,
        line: &str,
    ) -> Result<(), StorageError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO kt_cosignatures (epoch, witness, time, line) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (epoch, witness) DO UPDATE SET time = EXCLUDED.time,
                     line = EXCLUDED.line
                 WHERE EXCLUDED.time > kt_cosignatures.time",
                &[&to_i64(epoch), &witness, &to_i64(time), &line],
            )
            .await?;
        Ok(())
    }

    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<(String, String)>, StorageError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT witness, line FROM kt_cosignatures WHERE epoch = $1 ORDER BY witness",
                &[&to_i64(epoch)],
            )
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
