//! The Sotto client runtime: the I/O around the engine in `sotto-core`.
//!
//! The engine decides; this crate gives it a world. [`store`] keeps a device's data in one
//! SQLCipher file, keyed by a random data key that Argon2id(passcode) wraps (`keyfile`
//! module); [`transport`] speaks the server's HTTP API; [`account`] creates and unlocks a
//! device's home and holds the [`Client`]; `follow` waits on the server's WebSocket push;
//! [`messages`] turns the history into what a person reads. It never sends plaintext
//! anywhere but the local store, and never logs content.
#![forbid(unsafe_code)]

// Unit tests share the integration tests' harness, which names this crate.
#[cfg(test)]
extern crate self as sotto_client;

pub mod account;
mod devices;
mod follow;
mod keyfile;
pub mod log;
pub mod messages;
pub mod store;
#[cfg(test)]
mod tests;
pub mod transport;

pub use account::{Client, ContactView, InitOptions, MIN_PASSCODE_CHARS, VerifyAction, Whoami};
pub use devices::{LinkedView, Linking};
pub use follow::FollowStatus;
pub use keyfile::KdfParams;
pub use messages::{MessageKind, MessageView};
pub use sotto_core::ClientError;
pub use sotto_core::engine::conversations::{Conversation, Member};
pub use sotto_core::engine::devices::{Approved, DeviceInfo};
pub use sotto_core::engine::removal::Removed;
pub use sotto_core::engine::{WITNESS_MAX_AGE, WitnessPolicy};
pub use sotto_core::safety;
pub use transport::Api;
