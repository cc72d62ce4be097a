//! An account's device list, signed by its identity key, and the update from one revision
//! to the next that links or removes devices.
//!
//! The signature covers the exact body bytes that travel, so the encoding needs no
//! canonical form: a verifier checks the signature over the bytes and only then parses them.

use crate::api::check_own_key_packages;
use crate::{Bytes, DeviceAddr, DeviceId, ProtoError, Username, limits};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Format version of [`DeviceList`] bodies; bump only with a migration path.
pub const DEVICE_LIST_VERSION: u32 = 1;

/// Domain separation prefix of a device list signature.
pub const SIGNING_CONTEXT: &[u8] = b"sotto-device-list-v1\0";

/// One device in an account's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device.
    pub id: DeviceId,
    /// Its MLS signature public key (Ed25519, 32 bytes); also its authentication key.
    pub signature_key: Bytes,
    /// A human name such as "laptop".
    pub name: String,
    /// When it was added, seconds since the Unix epoch.
    pub added_at: u64,
}

/// The set of devices of one account at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Format version; must be [`DEVICE_LIST_VERSION`].
    pub version: u32,
    /// The account.
    pub user: Username,
    /// Grows by one with every change.
    pub revision: u64,
    /// The key-transparency value ([`crate::kt::device_list_value`]) of the list this one
    /// replaces; absent in revision 1. A rollback or a fork shows as a broken chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Bytes>,
    /// The devices, at least one.
    pub devices: Vec<DeviceEntry>,
}

impl DeviceList {
    /// The bytes that get signed and sent.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The bytes an identity key signs for `body`.
    pub fn signing_input(body: &[u8]) -> Vec<u8> {
        [SIGNING_CONTEXT, body].concat()
    }

    /// The entry of `device`, if listed.
    pub fn device(&self, device: DeviceId) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.id == device)
    }

    /// The list that follows `signed` (this list's signed form) with `devices`: the next
    /// revision, chained to it.
    pub fn next(&self, signed: &SignedDeviceListIn, devices: Vec<DeviceEntry>) -> DeviceList {
        DeviceList {
            version: DEVICE_LIST_VERSION,
            user: self.user.clone(),
            revision: self.revision.saturating_add(1),
            previous: Some(crate::kt::device_list_value(signed).to_vec().into()),
            devices,
        }
    }

    /// Whether this list directly follows the list `signed` (whose parsed form is `before`).
    pub fn follows(&self, before: &DeviceList, signed: &SignedDeviceListIn) -> bool {
        self.user == before.user
            && Some(self.revision) == before.revision.checked_add(1)
            && self.previous.as_ref().map(Bytes::as_slice)
                == Some(&crate::kt::device_list_value(signed)[..])
    }

    fn check(self) -> Result<Self, ProtoError> {
        if self.version != DEVICE_LIST_VERSION {
            return Err(ProtoError::UnsupportedVersion(self.version));
        }
        if self.revision == 0 || (self.revision == 1) != self.previous.is_none() {
            return Err(ProtoError::Invalid(
                "device list (revision 1 has no previous list, every later one has)",
            ));
        }
        if self.previous.as_ref().is_some_and(|p| p.len() != 32) {
            return Err(ProtoError::Invalid("device list previous (32 bytes)"));
        }
        if self.devices.is_empty() || self.devices.len() > limits::MAX_DEVICES {
            return Err(ProtoError::Invalid("device list (1 to 64 devices)"));
        }
        for (i, d) in self.devices.iter().enumerate() {
            // A key that is not an Ed25519 point could never sign in; refuse it here rather
            // than fail later when it is used.
            parse_verifying_key(d.signature_key.as_slice())
                .map_err(|_| ProtoError::Invalid("device signature key (an Ed25519 key)"))?;
            check_device_name(&d.name)?;
            if self.devices.iter().take(i).any(|o| o.id == d.id) {
                return Err(ProtoError::Invalid("device list (duplicate device id)"));
            }
        }
        Ok(self)
    }
}

/// Whether `c` may appear in a name shown to people: no control characters and no
/// invisible or layout-changing characters (bidi overrides and isolates, zero-width and
/// filler characters, line separators, tags), which could make one device look like another
/// or disturb the text around it.
pub fn is_displayable(c: char) -> bool {
    !(c.is_control()
        || matches!(c,
            '\u{00AD}'                 // soft hyphen
            | '\u{034F}'               // combining grapheme joiner
            | '\u{061C}'               // Arabic letter mark
            | '\u{115F}' | '\u{1160}'  // Hangul fillers
            | '\u{17B4}' | '\u{17B5}'  // Khmer inherent vowels (invisible)
            | '\u{180B}'..='\u{180F}' // Mongolian selectors and vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}' // line/paragraph separators, bidi embeddings/overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates
            | '\u{3164}' | '\u{FFA0}'  // Hangul fillers
            | '\u{FEFF}'               // zero-width no-break space
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tags
        ))
}

/// Checks a device name: 1 to [`limits::MAX_DEVICE_NAME`] displayable characters.
pub fn check_device_name(name: &str) -> Result<(), ProtoError> {
    let count = name.chars().count();
    if count > limits::MAX_DEVICE_NAME {
        return Err(ProtoError::TooLarge("device name"));
    }
    if name.trim().is_empty() || !name.chars().all(is_displayable) {
        return Err(ProtoError::Invalid(
            "device name (1 to 64 characters, not all spaces, no control or invisible characters)",
        ));
    }
    Ok(())
}

