//! A Stripe account for the backfill tests: its objects as the list
//! endpoints return them (the basil shapes webhooks carry), the webhook
//! events that would have told us the same, and a local server that
//! answers like Stripe's list API (pagination, filters, faults), recording
//! every request it gets.

use crate::helpers::*;
use crate::lifecycles::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

pub const BACKFILL_KEY: &str = "sk_test_backfill_0123456789";
const DAY: i64 = 24 * 3600;

/// Every list the backfill and the plan check read.
pub const CUSTOMERS: &str = "/v1/customers";
pub const SUBSCRIPTIONS: &str = "/v1/subscriptions";
pub const INVOICES: &str = "/v1/invoices";
pub const SESSIONS: &str = "/v1/checkout/sessions";
pub const PRICES: &str = "/v1/prices";

/// One Stripe account: objects by list path, and the webhook events that
/// reported them, oldest first.
pub struct World {
    pub lists: HashMap<&'static str, Vec<Value>>,
    pub events: Vec<Value>,
}

/// Subscription statuses, in the proportions the world uses.
const STATUSES: [&str; 10] = [
    "active",
    "active",
    "active",
    "trialing",
    "past_due",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "unpaid",
    "paused",
];

impl World {
    /// `n` customers, each with a subscription (of every status, on either
    /// plan's price), their paid invoices (one or two) and open ones,
    /// subscription-mode Checkout Sessions for all and paid one-time ones
    /// for some, and sessions never completed. The user id travels in the
    /// customer's metadata, the subscription's, or only the checkout's.
    /// Every object was created before `now`; past-due ones recently (their
    /// grace runs).
    pub fn generate(n: usize, seed: u64, now: i64) -> Self {
        let mut rng = Rng::new(seed);
        let mut world = World { lists: HashMap::new(), events: Vec::new() };
        let start = now - 200 * DAY;
        let tag = format!("{seed:x}");
        for i in 0..n {
            let at = start + i as i64 * 60;
            let user = format!("user_{tag}_{i}");
            let (cus, sub) = (format!("cus_{tag}_{i}"), format!("sub_{tag}_{i}"));
            let link = i % 3;
            let customer = json!({
                "id": cus, "object": "customer", "created": at, "email": format!("{user}@example.com"),
                "metadata": if link == 0 { json!({ "user_id": user }) } else { json!({}) },
            });
            world.emit("customer.created", at, &customer, &format!("cus_{i}"));
            world.push(CUSTOMERS, customer);

            let status = STATUSES[rng.below(STATUSES.len() as u64) as usize];
            let price = if rng.chance(50) { PRICE_PRO } else { PRICE_BASIC };
            let created = at + 10;
            let mut object = subscription(&sub, &cus, status, price, (link == 1).then_some(user.as_str()));
            object["created"] = json!(created);
            object["items"]["data"][0]["current_period_start"] = json!(period_start());
            object["items"]["data"][0]["current_period_end"] = json!(period_end());
            if status == "active" && rng.chance(20) {
                object["cancel_at_period_end"] = json!(true);
                object["cancel_at"] = json!(period_end());
            }
            if status == "trialing" {
                object["trial_end"] = json!(period_end());
            }
            let first = |object: &Value, status: &str| {
                let mut earlier = object.clone();
                earlier["status"] = json!(status);
                earlier
            };
            match status {
                "past_due" => {
                    world.emit(
                        "customer.subscription.created",
                        created,
                        &first(&object, "active"),
                        &format!("sub_{i}"),
                    );
                    world.emit("customer.subscription.updated", now - 2 * DAY, &object, &format!("sub_late_{i}"));
                }
                "canceled" => {
                    let ended = now - 5 * DAY;
                    object["canceled_at"] = json!(ended);
                    object["ended_at"] = json!(ended);
                    world.emit(
                        "customer.subscription.created",
                        created,
                        &first(&object, "active"),
                        &format!("sub_{i}"),
                    );
                    world.emit("customer.subscription.deleted", ended, &object, &format!("sub_late_{i}"));
                }
                "incomplete_expired" => {
                    world.emit(
                        "customer.subscription.created",
                        created,
                        &first(&object, "incomplete"),
                        &format!("sub_{i}"),
                    );
                    world.emit("customer.subscription.updated", created + DAY, &object, &format!("sub_late_{i}"));
                }
                "unpaid" | "paused" => {
                    world.emit(
                        "customer.subscription.created",
                        created,
                        &first(&object, "active"),
                        &format!("sub_{i}"),
                    );
                    world.emit("customer.subscription.updated", now - 3 * DAY, &object, &format!("sub_late_{i}"));
                }
                _ => world.emit("customer.subscription.created", created, &object, &format!("sub_{i}")),
            }
            world.push(SUBSCRIPTIONS, object);

            let amount = if price == PRICE_PRO { 1900 } else { 900 };
            let paid = !["incomplete", "incomplete_expired"].contains(&status);
            let invoices = if paid { 1 + rng.below(2) } else { 0 };
            for k in 0..invoices {
                let created = created + 20 + k as i64 * 30 * DAY;
                let mut invoice = invoice(&format!("in_{tag}_{i}_{k}"), &cus, &sub, amount);
                invoice["created"] = json!(created);
                invoice["status"] = json!("paid");
                invoice["status_transitions"] = json!({ "paid_at": created + 1 });
                world.emit("invoice.paid", created + 1, &invoice, &format!("in_{i}_{k}"));
                world.push(INVOICES, invoice);
            }
            if !paid || rng.chance(10) {
                // Open: its payment failed or waits; never listed as paid.
                let mut open = invoice(&format!("in_{tag}_{i}_open"), &cus, &sub, amount);
                open["created"] = json!(created + 15);
                open["status"] = json!("open");
                open["status_transitions"] = json!({ "paid_at": null });
                world.push(INVOICES, open);
            }

            let mut session = checkout(&format!("cs_{tag}_{i}"), &cus, &sub, &user);
            session["created"] = json!(created - 5);
            session["status"] = json!("complete");
            if link != 2 {
                session["client_reference_id"] = Value::Null;
            }
            world.emit("checkout.session.completed", created - 5, &session, &format!("cs_{i}"));
            world.push(SESSIONS, session);
            if i % 3 != 1 {
                // A one-time purchase, paid, naming the user.
                let mut one_time = checkout(&format!("cs_pay_{tag}_{i}"), &cus, &sub, &user);
                one_time["mode"] = json!("payment");
                one_time["subscription"] = Value::Null;
                one_time["created"] = json!(created + 40);
                one_time["status"] = json!("complete");
                world.emit("checkout.session.completed", created + 40, &one_time, &format!("cs_pay_{i}"));
                world.push(SESSIONS, one_time);
            }
            if i % 20 == 0 {
                let mut abandoned = checkout(&format!("cs_open_{tag}_{i}"), &cus, &sub, &user);
                abandoned["created"] = json!(created + 50);
                abandoned["status"] = json!(if i % 40 == 0 { "open" } else { "expired" });
                abandoned["payment_status"] = json!("unpaid");
                world.push(SESSIONS, abandoned);
            }
        }
        let prices = [(PRICE_PRO, true), (PRICE_BASIC, true)];
        for (n, (id, active)) in prices.into_iter().enumerate() {
            world.push(PRICES, json!({ "id": id, "object": "price", "active": active, "created": start + n as i64 }));
        }
        world.events.sort_by_key(|e| e["created"].as_i64().unwrap());
        world
    }

