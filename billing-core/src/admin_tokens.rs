//! Admin API tokens: created and revoked by the operator (the CLI), checked
//! on every admin request. Only a token's SHA-256 is stored.

use crate::domain::admin::{check_token_name, AdminToken, InvalidTokenName, Scopes};
use crate::storage::{AdminTokenRecord, Store, StoreError};
use crate::Billing;
use uuid::Uuid;

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    /// The name is not a valid token name.
    #[error(transparent)]
    InvalidName(#[from] InvalidTokenName),
    /// A live token already has this name (revoke it first).
    #[error("a live admin token is already named {0:?}")]
    NameTaken(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<S: Store> Billing<S> {
    /// Creates a token: the record, and the token itself, which is never
    /// stored and cannot be shown again.
    pub async fn create_admin_token(
        &self,
        name: &str,
        scopes: Scopes,
    ) -> Result<(AdminTokenRecord, AdminToken), AdminTokenError> {
        check_token_name(name)?;
        let token = AdminToken::generate();
        let id = Uuid::new_v4();
        if !self.store().insert_admin_token(id, name, &token.hash(), &scopes).await? {
            return Err(AdminTokenError::NameTaken(name.to_owned()));
        }
        let record = self
            .store()
            .admin_token_by_hash(&token.hash())
            .await?
            .ok_or_else(|| StoreError::Corrupt("a token just stored cannot be read back".into()))?;
        tracing::info!(token_name = name, scopes = ?scopes.names(), "admin token created");
        Ok((record, token))
    }

    /// Every token, revoked ones included, oldest first.
    pub async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        self.store().admin_tokens().await
    }

    /// Revokes the live token named `name`; `false` when there is none.
    pub async fn revoke_admin_token(&self, name: &str) -> Result<bool, StoreError> {
        let revoked = self.store().revoke_admin_token(name, self.now()).await?;
        if revoked {
            tracing::info!(token_name = name, "admin token revoked");
        }
        Ok(revoked)
    }

    /// The live token a request presents, if any. Strings that cannot be one
    /// of our tokens (a dashboard JWT, say) cost no lookup.
    pub async fn authenticate_admin(&self, presented: &str) -> Result<Option<AdminTokenRecord>, StoreError> {
        if !AdminToken::looks_like(presented) {
            return Ok(None);
        }
        self.store().admin_token_by_hash(&AdminToken::presented(presented).hash()).await
    }

    /// Records that the token was just used for a request it may make (at
    /// most once a minute; a refused request records nothing).
    /// Bookkeeping, not authority: a failure is logged, not raised.
    pub async fn record_admin_token_use(&self, token: &AdminTokenRecord) {
        if let Err(e) = self.store().touch_admin_token(token.id, self.now()).await {
            tracing::warn!(token_name = %token.name, error = %crate::billing::error_chain(&e), "could not record admin token use");
        }
    }
}