/// A signed device list as received: nothing in it is trusted yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedDeviceListIn {
    /// [`DeviceList::encode`] output.
    pub body: Bytes,
    /// Ed25519 signature by the identity key over [`DeviceList::signing_input`].
    pub signature: Bytes,
}

/// A device list whose signature verified and whose contents passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDeviceList {
    list: DeviceList,
    signed: SignedDeviceListIn,
}

impl VerifiedDeviceList {
    /// The list.
    pub fn list(&self) -> &DeviceList {
        &self.list
    }

    /// The signed form, to store or forward unchanged.
    pub fn signed(&self) -> &SignedDeviceListIn {
        &self.signed
    }
}

/// Parses an Ed25519 public key.
pub fn parse_verifying_key(bytes: &[u8]) -> Result<VerifyingKey, ProtoError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ProtoError::Invalid("public key (32 bytes)"))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| ProtoError::Invalid("public key"))
}

impl SignedDeviceListIn {
    /// Verifies the signature with `identity_key`, then parses and checks the body.
    pub fn verify(self, identity_key: &VerifyingKey) -> Result<VerifiedDeviceList, ProtoError> {
        if self.body.len() > limits::MAX_DEVICE_LIST {
            return Err(ProtoError::TooLarge("device list"));
        }
        let sig = Signature::from_slice(self.signature.as_slice())
            .map_err(|_| ProtoError::Invalid("signature (64 bytes)"))?;
        identity_key
            .verify_strict(&DeviceList::signing_input(self.body.as_slice()), &sig)
            .map_err(|_| ProtoError::BadSignature)?;
        let list: DeviceList = serde_json::from_slice(self.body.as_slice())
            .map_err(|_| ProtoError::Invalid("device list body"))?;
        Ok(VerifiedDeviceList {
            list: list.check()?,
            signed: self,
        })
    }
}

/// `POST /v1/devices`: a device of the account replaces its device list with the next
/// revision, adding at most one device (with that device's KeyPackages) or removing some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceListUpdate {
    /// The new list, signed by the account's identity key.
    pub device_list: SignedDeviceListIn,
    /// One-time KeyPackages of the device added, if one is.
    #[serde(default)]
    pub key_packages: Vec<Bytes>,
    /// The last-resort KeyPackage of the device added, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<Bytes>,
}

/// A [`DeviceListUpdate`] that passed every check against the account's current list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidDeviceListUpdate {
    /// The new list.
    pub device_list: VerifiedDeviceList,
    /// The revision it replaces.
    pub replaces: u64,
    /// The device added, with its one-time KeyPackages and its last-resort one.
    pub added: Option<(DeviceAddr, Vec<Vec<u8>>, Vec<u8>)>,
    /// The devices removed.
    pub removed: Vec<DeviceAddr>,
}

impl DeviceListUpdate {
    /// Checks the update against the account's identity key and current list (`current`,
    /// signed as `current_signed`): signed by the same key, the next revision chained to
    /// the current one, at most one device added (with its KeyPackages), and no device
    /// keeping its id with another key.
    pub fn validate(
        self,
        identity_key: &[u8],
        current_signed: &SignedDeviceListIn,
        current: &DeviceList,
    ) -> Result<ValidDeviceListUpdate, ProtoError> {
        let key = parse_verifying_key(identity_key)?;
        let list = self.device_list.verify(&key)?;
        let new = list.list();
        if !new.follows(current, current_signed) {
            return Err(ProtoError::Invalid(
                "device list (must be the next revision of the current list, naming it)",
            ));
        }
        let mut added = new
            .devices
            .iter()
            .filter(|d| current.device(d.id).is_none());
        let first = added.next();
        if added.next().is_some() {
            return Err(ProtoError::Invalid(
                "device list (adds more than one device)",
            ));
        }
        for d in &new.devices {
            if current
                .device(d.id)
                .is_some_and(|old| old.signature_key != d.signature_key)
            {
                return Err(ProtoError::Invalid(
                    "device list (a device keeps its id with another key)",
                ));
            }
        }
        let added = match (first, self.last_resort) {
            (Some(d), Some(last_resort)) => {
                let addr = DeviceAddr {
                    user: new.user.clone(),
                    device: d.id,
                };
                let mut kps = check_own_key_packages(
                    self.key_packages,
                    Some(last_resort),
                    &addr,
                    d.signature_key.as_slice(),
                )?;
                let last = kps.pop().ok_or(ProtoError::Invalid("last_resort"))?;
                Some((addr, kps, last))
            }
            (Some(_), None) => {
                return Err(ProtoError::Invalid(
                    "last_resort (a device added needs its KeyPackages)",
                ));
            }
            (None, _) if !self.key_packages.is_empty() => {
                return Err(ProtoError::Invalid("key_packages (no device is added)"));
            }
            (None, _) => None,
        };
        let removed = current
            .devices
            .iter()
            .filter(|d| new.device(d.id).is_none())
            .map(|d| DeviceAddr {
                user: new.user.clone(),
                device: d.id,
            })
            .collect();
        Ok(ValidDeviceListUpdate {
            replaces: current.revision,
            device_list: list,
            added,
            removed,
        })
    }
}
