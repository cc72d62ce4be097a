//! The WebSocket carries a device's queue: a new socket sends the queue from its start, then
//! each message as it is queued (every open socket of the device is woken), and the device
//! acknowledges on the socket what it processed. So a message costs one send and one
//! acknowledgement; `GET /v1/queue` stays for catching up without a socket.
//!
//! A socket sends at most [`MAX_SOCKET_ACK`] messages ahead of the acknowledgements, and
//! each message once; a message stays queued until acknowledged, so a new socket sends it
//! again. With wake-ups from other nodes (`nats.rs`), each ping interval the socket also
//! checks the queue unprompted, so a wake-up lost between nodes delays a message, never loses
//! it. Sockets are bounded: a few per device (a new one past the cap closes the oldest),
//! client frames of [`MAX_CLIENT_FRAME`] at most, small buffers while idle, and a ping every
//! interval that must be answered before the next, which closes half-open connections. A
//! page holds at most 1 MiB of messages (or one larger message) and must be sent whole within
//! the write timeout, so a client that reads slowly cannot keep one in the server's memory.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use prometheus_client::metrics::gauge::Gauge;
use sotto_proto::DeviceAddr;
use sotto_proto::api::{CLOSE_REPLACED, PushEvent, PushRequest};
use sotto_proto::limits::{MAX_FETCH, MAX_SOCKET_ACK};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

use crate::AppState;
use crate::auth::AuthDevice;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::storage::StorageError;

/// Largest frame or message a client may send on its socket: an acknowledgement of as many
/// messages as a socket carries unacknowledged.
pub const MAX_CLIENT_FRAME: usize = 16 * 1024;

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

/// `GET /v1/ws`: upgrade to a WebSocket that carries the device's queue ([`PushEvent`]s)
/// and its acknowledgements ([`PushRequest`]s).
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
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| async move {
            let mut queue = SocketQueue {
                state,
                device,
                unacked: BTreeSet::new(),
                last_sent: 0,
                more: true,
            };
            queue.serve(socket, wake, closed, ping).await;
            drop(subscription);
        }))
}

/// Most bytes of messages in one page a socket sends (always at least one message): what a
/// socket holds while its client reads.
const SOCKET_PAGE_BYTES: usize = 1024 * 1024;

/// Bytes a socket buffers for reading and for writing before it flushes: an idle socket
/// holds little.
const SOCKET_BUFFER: usize = 1024;

/// The device's queue as one socket carries it.
struct SocketQueue {
    state: AppState,
    device: DeviceAddr,
    /// Ids sent on this socket and not yet acknowledged on it; at most [`MAX_SOCKET_ACK`].
    unacked: BTreeSet<u64>,
    /// The highest id sent on this socket.
    last_sent: u64,
    /// Whether the queue may hold messages this socket has not sent.
    more: bool,
}

impl SocketQueue {
    async fn serve(
        &mut self,
        mut socket: WebSocket,
        mut wake: watch::Receiver<u64>,
        mut closed: oneshot::Receiver<()>,
        ping_every: Duration,
    ) {
        let first_ping = tokio::time::Instant::now()
            .checked_add(ping_every)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut ping = tokio::time::interval_at(first_ping, ping_every);
        // A long send must not leave a burst of ticks behind it, each finding the last ping
        // unanswered.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unanswered = false;
        let send_within = Duration::from_secs(self.state.config().limits.write_timeout.0.max(1));
        let frame = loop {
            if self.more && self.unacked.len() < MAX_SOCKET_ACK {
                // Whatever is queued from here on wakes the socket again.
                wake.borrow_and_update();
                match self.next_page().await {
                    Ok(Some(text)) => {
                        // A whole page within the write timeout: a client that reads a few
                        // bytes now and then cannot keep a page in the server's memory.
                        let sent = tokio::time::timeout(
                            send_within,
                            socket.send(Message::Text(text.into())),
                        )
                        .await;
                        if !matches!(sent, Ok(Ok(()))) {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "a socket could not read its queue");
                        break CloseFrame {
                            code: close_code::AGAIN,
                            reason: "the queue cannot be read now; try again".into(),
                        };
                    }
                }
                continue;
            }
            let outgoing = tokio::select! {
                changed = wake.changed() => match changed {
                    Ok(()) => {
                        self.more = true;
                        continue;
                    }
                    Err(_) => return,
                },
                _ = &mut closed => break CloseFrame {
                    code: CLOSE_REPLACED,
                    reason: "replaced by a newer connection of this device".into(),
                },
                _ = ping.tick() => {
                    if unanswered {
                        return;
                    }
                    unanswered = true;
                    // A wake-up from another node may have been lost (NATS down): look
                    // anyway, so that such a message is only late. A lone node's own
                    // wake-ups are not lost.
                    self.more |= self.state.shared_wake;
                    Message::Ping(Default::default())
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    // Any frame shows the peer alive; text frames are requests.
                    Some(Ok(Message::Text(text))) => {
                        unanswered = false;
                        match self.request(text.as_str()).await {
                            Ok(()) => continue,
                            Err(end) => break end,
                        }
                    }
                    Some(Ok(_)) => {
                        unanswered = false;
                        continue;
                    }
                },
            };
            if socket.send(outgoing).await.is_err() {
                return;
            }
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }

    /// The next messages of the queue this socket has not sent, as a frame; `None` when there
    /// are none.
    async fn next_page(&mut self) -> Result<Option<String>, StorageError> {
        let room = MAX_SOCKET_ACK.saturating_sub(self.unacked.len());
        let page = self
            .state
            .storage
            .fetch(
                &self.device,
                self.last_sent,
                u32::try_from(room).unwrap_or(MAX_FETCH),
                SOCKET_PAGE_BYTES,
            )
            .await?;
        // Only an empty page says there is no more: one can be cut short by its byte bound,
        // or by a row skipped as corrupt.
        self.more = !page.messages.is_empty();
        let Some(last) = page.messages.iter().map(|m| m.id).max() else {
            return Ok(None);
        };
        self.last_sent = last;
        self.unacked.extend(page.messages.iter().map(|m| m.id));
        serde_json::to_string(&PushEvent::Messages(page))
            .map(Some)
            .map_err(|e| StorageError::new(e.to_string()))
    }

    /// Carries out a client's request; a malformed one ends the socket.
    async fn request(&mut self, text: &str) -> Result<(), CloseFrame> {
        let malformed = |reason: &str| CloseFrame {
            code: close_code::INVALID,
            reason: reason.to_owned().into(),
        };
        let request: PushRequest =
            serde_json::from_str(text).map_err(|_| malformed("malformed request"))?;
        let PushRequest::Ack { ids } = request
            .validate()
            .map_err(|_| malformed("too many ids in one acknowledgement"))?;
        // Only what this socket sent and is still owed an acknowledgement: a flood of other
        // ids costs the committer nothing.
        let ids: Vec<u64> = ids
            .into_iter()
            .filter(|id| self.unacked.remove(id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        // Not acknowledged now, redelivered later: the client skips what it processed.
        if let Err(e) = self
            .state
            .group_commit()
            .ack(self.device.clone(), ids)
            .await
        {
            tracing::warn!(error = %e, "an acknowledgement on a socket failed");
        }
        Ok(())
    }
}
