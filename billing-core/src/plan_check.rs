//! `billing-server stripe check-plans`: the plans file's prices against
//! Stripe's. A plan whose price Stripe does not have (or no longer sells)
//! cannot be bought; a subscription on a price no plan names gets a license
//! with no plan's terms. Both are configuration mistakes worth finding
//! before a customer does.

use crate::billing::Billing;
use crate::domain::{PlanCatalog, SubscriptionStatus};
use crate::storage::Store;
use crate::stripe::client::StripeError;
use crate::stripe::event::parse_subscription;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// A price as Stripe lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripePrice {
    /// `price_…`
    pub id: String,
    /// Whether it can be used for new purchases.
    pub active: bool,
}

/// A plan of the plans file, by its price.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlanPrice {
    /// The plan's id.
    pub plan_id: String,
    /// Its `stripe_price_id`.
    pub price_id: String,
}

/// What the comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanCheck {
    /// Plans whose price Stripe does not have.
    pub missing: Vec<PlanPrice>,
    /// Plans whose price Stripe has, inactive.
    pub inactive: Vec<PlanPrice>,
    /// Prices that subscriptions still running (not canceled or expired)
    /// are on and no plan names, with how many such subscriptions.
    pub unlisted: Vec<(String, u64)>,
    /// Prices Stripe listed.
    pub prices_seen: u64,
    /// Subscriptions Stripe listed (running or not).
    pub subscriptions_seen: u64,
}

impl PlanCheck {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.inactive.is_empty() && self.unlisted.is_empty()
    }
}

/// Why the check could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanCheckError {
    /// No Stripe secret key is configured.
    #[error("the Stripe API is not configured (no secret key)")]
    StripeNotConfigured,
    /// Stripe refused a list request, or stayed unavailable.
    #[error("listing {list} from Stripe failed: {source}")]
    Stripe {
        /// `prices` or `subscriptions`.
        list: &'static str,
        /// What Stripe said (never our key).
        #[source]
        source: StripeError,
    },
}

/// Compares the plans with Stripe's prices and the prices of `subscriptions`
/// (each subscription's first item's price, which decides its plan, and its
/// status).
pub fn compare(
    plans: &PlanCatalog,
    prices: &[StripePrice],
    subscriptions: &[(Option<String>, SubscriptionStatus)],
) -> PlanCheck {
    let listed: HashMap<&str, bool> = prices.iter().map(|p| (p.id.as_str(), p.active)).collect();
    let mut check = PlanCheck {
        prices_seen: prices.len() as u64,
        subscriptions_seen: subscriptions.len() as u64,
        ..PlanCheck::default()
    };
    for plan in plans.all() {
        let price = PlanPrice { plan_id: plan.id.0.clone(), price_id: plan.stripe_price_id.clone() };
        match listed.get(plan.stripe_price_id.as_str()) {
            None => check.missing.push(price),
            Some(false) => check.inactive.push(price),
            Some(true) => {}
        }
    }
    let mut unlisted: BTreeMap<&str, u64> = BTreeMap::new();
    for (price, status) in subscriptions {
        if let (Some(price), false) = (price, status.is_terminal()) {
            if plans.by_price(price).is_none() {
                *unlisted.entry(price).or_default() += 1;
            }
        }
    }
    check.missing.sort();
    check.inactive.sort();
    check.unlisted = unlisted.into_iter().map(|(price, n)| (price.to_owned(), n)).collect();
    check
}

impl<S: Store> Billing<S> {
    /// Lists every Stripe price (active and inactive) and subscription
    /// (`status=all`) with the configured client and compares them with the
    /// plans ([`compare`]).
    pub async fn check_plans(&self) -> Result<PlanCheck, PlanCheckError> {
        let stripe = self.config().stripe.clone().ok_or(PlanCheckError::StripeNotConfigured)?;
        let all = |list: &'static str, path: &'static str, params: Vec<(String, String)>| {
            let stripe = stripe.clone();
            async move {
                let mut objects = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let page = stripe
                        .list_page(path, &params, after.as_deref())
                        .await
                        .map_err(|source| PlanCheckError::Stripe { list, source })?;
                    after = page.data.last().and_then(|o| o.get("id")).and_then(Value::as_str).map(str::to_owned);
                    let more = page.has_more && after.is_some();
                    objects.extend(page.data);
                    if !more {
                        return Ok::<_, PlanCheckError>(objects);
                    }
                }
            }
        };
        let prices: Vec<StripePrice> = all("prices", "/v1/prices", Vec::new())
            .await?
            .iter()
            .filter_map(|p| {
                Some(StripePrice {
                    id: p.get("id")?.as_str()?.to_owned(),
                    active: p.get("active").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect();
        let subscriptions: Vec<(Option<String>, SubscriptionStatus)> =
            all("subscriptions", "/v1/subscriptions", vec![("status".to_owned(), "all".to_owned())])
                .await?
                .iter()
                .filter_map(|s| match parse_subscription(s) {
                    Ok(s) => Some((s.price_id, s.status)),
                    Err(reason) => {
                        tracing::warn!(reason = %reason, "a listed subscription could not be read; not counted");
                        None
                    }
                })
                .collect();
        Ok(compare(self.plans(), &prices, &subscriptions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Plan;

    fn plans() -> PlanCatalog {
        let plan = |id: &str, price: &str| Plan::new(id, id, price, 1);
        PlanCatalog::new(vec![plan("basic", "price_basic"), plan("pro", "price_pro"), plan("team", "price_team")])
            .unwrap()
    }

    fn price(id: &str, active: bool) -> StripePrice {
        StripePrice { id: id.into(), active }
    }

    #[test]
    fn missing_inactive_and_unlisted_prices_are_each_reported() {
        use SubscriptionStatus::*;
        let prices = [price("price_basic", true), price("price_pro", false), price("price_legacy", true)];
        let subscriptions = [
            (Some("price_basic".to_owned()), Active),
            (Some("price_legacy".to_owned()), Active),
            (Some("price_legacy".to_owned()), PastDue),
            (Some("price_legacy".to_owned()), Canceled),
            (Some("price_gone".to_owned()), IncompleteExpired),
            (None, Active),
        ];
        let check = compare(&plans(), &prices, &subscriptions);
        let plan = |plan: &str, price: &str| PlanPrice { plan_id: plan.into(), price_id: price.into() };
        assert_eq!(check.missing, [plan("team", "price_team")]);
        assert_eq!(check.inactive, [plan("pro", "price_pro")]);
        assert_eq!(check.unlisted, [("price_legacy".to_owned(), 2)], "ended subscriptions use nothing");
        assert_eq!((check.prices_seen, check.subscriptions_seen), (3, 6));
        assert!(!check.is_clean());
        let all_good = [price("price_basic", true), price("price_pro", true), price("price_team", true)];
        assert!(compare(&plans(), &all_good, &subscriptions[..1]).is_clean());
    }
}
