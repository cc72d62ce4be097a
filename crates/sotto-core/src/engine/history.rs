//! The history as the user sees it: messages, events and security events, and which of them
//! have been shown.
//!
//! Every value shown as a fact is either authenticated by MLS (the sender, the sender's own
//! `sent_at`) or labelled as the server's word (`received_at`, and the sender of a message
//! that could not be read, with the sender marked unverified).

use super::{Engine, random_client_id};
use crate::events::Event;
use crate::store::{ClientStore, HistoryItem, HistoryRecord, StoreTx, Unshown, UnshownEntry};
use crate::{ClientError, Transport};
use sotto_proto::{GroupId, Username};

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Stores a security event with its full reason, unshown until it is shown. One that
    /// says, word for word, what a security event still waiting to be shown says (in the
    /// same conversation, or in any for one outside them) is not stored again: a command
    /// repeated, or a key change already shown in each conversation with the contact.
    pub(super) fn record_security(
        &self,
        tx: &impl StoreTx,
        group: Option<&GroupId>,
        from: Option<&Username>,
        reason: &str,
    ) -> Result<(), ClientError> {
        let waiting = tx.unshown(Unshown::Security)?.into_iter().any(|e| {
            (group.is_none() || e.record.group.as_ref() == group)
                && matches!(&e.record.item, HistoryItem::Security { reason: r, .. } if r == reason)
        });
        if waiting {
            return Ok(());
        }
        let id = format!("local-{}", random_client_id());
        let item = HistoryItem::Security {
            from: from.cloned(),
            reason: reason.to_owned(),
        };
        self.record_notice(tx, id, group, item)
    }

    /// Stores `record` under its id or, when the history holds that id already (an id the
    /// server chose, clashing with one of this device's), under an id of this device's own:
    /// nothing is hidden behind another entry.
    pub(super) fn add_history_visibly(
        &self,
        tx: &impl StoreTx,
        mut record: HistoryRecord,
    ) -> Result<(), ClientError> {
        if !tx.add_history(&record)? {
            record.id = format!("local-{}", random_client_id());
            tx.add_history(&record)?;
        }
        Ok(())
    }

    /// Stores that something this device sent was refused for good, and why.
    pub(super) fn record_undelivered(
        &self,
        tx: &impl StoreTx,
        group: Option<&GroupId>,
        reason: String,
    ) -> Result<(), ClientError> {
        let id = format!("local-{}", random_client_id());
        let item = HistoryItem::Event(Event::Undelivered { reason });
        self.record_notice(tx, id, group, item)
    }

    /// Stores something this device noticed itself (no sender; both times are now).
    pub(super) fn record_notice(
        &self,
        tx: &impl StoreTx,
        id: String,
        group: Option<&GroupId>,
        item: HistoryItem,
    ) -> Result<(), ClientError> {
        let now = self.now();
        tx.add_history(&HistoryRecord {
            id,
            group: group.cloned(),
            sender: None,
            sent_at: now,
            received_at: now,
            item,
            outgoing: false,
        })?;
        Ok(())
    }

    /// Entries not shown yet, oldest first. Call [`Engine::mark_shown`] once they are
    /// displayed.
    pub fn unshown(&self) -> Result<Vec<UnshownEntry>, ClientError> {
        Ok(self.store.read(|tx| tx.unshown(Unshown::All))?)
    }

    /// Security events not shown yet. Every command reports them until they are shown.
    pub fn unseen_security_events(&self) -> Result<Vec<UnshownEntry>, ClientError> {
        Ok(self.store.read(|tx| tx.unshown(Unshown::Security))?)
    }

    /// Marks everything up to and including `position` as shown.
    pub fn mark_shown(&self, position: i64) -> Result<(), ClientError> {
        self.tx(|tx| Ok(tx.mark_shown(position)?))
    }
}
