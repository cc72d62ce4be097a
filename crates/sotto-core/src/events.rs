//! What happens in a conversation besides text, as data: membership changes, descriptions,
//! notices. The words shown for them are chosen by whoever displays them (`sotto-client`),
//! never stored.

use serde::{Deserialize, Serialize};
use sotto_proto::Username;

/// Something that happened, for the history. Its `Debug` leaves out names and reasons.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// `by` added `user` (with all of its devices).
    Added {
        /// Who committed.
        by: Username,
        /// Who was added.
        user: Username,
    },
    /// `by` removed `user`.
    Removed {
        /// Who committed.
        by: Username,
        /// Who was removed.
        user: Username,
    },
    /// `by` added a device of `user`, who was a member already (a device linked).
    DeviceAdded {
        /// Who committed.
        by: Username,
        /// Whose device.
        user: Username,
        /// The device's id.
        device: String,
        /// Its name in `user`'s signed device list.
        name: String,
    },
    /// `by` removed a device of `user`, who stays a member.
    DeviceRemoved {
        /// Who committed.
        by: Username,
        /// Whose device.
        user: Username,
        /// The device's id.
        device: String,
    },
    /// The first description of a group this device was added to: `by` added it.
    Joined {
        /// Who added this device.
        by: Username,
    },
    /// `by` renamed the group.
    Renamed {
        /// Who.
        by: Username,
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// `by` described a conversation of more than two people as one-to-one; ignored.
    NotOneToOne {
        /// Who.
        by: Username,
        /// How many people it holds.
        people: usize,
    },
    /// `by` tried to turn a group into a one-to-one conversation; ignored.
    GroupStaysGroup {
        /// Who.
        by: Username,
    },
    /// `by` tried to name a one-to-one conversation; ignored.
    OneToOneStaysUnnamed {
        /// Who.
        by: Username,
        /// The name tried.
        name: String,
    },
    /// The server dropped messages for this device before it fetched them.
    Dropped {
        /// How many.
        count: u64,
    },
    /// Messages a device of `from` sent to this conversation never arrived: its counter
    /// skipped `count` of them.
    Missing {
        /// Whose device.
        from: Username,
        /// The device's id.
        device: String,
        /// How many messages are missing.
        count: u64,
    },
    /// A message the server says came from `from` could not be read.
    Unreadable {
        /// The server's word on who sent it.
        from: Username,
        /// Why it could not be read.
        reason: String,
    },
    /// Something this device sent was refused for good.
    Undelivered {
        /// Why.
        reason: String,
    },
    /// A removal that found nobody to remove.
    NobodyToRemove,
    /// An event an earlier version stored as text.
    Earlier {
        /// Its text.
        text: String,
    },
    /// An event this version cannot read: stored by a later version, or damaged.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Added { by, user } => write!(f, "Added({by} added {user})"),
            Event::Removed { by, user } => write!(f, "Removed({by} removed {user})"),
            Event::DeviceAdded { by, user, .. } => write!(f, "DeviceAdded({by}: {user})"),
            Event::DeviceRemoved { by, user, .. } => write!(f, "DeviceRemoved({by}: {user})"),
            Event::Joined { by } => write!(f, "Joined(by {by})"),
            Event::Renamed { by, .. } => write!(f, "Renamed(by {by})"),
            Event::NotOneToOne { by, people } => write!(f, "NotOneToOne({by}, {people})"),
            Event::GroupStaysGroup { by } => write!(f, "GroupStaysGroup({by})"),
            Event::OneToOneStaysUnnamed { by, .. } => write!(f, "OneToOneStaysUnnamed({by})"),
            Event::Dropped { count } => write!(f, "Dropped({count})"),
            Event::Missing { from, count, .. } => write!(f, "Missing({count} from {from})"),
            Event::Unreadable { from, .. } => write!(f, "Unreadable(from {from})"),
            Event::Undelivered { .. } => f.write_str("Undelivered"),
            Event::NobodyToRemove => f.write_str("NobodyToRemove"),
            Event::Earlier { text } => write!(f, "Earlier({} bytes)", text.len()),
            Event::Unknown => f.write_str("Unknown"),
        }
    }
}

/// The users a commit adds and removes, kept so that a commit that lost its epoch can be
/// recomputed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    /// Users to add, with all of their devices.
    pub add: Vec<Username>,
    /// Users to remove.
    pub remove: Vec<Username>,
    /// Single devices to add (a device linked to an account already in the group), each
    /// with the KeyPackage to add it with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_devices: Vec<NewDevice>,
    /// Single devices to remove (a device removed from its account), whose users stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_devices: Vec<sotto_proto::DeviceAddr>,
    /// Whether to give this device's leaf fresh keys (post-compromise healing), when nothing
    /// else changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub heal: bool,
}

/// A device to add on its own, with its KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    /// The device.
    pub addr: sotto_proto::DeviceAddr,
    /// Its KeyPackage (an RFC 9420 `MLSMessage`).
    pub key_package: sotto_proto::Bytes,
}
