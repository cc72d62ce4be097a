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
//! - A root for an epoch this device passed without verifying it is compared, at a later
//!   sync, with the log's signed checkpoint of that epoch ([`Engine::check_vouched_roots`]):
//!   another root there, a checkpoint that does not verify, or no record of an epoch the
//!   server records, raises the same alarm. On a device that requires witnesses, a root
//!   their cosignatures vouch for (they checked the log's chain through it) is kept as
//!   verified; without witnesses it is the server's word, so it stays the member's.
//!
//! The first message a device sees from a sender in a group sets where its count starts: a
//! message withheld before it cannot show.

use super::Engine;
use crate::events::Event;
use crate::store::{ClientStore, HistoryItem, Setting, StoreTx};
use crate::{ClientError, Envelope, Transport};
use sotto_proto::{DeviceAddr, ErrorCode, GroupId};

/// How far past the newest epoch this device verified a vouched root is kept: about a day of
/// epochs published every second.
pub(super) const VOUCHED_AHEAD: u64 = 100_000;

/// Most vouched roots compared with the log's checkpoints at one sync (a request each, and
/// one more for an epoch the server says it did not record).
const VOUCHED_CHECKS: usize = 8;

/// How long, and how many times, the server may fail to answer for a vouched epoch before
/// that is an alarm: both, so that neither a device asleep through an outage nor a few
/// failures in a row raise it.
const VOUCHED_PATIENCE: u64 = 24 * 3600;
/// See [`VOUCHED_PATIENCE`].
const VOUCHED_TRIES: u64 = 3;
/// Failures closer together than this count as one try (`recv --follow` syncs every few
/// seconds).
const VOUCHED_RETRY_GAP: u64 = 3600;

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
                    let held = format!("{holder} root {} for that epoch", short(&kept.root));
                    // Once per member, epoch and root, however many messages repeat it.
                    let (id, item) = split_view(sender, vouched.epoch, &vouched.root, &held);
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

/// What comparing one vouched root with the log found.
#[derive(Default)]
struct Compared {
    /// The alarm to keep.
    alarm: Option<(String, HistoryItem)>,
    /// The log's root for the epoch, cosigned by this device's witnesses: kept as verified.
    witnessed: Option<[u8; 32]>,
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Compares roots members vouched for, at epochs up to the newest this device verified
    /// but never verified itself, with the log's signed checkpoints of those epochs: at most
    /// [`VOUCHED_CHECKS`] at a time, oldest first (those the server never failed to answer
    /// for before the others), each until it is settled. What it finds is kept as security
    /// events (once each). An epoch the server does not answer for is asked again at later
    /// syncs; failing [`VOUCHED_TRIES`] times (an hour or more apart) over at least
    /// [`VOUCHED_PATIENCE`] is an alarm. Fails
    /// only on a damaged store: the server's answers never fail a sync.
    pub(super) async fn check_vouched_roots(&self) -> Result<(), ClientError> {
        let Some(head) = self.log_head()? else {
            return Ok(());
        };
        let vouched = self
            .store
            .read(|tx| tx.unchecked_vouched_roots(head, VOUCHED_CHECKS))?;
        for (epoch, kept) in vouched {
            let Some(by) = kept.vouched_by else {
                continue;
            };
            let found = match self.compare_with_log(epoch, &kept.root, &by, head).await {
                Ok(found) => found,
                Err(e @ ClientError::Store(_)) => return Err(e),
                // The server's doing, not the member's: its checkpoint, or its record.
                Err(ClientError::Security(reason)) => Compared {
                    alarm: Some(server_alarm(epoch, reason)),
                    witnessed: None,
                },
                Err(_) => {
                    let now = self.now();
                    let (since, tries) = self.tx(|tx| {
                        Ok(tx.vouched_root_unanswered(epoch, now, VOUCHED_RETRY_GAP)?)
                    })?;
                    if now.saturating_sub(since) < VOUCHED_PATIENCE || tries < VOUCHED_TRIES {
                        continue;
                    }
                    let reason = format!(
                        "for a day ({tries} tries) the server has not shown key-transparency \
                         epoch {epoch}, which {by} vouched for in a message: it may be hiding \
                         part of its log"
                    );
                    Compared {
                        alarm: Some(server_alarm(epoch, reason)),
                        witnessed: None,
                    }
                }
            };
            // All at once: a crash cannot keep the log's root and lose the alarm.
            self.tx(|tx| {
                if let Some(root) = found.witnessed {
                    tx.put_log_root(epoch, &root, None)?;
                }
                if let Some((id, item)) = found.alarm {
                    self.record_notice(tx, id, None, item)?;
                }
                Ok(tx.mark_vouched_root_checked(epoch)?)
            })?;
        }
        Ok(())
    }

