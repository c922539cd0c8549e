//! The vendor's own changes to licenses (issue 14): issue a license with no
//! Stripe subscription, override its terms, suspend, reinstate, revoke,
//! renew, and deactivate devices. Each is one unit of work: lock the
//! license (its subscription first) → pure rule from
//! [`crate::domain::license`] → terms + `license_changes` row + outbox →
//! commit. A change that changes nothing writes nothing.

use crate::billing::rfc3339;
use crate::domain::device::Liveness;
use crate::domain::license::{self, AdminChange, LicenseInputError, LicensePatch, Renewal};
use crate::domain::{cursor, PlanCatalog};
use crate::domain::{
    Actor, Device, DeviceStatus, License, LicenseKey, LicenseKind, LicenseOverrides, LicenseSource, LicenseStatus,
    LicenseTerms, Plan, Subscription, Timestamp, Topic,
};
use crate::licensing::{deactivate, DeactivationReason};
use crate::messages::{license_message, license_updated};
use crate::storage::license_work::{Changeset, HeldLicense, LicenseAudit, LicenseBundle, LicenseKeys};
use crate::storage::{LicenseRecord, Store, StoreError};
use crate::Billing;
use serde_json::{json, Value};
use uuid::Uuid;

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminLicenseError {
    /// No such license or device (`license`, `device`).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input is not acceptable; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The license is revoked: only reads are left.
    #[error("the license is revoked; it takes no further change")]
    Conflict,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<LicenseInputError> for AdminLicenseError {
    fn from(e: LicenseInputError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// A manual license to issue, as the admin asked for it (checked here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewLicense {
    /// Whom it is for.
    pub user_id: String,
    /// A plan id of the catalog (the device limit and features unless
    /// overridden); without a catalog, the license's plan label.
    pub plan: String,
    /// A device limit other than the plan's.
    pub max_devices: Option<i64>,
    /// When it expires (never, without one).
    pub expires_at: Option<Timestamp>,
    /// Entitlements beyond the plan's features.
    pub entitlements: Option<Vec<String>>,
    /// The vendor's notes.
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// Subscription or perpetual (default: the catalog plan's kind, else
    /// subscription).
    pub kind: Option<LicenseKind>,
    /// The end of its updates window (default: for a perpetual license of
    /// a plan with `updates_months`, that many months from now; else none).
    pub updates_until: Option<Timestamp>,
}

/// Overrides to set, as the admin asked for them (checked here). `None`
/// leaves a field alone; `Some(None)` clears an override.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchRequest {
    /// Device limit override.
    pub max_devices: Option<Option<i64>>,
    /// Expiry override.
    pub expires_at: Option<Option<Timestamp>>,
    /// Replaces the license's own entitlements.
    pub entitlements: Option<Vec<String>>,
    /// Replaces the metadata.
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// Moves (or, `Some(None)`, removes) the end of the updates window.
    pub updates_until: Option<Option<Timestamp>>,
}

/// A license after an admin use case, with what the admin API shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminLicense {
    /// The license, its owner and dates, as committed.
    pub record: LicenseRecord,
    /// Its devices still holding a slot (stored as active).
    pub device_count: usize,
    /// All its devices, where the use case is about them.
    pub devices: Option<Vec<Device>>,
    /// Its subscription as stored (None for a manual license), where the
    /// use case is about the devices.
    pub subscription: Option<Subscription>,
}

