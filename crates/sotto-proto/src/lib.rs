//! Sotto's wire format: the versioned JSON API between clients and the server, and the
//! parsing of every untrusted byte string that crosses it.
//!
//! Bytes from the network become an unchecked `*In` type; only a consuming `validate()`
//! yields the trusted type, with every size limit and syntax rule checked. This crate does
//! no I/O and holds no secrets.
//!
//! ```
//! use sotto_proto::{DeviceAddr, DeviceId, Username};
//!
//! let alice = DeviceAddr {
//!     user: Username::parse("alice")?,
//!     device: DeviceId::parse("00000000000000ff")?,
//! };
//! // The MLS credential of a device names it as `user/device`, and parses back.
//! assert_eq!(alice.credential_identity(), b"alice/00000000000000ff");
//! assert_eq!(DeviceAddr::from_credential_identity(&alice.credential_identity())?, alice);
//! // Untrusted names are parsed, never trusted as they come.
//! assert!(Username::parse("Not A Name").is_err());
//! # Ok::<(), sotto_proto::ProtoError>(())
//! ```
#![forbid(unsafe_code)]
// A network service: nothing a peer sends may panic it, so no indexing, no unchecked
// arithmetic and no `expect` outside tests.
#![cfg_attr(
    not(test),
    warn(
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

pub mod api;
pub mod bytes;
pub mod checkpoint;
pub mod device_list;
pub mod error;
pub mod framing;
pub mod ids;
pub mod kt;
pub mod link;

pub use bytes::Bytes;
pub use error::{ErrorBody, ErrorCode, ProtoError};
pub use ids::{DeviceAddr, DeviceId, GroupId, ServerId, Username};

/// The API version this crate speaks; it is the `/v1` in every path.
pub const API_VERSION: u32 = 1;

/// Size limits on every field that crosses the wire.
pub mod limits {
    /// Largest request body the server reads (an add-commit for 1,000 members on the
    /// post-quantum suite is about 2.7 MB, plus its Welcome). Only sends take this much.
    pub const MAX_BODY: usize = 16 * 1024 * 1024;
    /// Largest body of a request that carries KeyPackages (a registration or an upload):
    /// a full batch of the largest KeyPackages, in base64, with room for the rest.
    pub const MAX_KEY_PACKAGES_BODY: usize =
        MAX_KEY_PACKAGE_BATCH * MAX_KEY_PACKAGE * 4 / 3 + 64 * 1024;
    /// Largest body of any other request (sign-in, claims, acknowledgements).
    pub const MAX_SMALL_BODY: usize = 64 * 1024;
    /// Largest MLS message (commit, Welcome or application message).
    pub const MAX_MLS_MESSAGE: usize = 6 * 1024 * 1024;
    /// Largest KeyPackage.
    pub const MAX_KEY_PACKAGE: usize = 16 * 1024;
    /// Most KeyPackages uploaded in one request.
    pub const MAX_KEY_PACKAGE_BATCH: usize = 200;
    /// Most recipient devices named in one message (or in its Welcome); a larger group's
    /// messages go to its roster (`to_roster`).
    pub const MAX_RECIPIENTS: usize = 5000;
    /// Most devices in a group's roster: a group of 10,000 members with a second device each.
    pub const MAX_ROSTER: usize = 20_000;
    /// Most devices in one account's device list.
    pub const MAX_DEVICES: usize = 64;
    /// Largest signed device list body.
    pub const MAX_DEVICE_LIST: usize = 16 * 1024;
    /// Longest device name.
    pub const MAX_DEVICE_NAME: usize = 64;
    /// Most messages returned by one queue fetch.
    pub const MAX_FETCH: u32 = 500;
    /// Most bytes of MLS messages returned by one queue fetch (always at least one message):
    /// a fetch's memory is bounded whatever the queue holds.
    pub const MAX_FETCH_BYTES: usize = 8 * 1024 * 1024;
    /// Most message ids acknowledged at once.
    pub const MAX_ACK: usize = 1000;
    /// Most messages a WebSocket carries that the device has not acknowledged yet, and so
    /// most ids in one acknowledgement sent on the socket.
    pub const MAX_SOCKET_ACK: usize = MAX_FETCH as usize;
    /// Length of a client-chosen idempotency key, in hex characters.
    pub const CLIENT_ID_HEX: usize = 32;
    /// Largest epoch a group message may carry: epochs are stored as signed 64-bit integers,
    /// and a commit must leave room for the next epoch.
    pub const MAX_EPOCH: u64 = i64::MAX as u64;
}
