//! Either store behind one type, chosen at start-up from configuration, so
//! the server and embedders need not be generic over the backend.

#[cfg(feature = "postgres")]
use super::postgres::{PgStore, PgTx};
#[cfg(feature = "sqlite")]
use super::sqlite::{SqliteStore, SqliteTx};
use super::*;

// Admin reads (issue 14).
mod admin_reads;

/// PostgreSQL or the embedded SQLite store.
// One value per process (cloned by reference-counted handles inside): the
// size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// PostgreSQL (several instances may share it).
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
    /// Embedded SQLite file (one instance).
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
}

/// A transaction of an [`AnyStore`].
// Lives on the stack of one unit of work; not worth a heap allocation.
#[allow(clippy::large_enum_variant)]
pub enum AnyTx {
    /// PostgreSQL transaction.
    #[cfg(feature = "postgres")]
    Postgres(PgTx),
    /// SQLite transaction.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteTx),
}

impl AnyStore {
    /// `postgres` or `sqlite`, for logs and banners.
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// How the migrations applied to the database compare with those this
    /// build embeds (`/readyz`).
    pub async fn migration_check(&self) -> Result<super::migration_check::MigrationCheck, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.migration_check().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.migration_check().await,
        }
    }
}

#[cfg(feature = "postgres")]
impl From<PgStore> for AnyStore {
    fn from(store: PgStore) -> Self {
        Self::Postgres(store)
    }
}

#[cfg(feature = "sqlite")]
impl From<SqliteStore> for AnyStore {
    fn from(store: SqliteStore) -> Self {
        Self::Sqlite(store)
    }
}

impl Store for AnyStore {
    type Tx = AnyTx;

