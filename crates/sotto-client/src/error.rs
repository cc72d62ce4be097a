//! Errors of the client runtime, grouped by what the user can do about them.

use sotto_proto::{ErrorBody, ErrorCode};

/// A client failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The user asked for something that cannot be done (unknown group, bad name, ...).
    #[error("{0}")]
    Usage(String),
    /// The local store is locked: wrong passcode, or a key file that does not unlock.
    #[error("{0}")]
    Locked(String),
    /// The server could not be reached.
    #[error("server unreachable: {0}")]
    Unreachable(String),
    /// The server refused the request.
    #[error("server refused: {} ({})", .0.message, .0.code.as_str())]
    Refused(ErrorBody),
    /// A security check failed (signature, device list, identity key change).
    #[error("security check failed: {0}")]
    Security(String),
    /// The local store failed, or holds data this program cannot read: damaged by a disk
    /// fault or an edit, or written by a newer version.
    #[error("local store: {0}")]
    Store(String),
    /// The engine failed on this device's own state (a peer's bad message is an event in the
    /// history, not this); openmls's error is the source.
    #[error(transparent)]
    Engine(sotto_core::CoreError),
    /// A bug: something this program relies on does not hold. Never sent to anyone.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// A value read from the local store that is not what it must be.
    pub(crate) fn damaged(what: &str) -> Self {
        ClientError::Store(format!("damaged {what}"))
    }

    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(b) => Some(b.code),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for ClientError {
    fn from(e: rusqlite::Error) -> Self {
        ClientError::Store(e.to_string())
    }
}

impl From<sotto_core::CoreError> for ClientError {
    fn from(e: sotto_core::CoreError) -> Self {
        match e {
            sotto_core::CoreError::Security(s) => ClientError::Security(s),
            other => ClientError::Engine(other),
        }
    }
}

impl From<sotto_proto::ProtoError> for ClientError {
    fn from(e: sotto_proto::ProtoError) -> Self {
        match e {
            sotto_proto::ProtoError::BadSignature => {
                ClientError::Security("a signature does not verify".into())
            }
            other => ClientError::Usage(other.to_string()),
        }
    }
}
