//! The history as a person reads it: the engine's entries become [`MessageView`]s, and its
//! events the English sentences shown for them. The words are chosen here, at the edge;
//! the store keeps the events as data.
//!
//! Every value shown as a fact is either authenticated by MLS (the sender, the sender's own
//! `sent_at`) or labelled as the server's word (`received_at`, and the sender of a message
//! that could not be read, with `sender_verified: false`).

use sotto_core::Event;
use sotto_core::store::{HistoryItem, UnshownEntry};
use sotto_proto::Username;

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
    pub(crate) position: i64,
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

impl MessageView {
    /// The view of `entry` for the device of `me`.
    pub(crate) fn of(entry: UnshownEntry, me: &Username) -> Self {
        let record = entry.record;
        let (kind, text) = match record.item {
            HistoryItem::Text(text) => (MessageKind::Text, text),
            HistoryItem::Event(event) => (MessageKind::Event, describe(&event, me)),
            HistoryItem::Security {
                from: Some(from),
                reason,
            } => (
                MessageKind::Security,
                format!("refused a message from {from} (as the server says): {reason}"),
            ),
            HistoryItem::Security { from: None, reason } => (MessageKind::Security, reason),
        };
        MessageView {
            id: record.id,
            conversation: record.group.map(|g| hex::encode(g.as_bytes())),
            group: entry.group_name,
            peer: entry.peer,
            from: record.sender.as_ref().map(|(s, _)| s.user.to_string()),
            device: record.sender.as_ref().map(|(s, _)| s.device.to_string()),
            sender_verified: record.sender.as_ref().is_none_or(|(_, v)| *v),
            sent_at: record.sent_at,
            received_at: record.received_at,
            kind,
            text,
            position: entry.position,
        }
    }
}

/// The sentence shown for `event` on the device of `me`.
pub(crate) fn describe(event: &Event, me: &Username) -> String {
    let name = |u: &Username| {
        if u == me {
            "you".to_owned()
        } else {
            u.to_string()
        }
    };
    match event {
        Event::Added { by, user } => format!("{} added {}", name(by), name(user)),
        Event::Removed { by, user } => format!("{} removed {}", name(by), name(user)),
        Event::DeviceAdded {
            by,
            user,
            device,
            name: device_name,
        } => {
            let whose = if user == me {
                "your".to_owned()
            } else {
                format!("{user}'s")
            };
            if by == user {
                format!("{} added a device: {device_name} ({device})", name(by))
            } else {
                format!("{} added {whose} device {device_name} ({device})", name(by))
            }
        }
        Event::DeviceRemoved { by, user, device } => {
            if by == user {
                format!("{} removed a device ({device})", name(by))
            } else {
                format!("{} removed a device of {} ({device})", name(by), name(user))
            }
        }
        Event::Joined { by } => format!("{by} added you"),
        Event::Renamed { by, from, to } => {
            format!("{by} renamed the group {from:?} to {to:?}")
        }
        Event::NotOneToOne { by, people } => {
            format!("{by} described this conversation of {people} people as one-to-one; ignored")
        }
        Event::GroupStaysGroup { by } => {
            format!("{by} tried to make this group a one-to-one conversation; ignored")
        }
        Event::OneToOneStaysUnnamed { by, name } => {
            format!("{by} tried to name your one-to-one conversation {name:?}; ignored")
        }
        Event::Dropped { count } => format!(
            "the server dropped {count} message(s) for this device before it fetched them: its \
             queue was full or they waited longer than the server keeps messages"
        ),
        Event::Missing {
            from,
            device,
            count,
        } => format!(
            "{count} message(s) from {} (device {device}) never arrived, by that device's \
             count: the server withheld them, or the device never sent them",
            name(from)
        ),
        Event::Unreadable { from, reason } => {
            format!("a message from {from} (as the server says) could not be read: {reason}")
        }
        Event::Undelivered { reason } => {
            format!("something you sent could not be delivered: {reason}")
        }
        Event::NobodyToRemove => "nobody to remove".to_owned(),
        Event::Earlier { text } => text.clone(),
        // `Event::Unknown`, and any event added later: not dropped, only not described.
        _ => "something happened that this version of Sotto cannot describe".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_core::store::HistoryRecord;

    #[test]
    fn debug_of_a_message_view_shows_neither_its_text_nor_its_group_name() {
        let entry = UnshownEntry {
            position: 1,
            record: HistoryRecord {
                id: "1".into(),
                group: None,
                sender: None,
                sent_at: 0,
                received_at: 0,
                item: HistoryItem::Text("meet at the bridge".into()),
                outgoing: false,
            },
            group_name: Some("resistance".into()),
            peer: None,
        };
        let view = MessageView::of(entry, &Username::parse("alice").unwrap());
        let shown = format!("{view:?}");
        assert!(
            !shown.contains("bridge") && !shown.contains("resistance"),
            "{shown}"
        );
        assert!(shown.contains("<18 bytes>"), "{shown}");
    }
}
