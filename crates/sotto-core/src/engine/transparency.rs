//! Key transparency in the client: every device list this device trusts must be the one
//! the server's log holds for its user, proven by an akd lookup proof checked against the
//! log's VRF key (pinned at `init`), and the log's epochs must never go back or fork.
//!
//! A list not in the log yet (the log publishes in epochs, about a second apart) is waited
//! for: the lookup asks the server to hold it until a newer epoch, a few times, before the
//! mismatch counts as a security failure. A list that never reaches the log is refused
//! whatever its signatures say: that is what stops a server that swaps an account's keys.
//!
//! Not yet here: signed and witnessed roots, and append-only proofs between the epochs a
//! device sees. Until then a server could show this device a log of its own (a split
//! view) consistently; it could not show it a list that differs from that log.

use super::Engine;
use crate::store::{ClientStore, Setting, StoreTx};
use crate::{ClientError, Transport};
use sotto_proto::device_list::SignedDeviceListIn;
use sotto_proto::kt::{LookupResponse, device_list_value, verify_lookup_proof};
use sotto_proto::{ErrorCode, Username};

/// How many times a lookup asks the server to wait for a newer epoch (up to five seconds
/// each) before a device list missing from the log is refused.
pub const LOG_WAITS: usize = 3;

/// What the log says of a user.
enum Logged {
    /// Not in the log at this epoch.
    Absent(u64),
    /// This value, verified, at this epoch, and its version.
    Value(u64, [u8; 32], u64),
}

impl<S: ClientStore, T: Transport> Engine<S, T> {
    /// Checks that `signed` is `user`'s device list in the log, waiting a bounded time for
    /// the log to publish it. `Security` if the log holds another value, or if the server's
    /// proof fails; `Unreachable` if the user is still not in the log.
    pub(super) async fn check_in_log(
        &self,
        user: &Username,
        signed: &SignedDeviceListIn,
    ) -> Result<(), ClientError> {
        let want = device_list_value(signed);
        let mut after = None;
        let mut seen = Logged::Absent(0);
        for _ in 0..=LOG_WAITS {
            seen = self.look_up(user, after).await?;
            let epoch = match seen {
                Logged::Value(_, value, _) if value == want => return Ok(()),
                Logged::Value(epoch, ..) | Logged::Absent(epoch) => epoch,
            };
            after = Some(epoch);
        }
        Err(match seen {
            // Nothing in the log to trust: not a proven lie (the publisher may be late), so
            // whatever needed the list waits for the next sync.
            Logged::Absent(epoch) => ClientError::Unreachable(format!(
                "the devices of {user} are not in the server's key-transparency log yet \
                 (epoch {epoch}); try again shortly"
            )),
            Logged::Value(epoch, ..) => ClientError::Security(format!(
                "the device list the server gave for {user} is not the one in the \
                 key-transparency log (epoch {epoch}); refusing to trust it"
            )),
        })
    }

