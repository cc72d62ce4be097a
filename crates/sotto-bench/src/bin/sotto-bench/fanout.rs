//! `sotto-bench fanout`: one message to a group of N devices, one after another. Device 0
//! makes a group with device 1 (a real commit and Welcome) and declares all N + 1 devices its
//! roster; every recipient is on its WebSocket. Each of the timed messages is a real MLS
//! application message that names no recipients (`to_roster`), so the server queues it for
//! the whole roster at once. The other N − 1 devices are not MLS members and could not
//! decrypt it; the server cannot tell, and does the same work.
//!
//! It reports, per message, the server time (from the send to its answer: the message stored,
//! N queue entries written and synced, N devices woken), the time until the last of the N
//! devices took it off its socket, and the time until every acknowledgement was applied (the
//! node's `sotto_queue_entries` back at 0). The next message goes only then, so that no
//! message's figures include the work of the one before.

use sotto_core::{Content, Envelope, group};
use sotto_proto::Bytes;
use sotto_proto::api::SendRequest;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

use crate::FanoutArgs;
use crate::drive::{connect, percentile_ms, receive};
use crate::node::Node;
use crate::setup::{self, Pair, key};

/// What each receiver reports: how many devices have each message.
struct Tally {
    /// By message index.
    got: Vec<AtomicUsize>,
    /// Each message's index, by [`key`] of its MLS bytes.
    index: HashMap<u64, usize>,
    /// Devices that must get each message.
    devices: usize,
    everyone: tokio::sync::Notify,
}

/// Runs the fan-out benchmark and returns its result line.
pub async fn run(
    args: &FanoutArgs,
    say: &impl Fn(serde_json::Value),
) -> Result<serde_json::Value, String> {
    if args.devices < 1 || args.devices >= sotto_proto::limits::MAX_ROSTER {
        return Err(format!(
            "--devices must be from 1 to {}",
            sotto_proto::limits::MAX_ROSTER - 1
        ));
    }
    let schema = format!("sotto_fanout_{}", std::process::id());
    let database = args.database.as_deref().map(|url| (url, schema.as_str()));
    let node = Node::start(database, None, true).await?;
    let url = node.url.clone();
    let http = setup::client(64)?;
    let (devices, spares, suite) = setup::register(&http, &url, args.devices + 1, say).await?;
    let mut spares = spares.into_iter();
    let (spare_a, spare_b) = (
        spares.next().ok_or("a provider")?,
        spares.next().ok_or("a provider")?,
    );
    let roster = devices.iter().map(|d| d.key.addr().clone()).collect();
    let pair = Pair {
        a: &devices[0],
        spare_a,
        b: &devices[1],
        spare_b,
    };
    let (path, mut sender, _) = pair
        .make(&http, &url, suite, roster, format!("{:032x}", u128::MAX))
        .await?;

    let text = "x".repeat(args.size);
    let mut bodies = Vec::with_capacity(args.messages);
    let mut index = HashMap::with_capacity(args.messages);
    for i in 0..args.messages {
        let envelope = Envelope {
            sent_at: 0,
            counter: Some(i as u64 + 1),
            log_root: Some(sotto_bench::VOUCHED_ROOT),
            content: Content::Text { body: text.clone() },
        };
        let mls = group::encrypt(
            &sender.provider,
            &devices[0].key,
            &mut sender.group,
            &envelope,
        )
        .map_err(|e| e.to_string())?;
        index.insert(key(&mls), i);
        let send = SendRequest {
            client_id: format!("{i:032x}"),
            message: Bytes(mls),
            recipients: Vec::new(),
            to_roster: true,
            roster: None,
            welcome: None,
        };
        bodies.push(serde_json::to_vec(&send).map_err(|e| e.to_string())?);
    }

    let recipients = devices.get(1..).ok_or("recipients")?;
    let sockets = connect(std::slice::from_ref(&url), recipients).await?;
    say(serde_json::json!({ "phase": "connected", "devices": sockets.len() }));
    let tally = Arc::new(Tally {
        got: (0..args.messages).map(|_| AtomicUsize::new(0)).collect(),
        index,
        devices: recipients.len(),
        everyone: tokio::sync::Notify::new(),
    });
    let receivers: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let tally = tally.clone();
            tokio::spawn(receive(socket, move |messages| {
                for m in messages {
                    // The Welcome of the set-up is not in the index.
                    if let Some(&i) = tally.index.get(&key(m.message.as_slice()))
                        && tally.got[i].fetch_add(1, Ordering::Relaxed) + 1 == tally.devices
                    {
                        tally.everyone.notify_waiters();
                    }
                }
            }))
        })
        .collect();

    // The set-up's Welcome, acknowledged.
    drained(&http, &node.metrics, args.timeout).await?;
    let target = format!("{url}{path}");
    let (mut server_us, mut everyone_us, mut drained_us) = (Vec::new(), Vec::new(), Vec::new());
    let before = node.usage()?;
    for (i, body) in bodies.into_iter().enumerate() {
        let everyone = tally.everyone.notified();
        tokio::pin!(everyone);
        everyone.as_mut().enable();
        let start = Instant::now();
        let response = http
            .post(&target)
            .bearer_auth(&devices[0].token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let answered = start.elapsed();
        if !response.status().is_success() {
            let status = response.status();
            return Err(format!(
                "message {i}: {status} {}",
                response.text().await.unwrap_or_default()
            ));
        }
        while tally.got[i].load(Ordering::Relaxed) < tally.devices {
            if tokio::time::timeout(args.timeout, everyone.as_mut())
                .await
                .is_err()
            {
                return Err(format!(
                    "message {i}: {} of {} devices got it within {:?}",
                    tally.got[i].load(Ordering::Relaxed),
                    tally.devices,
                    args.timeout
                ));
            }
            everyone.set(tally.everyone.notified());
            everyone.as_mut().enable();
        }
        everyone_us.push(start.elapsed().as_micros() as u64);
        server_us.push(answered.as_micros() as u64);
        drained(&http, &node.metrics, args.timeout).await?;
        drained_us.push(start.elapsed().as_micros() as u64);
    }
    let after = node.usage()?;
    for r in receivers {
        r.abort();
    }
    drop(node);
    server_us.sort_unstable();
    everyone_us.sort_unstable();
    drained_us.sort_unstable();
    Ok(serde_json::json!({
        "phase": "result",
        "mode": "fanout",
        "devices": tally.devices,
        "messages": args.messages,
        "backend": if args.database.is_some() { "postgres" } else { "sqlite" },
        "server_p50_ms": percentile_ms(&server_us, 0.5),
        "server_max_ms": percentile_ms(&server_us, 1.0),
        "everyone_p50_ms": percentile_ms(&everyone_us, 0.5),
        "everyone_max_ms": percentile_ms(&everyone_us, 1.0),
        "acked_p50_ms": percentile_ms(&drained_us, 0.5),
        "acked_max_ms": percentile_ms(&drained_us, 1.0),
        "server_cpu_seconds": after.cpu_seconds - before.cpu_seconds,
        "server_peak_rss_bytes": after.peak_rss_bytes,
    }))
}

/// Waits until the node's queues are empty: every acknowledgement applied.
async fn drained(
    http: &reqwest::Client,
    metrics: &str,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = http
            .get(metrics)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let entries = text
            .lines()
            .find_map(|l| l.strip_prefix("sotto_queue_entries "))
            .ok_or("no sotto_queue_entries in the node's metrics")?;
        if entries.trim() == "0" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{entries} queue entries left after {timeout:?}"));
        }
        // Each look counts the node's tables: not too often.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
