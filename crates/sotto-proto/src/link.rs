//! Linking a device: the offer a new device makes, the one-time code that names it, the
//! rendezvous through the server, and the update of an account's device list.
//!
//! The new device posts an offer (its device entry, an HPKE public key, its KeyPackages) and
//! shows a code: the rendezvous id and a fingerprint of the offer's exact bytes. An approving
//! device fetches the offer by id and accepts it only if the bytes match the fingerprint, so a
//! server relaying the exchange cannot put its own key in. What the approver sends back is
//! sealed to that key; the server only stores it until the new device picks it up.

use crate::api::check_own_key_packages;
use crate::device_list::{DeviceEntry, SignedDeviceListIn, check_device_name, parse_verifying_key};
use crate::{Bytes, DeviceAddr, ProtoError, Username, limits};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version of [`LinkOffer`].
pub const LINK_VERSION: u32 = 1;
/// How long a code works, in seconds.
pub const LINK_TTL: u64 = 300;
/// Bytes of the rendezvous id.
pub const LINK_ID_LEN: usize = 6;
/// Bytes of the offer's fingerprint in a code (112 bits).
pub const FINGERPRINT_LEN: usize = 14;
/// Largest offer (a full batch of the largest KeyPackages, with room for the rest).
pub const MAX_OFFER: usize = limits::MAX_KEY_PACKAGE_BATCH * limits::MAX_KEY_PACKAGE + 16 * 1024;
/// Largest sealed part of an answer (the identity key, the device list, the contacts).
pub const MAX_SEALED: usize = 2 * 1024 * 1024;
/// Largest history archive: with the sealed part, in base64, within the server's body limit.
pub const MAX_ARCHIVE: usize = (limits::MAX_BODY - 64 * 1024) * 3 / 4 - MAX_SEALED;
/// Domain separation prefix of an offer's fingerprint.
const FINGERPRINT_CONTEXT: &[u8] = b"sotto-link-offer-v1\0";

/// What a new device offers: who it is and how to reach it secretly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOffer {
    /// Must be [`LINK_VERSION`].
    pub version: u32,
    /// The account it asks to join.
    pub user: Username,
    /// Its entry for the account's device list.
    pub device: DeviceEntry,
    /// The MLS ciphersuite its KeyPackages are for.
    pub ciphersuite: u16,
    /// Its one-time HPKE public key (X25519, 32 bytes): the answer is sealed to it.
    pub hpke_key: Bytes,
    /// One-time KeyPackages: the approver adds the device to conversations with some, and
    /// gives the rest to the server.
    pub key_packages: Vec<Bytes>,
    /// Its last-resort KeyPackage.
    pub last_resort: Bytes,
}

impl LinkOffer {
    /// The exact bytes that travel (and that the code's fingerprint covers).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks an offer's bytes: its size, version, device entry, key, and that
    /// every KeyPackage names the device and its key.
    pub fn parse(bytes: &[u8]) -> Result<LinkOffer, ProtoError> {
        if bytes.len() > MAX_OFFER {
            return Err(ProtoError::TooLarge("link offer"));
        }
        let offer: LinkOffer =
            serde_json::from_slice(bytes).map_err(|_| ProtoError::Invalid("link offer"))?;
        if offer.version != LINK_VERSION {
            return Err(ProtoError::UnsupportedVersion(offer.version));
        }
        parse_verifying_key(offer.device.signature_key.as_slice())
            .map_err(|_| ProtoError::Invalid("device signature key (an Ed25519 key)"))?;
        check_device_name(&offer.device.name)?;
        if offer.hpke_key.len() != 32 {
            return Err(ProtoError::Invalid("hpke_key (32 bytes)"));
        }
        check_own_key_packages(
            offer.key_packages.clone(),
            Some(offer.last_resort.clone()),
            &offer.addr(),
            offer.device.signature_key.as_slice(),
        )?;
        Ok(offer)
    }

    /// The device it would be.
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr {
            user: self.user.clone(),
            device: self.device.id,
        }
    }
}

/// SHA-256 of an offer's bytes, with Sotto's context: a code carries its first
/// [`FINGERPRINT_LEN`] bytes, and the answer's encryption is bound to all of it.
pub fn offer_hash(offer: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(FINGERPRINT_CONTEXT)
        .chain_update(offer)
        .finalize()
        .into()
}

/// A rendezvous id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub [u8; LINK_ID_LEN]);

impl LinkId {
    /// Parses the hex form used in paths.
    pub fn parse(s: &str) -> Result<LinkId, ProtoError> {
        let raw = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| ProtoError::Invalid("link id (12 hex digits)"))?;
        raw.try_into()
            .map(LinkId)
            .map_err(|_| ProtoError::Invalid("link id (12 hex digits)"))
    }
}

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

