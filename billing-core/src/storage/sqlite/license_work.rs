//! [`Store::license_work`](crate::storage::Store::license_work) on SQLite:
//! load, decide and apply in one blocking call on the writer connection,
//! inside one `BEGIN IMMEDIATE` transaction. The write lock is the lock of
//! every row, so nothing is skipped as locked either.

use super::stripe_sync::apply;
use super::{
    checked_limit, device_from_row, license_record_from_row, micros, query, query_opt, subscription_from_row,
    time_from_micros, uuid, SqliteStore, DEVICE_COLUMNS, LICENSE_COLUMNS, SUBSCRIPTION_COLUMNS,
};
use crate::domain::Device;
use crate::storage::changeset::Changeset;
use crate::storage::license_work::{HeldLicense, LicenseBundle, LicenseKeys};
use crate::storage::StoreError;
use deadpool_sqlite::rusqlite::{params, Connection};
use std::collections::HashSet;

pub(super) async fn license_work<T, F>(store: &SqliteStore, keys: LicenseKeys, decide: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(LicenseBundle) -> (Changeset, T) + Send + 'static,
{
    store
        .unit_of_work(move |conn, now| {
            let bundle = load(conn, now, keys)?;
            let (changes, decided) = decide(bundle);
            apply(conn, now, &changes, &HashSet::new())?;
            Ok((decided, !changes.outbox.is_empty()))
        })
        .await
}

/// A license with its owner and dates ([`license_record_from_row`]), from
/// `licenses l` joined to its subscription and customer, if any.
fn license_record_sql() -> String {
    format!(
        "SELECT {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at, l.updated_at
           FROM licenses l LEFT JOIN subscriptions s ON s.id = l.subscription_id
           LEFT JOIN customers c ON c.id = s.customer_id"
    )
}

fn held(
    conn: &Connection,
    sql: &str,
    params: impl deadpool_sqlite::rusqlite::Params,
) -> Result<Vec<HeldLicense>, StoreError> {
    let records = query(conn, sql, params, license_record_from_row)?;
    Ok(records.into_iter().map(|record| HeldLicense { record, subscription: None, devices: Vec::new() }).collect())
}

fn devices_of(conn: &Connection, license: &mut HeldLicense) -> Result<(), StoreError> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = ?1 ORDER BY d.activated_at, d.id");
    license.devices = query(conn, &sql, [license.record.license.id.to_string()], device_from_row)?;
    Ok(())
}

fn load(conn: &Connection, now: i64, keys: LicenseKeys) -> Result<LicenseBundle, StoreError> {
    let record = license_record_sql();
    let mut licenses = Vec::new();
    let mut devices: Vec<Device> = Vec::new();
    let mut used_trial = None;
    match keys {
        LicenseKeys::Nothing => {}
        LicenseKeys::ActivationOf { key_hash } => {
            licenses = held(conn, &format!("{record} WHERE l.key_hash = ?1"), [key_hash])?;
            for license in &mut licenses {
                devices_of(conn, license)?;
            }
        }
        LicenseKeys::License { license_id } => {
            licenses = held(conn, &format!("{record} WHERE l.id = ?1"), [license_id.to_string()])?;
            for license in &mut licenses {
                if let Some(subscription_id) = license.record.license.subscription_id {
                    let sql = format!(
                        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                          WHERE s.id = ?1"
                    );
                    let found = query(conn, &sql, [subscription_id.to_string()], subscription_from_row)?;
                    license.subscription = found.into_iter().next();
                }
                devices_of(conn, license)?;
            }
        }
        LicenseKeys::DeviceByToken { token_hash } => {
            let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = ?1");
            devices = query(conn, &sql, [&token_hash], device_from_row)?;
            let sql = format!("{record} JOIN devices d ON d.license_id = l.id WHERE d.token_hash = ?1");
            licenses = held(conn, &sql, [&token_hash])?;
        }
        LicenseKeys::DeviceOfUser { device_id, user_id } => {
            let whose = "(?2 IS NULL OR c.user_id = ?2 OR l.user_id = ?2)";
            let sql = format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d
                   JOIN licenses l ON l.id = d.license_id
                   LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id
                  WHERE d.id = ?1 AND {whose}"
            );
            devices = query(conn, &sql, params![device_id.to_string(), user_id], device_from_row)?;
            let sql = format!("{record} JOIN devices d ON d.license_id = l.id WHERE d.id = ?1 AND {whose}");
            licenses = held(conn, &sql, params![device_id.to_string(), user_id])?;
        }
        LicenseKeys::OverdueDevices { now, limit } => {
            let sql = format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d
                  WHERE d.status = 'active' AND d.heartbeat_deadline < ?1
                  ORDER BY d.heartbeat_deadline LIMIT ?2"
            );
            devices = query(conn, &sql, [micros(now)?, checked_limit(limit)?], device_from_row)?;
            let sql = format!("{record} WHERE l.id = ?1");
            for device in &devices {
                if !licenses.iter().any(|l: &HeldLicense| l.record.license.id == device.license_id) {
                    licenses.extend(held(conn, &sql, [device.license_id.to_string()])?);
                }
            }
        }
        LicenseKeys::Trial { plan_id, fingerprint_hash } => {
            let sql = "SELECT license_id FROM trial_uses WHERE plan_id = ?1 AND fingerprint_hash = ?2";
            used_trial = query_opt(conn, sql, params![plan_id, fingerprint_hash], |row| uuid(row, 0))?;
        }
        LicenseKeys::LicensesPastGrace { now, limit } => {
            let sql = format!(
                "{record} WHERE l.status = 'active' AND l.grace_ends_at <= ?1 ORDER BY l.grace_ends_at LIMIT ?2"
            );
            licenses = held(conn, &sql, [micros(now)?, checked_limit(limit)?])?;
        }
    }
    Ok(LicenseBundle { stamped_at: time_from_micros(now, 0)?, licenses, devices, used_trial })
}
