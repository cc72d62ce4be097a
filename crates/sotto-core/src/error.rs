//! Errors of the client engine, grouped by what the user can do about them. The shell maps
//! them to exit codes (`docs/cli.md`); none is ever sent to a peer.

use crate::CoreError;
use sotto_proto::{ErrorBody, ErrorCode};

/// A storage failure: I/O, a constraint, a value that does not decode. It carries the
/// backend's message; it deliberately does not implement `std::error::Error`, so that any
/// backend error converts into it with `?`.
pub struct StoreError(String);

impl StoreError {
    /// A failure described in words.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError(message.into())
    }
}

impl<E: std::error::Error> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError(e.to_string())
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoreError({:?})", self.0)
    }
}

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
    /// The server could not be reached, or cannot answer as needed yet (the message says
    /// which): what failed may work later.
    #[error("{0}")]
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
    Engine(CoreError),
    /// A bug: something this program relies on does not hold. Never sent to anyone.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// The server's error code, if the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused(b) => Some(b.code),
            _ => None,
        }
    }

    /// A value read from the local store that is not what it must be.
    pub fn damaged(what: &str) -> Self {
        ClientError::Store(format!("damaged {what}"))
    }

    /// Whether the server may still take what failed with this, or answer the next time: it
    /// could not be reached, failed (a 5xx, from it or a proxy in front), timed out (the
    /// request may have been carried out all the same), or asked for patience. Whatever
    /// failed so stays in the outbox, to be sent again with the same idempotency key.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unreachable(_))
            || matches!(
                self.code(),
                Some(
                    ErrorCode::Internal
                        | ErrorCode::RateLimited
                        | ErrorCode::RequestTimeout
                        | ErrorCode::Unavailable
                )
            )
    }
}

impl From<StoreError> for ClientError {
    fn from(e: StoreError) -> Self {
        ClientError::Store(e.0)
    }
}

impl From<CoreError> for ClientError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Security(s) => ClientError::Security(s),
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
