//! Licenses whose past-due grace period ran out: suspended by the server
//! itself, so their apps hear of it without waiting for Stripe.

use crate::billing::{rfc3339, Billing};
use crate::domain::license;
use crate::domain::subscription::SubscriptionChange;
use crate::domain::{Actor, License};
use crate::messages::license_updated;
use crate::storage::{Store, StoreError, StoreTx};
use serde_json::json;

impl<S: Store> Billing<S> {
    /// Suspends every license whose past-due grace period has run out (an
    /// audit row and a `license.updated` event each), so that the apps
    /// holding it hear of it without waiting for Stripe's next event.
    /// Returns how many. Runs periodically; safe on several instances.
    pub async fn suspend_lapsed_licenses(&self) -> Result<usize, StoreError> {
        const BATCH: usize = 500;
        let now = self.now();
        let mut total = 0;
        loop {
            let mut tx = self.store().begin().await?;
            let due = tx.lock_licenses_past_grace(now, BATCH as i64).await?;
            let last_batch = due.len() < BATCH;
            for held in due {
                let (Some(terms), Some(grace_ended_at)) = (license::lapsed(&held.terms, now), held.terms.grace_ends_at)
                else {
                    continue;
                };
                tx.update_license_terms(held.id, &terms).await?;
                let change = SubscriptionChange::GraceExpired { grace_ended_at };
                match held.subscription_id {
                    Some(subscription_id) => tx.record_change(subscription_id, &Actor::System, &change).await?,
                    None => {
                        let detail = json!({ "grace_ended_at": rfc3339(grace_ended_at) });
                        tx.record_license_change(held.id, "grace_expired", &Actor::System, detail).await?
                    }
                }
                let suspended = License { terms, ..held };
                tx.enqueue(&license_updated(&suspended)).await?;
                tracing::info!(license_id = %suspended.id, "license suspended: past-due grace period ended");
                total += 1;
            }
            tx.commit().await?;
            if last_batch {
                return Ok(total);
            }
        }
    }
}
