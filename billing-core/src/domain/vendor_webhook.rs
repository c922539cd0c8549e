//! Webhooks to the vendor's own systems: the pure rules. Which event types
//! exist, the retry schedule, Standard Webhooks signing and which addresses
//! a message may never be sent to (SSRF). Randomness only where a secret is
//! generated on purpose.

use super::{Timestamp, Topic};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ring::hmac;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Every event type an endpoint may subscribe to: every topic.
pub const EVENT_TYPES: &[&str] = Topic::NAMES;

/// Subscribes to every event type.
pub const ALL_EVENTS: &str = "*";

/// An endpoint's subscription list, checked: known event types or `*`
/// alone, no duplicates, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Vec<String>);

/// Why a subscription list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventFilterError {
    /// No event type was given.
    #[error("events must name at least one event type, or \"*\"")]
    Empty,
    /// An event type we never send.
    #[error("unknown event type")]
    Unknown(String),
    /// `*` together with named types.
    #[error("\"*\" subscribes to every event type and cannot be combined with others")]
    WildcardWithOthers,
}

impl EventFilter {
    /// Checks a subscription list; duplicates are dropped, order kept.
    pub fn parse<S: AsRef<str>>(events: &[S]) -> Result<Self, EventFilterError> {
        if events.is_empty() {
            return Err(EventFilterError::Empty);
        }
        let mut kept: Vec<String> = Vec::with_capacity(events.len());
        for event in events.iter().map(AsRef::as_ref) {
            if event != ALL_EVENTS && Topic::parse(event).is_none() {
                return Err(EventFilterError::Unknown(event.to_owned()));
            }
            if !kept.iter().any(|k| k == event) {
                kept.push(event.to_owned());
            }
        }
        if kept.len() > 1 && kept.iter().any(|k| k == ALL_EVENTS) {
            return Err(EventFilterError::WildcardWithOthers);
        }
        Ok(Self(kept))
    }

    /// The event types (or `["*"]`).
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether a message of `topic` goes to an endpoint with this filter
    /// (the stores' enqueue applies the same rule in SQL).
    pub fn matches(&self, topic: Topic) -> bool {
        self.0.iter().any(|e| e == ALL_EVENTS || e == topic.as_str())
    }
}

/// Delays between attempts: after the n-th failed attempt the message is
/// tried again after the n-th delay; once they run out it has failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// About 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over
    /// about a day, long enough to outlast a receiver's bad deploy or outage.
    fn default() -> Self {
        Self([5, 300, 1_800, 7_200, 18_000, 36_000, 36_000].into_iter().map(Duration::from_secs).collect())
    }
}

impl RetrySchedule {
    /// A schedule of these delays (possibly none: one attempt only).
    pub fn new(delays: Vec<Duration>) -> Self {
        Self(delays)
    }

    /// Parses comma-separated seconds (`BILLING_WEBHOOK_RETRY_SCHEDULE`),
    /// e.g. `5,300,1800`.
    pub fn parse_seconds(text: &str) -> Option<Self> {
        text.split(',')
            .map(|part| part.trim().parse::<u64>().ok().map(Duration::from_secs))
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }

    /// The delays.
    pub fn delays(&self) -> &[Duration] {
        &self.0
    }

    /// When to try again after `attempts` attempts (counting the one just
    /// made) failed at `failed_at`; None when the message has failed for good.
    pub fn next_attempt(&self, attempts: u32, failed_at: Timestamp) -> Option<Timestamp> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        let delay = *self.0.get(index)?;
        Some(failed_at + delay)
    }
}

/// Whether an answer with this status code counts as delivered.
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// An endpoint's signing secret: `whsec_` + base64 of the key bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The prefix of every secret, as Standard Webhooks libraries expect.
const SECRET_PREFIX: &str = "whsec_";

/// How many random bytes a new secret has.
pub const SECRET_BYTES: usize = 32;

impl WebhookSecret {
    /// A new secret of [`SECRET_BYTES`] bytes from the operating system's RNG.
    pub fn generate() -> Self {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut key = vec![0; SECRET_BYTES];
        SystemRandom::new().fill(&mut key).expect("the operating system RNG is available");
        Self(key)
    }

    /// A secret of these key bytes.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Option<Self> {
        let encoded = text.strip_prefix(SECRET_PREFIX)?;
        BASE64.decode(encoded).ok().filter(|key| !key.is_empty()).map(Self)
    }

    /// The text shown once to the vendor and stored to sign with.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }

    /// The `webhook-signature` header value of one attempt: `v1,` + base64
    /// of HMAC-SHA256 over `{id}.{timestamp}.{body}`.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut context = hmac::Context::with_key(&key);
        context.update(message_id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", BASE64.encode(context.sign().as_ref()))
    }
}

/// The body of a message: `{"type","timestamp","data"}`, `timestamp` the
/// event's time in RFC 3339. The same inputs give the same bytes, so every
/// retry of a message sends (and signs) the same body.
pub fn message_body(event_type: &str, event_at: Timestamp, data: &serde_json::Value) -> Vec<u8> {
    let timestamp = event_at
        .to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let body = serde_json::json!({ "type": event_type, "timestamp": timestamp, "data": data });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Why an address may not receive webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenAddress {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, fc00::/7.
    Private,
    /// 169.254.0.0/16, fe80::/10 (cloud metadata services live here).
    LinkLocal,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 100.64.0.0/10, carrier-grade NAT.
    SharedAddressSpace,
    /// 224.0.0.0/4, ff00::/8, 255.255.255.255.
    Multicast,
}

impl ForbiddenAddress {
    /// For error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::Unspecified => "an unspecified address",
            Self::SharedAddressSpace => "a carrier-grade NAT address",
            Self::Multicast => "a multicast or broadcast address",
        }
    }
}

