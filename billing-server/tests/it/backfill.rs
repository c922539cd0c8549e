//! `billing-server stripe sync` and `stripe check-plans` against a local
//! server answering like Stripe's list API (`stripe_world.rs`): the state a
//! backfill leaves equals what webhooks would have left, a run killed
//! half-way resumes where it stopped, a run concurrent with webhooks
//! converges to the newest state, and the requests are the ones Stripe
//! documents (pagination, filters, key, version, rate, retries).

use crate::helpers::*;
use crate::lifecycles::Rng;
use crate::stripe_world::*;
use billing_core::licensing::LicensingConfig;
use billing_core::storage::any::{AnyStore, StoreLocation};
use billing_core::storage::backfill_runs::{BackfillCheckpoint, BackfillRunStore};
use billing_core::stripe::client::STRIPE_VERSION;
use billing_core::stripe::StripeClient;
use billing_core::stripe_sync::backfill::{BackfillOptions, BackfillSummary, Counts, Resource};
use billing_core::{Billing, BillingConfig};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Objects of each kind in the large worlds (the issue asks for 2,500+).
const LARGE: usize = 2_550;
/// Requests per second in tests that are not about the rate.
const FAST: u32 = 2_000;

fn seed(test: u64) -> u64 {
    let seed = std::env::var("BACKFILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| now() as u64);
    eprintln!("backfill seed {seed} (rerun with BACKFILL_SEED={seed})");
    seed ^ test
}

/// An engine on `store` whose Stripe is `stripe`, as `stripe sync` builds
/// it (rate-limited, patient), for backfills run in the test's process.
async fn backfill_engine(store: &StoreLocation, stripe: &FakeStripe, rate: u32) -> Billing<AnyStore> {
    let store = AnyStore::open(store, 4).await.unwrap();
    let client = StripeClient::new(BACKFILL_KEY, stripe.base())
        .with_retries(5, Duration::from_millis(50))
        .with_rate_limit(NonZeroU32::new(rate).unwrap());
    let config = BillingConfig::new(plans(), LicensingConfig::new(signing_key()))
        .with_grace(time::Duration::days(7))
        .with_stripe(Some(client));
    Billing::new(store, config)
}

async fn backfill(store: &StoreLocation, stripe: &FakeStripe) -> BackfillSummary {
    let engine = backfill_engine(store, stripe, FAST).await;
    engine.backfill_stripe(&BackfillOptions::default(), &mut ()).await.expect("backfill")
}

/// What the store holds, with our generated ids and times left out: every
/// customer (user, address), subscription (status, price, plan, period,
/// cancellation), license (status, plan, devices, expiry) and payment. The
/// grace start of a past-due subscription is left out too: webhooks date it
/// at the past-due event, a backfill at the moment it learns of it.
async fn dump(db: &TestDb) -> Vec<String> {
    const TABLES: [(&str, &str); 4] = [
        (
            "customer",
            "SELECT stripe_customer_id || ' user=' || coalesce(user_id, '-') || ' email=' || coalesce(email, '-')
                    || CASE WHEN deleted_at IS NULL THEN '' ELSE ' deleted' END
               FROM customers ORDER BY 1",
        ),
        (
            "subscription",
            "SELECT s.stripe_subscription_id || ' customer=' || c.stripe_customer_id || ' ' || s.status
                    || ' price=' || coalesce(s.price_id, '-') || ' plan=' || coalesce(s.plan_id, '-')
                    || ' period=' || coalesce(CAST(s.current_period_start AS TEXT), '-') || '..'
                    || coalesce(CAST(s.current_period_end AS TEXT), '-')
                    || CASE WHEN s.cancel_at_period_end THEN ' cancels' ELSE '' END
                    || ' ended=' || coalesce(CAST(s.ended_at AS TEXT), '-')
               FROM subscriptions s JOIN customers c ON c.id = s.customer_id ORDER BY 1",
        ),
        (
            "license",
            "SELECT s.stripe_subscription_id || ' ' || l.status || ' plan=' || coalesce(l.plan_id, '-')
                    || ' max_devices=' || CAST(l.max_devices AS TEXT)
                    || ' expires=' || coalesce(CAST(l.expires_at AS TEXT), '-')
               FROM licenses l JOIN subscriptions s ON s.id = l.subscription_id ORDER BY 1",
        ),
        (
            "payment",
            "SELECT p.stripe_invoice_id || ' customer=' || c.stripe_customer_id
                    || ' subscription=' || coalesce(p.stripe_subscription_id, '-') || ' ' || p.status
                    || ' ' || CAST(p.amount AS TEXT) || ' ' || p.currency
                    || ' paid_at=' || coalesce(CAST(p.paid_at AS TEXT), '-')
               FROM payments p JOIN customers c ON c.id = p.customer_id ORDER BY 1",
        ),
    ];
    let mut rows = Vec::new();
    for (kind, sql) in TABLES {
        rows.extend(db.strings(sql).await.into_iter().map(|row| format!("{kind} {row}")));
    }
    rows
}

/// Asserts two dumps are equal, showing the first differences only.
fn assert_same_state(expected: &[String], got: &[String], what: &str) {
    if expected == got {
        return;
    }
    let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).take(8).collect();
    let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).take(8).collect();
    panic!(
        "{what}: {} rows expected, {} held\n  expected, not held: {missing:#?}\n  held, not expected: {extra:#?}",
        expected.len(),
        got.len()
    );
}

