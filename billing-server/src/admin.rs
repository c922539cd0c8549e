//! Admin API authentication: `Authorization: Bearer <admin token>` with a
//! scope per route. The dashboard's JWTs (even `role: admin`) are not admin
//! tokens and open nothing here.

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::routes::license::{client_addr, too_many_requests};
use crate::AppState;
use billing_core::domain::admin::{Scope, Scopes};
use billing_core::domain::Actor;
use hyper::{Request, StatusCode};

/// The token a request was authenticated with.
#[derive(Debug, Clone)]
pub struct AdminPrincipal {
    /// The token's name.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// Where the request came from (see [`crate::ClientAddr`]).
    pub client_addr: std::net::IpAddr,
}

impl AdminPrincipal {
    /// The audit trail's actor: `admin:<name>`.
    pub fn actor(&self) -> Actor {
        Actor::admin(self.name.clone()).from_addr(self.client_addr)
    }
}

/// Authenticates an admin request and checks that its token holds `scope`:
/// 401 without a token or with one that is unknown or revoked (such
/// failures count toward the client's failed-lookup limit, like unknown
/// license keys), 403 `INSUFFICIENT_SCOPE` when the token lacks the scope.
/// Call it before reading the body.
pub async fn authorize(
    state: &AppState,
    request: &Request<RequestBody>,
    scope: Scope,
) -> Result<AdminPrincipal, ApiError> {
    authorize_any(state, request, Some(scope)).await
}

/// [`authorize`] without a scope to hold: any live token. Only for
/// `GET /api/admin/token`, which tells a token what it may do (the
/// console hides what it may not).
pub async fn authenticate(state: &AppState, request: &Request<RequestBody>) -> Result<AdminPrincipal, ApiError> {
    authorize_any(state, request, None).await
}

async fn authorize_any(
    state: &AppState,
    request: &Request<RequestBody>,
    scope: Option<Scope>,
) -> Result<AdminPrincipal, ApiError> {
    let addr = client_addr(request);
    state.failures_by_addr.check(&addr).map_err(too_many_requests)?;
    let token = bearer_token(request.headers(), "an admin token is required: Authorization: Bearer <token>")?;
    let Some(record) = state.billing.authenticate_admin(token).await? else {
        state.failures_by_addr.record_failure(&addr).map_err(too_many_requests)?;
        return Err(ApiError::unauthorized("the admin token is unknown or revoked"));
    };
    if let Some(scope) = scope.filter(|&scope| !record.scopes.allows(scope)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            format!("this token lacks the scope {scope} that this route needs"),
        ));
    }
    state.billing.record_admin_token_use(&record).await;
    Ok(AdminPrincipal { name: record.name, scopes: record.scopes, client_addr: addr })
}
