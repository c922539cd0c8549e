//! The Stripe decisions, on bundles built by hand: what each input writes.

use super::*;
use crate::domain::{LicenseStatus, Plan};
use crate::storage::stripe_sync::HeldCustomer;
use crate::stripe::Event;
use bytes::Bytes;
use time::macros::datetime;

const NOW: Timestamp = datetime!(2026-11-15 12:00 UTC);

fn plans() -> PlanCatalog {
    let plan = |id: &str, price: &str, max_devices| Plan::new(id, id, price, max_devices);
    let studio = Plan {
        kind: crate::domain::LicenseKind::Perpetual,
        updates_months: Some(12),
        ..plan("studio", "price_studio", 2)
    };
    PlanCatalog::new(vec![plan("basic", "price_basic", 1), plan("pro", "price_pro", 3), studio]).unwrap()
}

fn snapshot(status: SubscriptionStatus, price: &str) -> SubscriptionSnapshot {
    SubscriptionSnapshot {
        stripe_subscription_id: "sub_1".into(),
        stripe_customer_id: "cus_1".into(),
        status,
        price_id: Some(price.into()),
        item_id: Some("si_1".into()),
        cancel_at_period_end: false,
        cancel_at: None,
        canceled_at: None,
        ended_at: None,
        current_period_start: Some(datetime!(2026-11-01 0:00 UTC)),
        current_period_end: Some(datetime!(2026-12-01 0:00 UTC)),
        trial_end: None,
        user_id: Some("user_1".into()),
    }
}

fn delivery(id: &str, created: i64, payload: EventPayload) -> StripeInput {
    let event = Event {
        id: id.into(),
        kind: "customer.subscription.updated".into(),
        created,
        api_version: None,
        object_id: None,
        payload,
    };
    StripeInput::Delivery { event, body: Bytes::new(), ambiguity: Ambiguity::ApplyLaterArrival }
}

fn sub_event(id: &str, created: i64, snapshot: SubscriptionSnapshot) -> StripeInput {
    delivery(id, created, EventPayload::Subscription(snapshot))
}

/// Decides `inputs` in order against `held`, every delivery claimed.
fn decide_all(mut held: StripeBundle, inputs: &[StripeInput]) -> (Vec<InputOutcome>, Changeset) {
    let catalog = plans();
    for input in inputs {
        if let Some((event, _)) = input.delivery() {
            held.claimed.insert(event.id.clone());
        }
    }
    let rules = Rules {
        plans: &catalog,
        grace: time::Duration::days(7),
        heartbeat_window: time::Duration::minutes(10),
        now: NOW,
    };
    let mut decisions = Decisions::new(rules, held);
    let outcomes = inputs.iter().map(|i| decisions.decide(i)).collect();
    (outcomes, decisions.into_changeset())
}

/// What the store would hold after `changes` (for the next group's bundle).
fn held_after(changes: &Changeset) -> StripeBundle {
    held_after_both(&StripeBundle::default(), changes)
}

/// What the store would hold after `changes`, having held `held`.
fn held_after_both(held: &StripeBundle, changes: &Changeset) -> StripeBundle {
    let mut next = held.clone();
    next.claimed.clear();
    for s in &changes.subscriptions {
        next.subscriptions.insert(s.subscription.snapshot.stripe_subscription_id.clone(), s.clone());
    }
    for l in &changes.new_licenses {
        next.licenses.insert(l.subscription_id.unwrap(), l.clone());
        next.devices.insert(l.id, Vec::new());
    }
    for c in &changes.new_customers {
        let customer = HeldCustomer { id: c.id, user_id: c.user_id.clone(), email: None, email_created: None };
        next.customers.insert(c.stripe_customer_id.clone(), customer);
    }
    for customer in next.customers.values_mut() {
        if let Some((_, user)) = changes.customer_links.iter().find(|(id, _)| *id == customer.id) {
            customer.user_id = Some(user.clone());
        }
        if let Some((_, email, created)) = changes.customer_emails.iter().find(|(id, _, _)| *id == customer.id) {
            (customer.email, customer.email_created) = (email.clone(), Some(*created));
        }
    }
    for l in &changes.saved_licenses {
        let sub = l.subscription_id.unwrap();
        next.licenses.insert(sub, l.clone());
    }
    for (id, terms) in &changes.license_terms {
        if let Some(l) = next.licenses.values_mut().find(|l| l.id == *id) {
            l.terms = terms.clone();
        }
    }
    for c in &changes.invoice_charges {
        let subscription = changes
            .payments
            .iter()
            .find(|p| p.payment.stripe_invoice_id == c.invoice_id)
            .and_then(|p| p.payment.stripe_subscription_id.clone());
        let held = HeldInvoiceCharge { invoice_id: c.invoice_id.clone(), charge_id: c.charge_id.clone(), subscription };
        next.invoice_charges.insert(c.payment_key.clone(), held);
    }
    for (id, d) in &changes.disputes {
        next.disputes.insert(id.clone(), d.clone());
    }
    for p in &changes.payments {
        next.payments.insert(p.payment.stripe_invoice_id.clone(), p.payment.status);
        if let (PaymentStatus::Paid, Some(sub)) = (p.payment.status, &p.payment.stripe_subscription_id) {
            next.paid_subscriptions.insert(sub.clone());
        }
    }
    next
}

