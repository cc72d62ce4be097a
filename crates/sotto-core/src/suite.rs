//! The ciphersuites Sotto runs on.

use crate::CoreError;
use openmls::prelude::Ciphersuite;

/// X-Wing hybrid (ML-KEM-768 + X25519), ChaCha20-Poly1305, SHA-256, Ed25519: the default.
pub const XWING: u16 = 0x004D;
/// X25519, AES-128-GCM, SHA-256, Ed25519.
pub const X25519: u16 = 0x0001;

/// Maps an IANA code point to a ciphersuite Sotto supports.
pub fn ciphersuite(code: u16) -> Result<Ciphersuite, CoreError> {
    match code {
        XWING => Ok(Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519),
        X25519 => Ok(Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519),
        other => Err(CoreError::State(format!(
            "unsupported ciphersuite 0x{other:04x}"
        ))),
    }
}
