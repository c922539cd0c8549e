//! The Stripe backfill (`billing-server stripe sync`): every customer,
//! subscription, paid invoice and completed Checkout Session Stripe lists,
//! fed through the webhooks' own unit of work and decisions, a page at a
//! time, so that a vendor with existing customers (or whose endpoint was
//! down for longer than Stripe retries) catches up in one run.
//!
//! * **Order and versions.** Lists are paged newest first with
//!   `starting_after`, in a fixed order of resources ([`Resource::ALL`]).
//!   Each object counts as of the moment its list request was sent, less a
//!   margin of 5 s for the clocks: an event created later is newer and
//!   wins, one created earlier is older and loses, so a backfill running
//!   while webhooks arrive converges to the newest state. On a tie the
//!   payload's evidence decides as for webhooks, and failing that the held
//!   state stays.
//! * **Checkpoints.** After each page commits, the run's position and counts
//!   are saved ([`BackfillRunStore`]); `resume` continues from there. A page
//!   applied but not checkpointed (a crash in between) is applied again on
//!   resume, which changes nothing: there is no delivery to claim, and
//!   applying an object to the state it left is a no-op.
//! * **Retries.** The Stripe client retries 429 (after `Retry-After`) and
//!   5xx; its rate limit, if it has one, spaces every request of the run. A
//!   page whose unit of work fails (a webhook inserting the same new
//!   customer at the same moment) is applied again.

use super::{Billing, InputOutcome, ListedObject, ListedOutcome, StripeInput, LISTED_MARGIN_SECS};
use crate::domain::{PaymentStatus, Timestamp};
use crate::storage::backfill_runs::{BackfillCheckpoint, BackfillRunStore};
use crate::storage::{Store, StoreError};
use crate::stripe::client::StripeError;
use crate::stripe::event::{parse_checkout, parse_customer, parse_invoice, parse_invoice_charges, parse_subscription};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How many times a page's unit of work is tried before the run fails.
const PAGE_ATTEMPTS: u32 = 5;

/// The lists a backfill pages through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `GET /v1/customers`
    Customers,
    /// `GET /v1/subscriptions?status=all`
    Subscriptions,
    /// `GET /v1/invoices?status=paid`
    Invoices,
    /// `GET /v1/checkout/sessions?status=complete`
    CheckoutSessions,
}

impl Resource {
    /// In the order a run pages them: customers first, so that the users
    /// they name are linked before their subscriptions arrive (any order
    /// would end in the same state, as webhooks do).
    pub const ALL: [Resource; 4] = [Self::Customers, Self::Subscriptions, Self::Invoices, Self::CheckoutSessions];

    /// The name in checkpoints, progress lines and the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Subscriptions => "subscriptions",
            Self::Invoices => "invoices",
            Self::CheckoutSessions => "checkout_sessions",
        }
    }

    /// Reads [`Resource::as_str`]'s spelling.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The list endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Self::Customers => "/v1/customers",
            Self::Subscriptions => "/v1/subscriptions",
            Self::Invoices => "/v1/invoices",
            Self::CheckoutSessions => "/v1/checkout/sessions",
        }
    }

    /// The list's filters (besides `limit` and `starting_after`): every
    /// subscription, whatever its status (the default leaves out canceled
    /// ones); paid invoices, the ones `invoice.paid` reports (an open
    /// invoice does not say whether its payment failed or waits for the
    /// customer); completed sessions, the ones `checkout.session.completed`
    /// reports; and `created[gte]` with `since`.
    fn params(self, since: Option<i64>) -> Vec<(String, String)> {
        let status = match self {
            Self::Customers => None,
            Self::Subscriptions => Some("all"),
            Self::Invoices => Some("paid"),
            Self::CheckoutSessions => Some("complete"),
        };
        let mut params = Vec::new();
        if let Some(status) = status {
            params.push(("status".to_owned(), status.to_owned()));
        }
        if let Some(since) = since {
            params.push(("created[gte]".to_owned(), since.to_string()));
        }
        params
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backfill is asked to do.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// Only objects created at or after this (Stripe's `created[gte]`).
    pub since: Option<Timestamp>,
    /// Continue the run that was interrupted instead of starting a new one
    /// (which would supersede it).
    pub resume: bool,
}

