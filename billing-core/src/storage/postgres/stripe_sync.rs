//! [`Store::sync_stripe`](crate::storage::Store::sync_stripe) on
//! PostgreSQL: the load is one pipelined round trip (`BEGIN`, the claim,
//! every lock and read), the changeset with its `COMMIT` another. Each kind
//! of row is one statement for the whole group (`unnest` of arrays), so a
//! group of N deliveries costs what one did.

use super::{
    device_from_row, license_from_row, max_devices_param, outbox_write, query_error, subscription_from_row, PgStore,
    DEVICE_COLUMNS, LICENSE_COLUMNS, LICENSE_COLUMN_COUNT, SUBSCRIPTION_COLUMNS, SUBSCRIPTION_COLUMN_COUNT,
};
use crate::domain::{PaymentStatus, SubscriptionStatus, Timestamp};
use crate::storage::stripe_sync::{
    Changeset, DeliveryRecord, DisputeRecord, HeldCustomer, HeldInvoiceCharge, HeldPurchase, HeldSubscription,
    StripeBundle, StripeKeys,
};
use crate::storage::StoreError;
use deadpool_postgres::{ClientWrapper, Object};
use serde_json::Value;
use std::collections::HashSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of a pipeline, with owned parameters.
pub(super) struct Statement {
    sql: std::borrow::Cow<'static, str>,
    params: Vec<Param>,
}

impl Statement {
    pub(super) fn new(sql: impl Into<std::borrow::Cow<'static, str>>, params: Vec<Param>) -> Self {
        Self { sql: sql.into(), params }
    }
}

macro_rules! params {
    ($($param:expr),* $(,)?) => { vec![$(Box::new($param) as Param),*] };
}

/// Sends the statements in one round trip and returns each one's rows, or
/// the first failure in order. Every statement goes out on the first poll,
/// in order; one that fails before it is even sent (a parameter that cannot
/// be encoded) stops the rest there, so a `COMMIT` at the end is never sent
/// after a statement the database did not see.
pub(super) async fn pipeline(conn: &ClientWrapper, statements: &[Statement]) -> Result<Vec<Vec<Row>>, StoreError> {
    let mut prepared = Vec::with_capacity(statements.len());
    for s in statements {
        // A round trip only the first time a connection sees the statement.
        prepared.push(conn.prepare_cached(&s.sql).await.map_err(query_error)?);
    }
    let mut running: Vec<_> = prepared
        .iter()
        .zip(statements)
        .map(|(prepared, s)| {
            let params: Vec<&(dyn ToSql + Sync)> = s.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            Box::pin(futures_util::future::maybe_done(async move { conn.query(prepared, &params).await }))
        })
        .collect();
    for statement in &mut running {
        if futures_util::poll!(statement.as_mut()).is_ready() && matches!(statement.as_mut().output_mut(), Some(Err(_)))
        {
            let failed = statement.as_mut().take_output().expect("checked above");
            return Err(query_error(failed.expect_err("checked above")));
        }
    }
    futures_util::future::join_all(running.iter_mut()).await;
    running.iter_mut().map(|statement| statement.as_mut().take_output().expect("joined").map_err(query_error)).collect()
}

/// A connection inside a transaction: rolled back unless committed.
pub(super) struct Open(pub(super) Option<Object>);

impl Open {
    pub(super) fn conn(&self) -> &ClientWrapper {
        self.0.as_ref().expect("open until committed")
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let Some(conn) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if conn.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(conn));
                    }
                });
            }
            Err(_) => drop(Object::take(conn)),
        }
    }
}

pub(super) async fn sync_stripe<T, F>(store: &PgStore, keys: StripeKeys, decide: F) -> Result<T, StoreError>
where
    F: FnOnce(StripeBundle) -> (Changeset, T),
{
    let mut open = Open(Some(store.conn().await?));
    let (bundle, reclaimed) = load(open.conn(), &keys).await?;
    let claimed = !bundle.claimed.is_empty();
    let (changes, decided) = decide(bundle);
    let mut statements = apply_statements(&changes, &reclaimed);
    if statements.is_empty() && !claimed {
        return Ok(decided); // Nothing to keep: dropping `open` rolls back.
    }
    statements.push(Statement::new("COMMIT", params![]));
    // On failure `open` rolls back (a no-op when the database already
    // turned the COMMIT of a failed transaction into a rollback).
    pipeline(open.conn(), &statements).await?;
    drop(open.0.take());
    Ok(decided)
}

