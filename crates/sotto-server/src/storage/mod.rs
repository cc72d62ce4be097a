//! What the server stores, as one trait per concern with written semantics. Handlers only
//! talk to these traits, so a PostgreSQL implementation slots in without touching them.
//!
//! Every method is blocking and atomic: it either applies all of its effect or none. `Ok(None)`
//! means "no such thing"; `Err` means the storage itself failed.

pub mod sqlite;

use sotto_proto::api::{
    ClaimedKeyPackage, KeyPackageCount, QueueResponse, SendResponse, ValidRegistration, ValidSend,
    ValidUpload,
};
use sotto_proto::{DeviceAddr, ServerId, Username};

/// The storage failed (I/O, corruption, a bug). Never shown to a peer.
#[derive(Debug, thiserror::Error)]
#[error("storage failure: {0}")]
pub struct StorageError(pub String);

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError(e.to_string())
    }
}

/// Facts about the server itself.
pub trait ServerStore {
    /// The server's identity, chosen at random when the storage was created and never changed.
    fn server_id(&self) -> Result<ServerId, StorageError>;
    /// The key the server authenticates its sign-in challenges with, chosen at random when
    /// the storage was created.
    fn challenge_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError>;
}

/// A registered account.
#[derive(Debug, Clone)]
pub struct Account {
    /// Ed25519 identity public key.
    pub identity_key: Vec<u8>,
    /// The signed device list, as uploaded.
    pub device_list_body: Vec<u8>,
    /// Its signature.
    pub device_list_signature: Vec<u8>,
}

/// Accounts and their device lists.
pub trait AccountStore {
    /// Creates the account with its first device and that device's KeyPackages; `Ok(false)`
    /// if the username is taken (nothing changes then).
    fn create_account(&self, account: &ValidRegistration, now: u64) -> Result<bool, StorageError>;
    /// The account, if it exists.
    fn account(&self, user: &Username) -> Result<Option<Account>, StorageError>;
    /// A device's signature (authentication) key, if the device exists.
    fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError>;
}

/// Sign-in challenges and bearer tokens.
pub trait AuthStore {
    /// Records that the challenge with this hash was answered; `Ok(false)` if it had been
    /// already (a replay). Kept until `expires_at`, after which the challenge is refused anyway.
    fn use_challenge(&self, challenge_hash: &[u8], expires_at: u64) -> Result<bool, StorageError>;
    /// Stores a token (by its hash).
    fn put_token(
        &self,
        token_hash: &[u8],
        device: &DeviceAddr,
        expires_at: u64,
    ) -> Result<(), StorageError>;
    /// The device and expiry of a token hash.
    fn token(&self, token_hash: &[u8]) -> Result<Option<(DeviceAddr, u64)>, StorageError>;
}

/// What a claim of one KeyPackage per device of a user found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No such user; nothing was taken.
    UnknownUser,
    /// A device of the user has no KeyPackage at all; nothing was taken.
    Exhausted,
    /// One KeyPackage for each device: a one-time one (now deleted) or the last-resort one.
    Claimed(Vec<ClaimedKeyPackage>),
}

/// The KeyPackage directory.
pub trait KeyPackageStore {
    /// Adds one-time KeyPackages and replaces the last-resort one if given. `Ok(None)` if the
    /// device would then hold more than `max_stored` one-time KeyPackages (nothing changes).
    fn add_key_packages(
        &self,
        device: &DeviceAddr,
        upload: &ValidUpload,
        max_stored: u64,
    ) -> Result<Option<KeyPackageCount>, StorageError>;
    /// How many the device has left.
    fn key_package_count(&self, device: &DeviceAddr) -> Result<KeyPackageCount, StorageError>;
    /// Atomically takes one KeyPackage for every device of `user`, all or nothing: each
    /// one-time KeyPackage goes to exactly one claimer, and a claim that cannot serve every
    /// device takes none. With `one_time` false, every device's last-resort KeyPackage is
    /// handed out instead (nothing is taken).
    fn claim_key_packages(&self, user: &Username, one_time: bool) -> Result<Claim, StorageError>;
}

/// The most a device's queue may hold. Past either bound entries are dropped (and counted in
/// the device's `dropped_total`), so an abandoned device never blocks a group: the oldest of
/// the sender holding the most of what is over quota, never the message being queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueQuota {
    /// Entries.
    pub messages: u64,
    /// Bytes of the messages the entries refer to.
    pub bytes: u64,
}

/// Result of submitting a group message.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Stored and queued; the devices listed must be woken.
    Accepted {
        /// The answer for the sender.
        response: SendResponse,
        /// Devices that got a new queue entry.
        wake: Vec<DeviceAddr>,
    },
    /// The message's epoch is not the group's; carries the group's epoch.
    EpochConflict(u64),
    /// The sender is not in the group's roster.
    NotAMember,
    /// A recipient device does not exist.
    UnknownRecipient,
}

/// Ordered delivery and per-device queues.
pub trait DeliveryStore {
    /// Orders and stores one group message (with its Welcome, if any), all or nothing: at most
    /// one commit per (group, epoch), a sequence number per message, one stored copy and a
    /// queue entry per recipient device, within each recipient's `quota`. A message with no
    /// recipients is ordered (it may move the epoch) but not stored. A repeated `client_id`
    /// from the same device returns the first answer and stores nothing.
    fn submit(
        &self,
        sender: &DeviceAddr,
        send: &ValidSend,
        now: u64,
        quota: QueueQuota,
    ) -> Result<Submitted, StorageError>;
    /// The oldest messages queued for `device`: at most `limit`, and no more than `max_bytes`
    /// of them (but always the first), with the device's `dropped_total`.
    fn fetch(
        &self,
        device: &DeviceAddr,
        limit: u32,
        max_bytes: usize,
    ) -> Result<QueueResponse, StorageError>;
    /// Removes the acknowledged entries of `device`'s queue, and every message no queue refers
    /// to any more. Returns how many entries were removed.
    fn ack(&self, device: &DeviceAddr, ids: &[u64]) -> Result<u64, StorageError>;
    /// Deletes messages accepted before `cutoff` with their queue entries (counting each
    /// entry in its device's `dropped_total`), and expired used challenges, tokens and idempotency
    /// records. Returns the number of messages deleted.
    fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError>;
}

/// Everything the server stores.
pub trait Storage:
    ServerStore + AccountStore + AuthStore + KeyPackageStore + DeliveryStore + Send + Sync
{
}

impl<T: ServerStore + AccountStore + AuthStore + KeyPackageStore + DeliveryStore + Send + Sync>
    Storage for T
{
}
