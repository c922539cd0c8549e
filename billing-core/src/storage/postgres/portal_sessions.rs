//! [`PortalSessionStore`] on PostgreSQL.

use super::{execute, query_opt, PgStore};
use crate::domain::Timestamp;
use crate::storage::portal_sessions::{NewPortalSession, PortalSessionRecord, PortalSessionStore};
use crate::storage::StoreError;
use tokio_postgres::Row;

impl PortalSessionStore for PgStore {
    async fn insert_portal_session(&self, session: &NewPortalSession<'_>) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        execute(
            &conn,
            "INSERT INTO portal_sessions (code_hash, user_id, return_url, created_by, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &session.code_hash,
                &session.user_id,
                &session.return_url,
                &session.created_by,
                &session.created_at,
                &session.expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn claim_portal_session(
        &self,
        code_hash: &[u8],
        now: Timestamp,
        from: &str,
    ) -> Result<Option<PortalSessionRecord>, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "UPDATE portal_sessions SET used_at = $2, used_from = $3
              WHERE code_hash = $1 AND used_at IS NULL AND expires_at > $2
              RETURNING user_id, return_url, expires_at, used_at",
            &[&code_hash, &now, &from],
        )
        .await?;
        Ok(row.as_ref().map(record_from_row))
    }

    async fn portal_session(&self, code_hash: &[u8]) -> Result<Option<PortalSessionRecord>, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT user_id, return_url, expires_at, used_at FROM portal_sessions WHERE code_hash = $1",
            &[&code_hash],
        )
        .await?;
        Ok(row.as_ref().map(record_from_row))
    }
}

fn record_from_row(row: &Row) -> PortalSessionRecord {
    PortalSessionRecord { user_id: row.get(0), return_url: row.get(1), expires_at: row.get(2), used_at: row.get(3) }
}
