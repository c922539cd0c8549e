//! The license event stream (`GET /api/events/{licenseKey}`, Server-Sent
//! Events): typed events, automatic reconnection with backoff, resume with
//! `Last-Event-ID` (kept in the store, so it survives restarts too), fresh
//! state after every event, and a stop on refusal (eventsource-client would
//! retry a 401 forever).

use crate::client::LicenseClient;
use crate::store::ActivationState;
use crate::transport::ReqwestTransport;
use crate::types::Validation;
use eventsource_client::{self as es, Client as _};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// First reconnection delay; doubles per failed attempt (with jitter) up to
/// [`RECONNECT_MAX`]. A server's `retry:` hint replaces the base delay.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// An SSE `event:` name. The names this version knows have their own
/// variant; any other is kept as [`EventName::Unknown`], so that a newer
/// server's events reach an older client as text instead of breaking it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventName {
    /// `license.created`
    LicenseCreated,
    /// `license.updated`
    LicenseUpdated,
    /// `subscription.updated`
    SubscriptionUpdated,
    /// `payment.updated`
    PaymentUpdated,
    /// `device.activated`
    DeviceActivated,
    /// `device.updated`
    DeviceUpdated,
    /// `device.deactivated`
    DeviceDeactivated,
    /// `device.dead`
    DeviceDead,
    /// A name this version does not know.
    Unknown(String),
}

impl EventName {
    /// Every name this version knows.
    pub const KNOWN: [EventName; 8] = [
        Self::LicenseCreated,
        Self::LicenseUpdated,
        Self::SubscriptionUpdated,
        Self::PaymentUpdated,
        Self::DeviceActivated,
        Self::DeviceUpdated,
        Self::DeviceDeactivated,
        Self::DeviceDead,
    ];

    /// The name of an SSE message's `event:` field.
    pub fn parse(name: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|known| known.static_name() == name)
            .unwrap_or_else(|| Self::Unknown(name.to_owned()))
    }

    /// The wire name, e.g. `license.updated`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unknown(name) => name,
            known => known.static_name(),
        }
    }

    /// The wire name of a known event; empty for [`EventName::Unknown`],
    /// whose name is not static (callers handle it first).
    fn static_name(&self) -> &'static str {
        match self {
            Self::LicenseCreated => "license.created",
            Self::LicenseUpdated => "license.updated",
            Self::SubscriptionUpdated => "subscription.updated",
            Self::PaymentUpdated => "payment.updated",
            Self::DeviceActivated => "device.activated",
            Self::DeviceUpdated => "device.updated",
            Self::DeviceDeactivated => "device.deactivated",
            Self::DeviceDead => "device.dead",
            Self::Unknown(_) => "",
        }
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `license.created` and `license.updated`: the license was issued, or its
/// terms changed (plan, limit, status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseChanged {
    /// License id.
    pub license_id: String,
    /// `active`, `suspended`, `expired` or `revoked`.
    pub status: String,
    /// Device limit.
    pub max_devices: u32,
    /// Plan id.
    pub plan: Option<String>,
    /// Paid through (RFC 3339).
    pub expires_at: Option<String>,
    /// End of grace (RFC 3339).
    pub grace_ends_at: Option<String>,
    /// `subscription` or `perpetual` (`None` from a server that predates them).
    #[serde(default)]
    pub kind: Option<String>,
    /// End of the updates window (RFC 3339); `None`: every build is covered.
    #[serde(default)]
    pub updates_until: Option<String>,
    /// A card-less trial.
    #[serde(default)]
    pub trial: bool,
    /// Why, when a charge changed the license: `refund`, `dispute`,
    /// `dispute_won` or `dispute_lost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `subscription.updated`: the Stripe subscription behind the license changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionChanged {
    /// License id.
    pub license_id: String,
    /// Stripe status (`active`, `past_due`, `canceled`, …).
    pub status: String,
    /// Cancels when the period ends.
    pub cancel_at_period_end: bool,
    /// End of the current period (RFC 3339).
    pub current_period_end: Option<String>,
    /// Plan id.
    pub plan: Option<String>,
}

