//! What a device keeps, as one transactional store trait with written semantics: its account
//! settings, MLS state (through an openmls provider over the same transaction), conversations,
//! the history, the ids of processed messages, pinned identity keys and the outbox.
//! `sotto-client` implements it over SQLCipher; [`memory::MemoryStore`] keeps it in memory.
//!
//! Every change happens inside [`ClientStore::transaction`]: all of it lands, or none. `Ok(None)`
//! means "no such thing"; `Err` means the store itself failed or holds a value that does not
//! decode.

pub mod memory;

use crate::events::{Event, MemberChange};
use crate::{Content, StoreError};
use sotto_proto::api::SendRequest;
use sotto_proto::{DeviceAddr, GroupId, Username};

/// How many key-transparency roots a store keeps of each kind (verified by the device,
/// vouched for by members), the newest epochs'.
pub const LOG_ROOTS_KEPT: usize = 4096;

/// A setting of the account on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Setting {
    /// The server's URL.
    Server,
    /// Whether plain `http://` to a host that is not loopback is allowed (`[1]`).
    InsecureHttp,
    /// The server's identity, pinned at `init`.
    ServerId,
    /// The account's username.
    User,
    /// This device's id.
    Device,
    /// The identity key's secret.
    IdentitySecret,
    /// This device's signature key's secret.
    DeviceSecret,
    /// The MLS ciphersuite, two bytes big-endian.
    Suite,
    /// The account's signed device list (JSON).
    DeviceList,
    /// The server's count of messages dropped for this device, as last seen (8 bytes).
    DroppedSeen,
    /// The key-transparency log's VRF public key, pinned at `init` (32 bytes).
    KtVrfKey,
    /// The C2SP verifier key of the log's checkpoints, pinned at `init` (text).
    KtCheckpointKey,
    /// The witnesses this device requires on every root it accepts
    /// ([`crate::engine::WitnessPolicy`], JSON); none if absent.
    KtWitnesses,
    /// The newest key-transparency epoch seen (8 bytes big-endian) and its root (32 bytes).
    KtHead,
    /// What the last alarm about this account's entry in the log was about.
    KtAlarmed,
    /// The version of this account's entry in the log, as last seen (8 bytes big-endian),
    /// and the revision of the account's list then (8 more).
    KtOwnVersion,
    /// The log's epoch and the time (8 bytes big-endian each) when this device last changed
    /// its account's device list (empty once another device changed it): the log may lag
    /// behind the change only for a while after it.
    KtOwnPosted,
    /// The revision of the account's device list (8 bytes big-endian) up to which every
    /// conversation holds only the account's listed devices.
    OwnDevicesMended,
    /// The oldest key-transparency epoch the server said it recorded (8 bytes big-endian):
    /// the lowest it ever said, since it keeps every epoch it recorded.
    KtFirstRecorded,
}

impl Setting {
    /// Its stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Setting::Server => "server",
            Setting::InsecureHttp => "insecure_http",
            Setting::ServerId => "server_id",
            Setting::User => "user",
            Setting::Device => "device",
            Setting::IdentitySecret => "identity_secret",
            Setting::DeviceSecret => "device_secret",
            Setting::Suite => "suite",
            Setting::DeviceList => "device_list",
            Setting::DroppedSeen => "dropped_seen",
            Setting::KtVrfKey => "kt_vrf_key",
            Setting::KtHead => "kt_head",
            Setting::KtCheckpointKey => "kt_checkpoint_key",
            Setting::KtWitnesses => "kt_witnesses",
            Setting::KtAlarmed => "kt_alarmed",
            Setting::KtOwnVersion => "kt_own_version",
            Setting::KtOwnPosted => "kt_own_posted",
            Setting::OwnDevicesMended => "own_devices_mended",
            Setting::KtFirstRecorded => "kt_first_recorded",
        }
    }
}

/// A key-transparency root a device keeps for an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRoot {
    /// The root hash.
    pub root: [u8; 32],
    /// The member's device that vouched for it; `None` if this device verified it.
    pub vouched_by: Option<DeviceAddr>,
}

