//! API errors: `{"error": {"code", "message"}}` with the right status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error a client sees.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// Seconds to wait before trying again (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 429, with when to try again.
    pub fn too_many(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 500, for what the server got wrong.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// 503.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl ApiError {
    /// Logs a 5xx: 500s are our bugs; other 5xx (no host, host down) are
    /// conditions worth a warning.
    pub fn log(&self) {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(code = self.code, "{}", self.message);
        } else if self.status.is_server_error() {
            tracing::warn!(code = self.code, "{}", self.message);
        }
    }

    /// The response, without logging (for errors that are the caller's or
    /// a sandbox's business, such as a port nothing listens on).
    pub fn quiet_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                sandbox_ids: None,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        self.quiet_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

/// A host the control plane will not (or cannot) call: 502, the host's
/// record is wrong, not the request.
impl From<crate::hosts::AddressError> for ApiError {
    fn from(e: crate::hosts::AddressError) -> Self {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "host_address_refused",
            format!("{e}; register the host again with a valid address"),
        )
    }
}

/// Maps an agent's Connect error onto the API.
impl From<connectrpc::ConnectError> for ApiError {
    fn from(e: connectrpc::ConnectError) -> Self {
        use connectrpc::ErrorCode as C;
        let msg = e.message.clone().unwrap_or_else(|| format!("{:?}", e.code));
        match e.code {
            C::InvalidArgument => ApiError::bad_request(msg),
            C::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", msg),
            C::AlreadyExists => ApiError::conflict("already_exists", msg),
            C::FailedPrecondition => ApiError::conflict("invalid_state", msg),
            C::PermissionDenied => ApiError::forbidden(msg),
            C::ResourceExhausted => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "resource_exhausted", msg)
            }
            C::DeadlineExceeded => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg),
            C::Unavailable => ApiError::unavailable("host_unavailable", msg),
            _ => ApiError::internal(msg),
        }
    }
}

pub use wrenn_api_types::{ErrorBody, ErrorDetail};

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