    async fn sync_stripe<T, F>(&self, keys: super::stripe_sync::StripeKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::stripe_sync::StripeBundle) -> (super::stripe_sync::Changeset, T) + Send + 'static,
    {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.sync_stripe(keys, decide).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.sync_stripe(keys, decide).await,
        }
    }

    async fn begin(&self) -> Result<AnyTx, StoreError> {
        Ok(match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => AnyTx::Postgres(s.begin().await?),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => AnyTx::Sqlite(s.begin().await?),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.migrate().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.migrate().await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.ping().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.ping().await,
        }
    }

    async fn record_event_failure(&self, event: &EventRecord<'_>, error: &str) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.record_event_failure(event, error).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.record_event_failure(event, error).await,
        }
    }

    async fn subscriptions_of_user(&self, user_id: &str) -> Result<Vec<Subscription>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.subscriptions_of_user(user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.subscriptions_of_user(user_id).await,
        }
    }

    async fn changes_of_user(&self, user_id: &str, limit: i64) -> Result<Vec<ChangeEntry>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.changes_of_user(user_id, limit).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.changes_of_user(user_id, limit).await,
        }
    }

    async fn payments_of_user(&self, user_id: &str, limit: i64) -> Result<Vec<PaymentRecord>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.payments_of_user(user_id, limit).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.payments_of_user(user_id, limit).await,
        }
    }

    async fn stripe_customers_of_user(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.stripe_customers_of_user(user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.stripe_customers_of_user(user_id).await,
        }
    }

    async fn licenses_of_user(&self, user_id: &str) -> Result<Vec<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.licenses_of_user(user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.licenses_of_user(user_id).await,
        }
    }

    async fn outbox_after(
        &self,
        after_id: i64,
        license_id: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.outbox_after(after_id, license_id, limit).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.outbox_after(after_id, license_id, limit).await,
        }
    }

    async fn license_by_key_hash(&self, key_hash: &[u8]) -> Result<Option<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.license_by_key_hash(key_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.license_by_key_hash(key_hash).await,
        }
    }

    async fn license_and_device(
        &self,
        key_hash: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<(Option<License>, Option<Device>), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.license_and_device(key_hash, fingerprint).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.license_and_device(key_hash, fingerprint).await,
        }
    }

    async fn device_by_token_hash(&self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.device_by_token_hash(token_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.device_by_token_hash(token_hash).await,
        }
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.devices_of_user(user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.devices_of_user(user_id).await,
        }
    }

    async fn license_belongs_to(&self, license_id: Uuid, user_id: &str) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.license_belongs_to(license_id, user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.license_belongs_to(license_id, user_id).await,
        }
    }

    async fn latest_outbox_id(&self) -> Result<i64, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.latest_outbox_id().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.latest_outbox_id().await,
        }
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.prune_outbox(before).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.prune_outbox(before).await,
        }
    }

    async fn watch_outbox(&self) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.watch_outbox().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.watch_outbox().await,
        }
    }

    async fn webhook_event_status(&self, event_id: &str) -> Result<Option<(String, i32, Option<String>)>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.webhook_event_status(event_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.webhook_event_status(event_id).await,
        }
    }

    // --- Admin reads (issue 14): Stripe deliveries ---

    async fn record_event_duplicate(&self, event_id: &str) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.record_event_duplicate(event_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.record_event_duplicate(event_id).await,
        }
    }

    // --- admin API tokens ---

    async fn insert_admin_token(
        &self,
        id: Uuid,
        name: &str,
        token_hash: &[u8],
        scopes: &Scopes,
    ) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.insert_admin_token(id, name, token_hash, scopes).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.insert_admin_token(id, name, token_hash, scopes).await,
        }
    }

    async fn admin_token_by_hash(&self, token_hash: &[u8]) -> Result<Option<AdminTokenRecord>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.admin_token_by_hash(token_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.admin_token_by_hash(token_hash).await,
        }
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.admin_tokens().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.admin_tokens().await,
        }
    }

    async fn revoke_admin_token(&self, name: &str, at: Timestamp) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.revoke_admin_token(name, at).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.revoke_admin_token(name, at).await,
        }
    }

    async fn touch_admin_token(&self, id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.touch_admin_token(id, at).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.touch_admin_token(id, at).await,
        }
    }

    // --- Webhooks to the vendor (issue 14) ---

    async fn create_webhook_endpoint(&self, endpoint: &NewWebhookEndpoint<'_>) -> Result<WebhookEndpoint, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.create_webhook_endpoint(endpoint).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.create_webhook_endpoint(endpoint).await,
        }
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.webhook_endpoints().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.webhook_endpoints().await,
        }
    }

    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.webhook_endpoint(id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.webhook_endpoint(id).await,
        }
    }

    async fn delete_webhook_endpoint(&self, id: Uuid, at: Timestamp) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.delete_webhook_endpoint(id, at).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.delete_webhook_endpoint(id, at).await,
        }
    }

    async fn webhook_deliveries(
        &self,
        endpoint_id: Uuid,
        cursor: Option<&WebhookDeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.webhook_deliveries(endpoint_id, cursor, limit).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.webhook_deliveries(endpoint_id, cursor, limit).await,
        }
    }

    async fn retry_webhook_message(&self, message_id: &str, now: Timestamp) -> Result<WebhookRetry, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.retry_webhook_message(message_id, now).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.retry_webhook_message(message_id, now).await,
        }
    }

    async fn claim_webhook_messages(&self, claim: &WebhookClaim<'_>) -> Result<Vec<ClaimedWebhook>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.claim_webhook_messages(claim).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.claim_webhook_messages(claim).await,
        }
    }

    async fn record_webhook_attempt(&self, record: &WebhookAttemptRecord<'_>) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.record_webhook_attempt(record).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.record_webhook_attempt(record).await,
        }
    }

    async fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.next_webhook_due().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.next_webhook_due().await,
        }
    }
}