/// What became of one list's objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Objects read.
    pub seen: u64,
    /// Objects we held nothing of.
    pub created: u64,
    /// Objects we held in another state.
    pub updated: u64,
    /// Objects we held as they are (or held newer state of).
    pub unchanged: u64,
    /// Objects not acted on, by why.
    pub skipped: BTreeMap<String, u64>,
}

impl Counts {
    /// Counts one object.
    pub fn add(&mut self, outcome: ListedOutcome) {
        self.seen += 1;
        match outcome {
            ListedOutcome::Created => self.created += 1,
            ListedOutcome::Updated => self.updated += 1,
            ListedOutcome::Unchanged => self.unchanged += 1,
            ListedOutcome::Skipped(why) => *self.skipped.entry(why.to_owned()).or_default() += 1,
        }
    }

    /// Objects skipped, whatever the reason.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    fn merge(&mut self, other: &Counts) {
        self.seen += other.seen;
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        for (why, n) in &other.skipped {
            *self.skipped.entry(why.clone()).or_default() += n;
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "seen": self.seen, "created": self.created, "updated": self.updated, "unchanged": self.unchanged,
            "skipped": self.skipped,
        })
    }

    fn from_json(value: &Value) -> Option<Self> {
        let number = |name: &str| value.get(name).and_then(Value::as_u64);
        let skipped = match value.get("skipped") {
            Some(Value::Object(map)) => {
                map.iter().map(|(why, n)| Some((why.clone(), n.as_u64()?))).collect::<Option<_>>()?
            }
            _ => return None,
        };
        Some(Self {
            seen: number("seen")?,
            created: number("created")?,
            updated: number("updated")?,
            unchanged: number("unchanged")?,
            skipped,
        })
    }
}

/// A run's counts, per list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillSummary {
    /// The run.
    pub run_id: Uuid,
    /// Each list's counts (every list, in [`Resource::ALL`]'s order), also
    /// those of pages applied before an interruption.
    pub per_resource: BTreeMap<Resource, Counts>,
}

impl BackfillSummary {
    /// Every list's counts added up.
    pub fn total(&self) -> Counts {
        let mut total = Counts::default();
        self.per_resource.values().for_each(|c| total.merge(c));
        total
    }

    fn to_json(&self) -> Value {
        Value::Object(self.per_resource.iter().map(|(r, c)| (r.as_str().to_owned(), c.to_json())).collect())
    }

    fn from_json(run_id: Uuid, value: &Value) -> Result<Self, BackfillError> {
        let unreadable = || BackfillError::Checkpoint("its counts cannot be read".into());
        let map = value.as_object().ok_or_else(unreadable)?;
        let mut per_resource = BTreeMap::new();
        for (name, counts) in map {
            let resource = Resource::parse(name).ok_or_else(unreadable)?;
            per_resource.insert(resource, Counts::from_json(counts).ok_or_else(unreadable)?);
        }
        Ok(Self { run_id, per_resource })
    }
}

/// How a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillStart {
    /// The run.
    pub run_id: Uuid,
    /// The lists' `created[gte]`, if any.
    pub since: Option<Timestamp>,
    /// Where an interrupted run resumes: the list, and the last object of
    /// its last applied page (none: that list from its beginning).
    pub resumed_at: Option<(Resource, Option<String>)>,
}

/// What a backfill tells as it goes (the server draws a progress bar on a
/// terminal, or prints lines). Every method does nothing by default.
pub trait BackfillProgress: Send {
    /// The run starts, or resumes.
    fn started(&mut self, _start: &BackfillStart) {}
    /// Paging through `resource` begins (or resumes: `counts` are the
    /// list's so far).
    fn resource_started(&mut self, _resource: Resource, _counts: &Counts) {}
    /// A page of `resource` was applied; `counts` are the list's so far.
    fn page_applied(&mut self, _resource: Resource, _counts: &Counts) {}
    /// Every page of `resource` was applied.
    fn resource_done(&mut self, _resource: Resource, _counts: &Counts) {}
}

