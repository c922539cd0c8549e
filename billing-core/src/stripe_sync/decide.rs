//! The decisions of the Stripe units of work: pure functions of what the
//! store loaded ([`StripeBundle`]), the input and the clock, writing a
//! [`Changeset`]. No I/O: every rule here is tested without a database.
//!
//! The inputs of one group are decided one after the other against the
//! same bundle, which each decision updates as it writes, so that a later
//! event of an object sees what an earlier one did (in `created` order,
//! which [`super::StripeInput::order`] gives).

use super::{Ambiguity, InputOutcome, ListedObject, ListedOutcome, StripeInput};
use crate::domain::device::{evicted_by_limit, Liveness};
use crate::domain::license::{self, LicenseDecision};
use crate::domain::subscription::{self, changes_between, Freshness, SubscriptionChange};
use crate::domain::{
    from_unix, Actor, Device, DeviceStatus, License, LicenseKind, LicenseStatus, LicenseTerms, Payment, PaymentStatus,
    PlanCatalog, Subscription, SubscriptionSnapshot, SubscriptionStatus, Timestamp, Topic,
};
use crate::licensing::{device_message, DeactivationReason};
use crate::messages::{
    license_message, license_updated, license_updated_because, subscription_updated, LICENSE_CREATED,
};
use crate::storage::changeset::LicenseAudit;
use crate::storage::stripe_sync::{
    Changeset, DeliveryRecord, DeviceAudit, DisputeRecord, HeldCustomer, HeldInvoiceCharge, HeldPurchase,
    HeldSubscription, NewCustomer, NewInvoiceCharge, NewPurchase, PaymentUpsert, StripeBundle, SubscriptionAudit,
};
use crate::storage::OutboxMessage;
use crate::stripe::{Charge, CheckoutSession, Dispute, EventPayload, InvoiceCharge, StripeCustomer};
use serde_json::json;
use uuid::Uuid;

/// The rules' settings, read by every decision.
#[derive(Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub(crate) plans: &'a PlanCatalog,
    pub(crate) grace: time::Duration,
    pub(crate) heartbeat_window: time::Duration,
    pub(crate) now: Timestamp,
}

/// A group's decisions in progress: the bundle as the decisions so far
/// left it, and their writes.
pub(crate) struct Decisions<'a> {
    rules: Rules<'a>,
    held: StripeBundle,
    changes: Changeset,
}

/// Whether a snapshot changed our state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synced {
    Applied,
    Stale,
    Ambiguous,
}

impl<'a> Decisions<'a> {
    pub(crate) fn new(rules: Rules<'a>, held: StripeBundle) -> Self {
        Self { rules, held, changes: Changeset::default() }
    }

    /// The writes decided so far.
    pub(crate) fn into_changeset(self) -> Changeset {
        self.changes
    }

