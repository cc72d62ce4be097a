//! `sotto server --database`: the server process on PostgreSQL (the database of
//! `SOTTO_TEST_POSTGRES`, in a schema of its own), killed with SIGKILL mid-conversation.
//! Without the variable the test says it was skipped.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

mod common;

use common::ServerProcess;

const POSTGRES_URL: &str = "SOTTO_TEST_POSTGRES";

/// A schema of its own in the test database, dropped at the end.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn create(url: &str) -> Schema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("sotto_cli_test_{}_{nanos}", std::process::id());
        Self::execute(url, &format!("CREATE SCHEMA {name}")).unwrap();
        Schema {
            url: url.to_owned(),
            name,
        }
    }

    fn execute(url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(sql).await
        })
    }

    /// The database URL with this schema first in the search path.
    fn url(&self) -> String {
        let joint = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{joint}options=-csearch_path%3D{}", self.url, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // Not a panic while a failed test unwinds: that would abort the test binary.
        if let Err(e) = Self::execute(&self.url, &format!("DROP SCHEMA {} CASCADE", self.name)) {
            eprintln!("dropping the test schema {} failed: {e}", self.name);
        }
    }
}

#[test]
fn on_postgres_messages_survive_a_killed_server_and_show_once() {
    let Ok(url) = std::env::var(POSTGRES_URL) else {
        eprintln!("skipped: set {POSTGRES_URL} to a PostgreSQL URL to run this against it");
        return;
    };
    let schema = Schema::create(&url);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_on(
        vec!["--database".into(), schema.url().into()],
        "127.0.0.1:0",
    );
    common::messages_survive_a_killed_server_and_show_once(&mut server, dir.path());
}
