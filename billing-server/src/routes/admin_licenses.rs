//! The admin API's license and device writes (issue 14): parse, call the
//! `Billing` use case, render the license as the admin reads show it
//! ([`AdminLicenseView`]). The token and its scope are checked before
//! anything else is read.

use crate::admin::authorize;
use crate::error::ApiError;
use crate::http::{json, ok, parse_json, read_body, RequestBody, Response};
use crate::views::admin_reads::{AdminLicenseDetailView, AdminLicenseView};
use crate::views::DeviceView;
use crate::AppState;
use billing_core::admin_licenses::{AdminLicense, AdminLicenseError, NewLicense, PatchRequest};
use billing_core::domain::admin::Scope;
use billing_core::domain::device::Liveness;
use billing_core::domain::license::Renewal;
use billing_core::domain::{LicenseKind, Timestamp};
use billing_core::storage::admin_reads::{LicenseDetail, ListedLicense};
use hyper::{Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use uuid::Uuid;

/// The one mapping of the use cases' errors.
pub fn admin_license_error(e: AdminLicenseError) -> ApiError {
    match e {
        AdminLicenseError::NotFound(what) => ApiError::not_found(format!("no such {what}")),
        AdminLicenseError::Invalid(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_REQUEST", format!("invalid request: {message}"))
        }
        AdminLicenseError::Conflict => ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            "the license is revoked; revocation is final and the license takes no further change",
        ),
        AdminLicenseError::Store(e) => e.into(),
    }
}

/// An id in the path: a malformed one names no license, like an unknown one.
fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("no such {what}")))
}

async fn body<T: DeserializeOwned>(state: &AppState, request: Request<RequestBody>) -> Result<T, ApiError> {
    let (parts, body) = request.into_parts();
    parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)
}

/// No body, or `{}`: the action routes take no input, and anything else
/// sent to them is a mistake worth saying so.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

async fn no_body(state: &AppState, request: Request<RequestBody>) -> Result<(), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = read_body(&parts.headers, body, state.max_body_bytes).await?;
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        parse_json::<NoFields>(&bytes)?;
    }
    Ok(())
}

fn timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
    let text = String::deserialize(deserializer)?;
    Timestamp::parse(&text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map_err(|_| serde::de::Error::custom("timestamps are RFC 3339, e.g. 2027-01-31T00:00:00Z"))
}

fn some_timestamp<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
    timestamp(deserializer).map(Some)
}

/// `null` is kept apart from an absent field: it clears an override.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
struct NullableTimestamp(#[serde(deserialize_with = "timestamp")] Timestamp);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    user_id: String,
    plan: String,
    #[serde(default)]
    max_devices: Option<i64>,
    #[serde(default, deserialize_with = "some_timestamp")]
    expires_at: Option<Timestamp>,
    #[serde(default)]
    entitlements: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    kind: Option<LicenseKind>,
    #[serde(default, deserialize_with = "some_timestamp")]
    updates_until: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    #[serde(default, deserialize_with = "nullable")]
    max_devices: Option<Option<i64>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<NullableTimestamp>>,
    #[serde(default)]
    entitlements: Option<Vec<String>>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default, deserialize_with = "nullable")]
    updates_until: Option<Option<NullableTimestamp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    #[serde(default, deserialize_with = "some_timestamp")]
    until: Option<Timestamp>,
    #[serde(default)]
    days: Option<i64>,
}

/// The license as `GET /api/admin/licenses` lists it; with its devices and
/// subscription, as `GET /api/admin/licenses/{id}` shows it, where the use
/// case is about the devices.
fn render(state: &AppState, status: StatusCode, license: AdminLicense) -> Response {
    let now = state.billing.now();
    let listed =
        ListedLicense { record: license.record, device_count: i64::try_from(license.device_count).unwrap_or(i64::MAX) };
    match license.devices {
        Some(devices) => {
            let liveness = state.billing.liveness_of(&listed.record.license);
            let detail = LicenseDetail { listed, devices, subscription: license.subscription };
            json(status, &serde_json::json!({ "license": AdminLicenseDetailView::new(&detail, now, liveness) }))
        }
        None => json(status, &serde_json::json!({ "license": AdminLicenseView::new(&listed, now) })),
    }
}