    /// Decides one input. A delivery this transaction did not claim was
    /// applied before (or earlier in this group): a duplicate, no writes.
    pub(crate) fn decide(&mut self, input: &StripeInput) -> InputOutcome {
        match input {
            StripeInput::Delivery { event, .. } => {
                if !self.held.claimed.remove(&event.id) {
                    return InputOutcome::Duplicate;
                }
                let actor = Actor::Stripe { event_id: event.id.clone() };
                match &event.payload {
                    EventPayload::Subscription(snapshot) => {
                        match self.sync_subscription(&actor, snapshot, event.created, input.ambiguity()) {
                            Synced::Applied => InputOutcome::Processed,
                            Synced::Stale => {
                                self.changes.record_delivery(
                                    &event.id,
                                    DeliveryRecord::Noted("stale snapshot: a newer one is held"),
                                );
                                InputOutcome::Processed
                            }
                            Synced::Ambiguous => {
                                self.changes.record_delivery(
                                    &event.id,
                                    DeliveryRecord::Released("same-second snapshot: awaiting Stripe's current object"),
                                );
                                InputOutcome::Ambiguous
                            }
                        }
                    }
                    EventPayload::CheckoutCompleted(session) => {
                        let note = match session.mode.as_str() {
                            "payment" => self.purchase(&actor, session, event.created),
                            _ => self.checkout(&actor, session),
                        };
                        if let Some(note) = note {
                            self.changes.record_delivery(&event.id, DeliveryRecord::Noted(note));
                        }
                        InputOutcome::Processed
                    }
                    EventPayload::CheckoutPaymentFailed(session) => {
                        if let Some(note) = self.purchase_failed(session) {
                            self.changes.record_delivery(&event.id, DeliveryRecord::Noted(note));
                        }
                        InputOutcome::Processed
                    }
                    EventPayload::Invoice(payment, charges) => {
                        let moved = self.invoice(&actor, payment);
                        let linked = self.record_invoice_charges(payment.stripe_subscription_id.as_deref(), charges);
                        if !moved && !linked {
                            self.changes.record_delivery(&event.id, DeliveryRecord::Noted("payment already recorded"));
                        }
                        InputOutcome::Processed
                    }
                    EventPayload::InvoicePayment(charge) => {
                        if !self.record_invoice_charges(None, std::slice::from_ref(charge)) {
                            self.changes
                                .record_delivery(&event.id, DeliveryRecord::Noted("invoice payment already recorded"));
                        }
                        InputOutcome::Processed
                    }
                    EventPayload::Customer(customer) => {
                        self.customer(customer, event.created);
                        InputOutcome::Processed
                    }
                    EventPayload::ChargeRefunded(charge) => {
                        if let Some(note) = self.refund(&actor, charge) {
                            self.changes.record_delivery(&event.id, DeliveryRecord::Noted(note));
                        }
                        InputOutcome::Processed
                    }
                    EventPayload::Dispute(dispute) => {
                        if let Some(note) = self.dispute(&actor, dispute) {
                            self.changes.record_delivery(&event.id, DeliveryRecord::Noted(note));
                        }
                        InputOutcome::Processed
                    }
                    EventPayload::Ignored => {
                        self.changes.record_delivery(&event.id, DeliveryRecord::Ignored);
                        InputOutcome::Ignored
                    }
                }
            }
            StripeInput::Refetched { event, snapshot, .. } => {
                if !self.held.claimed.remove(&event.id) {
                    return InputOutcome::Duplicate;
                }
                let actor = Actor::Stripe { event_id: event.id.clone() };
                match self.sync_subscription(&actor, snapshot, event.created, input.ambiguity()) {
                    Synced::Stale => self
                        .changes
                        .record_delivery(&event.id, DeliveryRecord::Noted("stale snapshot: a newer one is held")),
                    Synced::Applied | Synced::Ambiguous => {}
                }
                InputOutcome::Processed
            }
            StripeInput::Snapshot { snapshot, actor } => {
                match self.sync_subscription(actor, snapshot, self.rules.now.unix_timestamp(), Ambiguity::Authoritative)
                {
                    Synced::Applied => InputOutcome::Processed,
                    Synced::Stale | Synced::Ambiguous => InputOutcome::Unchanged,
                }
            }
            StripeInput::Listed { object, as_of } => InputOutcome::Listed(self.listed(object, *as_of)),
        }
    }

    /// Applies an object a backfill listed, as of `as_of`, through the
    /// decisions its webhook takes, and says what that changed by comparing
    /// what we hold of it before and after (a version bump alone is no
    /// change).
    fn listed(&mut self, object: &ListedObject, as_of: i64) -> ListedOutcome {
        let actor = Actor::Backfill;
        match object {
            ListedObject::Customer(customer) => {
                let before = self.customer_state(&customer.id);
                self.customer(customer, as_of);
                compare(before, self.customer_state(&customer.id))
            }
            ListedObject::Subscription(snapshot) => {
                let id = &snapshot.stripe_subscription_id;
                let before = self.subscription_state(id);
                match self.sync_subscription(&actor, snapshot, as_of, Ambiguity::KeepHeld) {
                    Synced::Applied | Synced::Stale => compare(before, self.subscription_state(id)),
                    Synced::Ambiguous => unreachable!("a listed object keeps the held state on a tie"),
                }
            }
            ListedObject::Invoice(payment, charges) => {
                let subscription = payment.stripe_subscription_id.as_deref().unwrap_or_default();
                let before = self.held.payments.get(&payment.stripe_invoice_id).copied();
                let subscription_before = self.subscription_state(subscription);
                self.invoice(&actor, payment);
                let linked = self.record_invoice_charges(payment.stripe_subscription_id.as_deref(), charges);
                match compare(before, self.held.payments.get(&payment.stripe_invoice_id).copied()) {
                    ListedOutcome::Unchanged
                        if linked || subscription_before != self.subscription_state(subscription) =>
                    {
                        ListedOutcome::Updated
                    }
                    outcome => outcome,
                }
            }
            ListedObject::Checkout(session) => self.listed_checkout(session),
        }
    }

