//! The PostgreSQL store (tokio-postgres through a deadpool pool).

use super::*;
use crate::domain::{LicenseKey, LicenseOverrides, LicenseStatus, SubscriptionSnapshot, SubscriptionStatus};
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::borrow::Cow;
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

mod embedded {
    refinery::embed_migrations!("../migrations/postgres");
}

// Admin reads (issue 14).
mod admin_reads;
mod stripe_sync;

use super::migration_check::{applied_stamp, embedded_stamps, MigrationCheck};

/// Advisory lock (two-key space) serialising outbox id assignment, so ids
/// commit in order. The one-key space is used for per-subscription locks;
/// PostgreSQL keeps the two spaces apart.
const OUTBOX_LOCK: (i32, i32) = (0x6269_6c6c, 1);
/// Advisory lock serialising migration runs of several starting instances.
const MIGRATION_LOCK: (i32, i32) = (0x6269_6c6c, 2);
/// The channel every committed outbox write notifies.
pub const OUTBOX_CHANNEL: &str = "billing_outbox";

/// PostgreSQL-backed [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("status", &self.pool.status()).finish()
    }
}

fn query_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Query(Box::new(e))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// Opens a dedicated connection that `LISTEN`s on the outbox channel and
/// forwards each notification.
async fn listen(
    config: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<()>), StoreError> {
    use futures_util::StreamExt;
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| StoreError::Unavailable(Box::new(e)))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {OUTBOX_CHANNEL}")).await.map_err(query_error)?;
    Ok((client, rx))
}

impl PgStore {
    /// Connects lazily: the pool opens connections when first needed.
    /// `url` is a `postgres://` URL; `max_connections` bounds the pool.
    pub fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self { pool, config })
    }

    /// The connection settings, for opening a dedicated `LISTEN` connection.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Pool usage: (connections open, connections idle, max size).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.max_size)
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// How the migrations applied to the database compare with those this
    /// build embeds.
    pub async fn migration_check(&self) -> Result<MigrationCheck, StoreError> {
        let conn = self.conn().await?;
        let rows = query(&conn, "SELECT version, checksum FROM refinery_schema_history", &[]).await?;
        let applied: Vec<_> = rows
            .iter()
            .map(|r| applied_stamp(i64::from(r.get::<_, i32>(0)), r.get::<_, Option<&str>>(1).unwrap_or_default()))
            .collect();
        Ok(MigrationCheck::compare(&embedded_stamps(embedded::migrations::runner().get_migrations()), &applied))
    }
}

async fn query(conn: &ClientWrapper, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
    let statement = conn.prepare_cached(sql).await.map_err(query_error)?;
    conn.query(&statement, params).await.map_err(query_error)
}

async fn query_opt(conn: &ClientWrapper, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StoreError> {
    let statement = conn.prepare_cached(sql).await.map_err(query_error)?;
    conn.query_opt(&statement, params).await.map_err(query_error)
}

async fn execute(conn: &ClientWrapper, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
    let statement = conn.prepare_cached(sql).await.map_err(query_error)?;
    conn.execute(&statement, params).await.map_err(query_error)
}

const SUBSCRIPTION_COLUMNS: &str = "s.id, s.stripe_subscription_id, c.stripe_customer_id, s.status, s.plan_id, \
    s.price_id, s.item_id, s.cancel_at_period_end, s.cancel_at, s.canceled_at, s.ended_at, s.current_period_start, \
    s.current_period_end, s.trial_end, s.metadata_user_id, s.past_due_since, s.source_created";

fn subscription_from_row(row: &Row) -> Result<Subscription, StoreError> {
    let status: String = row.get(3);
    Ok(Subscription {
        id: row.get(0),
        snapshot: SubscriptionSnapshot {
            stripe_subscription_id: row.get(1),
            stripe_customer_id: row.get(2),
            status: SubscriptionStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown subscription status {status:?}")))?,
            price_id: row.get(5),
            item_id: row.get(6),
            cancel_at_period_end: row.get(7),
            cancel_at: row.get(8),
            canceled_at: row.get(9),
            ended_at: row.get(10),
            current_period_start: row.get(11),
            current_period_end: row.get(12),
            trial_end: row.get(13),
            user_id: row.get(14),
        },
        plan_id: row.get(4),
        past_due_since: row.get(15),
        source_created: row.get(16),
    })
}

/// How many columns [`SUBSCRIPTION_COLUMNS`] names.
const SUBSCRIPTION_COLUMN_COUNT: usize = 17;

const LICENSE_COLUMNS: &str =
    "l.id, l.subscription_id, l.key, l.status, l.max_devices, l.expires_at, l.grace_ends_at, \
     l.plan_id, l.source, l.user_id, l.entitlements, l.metadata, l.max_devices_override, l.expires_at_override, \
     l.admin_suspended_at";

/// How many columns [`LICENSE_COLUMNS`] names.
const LICENSE_COLUMN_COUNT: usize = 15;

fn license_from_row(row: &Row) -> Result<License, StoreError> {
    license_from_row_at(row, 0)
}

/// [`LICENSE_COLUMNS`] starting at column `first`.
fn license_from_row_at(row: &Row, first: usize) -> Result<License, StoreError> {
    let key: String = row.get(first + 2);
    let status: String = row.get(first + 3);
    let max_devices: i32 = row.get(first + 4);
    let source: String = row.get(first + 8);
    let max_devices_override: Option<i32> = row.get(first + 12);
    let extras =
        LicenseExtras::decode(&source, row.get(first + 10), row.get(first + 11), max_devices_override.map(i64::from))?;
    Ok(License {
        id: row.get(first),
        subscription_id: row.get(first + 1),
        source: extras.source,
        user_id: row.get(first + 9),
        key: LicenseKey::parse(&key).ok_or_else(|| StoreError::Corrupt("malformed license key".into()))?,
        terms: LicenseTerms {
            status: LicenseStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown license status {status:?}")))?,
            max_devices: u32::try_from(max_devices).map_err(|_| StoreError::Corrupt("negative max_devices".into()))?,
            expires_at: row.get(first + 5),
            grace_ends_at: row.get(first + 6),
            plan_id: row.get(first + 7),
        },
        entitlements: extras.entitlements,
        metadata: extras.metadata,
        overrides: LicenseOverrides {
            max_devices: extras.max_devices_override,
            expires_at: row.get(first + 13),
            suspended_at: row.get(first + 14),
        },
    })
}

/// [`LICENSE_COLUMNS`] at `first`, then the owner, `created_at` and `updated_at`.
fn license_record_from_row_at(row: &Row, first: usize) -> Result<LicenseRecord, StoreError> {
    let after = first + LICENSE_COLUMN_COUNT;
    Ok(LicenseRecord {
        license: license_from_row_at(row, first)?,
        owner_user_id: row.get(after),
        created_at: row.get(after + 1),
        updated_at: row.get(after + 2),
    })
}

/// Locks a Stripe license's subscription, then the license (in the order
/// the locking clauses name them), with the customer's user as its owner.
/// Finds nothing for a manual license.
static LOCK_STRIPE_LICENSE_RECORD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {SUBSCRIPTION_COLUMNS}, {LICENSE_COLUMNS}, c.user_id, l.created_at, l.updated_at
           FROM licenses l JOIN subscriptions s ON s.id = l.subscription_id JOIN customers c ON c.id = s.customer_id
          WHERE l.id = $1 FOR NO KEY UPDATE OF s FOR NO KEY UPDATE OF l"
    )
});