/// Claims the deliveries and reads (locking) every row the group touches,
/// in the one lock order: subscription identities, claims, subscriptions,
/// licenses, devices, payments, purchased licenses, disputes. Returns the bundle and which of its claims
/// were failed deliveries claimed again.
async fn load(conn: &ClientWrapper, keys: &StripeKeys) -> Result<(StripeBundle, HashSet<String>), StoreError> {
    let subscriptions: Vec<String> = keys.subscriptions.iter().cloned().collect();
    let customers: Vec<String> = keys.customers.iter().cloned().collect();
    let invoices: Vec<String> = keys.invoices.iter().cloned().collect();
    let sessions: Vec<String> = keys.checkout_sessions.iter().cloned().collect();
    // A session's identity is locked with the subscriptions', so that two
    // deliveries of one checkout cannot both issue its license.
    let mut identities: Vec<String> = subscriptions.iter().chain(&sessions).cloned().collect();
    identities.sort();
    let mut statements = vec![Statement::new("BEGIN", params![])];
    // The transaction's planner settings come first (each statement is
    // planned when it comes). Every lookup of the group is a few
    // dozen keys on a unique index; a plan made from a young table's
    // statistics (or a generic plan, which guesses ten keys) scans the
    // table instead, which cost ~2 ms of PostgreSQL CPU per group at 5,000
    // subscriptions. Penalised plans cost ~1e10, which must not trigger JIT
    // compilation (~100 ms). With index plans whatever the number of keys,
    // the generic plan is as good as any, and planning once per connection
    // is cheaper than for every group.
    statements.push(Statement::new(
        "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true),
                set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)",
        params![],
    ));
    const IDENTITIES: &str = "identities AS MATERIALIZED (
            SELECT count(*) FROM (SELECT pg_advisory_xact_lock(hashtextextended(id, 0))
                                    FROM unnest($1::text[]) AS id) AS locked
        )";
    let claim = !keys.deliveries.is_empty();
    if claim {
        let d = &keys.deliveries;
        // A new delivery is inserted; a failed one is claimed again, also
        // when that failure is still being recorded (the insert waits for
        // it). Anything else was applied already: a duplicate, claimed by
        // no one. Rows are taken in id order, so claims cannot deadlock,
        // and only once the identities are held (the join's one row): the
        // identity of each subscription, also one with no row yet, so that
        // parallel first deliveries cannot both insert it (advisory locks,
        // in array order, which is sorted).
        // `xmax <> 0` tells a row updated from one inserted.
        statements.push(Statement::new(
            format!(
                "WITH {IDENTITIES}
                 INSERT INTO webhook_events (id, type, created, api_version, status, processed_at, object_id, payload)
                 SELECT i.id, i.type, i.created, i.api_version, 'processed', now(), i.object_id, i.payload
                   FROM identities,
                        unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::bytea[])
                            AS i(id, type, created, api_version, object_id, payload)
                  ORDER BY i.id
                 ON CONFLICT (id) DO UPDATE
                    SET status = 'processed', attempts = webhook_events.attempts + 1, note = NULL,
                        last_error = NULL, processed_at = now(), object_id = EXCLUDED.object_id,
                        payload = EXCLUDED.payload
                  WHERE webhook_events.status = 'failed'
                 RETURNING id, xmax <> 0"
            ),
            params![
                identities.clone(),
                d.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
                d.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
                d.iter().map(|c| c.created).collect::<Vec<_>>(),
                d.iter().map(|c| c.api_version.clone()).collect::<Vec<_>>(),
                d.iter().map(|c| c.object_id.clone()).collect::<Vec<_>>(),
                d.iter().map(|c| c.payload.to_vec()).collect::<Vec<_>>(),
            ],
        ));
    } else {
        statements
            .push(Statement::new(format!("WITH {IDENTITIES} SELECT count(*) FROM identities"), params![identities]));
    }
    // The subscriptions of the invoices a charge's recorded payment paid
    // are held with the others: one array, so the lookups stay on the index.
    let charge_keys: Vec<String> = keys.invoice_charges.iter().cloned().collect();
    let with_charges = !charge_keys.is_empty();
    let held_ids = if with_charges {
        "($1::text[] || ARRAY(SELECT p.stripe_subscription_id FROM invoice_charges ic
                                 JOIN payments p ON p.stripe_invoice_id = ic.stripe_invoice_id
                                WHERE (ic.payment_key = ANY ($2) OR ic.stripe_charge_id = ANY ($2))
                                  AND p.stripe_subscription_id IS NOT NULL))"
    } else {
        "$1"
    };
    let subscription_params = || {
        if with_charges {
            params![subscriptions.clone(), charge_keys.clone()]
        } else {
            params![subscriptions.clone()]
        }
    };
    let with_subscriptions = !subscriptions.is_empty() || with_charges;
    if with_subscriptions {
        // Each a statement of its own: one that waited for a lock must see
        // what its holder committed, which a later statement's snapshot does.
        statements.push(Statement::new(
            format!(
                "SELECT {SUBSCRIPTION_COLUMNS}, s.customer_id FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                  WHERE s.stripe_subscription_id = ANY ({held_ids})
                  ORDER BY s.stripe_subscription_id FOR NO KEY UPDATE OF s"
            ),
            subscription_params(),
        ));
        statements.push(Statement::new(
            format!(
                "SELECT {LICENSE_COLUMNS} FROM licenses l JOIN subscriptions s ON s.id = l.subscription_id
                  WHERE s.stripe_subscription_id = ANY ({held_ids}) ORDER BY l.id FOR NO KEY UPDATE OF l"
            ),
            subscription_params(),
        ));
        statements.push(Statement::new(
            format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d JOIN licenses l ON l.id = d.license_id
                   JOIN subscriptions s ON s.id = l.subscription_id
                  WHERE s.stripe_subscription_id = ANY ({held_ids}) ORDER BY d.id FOR NO KEY UPDATE OF d"
            ),
            subscription_params(),
        ));
    }
    // Customers are read, not locked: every write to one is conditional
    // (a user linked only if none is, an address only if newer, a deletion
    // once) and a new one's insert fails on a parallel one's (the group is
    // then applied again, and finds it). One statement with the paid
    // invoices, which prove entitlement; after the identities, so that it
    // sees a payment whose holder we waited for.
    let with_customers = !customers.is_empty() || with_subscriptions;
    if with_customers {
        statements.push(Statement::new(
            "SELECT stripe_customer_id, id, user_id, email, email_created FROM customers
              WHERE stripe_customer_id = ANY ($1)
             UNION ALL
             SELECT DISTINCT stripe_subscription_id, NULL::uuid, NULL, NULL, NULL::int8 FROM payments
              WHERE stripe_subscription_id = ANY ($2) AND status = 'paid'",
            params![customers, subscriptions],
        ));
    }
    let with_invoices = !invoices.is_empty();
    if with_invoices {
        statements.push(Statement::new(
            "SELECT stripe_invoice_id, status FROM payments WHERE stripe_invoice_id = ANY ($1)
              ORDER BY stripe_invoice_id FOR NO KEY UPDATE",
            params![invoices],
        ));
    }
    let intents: Vec<String> = keys.payment_intents.iter().cloned().collect();
    let with_sessions = !sessions.is_empty() || !intents.is_empty();
    if with_sessions {
        statements.push(Statement::new(
            format!(
                "SELECT {LICENSE_COLUMNS}, p.stripe_checkout_session_id, p.stripe_payment_intent_id
                   FROM purchases p JOIN licenses l ON l.id = p.license_id
                  WHERE p.stripe_checkout_session_id = ANY ($1) OR p.stripe_payment_intent_id = ANY ($2)
                  ORDER BY l.id FOR NO KEY UPDATE OF l"
            ),
            params![sessions, intents.clone()],
        ));
    }
    if with_charges {
        statements.push(Statement::new(
            "SELECT ic.payment_key, ic.stripe_invoice_id, ic.stripe_charge_id, p.stripe_subscription_id
               FROM invoice_charges ic LEFT JOIN payments p ON p.stripe_invoice_id = ic.stripe_invoice_id
              WHERE ic.payment_key = ANY ($1) OR ic.stripe_charge_id = ANY ($1)",
            params![charge_keys.clone()],
        ));
    }
    let disputes: Vec<String> = keys.disputes.iter().cloned().collect();
    let with_disputes = !disputes.is_empty();
    if with_disputes {
        // The group's disputes, and the other open disputes of the licenses
        // their charges paid for (whose rows the group has locked).
        statements.push(Statement::new(
            "SELECT stripe_dispute_id, license_id, status, closed FROM charge_disputes
              WHERE stripe_dispute_id = ANY ($1)
                 OR (NOT closed AND license_id = ANY (ARRAY(
                        SELECT license_id FROM purchases WHERE stripe_payment_intent_id = ANY ($2)
                        UNION ALL
                        SELECT l.id FROM invoice_charges ic
                          JOIN payments p ON p.stripe_invoice_id = ic.stripe_invoice_id
                          JOIN subscriptions s ON s.stripe_subscription_id = p.stripe_subscription_id
                          JOIN licenses l ON l.subscription_id = s.id
                         WHERE ic.payment_key = ANY ($3) OR ic.stripe_charge_id = ANY ($3))))
              ORDER BY stripe_dispute_id FOR NO KEY UPDATE",
            params![disputes, intents.clone(), charge_keys.clone()],
        ));
    }
    let mut results = pipeline(conn, &statements).await?.into_iter().skip(2);
    let mut next = || results.next().expect("one result per statement");
    let mut bundle = StripeBundle::default();
    let mut reclaimed = HashSet::new();
    let first = next();
    if claim {
        for row in first {
            let id: String = row.get(0);
            if row.get::<_, bool>(1) {
                reclaimed.insert(id.clone());
            }
            bundle.claimed.insert(id);
        }
    }
    if with_subscriptions {
        for row in next() {
            let subscription = subscription_from_row(&row)?;
            let customer_id = row.get(SUBSCRIPTION_COLUMN_COUNT);
            let stripe_id = subscription.snapshot.stripe_subscription_id.clone();
            bundle.subscriptions.insert(stripe_id, HeldSubscription { subscription, customer_id });
        }
        for row in next() {
            let license = license_from_row(&row)?;
            let subscription_id = license.subscription_id.ok_or_else(|| StoreError::Corrupt("joined".into()))?;
            bundle.devices.entry(license.id).or_default();
            bundle.licenses.insert(subscription_id, license);
        }
        for row in next() {
            let device = device_from_row(&row)?;
            bundle.devices.entry(device.license_id).or_default().push(device);
        }
        for devices in bundle.devices.values_mut() {
            devices.sort_by(|a, b| a.activated_at.cmp(&b.activated_at).then(a.id.cmp(&b.id)));
        }
    }
    if with_customers {
        for row in next() {
            match row.get::<_, Option<Uuid>>(1) {
                Some(id) => {
                    let held = HeldCustomer { id, user_id: row.get(2), email: row.get(3), email_created: row.get(4) };
                    bundle.customers.insert(row.get(0), held);
                }
                None => {
                    bundle.paid_subscriptions.insert(row.get(0));
                }
            }
        }
    }
    if with_invoices {
        for row in next() {
            let status: String = row.get(1);
            let status = PaymentStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown payment status {status:?}")))?;
            bundle.payments.insert(row.get(0), status);
        }
    }
    if with_sessions {
        for row in next() {
            let license = license_from_row(&row)?;
            let payment_intent = row.get(LICENSE_COLUMN_COUNT + 1);
            bundle.purchases.insert(row.get(LICENSE_COLUMN_COUNT), HeldPurchase { license, payment_intent });
        }
    }
    if with_charges {
        for row in next() {
            let held = HeldInvoiceCharge { invoice_id: row.get(1), charge_id: row.get(2), subscription: row.get(3) };
            bundle.invoice_charges.insert(row.get(0), held);
        }
    }
    if with_disputes {
        for row in next() {
            let held = DisputeRecord { license_id: row.get(1), status: row.get(2), closed: row.get(3) };
            bundle.disputes.insert(row.get(0), held);
        }
    }
    Ok((bundle, reclaimed))
}