    /// Compares `root`, which `by` vouched for at `epoch`, with the log's signed checkpoint
    /// of that epoch. An error if the server did not answer (or, `Security`, answered what
    /// cannot be true).
    async fn compare_with_log(
        &self,
        epoch: u64,
        root: &[u8; 32],
        by: &DeviceAddr,
        head: u64,
    ) -> Result<Compared, ClientError> {
        let found = match self.transport.kt_epoch(epoch, false).await {
            Ok(found) => found,
            Err(ClientError::Refused(b)) if b.code == ErrorCode::NotFound => {
                // Epochs before the server kept checkpoints cannot be compared; every later
                // one is recorded as it is published, so a missing one is hidden. Where the
                // records start is the server's word, bounded by what this device knows.
                let said = self.transport.kt_epoch(head, false).await?.first;
                let first = self.tx(|tx| lower_first_recorded(tx, said.min(head)))?;
                if epoch < first {
                    return Ok(Compared::default());
                }
                return Err(ClientError::Security(format!(
                    "{by} vouched for key-transparency epoch {epoch}, which the server says it \
                     never recorded, though it records every epoch since {first}: the server \
                     is hiding part of its log"
                )));
            }
            Err(e) => return Err(e),
        };
        // It recorded this epoch, whatever it says of its oldest.
        self.tx(|tx| lower_first_recorded(tx, found.first.min(epoch)))?;
        let shown: [u8; 32] = match found.root_hash.as_slice().try_into() {
            Ok(shown) if found.epoch == epoch => shown,
            _ => {
                return Err(ClientError::Security(format!(
                    "the server answered with another epoch, or a malformed root, when asked \
                     for key-transparency epoch {epoch}, which {by} vouched for"
                )));
            }
        };
        let mut compared = Compared::default();
        // Witnessed, the log's root is this device's own from now on: a member who later
        // vouches for it is not blamed for differing from the one who lied.
        if self.witnessed(&found.checkpoint, epoch, &shown).await? {
            compared.witnessed = Some(shown);
        }
        if shown != *root {
            let held = format!(
                "the log's signed checkpoint for that epoch holds root {}",
                short(&shown)
            );
            compared.alarm = Some(split_view(by, epoch, root, &held));
        }
        Ok(compared)
    }
}

/// An epoch at or after which the server records every epoch, as far as this device knows,
/// if it knows one.
fn kept_first_recorded(tx: &impl StoreTx) -> Result<Option<u64>, ClientError> {
    tx.setting(Setting::KtFirstRecorded)?
        .map(|b| {
            <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| ClientError::damaged("the log's first recorded epoch"))
        })
        .transpose()
}

/// Lowers the epoch from which the server records every epoch, as this device knows it, to
/// `at_most`: an epoch the server said is its oldest, or one it is known to have recorded
/// (the log's checkpoint of every epoch this device verified a proof at is recorded, and
/// so is every one after). It is never raised: the server keeps every epoch it recorded,
/// so raising it would hide the epochs below. Only a 404 below it is taken as the records
/// not reaching back that far. Returns the one kept now.
pub(super) fn lower_first_recorded(tx: &impl StoreTx, at_most: u64) -> Result<u64, ClientError> {
    let kept = kept_first_recorded(tx)?;
    let first = kept.map_or(at_most, |kept| kept.min(at_most));
    if kept != Some(first) {
        tx.set_setting(Setting::KtFirstRecorded, &first.to_be_bytes())?;
    }
    Ok(first)
}

/// An alarm about the server's answer for `epoch`: one per epoch.
fn server_alarm(epoch: u64, reason: String) -> (String, HistoryItem) {
    (
        format!("vouched-check-{epoch}"),
        HistoryItem::Security { from: None, reason },
    )
}

/// The alarm of `by` vouching for `root` at `epoch` where this device holds another root
/// (`held` says which, and where from): its id names the member, the epoch and the root, so
/// that every way of finding it shows it once.
fn split_view(by: &DeviceAddr, epoch: u64, root: &[u8; 32], held: &str) -> (String, HistoryItem) {
    let reason = format!(
        "{by} vouched for key-transparency root {} at epoch {epoch}, but {held}: the server is \
         showing its users different logs, or a device lies",
        short(root)
    );
    let id = format!("vouched-{by}-{epoch}-{}", hex::encode(root));
    let item = HistoryItem::Security {
        from: Some(by.user.clone()),
        reason,
    };
    (id, item)
}

/// The first 8 bytes of a root, in hex: enough to tell two apart when shown.
fn short(root: &[u8; 32]) -> String {
    hex::encode(root.get(..8).unwrap_or_default())
}
