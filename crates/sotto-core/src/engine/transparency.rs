//! Key transparency in the client: every device list this device trusts must be the one
//! the server's log holds for its user, proven by an akd lookup proof checked against the
//! log's VRF key (pinned at `init`), and the log's epochs must never go back or fork.
//!
//! A list not in the log yet (the log publishes in epochs, about a second apart) is waited
//! for: the lookup asks the server to hold it until a newer epoch, a few times, before the
//! mismatch counts as a security failure. A list that never reaches the log is refused
//! whatever its signatures say: that is what stops a server that swaps an account's keys.
//!
//! Members compare the roots they verified through their messages (`vouched`). Every root
//! comes in a checkpoint signed with the log's key, and, on a device configured with
//! witnesses, cosigned by them (`witnesses`): they verified akd's append-only proof up to it,
//! so a log of the server's own for this device (a split view) is refused. Without
//! witnesses, a server could show this device such a log consistently at epochs no member it
//! talks to vouches for; it could not show it a list that differs from that log.

use super::Engine;
use crate::store::{ClientStore, Setting, StoreTx};
use crate::{ClientError, LogRoot, Transport};
use sotto_proto::device_list::SignedDeviceListIn;
use sotto_proto::kt::{LookupResponse, device_list_value, verify_lookup_proof};
use sotto_proto::{ErrorCode, Username};

/// How many times a lookup asks the server to wait for a newer epoch (up to five seconds
/// each) before a device list missing from the log is refused.
pub const LOG_WAITS: usize = 3;

/// Which of this account's lists the log holds for it.
enum Held {
    /// The newest this device knows, at this revision.
    Current(u64),
    /// The one before the newest, which is at this revision.
    Previous(u64),
    /// The one before the newest, though this device made the newest long ago.
    Stalled(u64),
    /// None the account's devices signed.
    Foreign,
}

/// Whether `value` is the list `list` names as the one it replaced.
fn is_previous(list: &sotto_proto::device_list::DeviceList, value: &[u8; 32]) -> bool {
    list.previous.as_ref().map(sotto_proto::Bytes::as_slice) == Some(&value[..])
}

/// Whether the log can be at `version` with the account's list at `revision`, given what
/// this device saw last (`seen`: a version and the revision then). The server takes a new
/// revision only once the log holds the one before, so each revision is exactly one version:
/// any other count means a version none of the account's devices made.
fn versions_fit(seen: Option<(u64, u64)>, version: u64, revision: u64) -> bool {
    match seen {
        None => version == revision,
        Some((v, r)) => version >= v && version - v == revision.saturating_sub(r),
    }
}

/// How many epochs the log may lag behind a change this device made before the lag is an
/// alarm: a server holding back a change (a removed device kept) is caught.
pub(crate) const LAG_EPOCHS: u64 = 10;
/// And for how long at least, in seconds: an honest log with a backlog of thousands of
/// accounts can take many epochs to reach a change.
pub(crate) const LAG_SECONDS: u64 = 600;

/// What the log says of a user.
enum Logged {
    /// Not in the log at this epoch.
    Absent(u64),
    /// This value, verified, at this epoch, and its version.
    Value(u64, [u8; 32], u64),
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Checks that `signed` is `user`'s device list in the log, waiting a bounded time for
    /// the log to publish it; returns the epoch the log was proven to hold it at. `Security`
    /// if the log holds another value, or if the server's proof fails; `Unreachable` if the
    /// user is still not in the log (or the log still holds the list before this one).
    pub(super) async fn check_in_log(
        &self,
        user: &Username,
        signed: &SignedDeviceListIn,
    ) -> Result<u64, ClientError> {
        match self.find_in_log(user, signed).await? {
            Ok(epoch) => Ok(epoch),
            // Nothing in the log to trust (or only the list before this one): not a proven
            // lie (the publisher may be late), so whatever needed the list waits for the
            // next sync.
            Err(Logged::Absent(epoch)) => Err(ClientError::Unreachable(format!(
                "the devices of {user} are not in the server's key-transparency log yet \
                 (epoch {epoch}); try again shortly"
            ))),
            Err(Logged::Value(epoch, ..)) => Err(ClientError::Security(format!(
                "the device list the server gave for {user} is not the one in the \
                 key-transparency log (epoch {epoch}); refusing to trust it"
            ))),
        }
    }

