//! What the server stores, as one async trait per concern with written semantics, and no
//! database type in sight: a backend implements these and nothing else. The rules of
//! delivery (one commit per epoch, sequence numbers, the roster, idempotency, fan-out and
//! quotas) are not here but in [`crate::delivery`], over a [`DeliveryTx`], so that every backend
//! shares them. `conformance` runs one test suite against every backend.
//!
//! Every method is atomic: it applies all of its effect or none. `Ok(None)` means "no such
//! thing"; `Err` means the storage itself failed. A method never panics on what it reads: a
//! row the operator broke is an error or is skipped, as the method says.

pub mod memory;
pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod conformance;

use async_trait::async_trait;
use sotto_proto::api::{
    ClaimedKeyPackage, KeyPackageCount, QueueResponse, QueuedKind, SendResponse, ValidRegistration,
    ValidUpload,
};
use sotto_proto::device_list::SignedDeviceListIn;
use sotto_proto::device_list::ValidDeviceListUpdate;
use sotto_proto::link::{LinkAnswer, LinkId};
use sotto_proto::{DeviceAddr, DeviceId, GroupId, ServerId, Username};

/// The storage failed (I/O, corruption, a bug), or cannot be reached. Never shown to a peer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage failure: {message}")]
pub struct StorageError {
    message: String,
    unavailable: bool,
}

impl StorageError {
    /// The storage failed.
    pub fn new(message: impl Into<String>) -> Self {
        StorageError {
            message: message.into(),
            unavailable: false,
        }
    }

    /// The storage cannot be reached for now (a database down, restarting or out of
    /// connections): the same request may succeed later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        StorageError {
            message: message.into(),
            unavailable: true,
        }
    }

    /// A stored value that cannot be what it claims: the operator or a bug broke a row.
    pub fn corrupt(what: &str) -> Self {
        StorageError::new(format!("corrupt row: {what}"))
    }

    /// Whether the storage could not be reached, rather than failed.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

/// A 32-byte secret as a storage keeps it (`name` says which, in the error).
pub fn secret_key(
    bytes: Vec<u8>,
    name: &str,
) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
    let bytes = zeroize::Zeroizing::new(bytes);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() != out.len() {
        return Err(StorageError::corrupt(name));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Facts about the server itself.
#[async_trait]
pub trait ServerStore {
    /// The server's identity, chosen at random when the storage was created and never changed.
    async fn server_id(&self) -> Result<ServerId, StorageError>;
    /// The key the server authenticates its sign-in challenges with, chosen at random when
    /// the storage was created.
    async fn challenge_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError>;
    /// The secret key of the key-transparency log's VRF, chosen at random when the storage
    /// was created (or when a storage from before key transparency was first opened).
    async fn kt_vrf_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError>;
    /// The Ed25519 secret (seed) of the key that signs the log's checkpoints, chosen at
    /// random when the storage was created (or first opened by a version that signs them).
    async fn kt_checkpoint_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError>;
    /// How many of each thing are stored: for operators, and for tests that check that a
    /// refused request changed nothing.
    async fn stats(&self) -> Result<Stats, StorageError>;
}

/// How many of each thing a storage holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Accounts.
    pub accounts: u64,
    /// Devices of all accounts.
    pub devices: u64,
    /// Unexpired tokens and tokens not yet purged.
    pub tokens: u64,
    /// Answered sign-in challenges not yet purged.
    pub used_challenges: u64,
    /// One-time KeyPackages.
    pub key_packages: u64,
    /// Last-resort KeyPackages.
    pub last_resort_key_packages: u64,
    /// Groups the server orders.
    pub groups: u64,
    /// Devices in all rosters.
    pub roster_entries: u64,
    /// Stored messages (each once, however many queues refer to it).
    pub messages: u64,
    /// Queue entries of all devices.
    pub queue_entries: u64,
    /// Idempotency records of accepted sends.
    pub sends: u64,
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

impl Account {
    /// The signed device list, as it travels.
    pub fn signed_device_list(&self) -> SignedDeviceListIn {
        SignedDeviceListIn {
            body: self.device_list_body.clone().into(),
            signature: self.device_list_signature.clone().into(),
        }
    }
}

/// Accounts and their device lists.
#[async_trait]
pub trait AccountStore {
    /// Creates the account with its first device and that device's KeyPackages; `Ok(false)`
    /// if the username is taken (nothing changes then).
    async fn create_account(
        &self,
        account: &ValidRegistration,
        now: u64,
    ) -> Result<bool, StorageError>;
    /// The account, if it exists.
    async fn account(&self, user: &Username) -> Result<Option<Account>, StorageError>;
    /// A device's signature (authentication) key, if the device exists.
    async fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError>;
    /// Each device the server holds for `user`, in id order, with when it last signed in
    /// (`None` if it never has); empty for an unknown user.
    async fn devices_seen(
        &self,
        user: &Username,
    ) -> Result<Vec<(DeviceId, Option<u64>)>, StorageError>;
    /// Replaces the account's device list with `update`'s, if the stored revision is still
    /// `update.replaces` (`Ok(false)` and nothing changes otherwise), all at once: the device
    /// added gets its KeyPackages; each device removed loses its KeyPackages, tokens, queue
    /// and places in rosters; and the account is queued for the key-transparency log.
    async fn update_device_list(
        &self,
        update: &ValidDeviceListUpdate,
    ) -> Result<bool, StorageError>;
}

/// A device being linked: its offer, waiting at a rendezvous, and the answer once given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The account the offer asks to join.
    pub user: Username,
    /// The offer's bytes.
    pub offer: Vec<u8>,
    /// SHA-256 of the secret that picks the answer up.
    pub secret_hash: Vec<u8>,
    /// When the rendezvous ends.
    pub expires_at: u64,
    /// The approver's answer, once given.
    pub answer: Option<LinkAnswer>,
}