const SAVE_SUBSCRIPTIONS: &str =
    "INSERT INTO subscriptions (id, stripe_subscription_id, customer_id, status, plan_id, price_id, item_id,
            cancel_at_period_end, cancel_at, canceled_at, ended_at, current_period_start, current_period_end,
            trial_end, metadata_user_id, past_due_since, source_created)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
            $8::bool[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
            $13::timestamptz[], $14::timestamptz[], $15::text[], $16::timestamptz[], $17::int8[])
     ON CONFLICT (id) DO UPDATE SET
            customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, plan_id = EXCLUDED.plan_id,
            price_id = EXCLUDED.price_id, item_id = EXCLUDED.item_id,
            cancel_at_period_end = EXCLUDED.cancel_at_period_end, cancel_at = EXCLUDED.cancel_at,
            canceled_at = EXCLUDED.canceled_at, ended_at = EXCLUDED.ended_at,
            current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
            trial_end = EXCLUDED.trial_end, metadata_user_id = EXCLUDED.metadata_user_id,
            past_due_since = EXCLUDED.past_due_since, source_created = EXCLUDED.source_created, updated_at = now()";

/// The audit rows' insert, its eight arrays numbered from `$first`; ids
/// are drawn in the changeset's order.
fn audit_insert(first: usize) -> String {
    let p: Vec<String> = (first..first + 8).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO subscription_changes (subscription_id, kind, from_status, to_status, detail, actor, stripe_event_id,
                client_addr)
         SELECT c.subscription_id, c.kind, c.from_status, c.to_status, c.detail, c.actor, c.stripe_event_id,
                c.client_addr
           FROM unnest({}::uuid[], {}::text[], {}::text[], {}::text[], {}::jsonb[], {}::text[], {}::text[],
                {}::text[])
                WITH ORDINALITY AS c(subscription_id, kind, from_status, to_status, detail, actor, stripe_event_id,
                client_addr, n)
          ORDER BY c.n",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    )
}