/// The code a new device shows: the rendezvous id and the fingerprint of its offer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkCode {
    /// Where the offer waits.
    pub id: LinkId,
    /// The first bytes of [`offer_hash`] of the offer.
    pub fingerprint: [u8; FINGERPRINT_LEN],
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkCode({})", self.id)
    }
}

impl LinkCode {
    /// The code of the offer `offer` waiting at `id`.
    pub fn new(id: LinkId, offer: &[u8]) -> LinkCode {
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(offer_hash(offer).get(..FINGERPRINT_LEN).unwrap_or(&[]));
        LinkCode { id, fingerprint }
    }

    /// Whether `offer` is the offer this code names.
    pub fn matches(&self, offer: &[u8]) -> bool {
        *self == LinkCode::new(self.id, offer)
    }

    /// The typeable form: 32 base32 characters in groups of four (`ABCD-EFGH-…`).
    pub fn encode(&self) -> String {
        let raw = [&self.id.0[..], &self.fingerprint[..]].concat();
        let text = data_encoding::BASE32_NOPAD.encode(&raw);
        let groups: Vec<&str> = text
            .as_bytes()
            .chunks(4)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        groups.join("-")
    }

    /// Parses a code as typed: case, spaces and dashes do not matter.
    pub fn parse(s: &str) -> Result<LinkCode, ProtoError> {
        let bad =
            || ProtoError::Invalid("link code (32 letters and digits, as the new device shows it)");
        let clean: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if clean.len() != 32 {
            return Err(bad());
        }
        let raw = data_encoding::BASE32_NOPAD
            .decode(clean.as_bytes())
            .map_err(|_| bad())?;
        let (id, fp) = raw.split_at_checked(LINK_ID_LEN).ok_or_else(bad)?;
        Ok(LinkCode {
            id: LinkId(id.try_into().map_err(|_| bad())?),
            fingerprint: fp.try_into().map_err(|_| bad())?,
        })
    }
}

/// `POST /v1/links`: a new device leaves its offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLinkRequest {
    /// [`LinkOffer::encode`] output.
    pub offer: Bytes,
}

/// The rendezvous made for an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateLinkResponse {
    /// The rendezvous id, hex.
    pub id: String,
    /// What picks the answer up (32 bytes): only the new device has it.
    pub secret: Bytes,
    /// When the rendezvous ends, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// `GET /v1/links/{id}`: the offer, for a device of the account it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkOfferResponse {
    /// The offer's bytes, as the new device sent them.
    pub offer: Bytes,
    /// When the rendezvous ends.
    pub expires_at: u64,
}

/// `PUT /v1/links/{id}`: the approver's answer, which only the new device can open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkAnswer {
    /// The account's secrets, sealed with HPKE to the offer's key (at most [`MAX_SEALED`]).
    pub sealed: Bytes,
    /// The history, encrypted under a key inside `sealed` (empty: none; at most
    /// [`MAX_ARCHIVE`]).
    pub archive: Bytes,
}

impl LinkAnswer {
    /// Checks the sizes.
    pub fn validate(self) -> Result<LinkAnswer, ProtoError> {
        if self.sealed.len() > MAX_SEALED {
            return Err(ProtoError::TooLarge("sealed"));
        }
        if self.archive.len() > MAX_ARCHIVE {
            return Err(ProtoError::TooLarge("archive"));
        }
        Ok(self)
    }
}

/// `POST /v1/links/{id}/pickup`: the new device asks for the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupRequest {
    /// The rendezvous secret.
    pub secret: Bytes,
}

/// The answer, once there is one; the server then forgets the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickupResponse {
    /// The answer, or none yet.
    pub answer: Option<LinkAnswer>,
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
    pub device_list: crate::device_list::VerifiedDeviceList,
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
        current: &crate::device_list::DeviceList,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_whatever_its_case_spaces_and_dashes() {
        let code = LinkCode::new(LinkId([1, 2, 3, 4, 5, 6]), b"offer");
        let text = code.encode();
        assert_eq!(text.len(), 32 + 7);
        assert_eq!(LinkCode::parse(&text).unwrap(), code);
        let typed = text.to_lowercase().replace('-', " ");
        assert_eq!(LinkCode::parse(&typed).unwrap(), code);
        assert!(code.matches(b"offer"));
        assert!(!code.matches(b"offer "));
        assert!(LinkCode::parse(&text[1..]).is_err());
        assert!(LinkCode::parse("0000-0000-0000-0000-0000-0000-0000-0000").is_err());
    }

    #[test]
    fn a_link_id_round_trips_through_hex_and_refuses_anything_else() {
        let id = LinkId([0xab, 0, 1, 2, 3, 0xff]);
        assert_eq!(LinkId::parse(&id.to_string()).unwrap(), id);
        assert!(LinkId::parse("abc").is_err());
        assert!(LinkId::parse("zz0001020304").is_err());
        assert!(LinkId::parse("ab00010203ff00").is_err());
    }
}