static LOCK_MANUAL_LICENSE_RECORD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {LICENSE_COLUMNS}, l.user_id, l.created_at, l.updated_at
           FROM licenses l WHERE l.id = $1 AND l.subscription_id IS NULL FOR NO KEY UPDATE"
    )
});

fn payment_from_row(row: &Row) -> Result<PaymentRecord, StoreError> {
    let status: String = row.get(6);
    Ok(PaymentRecord {
        id: row.get(0),
        payment: Payment {
            stripe_invoice_id: row.get(1),
            stripe_customer_id: row.get(2),
            stripe_subscription_id: row.get(3),
            amount: row.get(4),
            currency: row.get(5),
            status: PaymentStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown payment status {status:?}")))?,
            paid_at: row.get(7),
        },
        created_at: row.get(8),
    })
}

const DEVICE_COLUMNS: &str = "d.id, d.license_id, d.fingerprint, d.name, d.platform, d.app_version, d.status, \
    d.activated_at, d.last_heartbeat_at, d.deactivated_at";

fn device_from_row(row: &Row) -> Result<Device, StoreError> {
    let status: String = row.get(6);
    Ok(Device {
        id: row.get(0),
        license_id: row.get(1),
        fingerprint: row.get(2),
        name: row.get(3),
        platform: row.get(4),
        app_version: row.get(5),
        status: DeviceStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown device status {status:?}")))?,
        activated_at: row.get(7),
        last_heartbeat_at: row.get(8),
        deactivated_at: row.get(9),
    })
}

fn max_devices_param(terms: &LicenseTerms) -> i32 {
    i32::try_from(terms.max_devices).unwrap_or(i32::MAX)
}

impl Store for PgStore {
    type Tx = PgTx;

    async fn sync_stripe<T, F>(&self, keys: crate::storage::stripe_sync::StripeKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::stripe_sync::StripeBundle) -> (super::stripe_sync::Changeset, T) + Send + 'static,
    {
        stripe_sync::sync_stripe(self, keys, decide).await
    }

