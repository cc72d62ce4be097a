//! Frozen formats: every checked-in vector in `tests/vectors` must decode and re-encode to the
//! same bytes. A failure here means a wire or signing format changed, which takes a new
//! version of that format (and its own vector), never an edited vector.

use ed25519_dalek::{Signature, Verifier as _};
use serde_json::Value;
use sotto_proto::api::{SendRequest, auth_signing_input};
use sotto_proto::device_list::{DeviceList, SignedDeviceListIn, parse_verifying_key};
use sotto_proto::{DeviceAddr, DeviceId, ServerId, Username};

fn vector(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(&path).expect("the vector is checked in");
    serde_json::from_slice(&raw).expect("the vector is JSON")
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    let field = v[field].as_str().expect("the field is a string");
    hex::decode(field).expect("the field is hex")
}

#[test]
fn the_device_list_body_its_signing_input_and_signature_are_frozen() {
    let v = vector("device_list.json");
    let body = bytes(&v, "body");
    let list: DeviceList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.encode(), body, "the body re-encodes byte for byte");
    assert_eq!(DeviceList::signing_input(&body), bytes(&v, "signing_input"));
    let identity = parse_verifying_key(&bytes(&v, "identity_key")).unwrap();
    let signed = SignedDeviceListIn {
        body: body.into(),
        signature: bytes(&v, "signature").into(),
    };
    let verified = signed.verify(&identity).unwrap();
    assert_eq!(verified.list(), &list);
}

#[test]
fn the_sign_in_signing_input_is_frozen() {
    let v = vector("sign_in.json");
    let server = ServerId::parse(v["server_id"].as_str().unwrap()).unwrap();
    let (user, device) = v["device"].as_str().unwrap().split_once('/').unwrap();
    let device = DeviceAddr {
        user: Username::parse(user).unwrap(),
        device: DeviceId::parse(device).unwrap(),
    };
    let input = auth_signing_input(&server, &device, &bytes(&v, "challenge"));
    assert_eq!(input, bytes(&v, "signing_input"));
    let key = parse_verifying_key(&bytes(&v, "device_key")).unwrap();
    let signature = Signature::from_slice(&bytes(&v, "signature")).unwrap();
    key.verify(&input, &signature).unwrap();
}

#[test]
fn the_send_request_json_is_frozen() {
    let path = format!(
        "{}/tests/vectors/send_request.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read_to_string(path).unwrap();
    let request: SendRequest = serde_json::from_str(raw.trim_end()).unwrap();
    assert_eq!(serde_json::to_string(&request).unwrap(), raw.trim_end());
    assert_eq!(request.recipients.len(), 1);
    assert_eq!(request.roster.as_ref().map(Vec::len), Some(2));
    assert_eq!(request.message.as_slice(), [0, 1, 2, 3]);
    assert!(!request.to_roster, "absent means named recipients");
}

#[test]
fn the_send_request_json_to_the_roster_is_frozen() {
    let path = format!(
        "{}/tests/vectors/send_request_to_roster.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read_to_string(path).unwrap();
    let request: SendRequest = serde_json::from_str(raw.trim_end()).unwrap();
    assert_eq!(serde_json::to_string(&request).unwrap(), raw.trim_end());
    assert!(request.to_roster);
    assert!(request.recipients.is_empty());
    assert_eq!(request.roster, None);
}
