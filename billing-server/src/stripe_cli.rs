//! `billing-server stripe sync` and `billing-server stripe check-plans`: the
//! terminal side (flags, progress, the summary, exit codes). The work is
//! billing-core's: [`Billing::backfill_stripe`] and [`Billing::check_plans`].

use crate::config::Config;
use anyhow::{bail, Context};
use billing_core::plan_check::{PlanCheck, PlanCheckError};
use billing_core::storage::any::AnyStore;
use billing_core::storage::Store;
use billing_core::stripe::client::StripeError;
use billing_core::stripe::StripeClient;
use billing_core::stripe_sync::backfill::{
    BackfillError, BackfillOptions, BackfillProgress, BackfillStart, BackfillSummary, Counts, Resource,
};
use billing_core::Billing;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::num::NonZeroU32;
use std::time::Duration;
use time::OffsetDateTime;

/// Retries of a failed Stripe call (429, 5xx, network) before the run
/// stops: with the doubling backoff from [`FIRST_BACKOFF`] (or longer, as
/// `Retry-After` asks) about 15 s of Stripe being unavailable.
const RETRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// `check-plans`' exit code when it found problems (as `diff` does for
/// differences).
pub const PROBLEMS_FOUND: i32 = 1;
/// `check-plans`' exit code when it could not check (as `diff` does for trouble).
pub const CHECK_FAILED: i32 = 2;

/// Reads `--since`: a day (`2024-01-31`, from midnight UTC) or an RFC 3339
/// time (`2024-01-31T12:00:00Z`).
pub fn parse_since(text: &str) -> anyhow::Result<OffsetDateTime> {
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &day) {
        return Ok(date.midnight().assume_utc());
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--since must be a day (2024-01-31) or an RFC 3339 time, not {text:?}"))
}

