//! Licenses whose past-due grace period ran out: suspended by the server
//! itself, so their apps hear of it without waiting for Stripe.

use crate::billing::{rfc3339, Billing};
use crate::domain::license;
use crate::domain::subscription::SubscriptionChange;
use crate::domain::{Actor, License, Timestamp};
use crate::messages::license_updated;
use crate::storage::license_work::{Changeset, LicenseAudit, LicenseBundle, LicenseKeys, SubscriptionAudit};
use crate::storage::{Store, StoreError};
use serde_json::json;
use uuid::Uuid;

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
            let keys = LicenseKeys::LicensesPastGrace { now, limit: BATCH as i64 };
            let (suspended, loaded) = self
                .store()
                .license_work(keys, move |bundle| {
                    Changeset::from_decision(|changes| decide_grace_expiry(bundle, now, changes))
                })
                .await?;
            for license_id in &suspended {
                tracing::info!(license_id = %license_id, "license suspended: past-due grace period ended");
            }
            total += suspended.len();
            if loaded < BATCH {
                return Ok(total);
            }
        }
    }
}

/// Suspends each loaded license whose grace ended by `now`: its terms, an
/// audit row (its subscription's, or its own for a manual license) and a
/// `license.updated` event. Returns the licenses suspended and how many
/// were loaded.
fn decide_grace_expiry(bundle: LicenseBundle, now: Timestamp, changes: &mut Changeset) -> (Vec<Uuid>, usize) {
    let loaded = bundle.licenses.len();
    let mut suspended = Vec::new();
    for held in bundle.licenses {
        let held = held.record.license;
        let (Some(terms), Some(grace_ended_at)) = (license::lapsed(&held.terms, now), held.terms.grace_ends_at) else {
            continue;
        };
        changes.set_license_terms(held.id, terms.clone());
        let change = SubscriptionChange::GraceExpired { grace_ended_at };
        match held.subscription_id {
            Some(subscription_id) => changes.subscription_audit.push(SubscriptionAudit {
                subscription_id,
                change,
                actor: Actor::System.label(),
                stripe_event_id: None,
            }),
            None => changes.license_audit.push(LicenseAudit {
                license_id: held.id,
                kind: "grace_expired",
                actor: Actor::System.label(),
                detail: json!({ "grace_ended_at": rfc3339(grace_ended_at) }),
            }),
        }
        let lapsed = License { terms, ..held };
        changes.outbox.push(license_updated(&lapsed));
        suspended.push(lapsed.id);
    }
    (suspended, loaded)
}
