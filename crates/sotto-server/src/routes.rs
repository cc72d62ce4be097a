//! The `/v1` handlers: accounts, KeyPackages and delivery. Each one parses its input into
//! trusted types, calls one storage or delivery operation and maps the outcome to a response.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use sotto_proto::api::{
    AckRequest, ClaimRequest, ClaimResponse, KeyPackageCount, QueueResponse, RegisterRequest,
    RegisterResponse, SendRequest, SendResponse, ServerConfig, UploadKeyPackagesRequest,
    UserResponse,
};
use sotto_proto::kt::{CosignRequest, EpochResponse, LookupResponse};
use sotto_proto::{API_VERSION, ErrorCode, GroupId, Username, limits};

use crate::auth::AuthDevice;
use crate::client_ip::ClientIp;
use crate::delivery::Submitted;
use crate::error::{ApiError, ApiJson};
use crate::storage::Claim;
use crate::{AppState, now};

/// `GET /v1/config`.
pub async fn config(State(state): State<AppState>) -> ApiJson<ServerConfig> {
    ApiJson(ServerConfig {
        api_version: API_VERSION,
        ciphersuite: state.config.ciphersuite,
        server_id: state.server_id.clone(),
        kt_vrf_key: state.kt.vrf_public_key().to_vec().into(),
        kt_checkpoint_key: state.kt.checkpoint_key(),
    })
}

/// `POST /v1/accounts`.
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, ApiJson<RegisterResponse>), ApiError> {
    state.rate.register(ip)?;
    let account = req.validate()?;
    if account.key_packages.len() as u64 > state.config.limits.key_packages_per_device {
        return Err(too_many_key_packages());
    }
    let user = account.device_list.list().user.clone();
    let created = state.storage.create_account(&account, now()).await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UsernameTaken,
            "username taken",
        ));
    }
    tracing::debug!(user = %user, "account created");
    Ok((StatusCode::CREATED, ApiJson(RegisterResponse { user })))
}

fn parse_user(raw: &str) -> Result<Username, ApiError> {
    Ok(Username::parse(raw)?)
}

/// The query of `GET /v1/kt/users/{user}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// Wait (a few seconds at most) for an epoch newer than this one.
    after: Option<u64>,
    /// Wait (within the same few seconds) for the answer's epoch to carry this many
    /// witnesses' cosignatures.
    cosigned: Option<usize>,
}

/// `GET /v1/kt/users/{user}`: a proof of the user's value in the key-transparency log.
pub async fn kt_lookup(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(user): Path<String>,
    Query(query): Query<LookupQuery>,
) -> Result<ApiJson<LookupResponse>, ApiError> {
    state.rate.lookup(&device)?;
    let user = parse_user(&user)?;
    let found = state
        .kt
        .lookup(
            &user,
            query.after,
            query
                .cosigned
                .unwrap_or(0)
                .min(sotto_proto::checkpoint::MAX_WITNESSES),
            crate::kt::LOOKUP_WAIT,
        )
        .await
        .map_err(ApiError::internal)?;
    found.map(ApiJson).map_err(ApiError::not_in_log)
}

/// The query of `GET /v1/kt/checkpoint`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointQuery {
    /// Wait (a few seconds at most) for an epoch newer than this one.
    after: Option<u64>,
}

/// `GET /v1/kt/checkpoint`: the log's newest epoch and its signed checkpoint, without its
/// append-only proof (at `GET /v1/kt/epochs/{epoch}`). Anyone may ask (witnesses, auditors).
pub async fn kt_checkpoint(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Query(query): Query<CheckpointQuery>,
) -> Result<ApiJson<EpochResponse>, ApiError> {
    state.rate.log(ip)?;
    let newest = state
        .kt
        .newest_recorded(query.after, crate::kt::LOOKUP_WAIT)
        .await
        .map_err(ApiError::internal)?;
    Ok(ApiJson(newest))
}

/// The query of `GET /v1/kt/epochs/{epoch}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochQuery {
    /// Whether the answer carries the epoch's append-only proof (default: it does).
    proof: Option<bool>,
}

/// `GET /v1/kt/epochs/{epoch}`: a recorded epoch, as [`kt_checkpoint`] gives the newest,
/// with its append-only proof unless `?proof=false` (a client comparing a root needs only
/// the checkpoint).
pub async fn kt_epoch(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(epoch): Path<String>,
    Query(query): Query<EpochQuery>,
) -> Result<ApiJson<EpochResponse>, ApiError> {
    state.rate.log(ip)?;
    let epoch: u64 = epoch.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedRequest,
            "an epoch is a number",
        )
    })?;
    let found = state
        .kt
        .recorded(epoch, query.proof.unwrap_or(true))
        .await
        .map_err(ApiError::internal)?;
    found.map(ApiJson).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such epoch recorded",
        )
    })
}

