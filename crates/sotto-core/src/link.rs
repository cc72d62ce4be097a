//! What an approving device hands a new device of the same account, and how it travels: the
//! account's secrets sealed with HPKE (RFC 9180, X25519, HKDF-SHA256, ChaCha20-Poly1305,
//! through the MLS crypto provider) to the key in the new device's offer, bound to the exact
//! offer; and the history as an archive under a key of its own, which travels inside the
//! sealed part. The server relays both and can read neither.

use crate::CoreError;
use crate::events::Event;
use crate::store::{ConversationRecord, HistoryItem, HistoryRecord};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{
    AeadType, HpkeAeadType, HpkeCiphertext, HpkeConfig, HpkeKdfType, HpkeKemType, HpkeKeyPair,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_proto::device_list::SignedDeviceListIn;
use sotto_proto::link::{LinkAnswer, LinkCode};
use sotto_proto::{Bytes, DeviceAddr, GroupId, Username};
use tls_codec::{Deserialize as _, Serialize as _};
use zeroize::Zeroizing;

/// The HPKE suite of the link channel.
const HPKE: HpkeConfig = HpkeConfig(
    HpkeKemType::DhKem25519,
    HpkeKdfType::HkdfSha256,
    HpkeAeadType::ChaCha20Poly1305,
);
/// Domain separation of the sealed part: the HPKE `info` is this and the offer's hash.
const SEAL_CONTEXT: &[u8] = b"sotto-link-v1\0";
/// Domain separation of the archive: its AEAD's associated data.
const ARCHIVE_CONTEXT: &[u8] = b"sotto-link-archive-v1\0";

fn crypto() -> Result<openmls_libcrux_crypto::CryptoProvider, CoreError> {
    openmls_libcrux_crypto::CryptoProvider::new()
        .map_err(|e| CoreError::State(format!("no randomness for the link channel: {e:?}")))
}

fn failed(what: &str) -> CoreError {
    CoreError::Security(format!("the link answer does not open: {what}"))
}

/// A new device's one-time HPKE key pair.
pub struct LinkKeys(HpkeKeyPair);

impl LinkKeys {
    /// A fresh key pair.
    pub fn generate() -> Result<LinkKeys, CoreError> {
        let ikm = Zeroizing::new(rand::random::<[u8; 32]>());
        crypto()?
            .derive_hpke_keypair(HPKE, &ikm[..])
            .map(LinkKeys)
            .map_err(|e| CoreError::State(format!("HPKE key generation failed: {e:?}")))
    }

    /// The public key, for the offer.
    pub fn public(&self) -> &[u8] {
        &self.0.public
    }
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKeys(..)")
    }
}

/// A contact as it travels: the pinned identity key and whether the user verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedContact {
    /// The contact.
    pub user: Username,
    /// The pinned identity key.
    pub identity_key: Bytes,
    /// Whether safety numbers were compared.
    pub verified: bool,
}

/// The key and hash of a history archive.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveKey {
    /// ChaCha20-Poly1305 key (32 bytes), used once.
    pub key: Bytes,
    /// SHA-256 of the ciphertext.
    pub hash: Bytes,
    /// Entries the approver left out because the archive would have been too large (the
    /// oldest).
    pub left_out: u64,
}

impl Drop for ArchiveKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key.0);
    }
}

/// What the sealed part holds.
#[derive(Serialize, Deserialize)]
pub struct LinkSecrets {
    /// The account's identity key's secret.
    pub identity_secret: Bytes,
    /// The account's new device list, naming the new device, signed by the identity key.
    pub device_list: SignedDeviceListIn,
    /// The contacts, with their pins and verification marks.
    pub contacts: Vec<LinkedContact>,
    /// The history archive's key, if one was sent.
    pub archive: Option<ArchiveKey>,
    /// The key-transparency log's VRF key the account's devices pinned (32 bytes): the new
    /// device checks the server's against it rather than trusting it on first use.
    pub kt_vrf_key: Bytes,
    /// The newest (epoch, root) of the log the approving device saw, encoded as it keeps
    /// it: the new device never accepts an older one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt_head: Option<Bytes>,
    /// The log's checkpoint key the account's devices pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt_checkpoint_key: Option<String>,
    /// The witnesses the approving device requires, as it keeps them: the new device
    /// requires the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt_witnesses: Option<Bytes>,
}

impl Drop for LinkSecrets {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.identity_secret.0);
    }
}

fn info(offer: &[u8]) -> Vec<u8> {
    [SEAL_CONTEXT, &sotto_proto::link::offer_hash(offer)[..]].concat()
}

/// Seals `secrets` to the offer `offer` (its own exact bytes), whose HPKE key is
/// `hpke_key`, and MACs the result under the code's secret: the answer to send.
pub fn answer(
    code: &LinkCode,
    offer: &[u8],
    hpke_key: &[u8],
    secrets: &LinkSecrets,
    archive: Vec<u8>,
) -> Result<LinkAnswer, CoreError> {
    let sealed = seal(offer, hpke_key, secrets)?;
    Ok(LinkAnswer {
        mac: code.answer_mac(&sealed).into(),
        sealed: sealed.into(),
        archive: archive.into(),
    })
}