/// Rendezvous of devices being linked. An expired one is never returned, and
/// [`DeliveryStore::purge`] deletes it.
#[async_trait]
pub trait LinkStore {
    /// Stores a new rendezvous; `Ok(false)` if the id is taken (nothing changes).
    async fn put_link(&self, id: &LinkId, link: &Link) -> Result<bool, StorageError>;
    /// The rendezvous, unless it does not exist or expired at `now`.
    async fn link(&self, id: &LinkId, now: u64) -> Result<Option<Link>, StorageError>;
    /// Stores the answer of a rendezvous not yet answered nor expired at `now`; `Ok(false)`
    /// (and nothing changes) otherwise.
    async fn answer_link(
        &self,
        id: &LinkId,
        answer: &LinkAnswer,
        now: u64,
    ) -> Result<bool, StorageError>;
    /// Deletes the rendezvous, if it exists.
    async fn delete_link(&self, id: &LinkId) -> Result<(), StorageError>;
}

/// One version of an account's value in the key-transparency log, as akd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtState {
    /// The log's label: the username's bytes.
    pub label: Vec<u8>,
    /// The epoch it was published in.
    pub epoch: u64,
    /// akd's record, encoded by [`crate::kt`].
    pub data: Vec<u8>,
}

/// An epoch of the key-transparency log as the server recorded it when it published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtEpoch {
    /// The epoch.
    pub epoch: u64,
    /// Its root (32 bytes, unless the operator broke the row).
    pub root: Vec<u8>,
    /// akd's proof that it extends the previous epoch (protobuf), if the server made one.
    pub audit: Option<Vec<u8>>,
}