/// Classifies a target address: None when webhooks may be sent to it.
/// IPv4-mapped and -compatible IPv6 addresses are judged as the IPv4
/// address they carry, so `::ffff:127.0.0.1` is loopback too.
pub fn forbidden_address(address: IpAddr) -> Option<ForbiddenAddress> {
    match address {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| compatible_v4(v6)) {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

/// `::a.b.c.d` (deprecated, but still routed by some stacks); `::` and
/// `::1` are themselves, not IPv4.
fn compatible_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let octets = v6.octets();
    (octets[..12].iter().all(|&b| b == 0) && u32::from_be_bytes([octets[12], octets[13], octets[14], octets[15]]) > 1)
        .then(|| Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]))
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<ForbiddenAddress> {
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some(ForbiddenAddress::Loopback)
    } else if v4.is_private() {
        Some(ForbiddenAddress::Private)
    } else if v4.is_link_local() {
        Some(ForbiddenAddress::LinkLocal)
    } else if v4.is_unspecified() || a == 0 {
        // 0.0.0.0/8 means "this network": Linux connects it to the host itself.
        Some(ForbiddenAddress::Unspecified)
    } else if a == 100 && (64..128).contains(&b) {
        Some(ForbiddenAddress::SharedAddressSpace)
    } else if v4.is_multicast() || v4.is_broadcast() {
        Some(ForbiddenAddress::Multicast)
    } else {
        None
    }
}

fn forbidden_v6(v6: Ipv6Addr) -> Option<ForbiddenAddress> {
    let first = v6.segments()[0];
    if v6.is_loopback() {
        Some(ForbiddenAddress::Loopback)
    } else if v6.is_unspecified() {
        Some(ForbiddenAddress::Unspecified)
    } else if first & 0xfe00 == 0xfc00 {
        Some(ForbiddenAddress::Private)
    } else if first & 0xffc0 == 0xfe80 {
        Some(ForbiddenAddress::LinkLocal)
    } else if v6.is_multicast() {
        Some(ForbiddenAddress::Multicast)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(address: &str, expected: Option<ForbiddenAddress>) {
        let parsed: IpAddr = address.parse().unwrap();
        assert_eq!(forbidden_address(parsed), expected, "{address}");
    }

    #[test]
    fn addresses_are_classified() {
        use ForbiddenAddress::*;
        for (address, expected) in [
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("10.1.2.3", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::10.0.0.1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("255.255.255.255", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("8.8.8.8", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("172.32.0.1", None),
            ("2606:4700::1111", None),
            ("fec0::1", None),
            ("::ffff:93.184.216.34", None),
        ] {
            check(address, expected);
        }
    }

    #[test]
    fn the_default_schedule_gives_eight_attempts_then_failure() {
        let schedule = RetrySchedule::default();
        let at = time::macros::datetime!(2026-01-01 0:00 UTC);
        assert_eq!(schedule.next_attempt(1, at), Some(at + Duration::from_secs(5)));
        assert_eq!(schedule.next_attempt(2, at), Some(at + Duration::from_secs(300)));
        assert_eq!(schedule.next_attempt(7, at), Some(at + Duration::from_secs(36_000)));
        assert_eq!(schedule.next_attempt(8, at), None);
        assert_eq!(schedule.next_attempt(0, at), None);
    }

    #[test]
    fn schedules_parse_from_seconds() {
        let parsed = RetrySchedule::parse_seconds("1, 2,30").unwrap();
        assert_eq!(parsed.delays(), &[Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(30)]);
        for bad in ["", "1,,2", "-1", "1.5", "a"] {
            assert_eq!(RetrySchedule::parse_seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn event_filters_accept_known_types_or_everything() {
        let filter = EventFilter::parse(&["license.updated", "license.created", "license.updated"]).unwrap();
        assert_eq!(filter.as_slice(), &["license.updated".to_owned(), "license.created".to_owned()]);
        assert!(filter.matches(Topic::LicenseCreated) && !filter.matches(Topic::DeviceDead));
        assert!(Topic::ALL.into_iter().all(|topic| EventFilter::parse(&["*"]).unwrap().matches(topic)));
        assert!(Topic::ALL.into_iter().all(|topic| EventFilter::parse(&[topic.as_str()]).unwrap().matches(topic)));
        assert_eq!(EventFilter::parse::<&str>(&[]), Err(EventFilterError::Empty));
        assert_eq!(EventFilter::parse(&["license.deleted"]), Err(EventFilterError::Unknown("license.deleted".into())));
        assert_eq!(EventFilter::parse(&["*", "device.dead"]), Err(EventFilterError::WildcardWithOthers));
    }

    /// The example of the Standard Webhooks specification (and of every
    /// library implementing it).
    #[test]
    fn signatures_follow_standard_webhooks() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(WebhookSecret::parse(&secret.expose()), Some(secret));
        assert_eq!(WebhookSecret::parse("whsec_"), None);
        assert_eq!(WebhookSecret::parse("sk_MfKQ"), None);
        assert!(!format!("{:?}", WebhookSecret::from_bytes(vec![1, 2, 3])).contains("AQID"));
    }

    #[test]
    fn bodies_are_the_same_bytes_every_time() {
        let at = time::macros::datetime!(2026-03-04 5:06:07.5 UTC);
        let data = serde_json::json!({ "b": 1, "a": [true, null] });
        let body = message_body("license.updated", at, &data);
        assert_eq!(body, message_body("license.updated", at, &data));
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({ "type": "license.updated", "timestamp": "2026-03-04T05:06:07.5Z", "data": data })
        );
    }
}
