//! An existing axum service that embeds `billing-core`: it mounts the Stripe
//! webhook and license validation on routes of its own choosing, over a
//! store (and connection pool) it opened itself. Nothing from
//! `billing-server` is used: the SDK is enough.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use billing_core::storage::any::AnyStore;
use billing_core::{Billing, WebhookError};
use serde::Deserialize;
use serde_json::json;

/// The service's routes over an engine it built.
pub fn router(billing: Billing<AnyStore>) -> Router {
    Router::new()
        .route("/hooks/stripe", post(stripe_webhook))
        .route("/v1/licenses/check", post(check_license))
        .with_state(billing)
}

async fn stripe_webhook(State(billing): State<Billing<AnyStore>>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    match billing.ingest_webhook(&body, signature).await {
        Ok(receipt) => Json(json!({ "ok": true, "outcome": receipt.outcome.as_str() })).into_response(),
        Err(WebhookError::Signature(_) | WebhookError::Malformed(_)) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "ok": false, "reason": "bad signature or payload" })))
                .into_response()
        }
        Err(WebhookError::NotConfigured) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        // Stripe retries 5xx; the failure is recorded by billing-core.
        Err(WebhookError::Failed { .. }) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Deserialize)]
struct CheckLicense {
    key: String,
    machine: Option<String>,
}

async fn check_license(State(billing): State<Billing<AnyStore>>, Json(request): Json<CheckLicense>) -> Response {
    match billing.validate(&request.key, request.machine.as_deref()).await {
        Ok(validation) => Json(json!({
            "ok": validation.code.as_str() == "VALID",
            "code": validation.code.as_str(),
            "plan": validation.license.as_ref().and_then(|l| l.terms.plan_id.clone()),
        }))
        .into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
