//! The timed phase: sends over HTTP, paced open-loop (each message's latency counts from when
//! it was due, so a server that falls behind is charged for it) or saturating; every device
//! takes its messages off its WebSocket and acknowledges them there.

use futures_util::{SinkExt as _, StreamExt as _};
use sotto_proto::api::{PushEvent, PushRequest, QueuedMessage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::LoadArgs;
use crate::setup::{Device, World, key};

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Most sends in flight when pacing: past it the pacer falls behind, and the latencies show it.
const MAX_IN_FLIGHT: usize = 10_000;

impl World {
    /// Opens every device's WebSocket.
    pub async fn connect(&self) -> Result<Vec<Socket>, String> {
        connect(&self.urls, &self.devices).await
    }
}

/// Opens the WebSocket of each of `devices`, device `d` on node `d mod K`.
pub async fn connect(urls: &[String], devices: &[Device]) -> Result<Vec<Socket>, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut sockets = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let node = &urls[i % urls.len()];
        let ws_url = node.replacen("http://", "ws://", 1) + "/v1/ws";
        let mut req = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", d.token)
                .parse()
                .map_err(|_| "a token header")?,
        );
        let (socket, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| format!("opening a socket: {e}"))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// What the timed phase measured.
pub struct Outcome {
    pub messages: usize,
    pub accepted: usize,
    pub delivered: usize,
    pub failed_sends: usize,
    pub elapsed: Duration,
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    /// Send (when due) to delivery, in microseconds, sorted.
    pub latencies: Vec<u64>,
    pub rate: Option<f64>,
}

impl Outcome {
    fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies, p)
    }

    /// The result line.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "phase": "result",
            // Paced, latency counts from when each message was due (open loop); saturating,
            // from when a sender took it up (closed loop: it grows with --concurrency).
            "mode": if self.rate.is_some() { "paced" } else { "saturation" },
            "rate": self.rate,
            "messages": self.messages,
            "accepted": self.accepted,
            "delivered": self.delivered,
            "failed_sends": self.failed_sends,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "accepted_per_s": self.accepted_per_s,
            "delivered_per_s": self.delivered_per_s,
            "p50_ms": self.percentile_ms(0.50),
            "p99_ms": self.percentile_ms(0.99),
            "p999_ms": self.percentile_ms(0.999),
        })
    }
}

/// Shared counters of the timed phase.
pub struct Clock {
    start: Instant,
    /// Per message, microseconds from `start` to when it was due (or sent, when saturating).
    due: Vec<AtomicU64>,
    accepted: AtomicUsize,
    failed: AtomicUsize,
    delivered: AtomicUsize,
    last_accepted: AtomicU64,
    last_delivered: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    all_delivered: tokio::sync::Notify,
    /// Each message's index, by [`key`] of its MLS bytes.
    index: Arc<HashMap<u64, usize>>,
}

impl Clock {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Records the delivery of these MLS messages (those of the timed phase among them).
    pub fn delivered<'a>(&self, messages: impl Iterator<Item = &'a [u8]>) {
        let now = self.now_us();
        let latencies: Vec<u64> = messages
            .filter_map(|m| self.index.get(&key(m)))
            .map(|&i| now.saturating_sub(self.due[i].load(Ordering::Relaxed)))
            .collect();
        if latencies.is_empty() {
            return;
        }
        let got = latencies.len();
        self.latencies
            .lock()
            .expect("not poisoned")
            .extend(latencies);
        self.last_delivered.fetch_max(now, Ordering::Relaxed);
        if self.delivered.fetch_add(got, Ordering::Relaxed) + got >= self.due.len() {
            self.all_delivered.notify_one();
        }
    }
}

