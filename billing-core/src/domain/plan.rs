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

/// What a license of a plan is: paid for again and again, or once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseKind {
    /// Follows a Stripe subscription (or an admin's terms): usable while paid.
    #[default]
    Subscription,
    /// Bought once: usable for good, with updates for `updates_months`.
    Perpetual,
}

impl LicenseKind {
    /// Storage and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscription => "subscription",
            Self::Perpetual => "perpetual",
        }
    }

    /// Parses the storage spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "subscription" => Self::Subscription,
            "perpetual" => Self::Perpetual,
            _ => return None,
        })
    }
}

/// How a plan's devices keep their slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevicePolicy {
    /// A device silent for longer than the heartbeat window loses its slot
    /// (so a license floats between machines).
    #[default]
    Floating,
    /// A device keeps its slot until it is deactivated; heartbeats only
    /// refresh when it was last seen.
    NodeLocked,
}

impl DevicePolicy {
    /// The plans file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Floating => "floating",
            Self::NodeLocked => "node_locked",
        }
    }
}

/// How long an air-gapped activation lasts unless a plan says otherwise.
pub const DEFAULT_OFFLINE_ACTIVATION_DAYS: u32 = 365;

/// The largest values the plans file accepts for its durations: beyond
/// them, dates computed from them would leave the representable range.
pub mod limits {
    /// `updates_months`: a century.
    pub const UPDATES_MONTHS: u32 = 1200;
    /// `trial_days` and `offline_activation_days`: ten years.
    pub const DAYS: u32 = 3650;
    /// `heartbeat_window_secs` and `offline_ttl_secs`: ten years.
    pub const SECS: u64 = 3650 * 24 * 3600;
}

fn default_offline_activation_days() -> u32 {
    DEFAULT_OFFLINE_ACTIVATION_DAYS
}

/// One plan of the catalog. Build one with [`Plan::new`] and set what
/// differs, so that plans written in code keep compiling as fields are added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// A misspelt field (`max_devics = 3`) is an error, not a silent default.
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Stable identifier used by the dashboard and in license certificates.
    pub id: PlanId,
    /// Human-readable name.
    pub name: String,
    /// The Stripe Price this plan is sold at (a one-time price for a
    /// perpetual plan).
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
    /// `subscription` (the default) or `perpetual`.
    #[serde(default)]
    pub kind: LicenseKind,
    /// A perpetual license's updates window, in months from its purchase
    /// (absent: updates forever). Only for perpetual plans.
    #[serde(default)]
    pub updates_months: Option<u32>,
    /// `floating` (the default) or `node_locked`.
    #[serde(default)]
    pub device_policy: DevicePolicy,
    /// This plan's heartbeat window (absent: the server's).
    #[serde(default)]
    pub heartbeat_window_secs: Option<u64>,
    /// This plan's offline-certificate lifetime (absent: the server's).
    #[serde(default)]
    pub offline_ttl_secs: Option<u64>,
    /// Card-less trials of this plan last this long (absent: no trials).
    #[serde(default)]
    pub trial_days: Option<u32>,
    /// How long an air-gapped activation of this plan lasts.
    #[serde(default = "default_offline_activation_days")]
    pub offline_activation_days: u32,
}

impl Plan {
    /// A subscription plan with today's defaults: floating devices, the
    /// server's heartbeat window and certificate lifetime, no trials, no
    /// display fields.
    pub fn new(id: &str, name: &str, stripe_price_id: &str, max_devices: u32) -> Self {
        Self {
            id: PlanId(id.to_owned()),
            name: name.to_owned(),
            stripe_price_id: stripe_price_id.to_owned(),
            max_devices,
            amount: None,
            currency: None,
            interval: None,
            features: Vec::new(),
            kind: LicenseKind::Subscription,
            updates_months: None,
            device_policy: DevicePolicy::Floating,
            heartbeat_window_secs: None,
            offline_ttl_secs: None,
            trial_days: None,
            offline_activation_days: DEFAULT_OFFLINE_ACTIVATION_DAYS,
        }
    }

    /// This plan's heartbeat window, the server's where it sets none.
    pub fn heartbeat_window(&self, default: time::Duration) -> time::Duration {
        self.heartbeat_window_secs.map_or(default, secs)
    }

