//! Device sign-in: a single-use challenge signed with the device key buys a short-lived
//! bearer token. Tokens are stored only as hashes.
//!
//! A challenge is self-contained: a random nonce, its expiry, and the server's MAC over both
//! and the device (HMAC-SHA256 under a key the server keeps). Issuing one stores nothing, so
//! however many challenges anyone asks for a device, the one it is answering stays good.
//! Answering one records its hash until it expires, which makes it single-use.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sotto_proto::api::{
    CHALLENGE_LEN, ChallengeRequest, ChallengeResponse, TokenRequest, TokenResponse,
    auth_signing_input,
};
use sotto_proto::device_list::parse_verifying_key;
use sotto_proto::{DeviceAddr, ErrorCode};

use crate::client_ip::ClientIp;
use crate::error::{ApiError, ApiJson};
use crate::{AppState, now};

/// How long a challenge may be answered, in seconds.
pub const CHALLENGE_TTL: u64 = 60;
/// How long a token lives, in seconds.
pub const TOKEN_TTL: u64 = 3600;

/// Domain separation of the challenge MAC.
const CHALLENGE_MAC_CONTEXT: &[u8] = b"sotto-challenge-v1\0";
const NONCE_LEN: usize = 16;

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn challenge_mac(key: &[u8; 32], device: &DeviceAddr, body: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used, reason = "a local invariant, not input")]
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(CHALLENGE_MAC_CONTEXT);
    mac.update(device.to_string().as_bytes());
    mac.update(b"\0");
    mac.update(body);
    mac
}

/// A new challenge for `device`, valid until `expires_at`.
pub fn issue_challenge(key: &[u8; 32], device: &DeviceAddr, expires_at: u64) -> Vec<u8> {
    let mut challenge = vec![0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut challenge);
    challenge.extend_from_slice(&expires_at.to_be_bytes());
    let tag = challenge_mac(key, device, &challenge)
        .finalize()
        .into_bytes();
    challenge.extend_from_slice(&tag);
    challenge
}

/// The expiry of `challenge` if this server issued it to `device` and it has not expired at
/// `now`.
pub fn check_challenge(
    key: &[u8; 32],
    device: &DeviceAddr,
    challenge: &[u8],
    now: u64,
) -> Option<u64> {
    if challenge.len() != CHALLENGE_LEN {
        return None;
    }
    let (body, tag) = challenge.split_at(NONCE_LEN + 8);
    challenge_mac(key, device, body).verify_slice(tag).ok()?;
    let expires_at = u64::from_be_bytes(body.get(NONCE_LEN..)?.try_into().ok()?);
    (expires_at > now).then_some(expires_at)
}

/// `POST /v1/auth/challenge`.
pub async fn challenge(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<ChallengeRequest>,
) -> Result<ApiJson<ChallengeResponse>, ApiError> {
    // Buckets of made-up device names refill within seconds and are forgotten each minute.
    state.rate.challenge(ip, &req.device)?;
    if state.storage.device_key(&req.device).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownDevice,
            "no such device",
        ));
    }
    let expires_at = now().saturating_add(CHALLENGE_TTL);
    Ok(ApiJson(ChallengeResponse {
        challenge: issue_challenge(&state.challenge_key, &req.device, expires_at).into(),
        expires_at,
    }))
}

/// `POST /v1/auth/token`.
pub async fn token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    let req = req.validate()?;
    let invalid_challenge = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidChallenge,
            "unknown, used or expired challenge",
        )
    };
    let expires_at = check_challenge(
        &state.challenge_key,
        &req.device,
        req.challenge.as_slice(),
        now(),
    )
    .ok_or_else(invalid_challenge)?;
    let s = state.storage.as_ref();
    // Used first, so that a challenge is single-use even when the signature fails.
    let used = Sha256::digest(req.challenge.as_slice());
    if !s.use_challenge(&used, expires_at).await? {
        return Err(invalid_challenge());
    }
    let key = s
        .device_key(&req.device)
        .await?
        .ok_or_else(invalid_challenge)?;
    let key = parse_verifying_key(&key).map_err(ApiError::internal)?;
    let sig = ed25519_dalek::Signature::from_slice(req.signature.as_slice())
        .map_err(|_| ApiError::from(sotto_proto::ProtoError::BadSignature))?;
    key.verify_strict(
        &auth_signing_input(&state.server_id, &req.device, req.challenge.as_slice()),
        &sig,
    )
    .map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidSignature,
            "signature does not verify",
        )
    })?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let issued_at = now();
    let expires_at = issued_at.saturating_add(TOKEN_TTL);
    s.put_token(&token_hash(&token), &req.device, issued_at, expires_at)
        .await?;
    Ok(ApiJson(TokenResponse { token, expires_at }))
}

/// The device a request is authenticated as, from `Authorization: Bearer TOKEN`.
#[derive(Debug, Clone)]
pub struct AuthDevice(pub DeviceAddr);

impl FromRequestParts<AppState> for AuthDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        if token.len() > 128 {
            return Err(ApiError::unauthorized("unknown token"));
        }
        let hash = token_hash(token);
        let found = state.storage.token(&hash).await?;
        match found {
            None => Err(ApiError::unauthorized("unknown token")),
            Some((_, expires_at)) if expires_at <= now() => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::TokenExpired,
                "token expired",
            )),
            Some((device, _)) => Ok(AuthDevice(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_challenge, issue_challenge};
    use sotto_proto::{DeviceAddr, DeviceId, Username};

    fn device(n: u64) -> DeviceAddr {
        DeviceAddr {
            user: Username::parse("alice").expect("a name"),
            device: DeviceId::new(n),
        }
    }

    #[test]
    fn a_challenge_is_good_only_for_its_device_its_server_and_its_time() {
        let key = [3u8; 32];
        let challenge = issue_challenge(&key, &device(1), 1000);
        assert_eq!(
            check_challenge(&key, &device(1), &challenge, 999),
            Some(1000)
        );
        assert_eq!(
            check_challenge(&key, &device(1), &challenge, 1000),
            None,
            "expired"
        );
        assert_eq!(
            check_challenge(&key, &device(2), &challenge, 999),
            None,
            "other device"
        );
        assert_eq!(
            check_challenge(&[4; 32], &device(1), &challenge, 999),
            None,
            "other server"
        );
        // Any changed byte (a later expiry, say) breaks the MAC.
        for i in 0..challenge.len() {
            let mut changed = challenge.clone();
            changed[i] ^= 1;
            assert_eq!(
                check_challenge(&key, &device(1), &changed, 999),
                None,
                "byte {i}"
            );
        }
        assert_eq!(
            check_challenge(&key, &device(1), &challenge[..55], 999),
            None
        );
    }
}
