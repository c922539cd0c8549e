//! Plans come from configuration, not from the database: they are what the
//! vendor sells, mapped onto Stripe prices.

use serde::{Deserialize, Serialize};

/// A plan identifier as written in the plans file, e.g. `pro`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlanId(pub String);

impl PlanId {
    /// The identifier as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PlanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One plan of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// A misspelt field (`max_devics = 3`) is an error, not a silent default.
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Stable identifier used by the dashboard and in license certificates.
    pub id: PlanId,
    /// Human-readable name.
    pub name: String,
    /// The Stripe Price this plan is sold at.
    pub stripe_price_id: String,
    /// How many devices a license of this plan may have active at once.
    pub max_devices: u32,
    /// Price in minor units (cents), for display only: Stripe is authoritative.
    #[serde(default)]
    pub amount: Option<i64>,
    /// ISO currency code, lower case as Stripe writes it.
    #[serde(default)]
    pub currency: Option<String>,
    /// Billing interval (`month`, `year`), for display only.
    #[serde(default)]
    pub interval: Option<String>,
    /// Entitlements granted by the plan; they travel in license certificates.
    #[serde(default)]
    pub features: Vec<String>,
}

/// The ordered list of plans the vendor sells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanCatalog {
    plans: Vec<Plan>,
}

/// Why a plan catalog was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanCatalogError {
    /// Two plans share an id.
    #[error("plan id `{0}` appears more than once")]
    DuplicateId(String),
    /// Two plans share a Stripe price, so webhooks could not tell them apart.
    #[error("stripe price `{0}` is used by more than one plan")]
    DuplicatePrice(String),
    /// A plan allows no device at all.
    #[error("plan `{0}` must allow at least one device")]
    NoDevices(String),
}

impl PlanCatalog {
    /// Builds a catalog, keeping file order, refusing ambiguous entries.
    pub fn new(plans: Vec<Plan>) -> Result<Self, PlanCatalogError> {
        for (i, plan) in plans.iter().enumerate() {
            if plan.max_devices == 0 {
                return Err(PlanCatalogError::NoDevices(plan.id.0.clone()));
            }
            for other in &plans[..i] {
                if other.id == plan.id {
                    return Err(PlanCatalogError::DuplicateId(plan.id.0.clone()));
                }
                if other.stripe_price_id == plan.stripe_price_id {
                    return Err(PlanCatalogError::DuplicatePrice(plan.stripe_price_id.clone()));
                }
            }
        }
        Ok(Self { plans })
    }

    /// All plans in file order.
    pub fn all(&self) -> &[Plan] {
        &self.plans
    }

    /// The plan with this id.
    pub fn by_id(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id.0 == id)
    }

    /// The plan sold at this Stripe price.
    pub fn by_price(&self, price_id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.stripe_price_id == price_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn plan(id: &str, price: &str, max_devices: u32) -> Plan {
        Plan {
            id: PlanId(id.into()),
            name: id.into(),
            stripe_price_id: price.into(),
            max_devices,
            amount: None,
            currency: None,
            interval: None,
            features: vec![],
        }
    }

    #[test]
    fn catalog_keeps_file_order_and_finds_by_price() {
        let c = PlanCatalog::new(vec![plan("pro", "price_p", 2), plan("basic", "price_b", 1)]).unwrap();
        assert_eq!(c.all()[0].id.0, "pro");
        assert_eq!(c.by_price("price_b").unwrap().id.0, "basic");
        assert!(c.by_id("team").is_none());
    }

    #[test]
    fn catalog_refuses_ambiguous_plans() {
        let dup = PlanCatalog::new(vec![plan("a", "p1", 1), plan("a", "p2", 1)]);
        assert_eq!(dup, Err(PlanCatalogError::DuplicateId("a".into())));
        let price = PlanCatalog::new(vec![plan("a", "p1", 1), plan("b", "p1", 1)]);
        assert_eq!(price, Err(PlanCatalogError::DuplicatePrice("p1".into())));
        let zero = PlanCatalog::new(vec![plan("a", "p1", 0)]);
        assert_eq!(zero, Err(PlanCatalogError::NoDevices("a".into())));
    }

    mod catalog_properties {
        use super::*;
        use proptest::prelude::*;

        /// Plans with distinct ids and prices, in no particular order.
        fn distinct_plans() -> impl Strategy<Value = Vec<Plan>> {
            proptest::collection::btree_map("[a-z][a-z0-9_-]{0,8}", (1u32..=1000, any::<bool>()), 0..8).prop_map(
                |by_id| {
                    by_id
                        .into_iter()
                        .rev()
                        .enumerate()
                        .map(|(n, (id, (max_devices, priced)))| Plan {
                            amount: priced.then_some(i64::from(max_devices) * 100),
                            ..plan(&id, &format!("price_{n}"), max_devices)
                        })
                        .collect()
                },
            )
        }

        proptest! {
            #[test]
            fn a_catalog_without_ambiguity_keeps_every_plan_in_file_order(plans in distinct_plans()) {
                let catalog = PlanCatalog::new(plans.clone()).unwrap();
                prop_assert_eq!(catalog.all(), plans.as_slice());
                for plan in &plans {
                    prop_assert_eq!(catalog.by_id(plan.id.as_str()), Some(plan));
                    prop_assert_eq!(catalog.by_price(&plan.stripe_price_id), Some(plan));
                }
            }

            #[test]
            fn a_repeated_id_or_price_anywhere_is_refused(
                plans in distinct_plans().prop_filter("needs a plan to repeat", |p| !p.is_empty()),
                original in any::<prop::sample::Index>(),
                position in any::<prop::sample::Index>(),
                repeat_price in any::<bool>(),
            ) {
                let source = &plans[original.index(plans.len())];
                let copy = if repeat_price {
                    plan("a_new_id_nobody_has", &source.stripe_price_id, 1)
                } else {
                    plan(source.id.as_str(), "price_nobody_has", 1)
                };
                let mut with_copy = plans.clone();
                with_copy.insert(position.index(plans.len() + 1), copy);
                let refused = PlanCatalog::new(with_copy);
                let expected = if repeat_price {
                    PlanCatalogError::DuplicatePrice(source.stripe_price_id.clone())
                } else {
                    PlanCatalogError::DuplicateId(source.id.0.clone())
                };
                prop_assert_eq!(refused, Err(expected));
            }

            #[test]
            fn a_plan_allowing_no_device_is_refused_wherever_it_stands(
                plans in distinct_plans().prop_filter("needs a plan", |p| !p.is_empty()),
                index in any::<prop::sample::Index>(),
            ) {
                let mut plans = plans;
                let i = index.index(plans.len());
                plans[i].max_devices = 0;
                prop_assert_eq!(PlanCatalog::new(plans.clone()), Err(PlanCatalogError::NoDevices(plans[i].id.0.clone())));
            }
        }
    }
}
