//! Linking a device: the offer a new device makes, the one-time code that names it, and the
//! rendezvous through the server. (The device-list update that publishes the device is in
//! [`crate::device_list`].)
//!
//! The new device posts an offer (its device entry, an HPKE public key, its KeyPackages) with
//! a MAC over its exact bytes under a secret that only the code carries, and shows the code:
//! the rendezvous id and that secret (112 bits). The server never sees the secret. An
//! approving device fetches the offer by id and accepts it only if the MAC verifies, so a
//! server relaying the exchange cannot put its own key in; what it sends back is sealed to
//! that key and MACed under the same secret, so the new device accepts only an answer from
//! someone who read the code. The server stores the answer until the new device picks it
//! up, and deletes it when the new device says it has it (or when the code expires).

use crate::api::check_own_key_packages;
use crate::device_list::{DeviceEntry, check_device_name, parse_verifying_key};
use crate::{Bytes, DeviceAddr, ProtoError, Username, limits};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Format version of [`LinkOffer`].
pub const LINK_VERSION: u32 = 1;
/// How long a code works, in seconds.
pub const LINK_TTL: u64 = 300;
/// Bytes of the rendezvous id.
pub const LINK_ID_LEN: usize = 6;
/// Bytes of the secret in a code (112 bits).
pub const SECRET_LEN: usize = 14;
/// Most one-time KeyPackages an offer carries.
pub const MAX_OFFER_KEY_PACKAGES: usize = 100;
/// Largest offer as it travels (its KeyPackages in base64, and its MAC).
pub const MAX_OFFER: usize = 512 * 1024;
/// Largest sealed part of an answer (the identity key, the device list, the contacts).
pub const MAX_SEALED: usize = 2 * 1024 * 1024;
/// Largest history archive: with the sealed part, in base64, within the server's body limit.
pub const MAX_ARCHIVE: usize = (limits::MAX_BODY - 64 * 1024) * 3 / 4 - MAX_SEALED;
/// Domain separation prefix of an offer's hash.
const OFFER_HASH_CONTEXT: &[u8] = b"sotto-link-offer-v1\0";
/// Domain separation prefix of an offer's MAC.
const OFFER_MAC_CONTEXT: &[u8] = b"sotto-link-offer-mac-v1\0";
/// Domain separation prefix of an answer's MAC.
const ANSWER_MAC_CONTEXT: &[u8] = b"sotto-link-answer-mac-v1\0";
/// Domain separation prefix of a code's check.
const CHECK_CONTEXT: &[u8] = b"sotto-link-code-v1\0";
/// Bytes of a code's check.
const CHECK_LEN: usize = 2;
/// What a code's QR code holds before the code.
pub const QR_PREFIX: &str = "sotto-link-v1:";

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
    /// The exact bytes of the offer itself (what its MAC and hash cover).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The offer as it travels: its bytes and their MAC under the code's `secret`.
    pub fn envelope(&self, secret: &[u8; SECRET_LEN]) -> Vec<u8> {
        let offer = self.encode();
        let mac = mac(secret, OFFER_MAC_CONTEXT, &offer);
        serde_json::to_vec(&OfferEnvelope {
            offer: offer.into(),
            mac: mac.into(),
        })
        .unwrap_or_default()
    }

    /// Parses and checks an offer as it travels, without its MAC (which only the code can
    /// check): its size, version, device entry, key, and that every KeyPackage names the
    /// device and its key. Returns the offer and its own bytes.
    pub fn parse(envelope: &[u8]) -> Result<(LinkOffer, Vec<u8>), ProtoError> {
        OfferEnvelope::parse(envelope)?.checked()
    }

    /// The device it would be.
    pub fn addr(&self) -> DeviceAddr {
        DeviceAddr {
            user: self.user.clone(),
            device: self.device.id,
        }
    }
}

/// An offer as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OfferEnvelope {
    /// [`LinkOffer::encode`] output.
    offer: Bytes,
    /// HMAC-SHA256 of `offer` under the code's secret.
    mac: Bytes,
}

