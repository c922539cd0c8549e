//! `POST /api/stripe/webhooks/handler`: the signature is the only auth.

use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::{ok, read_body, Response};
use crate::AppState;
use billing_core::billing::error_chain;
use billing_core::stripe::EventError;
use billing_core::WebhookError;
use hyper::{Request, StatusCode};
use serde_json::json;

pub async fn handle(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, state.max_body_bytes).await?;
    let signature = parts.headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    match state.billing.ingest_webhook(&body, signature).await {
        Ok(receipt) => {
            let outcome = receipt.outcome.as_str();
            state.metrics.observe_webhook(&receipt.event_type, outcome);
            tracing::debug!(outcome, event_type = %receipt.event_type, "webhook accepted");
            Ok(ok(&json!({ "received": true, "outcome": outcome })))
        }
        Err(WebhookError::NotConfigured) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "WEBHOOKS_DISABLED",
            "webhooks are disabled: set STRIPE_WEBHOOK_SECRET to enable them",
        )),
        Err(WebhookError::Signature(e)) => {
            state.metrics.observe_webhook("unverified", "rejected");
            tracing::warn!(reason = %e, "webhook signature refused");
            Err(ApiError::bad_request("INVALID_SIGNATURE", e.to_string()))
        }
        Err(WebhookError::Malformed(e)) => {
            tracing::warn!(error = %error_chain(&e), "signed webhook cannot be read");
            // The reason stays in the log: it may quote the payload.
            let message = match &e {
                EventError::Envelope(_) => "payload is not a Stripe event".to_owned(),
                EventError::Object { kind, .. } => format!("the {kind} object cannot be read"),
            };
            Err(ApiError::bad_request("MALFORMED_EVENT", message))
        }
        Err(WebhookError::Failed { event_type, .. }) => {
            state.metrics.observe_webhook(event_type.as_deref().unwrap_or("unknown"), "failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "PROCESSING_FAILED",
                "the event could not be processed; Stripe will retry it",
            ))
        }
    }
}