    /// [`Engine::check_in_log`] for a list signed with a contact's new identity key: a key
    /// the log does not hold within the bounded wait is refused (`Security`), not waited
    /// for, since the contact's pinned key is in the log and the server gave another.
    pub(super) async fn check_new_key_in_log(
        &self,
        user: &Username,
        signed: &SignedDeviceListIn,
    ) -> Result<u64, ClientError> {
        match self.find_in_log(user, signed).await? {
            Ok(epoch) => Ok(epoch),
            Err(Logged::Absent(epoch) | Logged::Value(epoch, ..)) => {
                Err(ClientError::Security(format!(
                    "the server gave {user} a new identity key that its key-transparency log \
                     does not hold (epoch {epoch}); refusing to trust it"
                )))
            }
        }
    }

    /// Looks `user` up until the log holds `signed` (its epoch) or the bounded wait is over
    /// (what the log held last).
    async fn find_in_log(
        &self,
        user: &Username,
        signed: &SignedDeviceListIn,
    ) -> Result<Result<u64, Logged>, ClientError> {
        let want = device_list_value(signed);
        // The list this one replaces, as it names it: the log holding that one is behind,
        // not lying (the signature on `signed` is checked by the caller).
        let previous =
            serde_json::from_slice::<sotto_proto::device_list::DeviceList>(signed.body.as_slice())
                .ok()
                .and_then(|l| l.previous);
        let mut after = None;
        let mut seen = Logged::Absent(0);
        for _ in 0..=LOG_WAITS {
            seen = self.look_up(user, after).await?;
            let epoch = match seen {
                Logged::Value(epoch, value, _) if value == want => return Ok(Ok(epoch)),
                Logged::Value(epoch, value, _)
                    if previous.as_ref().map(sotto_proto::Bytes::as_slice) == Some(&value[..]) =>
                {
                    seen = Logged::Absent(epoch);
                    epoch
                }
                Logged::Value(epoch, ..) | Logged::Absent(epoch) => epoch,
            };
            after = Some(epoch);
        }
        Ok(Err(seen))
    }

    /// Checks this account's own entry in the log. Alarms (once each: a security event,
    /// kept until shown):
    /// - a value none of the account's devices signed: someone published other keys;
    /// - more versions than the account's revisions since this device last looked, or a
    ///   version going back: someone published other keys and then the account's again;
    /// - the account vanishing from the log once it was seen there.
    ///
    /// A list another device of the account signed (a device linked or removed) is taken
    /// as this device's own once the log holds it, and what it changed is shown. The log
    /// behind a change (it holds the list before) is not an alarm while its version has not
    /// moved, and, for a change this device made, for [`LAG_EPOCHS`] epochs: past that the
    /// server is holding the change back. An account not in the log yet is not an alarm:
    /// nobody can be made to trust what it does not hold.
    /// Returns whether the log holds the list this device holds (after taking another
    /// device's newer one).
    pub(super) async fn monitor_own_account(&self) -> Result<bool, ClientError> {
        let (mine, list) = self.own_list()?;
        let seen = self.own_seen()?;
        // What an alarm is about (so that each finding alarms once, whatever the epoch):
        // a kind, and the value or version found.
        let (finding, reason) = match self.look_up(&self.me().user, None).await? {
            Logged::Absent(_) if seen.is_none() => return Ok(false),
            Logged::Absent(epoch) => (
                b"absent".to_vec(),
                format!(
                    "the key-transparency log (epoch {epoch}) no longer holds your account, \
                     which it held before"
                ),
            ),
            Logged::Value(epoch, value, version) => {
                let posted = self.own_posted()?;
                let now = self.now();
                let lagging = posted.is_none_or(|(p, at)| {
                    epoch <= p.saturating_add(LAG_EPOCHS) || now <= at.saturating_add(LAG_SECONDS)
                });
                let held = if value == device_list_value(&mine) {
                    Held::Current(list.revision)
                } else if is_previous(&list, &value) && lagging {
                    Held::Previous(list.revision)
                } else if is_previous(&list, &value) {
                    Held::Stalled(list.revision)
                } else {
                    match self.newer_own_list().await? {
                        // Adopted only once the log holds it.
                        Some((signed, newer)) if device_list_value(&signed) == value => {
                            self.adopt_own_list(&list, &signed, &newer)?;
                            Held::Current(newer.revision)
                        }
                        // Another device's change the log has not published yet: that
                        // device watches for it.
                        // (its `previous`, signed by the identity key, vouches for the value
                        // the log holds).
                        Some((_, newer))
                            if is_previous(&newer, &value)
                                && versions_fit(
                                    seen,
                                    version,
                                    newer.revision.saturating_sub(1),
                                ) =>
                        {
                            return Ok(false);
                        }
                        _ => Held::Foreign,
                    }
                };
                match held {
                    Held::Stalled(revision) => (
                        [&b"held"[..], &revision.to_be_bytes()[..]].concat(),
                        format!(
                            "the key-transparency log (epoch {epoch}) still holds your \
                             account's device list from before revision {revision}, which this \
                             device made more than {LAG_EPOCHS} epochs and {LAG_SECONDS} seconds \
                             ago: the server is holding back a change (a device removed may still \
                             be served)"
                        ),
                    ),
                    Held::Foreign => (
                        [&b"value"[..], &value[..]].concat(),
                        format!(
                            "the key-transparency log (epoch {epoch}) holds a device list for \
                             your account that none of your devices made: someone may have \
                             added a device or replaced your identity key on the server"
                        ),
                    ),
                    Held::Current(revision) if versions_fit(seen, version, revision) => {
                        if seen != Some((version, revision)) {
                            self.set_own_seen(version, revision)?;
                        }
                        return Ok(true);
                    }
                    // Behind by one change, and not moved since this device last looked.
                    Held::Previous(revision)
                        if versions_fit(seen, version, revision.saturating_sub(1))
                            && seen.is_none_or(|(v, _)| v == version) =>
                    {
                        return Ok(false);
                    }
                    Held::Current(revision) | Held::Previous(revision) => (
                        [&b"version"[..], &version.to_be_bytes()[..]].concat(),
                        format!(
                            "your account's entry in the key-transparency log is at version \
                             {version} (epoch {epoch}), which revision {revision} of the device \
                             list your devices signed cannot explain: someone published other \
                             keys for it, then yours again"
                        ),
                    ),
                }
            }
        };
        let alarmed = self.store.read(|tx| tx.setting(Setting::KtAlarmed))?;
        if alarmed.as_deref() == Some(&finding[..]) {
            return Ok(false);
        }
        self.tx(|tx| Ok(tx.set_setting(Setting::KtAlarmed, &finding)?))?;
        Err(ClientError::Security(reason))
    }

