//! [`BackfillRunStore`] dispatch for [`AnyStore`].

use super::AnyStore;
use crate::storage::backfill_runs::{BackfillCheckpoint, BackfillRun, BackfillRunStore};
use crate::storage::StoreError;
use uuid::Uuid;

impl BackfillRunStore for AnyStore {
    delegate! { &self;
        fn start_backfill_run(id: Uuid, since: Option<i64>, checkpoint: &BackfillCheckpoint) -> Result<(), StoreError>;
        fn running_backfill_run() -> Result<Option<BackfillRun>, StoreError>;
        fn save_backfill_checkpoint(id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<bool, StoreError>;
        fn finish_backfill_run(id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<bool, StoreError>;
    }
}
