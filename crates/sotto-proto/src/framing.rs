//! The public part of MLS framing (RFC 9420 §6) that the delivery service reads to order and
//! route messages: group id, epoch and content type. The server learns nothing else.

use crate::{DeviceAddr, GroupId, ProtoError, limits};
use openmls::framing::{ContentType, MlsMessageBodyIn, MlsMessageIn};
use openmls::prelude::BasicCredential;
use tls_codec::Deserialize as _;

/// What kind of group message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Application data (encrypted content).
    Application,
    /// A proposal.
    Proposal,
    /// A commit: the group moves to the next epoch.
    Commit,
}

/// The routable header of an MLS group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// The group.
    pub group_id: GroupId,
    /// The epoch it was sent in.
    pub epoch: u64,
    /// Its content type.
    pub kind: MessageKind,
}

fn decode(bytes: &[u8]) -> Result<MlsMessageBodyIn, ProtoError> {
    if bytes.len() > limits::MAX_MLS_MESSAGE {
        return Err(ProtoError::TooLarge("MLS message"));
    }
    let msg = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| ProtoError::Mls("not an RFC 9420 MLSMessage"))?;
    Ok(msg.extract())
}

/// Reads the framing of a PublicMessage or PrivateMessage. Anything else is rejected.
pub fn parse_group_message(bytes: &[u8]) -> Result<Framing, ProtoError> {
    let (group_id, epoch, content_type) = match decode(bytes)? {
        MlsMessageBodyIn::PublicMessage(m) => {
            (m.group_id().clone(), m.epoch().as_u64(), m.content_type())
        }
        MlsMessageBodyIn::PrivateMessage(m) => {
            (m.group_id().clone(), m.epoch().as_u64(), m.content_type())
        }
        _ => return Err(ProtoError::Mls("expected a group message")),
    };
    let kind = match content_type {
        ContentType::Application => MessageKind::Application,
        ContentType::Proposal => MessageKind::Proposal,
        ContentType::Commit => MessageKind::Commit,
    };
    if epoch > limits::MAX_EPOCH {
        return Err(ProtoError::Mls("epoch out of range"));
    }
    Ok(Framing {
        group_id: GroupId::from_bytes(group_id.as_slice())?,
        epoch,
        kind,
    })
}

/// Checks that `bytes` is an MLS Welcome.
pub fn check_welcome(bytes: &[u8]) -> Result<(), ProtoError> {
    match decode(bytes)? {
        MlsMessageBodyIn::Welcome(_) => Ok(()),
        _ => Err(ProtoError::Mls("expected a Welcome")),
    }
}

/// Whom a KeyPackage claims to belong to, read from its leaf credential. Nothing here is
/// verified: the server compares it with the uploading device, and clients that claim the
/// KeyPackage verify its signature against the owner's device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageOwner {
    /// The device its credential names.
    pub device: DeviceAddr,
    /// The signature key in its leaf.
    pub signature_key: Vec<u8>,
}

impl KeyPackageOwner {
    /// Whether this is `device` with `signature_key`.
    pub fn is(&self, device: &DeviceAddr, signature_key: &[u8]) -> bool {
        &self.device == device && self.signature_key == signature_key
    }
}

/// Checks that `bytes` is an MLS KeyPackage with a basic `user/device` credential, and
/// returns whom it names.
pub fn check_key_package(bytes: &[u8]) -> Result<KeyPackageOwner, ProtoError> {
    if bytes.len() > limits::MAX_KEY_PACKAGE {
        return Err(ProtoError::TooLarge("KeyPackage"));
    }
    let MlsMessageBodyIn::KeyPackage(kp) = decode(bytes)? else {
        return Err(ProtoError::Mls("expected a KeyPackage"));
    };
    let credential = kp.unverified_credential();
    let basic = BasicCredential::try_from(credential.credential)
        .map_err(|_| ProtoError::Mls("KeyPackage credential is not a basic credential"))?;
    Ok(KeyPackageOwner {
        device: DeviceAddr::from_credential_identity(basic.identity())?,
        signature_key: credential.signature_key.as_slice().to_vec(),
    })
}
