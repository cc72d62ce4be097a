//! What the server stores, as one trait per concern with written semantics. Handlers only
//! talk to these traits, so a PostgreSQL implementation slots in without touching them.
//!
//! Every method is blocking and atomic: it either applies all of its effect or none. `Ok(None)`
//! means "no such thing"; `Err` means the storage itself failed.

pub mod sqlite;

use sotto_proto::api::{KeyPackageCount, QueuedMessage, SendResponse, ValidSend};
use sotto_proto::device_list::VerifiedDeviceList;
use sotto_proto::{DeviceAddr, DeviceId, Username};

/// The storage failed (I/O, corruption, a bug). Never shown to a peer.
#[derive(Debug, thiserror::Error)]
#[error("storage failure: {0}")]
pub struct StorageError(pub String);

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError(e.to_string())
    }
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
    /// Creates the account; `Ok(false)` if the username is taken (nothing changes then).
    fn create_account(
        &self,
        identity_key: &[u8],
        list: &VerifiedDeviceList,
        now: u64,
    ) -> Result<bool, StorageError>;
    /// The account, if it exists.
    fn account(&self, user: &Username) -> Result<Option<Account>, StorageError>;
    /// A device's signature (authentication) key, if the device exists.
    fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError>;
}

/// Sign-in challenges and bearer tokens.
pub trait AuthStore {
    /// Stores a fresh challenge for `device`.
    fn put_challenge(
        &self,
        challenge: &[u8],
        device: &DeviceAddr,
        expires_at: u64,
    ) -> Result<(), StorageError>;
    /// Deletes the challenge and says whether it was issued to `device` and unexpired at
    /// `now`. A challenge can be taken once only.
    fn take_challenge(
        &self,
        challenge: &[u8],
        device: &DeviceAddr,
        now: u64,
    ) -> Result<bool, StorageError>;
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

/// What a claim found for one device.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The device.
    pub device: DeviceId,
    /// Its KeyPackage: a one-time one (now deleted) or the last-resort one; `None` if it has
    /// neither.
    pub key_package: Option<Vec<u8>>,
}

/// The KeyPackage directory.
pub trait KeyPackageStore {
    /// Adds one-time KeyPackages and replaces the last-resort one if given. `Ok(None)` if the
    /// device would then hold more than the limit (nothing changes then).
    fn add_key_packages(
        &self,
        device: &DeviceAddr,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<Option<KeyPackageCount>, StorageError>;
    /// How many the device has left.
    fn key_package_count(&self, device: &DeviceAddr) -> Result<KeyPackageCount, StorageError>;
    /// Atomically takes one KeyPackage for every device of `user`; each one-time KeyPackage
    /// goes to exactly one claimer. `Ok(None)` if the user does not exist.
    fn claim_key_packages(&self, user: &Username) -> Result<Option<Vec<Claimed>>, StorageError>;
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
    /// queue entry per recipient device. A repeated `client_id` from the same device returns
    /// the first answer and stores nothing.
    fn submit(
        &self,
        sender: &DeviceAddr,
        send: &ValidSend,
        now: u64,
    ) -> Result<Submitted, StorageError>;
    /// The oldest `limit` messages queued for `device`.
    fn fetch(&self, device: &DeviceAddr, limit: u32) -> Result<Vec<QueuedMessage>, StorageError>;
    /// Removes the acknowledged entries of `device`'s queue, and every message no queue refers
    /// to any more. Returns how many entries were removed.
    fn ack(&self, device: &DeviceAddr, ids: &[u64]) -> Result<u64, StorageError>;
    /// Deletes messages accepted before `cutoff` with their queue entries, and expired
    /// challenges, tokens and idempotency records. Returns the number of messages deleted.
    fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError>;
}

/// Everything the server stores.
pub trait Storage:
    AccountStore + AuthStore + KeyPackageStore + DeliveryStore + Send + Sync
{
}

impl<T: AccountStore + AuthStore + KeyPackageStore + DeliveryStore + Send + Sync> Storage for T {}
