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
