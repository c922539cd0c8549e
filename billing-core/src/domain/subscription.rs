//! Subscriptions as Stripe reports them, and the rule that decides whether a
//! snapshot delivered by a webhook may replace what we hold.

use super::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every status Stripe gives a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// First payment not yet made (up to 23 hours).
    Incomplete,
    /// The first payment never succeeded; terminal.
    IncompleteExpired,
    /// In a free trial.
    Trialing,
    /// Paid and in good standing.
    Active,
    /// A renewal payment failed; Stripe is retrying.
    PastDue,
    /// Retries exhausted, subscription kept open but unpaid.
    Unpaid,
    /// Ended; terminal.
    Canceled,
    /// Trial ended without a payment method, or collection paused.
    Paused,
}

impl SubscriptionStatus {
    /// Stripe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Canceled => "canceled",
            Self::Paused => "paused",
        }
    }

    /// Parses Stripe's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "unpaid" => Self::Unpaid,
            "canceled" => Self::Canceled,
            "paused" => Self::Paused,
            _ => return None,
        })
    }

    /// A terminal subscription never changes status again in Stripe.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Canceled | Self::IncompleteExpired)
    }

    /// Whether a subscription seen in this status was, at that moment,
    /// entitled: it had started (trial or paid) and not merely been
    /// attempted. Every status after the first payment or trial proves it;
    /// `incomplete` and `incomplete_expired` never do, and `canceled` does
    /// not by itself (an abandoned checkout ends canceled too).
    pub fn proves_entitlement(self) -> bool {
        matches!(self, Self::Active | Self::Trialing | Self::PastDue | Self::Unpaid | Self::Paused)
    }
}

/// A subscription object as carried by one Stripe event (or fetched from the
/// API), reduced to what we keep. Both payload shapes map onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSnapshot {
    /// `sub_…`
    pub stripe_subscription_id: String,
    /// `cus_…`
    pub stripe_customer_id: String,
    /// Stripe status.
    pub status: SubscriptionStatus,
    /// Price of the first item, which decides the plan.
    pub price_id: Option<String>,
    /// Id of the first item (`si_…`), needed to swap plans.
    pub item_id: Option<String>,
    /// Whether the subscription ends at the end of the current period.
    pub cancel_at_period_end: bool,
    /// When cancellation takes effect, if scheduled.
    pub cancel_at: Option<Timestamp>,
    /// When it was canceled.
    pub canceled_at: Option<Timestamp>,
    /// When it ended.
    pub ended_at: Option<Timestamp>,
    /// Start of the paid period.
    pub current_period_start: Option<Timestamp>,
    /// End of the paid period: the license is paid through this date.
    pub current_period_end: Option<Timestamp>,
    /// End of the trial, if any.
    pub trial_end: Option<Timestamp>,
    /// `metadata.user_id`, when the checkout put one there.
    pub user_id: Option<String>,
}

/// A subscription as we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Our id.
    pub id: Uuid,
    /// The Stripe state we last accepted.
    pub snapshot: SubscriptionSnapshot,
    /// Plan resolved from the price through the catalog (None: unknown price).
    pub plan_id: Option<String>,
    /// Since when the subscription has been past due (starts the grace period).
    pub past_due_since: Option<Timestamp>,
    /// `created` (Unix seconds) of the event whose snapshot we hold: the
    /// version used to refuse stale deliveries.
    pub source_created: i64,
}

/// How an incoming snapshot relates to the one we hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer: apply it.
    Newer,
    /// Older, or the same state again: keep what we hold.
    Stale,
    /// Same second and the payload cannot tell which came last.
    Ambiguous,
}

