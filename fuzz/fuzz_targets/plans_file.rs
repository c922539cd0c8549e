//! Any plans file text: a catalog or an error, never a panic; a catalog it
//! accepts has unique ids and prices and no plan without devices.
#![no_main]

use billing_server::config::parse_plans;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(catalog) = parse_plans(text) {
        let plans = catalog.all();
        for (i, plan) in plans.iter().enumerate() {
            assert!(plan.max_devices > 0);
            assert!(plans[..i].iter().all(|p| p.id != plan.id && p.stripe_price_id != plan.stripe_price_id));
        }
    }
});
