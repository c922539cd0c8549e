//! Small helpers over hyper: bodies, JSON in and out.

use crate::error::{sanitise_serde_message, ApiError};
use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, SizeHint};
use hyper::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Every request body: hyper's behind a [`GuardedBody`], or none for an
/// event stream served directly (see [`crate::stream_conn`]).
pub type RequestBody = BoxBody<Bytes, BodyError>;
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

/// Why a [`GuardedBody`] stopped a body short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// It did not arrive whole before its deadline.
    TimedOut,
    /// Too many other bodies were still arriving.
    TooManyPending,
}

impl std::fmt::Display for BodyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TimedOut => "the request body did not arrive in time",
            Self::TooManyPending => "too many request bodies are still arriving",
        })
    }
}

impl std::error::Error for BodyRefusal {}

/// Why reading a request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// The connection failed or broke the framing.
    Connection(hyper::Error),
    /// We stopped it.
    Refused(BodyRefusal),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(e) => e.fmt(f),
            Self::Refused(refusal) => refusal.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connection(e) => Some(e),
            Self::Refused(refusal) => Some(refusal),
        }
    }
}

/// A request body that must arrive whole by a deadline, and that holds one of
/// a bounded number of places while the server waits for it.
///
/// Without these a client could hold a connection, and up to the body cap of
/// memory, for as long as it liked by sending slowly (300 stalled 1 MB
/// uploads held 300 MB indefinitely). A place is taken only when a read finds
/// the body incomplete, so bodies that arrive with their head (nearly all of
/// them) never touch the semaphore or the timer; it is given back when the
/// body ends or is dropped.
pub struct GuardedBody<B> {
    inner: B,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    places: Arc<Semaphore>,
    place: Option<OwnedSemaphorePermit>,
}

impl<B> GuardedBody<B> {
    /// `inner` must be complete by `deadline`; while it is not, it holds one
    /// of `places`, and is refused if none is free.
    pub fn new(inner: B, deadline: Instant, places: Arc<Semaphore>) -> Self {
        Self { inner, deadline, timer: None, places, place: None }
    }
}

impl<B> hyper::body::Body for GuardedBody<B>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(other) => {
                this.place = None;
                Poll::Ready(other.map(|result| result.map_err(BodyError::Connection)))
            }
            Poll::Pending => {
                if this.place.is_none() {
                    match this.places.clone().try_acquire_owned() {
                        Ok(place) => this.place = Some(place),
                        Err(_) => return Poll::Ready(Some(Err(BodyError::Refused(BodyRefusal::TooManyPending)))),
                    }
                }
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.place = None;
                    return Poll::Ready(Some(Err(BodyError::Refused(BodyRefusal::TimedOut))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413, a body
/// that missed its deadline with 408 and one that found no place with 503
/// (both close the connection: the rest of the body is never read).
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
        Err(e) => match e.downcast_ref::<BodyError>() {
            Some(BodyError::Refused(BodyRefusal::TimedOut)) => {
                let mut error = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    "the request body did not arrive in time",
                );
                error.close_connection = true;
                Err(error)
            }
            Some(BodyError::Refused(BodyRefusal::TooManyPending)) => {
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "too many request bodies are still arriving; retry shortly",
                );
                error.retry_after = Some(1);
                error.close_connection = true;
                Err(error)
            }
            _ => Err(ApiError::bad_request("BAD_REQUEST", "could not read request body")),
        },
    }
}

/// Parses a JSON body into `T`, answering 400 with a precise reason (input
/// it quotes cut to a short excerpt). A NUL character in any string is
/// refused: PostgreSQL cannot store one in text, so it would otherwise fail
/// as a 500 deep in a query, and nothing we keep needs it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if has_escaped_nul(bytes) {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST",
            "invalid request: strings must not contain NUL (\\u0000)",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request(
                "INVALID_REQUEST",
                format!("invalid request: {}", sanitise_serde_message(&e.to_string())),
            ),
            _ => ApiError::bad_request("MALFORMED_JSON", "request body is not valid JSON"),
        }
    })
}

/// Whether a JSON text holds the escape `\u0000`. A raw NUL byte needs no
/// check (JSON forbids control characters in strings, so the parser refuses
/// it), and `\u0000` is the only escape that yields U+0000. A scan instead of
/// a second parse: on `validate` this runs for every request, and bodies
/// without a backslash (nearly all) cost one `memchr`-like pass.
fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        let escape = &rest[at + 1..];
        if escape.starts_with(b"u0000") {
            return true;
        }
        // Skips the escaped character, so the second backslash of `\\` does
        // not start an escape.
        rest = escape.get(1..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unescaped_u0000_escape_is_a_nul() {
        let check = |json: &str, expected: bool| assert_eq!(has_escaped_nul(json.as_bytes()), expected, "{json}");
        check(r#"{"a":"b"}"#, false);
        check(r#"{"a":"\u0000"}"#, true);
        check(r#"{"a":"x\\\u0000"}"#, true);
        check(r#"{"a":"\\u0000"}"#, false);
        check(r#"{"a":"\"\u0001\u00000"}"#, true);
        check(r#"{"a":"\u00a0"}"#, false);
        check("\\", false);
        check("\\u000", false);
    }

    #[test]
    fn a_nul_in_a_json_string_is_invalid_request() {
        let error = parse_json::<serde_json::Value>(br#"{"fingerprint":"a\u0000"}"#).unwrap_err();
        assert_eq!((error.status, error.code), (StatusCode::BAD_REQUEST, "INVALID_REQUEST"));
    }
}