    /// A completed checkout, listed: what its webhook does to our state,
    /// which is linking its customer to its user (whatever its mode; the
    /// subscription of a subscription checkout is listed on its own). The
    /// audit row of the link is written only when the link is new, so
    /// listing it again writes nothing.
    fn listed_checkout(&mut self, session: &CheckoutSession) -> ListedOutcome {
        let Some(customer) = session.customer.as_deref() else {
            return ListedOutcome::Skipped("checkout session has no customer");
        };
        let before = self.customer_state(customer);
        let id = self.customer_id(customer, session.user_id());
        let after = self.customer_state(customer);
        let linked = before.as_ref().map(|(user, _)| user.is_none()).unwrap_or(true)
            && after.as_ref().is_some_and(|(user, _)| user.is_some());
        if let (true, "subscription", Some(sub)) = (linked, session.mode.as_str(), session.subscription.as_deref()) {
            if let Some(held) = self.held.subscriptions.get(sub).filter(|h| h.customer_id == id) {
                let sub_id = held.subscription.id;
                let change = SubscriptionChange::CheckoutLinked { checkout_session_id: session.id.clone() };
                self.audit(sub_id, &Actor::Backfill, change);
            }
        }
        match compare(before, after) {
            ListedOutcome::Unchanged if session.user_id().is_none() => {
                ListedOutcome::Skipped("checkout session names no user")
            }
            outcome => outcome,
        }
    }

    /// What we hold of a customer, as far as a change to it goes.
    fn customer_state(&self, stripe_customer_id: &str) -> Option<(Option<String>, Option<String>)> {
        self.held.customers.get(stripe_customer_id).map(|c| (c.user_id.clone(), c.email.clone()))
    }

    /// What we hold of a subscription, as far as a change to it goes: the
    /// subscription but for its version, its customer's user and its license.
    fn subscription_state(
        &self,
        stripe_subscription_id: &str,
    ) -> Option<(Subscription, Option<String>, Option<License>)> {
        let held = self.held.subscriptions.get(stripe_subscription_id)?;
        let user = self.customer_user(&held.subscription.snapshot.stripe_customer_id).map(str::to_owned);
        let license = self.held.licenses.get(&held.subscription.id).cloned();
        Some((Subscription { source_created: 0, ..held.subscription.clone() }, user, license))
    }

    /// Finds or creates the customer of a Stripe customer id, linking it to
    /// `user_id` when it had no user. Returns our id.
    fn customer_id(&mut self, stripe_customer_id: &str, user_id: Option<&str>) -> Uuid {
        match self.held.customers.get_mut(stripe_customer_id) {
            Some(held) => {
                if let (None, Some(user_id)) = (&held.user_id, user_id) {
                    held.user_id = Some(user_id.to_owned());
                    self.changes.customer_links.push((held.id, user_id.to_owned()));
                }
                held.id
            }
            None => {
                let id = Uuid::new_v4();
                let user_id = user_id.map(str::to_owned);
                let held = HeldCustomer { id, user_id: user_id.clone(), email: None, email_created: None };
                self.held.customers.insert(stripe_customer_id.to_owned(), held);
                self.changes.new_customers.push(NewCustomer {
                    id,
                    stripe_customer_id: stripe_customer_id.to_owned(),
                    user_id,
                });
                id
            }
        }
    }

    fn customer_user(&self, stripe_customer_id: &str) -> Option<&str> {
        self.held.customers.get(stripe_customer_id).and_then(|c| c.user_id.as_deref())
    }

    /// Brings our copy of one subscription (and its license) in line with a
    /// snapshot. A stale snapshot changes no state, but it is still
    /// evidence: of entitlement (so the license exists whatever order the
    /// events come in) and of when the period's grace began.
    fn sync_subscription(
        &mut self,
        actor: &Actor,
        snapshot: &SubscriptionSnapshot,
        created: i64,
        ambiguity: Ambiguity,
    ) -> Synced {
        let held = self.held.subscriptions.get(&snapshot.stripe_subscription_id).cloned();
        let up_to_date = held.as_ref().is_some_and(|h| {
            h.subscription.snapshot.stripe_customer_id == snapshot.stripe_customer_id
                && (self.customer_user(&snapshot.stripe_customer_id).is_some() || snapshot.user_id.is_none())
        });
        let customer_id = match &held {
            Some(h) if up_to_date => h.customer_id,
            _ => self.customer_id(&snapshot.stripe_customer_id, snapshot.user_id.as_deref()),
        };
        let Some(held) = held.map(|h| h.subscription) else {
            return self.apply_snapshot(customer_id, None, snapshot, created, actor);
        };
        let fresh = match (subscription::freshness(&held, snapshot, created), ambiguity) {
            // Fresh from the API: the current truth, whatever the clocks say.
            (_, Ambiguity::Authoritative) if held.snapshot != *snapshot => true,
            (Freshness::Stale, _) | (_, Ambiguity::Authoritative) => false,
            (Freshness::Ambiguous, Ambiguity::Refuse) => return Synced::Ambiguous,
            (Freshness::Ambiguous, Ambiguity::KeepHeld) => false,
            (Freshness::Ambiguous, Ambiguity::ApplyLaterArrival) | (Freshness::Newer, _) => true,
        };
        if fresh {
            return self.apply_snapshot(customer_id, Some(held), snapshot, created, actor);
        }
        let held = match subscription::earlier_past_due_since(&held, snapshot, created) {
            Some(since) => {
                let earlier = Subscription { past_due_since: Some(since), ..held };
                self.save_subscription(customer_id, earlier.clone());
                earlier
            }
            None => held,
        };
        self.settle_license(&held, snapshot.status, actor);
        Synced::Stale
    }

