//! Key transparency on the wire: akd's configuration of Sotto's log, the value the log holds
//! for an account, and a lookup proof as it travels (akd's, in its protobuf encoding) with
//! its verification by `akd_core`.

use crate::device_list::SignedDeviceListIn;
use crate::{Bytes, Username};
use akd_core::proto::specs::types::LookupProof as ProtoLookupProof;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The domain separation label of Sotto's akd log (server and clients use the same).
pub const DOMAIN_LABEL: &[u8] = b"sotto-kt-v1";

/// The log's domain separation label, for akd.
#[derive(Debug, Clone, Copy)]
pub struct SottoLabel;

impl akd_core::configuration::DomainLabel for SottoLabel {
    fn domain_label() -> &'static [u8] {
        DOMAIN_LABEL
    }
}

/// akd's configuration of Sotto's log: the server publishes with it, clients verify with it.
pub type KtConfiguration = akd_core::configuration::ExperimentalConfiguration<SottoLabel>;

/// Domain separation prefix of [`device_list_value`].
pub const VALUE_CONTEXT: &[u8] = b"sotto-kt-device-list-v1\0";

/// Largest encoded lookup proof a client reads (a proof at a billion accounts is a few KB).
pub const MAX_PROOF: usize = 64 * 1024;

/// The value the log holds for an account: a hash of its signed device list, body and
/// signature, exactly as they travel. Anyone holding the signed list can recompute it.
pub fn device_list_value(signed: &SignedDeviceListIn) -> [u8; 32] {
    let body = signed.body.as_slice();
    // A body is far below 4 GiB (the request limits see to it); saturate rather than wrap.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    Sha256::new()
        .chain_update(VALUE_CONTEXT)
        .chain_update(len.to_be_bytes())
        .chain_update(body)
        .chain_update(signed.signature.as_slice())
        .finalize()
        .into()
}

/// `GET /v1/kt/users/{user}`: where an account stands in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    /// The epoch the proof is for.
    pub epoch: u64,
    /// The log's root hash at that epoch (32 bytes).
    pub root_hash: Bytes,
    /// akd's lookup proof (its protobuf encoding), at most [`MAX_PROOF`] bytes.
    pub proof: Bytes,
    /// The signed checkpoint of that epoch and root, with the witnesses' cosignatures the
    /// server holds ([`crate::checkpoint`]); empty from a server that signs none.
    #[serde(default)]
    pub checkpoint: String,
}

/// `GET /v1/kt/checkpoint` (the newest epoch) and `GET /v1/kt/epochs/{epoch}`: an epoch's
/// root as the server recorded it, for witnesses and auditors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochResponse {
    /// The epoch.
    pub epoch: u64,
    /// The log's root at that epoch (32 bytes).
    pub root_hash: Bytes,
    /// Its signed checkpoint, with the cosignatures the server holds.
    pub checkpoint: String,
    /// akd's proof that this epoch's tree extends the previous epoch's (a protobuf
    /// `SingleAppendOnlyProof`); none for the oldest epoch the server recorded, for the
    /// newest epoch at `/v1/kt/checkpoint`, and with `?proof=false`.
    pub audit: Option<Bytes>,
    /// The oldest epoch the server recorded: an auditor starting out starts there.
    pub first: u64,
}

/// `POST /v1/kt/cosignatures`: a witness's cosignature on an epoch's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CosignRequest {
    /// The epoch cosigned.
    pub epoch: u64,
    /// The cosignature, as a signed note's line (`— name base64`).
    pub cosignature: String,
}

/// What a lookup proof proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proven {
    /// The epoch.
    pub epoch: u64,
    /// The log's root at that epoch.
    pub root: [u8; 32],
    /// The version of the user's value (1 for the first, one more for each change).
    pub version: u64,
    /// The user's value: [`device_list_value`] of its signed device list.
    pub value: [u8; 32],
}

/// Verifies a lookup answer from the server (untrusted bytes) for `user` against the log's
/// VRF public key. The error says what is wrong with it, to follow "the proof …".
pub fn verify_lookup_proof(
    vrf_key: &[u8],
    user: &Username,
    found: &LookupResponse,
) -> Result<Proven, &'static str> {
    let root: [u8; 32] = found
        .root_hash
        .as_slice()
        .try_into()
        .map_err(|_| "has a malformed root")?;
    if found.proof.len() > MAX_PROOF {
        return Err("is too large");
    }
    let proof: ProtoLookupProof = protobuf::Message::parse_from_bytes(found.proof.as_slice())
        .map_err(|_| "does not parse")?;
    let proof = akd_core::LookupProof::try_from(&proof).map_err(|_| "does not parse")?;
    // akd asserts what these mean (a version 0 panics deep in its marker arithmetic): a
    // server that holds the VRF secret could build a tree that reaches those asserts, so
    // they are refused here, and a panic left in akd is caught rather than let through.
    if proof.version == 0 || proof.epoch > found.epoch {
        return Err("is malformed");
    }
    let label = akd_core::AkdLabel::from(user.as_str());
    let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        akd_core::verify::lookup_verify::<KtConfiguration>(vrf_key, root, found.epoch, label, proof)
    }))
    .map_err(|_| "is malformed")?
    .map_err(|_| "does not verify")?;
    let value: [u8; 32] = verified
        .value
        .0
        .as_slice()
        .try_into()
        .map_err(|_| "proves a malformed value")?;
    Ok(Proven {
        epoch: found.epoch,
        root,
        version: verified.version,
        value,
    })
}