/// The key-transparency log's records (akd's tree and value states, opaque here), the
/// accounts whose device list changed since they were last published, and each epoch's root
/// with witnesses' cosignatures on it.
#[async_trait]
pub trait KtStore {
    /// Writes tree records (by their binary id, replacing any with the same id) and value
    /// states (by label and epoch, replacing likewise), all at once.
    async fn kt_write(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        states: Vec<KtState>,
    ) -> Result<(), StorageError>;
    /// The tree records with these ids, as (id, record), for those that exist.
    async fn kt_nodes(&self, ids: &[Vec<u8>]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// Every stored state of each of these labels, in no particular order.
    async fn kt_states(&self, labels: &[Vec<u8>]) -> Result<Vec<KtState>, StorageError>;
    /// The oldest accounts waiting to be published, at most `limit`, as (queue id, user); the
    /// user is `None` in a row the operator broke. Every account created is queued in the
    /// same transaction (by a trigger on SQLite and PostgreSQL, whatever inserts it).
    async fn kt_pending(&self, limit: usize) -> Result<Vec<(u64, Option<Username>)>, StorageError>;
    /// Removes these queue entries (those read and published: on a shared database a queue
    /// entry with a lower id may commit after a higher one was read).
    async fn kt_published(&self, ids: &[u64]) -> Result<(), StorageError>;
    /// Makes this process the log's one publisher until the guard is dropped; `Ok(None)` if
    /// another process (a node sharing the database) publishes now.
    async fn kt_publisher(&self) -> Result<Option<KtPublisher>, StorageError>;
    /// Records an epoch's root and append-only proof; an epoch recorded already is left as
    /// it is.
    async fn kt_record_epoch(&self, epoch: &KtEpoch) -> Result<(), StorageError>;
    /// The epoch recorded as `epoch`, if any.
    async fn kt_epoch(&self, epoch: u64) -> Result<Option<KtEpoch>, StorageError>;
    /// The root recorded for `epoch`, if any, without its proof.
    async fn kt_root(&self, epoch: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// The oldest epoch recorded, if any.
    async fn kt_first_epoch(&self) -> Result<Option<u64>, StorageError>;
    /// Keeps a witness's cosignature (a note's signature line) made at `time` on a recorded
    /// epoch, in place of an older one of the same witness on that epoch.
    async fn kt_cosign(
        &self,
        epoch: u64,
        witness: &str,
        time: u64,
        line: &str,
    ) -> Result<(), StorageError>;
    /// The cosignatures kept for `epoch`, as (witness, line), in the order of the witnesses.
    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<(String, String)>, StorageError>;
}

/// Held while this process publishes an epoch of the key-transparency log.
pub struct KtPublisher {
    /// What keeps others out (a database session holding a lock), if anything must.
    _held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl KtPublisher {
    /// The guard of a storage that only this process writes.
    pub fn sole() -> Self {
        KtPublisher { _held: None }
    }

    /// A guard that keeps others out as long as `held` lives.
    pub fn holding(held: Box<dyn std::any::Any + Send + Sync>) -> Self {
        KtPublisher { _held: Some(held) }
    }
}

/// Sign-in challenges and bearer tokens.
#[async_trait]
pub trait AuthStore {
    /// Records that the challenge with this hash was answered; `Ok(false)` if it had been
    /// already (a replay). Kept until `expires_at`, after which the challenge is refused anyway.
    async fn use_challenge(
        &self,
        challenge_hash: &[u8],
        expires_at: u64,
    ) -> Result<bool, StorageError>;
    /// Stores a token (by its hash), issued at `now`, and records `now` as the device's last
    /// sign-in (unless a later one is recorded: two sign-ins racing never move it back).
    async fn put_token(
        &self,
        token_hash: &[u8],
        device: &DeviceAddr,
        now: u64,
        expires_at: u64,
    ) -> Result<(), StorageError>;
    /// The device and expiry of a token hash.
    async fn token(&self, token_hash: &[u8]) -> Result<Option<(DeviceAddr, u64)>, StorageError>;
}

/// What a claim of one KeyPackage per device of a user found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No such user; nothing was taken.
    UnknownUser,
    /// A device of the user has no KeyPackage at all; nothing was taken.
    Exhausted,
    /// One KeyPackage for each device, in device order: a one-time one (now deleted) or the
    /// last-resort one.
    Claimed(Vec<ClaimedKeyPackage>),
}

/// The KeyPackage directory.
#[async_trait]
pub trait KeyPackageStore {
    /// Adds one-time KeyPackages and replaces the last-resort one if given. `Ok(None)` if the
    /// device would then hold more than `max_stored` one-time KeyPackages (nothing changes).
    async fn add_key_packages(
        &self,
        device: &DeviceAddr,
        upload: &ValidUpload,
        max_stored: u64,
    ) -> Result<Option<KeyPackageCount>, StorageError>;
    /// How many the device has left.
    async fn key_package_count(&self, device: &DeviceAddr)
    -> Result<KeyPackageCount, StorageError>;
    /// Atomically takes one KeyPackage for every device of `user`, all or nothing: the oldest
    /// one-time KeyPackage of each device goes to exactly one claimer, and a claim that cannot
    /// serve every device takes none. With `one_time` false, every device's last-resort
    /// KeyPackage is handed out instead (nothing is taken).
    async fn claim_key_packages(
        &self,
        user: &Username,
        one_time: bool,
    ) -> Result<Claim, StorageError>;
}

/// Where a group stands in the server's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupState {
    /// The epoch a message must carry to be accepted.
    pub epoch: u64,
    /// The sequence number the next message gets.
    pub next_seq: u64,
}

/// A message to store once, before it is queued.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Its group.
    pub group: &'a GroupId,
    /// Its place in the group's order.
    pub seq: u64,
    /// Who sent it.
    pub sender: &'a DeviceAddr,
    /// A group message or a Welcome.
    pub kind: QueuedKind,
    /// The RFC 9420 message.
    pub data: &'a [u8],
    /// When the server accepted it.
    pub accepted_at: u64,
}

