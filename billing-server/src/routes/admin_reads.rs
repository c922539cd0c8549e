//! The admin API's reads (issue 14): Stripe deliveries and their replay, the
//! audit trail, customers. Each handler authorizes first, then parses its
//! query, calls `Billing` and renders.

use crate::admin::authorize;
use crate::error::{excerpt, ApiError};
use crate::http::RequestBody;
use crate::http::{ok, Response};
use crate::views::admin_reads::{AuditEntryView, CustomerView, StripeDeliveryView};
use crate::AppState;
use billing_core::admin_reads::ReplayError;
use billing_core::domain::admin::Scope;
use billing_core::domain::cursor::{AuditCursor, CustomerCursor, DeliveryCursor, PageLimit};
use billing_core::storage::admin_reads::{AuditFilter, DeliveryStatus};
use billing_core::WebhookError;
use hyper::{Request, StatusCode};
use serde_json::json;
use uuid::Uuid;

/// The parameters of a listing's query string: each known name at most
/// once, none unknown (a misspelt filter must not silently list everything),
/// none empty or holding control characters.
pub(crate) struct ListQuery {
    pairs: Vec<(String, String)>,
}

impl ListQuery {
    pub(crate) fn parse(request: &Request<RequestBody>, known: &[&str]) -> Result<Self, ApiError> {
        let query = request.uri().query().unwrap_or_default();
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if !known.contains(&name.as_ref()) {
                return Err(invalid(format!("unknown query parameter `{}`", excerpt(&name))));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(invalid(format!("{name} is given more than once")));
            }
            if value.is_empty() {
                return Err(invalid(format!("{name} must not be empty")));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid(format!("{name} must not contain control characters")));
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Ok(Self { pairs })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// `limit`: 1 to 500, 50 when absent.
    pub(crate) fn limit(&self) -> Result<PageLimit, ApiError> {
        match self.get("limit") {
            None => Ok(PageLimit::DEFAULT),
            Some(text) => PageLimit::parse(text).ok_or_else(|| {
                invalid(format!("limit must be a whole number from 1 to {}, not {}", PageLimit::MAX, excerpt(text)))
            }),
        }
    }

    /// `cursor`, read by the listing's own cursor type.
    pub(crate) fn cursor<C>(&self, parse: impl Fn(&str) -> Option<C>) -> Result<Option<C>, ApiError> {
        self.get("cursor")
            .map(|token| parse(token).ok_or_else(|| invalid("cursor is not one this listing returned")))
            .transpose()
    }

    /// A uuid parameter; a malformed one matches nothing, so it is refused.
    pub(crate) fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|text| {
                Uuid::parse_str(text).map_err(|_| invalid(format!("{name} must be a UUID, not {}", excerpt(text))))
            })
            .transpose()
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("INVALID_REQUEST", message)
}

/// `GET /api/admin/stripe-events?status=&limit=&cursor=`
pub async fn stripe_events(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::EventsRead).await?;
    let query = ListQuery::parse(&request, &["status", "limit", "cursor"])?;
    let status = query
        .get("status")
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                invalid(format!("status must be processed, duplicate, ignored or failed, not {}", excerpt(s)))
            })
        })
        .transpose()?;
    let (limit, cursor) = (query.limit()?, query.cursor(DeliveryCursor::parse)?);
    let page = state.billing.stripe_deliveries(status, limit, cursor.as_ref()).await?;
    let events: Vec<_> = page.items.iter().map(StripeDeliveryView::from).collect();
    Ok(ok(&json!({ "events": events, "next_cursor": page.next_cursor })))
}

/// `POST /api/admin/stripe-events/{id}/replay`
pub async fn replay_stripe_event(
    state: &AppState,
    request: Request<RequestBody>,
    event_id: &str,
) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::StripeWrite).await?;
    let replay = state.billing.replay_stripe_event(event_id, &principal.actor()).await.map_err(replay_error)?;
    state.metrics.observe_webhook(&replay.delivery.kind, replay.outcome.as_str());
    Ok(ok(&json!({ "outcome": replay.outcome.as_str(), "event": StripeDeliveryView::from(&replay.delivery) })))
}

fn replay_error(e: ReplayError) -> ApiError {
    match e {
        ReplayError::NotFound => ApiError::not_found("no such Stripe event"),
        ReplayError::NoPayload => ApiError::new(
            StatusCode::CONFLICT,
            "NOT_REPLAYABLE",
            "this delivery was recorded before payloads were kept; it cannot be replayed",
        ),
        ReplayError::Unreadable(_) => {
            ApiError::new(StatusCode::CONFLICT, "NOT_REPLAYABLE", "the stored payload of this delivery cannot be read")
        }
        ReplayError::Failed(WebhookError::Failed { .. }) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PROCESSING_FAILED",
            "the event could not be applied; the failure is recorded",
        ),
        ReplayError::Failed(other) => ApiError::internal(&other),
        ReplayError::Store(e) => e.into(),
    }
}

/// `GET /api/admin/audit?license_id=&user_id=&limit=&cursor=`
pub async fn audit(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::EventsRead).await?;
    let query = ListQuery::parse(&request, &["license_id", "user_id", "limit", "cursor"])?;
    let filter =
        AuditFilter { license_id: query.uuid("license_id")?, user_id: query.get("user_id").map(str::to_owned) };
    let (limit, cursor) = (query.limit()?, query.cursor(AuditCursor::parse)?);
    let page = state.billing.audit_trail(&filter, limit, cursor.as_ref()).await?;
    let entries: Vec<_> = page.items.iter().map(AuditEntryView::from).collect();
    Ok(ok(&json!({ "entries": entries, "next_cursor": page.next_cursor })))
}

/// `GET /api/admin/customers?q=&limit=&cursor=`
pub async fn customers(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::CustomersRead).await?;
    let query = ListQuery::parse(&request, &["q", "limit", "cursor"])?;
    let (limit, cursor) = (query.limit()?, query.cursor(CustomerCursor::parse)?);
    let page = state.billing.customer_accounts(query.get("q"), limit, cursor.as_ref()).await?;
    let customers: Vec<_> = page.items.iter().map(CustomerView::from).collect();
    Ok(ok(&json!({ "customers": customers, "next_cursor": page.next_cursor })))
}
