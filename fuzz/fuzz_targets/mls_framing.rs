#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sotto_proto::framing::parse_group_message(data);
    let _ = sotto_proto::framing::check_welcome(data);
    let _ = sotto_proto::framing::check_key_package(data);
});
