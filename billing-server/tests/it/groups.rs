//! Deliveries that arrive together: bursts of concurrent deliveries, one of
//! them poisoned, several about one Stripe object, on one instance or two
//! sharing the store. Written against HTTP answers and stored rows only, so
//! they hold whether each delivery is its own transaction or shares one
//! with the deliveries beside it (group commit).

use crate::helpers::*;
use crate::lifecycles::{comparable, Rng};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// One delivery of a burst: where it goes and, when the test wants to see
/// its effect, whose dashboard to read once it is answered.
struct Delivery {
    app: Arc<TestApp>,
    event: Value,
    reader: Option<String>,
}

/// How a delivery was answered and what the dashboard showed right after.
struct Answer {
    event_id: String,
    status: u16,
    body: Value,
    seen: Option<Seen>,
}

struct Seen {
    subscription: Value,
    licenses: Vec<Value>,
}

impl Answer {
    fn outcome(&self) -> &str {
        self.body["outcome"].as_str().unwrap_or_default()
    }
}

/// Posts every delivery at once, each from its own task. A delivery
/// answered 200 is followed, in its task and before anything else waits on
/// it, by a dashboard read on the same instance: a 200 promises the event is
/// applied, so that read must already see it.
async fn burst(deliveries: Vec<Delivery>) -> Vec<Answer> {
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|d| {
            tokio::spawn(async move {
                let response = d.app.post_stripe_webhook(&d.event).await;
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("every answer is JSON");
                let seen = match (&d.reader, status) {
                    (Some(user), 200) => Some(Seen {
                        subscription: d.app.get_current_subscription(user).await,
                        licenses: d.app.get_licenses(user).await,
                    }),
                    _ => None,
                };
                Answer { event_id: d.event["id"].as_str().unwrap().to_owned(), status, body, seen }
            })
        })
        .collect();
    join_all(tasks).await.into_iter().map(|task| task.expect("a delivery task panicked")).collect()
}

/// Prints how each instance grouped its deliveries. Grouping is the
/// implementation's choice and not asserted, but a run in which no burst
/// shared a unit of work tested less than it seems.
fn print_group_sizes(test: &str, instances: &[&TestApp]) {
    for (n, app) in instances.iter().enumerate() {
        let stats = app.billing.webhook_group_stats();
        eprintln!(
            "{test}: instance {n}: {} deliveries in {} units of work (mean {:.2})",
            stats.events,
            stats.groups,
            stats.mean_group_size()
        );
    }
}

/// `user`'s subscription (`sub_<user>` of `cus_<user>`) with a period
/// around now, so that its license is live whenever the test reads it.
fn live(user: &str, status: &str, price: &str) -> Value {
    let mut object = subscription(&format!("sub_{user}"), &format!("cus_{user}"), status, price, Some(user));
    object["items"]["data"][0]["current_period_start"] = json!(period_start());
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    object
}

fn created(user: &str, at: i64) -> Value {
    event(&format!("evt_{user}_created"), "customer.subscription.created", at, live(user, "active", PRICE_PRO))
}