    fn save_subscription(&mut self, customer_id: Uuid, subscription: Subscription) {
        let held = HeldSubscription { subscription, customer_id };
        self.held.subscriptions.insert(held.subscription.snapshot.stripe_subscription_id.clone(), held.clone());
        self.changes.save_subscription(held);
    }

    fn audit(&mut self, subscription_id: Uuid, actor: &Actor, change: SubscriptionChange) {
        self.changes.subscription_audit.push(SubscriptionAudit {
            subscription_id,
            change,
            actor: actor.label(),
            stripe_event_id: actor.stripe_event_id().map(str::to_owned),
            client_addr: actor.client_addr(),
        });
    }

    fn enqueue(&mut self, message: OutboxMessage) {
        self.changes.outbox.push(message);
    }

    /// Stores a snapshot that is newer than what we hold, with its audit
    /// rows, its license's terms and the event the license's devices hear.
    fn apply_snapshot(
        &mut self,
        customer_id: Uuid,
        held: Option<Subscription>,
        snapshot: &SubscriptionSnapshot,
        created: i64,
        actor: &Actor,
    ) -> Synced {
        let plan = snapshot.price_id.as_deref().and_then(|p| self.rules.plans.by_price(p));
        let next = Subscription {
            id: held.as_ref().map_or_else(Uuid::new_v4, |h| h.id),
            snapshot: snapshot.clone(),
            plan_id: plan.map(|p| p.id.0.clone()),
            past_due_since: subscription::past_due_since(held.as_ref(), snapshot, created),
            source_created: held.as_ref().map_or(created, |h| h.source_created.max(created)),
        };
        let changes = changes_between(held.as_ref().map(|h| &h.snapshot), &next.snapshot);
        self.save_subscription(customer_id, next.clone());
        let client_visible = changes.iter().any(|c| !matches!(c, SubscriptionChange::Created { .. }));
        for change in changes {
            self.audit(next.id, actor, change);
        }
        let license_id = self.settle_license(&next, snapshot.status, actor);
        if let (Some(license_id), true) = (license_id, client_visible) {
            self.enqueue(subscription_updated(license_id, &next));
        }
        Synced::Applied
    }

    /// Issues or updates the license of `sub` (as now held) so that it
    /// follows the subscription: issued once anything proves entitlement
    /// (`seen`, the status a snapshot just reported, however stale; the
    /// current status; a paid invoice), its terms derived from the current
    /// state. Returns the license's id, if it has one.
    fn settle_license(&mut self, sub: &Subscription, seen: SubscriptionStatus, actor: &Actor) -> Option<Uuid> {
        let rules = self.rules;
        let plan = sub.snapshot.price_id.as_deref().and_then(|p| rules.plans.by_price(p));
        let license = self.held.licenses.get(&sub.id).cloned();
        let entitled = license.is_some()
            || seen.proves_entitlement()
            || sub.snapshot.status.proves_entitlement()
            || self.held.paid_subscriptions.contains(&sub.snapshot.stripe_subscription_id);
        match (license::decide(sub, plan, license.as_ref(), entitled, rules.grace, rules.now), license) {
            (LicenseDecision::Issue(terms), _) => {
                let issued = License::for_subscription(sub.id, terms);
                self.held.licenses.insert(sub.id, issued.clone());
                self.held.devices.insert(issued.id, Vec::new());
                // Heard by the vendor's systems (webhooks), not by devices:
                // a new license has none yet.
                self.enqueue(license_message(LICENSE_CREATED, &issued));
                self.changes.new_licenses.push(issued.clone());
                Some(issued.id)
            }
            (LicenseDecision::Update(terms), Some(held)) => {
                let shrunk = terms.max_devices < held.terms.max_devices;
                let updated = License { terms: terms.clone(), ..held };
                self.held.licenses.insert(sub.id, updated.clone());
                self.changes.set_license_terms(updated.id, terms);
                self.enqueue(license_updated(&updated));
                if shrunk {
                    self.evict_beyond_limit(&updated, actor);
                }
                Some(updated.id)
            }
            (LicenseDecision::Update(_), None) => unreachable!("updates are decided only for held licenses"),
            (LicenseDecision::Keep, held) => held.map(|l| l.id),
        }
    }

