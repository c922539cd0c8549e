//! Dashboard authentication: `Authorization: Bearer <JWT>`, HS256.

use crate::error::ApiError;
use hyper::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Verifies dashboard tokens.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
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
    /// A verifier for HS256 tokens signed with `secret`; `exp` and `sub` are required.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self { key: DecodingKey::from_secret(secret), validation }
    }

    /// Authenticates a request from its headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            let message = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "token signature is invalid",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp)",
                _ => "token is invalid",
            };
            ApiError::unauthorized(message)
        })?;
        if data.claims.sub.is_empty() {
            return Err(ApiError::unauthorized("token has an empty subject"));
        }
        Ok(Caller { user_id: data.claims.sub, is_admin: data.claims.role.as_deref() == Some("admin") })
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The answer when dashboard routes are switched off.
pub fn dashboard_disabled() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "DASHBOARD_DISABLED",
        "dashboard routes are disabled: set BILLING_JWT_SECRET to enable them",
    )
}
