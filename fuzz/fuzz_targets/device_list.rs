#![no_main]
//! Device lists that are signed correctly by a fixed identity key, built from structured
//! input, so that fuzzing reaches the checks behind the signature (versions, counts, keys,
//! names, duplicates) rather than stopping at invalid JSON. Some inputs are tampered with
//! after signing, or carry raw bytes instead.
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sotto_proto::Bytes;
use sotto_proto::device_list::{DeviceList, SignedDeviceListIn};

#[derive(Arbitrary, Debug)]
enum Key {
    /// The public key of a signing key made from this seed: a valid point.
    Valid(u8),
    /// Arbitrary bytes, usually not a point.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Device {
    id: u64,
    id_text: Option<String>,
    key: Key,
    name: String,
    added_at: u64,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Structured {
        version: u32,
        user: String,
        revision: u64,
        devices: Vec<Device>,
        /// Flip one byte of the signed body.
        tamper: Option<(u16, u8)>,
    },
    Raw {
        body: Vec<u8>,
        signature: Vec<u8>,
    },
}

fn key_bytes(key: &Key) -> Vec<u8> {
    match key {
        Key::Valid(seed) => SigningKey::from_bytes(&[*seed; 32])
            .verifying_key()
            .to_bytes()
            .to_vec(),
        Key::Raw(bytes) => bytes.clone(),
    }
}

fuzz_target!(|input: Input| {
    let identity = SigningKey::from_bytes(&[7; 32]);
    let signed = match input {
        Input::Structured {
            version,
            user,
            revision,
            devices,
            tamper,
        } => {
            let devices: Vec<serde_json::Value> = devices
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.id_text.clone().unwrap_or_else(|| format!("{:016x}", d.id)),
                        "signature_key": Bytes(key_bytes(&d.key)),
                        "name": d.name,
                        "added_at": d.added_at,
                    })
                })
                .collect();
            let body = serde_json::json!({
                "version": version % 3,
                "user": user,
                "revision": revision,
                "devices": devices,
            });
            let mut body = serde_json::to_vec(&body).unwrap_or_default();
            let signature = identity.sign(&DeviceList::signing_input(&body));
            if let Some((at, bits)) = tamper
                && !body.is_empty()
            {
                let i = usize::from(at) % body.len();
                body[i] ^= bits;
            }
            SignedDeviceListIn {
                body: Bytes(body),
                signature: Bytes(signature.to_bytes().to_vec()),
            }
        }
        Input::Raw { body, signature } => SignedDeviceListIn {
            body: Bytes(body),
            signature: Bytes(signature),
        },
    };
    if let Ok(verified) = signed.verify(&identity.verifying_key()) {
        // Whatever passes must satisfy the rules the checks promise.
        let list = verified.list();
        assert!(!list.devices.is_empty());
        for d in &list.devices {
            sotto_proto::device_list::parse_verifying_key(d.signature_key.as_slice())
                .expect("a verified list holds only valid keys");
            sotto_proto::device_list::check_device_name(&d.name)
                .expect("a verified list holds only displayable names");
        }
    }
});
