//! The PostgreSQL store (tokio-postgres through a deadpool pool).

use super::*;
use crate::domain::{LicenseKey, LicenseOverrides, LicenseStatus, SubscriptionSnapshot, SubscriptionStatus};
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

mod embedded {
    refinery::embed_migrations!("../migrations/postgres");
}

// Admin reads (issue 14).
mod admin_reads;
// Stripe backfill runs (issue 16).
mod backfill_runs;
// The customer portal's one-time codes (issue 19).
mod conninfo;
mod license_work;
mod portal_sessions;
// The vendor console's overview (issue 19).
mod overview;
mod stripe_sync;
mod tls;

pub use conninfo::SslMode;
use tls::Connector;

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
    connector: Connector,
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
    connector: &Connector,
) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<()>), StoreError> {
    use futures_util::StreamExt;
    let (client, mut connection) =
        connector.config().connect(connector.make_tls()).await.map_err(|e| connector.connect_error(&e))?;
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
    /// `url` is a `postgres://` URL (or key=value connection string);
    /// `max_connections` bounds the pool.
    ///
    /// `sslmode` has libpq's meaning (`disable`, `prefer` — the default —,
    /// `require`, `verify-ca`, `verify-full`) and `sslrootcert` names a PEM
    /// file of the certificate authorities to trust; without it
    /// `verify-ca` and `verify-full` trust the system's roots. A bad mode
    /// or an unreadable `sslrootcert` fails here; a server that fails the
    /// checks fails the first connection, with a message that says why.
    pub fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let connector = Connector::from_url(url)?;
        let manager = Manager::from_config(
            connector.config().clone(),
            connector.make_tls(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self { pool, connector })
    }

    /// The connection settings as tokio-postgres holds them. Its `sslmode`
    /// is only disable, prefer or require: the certificate checks of
    /// `verify-ca` and `verify-full` are the store's own TLS connector's.
    pub fn config(&self) -> &tokio_postgres::Config {
        self.connector.config()
    }

    /// The `sslmode` the connection string asked for (`prefer` if none).
    pub fn ssl_mode(&self) -> SslMode {
        self.connector.ssl_mode()
    }

    /// Pool usage: (connections open, connections idle, max size).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.max_size)
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => self.connector.connect_error(&e),
            e => pool_error(e),
        })
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
     l.admin_suspended_at, l.kind, l.updates_until, l.trial, l.disputed_at";

/// How many columns [`LICENSE_COLUMNS`] names.
const LICENSE_COLUMN_COUNT: usize = 19;

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
    let kind: String = row.get(first + 15);
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
            disputed_at: row.get(first + 18),
        },
        kind: license_kind(&kind)?,
        updates_until: row.get(first + 16),
        trial: row.get(first + 17),
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
    d.activated_at, d.last_heartbeat_at, d.deactivated_at, d.air_gapped";

/// How many columns [`DEVICE_COLUMNS`] names.
const DEVICE_COLUMN_COUNT: usize = 11;

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
        air_gapped: row.get(10),
    })
}

fn max_devices_param(terms: &LicenseTerms) -> i32 {
    i32::try_from(terms.max_devices).unwrap_or(i32::MAX)
}

impl Store for PgStore {
    async fn sync_stripe<T, F>(&self, keys: crate::storage::stripe_sync::StripeKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::stripe_sync::StripeBundle) -> (super::stripe_sync::Changeset, T) + Send + 'static,
    {
        stripe_sync::sync_stripe(self, keys, decide).await
    }

    async fn license_work<T, F>(&self, keys: super::license_work::LicenseKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::license_work::LicenseBundle) -> (super::changeset::Changeset, T) + Send + 'static,
    {
        license_work::license_work(self, keys, decide).await
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
        let connector = self.connector.clone();
        // Fail fast when the database cannot be reached at all.
        let first = listen(&connector).await?;
        tokio::spawn(async move {
            let mut connection = Some(first);
            let mut backoff = Duration::from_millis(100);
            loop {
                let (client, stream) = match connection.take() {
                    Some(c) => c,
                    None => match listen(&connector).await {
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

type Param = Box<dyn ToSql + Sync + Send>;

/// Owned statement parameters.
macro_rules! params {
    ($($param:expr),* $(,)?) => { vec![$(Box::new($param) as Param),*] };
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
