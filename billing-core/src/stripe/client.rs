//! A thin Stripe API client over reqwest: form-encoded parameters, a pinned
//! API version, idempotency keys on writes, retries with backoff (and
//! `Retry-After`), list pages, and an optional client-side rate limit.
//!
//! We call a dozen endpoints; a full SDK (async-stripe) would cost minutes of
//! compile time and bring its own HTTP stack for that (see ARCHITECTURE.md).

use crate::domain::SubscriptionSnapshot;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The API version every request pins, so payload shapes do not drift with
/// the account's default version.
pub const STRIPE_VERSION: &str = "2025-03-31.basil";
/// Stripe's production API.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";
/// The most objects a list page holds (Stripe's own maximum).
pub const LIST_LIMIT: usize = 100;
/// The longest `Retry-After` we wait for between two attempts; a longer
/// one is cut to this (Stripe asks for seconds, never minutes).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Talks to the Stripe API.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    secret_key: String,
    max_retries: u32,
    initial_backoff: Duration,
    /// Shared by the clones of one client: every attempt of every call
    /// waits for its turn.
    rate: Option<Arc<DefaultDirectRateLimiter>>,
}

/// One page of a list endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The objects, newest first, as Stripe shapes them.
    pub data: Vec<Value>,
    /// Whether a page follows (ask again with `starting_after` = the last id).
    pub has_more: bool,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A failed Stripe call. Messages carry what Stripe said for the user (e.g.
/// "Your card was declined."), never our key.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe refused the request (4xx) with its error object.
    #[error("stripe refused the request: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stripe's `error.type`, e.g. `card_error`.
        kind: String,
        /// Stripe's `error.code`, e.g. `card_declined`.
        code: Option<String>,
        /// Stripe's user-facing message.
        message: String,
    },
    /// Stripe could not be reached or kept failing (network, 5xx, 429).
    #[error("stripe is unavailable: {0}")]
    Unavailable(String),
    /// Stripe answered something we could not read.
    #[error("unexpected response from stripe: {0}")]
    Protocol(String),
}

impl StripeClient {
    /// A client for `base` (normally [`DEFAULT_API_BASE`]; tests use a local server).
    pub fn new(secret_key: impl Into<String>, base: impl Into<String>) -> Self {
        // reqwest is built without a bundled crypto provider so that the
        // process has one TLS stack (ring); install it once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .expect("a TLS client with the ring provider can be built");
        Self {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            secret_key: secret_key.into(),
            max_retries: 2,
            initial_backoff: Duration::from_millis(250),
            rate: None,
        }
    }

    /// Sends at most `per_second` requests a second, retries included,
    /// evenly spaced (no burst), across every clone of this client.
    pub fn with_rate_limit(mut self, per_second: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(NonZeroU32::MIN);
        self.rate = Some(Arc::new(RateLimiter::direct(quota)));
        self
    }

    /// Sets how many times a failed call is retried and the first backoff
    /// (doubled on each retry).
    pub fn with_retries(mut self, max_retries: u32, initial_backoff: Duration) -> Self {
        self.max_retries = max_retries;
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .expect("a TLS client with the ring provider can be built");
        self
    }

    /// `GET /v1/subscriptions/{id}`
    pub async fn get_subscription(&self, id: &str) -> Result<SubscriptionSnapshot, StripeError> {
        let body = self.send(Method::GET, &format!("/v1/subscriptions/{id}"), &[], None).await?;
        super::event::parse_subscription(&body).map_err(StripeError::Protocol)
    }