/// `POST /v1/kt/cosignatures`: a witness's cosignature on a recorded epoch's checkpoint.
/// Kept only from the witnesses the server is configured with, and only if it verifies.
pub async fn kt_cosign(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<CosignRequest>,
) -> Result<StatusCode, ApiError> {
    state.rate.log(ip)?;
    match state.kt.cosign(&req, now()).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(crate::kt::CosignError::UnknownEpoch) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such epoch recorded",
        )),
        Err(crate::kt::CosignError::Invalid(why)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            why,
        )),
        Err(crate::kt::CosignError::Kt(e)) => Err(ApiError::internal(e)),
    }
}

/// `GET /v1/users/{user}`.
pub async fn user(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(user): Path<String>,
) -> Result<ApiJson<UserResponse>, ApiError> {
    state.rate.lookup(&device)?;
    let user = parse_user(&user)?;
    let account = state.storage.account(&user).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownUser,
            "no such user",
        )
    })?;
    Ok(ApiJson(UserResponse {
        user,
        device_list: account.signed_device_list(),
        identity_key: account.identity_key.into(),
    }))
}

fn too_many_key_packages() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidField,
        "too many KeyPackages stored for this device",
    )
}

/// `POST /v1/keypackages`.
pub async fn upload_key_packages(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<UploadKeyPackagesRequest>,
) -> Result<ApiJson<KeyPackageCount>, ApiError> {
    let max_stored = state.config.limits.key_packages_per_device;
    let key = state
        .storage
        .device_key(&device)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown device"))?;
    // Each KeyPackage must name this device and its key: a device cannot publish KeyPackages
    // in another's name.
    let upload = req.validate(&device, &key)?;
    let count = state
        .storage
        .add_key_packages(&device, &upload, max_stored)
        .await?;
    count.map(ApiJson).ok_or_else(too_many_key_packages)
}

/// `GET /v1/keypackages/count`.
pub async fn key_package_count(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
) -> Result<ApiJson<KeyPackageCount>, ApiError> {
    Ok(ApiJson(state.storage.key_package_count(&device).await?))
}

/// `POST /v1/keypackages/claim`.
pub async fn claim_key_packages(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AuthDevice(claimer): AuthDevice,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<ApiJson<ClaimResponse>, ApiError> {
    let one_time = state.rate.claim(ip, &claimer, &req.user)?;
    match state
        .storage
        .claim_key_packages(&req.user, one_time)
        .await?
    {
        Claim::Claimed(key_packages) => Ok(ApiJson(ClaimResponse { key_packages })),
        Claim::UnknownUser => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownUser,
            "no such user",
        )),
        Claim::Exhausted => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::NoKeyPackage,
            "a device of this user has no KeyPackage left",
        )),
    }
}

/// `POST /v1/groups/{group_id}/messages`.
pub async fn send(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AuthDevice(sender): AuthDevice,
    Path(group): Path<String>,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<(StatusCode, ApiJson<SendResponse>), ApiError> {
    state.rate.send(ip, &sender)?;
    let group = GroupId::parse(&group)?;
    let valid = req.validate(&group)?;
    let quota = state.config.limits.queue_quota();
    let outcome = state.commit.submit(sender, valid, now(), quota).await?;
    match outcome {
        // The committer has woken the recipients.
        Submitted::Accepted { response, .. } => Ok((StatusCode::CREATED, ApiJson(response))),
        Submitted::EpochConflict(epoch) => Err(ApiError::epoch_conflict(epoch)),
        Submitted::NotAMember => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::NotAGroupMember,
            "sender is not a member of this group",
        )),
        Submitted::UnknownRecipient => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
            "a recipient device does not exist",
        )),
    }
}

/// Query of `GET /v1/queue`.
#[derive(Debug, Deserialize)]
pub struct QueueQuery {
    limit: Option<u32>,
}

/// `GET /v1/queue`.
pub async fn fetch_queue(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Query(q): Query<QueueQuery>,
) -> Result<ApiJson<QueueResponse>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, limits::MAX_FETCH);
    Ok(ApiJson(
        state
            .storage
            .fetch(&device, 0, limit, limits::MAX_FETCH_BYTES)
            .await?,
    ))
}

/// `POST /v1/queue/ack`.
pub async fn ack(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<StatusCode, ApiError> {
    state.rate.ack(&device)?;
    let req = req.validate()?;
    state.commit.ack(device, req.ids).await?;
    Ok(StatusCode::NO_CONTENT)
}
