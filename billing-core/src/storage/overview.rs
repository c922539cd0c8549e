//! The counts of the vendor console's overview (issue 19). A trait of its
//! own, like [`super::portal_sessions`], with its statements per backend in
//! `postgres/overview.rs` and `sqlite/overview.rs`.

use super::{Store, StoreError};
use crate::domain::Timestamp;
use std::future::Future;
use time::Date;

/// The instants the counts are taken against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverviewWindow {
    /// Devices whose last heartbeat is at or after this count as seen.
    pub seen_since: Timestamp,
    /// Stripe deliveries received at or after this count as today's.
    pub today: Timestamp,
    /// Activations at or after this are counted per UTC day.
    pub activations_since: Timestamp,
}

/// The counts as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverviewCounts {
    /// Licenses stored as active.
    pub active_licenses: i64,
    /// Active devices heard from since `seen_since`.
    pub devices_seen: i64,
    /// Stripe deliveries received since `today`, duplicates included once.
    pub stripe_events_today: i64,
    /// Device activations per UTC day since `activations_since` (days with
    /// none are absent).
    pub activations_per_day: Vec<(Date, i64)>,
}

/// The overview's reads.
pub trait OverviewStore: Store {
    /// The counts of `window`.
    fn overview_counts(
        &self,
        window: OverviewWindow,
    ) -> impl Future<Output = Result<OverviewCounts, StoreError>> + Send;
}
