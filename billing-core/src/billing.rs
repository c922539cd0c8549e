//! The use cases: what `billing-server` (or any embedding service) calls.
//! Each is one unit of work over a [`Store`]: begin, read, apply a pure rule
//! from [`crate::domain`], write state + audit + outbox, commit.

use crate::domain::license::{self, LicenseDecision};
use crate::domain::subscription::{self, changes_between, Freshness};
use crate::domain::{Actor, License, Payment, PlanCatalog, Subscription, SubscriptionSnapshot, Timestamp};
use crate::storage::{
    ChangeEntry, EventDisposition, EventRecord, LockedSubscription, OutboxMessage, PaymentRecord, PaymentWrite, Store,
    StoreError, StoreTx,
};
#[cfg(feature = "stripe-api")]
use crate::stripe::StripeClient;
use crate::stripe::{CheckoutSession, Event, EventError, EventPayload, SignatureError, StripeCustomer, WebhookSecrets};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

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
        }
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
    groups: Arc<GroupCounters>,
}

/// How webhook deliveries have been grouped into units of work since the
/// engine was built (cumulative; a bench takes the difference of two reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookGroupStats {
    /// Units of work committed (or attempted) for groups of deliveries.
    pub groups: u64,
    /// Deliveries they carried.
    pub events: u64,
}

impl WebhookGroupStats {
    /// Deliveries per group (0 before the first).
    pub fn mean_group_size(&self) -> f64 {
        if self.groups == 0 {
            0.0
        } else {
            self.events as f64 / self.groups as f64
        }
    }
}

#[derive(Default)]
struct GroupCounters {
    groups: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
}

impl GroupCounters {
    fn record(&self, events: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.groups.fetch_add(1, Relaxed);
        self.events.fetch_add(events as u64, Relaxed);
    }
}

/// Whether the customer stored with a subscription is the snapshot's and
/// already knows whatever user the snapshot names, so that upserting it
/// would change nothing.
fn customer_is_up_to_date(locked: &LockedSubscription, snapshot: &SubscriptionSnapshot) -> bool {
    locked.subscription.snapshot.stripe_customer_id == snapshot.stripe_customer_id
        && (locked.customer_user_id.is_some() || snapshot.user_id.is_none())
}

/// What became of a webhook delivery that was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Its effects were applied.
    Processed,
    /// Already applied earlier; nothing changed.
    Duplicate,
    /// A type we do not act on; recorded.
    Ignored,
}

