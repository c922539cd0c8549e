//! The customer portal's sessions (issue 19): `POST /api/admin/portal-sessions`
//! (scope `portal:write`) hands the vendor's backend a URL with a one-time
//! code; `POST /api/portal/session` exchanges that code, once, for a
//! dashboard token of that user alone.

use super::license::{client_addr, too_many_requests};
use crate::admin::authorize;
use crate::auth::dashboard_disabled;
use crate::error::ApiError;
use crate::http::{json, ok, parse_json, read_body, RequestBody, Response};
use crate::AppState;
use billing_core::billing::rfc3339;
use billing_core::domain::admin::Scope;
use billing_core::domain::portal::SESSION_TTL;
use billing_core::portal::{PortalCodeError, PortalSessionError};
use hyper::{header, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    user_id: String,
    #[serde(default)]
    return_url: Option<String>,
}

/// `POST /api/admin/portal-sessions` → 201 `{"url","expires_at"}`.
pub async fn create(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::PortalWrite).await?;
    let base = match &state.public_url {
        Some(url) => url.clone(),
        None => {
            let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_REQUEST",
                    "the request has no Host header to build the portal URL from: set BILLING_PUBLIC_URL",
                )
            })?;
            format!("http://{host}")
        }
    };
    let (parts, body) = request.into_parts();
    let body: CreateBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    // The code is worth nothing without the credential it is exchanged for.
    if state.jwt.is_none() {
        return Err(dashboard_disabled());
    }
    let session = state
        .billing
        .create_portal_session(&body.user_id, body.return_url.as_deref(), &principal.actor())
        .await
        .map_err(|e| match e {
            PortalSessionError::Invalid(e) => ApiError::bad_request("INVALID_REQUEST", e.to_string()),
            PortalSessionError::Store(e) => e.into(),
        })?;
    // In the fragment: browsers never send it, so it reaches no log or
    // proxy, and the page removes it from the address bar at once.
    let url = format!("{base}/portal#code={}", session.code.expose());
    Ok(json(StatusCode::CREATED, &json!({ "url": url, "expires_at": rfc3339(session.expires_at) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeBody {
    code: String,
}

/// `POST /api/portal/session` `{"code"}` → 200 `{"token","token_type",
/// "expires_at","user_id","return_url"}`. An unknown code counts as a
/// failed lookup of the client.
pub async fn exchange(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let addr = client_addr(&request);
    state.failures_by_addr.check(&addr).map_err(too_many_requests)?;
    let Some(jwt) = &state.jwt else { return Err(dashboard_disabled()) };
    let (parts, body) = request.into_parts();
    let body: ExchangeBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let grant = match state.billing.redeem_portal_code(body.code.trim(), &addr.to_string()).await {
        Ok(grant) => grant,
        Err(PortalCodeError::Store(e)) => return Err(e.into()),
        Err(e @ PortalCodeError::Unknown) => {
            state.failures_by_addr.record_failure(&addr).map_err(too_many_requests)?;
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "PORTAL_CODE_INVALID", e.to_string()));
        }
        Err(e @ PortalCodeError::Used) => {
            return Err(ApiError::new(StatusCode::GONE, "PORTAL_CODE_USED", e.to_string()))
        }
        Err(e @ PortalCodeError::Expired) => {
            return Err(ApiError::new(StatusCode::GONE, "PORTAL_CODE_EXPIRED", e.to_string()))
        }
    };
    let now = state.billing.now();
    let expires_at = now + SESSION_TTL;
    let token = jwt.issue(&grant.user_id, now, expires_at);
    Ok(ok(&json!({
        "token": token,
        "token_type": "Bearer",
        "expires_at": rfc3339(expires_at),
        "user_id": grant.user_id,
        "return_url": grant.return_url,
    })))
}
