//! What travels inside an MLS application message: a versioned JSON envelope with the
//! sender's time. Decoding is for untrusted bytes: any other version, an unknown type or an
//! oversized field is an error.

use crate::CoreError;
use serde::{Deserialize, Serialize};

/// Envelope format version: 2 added the sender's `sent_at`.
pub const CONTENT_VERSION: u32 = 2;
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

/// Content as it travels: with the sender's own clock reading, which MLS authenticates along
/// with everything else, so the time shown for a message is the sender's word, not the
/// server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// When the sender sent it, by its clock: seconds since the Unix epoch.
    pub sent_at: u64,
    /// What it carries.
    pub content: Content,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    sent_at: u64,
    #[serde(flatten)]
    content: Content,
}

impl Envelope {
    /// Encodes for encryption.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Wire {
            v: CONTENT_VERSION,
            sent_at: self.sent_at,
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
        if wire.v != CONTENT_VERSION {
            return Err(CoreError::Malformed(format!(
                "unsupported content version {}",
                wire.v
            )));
        }
        Ok(Envelope {
            sent_at: wire.sent_at,
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
