//! A storage that keeps everything in memory and loses it on exit: for tests, and for trying
//! the server without a disk. Every operation runs under one lock; a delivery transaction
//! works on a copy of the state and swaps it in at commit, so dropping it undoes everything
//! (the copy makes each transaction cost the size of the state: not a production backend).

mod delivery;
mod devices;
mod kt;

use async_trait::async_trait;
use sotto_proto::api::{
    ClaimedKeyPackage, KeyPackageCount, QueuedKind, SendResponse, ValidRegistration, ValidUpload,
};
use sotto_proto::{DeviceAddr, DeviceId, GroupId, ServerId, Username};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tokio::sync::Mutex;

use super::{
    Account, AccountStore, AuthStore, Claim, GroupState, KeyPackageStore, QueueUsage, ServerStore,
    Stats, StorageError,
};

#[derive(Clone)]
struct StoredMessage {
    group: GroupId,
    seq: u64,
    sender: DeviceAddr,
    kind: QueuedKind,
    data: Arc<[u8]>,
    accepted_at: u64,
}

#[derive(Clone, Default)]
struct DeviceQueue {
    /// By message id, which grows with every message: oldest first.
    entries: BTreeMap<u64, u64>,
    usage: QueueUsage,
    dropped_total: u64,
}

#[derive(Clone)]
struct State {
    server_id: ServerId,
    challenge_key: [u8; 32],
    kt_vrf_key: [u8; 32],
    kt_checkpoint_key: [u8; 32],
    /// Accounts waiting to be published in the log, by queue id.
    kt_pending: BTreeMap<u64, Username>,
    kt_last_pending: u64,
    accounts: BTreeMap<Username, Account>,
    devices: BTreeMap<DeviceAddr, Vec<u8>>,
    /// When each device last signed in.
    last_seen: BTreeMap<DeviceAddr, u64>,
    used_challenges: BTreeMap<Vec<u8>, u64>,
    tokens: BTreeMap<Vec<u8>, (DeviceAddr, u64)>,
    key_packages: BTreeMap<DeviceAddr, VecDeque<Vec<u8>>>,
    last_resort: BTreeMap<DeviceAddr, Vec<u8>>,
    groups: BTreeMap<GroupId, GroupState>,
    rosters: BTreeMap<GroupId, BTreeSet<DeviceAddr>>,
    messages: BTreeMap<u64, StoredMessage>,
    last_message_id: u64,
    queues: BTreeMap<DeviceAddr, DeviceQueue>,
    sends: BTreeMap<(DeviceAddr, String), SendResponse>,
    links: BTreeMap<sotto_proto::link::LinkId, super::Link>,
}

impl Drop for State {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.challenge_key);
        zeroize::Zeroize::zeroize(&mut self.kt_vrf_key);
        zeroize::Zeroize::zeroize(&mut self.kt_checkpoint_key);
    }
}

/// In-memory [`super::Storage`].
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
    /// The key-transparency log's records: apart from `state`, which every delivery
    /// transaction copies.
    kt: Arc<std::sync::Mutex<kt::KtRecords>>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty storage with a fresh random identity and challenge key.
    pub fn new() -> Self {
        MemoryStorage {
            state: Arc::new(Mutex::new(State {
                server_id: ServerId::from_bytes(rand::random()),
                challenge_key: rand::random(),
                kt_vrf_key: rand::random(),
                kt_checkpoint_key: rand::random(),
                kt_pending: BTreeMap::new(),
                kt_last_pending: 0,
                accounts: BTreeMap::new(),
                devices: BTreeMap::new(),
                last_seen: BTreeMap::new(),
                used_challenges: BTreeMap::new(),
                tokens: BTreeMap::new(),
                key_packages: BTreeMap::new(),
                last_resort: BTreeMap::new(),
                groups: BTreeMap::new(),
                rosters: BTreeMap::new(),
                messages: BTreeMap::new(),
                last_message_id: 0,
                queues: BTreeMap::new(),
                sends: BTreeMap::new(),
                links: BTreeMap::new(),
            })),
            kt: Arc::default(),
        }
    }
}

impl MemoryStorage {
    /// What an operator with write access to the data can do: give `device` (a device of an
    /// existing account) a place on the server that its owner never signed for. Clients must
    /// catch it; tests use this to check that they do.
    pub async fn plant_device(&self, device: &DeviceAddr, signature_key: &[u8]) {
        self.state
            .lock()
            .await
            .devices
            .insert(device.clone(), signature_key.to_vec());
    }