    async fn begin(&self) -> Result<PgTx, StoreError> {
        // `BEGIN` goes out with the transaction's first statement.
        Ok(PgTx {
            conn: Some(self.conn().await?),
            begun: false,
            deferred: Vec::new(),
            outbox: Vec::new(),
            failed: false,
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let lock = format!("SELECT pg_advisory_lock({}, {})", MIGRATION_LOCK.0, MIGRATION_LOCK.1);
        conn.batch_execute(&lock).await.map_err(query_error)?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let result = embedded::migrations::runner().run_async(client).await;
        let unlock = format!("SELECT pg_advisory_unlock({}, {})", MIGRATION_LOCK.0, MIGRATION_LOCK.1);
        conn.batch_execute(&unlock).await.map_err(query_error)?;
        result.map(drop).map_err(|e| StoreError::Migration(Box::new(e)))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.simple_query("SELECT 1").await.map_err(query_error)?;
        Ok(())
    }

    async fn record_event_failure(&self, event: &EventRecord<'_>, error: &str) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        execute(
            &conn,
            "INSERT INTO webhook_events (id, type, created, api_version, status, last_error, object_id, payload)
             VALUES ($1, $2, $3, $4, 'failed', $5, $6, $7)
             ON CONFLICT (id) DO UPDATE
                SET last_error = EXCLUDED.last_error, attempts = webhook_events.attempts + 1,
                    object_id = EXCLUDED.object_id, payload = EXCLUDED.payload
              WHERE webhook_events.status = 'failed'",
            &[&event.id, &event.kind, &event.created, &event.api_version, &error, &event.object_id, &event.payload],
        )
        .await?;
        Ok(())
    }

    async fn subscriptions_of_user(&self, user_id: &str) -> Result<Vec<Subscription>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN customers c ON c.id = s.customer_id
              WHERE c.user_id = $1 ORDER BY s.updated_at DESC, s.id"
        );
        query(&conn, &sql, &[&user_id]).await?.iter().map(subscription_from_row).collect()
    }

    async fn changes_of_user(&self, user_id: &str, limit: i64) -> Result<Vec<ChangeEntry>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT h.id, h.subscription_id, h.kind, h.from_status, h.to_status, h.detail, h.actor,
                    h.stripe_event_id, h.created_at
               FROM subscription_changes h
               JOIN subscriptions s ON s.id = h.subscription_id
               JOIN customers c ON c.id = s.customer_id
              WHERE c.user_id = $1
              ORDER BY h.id DESC LIMIT $2",
            &[&user_id, &limit],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| ChangeEntry {
                id: r.get(0),
                subscription_id: r.get(1),
                kind: r.get(2),
                from_status: r.get(3),
                to_status: r.get(4),
                detail: r.get(5),
                actor: r.get(6),
                stripe_event_id: r.get(7),
                created_at: r.get(8),
            })
            .collect())
    }

    async fn payments_of_user(&self, user_id: &str, limit: i64) -> Result<Vec<PaymentRecord>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT p.id, p.stripe_invoice_id, c.stripe_customer_id, p.stripe_subscription_id, p.amount,
                    p.currency, p.status, p.paid_at, p.created_at
               FROM payments p JOIN customers c ON c.id = p.customer_id
              WHERE c.user_id = $1
              ORDER BY COALESCE(p.paid_at, p.created_at) DESC, p.id LIMIT $2",
            &[&user_id, &limit],
        )
        .await?;
        rows.iter().map(payment_from_row).collect()
    }

    async fn stripe_customers_of_user(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT stripe_customer_id FROM customers WHERE user_id = $1 ORDER BY created_at, id",
            &[&user_id],
        )
        .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn licenses_of_user(&self, user_id: &str) -> Result<Vec<License>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {LICENSE_COLUMNS} FROM licenses l
               LEFT JOIN subscriptions s ON s.id = l.subscription_id
               LEFT JOIN customers c ON c.id = s.customer_id
              WHERE (c.user_id = $1 OR l.user_id = $1) ORDER BY l.created_at, l.id"
        );
        query(&conn, &sql, &[&user_id]).await?.iter().map(license_from_row).collect()
    }

    async fn outbox_after(
        &self,
        after_id: i64,
        license_id: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT id, license_id, topic, payload, created_at FROM outbox_events
              WHERE id > $1 AND ($2::uuid IS NULL OR license_id = $2)
              ORDER BY id LIMIT $3",
            &[&after_id, &license_id, &limit],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| OutboxEvent {
                id: r.get(0),
                license_id: r.get(1),
                topic: r.get(2),
                payload: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }

    async fn license_by_key_hash(&self, key_hash: &[u8]) -> Result<Option<License>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.key_hash = $1");
        query_opt(&conn, &sql, &[&key_hash]).await?.as_ref().map(license_from_row).transpose()
    }

    async fn license_and_device(
        &self,
        key_hash: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<(Option<License>, Option<Device>), StoreError> {
        let conn = self.conn().await?;
        let license_sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.key_hash = $1");
        let Some(fingerprint) = fingerprint else {
            let license = query_opt(&conn, &license_sql, &[&key_hash]).await?;
            return Ok((license.as_ref().map(license_from_row).transpose()?, None));
        };
        let device_sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d
              WHERE d.license_id = (SELECT id FROM licenses WHERE key_hash = $1) AND d.fingerprint = $2"
        );
        // Both sent at once: validation is the hottest read, and this saves a
        // round trip and a pool checkout on every call.
        let (license_params, device_params): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
            (&[&key_hash], &[&key_hash, &fingerprint]);
        let (license, device) = futures_util::try_join!(
            query_opt(&conn, &license_sql, license_params),
            query_opt(&conn, &device_sql, device_params),
        )?;
        Ok((license.as_ref().map(license_from_row).transpose()?, device.as_ref().map(device_from_row).transpose()?))
    }

    async fn device_by_token_hash(&self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = $1");
        query_opt(&conn, &sql, &[&token_hash]).await?.as_ref().map(device_from_row).transpose()
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d
               JOIN licenses l ON l.id = d.license_id
               LEFT JOIN subscriptions s ON s.id = l.subscription_id
               LEFT JOIN customers c ON c.id = s.customer_id
              WHERE (c.user_id = $1 OR l.user_id = $1) ORDER BY d.last_heartbeat_at DESC, d.id"
        );
        query(&conn, &sql, &[&user_id]).await?.iter().map(device_from_row).collect()
    }

    async fn license_belongs_to(&self, license_id: Uuid, user_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT 1 FROM licenses l LEFT JOIN subscriptions s ON s.id = l.subscription_id
               LEFT JOIN customers c ON c.id = s.customer_id WHERE l.id = $1 AND (c.user_id = $2 OR l.user_id = $2)",
            &[&license_id, &user_id],
        )
        .await?;
        Ok(row.is_some())
    }

    async fn latest_outbox_id(&self) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(&conn, "SELECT COALESCE(max(id), 0) FROM outbox_events", &[]).await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        execute(&conn, "DELETE FROM outbox_events WHERE created_at < $1", &[&before]).await
    }

    async fn watch_outbox(&self) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let config = self.config.clone();
        // Fail fast when the database cannot be reached at all.
        let first = listen(&config).await?;
        tokio::spawn(async move {
            let mut connection = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                let (client, stream) = match connection.take() {
                    Some(c) => c,
                    None => match listen(&config).await {
                        Ok(c) => {
                            backoff = Duration::from_millis(100);
                            c
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::billing::error_chain(&e), "outbox LISTEN reconnect failed");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    },
                };
                // Anything may have been committed while we were not listening.
                if tx.send(()).await.is_err() {
                    return;
                }
                let mut stream = stream;
                while let Some(()) = stream.recv().await {
                    // A full channel already holds a wake-up; one is enough.
                    if tx.is_closed() {
                        return;
                    }
                    let _ = tx.try_send(());
                }
                drop(client);
                tracing::warn!("outbox LISTEN connection lost; reconnecting");
            }
        });
        Ok(rx)
    }

    async fn webhook_event_status(&self, event_id: &str) -> Result<Option<(String, i32, Option<String>)>, StoreError> {
        let conn = self.conn().await?;
        let row =
            query_opt(&conn, "SELECT status, attempts, last_error FROM webhook_events WHERE id = $1", &[&event_id])
                .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    // --- Webhooks to the vendor (issue 14) ---

    async fn create_webhook_endpoint(&self, e: &NewWebhookEndpoint<'_>) -> Result<WebhookEndpoint, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "INSERT INTO webhook_endpoints (id, url, events, description, secret) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, url, events, description, created_at",
            &[&e.id, &e.url, &e.events, &e.description, &e.secret],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("an insert returned no row".into()))?;
        Ok(endpoint_from_row(&row))
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let conn = self.conn().await?;
        let rows = query(
            &conn,
            "SELECT id, url, events, description, created_at FROM webhook_endpoints
              WHERE deleted_at IS NULL ORDER BY created_at, id",
            &[],
        )
        .await?;
        Ok(rows.iter().map(endpoint_from_row).collect())
    }

    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT id, url, events, description, created_at FROM webhook_endpoints
              WHERE id = $1 AND deleted_at IS NULL",
            &[&id],
        )
        .await?;
        Ok(row.as_ref().map(endpoint_from_row))
    }

    async fn delete_webhook_endpoint(&self, id: Uuid, at: Timestamp) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        // One statement, so no message slips in as pending between the two.
        let row = query_opt(
            &conn,
            "WITH deleted AS (
                 UPDATE webhook_endpoints SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL RETURNING id
             ), stopped AS (
                 UPDATE webhook_messages SET status = 'failed', lease = NULL
                  WHERE endpoint_id IN (SELECT id FROM deleted) AND status = 'pending'
             )
             SELECT count(*) FROM deleted",
            &[&id, &at],
        )
        .await?;
        Ok(row.is_some_and(|r| r.get::<_, i64>(0) > 0))
    }

    async fn webhook_deliveries(
        &self,
        endpoint_id: Uuid,
        cursor: Option<&WebhookDeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let conn = self.conn().await?;
        let (after_at, after_id) = (cursor.map(|c| c.created_at), cursor.map(|c| c.id.as_str()));
        let rows = query(
            &conn,
            "SELECT id, endpoint_id, event_type, status, attempts, next_attempt_at, created_at, delivered_at
               FROM webhook_messages
              WHERE endpoint_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::text))
              ORDER BY created_at DESC, id DESC LIMIT $4",
            &[&endpoint_id, &after_at, &after_id, &limit],
        )
        .await?;
        let mut deliveries = rows.iter().map(delivery_from_row).collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        let attempts = query(
            &conn,
            "SELECT message_id, attempted_at, status_code, error, duration_ms, next_attempt_at
               FROM webhook_attempts WHERE message_id = ANY ($1) ORDER BY id",
            &[&ids],
        )
        .await?;
        for row in &attempts {
            let message_id: &str = row.get(0);
            let attempt = WebhookAttempt {
                attempted_at: row.get(1),
                status_code: row.get::<_, Option<i32>>(2).and_then(|c| u16::try_from(c).ok()),
                error: row.get(3),
                duration_ms: i64::from(row.get::<_, i32>(4)),
                next_attempt_at: row.get(5),
            };
            if let Some(delivery) = deliveries.iter_mut().find(|d| d.id == message_id) {
                delivery.attempt_log.push(attempt);
            }
        }
        Ok(deliveries)
    }

    async fn retry_webhook_message(&self, message_id: &str, now: Timestamp) -> Result<WebhookRetry, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "WITH target AS (
                 SELECT m.id, m.status FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id
                  WHERE m.id = $1 AND e.deleted_at IS NULL FOR UPDATE OF m
             ), retried AS (
                 UPDATE webhook_messages m SET status = 'pending', next_attempt_at = $2, lease = NULL
                   FROM target WHERE m.id = target.id AND target.status <> 'delivered'
                 RETURNING m.id
             )
             SELECT target.status, EXISTS (SELECT FROM retried) FROM target",
            &[&message_id, &now],
        )
        .await?;
        Ok(match row {
            None => WebhookRetry::NotFound,
            Some(row) if row.get::<_, bool>(1) => WebhookRetry::Scheduled,
            Some(_) => WebhookRetry::AlreadyDelivered,
        })
    }

    async fn claim_webhook_messages(&self, claim: &WebhookClaim<'_>) -> Result<Vec<ClaimedWebhook>, StoreError> {
        let conn = self.conn().await?;
        // Each endpoint's due messages are read from its own index range,
        // at most `per_endpoint` of them: a claim costs the same however
        // large the backlog (ranking every due message did not).
        let rows = query(
            &conn,
            "WITH claimed AS (
                 SELECT due.id FROM webhook_endpoints e
                  CROSS JOIN LATERAL (
                      SELECT m.id, m.next_attempt_at FROM webhook_messages m
                       WHERE m.endpoint_id = e.id AND m.status = 'pending' AND m.next_attempt_at <= $1
                       ORDER BY m.next_attempt_at, m.id
                       LIMIT $5
                       FOR UPDATE SKIP LOCKED
                  ) due
                  WHERE e.id <> ALL ($4)
                  ORDER BY due.next_attempt_at, due.id LIMIT $6
             )
             UPDATE webhook_messages m SET next_attempt_at = $2, lease = $3
               FROM claimed, webhook_endpoints e
              WHERE m.id = claimed.id AND e.id = m.endpoint_id
             RETURNING m.id, m.endpoint_id, e.url, e.secret, m.event_type, m.event_at, m.payload, m.attempts",
            &[&claim.now, &claim.lease_until, &claim.lease, &claim.busy_endpoints, &claim.per_endpoint, &claim.limit],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| ClaimedWebhook {
                message_id: r.get(0),
                endpoint_id: r.get(1),
                url: r.get(2),
                secret: r.get(3),
                event_type: r.get(4),
                event_at: r.get(5),
                payload: r.get(6),
                attempts: r.get(7),
            })
            .collect())
    }

    async fn record_webhook_attempt(&self, record: &WebhookAttemptRecord<'_>) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let a = record.attempt;
        let delivered_at = (record.status == WebhookMessageStatus::Delivered).then_some(a.attempted_at);
        let status_code = a.status_code.map(i32::from);
        let duration_ms = i32::try_from(a.duration_ms).unwrap_or(i32::MAX);
        // The message and its attempt row in one statement: both or neither.
        let written = execute(
            &conn,
            "WITH updated AS (
                 UPDATE webhook_messages
                    SET status = $3, attempts = attempts + 1, next_attempt_at = COALESCE($4, next_attempt_at),
                        delivered_at = $5, lease = NULL
                  WHERE id = $1 AND lease = $2 AND status = 'pending'
                 RETURNING id
             )
             INSERT INTO webhook_attempts (message_id, attempted_at, status_code, error, duration_ms, next_attempt_at)
             SELECT id, $6, $7, $8, $9, $4 FROM updated",
            &[
                &record.message_id,
                &record.lease,
                &record.status.as_str(),
                &a.next_attempt_at,
                &delivered_at,
                &a.attempted_at,
                &status_code,
                &a.error,
                &duration_ms,
            ],
        )
        .await?;
        Ok(written > 0)
    }

    async fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let conn = self.conn().await?;
        let row =
            query_opt(&conn, "SELECT min(next_attempt_at) FROM webhook_messages WHERE status = 'pending'", &[]).await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    // --- Admin reads (issue 14): Stripe deliveries ---

    async fn record_event_duplicate(&self, event_id: &str) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        execute(&conn, "UPDATE webhook_events SET duplicates = duplicates + 1 WHERE id = $1", &[&event_id]).await?;
        Ok(())
    }

    // --- admin API tokens ---

    async fn insert_admin_token(
        &self,
        id: Uuid,
        name: &str,
        token_hash: &[u8],
        scopes: &Scopes,
    ) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let scopes = scopes.names();
        let inserted = execute(
            &conn,
            "INSERT INTO admin_tokens (id, name, token_hash, scopes) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING",
            &[&id, &name, &token_hash, &scopes],
        )
        .await?;
        Ok(inserted == 1)
    }

    async fn admin_token_by_hash(&self, token_hash: &[u8]) -> Result<Option<AdminTokenRecord>, StoreError> {
        let conn = self.conn().await?;
        let sql =
            format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL");
        query_opt(&conn, &sql, &[&token_hash]).await?.as_ref().map(admin_token_from_row).transpose()
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens ORDER BY created_at, id");
        query(&conn, &sql, &[]).await?.iter().map(admin_token_from_row).collect()
    }

    async fn revoke_admin_token(&self, name: &str, at: Timestamp) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let revoked = execute(
            &conn,
            "UPDATE admin_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
            &[&name, &at],
        )
        .await?;
        Ok(revoked > 0)
    }

    async fn touch_admin_token(&self, id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        execute(
            &conn,
            "UPDATE admin_tokens SET last_used_at = $2
              WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2::timestamptz - interval '1 minute')",
            &[&id, &at],
        )
        .await?;
        Ok(())
    }
}

