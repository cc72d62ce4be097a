//! The sync loop: fetch the queue, process each message exactly once, make the result
//! durable, acknowledge; and `follow`, which repeats it on every push.
//!
//! A message is acknowledged only when its effects are on disk, and only when it was decided:
//! processed, or refused for a verified reason. A message that could not be checked because a
//! device list could not be fetched stays in the queue for the next sync.

use super::messages::NewEntry;
use super::*;
use std::collections::BTreeSet;

/// Why a queued message could not be applied.
pub(super) enum ApplyError {
    /// The device lists of these users are needed before the message can be checked.
    NeedLists(Vec<Username>),
    Failed(ClientError),
}

impl<E: Into<ClientError>> From<E> for ApplyError {
    fn from(e: E) -> Self {
        ApplyError::Failed(e.into())
    }
}

enum Handled {
    Done,
    NeedLists(Vec<Username>),
}

/// What [`Client::follow`] is doing, reported whenever it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FollowStatus {
    /// Subscribed to pushes and up to date: new messages show as the server announces them.
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
    /// Sends what the outbox holds, then processes everything queued for this device. Every
    /// security failure met on the way is stored as a security event (see
    /// [`Client::unseen_security_events`]); one met while processing a message refuses that
    /// message and the sync goes on.
    pub async fn sync(&self) -> Result<(), ClientError> {
        let result = self.exchange().await;
        self.recorded(result)
    }

    /// [`Client::sync`] for operations that record security failures themselves.
    pub(super) async fn exchange(&self) -> Result<(), ClientError> {
        self.flush_outbox().await?;
        self.pull().await
    }

    pub(super) async fn pull(&self) -> Result<(), ClientError> {
        let token = self.token().await?;
        self.forget_lists();
        loop {
            let queue = self.api.queue(&token, FETCH_BATCH).await?;
            self.note_dropped(queue.dropped_total)?;
            let batch = queue.messages;
            if batch.is_empty() {
                break;
            }
            let mut acks = Vec::with_capacity(batch.len());
            let mut next = 0;
            let mut failure = None;
            'batch: while next < batch.len() {
                // One transaction for as much of the batch as can be checked without network.
                let need = self.tx(|| {
                    while let Some(m) = batch.get(next) {
                        if let Handled::NeedLists(users) = self.handle(m)? {
                            return Ok(users);
                        }
                        acks.push(m.id);
                        next += 1;
                    }
                    Ok(Vec::new())
                })?;
                for user in need {
                    match self.fetch_device_list(&user).await {
                        Ok(_) => {}
                        // Verified, or the server's word that there is no such account: the
                        // devices cannot be proven, so the check refuses them.
                        Err(ClientError::Security(reason) | ClientError::Usage(reason)) => {
                            self.list_unverifiable(&user, reason);
                        }
                        // Nothing learned: leave this message queued for the next sync.
                        Err(e) => {
                            failure = Some(e);
                            break 'batch;
                        }
                    }
                }
            }
            let durable = self.make_durable().await?;
            if durable && !acks.is_empty() {
                self.api.ack(&token, acks).await?;
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if !durable {
                // Redelivered next time, and skipped as already processed.
                break;
            }
        }
        // Best effort: what was received is done; a failed top-up is tried on the next sync.
        let _ = self.top_up_key_packages(&token).await;
        Ok(())
    }

    /// Writes everything committed so far back into the database file and syncs it (a
    /// complete WAL checkpoint), so that it survives a power loss. False if another
    /// connection's open read kept part of the log from being written back, even after a few
    /// tries: then nothing may be acknowledged yet.
    async fn make_durable(&self) -> Result<bool, ClientError> {
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (busy, log, done): (i64, i64, i64) =
                self.conn
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
            if busy == 0 && log == done {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Shows a notice when the server reports more messages dropped for this device than it
    /// did last time (a full queue, or messages that outlived the retention period).
    fn note_dropped(&self, total: u64) -> Result<(), ClientError> {
        let seen = store::meta(&self.conn, "dropped_seen")?
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map_or(0, u64::from_be_bytes);
        if total < seen {
            // The server's count went back (its data was reset): count from there.
            return store::set_meta(&self.conn, "dropped_seen", &total.to_be_bytes());
        }
        if total == seen {
            return Ok(());
        }
        let text = format!(
            "the server dropped {} message(s) for this device before it fetched them: its \
             queue was full or they waited longer than the server keeps messages",
            total - seen
        );
        self.tx(|| {
            let id = format!("dropped-{total}");
            self.record_notice(id, None, MessageKind::Event, &text)?;
            store::set_meta(&self.conn, "dropped_seen", &total.to_be_bytes())
        })
    }

    fn is_processed(&self, id: u64) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM processed WHERE server_id = ?1")?
            .query_row([id as i64], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn handle(&self, m: &QueuedMessage) -> Result<Handled, ClientError> {
        if self.is_processed(m.id)? {
            return Ok(Handled::Done);
        }
        let outcome = (|| {
            self.conn.execute_batch("SAVEPOINT apply")?;
            let r = self.apply(m);
            let sql = if r.is_ok() {
                "RELEASE apply"
            } else {
                self.forget_groups();
                "ROLLBACK TO apply; RELEASE apply"
            };
            self.conn.execute_batch(sql)?;
            Ok::<_, ClientError>(r)
        })()?;
        match outcome {
            Ok(()) => {}
            Err(ApplyError::NeedLists(users)) => return Ok(Handled::NeedLists(users)),
            Err(ApplyError::Failed(e)) => {
                // Only the server says who sent a message that did not verify or decrypt.
                let (kind, text) = match &e {
                    ClientError::Security(reason) => (
                        MessageKind::Security,
                        format!(
                            "refused a message from {} (as the server says): {reason}",
                            m.sender.user
                        ),
                    ),
                    other => (
                        MessageKind::Event,
                        format!(
                            "a message from {} (as the server says) could not be read: {other}",
                            m.sender.user
                        ),
                    ),
                };
                self.insert_message(NewEntry {
                    id: m.id.to_string(),
                    group: Some(&m.group_id),
                    sender: Some((&m.sender, false)),
                    sent_at: m.accepted_at,
                    received_at: m.accepted_at,
                    kind,
                    body: &text,
                    outgoing: false,
                })?;
            }
        }
        self.conn
            .prepare_cached("INSERT INTO processed (server_id) VALUES (?1)")?
            .execute([m.id as i64])?;
        Ok(Handled::Done)
    }

    fn apply(&self, m: &QueuedMessage) -> Result<(), ApplyError> {
        let provider = self.provider();
        let gid = &m.group_id;
        match m.kind {
            QueuedKind::Welcome => {
                if self.conversation_exists(gid)? {
                    return Ok(());
                }
                self.cache.borrow_mut().groups.remove(gid.as_bytes());
                let g = group::join(&provider, m.message.as_slice())?;
                self.verify_members(&group::members(&g)?)?;
                // Upsert: a member removed earlier and added back rejoins its conversation,
                // which stays what it was (a group, or a one-to-one conversation).
                self.conn.execute(
                    "INSERT INTO conversations (group_id, created_at) VALUES (?1, ?2)
                     ON CONFLICT (group_id) DO UPDATE SET active = 1, announced = 0",
                    params![gid.as_bytes(), m.accepted_at as i64],
                )?;
                Ok(())
            }
            QueuedKind::Group => {
                if !self.conversation_exists(gid)? {
                    // Not (or no longer) in this group on this device: nothing to show.
                    return Ok(());
                }
                self.with_group(gid.as_bytes(), |provider, g| {
                    match group::process(provider, g, m.message.as_slice())? {
                        Received::Content { sender, envelope } => {
                            let users = group::members(g)?.into_iter().map(|d| d.addr.user);
                            self.apply_content(m, &sender, envelope, &users.collect())?;
                        }
                        Received::Commit(staged) => {
                            self.verify_members(&staged.summary.proven_devices())?;
                            let summary = group::merge_staged(provider, g, staged)?;
                            let events =
                                self.describe(&summary.committer, &summary.added, &summary.removed);
                            for (i, text) in events.iter().enumerate() {
                                self.insert_message(NewEntry {
                                    id: format!("{}.{i}", m.id),
                                    group: Some(gid),
                                    sender: Some((&summary.committer, true)),
                                    sent_at: summary.sent_at.unwrap_or(m.accepted_at),
                                    received_at: m.accepted_at,
                                    kind: MessageKind::Event,
                                    body: text,
                                    outgoing: false,
                                })?;
                            }
                            if summary.self_removed {
                                self.conn.execute(
                                    "UPDATE conversations SET active = 0 WHERE group_id = ?1",
                                    [gid.as_bytes()],
                                )?;
                            }
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    fn apply_content(
        &self,
        m: &QueuedMessage,
        sender: &DeviceAddr,
        envelope: Envelope,
        users: &BTreeSet<Username>,
    ) -> Result<(), ClientError> {
        let event = |kind: MessageKind, text: &str| {
            self.insert_message(NewEntry {
                id: m.id.to_string(),
                group: Some(&m.group_id),
                sender: Some((sender, true)),
                sent_at: envelope.sent_at,
                received_at: m.accepted_at,
                kind,
                body: text,
                outgoing: false,
            })
        };
        match &envelope.content {
            Content::Text { body } => event(MessageKind::Text, body),
            Content::GroupInfo { name } => {
                let described = self.describe_conversation(&m.group_id, sender, name, users)?;
                described.map_or(Ok(()), |text| event(MessageKind::Event, &text))
            }
        }
    }

    /// Applies a member's description of the conversation (`GroupInfo`). The first one
    /// fixes what the conversation is: a named group, or a one-to-one conversation with its
    /// sender, which it can only be while the two of you are its only members. After that a
    /// group can be renamed, but nobody can turn a group into a one-to-one conversation or
    /// back. Returns the event to show, if any.
    fn describe_conversation(
        &self,
        gid: &GroupId,
        sender: &DeviceAddr,
        name: &Option<String>,
        users: &BTreeSet<Username>,
    ) -> Result<Option<String>, ClientError> {
        let (current, peer, announced): (Option<String>, Option<String>, bool) =
            self.conn.query_row(
                "SELECT name, peer, announced FROM conversations WHERE group_id = ?1",
                [gid.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
        let set = |name: Option<&str>, peer: Option<&str>| {
            self.conn.execute(
                "UPDATE conversations SET name = ?2, peer = ?3, announced = 1 WHERE group_id = ?1",
                params![gid.as_bytes(), name, peer],
            )
        };
        let who = &sender.user;
        Ok(
            match (current.as_deref(), peer.as_deref(), name.as_deref()) {
                (None, None, Some(new)) => {
                    set(Some(new), None)?;
                    Some(format!("{who} added you"))
                }
                (None, None, None) => {
                    let just_us = users.len() == 2 && users.contains(who);
                    if !just_us {
                        return Ok(Some(format!(
                            "{who} described this conversation of {} people as one-to-one; ignored",
                            users.len()
                        )));
                    }
                    set(None, Some(who.as_str()))?;
                    None
                }
                (Some(old), peer, Some(new)) if old != new => {
                    set(Some(new), peer)?;
                    Some(format!("{who} renamed the group {old:?} to {new:?}"))
                }
                (Some(old), peer, Some(_)) => {
                    if announced {
                        None
                    } else {
                        set(Some(old), peer)?;
                        Some(format!("{who} added you"))
                    }
                }
                (Some(_), _, None) => Some(format!(
                    "{who} tried to make this group a one-to-one conversation; ignored"
                )),
                (None, Some(_), Some(new)) => Some(format!(
                    "{who} tried to name your one-to-one conversation {new:?}; ignored"
                )),
                (None, Some(peer), None) => {
                    if !announced {
                        set(None, Some(peer))?;
                    }
                    None
                }
            },
        )
    }

    pub(super) fn describe(
        &self,
        committer: &DeviceAddr,
        added: &[MemberDevice],
        removed: &[DeviceAddr],
    ) -> Vec<String> {
        let name = |u: &Username| {
            if *u == self.me().user {
                "you".to_owned()
            } else {
                u.to_string()
            }
        };
        let users = |devs: &mut dyn Iterator<Item = &Username>| {
            let mut v: Vec<Username> = devs.cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let who = name(&committer.user);
        let mut out = Vec::new();
        for u in users(&mut added.iter().map(|d| &d.addr.user)) {
            out.push(format!("{who} added {}", name(&u)));
        }
        for u in users(&mut removed.iter().map(|d| &d.user)) {
            out.push(format!("{who} removed {}", name(&u)));
        }
        out
    }

    /// Opens the push WebSocket, signed in with this device's token.
    async fn connect_push(&self) -> Result<PushSocket, ClientError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = self
            .api
            .ws_url()
            .into_client_request()
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let auth = format!("Bearer {}", self.token().await?)
            .parse()
            .map_err(|_| ClientError::Internal("the token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", auth);
        let (stream, _) =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req))
                .await
                .map_err(|_| ClientError::Unreachable("opening the push socket timed out".into()))?
                .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        Ok(stream)
    }

    /// Syncs and hands new messages to `emit` until `deadline` (forever if `None`), waking on
    /// WebSocket pushes; `status` hears of every change of state. With `until_first`, returns
    /// after the first non-empty batch. The socket is opened before each sync, so a message
    /// queued in between is in that sync or announced on the socket, never missed.
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
                Err(e) if is_transient(&e) => {
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
            let batch = self.unshown()?;
            if !batch.is_empty() {
                emit(&batch)?;
                self.mark_shown(&batch)?;
                if until_first {
                    return Ok(());
                }
            }
            if past_deadline() {
                return Ok(());
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let sleep = tokio::time::sleep_until(deadline.unwrap_or(far));
            tokio::pin!(sleep);
            match ws.as_mut() {
                Some(stream) => {
                    report(FollowStatus::Listening);
                    match wait_for_push(stream, &mut sleep).await {
                        Woken::Push => {}
                        Woken::Lost => {
                            ws = None;
                            report(FollowStatus::Reconnecting);
                        }
                        Woken::Replaced => {
                            ws = None;
                            replaced = true;
                        }
                    }
                }
                None => {
                    report(FollowStatus::Polling);
                    tokio::select! {
                        () = tokio::time::sleep(POLL) => {}
                        () = &mut sleep => {}
                    }
                }
            }
        }
    }
}

/// Why [`wait_for_push`] returned.
enum Woken {
    /// A push event, or the deadline: time to sync.
    Push,
    /// The socket closed or failed.
    Lost,
    /// The server closed the socket for a newer one of this device.
    Replaced,
}

/// Waits for a push event or for `sleep`, pinging the server every [`KEEPALIVE`].
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
                Some(Ok(Message::Text(_))) => return Woken::Push,
                // Pings are answered by the stream itself while it is read.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => heard = true,
                Some(Ok(Message::Close(Some(frame))))
                    if u16::from(frame.code) == sotto_proto::api::CLOSE_REPLACED =>
                {
                    return Woken::Replaced;
                }
                _ => return Woken::Lost,
            },
            () = sleep.as_mut() => return Woken::Push,
        }
    }
}