    /// The version of this account's entry in the log this device last saw, with the
    /// revision of the account's list it held then. (Stores from before devices could be
    /// linked kept the version alone: their list was at revision 1.)
    fn own_seen(&self) -> Result<Option<(u64, u64)>, ClientError> {
        let Some(v) = self.store.read(|tx| tx.setting(Setting::KtOwnVersion))? else {
            return Ok(None);
        };
        let damaged = || ClientError::damaged("key-transparency version");
        let number = |b: &[u8]| -> Result<u64, ClientError> {
            Ok(u64::from_be_bytes(b.try_into().map_err(|_| damaged())?))
        };
        match v.len() {
            8 => Ok(Some((number(&v)?, 1))),
            16 => Ok(Some((
                number(v.get(..8).ok_or_else(damaged)?)?,
                number(v.get(8..).ok_or_else(damaged)?)?,
            ))),
            _ => Err(damaged()),
        }
    }

    /// The log's epoch and the time when this device last changed its account's list, if
    /// it did (and no other device changed it since).
    fn own_posted(&self) -> Result<Option<(u64, u64)>, ClientError> {
        let Some(v) = self.store.read(|tx| tx.setting(Setting::KtOwnPosted))? else {
            return Ok(None);
        };
        if v.is_empty() {
            return Ok(None);
        }
        let damaged = || ClientError::damaged("key-transparency posting epoch");
        let (epoch, at) = v.split_first_chunk::<8>().ok_or_else(damaged)?;
        let at: [u8; 8] = at.try_into().map_err(|_| damaged())?;
        Ok(Some((u64::from_be_bytes(*epoch), u64::from_be_bytes(at))))
    }

    fn set_own_seen(&self, version: u64, revision: u64) -> Result<(), ClientError> {
        let value = [version.to_be_bytes(), revision.to_be_bytes()].concat();
        self.tx(|tx| Ok(tx.set_setting(Setting::KtOwnVersion, &value)?))
    }

