#![no_main]
//! Requests of the `/v1` API built from structured input and sent through the same
//! parse-then-validate path as the server's, so that fuzzing reaches the validation rules
//! (idempotency keys, counts, MLS framing and epochs, KeyPackage ownership) and not only the
//! JSON parser. Raw bytes are fed to every request type too.
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sotto_proto::api::*;
use sotto_proto::{Bytes, DeviceAddr, DeviceId, GroupId, Username};

#[derive(Arbitrary, Debug)]
enum Message {
    /// An RFC 9420 PrivateMessage header with empty payloads.
    Framed {
        same_group: bool,
        epoch: u64,
        content_type: u8,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Addr {
    user: String,
    device: u64,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Send {
        client_id: Option<String>,
        key: u128,
        message: Message,
        recipients: Vec<Addr>,
        to_roster: bool,
        roster: Option<Vec<Addr>>,
        welcome: Option<(Vec<u8>, Vec<Addr>)>,
    },
    Upload {
        key_packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    },
    Ack(Vec<u64>),
    Raw(Vec<u8>),
}

const GROUP: [u8; 16] = [0x5a; 16];

fn private_message(group: &[u8], epoch: u64, content_type: u8) -> Vec<u8> {
    let mut m = vec![0, 1, 0, 2, group.len() as u8];
    m.extend_from_slice(group);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&[content_type, 0, 0, 0]);
    m
}

fn addrs(list: &[Addr]) -> serde_json::Value {
    list.iter()
        .map(|a| serde_json::json!({ "user": a.user, "device": format!("{:016x}", a.device) }))
        .collect()
}

fn raw(data: &[u8], group: &GroupId, owner: &DeviceAddr) {
    let _ = serde_json::from_slice::<SendRequest>(data).map(|r| r.validate(group));
    let _ = serde_json::from_slice::<UploadKeyPackagesRequest>(data)
        .map(|r| r.validate(owner, &[7; 32]));
    let _ = serde_json::from_slice::<RegisterRequest>(data).map(RegisterRequest::validate);
    let _ = serde_json::from_slice::<TokenRequest>(data).map(TokenRequest::validate);
    let _ = serde_json::from_slice::<AckRequest>(data).map(AckRequest::validate);
    let _ = serde_json::from_slice::<PushRequest>(data).map(PushRequest::validate);
    let _ = serde_json::from_slice::<ChallengeRequest>(data);
    let _ = serde_json::from_slice::<ClaimRequest>(data);
    let _ = serde_json::from_slice::<QueueResponse>(data);
    let _ = serde_json::from_slice::<PushEvent>(data);
    let _ = serde_json::from_slice::<ClaimResponse>(data);
    let _ = serde_json::from_slice::<UserResponse>(data);
    let _ = serde_json::from_slice::<ServerConfig>(data);
}

fuzz_target!(|input: Input| {
    let (Ok(group), Ok(user)) = (GroupId::from_bytes(&GROUP), Username::parse("alice")) else {
        return;
    };
    let owner = DeviceAddr {
        user,
        device: DeviceId::new(1),
    };
    let body = match input {
        Input::Send {
            client_id,
            key,
            message,
            recipients,
            to_roster,
            roster,
            welcome,
        } => {
            let message = match message {
                Message::Framed {
                    same_group,
                    epoch,
                    content_type,
                } => {
                    let g = if same_group { GROUP } else { [0x5b; 16] };
                    private_message(&g, epoch, content_type % 4)
                }
                Message::Raw(bytes) => bytes,
            };
            let mut body = serde_json::json!({
                "client_id": client_id.unwrap_or_else(|| format!("{key:032x}")),
                "message": Bytes(message),
                "recipients": addrs(&recipients),
                "to_roster": to_roster,
            });
            if let Some(r) = roster {
                body["roster"] = addrs(&r);
            }
            if let Some((w, r)) = welcome {
                body["welcome"] =
                    serde_json::json!({ "message": Bytes(w), "recipients": addrs(&r) });
            }
            if let Ok(req) = serde_json::from_value::<SendRequest>(body.clone())
                && let Ok(valid) = req.validate(&group)
            {
                assert_eq!(valid.framing.group_id, group);
                assert!(valid.framing.epoch <= sotto_proto::limits::MAX_EPOCH);
            }
            body
        }
        Input::Upload {
            key_packages,
            last_resort,
        } => serde_json::json!({
            "key_packages": key_packages.into_iter().map(Bytes).collect::<Vec<_>>(),
            "last_resort": last_resort.map(Bytes),
        }),
        Input::Ack(ids) => serde_json::json!({ "ids": ids }),
        Input::Raw(data) => {
            raw(&data, &group, &owner);
            return;
        }
    };
    raw(
        &serde_json::to_vec(&body).unwrap_or_default(),
        &group,
        &owner,
    );
});
