//! The admin API's error type (an HTTP status and a stable code for each domain error) and its
//! JSON form: `{"error":{"code":"not_found","message":"..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::fleet::FleetError;
use crate::store::StoreError;

/// An API error: an HTTP status, a stable code and a message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403.
    #[error("this token may only read")]
    Forbidden,
    /// 404.
    #[error("{0} not found")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 422: the payload failed verification.
    #[error("{0}")]
    Unverifiable(String),
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// 503.
    #[error("{0}")]
    Unavailable(String),
}

/// Body of an error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error inside [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not_found`, `conflict`, `unauthorized`...).
    pub code: String,
    /// Human text.
    pub message: String,
}

impl ApiError {
    /// Status and code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::Unverifiable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "verification_failed"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::Conflict(what),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Invalid(m) => Self::BadRequest(m),
            FleetError::NotFound(what) => Self::NotFound(what),
            FleetError::Conflict(m) => Self::Conflict(m),
            FleetError::TooLarge(m) => Self::TooLarge(m),
            FleetError::Unverifiable(m) => Self::Unverifiable(m),
            FleetError::Unavailable(m) => Self::Unavailable(m),
            FleetError::Internal(m) => Self::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
            },
        };
        (status, Json(body)).into_response()
    }
}
