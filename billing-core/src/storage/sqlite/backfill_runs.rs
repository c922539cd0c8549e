//! [`BackfillRunStore`] on SQLite: the statements of
//! `postgres/backfill_runs.rs` (timestamps as Unix microseconds, the counts
//! as JSON text).

use super::{execute, get, json, json_text, query_opt, time, uuid, SqliteStore};
use crate::storage::backfill_runs::{BackfillCheckpoint, BackfillRun, BackfillRunStore};
use crate::storage::StoreError;
use deadpool_sqlite::rusqlite::params;
use uuid::Uuid;

impl BackfillRunStore for SqliteStore {
    async fn start_backfill_run(
        &self,
        id: Uuid,
        since: Option<i64>,
        checkpoint: &BackfillCheckpoint,
    ) -> Result<(), StoreError> {
        let (id, resource, after, counts) =
            (id.to_string(), checkpoint.resource.clone(), checkpoint.after.clone(), json_text(&checkpoint.counts));
        // One transaction, so a run is never superseded without its successor.
        self.unit_of_work(move |conn, now| {
            execute(
                conn,
                "UPDATE stripe_backfill_runs SET status = 'superseded', updated_at = ?1 WHERE status = 'running'",
                params![now],
            )?;
            execute(
                conn,
                "INSERT INTO stripe_backfill_runs (id, status, since, resource, after_id, counts, started_at,
                        updated_at)
                 VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6, ?6)",
                params![id, since, resource, after, counts, now],
            )?;
            Ok(((), false))
        })
        .await
    }

    async fn running_backfill_run(&self) -> Result<Option<BackfillRun>, StoreError> {
        self.read(|conn| {
            query_opt(
                conn,
                "SELECT id, since, resource, after_id, counts, started_at, updated_at FROM stripe_backfill_runs
                  WHERE status = 'running' ORDER BY started_at DESC, id LIMIT 1",
                [],
                |r| {
                    Ok(BackfillRun {
                        id: uuid(r, 0)?,
                        since: get(r, 1)?,
                        checkpoint: BackfillCheckpoint { resource: get(r, 2)?, after: get(r, 3)?, counts: json(r, 4)? },
                        started_at: time(r, 5)?,
                        updated_at: time(r, 6)?,
                    })
                },
            )
        })
        .await
    }

    async fn save_backfill_checkpoint(&self, id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<bool, StoreError> {
        let (id, resource, after, counts) =
            (id.to_string(), checkpoint.resource.clone(), checkpoint.after.clone(), json_text(&checkpoint.counts));
        let saved = self
            .write(move |conn, now| {
                execute(
                    conn,
                    "UPDATE stripe_backfill_runs SET resource = ?2, after_id = ?3, counts = ?4, updated_at = ?5
                      WHERE id = ?1 AND status = 'running'",
                    params![id, resource, after, counts, now],
                )
            })
            .await?;
        Ok(saved == 1)
    }

    async fn finish_backfill_run(&self, id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<bool, StoreError> {
        let (id, resource, after, counts) =
            (id.to_string(), checkpoint.resource.clone(), checkpoint.after.clone(), json_text(&checkpoint.counts));
        let saved = self
            .write(move |conn, now| {
                execute(
                    conn,
                    "UPDATE stripe_backfill_runs
                        SET status = 'finished', resource = ?2, after_id = ?3, counts = ?4, updated_at = ?5,
                            finished_at = ?5
                      WHERE id = ?1 AND status = 'running'",
                    params![id, resource, after, counts, now],
                )
            })
            .await?;
        Ok(saved == 1)
    }
}
