//! [`AdminReadStore`] on PostgreSQL.

use super::{
    device_from_row, license_record_from_row_at, query, query_opt, subscription_from_row, PgStore, DEVICE_COLUMNS,
    LICENSE_COLUMNS, LICENSE_COLUMN_COUNT, SUBSCRIPTION_COLUMNS,
};
use crate::domain::cursor::{AuditCursor, AuditSource, CustomerCursor, DeliveryCursor, LicenseCursor};
use crate::domain::{Subscription, Timestamp};
use crate::storage::admin_reads::{
    AdminReadStore, AuditFilter, AuditRecord, CustomerRecord, DeliveryStatus, LicenseDetail, LicenseFilter,
    LicenseSummary, ListedLicense, StoredDelivery, StripeDelivery,
};
use crate::storage::StoreError;
use tokio_postgres::Row;
use uuid::Uuid;

const DELIVERY_COLUMNS: &str =
    "id, type, object_id, status, attempts, last_error, note, duplicates, received_at, processed_at";

fn delivery_from_row(row: &Row) -> StripeDelivery {
    StripeDelivery {
        id: row.get(0),
        kind: row.get(1),
        object_id: row.get(2),
        status: row.get(3),
        attempts: row.get(4),
        error: row.get(5),
        note: row.get(6),
        duplicates: row.get(7),
        received_at: row.get(8),
        processed_at: row.get(9),
    }
}

/// The three audit tables as one walk. Each branch is cut to the page size
/// on its own index before the union is sorted, so a page reads at most
/// three pages of rows. A subscription change is about its subscription's
/// license; a user's entries are those of the subscriptions of the user's
/// customers and of licenses issued to the user by hand.
const AUDIT_SQL_TEMPLATE: &str = "
    WITH users_subscriptions AS (
        SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id WHERE c.user_id = $2::text)
    SELECT rank, id, created_at, actor, kind, license_id, subscription_id, from_status, to_status,
           stripe_event_id, detail, device_id, client_addr
      FROM (SELECT 0::bigint AS rank, h.id, h.created_at, h.actor, h.kind, l.id AS license_id, h.subscription_id,
                   h.from_status, h.to_status, h.stripe_event_id, h.detail, NULL::uuid AS device_id,
                   h.client_addr
              FROM subscription_changes h LEFT JOIN licenses l ON l.subscription_id = h.subscription_id
             WHERE ($1::uuid IS NULL OR l.id = $1::uuid)
               AND ($2::text IS NULL OR h.subscription_id IN (SELECT id FROM users_subscriptions))
               AND {keyset_h}
             ORDER BY h.created_at DESC, h.id DESC LIMIT $6) AS sub
    UNION ALL
    SELECT rank, id, created_at, actor, kind, license_id, subscription_id, from_status, to_status,
           stripe_event_id, detail, device_id, client_addr
      FROM (SELECT 1::bigint AS rank, d.id, d.created_at, d.actor, d.kind, d.license_id, l.subscription_id,
                   NULL::text AS from_status, NULL::text AS to_status, NULL::text AS stripe_event_id, d.detail,
                   d.device_id, d.client_addr
              FROM device_changes d JOIN licenses l ON l.id = d.license_id
             WHERE ($1::uuid IS NULL OR d.license_id = $1::uuid)
               AND ($2::text IS NULL OR l.user_id = $2::text
                    OR l.subscription_id IN (SELECT id FROM users_subscriptions))
               AND {keyset_d}
             ORDER BY d.created_at DESC, d.id DESC LIMIT $6) AS dev
    UNION ALL
    SELECT rank, id, created_at, actor, kind, license_id, subscription_id, from_status, to_status,
           stripe_event_id, detail, device_id, client_addr
      FROM (SELECT 2::bigint AS rank, x.id, x.created_at, x.actor, x.kind, x.license_id, l.subscription_id,
                   NULL::text AS from_status, NULL::text AS to_status, NULL::text AS stripe_event_id, x.detail,
                   NULL::uuid AS device_id, x.client_addr
              FROM license_changes x JOIN licenses l ON l.id = x.license_id
             WHERE ($1::uuid IS NULL OR x.license_id = $1::uuid)
               AND ($2::text IS NULL OR l.user_id = $2::text
                    OR l.subscription_id IN (SELECT id FROM users_subscriptions))
               AND {keyset_x}
             ORDER BY x.created_at DESC, x.id DESC LIMIT $6) AS lic
    ORDER BY created_at DESC, rank DESC, id DESC LIMIT $6";