/// Row counts that must not change when nothing changes.
async fn row_counts(db: &TestDb) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for table in ["customers", "subscriptions", "licenses", "payments", "subscription_changes", "outbox_events"] {
        counts.push((table, db.int(&format!("SELECT count(*) FROM {table}")).await));
    }
    counts
}

/// No Stripe object is held twice.
async fn assert_no_duplicates(db: &TestDb) {
    for (what, sql) in [
        ("payments per invoice", "SELECT stripe_invoice_id FROM payments GROUP BY 1 HAVING count(*) > 1"),
        ("licenses per subscription", "SELECT subscription_id FROM licenses GROUP BY 1 HAVING count(*) > 1"),
        ("subscriptions per id", "SELECT stripe_subscription_id FROM subscriptions GROUP BY 1 HAVING count(*) > 1"),
        ("customers per id", "SELECT stripe_customer_id FROM customers GROUP BY 1 HAVING count(*) > 1"),
    ] {
        assert!(db.strings(sql).await.is_empty(), "duplicate {what}");
    }
}

/// Delivers every event until each is acknowledged, `in_flight` at a time
/// (a refused one, e.g. a group that lost a race for a new customer, is
/// delivered again as Stripe would).
async fn deliver_all(app: &TestApp, events: &[Value], in_flight: usize) {
    let mut pending: Vec<&Value> = events.iter().collect();
    for _ in 0..5 {
        pending = futures_util::stream::iter(pending)
            .map(|event| async move { (event, app.post_stripe_webhook(event).await.status()) })
            .buffer_unordered(in_flight)
            .filter_map(|(event, status)| async move { (status != 200).then_some(event) })
            .collect()
            .await;
        if pending.is_empty() {
            return;
        }
    }
    panic!("{} deliveries still refused", pending.len());
}

fn counts_of(summary: &BackfillSummary, resource: Resource) -> &Counts {
    &summary.per_resource[&resource]
}

