//! Operations routes.

use crate::error::ApiError;
use crate::http::{ok, Response};
use crate::AppState;
use billing_core::storage::Store;
use serde_json::json;

/// 200 when the database answers (migrations ran before the server started).
pub async fn healthz(state: &AppState) -> Result<Response, ApiError> {
    state.billing.store().ping().await?;
    Ok(ok(&json!({ "status": "ok" })))
}

/// Ready to take traffic: the database answers and holds exactly the
/// migrations this binary embeds (not fewer, and not a newer release's), the
/// signing key is loaded and we are not shutting down.
pub async fn readyz(state: &AppState) -> Result<Response, ApiError> {
    let database = state.billing.store().ping().await.is_ok();
    let migrations = match state.billing.store().migration_check().await {
        Ok(check) if check.matches() => true,
        Ok(check) => {
            tracing::warn!(missing = ?check.missing, unknown = ?check.unknown, changed = ?check.changed,
                "applied migrations differ from this build's");
            false
        }
        Err(e) => {
            tracing::warn!(error = %billing_core::billing::error_chain(&e), "applied migrations could not be read");
            false
        }
    };
    let shutting_down = *state.shutdown.borrow();
    let signing_key = !state.billing.public_jwk()["x"].is_null();
    let checks = json!({
        "migrations": migrations,
        "database": database,
        "signing_key": signing_key,
        "accepting": !shutting_down,
    });
    let ready = migrations && database && signing_key && !shutting_down;
    let status = if ready { hyper::StatusCode::OK } else { hyper::StatusCode::SERVICE_UNAVAILABLE };
    Ok(crate::http::json(status, &json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks })))
}

/// Prometheus text exposition.
pub async fn metrics(state: &AppState) -> Result<Response, ApiError> {
    let m = &state.metrics;
    m.sse_streams.set(state.hub.open_streams() as i64);
    m.sse_slow_disconnects.set(state.hub.dropped_slow() as i64);
    if let Ok(latest) = state.billing.store().latest_outbox_id().await {
        m.outbox_lag.set((latest - state.hub.cursor()).max(0));
    }
    if let Some((open, idle, max)) = state.billing.store().pool_status() {
        m.db_pool.with_label_values(&["open"]).set(open as i64);
        m.db_pool.with_label_values(&["idle"]).set(idle as i64);
        m.db_pool.with_label_values(&["max"]).set(max as i64);
    }
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::Full::new(bytes::Bytes::from(m.render())));
    Ok(hyper::Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(body)
        .expect("static headers are valid"))
}