    /// This plan's offline-certificate lifetime, the server's where it sets none.
    pub fn offline_ttl(&self, default: time::Duration) -> time::Duration {
        self.offline_ttl_secs.map_or(default, secs)
    }

    /// How long an air-gapped activation's certificate lasts (before the
    /// cap of paid-through plus grace).
    pub fn offline_activation(&self) -> time::Duration {
        time::Duration::days(i64::from(self.offline_activation_days))
    }

    /// How long a trial of this plan lasts, if it offers trials.
    pub fn trial(&self) -> Option<time::Duration> {
        self.trial_days.map(|days| time::Duration::days(i64::from(days)))
    }

    /// The first of the checks of [`PlanCatalog::new`] this plan fails.
    fn check(&self) -> Result<(), PlanCatalogError> {
        let id = || self.id.0.clone();
        let zero = |field| PlanCatalogError::Zero { plan: id(), field };
        let too_large = |field, max: u64| PlanCatalogError::TooLarge { plan: id(), field, max };
        if self.max_devices == 0 {
            return Err(PlanCatalogError::NoDevices(id()));
        }
        if self.updates_months.is_some() && self.kind != LicenseKind::Perpetual {
            return Err(PlanCatalogError::UpdatesWithoutPerpetual(id()));
        }
        let months = [("updates_months", self.updates_months, limits::UPDATES_MONTHS)];
        let days = [
            ("trial_days", self.trial_days, limits::DAYS),
            ("offline_activation_days", Some(self.offline_activation_days), limits::DAYS),
        ];
        for (field, value, max) in months.into_iter().chain(days) {
            match value {
                Some(0) => return Err(zero(field)),
                Some(n) if n > max => return Err(too_large(field, u64::from(max))),
                _ => {}
            }
        }
        for (field, value) in
            [("heartbeat_window_secs", self.heartbeat_window_secs), ("offline_ttl_secs", self.offline_ttl_secs)]
        {
            match value {
                Some(0) => return Err(zero(field)),
                Some(n) if n > limits::SECS => return Err(too_large(field, limits::SECS)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Seconds as a duration; the plans file's seconds are bounded by [`limits::SECS`].
fn secs(n: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
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
    /// A duration or count is zero (leave the key out for the default).
    #[error("plan `{plan}`: {field} must be at least 1 (leave it out for the default)")]
    Zero {
        /// The plan's id.
        plan: String,
        /// The plans file's key.
        field: &'static str,
    },
    /// A duration is beyond what dates can be computed from.
    #[error("plan `{plan}`: {field} must be at most {max}")]
    TooLarge {
        /// The plan's id.
        plan: String,
        /// The plans file's key.
        field: &'static str,
        /// The largest value accepted.
        max: u64,
    },
    /// `updates_months` on a subscription plan, whose updates last as long
    /// as it is paid.
    #[error("plan `{0}`: updates_months needs kind = \"perpetual\" (a subscription's updates last while it is paid)")]
    UpdatesWithoutPerpetual(String),
}

impl PlanCatalog {
    /// Builds a catalog, keeping file order, refusing ambiguous entries.
    pub fn new(plans: Vec<Plan>) -> Result<Self, PlanCatalogError> {
        for (i, plan) in plans.iter().enumerate() {
            plan.check()?;
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

    /// The plan a trial is of: the one named, or without a name the first
    /// plan offering trials. `None` when that plan does not exist or
    /// offers none.
    pub fn trial_plan(&self, id: Option<&str>) -> Option<&Plan> {
        match id {
            Some(id) => self.by_id(id).filter(|p| p.trial_days.is_some()),
            None => self.plans.iter().find(|p| p.trial_days.is_some()),
        }
    }

    /// The shortest heartbeat window of any plan whose devices can die
    /// (floating), or `default` when none is shorter: how often the reaper
    /// must look so that a dead device is recorded soon after its window.
    pub fn shortest_heartbeat_window(&self, default: time::Duration) -> time::Duration {
        self.plans
            .iter()
            .filter(|p| p.device_policy == DevicePolicy::Floating)
            .map(|p| p.heartbeat_window(default))
            .fold(default, time::Duration::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn plan(id: &str, price: &str, max_devices: u32) -> Plan {
        Plan::new(id, id, price, max_devices)
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

    #[test]
    fn policy_fields_default_to_todays_behaviour() {
        let p = plan("pro", "price_p", 2);
        assert_eq!((p.kind, p.device_policy), (LicenseKind::Subscription, DevicePolicy::Floating));
        assert_eq!(
            (p.updates_months, p.trial_days, p.heartbeat_window_secs, p.offline_ttl_secs),
            (None, None, None, None)
        );
        assert_eq!(p.offline_activation_days, 365);
        let server = time::Duration::seconds(600);
        assert_eq!((p.heartbeat_window(server), p.offline_ttl(server)), (server, server));
        let own = Plan { heartbeat_window_secs: Some(60), offline_ttl_secs: Some(3600), ..p };
        assert_eq!(own.offline_ttl(server), time::Duration::hours(1));
        assert_eq!(own.heartbeat_window(server), time::Duration::minutes(1));
    }

    #[test]
    fn catalog_refuses_zero_oversized_and_misplaced_policy_values() {
        use PlanCatalogError::*;
        let check = |p: Plan, expected: PlanCatalogError| assert_eq!(PlanCatalog::new(vec![p]), Err(expected));
        let perpetual = Plan { kind: LicenseKind::Perpetual, ..plan("a", "p1", 1) };
        let zero = |field| Zero { plan: "a".into(), field };
        check(Plan { updates_months: Some(0), ..perpetual.clone() }, zero("updates_months"));
        check(Plan { trial_days: Some(0), ..perpetual.clone() }, zero("trial_days"));
        check(Plan { offline_activation_days: 0, ..perpetual.clone() }, zero("offline_activation_days"));
        check(Plan { heartbeat_window_secs: Some(0), ..perpetual.clone() }, zero("heartbeat_window_secs"));
        check(Plan { offline_ttl_secs: Some(0), ..perpetual.clone() }, zero("offline_ttl_secs"));
        check(
            Plan { updates_months: Some(1201), ..perpetual.clone() },
            TooLarge { plan: "a".into(), field: "updates_months", max: 1200 },
        );
        check(
            Plan { offline_ttl_secs: Some(limits::SECS + 1), ..perpetual.clone() },
            TooLarge { plan: "a".into(), field: "offline_ttl_secs", max: limits::SECS },
        );
        check(Plan { updates_months: Some(12), ..plan("a", "p1", 1) }, UpdatesWithoutPerpetual("a".into()));
        let most = Plan {
            updates_months: Some(1200),
            trial_days: Some(3650),
            offline_activation_days: 3650,
            heartbeat_window_secs: Some(limits::SECS),
            offline_ttl_secs: Some(1),
            device_policy: DevicePolicy::NodeLocked,
            ..perpetual
        };
        assert!(PlanCatalog::new(vec![most]).is_ok());
    }

    #[test]
    fn a_trial_is_of_the_plan_named_or_the_first_offering_one() {
        let c = PlanCatalog::new(vec![
            plan("basic", "p1", 1),
            Plan { trial_days: Some(14), ..plan("pro", "p2", 2) },
            Plan { trial_days: Some(30), ..plan("team", "p3", 5) },
        ])
        .unwrap();
        assert_eq!(c.trial_plan(None).map(|p| p.id.as_str()), Some("pro"));
        assert_eq!(c.trial_plan(Some("team")).map(|p| p.id.as_str()), Some("team"));
        assert_eq!(c.trial_plan(Some("basic")), None, "no trial_days: no trial");
        assert_eq!(c.trial_plan(Some("nope")), None);
        assert_eq!(PlanCatalog::new(vec![plan("basic", "p1", 1)]).unwrap().trial_plan(None), None);
        assert_eq!(c.by_id("team").unwrap().trial(), Some(time::Duration::days(30)));
    }

    #[test]
    fn the_shortest_window_counts_only_plans_whose_devices_can_die() {
        let server = time::Duration::seconds(600);
        let c = PlanCatalog::new(vec![
            Plan { heartbeat_window_secs: Some(60), device_policy: DevicePolicy::NodeLocked, ..plan("a", "p1", 1) },
            Plan { heartbeat_window_secs: Some(120), ..plan("b", "p2", 1) },
            Plan { heartbeat_window_secs: Some(6000), ..plan("c", "p3", 1) },
        ])
        .unwrap();
        assert_eq!(c.shortest_heartbeat_window(server), time::Duration::seconds(120));
        assert_eq!(PlanCatalog::default().shortest_heartbeat_window(server), server);
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