/// Progress nobody watches.
impl BackfillProgress for () {}

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// No Stripe secret key is configured.
    #[error("the Stripe API is not configured (no secret key)")]
    StripeNotConfigured,
    /// `resume` was asked for, but no run is unfinished.
    #[error("there is no interrupted backfill to resume; run it again without --resume")]
    NothingToResume,
    /// `resume` was asked for with another `since` than the run's.
    #[error("the interrupted backfill lists objects created since {run}, not {asked}; resume it without --since, or start a new run without --resume")]
    SinceDiffers {
        /// The run's (RFC 3339, or `the beginning`).
        run: String,
        /// The one asked for.
        asked: String,
    },
    /// Another run started meanwhile and superseded this one.
    #[error("another backfill run started meanwhile and superseded this one")]
    Superseded,
    /// The stored checkpoint cannot be read.
    #[error("the interrupted backfill's checkpoint is unusable: {0}")]
    Checkpoint(String),
    /// Stripe refused a list request, or stayed unavailable.
    #[error("listing {resource} from Stripe failed: {source}")]
    Stripe {
        /// The list.
        resource: Resource,
        /// What Stripe said (never our key).
        #[source]
        source: StripeError,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads a listed object as its webhook payload is read, or says why it is
/// not acted on.
fn classify(resource: Resource, object: &Value, as_of: i64) -> Result<ListedObject, &'static str> {
    let status = object.get("status").and_then(Value::as_str);
    let parsed = match resource {
        Resource::Customers => parse_customer(object, false).map(ListedObject::Customer),
        Resource::Subscriptions => parse_subscription(object).map(ListedObject::Subscription),
        Resource::Invoices => {
            if status != Some("paid") {
                return Err("invoice not paid");
            }
            parse_invoice(object, PaymentStatus::Paid, as_of).and_then(|payment| {
                let charges = parse_invoice_charges(object, &payment.stripe_invoice_id)?;
                Ok(ListedObject::Invoice(payment, charges))
            })
        }
        Resource::CheckoutSessions => {
            if status != Some("complete") {
                return Err("checkout session not complete");
            }
            parse_checkout(object).map(ListedObject::Checkout)
        }
    };
    parsed.map_err(|reason| {
        let id = object.get("id").and_then(Value::as_str).unwrap_or("(no id)");
        // Field names only, never values: see the parsers.
        tracing::warn!(resource = resource.as_str(), id = %id.escape_debug(), reason = %reason, "listed object skipped");
        "object could not be read"
    })
}

