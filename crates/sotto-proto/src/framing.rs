//! The public part of MLS framing (RFC 9420 §6) that the delivery service reads to order and
//! route messages: group id, epoch and content type. The server learns nothing else.

use crate::{GroupId, ProtoError, limits};
use openmls::framing::{ContentType, MlsMessageBodyIn, MlsMessageIn};
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

/// Checks that `bytes` is an MLS KeyPackage (its signature is checked by the clients that
/// claim it, against the owner's device list).
pub fn check_key_package(bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() > limits::MAX_KEY_PACKAGE {
        return Err(ProtoError::TooLarge("KeyPackage"));
    }
    match decode(bytes)? {
        MlsMessageBodyIn::KeyPackage(_) => Ok(()),
        _ => Err(ProtoError::Mls("expected a KeyPackage")),
    }
}