/// [`AUDIT_SQL_TEMPLATE`] for the first page or the pages after a cursor.
/// After one, each branch reads its index from the cursor's instant on
/// (`created_at <= $3`, a range) and drops the boundary rows already
/// listed; a single statement with `$3 IS NULL OR …` would, under a generic
/// plan, rescan from the newest row on every page. The first page names
/// `$3`–`$5` only so that their types are known.
fn audit_sql(after_cursor: bool) -> String {
    let mut sql = AUDIT_SQL_TEMPLATE.to_owned();
    for (alias, rank) in [("h", 0), ("d", 1), ("x", 2)] {
        let keyset = match after_cursor {
            true => format!(
                "{alias}.created_at <= $3::timestamptz
                 AND ({alias}.created_at, {rank}::bigint, {alias}.id) < ($3::timestamptz, $4::bigint, $5::bigint)"
            ),
            false => "$3::timestamptz IS NULL AND $4::bigint IS NULL AND $5::bigint IS NULL".to_owned(),
        };
        sql = sql.replace(&format!("{{keyset_{alias}}}"), &keyset);
    }
    sql
}

static FIRST_AUDIT_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| audit_sql(false));
static NEXT_AUDIT_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| audit_sql(true));

fn audit_from_row(row: &Row) -> Result<AuditRecord, StoreError> {
    let rank: i64 = row.get(0);
    Ok(AuditRecord {
        source: AuditSource::from_rank(rank).ok_or_else(|| StoreError::Corrupt("unknown audit source".into()))?,
        id: row.get(1),
        at: row.get(2),
        actor: row.get(3),
        kind: row.get(4),
        license_id: row.get(5),
        subscription_id: row.get(6),
        from_status: row.get(7),
        to_status: row.get(8),
        stripe_event_id: row.get(9),
        detail: row.get(10),
        device_id: row.get(11),
        client_addr: row.get::<_, Option<String>>(12).and_then(|a| a.parse().ok()),
    })
}

/// Stripe customers, and users known only from manual licenses (first seen
/// with their first license), as one walk.
const CUSTOMERS_SQL: &str = "
    SELECT created_at, kind, key, customer_id, user_id, stripe_customer_id, email
      FROM (SELECT c.created_at, 0::bigint AS kind, c.id::text AS key, c.id AS customer_id, c.user_id,
                   c.stripe_customer_id, c.email
              FROM customers c
             WHERE $1::text IS NULL OR c.user_id = $1::text OR c.stripe_customer_id = $1::text
                   OR lower(c.email) = $2::text
            UNION ALL
            SELECT min(l.created_at), 1::bigint, l.user_id, NULL::uuid, l.user_id, NULL::text, NULL::text
              FROM licenses l
             WHERE l.source = 'manual' AND l.user_id IS NOT NULL AND ($1::text IS NULL OR l.user_id = $1::text)
               AND NOT EXISTS (SELECT FROM customers c WHERE c.user_id = l.user_id)
             GROUP BY l.user_id) AS x
     WHERE $3::timestamptz IS NULL OR (x.created_at, x.kind, x.key) < ($3::timestamptz, $4::bigint, $5::text)
     ORDER BY x.created_at DESC, x.kind DESC, x.key DESC LIMIT $6";

/// [`crate::domain::License::effective_status`] at `$4`, in SQL, so that a
/// status filter pages like any other (the conformance suite holds the two
/// to the same answers).
const EFFECTIVE_STATUS: &str = "CASE
        WHEN l.status = 'revoked' THEN 'revoked'
        WHEN (CASE WHEN l.source = 'manual' THEN l.expires_at ELSE l.expires_at_override END) <= $4 THEN 'expired'
        WHEN l.status = 'active' AND l.grace_ends_at <= $4 THEN 'suspended'
        ELSE l.status END";