    /// After a downgrade, the least recently seen live devices beyond the
    /// new limit lose their slot and are told so.
    fn evict_beyond_limit(&mut self, license: &License, actor: &Actor) {
        let now = self.rules.now;
        let devices = self.held.devices.get(&license.id).cloned().unwrap_or_default();
        let liveness = Liveness::of_license(license, self.rules.plans, self.rules.heartbeat_window);
        for id in evicted_by_limit(&devices, license.terms.max_devices, now, liveness) {
            let Some(device) = self.held.devices.get_mut(&license.id).and_then(|ds| ds.iter_mut().find(|d| d.id == id))
            else {
                continue;
            };
            *device = Device { status: DeviceStatus::Deactivated, deactivated_at: Some(now), ..device.clone() };
            let device = device.clone();
            let reason = DeactivationReason::Downgrade;
            self.changes.device_statuses.push((device.id, DeviceStatus::Deactivated, now));
            self.changes.device_audit.push(DeviceAudit {
                device_id: device.id,
                license_id: device.license_id,
                kind: "deactivated",
                actor: actor.label(),
                detail: json!({ "reason": reason.as_str() }),
                client_addr: actor.client_addr(),
            });
            self.enqueue(device_message(Topic::DeviceDeactivated, &device, Some(reason.as_str())));
        }
    }