    /// What an operator with write access to the data can do: put a device list of its own
    /// making (signed or not) in place of `user`'s, leaving everything else, and queue it
    /// for the key-transparency log if `publish`. Clients must catch it; tests use this to
    /// check that they do.
    pub async fn set_device_list(
        &self,
        user: &Username,
        list: &sotto_proto::device_list::SignedDeviceListIn,
        publish: bool,
    ) {
        let mut s = self.state.lock().await;
        if let Some(account) = s.accounts.get_mut(user) {
            account.device_list_body = list.body.as_slice().to_vec();
            account.device_list_signature = list.signature.as_slice().to_vec();
        }
        if publish {
            queue_for_log(&mut s, user);
        }
    }

    /// What an operator with write access to the data can do: replace `user`'s identity key
    /// and signed device list (and so its devices) with ones of its own making, without
    /// publishing them in the key-transparency log unless `publish`. Clients must catch it;
    /// tests use this to check that they do.
    pub async fn replace_account(&self, account: &ValidRegistration, publish: bool) {
        let mut s = self.state.lock().await;
        let list = account.device_list.list();
        s.devices.retain(|d, _| d.user != list.user);
        s.last_seen.retain(|d, _| d.user != list.user);
        s.accounts.remove(&list.user);
        insert_account(&mut s, account);
        if publish {
            queue_for_log(&mut s, &list.user);
        }
    }
}

fn insert_account(s: &mut State, account: &ValidRegistration) {
    let list = account.device_list.list();
    s.accounts.insert(
        list.user.clone(),
        Account {
            identity_key: account.identity_key.clone(),
            device_list_body: account.device_list.signed().body.as_slice().to_vec(),
            device_list_signature: account.device_list.signed().signature.as_slice().to_vec(),
        },
    );
    for d in &list.devices {
        let addr = DeviceAddr {
            user: list.user.clone(),
            device: d.id,
        };
        s.devices
            .insert(addr.clone(), d.signature_key.as_slice().to_vec());
        s.key_packages
            .insert(addr.clone(), account.key_packages.iter().cloned().collect());
        s.last_resort.insert(addr, account.last_resort.clone());
    }
}

fn queue_for_log(s: &mut State, user: &Username) {
    s.kt_last_pending = s.kt_last_pending.saturating_add(1);
    let id = s.kt_last_pending;
    s.kt_pending.insert(id, user.clone());
}

fn count_of(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn key_package_count(s: &State, device: &DeviceAddr) -> KeyPackageCount {
    KeyPackageCount {
        count: count_of(s.key_packages.get(device).map_or(0, VecDeque::len)),
        last_resort: s.last_resort.contains_key(device),
    }
}

#[async_trait]
impl ServerStore for MemoryStorage {
    async fn server_id(&self) -> Result<ServerId, StorageError> {
        Ok(self.state.lock().await.server_id.clone())
    }

    async fn challenge_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        Ok(zeroize::Zeroizing::new(
            self.state.lock().await.challenge_key,
        ))
    }

    async fn kt_vrf_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        Ok(zeroize::Zeroizing::new(self.state.lock().await.kt_vrf_key))
    }

    async fn kt_checkpoint_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, StorageError> {
        Ok(zeroize::Zeroizing::new(
            self.state.lock().await.kt_checkpoint_key,
        ))
    }

    async fn stats(&self) -> Result<Stats, StorageError> {
        let s = self.state.lock().await;
        Ok(Stats {
            accounts: count_of(s.accounts.len()),
            devices: count_of(s.devices.len()),
            tokens: count_of(s.tokens.len()),
            used_challenges: count_of(s.used_challenges.len()),
            key_packages: s.key_packages.values().map(|k| count_of(k.len())).sum(),
            last_resort_key_packages: count_of(s.last_resort.len()),
            groups: count_of(s.groups.len()),
            roster_entries: s.rosters.values().map(|r| count_of(r.len())).sum(),
            messages: count_of(s.messages.len()),
            queue_entries: s.queues.values().map(|q| count_of(q.entries.len())).sum(),
            sends: count_of(s.sends.len()),
        })
    }
}

#[async_trait]
impl AccountStore for MemoryStorage {
    async fn create_account(
        &self,
        account: &ValidRegistration,
        _now: u64,
    ) -> Result<bool, StorageError> {
        let mut s = self.state.lock().await;
        let list = account.device_list.list();
        if s.accounts.contains_key(&list.user) {
            return Ok(false);
        }
        insert_account(&mut s, account);
        queue_for_log(&mut s, &list.user);
        Ok(true)
    }

