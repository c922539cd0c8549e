//! Desktop-app routes: activate, trial, validate, heartbeat, deactivate,
//! public key.

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::{json, ok, parse_json, read_body, Response};
use crate::views::{DeviceView, LicenseInfo};
use crate::{AppState, ClientAddr};
use billing_core::domain::device::Liveness;
use billing_core::domain::{LicenseKey, Timestamp};
use billing_core::licensing::{Activation, ActivationRequest, LicensingError, TrialRequest};
use hyper::{header, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    license_key: String,
    fingerprint: String,
    name: Option<String>,
    platform: Option<String>,
    app_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrialBody {
    fingerprint: String,
    plan: Option<String>,
    name: Option<String>,
    platform: Option<String>,
    app_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateBody {
    license_key: Option<String>,
    fingerprint: Option<String>,
    app_released_at: Option<String>,
}

pub(crate) fn client_addr(request: &Request<RequestBody>) -> IpAddr {
    request.extensions().get::<ClientAddr>().map_or(IpAddr::from([0, 0, 0, 0]), |a| a.0)
}

pub(crate) fn too_many_requests(retry_after: Duration) -> ApiError {
    rate_limited("too many failed attempts; retry later", retry_after)
}

fn too_many_trials(retry_after: Duration) -> ApiError {
    rate_limited("too many trial requests from this address; retry later", retry_after)
}

fn rate_limited(message: &'static str, retry_after: Duration) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
    e.retry_after = Some(retry_after.as_secs().max(1));
    e
}

/// Maps licensing refusals to HTTP.
pub fn licensing_error(e: LicensingError) -> ApiError {
    use LicensingError::*;
    match e {
        LicenseNotFound => ApiError::new(StatusCode::NOT_FOUND, "LICENSE_NOT_FOUND", "no license has this key"),
        LicenseNotActive(status) => {
            let code = match status {
                billing_core::domain::LicenseStatus::Revoked => "REVOKED",
                billing_core::domain::LicenseStatus::Expired => "EXPIRED",
                _ => "SUSPENDED",
            };
            ApiError::new(StatusCode::FORBIDDEN, code, format!("the license is {}", status.as_str()))
        }
        TooManyDevices { max_devices } => ApiError::new(
            StatusCode::CONFLICT,
            "TOO_MANY_DEVICES",
            format!("all {max_devices} device slots of this license are in use; deactivate a device first"),
        ),
        InvalidToken => ApiError::unauthorized("activation token is not valid; activate again"),
        DeviceDeactivated => {
            ApiError::new(StatusCode::GONE, "DEVICE_DEACTIVATED", "this device was deactivated; activate again")
        }
        HeartbeatDead => ApiError::new(
            StatusCode::GONE,
            "HEARTBEAT_DEAD",
            "this device missed its heartbeat window and lost its slot; activate again",
        ),
        DeviceNotFound => ApiError::not_found("no such device"),
        NoTrial => ApiError::new(StatusCode::NOT_FOUND, "NO_TRIAL", "no trial is offered for this plan"),
        TrialUsed => ApiError::new(
            StatusCode::CONFLICT,
            "TRIAL_USED",
            "this machine has already had its trial of this plan; buy a license to go on",
        ),
        Invalid(message) => ApiError::bad_request("INVALID_REQUEST", message),
        Store(e) => e.into(),
    }
}

pub async fn activate(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let addr = client_addr(&request);
    state.failures_by_addr.check(&addr).map_err(too_many_requests)?;
    let (parts, body) = request.into_parts();
    let body: ActivateBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let key_hash = LicenseKey::parse(&body.license_key).map(|k| k.lookup_hash());
    if let Some(hash) = &key_hash {
        state.failures_by_key.check(hash).map_err(too_many_requests)?;
    }
    let result = state
        .billing
        .activate(&ActivationRequest {
            license_key: &body.license_key,
            fingerprint: &body.fingerprint,
            name: body.name.as_deref(),
            platform: body.platform.as_deref(),
            app_version: body.app_version.as_deref(),
            client_addr: Some(addr),
        })
        .await;
    let activation = match result {
        Ok(a) => a,
        Err(e @ (LicensingError::LicenseNotFound | LicensingError::TooManyDevices { .. })) => {
            state.failures_by_addr.record_failure(&addr).map_err(too_many_requests)?;
            if let Some(hash) = &key_hash {
                state.failures_by_key.record_failure(hash).map_err(too_many_requests)?;
            }
            return Err(licensing_error(e));
        }
        Err(e) => return Err(licensing_error(e)),
    };
    let status = if activation.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, &activation_answer(state, &activation, false)))
}