/// The license listing, as two statements: the first page, and the pages
/// after a cursor with the keyset condition as an index range. One
/// statement with `$8 IS NULL OR …` would serve both, but once PostgreSQL
/// settles on a generic plan that condition becomes a filter, and every
/// page rescans the index from the newest license (an export of n licenses
/// would read n²/500 rows). The first page names `$8` and `$9` only so
/// that their types are known.
fn licenses_page_sql(keyset: &str) -> String {
    // The page is cut from `licenses` alone, every filter a condition on
    // the license row (through subqueries for its customer and
    // subscription), so that the index is read backwards and stops after
    // the page; only then are the page's rows joined and their devices
    // counted. Joined first, PostgreSQL would join, count and sort every
    // license for each page.
    format!(
        "SELECT {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at, l.updated_at,
                (SELECT count(*) FROM devices d WHERE d.license_id = l.id AND d.status = 'active')
           FROM (SELECT l.* FROM licenses l
                  WHERE ($1::text IS NULL OR l.user_id = $1::text
                         OR (l.user_id IS NULL AND l.subscription_id IN (
                               SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                                WHERE c.user_id = $1::text)))
                    AND ($2::text IS NULL OR l.plan_id = $2::text)
                    AND ($3::text IS NULL OR {EFFECTIVE_STATUS} = $3::text)
                    AND ($5::text IS NULL OR l.key_hash = $6::bytea OR l.id = $7::uuid OR l.user_id = $5::text
                         OR l.subscription_id IN (
                               SELECT s.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                                WHERE s.stripe_subscription_id = $5::text OR c.stripe_customer_id = $5::text
                                   OR (c.user_id = $5::text))
                         OR EXISTS (SELECT FROM devices d
                                     WHERE d.license_id = l.id AND (d.fingerprint = $5::text OR d.name = $5::text)))
                    AND {keyset}
                  ORDER BY l.created_at DESC, l.id DESC LIMIT $10) AS l
           LEFT JOIN subscriptions s ON s.id = l.subscription_id
           LEFT JOIN customers c ON c.id = s.customer_id
          ORDER BY l.created_at DESC, l.id DESC"
    )
}

static FIRST_LICENSES_PAGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| licenses_page_sql("$8::timestamptz IS NULL AND $9::uuid IS NULL"));
static NEXT_LICENSES_PAGE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| licenses_page_sql("(l.created_at, l.id) < ($8::timestamptz, $9::uuid)"));

fn listed_from_row(row: &Row) -> Result<ListedLicense, StoreError> {
    Ok(ListedLicense { record: license_record_from_row_at(row, 0)?, device_count: row.get(LICENSE_COLUMN_COUNT + 3) })
}

impl AdminReadStore for PgStore {
    async fn licenses_page(
        &self,
        filter: &LicenseFilter,
        now: Timestamp,
        after: Option<&LicenseCursor>,
        limit: i64,
    ) -> Result<Vec<ListedLicense>, StoreError> {
        let conn = self.conn().await?;
        let status = filter.status.map(|s| s.as_str());
        let search = filter.search.as_ref();
        let (text, key_hash, id) =
            (search.map(|s| s.text.as_str()), search.and_then(|s| s.key_hash.as_deref()), search.and_then(|s| s.id));
        let (at, last) = (after.map(|c| c.created_at), after.map(|c| c.id));
        let sql: &str = if after.is_some() { &NEXT_LICENSES_PAGE } else { &FIRST_LICENSES_PAGE };
        let rows = query(
            &conn,
            sql,
            &[
                &filter.user_id.as_deref(),
                &filter.plan.as_deref(),
                &status,
                &now,
                &text,
                &key_hash,
                &id,
                &at,
                &last,
                &limit,
            ],
        )
        .await?;
        rows.iter().map(listed_from_row).collect()
    }

