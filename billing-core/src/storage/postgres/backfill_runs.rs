//! [`BackfillRunStore`] on PostgreSQL.

use super::{execute, query_opt, PgStore};
use crate::storage::backfill_runs::{BackfillCheckpoint, BackfillRun, BackfillRunStore};
use crate::storage::StoreError;
use uuid::Uuid;

impl BackfillRunStore for PgStore {
    async fn start_backfill_run(
        &self,
        id: Uuid,
        since: Option<i64>,
        checkpoint: &BackfillCheckpoint,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        // One statement, so a run is never superseded without its successor.
        execute(
            &conn,
            "WITH superseded AS (
                 UPDATE stripe_backfill_runs SET status = 'superseded', updated_at = now()
                  WHERE status = 'running'
             )
             INSERT INTO stripe_backfill_runs (id, status, since, resource, after_id, counts)
             VALUES ($1, 'running', $2, $3, $4, $5)",
            &[&id, &since, &checkpoint.resource, &checkpoint.after, &checkpoint.counts],
        )
        .await?;
        Ok(())
    }

    async fn running_backfill_run(&self) -> Result<Option<BackfillRun>, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT id, since, resource, after_id, counts, started_at, updated_at FROM stripe_backfill_runs
              WHERE status = 'running' ORDER BY started_at DESC, id LIMIT 1",
            &[],
        )
        .await?;
        Ok(row.map(|r| BackfillRun {
            id: r.get(0),
            since: r.get(1),
            checkpoint: BackfillCheckpoint { resource: r.get(2), after: r.get(3), counts: r.get(4) },
            started_at: r.get(5),
            updated_at: r.get(6),
        }))
    }

    async fn save_backfill_checkpoint(&self, id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let saved = execute(
            &conn,
            "UPDATE stripe_backfill_runs SET resource = $2, after_id = $3, counts = $4, updated_at = now()
              WHERE id = $1 AND status = 'running'",
            &[&id, &checkpoint.resource, &checkpoint.after, &checkpoint.counts],
        )
        .await?;
        Ok(saved == 1)
    }

    async fn finish_backfill_run(&self, id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let saved = execute(
            &conn,
            "UPDATE stripe_backfill_runs
                SET status = 'finished', resource = $2, after_id = $3, counts = $4, updated_at = now(),
                    finished_at = now()
              WHERE id = $1 AND status = 'running'",
            &[&id, &checkpoint.resource, &checkpoint.after, &checkpoint.counts],
        )
        .await?;
        Ok(saved == 1)
    }
}
