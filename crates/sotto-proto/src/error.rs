//! Stable, machine-readable error codes shared by server and clients.

use serde::{Deserialize, Serialize};

/// Every error the API returns carries one of these codes. The strings are part of the
/// wire contract: add new ones, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The body is not valid JSON of the expected shape.
    MalformedRequest,
    /// A field breaks a size limit or a syntax rule.
    InvalidField,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// The API version in the path is not one this server speaks.
    UnsupportedVersion,
    /// No token, or a token the server does not know.
    Unauthorized,
    /// The token was valid but has expired.
    TokenExpired,
    /// The challenge is unknown, already used or expired.
    InvalidChallenge,
    /// The signature does not verify.
    InvalidSignature,
    /// The username is already registered.
    UsernameTaken,
    /// No such user.
    UnknownUser,
    /// No such device.
    UnknownDevice,
    /// The device has no KeyPackage left, not even a last-resort one.
    NoKeyPackage,
    /// The MLS message is not valid RFC 9420 framing, or is not for this group.
    InvalidMlsMessage,
    /// The message's epoch is not the group's current epoch; the body carries the epoch.
    EpochConflict,
    /// The sender is not a member of the group according to the delivery service.
    NotAGroupMember,
    /// No such route.
    NotFound,
    /// Too many requests.
    RateLimited,
    /// The server failed; details are in its log, never in the response.
    Internal,
}

impl ErrorCode {
    /// The stable string form, as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidChallenge => "invalid_challenge",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::NoKeyPackage => "no_key_package",
            ErrorCode::InvalidMlsMessage => "invalid_mls_message",
            ErrorCode::EpochConflict => "epoch_conflict",
            ErrorCode::NotAGroupMember => "not_a_group_member",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Short human sentence; never holds secrets or message content.
    pub message: String,
    /// The group's current epoch, with [`ErrorCode::EpochConflict`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Why untrusted input was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A field is malformed or out of bounds; the string names the field and the rule.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A field is larger than its limit.
    #[error("{0} is too large")]
    TooLarge(&'static str),
    /// Bytes are not a valid MLS message of the expected kind.
    #[error("invalid MLS message: {0}")]
    Mls(&'static str),
    /// A signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A format version this code does not know.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u32),
}

impl ProtoError {
    /// The wire code for this rejection.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtoError::Invalid(_) | ProtoError::TooLarge(_) => ErrorCode::InvalidField,
            ProtoError::Mls(_) => ErrorCode::InvalidMlsMessage,
            ProtoError::BadSignature => ErrorCode::InvalidSignature,
            ProtoError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
        }
    }
}