impl<S: Store> Billing<S> {
    /// Issues a license with no Stripe subscription behind it (a comp, a
    /// reseller deal, a replacement). Announced as `license.created`.
    pub async fn issue_manual_license(
        &self,
        actor: &Actor,
        request: NewLicense,
    ) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let actor_label = actor.label();
        license::check_user_id(&request.user_id)?;
        let plan = license::manual_plan(self.plans(), &request.plan)?;
        let catalog_plan = match plan {
            license::ManualPlan::Catalog(plan) => Some(plan),
            license::ManualPlan::Label(_) => None,
        };
        let overrides = LicenseOverrides {
            max_devices: request.max_devices.map(license::check_max_devices).transpose()?,
            expires_at: request.expires_at.map(|t| license::check_expires_at(t, now)).transpose()?,
            suspended_at: None,
            disputed_at: None,
        };
        let kind = request.kind.or(catalog_plan.map(|p| p.kind)).unwrap_or_default();
        let updates_until = request.updates_until.or_else(|| match (kind, catalog_plan) {
            (LicenseKind::Perpetual, Some(plan)) => license::updates_window_end(plan, now),
            _ => None,
        });
        let issued = License {
            id: Uuid::new_v4(),
            subscription_id: None,
            source: LicenseSource::Manual,
            user_id: Some(request.user_id),
            key: LicenseKey::generate(),
            terms: LicenseTerms {
                plan_id: Some(request.plan.clone()),
                ..license::manual_terms(catalog_plan, None, &overrides, now)
            },
            entitlements: license::check_entitlements(request.entitlements.unwrap_or_default())?,
            metadata: license::check_metadata(request.metadata.unwrap_or_default())?,
            overrides,
            kind,
            updates_until,
            trial: false,
        };
        let issued = as_stored(issued);
        let (actor, plan) = (actor.clone(), request.plan);
        let record = self
            .license_work(LicenseKeys::Nothing, move |bundle| {
                Changeset::from_decision(|changes| decide_issue(bundle, issued, &plan, &actor, changes))
            })
            .await?;
        tracing::info!(license_id = %record.license.id, actor = %actor_label, "manual license issued");
        Ok(AdminLicense { record, device_count: 0, devices: None, subscription: None })
    }

    /// Sets or clears overrides, entitlements and metadata.
    pub async fn patch_license(
        &self,
        actor: &Actor,
        license_id: Uuid,
        request: PatchRequest,
    ) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let patch = LicensePatch {
            max_devices: request.max_devices.map(|m| m.map(license::check_max_devices).transpose()).transpose()?,
            expires_at: request
                .expires_at
                .map(|e| e.map(|t| license::check_expires_at(t, now)).transpose())
                .transpose()?,
            entitlements: request.entitlements.map(license::check_entitlements).transpose()?,
            metadata: request.metadata.map(license::check_metadata).transpose()?,
            updates_until: request.updates_until,
        };
        self.change_license(actor, license_id, |_| Ok(AdminChange::Patch(patch))).await
    }

    /// Suspends a license until an admin reinstates it, whatever Stripe
    /// says meanwhile. Suspending a suspended license changes nothing.
    pub async fn suspend_license(&self, actor: &Actor, license_id: Uuid) -> Result<AdminLicense, AdminLicenseError> {
        self.change_license(actor, license_id, |_| Ok(AdminChange::Suspend)).await
    }

    /// Lifts an admin suspension: the license's terms follow its source again.
    pub async fn reinstate_license(&self, actor: &Actor, license_id: Uuid) -> Result<AdminLicense, AdminLicenseError> {
        self.change_license(actor, license_id, |_| Ok(AdminChange::Reinstate)).await
    }

    /// Withdraws a license for good.
    pub async fn revoke_license(&self, actor: &Actor, license_id: Uuid) -> Result<AdminLicense, AdminLicenseError> {
        self.change_license(actor, license_id, |_| Ok(AdminChange::Revoke)).await
    }

    /// Extends a license until a date, or by a number of days counted from
    /// its current expiry (from now, if that has passed or there is none).
    /// A license whose subscription ended is usable again until then.
    pub async fn renew_license(
        &self,
        actor: &Actor,
        license_id: Uuid,
        renewal: Renewal,
    ) -> Result<AdminLicense, AdminLicenseError> {
        // Checked before the license is read, so that bad input is refused
        // the same way whether or not the license exists.
        let now = self.now();
        license::renewal_end(renewal, None, now)?;
        self.change_license(actor, license_id, move |held| {
            Ok(AdminChange::Renew(license::renewal_end(renewal, held.terms.expires_at, now)?))
        })
        .await
    }

    /// Deactivates any device, announced as `device.deactivated` as a
    /// dashboard removal is (its event stream then ends).
    pub async fn admin_deactivate_device(&self, actor: &Actor, device_id: Uuid) -> Result<Device, AdminLicenseError> {
        let now = self.now();
        let actor = actor.clone();
        let keys = LicenseKeys::DeviceOfUser { device_id, user_id: None };
        self.license_work(keys, move |bundle| {
            Changeset::from_decision(|changes| decide_device_removal(bundle, &actor, now, changes))
        })
        .await?
    }

    /// Deactivates every device of a license, each announced as
    /// `device.deactivated`.
    pub async fn reset_devices(&self, actor: &Actor, license_id: Uuid) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let actor = actor.clone();
        self.license_work(LicenseKeys::License { license_id }, move |bundle| {
            Changeset::from_decision(|changes| decide_reset(bundle, &actor, now, changes))
        })
        .await?
    }

    /// The one shape of every license change: lock, decide (`change` sees
    /// the license as held), re-derive the terms, write what changed.
    async fn change_license(
        &self,
        actor: &Actor,
        license_id: Uuid,
        change: impl FnOnce(&License) -> Result<AdminChange, AdminLicenseError> + Send + 'static,
    ) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let config = self.config_arc();
        let decided_by = actor.clone();
        let (changed, kind) = self
            .license_work(LicenseKeys::License { license_id }, move |bundle| {
                let rules = LicenseRules {
                    plans: &config.plans,
                    grace: config.grace,
                    heartbeat_window: config.licensing.heartbeat_window,
                    now,
                };
                Changeset::from_decision(|changes| decide_change(bundle, rules, &decided_by, change, changes))
            })
            .await??;
        if let Some(kind) = kind {
            tracing::info!(license_id = %license_id, actor = %actor.label(), change = kind, "license changed by an admin");
        }
        Ok(changed)
    }
}

