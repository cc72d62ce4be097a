//! What the engine tests compare: history entries as a person sees them, and the accounts
//! and names they are made of.

use super::local::Device;
use crate::events::Event;
use crate::store::HistoryItem;
use crate::{DeviceKey, IdentityKey};
use sotto_proto::Username;
use sotto_proto::api::ValidRegistration;
use sotto_proto::device_list::parse_verifying_key;

/// One history entry as a test compares it: who the store says it is from, and what it is.
pub type Seen = (Option<Username>, HistoryItem);

/// What `device` has not been shown yet, oldest first; marks it shown.
pub fn shown(device: &Device) -> Vec<Seen> {
    let entries = device.unshown().unwrap();
    if let Some(last) = entries.last() {
        device.mark_shown(last.position).unwrap();
    }
    entries
        .into_iter()
        .map(|e| (e.record.sender.map(|(s, _)| s.user), e.record.item))
        .collect()
}

/// Syncs `device` and returns what it had not shown yet.
pub async fn recv(device: &Device) -> Vec<Seen> {
    device.sync().await.unwrap();
    shown(device)
}

pub fn user(name: &str) -> Username {
    Username::parse(name).unwrap()
}

/// Usernames, as the engine's membership calls take them.
pub fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A text from `from`.
pub fn text(from: &str, body: &str) -> Seen {
    (Some(user(from)), HistoryItem::Text(body.into()))
}

/// An event made by `by`.
pub fn event(by: &str, event: Event) -> Seen {
    (Some(user(by)), HistoryItem::Event(event))
}

/// `count` messages from `from`'s device `device` never arrived (a notice: no sender).
pub fn missing(from: &Device, count: u64) -> Seen {
    let from = from.me();
    (
        None,
        HistoryItem::Event(Event::Missing {
            from: from.user.clone(),
            device: from.device.to_string(),
            count,
        }),
    )
}

/// `by` added `who`.
pub fn added(by: &str, who: &str) -> Seen {
    event(
        by,
        Event::Added {
            by: user(by),
            user: user(who),
        },
    )
}

/// `by` removed `who`.
pub fn removed(by: &str, who: &str) -> Seen {
    event(
        by,
        Event::Removed {
            by: user(by),
            user: user(who),
        },
    )
}

/// `by` added this device to a group.
pub fn joined(by: &str) -> Seen {
    event(by, Event::Joined { by: user(by) })
}

/// An account `name` made by the operator: its own identity key and device.
pub fn forged_account(name: &str) -> ValidRegistration {
    let identity = IdentityKey::generate();
    let device = DeviceKey::generate(user(name));
    let signed = identity.sign_device_list(&device.first_device_list("laptop", 1));
    let key = parse_verifying_key(&identity.public()).unwrap();
    ValidRegistration {
        identity_key: identity.public().to_vec(),
        device_list: signed.verify(&key).unwrap(),
        key_packages: vec![b"attacker key package".to_vec()],
        last_resort: b"attacker last resort".to_vec(),
    }
}