/// Runs the timed phase over `sockets` (one per device, in device order).
pub async fn run(world: &World, sockets: Vec<Socket>, args: &LoadArgs) -> Result<Outcome, String> {
    let messages = Arc::new(
        world
            .messages
            .iter()
            .map(|m| {
                let node = &world.urls[(m.recipient + 1) % world.urls.len()];
                (
                    format!("{node}{}", m.path),
                    world.devices[m.sender].token.clone(),
                    m.body.clone(),
                )
            })
            .collect::<Vec<_>>(),
    );
    let http = world.http.clone();
    timed(
        world,
        args,
        |clock| {
            sockets
                .into_iter()
                .map(|socket| {
                    let clock = clock.clone();
                    // The Welcomes of the set-up are not in the index.
                    tokio::spawn(receive(socket, move |messages| {
                        clock.delivered(messages.iter().map(|m| m.message.as_slice()));
                    }))
                })
                .collect()
        },
        move |i| {
            let (http, messages) = (http.clone(), messages.clone());
            async move {
                let (path, token, body) = &messages[i];
                let response = http
                    .post(path)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                response.is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await
}

/// The timed phase of any system: `receivers` start taking messages (recording each with
/// [`Clock::delivered`]), then `send(i)` sends message `i` (true when it was accepted),
/// paced or saturating, until every message is delivered.
pub async fn timed<S, F>(
    world: &World,
    args: &LoadArgs,
    receivers: impl FnOnce(Arc<Clock>) -> Vec<tokio::task::JoinHandle<()>>,
    send: S,
) -> Result<Outcome, String>
where
    S: Fn(usize) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = bool> + Send + 'static,
{
    let n = world.messages.len();
    let clock = Arc::new(Clock {
        start: Instant::now(),
        due: (0..n).map(|_| AtomicU64::new(0)).collect(),
        accepted: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        delivered: AtomicUsize::new(0),
        last_accepted: AtomicU64::new(0),
        last_delivered: AtomicU64::new(0),
        latencies: Mutex::new(Vec::with_capacity(n)),
        all_delivered: tokio::sync::Notify::new(),
        index: Arc::new(world.index.clone()),
    });
    let receivers = receivers(clock.clone());
    let send = {
        let clock = clock.clone();
        move |i: usize| {
            let (clock, sent) = (clock.clone(), send(i));
            async move {
                if sent.await {
                    clock.accepted.fetch_add(1, Ordering::Relaxed);
                    clock
                        .last_accepted
                        .fetch_max(clock.now_us(), Ordering::Relaxed);
                } else {
                    clock.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let sending = match args.rate {
        Some(rate) => {
            let clock = clock.clone();
            let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            tokio::spawn(async move {
                for i in 0..n {
                    let due_us = (i as f64 / rate * 1e6) as u64;
                    clock.due[i].store(due_us, Ordering::Relaxed);
                    tokio::time::sleep_until(clock.start + Duration::from_micros(due_us)).await;
                    let permit = permits.clone().acquire_owned().await.expect("open");
                    let task = send(i);
                    tokio::spawn(async move {
                        task.await;
                        drop(permit);
                    });
                }
            })
        }
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            let clock = clock.clone();
            let workers: Vec<_> = (0..args.concurrency)
                .map(|_| {
                    let (next, clock, send) = (next.clone(), clock.clone(), send.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            clock.due[i].store(clock.now_us(), Ordering::Relaxed);
                            send(i).await;
                        }
                    })
                })
                .collect();
            tokio::spawn(async move {
                for w in workers {
                    let _ = w.await;
                }
            })
        }
    };
    let deadline = clock.start + args.timeout;
    let finished = tokio::time::timeout_at(deadline, clock.all_delivered.notified()).await;
    // A sender may hear "accepted" after its recipient got the message: wait for every answer.
    let answered = || clock.accepted.load(Ordering::Relaxed) + clock.failed.load(Ordering::Relaxed);
    while finished.is_ok() && answered() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sending.abort();
    for r in receivers {
        r.abort();
    }
    let delivered = clock.delivered.load(Ordering::Relaxed);
    if finished.is_err() && delivered < n {
        return Err(format!(
            "only {delivered} of {n} messages delivered within {:?} ({} sends failed)",
            args.timeout,
            clock.failed.load(Ordering::Relaxed)
        ));
    }
    let mut latencies = std::mem::take(&mut *clock.latencies.lock().expect("not poisoned"));
    latencies.sort_unstable();
    let secs = |us: u64| us as f64 / 1e6;
    let (last_accepted, last_delivered) = (
        clock.last_accepted.load(Ordering::Relaxed),
        clock.last_delivered.load(Ordering::Relaxed),
    );
    Ok(Outcome {
        messages: n,
        accepted: clock.accepted.load(Ordering::Relaxed),
        delivered,
        failed_sends: clock.failed.load(Ordering::Relaxed),
        elapsed: Duration::from_micros(last_delivered),
        accepted_per_s: n as f64 / secs(last_accepted),
        delivered_per_s: n as f64 / secs(last_delivered),
        latencies,
        rate: args.rate,
    })
}

/// Takes one device's messages off its socket, acknowledging each frame on it, and hands
/// each frame's messages to `got`.
pub async fn receive(mut socket: Socket, got: impl Fn(&[QueuedMessage])) {
    while let Some(Ok(frame)) = socket.next().await {
        let Message::Text(text) = frame else {
            continue;
        };
        let Ok(PushEvent::Messages(queue)) = serde_json::from_str(text.as_str()) else {
            continue;
        };
        got(&queue.messages);
        let ids = queue.messages.iter().map(|m| m.id).collect();
        let ack = serde_json::to_string(&PushRequest::Ack { ids }).expect("serializable");
        if socket.send(Message::Text(ack.into())).await.is_err() {
            return;
        }
    }
}

/// The value at fraction `p` of `sorted` microseconds, in milliseconds (NaN if empty).
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[i - 1] as f64 / 1000.0
}
