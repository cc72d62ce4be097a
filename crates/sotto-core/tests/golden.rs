//! The content envelope is a frozen format: the checked-in vectors must decode and re-encode
//! to the same bytes. A change needs a new `CONTENT_VERSION`, never an edited vector.

use sotto_core::{Content, Envelope};

#[test]
fn the_content_envelope_is_frozen() {
    let path = format!(
        "{}/tests/vectors/envelopes.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let vectors: Vec<String> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
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
                sent_at: 1_700_000_000,
                content: Content::Text {
                    body: "hello, \u{e9}\u{1f600}".into()
                }
            },
            Envelope {
                sent_at: 1_700_000_001,
                content: Content::GroupInfo {
                    name: Some("team".into())
                }
            },
            Envelope {
                sent_at: 1_700_000_002,
                content: Content::GroupInfo { name: None }
            },
        ]
    );
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
    // An event of a later version reads as one this version cannot describe.
    let later: Event = serde_json::from_str(r#"{"type":"call_missed","by":"alice"}"#).unwrap();
    assert_eq!(later, Event::Unknown);
}
