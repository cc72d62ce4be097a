//! The Sotto client engine: account identity and device keys, the content carried inside
//! MLS application messages, every MLS group operation a client performs, and every decision
//! a device makes ([`Engine`]): the ghost-device check, exactly-once processing, the outbox,
//! rebase and retry, membership events.
//!
//! It does no I/O. What the world provides comes in through traits: the device's store
//! ([`ClientStore`], SQLCipher in `sotto-client`, [`store::memory::MemoryStore`] in tests),
//! the server ([`Transport`], HTTP in `sotto-client`) and the time ([`Clock`]). Nothing here
//! logs, and secrets and message text never appear in `Debug` output.
#![forbid(unsafe_code)]

pub mod clock;
pub mod content;
pub mod engine;
mod error;
pub mod events;
pub mod group;
pub mod identity;
pub mod link;
pub mod safety;
pub mod store;
pub mod suite;
pub mod transport;

pub use clock::{Clock, SystemClock};
pub use content::{Content, Envelope, LogRoot};
pub use engine::Engine;
pub use error::{ClientError, StoreError};
pub use events::Event;
pub use identity::{DeviceKey, IdentityKey};
pub use store::ClientStore;
pub use transport::Transport;

/// An MLS operation of [`group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MlsOp {
    /// Encoding a message for the wire.
    Encode,
    /// Making KeyPackages.
    NewKeyPackage,
    /// Creating a group.
    CreateGroup,
    /// Loading a group from the store.
    LoadGroup,
    /// Committing an add.
    Add,
    /// Committing a removal.
    Remove,
    /// Committing an update of this device's own leaf.
    Update,
    /// Merging this device's own commit.
    MergeCommit,
    /// Discarding this device's own commit.
    DiscardCommit,
    /// Encrypting an application message.
    Encrypt,
    /// Joining from a Welcome.
    Join,
    /// Processing a received message.
    Process,
    /// Merging a received commit.
    MergeReceived,
}

impl std::fmt::Display for MlsOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MlsOp::Encode => "encoding a message",
            MlsOp::Update => "committing an update of this device's keys",
            MlsOp::NewKeyPackage => "making a KeyPackage",
            MlsOp::CreateGroup => "creating a group",
            MlsOp::LoadGroup => "loading a group",
            MlsOp::Add => "adding members",
            MlsOp::Remove => "removing members",
            MlsOp::MergeCommit => "merging a commit",
            MlsOp::DiscardCommit => "discarding a commit",
            MlsOp::Encrypt => "encrypting a message",
            MlsOp::Join => "joining a group",
            MlsOp::Process => "processing a message",
            MlsOp::MergeReceived => "merging a received commit",
        })
    }
}

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
    /// The MLS library refused an operation; its own error is the source.
    #[error("MLS failed {op}: {source}")]
    Mls {
        /// What was being done.
        op: MlsOp,
        /// openmls's error, as it was.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The operation does not apply in the group's current state.
    #[error("{0}")]
    State(String),
}

impl From<sotto_proto::ProtoError> for CoreError {
    fn from(e: sotto_proto::ProtoError) -> Self {
        CoreError::Malformed(e.to_string())
    }
}

/// Wraps openmls's error of `op`, keeping it whole.
pub(crate) fn mls_err<E: std::error::Error + Send + Sync + 'static>(
    op: MlsOp,
) -> impl FnOnce(E) -> CoreError {
    move |e| CoreError::Mls {
        op,
        source: Box::new(e),
    }
}

/// An openmls provider whose storage errors can travel inside a [`CoreError`].
pub trait MlsProvider:
    openmls_traits::OpenMlsProvider<
        StorageProvider: openmls_traits::storage::StorageProvider<
            { openmls_traits::storage::CURRENT_VERSION },
            Error: Send + Sync + 'static,
        >,
    >
{
}

impl<P> MlsProvider for P where
    P: openmls_traits::OpenMlsProvider<
            StorageProvider: openmls_traits::storage::StorageProvider<
                { openmls_traits::storage::CURRENT_VERSION },
                Error: Send + Sync + 'static,
            >,
        >
{
}
