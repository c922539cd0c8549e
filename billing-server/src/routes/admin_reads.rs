//! The admin API's reads (issue 14): Stripe deliveries and their replay, the
//! audit trail, customers. Each handler authorizes first, then parses its
//! query, calls `Billing` and renders.

use crate::admin::authorize;
use crate::error::{excerpt, ApiError};
use crate::http::RequestBody;
use crate::http::{ok, Body, Response};
use crate::views::admin_reads::{
    csv_record, export_csv, export_ndjson, AdminLicenseDetailView, AdminLicenseView, AuditEntryView, CustomerView,
    StripeDeliveryView, EXPORT_COLUMNS,
};
use crate::AppState;
use billing_core::admin_reads::{license_search, ReplayError};
use billing_core::domain::admin::Scope;
use billing_core::domain::cursor::{AuditCursor, CustomerCursor, DeliveryCursor, LicenseCursor, PageLimit};
use billing_core::domain::LicenseStatus;
use billing_core::storage::admin_reads::{AuditFilter, DeliveryStatus, LicenseFilter};
use billing_core::WebhookError;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{header, Request, StatusCode};
use serde_json::json;
use std::convert::Infallible;
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

/// `GET /api/admin/licenses?user_id=&status=&plan=&q=&limit=&cursor=`
pub async fn licenses(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::LicensesRead).await?;
    let query = ListQuery::parse(&request, &["user_id", "status", "plan", "q", "limit", "cursor"])?;
    let status = query
        .get("status")
        .map(|s| {
            LicenseStatus::parse(s).ok_or_else(|| {
                invalid(format!("status must be active, suspended, expired or revoked, not {}", excerpt(s)))
            })
        })
        .transpose()?;
    let filter = LicenseFilter {
        user_id: query.get("user_id").map(str::to_owned),
        status,
        plan: query.get("plan").map(str::to_owned),
        search: query.get("q").map(license_search),
    };
    let (limit, cursor) = (query.limit()?, query.cursor(LicenseCursor::parse)?);
    let page = state.billing.admin_licenses(&filter, limit, cursor.as_ref()).await?;
    let now = state.billing.now();
    let licenses: Vec<_> = page.items.iter().map(|l| AdminLicenseView::new(l, now)).collect();
    Ok(ok(&json!({ "licenses": licenses, "next_cursor": page.next_cursor })))
}

/// `GET /api/admin/licenses/{id}`
pub async fn license(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::LicensesRead).await?;
    let no_such = || ApiError::not_found("no such license");
    let id = Uuid::parse_str(id).map_err(|_| no_such())?;
    let detail = state.billing.admin_license(id).await?.ok_or_else(no_such)?;
    let liveness = state.billing.liveness_of(&detail.listed.record.license);
    Ok(ok(&json!({ "license": AdminLicenseDetailView::new(&detail, state.billing.now(), liveness) })))
}

#[derive(Clone, Copy)]
enum ExportFormat {
    Ndjson,
    Csv,
}

enum ExportStep {
    Header,
    After(Option<LicenseCursor>),
    Done,
}

/// `GET /api/admin/licenses/export?format=ndjson|csv`: every license, read
/// in keyset batches of 500 and written batch by batch to a streaming body,
/// so the server holds one batch at a time however many licenses there are
/// (and a slow client holds back the reads, not a growing buffer).
pub async fn export(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    authorize(state, &request, Scope::LicensesRead).await?;
    let query = ListQuery::parse(&request, &["format"])?;
    let format = match query.get("format") {
        None | Some("ndjson") => ExportFormat::Ndjson,
        Some("csv") => ExportFormat::Csv,
        Some(other) => return Err(invalid(format!("format must be ndjson or csv, not {}", excerpt(other)))),
    };
    let billing = state.billing.clone();
    let first = match format {
        ExportFormat::Csv => ExportStep::Header,
        ExportFormat::Ndjson => ExportStep::After(None),
    };
    let batches = futures_util::stream::unfold(first, move |step| {
        let billing = billing.clone();
        async move {
            let after = match step {
                ExportStep::Done => return None,
                ExportStep::Header => return Some((Bytes::from(csv_record(EXPORT_COLUMNS)), ExportStep::After(None))),
                ExportStep::After(after) => after,
            };
            match billing.license_export_batch(after.as_ref()).await {
                Ok((rows, next)) => {
                    let now = billing.now();
                    let mut chunk = String::with_capacity(rows.len() * 200);
                    for row in &rows {
                        chunk.push_str(&match format {
                            ExportFormat::Ndjson => export_ndjson(row, now),
                            ExportFormat::Csv => export_csv(row, now),
                        });
                    }
                    let step = if next.is_some() { ExportStep::After(next) } else { ExportStep::Done };
                    Some((Bytes::from(chunk), step))
                }
                Err(e) => {
                    // The status line has gone: the failure can only be said
                    // in the body. An NDJSON reader sees a last line that is
                    // an error object; a CSV body just ends.
                    tracing::error!(error = %billing_core::billing::error_chain(&e), "license export failed");
                    let trailer = match format {
                        ExportFormat::Ndjson => {
                            json!({ "error": { "code": "INTERNAL", "message": "the export stopped early" } })
                                .to_string()
                                + "\n"
                        }
                        ExportFormat::Csv => String::new(),
                    };
                    Some((Bytes::from(trailer), ExportStep::Done))
                }
            }
        }
    });
    let (content_type, extension) = match format {
        ExportFormat::Ndjson => ("application/x-ndjson", "ndjson"),
        ExportFormat::Csv => ("text/csv; charset=utf-8; header=present", "csv"),
    };
    let body: Body = StreamBody::new(batches.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)))).boxed_unsync();
    Ok(hyper::Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"licenses.{extension}\""))
        .body(body)
        .expect("static headers are valid"))
}
