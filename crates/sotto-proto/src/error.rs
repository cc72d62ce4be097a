//! Stable, machine-readable error codes shared by server and clients.

use serde::{Deserialize, Serialize};

/// Declares [`ErrorCode`] from one list, so that the enum, its wire strings and
/// [`ErrorCode::ALL`] can never disagree: a new code is in `ALL` (and so in every test that
/// walks it) the moment it is written.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident => $wire:literal, )*) => {
        /// Every error the API returns carries one of these codes. The strings are part of
        /// the wire contract: add new ones, never rename.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* #[serde(rename = $wire)] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable string form, as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON of the expected shape, or a path or query parameter is
    /// malformed.
    MalformedRequest => "malformed_request",
    /// A field breaks a size limit or a syntax rule.
    InvalidField => "invalid_field",
    /// The request body is larger than the server accepts.
    PayloadTooLarge => "payload_too_large",
    /// The API version in the path is not one this server speaks.
    UnsupportedVersion => "unsupported_version",
    /// No token, or a token the server does not know.
    Unauthorized => "unauthorized",
    /// The token was valid but has expired.
    TokenExpired => "token_expired",
    /// The challenge is unknown, already used or expired.
    InvalidChallenge => "invalid_challenge",
    /// The signature does not verify.
    InvalidSignature => "invalid_signature",
    /// The username is already registered.
    UsernameTaken => "username_taken",
    /// No such user.
    UnknownUser => "unknown_user",
    /// No such device.
    UnknownDevice => "unknown_device",
    /// A device of the user has no KeyPackage left, not even a last-resort one.
    NoKeyPackage => "no_key_package",
    /// The MLS message is not valid RFC 9420 framing, or is not for this group.
    InvalidMlsMessage => "invalid_mls_message",
    /// The message's epoch is not the group's current epoch; the body carries the epoch.
    EpochConflict => "epoch_conflict",
    /// The sender is not a member of the group according to the delivery service.
    NotAGroupMember => "not_a_group_member",
    /// No such route.
    NotFound => "not_found",
    /// Too many requests; the `Retry-After` header says when to try again.
    RateLimited => "rate_limited",
    /// The server failed; details are in its log, never in the response.
    Internal => "internal",
    /// The route exists, but not with this HTTP method.
    MethodNotAllowed => "method_not_allowed",
    /// The request took too long to arrive or to be answered. What it asked for may or may
    /// not have happened: a send is to be repeated with the same idempotency key.
    RequestTimeout => "request_timeout",
    /// The server cannot reach its storage for now. The request may be repeated after the
    /// `Retry-After` header's delay; a send with the same idempotency key.
    Unavailable => "unavailable",
    /// The user's device list is not in the key-transparency log (yet); the body carries
    /// the log's newest epoch.
    NotInLog => "not_in_log",
    /// The account already has as many devices as the server allows.
    TooManyDevices => "too_many_devices",
    /// The account's device list changed since the update was made (another device
    /// changed it): fetch it and make the update again.
    DeviceListChanged => "device_list_changed",
    /// No such link code, or it expired (codes work for five minutes, once).
    UnknownLink => "unknown_link",
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

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    /// Codes that have shipped. A rename breaks clients, so it must fail here; a new code only
    /// needs adding to this list.
    const SHIPPED: &[&str] = &[
        "malformed_request",
        "invalid_field",
        "payload_too_large",
        "unsupported_version",
        "unauthorized",
        "token_expired",
        "invalid_challenge",
        "invalid_signature",
        "username_taken",
        "unknown_user",
        "unknown_device",
        "no_key_package",
        "invalid_mls_message",
        "epoch_conflict",
        "not_a_group_member",
        "not_found",
        "rate_limited",
        "internal",
        "method_not_allowed",
        "request_timeout",
        "unavailable",
        "not_in_log",
        "too_many_devices",
        "device_list_changed",
        "unknown_link",
    ];

    #[test]
    fn every_code_is_shipped_and_no_shipped_code_was_renamed() {
        let wire: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(wire, SHIPPED, "ErrorCode::ALL and the shipped list differ");
    }

    #[test]
    fn serde_uses_the_wire_strings() {
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("a code serialises");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).expect("a code parses");
            assert_eq!(back, code);
        }
    }
}