impl StoreTx for AnyTx {
    async fn claim_event(&mut self, event: &EventRecord<'_>) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.claim_event(event).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.claim_event(event).await,
        }
    }

    async fn finish_event(
        &mut self,
        event_id: &str,
        disposition: EventDisposition,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.finish_event(event_id, disposition, note).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.finish_event(event_id, disposition, note).await,
        }
    }

    async fn upsert_customer(&mut self, stripe_customer_id: &str, user_id: Option<&str>) -> Result<Uuid, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.upsert_customer(stripe_customer_id, user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.upsert_customer(stripe_customer_id, user_id).await,
        }
    }

    async fn lock_subscription(
        &mut self,
        stripe_subscription_id: &str,
    ) -> Result<Option<LockedSubscription>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_subscription(stripe_subscription_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_subscription(stripe_subscription_id).await,
        }
    }

    async fn save_subscription(
        &mut self,
        customer_id: Uuid,
        subscription: &Subscription,
        actor: &Actor,
        changes: &[SubscriptionChange],
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.save_subscription(customer_id, subscription, actor, changes).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.save_subscription(customer_id, subscription, actor, changes).await,
        }
    }

    async fn license_of_subscription(&mut self, subscription_id: Uuid) -> Result<Option<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.license_of_subscription(subscription_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.license_of_subscription(subscription_id).await,
        }
    }

    async fn insert_license(&mut self, license: &License) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.insert_license(license).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.insert_license(license).await,
        }
    }

    async fn update_license_terms(&mut self, license_id: Uuid, terms: &LicenseTerms) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.update_license_terms(license_id, terms).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.update_license_terms(license_id, terms).await,
        }
    }

    async fn record_change(
        &mut self,
        subscription_id: Uuid,
        actor: &Actor,
        change: &SubscriptionChange,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.record_change(subscription_id, actor, change).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.record_change(subscription_id, actor, change).await,
        }
    }

    async fn upsert_payment(&mut self, customer_id: Uuid, payment: &Payment) -> Result<PaymentWrite, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.upsert_payment(customer_id, payment).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.upsert_payment(customer_id, payment).await,
        }
    }

    async fn has_paid_invoice(&mut self, stripe_subscription_id: &str) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.has_paid_invoice(stripe_subscription_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.has_paid_invoice(stripe_subscription_id).await,
        }
    }

    async fn mark_customer_deleted(&mut self, customer_id: Uuid) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.mark_customer_deleted(customer_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.mark_customer_deleted(customer_id).await,
        }
    }

    async fn license_of_stripe_subscription(
        &mut self,
        stripe_subscription_id: &str,
    ) -> Result<Option<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.license_of_stripe_subscription(stripe_subscription_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.license_of_stripe_subscription(stripe_subscription_id).await,
        }
    }

    async fn lock_license_by_key_hash(&mut self, key_hash: &[u8]) -> Result<Option<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_license_by_key_hash(key_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_license_by_key_hash(key_hash).await,
        }
    }

    async fn lock_licenses_past_grace(&mut self, now: Timestamp, limit: i64) -> Result<Vec<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_licenses_past_grace(now, limit).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_licenses_past_grace(now, limit).await,
        }
    }

    async fn license(&mut self, license_id: Uuid) -> Result<Option<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.license(license_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.license(license_id).await,
        }
    }

    async fn lock_license(&mut self, license_id: Uuid) -> Result<Option<License>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_license(license_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_license(license_id).await,
        }
    }

    async fn devices_of_license(&mut self, license_id: Uuid) -> Result<Vec<Device>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.devices_of_license(license_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.devices_of_license(license_id).await,
        }
    }

    async fn insert_device(&mut self, device: &Device, token_hash: &[u8]) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.insert_device(device, token_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.insert_device(device, token_hash).await,
        }
    }

    async fn reactivate_device(&mut self, device: &Device, token_hash: &[u8]) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.reactivate_device(device, token_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.reactivate_device(device, token_hash).await,
        }
    }

    async fn lock_device_by_token_hash(&mut self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_device_by_token_hash(token_hash).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_device_by_token_hash(token_hash).await,
        }
    }

    async fn lock_device_of_user(
        &mut self,
        device_id: Uuid,
        user_id: Option<&str>,
    ) -> Result<Option<Device>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_device_of_user(device_id, user_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_device_of_user(device_id, user_id).await,
        }
    }

    async fn touch_device(&mut self, device_id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.touch_device(device_id, at).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.touch_device(device_id, at).await,
        }
    }

    async fn set_device_status(
        &mut self,
        device_id: Uuid,
        status: DeviceStatus,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.set_device_status(device_id, status, at).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.set_device_status(device_id, status, at).await,
        }
    }

    async fn rename_device(&mut self, device_id: Uuid, name: &str) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.rename_device(device_id, name).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.rename_device(device_id, name).await,
        }
    }

    async fn lock_overdue_devices(&mut self, cutoff: Timestamp, limit: i64) -> Result<Vec<Device>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_overdue_devices(cutoff, limit).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_overdue_devices(cutoff, limit).await,
        }
    }

    async fn record_device_change(
        &mut self,
        device: &Device,
        kind: &str,
        actor: &Actor,
        detail: Value,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.record_device_change(device, kind, actor, detail).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.record_device_change(device, kind, actor, detail).await,
        }
    }

    // --- Admin reads (issue 14): customers ---

    async fn set_customer_email(
        &mut self,
        customer_id: Uuid,
        email: Option<&str>,
        created: i64,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.set_customer_email(customer_id, email, created).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.set_customer_email(customer_id, email, created).await,
        }
    }

    async fn enqueue(&mut self, message: &OutboxMessage) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.enqueue(message).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.enqueue(message).await,
        }
    }

    // --- Admin license writes (issue 14) ---

    async fn lock_license_record(&mut self, license_id: Uuid) -> Result<Option<LockedLicense>, StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.lock_license_record(license_id).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.lock_license_record(license_id).await,
        }
    }

    async fn save_license(&mut self, license: &License) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.save_license(license).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.save_license(license).await,
        }
    }

    async fn record_license_change(
        &mut self,
        license_id: Uuid,
        kind: &str,
        actor: &Actor,
        detail: Value,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.record_license_change(license_id, kind, actor, detail).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.record_license_change(license_id, kind, actor, detail).await,
        }
    }

    async fn commit(self) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.commit().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(t) => t.commit().await,
        }
    }
}