/// Decides whether `incoming` (from an event created at `incoming_created`)
/// may replace `held`.
///
/// Stripe timestamps have one-second resolution and deliveries are not
/// ordered, so equal seconds are common (created + updated in one checkout).
/// Within one second we use what the payload itself proves about order: a
/// terminal status is final, `incomplete` only ever comes first, and periods
/// only move forward. When nothing decides it, the caller must re-fetch from
/// Stripe or apply the later arrival; it must never silently drop it.
pub fn freshness(held: &Subscription, incoming: &SubscriptionSnapshot, incoming_created: i64) -> Freshness {
    use std::cmp::Ordering::*;
    match incoming_created.cmp(&held.source_created) {
        Greater => return Freshness::Newer,
        Less => return Freshness::Stale,
        Equal => {}
    }
    let held = &held.snapshot;
    if held == incoming {
        return Freshness::Stale;
    }
    match (held.status.is_terminal(), incoming.status.is_terminal()) {
        (true, false) => return Freshness::Stale,
        (false, true) => return Freshness::Newer,
        _ => {}
    }
    use SubscriptionStatus::Incomplete;
    match (held.status == Incomplete, incoming.status == Incomplete) {
        (true, false) => return Freshness::Newer,
        (false, true) => return Freshness::Stale,
        _ => {}
    }
    match incoming.current_period_end.cmp(&held.current_period_end) {
        Greater if held.current_period_end.is_some() => return Freshness::Newer,
        Less if incoming.current_period_end.is_some() => return Freshness::Stale,
        _ => {}
    }
    Freshness::Ambiguous
}

/// One fact about a subscription worth an audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionChange {
    /// First time we see the subscription.
    Created {
        /// Its first status.
        status: SubscriptionStatus,
    },
    /// Status moved.
    StatusChanged {
        /// Before.
        from: SubscriptionStatus,
        /// After.
        to: SubscriptionStatus,
    },
    /// Cancellation at period end was scheduled or withdrawn.
    CancelAtPeriodEndChanged {
        /// The new setting.
        cancel_at_period_end: bool,
    },
    /// The plan (price) changed.
    PlanChanged {
        /// Previous price id.
        from: Option<String>,
        /// New price id.
        to: Option<String>,
    },
    /// A new period started (renewal).
    Renewed {
        /// End of the new period.
        current_period_end: Option<Timestamp>,
    },
    /// Past due for longer than the grace period: the license was suspended.
    GraceExpired {
        /// When the grace period ended.
        grace_ended_at: Timestamp,
    },
    /// An invoice of the subscription was recorded or moved (paid, failed,
    /// awaiting the customer's action).
    Payment {
        /// `in_…`
        invoice_id: String,
        /// Where the payment stands now.
        status: super::PaymentStatus,
        /// Minor units.
        amount: i64,
        /// Lower-case ISO code.
        currency: String,
    },
    /// A completed checkout linked the subscription's customer to a user.
    CheckoutLinked {
        /// `cs_…`
        checkout_session_id: String,
    },
}

impl SubscriptionChange {
    /// Short machine-readable kind for the audit trail.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::StatusChanged { .. } => "status_changed",
            Self::CancelAtPeriodEndChanged { .. } => "cancel_at_period_end_changed",
            Self::PlanChanged { .. } => "plan_changed",
            Self::Renewed { .. } => "renewed",
            Self::GraceExpired { .. } => "grace_expired",
            Self::Payment { .. } => "payment",
            Self::CheckoutLinked { .. } => "checkout_linked",
        }
    }

    /// The status before the change, when it is a status change.
    pub fn from_status(&self) -> Option<SubscriptionStatus> {
        match self {
            Self::StatusChanged { from, .. } => Some(*from),
            _ => None,
        }
    }

    /// The status after the change, when the change sets one.
    pub fn to_status(&self) -> Option<SubscriptionStatus> {
        match self {
            Self::StatusChanged { to, .. } | Self::Created { status: to } => Some(*to),
            _ => None,
        }
    }

    /// Details for the audit row, as JSON.
    pub fn detail(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::Created { status } => json!({ "status": status }),
            Self::StatusChanged { from, to } => json!({ "from": from, "to": to }),
            Self::CancelAtPeriodEndChanged { cancel_at_period_end } => {
                json!({ "cancel_at_period_end": cancel_at_period_end })
            }
            Self::PlanChanged { from, to } => json!({ "from": from, "to": to }),
            Self::Renewed { current_period_end } => json!({
                "current_period_end": current_period_end.map(|t| t.unix_timestamp())
            }),
            Self::GraceExpired { grace_ended_at } => json!({
                "grace_ended_at": grace_ended_at.unix_timestamp(), "license_status": "suspended"
            }),
            Self::Payment { invoice_id, status, amount, currency } => json!({
                "invoice_id": invoice_id, "status": status, "amount": amount, "currency": currency
            }),
            Self::CheckoutLinked { checkout_session_id } => json!({ "checkout_session_id": checkout_session_id }),
        }
    }
}

