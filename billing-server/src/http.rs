//! Small helpers over hyper: bodies, JSON in and out.

use crate::error::ApiError;
use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use std::convert::Infallible;

/// Every request body: hyper's, or none for an event stream served
/// directly (see [`crate::stream_conn`]).
pub type RequestBody = BoxBody<Bytes, hyper::Error>;
/// Every response body: a buffer or a stream (SSE).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;
/// A response.
pub type Response = hyper::Response<Body>;

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(value).expect("response DTOs always serialize");
    hyper::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(bytes)).boxed_unsync())
        .expect("static headers are valid")
}

/// A 200 JSON response.
pub fn ok(value: &impl serde::Serialize) -> Response {
    json(StatusCode::OK, value)
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(headers: &HeaderMap, body: RequestBody, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", format!("request body exceeds {limit} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::bad_request("BAD_REQUEST", "could not read request body")),
    }
}

/// Parses a JSON body into `T`, answering 400 with a precise reason.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request("INVALID_REQUEST", format!("invalid request: {e}")),
            _ => ApiError::bad_request("MALFORMED_JSON", "request body is not valid JSON"),
        }
    })
}
