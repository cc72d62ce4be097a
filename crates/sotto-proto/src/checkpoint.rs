//! Signed checkpoints of the key-transparency log, and witnesses' cosignatures on them.
//!
//! Each epoch's root is a C2SP checkpoint ([tlog-checkpoint]): the log's origin, the epoch
//! as the size line and the root in base64, in a C2SP signed note ([signed-note]) signed by
//! the server's checkpoint key. A witness that verified akd's append-only proof up to that
//! epoch adds a cosignature ([tlog-cosignature], `cosignature/v1`): an Ed25519 signature,
//! with the time it was made, over the checkpoint. The formats come from the `tlog_tiles` and
//! `signed_note` crates; this module only adds the cosignature verifier those crates lack.
//!
//! [tlog-checkpoint]: https://c2sp.org/tlog-checkpoint
//! [signed-note]: https://c2sp.org/signed-note
//! [tlog-cosignature]: https://c2sp.org/tlog-cosignature

use crate::ProtoError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, VerifyingKey};
use signed_note::{Note, NoteError, Verifier, VerifierList};

/// The signature type of a cosignature/v1 key (C2SP tlog-cosignature).
pub const COSIGNATURE_V1: u8 = 0x04;

/// Largest signed checkpoint a client or witness reads: the note and up to 100 signatures.
pub const MAX_CHECKPOINT: usize = 32 * 1024;

/// Most witness keys a client or server is configured with.
pub const MAX_WITNESSES: usize = 32;

/// The origin of a server's checkpoints (their first line, and the name of the key that signs
/// them), bound to the log's VRF public key (all of it): clients check that the checkpoint
/// key they pin is named after the VRF key they pin.
pub fn log_origin(vrf_public_key: &[u8]) -> String {
    format!(
        "sotto-kt/{}",
        data_encoding::HEXLOWER.encode(vrf_public_key)
    )
}

/// Whether `name` may name a key (C2SP: not empty, no spaces, no '+').
pub fn is_key_name(name: &str) -> bool {
    signed_note::is_key_name_valid(name)
}

/// The name in a verifier key (`name+id+key`): a log's origin, or a witness's name.
pub fn origin_of(vkey: &str) -> &str {
    vkey.split_once('+').map_or(vkey, |(name, _)| name)
}

/// The checkpoint of `root` at `epoch` in the log named `origin`: the text every signature
/// on it covers.
pub fn checkpoint_body(origin: &str, epoch: u64, root: &[u8; 32]) -> Result<Vec<u8>, ProtoError> {
    tlog_tiles::Checkpoint::new(origin, epoch, tlog_tiles::Hash(*root), "")
        .map(|c| c.to_bytes())
        .map_err(|_| ProtoError::Invalid("checkpoint origin"))
}

/// What a witness signs to cosign `body` at `timestamp` (seconds since the Unix epoch).
pub fn cosigned_message(timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    msg.extend_from_slice(body);
    msg
}

/// The verifier key (`name+id+base64`) of a log's Ed25519 checkpoint key.
pub fn log_vkey(name: &str, key: &VerifyingKey) -> String {
    signed_note::new_ed25519_verifier_key(name, key)
}

/// The verifier key (`name+id+base64`) of a witness's cosignature/v1 key.
pub fn witness_vkey(name: &str, key: &VerifyingKey) -> String {
    let encoded = [&[COSIGNATURE_V1][..], key.as_bytes()].concat();
    format!(
        "{name}+{:08x}+{}",
        signed_note::key_id(name, &encoded),
        BASE64.encode(&encoded)
    )
}

/// A witness's cosignature/v1 key, parsed from its verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessKey {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl WitnessKey {
    /// Parses a verifier key `name+id+base64(0x04 || Ed25519 public key)`.
    pub fn parse(vkey: &str) -> Result<Self, ProtoError> {
        let bad = ProtoError::Invalid("witness key (name+id+key, a cosignature/v1 key)");
        let (name, rest) = vkey.split_once('+').ok_or(bad.clone())?;
        let (id, key) = rest.split_once('+').ok_or(bad.clone())?;
        if !signed_note::is_key_name_valid(name) || id.len() != 8 {
            return Err(bad);
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad.clone())?;
        let encoded = BASE64.decode(key).map_err(|_| bad.clone())?;
        let (kind, key) = encoded.split_first().ok_or(bad.clone())?;
        if *kind != COSIGNATURE_V1 || signed_note::key_id(name, &encoded) != id {
            return Err(bad);
        }
        let key: [u8; 32] = key.try_into().map_err(|_| bad.clone())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad)?;
        Ok(WitnessKey {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// Whether `other` is the same Ed25519 key, whatever its name (a cosignature does not
    /// cover the name: one key under two names is one witness).
    pub fn same_key(&self, other: &WitnessKey) -> bool {
        self.key == other.key
    }

    /// Its verifier key, as [`WitnessKey::parse`] reads it.
    pub fn vkey(&self) -> String {
        witness_vkey(&self.name, &self.key)
    }
}

impl Verifier for WitnessKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some((time, sig)) = sig.split_first_chunk::<8>() else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(sig) else {
            return false;
        };
        self.key
            .verify_strict(&cosigned_message(u64::from_be_bytes(*time), msg), &sig)
            .is_ok()
    }
}

