//! [`AdminReadStore`] on SQLite: the statements of
//! `postgres/admin_reads.rs` in SQLite's dialect (timestamps as Unix
//! microseconds, lists as JSON arrays).

use super::{
    checked_limit, device_from_row, get, json, license_record_from_row, micros, opt_time, opt_uuid, query, query_opt,
    subscription_from_row, time, uuid, SqliteStore, DEVICE_COLUMNS, LICENSE_COLUMNS, LICENSE_COLUMN_COUNT,
    SUBSCRIPTION_COLUMNS, SUBSCRIPTION_COLUMN_COUNT,
};
use crate::domain::cursor::{AuditCursor, AuditSource, CustomerCursor, DeliveryCursor, LicenseCursor};
use crate::domain::{Subscription, Timestamp};
use crate::storage::admin_reads::{
    AdminReadStore, AuditFilter, AuditRecord, CustomerRecord, DeliveryStatus, LicenseDetail, LicenseFilter,
    LicenseSummary, ListedLicense, StoredDelivery, StripeDelivery,
};
use crate::storage::StoreError;
use deadpool_sqlite::rusqlite::{params, Row};
use uuid::Uuid;

const DELIVERY_COLUMNS: &str =
    "id, type, object_id, status, attempts, last_error, note, duplicates, received_at, processed_at";

fn delivery_from_row(row: &Row<'_>) -> Result<StripeDelivery, StoreError> {
    Ok(StripeDelivery {
        id: get(row, 0)?,
        kind: get(row, 1)?,
        object_id: get(row, 2)?,
        status: get(row, 3)?,
        attempts: get(row, 4)?,
        error: get(row, 5)?,
        note: get(row, 6)?,
        duplicates: get(row, 7)?,
        received_at: time(row, 8)?,
        processed_at: opt_time(row, 9)?,
    })
}

/// As on PostgreSQL: each branch cut to the page on its own index, then the
/// union sorted.
const AUDIT_SQL_TEMPLATE: &str = "
    WITH users_subscriptions AS (
        SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id WHERE c.user_id = ?2)
    SELECT * FROM (SELECT 0 AS rank, h.id, h.created_at, h.actor, h.kind, l.id AS license_id, h.subscription_id,
                          h.from_status, h.to_status, h.stripe_event_id, h.detail, NULL AS device_id,
                          h.client_addr
                     FROM subscription_changes h LEFT JOIN licenses l ON l.subscription_id = h.subscription_id
                    WHERE (?1 IS NULL OR l.id = ?1)
                      AND (?2 IS NULL OR h.subscription_id IN (SELECT id FROM users_subscriptions))
                      AND {keyset_h}
                    ORDER BY h.created_at DESC, h.id DESC LIMIT ?6)
    UNION ALL
    SELECT * FROM (SELECT 1 AS rank, d.id, d.created_at, d.actor, d.kind, d.license_id, l.subscription_id,
                          NULL, NULL, NULL, d.detail, d.device_id, d.client_addr
                     FROM device_changes d JOIN licenses l ON l.id = d.license_id
                    WHERE (?1 IS NULL OR d.license_id = ?1)
                      AND (?2 IS NULL OR l.user_id = ?2 OR l.subscription_id IN (SELECT id FROM users_subscriptions))
                      AND {keyset_d}
                    ORDER BY d.created_at DESC, d.id DESC LIMIT ?6)
    UNION ALL
    SELECT * FROM (SELECT 2 AS rank, x.id, x.created_at, x.actor, x.kind, x.license_id, l.subscription_id,
                          NULL, NULL, NULL, x.detail, NULL, x.client_addr
                     FROM license_changes x JOIN licenses l ON l.id = x.license_id
                    WHERE (?1 IS NULL OR x.license_id = ?1)
                      AND (?2 IS NULL OR l.user_id = ?2 OR l.subscription_id IN (SELECT id FROM users_subscriptions))
                      AND {keyset_x}
                    ORDER BY x.created_at DESC, x.id DESC LIMIT ?6)
    ORDER BY 3 DESC, 1 DESC, 2 DESC LIMIT ?6";

