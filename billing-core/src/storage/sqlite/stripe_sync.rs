//! [`Store::sync_stripe`](crate::storage::Store::sync_stripe) on SQLite:
//! load, decide and apply in one blocking call on the writer connection,
//! inside one `BEGIN IMMEDIATE` transaction. The write lock is the lock of
//! every row: nothing needs locking one by one.

use super::{
    device_from_row, execute, get, json_text, license_from_row, max_devices_param, micros, opt_micros, query,
    query_opt, subscription_from_row, uuid, SqliteStore, DEVICE_COLUMNS, LICENSE_COLUMNS, SUBSCRIPTION_COLUMNS,
    SUBSCRIPTION_COLUMN_COUNT,
};
use crate::domain::{PaymentStatus, SubscriptionStatus};
use crate::storage::changeset::DeviceActivation;
use crate::storage::stripe_sync::{
    Changeset, DeliveryRecord, DisputeRecord, HeldCustomer, HeldInvoiceCharge, HeldPurchase, HeldSubscription,
    StripeBundle, StripeKeys,
};
use crate::storage::{max_devices_column, OutboxMessage, StoreError};
use deadpool_sqlite::rusqlite::{params, Connection};
use serde_json::Value;
use std::collections::HashSet;
use uuid::Uuid;

pub(super) async fn sync_stripe<T, F>(store: &SqliteStore, keys: StripeKeys, decide: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(StripeBundle) -> (Changeset, T) + Send + 'static,
{
    store
        .unit_of_work(move |conn, now| {
            let (bundle, reclaimed) = load(conn, now, &keys)?;
            let (changes, decided) = decide(bundle);
            apply(conn, now, &changes, &reclaimed)?;
            Ok((decided, !changes.outbox.is_empty()))
        })
        .await
}

fn load(conn: &Connection, now: i64, keys: &StripeKeys) -> Result<(StripeBundle, HashSet<String>), StoreError> {
    let mut bundle = StripeBundle::default();
    let mut reclaimed = HashSet::new();
    for d in &keys.deliveries {
        // New, or failed before and claimed again: `attempts` tells which.
        let claimed = query_opt(
            conn,
            "INSERT INTO webhook_events (id, type, created, api_version, status, received_at, processed_at,
                    object_id, payload)
             VALUES (?1, ?2, ?3, ?4, 'processed', ?5, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE
                SET status = 'processed', attempts = webhook_events.attempts + 1, note = NULL, last_error = NULL,
                    processed_at = ?5, object_id = excluded.object_id, payload = excluded.payload
              WHERE webhook_events.status = 'failed'
             RETURNING attempts",
            params![d.id, d.kind, d.created, d.api_version, now, d.object_id, d.payload.as_ref()],
            |row| get::<i64>(row, 0),
        )?;
        if let Some(attempts) = claimed {
            if attempts > 1 {
                reclaimed.insert(d.id.clone());
            }
            bundle.claimed.insert(d.id.clone());
        }
    }
    let subscription_sql = format!(
        "SELECT {SUBSCRIPTION_COLUMNS}, s.customer_id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
          WHERE s.stripe_subscription_id = ?1"
    );
    let license_sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.subscription_id = ?1");
    let license_by_id = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.id = ?1");
    let devices_sql =
        format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = ?1 ORDER BY d.activated_at, d.id");
    // What paid the invoices a charge names, and so the subscriptions to
    // hold with the others.
    let mut subscriptions = keys.subscriptions.clone();
    for key in &keys.invoice_charges {
        let sql = "SELECT ic.payment_key, ic.stripe_invoice_id, ic.stripe_charge_id, p.stripe_subscription_id
                     FROM invoice_charges ic LEFT JOIN payments p ON p.stripe_invoice_id = ic.stripe_invoice_id
                    WHERE ic.payment_key = ?1 OR ic.stripe_charge_id = ?1";
        let rows = query(conn, sql, [key], |row| {
            Ok((
                get::<String>(row, 0)?,
                HeldInvoiceCharge { invoice_id: get(row, 1)?, charge_id: get(row, 2)?, subscription: get(row, 3)? },
            ))
        })?;
        for (payment_key, held) in rows {
            subscriptions.extend(held.subscription.clone());
            bundle.invoice_charges.insert(payment_key, held);
        }
    }
    for stripe_id in &subscriptions {
        let held = query_opt(conn, &subscription_sql, [stripe_id], |row| {
            Ok(HeldSubscription {
                subscription: subscription_from_row(row)?,
                customer_id: uuid(row, SUBSCRIPTION_COLUMN_COUNT)?,
            })
        })?;
        if let Some(held) = held {
            let license = query_opt(conn, &license_sql, [held.subscription.id.to_string()], license_from_row)?;
            if let Some(license) = license {
                let devices = query(conn, &devices_sql, [license.id.to_string()], device_from_row)?;
                bundle.devices.insert(license.id, devices);
                bundle.licenses.insert(held.subscription.id, license);
            }
            bundle.subscriptions.insert(stripe_id.clone(), held);
        }
        let paid = "SELECT EXISTS (SELECT 1 FROM payments WHERE stripe_subscription_id = ?1 AND status = 'paid')";
        if query_opt(conn, paid, [stripe_id], |row| get::<bool>(row, 0))?.unwrap_or(false) {
            bundle.paid_subscriptions.insert(stripe_id.clone());
        }
    }
    for stripe_id in &keys.customers {
        let sql = "SELECT id, user_id, email, email_created FROM customers WHERE stripe_customer_id = ?1";
        let held = query_opt(conn, sql, [stripe_id], |row| {
            Ok(HeldCustomer {
                id: uuid(row, 0)?,
                user_id: get(row, 1)?,
                email: get(row, 2)?,
                email_created: get(row, 3)?,
            })
        })?;
        if let Some(held) = held {
            bundle.customers.insert(stripe_id.clone(), held);
        }
    }
    for invoice in &keys.invoices {
        let sql = "SELECT status FROM payments WHERE stripe_invoice_id = ?1";
        if let Some(status) = query_opt(conn, sql, [invoice], |row| get::<String>(row, 0))? {
            let status = PaymentStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown payment status {status:?}")))?;
            bundle.payments.insert(invoice.clone(), status);
        }
    }
    for session in &keys.checkout_sessions {
        let sql = "SELECT license_id, stripe_payment_intent_id FROM purchases WHERE stripe_checkout_session_id = ?1";
        let held = query_opt(conn, sql, [session], |row| Ok((get::<String>(row, 0)?, get::<Option<String>>(row, 1)?)))?;
        if let Some((license_id, payment_intent)) = held {
            let license = query_opt(conn, &license_by_id, [license_id], license_from_row)?
                .ok_or_else(|| StoreError::Corrupt("a purchase without its license".into()))?;
            bundle.purchases.insert(session.clone(), HeldPurchase { license, payment_intent });
        }
    }
    for intent in &keys.payment_intents {
        let sql = "SELECT stripe_checkout_session_id, license_id FROM purchases WHERE stripe_payment_intent_id = ?1";
        let held = query_opt(conn, sql, [intent], |row| Ok((get::<String>(row, 0)?, get::<String>(row, 1)?)))?;
        if let Some((session, license_id)) = held {
            let license = query_opt(conn, &license_by_id, [license_id], license_from_row)?
                .ok_or_else(|| StoreError::Corrupt("a purchase without its license".into()))?;
            bundle.purchases.insert(session, HeldPurchase { license, payment_intent: Some(intent.clone()) });
        }
    }
    if !keys.disputes.is_empty() {
        // The group's disputes, and the other open disputes of the licenses
        // their charges paid for.
        let record = |row: &deadpool_sqlite::rusqlite::Row<'_>| {
            Ok((
                get::<String>(row, 0)?,
                DisputeRecord { license_id: uuid(row, 1)?, status: get(row, 2)?, closed: get(row, 3)? },
            ))
        };
        for dispute in &keys.disputes {
            let sql = "SELECT stripe_dispute_id, license_id, status, closed FROM charge_disputes
                        WHERE stripe_dispute_id = ?1";
            bundle.disputes.extend(query(conn, sql, [dispute], record)?);
        }
        let licenses: Vec<String> = bundle
            .purchases
            .values()
            .map(|p| p.license.id)
            .chain(bundle.licenses.values().map(|l| l.id))
            .map(|id| id.to_string())
            .collect();
        for license in licenses {
            let sql = "SELECT stripe_dispute_id, license_id, status, closed FROM charge_disputes
                        WHERE license_id = ?1 AND closed = 0";
            bundle.disputes.extend(query(conn, sql, [license], record)?);
        }
    }
    Ok((bundle, reclaimed))
}

