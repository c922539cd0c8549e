//! The Stripe-initiated use cases: webhook deliveries, applied in groups,
//! and the snapshots Stripe's API returns to the dashboard's actions, each
//! through the one seam [`Store::sync_stripe`]: *load* (claims, locks,
//! reads), *decide* (`decide`, pure), *apply* (the changeset, one commit).
//!
//! **Groups.** Deliveries that arrive while a group is being applied wait
//! for the next one (at most [`GROUP_LIMIT`] events, at most
//! [`GROUPS_IN_FLIGHT`] groups at once); a delivery that finds no group
//! running starts one at once, so a lone delivery waits for no one and a
//! busy one waits for at most one group's commit. Each delivery is answered
//! once its group has committed: a 200 still means *applied*. A group that
//! fails is applied again event by event, so only the failing delivery
//! answers 500.
//!
//! **Backfill** (`backfill`, with the `stripe-api` feature): objects read
//! from Stripe's list endpoints go through the same unit of work and the
//! same decisions, a page at a time, as of the moment their list was read.

#[cfg(feature = "stripe-api")]
pub mod backfill;
mod decide;

use crate::billing::{error_chain, Billing};
use crate::domain::{Actor, Payment, SubscriptionSnapshot};
use crate::storage::stripe_sync::{DeliveryClaim, StripeKeys};
use crate::storage::{EventRecord, Store, StoreError};
use crate::stripe::{CheckoutSession, Event, EventError, EventPayload, InvoiceCharge, SignatureError, StripeCustomer};
use bytes::Bytes;
use decide::{Decisions, Rules};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most deliveries one group carries.
pub const GROUP_LIMIT: usize = 64;
/// The most groups applied at once by one engine.
pub const GROUPS_IN_FLIGHT: usize = 1;

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

/// How webhook deliveries have been grouped into units of work since the
/// engine was built (cumulative; a bench takes the difference of two reads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookGroupStats {
    /// Units of work run for groups of deliveries (retries included).
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

/// How a same-second snapshot (as new as the one held, and different) is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
pub(crate) enum Ambiguity {
    /// Report it, so that Stripe's current object can be fetched.
    Refuse,
    /// Apply the snapshot at hand (the later arrival).
    ApplyLaterArrival,
    /// The snapshot was just read from the Stripe API: apply it unless identical.
    Authoritative,
    /// A backfill's listed object, as old as the held state: keep the held
    /// state (see [`StripeInput::Listed`]).
    KeepHeld,
}

/// One input of a Stripe unit of work.
#[derive(Debug, Clone)]
pub(crate) enum StripeInput {
    /// A webhook delivery, claimed by the unit of work.
    Delivery { event: Event, body: Bytes, ambiguity: Ambiguity },
    /// A delivery whose same-second snapshot was replaced by the object
    /// Stripe's API holds now.
    Refetched { event: Event, body: Bytes, snapshot: Box<SubscriptionSnapshot> },
    /// A snapshot Stripe's API returned to an action of `actor`.
    #[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
    Snapshot { snapshot: Box<SubscriptionSnapshot>, actor: Actor },
    /// An object a backfill read from a list endpoint, as of `as_of` (Unix
    /// seconds, our clock): the moment its list request was sent, less
    /// [`LISTED_MARGIN_SECS`]. Everything Stripe recorded before the request
    /// is in the object, so an event created before `as_of` is older than
    /// it (the object wins) and one created after is newer (the event's
    /// state wins): a stale listed object never overwrites newer state.
    /// There is no event, so no delivery to claim: applying it again finds
    /// the state it left and changes nothing.
    #[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
    Listed { object: Box<ListedObject>, as_of: i64 },
}

/// How much older than its list request a listed object is taken to be.
/// Stripe's clock and ours differ by a little, and an event may be created a
/// moment before the change it announces is visible to list reads: an event
/// created within this margin of the request is taken as newer than the
/// object, so its state wins (it is as new as the object at worst).
#[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
pub(crate) const LISTED_MARGIN_SECS: i64 = 5;