/// What the decisions of license changes read besides the bundle.
#[derive(Clone, Copy)]
struct LicenseRules<'a> {
    plans: &'a PlanCatalog,
    grace: time::Duration,
    heartbeat_window: time::Duration,
    now: Timestamp,
}

/// A manual license issued: the row, its audit row, `license.created`.
/// Returns it as the store records it.
fn decide_issue(
    bundle: LicenseBundle,
    issued: License,
    plan: &str,
    actor: &Actor,
    changes: &mut Changeset,
) -> LicenseRecord {
    let detail = json!({ "user_id": issued.user_id, "plan": plan, "terms": terms_detail(&issued) });
    changes.license_audit.push(LicenseAudit {
        license_id: issued.id,
        kind: "issued",
        actor: actor.label(),
        detail,
        client_addr: actor.client_addr(),
    });
    changes.outbox.push(license_message(Topic::LicenseCreated, &issued));
    changes.new_licenses.push(issued.clone());
    let at = bundle.stamped_at;
    LicenseRecord { owner_user_id: issued.user_id.clone(), license: issued, created_at: at, updated_at: at }
}

/// An admin change of a license, re-derived from its source; nothing is
/// written when it changes nothing. Returns the license as committed and
/// the kind of change, when there was one (owned: a borrowed `&'static str`
/// trips rustc into finding the unit of work's future not general enough to
/// be `Send`).
fn decide_change(
    bundle: LicenseBundle,
    rules: LicenseRules<'_>,
    actor: &Actor,
    change: impl FnOnce(&License) -> Result<AdminChange, AdminLicenseError>,
    changes: &mut Changeset,
) -> Result<(AdminLicense, Option<String>), AdminLicenseError> {
    let held = bundle.licenses.into_iter().next().ok_or(AdminLicenseError::NotFound("license"))?;
    let current = &held.record.license;
    if current.terms.status == LicenseStatus::Revoked {
        return Err(AdminLicenseError::Conflict);
    }
    let change = change(current)?;
    let mut next = license::apply_admin_change(current, &change, rules.now).map_err(|_| AdminLicenseError::Conflict)?;
    next.terms =
        license::rederive(&next, held.subscription.as_ref(), plan_of(rules.plans, &held), rules.grace, rules.now)
            .ok_or_else(|| StoreError::Corrupt("a Stripe license without its subscription".into()))?;
    let next = as_stored(next);
    let mut device_count = holding_slots(&held.devices);
    if &next == current {
        // Nothing changed: nothing to record or announce.
        let unchanged = AdminLicense { device_count, record: held.record, devices: None, subscription: None };
        return Ok((unchanged, None));
    }
    changes.saved_licenses.push(next.clone());
    let detail = json!({ "from": terms_detail(current), "to": terms_detail(&next) });
    changes.license_audit.push(LicenseAudit {
        license_id: next.id,
        kind: change.kind(),
        actor: actor.label(),
        detail,
        client_addr: actor.client_addr(),
    });
    changes.outbox.push(license_updated(&next));
    if next.terms.max_devices < current.terms.max_devices {
        let liveness = Liveness::of_license(&next, rules.plans, rules.heartbeat_window);
        evict_beyond_limit(changes, &next, &held.devices, actor, rules.now, liveness);
        device_count = device_count.min(next.terms.max_devices as usize);
    }
    let record = LicenseRecord { license: next, updated_at: bundle.stamped_at, ..held.record };
    Ok((AdminLicense { record, device_count, devices: None, subscription: None }, Some(change.kind().to_owned())))
}

