//! Request and response bodies of the `/v1` API. Field-level checks that serde cannot express
//! live in each request's `validate`.

use crate::device_list::{SignedDeviceListIn, VerifiedDeviceList, parse_verifying_key};
use crate::{Bytes, DeviceAddr, DeviceId, GroupId, ProtoError, ServerId, Username, limits};
use serde::{Deserialize, Serialize};

/// `GET /v1/config`: what a client needs before creating an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// API version.
    pub api_version: u32,
    /// The MLS ciphersuite every group on this server uses (IANA code point).
    pub ciphersuite: u16,
    /// The server's identity, pinned by clients at `init` and bound into every sign-in.
    pub server_id: ServerId,
    /// The public key of the key-transparency log's VRF (32 bytes), pinned by clients at
    /// `init`: every lookup proof they accept is checked against it.
    pub kt_vrf_key: Bytes,
    /// The C2SP verifier key (`name+id+base64`) of the key that signs the log's checkpoints,
    /// pinned by clients at `init` with the VRF key (empty from a server that signs none).
    #[serde(default)]
    pub kt_checkpoint_key: String,
}

/// `POST /v1/accounts`: create an account with its first device and that device's first
/// KeyPackages, all or nothing, so an account can never exist that nobody can add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Ed25519 identity public key.
    pub identity_key: Bytes,
    /// The first device list (revision 1, one device), signed by the identity key.
    pub device_list: SignedDeviceListIn,
    /// The device's one-time KeyPackages.
    pub key_packages: Vec<Bytes>,
    /// The device's last-resort KeyPackage.
    pub last_resort: Bytes,
}

/// A [`RegisterRequest`] that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidRegistration {
    /// Ed25519 identity public key, a valid point.
    pub identity_key: Vec<u8>,
    /// The first device list, signed by that key: revision 1, one device.
    pub device_list: VerifiedDeviceList,
    /// One-time KeyPackages, each naming the listed device and its key.
    pub key_packages: Vec<Vec<u8>>,
    /// The last-resort KeyPackage, likewise.
    pub last_resort: Vec<u8>,
}

impl RegisterRequest {
    /// Verifies the device list with the identity key, and checks that every KeyPackage
    /// names the account's one device and its signature key.
    pub fn validate(self) -> Result<ValidRegistration, ProtoError> {
        let identity = parse_verifying_key(self.identity_key.as_slice())?;
        let list = self.device_list.verify(&identity)?;
        let device = match list.list().devices.as_slice() {
            [device] if list.list().revision == 1 => device,
            _ => {
                return Err(ProtoError::Invalid(
                    "first device list (revision 1, one device)",
                ));
            }
        };
        let owner = DeviceAddr {
            user: list.list().user.clone(),
            device: device.id,
        };
        let key_packages = check_own_key_packages(
            self.key_packages,
            Some(self.last_resort),
            &owner,
            device.signature_key.as_slice(),
        )?;
        let (last_resort, one_time) = key_packages
            .split_last()
            .ok_or(ProtoError::Invalid("last_resort"))?;
        Ok(ValidRegistration {
            identity_key: self.identity_key.into_vec(),
            key_packages: one_time.to_vec(),
            last_resort: last_resort.clone(),
            device_list: list,
        })
    }
}

