//! Dashboard actions through the Stripe API: cancel, reactivate, change
//! plan, checkout, billing portal, payment method, and the repair sync.
//!
//! Each action validates first (no Stripe call for a request we would
//! refuse), calls Stripe with an idempotency key, then applies Stripe's
//! answer in one transaction (subscription, license, audit row with the user
//! as actor, outbox). The webhook Stripe sends later carries the same state
//! and so changes nothing.

use crate::billing::Billing;
use crate::domain::{Actor, LicenseKind, Subscription, SubscriptionStatus};
use crate::storage::{Store, StoreError};
use crate::stripe::client::Card;
use crate::stripe::{StripeClient, StripeError};
use uuid::Uuid;

/// Why an action was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The user has no subscription to act on.
    #[error("no subscription found")]
    NoSubscription,
    /// The user has no Stripe customer yet.
    #[error("no billing account found; subscribe first")]
    NoCustomer,
    /// The plan id is not in the catalog.
    #[error("unknown plan `{0}`")]
    UnknownPlan(String),
    /// The subscription is already on that plan.
    #[error("the subscription is already on plan `{0}`")]
    SamePlan(String),
    /// The request conflicts with the subscription's state.
    #[error("{0}")]
    Conflict(&'static str),
    /// A field is not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
    /// No Stripe secret key is configured.
    #[error("the Stripe API is not configured")]
    StripeNotConfigured,
    /// Stripe refused or failed.
    #[error(transparent)]
    Stripe(#[from] StripeError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A Checkout Session to send the user to.
#[derive(Debug, Clone)]
pub struct CheckoutSessionLink {
    /// `cs_…`
    pub id: String,
    /// Where to redirect.
    pub url: String,
}

fn idempotency_key(action: &str) -> String {
    format!("billing-{action}-{}", Uuid::new_v4())
}

fn check_url(url: &str, what: &'static str) -> Result<(), ActionError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && !url.contains(char::is_whitespace);
    ok.then_some(()).ok_or(ActionError::Invalid(what))
}

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl<S: Store> Billing<S> {
    fn stripe(&self) -> Result<&StripeClient, ActionError> {
        self.config().stripe.as_ref().ok_or(ActionError::StripeNotConfigured)
    }

    async fn actionable_subscription(&self, user_id: &str) -> Result<Subscription, ActionError> {
        self.current_subscription(user_id).await?.ok_or(ActionError::NoSubscription)
    }

    /// Cancels `user_id`'s subscription: at period end (`POST` with
    /// `cancel_at_period_end=true`) or at once (`DELETE`).
    pub async fn cancel_subscription(
        &self,
        actor: &Actor,
        user_id: &str,
        at_period_end: bool,
    ) -> Result<Subscription, ActionError> {
        let stripe = self.stripe()?;
        let sub = self.actionable_subscription(user_id).await?;
        let snap = &sub.snapshot;
        if snap.status.is_terminal() {
            return Err(ActionError::Conflict("the subscription has already ended"));
        }
        if at_period_end && snap.cancel_at_period_end {
            return Err(ActionError::Conflict("the subscription is already set to cancel at period end"));
        }
        let updated = if at_period_end {
            let params = form(&[("cancel_at_period_end", "true")]);
            stripe.update_subscription(&snap.stripe_subscription_id, &params, &idempotency_key("cancel")).await?
        } else {
            stripe.cancel_subscription(&snap.stripe_subscription_id, &idempotency_key("cancel-now")).await?
        };
        self.apply_api_snapshot(actor, &updated).await?;
        self.actionable_subscription(user_id).await
    }

    /// Withdraws a scheduled cancellation while the period still runs.
    pub async fn reactivate_subscription(&self, actor: &Actor, user_id: &str) -> Result<Subscription, ActionError> {
        let stripe = self.stripe()?;
        let sub = self.actionable_subscription(user_id).await?;
        let snap = &sub.snapshot;
        let within_period = snap.current_period_end.is_some_and(|end| end > self.now());
        if snap.status.is_terminal() || !within_period {
            return Err(ActionError::Conflict("the subscription has ended; start a new one instead"));
        }
        if !snap.cancel_at_period_end {
            return Err(ActionError::Conflict("the subscription is not set to cancel"));
        }
        let params = form(&[("cancel_at_period_end", "false")]);
        let updated =
            stripe.update_subscription(&snap.stripe_subscription_id, &params, &idempotency_key("reactivate")).await?;
        self.apply_api_snapshot(actor, &updated).await?;
        self.actionable_subscription(user_id).await
    }

    /// Swaps the subscription's item to another plan's price, with prorations.
    pub async fn change_plan(&self, actor: &Actor, user_id: &str, plan_id: &str) -> Result<Subscription, ActionError> {
        let plan = self.plans().by_id(plan_id).ok_or_else(|| ActionError::UnknownPlan(plan_id.to_owned()))?.clone();
        let stripe = self.stripe()?;
        let sub = self.actionable_subscription(user_id).await?;
        let snap = &sub.snapshot;
        if sub.plan_id.as_deref() == Some(plan_id) || snap.price_id.as_deref() == Some(&plan.stripe_price_id) {
            return Err(ActionError::SamePlan(plan_id.to_owned()));
        }
        if snap.status.is_terminal() {
            return Err(ActionError::Conflict("the subscription has ended; start a new one instead"));
        }
        let item = snap.item_id.as_deref().ok_or(ActionError::Conflict("the subscription has no item to change"))?;
        let params = form(&[
            ("items[0][id]", item),
            ("items[0][price]", &plan.stripe_price_id),
            ("proration_behavior", "create_prorations"),
        ]);
        let updated =
            stripe.update_subscription(&snap.stripe_subscription_id, &params, &idempotency_key("change-plan")).await?;
        self.apply_api_snapshot(actor, &updated).await?;
        self.actionable_subscription(user_id).await
    }

    /// Creates a Checkout Session for a plan, reusing the user's Stripe
    /// customer: a subscription, or for a perpetual plan a one-time payment
    /// (which an active subscription does not stand in the way of).
    pub async fn create_checkout(
        &self,
        user_id: &str,
        plan_id: &str,
        success_url: &str,
        cancel_url: &str,
    ) -> Result<CheckoutSessionLink, ActionError> {
        let plan = self.plans().by_id(plan_id).ok_or_else(|| ActionError::UnknownPlan(plan_id.to_owned()))?.clone();
        check_url(success_url, "success_url must be an absolute http(s) URL")?;
        check_url(cancel_url, "cancel_url must be an absolute http(s) URL")?;
        let stripe = self.stripe()?;
        let perpetual = plan.kind == LicenseKind::Perpetual;
        if !perpetual {
            if let Some(current) = self.current_subscription(user_id).await? {
                if matches!(
                    current.snapshot.status,
                    SubscriptionStatus::Active | SubscriptionStatus::Trialing | SubscriptionStatus::PastDue
                ) {
                    return Err(ActionError::Conflict("already subscribed; change the plan instead"));
                }
            }
        }
        let customer = self.store().stripe_customers_of_user(user_id).await?.into_iter().next();
        let mut params = form(&[
            ("mode", if perpetual { "payment" } else { "subscription" }),
            ("line_items[0][price]", &plan.stripe_price_id),
            ("line_items[0][quantity]", "1"),
            ("success_url", success_url),
            ("cancel_url", cancel_url),
            ("client_reference_id", user_id),
            ("metadata[user_id]", user_id),
        ]);
        if perpetual {
            // The webhook issues the license of `metadata[plan]`; the
            // payment intent carries the user to the charge (refunds, disputes).
            params.extend(form(&[("metadata[plan]", &plan.id.0), ("payment_intent_data[metadata][user_id]", user_id)]));
        } else {
            params.extend(form(&[("subscription_data[metadata][user_id]", user_id)]));
        }
        match &customer {
            Some(customer) => params.push(("customer".to_owned(), customer.clone())),
            // Without it a payment-mode session may end with no customer
            // (subscriptions always make one), and the purchase with no owner.
            None if perpetual => params.push(("customer_creation".to_owned(), "always".to_owned())),
            None => {}
        }
        let (id, url) = stripe.create_checkout_session(&params, &idempotency_key("checkout")).await?;
        Ok(CheckoutSessionLink { id, url })
    }

    /// A Billing Portal session for the user's own Stripe customer.
    pub async fn create_billing_portal(&self, user_id: &str, return_url: &str) -> Result<String, ActionError> {
        check_url(return_url, "return_url must be an absolute http(s) URL")?;
        let stripe = self.stripe()?;
        let customer = self
            .store()
            .stripe_customers_of_user(user_id)
            .await?
            .into_iter()
            .next_back()
            .ok_or(ActionError::NoCustomer)?;
        Ok(stripe.create_portal_session(&customer, return_url, &idempotency_key("portal")).await?)
    }

    /// The user's default card, if any.
    pub async fn payment_method(&self, user_id: &str) -> Result<Option<Card>, ActionError> {
        let stripe = self.stripe()?;
        let Some(customer) = self.store().stripe_customers_of_user(user_id).await?.into_iter().next_back() else {
            return Ok(None);
        };
        Ok(stripe.default_card(&customer).await?)
    }

    /// Fetches the user's subscriptions from Stripe and reconciles our copy
    /// (the repair path when webhooks were missed). Returns the reconciled
    /// subscriptions and how many changed.
    pub async fn sync_from_stripe(
        &self,
        actor: &Actor,
        user_id: &str,
    ) -> Result<(Vec<Subscription>, usize), ActionError> {
        let stripe = self.stripe()?;
        let customers = self.store().stripe_customers_of_user(user_id).await?;
        if customers.is_empty() {
            return Err(ActionError::NoCustomer);
        }
        let mut changed = 0;
        for customer in &customers {
            for mut snapshot in stripe.list_subscriptions(customer).await? {
                // The customer is already linked to this user; keep it so.
                snapshot.user_id = snapshot.user_id.or_else(|| Some(user_id.to_owned()));
                if self.apply_api_snapshot(actor, &snapshot).await? {
                    changed += 1;
                }
            }
        }
        Ok((self.store().subscriptions_of_user(user_id).await?, changed))
    }
}
