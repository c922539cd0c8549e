//! Deliveries as Stripe really makes them: every customer's events shuffled
//! together, 30 % of them twice, several at once, each refused delivery
//! retried, compared customer by customer with in-order, exactly-once
//! delivery of the same events; once to one instance, once spread over two
//! instances sharing the store. `benches/storm.rs` runs the same at 1,000
//! customers against the real binary, with `kill -9` and a PostgreSQL restart.

use crate::helpers::*;
use crate::lifecycles::{comparable, generate, Lifecycle, Rng};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;

const CUSTOMERS: usize = 120;
const IN_FLIGHT: usize = 8;

/// Delivers each event until it is acknowledged, `IN_FLIGHT` at a time per
/// instance. Every attempt goes to an instance `rng` picks, so the instances
/// receive at once and a refused event may be retried on another one, as
/// behind a load balancer.
async fn deliver_all(instances: &[&TestApp], mut pending: Vec<&Value>, rng: &mut Rng) -> usize {
    let mut attempts = 0;
    while !pending.is_empty() {
        attempts += pending.len();
        let routed: Vec<(&Value, &TestApp)> =
            pending.into_iter().map(|event| (event, instances[rng.below(instances.len() as u64) as usize])).collect();
        let refused: Vec<&Value> = futures_util::stream::iter(routed)
            .map(|(event, app)| async move { (event, app.post_stripe_webhook(event).await.status()) })
            .buffered(IN_FLIGHT * instances.len())
            .filter_map(|(event, status)| async move { (status != 200).then_some(event) })
            .collect()
            .await;
        pending = refused;
    }
    attempts
}

async fn state_of(app: &TestApp, user_id: &str) -> Value {
    comparable(
        app.get_current_subscription(user_id).await,
        app.get_licenses(user_id).await,
        app.get_payments(user_id).await,
    )
}

/// What the events themselves prove, independently of our rules' code:
/// whether the subscription was ever entitled (a trial, a payment, any
/// status after one).
fn ever_entitled(life: &Lifecycle) -> bool {
    life.events.iter().any(|e| {
        let object = &e["data"]["object"];
        let status = object["status"].as_str().unwrap_or_default();
        e["type"] == "invoice.paid"
            || (object["object"] == "subscription"
                && ["trialing", "active", "past_due", "unpaid", "paused"].contains(&status))
    })
}

#[tokio::test]
async fn shuffled_duplicated_concurrent_deliveries_end_where_in_order_delivery_does() {
    storm(1).await;
}

/// Two instances on one store, as behind a load balancer. On SQLite they
/// are two stores opened on one file, whose writers take turns through
/// SQLite's own write lock (`BEGIN IMMEDIATE` within `busy_timeout`).
#[tokio::test]
async fn the_storm_split_across_two_instances_sharing_one_store_ends_where_in_order_delivery_does() {
    storm(2).await;
}

/// Delivers the storm to `instances` servers sharing one store and compares
/// the end state, customer by customer, with in-order delivery.
async fn storm(instances: usize) {
    let seed = std::env::var("STORM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| now() as u64);
    eprintln!("storm seed {seed} (rerun with STORM_SEED={seed})");
    let lives = generate(CUSTOMERS, seed, now(), [PRICE_PRO, PRICE_BASIC]);

    let truth = spawn_app().await;
    futures_util::stream::iter(&lives)
        .for_each_concurrent(IN_FLIGHT, |life| async {
            for event in &life.events {
                truth.deliver(event).await;
            }
        })
        .await;

    let storm = spawn_app().await;
    let mut others = Vec::new();
    for _ in 1..instances {
        others.push(spawn_app_with(Options::sharing(&storm)).await);
    }
    let instances: Vec<&TestApp> = std::iter::once(&storm).chain(&others).collect();
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut deliveries: Vec<&Value> = lives.iter().flat_map(|l| &l.events).collect();
    let distinct = deliveries.len();
    let duplicates: Vec<&Value> = deliveries.iter().copied().filter(|_| rng.chance(30)).collect();
    deliveries.extend(duplicates);
    rng.shuffle(&mut deliveries);
    let attempts = deliver_all(&instances, deliveries.clone(), &mut rng).await;
    eprintln!(
        "{} customers, {distinct} events, {} deliveries, {attempts} attempts, {} instance(s)",
        lives.len(),
        deliveries.len(),
        instances.len()
    );

    let mut differing = Vec::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for (n, life) in lives.iter().enumerate() {
        // Read through every instance in turn: each must serve the one truth.
        let reader = instances[n % instances.len()];
        let (expected, got) = (state_of(&truth, &life.user_id).await, state_of(reader, &life.user_id).await);
        let licenses = expected["licenses"].as_array().unwrap();
        assert_eq!(licenses.len(), usize::from(ever_entitled(life)), "{}: {expected}", life.user_id);
        let status = licenses.first().map_or("none", |l| l["status"].as_str().unwrap());
        *statuses.entry(status.to_owned()).or_default() += 1;
        if expected != got {
            differing.push(format!("{}:\n  in order: {expected}\n  storm:    {got}", life.user_id));
        }
    }
    eprintln!("licenses by status: {statuses:?}");
    assert!(differing.is_empty(), "{} of {} customers differ:\n{}", differing.len(), lives.len(), differing.join("\n"));
    for (what, sql) in [
        ("deleted customers", "SELECT stripe_customer_id FROM customers WHERE deleted_at IS NOT NULL ORDER BY 1"),
        ("linked users", "SELECT stripe_customer_id || '=' || coalesce(user_id, '-') FROM customers ORDER BY 1"),
        ("recorded events", "SELECT id || ':' || status FROM webhook_events ORDER BY id"),
    ] {
        assert_eq!(storm.db.strings(sql).await, truth.db.strings(sql).await, "{what}");
    }
    assert_eq!(storm.count("webhook_events").await as usize, distinct, "each event recorded once");
    assert!(statuses.len() >= 4, "the storm reaches every kind of ending: {statuses:?}");
}
