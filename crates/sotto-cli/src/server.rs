//! `sotto server`: runs the server on its embedded SQLite storage or on PostgreSQL.

use clap::Args;
use sotto_client::ClientError;
use sotto_server::kt::KtConfig;
use sotto_server::limits::Limits;
use sotto_server::storage::Storage;
use sotto_server::storage::postgres::PostgresStorage;
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::{AppState, Config, SUPPORTED_SUITES};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `sotto server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// A TOML file of these settings (the flags' names; limits in a `[limit]` table). The
    /// environment and the command line win over it.
    #[arg(long, env = "SOTTO_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SOTTO_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Data directory of the embedded storage.
    #[arg(long, env = "SOTTO_DATA", default_value = "./sotto-data")]
    data: PathBuf,
    /// A PostgreSQL database (`postgres://user:password@host/db`) instead of the embedded
    /// storage. Better given in the environment than on the command line, where other users
    /// of the machine can read it.
    #[arg(
        long,
        env = "SOTTO_DATABASE",
        hide_env_values = true,
        value_name = "URL"
    )]
    database: Option<String>,
    /// MLS ciphersuite of all groups: 0x004D (X-Wing hybrid, default) or 0x0001.
    #[arg(long, env = "SOTTO_CIPHERSUITE", default_value = "0x004D", value_parser = parse_suite)]
    ciphersuite: u16,
    /// Serve plain HTTP on a non-loopback address, because a TLS-terminating proxy is in front.
    #[arg(long)]
    behind_tls_proxy: bool,
    /// A reverse proxy whose X-Forwarded-For header names the client (repeatable). From
    /// anyone else the header is ignored.
    #[arg(long, value_name = "ADDR")]
    trusted_proxy: Vec<IpAddr>,
    /// Change a rate limit or quota, e.g. `--limit claim_per_target=20/1m` (repeatable; the
    /// limits and their defaults are listed in docs/design.md).
    #[arg(long, value_name = "NAME=VALUE")]
    limit: Vec<String>,
    /// Serve Prometheus metrics at `/metrics` on this address (off unless given). Keep it
    /// off the Internet: it shows the server's load.
    #[arg(long, env = "SOTTO_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// A NATS server (`nats://host:4222`) through which several nodes on one `--database`
    /// wake each other's sockets. Without it a node wakes only its own.
    #[arg(long, env = "SOTTO_NATS", hide_env_values = true, value_name = "URL")]
    nats: Option<String>,
    /// The shortest time between two key-transparency epochs, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    kt_epoch_ms: u64,
    /// The most accounts one key-transparency epoch publishes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    kt_epoch_changes: u64,
    /// A witness whose cosignatures of the log's checkpoints this server keeps and serves
    /// with every proof: its C2SP verifier key, as `sotto witness` prints it (repeatable).
    #[arg(long, value_name = "VKEY", value_parser = parse_witness)]
    witness: Vec<sotto_proto::checkpoint::WitnessKey>,
    /// Log lines as human-readable text or as JSON objects (level filter: RUST_LOG).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// How the server writes its log.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_witness(s: &str) -> Result<sotto_proto::checkpoint::WitnessKey, String> {
    sotto_proto::checkpoint::WitnessKey::parse(s).map_err(|e| e.to_string())
}

fn parse_suite(s: &str) -> Result<u16, String> {
    let digits = s.trim_start_matches("0x").trim_start_matches("0X");
    let code = u16::from_str_radix(digits, 16).map_err(|e| e.to_string())?;
    if SUPPORTED_SUITES.contains(&code) {
        Ok(code)
    } else {
        Err("supported ciphersuites: 0x004D, 0x0001".into())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> Result<ExitCode, ClientError> {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if !args.listen.ip().is_loopback() && !args.behind_tls_proxy {
        return Err(ClientError::Usage(format!(
            "refusing to serve plain HTTP on {}: Sotto serves plain HTTP only on loopback. \
             Put a TLS-terminating proxy in front and pass --behind-tls-proxy",
            args.listen
        )));
    }
    let mut limits = Limits::default();
    for setting in &args.limit {
        limits.set(setting).map_err(ClientError::Usage)?;
    }
    let (storage, place): (Arc<dyn Storage>, String) = match &args.database {
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ClientError::Usage(
                    "--database takes a PostgreSQL URL: postgres://user@host/database".into(),
                ));
            }
            // The URL may hold a password: it is never printed.
            let storage = PostgresStorage::connect(url, None)
                .await
                .map_err(|e| ClientError::Store(format!("the database of --database: {e}")))?;
            (
                Arc::new(storage),
                "the PostgreSQL database of --database".into(),
            )
        }
        None => {
            let storage = SqliteStorage::open(&args.data)
                .map_err(|e| ClientError::Store(format!("{}: {e}", args.data.display())))?;
            (Arc::new(storage), args.data.display().to_string())
        }
    };
    let state = AppState::new(
        storage,
        Config {
            ciphersuite: args.ciphersuite,
            limits,
            trusted_proxies: args.trusted_proxy,
            kt: KtConfig {
                epoch_interval: std::time::Duration::from_millis(args.kt_epoch_ms),
                epoch_changes: usize::try_from(args.kt_epoch_changes).unwrap_or(usize::MAX),
                witnesses: args.witness,
            },
            ..Config::default()
        },
    )
    .await
    .map_err(|e| ClientError::Store(format!("{place}: {e}")))?;
    if args.nats.is_some() && args.database.is_none() {
        return Err(ClientError::Usage(
            "--nats wakes nodes that share one --database; the embedded storage has one node"
                .into(),
        ));
    }
    let state = match &args.nats {
        Some(url) => {
            let wake = sotto_server::nats::NatsWake::start(url, state.push().clone())
                .await
                .map_err(ClientError::Usage)?;
            state.with_wake(wake)
        }
        None => state,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| ClientError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    tracing::info!(
        %addr,
        data = %place,
        ciphersuite = format!("0x{:04X}", args.ciphersuite),
        "sotto server listening"
    );
    eprintln!("sotto server listening on http://{addr} (data in {place})");
    if let Some(metrics) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(metrics)
            .await
            .map_err(|e| ClientError::Usage(format!("cannot listen on {metrics}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        eprintln!("metrics on http://{addr}/metrics");
        tokio::spawn(sotto_server::serve_metrics(
            listener,
            state.clone(),
            shutdown_signal(),
        ));
    }
    sotto_server::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| ClientError::Unreachable(format!("the server stopped: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