const ADMIN_TOKEN_COLUMNS: &str = "id, name, scopes, created_at, last_used_at, revoked_at";

fn admin_token_from_row(row: &Row) -> Result<AdminTokenRecord, StoreError> {
    let scopes: Vec<String> = row.get(2);
    Ok(AdminTokenRecord {
        id: row.get(0),
        name: row.get(1),
        scopes: Scopes::parse(scopes.iter().map(String::as_str))
            .map_err(|e| StoreError::Corrupt(format!("admin token scopes: {e}")))?,
        created_at: row.get(3),
        last_used_at: row.get(4),
        revoked_at: row.get(5),
    })
}

fn endpoint_from_row(row: &Row) -> WebhookEndpoint {
    WebhookEndpoint {
        id: row.get(0),
        url: row.get(1),
        events: row.get(2),
        description: row.get(3),
        created_at: row.get(4),
    }
}

fn delivery_from_row(row: &Row) -> Result<WebhookDelivery, StoreError> {
    let status: String = row.get(3);
    let status = WebhookMessageStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown webhook message status {status:?}")))?;
    Ok(WebhookDelivery {
        id: row.get(0),
        endpoint_id: row.get(1),
        event_type: row.get(2),
        status,
        attempts: row.get(4),
        next_attempt_at: (status == WebhookMessageStatus::Pending).then(|| row.get(5)),
        created_at: row.get(6),
        delivered_at: row.get(7),
        attempt_log: Vec::new(),
    })
}

