//! Webhooks to the vendor's own systems (CRM, e-mail, analytics): the
//! endpoints it registers, and the [`Dispatcher`] that delivers their
//! messages.
//!
//! Messages are rows, written with the outbox rows of a unit of work's
//! changeset ([`crate::storage::changeset::Changeset::outbox`]) in the
//! transaction of the change they announce, so a rolled-back change sends
//! nothing and a committed one is never lost (not to a restart, not to
//! `kill -9`). The dispatcher claims due messages with a lease (several
//! instances may run on one PostgreSQL), signs them the Standard Webhooks
//! way and sends them concurrently across endpoints, a bounded batch per
//! endpoint at a time, so one slow or dead receiver holds only its own
//! messages. Every attempt is recorded; failures are retried on the
//! [`RetrySchedule`], then the message has failed.

use crate::billing::Billing;
use crate::domain::vendor_webhook::{
    forbidden_address, is_success, message_body, EventFilter, EventFilterError, ForbiddenAddress, RetrySchedule,
    WebhookSecret,
};
use crate::domain::Timestamp;
use crate::storage::{
    ClaimedWebhook, NewWebhookEndpoint, Store, StoreError, WebhookAttempt, WebhookAttemptRecord, WebhookClaim,
    WebhookDelivery, WebhookDeliveryCursor, WebhookEndpoint, WebhookMessageStatus, WebhookRetry,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64_URL;
use base64::Engine;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How the vendor's webhooks are delivered.
#[derive(Debug, Clone)]
pub struct VendorWebhookSettings {
    /// Delays between attempts (`BILLING_WEBHOOK_RETRY_SCHEDULE`).
    pub retry_schedule: RetrySchedule,
    /// Whether endpoints may be on private, loopback or link-local
    /// addresses, and use plain `http://` (`BILLING_WEBHOOK_ALLOW_PRIVATE`:
    /// on-premise installs and tests).
    pub allow_private: bool,
    /// The whole of one attempt, connecting included.
    pub attempt_timeout: Duration,
    /// Messages being sent at once, over all endpoints.
    pub max_in_flight: usize,
    /// Messages claimed for one endpoint at a time; an endpoint with this
    /// many attempts in flight gets no more until one finishes (so it has
    /// fewer than twice this many in flight).
    pub per_endpoint: usize,
    /// How often the dispatcher looks for due messages when nothing wakes it.
    pub poll_interval: Duration,
}

impl Default for VendorWebhookSettings {
    fn default() -> Self {
        Self {
            retry_schedule: RetrySchedule::default(),
            allow_private: false,
            attempt_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            per_endpoint: 8,
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// Longest accepted endpoint URL.
pub const MAX_URL_CHARS: usize = 2_048;
/// Longest accepted endpoint description.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Most deliveries listed in one page.
pub const MAX_DELIVERIES_PAGE: i64 = 100;

/// Why an endpoint or a request about one was refused.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL cannot be used; the message says why, without repeating it.
    #[error("url {0}")]
    InvalidUrl(&'static str),
    /// The URL's host is, or resolves to, an address webhooks may not reach.
    #[error("url points to {}; webhooks are only sent to public addresses", .0.describe())]
    ForbiddenTarget(ForbiddenAddress),
    /// The event list was refused.
    #[error(transparent)]
    Events(#[from] EventFilterError),
    /// The description is too long.
    #[error("description must be at most {MAX_DESCRIPTION_CHARS} characters")]
    DescriptionTooLong,
    /// A cursor we did not hand out.
    #[error("cursor is malformed")]
    BadCursor,
    /// No such live endpoint, or message.
    #[error("not found")]
    NotFound,
    /// A delivered message is not sent again.
    #[error("the message was delivered already")]
    AlreadyDelivered,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A newly created endpoint with its secret, which is shown only now.
#[derive(Debug, Clone)]
pub struct CreatedEndpoint {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// Its signing secret.
    pub secret: WebhookSecret,
}

/// One page of an endpoint's deliveries, newest first.
#[derive(Debug, Clone)]
pub struct DeliveryPage {
    /// The messages, each with its attempts.
    pub deliveries: Vec<WebhookDelivery>,
    /// Where the next page starts; None on the last page.
    pub next_cursor: Option<String>,
}

/// Encodes a delivery position as an opaque cursor.
fn encode_cursor(delivery: &WebhookDelivery) -> String {
    let micros = delivery.created_at.unix_timestamp_nanos() / 1_000;
    BASE64_URL.encode(format!("{micros}|{}", delivery.id))
}

fn decode_cursor(cursor: &str) -> Option<WebhookDeliveryCursor> {
    let text = String::from_utf8(BASE64_URL.decode(cursor).ok()?).ok()?;
    let (micros, id) = text.split_once('|')?;
    let micros: i128 = micros.parse().ok()?;
    let created_at = Timestamp::from_unix_timestamp_nanos(micros.checked_mul(1_000)?).ok()?;
    let valid_id = id.strip_prefix("msg_").is_some_and(|rest| !rest.is_empty() && rest.len() <= 64);
    valid_id.then(|| WebhookDeliveryCursor { created_at, id: id.to_owned() })
}

/// A target URL, checked for shape: scheme, host, no credentials.
fn parse_url(text: &str, allow_private: bool) -> Result<reqwest::Url, EndpointError> {
    if text.chars().count() > MAX_URL_CHARS {
        return Err(EndpointError::InvalidUrl("is too long"));
    }
    let url = reqwest::Url::parse(text).map_err(|_| EndpointError::InvalidUrl("is not an absolute URL"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(EndpointError::InvalidUrl("must use https")),
        _ => return Err(EndpointError::InvalidUrl("must use https")),
    }
    // A credential in a URL ends up in listings and logs.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(EndpointError::InvalidUrl("must not carry a user name or password"));
    }
    if url.fragment().is_some() {
        return Err(EndpointError::InvalidUrl("must not have a fragment"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(EndpointError::InvalidUrl("must name a host"));
    }
    Ok(url)
}

/// A URL's host: an address literal, or a name to resolve.
enum Host<'a> {
    Address(IpAddr),
    Domain(&'a str),
}

fn host_of(url: &reqwest::Url) -> Option<Host<'_>> {
    let host = url.host_str()?;
    // IPv6 literals keep their brackets in `host_str`.
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Some(match literal.parse::<IpAddr>() {
        Ok(ip) => Host::Address(ip),
        Err(_) => Host::Domain(host),
    })
}

/// The addresses a URL's host stands for; refused when any of them may not
/// receive webhooks. Every address is checked, not just the first, since a
/// client may fall back to any of them.
async fn resolve_public(url: &reqwest::Url) -> Result<Vec<SocketAddr>, EndpointError> {
    let port = url.port_or_known_default().ok_or(EndpointError::InvalidUrl("has no port"))?;
    let addresses: Vec<SocketAddr> = match host_of(url) {
        Some(Host::Address(ip)) => vec![SocketAddr::new(ip, port)],
        Some(Host::Domain(domain)) => {
            let lookup = tokio::net::lookup_host((domain, port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(found)) => found.collect(),
                _ => return Err(EndpointError::InvalidUrl("host does not resolve")),
            }
        }
        None => return Err(EndpointError::InvalidUrl("must name a host")),
    };
    if addresses.is_empty() {
        return Err(EndpointError::InvalidUrl("host does not resolve"));
    }
    if let Some(reason) = addresses.iter().find_map(|a| forbidden_address(a.ip())) {
        return Err(EndpointError::ForbiddenTarget(reason));
    }
    Ok(addresses)
}

impl<S: Store> Billing<S> {
    /// Registers an endpoint: the URL is checked (https, and a public
    /// address unless private ones are allowed), the events are known ones
    /// or `*`, and a new secret is generated.
    pub async fn create_webhook_endpoint(
        &self,
        url: &str,
        events: &[String],
        description: Option<&str>,
    ) -> Result<CreatedEndpoint, EndpointError> {
        let settings = &self.config().vendor_webhooks;
        let events = EventFilter::parse(events)?;
        if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS) {
            return Err(EndpointError::DescriptionTooLong);
        }
        let parsed = parse_url(url, settings.allow_private)?;
        if !settings.allow_private {
            resolve_public(&parsed).await?;
        }
        let secret = WebhookSecret::generate();
        let exposed = secret.expose();
        let endpoint = self
            .store()
            .create_webhook_endpoint(&NewWebhookEndpoint {
                id: Uuid::new_v4(),
                url: parsed.as_str(),
                events: events.as_slice(),
                description,
                secret: &exposed,
            })
            .await?;
        Ok(CreatedEndpoint { endpoint, secret })
    }

    /// The live endpoints, oldest first.
    pub async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.store().webhook_endpoints().await
    }

    /// Deletes an endpoint; its pending messages are not sent.
    pub async fn delete_webhook_endpoint(&self, id: Uuid) -> Result<(), EndpointError> {
        match self.store().delete_webhook_endpoint(id, self.now()).await? {
            true => Ok(()),
            false => Err(EndpointError::NotFound),
        }
    }

    /// A page of an endpoint's messages, newest first, each with its attempts.
    pub async fn webhook_deliveries(
        &self,
        endpoint_id: Uuid,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, EndpointError> {
        let cursor = cursor.map(|c| decode_cursor(c).ok_or(EndpointError::BadCursor)).transpose()?;
        if self.store().webhook_endpoint(endpoint_id).await?.is_none() {
            return Err(EndpointError::NotFound);
        }
        let limit = limit.clamp(1, MAX_DELIVERIES_PAGE);
        // One more than asked tells whether another page follows.
        let mut deliveries = self.store().webhook_deliveries(endpoint_id, cursor.as_ref(), limit + 1).await?;
        let more = deliveries.len() as i64 > limit;
        deliveries.truncate(limit as usize);
        let next_cursor = more.then(|| deliveries.last().map(encode_cursor)).flatten();
        Ok(DeliveryPage { deliveries, next_cursor })
    }

    /// Makes a pending or failed message due now.
    pub async fn retry_webhook_delivery(&self, message_id: &str) -> Result<(), EndpointError> {
        match self.store().retry_webhook_message(message_id, self.now()).await? {
            WebhookRetry::Scheduled => Ok(()),
            WebhookRetry::AlreadyDelivered => Err(EndpointError::AlreadyDelivered),
            WebhookRetry::NotFound => Err(EndpointError::NotFound),
        }
    }
}

/// Why an attempt failed, as recorded (never the receiver's body or our URL).
#[derive(Debug)]
struct AttemptFailure(String);

/// The shortest time between two claim rounds of one dispatcher after a
/// round that found nothing to send.
const IDLE_ROUND_INTERVAL: Duration = Duration::from_millis(50);
/// The same after a round that did.
const BUSY_ROUND_INTERVAL: Duration = Duration::from_millis(5);

/// Pinned clients are kept per (host, checked addresses): building a TLS
/// client loads the platform's roots, too slow to do for every attempt.
const MAX_PINNED_CLIENTS: usize = 256;

/// Delivers due messages until stopped. Start one per server; several
/// servers on one PostgreSQL share the work.
pub struct Dispatcher<S: Store> {
    billing: Billing<S>,
    settings: VendorWebhookSettings,
    /// For targets that need no pinning (private addresses allowed, or an
    /// address literal already checked).
    http: reqwest::Client,
    pinned: Mutex<HashMap<(String, Vec<SocketAddr>), reqwest::Client>>,
}

impl<S: Store> Dispatcher<S> {
    /// A dispatcher with the engine's settings.
    pub fn new(billing: Billing<S>) -> Arc<Self> {
        let settings = billing.config().vendor_webhooks.clone();
        let http = Self::client_builder(&settings).build().expect("a TLS client with the ring provider can be built");
        Arc::new(Self { billing, settings, http, pinned: Mutex::new(HashMap::new()) })
    }

    fn client_builder(settings: &VendorWebhookSettings) -> reqwest::ClientBuilder {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A redirect could lead anywhere, private addresses included.
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.attempt_timeout)
            .user_agent(concat!("billing-webhooks/", env!("CARGO_PKG_VERSION")))
    }

    /// How long a claimed message stays away from other senders: its
    /// attempt's timeout and a margin; then a crashed sender's message is
    /// due again.
    fn lease(&self) -> Duration {
        self.settings.attempt_timeout + Duration::from_secs(5)
    }

    /// Runs until `stop` resolves: claims due messages whenever the outbox
    /// is written, an attempt completes, or the next retry falls due.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut wake = loop {
            match self.billing.store().watch_outbox().await {
                Ok(wake) => break wake,
                Err(e) => {
                    tracing::warn!(error = %crate::billing::error_chain(&e), "webhook dispatcher cannot watch the outbox");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                }
            }
        };
        let mut sending = tokio::task::JoinSet::new();
        let mut in_flight: HashMap<Uuid, usize> = HashMap::new();
        let mut last_round: Option<(Instant, bool)> = None;
        loop {
            // Every outbox commit wakes the loop, and every finished attempt:
            // under load that would be a claim per commit or per attempt.
            // Rounds are spaced instead (closely while there is work, so
            // that finished attempts are refilled in bulk), which costs a
            // message at most that much delay.
            let spacing = |claimed| if claimed { BUSY_ROUND_INTERVAL } else { IDLE_ROUND_INTERVAL };
            if let Some(wait) = last_round.and_then(|(at, claimed)| spacing(claimed).checked_sub(at.elapsed())) {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Self::finished(&mut sending, &mut in_flight);
            let (pause, claimed) = match self.claim_and_send(&mut sending, &mut in_flight).await {
                Ok(round) => round,
                Err(e) => {
                    tracing::warn!(error = %crate::billing::error_chain(&e), "webhook dispatcher cannot claim messages");
                    (self.settings.poll_interval, false)
                }
            };
            last_round = Some((Instant::now(), claimed));
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = wake.recv() => {}
                Some(done) = sending.join_next(), if !sending.is_empty() => {
                    if let Ok(endpoint) = done {
                        Self::release(&mut in_flight, endpoint);
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
        // An attempt cut short is sent again once its lease runs out.
        sending.abort_all();
    }

    /// Frees the places of every attempt that has finished.
    fn finished(sending: &mut tokio::task::JoinSet<Uuid>, in_flight: &mut HashMap<Uuid, usize>) {
        while let Some(done) = sending.try_join_next() {
            if let Ok(endpoint) = done {
                Self::release(in_flight, endpoint);
            }
        }
    }

    fn release(in_flight: &mut HashMap<Uuid, usize>, endpoint: Uuid) {
        if let Some(held) = in_flight.get_mut(&endpoint) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                in_flight.remove(&endpoint);
            }
        }
    }

    /// Claims what may be sent now and starts sending it: how long to wait
    /// for the next due message if nothing else wakes the loop, and whether
    /// anything was claimed.
    async fn claim_and_send(
        self: &Arc<Self>,
        sending: &mut tokio::task::JoinSet<Uuid>,
        in_flight: &mut HashMap<Uuid, usize>,
    ) -> Result<(Duration, bool), StoreError> {
        let total: usize = in_flight.values().sum();
        let room = self.settings.max_in_flight.saturating_sub(total);
        if room > 0 {
            // An endpoint with a full batch in flight gets nothing more, so
            // a hanging receiver holds only its own places.
            let full: Vec<Uuid> =
                in_flight.iter().filter(|(_, n)| **n >= self.settings.per_endpoint).map(|(e, _)| *e).collect();
            let claimed = self.claim(full, room).await?;
            if !claimed.is_empty() {
                for (message, lease) in claimed {
                    let endpoint = message.endpoint_id;
                    *in_flight.entry(endpoint).or_default() += 1;
                    let this = self.clone();
                    sending.spawn(async move {
                        this.attempt((message, lease)).await;
                        endpoint
                    });
                }
                // Their completion wakes the loop, which looks again then.
                return Ok((self.settings.poll_interval, true));
            }
        }
        let now = self.billing.now();
        // Due messages of full endpoints wait for an attempt to finish,
        // which wakes the loop: no need to poll for them.
        let pause = match self.billing.store().next_webhook_due().await? {
            Some(due) if due > now => {
                Duration::try_from(due - now).unwrap_or(Duration::ZERO).min(self.settings.poll_interval)
            }
            _ => self.settings.poll_interval,
        };
        Ok((pause, false))
    }

    async fn claim(&self, busy: Vec<Uuid>, room: usize) -> Result<Vec<(ClaimedWebhook, Uuid)>, StoreError> {
        let now = self.billing.now();
        let lease = Uuid::new_v4();
        let claimed = self
            .billing
            .store()
            .claim_webhook_messages(&WebhookClaim {
                now,
                lease_until: now + self.lease(),
                lease,
                busy_endpoints: &busy,
                per_endpoint: self.settings.per_endpoint as i64,
                limit: room as i64,
            })
            .await?;
        Ok(claimed.into_iter().map(|m| (m, lease)).collect())
    }

    /// Sends everything due now and waits for the attempts, for tests and
    /// tools that drive delivery themselves; returns how many were attempted.
    pub async fn deliver_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        let claimed = self.claim(Vec::new(), self.settings.max_in_flight).await?;
        let count = claimed.len();
        futures_util::future::join_all(claimed.into_iter().map(|m| self.attempt(m))).await;
        Ok(count)
    }

    /// One attempt: sign, send, record, schedule.
    async fn attempt(self: &Arc<Self>, (message, lease): (ClaimedWebhook, Uuid)) {
        let attempted_at = self.billing.now();
        let started = Instant::now();
        let outcome = self.send(&message, attempted_at).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let attempts = u32::try_from(message.attempts).unwrap_or(0).saturating_add(1);
        let (status_code, error) = match &outcome {
            Ok(code) if is_success(*code) => (Some(*code), None),
            Ok(code) => (Some(*code), Some(format!("the receiver answered {code}"))),
            Err(AttemptFailure(reason)) => (None, Some(reason.clone())),
        };
        let delivered = error.is_none();
        let next_attempt_at = match delivered {
            true => None,
            false => self.settings.retry_schedule.next_attempt(attempts, self.billing.now()),
        };
        let status = match (delivered, next_attempt_at) {
            (true, _) => WebhookMessageStatus::Delivered,
            (false, Some(_)) => WebhookMessageStatus::Pending,
            (false, None) => WebhookMessageStatus::Failed,
        };
        let attempt = WebhookAttempt { attempted_at, status_code, error, duration_ms, next_attempt_at };
        let record = WebhookAttemptRecord { message_id: &message.message_id, lease, attempt: &attempt, status };
        match self.billing.store().record_webhook_attempt(&record).await {
            Ok(true) => {}
            // Retried by hand, or the lease ran out and another sender took it.
            Ok(false) => tracing::info!(message_id = %message.message_id, "webhook attempt outlived its claim"),
            // The lease runs out and the message is sent again.
            Err(e) => tracing::warn!(
                message_id = %message.message_id,
                error = %crate::billing::error_chain(&e),
                "webhook attempt could not be recorded"
            ),
        }
        match status {
            WebhookMessageStatus::Failed => {
                tracing::warn!(message_id = %message.message_id, attempts, "webhook message failed for good")
            }
            WebhookMessageStatus::Pending => {
                tracing::debug!(message_id = %message.message_id, attempts, "webhook attempt failed; will retry")
            }
            WebhookMessageStatus::Delivered => {}
        }
    }

    /// Sends one attempt; the receiver's status code, or why there was none.
    async fn send(&self, message: &ClaimedWebhook, at: Timestamp) -> Result<u16, AttemptFailure> {
        let secret = WebhookSecret::parse(&message.secret)
            .ok_or_else(|| AttemptFailure("the stored secret is unreadable".into()))?;
        let url = parse_url(&message.url, self.settings.allow_private)
            .map_err(|e| AttemptFailure(format!("the endpoint {e}")))?;
        let client = self.client_for(&url).await?;
        let body = message_body(&message.event_type, message.event_at, &message.payload);
        let timestamp = at.unix_timestamp();
        let signature = secret.sign(&message.message_id, timestamp, &body);
        let response = client
            .post(url)
            .header("webhook-id", &message.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| AttemptFailure(describe(&e, self.settings.attempt_timeout)))?;
        Ok(response.status().as_u16())
    }

    /// The client for one attempt. Unless private targets are allowed, the
    /// host is resolved and checked now (it may have changed since the
    /// endpoint was created: DNS rebinding), and the client connects only
    /// to the addresses checked.
    async fn client_for(&self, url: &reqwest::Url) -> Result<reqwest::Client, AttemptFailure> {
        if self.settings.allow_private {
            return Ok(self.http.clone());
        }
        let addresses = resolve_public(url).await.map_err(|e| AttemptFailure(format!("the endpoint {e}")))?;
        let Some(Host::Domain(domain)) = host_of(url) else {
            return Ok(self.http.clone()); // An address literal: checked, and nothing to resolve.
        };
        let key = (domain.to_owned(), addresses);
        let mut pinned = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = pinned.get(&key) {
            return Ok(client.clone());
        }
        if pinned.len() >= MAX_PINNED_CLIENTS {
            pinned.clear();
        }
        let client = Self::client_builder(&self.settings)
            .resolve_to_addrs(&key.0, &key.1)
            .build()
            .map_err(|_| AttemptFailure("no HTTP client could be built".into()))?;
        pinned.insert(key, client.clone());
        Ok(client)
    }
}

/// A transport error in words, without the URL reqwest attaches.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("no answer within {} s", timeout.as_secs())
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed before an answer arrived".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_we_did_not_make() {
        let delivery = WebhookDelivery {
            id: "msg_0123abcd".into(),
            endpoint_id: Uuid::nil(),
            event_type: "license.updated".into(),
            status: WebhookMessageStatus::Pending,
            attempts: 0,
            next_attempt_at: None,
            created_at: time::macros::datetime!(2026-01-02 3:04:05.678901 UTC),
            delivered_at: None,
            attempt_log: Vec::new(),
        };
        let cursor = decode_cursor(&encode_cursor(&delivery)).unwrap();
        assert_eq!((cursor.created_at, cursor.id.as_str()), (delivery.created_at, "msg_0123abcd"));
        for bad in ["", "!!", &BASE64_URL.encode("12|evt_1"), &BASE64_URL.encode("x|msg_1"), &BASE64_URL.encode("1")] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn urls_must_be_https_without_credentials() {
        assert!(parse_url("https://hooks.example.com/in?x=1", false).is_ok());
        assert!(parse_url("http://hooks.example.com/in", true).is_ok());
        for (url, allow_private) in [
            ("http://hooks.example.com/in", false),
            ("ftp://hooks.example.com/", true),
            ("https://user:pw@hooks.example.com/", false),
            ("https://hooks.example.com/#frag", false),
            ("hooks.example.com/in", false),
            ("https://", false),
            ("mailto:ops@example.com", true),
        ] {
            assert!(parse_url(url, allow_private).is_err(), "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert!(parse_url(&long, false).is_err());
    }

    #[tokio::test]
    async fn private_targets_are_refused_by_address_and_by_name() {
        for url in [
            "https://127.0.0.1/",
            "https://[::1]:8443/",
            "https://10.0.0.8/",
            "https://169.254.169.254/",
            "https://localhost/",
        ] {
            let parsed = parse_url(url, false).unwrap();
            assert!(matches!(resolve_public(&parsed).await, Err(EndpointError::ForbiddenTarget(_))), "{url}");
        }
        let public = parse_url("https://93.184.216.34/", false).unwrap();
        assert_eq!(resolve_public(&public).await.unwrap(), vec!["93.184.216.34:443".parse().unwrap()]);
    }
}