    /// Links the checkout's customer (and with it any subscription that
    /// arrived before this checkout) to its user. Returns a note when
    /// there was nothing to link.
    fn checkout(&mut self, actor: &Actor, session: &CheckoutSession) -> Option<&'static str> {
        let subscription = match (session.mode.as_str(), session.subscription.as_deref()) {
            ("subscription", Some(id)) => self.held.subscriptions.get(id).map(|h| h.subscription.clone()),
            _ => None,
        };
        let note = match (session.customer.as_deref(), session.user_id()) {
            (Some(customer), Some(user_id)) => {
                self.customer_id(customer, Some(user_id));
                if let Some(sub) = subscription.filter(|s| s.snapshot.stripe_customer_id == customer) {
                    let change = SubscriptionChange::CheckoutLinked { checkout_session_id: session.id.clone() };
                    self.audit(sub.id, actor, change);
                }
                None
            }
            (Some(customer), None) => {
                self.customer_id(customer, None);
                Some("checkout names no user")
            }
            (None, _) => Some("checkout has no customer"),
        };
        if session.mode != "subscription" {
            Some("not a subscription checkout")
        } else {
            note
        }
    }

    /// A payment-mode checkout: once paid, issues the one perpetual license
    /// of its session (of the plan its `metadata[plan]` names, to the user
    /// it names) with its payment row. A session not paid yet issues
    /// nothing; a later delivery that finds it paid does. Returns a note
    /// when nothing was issued.
    fn purchase(&mut self, actor: &Actor, session: &CheckoutSession, created: i64) -> Option<&'static str> {
        let customer_id = session.customer.as_deref().map(|c| self.customer_id(c, session.user_id()));
        if self.held.purchases.contains_key(&session.id) {
            return Some("checkout's license already issued");
        }
        if session.payment_status.as_deref() != Some("paid") {
            return Some("checkout not paid yet");
        }
        let Some(user_id) = session.user_id() else { return Some("checkout names no user") };
        let rules = self.rules;
        let plan = session.metadata_plan.as_deref().and_then(|p| rules.plans.by_id(p));
        let Some(plan) = plan.filter(|p| p.kind == LicenseKind::Perpetual) else {
            return Some("checkout names no perpetual plan");
        };
        let paid_at = from_unix(created).unwrap_or(rules.now);
        let issued = License::for_purchase(user_id, plan, paid_at);
        self.held.purchases.insert(
            session.id.clone(),
            HeldPurchase { license: issued.clone(), payment_intent: session.payment_intent.clone() },
        );
        self.changes.new_purchases.push(NewPurchase {
            stripe_checkout_session_id: session.id.clone(),
            license_id: issued.id,
            customer_id,
            stripe_payment_intent_id: session.payment_intent.clone(),
        });
        self.changes.license_audit.push(LicenseAudit {
            license_id: issued.id,
            kind: "issued",
            actor: actor.label(),
            detail: json!({ "checkout_session_id": session.id, "payment_intent_id": session.payment_intent }),
            client_addr: actor.client_addr(),
        });
        self.enqueue(license_message(LICENSE_CREATED, &issued));
        self.changes.new_licenses.push(issued);
        if let Some(customer_id) = customer_id {
            self.record_purchase_payment(customer_id, session, PaymentStatus::Paid, Some(paid_at));
        }
        None
    }

    /// A delayed checkout payment that failed: recorded, nothing issued (a
    /// payment already recorded as paid stays so).
    fn purchase_failed(&mut self, session: &CheckoutSession) -> Option<&'static str> {
        let Some(customer) = session.customer.as_deref() else { return Some("checkout has no customer") };
        let customer_id = self.customer_id(customer, session.user_id());
        if !self.record_purchase_payment(customer_id, session, PaymentStatus::Failed, None) {
            return Some("payment already recorded");
        }
        None
    }

    /// Stores a checkout's payment unless one as far along is held.
    fn record_purchase_payment(
        &mut self,
        customer_id: Uuid,
        session: &CheckoutSession,
        status: PaymentStatus,
        paid_at: Option<Timestamp>,
    ) -> bool {
        let key = purchase_payment_key(session).to_owned();
        let held = self.held.payments.get(&key).copied();
        if held.is_some_and(|h| !h.may_become(status)) {
            return false;
        }
        self.held.payments.insert(key.clone(), status);
        let payment = Payment {
            stripe_invoice_id: key,
            stripe_customer_id: session.customer.clone().unwrap_or_default(),
            stripe_subscription_id: None,
            amount: session.amount_total.unwrap_or(0),
            currency: session.currency.clone().unwrap_or_default(),
            status,
            paid_at,
        };
        self.changes.save_payment(PaymentUpsert { customer_id, payment, new: held.is_none() });
        true
    }

    /// The Checkout session whose purchase the payment intent paid for:
    /// only what we recorded when it was paid links a charge to a license.
    fn purchase_paid_by(&self, payment_intent: Option<&str>) -> Option<String> {
        let intent = payment_intent?;
        self.held.purchases.iter().find(|(_, p)| p.payment_intent.as_deref() == Some(intent)).map(|(s, _)| s.clone())
    }

    /// Records what paid a subscription's invoice (`subscription`, when the
    /// payload names it), so that a later refund or dispute of it finds
    /// the subscription's license. Returns whether anything was new.
    fn record_invoice_charges(&mut self, subscription: Option<&str>, charges: &[InvoiceCharge]) -> bool {
        let mut recorded = false;
        for charge in charges {
            let Some(key) = charge.key() else { continue };
            if self.held.invoice_charges.contains_key(key) {
                continue;
            }
            let held = HeldInvoiceCharge {
                invoice_id: charge.invoice_id.clone(),
                charge_id: charge.charge.clone(),
                subscription: subscription.map(str::to_owned),
            };
            self.held.invoice_charges.insert(key.to_owned(), held);
            self.changes.invoice_charges.push(NewInvoiceCharge {
                payment_key: key.to_owned(),
                invoice_id: charge.invoice_id.clone(),
                charge_id: charge.charge.clone(),
            });
            recorded = true;
        }
        recorded
    }

    /// What a charge paid for, as recorded when it was paid: a Checkout
    /// purchase (its payment intent), else a subscription invoice (its
    /// payment intent, or the charge itself) whose subscription has a
    /// license. Nothing else links a charge to a license.
    fn paid_for(&self, payment_intent: Option<&str>, charge: &str) -> Option<PaidFor> {
        if let Some(session) = self.purchase_paid_by(payment_intent) {
            return Some(PaidFor::Purchase(session));
        }
        let links = &self.held.invoice_charges;
        let link = payment_intent
            .and_then(|intent| links.get(intent))
            .or_else(|| links.get(charge))
            .or_else(|| links.values().find(|l| l.charge_id.as_deref() == Some(charge)))?;
        let subscription = link.subscription.clone()?;
        let held = self.held.subscriptions.get(&subscription)?;
        self.held
            .licenses
            .contains_key(&held.subscription.id)
            .then(|| PaidFor::Invoice { subscription, invoice_id: link.invoice_id.clone() })
    }

    /// The license a charge paid for, as held now.
    fn paid_license(&self, paid: &PaidFor) -> License {
        match paid {
            PaidFor::Purchase(session) => self.held.purchases[session].license.clone(),
            PaidFor::Invoice { subscription, .. } => {
                self.held.licenses[&self.held.subscriptions[subscription].subscription.id].clone()
            }
        }
    }

    /// A refund: a full one of a perpetual purchase revokes its license, a
    /// partial one is recorded and changes nothing; one of a subscription
    /// invoice is recorded and changes nothing (cancelling the
    /// subscription ends its license). Returns a note when the license did
    /// not change.
    fn refund(&mut self, actor: &Actor, charge: &Charge) -> Option<&'static str> {
        let Some(paid) = self.paid_for(charge.payment_intent.as_deref(), &charge.id) else {
            return Some(UNLINKED_CHARGE);
        };
        let license = self.paid_license(&paid);
        let mut detail = json!({
            "reason": "refund",
            "charge_id": charge.id,
            "amount": charge.amount,
            "amount_refunded": charge.amount_refunded,
            "currency": charge.currency,
        });
        if let PaidFor::Invoice { invoice_id, .. } = &paid {
            detail["invoice_id"] = json!(invoice_id);
            let kind = if charge.fully_refunded() { "refunded" } else { "partially_refunded" };
            self.license_audit(license.id, kind, actor, detail);
            return Some("subscription invoice refunded: the license is kept");
        }
        if !charge.fully_refunded() {
            self.license_audit(license.id, "partially_refunded", actor, detail);
            return Some("partial refund: the license is kept");
        }
        if license.terms.status == LicenseStatus::Revoked {
            return Some("license already revoked");
        }
        let next =
            License { terms: LicenseTerms { status: LicenseStatus::Revoked, ..license.terms.clone() }, ..license };
        self.save_paid(&paid, next, actor, ("revoked", "refund"), detail);
        None
    }

    /// A dispute of the charge that paid for a license (a perpetual
    /// purchase or a subscription's invoice): opened, it suspends the
    /// license; closed as lost, it revokes it; closed otherwise (won, an
    /// inquiry closed) while no other dispute of the license is open, the
    /// license is what its own terms and an admin's fields make it, as if
    /// never disputed. Each dispute is recorded as
    /// far as it went, so one closed before its opening arrived is not
    /// opened again: the end state is in-order delivery's.
    fn dispute(&mut self, actor: &Actor, dispute: &Dispute) -> Option<&'static str> {
        let Some(paid) = self.paid_for(dispute.payment_intent.as_deref(), &dispute.charge) else {
            return Some(UNLINKED_CHARGE);
        };
        match self.held.disputes.get(&dispute.id) {
            Some(held) if held.closed => return Some("dispute already closed"),
            Some(_) if !dispute.closed => return Some("dispute already open"),
            _ => {}
        }
        let rules = self.rules;
        let license = self.paid_license(&paid);
        let others_open =
            self.held.disputes.iter().any(|(id, d)| *id != dispute.id && d.license_id == license.id && !d.closed);
        let record = DisputeRecord { license_id: license.id, status: dispute.status.clone(), closed: dispute.closed };
        self.held.disputes.insert(dispute.id.clone(), record.clone());
        self.changes.save_dispute(&dispute.id, record);
        let mut detail = json!({
            "dispute_id": dispute.id,
            "charge_id": dispute.charge,
            "dispute_status": dispute.status,
        });
        if let PaidFor::Invoice { invoice_id, .. } = &paid {
            detail["invoice_id"] = json!(invoice_id);
        }
        let mut next = license.clone();
        let change = match (dispute.closed, dispute.status.as_str()) {
            (false, _) if license.overrides.disputed_at.is_some() => return Some("dispute already open"),
            (false, _) => {
                next.overrides.disputed_at = Some(rules.now);
                ("suspended", "dispute")
            }
            (true, "lost") if license.terms.status == LicenseStatus::Revoked => return Some("license already revoked"),
            (true, "lost") => {
                next.overrides.disputed_at = None;
                next.terms.status = LicenseStatus::Revoked;
                ("revoked", "dispute_lost")
            }
            (true, _) if license.overrides.disputed_at.is_none() => return Some("no open dispute"),
            (true, _) if others_open => return Some("another dispute of the license is open"),
            (true, _) => {
                next.overrides.disputed_at = None;
                ("reinstated", "dispute_won")
            }
        };
        if next.terms.status != LicenseStatus::Revoked {
            let terms = match &paid {
                PaidFor::Purchase(_) => {
                    let plan = next.terms.plan_id.as_deref().and_then(|p| rules.plans.by_id(p));
                    license::rederive(&next, None, plan, rules.grace, rules.now)
                }
                PaidFor::Invoice { subscription, .. } => {
                    let sub = &self.held.subscriptions[subscription].subscription;
                    let plan = sub.snapshot.price_id.as_deref().and_then(|p| rules.plans.by_price(p));
                    license::rederive(&next, Some(sub), plan, rules.grace, rules.now)
                }
            };
            if let Some(terms) = terms {
                next.terms = terms;
            }
        }
        self.save_paid(&paid, next, actor, change, detail);
        None
    }

    /// Keeps the new state of a license a charge paid for: saved whole,
    /// audited with `kind`, and told to its devices with `reason`.
    fn save_paid(
        &mut self,
        paid: &PaidFor,
        license: License,
        actor: &Actor,
        (kind, reason): (&'static str, &'static str),
        mut detail: serde_json::Value,
    ) {
        match paid {
            PaidFor::Purchase(session) => {
                if let Some(held) = self.held.purchases.get_mut(session) {
                    held.license = license.clone();
                }
            }
            PaidFor::Invoice { subscription, .. } => {
                let id = self.held.subscriptions[subscription].subscription.id;
                self.held.licenses.insert(id, license.clone());
            }
        }
        detail["reason"] = json!(reason);
        self.license_audit(license.id, kind, actor, detail);
        self.enqueue(license_updated_because(&license, reason));
        match self.changes.saved_licenses.iter_mut().find(|l| l.id == license.id) {
            Some(earlier) => *earlier = license,
            None => self.changes.saved_licenses.push(license),
        }
    }

    fn license_audit(&mut self, license_id: Uuid, kind: &'static str, actor: &Actor, detail: serde_json::Value) {
        self.changes.license_audit.push(LicenseAudit {
            license_id,
            kind,
            actor: actor.label(),
            detail,
            client_addr: actor.client_addr(),
        });
    }

    /// Records an invoice's payment. A paid one proves its subscription was
    /// entitled, so a subscription whose earlier events have not arrived
    /// (or only its end has) gets its license now. Returns whether the
    /// payment moved (false: already recorded in this or a later status).
    fn invoice(&mut self, actor: &Actor, payment: &Payment) -> bool {
        let held = payment.stripe_subscription_id.as_deref().and_then(|s| self.held.subscriptions.get(s)).cloned();
        let customer_id = match &held {
            Some(h) if h.subscription.snapshot.stripe_customer_id == payment.stripe_customer_id => h.customer_id,
            _ => self.customer_id(&payment.stripe_customer_id, None),
        };
        let moved = match self.held.payments.get(&payment.stripe_invoice_id) {
            None => true,
            Some(status) => status.may_become(payment.status),
        };
        if moved {
            let new = !self.held.payments.contains_key(&payment.stripe_invoice_id);
            self.held.payments.insert(payment.stripe_invoice_id.clone(), payment.status);
            if payment.status == PaymentStatus::Paid {
                if let Some(sub) = &payment.stripe_subscription_id {
                    self.held.paid_subscriptions.insert(sub.clone());
                }
            }
            self.changes.save_payment(PaymentUpsert { customer_id, payment: payment.clone(), new });
        }
        if let Some(held) = held {
            let sub = held.subscription;
            if moved {
                let change = SubscriptionChange::Payment {
                    invoice_id: payment.stripe_invoice_id.clone(),
                    status: payment.status,
                    amount: payment.amount,
                    currency: payment.currency.clone(),
                };
                self.audit(sub.id, actor, change);
            }
            let license_id = self.settle_license(&sub, sub.snapshot.status, actor);
            if let (true, Some(license_id)) = (moved && payment.status != PaymentStatus::Paid, license_id) {
                self.enqueue(OutboxMessage {
                    license_id: Some(license_id),
                    topic: Topic::PaymentUpdated,
                    payload: json!({
                        "license_id": license_id,
                        "status": payment.status,
                        "amount": payment.amount,
                        "currency": payment.currency,
                    }),
                });
            }
        }
        moved
    }

    /// Links a Stripe customer to the user its metadata names and keeps its
    /// e-mail, or records its deletion (its subscriptions end through their
    /// own events).
    fn customer(&mut self, customer: &StripeCustomer, created: i64) {
        let id = self.customer_id(&customer.id, customer.user_id.as_deref());
        if customer.deleted {
            if !self.changes.deleted_customers.contains(&id) {
                self.changes.deleted_customers.push(id);
            }
        } else {
            // A deleted customer's object still carries its last address;
            // keeping the one held is as good and needs no write.
            self.changes.set_customer_email(id, customer.email.clone(), created);
            if let Some(held) = self.held.customers.get_mut(&customer.id) {
                // As the store keeps it: unless a newer address is held.
                if held.email_created.is_none_or(|held_created| held_created <= created) {
                    held.email = customer.email.clone();
                    held.email_created = Some(created);
                }
            }
        }
    }
}

/// What a listed object changed, from what we held of it before and after.
fn compare<T: PartialEq>(before: Option<T>, after: Option<T>) -> ListedOutcome {
    match (before, after) {
        (None, Some(_)) => ListedOutcome::Created,
        (before, after) if before != after => ListedOutcome::Updated,
        _ => ListedOutcome::Unchanged,
    }
}

/// What a charge paid for, as recorded when it was paid.
enum PaidFor {
    /// A perpetual purchase, by its Checkout session (`cs_…`).
    Purchase(String),
    /// An invoice (`in_…`) of a subscription (`sub_…`) with a license.
    Invoice { subscription: String, invoice_id: String },
}

/// The note of a charge we hold no record of having been paid by: it is
/// linked to no license, and guessing one (by customer, by amount) could
/// revoke the wrong one.
const UNLINKED_CHARGE: &str = "charge not linked to a license: ignored";

/// The key of a checkout's payment row: its payment intent (what later
/// charges name), or the session itself when it has none.
pub(crate) fn purchase_payment_key(session: &CheckoutSession) -> &str {
    session.payment_intent.as_deref().unwrap_or(&session.id)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
