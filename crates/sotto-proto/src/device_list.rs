//! An account's device list, signed by its identity key.
//!
//! The signature covers the exact body bytes that travel, so the encoding needs no
//! canonical form: a verifier checks the signature over the bytes and only then parses them.

use crate::{Bytes, DeviceId, ProtoError, Username, limits};
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

    fn check(self) -> Result<Self, ProtoError> {
        if self.version != DEVICE_LIST_VERSION {
            return Err(ProtoError::UnsupportedVersion(self.version));
        }
        if self.devices.is_empty() || self.devices.len() > limits::MAX_DEVICES {
            return Err(ProtoError::Invalid("device list (1 to 64 devices)"));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.signature_key.len() != 32 {
                return Err(ProtoError::Invalid("device signature key (32 bytes)"));
            }
            if d.name.chars().count() > limits::MAX_DEVICE_NAME {
                return Err(ProtoError::TooLarge("device name"));
            }
            if self.devices[..i].iter().any(|o| o.id == d.id) {
                return Err(ProtoError::Invalid("device list (duplicate device id)"));
            }
        }
        Ok(self)
    }
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