/// An object read from one of Stripe's list endpoints, parsed as the
/// webhooks' payload of the same type is.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
pub(crate) enum ListedObject {
    /// `GET /v1/customers`
    Customer(StripeCustomer),
    /// `GET /v1/subscriptions?status=all`
    Subscription(SubscriptionSnapshot),
    /// `GET /v1/invoices?status=paid`, with what paid it when the object
    /// says (the same fields as its webhook's).
    Invoice(Payment, Vec<InvoiceCharge>),
    /// `GET /v1/checkout/sessions?status=complete`
    Checkout(CheckoutSession),
}

/// What a listed object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListedOutcome {
    /// We held nothing of it: now we do.
    Created,
    /// We held it in another state (or without what it proves, e.g. a
    /// license): now we hold its state.
    Updated,
    /// We held it as it is (or held newer state).
    Unchanged,
    /// Not acted on, and why.
    Skipped(&'static str),
}

/// What one input came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputOutcome {
    /// Applied (possibly with no effect, e.g. a stale snapshot).
    Processed,
    /// A type we do not act on.
    Ignored,
    /// Applied before: nothing changed.
    Duplicate,
    /// An API snapshot identical to (or older than) what is held.
    Unchanged,
    /// A same-second snapshot: released unapplied, for a re-fetch.
    Ambiguous,
    /// A backfill's listed object.
    Listed(ListedOutcome),
}

impl StripeInput {
    fn delivery(&self) -> Option<(&Event, &Bytes)> {
        match self {
            Self::Delivery { event, body, .. } | Self::Refetched { event, body, .. } => Some((event, body)),
            Self::Snapshot { .. } | Self::Listed { .. } => None,
        }
    }

    fn ambiguity(&self) -> Ambiguity {
        match self {
            Self::Delivery { ambiguity, .. } => *ambiguity,
            Self::Refetched { .. } => Ambiguity::ApplyLaterArrival,
            Self::Snapshot { .. } => Ambiguity::Authoritative,
            Self::Listed { .. } => Ambiguity::KeepHeld,
        }
    }

    /// When it happened, by Stripe's clock: the order a group decides in.
    fn created(&self, now: i64) -> i64 {
        match self {
            Self::Listed { as_of, .. } => *as_of,
            _ => self.delivery().map_or(now, |(event, _)| event.created),
        }
    }

    /// Adds what deciding it reads to `keys`.
    fn add_keys(&self, keys: &mut StripeKeys) {
        let snapshot_keys = |keys: &mut StripeKeys, s: &SubscriptionSnapshot| {
            keys.subscriptions.insert(s.stripe_subscription_id.clone());
            keys.customers.insert(s.stripe_customer_id.clone());
        };
        if let Some((event, body)) = self.delivery() {
            keys.claim(DeliveryClaim {
                id: event.id.clone(),
                kind: event.kind.clone(),
                created: event.created,
                api_version: event.api_version.clone(),
                object_id: event.object_id.clone(),
                payload: body.clone(),
            });
        }
        let checkout_keys = |keys: &mut StripeKeys, session: &CheckoutSession| {
            if let (Some(sub), "subscription") = (&session.subscription, session.mode.as_str()) {
                keys.subscriptions.insert(sub.clone());
            }
            if session.mode == "payment" {
                keys.checkout_sessions.insert(session.id.clone());
                keys.invoices.insert(decide::purchase_payment_key(session).to_owned());
            }
            keys.customers.extend(session.customer.clone());
        };
        let invoice_keys = |keys: &mut StripeKeys, payment: &Payment| {
            keys.subscriptions.extend(payment.stripe_subscription_id.clone());
            keys.customers.insert(payment.stripe_customer_id.clone());
            keys.invoices.insert(payment.stripe_invoice_id.clone());
        };
        match self {
            Self::Snapshot { snapshot, .. } | Self::Refetched { snapshot, .. } => snapshot_keys(keys, snapshot),
            Self::Delivery { event, .. } => match &event.payload {
                EventPayload::Subscription(snapshot) => snapshot_keys(keys, snapshot),
                EventPayload::CheckoutCompleted(session) | EventPayload::CheckoutPaymentFailed(session) => {
                    checkout_keys(keys, session)
                }
                EventPayload::Invoice(payment, charges) => {
                    invoice_keys(keys, payment);
                    keys.invoice_charges.extend(charges.iter().filter_map(|c| c.key()).map(str::to_owned));
                }
                EventPayload::InvoicePayment(charge) => {
                    keys.invoice_charges.extend(charge.key().map(str::to_owned));
                }
                EventPayload::Customer(customer) => {
                    keys.customers.insert(customer.id.clone());
                }
                EventPayload::ChargeRefunded(charge) => {
                    keys.payment_intents.extend(charge.payment_intent.clone());
                    keys.invoice_charges.extend(charge.payment_intent.iter().chain([&charge.id]).cloned());
                }
                EventPayload::Dispute(dispute) => {
                    keys.payment_intents.extend(dispute.payment_intent.clone());
                    keys.invoice_charges.extend(dispute.payment_intent.iter().chain([&dispute.charge]).cloned());
                    keys.disputes.insert(dispute.id.clone());
                }
                EventPayload::Ignored => {}
            },
            Self::Listed { object, .. } => match object.as_ref() {
                ListedObject::Subscription(snapshot) => snapshot_keys(keys, snapshot),
                ListedObject::Checkout(session) => checkout_keys(keys, session),
                ListedObject::Invoice(payment, charges) => {
                    invoice_keys(keys, payment);
                    keys.invoice_charges.extend(charges.iter().filter_map(|c| c.key()).map(str::to_owned));
                }
                ListedObject::Customer(customer) => {
                    keys.customers.insert(customer.id.clone());
                }
            },
        }
    }
}

