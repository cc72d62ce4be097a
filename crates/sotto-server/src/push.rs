//! WebSocket push: every open socket of a device is told when its queue has something new;
//! the device then fetches over HTTP. A client opens its socket before it fetches, so a
//! message queued in between is either in that fetch or announced on the socket.
//!
//! Sockets are bounded: a few per device (a new one past the cap closes the oldest), frames
//! from the client of a few KiB at most (it has nothing to send but pongs), and a ping every
//! interval that must be answered before the next, which closes half-open connections. A
//! client that stops reading is cut off by the listener's write timeout, as on any connection.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use prometheus_client::metrics::gauge::Gauge;
use sotto_proto::DeviceAddr;
use sotto_proto::api::{CLOSE_REPLACED, PushEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

use crate::AppState;
use crate::auth::AuthDevice;
use crate::client_ip::ClientIp;
use crate::error::ApiError;

/// Largest frame or message a client may send on its socket.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;

/// How the sockets of a device learn that its queue has news. [`Push`] reaches the sockets
/// open in this process; a server of several processes wakes each other's through a bus.
pub trait Wake: Send + Sync {
    /// Tells every open socket of `device` that its queue has news. With none open there is
    /// nothing to do: the device fetches when it next connects.
    fn wake(&self, device: &DeviceAddr);
}

/// The open sockets of one device.
struct DeviceSockets {
    /// Bumped on every wake; each socket watches it.
    wake: watch::Sender<u64>,
    /// Oldest first: an id and the means to close it.
    open: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// The open push sockets of every device.
#[derive(Default)]
pub struct Push {
    devices: Mutex<HashMap<DeviceAddr, DeviceSockets>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Sockets open, for operators.
    sockets: Gauge,
}

/// One socket's place in [`Push`]; leaving it (on drop) forgets the socket.
struct Subscription {
    push: Arc<Push>,
    device: DeviceAddr,
    id: u64,
}

impl Push {
    /// The gauge of open sockets.
    pub(crate) fn sockets_gauge(&self) -> Gauge {
        self.sockets.clone()
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<DeviceAddr, DeviceSockets>> {
        // The map holds no invariant a panic could break half-way.
        self.devices.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new socket of `device`, closing the oldest ones past `cap`.
    fn subscribe(
        self: &Arc<Self>,
        device: &DeviceAddr,
        cap: u32,
    ) -> (Subscription, watch::Receiver<u64>, oneshot::Receiver<()>) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (close, closed) = oneshot::channel();
        let mut devices = self.devices();
        let sockets = devices
            .entry(device.clone())
            .or_insert_with(|| DeviceSockets {
                wake: watch::channel(0).0,
                open: VecDeque::new(),
            });
        sockets.open.push_back((id, close));
        while sockets.open.len() > cap.max(1) as usize {
            if let Some((_, oldest)) = sockets.open.pop_front() {
                let _ = oldest.send(());
            }
        }
        let wake = sockets.wake.subscribe();
        self.sockets.inc();
        let subscription = Subscription {
            push: self.clone(),
            device: device.clone(),
            id,
        };
        (subscription, wake, closed)
    }
}

impl Wake for Push {
    fn wake(&self, device: &DeviceAddr) {
        if let Some(d) = self.devices().get(device) {
            d.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.push.sockets.dec();
        let mut devices = self.push.devices();
        if let Some(d) = devices.get_mut(&self.device) {
            d.open.retain(|(id, _)| *id != self.id);
            if d.open.is_empty() {
                devices.remove(&self.device);
            }
        }
    }
}

/// `GET /v1/ws`: upgrade to a WebSocket that carries [`PushEvent`]s.
pub async fn websocket(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AuthDevice(device): AuthDevice,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    state.rate.websocket(ip, &device)?;
    let limits = &state.config().limits;
    let (subscription, wake, closed) = state.push.subscribe(&device, limits.sockets_per_device);
    let ping = Duration::from_secs(limits.websocket_ping.0.max(1));
    Ok(ws
        .max_message_size(MAX_CLIENT_FRAME)
        .max_frame_size(MAX_CLIENT_FRAME)
        .read_buffer_size(MAX_CLIENT_FRAME)
        .write_buffer_size(MAX_CLIENT_FRAME)
        .on_upgrade(move |socket| async move {
            serve_socket(socket, wake, closed, ping).await;
            drop(subscription);
        }))
}

async fn serve_socket(
    mut socket: WebSocket,
    mut wake: watch::Receiver<u64>,
    mut closed: oneshot::Receiver<()>,
    ping_every: Duration,
) {
    let event = serde_json::to_string(&PushEvent::NewMessages).unwrap_or_default();
    let first_ping = tokio::time::Instant::now()
        .checked_add(ping_every)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut ping = tokio::time::interval_at(first_ping, ping_every);
    let mut unanswered = false;
    loop {
        let outgoing = tokio::select! {
            changed = wake.changed() => match changed {
                Ok(()) => Message::Text(event.clone().into()),
                Err(_) => return,
            },
            _ = &mut closed => Message::Close(Some(CloseFrame {
                code: CLOSE_REPLACED,
                reason: "replaced by a newer connection of this device".into(),
            })),
            _ = ping.tick() => {
                if unanswered {
                    return;
                }
                unanswered = true;
                Message::Ping(Default::default())
            }
            incoming = socket.recv() => match incoming {
                // Clients send nothing but pongs and a close; any frame shows the peer alive.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {
                    unanswered = false;
                    continue;
                }
            },
        };
        let is_close = matches!(outgoing, Message::Close(_));
        if socket.send(outgoing).await.is_err() || is_close {
            return;
        }
    }
}