#[tokio::test]
async fn a_backfill_ends_in_the_state_webhooks_would_have_produced() {
    let world = World::generate(LARGE, seed(1), now());
    let customers = world.count(CUSTOMERS, |_| true);
    let subscriptions = world.count(SUBSCRIPTIONS, |_| true);
    let paid = world.count(INVOICES, |i| i["status"] == "paid");
    let complete = world.count(SESSIONS, |s| s["status"] == "complete");
    let no_user = world.count(SESSIONS, |s| s["status"] == "complete" && s["client_reference_id"].is_null());
    assert!(customers >= 2_500 && subscriptions >= 2_500 && paid >= 2_500 && complete >= 2_500);

    let started = Instant::now();
    let by_webhooks = spawn_app().await;
    deliver_all(&by_webhooks, &world.events, 16).await;
    eprintln!("{} webhook events delivered in {:?}", world.events.len(), started.elapsed());

    let by_backfill = spawn_app().await;
    let stripe = FakeStripe::start(&world).await;
    stripe.fault_at(7, Fault::TooManyRequests);
    stripe.fault_at(40, Fault::ServerError);
    let started = Instant::now();
    let summary = backfill(&by_backfill.store, &stripe).await;
    eprintln!("backfill of {} objects in {:?}", summary.total().seen, started.elapsed());

    assert_same_state(&dump(&by_webhooks.db).await, &dump(&by_backfill.db).await, "backfill vs webhooks");
    assert_no_duplicates(&by_backfill.db).await;

    // Every object seen, each counted once, the skipped ones with why.
    let c = counts_of(&summary, Resource::Customers);
    assert_eq!((c.seen, c.created, c.updated, c.unchanged), (customers as u64, customers as u64, 0, 0));
    let s = counts_of(&summary, Resource::Subscriptions);
    assert_eq!((s.seen, s.created), (subscriptions as u64, subscriptions as u64));
    let i = counts_of(&summary, Resource::Invoices);
    assert_eq!((i.seen, i.created, i.skipped_total()), (paid as u64, paid as u64, 0), "only paid ones are asked for");
    let cs = counts_of(&summary, Resource::CheckoutSessions);
    assert_eq!(cs.seen, complete as u64, "only completed ones are asked for");
    assert_eq!(cs.skipped.get("checkout session names no user").copied(), Some(no_user as u64));
    assert!(cs.updated > 0, "checkout-only links are made: {cs:?}");
    assert_eq!(cs.created, 0, "customers come first");
    let actors = by_backfill.db.strings("SELECT DISTINCT actor FROM subscription_changes ORDER BY 1").await;
    assert_eq!(actors, ["stripe:backfill"], "the audit trail says where changes came from");

    // The requests are Stripe's: key, version, 100 a page, each page after
    // the last id of the one before, the filters of each list, in order;
    // the 429 retried after its Retry-After, the 500 retried.
    let log = stripe.log();
    assert!(log.iter().all(|r| r.authorization.as_deref() == Some(&format!("Bearer {BACKFILL_KEY}")[..])));
    assert!(log.iter().all(|r| r.stripe_version.as_deref() == Some(STRIPE_VERSION)));
    assert!(log.iter().all(|r| r.param("limit") == Some("100") && r.param("created[gte]").is_none()));
    let (throttled, failed) = (&log[7], &log[40]);
    assert_eq!((throttled.status, failed.status), (429, 500));
    for (fault, retry) in [(7, 8), (40, 41)] {
        assert_eq!((&log[retry].path, &log[retry].query), (&log[fault].path, &log[fault].query), "retried as it was");
        assert_eq!(log[retry].status, 200);
    }
    let waited = log[8].at - log[7].at;
    assert!(waited >= Duration::from_millis(950), "Retry-After: 1 was honoured ({waited:?})");
    let served: Vec<&Served> = log.iter().filter(|r| r.status == 200).collect();
    let order: Vec<&str> = served.iter().map(|r| r.path.as_str()).collect();
    let mut expected_order = order.clone();
    expected_order.dedup();
    assert_eq!(expected_order, [CUSTOMERS, SUBSCRIPTIONS, INVOICES, SESSIONS], "one list after the other");
    for (path, status) in
        [(CUSTOMERS, None), (SUBSCRIPTIONS, Some("all")), (INVOICES, Some("paid")), (SESSIONS, Some("complete"))]
    {
        let pages: Vec<&&Served> = served.iter().filter(|r| r.path == path).collect();
        assert!(pages.len() >= 25, "{path}: {} pages", pages.len());
        assert_eq!(pages[0].param("starting_after"), None, "{path} starts at the beginning");
        for pair in pages.windows(2) {
            assert_eq!(pair[1].param("starting_after"), pair[0].last_id.as_deref(), "{path}");
        }
        assert!(pages.iter().all(|p| p.param("status") == status), "{path}");
    }

    // A second run changes nothing: every object is unchanged (or skipped
    // as before), no audit row, no outbox row.
    let before = row_counts(&by_backfill.db).await;
    let again = backfill(&by_backfill.store, &stripe).await;
    let total = again.total();
    assert_eq!((total.created, total.updated), (0, 0), "{again:?}");
    assert_eq!(total.seen, summary.total().seen);
    assert_eq!(row_counts(&by_backfill.db).await, before);
    assert_same_state(&dump(&by_webhooks.db).await, &dump(&by_backfill.db).await, "after a second run");
}