impl OfferEnvelope {
    fn parse(bytes: &[u8]) -> Result<OfferEnvelope, ProtoError> {
        if bytes.len() > MAX_OFFER {
            return Err(ProtoError::TooLarge("link offer"));
        }
        serde_json::from_slice(bytes).map_err(|_| ProtoError::Invalid("link offer"))
    }

    fn checked(self) -> Result<(LinkOffer, Vec<u8>), ProtoError> {
        let bytes = self.offer.into_vec();
        let offer: LinkOffer =
            serde_json::from_slice(&bytes).map_err(|_| ProtoError::Invalid("link offer"))?;
        if offer.version != LINK_VERSION {
            return Err(ProtoError::UnsupportedVersion(offer.version));
        }
        parse_verifying_key(offer.device.signature_key.as_slice())
            .map_err(|_| ProtoError::Invalid("device signature key (an Ed25519 key)"))?;
        check_device_name(&offer.device.name)?;
        if offer.hpke_key.len() != 32 {
            return Err(ProtoError::Invalid("hpke_key (32 bytes)"));
        }
        if offer.key_packages.len() > MAX_OFFER_KEY_PACKAGES {
            return Err(ProtoError::TooLarge("link offer key_packages"));
        }
        check_own_key_packages(
            offer.key_packages.clone(),
            Some(offer.last_resort.clone()),
            &offer.addr(),
            offer.device.signature_key.as_slice(),
        )?;
        Ok((offer, bytes))
    }
}

/// HMAC-SHA256 of `data` under `secret`, with a context.
fn mac(secret: &[u8; SECRET_LEN], context: &[u8], data: &[u8]) -> Vec<u8> {
    hmac_of(secret, context, data)
        .finalize()
        .into_bytes()
        .to_vec()
}

fn hmac_of(secret: &[u8; SECRET_LEN], context: &[u8], data: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used, reason = "a local invariant, not input")]
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(context);
    m.update(data);
    m
}

/// Why an offer was not accepted.
#[derive(Debug)]
pub enum OfferError {
    /// It is not an offer at all, or not one this version can use.
    Malformed(ProtoError),
    /// Its MAC is not the code's: the server (or someone) replaced the offer.
    NotTheCodes,
}

/// SHA-256 of an offer's own bytes, with Sotto's context: the answer's encryption is bound
/// to it.
pub fn offer_hash(offer: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(OFFER_HASH_CONTEXT)
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

/// The code a new device shows: the rendezvous id and a secret the server never sees.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LinkCode {
    /// Where the offer waits.
    pub id: LinkId,
    /// What the offer's and the answer's MACs are keyed with.
    pub secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkCode({}, ..)", self.id)
    }
}

impl LinkCode {
    /// The offer `envelope` (as the server handed it out), if its MAC is this code's.
    /// Returns the offer and its own bytes.
    pub fn open_offer(&self, envelope: &[u8]) -> Result<(LinkOffer, Vec<u8>), OfferError> {
        let env = OfferEnvelope::parse(envelope).map_err(OfferError::Malformed)?;
        hmac_of(&self.secret, OFFER_MAC_CONTEXT, env.offer.as_slice())
            .verify_slice(env.mac.as_slice())
            .map_err(|_| OfferError::NotTheCodes)?;
        env.checked().map_err(OfferError::Malformed)
    }

    /// The MAC of an answer's sealed part.
    pub fn answer_mac(&self, sealed: &[u8]) -> Vec<u8> {
        mac(&self.secret, ANSWER_MAC_CONTEXT, sealed)
    }

    /// Whether `tag` is the MAC of the sealed part `sealed` under this code.
    pub fn answer_mac_verifies(&self, sealed: &[u8], tag: &[u8]) -> bool {
        hmac_of(&self.secret, ANSWER_MAC_CONTEXT, sealed)
            .verify_slice(tag)
            .is_ok()
    }