/// `POST /api/admin/licenses`
pub async fn issue(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::LicensesWrite).await?;
    let body: IssueBody = body(state, request).await?;
    let request = NewLicense {
        user_id: body.user_id,
        plan: body.plan,
        max_devices: body.max_devices,
        expires_at: body.expires_at,
        entitlements: body.entitlements,
        metadata: body.metadata,
        kind: body.kind,
        updates_until: body.updates_until,
    };
    let issued = state.billing.issue_manual_license(&principal.actor(), request).await.map_err(admin_license_error)?;
    Ok(render(state, StatusCode::CREATED, issued))
}

/// `PATCH /api/admin/licenses/{id}`
pub async fn patch(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::LicensesWrite).await?;
    let id = path_id(id, "license")?;
    let body: PatchBody = body(state, request).await?;
    let request = PatchRequest {
        max_devices: body.max_devices,
        expires_at: body.expires_at.map(|e| e.map(|NullableTimestamp(t)| t)),
        entitlements: body.entitlements,
        metadata: body.metadata,
        updates_until: body.updates_until.map(|u| u.map(|NullableTimestamp(t)| t)),
    };
    let patched = state.billing.patch_license(&principal.actor(), id, request).await.map_err(admin_license_error)?;
    Ok(render(state, StatusCode::OK, patched))
}

/// Which action route was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Suspend,
    Reinstate,
    Revoke,
}

/// `POST /api/admin/licenses/{id}/suspend`, `…/reinstate`, `…/revoke`
pub async fn act(
    state: &AppState,
    request: Request<RequestBody>,
    id: &str,
    action: Action,
) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::LicensesWrite).await?;
    let id = path_id(id, "license")?;
    no_body(state, request).await?;
    let actor = principal.actor();
    let billing = &state.billing;
    let changed = match action {
        Action::Suspend => billing.suspend_license(&actor, id).await,
        Action::Reinstate => billing.reinstate_license(&actor, id).await,
        Action::Revoke => billing.revoke_license(&actor, id).await,
    }
    .map_err(admin_license_error)?;
    Ok(render(state, StatusCode::OK, changed))
}

/// `POST /api/admin/licenses/{id}/renew`
pub async fn renew(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::LicensesWrite).await?;
    let id = path_id(id, "license")?;
    let body: RenewBody = body(state, request).await?;
    let renewal = match (body.until, body.days) {
        (Some(until), None) => Renewal::Until(until),
        (None, Some(days)) => Renewal::Days(days),
        _ => return Err(admin_license_error(AdminLicenseError::Invalid("give exactly one of until and days".into()))),
    };
    let renewed = state.billing.renew_license(&principal.actor(), id, renewal).await.map_err(admin_license_error)?;
    Ok(render(state, StatusCode::OK, renewed))
}

/// `DELETE /api/admin/devices/{id}`
pub async fn delete_device(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::DevicesWrite).await?;
    let id = path_id(id, "device")?;
    no_body(state, request).await?;
    let device = state.billing.admin_deactivate_device(&principal.actor(), id).await.map_err(admin_license_error)?;
    // Deactivated: no liveness makes it alive, whatever its plan.
    let liveness = Liveness::floating(state.billing.config().licensing.heartbeat_window);
    Ok(ok(&serde_json::json!({ "device": DeviceView::new(&device, state.billing.now(), liveness) })))
}

/// `POST /api/admin/licenses/{id}/reset-devices`
pub async fn reset_devices(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let principal = authorize(state, &request, Scope::DevicesWrite).await?;
    let id = path_id(id, "license")?;
    no_body(state, request).await?;
    let reset = state.billing.reset_devices(&principal.actor(), id).await.map_err(admin_license_error)?;
    Ok(render(state, StatusCode::OK, reset))
}
