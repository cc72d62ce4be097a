//! Names of accounts, devices and groups. Each type can only hold a valid value: parsing is
//! the only way in.

use crate::ProtoError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An account name: 3 to 32 characters of `a-z`, `0-9`, `_`, `.`, `-`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    /// Longest allowed name.
    pub const MAX_LEN: usize = 32;

    /// Parses a username.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        let ok_len = (3..=Self::MAX_LEN).contains(&s.len());
        let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        let chars_ok = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
        if ok_len && first_ok && chars_ok {
            Ok(Username(s.to_owned()))
        } else {
            Err(ProtoError::Invalid(
                "username (3-32 of a-z 0-9 _ . -, starting with a letter)",
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, ProtoError> {
        Username::parse(&s)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device of an account: a random 64-bit number, written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(u64);

impl DeviceId {
    /// Wraps a number.
    pub fn new(n: u64) -> Self {
        DeviceId(n)
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// Parses the 16-hex-digit form.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        if s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            u64::from_str_radix(s, 16)
                .map(DeviceId)
                .map_err(|_| ProtoError::Invalid("device id"))
        } else {
            Err(ProtoError::Invalid("device id (16 lowercase hex digits)"))
        }
    }
}

impl TryFrom<String> for DeviceId {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, ProtoError> {
        DeviceId::parse(&s)
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One device of one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceAddr {
    /// The account.
    pub user: Username,
    /// The device.
    pub device: DeviceId,
}

impl DeviceAddr {
    /// The MLS credential identity of this device: `user/device`.
    pub fn credential_identity(&self) -> Vec<u8> {
        format!("{}/{}", self.user, self.device).into_bytes()
    }

    /// Parses an MLS credential identity back into a device address.
    pub fn from_credential_identity(bytes: &[u8]) -> Result<Self, ProtoError> {
        let s = std::str::from_utf8(bytes).map_err(|_| ProtoError::Invalid("credential"))?;
        let (user, device) = s.split_once('/').ok_or(ProtoError::Invalid("credential"))?;
        Ok(DeviceAddr {
            user: Username::parse(user)?,
            device: DeviceId::parse(device)?,
        })
    }
}

impl fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user, self.device)
    }
}

/// An MLS group id: 16 to 64 random bytes chosen by the group's creator, hex on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupId(Vec<u8>);

impl GroupId {
    /// Shortest allowed id, in bytes.
    pub const MIN_LEN: usize = 16;
    /// Longest allowed id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Wraps raw bytes, checking the length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        if (Self::MIN_LEN..=Self::MAX_LEN).contains(&bytes.len()) {
            Ok(GroupId(bytes.to_vec()))
        } else {
            Err(ProtoError::Invalid("group id (16 to 64 bytes)"))
        }
    }

    /// Parses the hex form.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        if s.len() > 2 * Self::MAX_LEN || !s.len().is_multiple_of(2) {
            return Err(ProtoError::Invalid("group id (hex)"));
        }
        let bytes = s
            .as_bytes()
            .chunks(2)
            .map(|h| {
                std::str::from_utf8(h)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or(ProtoError::Invalid("group id (hex)"))?;
        Self::from_bytes(&bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<String> for GroupId {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, ProtoError> {
        GroupId::parse(&s)
    }
}

impl From<GroupId> for String {
    fn from(g: GroupId) -> String {
        g.to_string()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A server's identity: 16 random bytes it chose once, written as 32 lowercase hex digits.
/// Clients pin it at `init` and bind every sign-in signature to it, so a signature made for one
/// server is worthless at another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerId(String);

impl ServerId {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 32;

    /// Parses the 32-hex-digit form.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        if s.len() == Self::HEX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ServerId(s.to_owned()))
        } else {
            Err(ProtoError::Invalid("server id (32 lowercase hex digits)"))
        }
    }

    /// The id of 16 random bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ServerId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hex form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServerId {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, ProtoError> {
        ServerId::parse(&s)
    }
}

impl From<ServerId> for String {
    fn from(s: ServerId) -> String {
        s.0
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
