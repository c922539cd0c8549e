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

pub use super::changeset::{Changeset, DeviceActivation, DeviceAudit, LicenseAudit, SubscriptionAudit};

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
    /// Active devices silent since before `cutoff`, least recently seen
    /// first, at most `limit`, locked; rows another unit holds are skipped
    /// (so that several reapers share the work). No licenses are read.
    OverdueDevices {
        /// Heartbeats before this are missed.
        cutoff: Timestamp,
        /// At most this many.
        limit: i64,
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
