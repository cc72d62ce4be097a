//! Linking and removing devices: the rendezvous a new device waits at, and the update of an
//! account's device list. The handlers are thin; the rules are these functions, over any
//! [`Storage`], so that a test server in another crate applies the same ones.
//!
//! The server never reads what passes through a rendezvous: the offer is public (a device
//! entry, a public key and KeyPackages, checked like any upload), the answer is sealed to the
//! offer's key. A rendezvous is answered once, works for [`LINK_TTL`] seconds, and is deleted
//! once the new device says it has its answer (or by the purge once it expired).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use sotto_proto::api::{DeviceSeen, DevicesResponse};
use sotto_proto::device_list::DeviceListUpdate;
use sotto_proto::device_list::SignedDeviceListIn;
use sotto_proto::link::{
    CreateLinkRequest, CreateLinkResponse, LINK_ID_LEN, LINK_TTL, LinkAnswer, LinkId, LinkOffer,
    LinkOfferResponse, PickupRequest, PickupResponse,
};
use sotto_proto::{DeviceAddr, ErrorCode};

use crate::auth::AuthDevice;
use crate::client_ip::ClientIp;
use crate::error::{ApiError, ApiJson};
use crate::kt::Kt;
use crate::storage::{Link, Storage};
use crate::{AppState, now};

fn unknown_link() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownLink,
        "no such link code, or it expired (a code works once, for five minutes)",
    )
}

/// Leaves a new device's offer at a new rendezvous.
pub async fn create_link(
    storage: &dyn Storage,
    req: CreateLinkRequest,
    now: u64,
) -> Result<CreateLinkResponse, ApiError> {
    let (offer, _) = LinkOffer::parse(req.offer.as_slice())?;
    // An offer waits only for an account that exists.
    if storage.account(&offer.user).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownUser,
            "no such user",
        ));
    }
    let secret: [u8; 32] = rand::random();
    let expires_at = now.saturating_add(LINK_TTL);
    let link = Link {
        user: offer.user,
        offer: req.offer.into_vec(),
        secret_hash: Sha256::digest(secret).to_vec(),
        expires_at,
        answer: None,
    };
    // Ids are random: a few tries always find a free one.
    for _ in 0..8 {
        let id = LinkId(rand::random::<[u8; LINK_ID_LEN]>());
        if storage.put_link(&id, &link).await? {
            return Ok(CreateLinkResponse {
                id: id.to_string(),
                secret: secret.to_vec().into(),
                expires_at,
            });
        }
    }
    Err(ApiError::internal("no free link id"))
}

/// The rendezvous `id`, if it is for an account of `device` (to anyone else it does not
/// exist).
async fn own_link(
    storage: &dyn Storage,
    device: &DeviceAddr,
    id: &str,
    now: u64,
) -> Result<(LinkId, Link), ApiError> {
    let id = LinkId::parse(id).map_err(|_| unknown_link())?;
    match storage.link(&id, now).await? {
        Some(link) if link.user == device.user => Ok((id, link)),
        _ => Err(unknown_link()),
    }
}

/// The offer at `id`, for a device of the account it asks to join.
pub async fn link_offer(
    storage: &dyn Storage,
    device: &DeviceAddr,
    id: &str,
    now: u64,
) -> Result<LinkOfferResponse, ApiError> {
    let (_, link) = own_link(storage, device, id, now).await?;
    Ok(LinkOfferResponse {
        offer: link.offer.into(),
        expires_at: link.expires_at,
    })
}

/// Leaves the approver's answer at `id`, once.
pub async fn answer_link(
    storage: &dyn Storage,
    device: &DeviceAddr,
    id: &str,
    answer: LinkAnswer,
    now: u64,
) -> Result<(), ApiError> {
    let answer = answer.validate()?;
    let (id, _) = own_link(storage, device, id, now).await?;
    if storage.answer_link(&id, &answer, now).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UnknownLink,
            "this link code was already approved, or it expired",
        ))
    }
}

/// The rendezvous `id`, for whoever holds its secret.
async fn picked(
    storage: &dyn Storage,
    id: &str,
    req: &PickupRequest,
    now: u64,
) -> Result<(LinkId, Link), ApiError> {
    let id = LinkId::parse(id).map_err(|_| unknown_link())?;
    let link = storage.link(&id, now).await?.ok_or_else(unknown_link)?;
    if Sha256::digest(req.secret.as_slice()).as_slice() != link.secret_hash.as_slice() {
        return Err(unknown_link());
    }
    Ok((id, link))
}

/// The answer at `id`, if there is one yet, for whoever holds its secret. It stays until the
/// new device says it has it ([`link_done`]) or the code expires, so a lost reply loses
/// nothing.
pub async fn pickup(
    storage: &dyn Storage,
    id: &str,
    req: PickupRequest,
    now: u64,
) -> Result<PickupResponse, ApiError> {
    let (_, link) = picked(storage, id, &req, now).await?;
    Ok(PickupResponse {
        answer: link.answer,
    })
}

/// Deletes the rendezvous `id`, for whoever holds its secret: the new device has its answer.
pub async fn link_done(
    storage: &dyn Storage,
    id: &str,
    req: PickupRequest,
    now: u64,
) -> Result<(), ApiError> {
    let (id, _) = picked(storage, id, &req, now).await?;
    storage.delete_link(&id).await?;
    Ok(())
}

