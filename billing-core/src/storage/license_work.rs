//! The storage seam of the license-centred units of work (activations,
//! heartbeats, device removals, the reaper, the vendor's license changes,
//! the end of past-due grace): what one needs *loaded* ([`LicenseKeys`]),
//! the [`LicenseBundle`] the store hands to the pure decision, and the
//! [`Changeset`] the decision hands back to be *applied*.
//!
//! [`Store::license_work`](super::Store::license_work) runs the three steps
//! as one transaction. Locks follow the one order: subscription, then
//! license, then devices (then, at apply, the outbox lock). A unit that
//! starts from a device holds that device and reads its license without
//! locking it, since another unit may hold the license and wait for the
//! device. On PostgreSQL the load is one pipelined round trip and the apply
//! with its `COMMIT` another; on SQLite the three run in one blocking call
//! on the writer connection.

use super::LicenseRecord;
use crate::domain::{Device, Subscription, Timestamp};
use uuid::Uuid;

pub use super::changeset::{
    Changeset, DeviceActivation, DeviceAudit, HeartbeatWrite, LicenseAudit, SubscriptionAudit, TrialUse,
};

/// What a unit of work locks and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseKeys {
    /// Nothing: the unit only writes (a license issued from nothing).
    Nothing,
    /// The license with this key hash, locked, with its devices, locked:
    /// an activation. Its subscription is neither locked nor read
    /// (activating reads nothing of it, and webhooks need not wait).
    ActivationOf {
        /// [`crate::domain::LicenseKey::lookup_hash`].
        key_hash: Vec<u8>,
    },
    /// The license with this id: its subscription locked first (when it has
    /// one), then the license, then its devices.
    License {
        /// Our id.
        license_id: Uuid,
    },
    /// The device holding this activation-token hash (any status), locked;
    /// its license read, not locked.
    DeviceByToken {
        /// [`crate::domain::ActivationToken::hash`].
        token_hash: Vec<u8>,
    },
    /// The device with this id when it is on one of the user's licenses
    /// (any user's when `user_id` is None), locked; its license read, not
    /// locked.
    DeviceOfUser {
        /// Our id of the device.
        device_id: Uuid,
        /// Whose it must be.
        user_id: Option<String>,
    },
    /// Active devices whose heartbeat deadline passed before `now`,
    /// soonest passed first, at most `limit`, locked; rows another unit
    /// holds are skipped (so that several reapers share the work). Their
    /// licenses are read, not locked (their plans judge the devices; a
    /// deadline is only where to look).
    OverdueDevices {
        /// Deadlines before this have passed.
        now: Timestamp,
        /// At most this many.
        limit: i64,
    },
    /// Whether this plan was ever tried on this machine: the pair is locked
    /// (also when no row holds it yet, so that parallel trials of one
    /// machine serialise) and its trial looked up. Nothing else is read.
    Trial {
        /// The plan's id.
        plan_id: String,
        /// SHA-256 of the device fingerprint.
        fingerprint_hash: Vec<u8>,
    },
    /// Licenses stored as active whose grace period ended by `now`, soonest
    /// ended first, at most `limit`, locked; rows another unit holds are
    /// skipped. Neither their subscriptions nor their devices are read.
    LicensesPastGrace {
        /// The time grace is judged at.
        now: Timestamp,
        /// At most this many.
        limit: i64,
    },
}

/// A license as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLicense {
    /// The license, its owner and dates.
    pub record: LicenseRecord,
    /// Its subscription as stored: read (and locked first) only by
    /// [`LicenseKeys::License`], None otherwise and for a manual license.
    pub subscription: Option<Subscription>,
    /// Its devices, oldest activation first, locked with it: read by
    /// [`LicenseKeys::ActivationOf`] and [`LicenseKeys::License`], empty
    /// otherwise.
    pub devices: Vec<Device>,
}

