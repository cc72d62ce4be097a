//! Account identity keys and device keys.
//!
//! The identity key (Ed25519) signs the account's device list; every device of the account
//! holds it. Each device also has its own Ed25519 key that is its MLS signature key and its
//! sign-in key. Both zeroize on drop and print as `<redacted>`.

use crate::CoreError;
use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::{BasicCredential, CredentialWithKey, SignatureScheme};
use openmls_traits::signatures::{Signer, SignerError};
use sotto_proto::device_list::{DEVICE_LIST_VERSION, DeviceEntry, DeviceList, SignedDeviceListIn};
use sotto_proto::{DeviceAddr, DeviceId, ServerId, Username};
use zeroize::Zeroizing;

fn generate_signing_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

fn signing_key_from(bytes: &[u8]) -> Result<SigningKey, CoreError> {
    let arr: Zeroizing<[u8; 32]> = Zeroizing::new(
        bytes
            .try_into()
            .map_err(|_| CoreError::Malformed("secret key length".into()))?,
    );
    Ok(SigningKey::from_bytes(&arr))
}

/// An account's identity key.
pub struct IdentityKey(SigningKey);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(<redacted>)")
    }
}

impl IdentityKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        IdentityKey(generate_signing_key())
    }

    /// Restores a key from its 32 secret bytes.
    pub fn from_secret(bytes: &[u8]) -> Result<Self, CoreError> {
        signing_key_from(bytes).map(IdentityKey)
    }

    /// The 32 secret bytes, for the encrypted local store.
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// Signs a device list.
    pub fn sign_device_list(&self, list: &DeviceList) -> SignedDeviceListIn {
        let body = list.encode();
        let signature = self.0.sign(&DeviceList::signing_input(&body));
        SignedDeviceListIn {
            body: body.into(),
            signature: signature.to_bytes().to_vec().into(),
        }
    }
}

/// A device's own key: its MLS signature key and its sign-in key.
pub struct DeviceKey {
    addr: DeviceAddr,
    key: SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({}, <redacted>)", self.addr)
    }
}

impl DeviceKey {
    /// A new device of `user` with a random id and key.
    pub fn generate(user: Username) -> Self {
        DeviceKey {
            addr: DeviceAddr {
                user,
                device: DeviceId::new(rand::random()),
            },
            key: generate_signing_key(),
        }
    }

    /// Restores a device key.
    pub fn from_secret(addr: DeviceAddr, bytes: &[u8]) -> Result<Self, CoreError> {
        Ok(DeviceKey {
            addr,
            key: signing_key_from(bytes)?,
        })
    }

    /// The 32 secret bytes, for the encrypted local store.
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    /// This device's address.
    pub fn addr(&self) -> &DeviceAddr {
        &self.addr
    }

    /// The public signature key.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The device-list entry for this device.
    pub fn entry(&self, name: &str, added_at: u64) -> DeviceEntry {
        DeviceEntry {
            id: self.addr.device,
            signature_key: self.public().to_vec().into(),
            name: name
                .chars()
                .take(sotto_proto::limits::MAX_DEVICE_NAME)
                .collect(),
            added_at,
        }
    }

    /// The first device list of a new account: this device alone, revision 1.
    pub fn first_device_list(&self, name: &str, added_at: u64) -> DeviceList {
        DeviceList {
            version: DEVICE_LIST_VERSION,
            user: self.addr.user.clone(),
            revision: 1,
            previous: None,
            devices: vec![self.entry(name, added_at)],
        }
    }

    /// The MLS credential (`user/device`) bound to this device's signature key.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.addr.credential_identity()).into(),
            signature_key: self.public().to_vec().into(),
        }
    }

    /// Answers a sign-in challenge of the server `server`.
    pub fn sign_challenge(&self, server: &ServerId, challenge: &[u8]) -> Vec<u8> {
        self.key
            .sign(&sotto_proto::api::auth_signing_input(
                server, &self.addr, challenge,
            ))
            .to_bytes()
            .to_vec()
    }
}

impl Signer for DeviceKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
