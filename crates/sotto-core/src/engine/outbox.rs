//! Sending through the outbox: every outgoing message or commit is written with its
//! idempotency key before it is posted, and replayed after a crash or a lost connection.
//! A replay the server refuses because the group moved on is redone against the new state:
//! a message is encrypted again, a membership change is recomputed.

use super::{Engine, MAX_ATTEMPTS, NAMED_RECIPIENTS, kept_changing, lock, random_client_id};
use crate::events::Event;
use crate::group;
use crate::store::{
    ClientStore, HistoryItem, HistoryRecord, OutboxEntry, OutboxRecord, Outgoing, StoreTx,
};
use crate::{ClientError, Content, Envelope, Transport};
use sotto_proto::api::{SendRequest, SendResponse};
use sotto_proto::{ErrorCode, GroupId};

/// How long an outbox entry the server keeps failing on (500, 429, 503) is tried before it
/// is given up and the user told: a day, in seconds.
pub(super) const OUTBOX_PATIENCE: u64 = 24 * 3600;

/// An application message the server accepted whose local bookkeeping (dropping the outbox
/// entry, recording the sent message) is folded into this device's next transaction. If the
/// process dies first, the outbox entry is replayed and the server answers it idempotently.
pub(super) struct AcceptedSend {
    group: GroupId,
    client_id: String,
    envelope: Envelope,
    response: SendResponse,
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    pub(super) async fn post(
        &self,
        gid: &GroupId,
        req: &SendRequest,
    ) -> Result<SendResponse, ClientError> {
        let token = self.token().await?;
        self.transport.send(&token, gid, req).await
    }

