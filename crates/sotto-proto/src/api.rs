//! Request and response bodies of the `/v1` API. Field-level checks that serde cannot express
//! live in each request's `validate`.

use crate::device_list::SignedDeviceListIn;
use crate::{Bytes, DeviceAddr, DeviceId, GroupId, ProtoError, Username, limits};
use serde::{Deserialize, Serialize};

/// `GET /v1/config`: what a client needs before creating an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// API version.
    pub api_version: u32,
    /// The MLS ciphersuite every group on this server uses (IANA code point).
    pub ciphersuite: u16,
}

/// `POST /v1/accounts`: create an account with its first device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Ed25519 identity public key.
    pub identity_key: Bytes,
    /// The first device list (revision 1, one device), signed by the identity key.
    pub device_list: SignedDeviceListIn,
}

/// Response to a successful registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The new account.
    pub user: Username,
}

/// `POST /v1/auth/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// Who wants to sign in.
    pub device: DeviceAddr,
}

/// A single-use challenge to sign with the device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// 32 random bytes.
    pub challenge: Bytes,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Domain separation prefix of a challenge signature.
pub const AUTH_CONTEXT: &[u8] = b"sotto-auth-v1\0";

/// The bytes a device signs to answer `challenge`.
pub fn auth_signing_input(device: &DeviceAddr, challenge: &[u8]) -> Vec<u8> {
    [
        AUTH_CONTEXT,
        device.to_string().as_bytes(),
        b"\0",
        challenge,
    ]
    .concat()
}

/// `POST /v1/auth/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Who signs in.
    pub device: DeviceAddr,
    /// The challenge received.
    pub challenge: Bytes,
    /// Ed25519 signature by the device key over [`auth_signing_input`].
    pub signature: Bytes,
}

impl TokenRequest {
    /// Checks field sizes.
    pub fn validate(self) -> Result<Self, ProtoError> {
        if self.challenge.len() != 32 {
            return Err(ProtoError::Invalid("challenge (32 bytes)"));
        }
        if self.signature.len() != 64 {
            return Err(ProtoError::Invalid("signature (64 bytes)"));
        }
        Ok(self)
    }
}

/// A bearer token for the `Authorization` header.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The token.
    pub token: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// `GET /v1/users/{user}`: an account's public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResponse {
    /// The account.
    pub user: Username,
    /// Ed25519 identity public key.
    pub identity_key: Bytes,
    /// The current signed device list.
    pub device_list: SignedDeviceListIn,
}

/// `POST /v1/keypackages`: upload a batch of one-time KeyPackages, and optionally replace the
/// last-resort one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadKeyPackagesRequest {
    /// One-time KeyPackages, each an RFC 9420 `MLSMessage`.
    pub key_packages: Vec<Bytes>,
    /// A last-resort KeyPackage, handed out when no one-time one is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resort: Option<Bytes>,
}

impl UploadKeyPackagesRequest {
    /// Checks counts and that each entry is a KeyPackage.
    pub fn validate(self) -> Result<Self, ProtoError> {
        if self.key_packages.len() > limits::MAX_KEY_PACKAGE_BATCH {
            return Err(ProtoError::TooLarge("key_packages"));
        }
        for kp in self.key_packages.iter().chain(self.last_resort.iter()) {
            crate::framing::check_key_package(kp.as_slice())?;
        }
        Ok(self)
    }
}

/// How many KeyPackages this device has left on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageCount {
    /// One-time KeyPackages left.
    pub count: u64,
    /// Whether a last-resort KeyPackage is stored.
    pub last_resort: bool,
}

/// `POST /v1/keypackages/claim`: one KeyPackage for each device of `user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Whose devices.
    pub user: Username,
}

/// A claimed KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device: DeviceId,
    /// The KeyPackage.
    pub key_package: Bytes,
}

/// Response to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResponse {
    /// One per device of the user.
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// A Welcome that goes with a commit, for the devices it adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeOut {
    /// The RFC 9420 Welcome message.
    pub message: Bytes,
    /// The new devices.
    pub recipients: Vec<DeviceAddr>,
}