fn seed() -> u64 {
    let seed = std::env::var("GROUPS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| now() as u64);
    eprintln!("groups seed {seed} (rerun with GROUPS_SEED={seed})");
    seed
}

fn quoted(ids: &[String]) -> String {
    ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(", ")
}

/// SQL making every write of subscription `sub_poison` fail, and SQL undoing it.
fn poison() -> (&'static str, &'static str) {
    match backend() {
        Backend::Postgres => (
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.stripe_subscription_id = 'sub_poison' THEN
                     RAISE EXCEPTION 'sub_poison is refused by the test';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON subscriptions
                 FOR EACH ROW EXECUTE FUNCTION poison();",
            "DROP TRIGGER poison ON subscriptions; DROP FUNCTION poison();",
        ),
        // SQLite has no INSERT OR UPDATE trigger: one of each.
        Backend::Sqlite => (
            "CREATE TRIGGER poison_insert BEFORE INSERT ON subscriptions
                 WHEN NEW.stripe_subscription_id = 'sub_poison'
                 BEGIN SELECT RAISE(ABORT, 'sub_poison is refused by the test'); END;
             CREATE TRIGGER poison_update BEFORE UPDATE ON subscriptions
                 WHEN NEW.stripe_subscription_id = 'sub_poison'
                 BEGIN SELECT RAISE(ABORT, 'sub_poison is refused by the test'); END;",
            "DROP TRIGGER poison_insert; DROP TRIGGER poison_update;",
        ),
    }
}

const POISON_ROUNDS: usize = 4;
const HEALTHY: usize = 29;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_delivery_fails_alone_and_the_deliveries_beside_it_are_applied() {
    let app = Arc::new(spawn_app().await);
    let (refuse, allow) = poison();
    app.db.execute(refuse).await;
    // Stripe retrying one event: the same delivery in every burst.
    let poisoned = created("poison", now() - 60);
    let mut rng = Rng::new(seed());
    for round in 0..POISON_ROUNDS {
        let mut deliveries: Vec<Delivery> = (0..HEALTHY)
            .map(|n| {
                let user = format!("healthy_{round}_{n}");
                Delivery { app: app.clone(), event: created(&user, now() - 60), reader: Some(user) }
            })
            .collect();
        deliveries.push(Delivery { app: app.clone(), event: poisoned.clone(), reader: None });
        rng.shuffle(&mut deliveries);

        for answer in burst(deliveries).await {
            if answer.event_id == "evt_poison_created" {
                assert_eq!(answer.status, 500, "round {round}: the poisoned delivery: {}", answer.body);
                assert_eq!(answer.body["error"]["code"], "PROCESSING_FAILED");
                continue;
            }
            assert_eq!((answer.status, answer.outcome()), (200, "processed"), "{}: {}", answer.event_id, answer.body);
            let user = answer.event_id.strip_prefix("evt_").unwrap().strip_suffix("_created").unwrap();
            let seen = answer.seen.expect("read after a 200");
            assert_eq!(
                seen.subscription["stripe_subscription_id"],
                format!("sub_{user}"),
                "{user} right after its 200"
            );
            assert_eq!(seen.subscription["status"], "active", "{user} right after its 200");
            let licenses: Vec<_> = seen.licenses.iter().map(|l| (&l["status"], &l["plan"])).collect();
            assert_eq!(licenses, [(&json!("active"), &json!("pro"))], "{user} right after its 200");
        }

        let (status, attempts, error) =
            app.webhook_status("evt_poison_created").await.expect("the failure is recorded");
        assert_eq!((status.as_str(), attempts), ("failed", round as i32 + 1), "one attempt per delivery");
        assert!(error.is_some_and(|e| !e.is_empty()), "the failure's reason is recorded");
        let applied = (HEALTHY * (round + 1)) as i64;
        for table in ["customers", "subscriptions", "licenses"] {
            assert_eq!(app.count(table).await, applied, "{table}: every healthy delivery, nothing of the poisoned one");
        }
        for (what, sql) in [
            ("customer", "SELECT count(*) FROM customers WHERE stripe_customer_id = 'cus_poison'"),
            ("subscription", "SELECT count(*) FROM subscriptions WHERE stripe_subscription_id = 'sub_poison'"),
            ("audit rows", "SELECT count(*) FROM subscription_changes WHERE stripe_event_id = 'evt_poison_created'"),
        ] {
            assert_eq!(app.db.int(sql).await, 0, "no {what} of the poisoned delivery");
        }
        assert_eq!(app.count("webhook_events").await, applied + 1);
    }

    app.db.execute(allow).await;
    assert_eq!(app.deliver(&poisoned).await, "processed", "Stripe's next retry");
    let (status, attempts, error) = app.webhook_status("evt_poison_created").await.unwrap();
    assert_eq!((status.as_str(), attempts, error), ("processed", POISON_ROUNDS as i32 + 1, None));
    assert_eq!(app.get_current_subscription("poison").await["status"], "active");
    assert_eq!(app.get_licenses("poison").await.len(), 1);
    assert_eq!(
        app.db.int("SELECT count(*) FROM subscription_changes WHERE stripe_event_id = 'evt_poison_created'").await,
        1
    );
    print_group_sizes("poisoned", &[&app]);
}

/// One subscription's life as four events a second apart, oldest first:
/// trial, paid, downgraded, cancellation scheduled. Any of them applied last
/// would leave a state the others can tell apart.
fn one_life(user: &str, start: i64) -> Vec<Value> {
    let steps = [
        ("customer.subscription.created", "trialing", PRICE_PRO, false),
        ("customer.subscription.updated", "active", PRICE_PRO, false),
        ("customer.subscription.updated", "active", PRICE_BASIC, false),
        ("customer.subscription.updated", "active", PRICE_BASIC, true),
    ];
    steps
        .iter()
        .enumerate()
        .map(|(k, &(kind, status, price, cancel))| {
            let mut object = live(user, status, price);
            object["cancel_at_period_end"] = json!(cancel);
            if status == "trialing" {
                object["trial_end"] = json!(period_end());
            }
            event(&format!("evt_{user}_{k}"), kind, start + k as i64, object)
        })
        .collect()
}

const SAME_OBJECT_ROUNDS: usize = 4;

/// Bursts of one subscription's events, each delivered one to three times,
/// shuffled, all at once, spread over `instances`; compared with `truth`,
/// which received the same events once each, in order.
async fn same_object_bursts(instances: &[Arc<TestApp>], truth: &TestApp) {
    let mut rng = Rng::new(seed());
    for round in 0..SAME_OBJECT_ROUNDS {
        let user = format!("same_{round}");
        let life = one_life(&user, now() - 600);
        for event in &life {
            truth.deliver(event).await;
        }

        let copies: Vec<usize> = (0..life.len()).map(|_| 1 + rng.below(3) as usize).collect();
        let mut deliveries: Vec<&Value> =
            life.iter().zip(&copies).flat_map(|(event, &n)| std::iter::repeat_n(event, n)).collect();
        rng.shuffle(&mut deliveries);
        let deliveries = deliveries
            .into_iter()
            .enumerate()
            .map(|(i, event)| Delivery {
                app: instances[i % instances.len()].clone(),
                event: event.clone(),
                reader: None,
            })
            .collect();

        let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for answer in burst(deliveries).await {
            assert_eq!(answer.status, 200, "{user}: {}: {}", answer.event_id, answer.body);
            outcomes.entry(answer.event_id.clone()).or_default().push(answer.outcome().to_owned());
        }
        for (event, &n) in life.iter().zip(&copies) {
            let got = &outcomes[event["id"].as_str().unwrap()];
            let duplicates = got.iter().filter(|o| *o == "duplicate").count();
            assert_eq!(
                (got.len(), duplicates),
                (n, n - 1),
                "{}: applied once, the other copies duplicates: {got:?}",
                event["id"]
            );
        }

        let expected = state_of(truth, &user).await;
        for (n, app) in instances.iter().enumerate() {
            assert_eq!(state_of(app, &user).await, expected, "{user} read through instance {n}");
        }
        let app = &instances[0];
        let ids: Vec<String> = life.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        let recorded =
            format!("SELECT id || ':' || status FROM webhook_events WHERE id IN ({}) ORDER BY id", quoted(&ids));
        assert_eq!(
            app.db.strings(&recorded).await,
            truth.db.strings(&recorded).await,
            "{user}: each event recorded once"
        );
        let counted =
            format!("SELECT CAST(duplicates AS bigint) FROM webhook_events WHERE id IN ({}) ORDER BY id", quoted(&ids));
        let extra: Vec<i64> = copies.iter().map(|&n| n as i64 - 1).collect();
        assert_eq!(app.db.ints(&counted).await, extra, "{user}: each extra delivery counted as a duplicate");

        let audit = format!(
            "SELECT stripe_event_id || ':' || kind FROM subscription_changes WHERE stripe_event_id IN ({})",
            quoted(&ids)
        );
        let audit = app.db.strings(&audit).await;
        let distinct: HashSet<&String> = audit.iter().collect();
        assert_eq!(distinct.len(), audit.len(), "{user}: no audit row twice: {audit:?}");
        assert_eq!(audit.iter().filter(|row| row.ends_with(":created")).count(), 1, "{user}: created once: {audit:?}");
        for table in ["subscriptions", "licenses"] {
            let sql = format!("SELECT count(*) FROM {table}");
            assert_eq!(app.db.int(&sql).await, round as i64 + 1, "{user}: one {table} row per subscription");
        }
    }
    let instances: Vec<&TestApp> = instances.iter().map(|app| &**app).collect();
    print_group_sizes("one subscription", &instances);
}

async fn state_of(app: &TestApp, user: &str) -> Value {
    comparable(app.get_current_subscription(user).await, app.get_licenses(user).await, app.get_payments(user).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriptions_events_in_one_burst_end_where_in_order_delivery_does() {
    let truth = spawn_app().await;
    let app = Arc::new(spawn_app().await);
    same_object_bursts(&[app], &truth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriptions_burst_split_across_two_instances_ends_where_in_order_delivery_does() {
    let truth = spawn_app().await;
    let one = Arc::new(spawn_app().await);
    let two = Arc::new(spawn_app_with(Options::sharing(&one)).await);
    same_object_bursts(&[one, two], &truth).await;
}

const READERS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_means_applied_the_dashboard_read_that_follows_sees_it() {
    let app = Arc::new(spawn_app().await);
    let users: Vec<String> = (0..READERS).map(|n| format!("reader_{n}")).collect();
    let start = now() - 120;
    let signups =
        users.iter().map(|user| Delivery { app: app.clone(), event: created(user, start), reader: Some(user.clone()) });
    for answer in burst(signups.collect()).await {
        assert_eq!((answer.status, answer.outcome()), (200, "processed"), "{}: {}", answer.event_id, answer.body);
        let seen = answer.seen.unwrap();
        assert_eq!((&seen.subscription["plan"], seen.licenses.len()), (&json!("pro"), 1), "{}", answer.event_id);
    }

    // Every user downgrades and schedules the cancellation at once.
    let downgrades = users.iter().map(|user| {
        let mut object = live(user, "active", PRICE_BASIC);
        object["cancel_at_period_end"] = json!(true);
        let event = event(&format!("evt_{user}_downgraded"), "customer.subscription.updated", start + 1, object);
        Delivery { app: app.clone(), event, reader: Some(user.clone()) }
    });
    for answer in burst(downgrades.collect()).await {
        assert_eq!((answer.status, answer.outcome()), (200, "processed"), "{}: {}", answer.event_id, answer.body);
        let seen = answer.seen.unwrap();
        let subscription = (&seen.subscription["plan"], &seen.subscription["cancel_at_period_end"]);
        assert_eq!(subscription, (&json!("basic"), &json!(true)), "{} right after its 200", answer.event_id);
        let license: Vec<_> = seen.licenses.iter().map(|l| (&l["plan"], &l["max_devices"])).collect();
        assert_eq!(license, [(&json!("basic"), &json!(1))], "{} right after its 200", answer.event_id);
    }
    print_group_sizes("a 200 means applied", &[&app]);
}