    async fn account(&self, user: &Username) -> Result<Option<Account>, StorageError> {
        Ok(self.state.lock().await.accounts.get(user).cloned())
    }

    async fn device_key(&self, device: &DeviceAddr) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.state.lock().await.devices.get(device).cloned())
    }

    async fn devices_seen(
        &self,
        user: &Username,
    ) -> Result<Vec<(DeviceId, Option<u64>)>, StorageError> {
        let s = self.state.lock().await;
        Ok(s.devices
            .keys()
            .filter(|d| &d.user == user)
            .map(|d| (d.device, s.last_seen.get(d).copied()))
            .collect())
    }

    async fn update_device_list(
        &self,
        update: &sotto_proto::device_list::ValidDeviceListUpdate,
    ) -> Result<bool, StorageError> {
        self.replace_device_list(update).await
    }
}

#[async_trait]
impl AuthStore for MemoryStorage {
    async fn use_challenge(
        &self,
        challenge_hash: &[u8],
        expires_at: u64,
    ) -> Result<bool, StorageError> {
        let mut s = self.state.lock().await;
        if s.used_challenges.contains_key(challenge_hash) {
            return Ok(false);
        }
        s.used_challenges
            .insert(challenge_hash.to_vec(), expires_at);
        Ok(true)
    }

    async fn put_token(
        &self,
        token_hash: &[u8],
        device: &DeviceAddr,
        now: u64,
        expires_at: u64,
    ) -> Result<(), StorageError> {
        let mut s = self.state.lock().await;
        if s.tokens.contains_key(token_hash) {
            return Err(StorageError::new("token hash already stored"));
        }
        s.tokens
            .insert(token_hash.to_vec(), (device.clone(), expires_at));
        if s.devices.contains_key(device) {
            let seen = s.last_seen.entry(device.clone()).or_insert(now);
            *seen = (*seen).max(now);
        }
        Ok(())
    }

    async fn token(&self, token_hash: &[u8]) -> Result<Option<(DeviceAddr, u64)>, StorageError> {
        Ok(self.state.lock().await.tokens.get(token_hash).cloned())
    }
}

#[async_trait]
impl KeyPackageStore for MemoryStorage {
    async fn add_key_packages(
        &self,
        device: &DeviceAddr,
        upload: &ValidUpload,
        max_stored: u64,
    ) -> Result<Option<KeyPackageCount>, StorageError> {
        let mut s = self.state.lock().await;
        let before = key_package_count(&s, device);
        if before.count.saturating_add(count_of(upload.one_time.len())) > max_stored {
            return Ok(None);
        }
        s.key_packages
            .entry(device.clone())
            .or_default()
            .extend(upload.one_time.iter().cloned());
        if let Some(kp) = &upload.last_resort {
            s.last_resort.insert(device.clone(), kp.clone());
        }
        Ok(Some(key_package_count(&s, device)))
    }

    async fn key_package_count(
        &self,
        device: &DeviceAddr,
    ) -> Result<KeyPackageCount, StorageError> {
        Ok(key_package_count(&*self.state.lock().await, device))
    }

    async fn claim_key_packages(
        &self,
        user: &Username,
        one_time: bool,
    ) -> Result<Claim, StorageError> {
        let mut s = self.state.lock().await;
        let devices: Vec<DeviceAddr> = s
            .devices
            .keys()
            .filter(|d| &d.user == user)
            .cloned()
            .collect();
        if devices.is_empty() {
            return Ok(Claim::UnknownUser);
        }
        // Decide for every device before taking anything: all or nothing.
        let mut plan = Vec::with_capacity(devices.len());
        for d in devices {
            let has_one_time = one_time && s.key_packages.get(&d).is_some_and(|k| !k.is_empty());
            if !has_one_time && !s.last_resort.contains_key(&d) {
                return Ok(Claim::Exhausted);
            }
            plan.push((d, has_one_time));
        }
        let mut claimed = Vec::with_capacity(plan.len());
        for (d, take_one_time) in plan {
            let key_package = if take_one_time {
                s.key_packages.get_mut(&d).and_then(VecDeque::pop_front)
            } else {
                s.last_resort.get(&d).cloned()
            };
            let key_package =
                key_package.ok_or_else(|| StorageError::new("a planned KeyPackage vanished"))?;
            claimed.push(ClaimedKeyPackage {
                device: d.device,
                key_package: key_package.into(),
            });
        }
        Ok(Claim::Claimed(claimed))
    }
}
