//! The Sotto client engine: account identity and device keys, the content carried inside
//! MLS application messages, and every MLS group operation a client performs.
//!
//! It does no I/O: MLS state lives in whatever [`openmls_traits::OpenMlsProvider`] the caller
//! passes (SQLCipher on devices, memory in tests), and networking belongs to `sotto-client`.
//! Nothing here logs, and secrets never appear in `Debug` output.
#![forbid(unsafe_code)]

pub mod content;
pub mod group;
pub mod identity;
pub mod suite;

pub use content::{Content, Envelope};
pub use identity::{DeviceKey, IdentityKey};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Input from a peer or the server is malformed.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A security check failed: a signature, a credential, or a key that does not match the
    /// owner's signed device list.
    #[error("security check failed: {0}")]
    Security(String),
    /// The MLS library refused the operation.
    #[error("MLS error: {0}")]
    Mls(String),
    /// The operation does not apply in the group's current state.
    #[error("{0}")]
    State(String),
}

impl From<sotto_proto::ProtoError> for CoreError {
    fn from(e: sotto_proto::ProtoError) -> Self {
        CoreError::Malformed(e.to_string())
    }
}

pub(crate) fn mls_err(e: impl std::fmt::Debug) -> CoreError {
    CoreError::Mls(format!("{e:?}"))
}