/// `device.*`: a device of the license was activated, deactivated, declared
/// dead or renamed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChanged {
    /// License id.
    pub license_id: String,
    /// The device concerned (compare with [`LicenseClient::device`]).
    pub device_id: String,
    /// Its hashed fingerprint.
    pub fingerprint: String,
    /// Its display name.
    pub name: Option<String>,
    /// Its status after the change.
    pub status: String,
    /// Why (`app`, `dashboard`, `heartbeat_missed`, `plan_limit`, …), if given.
    pub reason: Option<String>,
}

/// `payment.updated`: a payment of the subscription failed or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentChanged {
    /// License id.
    pub license_id: String,
    /// Payment status.
    pub status: String,
    /// Amount in the currency's minor unit.
    pub amount: i64,
    /// ISO currency code.
    pub currency: String,
}

/// An event's content, by type.
#[derive(Debug, Clone, PartialEq)]
pub enum EventPayload {
    /// `license.created`
    LicenseCreated(LicenseChanged),
    /// `license.updated`
    LicenseUpdated(LicenseChanged),
    /// `subscription.updated`
    SubscriptionUpdated(SubscriptionChanged),
    /// `device.activated`
    DeviceActivated(DeviceChanged),
    /// `device.deactivated`
    DeviceDeactivated(DeviceChanged),
    /// `device.dead`
    DeviceDead(DeviceChanged),
    /// `device.updated`
    DeviceUpdated(DeviceChanged),
    /// `payment.updated`
    PaymentUpdated(PaymentChanged),
    /// A type this version does not know, or data that did not parse.
    Other {
        /// The SSE `event:` name.
        topic: String,
        /// The data (JSON when it parses, else a string).
        data: serde_json::Value,
    },
}

impl EventPayload {
    /// Parses an SSE message's type and data.
    pub fn parse(topic: &str, data: &str) -> Self {
        fn typed<T: serde::de::DeserializeOwned>(data: &str, wrap: fn(T) -> EventPayload) -> Option<EventPayload> {
            serde_json::from_str(data).ok().map(wrap)
        }
        let parsed = match EventName::parse(topic) {
            EventName::LicenseCreated => typed(data, Self::LicenseCreated),
            EventName::LicenseUpdated => typed(data, Self::LicenseUpdated),
            EventName::SubscriptionUpdated => typed(data, Self::SubscriptionUpdated),
            EventName::DeviceActivated => typed(data, Self::DeviceActivated),
            EventName::DeviceDeactivated => typed(data, Self::DeviceDeactivated),
            EventName::DeviceDead => typed(data, Self::DeviceDead),
            EventName::DeviceUpdated => typed(data, Self::DeviceUpdated),
            EventName::PaymentUpdated => typed(data, Self::PaymentUpdated),
            EventName::Unknown(_) => None,
        };
        parsed.unwrap_or_else(|| Self::Other {
            topic: topic.to_owned(),
            data: serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_owned())),
        })
    }

    /// The SSE `event:` name. Data that did not parse leaves a known name
    /// in [`EventPayload::Other`], and it is still that name.
    pub fn name(&self) -> EventName {
        match self {
            Self::LicenseCreated(_) => EventName::LicenseCreated,
            Self::LicenseUpdated(_) => EventName::LicenseUpdated,
            Self::SubscriptionUpdated(_) => EventName::SubscriptionUpdated,
            Self::DeviceActivated(_) => EventName::DeviceActivated,
            Self::DeviceDeactivated(_) => EventName::DeviceDeactivated,
            Self::DeviceDead(_) => EventName::DeviceDead,
            Self::DeviceUpdated(_) => EventName::DeviceUpdated,
            Self::PaymentUpdated(_) => EventName::PaymentUpdated,
            Self::Other { topic, .. } => EventName::parse(topic),
        }
    }

    /// The SSE `event:` name as text, e.g. `license.updated`.
    pub fn topic(&self) -> &str {
        match self {
            Self::Other { topic, .. } => topic,
            typed => typed.name().static_name(),
        }
    }

    /// The data as JSON.
    pub fn data(&self) -> serde_json::Value {
        let json = |v: Result<serde_json::Value, serde_json::Error>| v.expect("event payloads serialize");
        match self {
            Self::LicenseCreated(v) | Self::LicenseUpdated(v) => json(serde_json::to_value(v)),
            Self::SubscriptionUpdated(v) => json(serde_json::to_value(v)),
            Self::DeviceActivated(v) | Self::DeviceDeactivated(v) | Self::DeviceDead(v) | Self::DeviceUpdated(v) => {
                json(serde_json::to_value(v))
            }
            Self::PaymentUpdated(v) => json(serde_json::to_value(v)),
            Self::Other { data, .. } => data.clone(),
        }
    }
}