/// [`AUDIT_SQL_TEMPLATE`] for the first page or the pages after a cursor
/// (see the PostgreSQL twin for why two statements).
fn audit_sql(after_cursor: bool) -> String {
    let mut sql = AUDIT_SQL_TEMPLATE.to_owned();
    for (alias, rank) in [("h", 0), ("d", 1), ("x", 2)] {
        let keyset = match after_cursor {
            true => format!("{alias}.created_at <= ?3 AND ({alias}.created_at, {rank}, {alias}.id) < (?3, ?4, ?5)"),
            false => "?3 IS NULL AND ?4 IS NULL AND ?5 IS NULL".to_owned(),
        };
        sql = sql.replace(&format!("{{keyset_{alias}}}"), &keyset);
    }
    sql
}

fn audit_from_row(row: &Row<'_>) -> Result<AuditRecord, StoreError> {
    let rank: i64 = get(row, 0)?;
    Ok(AuditRecord {
        source: AuditSource::from_rank(rank).ok_or_else(|| StoreError::Corrupt("unknown audit source".into()))?,
        id: get(row, 1)?,
        at: time(row, 2)?,
        actor: get(row, 3)?,
        kind: get(row, 4)?,
        license_id: opt_uuid(row, 5)?,
        subscription_id: opt_uuid(row, 6)?,
        from_status: get(row, 7)?,
        to_status: get(row, 8)?,
        stripe_event_id: get(row, 9)?,
        detail: json(row, 10)?,
        device_id: opt_uuid(row, 11)?,
        client_addr: get::<Option<String>>(row, 12)?.and_then(|a| a.parse().ok()),
    })
}

const CUSTOMERS_SQL: &str = "
    SELECT created_at, kind, key, customer_id, user_id, stripe_customer_id, email
      FROM (SELECT c.created_at, 0 AS kind, c.id AS key, c.id AS customer_id, c.user_id, c.stripe_customer_id,
                   c.email
              FROM customers c
             WHERE ?1 IS NULL OR c.user_id = ?1 OR c.stripe_customer_id = ?1 OR lower(c.email) = ?2
            UNION ALL
            SELECT min(l.created_at), 1, l.user_id, NULL, l.user_id, NULL, NULL
              FROM licenses l
             WHERE l.source = 'manual' AND l.user_id IS NOT NULL AND (?1 IS NULL OR l.user_id = ?1)
               AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.user_id = l.user_id)
             GROUP BY l.user_id) AS x
     WHERE ?3 IS NULL OR (x.created_at, x.kind, x.key) < (?3, ?4, ?5)
     ORDER BY x.created_at DESC, x.kind DESC, x.key DESC LIMIT ?6";

fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("ids serialize")
}

/// As on PostgreSQL: [`crate::domain::License::effective_status`] at `?4`.
const EFFECTIVE_STATUS: &str = "CASE
        WHEN l.status = 'revoked' THEN 'revoked'
        WHEN (CASE WHEN l.source = 'manual' THEN l.expires_at ELSE l.expires_at_override END) <= ?4 THEN 'expired'
        WHEN l.status = 'active' AND l.grace_ends_at <= ?4 THEN 'suspended'
        ELSE l.status END";

fn listed_from_row(row: &Row<'_>) -> Result<ListedLicense, StoreError> {
    Ok(ListedLicense { record: license_record_from_row(row)?, device_count: get(row, LICENSE_COLUMN_COUNT + 3)? })
}

