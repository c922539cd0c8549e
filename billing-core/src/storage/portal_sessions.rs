//! The customer portal's one-time codes (issue 19): handed out by the
//! vendor's backend, exchanged once by the portal page. A trait of its own,
//! like [`super::backfill_runs`], with its statements in files of their own
//! per backend (`postgres/portal_sessions.rs`, `sqlite/portal_sessions.rs`).

use super::{Store, StoreError};
use crate::domain::Timestamp;
use std::future::Future;

/// A new portal session, as stored (the code only as its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPortalSession<'a> {
    /// SHA-256 of the code.
    pub code_hash: &'a [u8],
    /// The user the portal opens for.
    pub user_id: &'a str,
    /// Where the portal links back to.
    pub return_url: Option<&'a str>,
    /// The audit trail's actor who created it (`admin:<token name>`).
    pub created_by: &'a str,
    /// When it was created.
    pub created_at: Timestamp,
    /// Until when its code may be exchanged.
    pub expires_at: Timestamp,
}

/// A portal session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalSessionRecord {
    /// The user the portal opens for.
    pub user_id: String,
    /// Where the portal links back to.
    pub return_url: Option<String>,
    /// Until when its code may be exchanged.
    pub expires_at: Timestamp,
    /// When its code was exchanged, if it was.
    pub used_at: Option<Timestamp>,
}

/// Portal sessions: stored once, claimed at most once.
pub trait PortalSessionStore: Store {
    /// Stores a new session.
    fn insert_portal_session(
        &self,
        session: &NewPortalSession<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Claims the session of this code hash in one statement: marks it used
    /// at `now` (from `from`) and returns it, when it is neither used nor
    /// expired at `now`; `None` (and nothing written) otherwise.
    fn claim_portal_session(
        &self,
        code_hash: &[u8],
        now: Timestamp,
        from: &str,
    ) -> impl Future<Output = Result<Option<PortalSessionRecord>, StoreError>> + Send;

    /// The session of this code hash, used or not.
    fn portal_session(
        &self,
        code_hash: &[u8],
    ) -> impl Future<Output = Result<Option<PortalSessionRecord>, StoreError>> + Send;
}