    async fn license_detail(&self, license_id: uuid::Uuid) -> Result<Option<LicenseDetail>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {LICENSE_COLUMNS}, COALESCE(l.user_id, c.user_id), l.created_at, l.updated_at,
                    (SELECT count(*) FROM devices d WHERE d.license_id = l.id AND d.status = 'active')
               FROM licenses l
               LEFT JOIN subscriptions s ON s.id = l.subscription_id
               LEFT JOIN customers c ON c.id = s.customer_id
              WHERE l.id = $1"
        );
        let Some(row) = query_opt(&conn, &sql, &[&license_id]).await? else { return Ok(None) };
        let listed = listed_from_row(&row)?;
        let sql =
            format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = $1 ORDER BY d.activated_at, d.id");
        let devices =
            query(&conn, &sql, &[&license_id]).await?.iter().map(device_from_row).collect::<Result<_, _>>()?;
        let subscription = match listed.record.license.subscription_id {
            Some(id) => {
                let sql = format!(
                    "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                      WHERE s.id = $1"
                );
                query_opt(&conn, &sql, &[&id]).await?.as_ref().map(subscription_from_row).transpose()?
            }
            None => None,
        };
        Ok(Some(LicenseDetail { listed, devices, subscription }))
    }

    async fn stripe_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        after: Option<&DeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<StripeDelivery>, StoreError> {
        let conn = self.conn().await?;
        // Two statements, as for licenses: after a cursor, an index range.
        let keyset = match after {
            Some(_) => "(received_at, id) < ($2::timestamptz, $3::text)",
            None => "$2::timestamptz IS NULL AND $3::text IS NULL",
        };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_events
              WHERE CASE $1::text WHEN 'duplicate' THEN duplicates > 0 ELSE $1::text IS NULL OR status = $1::text END
                AND {keyset}
              ORDER BY received_at DESC, id DESC LIMIT $4"
        );
        let status = status.map(DeliveryStatus::as_str);
        let (at, id) = (after.map(|c| c.received_at), after.map(|c| c.id.as_str()));
        Ok(query(&conn, &sql, &[&status, &at, &id, &limit]).await?.iter().map(delivery_from_row).collect())
    }

    async fn stripe_delivery(&self, event_id: &str) -> Result<Option<StripeDelivery>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_events WHERE id = $1");
        Ok(query_opt(&conn, &sql, &[&event_id]).await?.as_ref().map(delivery_from_row))
    }

    async fn stored_delivery(&self, event_id: &str) -> Result<Option<StoredDelivery>, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(&conn, "SELECT status, payload FROM webhook_events WHERE id = $1", &[&event_id]).await?;
        Ok(row.map(|r| StoredDelivery { status: r.get(0), payload: r.get(1) }))
    }

    async fn audit_entries(
        &self,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.conn().await?;
        let (at, rank, id) = (after.map(|c| c.at), after.map(|c| c.source.rank()), after.map(|c| c.id));
        let user_id = filter.user_id.as_deref();
        let sql: &str = if after.is_some() { &NEXT_AUDIT_PAGE } else { &FIRST_AUDIT_PAGE };
        let rows = query(&conn, sql, &[&filter.license_id, &user_id, &at, &rank, &id, &limit]).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn customers(
        &self,
        q: Option<&str>,
        after: Option<&CustomerCursor>,
        limit: i64,
    ) -> Result<Vec<CustomerRecord>, StoreError> {
        let conn = self.conn().await?;
        let email = q.map(str::to_ascii_lowercase);
        let (at, kind, key) = (after.map(|c| c.created_at), after.map(|c| c.kind), after.map(|c| c.key.as_str()));
        let rows = query(&conn, CUSTOMERS_SQL, &[&q, &email, &at, &kind, &key, &limit]).await?;
        Ok(rows
            .iter()
            .map(|r| CustomerRecord {
                position: CustomerCursor { created_at: r.get(0), kind: r.get(1), key: r.get(2) },
                customer_id: r.get(3),
                user_id: r.get(4),
                stripe_customer_id: r.get(5),
                email: r.get(6),
            })
            .collect())
    }

    async fn subscriptions_of_customers(&self, customer_ids: &[Uuid]) -> Result<Vec<(Uuid, Subscription)>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLUMNS}, c.id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
              WHERE c.id = ANY($1) ORDER BY s.created_at DESC, s.id DESC"
        );
        let rows = query(&conn, &sql, &[&customer_ids]).await?;
        rows.iter().map(|r| Ok((r.get(super::SUBSCRIPTION_COLUMN_COUNT), subscription_from_row(r)?))).collect()
    }

    async fn licenses_of_customers(
        &self,
        customer_ids: &[Uuid],
        user_ids: &[String],
    ) -> Result<Vec<LicenseSummary>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT l.id, l.source, l.subscription_id, s.customer_id, COALESCE(l.user_id, c.user_id), l.status,
                    l.plan_id, l.max_devices, l.expires_at, l.created_at, l.kind, l.updates_until, l.trial
               FROM licenses l
               LEFT JOIN subscriptions s ON s.id = l.subscription_id
               LEFT JOIN customers c ON c.id = s.customer_id
              WHERE s.customer_id = ANY($1) OR (l.subscription_id IS NULL AND l.user_id = ANY($2))
              ORDER BY l.created_at DESC, l.id DESC",
            &[&customer_ids, &user_ids],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| LicenseSummary {
                id: r.get(0),
                source: r.get(1),
                subscription_id: r.get(2),
                customer_id: r.get(3),
                user_id: r.get(4),
                status: r.get(5),
                plan_id: r.get(6),
                max_devices: r.get(7),
                expires_at: r.get(8),
                created_at: r.get(9),
                kind: r.get(10),
                updates_until: r.get(11),
                trial: r.get(12),
            })
            .collect())
    }
}