    /// Encrypts and sends `content` to a group, rebasing on concurrent commits. `counter` is
    /// the message's counter if it has one (it is sent again), or `None` for a new message.
    pub(super) async fn send_content(
        &self,
        gid: &GroupId,
        content: &Content,
        sent_at: u64,
        counter: Option<u64>,
    ) -> Result<SendResponse, ClientError> {
        // A group's messages reach the server in the order of their counters (a receiver
        // refuses a counter that is not past the last one it saw): an earlier message to
        // the same group still in the outbox (the server may yet take it) goes first, and
        // while it cannot, a new one is refused.
        if counter.is_none() && self.pending_in(gid)? {
            Box::pin(self.flush_outbox()).await?;
        }
        if counter.is_none() && self.pending_in(gid)? {
            return Err(ClientError::Unreachable(
                "an earlier message to this conversation is still waiting for the server; \
                 try again shortly"
                    .into(),
            ));
        }
        let mut counter = counter;
        for _ in 0..MAX_ATTEMPTS {
            self.verify_recipients(gid, |_| true).await?;
            let mut envelope = Envelope {
                sent_at,
                counter,
                // The newest root, as of this attempt (a rebase may have seen a newer one).
                log_root: self.store.read(|tx| self.head(tx))?,
                content: content.clone(),
            };
            let req = self.prepare_message(gid, &mut envelope)?;
            // Kept for the next attempts: the same message, the same count.
            counter = envelope.counter;
            match self.post(gid, &req).await {
                Ok(resp) => {
                    self.accepted(gid, req.client_id, envelope.clone(), resp.clone());
                    return Ok(resp);
                }
                // The entry goes once what moved the group on is processed: if that fails,
                // the next flush redoes it (with its counter).
                Err(e) if e.code() == Some(ErrorCode::EpochConflict) => {
                    self.pull().await?;
                    self.drop_outbox(&req.client_id)?;
                }
                // The server may have taken it: the outbox keeps it, the next sync replays it.
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    self.drop_outbox(&req.client_id)?;
                    return Err(e);
                }
            }
        }
        Err(kept_changing())
    }

    /// Encrypts `envelope` for the group and writes the request to the outbox, in one
    /// transaction (which also records the sends accepted since the last one). An envelope
    /// with no counter is given this device's next one in the group, counted as used from
    /// then on. Returns the request to post.
    pub fn prepare_message(
        &self,
        gid: &GroupId,
        envelope: &mut Envelope,
    ) -> Result<SendRequest, ClientError> {
        self.tx(|tx| {
            if envelope.counter.is_none() {
                envelope.counter = Some(self.next_counter(tx, gid)?);
            }
            let req = self.with_active_group(tx, gid, |p, g| {
                let (recipients, to_roster) = self.addressing(g, NAMED_RECIPIENTS)?;
                Ok(SendRequest {
                    client_id: random_client_id(),
                    message: group::encrypt(p, &self.device, g, envelope)?.into(),
                    recipients,
                    to_roster,
                    roster: None,
                    welcome: None,
                })
            })?;
            tx.put_outbox(&OutboxRecord {
                client_id: req.client_id.clone(),
                group: gid.clone(),
                request: req.clone(),
                outgoing: Outgoing::Message(envelope.content.clone()),
                created_at: envelope.sent_at,
                counter: envelope.counter,
            })?;
            Ok(req)
        })
    }

    /// Whether the outbox holds an application message to `gid` the server has not taken.
    fn pending_in(&self, gid: &GroupId) -> Result<bool, ClientError> {
        self.finish_accepted()?;
        let outbox = self.store.read(|tx| tx.outbox())?;
        Ok(outbox.iter().any(|e| {
            matches!(e, OutboxEntry::Ready(r)
                if r.group == *gid && matches!(r.outgoing, Outgoing::Message(_)))
        }))
    }

    /// Notes that the server accepted the message `client_id`: its outbox entry is dropped
    /// and the message recorded as sent in the next transaction.
    pub fn accepted(
        &self,
        gid: &GroupId,
        client_id: String,
        envelope: Envelope,
        response: SendResponse,
    ) {
        lock(&self.accepted).push(AcceptedSend {
            group: gid.clone(),
            client_id,
            envelope,
            response,
        });
    }

    /// Drops a commit the server refused, and its outbox entry.
    pub(super) fn abandon_commit(&self, gid: &GroupId, client_id: &str) -> Result<(), ClientError> {
        self.tx(|tx| {
            tx.remove_outbox(client_id)?;
            self.discard_pending_commit(tx, gid)
        })
    }

    /// Forgets this device's pending commit in the group, if it has one.
    fn discard_pending_commit(&self, tx: &impl StoreTx, gid: &GroupId) -> Result<(), ClientError> {
        self.with_group(tx, gid, |p, g| Ok(group::discard_pending(p, g)?))
    }

    pub(super) fn drop_outbox(&self, client_id: &str) -> Result<(), ClientError> {
        self.tx(|tx| Ok(tx.remove_outbox(client_id).map(drop)?))
    }

    /// Records an accepted message as sent.
    pub(super) fn finish_message(
        &self,
        tx: &impl StoreTx,
        accepted: &AcceptedSend,
    ) -> Result<(), ClientError> {
        tx.remove_outbox(&accepted.client_id)?;
        if let Content::Text { body } = &accepted.envelope.content {
            tx.add_history(&HistoryRecord {
                id: accepted.response.id.to_string(),
                group: Some(accepted.group.clone()),
                sender: Some((self.me().clone(), true)),
                sent_at: accepted.envelope.sent_at,
                received_at: accepted.response.accepted_at,
                item: HistoryItem::Text(body.clone()),
                outgoing: true,
            })?;
        }
        Ok(())
    }

    /// Merges this device's accepted commit and records its events.
    pub(super) fn finish_commit(
        &self,
        tx: &impl StoreTx,
        gid: &GroupId,
        client_id: &str,
        resp: &SendResponse,
    ) -> Result<Vec<Event>, ClientError> {
        let sent_at = tx.remove_outbox(client_id)?;
        let (before, after) = self.with_group(tx, gid, |p, g| {
            let before = group::members(g)?;
            group::merge_pending(p, g)?;
            Ok::<_, ClientError>((before, group::members(g)?))
        })?;
        // A commit that removes someone or updates this device's leaf gives the leaf fresh
        // keys: healed.
        if super::healing::removes_any(&before, &after) || before == after {
            tx.set_healed_at(gid, self.now())?;
        }
        let events = self.describe(self.me(), &before, &after);
        for (i, event) in events.iter().enumerate() {
            tx.add_history(&HistoryRecord {
                id: format!("{}.{i}", resp.id),
                group: Some(gid.clone()),
                sender: Some((self.me().clone(), true)),
                sent_at: sent_at.unwrap_or(resp.accepted_at),
                received_at: resp.accepted_at,
                item: HistoryItem::Event(event.clone()),
                outgoing: true,
            })?;
        }
        Ok(events)
    }

    /// Sends whatever an interrupted run left in the outbox, with its original idempotency
    /// key, so the server stores it at most once. Entries go in order; one the server may yet
    /// take (it could not be reached, failed, or asked for patience) stops the flush and waits
    /// for the next sync with those after it, for a day at most. An entry that can never be
    /// sent (or that a day of trying did not send) is dropped and told to the user, so that
    /// it cannot block this device's receiving.
    pub(super) async fn flush_outbox(&self) -> Result<(), ClientError> {
        // Bookkeeping of sends already accepted first: they need no replay.
        self.finish_accepted()?;
        for entry in self.tx(|tx| Ok(tx.outbox()?))? {
            let entry = match entry {
                OutboxEntry::Ready(entry) => *entry,
                OutboxEntry::Damaged { client_id, reason } => {
                    self.tx(|tx| {
                        tx.remove_outbox(&client_id)?;
                        let reason = format!("its outbox entry is damaged: {reason}");
                        self.record_undelivered(tx, None, reason)
                    })?;
                    continue;
                }
            };
            match self.replay(&entry).await {
                Ok(()) => {}
                Err(e @ ClientError::Unreachable(_)) => return Err(e),
                // A server that has refused it for a day will not take it: it must not hold
                // back the rest (and its group's new messages) for ever.
                Err(e)
                    if e.is_transient()
                        && self.now().saturating_sub(entry.created_at) <= OUTBOX_PATIENCE =>
                {
                    return Ok(());
                }
                Err(e) => self.give_up(&entry, &e)?,
            }
        }
        Ok(())
    }

    /// Sends one outbox entry again; a message or change that lost its epoch is redone.
    async fn replay(&self, entry: &OutboxRecord) -> Result<(), ClientError> {
        let gid = &entry.group;
        let result = self.post(gid, &entry.request).await;
        if let Err(e) = &result
            && (e.is_transient() || e.code() != Some(ErrorCode::EpochConflict))
        {
            return result.map(drop);
        }
        match (&entry.outgoing, result) {
            (Outgoing::Message(content), Ok(response)) => {
                let accepted = AcceptedSend {
                    group: gid.clone(),
                    client_id: entry.client_id.clone(),
                    envelope: Envelope {
                        sent_at: entry.created_at,
                        counter: entry.counter,
                        log_root: None,
                        content: content.clone(),
                    },
                    response,
                };
                self.tx(|tx| self.finish_message(tx, &accepted))
            }
            (Outgoing::Commit(change), Ok(resp)) => {
                self.tx(|tx| self.finish_commit(tx, gid, &entry.client_id, &resp))?;
                // As after any commit that adds someone: tell them what the group is.
                if change.add.is_empty() && change.add_devices.is_empty() {
                    return Ok(());
                }
                self.send_group_info(gid).await
            }
            // The group moved on: process what moved it, then redo this against the new
            // state. The entry stays until then, so a failure on the way loses nothing (its
            // replay gets 409 again).
            (Outgoing::Message(content), Err(_)) => {
                self.pull().await?;
                self.drop_outbox(&entry.client_id)?;
                self.send_content(gid, content, entry.created_at, entry.counter)
                    .await
                    .map(drop)
            }
            (Outgoing::Commit(change), Err(_)) => {
                self.tx(|tx| self.discard_pending_commit(tx, gid))?;
                self.pull().await?;
                self.drop_outbox(&entry.client_id)?;
                self.commit_change(gid, change).await.map(drop)
            }
        }
    }

    /// Drops an entry that can never be sent (and its pending commit), and tells the user
    /// why: as a security event if that was the reason.
    fn give_up(&self, entry: &OutboxRecord, e: &ClientError) -> Result<(), ClientError> {
        match entry.outgoing {
            Outgoing::Commit(_) => self.abandon_commit(&entry.group, &entry.client_id)?,
            Outgoing::Message(_) => self.drop_outbox(&entry.client_id)?,
        }
        let group = Some(&entry.group);
        self.tx(|tx| match e {
            ClientError::Security(reason) => self.record_security(tx, group, None, reason),
            other => self.record_undelivered(tx, group, other.to_string()),
        })
    }
}
