//! The content envelope is a frozen format: the checked-in vectors must decode and re-encode
//! to the same bytes. A change needs a new `CONTENT_VERSION`, never an edited vector.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use sotto_core::{Content, Envelope, LogRoot};

fn vectors(name: &str) -> Vec<String> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_version_3_content_envelope_is_frozen() {
    let vectors = vectors("envelopes_v3.json");
    let decoded: Vec<Envelope> = vectors
        .iter()
        .map(|v| Envelope::decode(v.as_bytes()).unwrap())
        .collect();
    for (v, e) in vectors.iter().zip(&decoded) {
        assert_eq!(e.encode(), v.as_bytes());
    }
    assert_eq!(
        decoded,
        [
            Envelope {
                sent_at: 1_700_000_003,
                counter: Some(1),
                log_root: Some(LogRoot {
                    epoch: 7,
                    root: [0xab; 32]
                }),
                content: Content::Text {
                    body: "hello, \u{e9}\u{1f600}".into()
                }
            },
            Envelope {
                sent_at: 1_700_000_004,
                counter: Some(2),
                log_root: None,
                content: Content::GroupInfo {
                    name: Some("team".into())
                }
            },
        ]
    );
}

/// Messages an earlier version queued still read, with no counter and no log root.
#[test]
fn version_2_content_envelopes_still_decode() {
    let decoded: Vec<Envelope> = vectors("envelopes.json")
        .iter()
        .map(|v| Envelope::decode(v.as_bytes()).unwrap())
        .collect();
    let v2 = |sent_at, content| Envelope {
        sent_at,
        counter: None,
        log_root: None,
        content,
    };
    assert_eq!(
        decoded,
        [
            v2(
                1_700_000_000,
                Content::Text {
                    body: "hello, \u{e9}\u{1f600}".into()
                }
            ),
            v2(
                1_700_000_001,
                Content::GroupInfo {
                    name: Some("team".into())
                }
            ),
            v2(1_700_000_002, Content::GroupInfo { name: None }),
        ]
    );
}

#[test]
fn envelopes_with_a_counter_or_log_root_out_of_place_or_out_of_range_are_refused() {
    let root = "ab".repeat(32);
    for bad in [
        // Version 3 without a counter, with counter 0, or past what a store keeps.
        r#"{"v":3,"sent_at":1,"type":"text","body":"x"}"#.to_owned(),
        r#"{"v":3,"sent_at":1,"n":0,"type":"text","body":"x"}"#.to_owned(),
        format!(
            r#"{{"v":3,"sent_at":1,"n":{},"type":"text","body":"x"}}"#,
            1u64 << 63
        ),
        // A log root that is not 32 bytes, or at an epoch past what a store keeps.
        r#"{"v":3,"sent_at":1,"n":1,"kt":{"epoch":1,"root":"ab"},"type":"text","body":"x"}"#
            .to_owned(),
        format!(
            r#"{{"v":3,"sent_at":1,"n":1,"kt":{{"epoch":{},"root":"{root}"}},"type":"text","body":"x"}}"#,
            1u64 << 63
        ),
        // Version 2 had neither.
        r#"{"v":2,"sent_at":1,"n":5,"type":"text","body":"x"}"#.to_owned(),
        format!(
            r#"{{"v":2,"sent_at":1,"kt":{{"epoch":1,"root":"{root}"}},"type":"text","body":"x"}}"#
        ),
        r#"{"v":4,"sent_at":1,"n":1,"type":"text","body":"x"}"#.to_owned(),
    ] {
        assert!(Envelope::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn debug_of_content_shows_neither_text_nor_name() {
    let text = Content::Text {
        body: "meet at the bridge".into(),
    };
    let named = Content::GroupInfo {
        name: Some("resistance".into()),
    };
    let shown = format!(
        "{text:?} {named:?} {:?}",
        Envelope {
            sent_at: 1,
            counter: Some(1),
            log_root: None,
            content: text.clone()
        }
    );
    assert!(
        !shown.contains("bridge") && !shown.contains("resistance"),
        "{shown}"
    );
    assert!(shown.contains("Text(18 bytes)"), "{shown}");
}

/// What the client store keeps as JSON: history events and what an outbox entry sends. A
/// store written by an earlier version must still read.
#[test]
fn the_stored_events_and_outbox_contents_are_frozen() {
    use sotto_core::events::{Event, MemberChange};
    let path = format!("{}/tests/vectors/stored.json", env!("CARGO_MANIFEST_DIR"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for event in v["events"].as_array().unwrap() {
        let raw = event.as_str().unwrap();
        let decoded: Event = serde_json::from_str(raw).unwrap();
        assert_ne!(decoded, Event::Unknown, "{raw}");
        assert_eq!(serde_json::to_string(&decoded).unwrap(), raw);
    }
    let message = v["outbox_message"].as_str().unwrap();
    let content: Content = serde_json::from_str(message).unwrap();
    assert_eq!(serde_json::to_string(&content).unwrap(), message);
    let commit = v["outbox_commit"].as_str().unwrap();
    let change: MemberChange = serde_json::from_str(commit).unwrap();
    assert_eq!(serde_json::to_string(&change).unwrap(), commit);
    let heal = v["outbox_heal"].as_str().unwrap();
    let change: MemberChange = serde_json::from_str(heal).unwrap();
    assert!(change.heal);
    assert_eq!(serde_json::to_string(&change).unwrap(), heal);
    // An event of a later version reads as one this version cannot describe.
    let later: Event = serde_json::from_str(r#"{"type":"call_missed","by":"alice"}"#).unwrap();
    assert_eq!(later, Event::Unknown);
}

proptest::proptest! {
    /// Whatever a peer encrypts, decoding it never panics (what decodes also round-trips).
    #[test]
    fn decoding_random_bytes_never_panics(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
    ) {
        if let Ok(e) = Envelope::decode(&bytes) {
            proptest::prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn every_envelope_a_device_makes_decodes_to_itself(
        sent_at in proptest::prelude::any::<u64>(),
        counter in 1..=i64::MAX as u64,
        root in proptest::option::of((0..=i64::MAX as u64, proptest::prelude::any::<[u8; 32]>())),
        body in ".{0,64}",
    ) {
        let e = Envelope {
            sent_at,
            counter: Some(counter),
            log_root: root.map(|(epoch, root)| LogRoot { epoch, root }),
            content: Content::Text { body },
        };
        proptest::prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }
}
