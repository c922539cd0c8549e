//! Dashboard authorization, as a matrix: every route that takes the dashboard
//! JWT — read from the router's own `ROUTES`, so a new route cannot be left
//! out — against no token, bad tokens (bad signature, expired, …) and another
//! user's valid token aimed at someone else's records. Each answer is a
//! refusal (401/403/404, `{"error":{"code","message"}}`) or, for routes that
//! only ever show the caller's own records, nothing of the other user's; no
//! answer names the other user's records, none of them changes, and Stripe
//! is never called on someone else's behalf.

use crate::helpers::*;
use billing_server::routes::{Route, ROUTES};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use wiremock::{MockServer, ResponseTemplate};

/// How a route authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No credentials: operations, activation, validation, the public key.
    Open,
    /// `Stripe-Signature`.
    StripeSignature,
    /// A device's activation token.
    ActivationToken,
    /// The dashboard JWT. `user_id`: the route reads or acts for the user
    /// named by `?user_id=` (admins only; a non-admin naming anyone else
    /// gets 403), otherwise only ever for the caller.
    Dashboard { user_id: bool },
    /// A device's activation token, or the license owner's (or an admin's)
    /// dashboard JWT.
    DeviceOrDashboard,
    /// An admin API token (see `admin_auth.rs`, which tests that door).
    AdminToken,
}

/// Every route's access. The match is exhaustive, with no catch-all: a new
/// `Route` does not compile until it is placed here, and once it takes the
/// dashboard JWT, both matrices below cover it.
fn access(route: Route) -> Access {
    use Access::*;
    match route {
        Route::Healthz | Route::Readyz | Route::Metrics => Open,
        Route::Activate | Route::Trial | Route::Validate | Route::PublicKey => Open,
        Route::StripeWebhook => StripeSignature,
        Route::Heartbeat | Route::Deactivate => ActivationToken,
        Route::Events => DeviceOrDashboard,
        Route::CurrentSubscription
        | Route::SubscriptionHistory
        | Route::BillingHistory
        | Route::PaymentHistory
        | Route::Licenses
        | Route::Cancel
        | Route::Reactivate
        | Route::ChangePlan
        | Route::Checkout
        | Route::BillingPortal
        | Route::PaymentMethod
        | Route::SyncSubscriptions
        | Route::Terminals
        | Route::OfflineActivation => Dashboard { user_id: true },
        Route::Plans | Route::DeleteTerminal | Route::RenameTerminal => Dashboard { user_id: false },
        // Webhooks to the vendor (issue 14).
        Route::CreateWebhookEndpoint
        | Route::WebhookEndpoints
        | Route::DeleteWebhookEndpoint
        | Route::WebhookDeliveries
        | Route::RetryWebhookDelivery => AdminToken,
        // Admin reads (issue 14).
        Route::AdminStripeEvents
        | Route::AdminReplayStripeEvent
        | Route::AdminAudit
        | Route::AdminCustomers
        | Route::AdminLicenses
        | Route::AdminLicense
        | Route::AdminLicenseExport
        // Admin license writes (issue 14).
        | Route::AdminIssueLicense
        | Route::AdminPatchLicense
        | Route::AdminSuspendLicense
        | Route::AdminReinstateLicense
        | Route::AdminRevokeLicense
        | Route::AdminRenewLicense
        | Route::AdminDeleteDevice
        | Route::AdminResetDevices => AdminToken,
        // The customer portal (issue 19): the one-time code is the credential.
        Route::AdminCreatePortalSession => AdminToken,
        Route::PortalSession | Route::PortalPage | Route::PageAsset | Route::ConsolePage => Open,
        Route::AdminToken | Route::AdminOverview => AdminToken,
    }
}

/// Every route that accepts a dashboard JWT, from the router's table:
/// (method, path pattern, route).
fn dashboard_routes() -> Vec<(reqwest::Method, &'static str, Route)> {
    ROUTES
        .iter()
        .filter(|(_, _, route)| matches!(access(*route), Access::Dashboard { .. } | Access::DeviceOrDashboard))
        .map(|(method, pattern, route)| (method.as_str().parse().unwrap(), *pattern, *route))
        .collect()
}

