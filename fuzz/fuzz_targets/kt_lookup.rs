#![no_main]
//! A key-transparency lookup answer as a client receives it: JSON around an akd lookup
//! proof in protobuf. Whatever the bytes, verification returns an error or a result and
//! never panics.
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sotto_proto::kt::{LookupResponse, verify_lookup_proof};
use sotto_proto::{Bytes, Username};

#[derive(Arbitrary, Debug)]
enum Input {
    /// The response's JSON, as it arrives.
    Json(Vec<u8>),
    /// The proof's bytes, in an otherwise well-formed response.
    Proof {
        epoch: u64,
        root: [u8; 32],
        proof: Vec<u8>,
        vrf_key: [u8; 32],
    },
}

fuzz_target!(|input: Input| {
    let user = Username::parse("bob").expect("a valid name");
    match input {
        Input::Json(bytes) => {
            if let Ok(found) = serde_json::from_slice::<LookupResponse>(&bytes) {
                let _ = verify_lookup_proof(&[9; 32], &user, &found);
            }
        }
        Input::Proof {
            epoch,
            root,
            proof,
            vrf_key,
        } => {
            let found = LookupResponse {
                epoch,
                root_hash: Bytes(root.to_vec()),
                proof: Bytes(proof),
                checkpoint: String::new(),
            };
            let _ = verify_lookup_proof(&vrf_key, &user, &found);
        }
    }
});
