//! `sotto-bench link`: linking a device, timed, through a server on loopback (SQLite in a
//! temporary directory) and the real client over HTTP. A user with `--devices` devices and
//! `--conversations` one-to-one conversations links one more; then, separately, a device
//! is linked to an account whose history holds `--history` messages. Each is compared with
//! linking into an empty account in the same run.

use sotto_client::{Client, InitOptions, KdfParams, Linking};
use sotto_server::limits::Limits;
use sotto_server::storage::sqlite::SqliteStorage;
use sotto_server::{AppState, Config};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::LinkArgs;

const PASSCODE: &str = "benchmark passcode";

fn options() -> InitOptions {
    InitOptions::new(KdfParams::INSECURE_TEST)
}

/// A server with the rate limits lifted (every account here comes from one address).
async fn server(dir: &Path, kt_epoch: Duration) -> Result<String, String> {
    let storage = SqliteStorage::open(dir).map_err(|e| e.to_string())?;
    let mut limits = Limits::default();
    for setting in [
        "register_per_ip=100000000/1s",
        "challenge_per_ip=100000000/1s",
        "challenge_per_device_and_ip=100000000/1s",
        "claim_per_ip=100000000/1s",
        "claim_per_device=100000000/1s",
        "claim_per_pair=100000000/1s",
        "lookup_per_device=100000000/1s",
        "send_per_ip=100000000/1s",
        "send_per_device=100000000/1s",
        "ack_per_device=100000000/1s",
        "link_per_ip=100000000/1s",
        "link_poll_per_ip=100000000/1s",
        "devices_per_device=100000000/1s",
    ] {
        limits.set(setting)?;
    }
    let mut config = Config {
        limits,
        ..Config::default()
    };
    config.kt.epoch_interval = kt_epoch;
    let state = AppState::new(Arc::new(storage), config)
        .await
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(sotto_server::serve(listener, state, std::future::pending()));
    Ok(url)
}

/// What one link took.
struct Timed {
    /// The approving device's part: publishing, the answer, a commit per conversation (the
    /// first of which waits for the log to publish the new list).
    approve: Duration,
    /// From the approval's start until the new device had checked and stored everything
    /// (it asks every 250 ms, so up to that much of this is waiting).
    ready: Duration,
    history: usize,
    conversations: usize,
}

async fn link(
    approver: &Client,
    home: &Path,
    url: &str,
    user: &str,
    history: bool,
) -> Result<Timed, String> {
    let linking = Linking::start(home, url, user, "bench", PASSCODE, options())
        .await
        .map_err(|e| e.to_string())?;
    let code = linking.code();
    let waiting = tokio::spawn(linking.wait());
    let start = Instant::now();
    let approved = approver
        .approve(&code, history)
        .await
        .map_err(|e| e.to_string())?;
    let approve = start.elapsed();
    let (_, linked) = waiting
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let ready = start.elapsed();
    if !approved.failed.is_empty() {
        return Err(format!("not added everywhere: {:?}", approved.failed));
    }
    Ok(Timed {
        approve,
        ready,
        history: linked.history,
        conversations: approved.conversations,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: LinkArgs, say: impl Fn(serde_json::Value)) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = server(
        &dir.path().join("server"),
        Duration::from_millis(args.kt_epoch_ms),
    )
    .await?;
    let init = |name: &str| {
        let home = dir.path().join(name);
        let url = url.clone();
        let name = name.to_owned();
        async move {
            Client::init(&home, &url, &name, PASSCODE, options())
                .await
                .map_err(|e| e.to_string())
        }
    };
    let home = |name: &str| dir.path().join(name);

    // The baseline: a device linked into an account with nothing in it.
    let empty = init("empty").await?;
    let baseline = link(&empty, &home("empty-2"), &url, "empty", false).await?;

    // A user with `--devices` devices and `--conversations` one-to-one conversations.
    let alice = init("alice").await?;
    let mut peers = Vec::new();
    for i in 0..args.conversations {
        peers.push(init(&format!("peer{i}")).await?);
    }
    for i in 0..args.conversations {
        alice
            .send_text(&format!("peer{i}"), "hello")
            .await
            .map_err(|e| e.to_string())?;
    }
    for d in 1..args.devices {
        link(&alice, &home(&format!("alice-{d}")), &url, "alice", false).await?;
    }
    say(
        serde_json::json!({"phase": "setup", "devices": args.devices, "conversations": args.conversations}),
    );
    let into = link(&alice, &home("alice-new"), &url, "alice", false).await?;

    // An account whose history holds `--history` messages, linked with and without it.
    let writer = init("writer").await?;
    let reader = init("reader").await?;
    drop(reader);
    for i in 0..args.history {
        writer
            .send_text(
                "reader",
                &format!("message {i} of the history, about sixty bytes long"),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let bare = link(&writer, &home("writer-bare"), &url, "writer", false).await?;
    let full = link(&writer, &home("writer-full"), &url, "writer", true).await?;

    say(serde_json::json!({
        "benchmark": "link",
        "kt_epoch_ms": args.kt_epoch_ms,
        "devices_before": args.devices,
        "conversations": into.conversations,
        "link_approve_ms": ms(into.approve),
        "link_ready_ms": ms(into.ready),
        "baseline_empty_approve_ms": ms(baseline.approve),
        "baseline_empty_ready_ms": ms(baseline.ready),
        "ratio_approve_to_empty": into.approve.as_secs_f64() / baseline.approve.as_secs_f64(),
        "per_conversation_ms": ms(into.approve.saturating_sub(baseline.approve)) / (into.conversations.max(1) as f64),
        "history_messages": full.history,
        "history_approve_ms": ms(full.approve),
        "history_ready_ms": ms(full.ready),
        "without_history_approve_ms": ms(bare.approve),
        "without_history_ready_ms": ms(bare.ready),
        "ratio_history_ready": full.ready.as_secs_f64() / bare.ready.as_secs_f64(),
    }));
    Ok(())
}
