//! Sending through the outbox: every outgoing message or commit is written with its
//! idempotency key before it is posted, and replayed after a crash or a lost connection.
//! A replay the server refuses because the group moved on is redone against the new state:
//! a message is encrypted again, a membership change is recomputed.

use super::messages::NewEntry;
use super::*;

/// What an outbox entry sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutboxKind {
    /// An application message; its `content` column holds the [`Content`].
    App,
    /// A commit; its `content` column holds the [`MemberChange`] it makes.
    Commit,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::App => "app",
            OutboxKind::Commit => "commit",
        }
    }

    fn parse(s: &str) -> Result<Self, ClientError> {
        match s {
            "app" => Ok(OutboxKind::App),
            "commit" => Ok(OutboxKind::Commit),
            other => Err(ClientError::Store(format!("unknown outbox kind {other:?}"))),
        }
    }
}

/// The users a commit adds and removes, kept so that a commit that lost its epoch can be
/// recomputed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct MemberChange {
    pub add: Vec<Username>,
    pub remove: Vec<Username>,
}

/// A send that has not been confirmed by the server yet.
struct OutboxEntry {
    client_id: String,
    group_id: Vec<u8>,
    kind: OutboxKind,
    /// The JSON `SendRequest`, sent again unchanged.
    request: String,
    /// JSON: the `Content` of a message, or the `MemberChange` of a commit.
    content: Option<String>,
    /// When it was made: the sender's `sent_at`.
    created_at: u64,
}

/// An application message the server accepted whose local bookkeeping (dropping the outbox
/// entry, recording the sent message) is folded into this device's next transaction. If the
/// process dies first, the outbox entry is replayed and the server answers it idempotently.
pub(super) struct AcceptedSend {
    group: GroupId,
    client_id: String,
    envelope: Envelope,
    response: SendResponse,
}

impl Client {
    pub(super) async fn post(
        &self,
        gid: &GroupId,
        req: &SendRequest,
    ) -> Result<SendResponse, ClientError> {
        let token = self.token().await?;
        self.api.send(&token, gid, req).await
    }