/// Checks that `vkey` is a C2SP Ed25519 verifier key, as a log's checkpoint key is.
pub fn check_log_key(vkey: &str) -> Result<(), ProtoError> {
    signed_note::StandardVerifier::new(vkey)
        .map(|_| ())
        .map_err(|_| ProtoError::Invalid("checkpoint key"))
}

/// A signed checkpoint whose log signature verified for the epoch and root expected.
#[derive(Debug)]
pub struct SignedCheckpoint {
    note: Note,
}

/// Why a signed checkpoint is refused (to follow "the checkpoint …").
pub type CheckpointError = &'static str;

impl SignedCheckpoint {
    /// Opens `note` (untrusted text) as the checkpoint of `root` at `epoch` signed with the
    /// log's key `log_vkey` (a C2SP Ed25519 verifier key).
    pub fn open(
        note: &str,
        log_vkey: &str,
        epoch: u64,
        root: &[u8; 32],
    ) -> Result<Self, CheckpointError> {
        if note.len() > MAX_CHECKPOINT {
            return Err("is too large");
        }
        let log = signed_note::StandardVerifier::new(log_vkey).map_err(|_| "has no valid key")?;
        let body = checkpoint_body(log.name(), epoch, root).map_err(|_| "has no valid key")?;
        let note = Note::from_bytes(note.as_bytes()).map_err(|_| "does not parse")?;
        if note.text() != body.as_slice() {
            return Err("is not of this epoch and root");
        }
        match note.verify(&VerifierList::new(vec![Box::new(log)])) {
            Ok(_) => Ok(SignedCheckpoint { note }),
            Err(NoteError::UnverifiedNote) => Err("is not signed by the log's key"),
            Err(_) => Err("has a log signature that does not verify"),
        }
    }

    /// The witnesses among `witnesses` that cosigned it, each with the time of its
    /// cosignature (a note holds one per key); an error if a cosignature of one of them does
    /// not verify.
    pub fn cosigners<'w>(
        &self,
        witnesses: &'w [WitnessKey],
    ) -> Result<Vec<(&'w WitnessKey, u64)>, CheckpointError> {
        let list = VerifierList::new(
            witnesses
                .iter()
                .map(|w| Box::new(w.clone()) as Box<dyn Verifier>)
                .collect(),
        );
        let verified = match self.note.verify(&list) {
            Ok((verified, _)) => verified,
            Err(NoteError::UnverifiedNote) => return Ok(Vec::new()),
            Err(_) => return Err("carries a witness cosignature that does not verify"),
        };
        Ok(witnesses
            .iter()
            .filter_map(|w| {
                let time = verified
                    .iter()
                    .filter(|s| s.name() == w.name && s.id() == w.id)
                    .filter_map(|s| s.signature().first_chunk::<8>())
                    .map(|t| u64::from_be_bytes(*t))
                    .max()?;
                Some((w, time))
            })
            .collect())
    }
}

/// A witness's cosignature as a note's signature line (`— name base64`): the key id, the
/// time and the signature.
pub fn cosignature_line(key: &WitnessKey, timestamp: u64, signature: &[u8; 64]) -> String {
    let sig = [
        &key.id.to_be_bytes()[..],
        &timestamp.to_be_bytes()[..],
        &signature[..],
    ]
    .concat();
    format!("— {} {}", key.name, BASE64.encode(sig))
}

/// The witness among `witnesses` that a cosignature line names (by name and key id), before
/// anything is verified.
pub fn cosignature_signer<'w>(
    line: &str,
    witnesses: &'w [WitnessKey],
) -> Result<&'w WitnessKey, ProtoError> {
    let sig = signed_note::Signature::from_bytes(line.trim_end().as_bytes())
        .map_err(|_| ProtoError::Invalid("cosignature line"))?;
    witnesses
        .iter()
        .find(|w| w.name == sig.name() && w.id == sig.id())
        .ok_or(ProtoError::Invalid(
            "cosignature: not of a witness this server is configured with",
        ))
}

/// Parses a cosignature line sent by a witness: the witness it names among `witnesses`, the
/// time it carries, and whether it verifies over `body`.
pub fn parse_cosignature<'w>(
    line: &str,
    witnesses: &'w [WitnessKey],
    body: &[u8],
) -> Result<(&'w WitnessKey, u64), ProtoError> {
    let sig = signed_note::Signature::from_bytes(line.trim_end().as_bytes())
        .map_err(|_| ProtoError::Invalid("cosignature line"))?;
    let witness = cosignature_signer(line, witnesses)?;
    let time = sig
        .signature()
        .first_chunk::<8>()
        .map(|t| u64::from_be_bytes(*t))
        .ok_or(ProtoError::Invalid("cosignature line"))?;
    if !witness.verify(body, sig.signature()) {
        return Err(ProtoError::Invalid("cosignature (it does not verify)"));
    }
    Ok((witness, time))
}