fn seal(offer: &[u8], hpke_key: &[u8], secrets: &LinkSecrets) -> Result<Vec<u8>, CoreError> {
    let plain =
        Zeroizing::new(serde_json::to_vec(secrets).map_err(|e| CoreError::State(e.to_string()))?);
    let sealed = crypto()?
        .hpke_seal(HPKE, hpke_key, &info(offer), &[], &plain)
        .map_err(|e| CoreError::Malformed(format!("the offer's HPKE key: {e:?}")))?;
    sealed
        .tls_serialize_detached()
        .map_err(|e| CoreError::State(e.to_string()))
}

/// Opens an answer to `offer` (its own exact bytes) with the offer's `keys`, once its MAC
/// shows it was made by someone who read the code: the server, which relays it, could seal
/// an answer of its own to the offer's key, but not MAC it.
pub fn open(
    code: &LinkCode,
    offer: &[u8],
    keys: &LinkKeys,
    answer: &LinkAnswer,
) -> Result<LinkSecrets, CoreError> {
    let sealed = answer.sealed.as_slice();
    if !code.answer_mac_verifies(sealed, answer.mac.as_slice()) {
        return Err(failed("it was not made by a device that read this code"));
    }
    let mut input = sealed;
    let ct = HpkeCiphertext::tls_deserialize(&mut input).map_err(|_| failed("malformed"))?;
    if !input.is_empty() {
        return Err(failed("trailing bytes"));
    }
    let plain = Zeroizing::new(
        crypto()?
            .hpke_open(HPKE, &ct, keys.0.private.as_ref(), &info(offer), &[])
            .map_err(|_| failed("not sealed to this device's offer"))?,
    );
    serde_json::from_slice(&plain).map_err(|_| failed("its contents do not parse"))
}

/// A conversation as an archive carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedConversation {
    /// Its group.
    pub group: GroupId,
    /// Its name, if it is a named group.
    pub name: Option<String>,
    /// The other person of a one-to-one conversation.
    pub peer: Option<Username>,
    /// When it started.
    pub created_at: u64,
}

/// A history entry as an archive carries it: a text or an event (security findings are the
/// approving device's own and stay there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedEntry {
    /// Its history id.
    pub id: String,
    /// Its conversation.
    pub group: Option<GroupId>,
    /// Who sent it, and whether MLS authenticated that.
    pub sender: Option<(DeviceAddr, bool)>,
    /// The sender's time.
    pub sent_at: u64,
    /// The server's time.
    pub received_at: u64,
    /// Sent by a device of this account.
    #[serde(default)]
    pub outgoing: bool,
    /// A text message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// An event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
}

impl ArchivedEntry {
    /// The entry of `record`, unless it is a security finding.
    pub fn of(record: &HistoryRecord) -> Option<ArchivedEntry> {
        let (text, event) = match &record.item {
            HistoryItem::Text(t) => (Some(t.clone()), None),
            HistoryItem::Event(e) => (None, Some(e.clone())),
            HistoryItem::Security { .. } => return None,
        };
        Some(ArchivedEntry {
            id: record.id.clone(),
            group: record.group.clone(),
            sender: record.sender.clone(),
            sent_at: record.sent_at,
            received_at: record.received_at,
            outgoing: record.outgoing,
            text,
            event,
        })
    }

    /// The history record it becomes on the new device.
    pub fn record(self) -> Option<HistoryRecord> {
        let item = match (self.text, self.event) {
            (Some(t), None) => HistoryItem::Text(t),
            (None, Some(e)) => HistoryItem::Event(e),
            _ => return None,
        };
        Some(HistoryRecord {
            id: self.id,
            group: self.group,
            sender: self.sender,
            sent_at: self.sent_at,
            received_at: self.received_at,
            item,
            outgoing: self.outgoing,
        })
    }
}

impl ArchivedConversation {
    /// The conversation's record on the new device: inactive until its Welcome arrives.
    pub fn record(self) -> ConversationRecord {
        ConversationRecord {
            group: self.group,
            name: self.name,
            peer: self.peer,
            announced: false,
            active: false,
            created_at: self.created_at,
        }
    }
}

/// The history an approving device sends.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Archive {
    /// The conversations.
    pub conversations: Vec<ArchivedConversation>,
    /// The entries, oldest first.
    pub entries: Vec<ArchivedEntry>,
}