/// What an activation (or a trial, which also hands out its key) answers.
fn activation_answer(state: &AppState, activation: &Activation, with_key: bool) -> serde_json::Value {
    let now = state.billing.now();
    let liveness = state.billing.liveness_of(&activation.license);
    let mut answer = json!({
        "activation_token": activation.token.expose(),
        "device": DeviceView::new(&activation.device, now, liveness),
        "license": LicenseInfo::new(&activation.license, state.billing.entitlements(&activation.license), now),
        "certificate": activation.certificate,
        "heartbeat_window_secs": liveness.heartbeat_window.whole_seconds(),
    });
    if with_key {
        answer["license_key"] = json!(activation.license.key.expose());
    }
    answer
}

/// `POST /api/license/trial`: a card-less trial for this machine. Every
/// request counts toward its address's trial limit, granted or not.
pub async fn trial(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let addr = client_addr(&request);
    state.trials_by_addr.attempt(&addr).map_err(too_many_trials)?;
    let (parts, body) = request.into_parts();
    let body: TrialBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let trial = state
        .billing
        .start_trial(&TrialRequest {
            plan: body.plan.as_deref(),
            fingerprint: &body.fingerprint,
            name: body.name.as_deref(),
            platform: body.platform.as_deref(),
            app_version: body.app_version.as_deref(),
            client_addr: Some(addr),
        })
        .await
        .map_err(licensing_error)?;
    Ok(json(StatusCode::CREATED, &activation_answer(state, &trial, true)))
}

pub async fn validate(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let addr = client_addr(&request);
    state.failures_by_addr.check(&addr).map_err(too_many_requests)?;
    let (parts, body) = request.into_parts();
    let body: ValidateBody = parse_json(&read_body(&parts.headers, body, state.max_body_bytes).await?)?;
    let key = body
        .license_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("INVALID_REQUEST", "license_key is required"))?;
    let app_released_at = body
        .app_released_at
        .map(|text| {
            Timestamp::parse(&text, &time::format_description::well_known::Rfc3339)
                .map(|t| t.to_offset(time::UtcOffset::UTC))
                .map_err(|_| {
                    ApiError::bad_request(
                        "INVALID_REQUEST",
                        "app_released_at must be an RFC 3339 timestamp, e.g. 2026-03-01T00:00:00Z",
                    )
                })
        })
        .transpose()?;
    let validation = state
        .billing
        .validate_with_release(&key, body.fingerprint.as_deref(), app_released_at)
        .await
        .map_err(licensing_error)?;
    if validation.license.is_none() {
        state.failures_by_addr.record_failure(&addr).map_err(too_many_requests)?;
    }
    let now = state.billing.now();
    let license = validation.license.as_ref().map(|l| LicenseInfo::new(l, state.billing.entitlements(l), now));
    Ok(ok(&json!({
        "valid": validation.code == billing_core::domain::ValidationCode::Valid,
        "code": validation.code.as_str(),
        "license": license,
    })))
}

fn activation_token(request: &Request<RequestBody>) -> Result<String, ApiError> {
    bearer_token(request.headers(), "missing activation token").map(str::to_owned)
}

pub async fn heartbeat(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let token = activation_token(&request)?;
    let beat = state.billing.heartbeat(&token).await.map_err(licensing_error)?;
    let now = state.billing.now();
    let liveness = state.billing.liveness_of(&beat.license);
    Ok(ok(&json!({
        "device": DeviceView::new(&beat.device, now, liveness),
        "license": LicenseInfo::new(&beat.license, state.billing.entitlements(&beat.license), now),
        "certificate": beat.certificate,
        "heartbeat_window_secs": liveness.heartbeat_window.whole_seconds(),
    })))
}

pub async fn deactivate(state: &AppState, request: Request<RequestBody>) -> Result<Response, ApiError> {
    let token = activation_token(&request)?;
    let device = state.billing.deactivate(&token, Some(client_addr(&request))).await.map_err(licensing_error)?;
    // Deactivated: no liveness makes it alive, whatever its plan.
    let liveness = Liveness::floating(state.billing.config().licensing.heartbeat_window);
    Ok(ok(&json!({ "device": DeviceView::new(&device, state.billing.now(), liveness) })))
}

pub async fn public_key(state: &AppState) -> Result<Response, ApiError> {
    let mut response = ok(&json!({ "jwk": state.billing.public_jwk() }));
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("public, max-age=300"));
    Ok(response)
}
