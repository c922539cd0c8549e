//! The engine: [`Billing`], what `billing-server` (or any embedding
//! service) calls. Its use cases live one module per group:
//! [`crate::stripe_sync`] (webhooks and the snapshots of dashboard actions),
//! [`crate::reads`], [`crate::grace`], [`crate::licensing`],
//! [`crate::actions`], [`crate::admin_licenses`], [`crate::admin_reads`],
//! [`crate::admin_tokens`], [`crate::vendor_webhooks`].

use crate::domain::{PlanCatalog, Timestamp};
use crate::storage::changeset::Changeset;
use crate::storage::license_work::{LicenseBundle, LicenseKeys};
use crate::storage::stripe_sync::{StripeBundle, StripeKeys};
use crate::storage::{Store, StoreError};
#[cfg(feature = "stripe-api")]
use crate::stripe::StripeClient;
use crate::stripe::WebhookSecrets;
use crate::validation_view::ValidationView;
use std::sync::Arc;
use uuid::Uuid;

pub use crate::messages::{LICENSE_CREATED, LICENSE_UPDATED};
pub use crate::stripe_sync::{WebhookError, WebhookGroupStats, WebhookOutcome, WebhookReceipt};

/// Settings of the billing rules. Build with [`BillingConfig::new`]: the
/// fields depend on Cargo features, so literals would break embedders when
/// features are unified.
#[derive(Clone)]
#[non_exhaustive]
pub struct BillingConfig {
    /// What the vendor sells.
    pub plans: PlanCatalog,
    /// How long a past-due subscription keeps its license working.
    pub grace: time::Duration,
    /// Accepted webhook signing secrets; `None` switches webhooks off.
    pub webhook_secrets: Option<WebhookSecrets>,
    /// The Stripe API, when a secret key is configured.
    #[cfg(feature = "stripe-api")]
    pub stripe: Option<StripeClient>,
    /// Devices, heartbeats and certificates.
    pub licensing: crate::licensing::LicensingConfig,
    /// How the vendor's webhooks are delivered.
    #[cfg(feature = "vendor-webhooks")]
    pub vendor_webhooks: crate::vendor_webhooks::VendorWebhookSettings,
    /// How many licenses validation keeps in memory (0: none; see
    /// [`crate::validation_view`]).
    pub validation_cache_licenses: usize,
}

impl BillingConfig {
    /// Defaults: 7 days of grace, webhooks off, no Stripe API.
    pub fn new(plans: PlanCatalog, licensing: crate::licensing::LicensingConfig) -> Self {
        Self {
            plans,
            grace: time::Duration::days(7),
            webhook_secrets: None,
            #[cfg(feature = "stripe-api")]
            stripe: None,
            licensing,
            #[cfg(feature = "vendor-webhooks")]
            vendor_webhooks: crate::vendor_webhooks::VendorWebhookSettings::default(),
            validation_cache_licenses: crate::validation_view::DEFAULT_CAPACITY,
        }
    }

    /// How many licenses validation keeps in memory (0: none).
    pub fn with_validation_cache(mut self, licenses: usize) -> Self {
        self.validation_cache_licenses = licenses;
        self
    }

    /// Sets how the vendor's webhooks are delivered.
    #[cfg(feature = "vendor-webhooks")]
    pub fn with_vendor_webhooks(mut self, settings: crate::vendor_webhooks::VendorWebhookSettings) -> Self {
        self.vendor_webhooks = settings;
        self
    }

    /// How long a past-due subscription keeps its license working.
    pub fn with_grace(mut self, grace: time::Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Accepted webhook signing secrets (None: webhooks off).
    pub fn with_webhook_secrets(mut self, secrets: Option<WebhookSecrets>) -> Self {
        self.webhook_secrets = secrets;
        self
    }

    /// The Stripe API client (None: actions off, ambiguity settled by arrival order).
    #[cfg(feature = "stripe-api")]
    pub fn with_stripe(mut self, stripe: Option<StripeClient>) -> Self {
        self.stripe = stripe;
        self
    }
}

/// The clock, injectable for tests of time-based rules.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The billing and licensing engine over a store.
#[derive(Clone)]
pub struct Billing<S: Store> {
    store: S,
    config: Arc<BillingConfig>,
    clock: Clock,
    groups: Arc<crate::stripe_sync::Groups>,
    view: Arc<ValidationView>,
}

/// Errors of the read use cases.
pub type ReadError = StoreError;

impl<S: Store> Billing<S> {
    /// Builds the engine.
    pub fn new(store: S, config: BillingConfig) -> Self {
        let view = Arc::new(ValidationView::new(config.validation_cache_licenses));
        Self {
            store,
            config: Arc::new(config),
            clock: Arc::new(time::OffsetDateTime::now_utc),
            groups: Arc::default(),
            view,
        }
    }

    /// The in-memory view validation answers from, which an
    /// [`crate::events::EventHub`] keeps current (hand it to
    /// [`crate::events::EventHub::start_with_view`]).
    pub fn validation_view(&self) -> &Arc<ValidationView> {
        &self.view
    }

    /// [`Store::license_work`], and then, on this instance at once, the
    /// licenses whose changes it announced leave the validation view (other
    /// instances hear of them through the outbox).
    pub(crate) async fn license_work<T, F>(&self, keys: LicenseKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(LicenseBundle) -> (Changeset, T) + Send + 'static,
    {
        Ok(self.forget_announced(self.store.license_work(keys, noting_announced(decide)).await?))
    }

    /// [`Store::sync_stripe`], with [`Self::license_work`]'s invalidation.
    pub(crate) async fn sync_stripe<T, F>(&self, keys: StripeKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(StripeBundle) -> (Changeset, T) + Send + 'static,
    {
        Ok(self.forget_announced(self.store.sync_stripe(keys, noting_announced(decide)).await?))
    }

    /// Drops from the validation view the licenses a committed unit of
    /// work announced ([`noting_announced`]).
    fn forget_announced<T>(&self, (out, announced): (T, Vec<Uuid>)) -> T {
        announced.into_iter().for_each(|id| self.view.invalidate(id));
        out
    }

    /// Replaces the clock (tests of grace periods and expiry).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The current time by the engine's clock.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The configuration.
    pub fn config(&self) -> &BillingConfig {
        &self.config
    }

    pub(crate) fn config_arc(&self) -> Arc<BillingConfig> {
        self.config.clone()
    }

    pub(crate) fn groups(&self) -> &crate::stripe_sync::Groups {
        &self.groups
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The plan catalog.
    pub fn plans(&self) -> &PlanCatalog {
        &self.config.plans
    }

    /// How deliveries have been grouped so far.
    pub fn webhook_group_stats(&self) -> WebhookGroupStats {
        self.groups.stats()
    }

    /// Whether webhook secrets are configured.
    pub fn webhooks_enabled(&self) -> bool {
        self.config.webhook_secrets.is_some()
    }
}

/// `decide`, also returning the licenses its changeset announces a change of.
fn noting_announced<B, T>(decide: impl FnOnce(B) -> (Changeset, T)) -> impl FnOnce(B) -> (Changeset, (T, Vec<Uuid>)) {
    move |bundle| {
        let (changes, out) = decide(bundle);
        let mut announced: Vec<Uuid> = changes.outbox.iter().filter_map(|m| m.license_id).collect();
        announced.sort_unstable();
        announced.dedup();
        (changes, (out, announced))
    }
}

/// Formats a timestamp as RFC 3339.
pub fn rfc3339(t: Timestamp) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("UTC timestamps always format")
}

/// `error: cause: cause`, for logs and the failed-delivery record.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
