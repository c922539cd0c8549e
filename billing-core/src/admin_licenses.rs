//! The vendor's own changes to licenses (issue 14): issue a license with no
//! Stripe subscription, override its terms, suspend, reinstate, revoke,
//! renew, and deactivate devices. Each is one unit of work: lock the
//! license (its subscription first) → pure rule from
//! [`crate::domain::license`] → terms + `license_changes` row + outbox →
//! commit. A change that changes nothing writes nothing.

use crate::billing::rfc3339;
use crate::domain::license::{self, AdminChange, LicenseInputError, LicensePatch, Renewal};
use crate::domain::{cursor, PlanCatalog};
use crate::domain::{
    Actor, Device, DeviceStatus, License, LicenseKey, LicenseOverrides, LicenseSource, LicenseStatus, LicenseTerms,
    Plan, Subscription, Timestamp, Topic,
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
        };
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
        };
        let issued = as_stored(issued);
        let (actor, plan) = (actor.clone(), request.plan);
        let record = self
            .store()
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
        self.store()
            .license_work(keys, move |bundle| {
                Changeset::from_decision(|changes| decide_device_removal(bundle, &actor, now, changes))
            })
            .await?
    }

    /// Deactivates every device of a license, each announced as
    /// `device.deactivated`.
    pub async fn reset_devices(&self, actor: &Actor, license_id: Uuid) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let actor = actor.clone();
        self.store()
            .license_work(LicenseKeys::License { license_id }, move |bundle| {
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
            .store()
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
    changes.license_audit.push(LicenseAudit { license_id: issued.id, kind: "issued", actor: actor.label(), detail });
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
    changes.license_audit.push(LicenseAudit { license_id: next.id, kind: change.kind(), actor: actor.label(), detail });
    changes.outbox.push(license_updated(&next));
    if next.terms.max_devices < current.terms.max_devices {
        evict_beyond_limit(changes, &next, &held.devices, actor, rules.now, rules.heartbeat_window);
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
    window: time::Duration,
) {
    for id in crate::domain::device::evicted_by_limit(devices, license.terms.max_devices, now, window) {
        let device = devices.iter().find(|d| d.id == id).expect("evicted devices come from the list").clone();
        deactivate(changes, device, DeactivationReason::Downgrade, actor, now);
    }
}

/// The license as the stores keep it: times in whole microseconds, so
/// that what a use case returns is what a later read finds.
fn as_stored(license: License) -> License {
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
