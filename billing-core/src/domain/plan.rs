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
}
