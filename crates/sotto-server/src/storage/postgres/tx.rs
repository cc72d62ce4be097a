//! A delivery transaction on a pooled PostgreSQL connection: its statements, and what
//! happens to the connection when it ends without a commit.

use crate::storage::StorageError;
use deadpool_postgres::Object;
use sotto_proto::DeviceAddr;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// An open delivery transaction on a pooled connection.
pub(super) struct PgTx {
    /// `None` once committed.
    pub(super) client: Option<Object>,
    /// A statement failed: PostgreSQL has aborted the transaction, and a COMMIT would only
    /// roll it back, so it must not be reported as committed.
    pub(super) failed: std::sync::atomic::AtomicBool,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        // Dropped before its commit (a cancelled request, a failure, a panic): the connection
        // is taken out of the pool and closed, which makes PostgreSQL roll the transaction
        // back, rather than handed to the next caller with the transaction still open.
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl PgTx {
    pub(super) fn client(&self) -> Result<&Object, StorageError> {
        self.client
            .as_ref()
            .ok_or_else(|| StorageError::new("transaction already committed"))
    }

    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        let client = self.client()?;
        let result = match client.prepare_cached(sql).await {
            Ok(statement) => client.query(&statement, params).await,
            Err(e) => Err(e),
        };
        self.note(result)
    }

    /// Passes `result` on, remembering a failure.
    pub(super) fn note<T>(
        &self,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, StorageError> {
        if result.is_err() {
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(result?)
    }

    pub(super) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StorageError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    pub(super) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StorageError> {
        let client = self.client()?;
        let result = match client.prepare_cached(sql).await {
            Ok(statement) => client.execute(&statement, params).await,
            Err(e) => Err(e),
        };
        self.note(result)
    }
}

pub(super) fn pair(d: &DeviceAddr) -> (&str, String) {
    (d.user.as_str(), d.device.to_string())
}
