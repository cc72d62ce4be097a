//! The conversation history as the user sees it: messages, events and security events, and
//! which of them have been shown.
//!
//! Every value shown as a fact is either authenticated by MLS (the sender, the sender's own
//! `sent_at`) or labelled as the server's word (`received_at`, and the sender of a message
//! that could not be read, with `sender_verified: false`).

use super::*;

/// What a history entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A text message.
    Text,
    /// A membership change, a name change or a notice.
    Event,
    /// A security failure: something was refused, and why.
    Security,
}

impl MessageKind {
    fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Event => "event",
            MessageKind::Security => "security",
        }
    }

    fn parse(s: &str) -> rusqlite::Result<Self> {
        match s {
            "text" => Ok(MessageKind::Text),
            "event" => Ok(MessageKind::Event),
            "security" => Ok(MessageKind::Security),
            other => Err(rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown message kind {other:?}").into(),
            )),
        }
    }
}

/// A message or event ready to show. Its `Debug` leaves out the text and the group's name.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageView {
    /// Stable id: the server's message id, with `.N` for the N-th event of one commit.
    pub id: String,
    /// The conversation (the MLS group id, hex); absent for a notice about no conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    /// The group's name; absent for a one-to-one conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The other person, for a one-to-one conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Sender's username; absent for this device's own notices.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Sender's device id (16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether MLS authenticated the sender; false when only the server names it (a message
    /// that could not be read).
    pub sender_verified: bool,
    /// When it was sent, by the sender's clock (authenticated); for this device's own
    /// notices, when it noticed.
    pub sent_at: u64,
    /// When the server accepted it, by the server's clock (the server's word).
    pub received_at: u64,
    /// What it is.
    pub kind: MessageKind,
    /// The text; for an event a sentence such as "alice added bob"; for a security event
    /// the full reason.
    pub text: String,
    #[serde(skip)]
    local_id: i64,
}

impl std::fmt::Debug for MessageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageView")
            .field("id", &self.id)
            .field("conversation", &self.conversation)
            .field("from", &self.from)
            .field("device", &self.device)
            .field("sender_verified", &self.sender_verified)
            .field("sent_at", &self.sent_at)
            .field("received_at", &self.received_at)
            .field("kind", &self.kind)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish_non_exhaustive()
    }
}

/// A history entry to store.
pub(super) struct NewEntry<'a> {
    /// Stable id.
    pub id: String,
    /// The conversation, if any.
    pub group: Option<&'a GroupId>,
    /// The sender, if any, and whether MLS authenticated it.
    pub sender: Option<(&'a DeviceAddr, bool)>,
    /// The sender's time.
    pub sent_at: u64,
    /// The server's time.
    pub received_at: u64,
    /// What it is.
    pub kind: MessageKind,
    /// Its text.
    pub body: &'a str,
    /// Sent by this device (never shown by `recv`).
    pub outgoing: bool,
}

impl Client {
    /// Stores a history entry; an id already stored is left as it is.
    pub(super) fn insert_message(&self, e: NewEntry<'_>) -> Result<(), ClientError> {
        let (user, device, verified) = match e.sender {
            Some((s, verified)) => (Some(s.user.as_str()), Some(s.device.to_string()), verified),
            None => (None, None, true),
        };
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO messages (id, group_id, sender_user, sender_device,
                 sender_verified, sent_at, received_at, kind, body, outgoing, shown)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
            )?
            .execute(params![
                e.id,
                e.group.map(GroupId::as_bytes),
                user,
                device,
                verified,
                // A sender's clock may say anything; SQLite's integers stop at i64::MAX.
                i64::try_from(e.sent_at).unwrap_or(i64::MAX),
                i64::try_from(e.received_at).unwrap_or(i64::MAX),
                e.kind.as_str(),
                e.body,
                e.outgoing
            ])?;
        Ok(())
    }

    /// Stores a security event with its full reason, unshown until `recv` shows it.
    pub(super) fn record_security(
        &self,
        group: Option<&GroupId>,
        reason: &str,
    ) -> Result<(), ClientError> {
        let id = format!("local-{}", random_client_id());
        self.record_notice(id, group, MessageKind::Security, reason)
    }

    /// Stores something this device noticed itself (no sender; both times are now).
    pub(super) fn record_notice(
        &self,
        id: String,
        group: Option<&GroupId>,
        kind: MessageKind,
        text: &str,
    ) -> Result<(), ClientError> {
        self.insert_message(NewEntry {
            id,
            group,
            sender: None,
            sent_at: now(),
            received_at: now(),
            kind,
            body: text,
            outgoing: false,
        })
    }

    fn entries(&self, filter: &str) -> Result<Vec<MessageView>, ClientError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT m.local_id, m.id, m.group_id, c.name, c.peer, m.sender_user, m.sender_device,
                    m.sender_verified, m.sent_at, m.received_at, m.kind, m.body
             FROM messages m LEFT JOIN conversations c ON c.group_id = m.group_id
             WHERE m.shown = 0 {filter} ORDER BY m.local_id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(MessageView {
                local_id: r.get(0)?,
                id: r.get(1)?,
                conversation: r.get::<_, Option<Vec<u8>>>(2)?.map(hex::encode),
                group: r.get(3)?,
                peer: r.get(4)?,
                from: r.get(5)?,
                device: r.get(6)?,
                sender_verified: r.get(7)?,
                sent_at: u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0),
                received_at: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
                kind: MessageKind::parse(&r.get::<_, String>(10)?)?,
                text: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Messages and events not yet shown, oldest first. Call [`Client::mark_shown`] once
    /// they are displayed.
    pub fn unshown(&self) -> Result<Vec<MessageView>, ClientError> {
        self.entries("")
    }

    /// Security events `recv` has not shown yet. Every command reports them (and exits 3)
    /// until `recv` has shown them.
    pub fn unseen_security_events(&self) -> Result<Vec<MessageView>, ClientError> {
        self.entries("AND m.kind = 'security'")
    }

    /// Marks everything up to and including `messages` as shown.
    pub fn mark_shown(&self, messages: &[MessageView]) -> Result<(), ClientError> {
        if let Some(last) = messages.last() {
            self.conn.execute(
                "UPDATE messages SET shown = 1 WHERE shown = 0 AND local_id <= ?1",
                [last.local_id],
            )?;
        }
        Ok(())
    }
}