impl WebhookOutcome {
    /// Metric and log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// Why a webhook delivery was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No webhook secret is configured.
    #[error("webhooks are not configured")]
    NotConfigured,
    /// The signature does not check out; nothing was stored.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Signed, but not a Stripe event envelope, or an event we act on whose
    /// object cannot be read (or holds a NUL); nothing was stored.
    #[error("payload is not a Stripe event")]
    Malformed(#[source] EventError),
    /// Applying it failed; rolled back, failure recorded, Stripe should retry.
    #[error("failed to process event")]
    Failed {
        /// The event type.
        event_type: Option<String>,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An accepted delivery: what it was and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReceipt {
    /// The event type, e.g. `customer.subscription.updated`.
    pub event_type: String,
    /// Processed, duplicate or ignored.
    pub outcome: WebhookOutcome,
}

/// Errors of the read use cases.
pub type ReadError = StoreError;

impl<S: Store> Billing<S> {
    /// Builds the engine.
    pub fn new(store: S, config: BillingConfig) -> Self {
        Self { store, config: Arc::new(config), clock: Arc::new(time::OffsetDateTime::now_utc), groups: Arc::default() }
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
        use std::sync::atomic::Ordering::Relaxed;
        WebhookGroupStats { groups: self.groups.groups.load(Relaxed), events: self.groups.events.load(Relaxed) }
    }

    /// Whether webhook secrets are configured.
    pub fn webhooks_enabled(&self) -> bool {
        self.config.webhook_secrets.is_some()
    }

    /// Verifies, deduplicates and applies one Stripe webhook delivery.
    pub async fn ingest_webhook(&self, body: &[u8], signature: Option<&str>) -> Result<WebhookReceipt, WebhookError> {
        let secrets = self.config.webhook_secrets.as_ref().ok_or(WebhookError::NotConfigured)?;
        secrets.verify(signature, body, self.now().unix_timestamp())?;
        // An object we cannot read will not become readable by retrying the
        // same signed bytes: refuse it (Stripe stops retrying a 4xx) and
        // store nothing, rather than fail it for days.
        let event = Event::parse(body).map_err(WebhookError::Malformed)?;
        self.groups.record(1);
        let receipt = self.apply_delivery(&event, body).await?;
        if receipt.outcome == WebhookOutcome::Duplicate {
            // Counted on its own: the duplicate's transaction was refused.
            if let Err(e) = self.store.record_event_duplicate(&event.id).await {
                tracing::warn!(event_id = %event.id, error = %error_chain(&e), "could not count a duplicate delivery");
            }
        }
        Ok(receipt)
    }

    /// Applies a parsed delivery through its unit of work, keeping `body`
    /// with the claim (or with the failure) so that it can be replayed. A
    /// delivery already applied is reported as a duplicate and changes nothing.
    pub(crate) async fn apply_delivery(&self, event: &Event, body: &[u8]) -> Result<WebhookReceipt, WebhookError> {
        let record = EventRecord {
            id: &event.id,
            kind: &event.kind,
            created: event.created,
            api_version: event.api_version.as_deref(),
            object_id: event.object_id.as_deref(),
            payload: body,
        };
        match self.apply_event(event, &record).await {
            Ok(outcome) => Ok(WebhookReceipt { event_type: event.kind.clone(), outcome }),
            Err(e) if matches!(e.downcast_ref(), Some(StoreError::AlreadyApplied)) => {
                Ok(WebhookReceipt { event_type: event.kind.clone(), outcome: WebhookOutcome::Duplicate })
            }
            Err(e) => {
                self.record_failure(&record, e.as_ref()).await;
                Err(WebhookError::Failed { event_type: Some(event.kind.clone()), source: e })
            }
        }
    }

    async fn record_failure(&self, record: &EventRecord<'_>, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let message = error_chain(error);
        tracing::warn!(event_id = record.id, event_type = record.kind, error = %message, "webhook processing failed");
        if let Err(e) = self.store.record_event_failure(record, &message).await {
            tracing::error!(event_id = record.id, error = %error_chain(&e), "could not record webhook failure");
        }
    }

    async fn apply_event(
        &self,
        event: &Event,
        record: &EventRecord<'_>,
    ) -> Result<WebhookOutcome, Box<dyn std::error::Error + Send + Sync>> {
        let actor = Actor::Stripe { event_id: event.id.clone() };
        match &event.payload {
            EventPayload::Subscription(snapshot) => {
                match self.apply_subscription_event(record, &actor, snapshot, event.created, self.ambiguity()).await? {
                    Applied::Done(outcome) => Ok(outcome),
                    Applied::Ambiguous => {
                        let current = self.refetch(&snapshot.stripe_subscription_id).await?;
                        tracing::info!(event_id = record.id, "same-second snapshot settled by re-fetching from Stripe");
                        let ambiguity = Ambiguity::ApplyLaterArrival;
                        match self.apply_subscription_event(record, &actor, &current, event.created, ambiguity).await? {
                            Applied::Done(outcome) => Ok(outcome),
                            Applied::Ambiguous => unreachable!("ambiguity is accepted on the second pass"),
                        }
                    }
                }
            }
            EventPayload::CheckoutCompleted(session) => Ok(self.apply_checkout(record, &actor, session).await?),
            EventPayload::Invoice(payment) => Ok(self.apply_invoice(record, &actor, payment).await?),
            EventPayload::Customer(customer) => Ok(self.apply_customer(record, customer, event.created).await?),
            EventPayload::Ignored => {
                let mut tx = self.store.begin().await?;
                tx.claim_event(record).await?;
                tx.finish_event(record.id, EventDisposition::Ignored, None).await?;
                tx.commit().await?;
                Ok(WebhookOutcome::Ignored)
            }
        }
    }

    /// With an API key, an ambiguous same-second delivery is settled by
    /// asking Stripe for the current object; without one, the later arrival wins.
    fn ambiguity(&self) -> Ambiguity {
        #[cfg(feature = "stripe-api")]
        if self.config.stripe.is_some() {
            return Ambiguity::Refuse;
        }
        Ambiguity::ApplyLaterArrival
    }

    #[cfg(feature = "stripe-api")]
    async fn refetch(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionSnapshot, Box<dyn std::error::Error + Send + Sync>> {
        let stripe = self.config.stripe.as_ref().expect("ambiguity is refused only when a client exists");
        Ok(stripe.get_subscription(subscription_id).await?)
    }

    #[cfg(not(feature = "stripe-api"))]
    async fn refetch(
        &self,
        _subscription_id: &str,
    ) -> Result<SubscriptionSnapshot, Box<dyn std::error::Error + Send + Sync>> {
        unreachable!("ambiguity is refused only when a Stripe client exists")
    }

    async fn apply_subscription_event(
        &self,
        record: &EventRecord<'_>,
        actor: &Actor,
        snapshot: &SubscriptionSnapshot,
        created: i64,
        ambiguity: Ambiguity,
    ) -> Result<Applied, StoreError> {
        let mut tx = self.store.begin().await?;
        tx.claim_event(record).await?;
        let note = match self.sync_subscription(&mut tx, actor, snapshot, created, ambiguity).await? {
            Synced::Applied => None,
            Synced::Stale => Some("stale snapshot: a newer one is held"),
            Synced::Ambiguous => return Ok(Applied::Ambiguous),
        };
        if let Some(note) = note {
            tx.finish_event(record.id, EventDisposition::Processed, Some(note)).await?;
        }
        tx.commit().await?;
        Ok(Applied::Done(WebhookOutcome::Processed))
    }

    /// Brings our copy of one subscription (and its license) in line with a
    /// snapshot, inside the caller's transaction. A stale snapshot changes
    /// no state, but it is still evidence: of entitlement (so the license
    /// exists whatever order the events come in) and of when the period's
    /// grace began.
    pub(crate) async fn sync_subscription(
        &self,
        tx: &mut S::Tx,
        actor: &Actor,
        snapshot: &SubscriptionSnapshot,
        created: i64,
        ambiguity: Ambiguity,
    ) -> Result<Synced, StoreError> {
        let locked = tx.lock_subscription(&snapshot.stripe_subscription_id).await?;
        let customer_id = match &locked {
            Some(locked) if customer_is_up_to_date(locked, snapshot) => locked.customer_id,
            _ => tx.upsert_customer(&snapshot.stripe_customer_id, snapshot.user_id.as_deref()).await?,
        };
        let (held, license) = match locked {
            Some(locked) => (Some(locked.subscription), locked.license),
            None => (None, None),
        };
        if let Some(held) = held {
            let fresh = match (subscription::freshness(&held, snapshot, created), ambiguity) {
                // Fresh from the API: the current truth, whatever the clocks say.
                (_, Ambiguity::Authoritative) if held.snapshot != *snapshot => true,
                (Freshness::Stale, _) | (_, Ambiguity::Authoritative) => false,
                (Freshness::Ambiguous, Ambiguity::Refuse) => return Ok(Synced::Ambiguous),
                (Freshness::Ambiguous, Ambiguity::ApplyLaterArrival) | (Freshness::Newer, _) => true,
            };
            if !fresh {
                let held = match subscription::earlier_past_due_since(&held, snapshot, created) {
                    Some(since) => {
                        let earlier = Subscription { past_due_since: Some(since), ..held };
                        tx.save_subscription(customer_id, &earlier, actor, &[]).await?;
                        earlier
                    }
                    None => held,
                };
                self.settle_license(tx, &held, license, snapshot.status, actor).await?;
                return Ok(Synced::Stale);
            }
            return self.apply_snapshot(tx, customer_id, Some(held), license, snapshot, created, actor).await;
        }
        self.apply_snapshot(tx, customer_id, None, license, snapshot, created, actor).await
    }

    /// Stores a snapshot that is newer than what we hold, with its audit
    /// rows, its license's terms and the event the license's devices hear.
    #[allow(clippy::too_many_arguments)]
    async fn apply_snapshot(
        &self,
        tx: &mut S::Tx,
        customer_id: Uuid,
        held: Option<Subscription>,
        license: Option<License>,
        snapshot: &SubscriptionSnapshot,
        created: i64,
        actor: &Actor,
    ) -> Result<Synced, StoreError> {
        let plan = snapshot.price_id.as_deref().and_then(|p| self.config.plans.by_price(p));
        let next = Subscription {
            id: held.as_ref().map_or_else(Uuid::new_v4, |h| h.id),
            snapshot: snapshot.clone(),
            plan_id: plan.map(|p| p.id.0.clone()),
            past_due_since: subscription::past_due_since(held.as_ref(), snapshot, created),
            source_created: held.as_ref().map_or(created, |h| h.source_created.max(created)),
        };
        let changes = changes_between(held.as_ref().map(|h| &h.snapshot), &next.snapshot);
        tx.save_subscription(customer_id, &next, actor, &changes).await?;
        let license_id = self.settle_license(tx, &next, license, snapshot.status, actor).await?;
        let client_visible = changes.iter().any(|c| !matches!(c, subscription::SubscriptionChange::Created { .. }));
        if let (Some(license_id), true) = (license_id, client_visible) {
            tx.enqueue(&subscription_updated(license_id, &next)).await?;
        }
        Ok(Synced::Applied)
    }

    /// Issues or updates the license of `sub` (as now stored) so that it
    /// follows the subscription: issued once anything proves entitlement
    /// (`seen`, the status a snapshot just reported, however stale; the
    /// current status; a paid invoice), its terms derived from the
    /// current state. Returns the license's id, if it has one.
    async fn settle_license(
        &self,
        tx: &mut S::Tx,
        sub: &Subscription,
        license: Option<License>,
        seen: crate::domain::SubscriptionStatus,
        actor: &Actor,
    ) -> Result<Option<Uuid>, StoreError> {
        let now = self.now();
        let plan = sub.snapshot.price_id.as_deref().and_then(|p| self.config.plans.by_price(p));
        let entitled = license.is_some()
            || seen.proves_entitlement()
            || sub.snapshot.status.proves_entitlement()
            || tx.has_paid_invoice(&sub.snapshot.stripe_subscription_id).await?;
        let decision = license::decide(sub, plan, license.as_ref(), entitled, self.config.grace, now);
        Ok(match (decision, license) {
            (LicenseDecision::Issue(terms), _) => {
                let issued = License::for_subscription(sub.id, terms);
                tx.insert_license(&issued).await?;
                // Heard by the vendor's systems (webhooks), not by devices:
                // a new license has none yet.
                tx.enqueue(&license_message(LICENSE_CREATED, &issued)).await?;
                tracing::info!(license_id = %issued.id, subscription_id = %sub.id, "license issued");
                Some(issued.id)
            }
            (LicenseDecision::Update(terms), Some(held)) => {
                tx.update_license_terms(held.id, &terms).await?;
                let shrunk = terms.max_devices < held.terms.max_devices;
                let updated = License { terms, ..held };
                tx.enqueue(&license_updated(&updated)).await?;
                if shrunk {
                    self.evict_beyond_limit(tx, &updated, actor, now).await?;
                }
                Some(updated.id)
            }
            (LicenseDecision::Update(_), None) => unreachable!("updates are decided only for held licenses"),
            (LicenseDecision::Keep, held) => held.map(|l| l.id),
        })
    }

    /// Suspends every license whose past-due grace period has run out (an
    /// audit row and a `license.updated` event each), so that the apps
    /// holding it hear of it without waiting for Stripe's next event.
    /// Returns how many. Runs periodically; safe on several instances.
    pub async fn suspend_lapsed_licenses(&self) -> Result<usize, StoreError> {
        const BATCH: usize = 500;
        let now = self.now();
        let mut total = 0;
        loop {
            let mut tx = self.store.begin().await?;
            let due = tx.lock_licenses_past_grace(now, BATCH as i64).await?;
            let last_batch = due.len() < BATCH;
            for held in due {
                let (Some(terms), Some(grace_ended_at)) = (license::lapsed(&held.terms, now), held.terms.grace_ends_at)
                else {
                    continue;
                };
                tx.update_license_terms(held.id, &terms).await?;
                let change = subscription::SubscriptionChange::GraceExpired { grace_ended_at };
                match held.subscription_id {
                    Some(subscription_id) => tx.record_change(subscription_id, &Actor::System, &change).await?,
                    None => {
                        let detail = json!({ "grace_ended_at": rfc3339(grace_ended_at) });
                        tx.record_license_change(held.id, "grace_expired", &Actor::System, detail).await?
                    }
                }
                let suspended = License { terms, ..held };
                tx.enqueue(&license_updated(&suspended)).await?;
                tracing::info!(license_id = %suspended.id, "license suspended: past-due grace period ended");
                total += 1;
            }
            tx.commit().await?;
            if last_batch {
                return Ok(total);
            }
        }
    }

    /// After a downgrade, the least recently seen live devices beyond the
    /// new limit lose their slot and are told so.
    pub(crate) async fn evict_beyond_limit(
        &self,
        tx: &mut S::Tx,
        license: &License,
        actor: &Actor,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let window = self.config.licensing.heartbeat_window;
        let devices = tx.devices_of_license(license.id).await?;
        for id in crate::domain::device::evicted_by_limit(&devices, license.terms.max_devices, now, window) {
            let device = devices.iter().find(|d| d.id == id).expect("evicted devices come from the list").clone();
            crate::licensing::deactivate_in(tx, device, crate::licensing::DeactivationReason::Downgrade, actor, now)
                .await?;
        }
        Ok(())
    }

    async fn apply_checkout(
        &self,
        record: &EventRecord<'_>,
        actor: &Actor,
        session: &CheckoutSession,
    ) -> Result<WebhookOutcome, StoreError> {
        let mut tx = self.store.begin().await?;
        tx.claim_event(record).await?;
        let subscription = match (session.mode.as_str(), session.subscription.as_deref()) {
            ("subscription", Some(id)) => tx.lock_subscription(id).await?,
            _ => None,
        };
        let note = match (session.customer.as_deref(), session.user_id()) {
            (Some(customer), Some(user_id)) => {
                // Links the customer, and with it any subscription that
                // arrived before this checkout.
                tx.upsert_customer(customer, Some(user_id)).await?;
                if let Some(locked) = subscription.filter(|l| l.subscription.snapshot.stripe_customer_id == customer) {
                    let change =
                        subscription::SubscriptionChange::CheckoutLinked { checkout_session_id: session.id.clone() };
                    tx.record_change(locked.subscription.id, actor, &change).await?;
                }
                None
            }
            (Some(customer), None) => {
                tx.upsert_customer(customer, None).await?;
                Some("checkout names no user")
            }
            (None, _) => Some("checkout has no customer"),
        };
        let note = if session.mode != "subscription" { Some("not a subscription checkout") } else { note };
        if let Some(note) = note {
            tx.finish_event(record.id, EventDisposition::Processed, Some(note)).await?;
        }
        tx.commit().await?;
        Ok(WebhookOutcome::Processed)
    }

    /// Records an invoice's payment. A paid one proves its subscription was
    /// entitled, so a subscription whose earlier events have not arrived
    /// (or only its end has) gets its license now.
    async fn apply_invoice(
        &self,
        record: &EventRecord<'_>,
        actor: &Actor,
        payment: &Payment,
    ) -> Result<WebhookOutcome, StoreError> {
        let mut tx = self.store.begin().await?;
        tx.claim_event(record).await?;
        // Locked first, as every unit of work does; when it does not exist
        // yet, its first insert waits for this payment, so it sees it.
        let locked = match payment.stripe_subscription_id.as_deref() {
            Some(sub) => tx.lock_subscription(sub).await?,
            None => None,
        };
        let customer_id = match &locked {
            Some(l) if l.subscription.snapshot.stripe_customer_id == payment.stripe_customer_id => l.customer_id,
            _ => tx.upsert_customer(&payment.stripe_customer_id, None).await?,
        };
        let written = tx.upsert_payment(customer_id, payment).await?;
        let moved = !matches!(written, PaymentWrite::Unchanged);
        if let Some(locked) = locked {
            if moved {
                let change = subscription::SubscriptionChange::Payment {
                    invoice_id: payment.stripe_invoice_id.clone(),
                    status: payment.status,
                    amount: payment.amount,
                    currency: payment.currency.clone(),
                };
                tx.record_change(locked.subscription.id, actor, &change).await?;
            }
            let seen = locked.subscription.snapshot.status;
            let license_id = self.settle_license(&mut tx, &locked.subscription, locked.license, seen, actor).await?;
            if let (true, Some(license_id)) =
                (moved && payment.status != crate::domain::PaymentStatus::Paid, license_id)
            {
                tx.enqueue(&OutboxMessage {
                    license_id: Some(license_id),
                    topic: "payment.updated",
                    payload: json!({
                        "license_id": license_id,
                        "status": payment.status,
                        "amount": payment.amount,
                        "currency": payment.currency,
                    }),
                })
                .await?;
            }
        }
        if !moved {
            tx.finish_event(record.id, EventDisposition::Processed, Some("payment already recorded")).await?;
        }
        tx.commit().await?;
        Ok(WebhookOutcome::Processed)
    }

    /// Links a Stripe customer to the user its metadata names and keeps its
    /// e-mail, or records its deletion (its subscriptions end through their
    /// own events).
    async fn apply_customer(
        &self,
        record: &EventRecord<'_>,
        customer: &StripeCustomer,
        created: i64,
    ) -> Result<WebhookOutcome, StoreError> {
        let mut tx = self.store.begin().await?;
        tx.claim_event(record).await?;
        let customer_id = tx.upsert_customer(&customer.id, customer.user_id.as_deref()).await?;
        if customer.deleted {
            tx.mark_customer_deleted(customer_id).await?;
        } else {
            // A deleted customer's object still carries its last address;
            // keeping the one held is as good and needs no write.
            tx.set_customer_email(customer_id, customer.email.as_deref(), created).await?;
        }
        tx.commit().await?;
        Ok(WebhookOutcome::Processed)
    }

    /// The subscription the dashboard shows for a user: the one that grants
    /// access if any, else the most recently updated.
    pub async fn current_subscription(&self, user_id: &str) -> Result<Option<Subscription>, ReadError> {
        let subs = self.store.subscriptions_of_user(user_id).await?;
        Ok(subs
            .iter()
            .find(|s| {
                !s.snapshot.status.is_terminal()
                    && s.snapshot.status != crate::domain::SubscriptionStatus::IncompleteExpired
            })
            .or(subs.first())
            .cloned())
    }

    /// The user's audit trail, newest first.
    pub async fn subscription_history(&self, user_id: &str) -> Result<Vec<ChangeEntry>, ReadError> {
        self.store.changes_of_user(user_id, 500).await
    }

    /// The user's payments, newest first.
    pub async fn payment_history(&self, user_id: &str) -> Result<Vec<PaymentRecord>, ReadError> {
        self.store.payments_of_user(user_id, 500).await
    }

    /// The user's licenses.
    pub async fn licenses(&self, user_id: &str) -> Result<Vec<License>, ReadError> {
        self.store.licenses_of_user(user_id).await
    }
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
pub(crate) enum Ambiguity {
    /// Report same-second ambiguity so the caller can re-fetch.
    Refuse,
    /// Settle it by applying the snapshot at hand (the later arrival).
    ApplyLaterArrival,
    /// The snapshot was just read from the Stripe API: apply it unless identical.
    Authoritative,
}

enum Applied {
    Done(WebhookOutcome),
    Ambiguous,
}

pub(crate) enum Synced {
    Applied,
    Stale,
    Ambiguous,
}

/// The topic of a license's changed terms.
pub const LICENSE_UPDATED: &str = "license.updated";
/// The topic of a newly issued license (Stripe's or an admin's).
pub const LICENSE_CREATED: &str = "license.created";

/// `license.updated`: what a license's devices need to know of its terms.
pub(crate) fn license_updated(license: &License) -> OutboxMessage {
    license_message(LICENSE_UPDATED, license)
}

pub(crate) fn license_message(topic: &'static str, license: &License) -> OutboxMessage {
    let t = &license.terms;
    OutboxMessage {
        license_id: Some(license.id),
        topic,
        payload: json!({
            "license_id": license.id,
            "status": t.status,
            "max_devices": t.max_devices,
            "plan": t.plan_id,
            "expires_at": t.expires_at.map(rfc3339),
            "grace_ends_at": t.grace_ends_at.map(rfc3339),
        }),
    }
}

fn subscription_updated(license_id: Uuid, sub: &Subscription) -> OutboxMessage {
    let s = &sub.snapshot;
    OutboxMessage {
        license_id: Some(license_id),
        topic: "subscription.updated",
        payload: json!({
            "license_id": license_id,
            "status": s.status,
            "cancel_at_period_end": s.cancel_at_period_end,
            "current_period_end": s.current_period_end.map(rfc3339),
            "plan": sub.plan_id,
        }),
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
