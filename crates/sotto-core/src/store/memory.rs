//! A [`ClientStore`] in memory, lost on exit: for tests and benchmarks. A transaction works
//! on a copy of everything and puts it back when it commits, so a failed one leaves no trace
//! (the copy costs the size of the store per transaction: not for real use).

use super::{
    ClientStore, Contact, ConversationRecord, HistoryItem, HistoryRecord, KeptRoot, LOG_ROOTS_KEPT,
    OutboxEntry, OutboxRecord, Setting, StoreTx, Unshown, UnshownEntry,
};
use crate::StoreError;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_memory_storage::MemoryStorage;
use openmls_traits::OpenMlsProvider;
use sotto_proto::{DeviceAddr, GroupId, Username};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

#[derive(Clone, Default)]
struct State {
    settings: BTreeMap<Setting, Vec<u8>>,
    conversations: Vec<ConversationRecord>,
    /// Position, entry, shown.
    history: Vec<(i64, HistoryRecord, bool)>,
    processed: BTreeSet<u64>,
    contacts: BTreeMap<Username, Contact>,
    outbox: Vec<OutboxRecord>,
    healed: BTreeMap<GroupId, u64>,
    counters: BTreeMap<(GroupId, DeviceAddr), u64>,
    log_roots: BTreeMap<u64, KeptRoot>,
    /// Epochs whose vouched root was compared with the log.
    checked_roots: BTreeSet<u64>,
    /// Since when, when last counted, and how many times the server has not answered for a
    /// vouched root, by epoch.
    unanswered_roots: BTreeMap<u64, (u64, u64, u64)>,
    logged_lists: BTreeMap<Username, (u64, Vec<u8>)>,
    mls: HashMap<Vec<u8>, Vec<u8>>,
}

/// An in-memory store.
pub struct MemoryStore {
    crypto: CryptoProvider,
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Result<Self, StoreError> {
        Ok(MemoryStore {
            crypto: CryptoProvider::new()?,
            state: Mutex::new(State::default()),
        })
    }
}

/// An open transaction: the lock, and the copy it changes.
pub struct MemoryTx<'a> {
    crypto: &'a CryptoProvider,
    work: RefCell<State>,
    mls: MemoryStorage,
}

/// openmls over a [`MemoryTx`].
pub struct MemoryMls<'a> {
    crypto: &'a CryptoProvider,
    storage: &'a MemoryStorage,
}

impl OpenMlsProvider for MemoryMls<'_> {
    type CryptoProvider = CryptoProvider;
    type RandProvider = CryptoProvider;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking transaction never wrote back its copy: what is stored is consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn mls_values(s: &MemoryStorage) -> HashMap<Vec<u8>, Vec<u8>> {
    s.values
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

impl ClientStore for MemoryStore {
    type Tx<'a> = MemoryTx<'a>;

    fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self::Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = lock(&self.state);
        let work = guard.clone();
        let tx = MemoryTx {
            crypto: &self.crypto,
            mls: MemoryStorage {
                values: RwLock::new(work.mls.clone()),
            },
            work: RefCell::new(work),
        };
        let value = f(&tx)?;
        let mut done = tx.work.into_inner();
        done.mls = mls_values(&tx.mls);
        *guard = done;
        Ok(value)
    }

    fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self::Tx<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let work = lock(&self.state).clone();
        let tx = MemoryTx {
            crypto: &self.crypto,
            mls: MemoryStorage {
                values: RwLock::new(work.mls.clone()),
            },
            work: RefCell::new(work),
        };
        f(&tx)
    }

    fn make_durable(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
}