/// Writes the changeset, parents before children, the outbox last.
/// `reclaimed` names the claimed deliveries that had failed before (none
/// outside webhooks).
pub(super) fn apply(conn: &Connection, now: i64, c: &Changeset, reclaimed: &HashSet<String>) -> Result<(), StoreError> {
    for n in &c.new_customers {
        execute(
            conn,
            "INSERT INTO customers (id, stripe_customer_id, user_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![n.id.to_string(), n.stripe_customer_id, n.user_id, now],
        )?;
    }
    for (id, user_id) in &c.customer_links {
        execute(
            conn,
            "UPDATE customers SET user_id = ?2, updated_at = ?3 WHERE id = ?1 AND user_id IS NULL",
            params![id.to_string(), user_id, now],
        )?;
    }
    for (id, email, created) in &c.customer_emails {
        execute(
            conn,
            "UPDATE customers SET email = ?2, email_created = ?3, updated_at = ?4
              WHERE id = ?1 AND (email_created IS NULL OR email_created <= ?3)",
            params![id.to_string(), email, created, now],
        )?;
    }
    for id in &c.deleted_customers {
        execute(
            conn,
            "UPDATE customers SET deleted_at = ?2, updated_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
            params![id.to_string(), now],
        )?;
    }
    for held in &c.subscriptions {
        let (sub, s) = (&held.subscription, &held.subscription.snapshot);
        execute(
            conn,
            "INSERT INTO subscriptions (id, stripe_subscription_id, customer_id, status, plan_id, price_id, item_id,
                    cancel_at_period_end, cancel_at, canceled_at, ended_at, current_period_start,
                    current_period_end, trial_end, metadata_user_id, past_due_since, source_created, created_at,
                    updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18)
             ON CONFLICT (id) DO UPDATE SET
                    customer_id = excluded.customer_id, status = excluded.status, plan_id = excluded.plan_id,
                    price_id = excluded.price_id, item_id = excluded.item_id,
                    cancel_at_period_end = excluded.cancel_at_period_end, cancel_at = excluded.cancel_at,
                    canceled_at = excluded.canceled_at, ended_at = excluded.ended_at,
                    current_period_start = excluded.current_period_start,
                    current_period_end = excluded.current_period_end, trial_end = excluded.trial_end,
                    metadata_user_id = excluded.metadata_user_id, past_due_since = excluded.past_due_since,
                    source_created = excluded.source_created, updated_at = excluded.updated_at",
            params![
                sub.id.to_string(),
                s.stripe_subscription_id,
                held.customer_id.to_string(),
                s.status.as_str(),
                sub.plan_id,
                s.price_id,
                s.item_id,
                s.cancel_at_period_end,
                opt_micros(s.cancel_at)?,
                opt_micros(s.canceled_at)?,
                opt_micros(s.ended_at)?,
                opt_micros(s.current_period_start)?,
                opt_micros(s.current_period_end)?,
                opt_micros(s.trial_end)?,
                s.user_id,
                opt_micros(sub.past_due_since)?,
                sub.source_created,
                now,
            ],
        )?;
    }
    for a in &c.subscription_audit {
        execute(
            conn,
            "INSERT INTO subscription_changes (subscription_id, kind, from_status, to_status, detail, actor,
                    stripe_event_id, created_at, client_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                a.subscription_id.to_string(),
                a.change.kind(),
                a.change.from_status().map(SubscriptionStatus::as_str),
                a.change.to_status().map(SubscriptionStatus::as_str),
                json_text(&a.change.detail()),
                a.actor,
                a.stripe_event_id,
                now,
                a.client_addr.map(|ip| ip.to_string())
            ],
        )?;
    }
    for license in &c.new_licenses {
        insert_license(conn, now, license)?;
    }
    for p in &c.new_purchases {
        execute(
            conn,
            "INSERT INTO purchases (stripe_checkout_session_id, license_id, customer_id, stripe_payment_intent_id,
                    created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                p.stripe_checkout_session_id,
                p.license_id.to_string(),
                p.customer_id.map(|c| c.to_string()),
                p.stripe_payment_intent_id,
                now
            ],
        )?;
    }
    for i in &c.invoice_charges {
        execute(
            conn,
            "INSERT INTO invoice_charges (payment_key, stripe_invoice_id, stripe_charge_id, created_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (payment_key) DO UPDATE
                SET stripe_charge_id = coalesce(invoice_charges.stripe_charge_id, excluded.stripe_charge_id)",
            params![i.payment_key, i.invoice_id, i.charge_id, now],
        )?;
    }
    for (id, t) in &c.license_terms {
        execute(
            conn,
            "UPDATE licenses SET status = ?2, plan_id = ?3, max_devices = ?4, expires_at = ?5, grace_ends_at = ?6,
                    updated_at = ?7
              WHERE id = ?1",
            params![
                id.to_string(),
                t.status.as_str(),
                t.plan_id,
                max_devices_param(t),
                opt_micros(t.expires_at)?,
                opt_micros(t.grace_ends_at)?,
                now
            ],
        )?;
    }
    for license in &c.saved_licenses {
        save_license(conn, now, license)?;
    }
    for (id, d) in &c.disputes {
        execute(
            conn,
            "INSERT INTO charge_disputes (stripe_dispute_id, license_id, status, closed, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (stripe_dispute_id) DO UPDATE
                SET status = excluded.status, closed = excluded.closed, updated_at = excluded.updated_at",
            params![id, d.license_id.to_string(), d.status, d.closed, now],
        )?;
    }
    for a in &c.license_audit {
        execute(
            conn,
            "INSERT INTO license_changes (license_id, kind, actor, detail, created_at, client_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                a.license_id.to_string(),
                a.kind,
                a.actor,
                json_text(&a.detail),
                now,
                a.client_addr.map(|ip| ip.to_string())
            ],
        )?;
    }
    for t in &c.trial_uses {
        execute(
            conn,
            "INSERT INTO trial_uses (plan_id, fingerprint_hash, license_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![t.plan_id, t.fingerprint_hash, t.license_id.to_string(), now],
        )?;
    }
    for p in &c.payments {
        let (pay, paid_at) = (&p.payment, opt_micros(p.payment.paid_at)?);
        if p.new {
            execute(
                conn,
                "INSERT INTO payments (id, stripe_invoice_id, customer_id, stripe_subscription_id, amount, currency,
                        status, paid_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![
                    Uuid::new_v4().to_string(),
                    pay.stripe_invoice_id,
                    p.customer_id.to_string(),
                    pay.stripe_subscription_id,
                    pay.amount,
                    pay.currency,
                    pay.status.as_str(),
                    paid_at,
                    now
                ],
            )?;
        } else {
            execute(
                conn,
                "UPDATE payments SET status = ?2, amount = ?3, paid_at = ?4, updated_at = ?5 WHERE stripe_invoice_id = ?1",
                params![pay.stripe_invoice_id, pay.status.as_str(), pay.amount, paid_at, now],
            )?;
        }
    }
    for DeviceActivation { device: d, token_hash, heartbeat_deadline } in &c.new_devices {
        execute(
            conn,
            "INSERT INTO devices (id, license_id, fingerprint, name, platform, app_version, token_hash, status,
                    activated_at, last_heartbeat_at, created_at, updated_at, heartbeat_deadline, air_gapped)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13)",
            params![
                d.id.to_string(),
                d.license_id.to_string(),
                d.fingerprint,
                d.name,
                d.platform,
                d.app_version,
                token_hash,
                d.status.as_str(),
                micros(d.activated_at)?,
                micros(d.last_heartbeat_at)?,
                now,
                opt_micros(*heartbeat_deadline)?,
                d.air_gapped
            ],
        )?;
    }
    for DeviceActivation { device: d, token_hash, heartbeat_deadline } in &c.reactivated_devices {
        execute(
            conn,
            "UPDATE devices SET name = ?2, platform = ?3, app_version = ?4, token_hash = ?5, status = 'active',
                    activated_at = ?6, last_heartbeat_at = ?7, deactivated_at = NULL, updated_at = ?8,
                    heartbeat_deadline = ?9, air_gapped = ?10
              WHERE id = ?1",
            params![
                d.id.to_string(),
                d.name,
                d.platform,
                d.app_version,
                token_hash,
                micros(d.activated_at)?,
                micros(d.last_heartbeat_at)?,
                now,
                opt_micros(*heartbeat_deadline)?,
                d.air_gapped
            ],
        )?;
    }
    for h in &c.heartbeats {
        execute(
            conn,
            "UPDATE devices SET last_heartbeat_at = ?2, heartbeat_deadline = ?3 WHERE id = ?1",
            params![h.device_id.to_string(), micros(h.at)?, opt_micros(h.heartbeat_deadline)?],
        )?;
    }
    for (id, deadline) in &c.device_deadlines {
        execute(
            conn,
            "UPDATE devices SET heartbeat_deadline = ?2 WHERE id = ?1",
            params![id.to_string(), opt_micros(*deadline)?],
        )?;
    }
    for (id, name) in &c.device_names {
        execute(
            conn,
            "UPDATE devices SET name = ?2, updated_at = ?3 WHERE id = ?1",
            params![id.to_string(), name, now],
        )?;
    }
    for (id, status, at) in &c.device_statuses {
        execute(
            conn,
            "UPDATE devices SET status = ?2, deactivated_at = ?3, updated_at = ?4 WHERE id = ?1",
            params![id.to_string(), status.as_str(), micros(*at)?, now],
        )?;
    }
    for a in &c.device_audit {
        execute(
            conn,
            "INSERT INTO device_changes (device_id, license_id, kind, actor, detail, created_at, client_addr)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                a.device_id.to_string(),
                a.license_id.to_string(),
                a.kind,
                a.actor,
                json_text(&a.detail),
                now,
                a.client_addr.map(|ip| ip.to_string())
            ],
        )?;
    }
    for (id, record) in &c.deliveries {
        match record {
            DeliveryRecord::Noted(note) => execute(
                conn,
                "UPDATE webhook_events SET status = 'processed', note = ?2, last_error = NULL, processed_at = ?3
                  WHERE id = ?1",
                params![id, note, now],
            )?,
            DeliveryRecord::Ignored => execute(
                conn,
                "UPDATE webhook_events SET status = 'ignored', note = NULL, last_error = NULL, processed_at = ?2
                  WHERE id = ?1",
                params![id, now],
            )?,
            // What the claim did is undone: a new row goes, a failed one is
            // failed again, so the next claim is its next attempt.
            DeliveryRecord::Released(why) if reclaimed.contains(id) => execute(
                conn,
                "UPDATE webhook_events SET status = 'failed', attempts = attempts - 1, last_error = ?2 WHERE id = ?1",
                params![id, why],
            )?,
            DeliveryRecord::Released(_) => execute(conn, "DELETE FROM webhook_events WHERE id = ?1", [id])?,
        };
    }
    for message in &c.outbox {
        enqueue(conn, now, message)?;
    }
    Ok(())
}