/// One event, with the client's state refreshed after it.
#[derive(Debug, Clone, PartialEq)]
pub struct LicenseEvent {
    /// The event id (what `Last-Event-ID` resumes from).
    pub id: Option<String>,
    /// What happened.
    pub payload: EventPayload,
    /// The verdict after the event: the client re-validated (and, when
    /// still valid, sent a heartbeat for a fresh certificate) before
    /// delivering it. `None` only if that failed without an offline answer.
    pub state: Option<Validation>,
}

/// Why a subscription ended by itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStop {
    /// `UNAUTHORIZED` (the device or token lost its right to listen; activate
    /// again), `HTTP_<status>` for other refusals, or `CLOSED`.
    pub code: String,
    /// The verdict after the stop.
    pub state: Option<Validation>,
}

/// What a subscription reports.
// Updates are handed out one at a time, each moved once: boxing the event
// would change the public API to save bytes nobody stores.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StreamUpdate {
    /// Connected (or reconnected) to the server.
    Connected,
    /// The connection dropped; reconnecting with backoff.
    Disconnected,
    /// An event arrived.
    Event(LicenseEvent),
    /// The stream stopped for good; subscribe again after activating.
    Stopped(StreamStop),
}

/// A running subscription. It stops on [`Subscription::close`] or when dropped.
#[derive(Debug)]
pub struct Subscription {
    stop: watch::Sender<bool>,
}

impl Subscription {
    /// Stops the stream.
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the stream has stopped (closed, or stopped by itself).
    pub fn is_closed(&self) -> bool {
        self.stop.is_closed()
    }

    /// Resolves when the stream has stopped.
    pub async fn closed(&self) {
        self.stop.closed().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close();
    }
}

pub(crate) type Callback = Arc<dyn Fn(StreamUpdate) + Send + Sync>;

/// Starts the stream task on the current runtime.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    client: LicenseClient,
    activation: ActivationState,
    on_update: Callback,
) -> Result<Subscription, crate::Error> {
    let url = client.api().url(&format!("/api/events/{}", encode_path_segment(activation.license_key.expose())));
    let invalid = |_| crate::Error::InvalidServerUrl;
    let mut builder = es::ClientBuilder::for_url(&url)
        .map_err(invalid)?
        .header("Authorization", &format!("Bearer {}", activation.activation_token.expose()))
        .map_err(|_| crate::Error::NotActivated)?
        .reconnect(
            es::ReconnectOptions::reconnect(true)
                .retry_initial(true)
                .delay(RECONNECT_DELAY)
                .backoff_factor(2)
                .delay_max(RECONNECT_MAX)
                .build(),
        );
    if let Some(id) = &activation.last_event_id {
        builder = builder.last_event_id(id.clone());
    }
    let stream = builder.build_with_transport(ReqwestTransport::new(client.events_http())).stream();
    let (stop, stopped) = watch::channel(false);
    runtime.spawn(run(client, activation, stream, on_update, stopped));
    Ok(Subscription { stop })
}

