//! The `/v1` handlers: accounts, KeyPackages and delivery. Each one parses its input into
//! trusted types, calls one storage operation and maps the outcome to a response.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use sotto_proto::api::{
    AckRequest, ClaimRequest, ClaimResponse, ClaimedKeyPackage, KeyPackageCount, QueueResponse,
    RegisterRequest, RegisterResponse, SendRequest, SendResponse, ServerConfig,
    UploadKeyPackagesRequest, UserResponse,
};
use sotto_proto::device_list::{SignedDeviceListIn, parse_verifying_key};
use sotto_proto::{API_VERSION, ErrorCode, GroupId, Username, limits};

use crate::auth::AuthDevice;
use crate::error::{ApiError, ApiJson};
use crate::storage::Submitted;
use crate::{AppState, now};

/// `GET /v1/config`.
pub async fn config(State(state): State<AppState>) -> ApiJson<ServerConfig> {
    ApiJson(ServerConfig {
        api_version: API_VERSION,
        ciphersuite: state.config.ciphersuite,
    })
}

/// `POST /v1/accounts`.
pub async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, ApiJson<RegisterResponse>), ApiError> {
    let identity = parse_verifying_key(req.identity_key.as_slice())?;
    let list = req.device_list.verify(&identity)?;
    if list.list().revision != 1 || list.list().devices.len() != 1 {
        return Err(
            sotto_proto::ProtoError::Invalid("first device list (revision 1, one device)").into(),
        );
    }
    let user = list.list().user.clone();
    let identity_key = req.identity_key.into_vec();
    let created = state
        .blocking(move |s| Ok(s.create_account(&identity_key, &list, now())?))
        .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UsernameTaken,
            "username taken",
        ));
    }
    tracing::info!(user = %user, "account created");
    Ok((StatusCode::CREATED, ApiJson(RegisterResponse { user })))
}

fn parse_user(raw: &str) -> Result<Username, ApiError> {
    Ok(Username::parse(raw)?)
}

/// `GET /v1/users/{user}`.
pub async fn user(
    State(state): State<AppState>,
    _auth: AuthDevice,
    Path(user): Path<String>,
) -> Result<ApiJson<UserResponse>, ApiError> {
    let user = parse_user(&user)?;
    let lookup = user.clone();
    let account = state.blocking(move |s| Ok(s.account(&lookup)?)).await?;
    let account = account.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownUser,
            "no such user",
        )
    })?;
    Ok(ApiJson(UserResponse {
        user,
        identity_key: account.identity_key.into(),
        device_list: SignedDeviceListIn {
            body: account.device_list_body.into(),
            signature: account.device_list_signature.into(),
        },
    }))
}

/// `POST /v1/keypackages`.
pub async fn upload_key_packages(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<UploadKeyPackagesRequest>,
) -> Result<ApiJson<KeyPackageCount>, ApiError> {
    let req = req.validate()?;
    let one_time: Vec<Vec<u8>> = req.key_packages.into_iter().map(|k| k.into_vec()).collect();
    let last_resort = req.last_resort.map(|k| k.into_vec());
    let count = state
        .blocking(move |s| Ok(s.add_key_packages(&device, &one_time, last_resort.as_deref())?))
        .await?;
    count.map(ApiJson).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            "too many KeyPackages stored for this device",
        )
    })
}

/// `GET /v1/keypackages/count`.
pub async fn key_package_count(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
) -> Result<ApiJson<KeyPackageCount>, ApiError> {
    state
        .blocking(move |s| Ok(ApiJson(s.key_package_count(&device)?)))
        .await
}

/// `POST /v1/keypackages/claim`.
pub async fn claim_key_packages(
    State(state): State<AppState>,
    _auth: AuthDevice,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<ApiJson<ClaimResponse>, ApiError> {
    let claimed = state
        .blocking(move |s| Ok(s.claim_key_packages(&req.user)?))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownUser,
                "no such user",
            )
        })?;
    let key_packages = claimed
        .into_iter()
        .map(|c| {
            c.key_package
                .map(|kp| ClaimedKeyPackage {
                    device: c.device,
                    key_package: kp.into(),
                })
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        ErrorCode::NoKeyPackage,
                        "a device of this user has no KeyPackage left",
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ApiJson(ClaimResponse { key_packages }))
}

/// `POST /v1/groups/{group_id}/messages`.
pub async fn send(
    State(state): State<AppState>,
    AuthDevice(sender): AuthDevice,
    Path(group): Path<String>,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<(StatusCode, ApiJson<SendResponse>), ApiError> {
    let group = GroupId::parse(&group)?;
    let valid = req.validate(&group)?;
    let from = sender.clone();
    let outcome = state
        .blocking(move |s| Ok(s.submit(&from, &valid, now())?))
        .await?;
    match outcome {
        Submitted::Accepted { response, wake } => {
            for d in &wake {
                state.push.wake(d);
            }
            Ok((StatusCode::CREATED, ApiJson(response)))
        }
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
    state
        .blocking(move |s| {
            Ok(ApiJson(QueueResponse {
                messages: s.fetch(&device, limit)?,
            }))
        })
        .await
}

/// `POST /v1/queue/ack`.
pub async fn ack(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<StatusCode, ApiError> {
    let req = req.validate()?;
    state
        .blocking(move |s| Ok(s.ack(&device, &req.ids)?))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