/// Deliveries waiting for a group, and how many groups are running.
#[derive(Default)]
pub(crate) struct Groups {
    state: Mutex<GroupState>,
    groups: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct GroupState {
    waiting: VecDeque<Waiting>,
    running: usize,
}

struct Waiting {
    event: Event,
    body: Bytes,
    answer: oneshot::Sender<Result<WebhookReceipt, WebhookError>>,
}

impl Groups {
    /// Queues a delivery; true when the caller must start a group runner.
    fn push(&self, waiting: Waiting) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.waiting.push_back(waiting);
        if state.running < GROUPS_IN_FLIGHT {
            state.running += 1;
            true
        } else {
            false
        }
    }

    /// The next group, or none, in which case the runner stops (decided
    /// under the same lock as [`Groups::push`], so no delivery is stranded).
    fn next_group(&self) -> Vec<Waiting> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let take = state.waiting.len().min(GROUP_LIMIT);
        if take == 0 {
            state.running -= 1;
        }
        state.waiting.drain(..take).collect()
    }

    fn count(&self, events: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.groups.fetch_add(1, Relaxed);
        self.events.fetch_add(events as u64, Relaxed);
    }

    pub(crate) fn stats(&self) -> WebhookGroupStats {
        use std::sync::atomic::Ordering::Relaxed;
        WebhookGroupStats { groups: self.groups.load(Relaxed), events: self.events.load(Relaxed) }
    }
}

impl<S: Store> Billing<S> {
    /// Verifies, deduplicates and applies one Stripe webhook delivery,
    /// together with the deliveries that arrive meanwhile.
    pub async fn ingest_webhook(&self, body: &[u8], signature: Option<&str>) -> Result<WebhookReceipt, WebhookError> {
        let secrets = self.config().webhook_secrets.as_ref().ok_or(WebhookError::NotConfigured)?;
        secrets.verify(signature, body, self.now().unix_timestamp())?;
        // An object we cannot read will not become readable by retrying the
        // same signed bytes: refuse it (Stripe stops retrying a 4xx) and
        // store nothing, rather than fail it for days.
        let event = Event::parse(body).map_err(WebhookError::Malformed)?;
        let (answer, answered) = oneshot::channel();
        if self.groups().push(Waiting { event, body: Bytes::copy_from_slice(body), answer }) {
            // Its own task: a caller that goes away must not take the
            // group (and the others' answers) with it.
            let engine = self.clone();
            tokio::spawn(async move { engine.run_groups().await });
        }
        answered.await.unwrap_or_else(|_| {
            Err(WebhookError::Failed { event_type: None, source: "the group runner stopped".into() })
        })
    }

