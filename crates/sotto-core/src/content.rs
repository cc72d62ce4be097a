//! What travels inside an MLS application message: a versioned JSON envelope with the
//! sender's time, the sending device's count of its messages in the group, and the newest
//! key-transparency root the sender verified. Decoding is for untrusted bytes: an unknown
//! version or type, or an oversized field, is an error.

use crate::CoreError;
use serde::{Deserialize, Serialize};

/// Envelope format version: 2 added the sender's `sent_at`, 3 the counter and the log root.
/// Version 2 still decodes (messages queued by an earlier version), without either.
pub const CONTENT_VERSION: u32 = 3;
/// Longest text message, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;
/// Longest group name, in characters.
pub const MAX_GROUP_NAME: usize = 128;

/// The content of an application message. Its `Debug` shows what kind it is and how long,
/// never the text or the name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// A text message.
    Text {
        /// UTF-8 text.
        body: String,
    },
    /// The conversation's metadata, sent after a commit that adds members so they learn it.
    GroupInfo {
        /// The group's name; `None` for a one-to-one conversation.
        name: Option<String>,
    },
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Text { body } => write!(f, "Text({} bytes)", body.len()),
            Content::GroupInfo { name: Some(name) } => {
                write!(f, "GroupInfo(named, {} bytes)", name.len())
            }
            Content::GroupInfo { name: None } => f.write_str("GroupInfo(one-to-one)"),
        }
    }
}

/// Content as it travels, with what the sender vouches for alongside it. MLS authenticates
/// all of it, so these are the sender's word, not the server's: the time shown for a message,
/// the count that shows a message the server withheld (the server numbers the queue, so its
/// numbers prove nothing), and the log root that shows a server showing its users different
/// logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// When the sender sent it, by its clock: seconds since the Unix epoch.
    pub sent_at: u64,
    /// The sending device's count of its application messages in this group: 1, 2, 3, ...
    /// `None` only in a version-2 envelope (an envelope without one does not encode to one
    /// that decodes).
    pub counter: Option<u64>,
    /// The newest key-transparency epoch and root the sender verified, if any.
    pub log_root: Option<LogRoot>,
    /// What it carries.
    pub content: Content,
}

/// A key-transparency epoch and its root hash.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRoot {
    /// The epoch.
    pub epoch: u64,
    /// The root hash at that epoch.
    #[serde(with = "hex_root")]
    pub root: [u8; 32],
}

impl std::fmt::Debug for LogRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogRoot({}, {})", self.epoch, hex::encode(self.root))
    }
}

mod hex_root {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(root: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(root))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut root = [0; 32];
        hex::decode_to_slice(&text, &mut root).map_err(D::Error::custom)?;
        Ok(root)
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    sent_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kt: Option<LogRoot>,
    #[serde(flatten)]
    content: Content,
}

impl Envelope {
    /// Encodes for encryption.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Wire {
            v: CONTENT_VERSION,
            sent_at: self.sent_at,
            n: self.counter,
            kt: self.log_root,
            content: self.content.clone(),
        })
        .unwrap_or_default()
    }

    /// Decodes decrypted bytes from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        if bytes.len() > MAX_TEXT + 1024 {
            return Err(CoreError::Malformed("content too large".into()));
        }
        let wire: Wire = serde_json::from_slice(bytes)
            .map_err(|_| CoreError::Malformed("content is not a known envelope".into()))?;
        // Stores keep counters and epochs as SQLite integers.
        let in_range = |n: u64| i64::try_from(n).is_ok();
        match (wire.v, wire.n, wire.kt) {
            (2, None, None) => {}
            (2, ..) => {
                return Err(CoreError::Malformed(
                    "a version-2 envelope carries no counter and no log root".into(),
                ));
            }
            (CONTENT_VERSION, Some(n), kt)
                if n > 0 && in_range(n) && kt.is_none_or(|r| in_range(r.epoch)) => {}
            (CONTENT_VERSION, ..) => {
                return Err(CoreError::Malformed(
                    "message counter missing or out of range, or log epoch out of range".into(),
                ));
            }
            (v, ..) => {
                return Err(CoreError::Malformed(format!(
                    "unsupported content version {v}"
                )));
            }
        }
        Ok(Envelope {
            sent_at: wire.sent_at,
            counter: wire.n,
            log_root: wire.kt,
            content: wire.content.check()?,
        })
    }
}

impl Content {
    /// Checks the limits of a content value.
    pub fn check(self) -> Result<Self, CoreError> {
        match &self {
            Content::Text { body } if body.len() > MAX_TEXT => {
                Err(CoreError::Malformed("text too long".into()))
            }
            Content::GroupInfo { name: Some(n) }
                if n.chars().count() > MAX_GROUP_NAME
                    || n.is_empty()
                    || !n.chars().all(sotto_proto::device_list::is_displayable) =>
            {
                Err(CoreError::Malformed("invalid group name".into()))
            }
            _ => Ok(self),
        }
    }
}