/// `POST /v1/groups/{group_id}/messages`: send one MLS message to a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// Idempotency key chosen by the sender (32 hex digits): sending the same key twice
    /// stores the message once and returns the first answer.
    pub client_id: String,
    /// The RFC 9420 `MLSMessage` (PublicMessage or PrivateMessage).
    pub message: Bytes,
    /// Devices to deliver it to (the sender's own device excluded).
    pub recipients: Vec<DeviceAddr>,
    /// With a commit: the group's devices after it, which become the only devices the server
    /// accepts messages from for this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roster: Option<Vec<DeviceAddr>>,
    /// With a commit that adds devices: their Welcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<WelcomeOut>,
}

/// A [`SendRequest`] that passed every check, with the framing the server routes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidSend {
    /// The request.
    pub request: SendRequest,
    /// The parsed public framing of `request.message`.
    pub framing: crate::framing::Framing,
}

impl SendRequest {
    /// Checks sizes, the idempotency key, the MLS framing against `group`, and that a roster
    /// or Welcome only comes with a commit.
    pub fn validate(self, group: &GroupId) -> Result<ValidSend, ProtoError> {
        if self.client_id.len() != limits::CLIENT_ID_HEX
            || !self.client_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ProtoError::Invalid("client_id (32 hex digits)"));
        }
        let total = self.recipients.len()
            + self.roster.as_ref().map_or(0, Vec::len)
            + self.welcome.as_ref().map_or(0, |w| w.recipients.len());
        if total > 3 * limits::MAX_RECIPIENTS || self.recipients.len() > limits::MAX_RECIPIENTS {
            return Err(ProtoError::TooLarge("recipients"));
        }
        let framing = crate::framing::parse_group_message(self.message.as_slice())?;
        if &framing.group_id != group {
            return Err(ProtoError::Mls("group id does not match the path"));
        }
        let is_commit = framing.kind == crate::framing::MessageKind::Commit;
        if !is_commit && (self.roster.is_some() || self.welcome.is_some()) {
            return Err(ProtoError::Invalid("roster/welcome only go with a commit"));
        }
        if is_commit && self.roster.is_none() {
            return Err(ProtoError::Invalid("a commit needs a roster"));
        }
        if let Some(w) = &self.welcome {
            crate::framing::check_welcome(w.message.as_slice())?;
        }
        Ok(ValidSend {
            request: self,
            framing,
        })
    }
}

/// The server's answer to an accepted message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    /// Server-wide message id.
    pub id: u64,
    /// Sequence number within the group.
    pub seq: u64,
    /// The group's epoch after this message.
    pub epoch: u64,
    /// When the server accepted it, seconds since the Unix epoch.
    pub accepted_at: u64,
}

/// What a queued item carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueuedKind {
    /// A group message (application, proposal or commit).
    Group,
    /// A Welcome into a group.
    Welcome,
}

/// One message waiting for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Server-wide message id; acknowledge it when processed.
    pub id: u64,
    /// The group.
    pub group_id: GroupId,
    /// Sequence number within the group.
    pub seq: u64,
    /// Who sent it, as authenticated by the server (MLS authenticates it again).
    pub sender: DeviceAddr,
    /// Group message or Welcome.
    pub kind: QueuedKind,
    /// The RFC 9420 message.
    pub message: Bytes,
    /// When the server accepted it, seconds since the Unix epoch.
    pub accepted_at: u64,
}

/// `GET /v1/queue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueResponse {
    /// Oldest first.
    pub messages: Vec<QueuedMessage>,
}

/// `POST /v1/queue/ack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    /// Message ids processed.
    pub ids: Vec<u64>,
}

impl AckRequest {
    /// Checks the count.
    pub fn validate(self) -> Result<Self, ProtoError> {
        if self.ids.len() > limits::MAX_ACK {
            return Err(ProtoError::TooLarge("ids"));
        }
        Ok(self)
    }
}

/// Sent over the WebSocket when the device's queue has something new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushEvent {
    /// Fetch the queue.
    NewMessages,
}
