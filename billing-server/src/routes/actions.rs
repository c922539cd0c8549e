//! Dashboard actions through the Stripe API (JWT bearer).

use super::dashboard::target;
use super::license::client_addr;
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::{ok, parse_json, read_body, Response};
use crate::views::SubscriptionView;
use crate::AppState;
use billing_core::actions::ActionError;
use billing_core::domain::Actor;
use billing_core::stripe::StripeError;
use hyper::{Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

fn action_error(e: ActionError) -> ApiError {
    use ActionError::*;
    match e {
        NoSubscription => ApiError::new(StatusCode::NOT_FOUND, "NO_SUBSCRIPTION", "no subscription found"),
        NoCustomer => ApiError::new(StatusCode::NOT_FOUND, "NO_CUSTOMER", "no billing account found; subscribe first"),
        // The id is the caller's input: repeated only as a short excerpt.
        UnknownPlan(id) => {
            ApiError::bad_request("UNKNOWN_PLAN", format!("unknown plan `{}`", crate::error::excerpt(&id)))
        }
        SamePlan(_) => ApiError::new(StatusCode::CONFLICT, "SAME_PLAN", e.to_string()),
        Conflict(message) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", message),
        Invalid(message) => ApiError::bad_request("INVALID_REQUEST", message),
        StripeNotConfigured => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STRIPE_DISABLED",
            "Stripe actions are disabled: set STRIPE_SECRET_KEY to enable them",
        ),
        // 401, 403 and 404 mean our key, its permissions or the ids we
        // stored are wrong: our fault, not the user's, and Stripe's message
        // (which may name the key or our objects) is not for them.
        Stripe(StripeError::Api { status: status @ (401 | 403 | 404), kind, code, .. }) => {
            tracing::error!(
                stripe_status = status,
                stripe_type = %kind,
                stripe_code = code.as_deref().unwrap_or(""),
                "stripe rejected our credentials or an id we sent"
            );
            stripe_unavailable()
        }
        Stripe(StripeError::Api { status, kind, message, .. }) => {
            tracing::info!(stripe_status = status, stripe_type = %kind, "stripe refused an action");
            if kind == "card_error" || status == 402 {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "CARD_ERROR", message)
            } else {
                ApiError::bad_request("STRIPE_REQUEST_FAILED", message)
            }
        }
        Stripe(e @ (StripeError::Unavailable(_) | StripeError::Protocol(_))) => {
            tracing::warn!(error = %e, "stripe unavailable");
            stripe_unavailable()
        }
        Store(e) => e.into(),
    }
}

fn stripe_unavailable() -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "STRIPE_UNAVAILABLE", "Stripe is unavailable; try again shortly")
}

async fn body<T: DeserializeOwned + Default>(state: &AppState, request: Request<RequestBody>) -> Result<T, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body, state.max_body_bytes).await?;
    // An empty body (or JSON null) means "all defaults".
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

async fn required_body<T: DeserializeOwned>(state: &AppState, request: Request<RequestBody>) -> Result<T, ApiError> {
    let (parts, body) = request.into_parts();
    parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)
}

fn subscription_response(sub: &billing_core::domain::Subscription) -> Response {
    ok(&json!({ "subscription": SubscriptionView::from(sub) }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default = "yes")]
    at_period_end: bool,
}

impl Default for CancelBody {
    fn default() -> Self {
        Self { at_period_end: true }
    }
}

fn yes() -> bool {
    true
}

pub async fn cancel(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (caller, user) = target(state, &request)?;
    let addr = client_addr(&request);
    let body: CancelBody = body(state, request).await?;
    let actor = Actor::user(caller.user_id).from_addr(addr);
    let sub = state.billing.cancel_subscription(&actor, &user, body.at_period_end).await.map_err(action_error)?;
    Ok(subscription_response(&sub))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

pub async fn reactivate(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (caller, user) = target(state, &request)?;
    let addr = client_addr(&request);
    let _: EmptyBody = body(state, request).await?;
    let actor = Actor::user(caller.user_id).from_addr(addr);
    let sub = state.billing.reactivate_subscription(&actor, &user).await.map_err(action_error)?;
    Ok(subscription_response(&sub))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePlanBody {
    plan: String,
}

pub async fn change_plan(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (caller, user) = target(state, &request)?;
    let addr = client_addr(&request);
    let body: ChangePlanBody = required_body(state, request).await?;
    let actor = Actor::user(caller.user_id).from_addr(addr);
    let sub = state.billing.change_plan(&actor, &user, &body.plan).await.map_err(action_error)?;
    Ok(subscription_response(&sub))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    plan: String,
    success_url: String,
    cancel_url: String,
}

pub async fn checkout(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let body: CheckoutBody = required_body(state, request).await?;
    let link = state
        .billing
        .create_checkout(&user, &body.plan, &body.success_url, &body.cancel_url)
        .await
        .map_err(action_error)?;
    Ok(ok(&json!({ "url": link.url, "id": link.id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalBody {
    return_url: String,
}

pub async fn portal(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let body: PortalBody = required_body(state, request).await?;
    let url = state.billing.create_billing_portal(&user, &body.return_url).await.map_err(action_error)?;
    Ok(ok(&json!({ "url": url })))
}

pub async fn payment_method(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let card = state.billing.payment_method(&user).await.map_err(action_error)?;
    let card =
        card.map(|c| json!({ "brand": c.brand, "last4": c.last4, "exp_month": c.exp_month, "exp_year": c.exp_year }));
    Ok(ok(&json!({ "payment_method": card })))
}

pub async fn sync(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (caller, user) = target(state, &request)?;
    let addr = client_addr(&request);
    let _: EmptyBody = body(state, request).await?;
    let actor = Actor::user(caller.user_id).from_addr(addr);
    let (subs, changed) = state.billing.sync_from_stripe(&actor, &user).await.map_err(action_error)?;
    Ok(ok(&json!({
        "subscriptions": subs.iter().map(SubscriptionView::from).collect::<Vec<_>>(),
        "changed": changed,
    })))
}