async fn run(
    client: LicenseClient,
    activation: ActivationState,
    mut stream: es::BoxStream<es::Result<es::SSE>>,
    on_update: Callback,
    mut stop: watch::Receiver<bool>,
) {
    let mut connected = false;
    loop {
        let item = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(es::SSE::Connected(_))) => {
                connected = true;
                on_update(StreamUpdate::Connected);
            }
            Some(Ok(es::SSE::Comment(_))) => {}
            Some(Ok(es::SSE::Event(event))) => {
                let payload = EventPayload::parse(&event.event_type, &event.data);
                if let Some(id) = &event.id {
                    if let Err(e) = client.remember_event_id(&activation.activation_token, id) {
                        tracing::warn!(code = e.code(), "could not store the last event id");
                    }
                }
                let state = client.refresh().await;
                on_update(StreamUpdate::Event(LicenseEvent { id: event.id, payload, state }));
            }
            Some(Err(es::Error::UnexpectedResponse(response, _))) if is_refusal(response.status()) => {
                let code = match response.status() {
                    401 => "UNAUTHORIZED".to_owned(),
                    status => format!("HTTP_{status}"),
                };
                tracing::warn!(code, "the server refused the event stream; stopping");
                let state = client.refresh().await;
                // Closed before anyone hears it stopped, so that a listener
                // reacting to the stop sees `is_closed()` already true.
                drop(stop);
                on_update(StreamUpdate::Stopped(StreamStop { code, state }));
                return;
            }
            Some(Err(e)) => {
                // Eof on every disconnect, then the client reconnects by itself.
                tracing::debug!(error = %e, "event stream interrupted; reconnecting");
                if connected {
                    connected = false;
                    on_update(StreamUpdate::Disconnected);
                }
            }
            None => {
                drop(stop);
                on_update(StreamUpdate::Stopped(StreamStop { code: "CLOSED".into(), state: None }));
                return;
            }
        }
    }
}

/// Statuses that retrying cannot fix. 429 and 5xx are retried with backoff.
fn is_refusal(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 404 | 410)
}

/// Percent-encodes a path segment (license keys are `A-Z0-9-`, but be safe).
fn encode_path_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_by_topic_and_unknown_ones_are_kept() {
        let device = r#"{"license_id":"l","device_id":"d","fingerprint":"f","name":null,"status":"dead","reason":"heartbeat_missed"}"#;
        match EventPayload::parse("device.dead", device) {
            EventPayload::DeviceDead(d) => assert_eq!(d.reason.as_deref(), Some("heartbeat_missed")),
            other => panic!("{other:?}"),
        }
        let license = r#"{"license_id":"l","status":"active","max_devices":1,"plan":"basic","expires_at":null,"grace_ends_at":null}"#;
        let parsed = EventPayload::parse("license.updated", license);
        assert_eq!(parsed.topic(), "license.updated");
        assert_eq!(parsed.data()["max_devices"], 1);
        let created = EventPayload::parse("license.created", license);
        assert!(
            matches!(&created, EventPayload::LicenseCreated(l) if l.plan.as_deref() == Some("basic")),
            "{created:?}"
        );
        assert_eq!(created.topic(), "license.created");
        assert!(matches!(&created, EventPayload::LicenseCreated(l) if l.reason.is_none()));
        let disputed = r#"{"license_id":"l","status":"suspended","max_devices":1,"plan":"studio","expires_at":null,"grace_ends_at":null,"kind":"perpetual","reason":"dispute"}"#;
        match EventPayload::parse("license.updated", disputed) {
            EventPayload::LicenseUpdated(l) => {
                assert_eq!((l.status.as_str(), l.reason.as_deref()), ("suspended", Some("dispute")))
            }
            other => panic!("{other:?}"),
        }
        let unknown = EventPayload::parse("coupon.applied", r#"{"x":1}"#);
        assert_eq!(unknown.topic(), "coupon.applied");
        assert_eq!(unknown.name(), EventName::Unknown("coupon.applied".into()));
        assert_eq!(unknown.data()["x"], 1);
        let malformed = EventPayload::parse("license.updated", "not json");
        assert_eq!(malformed.data(), serde_json::json!("not json"));
        assert_eq!((malformed.name(), malformed.topic()), (EventName::LicenseUpdated, "license.updated"));
    }

    #[test]
    fn event_names_parse_back_and_unknown_ones_are_kept() {
        for known in EventName::KNOWN {
            assert_eq!(EventName::parse(known.as_str()), known);
            assert_eq!(known.to_string(), known.as_str());
            assert!(!known.as_str().is_empty());
        }
        for unknown in ["", "coupon.applied", "License.Updated", "license.updated "] {
            assert_eq!(EventName::parse(unknown), EventName::Unknown(unknown.to_owned()));
            assert_eq!(EventName::parse(unknown).as_str(), unknown);
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("ABCD-1234"), "ABCD-1234");
        assert_eq!(encode_path_segment("a/b c"), "a%2Fb%20c");
    }
}