/// What differs between two snapshots, as audit facts.
pub fn changes_between(held: Option<&SubscriptionSnapshot>, next: &SubscriptionSnapshot) -> Vec<SubscriptionChange> {
    let Some(held) = held else {
        return vec![SubscriptionChange::Created { status: next.status }];
    };
    let mut changes = Vec::new();
    if held.status != next.status {
        changes.push(SubscriptionChange::StatusChanged { from: held.status, to: next.status });
    }
    if held.cancel_at_period_end != next.cancel_at_period_end {
        changes.push(SubscriptionChange::CancelAtPeriodEndChanged { cancel_at_period_end: next.cancel_at_period_end });
    }
    if held.price_id != next.price_id {
        changes.push(SubscriptionChange::PlanChanged { from: held.price_id.clone(), to: next.price_id.clone() });
    }
    if held.current_period_end.is_some() && next.current_period_end > held.current_period_end {
        changes.push(SubscriptionChange::Renewed { current_period_end: next.current_period_end });
    }
    changes
}

/// When the grace period of a past-due subscription started, for the
/// snapshot `next` of an event created at `created` (Unix seconds) replacing
/// `held`: the creation time of the earliest past-due event of the current
/// period, so that neither delivery order nor delivery delay moves it (a
/// renewal that fails puts the subscription past due once per period).
/// Repeated `past_due` updates of the same period do not extend it.
pub fn past_due_since(held: Option<&Subscription>, next: &SubscriptionSnapshot, created: i64) -> Option<Timestamp> {
    if next.status != SubscriptionStatus::PastDue {
        return None;
    }
    let at = super::from_unix(created);
    match held.and_then(|h| h.past_due_since.filter(|_| same_period(&h.snapshot, next))) {
        Some(since) => Some(at.map_or(since, |at| since.min(at))),
        None => at,
    }
}

/// The earlier grace start that a stale snapshot proves, if any: a
/// `past_due` snapshot of the period the held subscription is past due in,
/// from an event older than the one that started its grace.
pub fn earlier_past_due_since(held: &Subscription, stale: &SubscriptionSnapshot, created: i64) -> Option<Timestamp> {
    let since = held.past_due_since?;
    let at = super::from_unix(created)?;
    let proves = held.snapshot.status == SubscriptionStatus::PastDue
        && stale.status == SubscriptionStatus::PastDue
        && same_period(&held.snapshot, stale);
    (proves && at < since).then_some(at)
}