/// Encrypts `archive` under a fresh key, leaving out its oldest entries until the
/// ciphertext is at most `max` bytes. Returns the ciphertext and its key.
pub fn encrypt_archive(
    mut archive: Archive,
    max: usize,
) -> Result<(Vec<u8>, ArchiveKey), CoreError> {
    let mut left_out = 0u64;
    let plain = loop {
        let plain = Zeroizing::new(
            serde_json::to_vec(&archive).map_err(|e| CoreError::State(e.to_string()))?,
        );
        // The AEAD adds a 16-byte tag.
        if plain.len().saturating_add(16) <= max || archive.entries.is_empty() {
            break plain;
        }
        // Drop about the share that is too much, at least one entry.
        let excess = plain.len().saturating_add(16).saturating_sub(max);
        let share = excess
            .saturating_mul(archive.entries.len())
            .div_ceil(plain.len().max(1))
            .clamp(1, archive.entries.len());
        archive.entries.drain(..share);
        left_out = left_out.saturating_add(share as u64);
    };
    let key = Zeroizing::new(rand::random::<[u8; 32]>());
    // The key is used once, so a fixed nonce is safe.
    let ct = crypto()?
        .aead_encrypt(
            AeadType::ChaCha20Poly1305,
            &key[..],
            &plain,
            &[0; 12],
            ARCHIVE_CONTEXT,
        )
        .map_err(|e| CoreError::State(format!("archive encryption failed: {e:?}")))?;
    let hash = Sha256::digest(&ct).to_vec();
    Ok((
        ct,
        ArchiveKey {
            key: key.to_vec().into(),
            hash: hash.into(),
            left_out,
        },
    ))
}

/// Decrypts an archive with the key the sealed part carried, after checking its hash.
pub fn decrypt_archive(ct: &[u8], key: &ArchiveKey) -> Result<Archive, CoreError> {
    if Sha256::digest(ct).as_slice() != key.hash.as_slice() {
        return Err(CoreError::Security(
            "the history archive is not the one the approving device sent".into(),
        ));
    }
    let plain = Zeroizing::new(
        crypto()?
            .aead_decrypt(
                AeadType::ChaCha20Poly1305,
                key.key.as_slice(),
                ct,
                &[0; 12],
                ARCHIVE_CONTEXT,
            )
            .map_err(|_| CoreError::Security("the history archive does not decrypt".into()))?,
    );
    serde_json::from_slice(&plain)
        .map_err(|_| CoreError::Malformed("the history archive does not parse".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_proto::link::{LinkId, SECRET_LEN};

    fn secrets() -> LinkSecrets {
        LinkSecrets {
            identity_secret: vec![9; 32].into(),
            device_list: SignedDeviceListIn {
                body: b"{}".to_vec().into(),
                signature: vec![1; 64].into(),
            },
            contacts: vec![],
            archive: None,
            kt_vrf_key: vec![5; 32].into(),
            kt_head: None,
            kt_checkpoint_key: None,
            kt_witnesses: None,
        }
    }

    #[test]
    fn an_answer_opens_only_with_the_offers_key_for_the_same_offer_and_the_codes_mac() {
        let code = LinkCode {
            id: LinkId([1; 6]),
            secret: [2; SECRET_LEN],
        };
        let keys = LinkKeys::generate().unwrap();
        let answer = answer(&code, b"offer", keys.public(), &secrets(), Vec::new()).unwrap();
        let opened = open(&code, b"offer", &keys, &answer).unwrap();
        assert_eq!(opened.identity_secret.as_slice(), &[9; 32]);
        assert!(open(&code, b"another offer", &keys, &answer).is_err());
        let other = LinkKeys::generate().unwrap();
        assert!(open(&code, b"offer", &other, &answer).is_err());
        // The server can seal to the offer's key too, but not with the code's MAC.
        let forged = LinkAnswer {
            mac: vec![0; 32].into(),
            ..answer.clone()
        };
        assert!(open(&code, b"offer", &keys, &forged).is_err());
        let wrong_code = LinkCode {
            secret: [3; SECRET_LEN],
            ..code
        };
        let by_server =
            super::answer(&wrong_code, b"offer", keys.public(), &secrets(), Vec::new()).unwrap();
        assert!(open(&code, b"offer", &keys, &by_server).is_err());
        let mut tampered = answer.clone();
        tampered.sealed.0.truncate(10);
        assert!(open(&code, b"offer", &keys, &tampered).is_err());
    }

    #[test]
    fn an_archive_too_large_loses_its_oldest_entries_and_says_how_many() {
        let entry = |i: usize| ArchivedEntry {
            id: i.to_string(),
            group: None,
            sender: None,
            sent_at: 1,
            received_at: 1,
            outgoing: false,
            text: Some("x".repeat(100)),
            event: None,
        };
        let archive = Archive {
            conversations: vec![],
            entries: (0..100).map(entry).collect(),
        };
        let (ct, key) = encrypt_archive(archive, 5_000).unwrap();
        assert!(ct.len() <= 5_000);
        let back = decrypt_archive(&ct, &key).unwrap();
        assert_eq!(back.entries.len() as u64 + key.left_out, 100);
        assert_eq!(back.entries.last().unwrap().id, "99", "the newest are kept");
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(decrypt_archive(&bad, &key).is_err());
    }
}