    /// Checks this account's own entry in the log: a value that none of its devices made
    /// means someone else published keys for it, and a version past the last one this
    /// device saw means someone did and then put its own back. Either alarms once (a
    /// security event, kept until shown); so does the account vanishing from the log once
    /// it was seen there. An account not in the log yet is not an alarm: nobody can be made
    /// to trust what the log does not hold.
    pub(super) async fn monitor_own_account(&self) -> Result<(), ClientError> {
        let (mine, list) = self.own_list()?;
        let seen = self
            .store
            .read(|tx| tx.setting(Setting::KtOwnVersion))?
            .map(|v| {
                <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| ClientError::damaged("key-transparency version"))
            })
            .transpose()?;
        // What an alarm is about (so that each finding alarms once, whatever the epoch):
        // a kind, and the value or version found.
        let (finding, reason) = match self.look_up(&self.me().user, None).await? {
            Logged::Absent(_) if seen.is_none() => return Ok(()),
            Logged::Absent(epoch) => (
                b"absent".to_vec(),
                format!(
                    "the key-transparency log (epoch {epoch}) no longer holds your account, \
                     which it held before"
                ),
            ),
            Logged::Value(epoch, value, version) if value != device_list_value(&mine) => {
                if self.made_by_own_device(&list, value, version).await? {
                    return Ok(());
                }
                (
                    [&b"value"[..], &value[..]].concat(),
                    format!(
                        "the key-transparency log (epoch {epoch}) holds a device list for your \
                         account that none of your devices made: someone may have added a \
                         device or replaced your identity key on the server"
                    ),
                )
            }
            Logged::Value(epoch, _, version) => {
                if seen != Some(version) {
                    self.tx(|tx| {
                        Ok(tx.set_setting(Setting::KtOwnVersion, &version.to_be_bytes())?)
                    })?;
                }
                // Each revision of the account's list makes at most one version in the log
                // (revisions published in one epoch make one): more versions than revisions
                // mean someone published another value and then this one again.
                if version <= list.revision {
                    return Ok(());
                }
                (
                    [&b"version"[..], &version.to_be_bytes()[..]].concat(),
                    format!(
                        "your account's entry in the key-transparency log is at version \
                         {version} (epoch {epoch}), past revision {} of the device list your \
                         devices signed: someone published other keys for it, then yours again",
                        list.revision
                    ),
                )
            }
        };
        let alarmed = self.store.read(|tx| tx.setting(Setting::KtAlarmed))?;
        if alarmed.as_deref() == Some(&finding[..]) {
            return Ok(());
        }
        self.tx(|tx| Ok(tx.set_setting(Setting::KtAlarmed, &finding)?))?;
        Err(ClientError::Security(reason))
    }

    /// One lookup of `user`, verified.
    /// Whether the log's `value` (at `version`) for this account, which is not the list
    /// this device holds (`list`), is still one this account's devices made: the list
    /// before this device's last change (the log is an epoch behind), or a newer list
    /// another device of the account signed (which this device then keeps).
    async fn made_by_own_device(
        &self,
        list: &sotto_proto::device_list::DeviceList,
        value: [u8; 32],
        version: u64,
    ) -> Result<bool, ClientError> {
        let behind = |l: &sotto_proto::device_list::DeviceList| {
            l.previous.as_ref().map(sotto_proto::Bytes::as_slice) == Some(&value[..])
        };
        if behind(list) {
            return Ok(true);
        }
        let Some((signed, newer)) = self.newer_own_list().await? else {
            return Ok(false);
        };
        if device_list_value(&signed) == value && version <= newer.revision {
            self.tx(|tx| Ok(tx.set_setting(Setting::KtOwnVersion, &version.to_be_bytes())?))?;
            return Ok(true);
        }
        Ok(behind(&newer))
    }

    async fn look_up(&self, user: &Username, after: Option<u64>) -> Result<Logged, ClientError> {
        let token = self.token().await?;
        let vrf_key = self.vrf_key().await?;
        match self.transport.kt_lookup(&token, user, after).await {
            Ok(found) => self.verify_lookup(&vrf_key, user, found),
            Err(ClientError::Refused(body)) if body.code == ErrorCode::NotInLog => {
                Ok(Logged::Absent(body.epoch.unwrap_or(0)))
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies a lookup proof against the pinned VRF key, and its epoch and root against
    /// the newest this device has seen; remembers them if newer.
    fn verify_lookup(
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
        self.note_head(proven.epoch, proven.root)?;
        Ok(Logged::Value(proven.epoch, proven.value, proven.version))
    }

    /// The newest key-transparency epoch this device verified a proof at.
    pub(super) fn log_head(&self) -> Result<Option<u64>, ClientError> {
        let head = self.store.read(|tx| tx.setting(Setting::KtHead))?;
        head.map(|h| {
            h.first_chunk::<8>()
                .map(|e| u64::from_be_bytes(*e))
                .ok_or_else(|| ClientError::damaged("key-transparency head"))
        })
        .transpose()
    }

    /// Remembers the newest (epoch, root) seen; refuses an older epoch, or another root for
    /// the same one.
    fn note_head(&self, epoch: u64, root: [u8; 32]) -> Result<(), ClientError> {
        self.tx(|tx| {
            if let Some(head) = tx.setting(Setting::KtHead)? {
                let (seen, seen_root) = head
                    .split_first_chunk::<8>()
                    .filter(|(_, r)| r.len() == 32)
                    .ok_or_else(|| ClientError::damaged("key-transparency head"))?;
                let seen = u64::from_be_bytes(*seen);
                if epoch < seen {
                    return Err(ClientError::Security(format!(
                        "the server showed key-transparency epoch {epoch} after this device saw \
                     epoch {seen}: the log cannot go back"
                    )));
                }
                if epoch == seen {
                    if seen_root != root {
                        return Err(ClientError::Security(format!(
                            "the server showed two different key-transparency logs for epoch \
                         {epoch}"
                        )));
                    }
                    return Ok(());
                }
            }
            let head = [&epoch.to_be_bytes()[..], &root[..]].concat();
            Ok(tx.set_setting(Setting::KtHead, &head)?)
        })
    }

    /// The log's VRF public key, pinned at `init`; a store from before the log pins the
    /// server's key now (trusting it on first use, as such a store trusted its contacts).
    async fn vrf_key(&self) -> Result<Vec<u8>, ClientError> {
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