/// A contact's pinned identity key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The Ed25519 identity public key.
    pub identity_key: Vec<u8>,
    /// Whether the user compared safety numbers and confirmed this key.
    pub verified: bool,
}

/// A conversation as the store keeps it. Its `Debug` leaves out the name.
#[derive(Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    /// Its MLS group.
    pub group: GroupId,
    /// A group's name; `None` for a one-to-one conversation, or before it is known.
    pub name: Option<String>,
    /// The other person of a one-to-one conversation.
    pub peer: Option<Username>,
    /// Whether a description (`GroupInfo`) fixed what it is.
    pub announced: bool,
    /// False once this device was removed.
    pub active: bool,
    /// When it started here.
    pub created_at: u64,
}

/// What a history entry holds. Its `Debug` leaves out text and reasons.
#[derive(Clone, PartialEq, Eq)]
pub enum HistoryItem {
    /// A text message.
    Text(String),
    /// Something that happened: a membership change, a name, a notice.
    Event(Event),
    /// A security failure: what was refused, and why.
    Security {
        /// Who the server says sent what was refused, if it was a message.
        from: Option<Username>,
        /// Why.
        reason: String,
    },
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// Stable id: the server's message id, with `.N` for the N-th event of one commit, or
    /// `local-…` for what this device noticed itself.
    pub id: String,
    /// The conversation, if any.
    pub group: Option<GroupId>,
    /// The sender, if any, and whether MLS authenticated it (false: the server's word).
    pub sender: Option<(DeviceAddr, bool)>,
    /// The sender's time.
    pub sent_at: u64,
    /// The server's time.
    pub received_at: u64,
    /// What it is.
    pub item: HistoryItem,
    /// Sent by this device (never shown by `recv`).
    pub outgoing: bool,
}

/// A history entry not shown yet, with its conversation's name. Its `Debug` leaves out the
/// name.
#[derive(Clone, PartialEq, Eq)]
pub struct UnshownEntry {
    /// The store's order.
    pub position: i64,
    /// The entry.
    pub record: HistoryRecord,
    /// Its conversation's name, if it is a named group.
    pub group_name: Option<String>,
    /// The other person, if it is a one-to-one conversation.
    pub peer: Option<String>,
}

impl std::fmt::Debug for ConversationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationRecord")
            .field("group", &self.group)
            .field("named", &self.name.is_some())
            .field("peer", &self.peer)
            .field("announced", &self.announced)
            .field("active", &self.active)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl std::fmt::Debug for HistoryItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HistoryItem::Text(text) => write!(f, "Text({} bytes)", text.len()),
            HistoryItem::Event(event) => write!(f, "Event({event:?})"),
            HistoryItem::Security { from, .. } => write!(f, "Security(from {from:?})"),
        }
    }
}

impl std::fmt::Debug for UnshownEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnshownEntry")
            .field("position", &self.position)
            .field("record", &self.record)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// What an outbox entry sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An application message.
    Message(Content),
    /// A commit making this membership change.
    Commit(MemberChange),
}

/// A send not yet confirmed by the server, kept with its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    /// The idempotency key.
    pub client_id: String,
    /// The group.
    pub group: GroupId,
    /// The request, sent again unchanged.
    pub request: SendRequest,
    /// What it sends, to redo it if the group moved on.
    pub outgoing: Outgoing,
    /// When it was made: the sender's `sent_at`.
    pub created_at: u64,
    /// A message's counter ([`crate::Envelope::counter`]), kept when it is encrypted again.
    pub counter: Option<u64>,
}

