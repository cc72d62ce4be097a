#![no_main]
use libfuzzer_sys::fuzz_target;
use sotto_proto::GroupId;
use sotto_proto::api::*;

fuzz_target!(|data: &[u8]| {
    if let Ok(group) = GroupId::from_bytes(&[0x5a; 16]) {
        let _ = serde_json::from_slice::<SendRequest>(data).map(|r| r.validate(&group));
    }
    let _ = serde_json::from_slice::<UploadKeyPackagesRequest>(data)
        .map(UploadKeyPackagesRequest::validate);
    let _ = serde_json::from_slice::<TokenRequest>(data).map(TokenRequest::validate);
    let _ = serde_json::from_slice::<AckRequest>(data).map(AckRequest::validate);
    let _ = serde_json::from_slice::<RegisterRequest>(data);
    let _ = serde_json::from_slice::<ChallengeRequest>(data);
    let _ = serde_json::from_slice::<ClaimRequest>(data);
    let _ = serde_json::from_slice::<QueueResponse>(data);
    let _ = serde_json::from_slice::<ClaimResponse>(data);
    let _ = serde_json::from_slice::<UserResponse>(data);
});