/// Whether the log holds `signed` as `user`'s value now.
async fn logged(
    kt: &Kt,
    user: &sotto_proto::Username,
    signed: &SignedDeviceListIn,
) -> Result<bool, ApiError> {
    let found = kt
        .lookup(user, None, 0, std::time::Duration::ZERO)
        .await
        .map_err(ApiError::internal)?;
    let Ok(found) = found else {
        return Ok(false);
    };
    let proven = sotto_proto::kt::verify_lookup_proof(&kt.vrf_public_key(), user, &found)
        .map_err(ApiError::internal)?;
    Ok(proven.value == sotto_proto::kt::device_list_value(signed))
}

/// Replaces `device`'s account's device list with the next revision, once the log holds the
/// current one: each revision then becomes a version of its own in the log, so an account's
/// devices can count that the log holds no version they did not make.
pub async fn update_device_list(
    storage: &dyn Storage,
    kt: &Kt,
    device: &DeviceAddr,
    req: DeviceListUpdate,
    devices_per_account: u32,
    key_packages_per_device: u64,
) -> Result<(), ApiError> {
    let account = storage
        .account(&device.user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("no such account"))?;
    let current_signed: SignedDeviceListIn = account.signed_device_list();
    let current = current_signed
        .clone()
        .verify(
            &sotto_proto::device_list::parse_verifying_key(&account.identity_key)
                .map_err(ApiError::internal)?,
        )
        .map_err(ApiError::internal)?;
    let changed = || {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::DeviceListChanged,
            "the device list changed meanwhile; fetch it and try again",
        )
    };
    // Made from a list that is no longer the newest (another device changed it): a
    // conflict to retry, not a malformed request.
    let stale = serde_json::from_slice::<sotto_proto::device_list::DeviceList>(
        req.device_list.body.as_slice(),
    )
    .is_ok_and(|l| l.revision <= current.list().revision);
    if stale {
        return Err(changed());
    }
    let update = req.validate(&account.identity_key, &current_signed, current.list())?;
    if !logged(kt, &device.user, &current_signed).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::DeviceListChanged,
            "the account's last device-list change is not in the key-transparency log yet; \
             try again in a second",
        ));
    }
    let new = update.device_list.list();
    if new.device(device.device).is_none() && !update.removed.contains(device) {
        return Err(ApiError::unauthorized("not a device of this account"));
    }
    if update.added.is_some() && new.devices.len() > devices_per_account as usize {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::TooManyDevices,
            format!(
                "this account has {} device(s), as many as this server allows; remove one first",
                current.list().devices.len()
            ),
        ));
    }
    if update
        .added
        .as_ref()
        .is_some_and(|(_, kps, _)| kps.len() as u64 > key_packages_per_device)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField,
            "too many KeyPackages for the device added",
        ));
    }
    if storage.update_device_list(&update).await? {
        tracing::debug!(user = %device.user, revision = new.revision, "device list updated");
        Ok(())
    } else {
        Err(changed())
    }
}

/// When each of `device`'s account's devices last signed in.
pub async fn devices_seen(
    storage: &dyn Storage,
    device: &DeviceAddr,
) -> Result<DevicesResponse, ApiError> {
    let devices = storage
        .devices_seen(&device.user)
        .await?
        .into_iter()
        .map(|(device, last_seen)| DeviceSeen { device, last_seen })
        .collect();
    Ok(DevicesResponse { devices })
}

/// `POST /v1/links`.
pub async fn create_link_route(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<CreateLinkRequest>,
) -> Result<(StatusCode, ApiJson<CreateLinkResponse>), ApiError> {
    state.rate.link(ip)?;
    let made = create_link(state.storage.as_ref(), req, now()).await?;
    Ok((StatusCode::CREATED, ApiJson(made)))
}

/// `GET /v1/links/{id}`.
pub async fn link_offer_route(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
) -> Result<ApiJson<LinkOfferResponse>, ApiError> {
    state.rate.link_poll(ip)?;
    Ok(ApiJson(
        link_offer(state.storage.as_ref(), &device, &id, now()).await?,
    ))
}

/// `PUT /v1/links/{id}`.
pub async fn answer_link_route(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    Path(id): Path<String>,
    ApiJson(answer): ApiJson<LinkAnswer>,
) -> Result<StatusCode, ApiError> {
    state.rate.devices(&device)?;
    answer_link(state.storage.as_ref(), &device, &id, answer, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/links/{id}/pickup`.
pub async fn pickup_route(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PickupRequest>,
) -> Result<ApiJson<PickupResponse>, ApiError> {
    state.rate.link_poll(ip)?;
    Ok(ApiJson(
        pickup(state.storage.as_ref(), &id, req, now()).await?,
    ))
}

/// `POST /v1/links/{id}/done`.
pub async fn link_done_route(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PickupRequest>,
) -> Result<StatusCode, ApiError> {
    state.rate.link_poll(ip)?;
    link_done(state.storage.as_ref(), &id, req, now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/devices`.
pub async fn update_device_list_route(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
    ApiJson(req): ApiJson<DeviceListUpdate>,
) -> Result<StatusCode, ApiError> {
    state.rate.devices(&device)?;
    let limits = &state.config.limits;
    update_device_list(
        state.storage.as_ref(),
        &state.kt,
        &device,
        req,
        limits.devices_per_account,
        limits.key_packages_per_device,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/devices`.
pub async fn devices_seen_route(
    State(state): State<AppState>,
    AuthDevice(device): AuthDevice,
) -> Result<ApiJson<DevicesResponse>, ApiError> {
    Ok(ApiJson(
        devices_seen(state.storage.as_ref(), &device).await?,
    ))
}