    /// Two bytes that catch a mistyped code before it is looked up: a typo is then the
    /// user's mistake (a usage error), and an offer whose MAC does not verify under the
    /// code stays what it is, a sign that the server swapped the offer.
    fn check(id: &LinkId, secret: &[u8]) -> [u8; CHECK_LEN] {
        let h = Sha256::new()
            .chain_update(CHECK_CONTEXT)
            .chain_update(id.0)
            .chain_update(secret)
            .finalize();
        let mut out = [0u8; CHECK_LEN];
        for (o, b) in out.iter_mut().zip(h) {
            *o = b;
        }
        out
    }

    /// The typeable form: 36 base32 characters in groups of four (`ABCD-EFGH-…`): the id,
    /// the secret and a check.
    pub fn encode(&self) -> String {
        let check = LinkCode::check(&self.id, &self.secret);
        let raw = [&self.id.0[..], &self.secret[..], &check[..]].concat();
        let text = data_encoding::BASE32_NOPAD.encode(&raw);
        let groups: Vec<&str> = text
            .as_bytes()
            .chunks(4)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        groups.join("-")
    }

    /// Parses a code as typed or scanned: case, spaces, dashes and a `sotto-link-v1:`
    /// prefix do not matter.
    pub fn parse(s: &str) -> Result<LinkCode, ProtoError> {
        let bad = || {
            ProtoError::Invalid(
                "link code (36 letters and digits, exactly as the new device shows it)",
            )
        };
        let s = s.trim();
        let s = match s.get(..QR_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(QR_PREFIX) => s.get(QR_PREFIX.len()..).unwrap_or(""),
            _ => s,
        };
        let clean: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let raw = data_encoding::BASE32_NOPAD
            .decode(clean.as_bytes())
            .map_err(|_| bad())?;
        let (id, rest) = raw.split_at_checked(LINK_ID_LEN).ok_or_else(bad)?;
        let (secret, check) = rest.split_at_checked(SECRET_LEN).ok_or_else(bad)?;
        let id = LinkId(id.try_into().map_err(|_| bad())?);
        if check != LinkCode::check(&id, secret) {
            return Err(ProtoError::Invalid(
                "link code (it does not check out: a character is wrong; compare it with the \
                 new device's screen)",
            ));
        }
        Ok(LinkCode {
            id,
            secret: secret.try_into().map_err(|_| bad())?,
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
    /// The MAC of `sealed` under the code's secret ([`LinkCode::answer_mac`]).
    pub mac: Bytes,
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
        if self.mac.len() != 32 {
            return Err(ProtoError::Invalid("mac (32 bytes)"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_whatever_its_case_spaces_and_dashes() {
        let code = LinkCode {
            id: LinkId([1, 2, 3, 4, 5, 6]),
            secret: [7; SECRET_LEN],
        };
        let text = code.encode();
        assert_eq!(text.len(), 36 + 8);
        assert_eq!(LinkCode::parse(&text).unwrap(), code);
        let typed = text.to_lowercase().replace('-', " ");
        assert_eq!(LinkCode::parse(&typed).unwrap(), code);
        let scanned = format!("{QR_PREFIX}{text}");
        assert_eq!(LinkCode::parse(&scanned).unwrap(), code);
        assert!(LinkCode::parse(&text[1..]).is_err());
        assert!(LinkCode::parse("0000-0000-0000-0000-0000-0000-0000-0000").is_err());
        // Any one character typed wrong is caught by the check.
        for i in (0..text.len()).filter(|i| text.as_bytes()[*i] != b'-') {
            let mut typo = text.clone().into_bytes();
            typo[i] = if typo[i] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(typo).unwrap();
            assert!(LinkCode::parse(&typo).is_err(), "{typo}");
        }
        // Only the code's secret makes an answer's MAC.
        let tag = code.answer_mac(b"sealed");
        assert!(code.answer_mac_verifies(b"sealed", &tag));
        assert!(!code.answer_mac_verifies(b"sealed!", &tag));
        let other = LinkCode {
            secret: [8; SECRET_LEN],
            ..code
        };
        assert!(!other.answer_mac_verifies(b"sealed", &tag));
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
