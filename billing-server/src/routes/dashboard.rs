//! The dashboard's read routes (JWT bearer).

use crate::auth::{dashboard_disabled, Caller};
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::{ok, Response};
use crate::views::{ChangeView, DeviceView, LicenseView, PaymentView, PlanView, SubscriptionView};
use crate::AppState;
use hyper::{Request, StatusCode};
use serde_json::json;

pub(super) fn caller(state: &AppState, request: &Request<RequestBody>) -> Result<Caller, ApiError> {
    state.jwt.as_ref().ok_or_else(dashboard_disabled)?.authenticate(request.headers())
}

/// The caller and the user whose records the request is about: the caller
/// themself, or, for an admin, the user named by `?user_id=`.
pub(super) fn target(state: &AppState, request: &Request<RequestBody>) -> Result<(Caller, String), ApiError> {
    let caller = caller(state, request)?;
    match named_user(request.uri().query())? {
        None => {
            let user = caller.user_id.clone();
            Ok((caller, user))
        }
        Some(user) if user == caller.user_id || caller.is_admin => Ok((caller, user)),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "only admins may act on other users")),
    }
}

pub async fn current_subscription(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let current = state.billing.current_subscription(&user).await?;
    Ok(ok(&json!({ "subscription": current.as_ref().map(SubscriptionView::from) })))
}

pub async fn subscription_history(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let changes = state.billing.subscription_history(&user).await?;
    Ok(ok(&json!({ "changes": changes.iter().map(ChangeView::from).collect::<Vec<_>>() })))
}

pub async fn payment_history(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let payments = state.billing.payment_history(&user).await?;
    Ok(ok(&json!({ "payments": payments.iter().map(PaymentView::from).collect::<Vec<_>>() })))
}

pub async fn plans(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    caller(state, &request)?;
    let plans: Vec<PlanView> = state.billing.plans().all().iter().map(PlanView::from).collect();
    Ok(ok(&json!({ "plans": plans })))
}

pub async fn licenses(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let now = state.billing.now();
    let licenses = state.billing.licenses(&user).await?;
    let devices = state.billing.devices_of_user(&user).await?;
    let views: Vec<_> = licenses
        .iter()
        .map(|l| {
            let liveness = state.billing.liveness_of(l);
            let own = devices.iter().filter(|d| d.license_id == l.id).map(|d| DeviceView::new(d, now, liveness));
            LicenseView::new(l, own.collect(), now)
        })
        .collect();
    Ok(ok(&json!({ "licenses": views })))
}

/// The user named by `?user_id=`, percent-decoded like a form. Refused when
/// empty (naming nobody must not fall back to anyone, nor reach Stripe),
/// repeated (which one counts would be a guess) or holding control
/// characters (PostgreSQL refuses a NUL in text).
fn named_user(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    let mut named = pairs.filter(|(name, _)| name == "user_id").map(|(_, value)| value);
    let Some(user) = named.next() else { return Ok(None) };
    let invalid = |message| Err(ApiError::bad_request("INVALID_REQUEST", message));
    if named.next().is_some() {
        return invalid("user_id is given more than once");
    }
    if user.is_empty() {
        return invalid("user_id must not be empty");
    }
    if user.chars().any(char::is_control) {
        return invalid("user_id must not contain control characters");
    }
    Ok(Some(user.into_owned()))
}