/// A plans file with the test catalog (`helpers::plans`).
fn plans_file(dir: &Path, plans: &[(&str, &str, u32)]) -> PathBuf {
    let mut text = String::new();
    for (id, price, max_devices) in plans {
        text.push_str(&format!(
            "[[plans]]\nid = \"{id}\"\nname = \"{}\"\nstripe_price_id = \"{price}\"\nmax_devices = {max_devices}\n\
             amount = 1900\ncurrency = \"usd\"\ninterval = \"month\"\nfeatures = [\"export\"]\n\n",
            id.to_uppercase()
        ));
    }
    let path = dir.join("plans.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `billing-server stripe <args>` on `store`, against `stripe`, with the
/// test catalog and its own data directory.
struct Cli {
    dir: PathBuf,
    plans: PathBuf,
    database_url: String,
    stripe_base: String,
    key: String,
}

impl Cli {
    fn new(store: &StoreLocation, stripe: &FakeStripe) -> Self {
        let dir = std::env::temp_dir().join(format!("backfill-cli-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let plans = plans_file(&dir, &[("pro", PRICE_PRO, 3), ("basic", PRICE_BASIC, 1)]);
        let database_url = match store {
            StoreLocation::Postgres(url) => url.clone(),
            StoreLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
        };
        Self { dir, plans, database_url, stripe_base: stripe.base(), key: BACKFILL_KEY.to_owned() }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_billing-server"));
        command
            .arg("stripe")
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("BILLING_DATA_DIR", self.dir.join("data"))
            .env("BILLING_PLANS", &self.plans)
            .env("STRIPE_SECRET_KEY", &self.key)
            .env("STRIPE_API_BASE", &self.stripe_base)
            .env_remove("BILLING_STRIPE_SYNC_RATE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn a_run_killed_half_way_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one() {
    let world = World::generate(LARGE, seed(2), now());
    let uninterrupted = spawn_app().await;
    let reference = FakeStripe::start(&world).await;
    backfill(&uninterrupted.store, &reference).await;

    let resumed = spawn_app().await;
    let stripe = FakeStripe::start(&world).await;
    let customer_pages = world.count(CUSTOMERS, |_| true).div_ceil(100);
    // Half-way through the subscriptions.
    let held_at = customer_pages + 13;
    stripe.hold_after_pages(held_at);
    let cli = Cli::new(&resumed.store, &stripe);
    let mut child =
        cli.command(&["sync", "--rate", "2000"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stripe.log().iter().any(|r| r.status == 0) {
        assert!(Instant::now() < deadline, "the run never reached page {held_at}");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let store = AnyStore::open(&resumed.store, 1).await.unwrap();
    let run = store.running_backfill_run().await.unwrap().expect("the killed run is unfinished");
    let last_served = stripe.log().into_iter().rfind(|r| r.status == 200).unwrap();
    assert_eq!(last_served.path, SUBSCRIPTIONS);
    assert_eq!(run.checkpoint.resource, "subscriptions");
    assert_eq!(run.checkpoint.after, last_served.last_id, "checkpointed after its last applied page");

    stripe.release();
    stripe.clear_log();
    let output = cli.run(&["sync", "--resume", "--rate", "2000"]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
    let after = run.checkpoint.after.clone().unwrap();
    assert!(stdout.contains(&format!("resuming subscriptions after {after}")), "{stdout}");
    assert!(stdout.contains("stripe sync finished"), "{stdout}");
    let first = &stripe.log()[0];
    assert_eq!(
        (first.path.as_str(), first.param("starting_after")),
        (SUBSCRIPTIONS, Some(after.as_str())),
        "not from the beginning"
    );
    assert!(!stripe.log().iter().any(|r| r.path == CUSTOMERS), "the customers were done");

    assert_same_state(&dump(&uninterrupted.db).await, &dump(&resumed.db).await, "resumed vs uninterrupted");
    assert_no_duplicates(&resumed.db).await;
    assert_eq!(row_counts(&resumed.db).await, row_counts(&uninterrupted.db).await, "no row twice, audit included");
    assert!(store.running_backfill_run().await.unwrap().is_none(), "finished");
    // The summary counts the whole run, both halves.
    let subscriptions = world.count(SUBSCRIPTIONS, |_| true);
    let line = stdout.lines().find(|l| l.starts_with("subscriptions ")).unwrap();
    let seen: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(seen, subscriptions as u64, "{stdout}");
}

/// Events for a few listed subscriptions, created after any list read:
/// canceled, moved to the other plan, or set to cancel at period end.
fn newer_updates(world: &World, rng: &mut Rng, at: i64) -> Vec<Value> {
    let mut events = Vec::new();
    for (n, sub) in world.lists[SUBSCRIPTIONS].iter().enumerate() {
        if sub["status"] != "active" || !rng.chance(40) {
            continue;
        }
        let mut newer = sub.clone();
        let kind = match rng.below(3) {
            0 => {
                newer["status"] = json!("canceled");
                newer["ended_at"] = json!(at);
                newer["canceled_at"] = json!(at);
                "customer.subscription.deleted"
            }
            1 => {
                let price = if sub["items"]["data"][0]["price"]["id"] == PRICE_PRO { PRICE_BASIC } else { PRICE_PRO };
                newer["items"]["data"][0]["price"]["id"] = json!(price);
                "customer.subscription.updated"
            }
            _ => {
                newer["cancel_at_period_end"] = json!(!sub["cancel_at_period_end"].as_bool().unwrap());
                "customer.subscription.updated"
            }
        };
        events.push(event(&format!("evt_newer_{n}_{}", sub["id"].as_str().unwrap()), kind, at + n as i64 % 7, newer));
    }
    events
}

#[tokio::test]
async fn a_backfill_concurrent_with_webhooks_for_the_same_objects_converges_to_the_newest_state() {
    for round in 0..3 {
        let seed = seed(3 + round);
        let mut rng = Rng::new(seed);
        let world = World::generate(300, seed, now());
        let mut events = world.events.clone();
        events.extend(newer_updates(&world, &mut rng, now() + 120));
        rng.shuffle(&mut events);

        let truth = spawn_app().await;
        deliver_all(&truth, &events, 8).await;

        // The lists show every object as it was before the newer updates.
        let app = spawn_app().await;
        let stripe = FakeStripe::start(&world).await;
        // Slow enough (15 requests in about one to two seconds) that the
        // late deliveries arrive between its pages.
        let engine = backfill_engine(&app.store, &stripe, 8 + rng.below(8) as u32).await;
        let split = rng.below(events.len() as u64 / 2) as usize;
        let (early, late) = events.split_at(split);
        deliver_all(&app, early, 8).await;
        let (summary, ()) = tokio::join!(
            async { engine.backfill_stripe(&BackfillOptions::default(), &mut ()).await.expect("backfill") },
            deliver_all(&app, late, 8),
        );
        eprintln!("round {round}: {split} events before the backfill, {} during it; {:?}", late.len(), summary.total());
        assert_same_state(&dump(&truth.db).await, &dump(&app.db).await, &format!("round {round} (seed {seed})"));
        assert_no_duplicates(&app.db).await;
    }
}

#[tokio::test]
async fn a_backfill_since_a_day_asks_for_newer_objects_only_at_twenty_requests_a_second_by_default() {
    let world = World::generate(200, seed(7), now());
    let app = spawn_app().await;
    let stripe = FakeStripe::start(&world).await;
    let cli = Cli::new(&app.store, &stripe);
    // Half of the customers were created after this.
    let middle = world.lists[CUSTOMERS][100]["created"].as_i64().unwrap();
    let since = time::OffsetDateTime::from_unix_timestamp(middle).unwrap();
    let since_text = since.format(&time::format_description::well_known::Rfc3339).unwrap();
    let output = cli.run(&["sync", "--since", &since_text]).await;
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));

    let log = stripe.log();
    assert!(log.len() >= 6, "{} requests", log.len());
    assert!(log.iter().all(|r| r.param("created[gte]") == Some(&middle.to_string()[..])), "{log:?}");
    // Spaced by the limiter when they leave: on arrival one may be a little
    // late and the next on time, but never bunched, and never more than
    // 20 a second over the run.
    for pair in log.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(25), "two requests {gap:?} apart at 20/s");
    }
    let span = log.last().unwrap().at - log[0].at;
    let least = Duration::from_millis(50) * (log.len() as u32 - 2);
    assert!(span >= least, "{} requests in {span:?}: faster than 20/s", log.len());
    let listed = world.count(CUSTOMERS, |c| c["created"].as_i64().unwrap() >= middle);
    // Addresses come from the customers list only (an invoice or a
    // subscription of an older customer creates its row without one).
    let with_email = app.db.int("SELECT count(*) FROM customers WHERE email IS NOT NULL").await;
    assert_eq!(with_email as usize, listed, "only the newer customers");
    // Not a terminal: plain progress lines, then the summary.
    assert!(stdout.contains(&format!("lists objects created since {since_text}")), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("customers: ") && l.contains(" seen, ")), "{stdout}");
    assert!(stdout.contains("stripe sync finished") && stdout.contains("total"), "{stdout}");

    // Resuming needs an interrupted run with the same --since.
    let output = cli.run(&["sync", "--resume"]).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("no interrupted backfill to resume"), "{}", text(&output.stderr));
    let store = AnyStore::open(&app.store, 1).await.unwrap();
    let checkpoint = BackfillCheckpoint { resource: "invoices".into(), after: None, counts: json!({}) };
    store.start_backfill_run(uuid::Uuid::new_v4(), Some(middle), &checkpoint).await.unwrap();
    let output = cli.run(&["sync", "--resume", "--since", "2020-01-01"]).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("2020-01-01") && stderr.contains(&since_text), "{stderr}");
}

#[tokio::test]
async fn a_refused_key_stops_the_run_with_a_clear_error_that_does_not_show_the_key() {
    let world = World::generate(5, seed(8), now());
    let app = spawn_app().await;
    let stripe = FakeStripe::start(&world).await;
    let mut cli = Cli::new(&app.store, &stripe);
    cli.key = "sk_test_wrong_key_9876".into();
    for (args, code) in [(&["sync"][..], 1), (&["check-plans"][..], 2)] {
        let output = cli.run(args).await;
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains("STRIPE_SECRET_KEY") && stderr.contains("401"), "{args:?}: {stderr}");
        assert!(!stderr.contains("wrong_key") && !stdout.contains("wrong_key"), "the key is shown: {stderr}");
    }
    assert_eq!(stripe.log().len(), 2, "a refused key is not retried");
    assert_eq!(app.count("customers").await, 0);
}

#[tokio::test]
async fn check_plans_reports_missing_inactive_and_unlisted_prices_and_exits_non_zero() {
    let mut world = World::generate(30, seed(9), now());
    let legacy = "price_legacy_2019";
    let prices = world.lists.get_mut(PRICES).unwrap();
    prices.iter_mut().find(|p| p["id"] == PRICE_BASIC).unwrap()["active"] = json!(false);
    prices.push(json!({ "id": legacy, "object": "price", "active": true, "created": 1 }));
    let subscriptions = world.lists.get_mut(SUBSCRIPTIONS).unwrap();
    let mut moved = 0;
    for sub in subscriptions.iter_mut().take(6) {
        sub["items"]["data"][0]["price"]["id"] = json!(legacy);
        if !["canceled", "incomplete_expired"].contains(&sub["status"].as_str().unwrap()) {
            moved += 1;
        }
    }
    let app = spawn_app().await;
    let stripe = FakeStripe::start(&world).await;
    let cli = Cli::new(&app.store, &stripe);
    plans_file(&cli.dir, &[("pro", PRICE_PRO, 3), ("basic", PRICE_BASIC, 1), ("team", "price_team", 10)]);
    let output = cli.run(&["check-plans"]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{}", text(&output.stderr));
    assert!(stdout.contains("missing: plan \"team\" names price price_team"), "{stdout}");
    assert!(stdout.contains(&format!("inactive: plan \"basic\" names price {PRICE_BASIC}")), "{stdout}");
    assert!(
        stdout.contains(&format!("unlisted: price {legacy} is used by {moved} running subscription(s)")),
        "{stdout}"
    );
    let paths: Vec<String> = stripe.log().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, [PRICES, SUBSCRIPTIONS], "one page each");
    assert_eq!(stripe.log()[1].param("status"), Some("all"));
    assert_eq!(stripe.log()[0].param("active"), None, "active and inactive prices");

    // All good: exit 0.
    let world = World::generate(30, seed(10), now());
    let stripe = FakeStripe::start(&world).await;
    let cli = Cli::new(&app.store, &stripe);
    let output = cli.run(&["check-plans"]).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", text(&output.stderr));
    assert!(stdout.contains("ok: every plan's price is active in Stripe"), "{stdout}");
}
