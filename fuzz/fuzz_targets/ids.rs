#![no_main]
use libfuzzer_sys::fuzz_target;
use sotto_proto::{DeviceAddr, DeviceId, GroupId, Username};

fuzz_target!(|data: &[u8]| {
    let _ = DeviceAddr::from_credential_identity(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Username::parse(s);
        let _ = DeviceId::parse(s);
        let _ = GroupId::parse(s);
    }
});