/// An open PostgreSQL transaction on a pooled connection.
///
/// Every round trip costs both processes a wake-up, and on a busy machine
/// those dominate a webhook's cost, so a unit of work sends as few as its
/// reads require: `BEGIN` travels with the first statement, and writes
/// whose results nobody reads are held back and pipelined ahead of the next
/// read or the `COMMIT`. Statements still reach PostgreSQL in the order they
/// were issued, so locks are taken in the same order and a read sees every
/// earlier write; a failed write surfaces at the next read or the commit,
/// and fails the unit of work all the same.
pub struct PgTx {
    conn: Option<Object>,
    /// Whether `BEGIN` has been sent.
    begun: bool,
    /// Writes not yet sent, in the order they were issued.
    deferred: Vec<Deferred>,
    /// Outbox rows to write at commit (see [`PgTx::commit`] for why).
    outbox: Vec<OutboxMessage>,
    /// Whether a statement failed or was abandoned before its outcome was
    /// known. PostgreSQL answers the `COMMIT` of an aborted transaction by
    /// rolling back without an error, so [`PgTx::commit`] must refuse.
    failed: bool,
}

type Param = Box<dyn ToSql + Sync + Send>;

/// Owned statement parameters for [`PgTx::defer`].
macro_rules! params {
    ($($param:expr),* $(,)?) => { vec![$(Box::new($param) as Param),*] };
}

/// A statement held back by [`PgTx::defer`].
struct Deferred {
    sql: Cow<'static, str>,
    params: Vec<Param>,
}

impl PgTx {
    fn conn(&self) -> &ClientWrapper {
        self.conn.as_ref().expect("a transaction is used only until it is committed or dropped")
    }

