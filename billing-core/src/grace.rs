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
                client_addr: None,
            }),
            None => changes.license_audit.push(LicenseAudit {
                license_id: held.id,
                kind: "grace_expired",
                actor: Actor::System.label(),
                detail: json!({ "grace_ended_at": rfc3339(grace_ended_at) }),
                client_addr: None,
            }),
        }
        let lapsed = License { terms, ..held };
        changes.outbox.push(license_updated(&lapsed));
        suspended.push(lapsed.id);
    }
    (suspended, loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LicenseSource, LicenseStatus, Topic};
    use crate::storage::license_work::fixtures::{held, license, NOW, STAMPED_AT};

    fn in_grace_until(grace_ends_at: Timestamp, subscription_id: Option<Uuid>) -> License {
        let mut l = license(3);
        l.terms.grace_ends_at = Some(grace_ends_at);
        if subscription_id.is_some() {
            l.subscription_id = subscription_id;
            l.source = LicenseSource::Stripe;
            l.user_id = None;
        }
        l
    }

    #[test]
    fn a_lapsed_license_is_suspended_audited_on_its_subscription_and_announced() {
        let subscription_id = Uuid::new_v4();
        let ended = NOW - time::Duration::hours(1);
        let lapsed = in_grace_until(ended, Some(subscription_id));
        let bundle = LicenseBundle {
            stamped_at: STAMPED_AT,
            licenses: vec![held(lapsed.clone(), Vec::new())],
            devices: Vec::new(),
            used_trial: None,
        };
        let (changes, (suspended, loaded)) = Changeset::from_decision(|c| decide_grace_expiry(bundle, NOW, c));
        assert_eq!((suspended, loaded), (vec![lapsed.id], 1));
        let terms = license::LicenseTerms { status: LicenseStatus::Suspended, ..lapsed.terms.clone() };
        assert_eq!(changes.license_terms, [(lapsed.id, terms)]);
        assert_eq!(
            changes.subscription_audit,
            [SubscriptionAudit {
                subscription_id,
                change: SubscriptionChange::GraceExpired { grace_ended_at: ended },
                actor: "system".into(),
                stripe_event_id: None,
                client_addr: None,
            }]
        );
        assert!(changes.license_audit.is_empty());
        assert_eq!(changes.outbox.iter().map(|m| m.topic).collect::<Vec<_>>(), [Topic::LicenseUpdated]);
        assert_eq!(changes.outbox[0].payload["status"], "suspended");
    }

    #[test]
    fn a_manual_license_is_audited_on_its_own_and_one_still_in_grace_is_left_alone() {
        let ended = NOW - time::Duration::minutes(1);
        let lapsed = in_grace_until(ended, None);
        let not_yet = in_grace_until(NOW + time::Duration::hours(1), None);
        let licenses = vec![held(lapsed.clone(), Vec::new()), held(not_yet, Vec::new())];
        let bundle = LicenseBundle { stamped_at: STAMPED_AT, licenses, devices: Vec::new(), used_trial: None };
        let (changes, (suspended, loaded)) = Changeset::from_decision(|c| decide_grace_expiry(bundle, NOW, c));
        assert_eq!((suspended, loaded), (vec![lapsed.id], 2), "both count as loaded, one was due");
        assert_eq!(changes.license_terms.len(), 1);
        assert!(changes.subscription_audit.is_empty());
        assert_eq!(changes.license_audit.len(), 1);
        let audit = &changes.license_audit[0];
        assert_eq!((audit.license_id, audit.kind, audit.actor.as_str()), (lapsed.id, "grace_expired", "system"));
        assert_eq!(audit.detail, json!({ "grace_ended_at": rfc3339(ended) }));
        assert_eq!(changes.outbox.len(), 1);
    }
}
