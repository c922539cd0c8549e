//! The vendor's own changes to licenses (issue 14): issue a license with no
//! Stripe subscription, override its terms, suspend, reinstate, revoke,
//! renew, and deactivate devices. Each is one unit of work: lock the
//! license (its subscription first) → pure rule from
//! [`crate::domain::license`] → terms + `license_changes` row + outbox →
//! commit. A change that changes nothing writes nothing.

use crate::billing::rfc3339;
use crate::domain::license::{self, AdminChange, LicenseInputError, LicensePatch, Renewal};
use crate::domain::{
    Actor, Device, DeviceStatus, License, LicenseKey, LicenseOverrides, LicenseSource, LicenseStatus, LicenseTerms,
    Plan, Subscription, Timestamp,
};
use crate::licensing::{deactivate_in, DeactivationReason};
use crate::messages::{license_message, license_updated, LICENSE_CREATED};
use crate::storage::{LicenseRecord, LockedLicense, Store, StoreError, StoreTx};
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
        let mut tx = self.store().begin().await?;
        tx.insert_license(&issued).await?;
        let detail = json!({ "user_id": issued.user_id, "plan": request.plan, "terms": terms_detail(&issued) });
        tx.record_license_change(issued.id, "issued", actor, detail).await?;
        tx.enqueue(&license_message(LICENSE_CREATED, &issued)).await?;
        let record = reread(&mut tx, issued.id).await?;
        tx.commit().await?;
        tracing::info!(license_id = %issued.id, actor = %actor.label(), "manual license issued");
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
        self.change_license(actor, license_id, |held| {
            Ok(AdminChange::Renew(license::renewal_end(renewal, held.terms.expires_at, now)?))
        })
        .await
    }

    /// Deactivates any device, announced as `device.deactivated` as a
    /// dashboard removal is (its event stream then ends).
    pub async fn admin_deactivate_device(&self, actor: &Actor, device_id: Uuid) -> Result<Device, AdminLicenseError> {
        let now = self.now();
        let mut tx = self.store().begin().await?;
        let device = tx.lock_device_of_user(device_id, None).await?.ok_or(AdminLicenseError::NotFound("device"))?;
        // Read, not locked: this holds the device, and licenses are locked
        // before their devices.
        let license = tx.license(device.license_id).await?.ok_or(AdminLicenseError::NotFound("device"))?;
        if license.terms.status == LicenseStatus::Revoked {
            return Err(AdminLicenseError::Conflict);
        }
        if device.status != DeviceStatus::Active {
            return Ok(device);
        }
        let device = deactivate_in(&mut tx, device, DeactivationReason::Dashboard, actor, now).await?;
        tx.commit().await?;
        Ok(device)
    }

    /// Deactivates every device of a license, each announced as
    /// `device.deactivated`.
    pub async fn reset_devices(&self, actor: &Actor, license_id: Uuid) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let mut tx = self.store().begin().await?;
        let locked = tx.lock_license_record(license_id).await?.ok_or(AdminLicenseError::NotFound("license"))?;
        if locked.record.license.terms.status == LicenseStatus::Revoked {
            return Err(AdminLicenseError::Conflict);
        }
        let mut devices = tx.devices_of_license(license_id).await?;
        let mut reset = 0;
        for device in &mut devices {
            if device.status == DeviceStatus::Active {
                *device = deactivate_in(&mut tx, device.clone(), DeactivationReason::Dashboard, actor, now).await?;
                reset += 1;
            }
        }
        let LockedLicense { record, subscription } = locked;
        let reset_all = AdminLicense { record, device_count: 0, devices: Some(devices), subscription };
        if reset == 0 {
            return Ok(reset_all);
        }
        tx.record_license_change(license_id, "devices_reset", actor, json!({ "deactivated": reset })).await?;
        tx.commit().await?;
        Ok(reset_all)
    }

    /// The one shape of every license change: lock, decide (`change` sees
    /// the license as held), re-derive the terms, write what changed.
    async fn change_license(
        &self,
        actor: &Actor,
        license_id: Uuid,
        change: impl FnOnce(&License) -> Result<AdminChange, AdminLicenseError>,
    ) -> Result<AdminLicense, AdminLicenseError> {
        let now = self.now();
        let mut tx = self.store().begin().await?;
        let locked = tx.lock_license_record(license_id).await?.ok_or(AdminLicenseError::NotFound("license"))?;
        let held = &locked.record.license;
        if held.terms.status == LicenseStatus::Revoked {
            return Err(AdminLicenseError::Conflict);
        }
        let change = change(held)?;
        let mut next = license::apply_admin_change(held, &change, now).map_err(|_| AdminLicenseError::Conflict)?;
        next.terms =
            license::rederive(&next, locked.subscription.as_ref(), self.plan_of(&locked), self.config().grace, now)
                .ok_or_else(|| StoreError::Corrupt("a Stripe license without its subscription".into()))?;
        let devices = tx.devices_of_license(license_id).await?;
        if &next == held {
            // Nothing changed: nothing to record or announce.
            return Ok(AdminLicense {
                device_count: holding_slots(&devices),
                record: locked.record,
                devices: None,
                subscription: None,
            });
        }
        tx.save_license(&next).await?;
        let detail = json!({
            "from": terms_detail(held),
            "to": terms_detail(&next),
        });
        tx.record_license_change(license_id, change.kind(), actor, detail).await?;
        tx.enqueue(&license_updated(&next)).await?;
        let mut device_count = holding_slots(&devices);
        if next.terms.max_devices < held.terms.max_devices {
            self.evict_beyond_limit(&mut tx, &next, actor, now).await?;
            device_count = device_count.min(next.terms.max_devices as usize);
        }
        let record = reread(&mut tx, license_id).await?;
        tx.commit().await?;
        tracing::info!(license_id = %license_id, actor = %actor.label(), change = change.kind(), "license changed by an admin");
        Ok(AdminLicense { record, device_count, devices: None, subscription: None })
    }

    /// The plan a license's terms come from: its subscription's price for a
    /// Stripe license (as webhooks derive it), its own plan for a manual one.
    fn plan_of(&self, locked: &LockedLicense) -> Option<&Plan> {
        match &locked.subscription {
            Some(sub) => sub.snapshot.price_id.as_deref().and_then(|p| self.plans().by_price(p)),
            None => locked.record.license.terms.plan_id.as_deref().and_then(|p| self.plans().by_id(p)),
        }
    }

    /// After a downgrade, the least recently seen live devices beyond the
    /// new limit lose their slot and are told so.
    pub(crate) async fn evict_beyond_limit(
        &self,
        tx: &mut S::Tx,
        license: &License,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let window = self.config().licensing.heartbeat_window;
        let devices = tx.devices_of_license(license.id).await?;
        for id in crate::domain::device::evicted_by_limit(&devices, license.terms.max_devices, now, window) {
            let device = devices.iter().find(|d| d.id == id).expect("evicted devices come from the list").clone();
            deactivate_in(tx, device, DeactivationReason::Downgrade, actor, now).await?;
        }
        Ok(())
    }
}

/// The license as just written, with the dates the store gave it.
async fn reread<T: StoreTx>(tx: &mut T, license_id: Uuid) -> Result<LicenseRecord, StoreError> {
    tx.lock_license_record(license_id)
        .await?
        .map(|locked| locked.record)
        .ok_or_else(|| StoreError::Corrupt("a license vanished inside its own transaction".into()))
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