/// Checks a batch of one-time KeyPackages (and a last-resort one, returned last): the count,
/// that each is a KeyPackage, and that each names `owner` with `signature_key`.
pub(crate) fn check_own_key_packages(
    one_time: Vec<Bytes>,
    last_resort: Option<Bytes>,
    owner: &DeviceAddr,
    signature_key: &[u8],
) -> Result<Vec<Vec<u8>>, ProtoError> {
    if one_time.len() > limits::MAX_KEY_PACKAGE_BATCH {
        return Err(ProtoError::TooLarge("key_packages"));
    }
    one_time
        .into_iter()
        .chain(last_resort)
        .map(|kp| {
            if crate::framing::check_key_package(kp.as_slice())?.is(owner, signature_key) {
                Ok(kp.into_vec())
            } else {
                Err(ProtoError::Invalid(
                    "KeyPackage credential (must name the uploading device and its key)",
                ))
            }
        })
        .collect()
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

/// Length of a challenge: a random nonce (16 bytes), its expiry (8) and the server's MAC
/// over both and the device (32).
pub const CHALLENGE_LEN: usize = 56;

/// A single-use challenge to sign with the device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// [`CHALLENGE_LEN`] bytes, opaque to the client.
    pub challenge: Bytes,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Domain separation prefix of a challenge signature, with its purpose.
pub const AUTH_CONTEXT: &[u8] = b"sotto-auth-v2\0sign-in\0";

/// The bytes a device signs to answer `challenge` from the server `server`. Naming the
/// server means a signature one server obtained cannot be replayed at another.
pub fn auth_signing_input(server: &ServerId, device: &DeviceAddr, challenge: &[u8]) -> Vec<u8> {
    [
        AUTH_CONTEXT,
        server.as_str().as_bytes(),
        b"\0",
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
        if self.challenge.len() != CHALLENGE_LEN {
            return Err(ProtoError::Invalid("challenge (56 bytes)"));
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

/// An [`UploadKeyPackagesRequest`] that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidUpload {
    /// One-time KeyPackages.
    pub one_time: Vec<Vec<u8>>,
    /// A new last-resort KeyPackage, if any.
    pub last_resort: Option<Vec<u8>>,
}

impl UploadKeyPackagesRequest {
    /// Checks the count, and that each entry is a KeyPackage naming `owner` (the uploading
    /// device) with its `signature_key`.
    pub fn validate(
        self,
        owner: &DeviceAddr,
        signature_key: &[u8],
    ) -> Result<ValidUpload, ProtoError> {
        let has_last_resort = self.last_resort.is_some();
        let mut all =
            check_own_key_packages(self.key_packages, self.last_resort, owner, signature_key)?;
        let last_resort = if has_last_resort { all.pop() } else { None };
        Ok(ValidUpload {
            one_time: all,
            last_resort,
        })
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

/// `GET /v1/devices`: when each device of the asking account last signed in, as the server
/// recorded it. Only the account's own devices see this; contacts never do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesResponse {
    /// Every device the server holds for the account, in id order.
    pub devices: Vec<DeviceSeen>,
}

/// One device's last sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSeen {
    /// The device.
    pub device: DeviceId,
    /// When it last signed in (seconds since the Unix epoch); `None` if it never has.
    pub last_seen: Option<u64>,
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
    /// Devices to deliver it to (the sender's own device excluded). Empty with `to_roster`.
    #[serde(default)]
    pub recipients: Vec<DeviceAddr>,
    /// Deliver it to every device of the group's roster as the server holds it before this
    /// message (the sender's own device excluded), rather than to `recipients`: the message
    /// does not carry the group's devices, and the server queues it for all of them at once.
    /// Sotto's clients send a large group's messages so (and its commits past 5,000 devices),
    /// and name the recipients in a small group, where a member who declared a false roster
    /// could otherwise keep messages from the devices it left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub to_roster: bool,
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
    /// Checks sizes, the idempotency key, the MLS framing against `group`, that a roster or
    /// Welcome only comes with a commit, that recipients are named one way, and that no list
    /// names a device twice.
    pub fn validate(self, group: &GroupId) -> Result<ValidSend, ProtoError> {
        if self.client_id.len() != limits::CLIENT_ID_HEX
            || !self.client_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(ProtoError::Invalid("client_id (32 hex digits)"));
        }
        if self.recipients.len() > limits::MAX_RECIPIENTS
            || self
                .welcome
                .as_ref()
                .is_some_and(|w| w.recipients.len() > limits::MAX_RECIPIENTS)
        {
            return Err(ProtoError::TooLarge("recipients"));
        }
        if self
            .roster
            .as_ref()
            .is_some_and(|r| r.len() > limits::MAX_ROSTER)
        {
            return Err(ProtoError::TooLarge("roster"));
        }
        if self.to_roster && !self.recipients.is_empty() {
            return Err(ProtoError::Invalid("recipients or to_roster, not both"));
        }
        // Each device once in each list: the server looks every one up.
        let lists = [
            Some(&self.recipients),
            self.roster.as_ref(),
            self.welcome.as_ref().map(|w| &w.recipients),
        ];
        for list in lists.into_iter().flatten() {
            let mut seen = std::collections::HashSet::with_capacity(list.len());
            if !list.iter().all(|d| seen.insert(d)) {
                return Err(ProtoError::Invalid("a device named twice"));
            }
        }
        let framing = crate::framing::parse_group_message(self.message.as_slice())?;
        if &framing.group_id != group {
            return Err(ProtoError::Mls("group id does not match the path"));
        }
        let is_commit = framing.kind == crate::framing::MessageKind::Commit;
        if is_commit && framing.epoch >= limits::MAX_EPOCH {
            return Err(ProtoError::Mls("epoch out of range for a commit"));
        }
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
    /// How many messages for this device the server has dropped unread since the device
    /// was created (its queue was over quota, or they outlived the retention period). It
    /// only grows; a client shows the difference to the total it saw last.
    #[serde(default)]
    pub dropped_total: u64,
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

/// WebSocket close code with which the server closes a device's oldest socket when the
/// device opens one more than it may keep.
pub const CLOSE_REPLACED: u16 = 4000;

/// What the server sends over the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushEvent {
    /// Messages of the device's queue, oldest first, as `GET /v1/queue` returns them: on a
    /// new socket the queue from its start, then what is queued as it comes. A message is
    /// sent once on a socket and stays queued until acknowledged (on the socket with
    /// [`PushRequest::Ack`], or over HTTP); a new socket sends it again.
    Messages(QueueResponse),
}

/// What a client sends over the WebSocket, as a text frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushRequest {
    /// These messages are processed: take them off the queue. At most
    /// [`limits::MAX_SOCKET_ACK`] ids.
    Ack {
        /// Message ids.
        ids: Vec<u64>,
    },
}

impl PushRequest {
    /// Checks the count.
    pub fn validate(self) -> Result<Self, ProtoError> {
        match &self {
            PushRequest::Ack { ids } if ids.len() > limits::MAX_SOCKET_ACK => {
                Err(ProtoError::TooLarge("ids"))
            }
            PushRequest::Ack { .. } => Ok(self),
        }
    }
}