/// An admin removing one device; a revoked license's devices are left as
/// they are, and a device holding no slot changes nothing.
fn decide_device_removal(
    bundle: LicenseBundle,
    actor: &Actor,
    now: Timestamp,
    changes: &mut Changeset,
) -> Result<Device, AdminLicenseError> {
    let device = bundle.devices.into_iter().next().ok_or(AdminLicenseError::NotFound("device"))?;
    let license = bundle.licenses.into_iter().next().ok_or(AdminLicenseError::NotFound("device"))?;
    if license.record.license.terms.status == LicenseStatus::Revoked {
        return Err(AdminLicenseError::Conflict);
    }
    if device.status != DeviceStatus::Active {
        return Ok(device);
    }
    Ok(deactivate(changes, device, DeactivationReason::Dashboard, actor, now))
}

/// Every active device of a license deactivated, and one audit row for the
/// reset (none when there was nothing to reset).
fn decide_reset(
    bundle: LicenseBundle,
    actor: &Actor,
    now: Timestamp,
    changes: &mut Changeset,
) -> Result<AdminLicense, AdminLicenseError> {
    let held = bundle.licenses.into_iter().next().ok_or(AdminLicenseError::NotFound("license"))?;
    if held.record.license.terms.status == LicenseStatus::Revoked {
        return Err(AdminLicenseError::Conflict);
    }
    let HeldLicense { record, subscription, mut devices } = held;
    let mut reset = 0;
    for device in &mut devices {
        if device.status == DeviceStatus::Active {
            *device = deactivate(changes, device.clone(), DeactivationReason::Dashboard, actor, now);
            reset += 1;
        }
    }
    if reset > 0 {
        let detail = json!({ "deactivated": reset });
        changes.license_audit.push(LicenseAudit {
            license_id: record.license.id,
            kind: "devices_reset",
            actor: actor.label(),
            detail,
            client_addr: actor.client_addr(),
        });
    }
    Ok(AdminLicense { record, device_count: 0, devices: Some(devices), subscription })
}

/// The plan a license's terms come from: its subscription's price for a
/// Stripe license (as webhooks derive it), its own plan for a manual one.
fn plan_of<'a>(plans: &'a PlanCatalog, held: &HeldLicense) -> Option<&'a Plan> {
    match &held.subscription {
        Some(sub) => sub.snapshot.price_id.as_deref().and_then(|p| plans.by_price(p)),
        None => held.record.license.terms.plan_id.as_deref().and_then(|p| plans.by_id(p)),
    }
}

