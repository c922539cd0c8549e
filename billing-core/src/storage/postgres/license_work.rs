//! [`Store::license_work`](crate::storage::Store::license_work) on
//! PostgreSQL: the load is one pipelined round trip (`BEGIN`, the
//! transaction's time, every lock and read, in the one lock order), the
//! changeset with its `COMMIT` another, through the same statements as the
//! Stripe units of work.

use super::stripe_sync::{apply_statements, pipeline, Open, Statement};
use super::{
    device_from_row, license_record_from_row_at, subscription_from_row, PgStore, DEVICE_COLUMNS, DEVICE_COLUMN_COUNT,
    LICENSE_COLUMNS, LOCK_MANUAL_LICENSE_RECORD, LOCK_STRIPE_LICENSE_RECORD, SUBSCRIPTION_COLUMN_COUNT,
};
use crate::storage::changeset::Changeset;
use crate::storage::license_work::{HeldLicense, LicenseBundle, LicenseKeys};
use crate::storage::StoreError;
use deadpool_postgres::ClientWrapper;
use std::collections::HashSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

type Param = Box<dyn ToSql + Sync + Send>;

macro_rules! params {
    ($($param:expr),* $(,)?) => { vec![$(Box::new($param) as Param),*] };
}

pub(super) async fn license_work<T, F>(store: &PgStore, keys: LicenseKeys, decide: F) -> Result<T, StoreError>
where
    F: FnOnce(LicenseBundle) -> (Changeset, T),
{
    let mut open = Open(Some(store.conn().await?));
    let bundle = load(open.conn(), keys).await?;
    let (changes, decided) = decide(bundle);
    let mut statements = apply_statements(&changes, &HashSet::new());
    if statements.is_empty() {
        return Ok(decided); // Nothing to keep: dropping `open` rolls back.
    }
    statements.push(Statement::new("COMMIT", params![]));
    // On failure `open` rolls back (a no-op when the database already
    // turned the COMMIT of a failed transaction into a rollback).
    pipeline(open.conn(), &statements).await?;
    drop(open.0.take());
    Ok(decided)
}

/// A license with its owner and dates ([`license_record_from_row_at`]),
/// from `licenses l` joined to its subscription and customer, if any.
static LICENSE_RECORD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at, l.updated_at
           FROM licenses l LEFT JOIN subscriptions s ON s.id = l.subscription_id
           LEFT JOIN customers c ON c.id = s.customer_id"
    )
});

/// How the rows of the key-specific statements are read back.
enum Shape {
    /// Licenses ([`LICENSE_RECORD`]), without subscription.
    Licenses,
    /// Licenses with their subscription first ([`LOCK_STRIPE_LICENSE_RECORD`]).
    StripeLicenses,
    /// Devices of the licenses read.
    LicenseDevices,
    /// Devices the keys name.
    Devices,
    /// Devices the keys name, each with its license ([`DEVICE_COLUMNS`],
    /// then a [`LICENSE_RECORD`]'s columns).
    DevicesWithLicenses,
    /// The license of an earlier trial, if any.
    UsedTrial,
    /// A lock, whose row says nothing.
    Nothing,
}