impl<S: Store + BackfillRunStore> Billing<S> {
    /// Pages through Stripe's lists with the configured client and applies
    /// every object (see the module's documentation), telling `progress` as
    /// it goes. Starts a new run (superseding an unfinished one), or with
    /// `resume` continues the unfinished one from its checkpoint.
    pub async fn backfill_stripe(
        &self,
        options: &BackfillOptions,
        progress: &mut dyn BackfillProgress,
    ) -> Result<BackfillSummary, BackfillError> {
        let stripe = self.config().stripe.clone().ok_or(BackfillError::StripeNotConfigured)?;
        let asked_since = options.since.map(|t| t.unix_timestamp());
        let (mut summary, since, mut position) = if options.resume {
            let run = self.store().running_backfill_run().await?.ok_or(BackfillError::NothingToResume)?;
            if options.since.is_some() && asked_since != run.since {
                return Err(BackfillError::SinceDiffers { run: since_text(run.since), asked: since_text(asked_since) });
            }
            let resource = Resource::parse(&run.checkpoint.resource)
                .ok_or_else(|| BackfillError::Checkpoint(format!("unknown list {:?}", run.checkpoint.resource)))?;
            let summary = BackfillSummary::from_json(run.id, &run.checkpoint.counts)?;
            (summary, run.since, Some((resource, run.checkpoint.after)))
        } else {
            let summary = BackfillSummary { run_id: Uuid::new_v4(), ..BackfillSummary::default() };
            let checkpoint = checkpoint(Resource::Customers, None, &summary);
            self.store().start_backfill_run(summary.run_id, asked_since, &checkpoint).await?;
            (summary, asked_since, None)
        };
        for resource in Resource::ALL {
            summary.per_resource.entry(resource).or_default();
        }
        progress.started(&BackfillStart {
            run_id: summary.run_id,
            since: since.and_then(crate::domain::from_unix),
            resumed_at: position.clone(),
        });
        let first = position.as_ref().map_or(Resource::Customers, |(resource, _)| *resource);
        for resource in Resource::ALL.into_iter().skip_while(|r| *r != first) {
            let mut after = position.take().and_then(|(_, after)| after);
            let params = resource.params(since);
            progress.resource_started(resource, &summary.per_resource[&resource]);
            loop {
                // The object's version: taken before the request leaves.
                let listed_at = self.now();
                let page = stripe
                    .list_page(resource.path(), &params, after.as_deref())
                    .await
                    .map_err(|source| BackfillError::Stripe { resource, source })?;
                let outcomes = self.apply_listed(resource, &page.data, listed_at).await?;
                let counts = summary.per_resource.entry(resource).or_default();
                outcomes.into_iter().for_each(|o| counts.add(o));
                let last = page.data.last().and_then(|o| o.get("id")).and_then(Value::as_str).map(str::to_owned);
                match last.filter(|_| page.has_more) {
                    Some(last) => {
                        after = Some(last);
                        self.save_checkpoint(summary.run_id, &checkpoint(resource, after.clone(), &summary)).await?;
                        progress.page_applied(resource, &summary.per_resource[&resource]);
                    }
                    None => break,
                }
            }
            let next = Resource::ALL.into_iter().find(|r| *r > resource);
            match next {
                Some(next) => self.save_checkpoint(summary.run_id, &checkpoint(next, None, &summary)).await?,
                None => {
                    let done = checkpoint(resource, None, &summary);
                    if !self.store().finish_backfill_run(summary.run_id, &done).await? {
                        return Err(BackfillError::Superseded);
                    }
                }
            }
            progress.resource_done(resource, &summary.per_resource[&resource]);
        }
        Ok(summary)
    }

    async fn save_checkpoint(&self, run_id: Uuid, checkpoint: &BackfillCheckpoint) -> Result<(), BackfillError> {
        if self.store().save_backfill_checkpoint(run_id, checkpoint).await? {
            Ok(())
        } else {
            Err(BackfillError::Superseded)
        }
    }