    async fn look_up(&self, user: &Username, after: Option<u64>) -> Result<Logged, ClientError> {
        let token = self.token().await?;
        let vrf_key = self.vrf_key().await?;
        let cosigned = self.cosignatures_wanted()?;
        match self
            .transport
            .kt_lookup(&token, user, after, cosigned)
            .await
        {
            Ok(found) => self.verify_lookup(&vrf_key, user, found).await,
            Err(ClientError::Refused(body)) if body.code == ErrorCode::NotInLog => {
                Ok(Logged::Absent(body.epoch.unwrap_or(0)))
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies a lookup proof against the pinned VRF key, its checkpoint against the pinned
    /// checkpoint key and the witnesses this device requires, and its epoch and root against
    /// the newest this device has seen; remembers them if newer.
    async fn verify_lookup(
        &self,
        vrf_key: &[u8],
        user: &Username,
        found: LookupResponse,
    ) -> Result<Logged, ClientError> {
        let proven = verify_lookup_proof(vrf_key, user, &found).map_err(|what| {
            ClientError::Security(format!(
                "the server's key-transparency proof for {user} {what}"
            ))
        })?;
        self.check_checkpoint(&found.checkpoint, &proven).await?;
        self.note_head(proven.epoch, proven.root)?;
        // A lookup without `after` answers at the log's newest epoch (one with `after`, at
        // one at least that new): the head is fresh as of now.
        self.head_fresh
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(Logged::Value(proven.epoch, proven.value, proven.version))
    }

    /// The newest key-transparency epoch and root this device verified a proof at.
    pub(super) fn head(&self, tx: &impl StoreTx) -> Result<Option<LogRoot>, ClientError> {
        let Some(head) = tx.setting(Setting::KtHead)? else {
            return Ok(None);
        };
        let (epoch, root) = head
            .split_first_chunk::<8>()
            .and_then(|(e, r)| Some((u64::from_be_bytes(*e), <[u8; 32]>::try_from(r).ok()?)))
            .ok_or_else(|| ClientError::damaged("key-transparency head"))?;
        Ok(Some(LogRoot { epoch, root }))
    }

    /// The newest key-transparency epoch this device verified a proof at.
    pub(super) fn log_head(&self) -> Result<Option<u64>, ClientError> {
        Ok(self.store.read(|tx| self.head(tx))?.map(|h| h.epoch))
    }

    /// Remembers the newest (epoch, root) seen; refuses an older epoch, or another root for
    /// the same one. A root a member vouched for at this epoch that is not this one raises an
    /// alarm naming the member (the server shows its users different logs, or the member's
    /// device lies), and this device's own root takes its place.
    fn note_head(&self, epoch: u64, root: [u8; 32]) -> Result<(), ClientError> {
        self.tx(|tx| {
            if let Some(seen) = self.head(tx)? {
                if epoch < seen.epoch {
                    return Err(ClientError::Security(format!(
                        "the server showed key-transparency epoch {epoch} after this device saw \
                         epoch {}: the log cannot go back",
                        seen.epoch
                    )));
                }
                if epoch == seen.epoch {
                    if seen.root != root {
                        return Err(ClientError::Security(format!(
                            "the server showed two different key-transparency logs for epoch \
                             {epoch}"
                        )));
                    }
                    return Ok(());
                }
            }
            if let Some(kept) = tx.log_root(epoch)?
                && kept.root != root
            {
                let by = kept
                    .vouched_by
                    .as_ref()
                    .map_or_else(|| "this device".to_owned(), ToString::to_string);
                let reason = format!(
                    "the server's key-transparency root for epoch {epoch} is not the one {by} \
                     vouched for in a message: the server is showing its users different logs, \
                     or that device lies"
                );
                let from = kept.vouched_by.as_ref().map(|d| &d.user);
                self.record_security(tx, None, from, &reason)?;
            }
            tx.put_log_root(epoch, &root, None)?;
            // Its checkpoint came with the proof: the server records this epoch.
            super::vouched::lower_first_recorded(tx, epoch)?;
            let head = [&epoch.to_be_bytes()[..], &root[..]].concat();
            Ok(tx.set_setting(Setting::KtHead, &head)?)
        })
    }

    /// The log's VRF public key, pinned at `init`; a store from before the log pins the
    /// server's key now (trusting it on first use, as such a store trusted its contacts).
    pub(super) async fn vrf_key(&self) -> Result<Vec<u8>, ClientError> {
        if let Some(key) = self.store.read(|tx| tx.setting(Setting::KtVrfKey))? {
            if key.len() != 32 {
                return Err(ClientError::damaged("key-transparency key"));
            }
            return Ok(key);
        }
        let key = self.transport.config().await?.kt_vrf_key;
        if key.len() != 32 {
            return Err(ClientError::Security(
                "the server's key-transparency key is malformed".into(),
            ));
        }
        self.tx(|tx| Ok(tx.set_setting(Setting::KtVrfKey, key.as_slice())?))?;
        Ok(key.as_slice().to_vec())
    }
}
