//! The engine on its own: whole conversations between devices in memory, over the real
//! delivery rules of the server in-process. No HTTP, no files.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code: a failed unwrap is a failed test"
)]

mod compelled;
mod compelled_devices;
mod healing;
mod hostile;
mod large_group;
mod linking;
mod local;
mod misbehaving;
mod outsider;
mod seen;
mod three_users;
mod verify;
mod vouched;