    /// Applies one page as one unit of work and says what became of each
    /// object, in the page's order.
    async fn apply_listed(
        &self,
        resource: Resource,
        objects: &[Value],
        listed_at: Timestamp,
    ) -> Result<Vec<ListedOutcome>, StoreError> {
        let as_of = listed_at.unix_timestamp() - LISTED_MARGIN_SECS;
        let mut outcomes = vec![ListedOutcome::Unchanged; objects.len()];
        let (mut inputs, mut places) = (Vec::new(), Vec::new());
        for (place, object) in objects.iter().enumerate() {
            match classify(resource, object, as_of) {
                Ok(object) => {
                    inputs.push(StripeInput::Listed { object: Box::new(object), as_of });
                    places.push(place);
                }
                Err(why) => outcomes[place] = ListedOutcome::Skipped(why),
            }
        }
        if inputs.is_empty() {
            return Ok(outcomes);
        }
        let inputs = Arc::new(inputs);
        let mut attempt = 1;
        let applied = loop {
            match self.sync(inputs.clone()).await {
                Ok(applied) => break applied,
                Err(e) if attempt < PAGE_ATTEMPTS => {
                    let error = crate::billing::error_chain(&e);
                    tracing::info!(resource = resource.as_str(), attempt, error = %error, "page failed; applying it again");
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        for (place, outcome) in places.into_iter().zip(applied) {
            outcomes[place] = match outcome {
                InputOutcome::Listed(outcome) => outcome,
                other => unreachable!("a listed object comes to a listed outcome, not {other:?}"),
            };
        }
        Ok(outcomes)
    }
}

fn checkpoint(resource: Resource, after: Option<String>, summary: &BackfillSummary) -> BackfillCheckpoint {
    BackfillCheckpoint { resource: resource.as_str().to_owned(), after, counts: summary.to_json() }
}

fn since_text(since: Option<i64>) -> String {
    since.and_then(crate::domain::from_unix).map_or_else(|| "the beginning".to_owned(), crate::billing::rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_a_checkpoint() {
        let mut summary = BackfillSummary { run_id: Uuid::new_v4(), ..BackfillSummary::default() };
        let counts = summary.per_resource.entry(Resource::Invoices).or_default();
        for outcome in [
            ListedOutcome::Created,
            ListedOutcome::Updated,
            ListedOutcome::Unchanged,
            ListedOutcome::Skipped("invoice not paid"),
            ListedOutcome::Skipped("invoice not paid"),
        ] {
            counts.add(outcome);
        }
        summary.per_resource.entry(Resource::Customers).or_default().add(ListedOutcome::Created);
        let back = BackfillSummary::from_json(summary.run_id, &summary.to_json()).unwrap();
        assert_eq!(back, summary);
        let total = back.total();
        assert_eq!((total.seen, total.created, total.updated, total.unchanged, total.skipped_total()), (6, 2, 1, 1, 2));
        assert!(BackfillSummary::from_json(summary.run_id, &json!({"refunds": {}})).is_err());
    }

    #[test]
    fn each_list_asks_for_what_its_webhooks_report() {
        let params = |r: Resource, since| {
            r.params(since).into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
        };
        assert_eq!(params(Resource::Customers, None), "");
        assert_eq!(params(Resource::Subscriptions, Some(1_700_000_000)), "status=all&created[gte]=1700000000");
        assert_eq!(params(Resource::Invoices, None), "status=paid");
        assert_eq!(params(Resource::CheckoutSessions, None), "status=complete");
        assert!(Resource::ALL.windows(2).all(|w| w[0] < w[1]), "the order a run pages them in");
        assert!(Resource::ALL.iter().all(|r| Resource::parse(r.as_str()) == Some(*r)));
    }

    #[test]
    fn objects_not_acted_on_say_why() {
        let as_of = 1_700_000_000;
        let open = json!({"id": "in_1", "object": "invoice", "status": "open", "customer": "cus_1", "currency": "eur"});
        assert_eq!(classify(Resource::Invoices, &open, as_of).unwrap_err(), "invoice not paid");
        let expired = json!({"id": "cs_1", "object": "checkout.session", "status": "expired", "mode": "payment"});
        assert_eq!(classify(Resource::CheckoutSessions, &expired, as_of).unwrap_err(), "checkout session not complete");
        let broken = json!({"id": "sub_1", "object": "subscription", "status": "weird", "customer": "cus_1"});
        assert_eq!(classify(Resource::Subscriptions, &broken, as_of).unwrap_err(), "object could not be read");
        let paid = json!({"id": "in_2", "object": "invoice", "status": "paid", "customer": "cus_1", "currency": "eur",
                          "amount_paid": 900, "parent": {"subscription_details": {"subscription": "sub_1"}}});
        let Ok(ListedObject::Invoice(payment, charges)) = classify(Resource::Invoices, &paid, as_of) else { panic!() };
        assert_eq!(
            (payment.status, payment.amount, payment.paid_at),
            (PaymentStatus::Paid, 900, crate::domain::from_unix(as_of))
        );
        assert!(charges.is_empty(), "a basil invoice names no payment");
        // Before basil a listed invoice names what paid it, as its webhook does.
        let old = json!({"id": "in_3", "object": "invoice", "status": "paid", "customer": "cus_1", "currency": "eur",
                         "amount_paid": 900, "subscription": "sub_1", "payment_intent": "pi_3", "charge": "ch_3"});
        let Ok(ListedObject::Invoice(_, charges)) = classify(Resource::Invoices, &old, as_of) else { panic!() };
        assert_eq!(
            charges.iter().map(|c| (c.key(), c.charge.as_deref())).collect::<Vec<_>>(),
            [(Some("pi_3"), Some("ch_3"))]
        );
    }
}
