//! Post-compromise healing on a schedule (DESIGN G2): a device gives its own leaf in each of
//! its conversations fresh keys once a week, at its first sync after that, and after a member
//! or device is removed, at its next sync or right after the pushed batch that held the
//! removal, so that whoever stole its keys stops reading along.
//!
//! A commit of this device that removes someone renews its leaf too; a conversation is due
//! again a week after its last renewal, or after its start when it had none.

use super::Engine;
use crate::events::MemberChange;
use crate::group::MemberDevice;
use crate::store::{ClientStore, StoreTx};
use crate::{ClientError, Transport};
use sotto_proto::ErrorCode;
use std::sync::atomic::Ordering;

/// How often a device renews its leaf in each conversation: a week, in seconds.
pub const HEAL_EVERY: u64 = 7 * 24 * 3600;

/// Whether a commit that took a group from `before` to `after` removed a device.
pub(super) fn removes_any(before: &[MemberDevice], after: &[MemberDevice]) -> bool {
    before
        .iter()
        .any(|m| !after.iter().any(|a| a.addr == m.addr))
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Renews this device's leaf where a commit processed since the last renewal pass
    /// removed someone (a sync does this anyway; a process that takes pushed batches between
    /// syncs calls it after each).
    pub async fn heal_after_removals(&self) -> Result<(), ClientError> {
        if self.heal_wanted.swap(false, Ordering::Relaxed) {
            self.heal_due().await?;
        }
        Ok(())
    }

    /// Renews this device's leaf in every active conversation where it is due. A
    /// conversation whose renewal lost every race for its epoch, or met a transient error
    /// (the server unreachable included), stays due for the next sync. One the server
    /// refuses for good is told to the user (a security failure as such) and tried again
    /// after the interval.
    pub(super) async fn heal_due(&self) -> Result<(), ClientError> {
        self.heal_wanted.store(false, Ordering::Relaxed);
        let now = self.now();
        let Some(cutoff) = now.checked_sub(HEAL_EVERY) else {
            return Ok(());
        };
        let due = self.store.read(|tx| tx.unhealed_since(cutoff))?;
        let heal = MemberChange {
            heal: true,
            ..MemberChange::default()
        };
        for gid in due {
            match self.commit_change(&gid, &heal).await {
                Ok(_) => {}
                // Stays due. `Unreachable` is also a member's list not in the log yet (the
                // server's word, with no proof): it must not hold back the other conversations.
                Err(e) if e.is_transient() || e.code() == Some(ErrorCode::EpochConflict) => {}
                Err(e) => self.tx(|tx| {
                    tx.set_healed_at(&gid, now)?;
                    match &e {
                        ClientError::Security(reason) => {
                            self.record_security(tx, Some(&gid), None, reason)
                        }
                        other => {
                            let reason =
                                format!("this device could not renew its keys here: {other}");
                            self.record_undelivered(tx, Some(&gid), reason)
                        }
                    }
                })?,
            }
        }
        Ok(())
    }
}