/// A note of `body` with `signatures` (lines `— name base64`, the log's first).
pub fn note_text(body: &[u8], signatures: &[String]) -> String {
    let mut note = String::from_utf8_lossy(body).into_owned();
    note.push('\n');
    for line in signatures {
        note.push_str(line);
        note.push('\n');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    fn log_key() -> (SigningKey, String) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let vkey = log_vkey("sotto-kt/0707", &key.verifying_key());
        (key, vkey)
    }

    fn log_line(key: &SigningKey, body: &[u8]) -> String {
        let encoded = [&[1u8][..], key.verifying_key().as_bytes()].concat();
        let id = signed_note::key_id("sotto-kt/0707", &encoded);
        let sig = signed_note::Signature::new(
            "sotto-kt/0707".into(),
            id,
            key.sign(body).to_bytes().to_vec(),
        )
        .unwrap();
        String::from_utf8(sig.to_bytes()).unwrap().trim_end().into()
    }

    fn cosign(key: &SigningKey, name: &str, time: u64, body: &[u8]) -> (WitnessKey, String) {
        let w = WitnessKey::parse(&witness_vkey(name, &key.verifying_key())).unwrap();
        let sig = key.sign(&cosigned_message(time, body)).to_bytes();
        let line = cosignature_line(&w, time, &sig);
        (w, line)
    }

    #[test]
    fn a_checkpoint_signed_by_the_log_and_cosigned_opens_with_each_witness_time() {
        let (key, vkey) = log_key();
        let root = [9u8; 32];
        let body = checkpoint_body("sotto-kt/0707", 12, &root).unwrap();
        assert_eq!(
            body,
            b"sotto-kt/0707\n12\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n"
        );
        let (w1, c1) = cosign(&SigningKey::from_bytes(&[1; 32]), "w.example/1", 100, &body);
        let (w2, _) = cosign(&SigningKey::from_bytes(&[2; 32]), "w.example/2", 100, &body);
        let note = note_text(&body, &[log_line(&key, &body), c1]);
        let opened = SignedCheckpoint::open(&note, &vkey, 12, &root).unwrap();
        let witnesses = [w1.clone(), w2];
        let cosigners = opened.cosigners(&witnesses).unwrap();
        assert_eq!(cosigners, vec![(&w1, 100)]);
        assert_eq!(
            parse_cosignature(note.lines().last().unwrap(), &witnesses, &body)
                .unwrap()
                .1,
            100
        );
    }

    #[test]
    fn a_checkpoint_of_another_epoch_or_root_or_unsigned_is_refused() {
        let (key, vkey) = log_key();
        let root = [9u8; 32];
        let body = checkpoint_body("sotto-kt/0707", 12, &root).unwrap();
        let note = note_text(&body, &[log_line(&key, &body)]);
        assert!(SignedCheckpoint::open(&note, &vkey, 13, &root).is_err());
        assert!(SignedCheckpoint::open(&note, &vkey, 12, &[8; 32]).is_err());
        let other = SigningKey::from_bytes(&[8; 32]);
        let unsigned = note_text(&body, &[log_line(&other, &body)]);
        assert_eq!(
            SignedCheckpoint::open(&unsigned, &vkey, 12, &root).unwrap_err(),
            "is not signed by the log's key"
        );
        // The log's name and key id, over another checkpoint.
        let other_body = checkpoint_body("sotto-kt/0707", 13, &root).unwrap();
        let line = log_line(&key, &other_body);
        let forged = note_text(&body, &[line]);
        assert_eq!(
            SignedCheckpoint::open(&forged, &vkey, 12, &root).unwrap_err(),
            "has a log signature that does not verify"
        );
    }

    #[test]
    fn a_cosignature_over_another_checkpoint_does_not_verify() {
        let (key, vkey) = log_key();
        let body = checkpoint_body("sotto-kt/0707", 12, &[9; 32]).unwrap();
        let other = checkpoint_body("sotto-kt/0707", 12, &[8; 32]).unwrap();
        let (w, line) = cosign(&SigningKey::from_bytes(&[1; 32]), "w.example/1", 5, &other);
        let note = note_text(&body, &[log_line(&key, &body), line.clone()]);
        let opened = SignedCheckpoint::open(&note, &vkey, 12, &[9; 32]).unwrap();
        assert!(opened.cosigners(std::slice::from_ref(&w)).is_err());
        assert!(parse_cosignature(&line, &[w], &body).is_err());
    }

    #[test]
    fn a_witness_key_of_another_type_or_id_is_refused() {
        let key = SigningKey::from_bytes(&[1; 32]).verifying_key();
        let vkey = witness_vkey("w.example/1", &key);
        assert_eq!(WitnessKey::parse(&vkey).unwrap().vkey(), vkey);
        let ed25519 = signed_note::new_ed25519_verifier_key("w.example/1", &key);
        assert!(WitnessKey::parse(&ed25519).is_err());
        let renamed = vkey.replacen("w.example/1", "w.example/2", 1);
        assert!(WitnessKey::parse(&renamed).is_err());
        assert!(WitnessKey::parse("no-plus").is_err());
    }
}