/// The changeset's statements, parents before children, the outbox (and
/// its lock) last; none when nothing is written. `reclaimed` names the
/// claimed deliveries that had failed before (none outside webhooks).
pub(super) fn apply_statements(c: &Changeset, reclaimed: &HashSet<String>) -> Vec<Statement> {
    let mut out = Vec::new();
    if !c.new_customers.is_empty() {
        out.push(Statement::new(
            "INSERT INTO customers (id, stripe_customer_id, user_id)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])",
            params![
                c.new_customers.iter().map(|n| n.id).collect::<Vec<_>>(),
                c.new_customers.iter().map(|n| n.stripe_customer_id.clone()).collect::<Vec<_>>(),
                c.new_customers.iter().map(|n| n.user_id.clone()).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.customer_links.is_empty() {
        out.push(Statement::new(
            "UPDATE customers c SET user_id = u.user_id, updated_at = now()
               FROM unnest($1::uuid[], $2::text[]) AS u(id, user_id)
              WHERE c.id = u.id AND c.user_id IS NULL",
            params![
                c.customer_links.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                c.customer_links.iter().map(|(_, user)| user.clone()).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.customer_emails.is_empty() {
        out.push(Statement::new(
            "UPDATE customers c SET email = u.email, email_created = u.created, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::int8[]) AS u(id, email, created)
              WHERE c.id = u.id AND (c.email_created IS NULL OR c.email_created <= u.created)",
            params![
                c.customer_emails.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(),
                c.customer_emails.iter().map(|(_, email, _)| email.clone()).collect::<Vec<_>>(),
                c.customer_emails.iter().map(|(_, _, created)| *created).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.deleted_customers.is_empty() {
        out.push(Statement::new(
            "UPDATE customers SET deleted_at = now(), updated_at = now() WHERE id = ANY ($1) AND deleted_at IS NULL",
            params![c.deleted_customers.clone()],
        ));
    }
    let subscription_rows = (!c.subscriptions.is_empty()).then(|| {
        let subs = &c.subscriptions;
        let col = |f: &dyn Fn(&HeldSubscription) -> Option<Timestamp>| subs.iter().map(f).collect::<Vec<_>>();
        params![
            subs.iter().map(|h| h.subscription.id).collect::<Vec<_>>(),
            subs.iter().map(|h| h.subscription.snapshot.stripe_subscription_id.clone()).collect::<Vec<_>>(),
            subs.iter().map(|h| h.customer_id).collect::<Vec<_>>(),
            subs.iter().map(|h| h.subscription.snapshot.status.as_str()).collect::<Vec<_>>(),
            subs.iter().map(|h| h.subscription.plan_id.clone()).collect::<Vec<_>>(),
            subs.iter().map(|h| h.subscription.snapshot.price_id.clone()).collect::<Vec<_>>(),
            subs.iter().map(|h| h.subscription.snapshot.item_id.clone()).collect::<Vec<_>>(),
            subs.iter().map(|h| h.subscription.snapshot.cancel_at_period_end).collect::<Vec<_>>(),
            col(&|h| h.subscription.snapshot.cancel_at),
            col(&|h| h.subscription.snapshot.canceled_at),
            col(&|h| h.subscription.snapshot.ended_at),
            col(&|h| h.subscription.snapshot.current_period_start),
            col(&|h| h.subscription.snapshot.current_period_end),
            col(&|h| h.subscription.snapshot.trial_end),
            subs.iter().map(|h| h.subscription.snapshot.user_id.clone()).collect::<Vec<_>>(),
            col(&|h| h.subscription.past_due_since),
            subs.iter().map(|h| h.subscription.source_created).collect::<Vec<_>>(),
        ]
    });
    let audit_rows = (!c.subscription_audit.is_empty()).then(|| {
        let a = &c.subscription_audit;
        params![
            a.iter().map(|r| r.subscription_id).collect::<Vec<_>>(),
            a.iter().map(|r| r.change.kind()).collect::<Vec<_>>(),
            a.iter().map(|r| r.change.from_status().map(SubscriptionStatus::as_str)).collect::<Vec<_>>(),
            a.iter().map(|r| r.change.to_status().map(SubscriptionStatus::as_str)).collect::<Vec<_>>(),
            a.iter().map(|r| r.change.detail()).collect::<Vec<_>>(),
            a.iter().map(|r| r.actor.clone()).collect::<Vec<_>>(),
            a.iter().map(|r| r.stripe_event_id.clone()).collect::<Vec<_>>(),
            a.iter().map(|r| r.client_addr.map(|ip| ip.to_string())).collect::<Vec<_>>(),
        ]
    });
    if let Some(params) = subscription_rows {
        out.push(Statement::new(SAVE_SUBSCRIPTIONS, params));
    }
    if let Some(audit) = audit_rows {
        out.push(Statement::new(audit_insert(1), audit));
    }
    if !c.new_licenses.is_empty() {
        let l = &c.new_licenses;
        out.push(Statement::new(
            "INSERT INTO licenses (id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at,
                    grace_ends_at, source, user_id, entitlements, metadata, max_devices_override,
                    expires_at_override, admin_suspended_at, kind, updates_until, trial)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::text[], $6::text[],
                    $7::int4[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::jsonb[],
                    $13::jsonb[], $14::int4[], $15::timestamptz[], $16::timestamptz[], $17::text[],
                    $18::timestamptz[], $19::bool[])",
            params![
                l.iter().map(|l| l.id).collect::<Vec<_>>(),
                l.iter().map(|l| l.subscription_id).collect::<Vec<_>>(),
                l.iter().map(|l| l.key.expose().to_owned()).collect::<Vec<_>>(),
                l.iter().map(|l| l.key.lookup_hash()).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.status.as_str()).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.plan_id.clone()).collect::<Vec<_>>(),
                l.iter().map(|l| max_devices_param(&l.terms)).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.expires_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.grace_ends_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.source.as_str()).collect::<Vec<_>>(),
                l.iter().map(|l| l.user_id.clone()).collect::<Vec<_>>(),
                l.iter().map(|l| Value::from(l.entitlements.clone())).collect::<Vec<_>>(),
                l.iter().map(|l| Value::Object(l.metadata.clone())).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.max_devices.map(crate::storage::max_devices_column)).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.expires_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.suspended_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.kind.as_str()).collect::<Vec<_>>(),
                l.iter().map(|l| l.updates_until).collect::<Vec<_>>(),
                l.iter().map(|l| l.trial).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.new_purchases.is_empty() {
        let p = &c.new_purchases;
        out.push(Statement::new(
            "INSERT INTO purchases (stripe_checkout_session_id, license_id, customer_id, stripe_payment_intent_id)
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[])",
            params![
                p.iter().map(|p| p.stripe_checkout_session_id.clone()).collect::<Vec<_>>(),
                p.iter().map(|p| p.license_id).collect::<Vec<_>>(),
                p.iter().map(|p| p.customer_id).collect::<Vec<_>>(),
                p.iter().map(|p| p.stripe_payment_intent_id.clone()).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.invoice_charges.is_empty() {
        let i = &c.invoice_charges;
        out.push(Statement::new(
            "INSERT INTO invoice_charges (payment_key, stripe_invoice_id, stripe_charge_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
             ON CONFLICT (payment_key) DO UPDATE
                SET stripe_charge_id = coalesce(invoice_charges.stripe_charge_id, EXCLUDED.stripe_charge_id)",
            params![
                i.iter().map(|i| i.payment_key.clone()).collect::<Vec<_>>(),
                i.iter().map(|i| i.invoice_id.clone()).collect::<Vec<_>>(),
                i.iter().map(|i| i.charge_id.clone()).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.license_terms.is_empty() {
        let t = &c.license_terms;
        out.push(Statement::new(
            "UPDATE licenses l SET status = u.status, plan_id = u.plan_id, max_devices = u.max_devices,
                    expires_at = u.expires_at, grace_ends_at = u.grace_ends_at, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], $6::timestamptz[])
                    AS u(id, status, plan_id, max_devices, expires_at, grace_ends_at)
              WHERE l.id = u.id",
            params![
                t.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                t.iter().map(|(_, t)| t.status.as_str()).collect::<Vec<_>>(),
                t.iter().map(|(_, t)| t.plan_id.clone()).collect::<Vec<_>>(),
                t.iter().map(|(_, t)| max_devices_param(t)).collect::<Vec<_>>(),
                t.iter().map(|(_, t)| t.expires_at).collect::<Vec<_>>(),
                t.iter().map(|(_, t)| t.grace_ends_at).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.saved_licenses.is_empty() {
        let l = &c.saved_licenses;
        out.push(Statement::new(
            "UPDATE licenses l SET status = u.status, plan_id = u.plan_id, max_devices = u.max_devices,
                    expires_at = u.expires_at, grace_ends_at = u.grace_ends_at, entitlements = u.entitlements,
                    metadata = u.metadata, max_devices_override = u.max_devices_override,
                    expires_at_override = u.expires_at_override, admin_suspended_at = u.admin_suspended_at,
                    updates_until = u.updates_until, disputed_at = u.disputed_at, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], $6::timestamptz[],
                    $7::jsonb[], $8::jsonb[], $9::int4[], $10::timestamptz[], $11::timestamptz[],
                    $12::timestamptz[], $13::timestamptz[])
                    AS u(id, status, plan_id, max_devices, expires_at, grace_ends_at, entitlements, metadata,
                         max_devices_override, expires_at_override, admin_suspended_at, updates_until, disputed_at)
              WHERE l.id = u.id",
            params![
                l.iter().map(|l| l.id).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.status.as_str()).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.plan_id.clone()).collect::<Vec<_>>(),
                l.iter().map(|l| max_devices_param(&l.terms)).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.expires_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.terms.grace_ends_at).collect::<Vec<_>>(),
                l.iter().map(|l| Value::from(l.entitlements.clone())).collect::<Vec<_>>(),
                l.iter().map(|l| Value::Object(l.metadata.clone())).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.max_devices.map(crate::storage::max_devices_column)).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.expires_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.suspended_at).collect::<Vec<_>>(),
                l.iter().map(|l| l.updates_until).collect::<Vec<_>>(),
                l.iter().map(|l| l.overrides.disputed_at).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.disputes.is_empty() {
        let d = &c.disputes;
        out.push(Statement::new(
            "INSERT INTO charge_disputes (stripe_dispute_id, license_id, status, closed)
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bool[])
             ON CONFLICT (stripe_dispute_id) DO UPDATE
                SET status = EXCLUDED.status, closed = EXCLUDED.closed, updated_at = now()",
            params![
                d.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
                d.iter().map(|(_, d)| d.license_id).collect::<Vec<_>>(),
                d.iter().map(|(_, d)| d.status.clone()).collect::<Vec<_>>(),
                d.iter().map(|(_, d)| d.closed).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.license_audit.is_empty() {
        let a = &c.license_audit;
        out.push(Statement::new(
            "INSERT INTO license_changes (license_id, kind, actor, detail, client_addr)
             SELECT a.license_id, a.kind, a.actor, a.detail, a.client_addr
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[])
                    WITH ORDINALITY AS a(license_id, kind, actor, detail, client_addr, n)
              ORDER BY a.n",
            params![
                a.iter().map(|r| r.license_id).collect::<Vec<_>>(),
                a.iter().map(|r| r.kind).collect::<Vec<_>>(),
                a.iter().map(|r| r.actor.clone()).collect::<Vec<_>>(),
                a.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
                a.iter().map(|r| r.client_addr.map(|ip| ip.to_string())).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.trial_uses.is_empty() {
        let t = &c.trial_uses;
        out.push(Statement::new(
            "INSERT INTO trial_uses (plan_id, fingerprint_hash, license_id)
             SELECT * FROM unnest($1::text[], $2::bytea[], $3::uuid[])",
            params![
                t.iter().map(|t| t.plan_id.clone()).collect::<Vec<_>>(),
                t.iter().map(|t| t.fingerprint_hash.clone()).collect::<Vec<_>>(),
                t.iter().map(|t| t.license_id).collect::<Vec<_>>(),
            ],
        ));
    }
    let (new_payments, moved_payments): (Vec<_>, Vec<_>) = c.payments.iter().partition(|p| p.new);
    if !new_payments.is_empty() {
        let p = &new_payments;
        out.push(Statement::new(
            "INSERT INTO payments (id, stripe_invoice_id, customer_id, stripe_subscription_id, amount, currency,
                    status, paid_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int8[], $6::text[],
                    $7::text[], $8::timestamptz[])",
            params![
                p.iter().map(|_| Uuid::new_v4()).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.stripe_invoice_id.clone()).collect::<Vec<_>>(),
                p.iter().map(|p| p.customer_id).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.stripe_subscription_id.clone()).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.amount).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.currency.clone()).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.status.as_str()).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.paid_at).collect::<Vec<_>>(),
            ],
        ));
    }
    if !moved_payments.is_empty() {
        let p = &moved_payments;
        out.push(Statement::new(
            "UPDATE payments p SET status = u.status, amount = u.amount, paid_at = u.paid_at, updated_at = now()
               FROM unnest($1::text[], $2::text[], $3::int8[], $4::timestamptz[]) AS u(id, status, amount, paid_at)
              WHERE p.stripe_invoice_id = u.id",
            params![
                p.iter().map(|p| p.payment.stripe_invoice_id.clone()).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.status.as_str()).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.amount).collect::<Vec<_>>(),
                p.iter().map(|p| p.payment.paid_at).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.new_devices.is_empty() {
        let d = &c.new_devices;
        out.push(Statement::new(
            "INSERT INTO devices (id, license_id, fingerprint, name, platform, app_version, token_hash, status,
                    activated_at, last_heartbeat_at, heartbeat_deadline, air_gapped)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::bytea[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[],
                    $12::boolean[])",
            params![
                d.iter().map(|a| a.device.id).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.license_id).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.fingerprint.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.name.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.platform.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.app_version.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.token_hash.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.status.as_str()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.activated_at).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.last_heartbeat_at).collect::<Vec<_>>(),
                d.iter().map(|a| a.heartbeat_deadline).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.air_gapped).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.reactivated_devices.is_empty() {
        let d = &c.reactivated_devices;
        out.push(Statement::new(
            "UPDATE devices d SET name = u.name, platform = u.platform, app_version = u.app_version,
                    token_hash = u.token_hash, status = 'active', activated_at = u.activated_at,
                    last_heartbeat_at = u.last_heartbeat_at, heartbeat_deadline = u.heartbeat_deadline,
                    air_gapped = u.air_gapped, deactivated_at = NULL, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[],
                    $7::timestamptz[], $8::timestamptz[], $9::boolean[])
                    AS u(id, name, platform, app_version, token_hash, activated_at, last_heartbeat_at,
                         heartbeat_deadline, air_gapped)
              WHERE d.id = u.id",
            params![
                d.iter().map(|a| a.device.id).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.name.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.platform.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.app_version.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.token_hash.clone()).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.activated_at).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.last_heartbeat_at).collect::<Vec<_>>(),
                d.iter().map(|a| a.heartbeat_deadline).collect::<Vec<_>>(),
                d.iter().map(|a| a.device.air_gapped).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.heartbeats.is_empty() {
        let h = &c.heartbeats;
        out.push(Statement::new(
            "UPDATE devices d SET last_heartbeat_at = u.at, heartbeat_deadline = u.deadline
               FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[]) AS u(id, at, deadline)
              WHERE d.id = u.id",
            params![
                h.iter().map(|h| h.device_id).collect::<Vec<_>>(),
                h.iter().map(|h| h.at).collect::<Vec<_>>(),
                h.iter().map(|h| h.heartbeat_deadline).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.device_deadlines.is_empty() {
        let d = &c.device_deadlines;
        out.push(Statement::new(
            "UPDATE devices d SET heartbeat_deadline = u.deadline
               FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, deadline)
              WHERE d.id = u.id",
            params![
                d.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                d.iter().map(|(_, deadline)| *deadline).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.device_names.is_empty() {
        let n = &c.device_names;
        out.push(Statement::new(
            "UPDATE devices d SET name = u.name, updated_at = now()
               FROM unnest($1::uuid[], $2::text[]) AS u(id, name)
              WHERE d.id = u.id",
            params![
                n.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                n.iter().map(|(_, name)| name.clone()).collect::<Vec<_>>()
            ],
        ));
    }
    if !c.device_statuses.is_empty() {
        let d = &c.device_statuses;
        out.push(Statement::new(
            "UPDATE devices d SET status = u.status, deactivated_at = u.at, updated_at = now()
               FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS u(id, status, at)
              WHERE d.id = u.id",
            params![
                d.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(),
                d.iter().map(|(_, status, _)| status.as_str()).collect::<Vec<_>>(),
                d.iter().map(|(_, _, at)| *at).collect::<Vec<_>>(),
            ],
        ));
    }
    if !c.device_audit.is_empty() {
        let a = &c.device_audit;
        out.push(Statement::new(
            "INSERT INTO device_changes (device_id, license_id, kind, actor, detail, client_addr)
             SELECT a.device_id, a.license_id, a.kind, a.actor, a.detail, a.client_addr
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
                    WITH ORDINALITY AS a(device_id, license_id, kind, actor, detail, client_addr, n)
              ORDER BY a.n",
            params![
                a.iter().map(|r| r.device_id).collect::<Vec<_>>(),
                a.iter().map(|r| r.license_id).collect::<Vec<_>>(),
                a.iter().map(|r| r.kind).collect::<Vec<_>>(),
                a.iter().map(|r| r.actor.clone()).collect::<Vec<_>>(),
                a.iter().map(|r| r.detail.clone()).collect::<Vec<_>>(),
                a.iter().map(|r| r.client_addr.map(|ip| ip.to_string())).collect::<Vec<_>>(),
            ],
        ));
    }
    let mut finished = (Vec::new(), Vec::new(), Vec::new());
    let mut released = (Vec::new(), Vec::new());
    let mut unclaimed = Vec::new();
    for (id, record) in &c.deliveries {
        match record {
            DeliveryRecord::Noted(note) => {
                finished.0.push(id.clone());
                finished.1.push("processed");
                finished.2.push(Some(*note));
            }
            DeliveryRecord::Ignored => {
                finished.0.push(id.clone());
                finished.1.push("ignored");
                finished.2.push(None);
            }
            // What the claim did is undone: a new row goes, a failed one is
            // failed again, so the next claim is its next attempt.
            DeliveryRecord::Released(why) if reclaimed.contains(id) => {
                released.0.push(id.clone());
                released.1.push(*why);
            }
            DeliveryRecord::Released(_) => unclaimed.push(id.clone()),
        }
    }
    if !finished.0.is_empty() {
        out.push(Statement::new(
            "UPDATE webhook_events w SET status = u.status, note = u.note, last_error = NULL, processed_at = now()
               FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, status, note)
              WHERE w.id = u.id",
            params![finished.0, finished.1, finished.2],
        ));
    }
    if !released.0.is_empty() {
        out.push(Statement::new(
            "UPDATE webhook_events w SET status = 'failed', attempts = w.attempts - 1, last_error = u.why
               FROM unnest($1::text[], $2::text[]) AS u(id, why)
              WHERE w.id = u.id",
            params![released.0, released.1],
        ));
    }
    if !unclaimed.is_empty() {
        out.push(Statement::new("DELETE FROM webhook_events WHERE id = ANY ($1)", params![unclaimed]));
    }
    let mut statements = combine(out);
    if !c.outbox.is_empty() {
        let (sql, params) = outbox_write(&c.outbox);
        statements.push(Statement::new(sql, params));
    }
    statements
}

/// The writes in as few statements as they allow: consecutive writes to
/// different tables become one (each a data-modifying `WITH` of it, their
/// parameters renumbered), since statements, not rows, are what costs
/// here. Two writes to one table stay apart, in order: within a statement
/// the second would not see the first's rows. Foreign keys are checked at
/// a statement's end, so a row may reference one written beside it.
fn combine(writes: Vec<Statement>) -> Vec<Statement> {
    let mut combined = Vec::new();
    let mut batch: Vec<Statement> = Vec::new();
    for write in writes {
        let table = written_table(&write.sql);
        if batch.iter().any(|w| written_table(&w.sql) == table) {
            combined.extend(one_statement(std::mem::take(&mut batch)));
        }
        batch.push(write);
    }
    combined.extend(one_statement(batch));
    combined
}

/// The table a plain `INSERT INTO`, `UPDATE` or `DELETE FROM` writes.
fn written_table(sql: &str) -> &str {
    let mut words = sql.split_whitespace();
    match words.next() {
        Some("INSERT") | Some("DELETE") => words.nth(1),
        _ => words.next(),
    }
    .unwrap_or_default()
}

fn one_statement(mut writes: Vec<Statement>) -> Option<Statement> {
    let last = writes.pop()?;
    if writes.is_empty() {
        return Some(last);
    }
    let mut sql = String::from("WITH ");
    let mut params = Vec::new();
    for (n, write) in writes.into_iter().enumerate() {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("w{n} AS ({})", renumber(&write.sql, params.len())));
        params.extend(write.params);
    }
    sql.push(' ');
    sql.push_str(&renumber(&last.sql, params.len()));
    params.extend(last.params);
    Some(Statement::new(sql, params))
}

/// `sql` with each parameter `$n` made `$(n + offset)`.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}
