//! What the engine asks of the server: the `/v1` API, one method per call. `sotto-client`
//! implements it over HTTP; a test can implement it in-process. Failures are
//! [`ClientError::Unreachable`] (nothing learned) or [`ClientError::Refused`] (the server's
//! answer).

use crate::ClientError;
use async_trait::async_trait;
use sotto_proto::api::{
    ChallengeRequest, ChallengeResponse, ClaimResponse, DevicesResponse, KeyPackageCount,
    QueueResponse, RegisterRequest, RegisterResponse, SendRequest, SendResponse, ServerConfig,
    TokenRequest, TokenResponse, UploadKeyPackagesRequest, UserResponse,
};
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::kt::{EpochResponse, LookupResponse};
use sotto_proto::link::{
    CreateLinkRequest, CreateLinkResponse, LinkAnswer, LinkId, LinkOfferResponse, PickupRequest,
    PickupResponse,
};
use sotto_proto::{GroupId, Username};

/// The server's API. Methods that take a `token` act as the device it was issued to.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The server's settings and identity.
    async fn config(&self) -> Result<ServerConfig, ClientError>;
    /// Creates an account. Never repeated after a lost answer (it could succeed twice).
    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError>;
    /// A sign-in challenge.
    async fn challenge(&self, req: &ChallengeRequest) -> Result<ChallengeResponse, ClientError>;
    /// A token for an answered challenge.
    async fn token(&self, req: &TokenRequest) -> Result<TokenResponse, ClientError>;
    /// A user's identity key and signed device list.
    async fn user(&self, token: &str, user: &Username) -> Result<UserResponse, ClientError>;
    /// A proof of `user`'s value in the key-transparency log; with `after`, the server may
    /// wait a few seconds for an epoch newer than that one, and then for `cosigned`
    /// witnesses' cosignatures on the answer's epoch. `Refused` with
    /// [`sotto_proto::ErrorCode::NotInLog`] (and the log's epoch) if the user is not in it.
    async fn kt_lookup(
        &self,
        token: &str,
        user: &Username,
        after: Option<u64>,
        cosigned: usize,
    ) -> Result<LookupResponse, ClientError>;
    /// The log's epoch `epoch` as the server recorded it: its root and signed checkpoint,
    /// and its append-only proof if `proof`. `Refused` with `not_found` if it is not
    /// recorded. Needs no sign-in.
    async fn kt_epoch(&self, epoch: u64, proof: bool) -> Result<EpochResponse, ClientError>;
    /// Uploads KeyPackages of the signed-in device.
    async fn upload_key_packages(
        &self,
        token: &str,
        req: &UploadKeyPackagesRequest,
    ) -> Result<KeyPackageCount, ClientError>;
    /// How many KeyPackages the signed-in device has left.
    async fn key_package_count(&self, token: &str) -> Result<KeyPackageCount, ClientError>;
    /// Claims one KeyPackage per device of `user`.
    async fn claim(&self, token: &str, user: &Username) -> Result<ClaimResponse, ClientError>;
    /// Sends a message to a group.
    async fn send(
        &self,
        token: &str,
        group: &GroupId,
        req: &SendRequest,
    ) -> Result<SendResponse, ClientError>;
    /// The oldest messages queued for the signed-in device.
    async fn queue(&self, token: &str, limit: u32) -> Result<QueueResponse, ClientError>;
    /// Acknowledges queued messages.
    async fn ack(&self, token: &str, ids: Vec<u64>) -> Result<(), ClientError>;
    /// Replaces the signed-in device's account's device list with the next revision.
    async fn update_device_list(
        &self,
        token: &str,
        req: &DeviceListUpdate,
    ) -> Result<(), ClientError>;
    /// When each device of the signed-in device's account last signed in.
    async fn devices_seen(&self, token: &str) -> Result<DevicesResponse, ClientError>;
    /// Leaves a new device's offer at a new rendezvous (no sign-in: the device has none).
    async fn create_link(&self, req: &CreateLinkRequest)
    -> Result<CreateLinkResponse, ClientError>;
    /// The offer waiting at `id`, for a device of the account it names.
    async fn link_offer(&self, token: &str, id: &LinkId) -> Result<LinkOfferResponse, ClientError>;
    /// Leaves the answer to the offer at `id`.
    async fn answer_link(
        &self,
        token: &str,
        id: &LinkId,
        answer: &LinkAnswer,
    ) -> Result<(), ClientError>;
    /// The answer at `id`, if there is one yet.
    async fn pickup(&self, id: &LinkId, req: &PickupRequest)
    -> Result<PickupResponse, ClientError>;
    /// Tells the server the answer at `id` arrived: it deletes the rendezvous.
    async fn link_done(&self, id: &LinkId, req: &PickupRequest) -> Result<(), ClientError>;
}