/// An outbox entry as read back: whole, or too damaged to send (it is then dropped and the
/// user told, so that it cannot block the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxEntry {
    /// An entry to send.
    Ready(Box<OutboxRecord>),
    /// An entry that does not decode.
    Damaged {
        /// Its idempotency key.
        client_id: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which unshown entries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unshown {
    /// All of them.
    All,
    /// Security events only.
    Security,
}

/// A device's store.
pub trait ClientStore: Send + Sync {
    /// An open transaction.
    type Tx<'a>: StoreTx
    where
        Self: 'a;

    /// Runs `f` in one transaction: if it returns `Ok`, everything it wrote lands at once;
    /// if it returns `Err` (or panics), nothing does.
    fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self::Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>;

    /// Runs `f`, which only reads, on one consistent snapshot. Unlike a transaction it does
    /// not wait for, nor keep out, another process of this device that is writing. Whatever
    /// `f` writes anyway is not kept.
    fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self::Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E>;

    /// Makes everything committed so far survive a power loss. `Ok(false)` if that could not
    /// be done yet (another reader held part of it back): then nothing may be acknowledged.
    fn make_durable(&self) -> Result<bool, StoreError>;
}

/// The operations of one transaction.
pub trait StoreTx {
    /// The errors of openmls's storage in this store.
    type MlsError: std::error::Error + Send + Sync + 'static;

    /// openmls's view of this transaction.
    type Mls<'a>: openmls_traits::OpenMlsProvider<
            StorageProvider: openmls_traits::storage::StorageProvider<
                { openmls_traits::storage::CURRENT_VERSION },
                Error = Self::MlsError,
            >,
        >
    where
        Self: 'a;

    /// The openmls provider whose storage is this transaction.
    fn mls(&self) -> Self::Mls<'_>;

    /// Runs `f`; if it fails, undoes what it wrote (and only that) and passes the error on.
    fn savepoint<T, E: From<StoreError>>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>;

    /// A number that changes whenever another connection commits (another process of this
    /// device): cached MLS groups are stale once it does.
    fn data_version(&self) -> Result<i64, StoreError>;

    /// A setting.
    fn setting(&self, key: Setting) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes a setting.
    fn set_setting(&self, key: Setting, value: &[u8]) -> Result<(), StoreError>;

    /// The conversation of `group`.
    fn conversation(&self, group: &GroupId) -> Result<Option<ConversationRecord>, StoreError>;
    /// Every conversation, oldest first.
    fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError>;
    /// Adds a conversation; if it exists (this device was removed and is added back), makes
    /// it active again, undescribed, and otherwise leaves it as it was.
    fn upsert_conversation(&self, c: &ConversationRecord) -> Result<(), StoreError>;
    /// Sets what a conversation is (its name, or its peer) and marks it described.
    fn describe_conversation(
        &self,
        group: &GroupId,
        name: Option<&str>,
        peer: Option<&Username>,
    ) -> Result<(), StoreError>;
    /// Marks a conversation inactive: this device was removed.
    fn deactivate_conversation(&self, group: &GroupId) -> Result<(), StoreError>;
    /// The active conversations where this device last renewed its own leaf at or before
    /// `cutoff` (or, if it never did, that started then), oldest first.
    fn unhealed_since(&self, cutoff: u64) -> Result<Vec<GroupId>, StoreError>;
    /// Sets when this device last renewed its own leaf in `group` (0: due at once).
    fn set_healed_at(&self, group: &GroupId, at: u64) -> Result<(), StoreError>;

    /// The last counter of `sender`'s messages in `group`: the last one seen from another
    /// device, this device's own last one used.
    fn counter(&self, group: &GroupId, sender: &DeviceAddr) -> Result<Option<u64>, StoreError>;
    /// Sets the last counter of `sender`'s messages in `group`.
    fn set_counter(
        &self,
        group: &GroupId,
        sender: &DeviceAddr,
        counter: u64,
    ) -> Result<(), StoreError>;

    /// Forgets the counters of every sender in `group` but `keep` (this device joined the
    /// group again: what others sent while it was out is not missing).
    fn forget_counters(&self, group: &GroupId, keep: &DeviceAddr) -> Result<(), StoreError>;

    /// The body of `user`'s device list as this device last proved the log to hold it, and
    /// the epoch it proved that at.
    fn logged_list(&self, user: &Username) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// Keeps the body of `user`'s device list the log was proven to hold at `epoch`.
    fn set_logged_list(&self, user: &Username, epoch: u64, body: &[u8]) -> Result<(), StoreError>;

    /// The key-transparency root this device holds for `epoch`: one it verified, or one a
    /// member vouched for in a message.
    fn log_root(&self, epoch: u64) -> Result<Option<KeptRoot>, StoreError>;
    /// Keeps `root` for `epoch`, verified by this device (`vouched_by` `None`) or vouched for
    /// by a member's device. A root kept for the epoch stays, unless it was vouched for and
    /// this one is verified. Only the newest [`LOG_ROOTS_KEPT`] epochs of each kind (verified,
    /// vouched for) are kept.
    fn put_log_root(
        &self,
        epoch: u64,
        root: &[u8; 32],
        vouched_by: Option<&DeviceAddr>,
    ) -> Result<(), StoreError>;
    /// Roots members vouched for at epochs up to `up_to` (none this device verified) and
    /// not yet compared with the log, at most `limit`: oldest first, those the server never
    /// failed to answer for before the others.
    fn unchecked_vouched_roots(
        &self,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, KeptRoot)>, StoreError>;
    /// Records that the root a member vouched for at `epoch` was compared with the log (or
    /// never can be): it is not returned by [`StoreTx::unchecked_vouched_roots`] again.
    fn mark_vouched_root_checked(&self, epoch: u64) -> Result<(), StoreError>;
    /// Records that the server did not answer for the vouched root at `epoch` at `now`;
    /// returns when it first did not, and how many times it has not (this one included; a
    /// failure less than `gap` seconds after the last one counted does not count).
    fn vouched_root_unanswered(
        &self,
        epoch: u64,
        now: u64,
        gap: u64,
    ) -> Result<(u64, u64), StoreError>;

    /// Stores a history entry; an id already stored is left as it is. Returns whether it
    /// was stored.
    fn add_history(&self, entry: &HistoryRecord) -> Result<bool, StoreError>;
    /// Entries not shown yet, oldest first.
    fn unshown(&self, which: Unshown) -> Result<Vec<UnshownEntry>, StoreError>;
    /// Every entry, shown or not, oldest first.
    fn history(&self) -> Result<Vec<HistoryRecord>, StoreError>;
    /// Marks every entry up to and including `position` as shown.
    fn mark_shown(&self, position: i64) -> Result<(), StoreError>;

    /// Whether the server's message `id` was processed.
    fn is_processed(&self, id: u64) -> Result<bool, StoreError>;
    /// Records that the server's message `id` was processed.
    fn mark_processed(&self, id: u64) -> Result<(), StoreError>;

    /// The identity key pinned for `user`, and whether the user verified it.
    fn contact(&self, user: &Username) -> Result<Option<Contact>, StoreError>;
    /// Every contact, by username.
    fn contacts(&self) -> Result<Vec<(Username, Contact)>, StoreError>;
    /// Pins `user`'s identity key, unless one is pinned.
    fn pin_identity(&self, user: &Username, key: &[u8], at: u64) -> Result<(), StoreError>;
    /// Pins `key` for `user` in place of any key pinned before (the user accepted a new
    /// one); it is not verified.
    fn replace_identity(&self, user: &Username, key: &[u8], at: u64) -> Result<(), StoreError>;
    /// Marks `user`'s pinned key verified; `Ok(false)` (and nothing changes) unless `key` is
    /// the pinned key.
    fn mark_verified(&self, user: &Username, key: &[u8]) -> Result<bool, StoreError>;

    /// Adds an outbox entry.
    fn put_outbox(&self, entry: &OutboxRecord) -> Result<(), StoreError>;
    /// The outbox, oldest first.
    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Removes an outbox entry; returns when it was made, if it was there.
    fn remove_outbox(&self, client_id: &str) -> Result<Option<u64>, StoreError>;
}