/// Locks and reads what `keys` names. Each lock or read is a statement of
/// its own, in lock order: one that waited for a lock must let the next see
/// what the holder committed, which a later statement's snapshot does.
async fn load(conn: &ClientWrapper, keys: LicenseKeys) -> Result<LicenseBundle, StoreError> {
    let mut statements = vec![Statement::new("BEGIN", params![]), Statement::new("SELECT now()", params![])];
    let mut shapes = Vec::new();
    let record = &*LICENSE_RECORD;
    match keys {
        LicenseKeys::Nothing => {}
        LicenseKeys::ActivationOf { key_hash } => {
            statements.push(Statement::new(
                format!("{record} WHERE l.key_hash = $1 FOR NO KEY UPDATE OF l"),
                params![key_hash.clone()],
            ));
            statements.push(Statement::new(
                format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d JOIN licenses l ON l.id = d.license_id
                      WHERE l.key_hash = $1 ORDER BY d.activated_at, d.id FOR NO KEY UPDATE OF d"
                ),
                params![key_hash],
            ));
            shapes.extend([Shape::Licenses, Shape::LicenseDevices]);
        }
        LicenseKeys::License { license_id } => {
            // A license's subscription never changes, so the second
            // statement finds the license only if the first (which locks
            // the subscription first) cannot: a manual one.
            statements.push(Statement::new(LOCK_STRIPE_LICENSE_RECORD.as_str(), params![license_id]));
            statements.push(Statement::new(LOCK_MANUAL_LICENSE_RECORD.as_str(), params![license_id]));
            statements.push(Statement::new(
                format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = $1
                      ORDER BY d.activated_at, d.id FOR NO KEY UPDATE"
                ),
                params![license_id],
            ));
            shapes.extend([Shape::StripeLicenses, Shape::Licenses, Shape::LicenseDevices]);
        }
        LicenseKeys::DeviceByToken { token_hash } => {
            statements.push(Statement::new(
                format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = $1 FOR NO KEY UPDATE"),
                params![token_hash.clone()],
            ));
            statements.push(Statement::new(
                format!("{record} JOIN devices d ON d.license_id = l.id WHERE d.token_hash = $1"),
                params![token_hash],
            ));
            shapes.extend([Shape::Devices, Shape::Licenses]);
        }
        LicenseKeys::DeviceOfUser { device_id, user_id } => {
            let whose = "($2::text IS NULL OR c.user_id = $2 OR l.user_id = $2)";
            statements.push(Statement::new(
                format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices d
                       JOIN licenses l ON l.id = d.license_id
                       LEFT JOIN subscriptions s ON s.id = l.subscription_id
                       LEFT JOIN customers c ON c.id = s.customer_id
                      WHERE d.id = $1 AND {whose}
                      FOR NO KEY UPDATE OF d"
                ),
                params![device_id, user_id.clone()],
            ));
            statements.push(Statement::new(
                format!("{record} JOIN devices d ON d.license_id = l.id WHERE d.id = $1 AND {whose}"),
                params![device_id, user_id],
            ));
            shapes.extend([Shape::Devices, Shape::Licenses]);
        }
        LicenseKeys::OverdueDevices { now, limit } => {
            statements.push(Statement::new(
                format!(
                    "SELECT {DEVICE_COLUMNS}, {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at,
                            l.updated_at
                       FROM devices d JOIN licenses l ON l.id = d.license_id
                       LEFT JOIN subscriptions s ON s.id = l.subscription_id
                       LEFT JOIN customers c ON c.id = s.customer_id
                      WHERE d.status = 'active' AND d.heartbeat_deadline < $1
                      ORDER BY d.heartbeat_deadline LIMIT $2 FOR NO KEY UPDATE OF d SKIP LOCKED"
                ),
                params![now, limit],
            ));
            shapes.push(Shape::DevicesWithLicenses);
        }
        LicenseKeys::Trial { plan_id, fingerprint_hash } => {
            // The pair's lock, also before any row holds it, so that a
            // second trial of the machine waits for the first and then
            // (its own statement, a later snapshot) finds its row.
            statements.push(Statement::new(
                "SELECT pg_advisory_xact_lock(hashtextextended('trial ' || $1 || ' ' || encode($2, 'hex'), 0))",
                params![plan_id.clone(), fingerprint_hash.clone()],
            ));
            statements.push(Statement::new(
                "SELECT license_id FROM trial_uses WHERE plan_id = $1 AND fingerprint_hash = $2",
                params![plan_id, fingerprint_hash],
            ));
            shapes.extend([Shape::Nothing, Shape::UsedTrial]);
        }
        LicenseKeys::LicensesPastGrace { now, limit } => {
            statements.push(Statement::new(
                format!(
                    "{record} WHERE l.status = 'active' AND l.grace_ends_at <= $1
                      ORDER BY l.grace_ends_at LIMIT $2 FOR NO KEY UPDATE OF l SKIP LOCKED"
                ),
                params![now, limit],
            ));
            shapes.push(Shape::Licenses);
        }
    }
    let mut results = pipeline(conn, &statements).await?.into_iter().skip(1);
    let stamped_at = results.next().and_then(|rows| rows.first().map(|row| row.get(0)));
    let stamped_at = stamped_at.ok_or_else(|| StoreError::Corrupt("now() returned no row".into()))?;
    let mut bundle = LicenseBundle { stamped_at, licenses: Vec::new(), devices: Vec::new(), used_trial: None };
    for (shape, rows) in shapes.into_iter().zip(results) {
        match shape {
            Shape::Licenses => {
                for row in &rows {
                    bundle.licenses.push(held(row, None, 0)?);
                }
            }
            Shape::StripeLicenses => {
                for row in &rows {
                    bundle.licenses.push(held(row, Some(subscription_from_row(row)?), SUBSCRIPTION_COLUMN_COUNT)?);
                }
            }
            Shape::LicenseDevices => {
                for row in &rows {
                    let device = device_from_row(row)?;
                    if let Some(license) = bundle.licenses.iter_mut().find(|l| l.record.license.id == device.license_id)
                    {
                        license.devices.push(device);
                    }
                }
            }
            Shape::Devices => {
                for row in &rows {
                    bundle.devices.push(device_from_row(row)?);
                }
            }
            Shape::DevicesWithLicenses => {
                for row in &rows {
                    bundle.devices.push(device_from_row(row)?);
                    let license = held(row, None, DEVICE_COLUMN_COUNT)?;
                    if !bundle.licenses.iter().any(|l| l.record.license.id == license.record.license.id) {
                        bundle.licenses.push(license);
                    }
                }
            }
            Shape::UsedTrial => bundle.used_trial = rows.first().map(|row| row.get(0)),
            Shape::Nothing => {}
        }
    }
    Ok(bundle)
}

fn held(row: &Row, subscription: Option<crate::domain::Subscription>, first: usize) -> Result<HeldLicense, StoreError> {
    Ok(HeldLicense { record: license_record_from_row_at(row, first)?, subscription, devices: Vec::new() })
}