    /// `POST /v1/subscriptions/{id}` with form parameters (an update).
    pub async fn update_subscription(
        &self,
        id: &str,
        params: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<SubscriptionSnapshot, StripeError> {
        let body = self.send(Method::POST, &format!("/v1/subscriptions/{id}"), params, Some(idempotency_key)).await?;
        super::event::parse_subscription(&body).map_err(StripeError::Protocol)
    }

    /// `DELETE /v1/subscriptions/{id}`: cancels at once.
    pub async fn cancel_subscription(
        &self,
        id: &str,
        idempotency_key: &str,
    ) -> Result<SubscriptionSnapshot, StripeError> {
        let body = self.send(Method::DELETE, &format!("/v1/subscriptions/{id}"), &[], Some(idempotency_key)).await?;
        super::event::parse_subscription(&body).map_err(StripeError::Protocol)
    }

    /// `GET /v1/subscriptions?customer=…&status=all`: every subscription of a customer.
    pub async fn list_subscriptions(&self, customer: &str) -> Result<Vec<SubscriptionSnapshot>, StripeError> {
        let params = [("customer".to_owned(), customer.to_owned()), ("status".to_owned(), "all".to_owned())];
        let mut all = Vec::new();
        let mut starting_after: Option<String> = None;
        loop {
            let page = self.list_page("/v1/subscriptions", &params, starting_after.as_deref()).await?;
            for object in &page.data {
                all.push(super::event::parse_subscription(object).map_err(StripeError::Protocol)?);
            }
            match (page.has_more, all.last()) {
                (true, Some(last)) => starting_after = Some(last.stripe_subscription_id.clone()),
                _ => return Ok(all),
            }
        }
    }

    /// One page of a list endpoint (`GET /v1/customers`, `/v1/prices`, …):
    /// `limit=100`, the `params` given, and `starting_after` for every page
    /// but the first.
    pub async fn list_page(
        &self,
        path: &str,
        params: &[(String, String)],
        starting_after: Option<&str>,
    ) -> Result<ListPage, StripeError> {
        let mut query = params.to_vec();
        query.push(("limit".to_owned(), LIST_LIMIT.to_string()));
        if let Some(after) = starting_after {
            query.push(("starting_after".to_owned(), after.to_owned()));
        }
        let mut body = self.send(Method::GET, path, &query, None).await?;
        let data = match body.get_mut("data").map(Value::take) {
            Some(Value::Array(data)) => data,
            _ => return Err(StripeError::Protocol("list without data".into())),
        };
        let has_more = body.get("has_more").and_then(Value::as_bool).unwrap_or(false);
        Ok(ListPage { data, has_more })
    }

    /// `POST /v1/checkout/sessions` → (id, url).
    pub async fn create_checkout_session(
        &self,
        params: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<(String, String), StripeError> {
        let body = self.send(Method::POST, "/v1/checkout/sessions", params, Some(idempotency_key)).await?;
        Ok((string_field(&body, "id")?, string_field(&body, "url")?))
    }

    /// `POST /v1/billing_portal/sessions` → url.
    pub async fn create_portal_session(
        &self,
        customer: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<String, StripeError> {
        let params = [("customer".to_owned(), customer.to_owned()), ("return_url".to_owned(), return_url.to_owned())];
        let body = self.send(Method::POST, "/v1/billing_portal/sessions", &params, Some(idempotency_key)).await?;
        string_field(&body, "url")
    }

    /// The customer's default card, from
    /// `GET /v1/customers/{id}?expand[]=invoice_settings.default_payment_method`.
    pub async fn default_card(&self, customer: &str) -> Result<Option<Card>, StripeError> {
        let query = [("expand[]".to_owned(), "invoice_settings.default_payment_method".to_owned())];
        let body = self.send(Method::GET, &format!("/v1/customers/{customer}"), &query, None).await?;
        let card = body.pointer("/invoice_settings/default_payment_method/card");
        Ok(card.and_then(|c| {
            Some(Card {
                brand: c.get("brand")?.as_str()?.to_owned(),
                last4: c.get("last4")?.as_str()?.to_owned(),
                exp_month: c.get("exp_month")?.as_i64()?,
                exp_year: c.get("exp_year")?.as_i64()?,
            })
        }))
    }

    /// Sends one request, retrying network errors, 409, 429 and 5xx with
    /// exponential backoff unless Stripe says `Stripe-Should-Retry: false`,
    /// waiting at least as long as a `Retry-After` asks (in seconds).
    /// Writes must pass an idempotency key; it stays the same across retries.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        form: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let mut attempt = 0;
        loop {
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            let mut retry_after = None;
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.secret_key)
                .header("Stripe-Version", STRIPE_VERSION);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if !form.is_empty() {
                request = if method == Method::GET { request.query(form) } else { request.form(form) };
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let should_retry = response
                        .headers()
                        .get("stripe-should-retry")
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v == "true");
                    retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
                    let body =
                        response.bytes().await.map_err(|e| StripeError::Unavailable(e.without_url().to_string()))?;
                    if status.is_success() {
                        return serde_json::from_slice(&body).map_err(|e| StripeError::Protocol(e.to_string()));
                    }
                    let error = api_error(status, &body);
                    let retryable = should_retry.unwrap_or(
                        status == StatusCode::CONFLICT
                            || status == StatusCode::TOO_MANY_REQUESTS
                            || status.is_server_error(),
                    );
                    if !retryable {
                        return Err(error);
                    }
                    error
                }
                Err(e) => StripeError::Unavailable(e.without_url().to_string()),
            };
            if attempt >= self.max_retries {
                return Err(match failure {
                    StripeError::Api { status, message, .. } if status >= 500 || status == 429 => {
                        StripeError::Unavailable(message)
                    }
                    other => other,
                });
            }
            let backoff = self.initial_backoff * 2u32.pow(attempt);
            tokio::time::sleep(retry_after.map_or(backoff, |asked| asked.max(backoff))).await;
            attempt += 1;
        }
    }
}

/// A card, as shown to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// e.g. `visa`.
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month.
    pub exp_month: i64,
    /// Expiry year.
    pub exp_year: i64,
}

fn string_field(body: &Value, name: &str) -> Result<String, StripeError> {
    body.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| StripeError::Protocol(format!("response without `{name}`")))
}

fn api_error(status: StatusCode, body: &[u8]) -> StripeError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
    StripeError::Api {
        status: status.as_u16(),
        kind: field("type").unwrap_or_else(|| "api_error".to_owned()),
        code: field("code"),
        message: field("message").unwrap_or_else(|| format!("stripe answered {status}")),
    }
}