impl AdminReadStore for SqliteStore {
    async fn licenses_page(
        &self,
        filter: &LicenseFilter,
        now: Timestamp,
        after: Option<&LicenseCursor>,
        limit: i64,
    ) -> Result<Vec<ListedLicense>, StoreError> {
        let limit = checked_limit(limit)?;
        let (user_id, plan) = (filter.user_id.clone(), filter.plan.clone());
        let status = filter.status.map(|s| s.as_str());
        let now = micros(now)?;
        let search = filter.search.clone();
        let (text, key_hash, id) = match search {
            Some(s) => (Some(s.text), s.key_hash, s.id.map(|id| id.to_string())),
            None => (None, None, None),
        };
        let at = after.map(|c| micros(c.created_at)).transpose()?;
        let last = after.map(|c| c.id.to_string());
        // As on PostgreSQL, the keyset condition is a range only when the
        // statement does not also allow its absence: after a cursor, the
        // index is entered at the cursor rather than scanned from the top.
        let keyset = if at.is_some() { "(l.created_at, l.id) < (?8, ?9)" } else { "?8 IS NULL AND ?9 IS NULL" };
        self.read(move |conn| {
            // As on PostgreSQL: the page is cut from `licenses` alone, then joined.
            let sql = format!(
                "SELECT {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at, l.updated_at,
                        (SELECT count(*) FROM devices d WHERE d.license_id = l.id AND d.status = 'active')
                   FROM (SELECT l.* FROM licenses l
                          WHERE (?1 IS NULL OR l.user_id = ?1
                                 OR (l.user_id IS NULL AND l.subscription_id IN (
                                       SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                                        WHERE c.user_id = ?1)))
                            AND (?2 IS NULL OR l.plan_id = ?2)
                            AND (?3 IS NULL OR {EFFECTIVE_STATUS} = ?3)
                            AND (?5 IS NULL OR l.key_hash = ?6 OR l.id = ?7 OR l.user_id = ?5
                                 OR l.subscription_id IN (
                                       SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                                        WHERE s.stripe_subscription_id = ?5 OR c.stripe_customer_id = ?5
                                           OR c.user_id = ?5)
                                 OR EXISTS (SELECT 1 FROM devices d
                                             WHERE d.license_id = l.id AND (d.fingerprint = ?5 OR d.name = ?5)))
                            AND {keyset}
                          ORDER BY l.created_at DESC, l.id DESC LIMIT ?10) AS l
                   LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id
                  ORDER BY l.created_at DESC, l.id DESC"
            );
            query(conn, &sql, params![user_id, plan, status, now, text, key_hash, id, at, last, limit], listed_from_row)
        })
        .await
    }

