//! Either store behind one type, chosen at start-up from configuration, so
//! the server and embedders need not be generic over the backend.

#[cfg(feature = "postgres")]
use super::postgres::PgStore;
#[cfg(feature = "sqlite")]
use super::sqlite::SqliteStore;
use super::*;

/// Calls the same method on whichever backend `$self` holds. Each arm is
/// compiled only with its backend's feature, so a one-backend build has a
/// one-armed match.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            #[cfg(feature = "postgres")]
            Self::Postgres(inner) => inner.$method($($arg),*).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(inner) => inner.$method($($arg),*).await,
        }
    };
}

/// Trait methods that do nothing but forward to the backend, one line each:
/// `fn name(arg: Type, ...) -> Result<..., StoreError>;`. The receiver is
/// given once per block because `self` must come from this macro's own
/// tokens to be usable in the body it writes.
macro_rules! delegate {
    (&self; $(fn $method:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        $(async fn $method(&self, $($arg: $ty),*) -> $ret {
            dispatch!(self.$method($($arg),*))
        })*
    };
    (&mut self; $(fn $method:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        $(async fn $method(&mut self, $($arg: $ty),*) -> $ret {
            dispatch!(self.$method($($arg),*))
        })*
    };
}

// Admin reads (issue 14); declared after the macros so that it can use them.
mod admin_reads;
// Stripe backfill runs (issue 16).
mod backfill_runs;
// The customer portal's one-time codes (issue 19).
mod portal_sessions;
// The vendor console's overview (issue 19).
mod overview;

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
        dispatch!(self.migration_check())
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

    async fn license_work<T, F>(&self, keys: super::license_work::LicenseKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::license_work::LicenseBundle) -> (super::changeset::Changeset, T) + Send + 'static,
    {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s.license_work(keys, decide).await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(s) => s.license_work(keys, decide).await,
        }
    }

    delegate! { &self;
        fn migrate() -> Result<(), StoreError>;
        fn ping() -> Result<(), StoreError>;
        fn record_event_failure(event: &EventRecord<'_>, error: &str) -> Result<(), StoreError>;
        fn subscriptions_of_user(user_id: &str) -> Result<Vec<Subscription>, StoreError>;
        fn changes_of_user(user_id: &str, limit: i64) -> Result<Vec<ChangeEntry>, StoreError>;
        fn payments_of_user(user_id: &str, limit: i64) -> Result<Vec<PaymentRecord>, StoreError>;
        fn stripe_customers_of_user(user_id: &str) -> Result<Vec<String>, StoreError>;
        fn licenses_of_user(user_id: &str) -> Result<Vec<License>, StoreError>;
        fn outbox_after(after_id: i64, license_id: Option<Uuid>, limit: i64) -> Result<Vec<OutboxEvent>, StoreError>;
        fn license_by_key_hash(key_hash: &[u8]) -> Result<Option<License>, StoreError>;
        fn license_and_device(key_hash: &[u8], fingerprint: Option<&str>)
            -> Result<(Option<License>, Option<Device>), StoreError>;
        fn device_by_token_hash(token_hash: &[u8]) -> Result<Option<Device>, StoreError>;
        fn devices_of_user(user_id: &str) -> Result<Vec<Device>, StoreError>;
        fn license_belongs_to(license_id: Uuid, user_id: &str) -> Result<bool, StoreError>;
        fn latest_outbox_id() -> Result<i64, StoreError>;
        fn prune_outbox(before: Timestamp) -> Result<u64, StoreError>;
        fn watch_outbox() -> Result<tokio::sync::mpsc::Receiver<()>, StoreError>;
        fn webhook_event_status(event_id: &str) -> Result<Option<(String, i32, Option<String>)>, StoreError>;
        // Admin reads (issue 14): Stripe deliveries.
        fn record_event_duplicate(event_id: &str) -> Result<(), StoreError>;
        // Admin API tokens.
        fn insert_admin_token(id: Uuid, name: &str, token_hash: &[u8], scopes: &Scopes) -> Result<bool, StoreError>;
        fn admin_token_by_hash(token_hash: &[u8]) -> Result<Option<AdminTokenRecord>, StoreError>;
        fn admin_tokens() -> Result<Vec<AdminTokenRecord>, StoreError>;
        fn revoke_admin_token(name: &str, at: Timestamp) -> Result<bool, StoreError>;
        fn touch_admin_token(id: Uuid, at: Timestamp) -> Result<(), StoreError>;
        // Webhooks to the vendor (issue 14).
        fn create_webhook_endpoint(endpoint: &NewWebhookEndpoint<'_>) -> Result<WebhookEndpoint, StoreError>;
        fn webhook_endpoints() -> Result<Vec<WebhookEndpoint>, StoreError>;
        fn webhook_endpoint(id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError>;
        fn delete_webhook_endpoint(id: Uuid, at: Timestamp) -> Result<bool, StoreError>;
        fn webhook_deliveries(endpoint_id: Uuid, cursor: Option<&WebhookDeliveryCursor>, limit: i64)
            -> Result<Vec<WebhookDelivery>, StoreError>;
        fn retry_webhook_message(message_id: &str, now: Timestamp) -> Result<WebhookRetry, StoreError>;
        fn claim_webhook_messages(claim: &WebhookClaim<'_>) -> Result<Vec<ClaimedWebhook>, StoreError>;
        fn record_webhook_attempt(record: &WebhookAttemptRecord<'_>) -> Result<bool, StoreError>;
        fn next_webhook_due() -> Result<Option<Timestamp>, StoreError>;
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
