//! Where a Stripe backfill run stands (`billing-server stripe sync`), saved
//! after each page it applied, so that an interrupted run resumes where it
//! stopped. A trait of its own, like [`super::admin_reads`], so that its
//! statements live in files of their own per backend
//! (`postgres/backfill_runs.rs`, `sqlite/backfill_runs.rs`).

use super::{Store, StoreError};
use crate::domain::Timestamp;
use serde_json::Value;
use std::future::Future;
use uuid::Uuid;

/// A run's position: saved after each page it applied.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillCheckpoint {
    /// The list being paged (`customers`, `subscriptions`, …).
    pub resource: String,
    /// The last object of its last applied page: the next page starts after
    /// it (none: the list starts from its beginning).
    pub after: Option<String>,
    /// The run's counts so far, as the backfill keeps them.
    pub counts: Value,
}

/// A backfill run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillRun {
    /// Our id.
    pub id: Uuid,
    /// The `created[gte]` its lists ask for (Unix seconds), if any.
    pub since: Option<i64>,
    /// Where it stands.
    pub checkpoint: BackfillCheckpoint,
    /// When it started.
    pub started_at: Timestamp,
    /// When its last checkpoint was saved.
    pub updated_at: Timestamp,
}

/// Backfill runs: at most one is running; starting one supersedes it.
pub trait BackfillRunStore: Store {
    /// Starts a run at `checkpoint`. A run still running is superseded: its
    /// checkpoints are refused from then on.
    fn start_backfill_run(
        &self,
        id: Uuid,
        since: Option<i64>,
        checkpoint: &BackfillCheckpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The run still running (neither finished nor superseded), if any.
    fn running_backfill_run(&self) -> impl Future<Output = Result<Option<BackfillRun>, StoreError>> + Send;

    /// Saves where a running run stands; false (nothing saved) when it is
    /// not running any more.
    fn save_backfill_checkpoint(
        &self,
        id: Uuid,
        checkpoint: &BackfillCheckpoint,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks a running run finished, with its last checkpoint; false
    /// (nothing saved) when it is not running any more.
    fn finish_backfill_run(
        &self,
        id: Uuid,
        checkpoint: &BackfillCheckpoint,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
