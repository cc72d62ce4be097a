#![no_main]
use libfuzzer_sys::fuzz_target;
use sotto_proto::Bytes;
use sotto_proto::device_list::SignedDeviceListIn;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    if let Ok(list) = serde_json::from_slice::<SignedDeviceListIn>(data) {
        let _ = list.verify(&key);
    }
    let (body, sig) = data.split_at(data.len().saturating_sub(64));
    let _ = SignedDeviceListIn {
        body: Bytes(body.to_vec()),
        signature: Bytes(sig.to_vec()),
    }
    .verify(&key);
});