/// Stores a newly issued license.
pub(super) fn insert_license(conn: &Connection, now: i64, license: &crate::domain::License) -> Result<(), StoreError> {
    let (t, o) = (&license.terms, &license.overrides);
    execute(
        conn,
        "INSERT INTO licenses (id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at,
                grace_ends_at, created_at, updated_at, source, user_id, entitlements, metadata,
                max_devices_override, expires_at_override, admin_suspended_at, kind, updates_until, trial)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        params![
            license.id.to_string(),
            license.subscription_id.map(|s| s.to_string()),
            license.key.expose(),
            license.key.lookup_hash(),
            t.status.as_str(),
            t.plan_id,
            max_devices_param(t),
            opt_micros(t.expires_at)?,
            opt_micros(t.grace_ends_at)?,
            now,
            license.source.as_str(),
            license.user_id,
            json_text(&Value::from(license.entitlements.clone())),
            json_text(&Value::Object(license.metadata.clone())),
            o.max_devices.map(max_devices_column),
            opt_micros(o.expires_at)?,
            opt_micros(o.suspended_at)?,
            license.kind.as_str(),
            opt_micros(license.updates_until)?,
            license.trial
        ],
    )?;
    Ok(())
}

/// Stores everything an admin may change on a license: terms,
/// entitlements, metadata and overrides.
fn save_license(conn: &Connection, now: i64, license: &crate::domain::License) -> Result<(), StoreError> {
    let (t, o) = (&license.terms, &license.overrides);
    execute(
        conn,
        "UPDATE licenses SET status = ?2, plan_id = ?3, max_devices = ?4, expires_at = ?5, grace_ends_at = ?6,
                entitlements = ?7, metadata = ?8, max_devices_override = ?9, expires_at_override = ?10,
                admin_suspended_at = ?11, updated_at = ?12, updates_until = ?13, disputed_at = ?14
          WHERE id = ?1",
        params![
            license.id.to_string(),
            t.status.as_str(),
            t.plan_id,
            max_devices_param(t),
            opt_micros(t.expires_at)?,
            opt_micros(t.grace_ends_at)?,
            json_text(&Value::from(license.entitlements.clone())),
            json_text(&Value::Object(license.metadata.clone())),
            o.max_devices.map(max_devices_column),
            opt_micros(o.expires_at)?,
            opt_micros(o.suspended_at)?,
            now,
            opt_micros(license.updates_until)?,
            opt_micros(o.disputed_at)?
        ],
    )?;
    Ok(())
}

/// Appends an outbox row, and the vendor's webhook messages for it (one per
/// live endpoint subscribed to the topic), committed or rolled back with the
/// change. Ids are handed out by the one writer, so they commit in id order.
pub(super) fn enqueue(conn: &Connection, now: i64, message: &OutboxMessage) -> Result<(), StoreError> {
    let (topic, payload) = (message.topic.as_str(), json_text(&message.payload));
    execute(
        conn,
        "INSERT INTO outbox_events (license_id, topic, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![message.license_id.map(|l| l.to_string()), topic, payload, now],
    )?;
    execute(
        conn,
        "INSERT INTO webhook_messages (id, endpoint_id, event_type, payload, event_at, next_attempt_at, created_at)
         SELECT 'msg_' || lower(hex(randomblob(16))), e.id, ?1, ?2, ?3, ?3, ?3
           FROM webhook_endpoints e
          WHERE e.deleted_at IS NULL AND EXISTS (SELECT 1 FROM json_each(e.events) WHERE value IN (?1, '*'))
          ORDER BY e.created_at, e.id",
        params![topic, payload, now],
    )?;
    Ok(())
}
