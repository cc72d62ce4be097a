//! `follow`: sync, show, and wait for the server's push (or poll without one), riding out a
//! lost connection or an unreachable server.

use crate::{Client, ClientError, MessageView};
use futures_util::StreamExt as _;
use sotto_proto::api::{PushEvent, PushRequest, QueueResponse, QueuedKind};
use std::time::Duration;
use tokio::time::Instant;

/// What [`Client::follow`] is doing, reported whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FollowStatus {
    /// On the push socket and up to date: new messages show as the server sends them.
    Listening,
    /// No push connection: checking for new messages every few seconds instead.
    Polling,
    /// The push connection was lost (closed, or silent past a ping); opening a new one.
    Reconnecting,
    /// The server cannot be reached (or failed); trying again every few seconds.
    Unreachable(String),
}

/// How long `follow` waits before trying an unreachable server again.
const RETRY: Duration = Duration::from_secs(2);
/// How often `follow` checks for messages when it has no push connection.
const POLL: Duration = Duration::from_secs(5);
/// How often `follow` pings the server while it waits; a socket that has said nothing since
/// the last ping is taken for dead (a path that went silent closes nothing by itself).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long opening the push socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type PushSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client {
    /// Opens the push WebSocket, signed in with this device's token.
    async fn connect_push(&self) -> Result<PushSocket, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = self
            .engine
            .transport()
            .ws_url()
            .into_client_request()
            .map_err(|e| ClientError::Unreachable(format!("server unreachable: {e}")))?;
        let auth = format!("Bearer {}", self.engine.token().await?)
            .parse()
            .map_err(|_| ClientError::Internal("the token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (stream, _) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req))
                .await
                .map_err(|_| {
                    ClientError::Unreachable(
                        "server unreachable: opening the push socket timed out".into(),
                    )
                })?
                .map_err(|e| ClientError::Unreachable(format!("server unreachable: {e}")))?;
        Ok(stream)
    }

    /// Syncs and hands new messages to `emit` until `deadline` (forever if `None`), then
    /// takes messages as the push socket carries them, acknowledging each batch on it once
    /// it is durable; `status` hears of every change of state. With `until_first`, returns
    /// after the first non-empty batch. The socket is opened before each sync, and sends the
    /// whole queue when it opens, so nothing queued in between is missed (what the sync
    /// already processed is skipped and acknowledged again).
    pub async fn follow(
        &self,
        deadline: Option<Instant>,
        until_first: bool,
        mut emit: impl FnMut(&[MessageView]) -> Result<(), ClientError>,
        mut status: impl FnMut(&FollowStatus),
    ) -> Result<(), ClientError> {
        let mut ws: Option<PushSocket> = None;
        // Closed by a newer socket of this device: reconnecting would only close that one.
        let mut replaced = false;
        let mut last: Option<FollowStatus> = None;
        let mut report = |now: FollowStatus| {
            if last.as_ref() != Some(&now) {
                status(&now);
                last = Some(now);
            }
        };
        let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
        loop {
            if ws.is_none() && !replaced {
                ws = self.connect_push().await.ok();
            }
            match self.sync().await {
                // A security failure is stored, and shown with the batch below.
                Ok(()) | Err(ClientError::Security(_)) => {}
                Err(e) if e.is_transient() => {
                    ws = None;
                    report(FollowStatus::Unreachable(e.to_string()));
                    if past_deadline() {
                        return Ok(());
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            if self.show(&mut emit)? && until_first {
                return Ok(());
            }
            if past_deadline() {
                return Ok(());
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let sleep = tokio::time::sleep_until(deadline.unwrap_or(far));
            tokio::pin!(sleep);
            let Some(stream) = ws.as_mut() else {
                report(FollowStatus::Polling);
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = &mut sleep => {}
                }
                continue;
            };
            report(FollowStatus::Listening);
            loop {
                let queue = match wait_for_push(stream, &mut sleep).await {
                    Woken::Messages(queue) => queue,
                    // Back to a sync, which returns if the deadline has passed (without one,
                    // this is an hour of quiet: the sync is a check).
                    Woken::Deadline => break,
                    Woken::Lost => {
                        ws = None;
                        report(FollowStatus::Reconnecting);
                        break;
                    }
                    Woken::Unavailable => {
                        ws = None;
                        report(FollowStatus::Unreachable(
                            "the server cannot read its storage for now".into(),
                        ));
                        tokio::select! {
                            () = tokio::time::sleep(RETRY) => {}
                            () = &mut sleep => {}
                        }
                        break;
                    }
                    Woken::Replaced => {
                        ws = None;
                        replaced = true;
                        break;
                    }
                };
                match self.take_pushed(stream, &queue).await {
                    Ok(true) => {}
                    // Back to a sync, which retries what is left, on a new socket: this one
                    // would wait for acknowledgements of what the sync takes instead.
                    Ok(false) => {
                        ws = None;
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        ws = None;
                        report(FollowStatus::Unreachable(e.to_string()));
                        break;
                    }
                    Err(e) => return Err(e),
                }
                if self.show(&mut emit)? && until_first {
                    return Ok(());
                }
            }
        }
    }

    /// Hands what is not yet shown to `emit` and marks it shown; whether there was any.
    fn show(
        &self,
        emit: &mut impl FnMut(&[MessageView]) -> Result<(), ClientError>,
    ) -> Result<bool, ClientError> {
        let batch = self.unshown()?;
        if batch.is_empty() {
            return Ok(false);
        }
        emit(&batch)?;
        self.mark_shown(&batch)?;
        Ok(true)
    }

    /// Processes a batch the socket carried and acknowledges it on the socket; after a
    /// Welcome (someone used one of this device's KeyPackages) tops KeyPackages up, and after
    /// a removal renews this device's leaf.
    /// `Ok(false)` asks for a sync: the batch stopped early (a device list could not be
    /// fetched).
    async fn take_pushed(
        &self,
        stream: &mut PushSocket,
        queue: &QueueResponse,
    ) -> Result<bool, ClientError> {
        use futures_util::SinkExt as _;
        use tokio_tungstenite::tungstenite::Message;
        let receipt = match self.engine.receive(queue).await {
            Ok(receipt) => receipt,
            // Stored as a security event, shown with the batch.
            Err(ClientError::Security(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if !receipt.acks.is_empty() {
            let ack = serde_json::to_string(&PushRequest::Ack { ids: receipt.acks })
                .map_err(|e| ClientError::Internal(e.to_string()))?;
            stream
                .send(Message::Text(ack.into()))
                .await
                .map_err(|e| ClientError::Unreachable(format!("server unreachable: {e}")))?;
        }
        if queue.messages.iter().any(|m| m.kind == QueuedKind::Welcome) {
            // Best effort, as in a sync: a failed top-up is tried on the next one.
            let _ = self.engine.top_up().await;
        }
        // Someone was removed: this device renews its keys now, not at the next sync (a
        // renewal that cannot be made now waits for that sync).
        self.engine.heal_after_removals().await?;
        Ok(receipt.failure.is_none() && receipt.durable)
    }
}

/// Why [`wait_for_push`] returned.
enum Woken {
    /// The socket carried messages of the queue.
    Messages(QueueResponse),
    /// The deadline passed.
    Deadline,
    /// The socket closed or failed.
    Lost,
    /// The server closed the socket because it cannot read its storage for now.
    Unavailable,
    /// The server closed the socket for a newer one of this device.
    Replaced,
}

/// Waits for messages on the socket or for `sleep`, pinging the server every [`KEEPALIVE`].
async fn wait_for_push(
    stream: &mut PushSocket,
    sleep: &mut std::pin::Pin<&mut tokio::time::Sleep>,
) -> Woken {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut heard = true;
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                if !std::mem::take(&mut heard)
                    || stream.send(Message::Ping(Default::default())).await.is_err()
                {
                    return Woken::Lost;
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    match serde_json::from_str(text.as_str()) {
                        Ok(PushEvent::Messages(queue)) => return Woken::Messages(queue),
                        // Not a server this client can follow on its socket.
                        Err(_) => return Woken::Lost,
                    }
                }
                // Pings are answered by the stream itself while it is read.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => heard = true,
                Some(Ok(Message::Close(Some(frame))))
                    if u16::from(frame.code) == sotto_proto::api::CLOSE_REPLACED =>
                {
                    return Woken::Replaced;
                }
                Some(Ok(Message::Close(Some(frame))))
                    if frame.code == tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Again =>
                {
                    return Woken::Unavailable;
                }
                _ => return Woken::Lost,
            },
            () = sleep.as_mut() => return Woken::Deadline,
        }
    }
}
