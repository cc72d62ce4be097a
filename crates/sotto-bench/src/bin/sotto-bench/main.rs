//! `sotto-bench`: the server's load generator.
//!
//! `sotto-bench load --devices N --messages M [--rate R] [--database URL] --json` starts a
//! server node (this same binary, `sotto-bench node`, on fresh data: SQLite unless
//! `--database`), registers N devices in N/2 one-to-one conversations (real MLS groups, each
//! member added by a real commit), prepares M real MLS application messages of 300 bytes
//! before the clock starts, connects every device's WebSocket, then sends the messages over
//! HTTP (paced at R per second, or as fast as the server takes them) while every device takes
//! its messages off its socket and acknowledges them there. It prints JSON lines and stops the
//! node. Everything stays on loopback.
//!
//! `sotto-bench fanout --devices N [--messages M] [--database URL] --json` measures one
//! message to a group of N devices fanned out from the group's roster (see [`fanout`]).
//!
//! `sotto-bench kt --accounts N [--changes C] --json` measures the key-transparency log on
//! Sotto's SQLite storage against akd's in-memory store (see [`kt`]).
//!
//! `sotto-bench link [--devices 3] [--conversations 50] [--history 10000] --json` times
//! linking a device through a server on loopback, against linking into an empty account
//! (see [`link`]).
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark driver: a failure aborts the run"
)]

mod drive;
mod fanout;
mod jetstream;
mod kt;
mod link;
mod node;
mod setup;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(about = "Sotto's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a workload against a server node it starts, and prints what it measured.
    Load(LoadArgs),
    /// Sends messages one at a time to a group of N devices, and prints how long the server
    /// took to store and fan out each, and how long until every device had it.
    Fanout(FanoutArgs),
    /// Times key-transparency epochs, lookups and proof checks on Sotto's SQLite storage
    /// against akd's in-memory store.
    Kt(KtArgs),
    /// Times linking a device: into an account with many conversations, and with a long
    /// history, each against linking into an empty account.
    Link(LinkArgs),
    /// A server node with the rate limits lifted (what `load` and `fanout` start).
    Node(NodeArgs),
}

/// Arguments of `sotto-bench link`.
#[derive(Debug, clap::Args)]
pub struct LinkArgs {
    /// Devices the user has before linking one more.
    #[arg(long, default_value_t = 3)]
    devices: usize,
    /// One-to-one conversations the user has.
    #[arg(long, default_value_t = 50)]
    conversations: usize,
    /// Messages in the history sent to the device linked with it.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// The key-transparency log's epoch interval (the server's default is 1000): the first
    /// commit adding the device waits for the epoch that publishes it.
    #[arg(long, default_value_t = 1000)]
    kt_epoch_ms: u64,
    /// Print JSON lines; without it, `key=value` words.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sotto-bench fanout`.
#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Devices that get each message (the group's roster holds one more: the sender).
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Messages, sent one after another, each once every device had the one before.
    #[arg(long, default_value_t = 20)]
    messages: usize,
    /// Plaintext bytes of each message.
    #[arg(long, default_value_t = 300)]
    size: usize,
    /// A PostgreSQL database for the node instead of a fresh SQLite file.
    #[arg(long)]
    database: Option<String>,
    /// Print JSON lines; without it, `key=value` words.
    #[arg(long)]
    json: bool,
    /// How long one message may take to reach every device before the run is called failed.
    #[arg(long, default_value = "60", value_parser = seconds)]
    timeout: Duration,
}

/// Arguments of `sotto-bench kt`.
#[derive(Debug, clap::Args)]
pub struct KtArgs {
    /// Accounts in the log before the timed epochs.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Accounts changed in each timed epoch.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Lookups timed (and proofs verified).
    #[arg(long, default_value_t = 200)]
    lookups: usize,
    /// Print JSON lines; without it, `key=value` words.
    #[arg(long)]
    json: bool,
}

/// Arguments of `sotto-bench load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Devices, in one-to-one conversations of two.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Messages sent in the timed phase, spread over every device.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Messages per second, paced open-loop (latency counts from when each was due);
    /// without it, the server is saturated by `--concurrency` senders.
    #[arg(long)]
    rate: Option<f64>,
    /// Sends in flight at once when saturating.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Plaintext bytes of each message.
    #[arg(long, default_value_t = 300)]
    size: usize,
    /// A PostgreSQL database for the node instead of a fresh SQLite file (its tables are
    /// made in a fresh schema, dropped afterwards).
    #[arg(long)]
    database: Option<String>,
    /// Server nodes.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Also run the same workload through this system, and print Sotto's delivered
    /// messages per second over its.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Print JSON lines (the last holds `delivered_per_s`, `p99_ms` and, with a baseline,
    /// `ratio`); without it, the same as `key=value` words.
    #[arg(long)]
    json: bool,
    /// How long the timed phase may take before the run is called failed.
    #[arg(long, default_value = "300", value_parser = seconds)]
    timeout: Duration,
}

