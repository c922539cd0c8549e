//! [`PortalSessionStore`] on SQLite: the statements of
//! `postgres/portal_sessions.rs` (timestamps as Unix microseconds).

use super::{execute, get, micros, opt_time, query_opt, time, SqliteStore};
use crate::domain::Timestamp;
use crate::storage::portal_sessions::{NewPortalSession, PortalSessionRecord, PortalSessionStore};
use crate::storage::StoreError;
use deadpool_sqlite::rusqlite::{params, Row};

impl PortalSessionStore for SqliteStore {
    async fn insert_portal_session(&self, session: &NewPortalSession<'_>) -> Result<(), StoreError> {
        let (code_hash, user_id, return_url, created_by) = (
            session.code_hash.to_vec(),
            session.user_id.to_owned(),
            session.return_url.map(str::to_owned),
            session.created_by.to_owned(),
        );
        let (created_at, expires_at) = (micros(session.created_at)?, micros(session.expires_at)?);
        self.write(move |conn, _| {
            execute(
                conn,
                "INSERT INTO portal_sessions (code_hash, user_id, return_url, created_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![code_hash, user_id, return_url, created_by, created_at, expires_at],
            )
        })
        .await?;
        Ok(())
    }

    async fn claim_portal_session(
        &self,
        code_hash: &[u8],
        now: Timestamp,
        from: &str,
    ) -> Result<Option<PortalSessionRecord>, StoreError> {
        let (code_hash, now, from) = (code_hash.to_vec(), micros(now)?, from.to_owned());
        self.write(move |conn, _| {
            query_opt(
                conn,
                "UPDATE portal_sessions SET used_at = ?2, used_from = ?3
                  WHERE code_hash = ?1 AND used_at IS NULL AND expires_at > ?2
                  RETURNING user_id, return_url, expires_at, used_at",
                params![code_hash, now, from],
                record_from_row,
            )
        })
        .await
    }

    async fn portal_session(&self, code_hash: &[u8]) -> Result<Option<PortalSessionRecord>, StoreError> {
        let code_hash = code_hash.to_vec();
        self.read(move |conn| {
            query_opt(
                conn,
                "SELECT user_id, return_url, expires_at, used_at FROM portal_sessions WHERE code_hash = ?1",
                [code_hash],
                record_from_row,
            )
        })
        .await
    }
}

fn record_from_row(row: &Row<'_>) -> Result<PortalSessionRecord, StoreError> {
    Ok(PortalSessionRecord {
        user_id: get(row, 0)?,
        return_url: get(row, 1)?,
        expires_at: time(row, 2)?,
        used_at: opt_time(row, 3)?,
    })
}