    /// Holds back a statement whose result is not needed; it is sent ahead
    /// of the next read or with the commit.
    fn defer(&mut self, sql: impl Into<Cow<'static, str>>, params: Vec<Param>) {
        self.deferred.push(Deferred { sql: sql.into(), params });
    }

    /// Runs `sql` and returns its rows, in one round trip with whatever has
    /// not been sent yet (`BEGIN`, deferred writes).
    async fn read(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        // Stays set unless this read completes: a failure, or a future
        // dropped mid-flight, leaves the transaction unfit to commit.
        let failed = std::mem::replace(&mut self.failed, true);
        let pending = self.take_pending();
        let conn = self.conn();
        let ahead = prepare_all(conn, &pending).await?;
        let statement = conn.prepare_cached(sql).await.map_err(query_error)?;
        let (sent, rows) = futures_util::join!(send_ahead(conn, &ahead), conn.query(&statement, params));
        sent?;
        let rows = rows.map_err(query_error)?;
        self.failed = failed;
        Ok(rows)
    }

    /// What must be sent before the next statement: `BEGIN` (the first
    /// time) and the deferred writes.
    fn take_pending(&mut self) -> Vec<Deferred> {
        let deferred = std::mem::take(&mut self.deferred);
        match std::mem::replace(&mut self.begun, true) {
            true => deferred,
            // Prepared like any statement, so it is not parsed anew each time.
            false => std::iter::once(Deferred { sql: "BEGIN".into(), params: Vec::new() }).chain(deferred).collect(),
        }
    }

    /// [`PgTx::read`] of a statement that yields at most one row.
    async fn read_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StoreError> {
        let mut rows = self.read(sql, params).await?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(StoreError::Corrupt(format!("{n} rows where at most one was expected"))),
        }
    }
}

/// Prepares each deferred statement (a round trip only the first time a
/// connection sees it), so that none stalls the pipeline once it is sent.
async fn prepare_all<'a>(
    conn: &ClientWrapper,
    deferred: &'a [Deferred],
) -> Result<Vec<(Statement, &'a Deferred)>, StoreError> {
    let mut prepared = Vec::with_capacity(deferred.len());
    for d in deferred {
        prepared.push((conn.prepare_cached(&d.sql).await.map_err(query_error)?, d));
    }
    Ok(prepared)
}

/// Sends the prepared statements, without waiting in between, and reports
/// the first failure in issue order (after a failed statement every later
/// one fails too, as part of an aborted transaction).
///
/// tokio-postgres sends a request when its future is first polled. The first
/// poll of this future polls each statement once, in order, so everything
/// is on its way once it returns `Pending`, and a future joined after this
/// one goes out after them. A statement that fails before it is even sent
/// (a parameter that cannot be encoded) ends that first poll with its error,
/// and nothing after it is sent: see `PgTx::commit`, which must then not
/// send its COMMIT.
async fn send_ahead(conn: &ClientWrapper, statements: &[(Statement, &Deferred)]) -> Result<(), StoreError> {
    let mut writes: Vec<_> = statements
        .iter()
        .map(|(statement, d)| {
            let params: Vec<&(dyn ToSql + Sync)> = d.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            Box::pin(futures_util::future::maybe_done(async move { conn.execute(statement, &params).await }))
        })
        .collect();
    for write in &mut writes {
        if futures_util::poll!(write.as_mut()).is_ready() && matches!(write.as_mut().output_mut(), Some(Err(_))) {
            return write.as_mut().take_output().expect("checked above").map(drop).map_err(query_error);
        }
    }
    futures_util::future::join_all(writes.iter_mut()).await;
    for write in &mut writes {
        write.as_mut().take_output().expect("joined").map_err(query_error)?;
    }
    Ok(())
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.begun {
            // Nothing was sent: the connection is as clean as it came.
            return;
        }
        // Roll back before the connection goes back to the pool; if that is
        // impossible, detach the connection so the server aborts the
        // transaction when it closes.
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

/// The statement writing outbox rows: the outbox lock, the notification,
/// the rows and the vendor's webhook messages for them, in one.
fn outbox_write(outbox: &[OutboxMessage]) -> (String, Vec<Param>) {
    let license_ids: Vec<Option<Uuid>> = outbox.iter().map(|m| m.license_id).collect();
    let topics: Vec<&'static str> = outbox.iter().map(|m| m.topic.as_str()).collect();
    let payloads: Vec<Value> = outbox.iter().map(|m| m.payload.clone()).collect();
    // Ids are assigned in array order, and only after the lock is held:
    // they are drawn as joined rows come out, and no row can come out of
    // the join before the lock's one row exists.
    //
    // The vendor's webhook messages (one per live endpoint subscribed to a
    // topic) travel in the same statement, so they cost no statement of
    // their own, and are written *before* the lock is taken (the lock's row
    // is computed from their count), so they do not lengthen the critical
    // section. Their ids need no order.
    let (a, b) = OUTBOX_LOCK;
    let sql = format!(
        "WITH vendor_messages AS (
             INSERT INTO webhook_messages (id, endpoint_id, event_type, payload, event_at, next_attempt_at)
             SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), e.id, m.topic, m.payload, now(), now()
               FROM unnest($2::text[], $3::jsonb[]) AS m(topic, payload)
               JOIN webhook_endpoints e
                 ON e.deleted_at IS NULL AND (m.topic = ANY (e.events) OR '*' = ANY (e.events))
             RETURNING 1
         ), outbox_lock AS MATERIALIZED (
             SELECT pg_advisory_xact_lock({a}, {b}), pg_notify('{OUTBOX_CHANNEL}', '')
               FROM (SELECT count(*) FROM vendor_messages) AS written
         )
         INSERT INTO outbox_events (license_id, topic, payload)
         SELECT m.license_id, m.topic, m.payload
           FROM outbox_lock,
                unnest($1::uuid[], $2::text[], $3::jsonb[]) WITH ORDINALITY AS m(license_id, topic, payload, n)
          ORDER BY m.n"
    );
    (sql, params![license_ids, topics, payloads])
}