/// Everything a unit of work's decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseBundle {
    /// The transaction's time, which the store stamps on the rows it writes
    /// (`created_at`, `updated_at`): what a decision reports of them.
    pub stamped_at: Timestamp,
    /// The licenses the keys name, or those of the devices they name.
    pub licenses: Vec<HeldLicense>,
    /// The devices the keys name by token, by id or as overdue (a
    /// license's devices are in its [`HeldLicense`]).
    pub devices: Vec<Device>,
    /// [`LicenseKeys::Trial`]: the license of the trial this plan already
    /// had on this machine.
    pub used_trial: Option<Uuid>,
}

impl LicenseBundle {
    /// The one license of a unit about one license or one device.
    pub fn license(&self) -> Option<&HeldLicense> {
        self.licenses.first()
    }

    /// The one device of a unit about one device.
    pub fn device(&self) -> Option<&Device> {
        self.devices.first()
    }
}

/// Bundles built by hand, for the decisions' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::domain::{
        DeviceStatus, License, LicenseKey, LicenseOverrides, LicenseSource, LicenseStatus, LicenseTerms,
    };
    use time::macros::datetime;

    /// The clock of every test.
    pub(crate) const NOW: Timestamp = datetime!(2026-11-15 12:00 UTC);
    /// The transaction's time as a store would report it.
    pub(crate) const STAMPED_AT: Timestamp = datetime!(2026-11-15 12:00:00.5 UTC);

    /// An active manual license of `user_1` on the `pro` plan.
    pub(crate) fn license(max_devices: u32) -> License {
        License {
            id: Uuid::new_v4(),
            subscription_id: None,
            source: LicenseSource::Manual,
            user_id: Some("user_1".into()),
            key: LicenseKey::generate(),
            terms: LicenseTerms {
                status: LicenseStatus::Active,
                max_devices,
                expires_at: None,
                grace_ends_at: None,
                plan_id: Some("pro".into()),
            },
            entitlements: Vec::new(),
            metadata: serde_json::Map::new(),
            overrides: LicenseOverrides::default(),
            kind: crate::domain::LicenseKind::Subscription,
            updates_until: None,
            trial: false,
        }
    }

    /// A device of `license`, last heard from `minutes_ago` before [`NOW`].
    pub(crate) fn device(license: &License, fingerprint: &str, minutes_ago: i64, status: DeviceStatus) -> Device {
        let seen = NOW - time::Duration::minutes(minutes_ago);
        Device {
            id: Uuid::new_v4(),
            license_id: license.id,
            fingerprint: fingerprint.into(),
            name: Some(format!("{fingerprint}'s machine")),
            platform: Some("linux".into()),
            app_version: Some("1.0.0".into()),
            status,
            activated_at: seen - time::Duration::days(1),
            last_heartbeat_at: seen,
            deactivated_at: (status != DeviceStatus::Active).then_some(seen),
            air_gapped: false,
        }
    }

    /// A license as loaded with its devices.
    pub(crate) fn held(license: License, devices: Vec<Device>) -> HeldLicense {
        let record = LicenseRecord {
            owner_user_id: license.user_id.clone(),
            license,
            created_at: datetime!(2026-01-01 0:00 UTC),
            updated_at: datetime!(2026-02-01 0:00 UTC),
        };
        HeldLicense { record, subscription: None, devices }
    }

    /// What [`LicenseKeys::License`] or [`LicenseKeys::ActivationOf`] loads.
    pub(crate) fn license_bundle(license: License, devices: Vec<Device>) -> LicenseBundle {
        LicenseBundle {
            stamped_at: STAMPED_AT,
            licenses: vec![held(license, devices)],
            devices: Vec::new(),
            used_trial: None,
        }
    }

    /// What a key naming a device loads: the device, and its license without devices.
    pub(crate) fn device_bundle(license: License, device: Device) -> LicenseBundle {
        LicenseBundle {
            stamped_at: STAMPED_AT,
            licenses: vec![held(license, Vec::new())],
            devices: vec![device],
            used_trial: None,
        }
    }

    /// What a key naming nothing that exists loads.
    pub(crate) fn empty_bundle() -> LicenseBundle {
        LicenseBundle { stamped_at: STAMPED_AT, licenses: Vec::new(), devices: Vec::new(), used_trial: None }
    }
}