/// After a downgrade, the least recently seen live devices beyond the new
/// limit lose their slot and are told so.
fn evict_beyond_limit(
    changes: &mut Changeset,
    license: &License,
    devices: &[Device],
    actor: &Actor,
    now: Timestamp,
    liveness: Liveness,
) {
    for id in crate::domain::device::evicted_by_limit(devices, license.terms.max_devices, now, liveness) {
        let device = devices.iter().find(|d| d.id == id).expect("evicted devices come from the list").clone();
        deactivate(changes, device, DeactivationReason::Downgrade, actor, now);
    }
}

/// The license as the stores keep it: times in whole microseconds, so
/// that what a use case returns is what a later read finds.
pub(crate) fn as_stored(license: License) -> License {
    let micros = |t: Option<Timestamp>| t.and_then(|t| cursor::from_micros(cursor::to_micros(t)));
    let (terms, overrides) = (&license.terms, &license.overrides);
    License {
        terms: LicenseTerms {
            expires_at: micros(terms.expires_at),
            grace_ends_at: micros(terms.grace_ends_at),
            ..terms.clone()
        },
        overrides: LicenseOverrides {
            expires_at: micros(overrides.expires_at),
            suspended_at: micros(overrides.suspended_at),
            ..overrides.clone()
        },
        updates_until: micros(license.updates_until),
        ..license
    }
}

fn holding_slots(devices: &[Device]) -> usize {
    devices.iter().filter(|d| d.status == DeviceStatus::Active).count()
}

