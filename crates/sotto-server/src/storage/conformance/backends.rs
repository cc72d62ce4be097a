//! The backends the conformance suite runs against, each made fresh for one test.

use crate::storage::Storage;
use std::sync::Arc;

/// A backend under test, and whatever must live as long as it (a directory, a schema).
pub(super) type UnderTest = Option<(Arc<dyn Storage>, Box<dyn std::any::Any + Send>)>;

pub(super) async fn memory() -> UnderTest {
    Some((
        Arc::new(crate::storage::memory::MemoryStorage::new()),
        Box::new(()),
    ))
}

pub(super) async fn sqlite() -> UnderTest {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = crate::storage::sqlite::SqliteStorage::open(dir.path()).expect("a new database");
    Some((Arc::new(storage), Box::new(dir)))
}

/// The environment variable with the PostgreSQL the suite runs against (`.ci/run` sets it).
const POSTGRES_URL: &str = "SOTTO_TEST_POSTGRES";

/// A schema of its own in the PostgreSQL of [`POSTGRES_URL`], dropped when the test ends.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // Outside the test's runtime, which is shutting down.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("the test database");
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                    .await
                    .expect("the schema dropped");
            });
        })
        .join();
        if dropped.is_err() {
            // Not a panic in a destructor: it would abort every other test.
            eprintln!("dropping the test schema {} failed", self.name);
        }
    }
}

pub(super) async fn postgres() -> UnderTest {
    let Ok(url) = std::env::var(POSTGRES_URL) else {
        eprintln!("skipped: set {POSTGRES_URL} to a PostgreSQL URL to run this against it");
        return None;
    };
    let name = format!("sotto_test_{}", hex::encode(rand::random::<[u8; 8]>()));
    let storage = crate::storage::postgres::PostgresStorage::connect(&url, Some(&name))
        .await
        .expect("the test database");
    Some((Arc::new(storage), Box::new(Schema { url, name })))
}
