//! TEMPORARY stand-in for the lead's admin authentication (issue 14), with
//! the same interface (`authorize`, `AdminPrincipal::actor`), so that the
//! admin license routes build and are tested before main has it. Tokens
//! live in process memory, registered by the tests. Dropped in favour of
//! main's version on merge.

use crate::auth::bearer_token;
use crate::error::ApiError;
use crate::http::RequestBody;
use crate::AppState;
use billing_core::domain::admin::Scope;
use billing_core::domain::Actor;
use hyper::{Request, StatusCode};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Token → (name, scopes).
type Registry = HashMap<String, (String, Vec<Scope>)>;

static TOKENS: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Registers a token (stand-in for `admin-token create`).
pub fn register_stand_in_token(token: &str, name: &str, scopes: Vec<Scope>) {
    TOKENS.lock().unwrap_or_else(|e| e.into_inner()).insert(token.to_owned(), (name.to_owned(), scopes));
}

/// Forgets a token (stand-in for `admin-token revoke`).
pub fn revoke_stand_in_token(token: &str) {
    TOKENS.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
}

/// The admin a request authenticated as.
#[derive(Debug, Clone)]
pub struct AdminPrincipal {
    name: String,
}

impl AdminPrincipal {
    /// The audit actor, `admin:<name>`.
    pub fn actor(&self) -> Actor {
        Actor::Admin { token_name: self.name.clone() }
    }
}

/// Authenticates an admin token and checks it carries `scope`.
pub async fn authorize(
    _state: &AppState,
    request: &Request<RequestBody>,
    scope: Scope,
) -> Result<AdminPrincipal, ApiError> {
    let token = bearer_token(request.headers(), "missing admin token")?;
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let (name, scopes) = tokens.get(token).ok_or_else(|| ApiError::unauthorized("unknown admin token"))?;
    if !scopes.iter().any(|s| *s == scope || *s == Scope::All) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            format!("this token lacks the {} scope", scope.as_str()),
        ));
    }
    Ok(AdminPrincipal { name: name.clone() })
}
