//! A server node as a process of its own (this binary, `sotto-bench node`), so that its CPU
//! time and memory are its own; read from `/proc`.

use sotto_server::limits::Limits;
use sotto_server::storage::Storage;
use sotto_server::storage::postgres::PostgresStorage;
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::{AppState, Config};
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::NodeArgs;

/// The limits of a node under load: every rate limit and cap lifted, since every device of
/// the load generator comes from one address.
fn lifted() -> Limits {
    let mut limits = Limits::default();
    for setting in [
        "challenge_per_ip=100000000/1s",
        "challenge_per_device_and_ip=100000000/1s",
        "register_per_ip=100000000/1s",
        "send_per_ip=100000000/1s",
        "send_per_device=100000000/1s",
        "websocket_per_ip=100000000/1s",
        "websocket_per_device=100000000/1s",
        "connections_per_ip=1000000",
        "queue_messages=10000000",
    ] {
        limits.set(setting).expect("a valid limit");
    }
    limits
}

/// `sotto-bench node`: serves on a loopback port the system picks and its metrics on another,
/// prints `listening on ADDR metrics on ADDR`, and runs until killed.
pub async fn serve(args: NodeArgs) {
    let storage: Arc<dyn Storage> = match &args.database {
        Some(url) => Arc::new(
            PostgresStorage::connect(url, args.schema.as_deref())
                .await
                .expect("the database"),
        ),
        None => Arc::new(SqliteStorage::open(&args.data).expect("the data directory")),
    };
    let config = Config {
        limits: lifted(),
        ..Config::default()
    };
    let state = AppState::new(storage, config).await.expect("the state");
    let state = match &args.nats {
        Some(url) => {
            let wake = sotto_server::nats::NatsWake::start(url, state.push().clone())
                .await
                .expect("NATS");
            state.with_wake(wake)
        }
        None => state,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    println!(
        "listening on {} metrics on {}",
        listener.local_addr().expect("an address"),
        metrics.local_addr().expect("an address")
    );
    tokio::spawn(sotto_server::serve_metrics(
        metrics,
        state.clone(),
        std::future::pending(),
    ));
    sotto_server::serve(listener, state, std::future::pending())
        .await
        .expect("served");
}

/// A running node.
pub struct Node {
    child: tokio::process::Child,
    /// Its base URL.
    pub url: String,
    /// Its `/metrics`.
    pub metrics: String,
    _data: tempfile::TempDir,
    /// The database and schema this node drops when it stops.
    schema: Option<(String, String)>,
}

/// The nodes of a run.
pub struct Nodes(pub Vec<Node>);

impl Nodes {
    /// Their URLs.
    pub fn urls(&self) -> Vec<String> {
        self.0.iter().map(|n| n.url.clone()).collect()
    }

    /// What they have used, together.
    pub fn usage(&self) -> Result<Usage, String> {
        let mut total = Usage {
            cpu_seconds: 0.0,
            rss_bytes: 0,
            peak_rss_bytes: 0,
        };
        for n in &self.0 {
            let u = n.usage()?;
            total.cpu_seconds += u.cpu_seconds;
            total.rss_bytes += u.rss_bytes;
            total.peak_rss_bytes += u.peak_rss_bytes;
        }
        Ok(total)
    }
}

/// What a node has used so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    /// Resident memory now.
    pub rss_bytes: u64,
    /// The most resident memory so far.
    pub peak_rss_bytes: u64,
}

impl Node {
    /// Starts a node on fresh data: a new SQLite directory, or `(url, schema)` of a
    /// PostgreSQL database (which it drops when it stops, if `owner`), waking others through
    /// `nats`.
    pub async fn start(
        database: Option<(&str, &str)>,
        nats: Option<&str>,
        owner: bool,
    ) -> Result<Node, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(exe);
        command
            .arg("node")
            .arg("--data")
            .arg(data.path().join("data"));
        if let Some(url) = nats {
            command.args(["--nats", url]);
        }
        let schema = database.and_then(|(url, name)| {
            command.args(["--database", url, "--schema", name]);
            owner.then(|| (url.to_owned(), name.to_owned()))
        });
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting the node: {e}"))?;
        let stdout = child.stdout.take().ok_or("the node's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the node stopped before listening")?;
        let (addr, metrics) = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_once(" metrics on "))
            .ok_or_else(|| format!("unexpected line from the node: {line}"))?;
        Ok(Node {
            child,
            url: format!("http://{addr}"),
            metrics: format!("http://{metrics}/metrics"),
            _data: data,
            schema,
        })
    }

    /// CPU time and memory of the node, from `/proc`.
    pub fn usage(&self) -> Result<Usage, String> {
        let pid = self.child.id().ok_or("the node has stopped")?;
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> f64 {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here; Linux
        // counts them in hundredths of a second.
        let cpu_seconds = (ticks(11) + ticks(12)) / 100.0;
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(Usage {
            cpu_seconds,
            rss_bytes: kib("VmRSS:"),
            peak_rss_bytes: kib("VmHWM:"),
        })
    }
}

impl Drop for Node {
    /// Stops the node and drops its schema, if it had one, whether the run succeeded or not.
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let Some((url, schema)) = self.schema.take() else {
            return;
        };
        // Outside the caller's runtime, which cannot be blocked on from within.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}