/// A well-formed body, so that only authorization can refuse the request.
fn body_for(route: Route) -> Value {
    match route {
        Route::ChangePlan => json!({ "plan": "basic" }),
        Route::Checkout => {
            json!({ "plan": "basic", "success_url": "https://app.example/ok", "cancel_url": "https://app.example/no" })
        }
        Route::BillingPortal => json!({ "return_url": "https://app.example/account" }),
        Route::RenameTerminal => json!({ "name": "renamed by someone else" }),
        // A well-formed air-gapped request for a license no one holds.
        Route::OfflineActivation => json!({ "request": ghost_offline_request() }),
        _ => json!({}),
    }
}

/// An air-gapped machine's request naming a license no one holds.
fn ghost_offline_request() -> String {
    billing_core::domain::offline_activation::OfflineActivationRequest {
        license_key_sha256: vec![7; 32],
        fingerprint: "fp-ghost-bench".into(),
        name: None,
        platform: None,
        app_version: None,
    }
    .encode()
}

/// The path of `pattern` with its parameters filled in.
fn fill(pattern: &str, device_id: &str, license_key: &str) -> String {
    let path = pattern.replace("{id}", device_id).replace("{licenseKey}", license_key);
    assert!(!path.contains('{'), "{pattern}: a path parameter this test cannot fill yet");
    path
}

const ALICE: &str = "alice_5f0c2e";
const BOB: &str = "bob_93e2d1";
const FINGERPRINT: &str = "fp-alice-workstation-7731";
const INVOICE: &str = "in_alice_5f0c2e";

/// Alice, who has a subscription, a license, an active device and a payment.
struct Alice {
    license_key: String,
    device_id: String,
    activation_token: String,
    /// Everything that identifies Alice or her records.
    identifiers: Vec<String>,
}

impl Alice {
    async fn create(app: &TestApp) -> Self {
        let license_key = app.issue_license(ALICE, PRICE_PRO).await;
        let activation = app.activate_ok(&license_key, FINGERPRINT).await;
        let (sub, cus) = (format!("sub_{ALICE}"), format!("cus_{ALICE}"));
        app.deliver(&event("evt_alice_paid", "invoice.paid", now() - 30, invoice(INVOICE, &cus, &sub, 1900))).await;
        let subscription = app.get_current_subscription(ALICE).await;
        let license = app.get_licenses(ALICE).await[0].clone();
        let payments = app.get_payments(ALICE).await;
        assert_eq!((license["devices"].as_array().map(Vec::len), payments.len()), (Some(1), 1), "Alice's records");
        let device_id = activation["device"]["id"].as_str().unwrap().to_owned();
        let activation_token = activation["activation_token"].as_str().unwrap().to_owned();
        let text = |v: &Value| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned();
        let identifiers = vec![
            ALICE.to_owned(),
            license_key.clone(),
            text(&license["id"]),
            device_id.clone(),
            activation_token.clone(),
            FINGERPRINT.to_owned(),
            text(&subscription["id"]),
            text(&subscription["stripe_subscription_id"]),
            sub,
            cus,
            format!("si_sub_{ALICE}"),
            text(&payments[0]["id"]),
            INVOICE.to_owned(),
        ];
        Self { license_key, device_id, activation_token, identifiers }
    }

    /// Everything of Alice's the service holds, as she sees it.
    async fn state(&self, app: &TestApp) -> Value {
        json!({
            "subscription": app.get_current_subscription(ALICE).await,
            "licenses": app.get_licenses(ALICE).await,
            "history": app.get_history(ALICE).await,
            "payments": app.get_payments(ALICE).await,
            "audit_rows": app.count("subscription_changes").await,
            "outbox_rows": app.count("outbox_events").await,
        })
    }

    /// Alice's device still works.
    async fn assert_device_alive(&self, app: &TestApp) {
        assert_eq!(app.heartbeat(&self.activation_token).await.status(), 200, "Alice's device was disturbed");
    }

    fn path(&self, pattern: &str) -> String {
        fill(pattern, &self.device_id, &self.license_key)
    }
}

/// An app with a Stripe mock, and Alice.
async fn app_with_alice() -> (TestApp, MockServer, Alice) {
    let stripe = MockServer::start().await;
    let app = spawn_app_with(Options { stripe_api_base: Some(stripe.uri()), ..Default::default() }).await;
    let alice = Alice::create(&app).await;
    assert!(stripe.received_requests().await.unwrap().is_empty());
    (app, stripe, alice)
}

