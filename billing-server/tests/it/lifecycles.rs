//! Customers' lives as Stripe reports them: signups, abandoned checkouts,
//! trials, renewals, failed payments and recoveries, plan changes,
//! cancellations, pauses and deleted customers, as the webhook events Stripe
//! would send, each stamped with the second Stripe would create it.
//!
//! Shared by the storm test (`tests/it/storm.rs`) and the storm benchmark
//! (`benches/storm.rs`); it depends on nothing but `serde_json`, so both can
//! include it.

use serde_json::{json, Value};

const DAY: i64 = 24 * 3600;
const PERIOD: i64 = 30 * DAY;

/// One customer and every event Stripe sends about them, in creation order.
pub struct Lifecycle {
    /// The dashboard user the customer belongs to.
    pub user_id: String,
    /// The events, oldest first (each `created` strictly after the last).
    pub events: Vec<Value>,
}

/// A small deterministic generator (SplitMix64): the same seed gives the
/// same storm, so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// `customers` lifecycles, all in the past of `now`, over the two prices
/// (the second is the cheaper one), distinct per `seed`.
pub fn generate(customers: usize, seed: u64, now: i64, prices: [&str; 2]) -> Vec<Lifecycle> {
    let mut rng = Rng::new(seed);
    (0..customers).map(|n| Life::new(n, seed, &mut rng, now, prices).lived(&mut rng)).collect()
}

/// Where a subscription stands while its life is written.
struct Life<'a> {
    now: i64,
    prices: [&'a str; 2],
    subscription_id: String,
    customer_id: String,
    user_id: String,
    /// Where the user id travels: the subscription's metadata, the
    /// checkout only, or the customer's metadata only.
    link: u64,
    at: i64,
    status: &'static str,
    price: &'a str,
    period_start: i64,
    trial_end: Option<i64>,
    cancel_at_period_end: bool,
    canceled_at: Option<i64>,
    invoices: u32,
    events: Vec<Value>,
}

