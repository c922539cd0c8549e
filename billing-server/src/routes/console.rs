//! What the vendor console (issue 19) needs beyond the admin API: a token's
//! own name and scopes, and the overview's counts.

use crate::admin::{authenticate, authorize};
use crate::error::ApiError;
use crate::http::{ok, RequestBody, Response};
use crate::AppState;
use billing_core::domain::admin::Scope;
use hyper::Request;
use serde_json::json;

/// `GET /api/admin/token` → `{"name","scopes"}`: the presented token's name
/// and scopes, for any live token (the console shows only what they allow).
pub async fn whoami(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let principal = authenticate(state, &request).await?;
    Ok(ok(&json!({ "name": principal.name, "scopes": principal.scopes.names() })))
}

/// `GET /api/admin/overview` (scope `licenses:read`) →
/// `{"active_licenses","devices_seen_last_hour","stripe_events_today","activations_per_day":[{"day","count"}]}`.
pub async fn overview(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::LicensesRead).await?;
    let overview = state.billing.overview().await?;
    let days: Vec<_> =
        overview.activations_per_day.iter().map(|d| json!({ "day": d.day.to_string(), "count": d.count })).collect();
    Ok(ok(&json!({
        "active_licenses": overview.active_licenses,
        "devices_seen_last_hour": overview.devices_seen_last_hour,
        "stripe_events_today": overview.stripe_events_today,
        "activations_per_day": days,
    })))
}
