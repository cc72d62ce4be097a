#![no_main]
//! Signed checkpoints and cosignatures as they arrive: a checkpoint note in a lookup answer
//! (read by clients and witnesses), a cosignature line a witness posts (read by the server),
//! and a witness key given on the command line. Whatever the text, each returns an error or
//! a result and never panics.
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use sotto_proto::checkpoint::{
    SignedCheckpoint, WitnessKey, checkpoint_body, log_vkey, note_text, parse_cosignature,
    witness_vkey,
};

#[derive(Arbitrary, Debug)]
enum Input {
    /// A checkpoint note for an epoch and root.
    Note {
        note: String,
        epoch: u64,
        root: [u8; 32],
    },
    /// A checkpoint the log signed, with more signature lines after the log's.
    Cosigned {
        epoch: u64,
        root: [u8; 32],
        lines: String,
    },
    /// A cosignature line over a checkpoint body.
    Cosignature { line: String, body: Vec<u8> },
    /// A witness verifier key.
    Key(String),
}

fuzz_target!(|input: Input| {
    // Real keys, so that parsing goes past the key checks.
    let log = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let log_key = log_vkey("sotto-kt/0707", &log);
    let witness = ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key();
    let witnesses: Vec<WitnessKey> = WitnessKey::parse(&witness_vkey("w.test/1", &witness))
        .into_iter()
        .collect();
    match input {
        Input::Note { note, epoch, root } => {
            if let Ok(signed) = SignedCheckpoint::open(&note, &log_key, epoch, &root) {
                let _ = signed.cosigners(&witnesses);
            }
        }
        Input::Cosigned { epoch, root, lines } => {
            use ed25519_dalek::Signer as _;
            let log = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
            let Ok(body) = checkpoint_body("sotto-kt/0707", epoch, &root) else {
                return;
            };
            let id = log_key
                .split('+')
                .nth(1)
                .and_then(|id| u32::from_str_radix(id, 16).ok())
                .unwrap_or(0);
            let sig = [&id.to_be_bytes()[..], &log.sign(&body).to_bytes()[..]].concat();
            let log_line = format!("— sotto-kt/0707 {}", BASE64.encode(sig));
            let note = note_text(&body, &[log_line, lines]);
            let signed = SignedCheckpoint::open(&note, &log_key, epoch, &root);
            if let Ok(signed) = signed {
                let _ = signed.cosigners(&witnesses);
            }
        }
        Input::Cosignature { line, body } => {
            let _ = parse_cosignature(&line, &witnesses, &body);
        }
        Input::Key(key) => {
            if let Ok(key) = WitnessKey::parse(&key) {
                assert_eq!(WitnessKey::parse(&key.vkey()).ok(), Some(key));
            }
        }
    }
});