impl<'a> Life<'a> {
    fn new(n: usize, seed: u64, rng: &mut Rng, now: i64, prices: [&'a str; 2]) -> Self {
        let age = 20 * DAY + rng.below(200) as i64 * DAY;
        Self {
            now,
            prices,
            subscription_id: format!("sub_storm_{seed}_{n}"),
            customer_id: format!("cus_storm_{seed}_{n}"),
            user_id: format!("storm_{seed}_{n}"),
            link: rng.below(3),
            at: now - age,
            status: "incomplete",
            price: prices[rng.below(2) as usize],
            period_start: now - age,
            trial_end: None,
            cancel_at_period_end: false,
            canceled_at: None,
            invoices: 0,
            events: Vec::new(),
        }
    }

    fn lived(mut self, rng: &mut Rng) -> Lifecycle {
        let user = (self.link == 2).then(|| self.user_id.clone());
        self.emit(
            "customer.created",
            json!({ "id": self.customer_id, "object": "customer", "metadata": metadata(user) }),
        );
        match rng.below(10) {
            0 | 1 => self.abandoned(rng),
            2 | 3 => self.trial(rng),
            _ => self.paid_signup(rng),
        }
        Lifecycle { user_id: self.user_id, events: self.events }
    }

    fn abandoned(&mut self, rng: &mut Rng) {
        self.snapshot("customer.subscription.created");
        self.checkout();
        let invoice = self.next_invoice();
        self.invoice_event("invoice.payment_failed", &invoice);
        if rng.chance(50) {
            self.invoice_event("invoice.payment_action_required", &invoice);
        }
        self.at += DAY;
        self.status = "incomplete_expired";
        self.snapshot("customer.subscription.updated");
    }

    fn trial(&mut self, rng: &mut Rng) {
        self.status = "trialing";
        self.trial_end = Some(self.period_start + 14 * DAY);
        self.snapshot("customer.subscription.created");
        self.checkout();
        let trial_end = self.period_start + 14 * DAY;
        if trial_end > self.now - DAY {
            return;
        }
        self.at = self.at.max(trial_end);
        if rng.chance(25) {
            // The trial ended without a payment method.
            self.status = "paused";
            self.snapshot("customer.subscription.updated");
            return;
        }
        self.renew_into(trial_end, rng);
    }

    fn paid_signup(&mut self, rng: &mut Rng) {
        self.snapshot("customer.subscription.created");
        let invoice = self.next_invoice();
        self.invoice_event("invoice.paid", &invoice);
        self.status = "active";
        self.snapshot("customer.subscription.updated");
        self.checkout();
        self.live_periods(rng);
    }

    /// The current period: perhaps a plan change or a scheduled
    /// cancellation; then, once it is over, its end or the next period.
    fn live_periods(&mut self, rng: &mut Rng) {
        let period_end = self.period_start + PERIOD;
        let settled_in = self.period_start + 6 * DAY < self.now;
        if settled_in && rng.chance(15) {
            self.at = self.at.max(self.period_start + 3 * DAY);
            self.price = if self.price == self.prices[0] { self.prices[1] } else { self.prices[0] };
            self.snapshot("customer.subscription.updated");
        }
        if settled_in && rng.chance(10) {
            self.at = self.at.max(self.period_start + 5 * DAY);
            self.cancel_at_period_end = true;
            self.snapshot("customer.subscription.updated");
            if rng.chance(30) {
                self.at += DAY;
                self.cancel_at_period_end = false;
                self.snapshot("customer.subscription.updated");
            }
        }
        if period_end > self.now - DAY {
            return;
        }
        self.at = self.at.max(period_end);
        if self.cancel_at_period_end {
            return self.end("customer.subscription.deleted", rng);
        }
        if rng.chance(5) {
            self.status = "paused";
            return self.snapshot("customer.subscription.paused");
        }
        self.renew_into(period_end, rng)
    }

    /// A new period starting at `start`: paid, or failed and then
    /// recovered, left unpaid or canceled; then the periods after it.
    fn renew_into(&mut self, start: i64, rng: &mut Rng) {
        self.period_start = start;
        self.trial_end = self.trial_end.filter(|t| *t > start);
        let invoice = self.next_invoice();
        if rng.chance(75) {
            self.status = "active";
            self.snapshot("customer.subscription.updated");
            self.invoice_event("invoice.paid", &invoice);
            return self.live_periods(rng);
        }
        self.invoice_event("invoice.payment_failed", &invoice);
        self.status = "past_due";
        self.snapshot("customer.subscription.updated");
        if rng.chance(30) {
            // A second past-due update in the same period (e.g. metadata).
            self.at += DAY / 2;
            self.snapshot("customer.subscription.updated");
        }
        let settled = start + 3 * DAY + rng.below(10) as i64 * DAY;
        if settled > self.now {
            return;
        }
        self.at = self.at.max(settled);
        match rng.below(3) {
            0 => {
                self.invoice_event("invoice.paid", &invoice);
                self.status = "active";
                self.snapshot("customer.subscription.updated");
                self.live_periods(rng);
            }
            1 => {
                self.status = "unpaid";
                self.snapshot("customer.subscription.updated");
            }
            _ => self.end("customer.subscription.deleted", rng),
        }
    }

    fn end(&mut self, kind: &str, rng: &mut Rng) {
        self.status = "canceled";
        self.canceled_at = Some(self.at);
        self.snapshot(kind);
        if self.at + 3600 < self.now && rng.chance(30) {
            self.at += 3600;
            let object = json!({ "id": self.customer_id, "object": "customer", "deleted": true, "metadata": {} });
            self.emit("customer.deleted", object);
        }
    }

    fn checkout(&mut self) {
        let object = json!({
            "id": format!("cs_{}", self.subscription_id), "object": "checkout.session", "mode": "subscription",
            "client_reference_id": (self.link == 1).then(|| self.user_id.clone()),
            "customer": self.customer_id, "subscription": self.subscription_id, "metadata": {},
        });
        self.emit("checkout.session.completed", object);
    }

    fn next_invoice(&mut self) -> String {
        self.invoices += 1;
        format!("in_{}_{}", self.subscription_id, self.invoices)
    }

    fn invoice_event(&mut self, kind: &str, invoice: &str) {
        let amount = if self.price == self.prices[0] { 1900 } else { 900 };
        let paid_at = (kind == "invoice.paid").then_some(self.at + 1);
        let object = json!({
            "id": invoice, "object": "invoice", "customer": self.customer_id, "currency": "usd",
            "amount_paid": if paid_at.is_some() { amount } else { 0 }, "amount_due": amount,
            "parent": { "subscription_details": { "subscription": self.subscription_id } },
            "status_transitions": { "paid_at": paid_at },
        });
        self.emit(kind, object);
    }

    fn snapshot(&mut self, kind: &str) {
        let user = (self.link == 0).then(|| self.user_id.clone());
        let ended = (self.status == "canceled").then_some(self.at);
        let object = json!({
            "id": self.subscription_id, "object": "subscription", "customer": self.customer_id,
            "status": self.status, "cancel_at_period_end": self.cancel_at_period_end,
            "cancel_at": self.cancel_at_period_end.then_some(self.period_start + PERIOD),
            "canceled_at": self.canceled_at, "ended_at": ended, "trial_end": self.trial_end,
            "metadata": metadata(user),
            "items": { "object": "list", "data": [{
                "id": format!("si_{}", self.subscription_id), "object": "subscription_item",
                "price": { "id": self.price, "object": "price" },
                "current_period_start": self.period_start, "current_period_end": self.period_start + PERIOD,
            }]},
        });
        self.emit(kind, object);
    }

    /// Appends an event one second after the previous one.
    fn emit(&mut self, kind: &str, object: Value) {
        self.at += 1;
        let id = format!("evt_{}_{}", self.subscription_id, self.events.len());
        self.events.push(json!({
            "id": id, "object": "event", "type": kind, "created": self.at,
            "api_version": "2025-03-31.basil", "data": { "object": object },
        }));
    }
}

fn metadata(user_id: Option<String>) -> Value {
    match user_id {
        Some(user_id) => json!({ "user_id": user_id }),
        None => json!({}),
    }
}

/// What a customer's state comes to, as the dashboard reads it, without
/// what differs between two stores by construction (our ids, license keys,
/// row timestamps).
pub fn comparable(subscription: Value, licenses: Vec<Value>, mut payments: Vec<Value>) -> Value {
    let strip = |mut v: Value, keys: &[&str]| {
        if let Some(object) = v.as_object_mut() {
            for key in keys {
                object.remove(*key);
            }
        }
        v
    };
    payments.sort_by(|a, b| a["stripe_invoice_id"].as_str().cmp(&b["stripe_invoice_id"].as_str()));
    json!({
        "subscription": strip(subscription, &["id"]),
        "licenses": licenses.into_iter().map(|l| strip(l, &["id", "key", "devices"])).collect::<Vec<_>>(),
        "payments": payments.into_iter().map(|p| strip(p, &["id", "created_at"])).collect::<Vec<_>>(),
    })
}
