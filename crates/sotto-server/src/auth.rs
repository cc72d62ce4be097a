//! Device sign-in: a single-use challenge signed with the device key buys a short-lived
//! bearer token. Tokens are stored only as hashes.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sotto_proto::api::{
    ChallengeRequest, ChallengeResponse, TokenRequest, TokenResponse, auth_signing_input,
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

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// `POST /v1/auth/challenge`.
pub async fn challenge(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<ChallengeRequest>,
) -> Result<ApiJson<ChallengeResponse>, ApiError> {
    // Buckets of made-up device names refill within seconds and are forgotten each minute.
    state.rate.challenge(ip, &req.device)?;
    let mut challenge = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut challenge);
    let expires_at = now() + CHALLENGE_TTL;
    let outstanding = state.config.limits.challenges_outstanding;
    state
        .blocking(move |s| {
            if s.device_key(&req.device)?.is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    ErrorCode::UnknownDevice,
                    "no such device",
                ));
            }
            s.put_challenge(&challenge, &req.device, expires_at, outstanding)?;
            Ok(ApiJson(ChallengeResponse {
                challenge: challenge.to_vec().into(),
                expires_at,
            }))
        })
        .await
}

/// `POST /v1/auth/token`.
pub async fn token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    let req = req.validate()?;
    let server = state.server_id.clone();
    state
        .blocking(move |s| {
            let invalid_challenge = || {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::InvalidChallenge,
                    "unknown, used or expired challenge",
                )
            };
            // Taking the challenge first makes it single-use even when the signature fails.
            if !s.take_challenge(req.challenge.as_slice(), &req.device, now())? {
                return Err(invalid_challenge());
            }
            let key = s.device_key(&req.device)?.ok_or_else(invalid_challenge)?;
            let key = parse_verifying_key(&key).map_err(ApiError::internal)?;
            let sig = ed25519_dalek::Signature::from_slice(req.signature.as_slice())
                .map_err(|_| ApiError::from(sotto_proto::ProtoError::BadSignature))?;
            key.verify_strict(
                &auth_signing_input(&server, &req.device, req.challenge.as_slice()),
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
            let expires_at = now() + TOKEN_TTL;
            s.put_token(&token_hash(&token), &req.device, expires_at)?;
            Ok(ApiJson(TokenResponse { token, expires_at }))
        })
        .await
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
        let found = state.blocking(move |s| Ok(s.token(&hash)?)).await?;
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
