//! `/api/admin/webhook-endpoints` and `/api/admin/webhook-deliveries`: the
//! vendor's own webhook endpoints and what was sent to them (scope
//! `webhooks:write`).

use crate::admin::authorize;
use crate::error::{excerpt, ApiError};
use crate::http::{json, ok, parse_json, read_body, RequestBody, Response};
use crate::AppState;
use billing_core::billing::rfc3339;
use billing_core::domain::admin::Scope;
use billing_core::domain::vendor_webhook::EventFilterError;
use billing_core::storage::{WebhookAttempt, WebhookDelivery, WebhookEndpoint};
use billing_core::vendor_webhooks::EndpointError;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// Deliveries listed when `limit` is not given.
const DEFAULT_LIMIT: i64 = 20;

#[derive(Serialize)]
struct EndpointView<'a> {
    id: Uuid,
    url: &'a str,
    events: &'a [String],
    description: Option<&'a str>,
    created_at: String,
    /// Only in the answer to the creation: it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl<'a> EndpointView<'a> {
    fn new(endpoint: &'a WebhookEndpoint, secret: Option<String>) -> Self {
        Self {
            id: endpoint.id,
            url: &endpoint.url,
            events: &endpoint.events,
            description: endpoint.description.as_deref(),
            created_at: rfc3339(endpoint.created_at),
            secret,
        }
    }
}

#[derive(Serialize)]
struct AttemptView<'a> {
    at: String,
    status_code: Option<u16>,
    error: Option<&'a str>,
    duration_ms: i64,
    next_attempt_at: Option<String>,
}

impl<'a> AttemptView<'a> {
    fn new(attempt: &'a WebhookAttempt) -> Self {
        Self {
            at: rfc3339(attempt.attempted_at),
            status_code: attempt.status_code,
            error: attempt.error.as_deref(),
            duration_ms: attempt.duration_ms,
            next_attempt_at: attempt.next_attempt_at.map(rfc3339),
        }
    }
}

#[derive(Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    endpoint_id: Uuid,
    event_type: &'a str,
    status: &'static str,
    attempt_count: i32,
    next_attempt_at: Option<String>,
    created_at: String,
    delivered_at: Option<String>,
    attempts: Vec<AttemptView<'a>>,
}

impl<'a> DeliveryView<'a> {
    fn new(delivery: &'a WebhookDelivery) -> Self {
        Self {
            id: &delivery.id,
            endpoint_id: delivery.endpoint_id,
            event_type: &delivery.event_type,
            status: delivery.status.as_str(),
            attempt_count: delivery.attempts,
            next_attempt_at: delivery.next_attempt_at.map(rfc3339),
            created_at: rfc3339(delivery.created_at),
            delivered_at: delivery.delivered_at.map(rfc3339),
            attempts: delivery.attempt_log.iter().map(AttemptView::new).collect(),
        }
    }
}

fn endpoint_error(error: EndpointError) -> ApiError {
    let invalid = |message: String| ApiError::bad_request("INVALID_REQUEST", message);
    match error {
        EndpointError::Events(EventFilterError::Unknown(name)) => {
            invalid(format!("events: unknown event type {:?}", excerpt(&name)))
        }
        e @ EndpointError::Events(_) => invalid(e.to_string()),
        e @ (EndpointError::InvalidUrl(_)
        | EndpointError::ForbiddenTarget(_)
        | EndpointError::DescriptionTooLong
        | EndpointError::BadCursor) => invalid(e.to_string()),
        EndpointError::NotFound => ApiError::not_found("no such webhook endpoint or delivery"),
        EndpointError::AlreadyDelivered => {
            ApiError::new(StatusCode::CONFLICT, "ALREADY_DELIVERED", "the message was delivered already")
        }
        EndpointError::Store(e) => e.into(),
    }
}

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("no such webhook endpoint"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

/// `POST /api/admin/webhook-endpoints`
pub async fn create(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::WebhooksWrite).await?;
    let (parts, body) = request.into_parts();
    let body: CreateBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let created = state
        .billing
        .create_webhook_endpoint(&body.url, &body.events, body.description.as_deref())
        .await
        .map_err(endpoint_error)?;
    tracing::info!(endpoint_id = %created.endpoint.id, token = %principal.name, "webhook endpoint created");
    let view = EndpointView::new(&created.endpoint, Some(created.secret.expose()));
    Ok(json(StatusCode::CREATED, &json!({ "endpoint": view })))
}

/// `GET /api/admin/webhook-endpoints`
pub async fn list(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::WebhooksWrite).await?;
    let endpoints = state.billing.webhook_endpoints().await?;
    let views: Vec<_> = endpoints.iter().map(|e| EndpointView::new(e, None)).collect();
    Ok(ok(&json!({ "endpoints": views })))
}

/// `DELETE /api/admin/webhook-endpoints/{id}`
pub async fn delete(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::WebhooksWrite).await?;
    let id = endpoint_id(id)?;
    state.billing.delete_webhook_endpoint(id).await.map_err(endpoint_error)?;
    tracing::info!(endpoint_id = %id, token = %principal.name, "webhook endpoint deleted");
    Ok(ok(&json!({ "id": id, "deleted": true })))
}

/// `GET /api/admin/webhook-endpoints/{id}/deliveries?limit=&cursor=`
pub async fn deliveries(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::WebhooksWrite).await?;
    let id = endpoint_id(id)?;
    let (limit, cursor) = page_query(request.uri().query())?;
    let page = state.billing.webhook_deliveries(id, limit, cursor.as_deref()).await.map_err(endpoint_error)?;
    let views: Vec<_> = page.deliveries.iter().map(DeliveryView::new).collect();
    Ok(ok(&json!({ "deliveries": views, "next_cursor": page.next_cursor })))
}

/// `POST /api/admin/webhook-deliveries/{id}/retry`
pub async fn retry(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::WebhooksWrite).await?;
    state.billing.retry_webhook_delivery(id).await.map_err(endpoint_error)?;
    tracing::info!(message_id = %id, token = %principal.name, "webhook delivery retried");
    Ok(json(StatusCode::ACCEPTED, &json!({ "delivery": { "id": id, "status": "pending" } })))
}

/// `limit` (1 to the page maximum) and `cursor`, each at most once; nothing else.
fn page_query(query: Option<&str>) -> Result<(i64, Option<String>), ApiError> {
    let invalid = |message: String| ApiError::bad_request("INVALID_REQUEST", message);
    let (mut limit, mut cursor) = (None, None);
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            other => return Err(invalid(format!("unknown query parameter {:?}", excerpt(other)))),
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(invalid(format!("{name} is given more than once")));
        }
    }
    let max = billing_core::vendor_webhooks::MAX_DELIVERIES_PAGE;
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| invalid(format!("limit must be a whole number from 1 to {max}")))?,
    };
    Ok((limit, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_are_checked() {
        assert_eq!(page_query(None).unwrap(), (DEFAULT_LIMIT, None));
        assert_eq!(page_query(Some("limit=5&cursor=abc")).unwrap(), (5, Some("abc".to_owned())));
        for bad in ["limit=0", "limit=101", "limit=x", "limit=1&limit=2", "page=2", "cursor=a&cursor=b"] {
            assert!(page_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