/// The engine with a Stripe client for a run: rate-limited to `rate`
/// requests per second (`--rate`, else `BILLING_STRIPE_SYNC_RATE`) and
/// patient with an unavailable Stripe.
async fn engine(config: &Config, rate: Option<u32>, command: &str) -> anyhow::Result<Billing<AnyStore>> {
    let Some(key) = &config.stripe_secret_key else {
        bail!(
            "STRIPE_SECRET_KEY is not set: `{command}` reads Stripe with it (a restricted key that may read \
             customers, subscriptions, invoices, Checkout Sessions and prices is enough)"
        );
    };
    let rate = NonZeroU32::new(rate.unwrap_or(config.stripe_sync_rate)).context("--rate must be at least 1")?;
    let stripe = StripeClient::new(key.expose_secret(), config.stripe_api_base.clone())
        .with_retries(RETRIES, FIRST_BACKOFF)
        .with_rate_limit(rate);
    let chain = |e: &(dyn std::error::Error + 'static)| anyhow::anyhow!(billing_core::billing::error_chain(e));
    let store = AnyStore::open(&config.store, 2).await.map_err(|e| chain(&e)).context("cannot open the store")?;
    store.migrate().await.map_err(|e| chain(&e))?;
    crate::engine_with_stripe(store, config, Some(stripe))
}

/// `billing-server stripe sync [--since DATE] [--resume] [--rate N]`.
pub async fn sync(config: &Config, since: Option<&str>, resume: bool, rate: Option<u32>) -> anyhow::Result<()> {
    let since = since.map(parse_since).transpose()?;
    let billing = engine(config, rate, "stripe sync").await?;
    let mut progress: Box<dyn BackfillProgress> =
        if std::io::stderr().is_terminal() { Box::new(Bars::default()) } else { Box::new(Lines) };
    let summary = billing
        .backfill_stripe(&BackfillOptions { since, resume }, progress.as_mut())
        .await
        .map_err(|e| anyhow::anyhow!(describe_backfill_error(&e)))?;
    drop(progress);
    print!("{}", render_summary(&summary));
    Ok(())
}

/// `billing-server stripe check-plans [--rate N]`: prints the report;
/// returns the exit code ([`PROBLEMS_FOUND`] when anything is wrong).
pub async fn check_plans(config: &Config, rate: Option<u32>) -> i32 {
    let outcome = async {
        let billing = engine(config, rate, "stripe check-plans").await?;
        let plans = billing.plans().all().len();
        let check = billing.check_plans().await.map_err(|e| anyhow::anyhow!(describe_check_error(&e)))?;
        Ok::<_, anyhow::Error>((plans, check))
    }
    .await;
    match outcome {
        Ok((plans, check)) => {
            print!("{}", render_plan_check(plans, &check));
            if check.is_clean() {
                0
            } else {
                PROBLEMS_FOUND
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            CHECK_FAILED
        }
    }
}

/// What to tell the operator when Stripe refused or stayed away: a 401 is
/// the key (never shown), a 403 a restricted key without read access.
fn describe_stripe_error(what: &str, error: &StripeError) -> String {
    match error {
        StripeError::Api { status: 401, .. } => format!(
            "Stripe refused the API key while listing {what} (401): STRIPE_SECRET_KEY is wrong, revoked, or of \
             another account"
        ),
        StripeError::Api { status: 403, .. } => {
            format!("Stripe refused to list {what} (403): the key may not read them; give it read access")
        }
        StripeError::Unavailable(why) => {
            format!("Stripe stayed unavailable while listing {what}, after {RETRIES} retries: {why}")
        }
        other => format!("listing {what} from Stripe failed: {other}"),
    }
}

fn describe_backfill_error(error: &BackfillError) -> String {
    match error {
        BackfillError::Stripe { resource, source } => {
            let hint = "the run stopped at its last checkpoint; `billing-server stripe sync --resume` continues it";
            format!("{}; {hint}", describe_stripe_error(resource.as_str(), source))
        }
        other => billing_core::billing::error_chain(other),
    }
}

fn describe_check_error(error: &PlanCheckError) -> String {
    match error {
        PlanCheckError::Stripe { list, source } => describe_stripe_error(list, source),
        other => other.to_string(),
    }
}

/// One list's counts on one line.
fn counts_line(resource: Resource, counts: &Counts) -> String {
    format!(
        "{resource}: {} seen, {} created, {} updated, {} unchanged, {} skipped",
        counts.seen,
        counts.created,
        counts.updated,
        counts.unchanged,
        counts.skipped_total()
    )
}

fn start_line(start: &BackfillStart) -> String {
    let what = match start.since {
        Some(since) => format!("objects created since {}", billing_core::billing::rfc3339(since)),
        None => "every object".to_owned(),
    };
    let from = match &start.resumed_at {
        None => String::new(),
        Some((resource, None)) => format!(", resuming at the start of {resource}"),
        Some((resource, Some(after))) => format!(", resuming {resource} after {after}"),
    };
    format!("stripe sync: run {} lists {what}{from}", start.run_id)
}

/// Progress as plain lines on stdout (not a terminal: logs, CI).
struct Lines;

impl BackfillProgress for Lines {
    fn started(&mut self, start: &BackfillStart) {
        println!("{}", start_line(start));
    }

    fn page_applied(&mut self, resource: Resource, counts: &Counts) {
        println!("{}", counts_line(resource, counts));
    }

    fn resource_done(&mut self, resource: Resource, counts: &Counts) {
        println!("{} (done)", counts_line(resource, counts));
    }
}

/// Progress as a spinner per list on a terminal (stderr). Stripe's lists
/// do not say how long they are, so there is no bar to fill, only counts.
#[derive(Default)]
struct Bars {
    bars: BTreeMap<Resource, ProgressBar>,
}

impl Bars {
    fn bar(&mut self, resource: Resource) -> &ProgressBar {
        self.bars.entry(resource).or_insert_with(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("a valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }
}

impl BackfillProgress for Bars {
    fn started(&mut self, start: &BackfillStart) {
        eprintln!("{}", start_line(start));
    }

    fn resource_started(&mut self, resource: Resource, counts: &Counts) {
        self.bar(resource).set_message(counts_line(resource, counts));
    }

    fn page_applied(&mut self, resource: Resource, counts: &Counts) {
        self.bar(resource).set_message(counts_line(resource, counts));
    }

    fn resource_done(&mut self, resource: Resource, counts: &Counts) {
        self.bar(resource).finish_with_message(counts_line(resource, counts));
    }
}

/// The table a run ends with: every list's counts and the total, then the
/// skipped objects by why.
pub fn render_summary(summary: &BackfillSummary) -> String {
    let mut out = format!("stripe sync finished (run {}):\n", summary.run_id);
    let _ =
        writeln!(out, "{:<18} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "seen", "created", "updated", "unchanged", "skipped");
    let row = |out: &mut String, name: &str, c: &Counts| {
        let _ = writeln!(
            out,
            "{name:<18} {:>9} {:>9} {:>9} {:>9} {:>9}",
            c.seen,
            c.created,
            c.updated,
            c.unchanged,
            c.skipped_total()
        );
    };
    for (resource, counts) in &summary.per_resource {
        row(&mut out, resource.as_str(), counts);
    }
    row(&mut out, "total", &summary.total());
    let skipped: Vec<(Resource, &String, &u64)> = summary
        .per_resource
        .iter()
        .flat_map(|(resource, counts)| counts.skipped.iter().map(move |(why, n)| (*resource, why, n)))
        .collect();
    if !skipped.is_empty() {
        out.push_str("skipped, by why:\n");
        for (resource, why, n) in skipped {
            let _ = writeln!(out, "  {resource}: {n} {why}");
        }
    }
    out
}

/// What `check-plans` prints.
pub fn render_plan_check(plans: usize, check: &PlanCheck) -> String {
    let mut out = format!(
        "stripe check-plans: {plans} plan(s) against {} Stripe price(s) and {} subscription(s)\n",
        check.prices_seen, check.subscriptions_seen
    );
    for p in &check.missing {
        let _ = writeln!(out, "missing: plan {:?} names price {} that Stripe does not have", p.plan_id, p.price_id);
    }
    for p in &check.inactive {
        let _ = writeln!(out, "inactive: plan {:?} names price {}, inactive in Stripe", p.plan_id, p.price_id);
    }
    for (price, n) in &check.unlisted {
        let _ = writeln!(out, "unlisted: price {price} is used by {n} running subscription(s) but no plan names it");
    }
    if check.is_clean() {
        out.push_str("ok: every plan's price is active in Stripe, every running subscription's price is a plan's\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_day_or_an_rfc_3339_time() {
        assert_eq!(parse_since("2024-01-31").unwrap().unix_timestamp(), 1_706_659_200);
        assert_eq!(parse_since("2024-01-31T12:00:00Z").unwrap().unix_timestamp(), 1_706_702_400);
        assert_eq!(parse_since("2024-01-31T12:00:00+01:00").unwrap().unix_timestamp(), 1_706_698_800);
        let e = parse_since("yesterday").unwrap_err().to_string();
        assert!(e.contains("--since") && e.contains("yesterday"), "{e}");
    }

    #[test]
    fn a_refused_key_is_named_but_never_shown() {
        let refused = StripeError::Api {
            status: 401,
            kind: "invalid_request_error".into(),
            code: None,
            message: "Invalid API Key provided: sk_test_****1234".into(),
        };
        let text = describe_stripe_error("customers", &refused);
        assert!(text.contains("STRIPE_SECRET_KEY") && text.contains("401"), "{text}");
        assert!(!text.contains("sk_test"), "{text}");
    }

    #[test]
    fn the_summary_lists_every_resource_the_total_and_why_objects_were_skipped() {
        let mut summary = BackfillSummary::default();
        let mut counts = Counts::default();
        counts.add(billing_core::stripe_sync::ListedOutcome::Created);
        counts.add(billing_core::stripe_sync::ListedOutcome::Skipped("checkout session names no user"));
        summary.per_resource.insert(Resource::CheckoutSessions, counts);
        let text = render_summary(&summary);
        assert!(text.contains("checkout_sessions") && text.contains("total"), "{text}");
        assert!(text.contains("checkout_sessions: 1 checkout session names no user"), "{text}");
    }
}