    async fn license_detail(&self, license_id: Uuid) -> Result<Option<LicenseDetail>, StoreError> {
        let license_id = license_id.to_string();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at, l.updated_at,
                        (SELECT count(*) FROM devices d WHERE d.license_id = l.id AND d.status = 'active')
                   FROM licenses l
                   LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id
                  WHERE l.id = ?1"
            );
            let Some(listed) = query_opt(conn, &sql, [&license_id], listed_from_row)? else { return Ok(None) };
            let sql =
                format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = ?1 ORDER BY d.activated_at, d.id");
            let devices = query(conn, &sql, [&license_id], device_from_row)?;
            let subscription = match listed.record.license.subscription_id {
                Some(id) => {
                    let sql = format!(
                        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                          WHERE s.id = ?1"
                    );
                    query_opt(conn, &sql, [id.to_string()], subscription_from_row)?
                }
                None => None,
            };
            Ok(Some(LicenseDetail { listed, devices, subscription }))
        })
        .await
    }

    async fn stripe_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        after: Option<&DeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<StripeDelivery>, StoreError> {
        let limit = checked_limit(limit)?;
        let status = status.map(DeliveryStatus::as_str);
        let at = after.map(|c| micros(c.received_at)).transpose()?;
        let id = after.map(|c| c.id.clone());
        let keyset = if at.is_some() { "(received_at, id) < (?2, ?3)" } else { "?2 IS NULL AND ?3 IS NULL" };
        self.read(move |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_events
                  WHERE CASE ?1 WHEN 'duplicate' THEN duplicates > 0 ELSE ?1 IS NULL OR status = ?1 END
                    AND {keyset}
                  ORDER BY received_at DESC, id DESC LIMIT ?4"
            );
            query(conn, &sql, params![status, at, id, limit], delivery_from_row)
        })
        .await
    }

    async fn stripe_delivery(&self, event_id: &str) -> Result<Option<StripeDelivery>, StoreError> {
        let event_id = event_id.to_owned();
        self.read(move |conn| {
            let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_events WHERE id = ?1");
            query_opt(conn, &sql, [event_id], delivery_from_row)
        })
        .await
    }

    async fn stored_delivery(&self, event_id: &str) -> Result<Option<StoredDelivery>, StoreError> {
        let event_id = event_id.to_owned();
        self.read(move |conn| {
            query_opt(conn, "SELECT status, payload FROM webhook_events WHERE id = ?1", [event_id], |r| {
                Ok(StoredDelivery { status: get(r, 0)?, payload: get(r, 1)? })
            })
        })
        .await
    }

    async fn audit_entries(
        &self,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = checked_limit(limit)?;
        let license_id = filter.license_id.map(|l| l.to_string());
        let user_id = filter.user_id.clone();
        let at = after.map(|c| micros(c.at)).transpose()?;
        let (rank, id) = (after.map(|c| c.source.rank()), after.map(|c| c.id));
        let sql = audit_sql(after.is_some());
        self.read(move |conn| query(conn, &sql, params![license_id, user_id, at, rank, id, limit], audit_from_row))
            .await
    }

    async fn customers(
        &self,
        q: Option<&str>,
        after: Option<&CustomerCursor>,
        limit: i64,
    ) -> Result<Vec<CustomerRecord>, StoreError> {
        let limit = checked_limit(limit)?;
        let (q, email) = (q.map(str::to_owned), q.map(str::to_ascii_lowercase));
        let at = after.map(|c| micros(c.created_at)).transpose()?;
        let (kind, key) = (after.map(|c| c.kind), after.map(|c| c.key.clone()));
        self.read(move |conn| {
            query(conn, CUSTOMERS_SQL, params![q, email, at, kind, key, limit], |r| {
                Ok(CustomerRecord {
                    position: CustomerCursor { created_at: time(r, 0)?, kind: get(r, 1)?, key: get(r, 2)? },
                    customer_id: opt_uuid(r, 3)?,
                    user_id: get(r, 4)?,
                    stripe_customer_id: get(r, 5)?,
                    email: get(r, 6)?,
                })
            })
        })
        .await
    }

    async fn subscriptions_of_customers(&self, customer_ids: &[Uuid]) -> Result<Vec<(Uuid, Subscription)>, StoreError> {
        let ids = json_list(customer_ids);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SUBSCRIPTION_COLUMNS}, c.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                  WHERE c.id IN (SELECT value FROM json_each(?1)) ORDER BY s.created_at DESC, s.id DESC"
            );
            query(conn, &sql, [ids], |r| Ok((uuid(r, SUBSCRIPTION_COLUMN_COUNT)?, subscription_from_row(r)?)))
        })
        .await
    }

    async fn licenses_of_customers(
        &self,
        customer_ids: &[Uuid],
        user_ids: &[String],
    ) -> Result<Vec<LicenseSummary>, StoreError> {
        let (customer_ids, user_ids) = (json_list(customer_ids), json_list(user_ids));
        self.read(move |conn| {
            query(
                conn,
                "SELECT l.id, l.source, l.subscription_id, s.customer_id, COALESCE(l.user_id, c.user_id), l.status,
                        l.plan_id, l.max_devices, l.expires_at, l.created_at, l.kind, l.updates_until, l.trial
                   FROM licenses l
                   LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id
                  WHERE s.customer_id IN (SELECT value FROM json_each(?1))
                     OR (l.subscription_id IS NULL AND l.user_id IN (SELECT value FROM json_each(?2)))
                  ORDER BY l.created_at DESC, l.id DESC",
                [customer_ids, user_ids],
                |r| {
                    Ok(LicenseSummary {
                        id: uuid(r, 0)?,
                        source: get(r, 1)?,
                        subscription_id: opt_uuid(r, 2)?,
                        customer_id: opt_uuid(r, 3)?,
                        user_id: get(r, 4)?,
                        status: get(r, 5)?,
                        plan_id: get(r, 6)?,
                        max_devices: get(r, 7)?,
                        expires_at: opt_time(r, 8)?,
                        created_at: time(r, 9)?,
                        kind: get(r, 10)?,
                        updates_until: opt_time(r, 11)?,
                        trial: get(r, 12)?,
                    })
                },
            )
        })
        .await
    }
}
