//! The vendor console's overview (issue 19): active licenses, devices seen
//! in the last hour, Stripe deliveries received today, and activations per
//! day over the last 30 days.

use crate::domain::overview::{daily_series, DailyCount};
use crate::storage::overview::{OverviewStore, OverviewWindow};
use crate::storage::{Store, StoreError};
use crate::Billing;

/// How many days the activations chart covers, today included.
pub const ACTIVATION_DAYS: u16 = 30;

/// The overview at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overview {
    /// Licenses stored as active.
    pub active_licenses: i64,
    /// Active devices heard from in the last hour.
    pub devices_seen_last_hour: i64,
    /// Stripe deliveries received since midnight UTC.
    pub stripe_events_today: i64,
    /// Activations per UTC day, the last [`ACTIVATION_DAYS`] days, oldest first.
    pub activations_per_day: Vec<DailyCount>,
}

impl<S: Store + OverviewStore> Billing<S> {
    /// The overview now.
    pub async fn overview(&self) -> Result<Overview, StoreError> {
        let now = self.now();
        let today = now.date().midnight().assume_utc();
        let first_day = today - time::Duration::days(i64::from(ACTIVATION_DAYS) - 1);
        let counts = self
            .store()
            .overview_counts(OverviewWindow {
                seen_since: now - time::Duration::hours(1),
                today,
                activations_since: first_day,
            })
            .await?;
        Ok(Overview {
            active_licenses: counts.active_licenses,
            devices_seen_last_hour: counts.devices_seen,
            stripe_events_today: counts.stripe_events_today,
            activations_per_day: daily_series(&counts.activations_per_day, now.date(), ACTIVATION_DAYS),
        })
    }
}