    /// Writes an outbox entry. Runs inside the transaction that made `req`.
    pub(super) fn put_outbox(
        &self,
        gid: &GroupId,
        req: &SendRequest,
        content: &impl serde::Serialize,
        created_at: u64,
    ) -> Result<(), ClientError> {
        let kind = if req.roster.is_some() {
            OutboxKind::Commit
        } else {
            OutboxKind::App
        };
        self.conn.execute(
            "INSERT INTO outbox (client_id, group_id, kind, request, content, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                req.client_id,
                gid.as_bytes(),
                kind.as_str(),
                json(req)?,
                json(content)?,
                created_at as i64
            ],
        )?;
        Ok(())
    }

    /// Encrypts and sends `content` to a group, rebasing on concurrent commits.
    pub(super) async fn send_content(
        &self,
        gid: &GroupId,
        content: &Content,
        sent_at: u64,
    ) -> Result<SendResponse, ClientError> {
        let envelope = Envelope {
            sent_at,
            content: content.clone(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let req = self.tx(|| {
                let req = self.with_active_group(gid, |p, g| {
                    Ok(SendRequest {
                        client_id: random_client_id(),
                        message: group::encrypt(p, &self.device, g, &envelope)?.into(),
                        recipients: self.others(g)?,
                        roster: None,
                        welcome: None,
                    })
                })?;
                self.put_outbox(gid, &req, content, sent_at)?;
                Ok(req)
            })?;
            match self.post(gid, &req).await {
                Ok(resp) => {
                    self.accepted.borrow_mut().push(AcceptedSend {
                        group: gid.clone(),
                        client_id: req.client_id,
                        envelope: envelope.clone(),
                        response: resp.clone(),
                    });
                    return Ok(resp);
                }
                Err(e) if e.code() == Some(ErrorCode::EpochConflict) => {
                    self.drop_outbox(&req.client_id)?;
                    self.pull().await?;
                }
                // The server may have taken it: the outbox keeps it, the next sync replays it.
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => {
                    self.drop_outbox(&req.client_id)?;
                    return Err(e);
                }
            }
        }
        Err(kept_changing())
    }

    /// Drops a commit the server refused, and its outbox entry.
    pub(super) fn abandon_commit(&self, gid: &GroupId, client_id: &str) -> Result<(), ClientError> {
        self.tx(|| {
            self.drop_outbox(client_id)?;
            self.discard_pending_commit(gid)
        })
    }

    /// Forgets this device's pending commit in the group, if it has one. Runs inside a
    /// transaction.
    fn discard_pending_commit(&self, gid: &GroupId) -> Result<(), ClientError> {
        self.with_group(gid.as_bytes(), |p, g| Ok(group::discard_pending(p, g)?))
    }

    pub(super) fn drop_outbox(&self, client_id: &str) -> Result<(), ClientError> {
        self.conn
            .execute("DELETE FROM outbox WHERE client_id = ?1", [client_id])?;
        Ok(())
    }

    /// Records an accepted message as sent. Runs inside a transaction.
    pub(super) fn finish_app(&self, accepted: &AcceptedSend) -> Result<(), ClientError> {
        self.drop_outbox(&accepted.client_id)?;
        if let Content::Text { body } = &accepted.envelope.content {
            self.insert_message(NewEntry {
                id: accepted.response.id.to_string(),
                group: Some(&accepted.group),
                sender: Some((self.me(), true)),
                sent_at: accepted.envelope.sent_at,
                received_at: accepted.response.accepted_at,
                kind: MessageKind::Text,
                body,
                outgoing: true,
            })?;
        }
        Ok(())
    }

    /// Merges this device's accepted commit and records its events. Runs inside a
    /// transaction.
    pub(super) fn finish_commit(
        &self,
        gid: &GroupId,
        client_id: &str,
        resp: &SendResponse,
    ) -> Result<Vec<String>, ClientError> {
        let sent_at: Option<i64> = self
            .conn
            .query_row(
                "DELETE FROM outbox WHERE client_id = ?1 RETURNING created_at",
                [client_id],
                |r| r.get(0),
            )
            .optional()?;
        let (before, after) = self.with_group(gid.as_bytes(), |p, g| {
            let before = group::members(g)?;
            group::merge_pending(p, g)?;
            Ok::<_, ClientError>((before, group::members(g)?))
        })?;
        let added: Vec<MemberDevice> = after
            .iter()
            .filter(|m| !before.contains(m))
            .cloned()
            .collect();
        let removed: Vec<DeviceAddr> = before
            .iter()
            .filter(|m| !after.contains(m))
            .map(|m| m.addr.clone())
            .collect();
        let events = self.describe(self.me(), &added, &removed);
        for (i, text) in events.iter().enumerate() {
            self.insert_message(NewEntry {
                id: format!("{}.{i}", resp.id),
                group: Some(gid),
                sender: Some((self.me(), true)),
                sent_at: sent_at.map_or(resp.accepted_at, |t| t as u64),
                received_at: resp.accepted_at,
                kind: MessageKind::Event,
                body: text,
                outgoing: true,
            })?;
        }
        Ok(events)
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT client_id, group_id, kind, request, content, created_at FROM outbox
             ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (client_id, group_id, kind, request, content, created_at) = row?;
            Ok(OutboxEntry {
                client_id,
                group_id,
                kind: OutboxKind::parse(&kind)?,
                request,
                content,
                created_at: u64::try_from(created_at).unwrap_or(0),
            })
        })
        .collect()
    }

    /// Sends whatever an interrupted run left in the outbox, with its original idempotency
    /// key, so the server stores it at most once. Entries go in order; one the server may yet
    /// take (it could not be reached, failed, or asked for patience) stops the flush and waits
    /// for the next sync with those after it. An entry that can never be sent is dropped and
    /// told to the user, so that it cannot block this device's receiving.
    pub(super) async fn flush_outbox(&self) -> Result<(), ClientError> {
        // Bookkeeping of sends already accepted first: they need no replay.
        self.finish_accepted()?;
        for entry in self.outbox()? {
            match self.replay(&entry).await {
                Ok(()) => {}
                Err(e @ ClientError::Unreachable(_)) => return Err(e),
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => self.give_up(&entry, &e)?,
            }
        }
        Ok(())
    }

    /// Sends one outbox entry again; a message or change that lost its epoch is redone.
    async fn replay(&self, entry: &OutboxEntry) -> Result<(), ClientError> {
        let gid =
            GroupId::from_bytes(&entry.group_id).map_err(|_| ClientError::damaged("group id"))?;
        let req: SendRequest = from_json(&entry.request)?;
        let content = entry.content.as_deref().unwrap_or("null");
        let result = self.post(&gid, &req).await;
        if let Err(e) = &result
            && (is_transient(e) || e.code() != Some(ErrorCode::EpochConflict))
        {
            return result.map(drop);
        }
        match (entry.kind, result) {
            (OutboxKind::App, Ok(response)) => {
                let accepted = AcceptedSend {
                    group: gid,
                    client_id: entry.client_id.clone(),
                    envelope: Envelope {
                        sent_at: entry.created_at,
                        content: from_json(content)?,
                    },
                    response,
                };
                self.tx(|| self.finish_app(&accepted))
            }
            (OutboxKind::Commit, Ok(resp)) => {
                self.tx(|| self.finish_commit(&gid, &entry.client_id, &resp))?;
                // As after any commit that adds someone: tell them what the group is.
                let change: MemberChange = from_json(content)?;
                if change.add.is_empty() {
                    return Ok(());
                }
                self.send_group_info(&gid).await
            }
            // The group moved on: process what moved it, then redo this against the new
            // state. The entry stays until then, so a failure on the way loses nothing (its
            // replay gets 409 again).
            (OutboxKind::App, Err(_)) => {
                self.pull().await?;
                self.drop_outbox(&entry.client_id)?;
                self.send_content(&gid, &from_json(content)?, entry.created_at)
                    .await
                    .map(drop)
            }
            (OutboxKind::Commit, Err(_)) => {
                let change: MemberChange = from_json(content)?;
                self.tx(|| self.discard_pending_commit(&gid))?;
                self.pull().await?;
                self.drop_outbox(&entry.client_id)?;
                self.change_members(&gid, &change.add, &change.remove)
                    .await
                    .map(drop)
            }
        }
    }

    /// Drops an entry that can never be sent (and its pending commit), and tells the user
    /// why: as a security event if that was the reason.
    fn give_up(&self, entry: &OutboxEntry, e: &ClientError) -> Result<(), ClientError> {
        let gid = GroupId::from_bytes(&entry.group_id).ok();
        match (&gid, entry.kind) {
            (Some(gid), OutboxKind::Commit) => self.abandon_commit(gid, &entry.client_id)?,
            _ => self.drop_outbox(&entry.client_id)?,
        }
        match e {
            ClientError::Security(reason) => self.record_security(gid.as_ref(), reason),
            other => self.record_undelivered(gid.as_ref(), other),
        }
    }

    /// Tells the user that something this device sent earlier was refused for good.
    fn record_undelivered(
        &self,
        gid: Option<&GroupId>,
        e: &ClientError,
    ) -> Result<(), ClientError> {
        let text = format!("something you sent could not be delivered: {e}");
        let id = format!("local-{}", random_client_id());
        self.tx(|| self.record_notice(id, gid, MessageKind::Event, &text))
    }
}
