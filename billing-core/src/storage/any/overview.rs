//! [`OverviewStore`] dispatch for [`AnyStore`].

use super::AnyStore;
use crate::storage::overview::{OverviewCounts, OverviewStore, OverviewWindow};
use crate::storage::StoreError;

impl OverviewStore for AnyStore {
    delegate! { &self;
        fn overview_counts(window: OverviewWindow) -> Result<OverviewCounts, StoreError>;
    }
}
