#![no_main]
//! What crosses the server in linking a device: a code as typed, an offer as the server
//! hands it out (checked with and without the code), an answer, and a device-list update
//! checked against an account's current list. Whatever the bytes, each returns an error or
//! a result and never panics.
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::device_list::{DEVICE_LIST_VERSION, DeviceEntry, DeviceList, SignedDeviceListIn};
use sotto_proto::link::{LinkAnswer, LinkCode, LinkId, LinkOffer, SECRET_LEN};
use sotto_proto::{Bytes, DeviceId, Username};

#[derive(Arbitrary, Debug)]
enum Input {
    Code(String),
    Offer {
        bytes: Vec<u8>,
        secret: [u8; SECRET_LEN],
    },
    Answer(Vec<u8>),
    Update(Vec<u8>),
}

fuzz_target!(|input: Input| {
    match input {
        Input::Code(text) => {
            if let Ok(code) = LinkCode::parse(&text) {
                assert_eq!(LinkCode::parse(&code.encode()).ok(), Some(code));
            }
        }
        Input::Offer { bytes, secret } => {
            let _ = LinkOffer::parse(&bytes);
            let code = LinkCode {
                id: LinkId([0; 6]),
                secret,
            };
            let _ = code.open_offer(&bytes);
        }
        Input::Answer(bytes) => {
            if let Ok(answer) = serde_json::from_slice::<LinkAnswer>(&bytes) {
                let _ = answer.validate();
            }
        }
        Input::Update(bytes) => {
            let current = DeviceList {
                version: DEVICE_LIST_VERSION,
                user: Username::parse("alice").expect("a valid name"),
                revision: 1,
                previous: None,
                devices: vec![DeviceEntry {
                    id: DeviceId::new(1),
                    signature_key: Bytes(vec![0; 32]),
                    name: "phone".into(),
                    added_at: 1,
                }],
            };
            let signed = SignedDeviceListIn {
                body: Bytes(current.encode()),
                signature: Bytes(vec![0; 64]),
            };
            if let Ok(update) = serde_json::from_slice::<DeviceListUpdate>(&bytes) {
                let _ = update.validate(&[7; 32], &signed, &current);
            }
        }
    }
});
