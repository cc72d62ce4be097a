//! The Sotto client runtime: everything a device does around the pure engine in `sotto-core`.
//!
//! [`Client`] owns the encrypted local store (SQLCipher, keyed by a random data key that
//! Argon2id(passcode) wraps), talks to the server over HTTP and WebSocket, and runs the sync
//! loop that turns queued MLS messages into conversation history exactly once. It never sends
//! plaintext anywhere but the local store, and never logs content.
#![forbid(unsafe_code)]

// Unit tests share the integration tests' harness, which names this crate.
#[cfg(test)]
extern crate self as sotto_client;

mod api;
mod client;
mod error;
mod keyfile;
pub mod store;

pub use api::Api;
pub use client::{
    Client, Conversation, FollowStatus, InitOptions, MIN_PASSCODE_CHARS, Member, MessageKind,
    MessageView, Whoami,
};
pub use error::ClientError;
pub use keyfile::KdfParams;