    /// Applies groups until none is waiting.
    async fn run_groups(&self) {
        loop {
            let group = self.groups().next_group();
            if group.is_empty() {
                return;
            }
            let (deliveries, answers): (Vec<_>, Vec<_>) =
                group.into_iter().map(|w| ((w.event, w.body), w.answer)).unzip();
            let ids: Vec<String> = deliveries.iter().map(|(event, _)| event.id.clone()).collect();
            let receipts = self.apply_deliveries(deliveries).await;
            for ((answer, receipt), id) in answers.into_iter().zip(receipts).zip(ids) {
                if matches!(&receipt, Ok(r) if r.outcome == WebhookOutcome::Duplicate) {
                    // Counted on its own: its unit of work claimed nothing.
                    if let Err(e) = self.store().record_event_duplicate(&id).await {
                        tracing::warn!(event_id = %id, error = %error_chain(&e), "could not count a duplicate delivery");
                    }
                }
                let _ = answer.send(receipt); // A caller that went away needs no answer.
            }
        }
    }

    /// Applies deliveries as one unit of work (or, should that fail, one
    /// by one) and says what became of each, in their order.
    pub(crate) async fn apply_deliveries(
        &self,
        deliveries: Vec<(Event, Bytes)>,
    ) -> Vec<Result<WebhookReceipt, WebhookError>> {
        let ambiguity = self.ambiguity();
        let inputs: Vec<StripeInput> =
            deliveries.into_iter().map(|(event, body)| StripeInput::Delivery { event, body, ambiguity }).collect();
        let inputs = Arc::new(inputs);
        self.groups().count(inputs.len());
        let outcomes = match self.sync(inputs.clone()).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if inputs.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::info!(events = inputs.len(), error = %error_chain(&e), "group failed; applying its events one by one");
                let mut outcomes = Vec::with_capacity(inputs.len());
                for input in inputs.iter() {
                    self.groups().count(1);
                    outcomes.push(self.sync(Arc::new(vec![input.clone()])).await.map(|mut o| o.remove(0)));
                }
                outcomes
            }
        };
        let mut receipts = Vec::with_capacity(inputs.len());
        for (input, outcome) in inputs.iter().zip(outcomes) {
            let (event, body) = input.delivery().expect("deliveries only");
            receipts.push(self.conclude(event, body, outcome.map_err(Into::into)).await);
        }
        receipts
    }

    /// Turns a delivery's outcome into its answer: a same-second snapshot
    /// is settled with Stripe's current object, a duplicate counted, a
    /// failure recorded (its transaction was rolled back).
    async fn conclude(
        &self,
        event: &Event,
        body: &Bytes,
        outcome: Result<InputOutcome, Box<dyn std::error::Error + Send + Sync>>,
    ) -> Result<WebhookReceipt, WebhookError> {
        let receipt = |outcome| Ok(WebhookReceipt { event_type: event.kind.clone(), outcome });
        let outcome = match outcome {
            Ok(InputOutcome::Ambiguous) => self.settle_by_refetch(event, body).await,
            other => other,
        };
        match outcome {
            Ok(
                InputOutcome::Processed | InputOutcome::Unchanged | InputOutcome::Ambiguous | InputOutcome::Listed(_),
            ) => receipt(WebhookOutcome::Processed),
            Ok(InputOutcome::Ignored) => receipt(WebhookOutcome::Ignored),
            Ok(InputOutcome::Duplicate) => receipt(WebhookOutcome::Duplicate),
            Err(e) => {
                let record = EventRecord {
                    id: &event.id,
                    kind: &event.kind,
                    created: event.created,
                    api_version: event.api_version.as_deref(),
                    object_id: event.object_id.as_deref(),
                    payload: body,
                };
                let message = error_chain(e.as_ref());
                tracing::warn!(event_id = %event.id, event_type = %event.kind, error = %message, "webhook processing failed");
                if let Err(e) = self.store().record_event_failure(&record, &message).await {
                    tracing::error!(event_id = %event.id, error = %error_chain(&e), "could not record webhook failure");
                }
                Err(WebhookError::Failed { event_type: Some(event.kind.clone()), source: e })
            }
        }
    }

    /// A same-second snapshot, released unapplied by its group: applied as
    /// the object Stripe's API holds now, under the delivery's own claim.
    async fn settle_by_refetch(
        &self,
        event: &Event,
        body: &Bytes,
    ) -> Result<InputOutcome, Box<dyn std::error::Error + Send + Sync>> {
        let EventPayload::Subscription(snapshot) = &event.payload else {
            unreachable!("only subscription snapshots are ambiguous")
        };
        let current = self.refetch(&snapshot.stripe_subscription_id).await?;
        tracing::info!(event_id = %event.id, "same-second snapshot settled by re-fetching from Stripe");
        let input = StripeInput::Refetched { event: event.clone(), body: body.clone(), snapshot: Box::new(current) };
        Ok(self.sync(Arc::new(vec![input])).await?.remove(0))
    }

    /// Applies one delivery on its own (the admin replay).
    pub(crate) async fn apply_delivery(&self, event: &Event, body: &[u8]) -> Result<WebhookReceipt, WebhookError> {
        let mut receipts = self.apply_deliveries(vec![(event.clone(), Bytes::copy_from_slice(body))]).await;
        receipts.remove(0)
    }

    /// Applies a snapshot Stripe's API just returned, as `actor`, in its own
    /// unit of work. Returns whether it changed what we hold.
    #[cfg_attr(not(feature = "stripe-api"), allow(dead_code))]
    pub(crate) async fn apply_api_snapshot(
        &self,
        actor: &Actor,
        snapshot: &SubscriptionSnapshot,
    ) -> Result<bool, StoreError> {
        let input = StripeInput::Snapshot { snapshot: Box::new(snapshot.clone()), actor: actor.clone() };
        Ok(self.sync(Arc::new(vec![input])).await? == [InputOutcome::Processed])
    }

    /// The one Stripe unit of work: load what the inputs touch, decide each
    /// in `created` order (arrival order among equals), apply, commit.
    async fn sync(&self, inputs: Arc<Vec<StripeInput>>) -> Result<Vec<InputOutcome>, StoreError> {
        let mut keys = StripeKeys::default();
        inputs.iter().for_each(|input| input.add_keys(&mut keys));
        let config = self.config_arc();
        let now = self.now();
        self.sync_stripe(keys, move |bundle| {
            let rules = Rules {
                plans: &config.plans,
                grace: config.grace,
                heartbeat_window: config.licensing.heartbeat_window,
                now,
            };
            let mut order: Vec<usize> = (0..inputs.len()).collect();
            order.sort_by_key(|&i| inputs[i].created(now.unix_timestamp()));
            let mut decisions = Decisions::new(rules, bundle);
            let mut outcomes = vec![InputOutcome::Unchanged; inputs.len()];
            for i in order {
                outcomes[i] = decisions.decide(&inputs[i]);
            }
            (decisions.into_changeset(), outcomes)
        })
        .await
    }

    /// With an API key, an ambiguous same-second delivery is settled by
    /// asking Stripe for the current object; without one, the later arrival wins.
    fn ambiguity(&self) -> Ambiguity {
        #[cfg(feature = "stripe-api")]
        if self.config().stripe.is_some() {
            return Ambiguity::Refuse;
        }
        Ambiguity::ApplyLaterArrival
    }

    #[cfg(feature = "stripe-api")]
    async fn refetch(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionSnapshot, Box<dyn std::error::Error + Send + Sync>> {
        let stripe = self.config().stripe.as_ref().expect("ambiguity is refused only when a client exists");
        Ok(stripe.get_subscription(subscription_id).await?)
    }

    #[cfg(not(feature = "stripe-api"))]
    async fn refetch(
        &self,
        _subscription_id: &str,
    ) -> Result<SubscriptionSnapshot, Box<dyn std::error::Error + Send + Sync>> {
        unreachable!("ambiguity is refused only when a Stripe client exists")
    }
}