impl StoreTx for MemoryTx<'_> {
    type MlsError = openmls_memory_storage::MemoryStorageError;
    type Mls<'a>
        = MemoryMls<'a>
    where
        Self: 'a;

    fn mls(&self) -> MemoryMls<'_> {
        MemoryMls {
            crypto: self.crypto,
            storage: &self.mls,
        }
    }

    fn savepoint<T, E: From<StoreError>>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let before = (self.work.borrow().clone(), mls_values(&self.mls));
        let result = f();
        if result.is_err() {
            *self.work.borrow_mut() = before.0;
            *self
                .mls
                .values
                .write()
                .unwrap_or_else(PoisonError::into_inner) = before.1;
        }
        result
    }

    fn data_version(&self) -> Result<i64, StoreError> {
        // Only this process uses a memory store.
        Ok(0)
    }

    fn setting(&self, key: Setting) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.work.borrow().settings.get(&key).cloned())
    }

    fn set_setting(&self, key: Setting, value: &[u8]) -> Result<(), StoreError> {
        self.work.borrow_mut().settings.insert(key, value.to_vec());
        Ok(())
    }

    fn conversation(&self, group: &GroupId) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self
            .work
            .borrow()
            .conversations
            .iter()
            .find(|c| &c.group == group)
            .cloned())
    }

    fn conversations(&self) -> Result<Vec<ConversationRecord>, StoreError> {
        let mut all = self.work.borrow().conversations.clone();
        all.sort_by_key(|c| c.created_at);
        Ok(all)
    }

    fn upsert_conversation(&self, c: &ConversationRecord) -> Result<(), StoreError> {
        let mut work = self.work.borrow_mut();
        match work.conversations.iter_mut().find(|o| o.group == c.group) {
            Some(existing) => {
                existing.active = true;
                existing.announced = false;
            }
            None => work.conversations.push(c.clone()),
        }
        Ok(())
    }

    fn describe_conversation(
        &self,
        group: &GroupId,
        name: Option<&str>,
        peer: Option<&Username>,
    ) -> Result<(), StoreError> {
        if let Some(c) = self
            .work
            .borrow_mut()
            .conversations
            .iter_mut()
            .find(|c| &c.group == group)
        {
            c.name = name.map(str::to_owned);
            c.peer = peer.cloned();
            c.announced = true;
        }
        Ok(())
    }

    fn deactivate_conversation(&self, group: &GroupId) -> Result<(), StoreError> {
        if let Some(c) = self
            .work
            .borrow_mut()
            .conversations
            .iter_mut()
            .find(|c| &c.group == group)
        {
            c.active = false;
        }
        Ok(())
    }

    fn unhealed_since(&self, cutoff: u64) -> Result<Vec<GroupId>, StoreError> {
        let work = self.work.borrow();
        let mut due: Vec<&ConversationRecord> = work
            .conversations
            .iter()
            .filter(|c| {
                c.active && work.healed.get(&c.group).copied().unwrap_or(c.created_at) <= cutoff
            })
            .collect();
        due.sort_by_key(|c| c.created_at);
        Ok(due.into_iter().map(|c| c.group.clone()).collect())
    }

    fn set_healed_at(&self, group: &GroupId, at: u64) -> Result<(), StoreError> {
        let mut work = self.work.borrow_mut();
        if work.conversations.iter().any(|c| &c.group == group) {
            work.healed.insert(group.clone(), at);
        }
        Ok(())
    }

    fn counter(&self, group: &GroupId, sender: &DeviceAddr) -> Result<Option<u64>, StoreError> {
        let key = (group.clone(), sender.clone());
        Ok(self.work.borrow().counters.get(&key).copied())
    }

    fn set_counter(
        &self,
        group: &GroupId,
        sender: &DeviceAddr,
        counter: u64,
    ) -> Result<(), StoreError> {
        let key = (group.clone(), sender.clone());
        self.work.borrow_mut().counters.insert(key, counter);
        Ok(())
    }

    fn forget_counters(&self, group: &GroupId, keep: &DeviceAddr) -> Result<(), StoreError> {
        self.work
            .borrow_mut()
            .counters
            .retain(|(g, sender), _| g != group || sender == keep);
        Ok(())
    }

    fn logged_list(&self, user: &Username) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.work.borrow().logged_lists.get(user).cloned())
    }

    fn set_logged_list(&self, user: &Username, epoch: u64, body: &[u8]) -> Result<(), StoreError> {
        let list = (epoch, body.to_vec());
        self.work
            .borrow_mut()
            .logged_lists
            .insert(user.clone(), list);
        Ok(())
    }

    fn log_root(&self, epoch: u64) -> Result<Option<KeptRoot>, StoreError> {
        Ok(self.work.borrow().log_roots.get(&epoch).cloned())
    }

    fn put_log_root(
        &self,
        epoch: u64,
        root: &[u8; 32],
        vouched_by: Option<&DeviceAddr>,
    ) -> Result<(), StoreError> {
        let mut work = self.work.borrow_mut();
        let new = KeptRoot {
            root: *root,
            vouched_by: vouched_by.cloned(),
        };
        match work.log_roots.get(&epoch) {
            Some(kept) if kept.vouched_by.is_none() || vouched_by.is_some() => {}
            _ => {
                work.log_roots.insert(epoch, new);
                work.checked_roots.remove(&epoch);
                work.unanswered_roots.remove(&epoch);
            }
        }
        // The newest of each kind: roots members vouched for cannot push out verified ones.
        for vouched in [false, true] {
            let of_kind: Vec<u64> = work
                .log_roots
                .iter()
                .filter(|(_, k)| k.vouched_by.is_some() == vouched)
                .map(|(e, _)| *e)
                .collect();
            let excess = of_kind.len().saturating_sub(LOG_ROOTS_KEPT);
            for e in of_kind.iter().take(excess) {
                work.log_roots.remove(e);
                work.checked_roots.remove(e);
                work.unanswered_roots.remove(e);
            }
        }
        Ok(())
    }

    fn unchecked_vouched_roots(
        &self,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, KeptRoot)>, StoreError> {
        let work = self.work.borrow();
        let mut unchecked: Vec<(u64, KeptRoot)> = work
            .log_roots
            .range(..=up_to)
            .filter(|(e, k)| k.vouched_by.is_some() && !work.checked_roots.contains(e))
            .map(|(e, k)| (*e, k.clone()))
            .collect();
        // Stable: oldest first within each kind.
        unchecked.sort_by_key(|(e, _)| work.unanswered_roots.contains_key(e));
        unchecked.truncate(limit);
        Ok(unchecked)
    }

    fn mark_vouched_root_checked(&self, epoch: u64) -> Result<(), StoreError> {
        let mut work = self.work.borrow_mut();
        if work.log_roots.contains_key(&epoch) {
            work.checked_roots.insert(epoch);
        }
        Ok(())
    }

    fn vouched_root_unanswered(
        &self,
        epoch: u64,
        now: u64,
        gap: u64,
    ) -> Result<(u64, u64), StoreError> {
        let mut work = self.work.borrow_mut();
        if !work.log_roots.contains_key(&epoch) {
            return Ok((now, 1));
        }
        let (since, last, tries) = work.unanswered_roots.entry(epoch).or_insert((now, now, 0));
        if *tries == 0 || now.saturating_sub(*last) >= gap {
            *tries = tries.saturating_add(1);
            *last = now;
        }
        Ok((*since, *tries))
    }

    fn add_history(&self, entry: &HistoryRecord) -> Result<bool, StoreError> {
        let mut work = self.work.borrow_mut();
        if work.history.iter().any(|(_, e, _)| e.id == entry.id) {
            return Ok(false);
        }
        let position = work
            .history
            .last()
            .map_or(1, |(p, _, _)| p.saturating_add(1));
        work.history.push((position, entry.clone(), entry.outgoing));
        Ok(true)
    }

    fn unshown(&self, which: Unshown) -> Result<Vec<UnshownEntry>, StoreError> {
        let work = self.work.borrow();
        Ok(work
            .history
            .iter()
            .filter(|(_, e, shown)| {
                !shown && (which == Unshown::All || matches!(e.item, HistoryItem::Security { .. }))
            })
            .map(|(position, e, _)| {
                let c = e
                    .group
                    .as_ref()
                    .and_then(|g| work.conversations.iter().find(|c| &c.group == g));
                UnshownEntry {
                    position: *position,
                    record: e.clone(),
                    group_name: c.and_then(|c| c.name.clone()),
                    peer: c.and_then(|c| c.peer.as_ref().map(Username::to_string)),
                }
            })
            .collect())
    }

    fn history(&self) -> Result<Vec<HistoryRecord>, StoreError> {
        Ok(self
            .work
            .borrow()
            .history
            .iter()
            .map(|(_, e, _)| e.clone())
            .collect())
    }

    fn mark_shown(&self, position: i64) -> Result<(), StoreError> {
        for (p, _, shown) in &mut self.work.borrow_mut().history {
            if *p <= position {
                *shown = true;
            }
        }
        Ok(())
    }

    fn is_processed(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.work.borrow().processed.contains(&id))
    }

    fn mark_processed(&self, id: u64) -> Result<(), StoreError> {
        self.work.borrow_mut().processed.insert(id);
        Ok(())
    }

    fn contact(&self, user: &Username) -> Result<Option<Contact>, StoreError> {
        Ok(self.work.borrow().contacts.get(user).cloned())
    }

    fn contacts(&self) -> Result<Vec<(Username, Contact)>, StoreError> {
        Ok(self
            .work
            .borrow()
            .contacts
            .iter()
            .map(|(u, c)| (u.clone(), c.clone()))
            .collect())
    }

    fn pin_identity(&self, user: &Username, key: &[u8], _at: u64) -> Result<(), StoreError> {
        self.work
            .borrow_mut()
            .contacts
            .entry(user.clone())
            .or_insert_with(|| Contact {
                identity_key: key.to_vec(),
                verified: false,
            });
        Ok(())
    }

    fn replace_identity(&self, user: &Username, key: &[u8], _at: u64) -> Result<(), StoreError> {
        self.work.borrow_mut().contacts.insert(
            user.clone(),
            Contact {
                identity_key: key.to_vec(),
                verified: false,
            },
        );
        Ok(())
    }

    fn mark_verified(&self, user: &Username, key: &[u8]) -> Result<bool, StoreError> {
        let mut work = self.work.borrow_mut();
        match work.contacts.get_mut(user) {
            Some(c) if c.identity_key == key => {
                c.verified = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn put_outbox(&self, entry: &OutboxRecord) -> Result<(), StoreError> {
        self.work.borrow_mut().outbox.push(entry.clone());
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut all = self.work.borrow().outbox.clone();
        // Stable: entries made in the same second stay in the order they were put.
        all.sort_by_key(|e| e.created_at);
        Ok(all
            .into_iter()
            .map(|record| OutboxEntry::Ready(Box::new(record)))
            .collect())
    }

    fn remove_outbox(&self, client_id: &str) -> Result<Option<u64>, StoreError> {
        let mut work = self.work.borrow_mut();
        let at = work.outbox.iter().position(|e| e.client_id == client_id);
        Ok(at.map(|i| work.outbox.remove(i).created_at))
    }
}