impl StoreTx for PgTx {
    async fn insert_license(&mut self, license: &License) -> Result<(), StoreError> {
        let t = &license.terms;
        self.defer(
            "INSERT INTO licenses (id, subscription_id, key, key_hash, status, plan_id, max_devices, expires_at, grace_ends_at,
                                   source, user_id, entitlements, metadata, max_devices_override, expires_at_override,
                                   admin_suspended_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            params![
                license.id,
                license.subscription_id,
                license.key.expose().to_owned(),
                license.key.lookup_hash(),
                t.status.as_str(),
                t.plan_id.clone(),
                max_devices_param(t),
                t.expires_at,
                t.grace_ends_at,
                license.source.as_str(),
                license.user_id.clone(),
                Value::from(license.entitlements.clone()),
                Value::Object(license.metadata.clone()),
                license.overrides.max_devices.map(max_devices_column),
                license.overrides.expires_at,
                license.overrides.suspended_at,
            ],
        );
        Ok(())
    }

    async fn update_license_terms(&mut self, license_id: Uuid, t: &LicenseTerms) -> Result<(), StoreError> {
        self.defer(
            "UPDATE licenses SET status = $2, plan_id = $3, max_devices = $4, expires_at = $5, grace_ends_at = $6,
                    updated_at = now()
              WHERE id = $1",
            params![
                license_id,
                t.status.as_str(),
                t.plan_id.clone(),
                max_devices_param(t),
                t.expires_at,
                t.grace_ends_at
            ],
        );
        Ok(())
    }

    async fn record_change(
        &mut self,
        subscription_id: Uuid,
        actor: &Actor,
        change: &SubscriptionChange,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO subscription_changes (subscription_id, kind, from_status, to_status, detail, actor, stripe_event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            params![
                subscription_id,
                change.kind(),
                change.from_status().map(SubscriptionStatus::as_str),
                change.to_status().map(SubscriptionStatus::as_str),
                change.detail(),
                actor.label(),
                actor.stripe_event_id().map(str::to_owned),
            ],
        );
        Ok(())
    }

    async fn lock_license_by_key_hash(&mut self, key_hash: &[u8]) -> Result<Option<License>, StoreError> {
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.key_hash = $1 FOR NO KEY UPDATE");
        self.read_opt(&sql, &[&key_hash]).await?.as_ref().map(license_from_row).transpose()
    }

    async fn lock_licenses_past_grace(&mut self, now: Timestamp, limit: i64) -> Result<Vec<License>, StoreError> {
        let sql = format!(
            "SELECT {LICENSE_COLUMNS} FROM licenses l
              WHERE l.status = 'active' AND l.grace_ends_at <= $1
              ORDER BY l.grace_ends_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED"
        );
        self.read(&sql, &[&now, &limit]).await?.iter().map(license_from_row).collect()
    }

    async fn license(&mut self, license_id: Uuid) -> Result<Option<License>, StoreError> {
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.id = $1");
        self.read_opt(&sql, &[&license_id]).await?.as_ref().map(license_from_row).transpose()
    }

    async fn lock_license(&mut self, license_id: Uuid) -> Result<Option<License>, StoreError> {
        let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.id = $1 FOR NO KEY UPDATE");
        self.read_opt(&sql, &[&license_id]).await?.as_ref().map(license_from_row).transpose()
    }

