//! The one error type handlers return, rendered as `{"error":{"code","message"}}`.

use crate::http::{json, Response};
use billing_core::billing::error_chain;
use billing_core::storage::StoreError;
use hyper::StatusCode;
use serde_json::json;

/// An error answer. `message` is shown to the caller, so it never contains
/// internals, secrets or keys.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `UNAUTHORIZED`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with its status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// An unexpected failure: the cause is logged, the caller gets an opaque 500.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %error_chain(error), "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")
    }

    /// Renders the error.
    pub fn into_response(self) -> Response {
        let mut response = json(self.status, &json!({ "error": { "code": self.code, "message": self.message } }));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::error!(error = %error_chain(&e), "database unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the service is temporarily unavailable")
            }
            other => Self::internal(&other),
        }
    }
}