    fn push(&mut self, list: &'static str, object: Value) {
        self.lists.entry(list).or_default().push(object);
    }

    fn emit(&mut self, kind: &str, created: i64, object: &Value, id: &str) {
        let id = format!("evt_{}_{id}", object["id"].as_str().unwrap());
        self.events.push(event(&id, kind, created, object.clone()));
    }

    /// How many objects a list holds that the backfill asks for.
    pub fn count(&self, list: &str, keep: impl Fn(&Value) -> bool) -> usize {
        self.lists.get(list).map_or(0, |objects| objects.iter().filter(|o| keep(o)).count())
    }
}

/// What one request got.
#[derive(Debug, Clone)]
pub struct Served {
    pub at: Instant,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub stripe_version: Option<String>,
    pub status: u16,
    /// The id of the last object of the page served, if any.
    pub last_id: Option<String>,
}

impl Served {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A fault to answer a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: 1`.
    TooManyRequests,
    /// 500.
    ServerError,
}

#[derive(Default)]
struct State {
    lists: HashMap<String, Vec<Value>>,
    log: Vec<Served>,
    /// By request number (0 is the first).
    faults: HashMap<usize, Fault>,
    /// From this page on (counting pages served), answers never come.
    hold_after_pages: Option<usize>,
}

/// A local server answering like Stripe's list API.
pub struct FakeStripe {
    pub server: MockServer,
    state: Arc<Mutex<State>>,
}

impl FakeStripe {
    pub async fn start(world: &World) -> Self {
        let mut state = State::default();
        for (path, objects) in &world.lists {
            let mut objects = objects.clone();
            // Stripe lists newest first.
            objects.sort_by(|a, b| {
                (b["created"].as_i64(), b["id"].as_str()).cmp(&(a["created"].as_i64(), a["id"].as_str()))
            });
            state.lists.insert((*path).to_owned(), objects);
        }
        let state = Arc::new(Mutex::new(state));
        let server = MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::method("GET"))
            .respond_with(Responder(state.clone()))
            .mount(&server)
            .await;
        Self { server, state }
    }

    pub fn base(&self) -> String {
        self.server.uri()
    }

    /// Answers request number `n` (0 is the first) with `fault`.
    pub fn fault_at(&self, n: usize, fault: Fault) {
        self.state.lock().unwrap().faults.insert(n, fault);
    }

    /// Once `pages` pages have been served, answers nothing more.
    pub fn hold_after_pages(&self, pages: usize) {
        self.state.lock().unwrap().hold_after_pages = Some(pages);
    }

    /// Answers again.
    pub fn release(&self) {
        self.state.lock().unwrap().hold_after_pages = None;
    }

    pub fn log(&self) -> Vec<Served> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

struct Responder(Arc<Mutex<State>>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.0.lock().unwrap();
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut served = Served {
            at: Instant::now(),
            path: request.url.path().to_owned(),
            query: request.url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
            authorization: header("authorization"),
            stripe_version: header("stripe-version"),
            status: 200,
            last_id: None,
        };
        let number = state.log.len();
        let error = |status: u16, kind: &str, message: &str| {
            ResponseTemplate::new(status).set_body_json(json!({ "error": { "type": kind, "message": message } }))
        };
        let response = if served.authorization.as_deref() != Some(&format!("Bearer {BACKFILL_KEY}")) {
            served.status = 401;
            error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****6789")
        } else if let Some(fault) = state.faults.remove(&number) {
            match fault {
                Fault::TooManyRequests => {
                    served.status = 429;
                    error(429, "rate_limit_error", "Too many requests").insert_header("Retry-After", "1")
                }
                Fault::ServerError => {
                    served.status = 500;
                    error(500, "api_error", "Something went wrong on Stripe's end")
                }
            }
        } else if state
            .hold_after_pages
            .is_some_and(|pages| state.log.iter().filter(|s| s.status == 200).count() >= pages)
        {
            served.status = 0;
            ResponseTemplate::new(200).set_delay(Duration::from_secs(600))
        } else {
            match page(state.lists.get(&served.path), &served) {
                Ok((body, last_id)) => {
                    served.last_id = last_id;
                    ResponseTemplate::new(200).set_body_json(body)
                }
                Err(message) => {
                    served.status = 400;
                    error(400, "invalid_request_error", &message)
                }
            }
        };
        state.log.push(served);
        response
    }
}

/// One page of a list, as Stripe would cut it.
fn page(objects: Option<&Vec<Value>>, request: &Served) -> Result<(Value, Option<String>), String> {
    let objects = objects.ok_or_else(|| format!("Unrecognized request URL (GET: {})", request.path))?;
    let status = request.param("status");
    let since: Option<i64> =
        request.param("created[gte]").map(|v| v.parse().map_err(|_| "bad created[gte]")).transpose()?;
    let matching: Vec<&Value> = objects
        .iter()
        .filter(|o| match (request.path.as_str(), status) {
            // Without `status`, Stripe leaves ended subscriptions out.
            (SUBSCRIPTIONS, None) => !["canceled", "incomplete_expired"].contains(&o["status"].as_str().unwrap()),
            (SUBSCRIPTIONS, Some("all")) | (_, None) => true,
            (_, Some(status)) => o["status"] == status,
        })
        .filter(|o| since.is_none_or(|since| o["created"].as_i64().unwrap() >= since))
        .collect();
    let limit: usize = request.param("limit").map_or(Ok(10), str::parse).map_err(|_| "bad limit")?;
    if !(1..=100).contains(&limit) {
        return Err("limit must be between 1 and 100".into());
    }
    let from = match request.param("starting_after") {
        None => 0,
        Some(after) => {
            matching.iter().position(|o| o["id"] == after).ok_or_else(|| format!("No such object: '{after}'"))? + 1
        }
    };
    let data: Vec<Value> = matching.iter().skip(from).take(limit).map(|o| (*o).clone()).collect();
    let last_id = data.last().map(|o| o["id"].as_str().unwrap().to_owned());
    let has_more = from + data.len() < matching.len();
    Ok((json!({ "object": "list", "url": request.path, "has_more": has_more, "data": data }), last_id))
}
