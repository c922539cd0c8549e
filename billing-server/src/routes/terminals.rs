//! The dashboard's terminals (devices) and the license event stream.

use super::dashboard::{caller, target};
use super::license::{client_addr, licensing_error, too_many_requests};
use crate::auth::bearer;
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::{json, ok, parse_json, read_body, Response};
use crate::views::{DeviceView, LicenseInfo};
use crate::AppState;
use billing_core::billing::rfc3339;
use billing_core::domain::device::Liveness;
use billing_core::domain::offline_activation::OfflineActivationRequest;
use billing_core::domain::{ActivationToken, Actor, License, LicenseKey};
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
    let terminals = state.billing.terminals_of_user(&user).await?;
    let views: Vec<_> = terminals.iter().map(|(d, liveness)| DeviceView::new(d, now, *liveness)).collect();
    Ok(ok(&json!({ "terminals": views })))
}

pub async fn delete(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let caller = caller(state, &request)?;
    let id = device_id(id)?;
    let owner = (!caller.is_admin).then_some(caller.user_id.as_str());
    let actor = Actor::user(caller.user_id.clone()).from_addr(client_addr(&request));
    let device = state.billing.deactivate_device_of_user(owner, id, &actor).await.map_err(licensing_error)?;
    // Deactivated: no liveness makes it alive, whatever its plan.
    let liveness = Liveness::floating(state.billing.config().licensing.heartbeat_window);
    Ok(ok(&json!({ "terminal": DeviceView::new(&device, state.billing.now(), liveness) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameBody {
    name: String,
}

pub async fn rename(state: &AppState, request: Request<RequestBody>, id: &str) -> Result<Response, ApiError> {
    let caller = caller(state, &request)?;
    let id = device_id(id)?;
    let addr = client_addr(&request);
    let (parts, body) = request.into_parts();
    let body: RenameBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let owner = (!caller.is_admin).then_some(caller.user_id.as_str());
    let actor = Actor::user(caller.user_id.clone()).from_addr(addr);
    let (device, liveness) =
        state.billing.rename_device_of_user(owner, id, &body.name, &actor).await.map_err(licensing_error)?;
    Ok(ok(&json!({ "terminal": DeviceView::new(&device, state.billing.now(), liveness) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfflineActivationBody {
    request: String,
}

/// `POST /api/terminals/offline-activation`: the owner pastes an air-gapped
/// machine's request; the machine takes a slot and the answer carries the
/// certificate to carry back to it.
pub async fn activate_offline(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let (caller, user) = target(state, &request)?;
    let addr = client_addr(&request);
    let (parts, body) = request.into_parts();
    let body: OfflineActivationBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let offline_request = OfflineActivationRequest::parse(&body.request)
        .map_err(|refusal| ApiError::bad_request("INVALID_REQUEST", refusal.message()))?;
    let actor = Actor::user(caller.user_id).from_addr(addr);
    let activation =
        state.billing.activate_air_gapped(&user, &offline_request, &actor).await.map_err(licensing_error)?;
    let now = state.billing.now();
    let liveness = state.billing.liveness_of(&activation.license);
    Ok(json(
        StatusCode::CREATED,
        &json!({
            "device": DeviceView::new(&activation.device, now, liveness),
            "license": LicenseInfo::new(&activation.license, state.billing.entitlements(&activation.license), now),
            "response": activation.certificate,
            "expires_at": rfc3339(activation.certificate_expires_at),
        }),
    ))
}

/// `GET /api/events/{licenseKey}`: authorised by an activation token of a
/// live device on that license, or the owner's (or an admin's) dashboard JWT.
/// Every refusal is the same answer after the same lookups, whether or not
/// the key exists, and counts as a failed lookup of the client (and of the
/// key, when it is well-formed).
pub async fn events(state: &AppState, request: Request<RequestBody>, license_key: &str) -> Result<Response, ApiError> {
    let refused = || ApiError::unauthorized("not allowed to listen to this license");
    let addr = client_addr(&request);
    state.failures_by_addr.check(&addr).map_err(too_many_requests)?;
    let key_hash = LicenseKey::parse(license_key).map(|key| key.lookup_hash());
    if let Some(hash) = &key_hash {
        state.failures_by_key.check(hash).map_err(too_many_requests)?;
    }
    let Some(listener) = listener(state, &request, license_key).await? else {
        state.failures_by_addr.record_failure(&addr).map_err(too_many_requests)?;
        if let Some(hash) = &key_hash {
            state.failures_by_key.record_failure(hash).map_err(too_many_requests)?;
        }
        return Err(refused());
    };
    let last_event_id = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(crate::last_event_id::parse(value.as_bytes()).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "Last-Event-ID must be an event id")
        })?),
    };
    let stream = state.hub.subscribe(listener.license.id, last_event_id).await?;
    let stream = match listener.device {
        None => stream,
        Some((device_id, token)) => {
            // Looked at again now that the stream is subscribed: a
            // deactivation committed since the first look may have been
            // dispatched before the subscription, and the stream would then
            // never hear it.
            if !state.billing.device_of_token_is_alive(&token, &listener.license).await? {
                return Err(refused());
            }
            stream.for_device(device_id)
        }
    };
    Ok(crate::sse::response(stream, state.shutdown.subscribe()))
}

/// Who may listen: the license, and the device (with its token) when the
/// credential is an activation token. A device's stream ends with the event
/// saying the device left.
struct Listener {
    license: License,
    device: Option<(Uuid, String)>,
}

/// `None` for any refusal. The lookups depend only on the kind of
/// credential, not on whether the key exists.
async fn listener(
    state: &AppState,
    request: &Request<RequestBody>,
    license_key: &str,
) -> Result<Option<Listener>, ApiError> {
    let Some(token) = bearer(request.headers()) else { return Ok(None) };
    if ActivationToken::looks_like(token) {
        let granted = state.billing.event_stream_device(license_key, token).await?;
        return Ok(granted.map(|(license, device)| Listener { license, device: Some((device.id, token.to_owned())) }));
    }
    let Some(caller) = state.jwt.as_ref().and_then(|jwt| jwt.authenticate(request.headers()).ok()) else {
        return Ok(None);
    };
    let license = state.billing.license_by_key(license_key).await?;
    // Asked for an unknown key too (of no license), so that a user cannot
    // tell existing keys from the time a refusal takes.
    let owned = caller.is_admin
        || state
            .billing
            .store()
            .license_belongs_to(license.as_ref().map_or(Uuid::nil(), |l| l.id), &caller.user_id)
            .await?;
    Ok(license.filter(|_| owned).map(|license| Listener { license, device: None }))
}