fn listed(object: ListedObject, as_of: i64) -> StripeInput {
    StripeInput::Listed { object: Box::new(object), as_of }
}

fn listed_outcomes(outcomes: &[InputOutcome]) -> Vec<ListedOutcome> {
    outcomes
        .iter()
        .map(|o| match o {
            InputOutcome::Listed(o) => *o,
            other => panic!("not a listed outcome: {other:?}"),
        })
        .collect()
}

#[test]
fn a_first_subscription_event_creates_customer_subscription_audit_and_license() {
    let (outcomes, changes) = decide_all(
        StripeBundle::default(),
        &[sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_pro"))],
    );
    assert_eq!(outcomes, [InputOutcome::Processed]);
    assert_eq!(changes.new_customers.len(), 1);
    assert_eq!(changes.new_customers[0].user_id.as_deref(), Some("user_1"));
    assert_eq!(changes.subscriptions.len(), 1);
    let sub = &changes.subscriptions[0];
    assert_eq!((sub.customer_id, sub.subscription.plan_id.as_deref()), (changes.new_customers[0].id, Some("pro")));
    let kinds: Vec<&str> = changes.subscription_audit.iter().map(|a| a.change.kind()).collect();
    assert_eq!(kinds, ["created"]);
    assert_eq!(changes.subscription_audit[0].stripe_event_id.as_deref(), Some("evt_1"));
    assert_eq!(changes.new_licenses.len(), 1);
    assert_eq!(
        (changes.new_licenses[0].terms.status, changes.new_licenses[0].terms.max_devices),
        (LicenseStatus::Active, 3)
    );
    // A new license is announced to the vendor only: nothing else is client-visible yet.
    let topics: Vec<Topic> = changes.outbox.iter().map(|m| m.topic).collect();
    assert_eq!(topics, [Topic::LicenseCreated]);
    assert!(changes.deliveries.is_empty(), "plainly processed");
}

#[test]
fn events_of_one_subscription_in_a_group_see_each_other_and_write_each_row_once() {
    let mut canceling = snapshot(SubscriptionStatus::Active, "price_basic");
    canceling.cancel_at_period_end = true;
    let inputs = [
        sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_pro")),
        sub_event("evt_2", 101, snapshot(SubscriptionStatus::Active, "price_basic")),
        sub_event("evt_3", 102, canceling),
    ];
    let (outcomes, changes) = decide_all(StripeBundle::default(), &inputs);
    assert_eq!(outcomes, [InputOutcome::Processed; 3]);
    assert_eq!(changes.new_customers.len(), 1, "the second event found the customer the first created");
    assert_eq!(changes.subscriptions.len(), 1, "one row, in its last state");
    let last = &changes.subscriptions[0].subscription;
    assert_eq!(
        (last.plan_id.as_deref(), last.snapshot.cancel_at_period_end, last.source_created),
        (Some("basic"), true, 102)
    );
    assert_eq!(changes.new_licenses.len(), 1, "issued once");
    assert_eq!(changes.new_licenses[0].terms.max_devices, 1, "issued with its last terms");
    assert!(changes.license_terms.is_empty(), "no update of a row this changeset inserts");
    let kinds: Vec<&str> = changes.subscription_audit.iter().map(|a| a.change.kind()).collect();
    assert_eq!(kinds.first(), Some(&"created"));
    assert_eq!(kinds, ["created", "plan_changed", "cancel_at_period_end_changed"]);
    let topics: Vec<Topic> = changes.outbox.iter().map(|m| m.topic).collect();
    assert_eq!(topics[0], Topic::LicenseCreated);
    assert!(topics.contains(&Topic::LicenseUpdated) && topics.contains(&Topic::SubscriptionUpdated), "{topics:?}");
}

#[test]
fn a_stale_snapshot_writes_nothing_but_its_note() {
    let newer = sub_event("evt_2", 200, snapshot(SubscriptionStatus::Active, "price_pro"));
    let (_, first) = decide_all(StripeBundle::default(), &[newer]);
    let older = sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_basic"));
    let (outcomes, changes) = decide_all(held_after(&first), &[older]);
    assert_eq!(outcomes, [InputOutcome::Processed]);
    let expected = Changeset {
        deliveries: vec![("evt_1".to_owned(), DeliveryRecord::Noted("stale snapshot: a newer one is held"))],
        ..Changeset::default()
    };
    assert_eq!(changes, expected, "the older plan is not applied");
}

#[test]
fn a_stale_snapshot_is_still_evidence_of_entitlement() {
    let ended = sub_event("evt_2", 200, snapshot(SubscriptionStatus::IncompleteExpired, "price_pro"));
    let (_, first) = decide_all(StripeBundle::default(), &[ended]);
    assert!(first.new_licenses.is_empty(), "never entitled so far");
    let trialing = sub_event("evt_1", 100, snapshot(SubscriptionStatus::Trialing, "price_pro"));
    let (_, changes) = decide_all(held_after(&first), &[trialing]);
    assert!(changes.subscriptions.is_empty(), "the held state stays");
    assert_eq!(changes.new_licenses.len(), 1, "issued: the subscription was entitled once");
}

#[test]
fn a_delivery_the_unit_of_work_did_not_claim_is_a_duplicate_and_writes_nothing() {
    let catalog = plans();
    let rules = Rules {
        plans: &catalog,
        grace: time::Duration::days(7),
        heartbeat_window: time::Duration::minutes(10),
        now: NOW,
    };
    let mut held = StripeBundle::default();
    held.claimed.insert("evt_1".into());
    let mut decisions = Decisions::new(rules, held);
    let input = sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_pro"));
    assert_eq!(decisions.decide(&input), InputOutcome::Processed);
    assert_eq!(decisions.decide(&input), InputOutcome::Duplicate, "the same event twice in one group counts once");
    let changes = decisions.into_changeset();
    assert_eq!(changes.subscriptions.len(), 1);
    assert_eq!(changes.subscription_audit.len(), 1, "no second audit row");
}

#[test]
fn a_paid_invoice_earlier_in_the_group_entitles_a_subscription_that_never_was_active() {
    let payment = Payment {
        stripe_invoice_id: "in_1".into(),
        stripe_customer_id: "cus_1".into(),
        stripe_subscription_id: Some("sub_1".into()),
        amount: 1200,
        currency: "eur".into(),
        status: PaymentStatus::Paid,
        paid_at: Some(NOW),
    };
    let inputs = [
        delivery("evt_paid", 100, EventPayload::Invoice(payment, Vec::new())),
        sub_event("evt_sub", 101, snapshot(SubscriptionStatus::Incomplete, "price_pro")),
    ];
    let (outcomes, changes) = decide_all(StripeBundle::default(), &inputs);
    assert_eq!(outcomes, [InputOutcome::Processed; 2]);
    assert_eq!(changes.payments.len(), 1);
    assert!(changes.payments[0].new);
    assert_eq!(changes.new_customers.len(), 1, "invoice and subscription share the customer");
    assert_eq!(changes.new_licenses.len(), 1, "the payment proved entitlement");
}

#[test]
fn a_downgrade_evicts_the_least_recently_seen_devices_beyond_the_new_limit() {
    let (_, first) = decide_all(
        StripeBundle::default(),
        &[sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_pro"))],
    );
    let mut held = held_after(&first);
    let license = first.new_licenses[0].clone();
    let device = |n: i64| Device {
        id: Uuid::from_u128(n as u128),
        license_id: license.id,
        fingerprint: format!("fp{n}"),
        name: None,
        platform: None,
        app_version: None,
        status: DeviceStatus::Active,
        activated_at: NOW - time::Duration::hours(1),
        last_heartbeat_at: NOW - time::Duration::minutes(n),
        deactivated_at: None,
        air_gapped: false,
    };
    held.devices.insert(license.id, vec![device(1), device(2), device(3)]);
    let (_, changes) =
        decide_all(held, &[sub_event("evt_2", 101, snapshot(SubscriptionStatus::Active, "price_basic"))]);
    assert_eq!(changes.license_terms.len(), 1);
    assert_eq!(changes.license_terms[0].1.max_devices, 1);
    let evicted: Vec<Uuid> = changes.device_statuses.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(evicted, [Uuid::from_u128(2), Uuid::from_u128(3)], "the most recently seen keeps its slot");
    assert!(changes.device_statuses.iter().all(|(_, status, at)| *status == DeviceStatus::Deactivated && *at == NOW));
    assert_eq!(changes.device_audit.len(), 2);
    assert_eq!(changes.device_audit[0].detail["reason"], "downgrade");
    let deactivations = changes.outbox.iter().filter(|m| m.topic == Topic::DeviceDeactivated).count();
    assert_eq!(deactivations, 2);
}

#[test]
fn a_same_second_snapshot_is_released_unapplied_when_stripe_can_be_asked() {
    let (_, first) = decide_all(
        StripeBundle::default(),
        &[sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_pro"))],
    );
    let mut past_due = snapshot(SubscriptionStatus::PastDue, "price_pro");
    past_due.cancel_at_period_end = true;
    let StripeInput::Delivery { event, body, .. } = sub_event("evt_2", 100, past_due) else { unreachable!() };
    let input = StripeInput::Delivery { event, body, ambiguity: Ambiguity::Refuse };
    let (outcomes, changes) = decide_all(held_after(&first), &[input]);
    assert_eq!(outcomes, [InputOutcome::Ambiguous]);
    assert!(changes.subscriptions.is_empty() && changes.outbox.is_empty() && changes.license_terms.is_empty());
    assert!(matches!(&changes.deliveries[..], [(id, DeliveryRecord::Released(_))] if id == "evt_2"));
}

#[test]
fn the_newest_event_s_email_is_kept_whatever_the_order_in_the_group() {
    let customer =
        |email: &str| StripeCustomer { id: "cus_1".into(), user_id: None, deleted: false, email: Some(email.into()) };
    let inputs = [
        delivery("evt_new", 200, EventPayload::Customer(customer("new@example.com"))),
        delivery("evt_old", 100, EventPayload::Customer(customer("old@example.com"))),
    ];
    let (_, changes) = decide_all(StripeBundle::default(), &inputs);
    assert_eq!(changes.customer_emails.len(), 1);
    assert_eq!(changes.customer_emails[0].1.as_deref(), Some("new@example.com"));
    assert_eq!(changes.new_customers.len(), 1);
}

#[test]
fn an_api_snapshot_identical_to_what_is_held_changes_nothing() {
    let (_, first) = decide_all(
        StripeBundle::default(),
        &[sub_event("evt_1", 100, snapshot(SubscriptionStatus::Active, "price_pro"))],
    );
    let actor = Actor::user("user_1");
    let same = StripeInput::Snapshot {
        snapshot: Box::new(snapshot(SubscriptionStatus::Active, "price_pro")),
        actor: actor.clone(),
    };
    let (outcomes, changes) = decide_all(held_after(&first), &[same]);
    assert_eq!(outcomes, [InputOutcome::Unchanged]);
    assert!(changes.is_empty(), "{changes:?}");
    let mut canceling = snapshot(SubscriptionStatus::Active, "price_pro");
    canceling.cancel_at_period_end = true;
    let changed = StripeInput::Snapshot { snapshot: Box::new(canceling), actor };
    let (outcomes, changes) = decide_all(held_after(&first), &[changed]);
    assert_eq!(outcomes, [InputOutcome::Processed]);
    assert_eq!(changes.subscription_audit[0].actor, "user:user_1");
}

#[test]
fn a_listed_subscription_is_created_once_then_unchanged_with_the_backfill_as_actor() {
    let sub = || listed(ListedObject::Subscription(snapshot(SubscriptionStatus::Active, "price_pro")), 1_000);
    let (outcomes, first) = decide_all(StripeBundle::default(), &[sub()]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Created]);
    assert_eq!(first.new_licenses.len(), 1);
    assert_eq!(first.subscription_audit.len(), 1);
    assert_eq!(
        (first.subscription_audit[0].actor.as_str(), first.subscription_audit[0].stripe_event_id.as_deref()),
        ("stripe:backfill", None)
    );
    assert!(first.deliveries.is_empty(), "no event, no delivery record");
    let (outcomes, again) = decide_all(held_after(&first), &[sub()]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged]);
    assert!(again.is_empty(), "the same object as of the same moment writes nothing: {again:?}");
    // Listed again later: nothing changes but the version held.
    let later = listed(ListedObject::Subscription(snapshot(SubscriptionStatus::Active, "price_pro")), 2_000);
    let (outcomes, bumped) = decide_all(held_after(&first), &[later]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged]);
    assert_eq!(bumped.subscriptions.len(), 1);
    assert_eq!(bumped.subscriptions[0].subscription.source_created, 2_000, "older events are now stale");
    assert!(bumped.subscription_audit.is_empty() && bumped.outbox.is_empty() && bumped.new_licenses.is_empty());
}

