//! Device-list updates and link rendezvous in memory.

use super::{MemoryStorage, queue_for_log};
use crate::storage::{Account, Link, LinkStore, StorageError};
use async_trait::async_trait;
use sotto_proto::device_list::ValidDeviceListUpdate;
use sotto_proto::link::{LinkAnswer, LinkId};
use std::collections::VecDeque;

impl MemoryStorage {
    pub(super) async fn replace_device_list(
        &self,
        update: &ValidDeviceListUpdate,
    ) -> Result<bool, StorageError> {
        let mut s = self.state.lock().await;
        let list = update.device_list.list();
        let Some(account) = s.accounts.get(&list.user) else {
            return Ok(false);
        };
        let stored: sotto_proto::device_list::DeviceList =
            serde_json::from_slice(&account.device_list_body)
                .map_err(|_| StorageError::corrupt("device list"))?;
        if stored.revision != update.replaces {
            return Ok(false);
        }
        let signed = update.device_list.signed();
        let identity_key = account.identity_key.clone();
        s.accounts.insert(
            list.user.clone(),
            Account {
                identity_key,
                device_list_body: signed.body.as_slice().to_vec(),
                device_list_signature: signed.signature.as_slice().to_vec(),
            },
        );
        if let Some((addr, one_time, last_resort)) = &update.added {
            let key = list
                .device(addr.device)
                .map(|d| d.signature_key.as_slice().to_vec())
                .ok_or_else(|| StorageError::new("the device added is not in its list"))?;
            s.devices.insert(addr.clone(), key);
            s.key_packages.insert(
                addr.clone(),
                one_time.iter().cloned().collect::<VecDeque<_>>(),
            );
            s.last_resort.insert(addr.clone(), last_resort.clone());
        }
        for gone in &update.removed {
            s.devices.remove(gone);
            s.last_seen.remove(gone);
            s.key_packages.remove(gone);
            s.last_resort.remove(gone);
            s.tokens.retain(|_, (d, _)| d != gone);
            s.queues.remove(gone);
            for roster in s.rosters.values_mut() {
                roster.remove(gone);
            }
        }
        queue_for_log(&mut s, &list.user);
        Ok(true)
    }
}

#[async_trait]
impl LinkStore for MemoryStorage {
    async fn put_link(&self, id: &LinkId, link: &Link) -> Result<bool, StorageError> {
        let mut s = self.state.lock().await;
        if s.links.contains_key(id) {
            return Ok(false);
        }
        s.links.insert(*id, link.clone());
        Ok(true)
    }

    async fn link(&self, id: &LinkId, now: u64) -> Result<Option<Link>, StorageError> {
        let s = self.state.lock().await;
        Ok(s.links.get(id).filter(|l| l.expires_at > now).cloned())
    }

    async fn answer_link(
        &self,
        id: &LinkId,
        answer: &LinkAnswer,
        now: u64,
    ) -> Result<bool, StorageError> {
        let mut s = self.state.lock().await;
        match s.links.get_mut(id) {
            Some(l) if l.expires_at > now && l.answer.is_none() => {
                l.answer = Some(answer.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_link(&self, id: &LinkId) -> Result<(), StorageError> {
        self.state.lock().await.links.remove(id);
        Ok(())
    }
}
