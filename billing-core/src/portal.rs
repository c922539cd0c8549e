//! The customer portal's sessions (issue 19): the vendor's backend asks for
//! one (`POST /api/admin/portal-sessions`) and hands its URL to a customer;
//! the page exchanges the URL's one-time code for a short-lived credential
//! of that user alone. The credential itself is the server's business (a
//! dashboard token); this module keeps the codes.

use crate::domain::portal::{check_return_url, check_user_id, refusal, CodeRefusal, InvalidPortalSession, PortalCode};
use crate::domain::{Actor, Timestamp};
use crate::storage::portal_sessions::{NewPortalSession, PortalSessionStore};
use crate::storage::{Store, StoreError};
use crate::Billing;

/// A session just created: the code is shown once, in its URL.
#[derive(Debug)]
pub struct PortalSession {
    /// The one-time code.
    pub code: PortalCode,
    /// Until when it may be exchanged.
    pub expires_at: Timestamp,
}

/// What an exchanged code opens.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalGrant {
    /// The user the portal is for.
    pub user_id: String,
    /// Where the portal links back to.
    pub return_url: Option<String>,
}

/// Why a code could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum PortalCodeError {
    /// The code was never handed out (or is not a code at all).
    #[error("this portal link is not valid")]
    Unknown,
    /// The code was exchanged already.
    #[error("this portal link was already used; ask for a new one")]
    Used,
    /// The code waited too long.
    #[error("this portal link has expired; ask for a new one")]
    Expired,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PortalSessionError {
    /// The request's values are not acceptable.
    #[error(transparent)]
    Invalid(#[from] InvalidPortalSession),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<S: Store + PortalSessionStore> Billing<S> {
    /// Creates a session for `user_id`, by `actor` (recorded with it).
    pub async fn create_portal_session(
        &self,
        user_id: &str,
        return_url: Option<&str>,
        actor: &Actor,
    ) -> Result<PortalSession, PortalSessionError> {
        check_user_id(user_id)?;
        if let Some(url) = return_url {
            check_return_url(url)?;
        }
        let code = PortalCode::generate();
        let now = self.now();
        let expires_at = now + crate::domain::portal::CODE_TTL;
        let created_by = actor.label();
        self.store()
            .insert_portal_session(&NewPortalSession {
                code_hash: &code.hash(),
                user_id,
                return_url,
                created_by: &created_by,
                created_at: now,
                expires_at,
            })
            .await?;
        tracing::info!(actor = %created_by, "portal session created");
        Ok(PortalSession { code, expires_at })
    }

    /// Exchanges a code, once: the user it opens the portal for. `from` is
    /// the address that presented it (recorded with the session).
    pub async fn redeem_portal_code(&self, presented: &str, from: &str) -> Result<PortalGrant, PortalCodeError> {
        if !PortalCode::looks_like(presented) {
            return Err(PortalCodeError::Unknown);
        }
        let hash = PortalCode::presented(presented).hash();
        let now = self.now();
        if let Some(session) = self.store().claim_portal_session(&hash, now, from).await? {
            return Ok(PortalGrant { user_id: session.user_id, return_url: session.return_url });
        }
        let Some(session) = self.store().portal_session(&hash).await? else {
            return Err(PortalCodeError::Unknown);
        };
        Err(match refusal(session.used_at, session.expires_at, now) {
            CodeRefusal::Used => PortalCodeError::Used,
            CodeRefusal::Expired => PortalCodeError::Expired,
        })
    }
}