#[test]
fn an_event_created_after_the_list_read_wins_whatever_the_order() {
    let mut canceled = snapshot(SubscriptionStatus::Canceled, "price_pro");
    canceled.ended_at = Some(NOW);
    let event = || sub_event("evt_cancel", 1_010, canceled.clone());
    let list = || listed(ListedObject::Subscription(snapshot(SubscriptionStatus::Active, "price_pro")), 1_000);
    // The event first, then the listed object: stale, unchanged.
    let (_, first) = decide_all(StripeBundle::default(), &[event()]);
    let (outcomes, changes) = decide_all(held_after(&first), &[list()]);
    assert!(changes.subscriptions.is_empty(), "the newer cancellation stays");
    // Still evidence: it was active once, so its license exists (as the
    // webhook of its start would have issued it).
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Updated]);
    assert_eq!(changes.new_licenses.len(), 1);
    // The listed object first, then the event: applied over it.
    let (_, first) = decide_all(StripeBundle::default(), &[list()]);
    let (_, changes) = decide_all(held_after(&first), &[event()]);
    assert_eq!(changes.subscriptions[0].subscription.snapshot.status, SubscriptionStatus::Canceled);
    // An event older than the list read loses to the listed object.
    let old = sub_event("evt_old", 990, snapshot(SubscriptionStatus::PastDue, "price_pro"));
    let (_, changes) = decide_all(held_after(&first), &[old]);
    assert!(changes.subscriptions.is_empty());
}