/// What to compare Sotto with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Baseline {
    /// NATS JetStream (the machine's, 127.0.0.1:4222): one durable consumer per device.
    Jetstream,
}

/// Arguments of `sotto-bench node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Data directory (SQLite).
    #[arg(long)]
    data: PathBuf,
    /// PostgreSQL URL instead of SQLite.
    #[arg(long)]
    database: Option<String>,
    /// Schema in that database.
    #[arg(long)]
    schema: Option<String>,
    /// NATS server through which nodes wake each other.
    #[arg(long)]
    nats: Option<String>,
}

fn seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match cli.command {
        Command::Node(args) => rt.block_on(node::serve(args)),
        Command::Load(args) => {
            if let Err(e) = rt.block_on(load(args)) {
                eprintln!("sotto-bench load: {e}");
                std::process::exit(1);
            }
        }
        Command::Link(args) => {
            let say = sayer(args.json);
            if let Err(e) = rt.block_on(link::run(args, &say)) {
                eprintln!("sotto-bench link: {e}");
                std::process::exit(1);
            }
        }
        Command::Kt(args) => {
            let say = sayer(args.json);
            match rt.block_on(kt::run(&args, &say)) {
                Ok(line) => say(line),
                Err(e) => {
                    eprintln!("sotto-bench kt: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Fanout(args) => {
            let say = sayer(args.json);
            match rt.block_on(fanout::run(&args, &say)) {
                Ok(line) => say(line),
                Err(e) => {
                    eprintln!("sotto-bench fanout: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// Prints a result: JSON lines with `--json`; otherwise the same as `key=value` words, for a
/// person.
fn sayer(json: bool) -> impl Fn(serde_json::Value) {
    move |line: serde_json::Value| {
        if json {
            println!("{line}");
        } else if let Some(object) = line.as_object() {
            let words: Vec<String> = object.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{}", words.join(" "));
        }
    }
}

async fn load(args: LoadArgs) -> Result<(), String> {
    if args.nodes == 0 || (args.nodes > 1 && args.database.is_none()) {
        return Err("several nodes share one PostgreSQL database: give --database".into());
    }
    if args.devices < 2 || !args.devices.is_multiple_of(2) {
        return Err("--devices must be even and at least 2".into());
    }
    let say = sayer(args.json);
    let schema = format!("sotto_load_{}", std::process::id());
    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let database = args.database.as_deref().map(|url| (url, schema.as_str()));
        // Several nodes wake each other through the machine's NATS.
        let nats = (args.nodes > 1).then_some(jetstream::NATS);
        nodes.push(node::Node::start(database, nats, i == 0).await?);
    }
    let server = node::Nodes(nodes);
    let idle = server.usage()?;
    let world = setup::World::build(server.urls(), &args, &say).await?;
    let before_sockets = server.usage()?;
    let sockets = world.connect().await?;
    let with_sockets = server.usage()?;
    let per_socket = with_sockets
        .rss_bytes
        .saturating_sub(before_sockets.rss_bytes)
        / args.devices as u64;
    say(serde_json::json!({
        "phase": "connected",
        "devices": args.devices,
        "server_rss_idle_bytes": idle.rss_bytes,
        "server_rss_with_sockets_bytes": with_sockets.rss_bytes,
        "bytes_per_idle_socket": per_socket,
    }));
    let result = drive::run(&world, sockets, &args).await?;
    let after = server.usage()?;
    let cpu = after.cpu_seconds - with_sockets.cpu_seconds;
    let mut line = result.json();
    let object = line.as_object_mut().expect("an object");
    object.insert("server_cpu_seconds".into(), cpu.into());
    object.insert(
        "server_cpu_cores".into(),
        (cpu / result.elapsed.as_secs_f64()).into(),
    );
    object.insert("server_peak_rss_bytes".into(), after.peak_rss_bytes.into());
    object.insert("nodes".into(), args.nodes.into());
    object.insert("bytes_per_idle_socket".into(), per_socket.into());
    object.insert("system".into(), "sotto".into());
    object.insert(
        "durability".into(),
        "every accepted message synced to disk before its sender hears".into(),
    );
    object.insert(
        "backend".into(),
        if args.database.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
        .into(),
    );
    drop(server);
    if args.baseline.is_some() {
        // Sotto's figures first: a baseline that cannot run loses nothing measured.
        say(line.clone());
        let anchor = jetstream::run(&world, &args).await?;
        let mut anchor_line = anchor.json();
        let object = anchor_line.as_object_mut().expect("an object");
        object.insert("system".into(), "jetstream".into());
        object.insert(
            "durability".into(),
            "JetStream default: file storage, not synced on every write".into(),
        );
        say(anchor_line);
        let object = line.as_object_mut().expect("an object");
        object.insert(
            "jetstream_delivered_per_s".into(),
            anchor.delivered_per_s.into(),
        );
        // Paced, both deliver at the offered rate: a ratio says something only saturating.
        if args.rate.is_none() {
            object.insert(
                "ratio".into(),
                (result.delivered_per_s / anchor.delivered_per_s).into(),
            );
        }
    }
    say(line);
    Ok(())
}
