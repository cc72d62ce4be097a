//! Maps every failure to an HTTP status and a stable error code. Details of internal failures
//! go to the log; the peer only sees the code.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sotto_proto::{ErrorBody, ErrorCode, ProtoError};
use std::time::Duration;

use crate::storage::StorageError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Seconds until a rate-limited request may be tried again.
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a code and a short message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                epoch: None,
            },
            retry_after: None,
        }
    }

    /// `429 rate_limited`, to be retried after `wait` (rounded up to whole seconds).
    pub fn rate_limited(wait: Duration) -> Self {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many requests; see Retry-After",
        );
        e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        e
    }

    /// The `Retry-After` seconds, for a rate-limited request.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// The body the peer gets.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// `409 epoch_conflict` carrying the group's current epoch.
    pub fn epoch_conflict(epoch: u64) -> Self {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::EpochConflict,
            "the group has moved to another epoch",
        );
        e.body.epoch = Some(epoch);
        e
    }

    /// `404 not_in_log` carrying the key-transparency log's newest epoch.
    pub fn not_in_log(epoch: u64) -> Self {
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotInLog,
            "the user is not in the key-transparency log",
        );
        e.body.epoch = Some(epoch);
        e
    }

    /// `401 unauthorized`.
    pub fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// `500 internal`, logging the cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal server error",
        )
    }
}

impl From<ProtoError> for ApiError {
    fn from(e: ProtoError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "storage unavailable");
            ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the server cannot reach its storage for now; try again",
                )
            }
        } else {
            ApiError::internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Gives every error response the JSON [`ErrorBody`], the framework's own rejections (a bad
/// path or query parameter, a wrong method, a failed WebSocket upgrade) included: a client
/// always finds a stable code. Responses that already are JSON pass unchanged.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorCode::MethodNotAllowed,
            "this route does not take that method",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body too large"),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::RateLimited, "too many requests"),
        StatusCode::REQUEST_TIMEOUT => (ErrorCode::RequestTimeout, "the request took too long"),
        s if s.is_server_error() => (ErrorCode::Internal, "internal server error"),
        _ => (
            ErrorCode::MalformedRequest,
            "malformed request (path, query or headers)",
        ),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = ApiError::new(status, code, message).into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}

/// A JSON body whose rejections are [`ApiError`]s with stable codes.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "request body too large",
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::MalformedRequest,
                r.body_text(),
            )
        }
    }
}

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
