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
    /// Whether the connection is closed after this answer (`connection: close`).
    pub close_connection: bool,
}

impl ApiError {
    /// An error with its status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None, close_connection: false }
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
        if self.close_connection {
            let close = hyper::header::HeaderValue::from_static("close");
            response.headers_mut().insert(hyper::header::CONNECTION, close);
        }
        response
    }
}

/// The most characters of caller input an error message repeats.
pub const EXCERPT_CHARS: usize = 40;

/// What an excerpt shows instead of something shaped like a secret.
const REDACTED: &str = "[redacted]";

/// A short, printable excerpt of caller input, for an error message: at most
/// [`EXCERPT_CHARS`] characters, everything but printable ASCII escaped, and
/// replaced whole by `[redacted]` if it holds something shaped like a license
/// key or a token (error bodies end up in client logs and bug reports).
pub fn excerpt(input: &str) -> String {
    excerpt_of(input, EXCERPT_CHARS)
}

fn excerpt_of(input: &str, max_chars: usize) -> String {
    if looks_secret(input) {
        return REDACTED.to_owned();
    }
    let mut out = String::new();
    let mut shown = 0;
    for c in input.chars() {
        let escaped: String = if c == ' ' || c.is_ascii_graphic() { c.into() } else { c.escape_unicode().collect() };
        shown += escaped.chars().count();
        if shown > max_chars {
            out.push('…');
            break;
        }
        out.push_str(&escaped);
    }
    out
}

/// License keys are 32 characters in groups of 4 (typed with dashes, spaces
/// or neither), activation tokens `act_` and 43 base64url characters, JWTs
/// and Stripe keys long runs of letters and digits: a run of 16 or more such
/// characters with a digit in it is treated as one. Dashes never break a run
/// (base64url has them); a space does unless it follows a group of 4, so
/// prose like `line 1 column 500012` is not mistaken for a key.
fn looks_secret(input: &str) -> bool {
    let (mut run, mut group, mut digit) = (0, 0, false);
    for c in input.chars() {
        match c {
            '-' => group = 0,
            ' ' if group == 4 => group = 0,
            c if c.is_ascii_alphanumeric() || c == '_' => {
                run += 1;
                group += 1;
                digit |= c.is_ascii_digit();
                if run >= 16 && digit {
                    return true;
                }
            }
            _ => (run, group, digit) = (0, 0, false),
        }
    }
    false
}

/// serde's messages quote the offending input (field names in backticks,
/// strings in double quotes). Each stretch between quotes is cut to an
/// excerpt; stretches outside quotes are serde's own words, allowed a little
/// more, but cut all the same: a field name may itself hold a quote and shift
/// which stretch is which.
pub(crate) fn sanitise_serde_message(message: &str) -> String {
    const SERDE_WORDS_CHARS: usize = 100;
    const MESSAGE_CHARS: usize = 400;
    let mut out = String::new();
    for (i, piece) in message.split(['`', '"']).enumerate() {
        if i > 0 {
            out.push('`');
        }
        let limit = if i % 2 == 1 { EXCERPT_CHARS } else { SERDE_WORDS_CHARS };
        out.push_str(&excerpt_of(piece, limit));
        if out.chars().count() > MESSAGE_CHARS {
            break;
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_printable_and_never_secret_shaped() {
        let check = |input: &str, expected: &str| assert_eq!(excerpt(input), expected, "{input:?}");
        check("name", "name");
        check("a\0b\n\u{202e}", "a\\u{0}b\\u{a}\\u{202e}");
        check(&"x".repeat(500), &format!("{}…", "x".repeat(EXCERPT_CHARS)));
        check("4QR2-2SF6-DAPK-3XD8-VPN7-PT7F-78ZG-DSNJ", REDACTED);
        check("4qr2 2sf6 dapk 3xd8 vpn7 pt7f 78zg dsnj", REDACTED);
        check("my key 4QR22SF6DAPK3XD8VPN7PT7F78ZGDSNJ", REDACTED);
        check("act_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA", REDACTED);
        check("unknown field at line 1 column 500012", "unknown field at line 1 column 500012");
    }

    #[test]
    fn serde_messages_keep_their_words_and_lose_the_input() {
        let field = format!("{}`{}", "a".repeat(10), "b".repeat(5000));
        let message = format!("unknown field `{field}`, expected `license_key` or `fingerprint` at line 1 column 5013");
        let sanitised = sanitise_serde_message(&message);
        assert!(sanitised.starts_with("unknown field `aaaaaaaaaa`"), "{sanitised}");
        assert!(sanitised.ends_with("`, expected `license_key` or `fingerprint` at line 1 column 5013"), "{sanitised}");
        assert!(sanitised.len() < 250, "{sanitised}");
    }
}