#[test]
fn a_listed_object_as_old_as_the_held_state_keeps_it_unless_the_payload_proves_it_newer() {
    let (_, first) = decide_all(
        StripeBundle::default(),
        &[sub_event("evt_1", 1_000, snapshot(SubscriptionStatus::Active, "price_pro"))],
    );
    let mut canceling = snapshot(SubscriptionStatus::Active, "price_pro");
    canceling.cancel_at_period_end = true;
    let (outcomes, changes) = decide_all(held_after(&first), &[listed(ListedObject::Subscription(canceling), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged], "a tie nothing settles: the held state");
    assert!(changes.subscriptions.is_empty());
    let ended = snapshot(SubscriptionStatus::Canceled, "price_pro");
    let (outcomes, changes) = decide_all(held_after(&first), &[listed(ListedObject::Subscription(ended), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Updated], "a terminal status is final");
    assert_eq!(changes.subscription_audit[0].actor, "stripe:backfill");
}

#[test]
fn a_listed_paid_invoice_is_recorded_once_and_issues_the_license_it_proves() {
    let (_, first) = decide_all(
        StripeBundle::default(),
        &[listed(ListedObject::Subscription(snapshot(SubscriptionStatus::Incomplete, "price_pro")), 1_000)],
    );
    assert!(first.new_licenses.is_empty());
    let payment = Payment {
        stripe_invoice_id: "in_1".into(),
        stripe_customer_id: "cus_1".into(),
        stripe_subscription_id: Some("sub_1".into()),
        amount: 1200,
        currency: "eur".into(),
        status: PaymentStatus::Paid,
        paid_at: Some(NOW),
    };
    let invoice = || listed(ListedObject::Invoice(payment.clone(), Vec::new()), 1_000);
    let held = held_after(&first);
    let (outcomes, changes) = decide_all(held.clone(), &[invoice()]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Created]);
    assert_eq!((changes.payments.len(), changes.new_licenses.len()), (1, 1));
    let (outcomes, again) = decide_all(held_after_both(&held, &changes), &[invoice()]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged]);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn a_listed_customer_is_created_then_updated_by_a_new_address_then_unchanged() {
    let customer = |email: &str| {
        ListedObject::Customer(StripeCustomer {
            id: "cus_1".into(),
            user_id: Some("user_1".into()),
            deleted: false,
            email: Some(email.into()),
        })
    };
    let (outcomes, first) = decide_all(StripeBundle::default(), &[listed(customer("a@example.com"), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Created]);
    let held = held_after(&first);
    let (outcomes, _) = decide_all(held.clone(), &[listed(customer("a@example.com"), 2_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged]);
    let (outcomes, changes) = decide_all(held.clone(), &[listed(customer("b@example.com"), 2_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Updated]);
    assert_eq!(changes.customer_emails[0].1.as_deref(), Some("b@example.com"));
    let (outcomes, _) = decide_all(held, &[listed(customer("old@example.com"), 500)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged], "an address older than the one held");
}

#[test]
fn a_listed_checkout_links_its_customer_once_whatever_its_mode() {
    let mut unlinked = snapshot(SubscriptionStatus::Active, "price_pro");
    unlinked.user_id = None;
    let (_, first) = decide_all(StripeBundle::default(), &[listed(ListedObject::Subscription(unlinked), 1_000)]);
    let session = |user: Option<&str>| {
        ListedObject::Checkout(CheckoutSession {
            id: "cs_1".into(),
            mode: "subscription".into(),
            client_reference_id: user.map(str::to_owned),
            metadata_user_id: None,
            customer: Some("cus_1".into()),
            subscription: Some("sub_1".into()),
            payment_status: None,
            payment_intent: None,
            metadata_plan: None,
            amount_total: None,
            currency: None,
        })
    };
    let held = held_after(&first);
    let (outcomes, changes) = decide_all(held.clone(), &[listed(session(None), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Skipped("checkout session names no user")]);
    assert!(changes.is_empty());
    let (outcomes, linked) = decide_all(held.clone(), &[listed(session(Some("user_1")), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Updated]);
    assert_eq!(linked.customer_links.len(), 1);
    let kinds: Vec<&str> = linked.subscription_audit.iter().map(|a| a.change.kind()).collect();
    assert_eq!(kinds, ["checkout_linked"]);
    let (outcomes, again) = decide_all(held_after_both(&held, &linked), &[listed(session(Some("user_1")), 2_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged]);
    assert!(again.is_empty(), "no second audit row: {again:?}");
    let mut payment = session(Some("user_1"));
    if let ListedObject::Checkout(s) = &mut payment {
        (s.mode, s.subscription, s.customer) = ("payment".into(), None, None);
    }
    let (outcomes, _) = decide_all(held, &[listed(payment, 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Skipped("checkout session has no customer")]);
}

// --- Perpetual purchases, refunds and disputes (issue 17) ---

fn paid_session(id: &str, payment_status: &str) -> CheckoutSession {
    CheckoutSession {
        id: id.into(),
        mode: "payment".into(),
        client_reference_id: Some("user_1".into()),
        metadata_user_id: Some("user_1".into()),
        customer: Some("cus_1".into()),
        subscription: None,
        payment_status: Some(payment_status.into()),
        payment_intent: Some(format!("pi_{id}")),
        metadata_plan: Some("studio".into()),
        amount_total: Some(4900),
        currency: Some("eur".into()),
    }
}

fn checkout_event(id: &str, created: i64, session: CheckoutSession) -> StripeInput {
    delivery(id, created, EventPayload::CheckoutCompleted(session))
}

/// What the store holds once `changes` issued a purchase.
fn held_purchase(changes: &Changeset) -> StripeBundle {
    let mut held = StripeBundle::default();
    for p in &changes.new_purchases {
        let license = changes.new_licenses.iter().find(|l| l.id == p.license_id).unwrap().clone();
        let payment_intent = p.stripe_payment_intent_id.clone();
        held.purchases.insert(p.stripe_checkout_session_id.clone(), HeldPurchase { license, payment_intent });
    }
    held
}

fn refund(id: &str, amount_refunded: i64) -> StripeInput {
    let charge = crate::stripe::Charge {
        id: "ch_1".into(),
        payment_intent: Some("pi_cs_1".into()),
        amount: 4900,
        amount_refunded,
        currency: Some("eur".into()),
    };
    delivery(id, NOW.unix_timestamp(), EventPayload::ChargeRefunded(charge))
}

fn dispute(id: &str, payment_intent: &str, status: &str, closed: bool) -> StripeInput {
    let dispute = crate::stripe::Dispute {
        id: "dp_1".into(),
        charge: "ch_1".into(),
        payment_intent: Some(payment_intent.into()),
        status: status.into(),
        closed,
    };
    delivery(id, NOW.unix_timestamp(), EventPayload::Dispute(dispute))
}

fn bought() -> StripeBundle {
    let paid_at = NOW.unix_timestamp() - 60;
    let (_, changes) =
        decide_all(StripeBundle::default(), &[checkout_event("evt_paid", paid_at, paid_session("cs_1", "paid"))]);
    held_purchase(&changes)
}

#[test]
fn a_paid_session_issues_one_perpetual_license_and_a_second_delivery_in_the_group_none() {
    let paid_at = NOW.unix_timestamp() - 60;
    let (outcomes, changes) = decide_all(
        StripeBundle::default(),
        &[
            checkout_event("evt_paid", paid_at, paid_session("cs_1", "paid")),
            checkout_event("evt_again", paid_at + 1, paid_session("cs_1", "paid")),
        ],
    );
    assert_eq!(outcomes, [InputOutcome::Processed, InputOutcome::Processed]);
    assert_eq!(changes.new_licenses.len(), 1);
    let license = &changes.new_licenses[0];
    assert_eq!(
        (license.kind, license.subscription_id, license.user_id.as_deref()),
        (LicenseKind::Perpetual, None, Some("user_1"))
    );
    assert_eq!(
        (license.terms.status, license.terms.expires_at, license.terms.max_devices),
        (LicenseStatus::Active, None, 2)
    );
    assert_eq!(license.updates_until, Some(datetime!(2027-11-15 11:59 UTC)));
    assert_eq!(changes.new_purchases.len(), 1);
    assert_eq!(changes.new_purchases[0].stripe_payment_intent_id.as_deref(), Some("pi_cs_1"));
    assert_eq!(changes.payments.len(), 1);
    assert_eq!(
        (changes.payments[0].payment.stripe_invoice_id.as_str(), changes.payments[0].payment.status),
        ("pi_cs_1", PaymentStatus::Paid)
    );
    assert_eq!(
        changes.deliveries,
        [("evt_again".to_owned(), DeliveryRecord::Noted("checkout's license already issued"))]
    );
}

#[test]
fn an_unpaid_session_issues_nothing_and_a_failed_one_records_its_payment() {
    let created = NOW.unix_timestamp();
    let (_, changes) = decide_all(
        StripeBundle::default(),
        &[
            checkout_event("evt_open", created, paid_session("cs_1", "unpaid")),
            delivery("evt_failed", created + 1, EventPayload::CheckoutPaymentFailed(paid_session("cs_1", "unpaid"))),
        ],
    );
    assert!(changes.new_licenses.is_empty() && changes.new_purchases.is_empty());
    assert_eq!(changes.payments.len(), 1);
    assert_eq!(changes.payments[0].payment.status, PaymentStatus::Failed);
    assert_eq!(changes.deliveries, [("evt_open".to_owned(), DeliveryRecord::Noted("checkout not paid yet"))]);
}

#[test]
fn a_full_refund_revokes_and_a_partial_one_is_only_audited() {
    let (_, partial) = decide_all(bought(), &[refund("evt_partial", 1000)]);
    assert!(partial.saved_licenses.is_empty() && partial.outbox.is_empty());
    assert_eq!(partial.license_audit.iter().map(|a| a.kind).collect::<Vec<_>>(), ["partially_refunded"]);
    let (_, full) = decide_all(bought(), &[refund("evt_full", 4900)]);
    assert_eq!(full.saved_licenses[0].terms.status, LicenseStatus::Revoked);
    assert_eq!(full.outbox[0].payload["reason"], "refund");
    assert_eq!(full.license_audit[0].detail["reason"], "refund");
}

#[test]
fn a_dispute_suspends_until_won_and_a_lost_one_revokes() {
    let (_, changes) = decide_all(
        bought(),
        &[dispute("evt_open", "pi_cs_1", "needs_response", false), dispute("evt_won", "pi_cs_1", "won", true)],
    );
    let reasons: Vec<_> =
        changes.outbox.iter().map(|m| (m.payload["status"].clone(), m.payload["reason"].clone())).collect();
    assert_eq!(reasons, [(json!("suspended"), json!("dispute")), (json!("active"), json!("dispute_won"))]);
    let saved = &changes.saved_licenses[0];
    assert_eq!((saved.terms.status, saved.overrides.disputed_at), (LicenseStatus::Active, None), "one row, last state");

    let (_, lost) = decide_all(
        bought(),
        &[dispute("evt_open", "pi_cs_1", "needs_response", false), dispute("evt_lost", "pi_cs_1", "lost", true)],
    );
    assert_eq!(lost.saved_licenses[0].terms.status, LicenseStatus::Revoked);
    assert_eq!(lost.outbox.last().unwrap().payload["reason"], "dispute_lost");
}

#[test]
fn a_dispute_won_keeps_an_admin_suspension() {
    let mut held = bought();
    for p in held.purchases.values_mut() {
        p.license.overrides.suspended_at = Some(NOW);
        p.license.terms.status = LicenseStatus::Suspended;
    }
    let (_, changes) = decide_all(
        held,
        &[dispute("evt_open", "pi_cs_1", "needs_response", false), dispute("evt_won", "pi_cs_1", "won", true)],
    );
    assert_eq!(changes.saved_licenses[0].terms.status, LicenseStatus::Suspended);
}

#[test]
fn a_charge_we_hold_no_payment_for_changes_nothing() {
    let (outcomes, changes) = decide_all(bought(), &[dispute("evt_other", "pi_other", "needs_response", false)]);
    assert_eq!(outcomes, [InputOutcome::Processed]);
    assert!(changes.saved_licenses.is_empty() && changes.outbox.is_empty() && changes.license_audit.is_empty());
    assert_eq!(changes.deliveries, [("evt_other".to_owned(), DeliveryRecord::Noted(UNLINKED_CHARGE))]);
}

// --- Refunds and disputes of subscription invoices (issue 17) ---

fn paid_invoice(id: &str, charges: Vec<InvoiceCharge>) -> StripeInput {
    let payment = Payment {
        stripe_invoice_id: "in_1".into(),
        stripe_customer_id: "cus_1".into(),
        stripe_subscription_id: Some("sub_1".into()),
        amount: 1900,
        currency: "eur".into(),
        status: PaymentStatus::Paid,
        paid_at: Some(NOW),
    };
    delivery(id, NOW.unix_timestamp() - 100, EventPayload::Invoice(payment, charges))
}

fn paid_by(payment_intent: &str) -> InvoiceCharge {
    InvoiceCharge { invoice_id: "in_1".into(), payment_intent: Some(payment_intent.into()), charge: None }
}

/// A subscription with its license and a paid invoice whose payment
/// intent (`pi_in_1`) was recorded.
fn subscribed() -> StripeBundle {
    let (_, changes) = decide_all(
        StripeBundle::default(),
        &[
            sub_event("evt_sub", NOW.unix_timestamp() - 200, snapshot(SubscriptionStatus::Active, "price_pro")),
            paid_invoice("evt_inv", vec![paid_by("pi_in_1")]),
        ],
    );
    assert_eq!(changes.invoice_charges.len(), 1);
    held_after(&changes)
}

fn license_statuses(changes: &Changeset) -> Vec<(Value, Value)> {
    changes.outbox.iter().map(|m| (m.payload["status"].clone(), m.payload["reason"].clone())).collect()
}

use serde_json::Value;

#[test]
fn a_paid_invoice_records_what_paid_it_once() {
    let (_, changes) = decide_all(
        subscribed(),
        &[
            paid_invoice("evt_again", vec![paid_by("pi_in_1")]),
            delivery("evt_inpay", NOW.unix_timestamp(), EventPayload::InvoicePayment(paid_by("pi_in_1"))),
        ],
    );
    assert!(changes.invoice_charges.is_empty());
    assert_eq!(
        changes.deliveries,
        [
            ("evt_again".to_owned(), DeliveryRecord::Noted("payment already recorded")),
            ("evt_inpay".to_owned(), DeliveryRecord::Noted("invoice payment already recorded")),
        ]
    );
}

#[test]
fn a_dispute_of_a_subscription_invoice_suspends_its_license_until_won() {
    let (_, changes) = decide_all(
        subscribed(),
        &[dispute("evt_open", "pi_in_1", "needs_response", false), dispute("evt_won", "pi_in_1", "won", true)],
    );
    assert_eq!(
        license_statuses(&changes),
        [(json!("suspended"), json!("dispute")), (json!("active"), json!("dispute_won"))]
    );
    let saved = &changes.saved_licenses[0];
    assert_eq!((saved.terms.status, saved.overrides.disputed_at), (LicenseStatus::Active, None));
    assert_eq!(changes.license_audit[0].detail["invoice_id"], "in_1");
    assert_eq!(changes.disputes.len(), 1, "one row, last state");
    assert!(changes.disputes[0].1.closed);

    let (_, lost) = decide_all(
        subscribed(),
        &[dispute("evt_open", "pi_in_1", "needs_response", false), dispute("evt_lost", "pi_in_1", "lost", true)],
    );
    assert_eq!(lost.saved_licenses[0].terms.status, LicenseStatus::Revoked);
}

#[test]
fn a_subscription_event_during_a_dispute_keeps_the_license_suspended() {
    let held = subscribed();
    let (_, opened) = decide_all(held.clone(), &[dispute("evt_open", "pi_in_1", "needs_response", false)]);
    let mut renewed = snapshot(SubscriptionStatus::Active, "price_basic");
    renewed.current_period_end = Some(datetime!(2027-01-01 0:00 UTC));
    let (_, changes) =
        decide_all(held_after_both(&held, &opened), &[sub_event("evt_renew", NOW.unix_timestamp(), renewed)]);
    let (_, terms) = &changes.license_terms[0];
    assert_eq!((terms.status, terms.max_devices), (LicenseStatus::Suspended, 1));
}

#[test]
fn a_dispute_closed_before_it_opened_leaves_what_in_order_delivery_does() {
    for (status, expected) in [("won", LicenseStatus::Active), ("lost", LicenseStatus::Revoked)] {
        let before = subscribed();
        let (_, closed) = decide_all(before.clone(), &[dispute("evt_closed", "pi_in_1", status, true)]);
        let held = held_after_both(&before, &closed);
        let (_, opened) = decide_all(held.clone(), &[dispute("evt_open", "pi_in_1", "needs_response", false)]);
        assert!(opened.saved_licenses.is_empty() && opened.outbox.is_empty(), "{status}");
        assert_eq!(opened.deliveries, [("evt_open".to_owned(), DeliveryRecord::Noted("dispute already closed"))]);
        let license = held.licenses.values().next().unwrap();
        assert_eq!((license.terms.status, license.overrides.disputed_at), (expected, None), "{status}");
    }
}

#[test]
fn a_refund_of_a_subscription_invoice_is_recorded_and_changes_nothing() {
    for (amount_refunded, kind) in [(1900, "refunded"), (500, "partially_refunded")] {
        let charge = crate::stripe::Charge {
            id: "ch_in_1".into(),
            payment_intent: Some("pi_in_1".into()),
            amount: 1900,
            amount_refunded,
            currency: Some("eur".into()),
        };
        let (_, changes) = decide_all(
            subscribed(),
            &[delivery("evt_refund", NOW.unix_timestamp(), EventPayload::ChargeRefunded(charge))],
        );
        assert!(changes.saved_licenses.is_empty() && changes.license_terms.is_empty() && changes.outbox.is_empty());
        assert_eq!(changes.license_audit.iter().map(|a| a.kind).collect::<Vec<_>>(), [kind]);
        assert_eq!(changes.license_audit[0].detail["invoice_id"], "in_1");
    }
}

#[test]
fn a_charge_is_linked_by_its_charge_id_when_no_payment_intent_paid() {
    let by_charge = InvoiceCharge { invoice_id: "in_1".into(), payment_intent: None, charge: Some("ch_legacy".into()) };
    let (_, paid) = decide_all(
        StripeBundle::default(),
        &[
            sub_event("evt_sub", NOW.unix_timestamp() - 200, snapshot(SubscriptionStatus::Active, "price_pro")),
            paid_invoice("evt_inv", vec![by_charge]),
        ],
    );
    let disputed = crate::stripe::Dispute {
        id: "dp_9".into(),
        charge: "ch_legacy".into(),
        payment_intent: None,
        status: "needs_response".into(),
        closed: false,
    };
    let (_, changes) =
        decide_all(held_after(&paid), &[delivery("evt_open", NOW.unix_timestamp(), EventPayload::Dispute(disputed))]);
    assert_eq!(changes.saved_licenses[0].terms.status, LicenseStatus::Suspended);
}

#[test]
fn a_listed_invoice_records_what_paid_it_once() {
    let payment = Payment {
        stripe_invoice_id: "in_1".into(),
        stripe_customer_id: "cus_1".into(),
        stripe_subscription_id: Some("sub_1".into()),
        amount: 1900,
        currency: "eur".into(),
        status: PaymentStatus::Paid,
        paid_at: Some(NOW),
    };
    let held = subscribed();
    // `subscribed` recorded `pi_in_1`; listing its invoice again with it is no change.
    let (outcomes, changes) =
        decide_all(held.clone(), &[listed(ListedObject::Invoice(payment.clone(), vec![paid_by("pi_in_1")]), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Unchanged]);
    assert!(changes.invoice_charges.is_empty());
    let (outcomes, changes) =
        decide_all(held, &[listed(ListedObject::Invoice(payment, vec![paid_by("pi_in_2")]), 1_000)]);
    assert_eq!(listed_outcomes(&outcomes), [ListedOutcome::Updated]);
    assert_eq!(changes.invoice_charges.iter().map(|c| c.payment_key.as_str()).collect::<Vec<_>>(), ["pi_in_2"]);
}

#[test]
fn a_license_stays_suspended_while_another_of_its_disputes_is_open() {
    let mut held = subscribed();
    held.invoice_charges.insert(
        "pi_in_2".into(),
        HeldInvoiceCharge { invoice_id: "in_2".into(), charge_id: None, subscription: Some("sub_1".into()) },
    );
    let second = |id: &str, status: &str, closed: bool| {
        let dispute = crate::stripe::Dispute {
            id: "dp_2".into(),
            charge: "ch_2".into(),
            payment_intent: Some("pi_in_2".into()),
            status: status.into(),
            closed,
        };
        delivery(id, NOW.unix_timestamp(), EventPayload::Dispute(dispute))
    };
    let (_, changes) = decide_all(
        held.clone(),
        &[
            dispute("evt_open_1", "pi_in_1", "needs_response", false),
            second("evt_open_2", "needs_response", false),
            dispute("evt_won_1", "pi_in_1", "won", true),
        ],
    );
    assert_eq!(license_statuses(&changes), [(json!("suspended"), json!("dispute"))]);
    assert_eq!(
        changes.deliveries,
        [
            ("evt_open_2".to_owned(), DeliveryRecord::Noted("dispute already open")),
            ("evt_won_1".to_owned(), DeliveryRecord::Noted("another dispute of the license is open")),
        ]
    );
    let (_, last) = decide_all(held_after_both(&held, &changes), &[second("evt_won_2", "won", true)]);
    assert_eq!(license_statuses(&last), [(json!("active"), json!("dispute_won"))]);
}