#[cfg(not(all(feature = "postgres", feature = "sqlite")))]
fn compiled_out(feature: &str) -> StoreError {
    StoreError::Unavailable(format!("billing-core was built without the `{feature}` feature").into())
}

/// Where the data lives, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// An SQLite database file.
    Sqlite(std::path::PathBuf),
}

impl StoreLocation {
    /// Reads `DATABASE_URL`-style configuration: `postgres://…` selects
    /// PostgreSQL, `sqlite://path` an SQLite file, nothing the embedded
    /// default `<data_dir>/billing.sqlite3`.
    pub fn from_url(url: Option<&str>, data_dir: &std::path::Path) -> Result<Self, String> {
        match url.map(str::trim).filter(|u| !u.is_empty()) {
            None => Ok(Self::Sqlite(data_dir.join("billing.sqlite3"))),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Self::Postgres(u.to_owned()))
            }
            Some(u) => match u.strip_prefix("sqlite://") {
                Some(path) if !path.is_empty() => Ok(Self::Sqlite(std::path::PathBuf::from(path))),
                _ => Err("DATABASE_URL must start with postgres://, postgresql:// or sqlite://".to_owned()),
            },
        }
    }
}

impl AnyStore {
    /// Opens the store at `location` (creating an SQLite file and its
    /// directory if needed, both owner-only). PostgreSQL connections open
    /// lazily.
    pub async fn open(location: &StoreLocation, max_connections: usize) -> Result<Self, StoreError> {
        #[cfg(not(feature = "postgres"))]
        let _ = max_connections;
        match location {
            #[cfg(feature = "postgres")]
            StoreLocation::Postgres(url) => Ok(Self::Postgres(PgStore::connect(url, max_connections)?)),
            #[cfg(not(feature = "postgres"))]
            StoreLocation::Postgres(_) => Err(compiled_out("postgres")),
            #[cfg(not(feature = "sqlite"))]
            StoreLocation::Sqlite(_) => Err(compiled_out("sqlite")),
            #[cfg(feature = "sqlite")]
            StoreLocation::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    super::sqlite::create_private_dir(dir).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
                }
                Ok(Self::Sqlite(SqliteStore::open(path).await?))
            }
        }
    }

    /// Connection pool usage (open, idle, max) where there is a pool.
    pub fn pool_status(&self) -> Option<(usize, usize, usize)> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => Some(s.pool_status()),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoreLocation;
    use std::path::Path;

    #[test]
    fn urls_select_the_backend() {
        let dir = Path::new("data");
        assert_eq!(StoreLocation::from_url(None, dir), Ok(StoreLocation::Sqlite(dir.join("billing.sqlite3"))));
        assert_eq!(StoreLocation::from_url(Some(" "), dir), Ok(StoreLocation::Sqlite(dir.join("billing.sqlite3"))));
        assert_eq!(
            StoreLocation::from_url(Some("postgres://u@h/db"), dir),
            Ok(StoreLocation::Postgres("postgres://u@h/db".into()))
        );
        assert_eq!(
            StoreLocation::from_url(Some("sqlite:///var/lib/billing.db"), dir),
            Ok(StoreLocation::Sqlite("/var/lib/billing.db".into()))
        );
        assert!(StoreLocation::from_url(Some("mysql://x"), dir).is_err());
        assert!(StoreLocation::from_url(Some("sqlite://"), dir).is_err());
    }
}
