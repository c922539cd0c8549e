//! [`PortalSessionStore`] dispatch for [`AnyStore`].

use super::AnyStore;
use crate::domain::Timestamp;
use crate::storage::portal_sessions::{NewPortalSession, PortalSessionRecord, PortalSessionStore};
use crate::storage::StoreError;

impl PortalSessionStore for AnyStore {
    delegate! { &self;
        fn insert_portal_session(session: &NewPortalSession<'_>) -> Result<(), StoreError>;
        fn claim_portal_session(code_hash: &[u8], now: Timestamp, from: &str)
            -> Result<Option<PortalSessionRecord>, StoreError>;
        fn portal_session(code_hash: &[u8]) -> Result<Option<PortalSessionRecord>, StoreError>;
    }
}