fn same_period(a: &SubscriptionSnapshot, b: &SubscriptionSnapshot) -> bool {
    a.current_period_start == b.current_period_start
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::macros::datetime;

    pub(crate) fn snapshot(status: SubscriptionStatus) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            stripe_subscription_id: "sub_1".into(),
            stripe_customer_id: "cus_1".into(),
            status,
            price_id: Some("price_pro".into()),
            item_id: Some("si_1".into()),
            cancel_at_period_end: false,
            cancel_at: None,
            canceled_at: None,
            ended_at: None,
            current_period_start: Some(datetime!(2026-11-01 0:00 UTC)),
            current_period_end: Some(datetime!(2026-12-01 0:00 UTC)),
            trial_end: None,
            user_id: None,
        }
    }

    fn held(snapshot: SubscriptionSnapshot, source_created: i64) -> Subscription {
        Subscription { id: Uuid::nil(), snapshot, plan_id: None, past_due_since: None, source_created }
    }

    fn check(held_status: SubscriptionStatus, incoming: SubscriptionSnapshot, created_delta: i64, expected: Freshness) {
        let h = held(snapshot(held_status), 1_000);
        assert_eq!(
            freshness(&h, &incoming, 1_000 + created_delta),
            expected,
            "held {held_status:?}, incoming {:?} at {created_delta:+}",
            incoming.status
        );
    }

    #[test]
    fn freshness_follows_event_time_then_payload_evidence() {
        use SubscriptionStatus::*;
        check(Active, snapshot(PastDue), 1, Freshness::Newer);
        check(PastDue, snapshot(Active), -1, Freshness::Stale);
        check(Active, snapshot(Active), 0, Freshness::Stale);
        check(Canceled, snapshot(Active), 0, Freshness::Stale);
        check(Active, snapshot(Canceled), 0, Freshness::Newer);
        check(Incomplete, snapshot(Active), 0, Freshness::Newer);
        check(Active, snapshot(Incomplete), 0, Freshness::Stale);
        let mut renewed = snapshot(Active);
        renewed.current_period_end = Some(datetime!(2027-01-01 0:00 UTC));
        check(Active, renewed.clone(), 0, Freshness::Newer);
        let mut older_period = snapshot(Active);
        older_period.current_period_end = Some(datetime!(2026-10-01 0:00 UTC));
        check(Active, older_period, 0, Freshness::Stale);
        let mut cancel_scheduled = snapshot(Active);
        cancel_scheduled.cancel_at_period_end = true;
        check(Active, cancel_scheduled, 0, Freshness::Ambiguous);
        check(Active, snapshot(PastDue), 0, Freshness::Ambiguous);
    }

    #[test]
    fn changes_list_each_fact_once() {
        use SubscriptionStatus::*;
        assert_eq!(changes_between(None, &snapshot(Active)), vec![SubscriptionChange::Created { status: Active }]);
        let mut next = snapshot(PastDue);
        next.cancel_at_period_end = true;
        next.price_id = Some("price_basic".into());
        let kinds: Vec<_> = changes_between(Some(&snapshot(Active)), &next).iter().map(|c| c.kind()).collect();
        assert_eq!(kinds, ["status_changed", "cancel_at_period_end_changed", "plan_changed"]);
        assert!(changes_between(Some(&snapshot(Active)), &snapshot(Active)).is_empty());
    }

    #[test]
    fn grace_starts_at_the_earliest_past_due_event_of_the_period_and_ends_when_paid() {
        let (t0, t1) = (1_800_000_000, 1_800_100_000);
        let at = |t| crate::domain::from_unix(t);
        assert_eq!(past_due_since(None, &snapshot(SubscriptionStatus::PastDue), t0), at(t0));
        let mut h = held(snapshot(SubscriptionStatus::PastDue), t0);
        h.past_due_since = at(t0);
        assert_eq!(past_due_since(Some(&h), &snapshot(SubscriptionStatus::PastDue), t1), at(t0));
        assert_eq!(past_due_since(Some(&h), &snapshot(SubscriptionStatus::Active), t1), None);
        // The next period's failure starts a grace period of its own.
        let mut next_period = snapshot(SubscriptionStatus::PastDue);
        next_period.current_period_start = Some(datetime!(2026-12-01 0:00 UTC));
        assert_eq!(past_due_since(Some(&h), &next_period, t1), at(t1));
        assert_eq!(earlier_past_due_since(&h, &next_period, t0 - 5), None, "another period");
        // An older past-due event of the same period, delivered late, moves it back.
        let mut late = held(snapshot(SubscriptionStatus::PastDue), t1);
        late.past_due_since = at(t1);
        assert_eq!(earlier_past_due_since(&late, &snapshot(SubscriptionStatus::PastDue), t0), at(t0));
        assert_eq!(earlier_past_due_since(&late, &snapshot(SubscriptionStatus::Active), t0), None);
        assert_eq!(earlier_past_due_since(&late, &snapshot(SubscriptionStatus::PastDue), t1 + 1), None);
    }

    #[test]
    fn entitlement_is_proven_by_every_status_after_a_start() {
        use SubscriptionStatus::*;
        let proving: Vec<_> = [Incomplete, IncompleteExpired, Trialing, Active, PastDue, Unpaid, Canceled, Paused]
            .into_iter()
            .filter(|s| s.proves_entitlement())
            .collect();
        assert_eq!(proving, [Trialing, Active, PastDue, Unpaid, Paused]);
    }
}
