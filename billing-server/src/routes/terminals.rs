//! The dashboard's terminals (devices) and the license event stream.

use super::dashboard::{caller, target};
use super::license::licensing_error;
use crate::auth::bearer;
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::{ok, parse_json, read_body, Response};
use crate::views::DeviceView;
use crate::AppState;
use billing_core::domain::{ActivationToken, Actor};
use billing_core::storage::Store;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

fn device_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("no such device"))
}

pub async fn list(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (_, user) = target(state, &request)?;
    let now = state.billing.now();
    let window = state.billing.config().licensing.heartbeat_window;
    let devices = state.billing.devices_of_user(&user).await?;
    Ok(ok(&json!({ "terminals": devices.iter().map(|d| DeviceView::new(d, now, window)).collect::<Vec<_>>() })))
}

pub async fn delete(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let caller = caller(state, &request)?;
    let id = device_id(id)?;
    let owner = (!caller.is_admin).then_some(caller.user_id.as_str());
    let actor = Actor::User { user_id: caller.user_id.clone() };
    let device = state.billing.deactivate_device_of_user(owner, id, &actor).await.map_err(licensing_error)?;
    let window = state.billing.config().licensing.heartbeat_window;
    Ok(ok(&json!({ "terminal": DeviceView::new(&device, state.billing.now(), window) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    name: String,
}

pub async fn rename(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let caller = caller(state, &request)?;
    let id = device_id(id)?;
    let (parts, body) = request.into_parts();
    let body: RenameBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let owner = (!caller.is_admin).then_some(caller.user_id.as_str());
    let actor = Actor::User { user_id: caller.user_id.clone() };
    let device = state.billing.rename_device_of_user(owner, id, &body.name, &actor).await.map_err(licensing_error)?;
    let window = state.billing.config().licensing.heartbeat_window;
    Ok(ok(&json!({ "terminal": DeviceView::new(&device, state.billing.now(), window) })))
}

/// `GET /api/events/{licenseKey}`: authorised by an activation token of a
/// device on that license, or the owner's (or an admin's) dashboard JWT.
pub async fn events(state: &AppState, request: Request<RequestBody>, license_key: &str) -> Result<Response, ApiError> {
    let refused = || ApiError::unauthorized("not allowed to listen to this license");
    let token = bearer(request.headers()).ok_or_else(refused)?.to_owned();
    let license = state.billing.license_by_key(license_key).await?.ok_or_else(refused)?;
    let allowed = if ActivationToken::looks_like(&token) {
        state.billing.device_token_grants(&token, license.id).await?
    } else {
        let jwt = state.jwt.as_ref().ok_or_else(refused)?;
        let caller = jwt.authenticate(request.headers())?;
        caller.is_admin || state.billing.store().license_belongs_to(license.id, &caller.user_id).await?
    };
    if !allowed {
        return Err(refused());
    }
    let last_event_id = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(crate::last_event_id::parse(value.as_bytes()).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "Last-Event-ID must be an event id")
        })?),
    };
    let stream = state.hub.subscribe(license.id, last_event_id).await?;
    Ok(crate::sse::response(stream, state.shutdown.subscribe()))
}