    async fn devices_of_license(&mut self, license_id: Uuid) -> Result<Vec<Device>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = $1 ORDER BY d.activated_at FOR NO KEY UPDATE"
        );
        self.read(&sql, &[&license_id]).await?.iter().map(device_from_row).collect()
    }

    async fn insert_device(&mut self, d: &Device, token_hash: &[u8]) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO devices (id, license_id, fingerprint, name, platform, app_version, token_hash, status,
                    activated_at, last_heartbeat_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            params![
                d.id,
                d.license_id,
                d.fingerprint.clone(),
                d.name.clone(),
                d.platform.clone(),
                d.app_version.clone(),
                token_hash.to_vec(),
                d.status.as_str(),
                d.activated_at,
                d.last_heartbeat_at,
            ],
        );
        Ok(())
    }

    async fn reactivate_device(&mut self, d: &Device, token_hash: &[u8]) -> Result<(), StoreError> {
        self.defer(
            "UPDATE devices SET name = $2, platform = $3, app_version = $4, token_hash = $5, status = 'active',
                    activated_at = $6, last_heartbeat_at = $7, deactivated_at = NULL, updated_at = now()
              WHERE id = $1",
            params![
                d.id,
                d.name.clone(),
                d.platform.clone(),
                d.app_version.clone(),
                token_hash.to_vec(),
                d.activated_at,
                d.last_heartbeat_at,
            ],
        );
        Ok(())
    }

    async fn lock_device_by_token_hash(&mut self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = $1 FOR NO KEY UPDATE");
        self.read_opt(&sql, &[&token_hash]).await?.as_ref().map(device_from_row).transpose()
    }

    async fn lock_device_of_user(
        &mut self,
        device_id: Uuid,
        user_id: Option<&str>,
    ) -> Result<Option<Device>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d
               JOIN licenses l ON l.id = d.license_id
               LEFT JOIN subscriptions s ON s.id = l.subscription_id
               LEFT JOIN customers c ON c.id = s.customer_id
              WHERE d.id = $1 AND ($2::text IS NULL OR c.user_id = $2 OR l.user_id = $2)
              FOR NO KEY UPDATE OF d"
        );
        self.read_opt(&sql, &[&device_id, &user_id]).await?.as_ref().map(device_from_row).transpose()
    }

    async fn touch_device(&mut self, device_id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        self.defer("UPDATE devices SET last_heartbeat_at = $2 WHERE id = $1", params![device_id, at]);
        Ok(())
    }

    async fn set_device_status(
        &mut self,
        device_id: Uuid,
        status: DeviceStatus,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.defer(
            "UPDATE devices SET status = $2, deactivated_at = $3, updated_at = now() WHERE id = $1",
            params![device_id, status.as_str(), at],
        );
        Ok(())
    }

    async fn rename_device(&mut self, device_id: Uuid, name: &str) -> Result<(), StoreError> {
        self.defer(
            "UPDATE devices SET name = $2, updated_at = now() WHERE id = $1",
            params![device_id, name.to_owned()],
        );
        Ok(())
    }

    async fn lock_overdue_devices(&mut self, cutoff: Timestamp, limit: i64) -> Result<Vec<Device>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d
              WHERE d.status = 'active' AND d.last_heartbeat_at < $1
              ORDER BY d.last_heartbeat_at LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED"
        );
        self.read(&sql, &[&cutoff, &limit]).await?.iter().map(device_from_row).collect()
    }

    // --- Admin license writes (issue 14) ---

    async fn lock_license_record(&mut self, license_id: Uuid) -> Result<Option<LockedLicense>, StoreError> {
        // A license's subscription never changes, so a license the first
        // statement misses is a manual one (or none).
        if let Some(row) = self.read_opt(&LOCK_STRIPE_LICENSE_RECORD, &[&license_id]).await? {
            return Ok(Some(LockedLicense {
                subscription: Some(subscription_from_row(&row)?),
                record: license_record_from_row_at(&row, SUBSCRIPTION_COLUMN_COUNT)?,
            }));
        }
        let row = self.read_opt(&LOCK_MANUAL_LICENSE_RECORD, &[&license_id]).await?;
        row.map(|row| Ok(LockedLicense { record: license_record_from_row_at(&row, 0)?, subscription: None }))
            .transpose()
    }

    async fn save_license(&mut self, license: &License) -> Result<(), StoreError> {
        let t = &license.terms;
        self.defer(
            "UPDATE licenses SET status = $2, plan_id = $3, max_devices = $4, expires_at = $5, grace_ends_at = $6,
                    entitlements = $7, metadata = $8, max_devices_override = $9, expires_at_override = $10,
                    admin_suspended_at = $11, updated_at = now()
              WHERE id = $1",
            params![
                license.id,
                t.status.as_str(),
                t.plan_id.clone(),
                max_devices_param(t),
                t.expires_at,
                t.grace_ends_at,
                Value::from(license.entitlements.clone()),
                Value::Object(license.metadata.clone()),
                license.overrides.max_devices.map(max_devices_column),
                license.overrides.expires_at,
                license.overrides.suspended_at,
            ],
        );
        Ok(())
    }

    async fn record_license_change(
        &mut self,
        license_id: Uuid,
        kind: &str,
        actor: &Actor,
        detail: Value,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO license_changes (license_id, kind, actor, detail) VALUES ($1, $2, $3, $4)",
            params![license_id, kind.to_owned(), actor.label(), detail],
        );
        Ok(())
    }

    async fn record_device_change(
        &mut self,
        device: &Device,
        kind: &str,
        actor: &Actor,
        detail: Value,
    ) -> Result<(), StoreError> {
        self.defer(
            "INSERT INTO device_changes (device_id, license_id, kind, actor, detail) VALUES ($1, $2, $3, $4, $5)",
            params![device.id, device.license_id, kind.to_owned(), actor.label(), detail],
        );
        Ok(())
    }

    // --- Admin reads (issue 14): customers ---

    async fn enqueue(&mut self, message: &OutboxMessage) -> Result<(), StoreError> {
        self.outbox.push(message.clone());
        Ok(())
    }

    /// Outbox ids must commit in id order (readers page by id), so the
    /// rows are written under a global lock held until `COMMIT`. Taking it
    /// mid-transaction would serialise every outbox-writing unit of work for
    /// all of its remaining statements; instead the rows wait here and go
    /// out last, with the lock just ahead of them and the `COMMIT` just
    /// after, in the one pipelined round trip of the commit, so the lock is
    /// held for about one commit.
    async fn commit(mut self) -> Result<(), StoreError> {
        if self.failed {
            // Dropping `self` rolls back.
            return Err(StoreError::Query("the transaction was aborted by a failed statement".into()));
        }
        if !self.outbox.is_empty() {
            let (sql, params) = outbox_write(&std::mem::take(&mut self.outbox));
            self.defer(sql, params);
        }
        if !self.begun && self.deferred.is_empty() {
            return Ok(()); // Nothing was sent, so there is nothing to commit.
        }
        let pending = self.take_pending();
        // The connection stays in `self` until the outcome is known: should
        // this future fail early or be dropped mid-flight, `Drop` rolls back
        // rather than pool a connection with a transaction still open.
        let conn = self.conn();
        // Prepared before anything is sent: preparing is a round trip of its own.
        let ahead = prepare_all(conn, &pending).await?;
        let commit = conn.prepare_cached("COMMIT").await.map_err(query_error)?;
        // BEGIN, the deferred writes, the outbox lock and rows go out when
        // `sent` is first polled. A statement that could not even be sent
        // fails it there and then, and the COMMIT must not follow: the
        // database, which never saw it, would commit the rest.
        let (sent, committed) = {
            let mut sending = std::pin::pin!(send_ahead(conn, &ahead));
            match futures_util::poll!(sending.as_mut()) {
                std::task::Poll::Ready(Err(e)) => return Err(e), // Dropping `self` rolls back.
                std::task::Poll::Ready(Ok(())) => (Ok(()), conn.execute(&commit, &[]).await),
                std::task::Poll::Pending => futures_util::join!(sending, conn.execute(&commit, &[])),
            }
        };
        let conn = self.conn.take().expect("commit is called once");
        if committed.is_err() {
            // No answer to the COMMIT: the session's state is not worth
            // trusting; close it rather than return it to the pool.
            drop(Object::take(conn));
        }
        // A statement the database refused has turned the COMMIT into a
        // rollback, and the session, idle again, goes back to the pool.
        sent.and(committed.map(drop).map_err(query_error))
    }
}
