//! What members vouch for inside their encrypted messages, and what a device makes of it.
//!
//! The server numbers each device's queue, so it could withhold, replay or reorder a message
//! and renumber around it: detection rests on what the sender authenticates. Each message
//! carries the sending device's own counter for the group (1, 2, 3, ...), and the newest
//! key-transparency epoch and root the sender verified.
//!
//! - A counter more than one past the last one seen from that device shows that messages
//!   are missing: a notice names the sender and how many.
//! - A counter not past the last one seen is a replay (or a reordering: a device sends a
//!   group's messages in counter order): the message is refused and the refusal shown.
//! - A root that differs from the one this device holds for the same epoch (verified by
//!   itself, or vouched for by another member) shows that the server is showing its users
//!   different logs, or that a device lies: a security alarm naming the members. A root for
//!   an epoch this device holds nothing for is kept (up to [`VOUCHED_AHEAD`] epochs past its
//!   own), so that a proof this device later verifies at that epoch is compared with it
//!   (`note_head`, which alarms the same way).
//!
//! The first message a device sees from a sender in a group sets where its count starts: a
//! message withheld before it cannot show.

use super::Engine;
use crate::events::Event;
use crate::store::{ClientStore, HistoryItem, StoreTx};
use crate::{ClientError, Envelope, Transport};
use sotto_proto::{DeviceAddr, GroupId};

/// How far past the newest epoch this device verified a vouched root is kept: about a day of
/// epochs published every second.
pub(super) const VOUCHED_AHEAD: u64 = 100_000;

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// The next counter of this device's messages in `gid`, counted as used from now on
    /// (with `tx`): a message encrypted with it that never reaches the server shows as
    /// missing to the others, which it is.
    pub(super) fn next_counter(
        &self,
        tx: &impl StoreTx,
        gid: &GroupId,
    ) -> Result<u64, ClientError> {
        let next = tx
            .counter(gid, self.me())?
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| ClientError::damaged("message counter"))?;
        tx.set_counter(gid, self.me(), next)?;
        Ok(next)
    }

    /// Checks what `sender` vouched for in a message to `gid`: refuses a replayed counter,
    /// shows a gap, and alarms on a log root other than the one this device holds for that
    /// epoch. Runs inside the transaction that applies the message.
    pub(super) fn check_vouched(
        &self,
        tx: &impl StoreTx,
        gid: &GroupId,
        id: u64,
        sender: &DeviceAddr,
        envelope: &Envelope,
    ) -> Result<(), ClientError> {
        if let Some(n) = envelope.counter {
            let last = tx.counter(gid, sender)?;
            if let Some(last) = last.filter(|last| n <= *last) {
                return Err(ClientError::Security(format!(
                    "a message from {sender} came again, or out of order (its counter {n} is \
                     not past {last}, the last one seen): a replay, refused"
                )));
            }
            let missing = last.map_or(0, |last| n.saturating_sub(last).saturating_sub(1));
            if missing > 0 {
                let event = Event::Missing {
                    from: sender.user.clone(),
                    device: sender.device.to_string(),
                    count: missing,
                };
                // Before the message, in the order they were sent.
                self.record_notice(
                    tx,
                    format!("{id}.missing"),
                    Some(gid),
                    HistoryItem::Event(event),
                )?;
            }
            tx.set_counter(gid, sender, n)?;
        }
        if let Some(vouched) = envelope.log_root {
            match tx.log_root(vouched.epoch)? {
                Some(kept) if kept.root != vouched.root => {
                    let holder = kept.vouched_by.as_ref().map_or_else(
                        || "this device verified".to_owned(),
                        |d| format!("{d} vouched for"),
                    );
                    let reason = format!(
                        "{sender} vouched for key-transparency root {} at epoch {}, but \
                         {holder} root {} for that epoch: the server is showing its users \
                         different logs, or a device lies",
                        short(&vouched.root),
                        vouched.epoch,
                        short(&kept.root)
                    );
                    // Once per member, epoch and root, however many messages repeat it.
                    let id = format!(
                        "vouched-{sender}-{}-{}",
                        vouched.epoch,
                        hex::encode(vouched.root)
                    );
                    let item = HistoryItem::Security {
                        from: Some(sender.user.clone()),
                        reason,
                    };
                    self.record_notice(tx, id, Some(gid), item)?;
                }
                Some(_) => {}
                // Kept to compare with what this device and other members see at that epoch;
                // not too far ahead of this device, so that a member cannot fill the store
                // with far-off epochs (vouched roots never push out verified ones).
                None if self
                    .head(tx)?
                    .is_some_and(|h| vouched.epoch <= h.epoch.saturating_add(VOUCHED_AHEAD)) =>
                {
                    tx.put_log_root(vouched.epoch, &vouched.root, Some(sender))?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The first 8 bytes of a root, in hex: enough to tell two apart when shown.
fn short(root: &[u8; 32]) -> String {
    hex::encode(root.get(..8).unwrap_or_default())
}