async fn send(
    app: &TestApp,
    method: &reqwest::Method,
    path: &str,
    route: Route,
    token: Option<&str>,
) -> reqwest::Response {
    send_with_tokens(app, method, path, route, &Vec::from_iter(token.map(str::to_owned))).await
}

/// Sends one `Authorization: Bearer` header per token (none, one, or several).
async fn send_with_tokens(
    app: &TestApp,
    method: &reqwest::Method,
    path: &str,
    route: Route,
    tokens: &[String],
) -> reqwest::Response {
    let mut request = app.http.request(method.clone(), app.url(path)).json(&body_for(route));
    for token in tokens {
        // `header` appends: several tokens become several headers.
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    request.send().await.unwrap()
}

/// Reads an answer, asserting that neither its headers nor its body name
/// any of Alice's records: (status, JSON body).
async fn read_answer(response: reqwest::Response, what: &str, alice: &Alice) -> (u16, Value) {
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let text = response.text().await.unwrap();
    for id in &alice.identifiers {
        assert!(!text.contains(id.as_str()), "{what}: the answer names Alice's {id}: {text}");
        assert!(!headers.contains(id.as_str()), "{what}: a header names Alice's {id}: {headers}");
    }
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    (status, body)
}

/// Exactly `{"error":{"code","message"}}` with this status and code.
fn assert_error(what: &str, (status, body): &(u16, Value), want_status: u16, want_code: &str) {
    assert_eq!((*status, body["error"]["code"].as_str()), (want_status, Some(want_code)), "{what}: {body}");
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<BTreeSet<_>>());
    assert_eq!(keys(body), Some(BTreeSet::from(["error".to_owned()])), "{what}: {body}");
    assert_eq!(keys(&body["error"]), Some(BTreeSet::from(["code".to_owned(), "message".to_owned()])), "{what}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
}

#[tokio::test]
async fn every_dashboard_route_refuses_bad_tokens_with_401_json() {
    let (app, stripe, alice) = app_with_alice().await;
    let before = alice.state(&app).await;
    let valid = jwt_for(ALICE);
    let tampered = {
        // Alice's own token with one character of its signature changed.
        let (unsigned, signature) = valid.rsplit_once('.').unwrap();
        let mut signature = signature.as_bytes().to_vec();
        signature[5] = if signature[5] == b'A' { b'B' } else { b'A' };
        format!("{unsigned}.{}", String::from_utf8(signature).unwrap())
    };
    let critical = {
        // RFC 7515 §4.1.11: an extension the token is invalid without.
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.crit = Some(vec!["x-bound-device".into()]);
        header.extras.insert("x-bound-device", "device-7");
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        jsonwebtoken::encode(&header, &json!({"sub": ALICE, "exp": now() + 600}), &key).unwrap()
    };
    // Every token claims to be Alice: if one were accepted, her records would
    // show. Each case is the Authorization headers sent, one per token.
    let bad_tokens: Vec<(&str, Vec<String>)> = vec![
        ("no token", vec![]),
        ("not a jwt", vec!["garbage".into()]),
        ("wrong secret", vec![token(&json!({"sub": ALICE, "exp": now() + 600}), "another-secret")]),
        ("tampered signature", vec![tampered]),
        ("expired", vec![token(&json!({"sub": ALICE, "exp": now() - 120}), JWT_SECRET)]),
        ("no exp", vec![token(&json!({"sub": ALICE}), JWT_SECRET)]),
        ("no sub", vec![token(&json!({"exp": now() + 600}), JWT_SECRET)]),
        ("empty sub", vec![token(&json!({"sub": "", "exp": now() + 600}), JWT_SECRET)]),
        (
            "alg none",
            vec![format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&json!({"sub":ALICE,"exp":now()+600}).to_string())
            )],
        ),
        // Beyond the 5 s leeway.
        ("nbf in the future", vec![token(&json!({"sub": ALICE, "exp": now() + 600, "nbf": now() + 120}), JWT_SECRET)]),
        ("unknown crit header", vec![critical]),
        ("NUL in sub", vec![token(&json!({"sub": format!("{ALICE}\u{0}"), "exp": now() + 600}), JWT_SECRET)]),
        ("two Authorization headers", vec![valid.clone(), valid.clone()]),
    ];
    let routes = dashboard_routes();
    for (method, pattern, route) in &routes {
        let route_path = alice.path(pattern);
        for (case, token) in &bad_tokens {
            let what = format!("{method} {pattern} with {case}");
            let response = send_with_tokens(&app, method, &route_path, *route, token).await;
            assert_eq!(response.status(), 401, "{what}");
            let answer = read_answer(response, &what, &alice).await;
            assert_error(&what, &answer, 401, "UNAUTHORIZED");
            let body = &answer.1;
            assert_eq!(body["error"]["code"], "UNAUTHORIZED", "{route_path} with {case}");
            assert!(body["error"]["message"].is_string());
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.contains(JWT_SECRET) && !message.contains("another-secret"), "{message}");
        }
    }
    assert!(stripe.received_requests().await.unwrap().is_empty(), "Stripe called without a valid token");
    assert_eq!(alice.state(&app).await, before, "Alice's records changed");
    alice.assert_device_alive(&app).await;
    assert!(routes.len() >= 17, "the dashboard has lost routes: {routes:?}");
}