/// What an audit row says of a license's state.
fn terms_detail(license: &License) -> Value {
    let (t, o) = (&license.terms, &license.overrides);
    json!({
        "status": t.status,
        "kind": license.kind,
        "updates_until": license.updates_until.map(rfc3339),
        "max_devices": t.max_devices,
        "expires_at": t.expires_at.map(rfc3339),
        "plan": t.plan_id,
        "entitlements": license.entitlements,
        "metadata_keys": license.metadata.len(),
        "overrides": {
            "max_devices": o.max_devices,
            "expires_at": o.expires_at.map(rfc3339),
            "suspended_at": o.suspended_at.map(rfc3339),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Topic;
    use crate::storage::license_work::fixtures::{device, device_bundle, license, license_bundle, NOW, STAMPED_AT};
    use crate::storage::license_work::LicenseBundle;

    fn plans() -> PlanCatalog {
        let plan = Plan::new("pro", "Pro", "price_pro", 3);
        PlanCatalog::new(vec![plan]).unwrap()
    }

    fn admin() -> Actor {
        Actor::admin("ops")
    }

    fn change(
        bundle: LicenseBundle,
        change: AdminChange,
    ) -> (Changeset, Result<(AdminLicense, Option<String>), AdminLicenseError>) {
        let catalog = plans();
        let rules = LicenseRules {
            plans: &catalog,
            grace: time::Duration::days(7),
            heartbeat_window: time::Duration::minutes(10),
            now: NOW,
        };
        Changeset::from_decision(|c| decide_change(bundle, rules, &admin(), |_| Ok(change), c))
    }

    fn topics(changes: &Changeset) -> Vec<Topic> {
        changes.outbox.iter().map(|m| m.topic).collect()
    }

    #[test]
    fn an_issued_license_is_inserted_audited_and_announced_as_created() {
        let issued = license(3);
        let bundle =
            LicenseBundle { stamped_at: STAMPED_AT, licenses: Vec::new(), devices: Vec::new(), used_trial: None };
        let (changes, record) = Changeset::from_decision(|c| decide_issue(bundle, issued.clone(), "pro", &admin(), c));
        assert_eq!(record.license, issued);
        assert_eq!(record.owner_user_id.as_deref(), Some("user_1"));
        assert_eq!((record.created_at, record.updated_at), (STAMPED_AT, STAMPED_AT), "the store's stamps");
        assert_eq!(changes.new_licenses, std::slice::from_ref(&issued));
        assert_eq!(changes.license_audit.len(), 1);
        let audit = &changes.license_audit[0];
        assert_eq!((audit.license_id, audit.kind, audit.actor.as_str()), (issued.id, "issued", "admin:ops"));
        assert_eq!(audit.detail["plan"], "pro");
        assert_eq!(audit.detail["terms"], terms_detail(&issued));
        assert_eq!(topics(&changes), [Topic::LicenseCreated]);
    }

    #[test]
    fn a_suspension_saves_the_license_audits_from_and_to_and_announces_it_once() {
        let held = license(3);
        let (changes, result) = change(license_bundle(held.clone(), Vec::new()), AdminChange::Suspend);
        let (changed, kind) = result.unwrap();
        assert_eq!(kind.as_deref(), Some("suspended"));
        let saved = &changed.record.license;
        assert_eq!((saved.terms.status, saved.overrides.suspended_at), (LicenseStatus::Suspended, Some(NOW)));
        assert_eq!(changed.record.updated_at, STAMPED_AT);
        assert_eq!(changes.saved_licenses, std::slice::from_ref(saved));
        let audit = &changes.license_audit[0];
        assert_eq!((audit.kind, audit.detail["from"]["status"].as_str()), ("suspended", Some("active")));
        assert_eq!(audit.detail["to"]["status"], "suspended");
        assert_eq!(topics(&changes), [Topic::LicenseUpdated]);
        assert!(changes.device_statuses.is_empty());

        let (changes, result) = change(license_bundle(saved.clone(), Vec::new()), AdminChange::Suspend);
        let (unchanged, kind) = result.unwrap();
        assert_eq!((unchanged.record.license, kind), (saved.clone(), None));
        assert!(changes.is_empty(), "suspending a suspended license changes nothing");
    }

    #[test]
    fn a_revoked_license_takes_no_change_and_a_missing_one_is_not_found() {
        let held = license(3);
        let (changes, result) = change(license_bundle(held.clone(), Vec::new()), AdminChange::Revoke);
        let revoked = result.unwrap().0.record.license;
        assert_eq!(revoked.terms.status, LicenseStatus::Revoked);
        assert_eq!(changes.license_audit[0].kind, "revoked");
        let (changes, result) = change(license_bundle(revoked, Vec::new()), AdminChange::Reinstate);
        assert!(matches!(result, Err(AdminLicenseError::Conflict)), "{result:?}");
        assert!(changes.is_empty());
        let nothing =
            LicenseBundle { stamped_at: STAMPED_AT, licenses: Vec::new(), devices: Vec::new(), used_trial: None };
        let (changes, result) = change(nothing, AdminChange::Suspend);
        assert!(matches!(result, Err(AdminLicenseError::NotFound("license"))), "{result:?}");
        assert!(changes.is_empty());
    }

    #[test]
    fn a_lower_device_limit_evicts_the_least_recently_seen_live_devices() {
        let held = license(3);
        let devices = vec![
            device(&held, "fp-recent", 1, DeviceStatus::Active),
            device(&held, "fp-older", 3, DeviceStatus::Active),
            device(&held, "fp-oldest", 5, DeviceStatus::Active),
            device(&held, "fp-gone", 2, DeviceStatus::Deactivated),
        ];
        let patch = LicensePatch { max_devices: Some(Some(1)), ..LicensePatch::default() };
        let (changes, result) = change(license_bundle(held, devices.clone()), AdminChange::Patch(patch));
        let (changed, kind) = result.unwrap();
        assert_eq!((kind.as_deref(), changed.record.license.terms.max_devices), (Some("patched"), 1));
        assert_eq!(changed.device_count, 1);
        let evicted: Vec<_> = changes.device_statuses.iter().map(|(id, status, at)| (*id, *status, *at)).collect();
        assert_eq!(
            evicted,
            [(devices[1].id, DeviceStatus::Deactivated, NOW), (devices[2].id, DeviceStatus::Deactivated, NOW)]
        );
        assert!(changes.device_audit.iter().all(|a| a.detail == json!({ "reason": "downgrade" })));
        assert_eq!(topics(&changes), [Topic::LicenseUpdated, Topic::DeviceDeactivated, Topic::DeviceDeactivated]);
    }

    #[test]
    fn a_reset_deactivates_every_active_device_with_one_audit_row() {
        let held = license(3);
        let devices = vec![
            device(&held, "fp-1", 1, DeviceStatus::Active),
            device(&held, "fp-2", 30, DeviceStatus::Active),
            device(&held, "fp-3", 2, DeviceStatus::Deactivated),
        ];
        let (changes, result) =
            Changeset::from_decision(|c| decide_reset(license_bundle(held.clone(), devices.clone()), &admin(), NOW, c));
        let reset = result.unwrap();
        let after = reset.devices.unwrap();
        assert!(after.iter().all(|d| d.status == DeviceStatus::Deactivated));
        assert_eq!(after[2], devices[2], "a deactivated device is left as it was");
        assert_eq!(changes.device_statuses.len(), 2, "every device stored as active, overdue or not");
        assert_eq!(changes.license_audit.len(), 1);
        assert_eq!(
            (changes.license_audit[0].kind, &changes.license_audit[0].detail),
            ("devices_reset", &json!({ "deactivated": 2 }))
        );
        assert_eq!(topics(&changes), [Topic::DeviceDeactivated, Topic::DeviceDeactivated]);

        let (changes, result) =
            Changeset::from_decision(|c| decide_reset(license_bundle(held, after.clone()), &admin(), NOW, c));
        assert_eq!(result.unwrap().devices, Some(after));
        assert!(changes.is_empty(), "nothing to reset, nothing recorded");
    }

    #[test]
    fn an_admin_removal_refuses_a_revoked_license_and_leaves_inactive_devices_alone() {
        let held = license(3);
        let alive = device(&held, "fp-1", 1, DeviceStatus::Active);
        let revoked =
            License { terms: LicenseTerms { status: LicenseStatus::Revoked, ..held.terms.clone() }, ..held.clone() };
        let (changes, result) = Changeset::from_decision(|c| {
            decide_device_removal(device_bundle(revoked, alive.clone()), &admin(), NOW, c)
        });
        assert!(matches!(result, Err(AdminLicenseError::Conflict)), "{result:?}");
        assert!(changes.is_empty());

        let dead = device(&held, "fp-2", 60, DeviceStatus::Dead);
        let (changes, result) = Changeset::from_decision(|c| {
            decide_device_removal(device_bundle(held.clone(), dead.clone()), &admin(), NOW, c)
        });
        assert_eq!(result.unwrap(), dead);
        assert!(changes.is_empty());

        let (changes, result) =
            Changeset::from_decision(|c| decide_device_removal(device_bundle(held, alive.clone()), &admin(), NOW, c));
        assert_eq!(result.unwrap().status, DeviceStatus::Deactivated);
        assert_eq!(changes.device_statuses, [(alive.id, DeviceStatus::Deactivated, NOW)]);
        assert_eq!(changes.device_audit[0].actor, "admin:ops");
    }

    #[test]
    fn what_is_written_is_kept_to_the_microsecond() {
        let mut held = license(3);
        held.overrides.expires_at = Some(NOW + time::Duration::nanoseconds(30 * 86_400_000_000_000 + 1_999));
        let stored = as_stored(held.clone());
        assert_eq!(
            stored.overrides.expires_at,
            Some(NOW + time::Duration::nanoseconds(30 * 86_400_000_000_000 + 1_000))
        );
        assert_eq!(License { overrides: held.overrides.clone(), ..stored.clone() }, held);
    }
}
