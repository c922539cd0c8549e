//! Dashboard authentication: `Authorization: Bearer <JWT>`, HS256.

use crate::error::ApiError;
use hyper::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// Verifies dashboard tokens, and issues the portal's (the same kind, for
/// one user, short-lived).
pub struct JwtVerifier {
    key: DecodingKey,
    signing: EncodingKey,
    validation: Validation,
}

#[derive(serde::Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
}

/// Who is calling, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The dashboard's user id (`sub`).
    pub user_id: String,
    /// `role: "admin"` in the token.
    pub is_admin: bool,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
}

impl JwtVerifier {
    /// A verifier for HS256 tokens signed with `secret`; `exp` and `sub` are
    /// required, `nbf` is honoured when present (both with 5 s of leeway).
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self { key: DecodingKey::from_secret(secret), signing: EncodingKey::from_secret(secret), validation }
    }

    /// A dashboard token for `user_id` (never an admin), valid from
    /// `issued_at` until `expires_at`: what a portal code is exchanged for.
    pub fn issue(&self, user_id: &str, issued_at: time::OffsetDateTime, expires_at: time::OffsetDateTime) -> String {
        let claims = IssuedClaims { sub: user_id, iat: issued_at.unix_timestamp(), exp: expires_at.unix_timestamp() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.signing)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Authenticates a request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer_token(headers, "missing bearer token")?;
        refuse_critical_extensions(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let message = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                _ => "token is invalid",
            };
            ApiError::unauthorized(message)
        })?;
        if data.claims.sub.is_empty() {
            return Err(ApiError::unauthorized("token has an empty subject"));
        }
        // A user id is a key in both stores, and PostgreSQL refuses a NUL in text.
        if data.claims.sub.chars().any(char::is_control) {
            return Err(ApiError::unauthorized("token subject has control characters"));
        }
        Ok(Caller { user_id: data.claims.sub, is_admin: data.claims.role.as_deref() == Some("admin") })
    }
}

/// RFC 7515 §4.1.11: a header's `crit` names extensions the token is
/// invalid without; we implement none, so any `crit` makes it invalid
/// (jsonwebtoken reads the member but does not enforce it).
fn refuse_critical_extensions(token: &str) -> Result<(), ApiError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::unauthorized("token is invalid"))?;
    match header.crit {
        Some(_) => {
            Err(ApiError::unauthorized("token header has a critical (crit) extension this server does not support"))
        }
        None => Ok(()),
    }
}

/// The token of the one `Authorization: Bearer …` header, or 401 with
/// `missing` as its message. Two headers are refused rather than one picked:
/// a proxy and the server could pick different ones.
pub fn bearer_token<'a>(headers: &'a HeaderMap, missing: &'static str) -> Result<&'a str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or_else(|| ApiError::unauthorized(missing))?;
    if values.next().is_some() {
        return Err(ApiError::unauthorized("more than one Authorization header"));
    }
    value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| token.trim())
        .ok_or_else(|| ApiError::unauthorized(missing))
}

/// [`bearer_token`] for callers that answer every refusal alike.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers, "missing bearer token").ok()
}

/// The answer when dashboard routes are switched off.
pub fn dashboard_disabled() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DASHBOARD_DISABLED",
        "dashboard routes are disabled: set BILLING_JWT_SECRET to enable them",
    )
}