/// What Bob's request must get.
#[derive(Debug)]
enum Expect {
    /// Refused with this status and code — exactly as the same request
    /// aimed at someone or something that does not exist (no oracle).
    Refused(u16, &'static str),
    /// 200 with exactly this body: Bob's own (empty) records.
    Exactly(Value),
    /// 200 with what Alice herself sees there: nothing user-specific.
    SameAsAlice,
}

/// One request of Bob's: a label, the path, and the same path aimed at a
/// user, device or license that does not exist.
struct Case {
    label: &'static str,
    path: String,
    ghost: String,
    expect: Expect,
}

const GHOST_DEVICE: &str = "00000000-0000-4000-8000-000000000001";
const GHOST_KEY: &str = "LIC-GHOST-0000-0000-0000";
const GHOST_USER: &str = "ghost_000000";

/// Bob (a non-admin with no records of his own) on a route, aimed at Alice.
/// Exhaustive like [`access`]: a new route needs its cases written here.
fn cases_against_alice(route: Route, pattern: &str, alice: &Alice) -> Vec<Case> {
    use Expect::*;
    let own = alice.path(pattern);
    let ghost_own = fill(pattern, GHOST_DEVICE, GHOST_KEY);
    let naming = |label, expect| Case {
        label,
        path: format!("{own}?user_id={ALICE}"),
        ghost: format!("{own}?user_id={GHOST_USER}"),
        expect,
    };
    let naming_later = |label, expect| Case {
        label,
        path: format!("{own}?page=1&user_id={ALICE}"),
        ghost: format!("{own}?page=1&user_id={GHOST_USER}"),
        expect,
    };
    let as_himself = |expect| Case { label: "Bob for himself", path: own.clone(), ghost: own.clone(), expect };
    let forbidden = || Refused(403, "FORBIDDEN");
    let named = |expect_own| {
        vec![
            naming("?user_id=Alice", forbidden()),
            naming_later("?…&user_id=Alice", forbidden()),
            as_himself(expect_own),
        ]
    };
    match route {
        Route::CurrentSubscription => named(Exactly(json!({ "subscription": null }))),
        Route::SubscriptionHistory => named(Exactly(json!({ "changes": [] }))),
        Route::BillingHistory | Route::PaymentHistory => named(Exactly(json!({ "payments": [] }))),
        Route::Licenses => named(Exactly(json!({ "licenses": [] }))),
        Route::PaymentMethod => named(Exactly(json!({ "payment_method": null }))),
        Route::Cancel | Route::Reactivate | Route::ChangePlan => named(Refused(404, "NO_SUBSCRIPTION")),
        Route::BillingPortal | Route::SyncSubscriptions => named(Refused(404, "NO_CUSTOMER")),
        // Bob may start his own checkout: a session for him, never on Alice's customer.
        Route::Checkout => named(Exactly(json!({ "id": "cs_bob", "url": "https://checkout.stripe.com/c/cs_bob" }))),
        // No `user_id` parameter (see docs/openapi.yaml): always the caller's.
        Route::Plans => vec![naming("?user_id=Alice (ignored)", SameAsAlice), as_himself(SameAsAlice)],
        Route::Terminals => named(Exactly(json!({ "terminals": [] }))),
        // Bob's own: a license he does not hold (his pasting a request for
        // Alice's is in air_gapped.rs).
        Route::OfflineActivation => named(Refused(404, "LICENSE_NOT_FOUND")),
        Route::DeleteTerminal | Route::RenameTerminal => vec![
            Case {
                label: "Alice's device id",
                path: own.clone(),
                ghost: ghost_own.clone(),
                expect: Refused(404, "NOT_FOUND"),
            },
            Case {
                label: "Alice's device id, ?user_id=Alice",
                path: format!("{own}?user_id={ALICE}"),
                ghost: format!("{ghost_own}?user_id={GHOST_USER}"),
                expect: Refused(404, "NOT_FOUND"),
            },
        ],
        Route::Events => vec![Case {
            label: "Alice's license key",
            path: own.clone(),
            ghost: ghost_own,
            expect: Refused(401, "UNAUTHORIZED"),
        }],
        Route::Healthz
        | Route::Readyz
        | Route::Metrics
        | Route::StripeWebhook
        | Route::Activate
        | Route::Trial
        | Route::Validate
        | Route::Heartbeat
        | Route::Deactivate
        | Route::PublicKey
        // Webhooks to the vendor (issue 14).
        | Route::CreateWebhookEndpoint
        | Route::WebhookEndpoints
        | Route::DeleteWebhookEndpoint
        | Route::WebhookDeliveries
        | Route::RetryWebhookDelivery => unreachable!("{pattern} takes no dashboard JWT"),
        // Admin reads (issue 14).
        | Route::AdminStripeEvents
        | Route::AdminReplayStripeEvent
        | Route::AdminAudit
        | Route::AdminCustomers
        | Route::AdminLicenses
        | Route::AdminLicense
        | Route::AdminLicenseExport
        // Admin license writes (issue 14).
        | Route::AdminIssueLicense
        | Route::AdminPatchLicense
        | Route::AdminSuspendLicense
        | Route::AdminReinstateLicense
        | Route::AdminRevokeLicense
        | Route::AdminRenewLicense
        | Route::AdminDeleteDevice
        | Route::AdminResetDevices
        // The customer portal (issue 19).
        | Route::AdminCreatePortalSession
        | Route::PortalSession
        | Route::PortalPage
        | Route::PageAsset
        | Route::AdminToken
        | Route::AdminOverview
        | Route::ConsolePage => unreachable!("{pattern} takes no dashboard JWT"),
    }
}

#[tokio::test]
async fn no_dashboard_route_lets_a_user_reach_another_users_records() {
    let (app, stripe, alice) = app_with_alice().await;
    // Bob's own checkout is the one Stripe call allowed: his id, no customer.
    stripe_write(
        "POST",
        "/v1/checkout/sessions",
        "checkout",
        vec![
            ("mode", "subscription".into()),
            ("line_items[0][price]", PRICE_BASIC.into()),
            ("line_items[0][quantity]", "1".into()),
            ("success_url", "https://app.example/ok".into()),
            ("cancel_url", "https://app.example/no".into()),
            ("client_reference_id", BOB.into()),
            ("subscription_data[metadata][user_id]", BOB.into()),
            ("metadata[user_id]", BOB.into()),
        ],
    )
    .respond_with(
        ResponseTemplate::new(200)
            .set_body_json(json!({ "id": "cs_bob", "url": "https://checkout.stripe.com/c/cs_bob" })),
    )
    .expect(1)
    .mount(&stripe)
    .await;
    let before = alice.state(&app).await;
    let bob = jwt_for(BOB);
    let mut cells = 0;
    for (method, pattern, route) in dashboard_routes() {
        for case in cases_against_alice(route, pattern, &alice) {
            let what = format!("Bob: {method} {pattern}, {} ({})", case.label, case.path);
            let calls_before = stripe.received_requests().await.unwrap().len();
            let answer = read_answer(send(&app, &method, &case.path, route, Some(&bob)).await, &what, &alice).await;
            let calls = stripe.received_requests().await.unwrap().len() - calls_before;
            match &case.expect {
                Expect::Refused(status, code) => {
                    assert_error(&what, &answer, *status, code);
                    assert_eq!(calls, 0, "{what}: Stripe was called");
                    let ghost =
                        read_answer(send(&app, &method, &case.ghost, route, Some(&bob)).await, &what, &alice).await;
                    assert_eq!(answer, ghost, "{what}: answers differently than for {}", case.ghost);
                }
                Expect::Exactly(body) => {
                    assert_eq!((answer.0, &answer.1), (200, body), "{what}");
                    assert_eq!(calls, usize::from(route == Route::Checkout), "{what}: Stripe calls");
                }
                Expect::SameAsAlice => {
                    let own = app.get_as(&alice.path(pattern), ALICE).await;
                    assert_eq!((answer.0, &answer.1), (200, &own), "{what}");
                    assert_eq!(calls, 0, "{what}: Stripe was called");
                }
            }
            cells += 1;
        }
    }
    assert_eq!(alice.state(&app).await, before, "Alice's records changed");
    alice.assert_device_alive(&app).await;
    stripe.verify().await;
    assert!(cells >= 40, "{cells} cases");
}

/// The check of the matrix itself: `?user_id=Alice` as an admin does reach
/// Alice on every read that takes it (so Bob's 403 is authorization, and the
/// leak detector would have seen her records).
#[tokio::test]
async fn an_admin_naming_alice_reads_her_records() {
    let (app, stripe, alice) = app_with_alice().await;
    let admin = token(&json!({ "sub": "support-1", "role": "admin", "exp": now() + 600 }), JWT_SECRET);
    let mut checked = 0;
    for (method, pattern, route) in dashboard_routes() {
        // Reads that stay in our database (the payment method asks Stripe).
        if method != reqwest::Method::GET || access(route) != (Access::Dashboard { user_id: true }) {
            continue;
        }
        if route == Route::PaymentMethod {
            continue;
        }
        let path = format!("{}?user_id={ALICE}", alice.path(pattern));
        let response = send(&app, &method, &path, route, Some(&admin)).await;
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        assert!(
            alice.identifiers.iter().any(|id| text.contains(id.as_str())),
            "{path}: none of Alice's records: {text}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6, "current, history, billing-history, payments, licenses, terminals");
    assert!(stripe.received_requests().await.unwrap().is_empty());
}

/// The routes the matrix treats as taking `?user_id=` are exactly those the
/// API document says take it.
#[test]
fn user_id_routes_are_those_documented() {
    let document = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml")).unwrap();
    let (mut in_paths, mut path, mut method) = (false, None::<String>, None::<String>);
    let mut documented = BTreeSet::new();
    for line in document.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match line.len() - line.trim_start().len() {
            0 => in_paths = trimmed == "paths:",
            2 if in_paths => (path, method) = (trimmed.strip_suffix(':').map(str::to_owned), None),
            4 if in_paths => method = trimmed.strip_suffix(':').map(str::to_uppercase),
            _ if in_paths && trimmed.contains("#/components/parameters/UserId") => {
                documented.insert((method.clone().unwrap(), path.clone().unwrap()));
            }
            _ => {}
        }
    }
    let ours: BTreeSet<(String, String)> = dashboard_routes()
        .into_iter()
        .filter(|(_, _, route)| access(*route) == (Access::Dashboard { user_id: true }))
        .map(|(method, pattern, _)| (method.as_str().to_owned(), pattern.to_owned()))
        .collect();
    assert!(!documented.is_empty());
    assert_eq!(ours, documented);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/api/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "NOT_FOUND");
    let response = app.http.get(app.url("/api/stripe/webhooks/handler")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "METHOD_NOT_ALLOWED");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn a_token_whose_nbf_has_come_or_is_within_the_leeway_is_accepted() {
    let app = spawn_app().await;
    for nbf in [now() - 60, now() + 2] {
        let jwt = token(&json!({ "sub": "u", "exp": now() + 600, "nbf": nbf }), JWT_SECRET);
        let response = app.http.get(app.url("/api/licenses")).bearer_auth(jwt).send().await.unwrap();
        assert_eq!(response.status(), 200, "nbf {nbf}");
    }
}