/// What a device's queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueUsage {
    /// Entries.
    pub count: u64,
    /// Bytes of the messages the entries refer to.
    pub bytes: u64,
}

/// What makes a sender's share of a queue heavy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// The number of its entries.
    Entries,
    /// The bytes of its entries.
    Bytes,
}

/// One entry of a device's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    /// The message it refers to.
    pub message_id: u64,
    /// That message's size in bytes.
    pub size: u64,
}

/// The delivery part of a storage: reads that need no transaction, and [`DeliveryTx`]s for
/// everything that changes queues and groups.
#[async_trait]
pub trait DeliveryStore {
    /// Starts a transaction. Transactions are serializable: while one is open, no other
    /// changes what it reads. Dropping it without [`DeliveryTx::commit`] undoes all of it.
    async fn begin(&self) -> Result<Box<dyn DeliveryTx + '_>, StorageError>;
    /// The oldest messages queued for `device` with an id above `after` (0 for the whole
    /// queue): at most `limit`, and no more than `max_bytes` of them (but always the first),
    /// with the device's `dropped_total`. A stored message that cannot be decoded is skipped
    /// (and logged), never allowed to block the queue. A device's queue is in id order, and
    /// ids become visible in increasing order: a message committed after another has a
    /// higher id (sockets rely on it to send each message once, with `after`).
    async fn fetch(
        &self,
        device: &DeviceAddr,
        after: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<QueueResponse, StorageError>;
    /// Deletes messages accepted before `cutoff` with their queue entries (counting each
    /// entry in its device's `dropped_total`), idempotency records from before `cutoff`, and
    /// used challenges, tokens and link rendezvous expired at `now`. Returns the number of messages deleted.
    async fn purge(&self, cutoff: u64, now: u64) -> Result<u64, StorageError>;
}

/// One delivery transaction: the primitive reads and writes the delivery rules are made of.
/// Each keeps the stored counters consistent with what it changes; none applies a rule.
#[async_trait]
pub trait DeliveryTx: Send {
    /// The answer recorded for `client_id` from `sender`, if it was accepted before.
    async fn sent(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
    ) -> Result<Option<SendResponse>, StorageError>;
    /// Records the answer to an accepted send, for a repeat of `client_id` from `sender`.
    async fn record_send(
        &mut self,
        sender: &DeviceAddr,
        client_id: &str,
        response: &SendResponse,
    ) -> Result<(), StorageError>;
    /// Whether every one of `devices` (each named once) exists.
    async fn devices_exist(&mut self, devices: &[&DeviceAddr]) -> Result<bool, StorageError>;
    /// The group's state, if the server has seen the group.
    async fn group(&mut self, group: &GroupId) -> Result<Option<GroupState>, StorageError>;
    /// Creates or replaces the group's state.
    async fn set_group(&mut self, group: &GroupId, state: GroupState) -> Result<(), StorageError>;
    /// Whether `device` is in the group's roster.
    async fn in_roster(
        &mut self,
        group: &GroupId,
        device: &DeviceAddr,
    ) -> Result<bool, StorageError>;
    /// Replaces the group's roster (duplicates are kept once).
    async fn set_roster(
        &mut self,
        group: &GroupId,
        devices: &[DeviceAddr],
    ) -> Result<(), StorageError>;
    /// Stores a message and returns its id. Ids grow with every message and are never
    /// reused, even once the message is deleted.
    async fn store_message(&mut self, message: NewMessage<'_>) -> Result<u64, StorageError>;
    /// Appends an entry for the message to `device`'s queue; returns the queue's usage after.
    async fn enqueue(
        &mut self,
        device: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<QueueUsage, StorageError>;
    /// Appends an entry for the message to the queue of every device in the group's roster
    /// but `except`, at once; returns each device queued with its queue's usage after, in no
    /// particular order.
    async fn enqueue_roster(
        &mut self,
        group: &GroupId,
        except: &DeviceAddr,
        entry: QueueEntry,
    ) -> Result<Vec<(DeviceAddr, QueueUsage)>, StorageError>;
    /// The sender of the most entries (or bytes) in `device`'s queue, leaving out the entry
    /// of message `except`; ties go to the smallest sender (by user, then device). `None` if
    /// nothing else is queued.
    async fn heaviest_sender(
        &mut self,
        device: &DeviceAddr,
        weight: Weight,
        except: u64,
    ) -> Result<Option<DeviceAddr>, StorageError>;
    /// The entries of `device`'s queue from `sender`, oldest first, leaving out message `except`.
    async fn entries_from(
        &mut self,
        device: &DeviceAddr,
        sender: &DeviceAddr,
        except: u64,
    ) -> Result<Vec<QueueEntry>, StorageError>;
    /// Removes the entry for `message_id` from `device`'s queue; returns it if there was one.
    async fn remove_entry(
        &mut self,
        device: &DeviceAddr,
        message_id: u64,
    ) -> Result<Option<QueueEntry>, StorageError>;
    /// Adds `n` to the device's `dropped_total`.
    async fn count_dropped(&mut self, device: &DeviceAddr, n: u64) -> Result<(), StorageError>;
    /// Deletes the message if no queue refers to it.
    async fn delete_if_unqueued(&mut self, message_id: u64) -> Result<(), StorageError>;
    /// Removes each of `entries` (a device and a message id, each pair once) from its device's
    /// queue, ignoring those not queued, and deletes every one of their messages that no queue
    /// refers to any more. Returns, for each, whether it was removed. This default takes them
    /// one at a time; a backend whose statements cost a round trip does it in one.
    async fn remove_entries(
        &mut self,
        entries: &[(&DeviceAddr, u64)],
    ) -> Result<Vec<bool>, StorageError> {
        let mut removed = Vec::with_capacity(entries.len());
        for (device, id) in entries {
            let was = self.remove_entry(device, *id).await?.is_some();
            if was {
                self.delete_if_unqueued(*id).await?;
            }
            removed.push(was);
        }
        Ok(removed)
    }
    /// Makes every change of the transaction durable, at once.
    async fn commit(self: Box<Self>) -> Result<(), StorageError>;
}

/// Everything the server stores.
pub trait Storage:
    ServerStore
    + AccountStore
    + AuthStore
    + KeyPackageStore
    + DeliveryStore
    + KtStore
    + LinkStore
    + Send
    + Sync
{
}

impl<
    T: ServerStore
        + AccountStore
        + AuthStore
        + KeyPackageStore
        + DeliveryStore
        + KtStore
        + LinkStore
        + Send
        + Sync,
> Storage for T
{
}
