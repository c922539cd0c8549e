//! `Stripe-Signature` verification, exactly as Stripe specifies it.
//!
//! The header is `t=<unix seconds>,v1=<hex>,v1=<hex>,v0=<hex>`. Each `v1` is
//! HMAC-SHA256 over `"{t}.{raw body}"`, keyed with the endpoint secret string
//! as configured, `whsec_` prefix included (Stripe does not base64-decode it,
//! unlike Svix). While a secret is being rolled Stripe sends one `v1` per
//! secret; `v0` is a test-mode legacy scheme and is ignored.

use ring::hmac;
use subtle::ConstantTimeEq;

/// Stripe's default tolerance, in seconds, in either direction.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The endpoint secrets currently accepted (several while rotating).
#[derive(Clone)]
pub struct WebhookSecrets {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets(<{} redacted>)", self.keys.len())
    }
}

/// Why a delivery's signature was refused. The messages never contain the
/// secret or the expected signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("missing Stripe-Signature header")]
    Missing,
    /// The header has no usable `t=` timestamp.
    #[error("Stripe-Signature header has no valid timestamp")]
    NoTimestamp,
    /// The header has no `v1=` signature.
    #[error("Stripe-Signature header has no v1 signature")]
    NoV1Signature,
    /// The timestamp is more than the tolerance away from now.
    #[error("Stripe-Signature timestamp is outside the tolerance")]
    OutsideTolerance,
    /// No `v1` matches any configured secret.
    #[error("no signature matches the payload")]
    Mismatch,
}

impl WebhookSecrets {
    /// Parses the configured value: one secret, or several separated by commas.
    /// Returns `None` when no secret is present.
    pub fn parse(configured: &str) -> Option<Self> {
        let keys: Vec<_> = configured
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        (!keys.is_empty()).then_some(Self { keys })
    }

    /// Verifies `header` for `payload` at time `now` (Unix seconds).
    pub fn verify(&self, header: Option<&str>, payload: &[u8], now: i64) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let parsed = SignatureHeader::parse(header)?;
        if (now - parsed.timestamp).abs() > DEFAULT_TOLERANCE_SECS {
            return Err(SignatureError::OutsideTolerance);
        }
        for key in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(parsed.timestamp_text.as_bytes());
            ctx.update(b".");
            ctx.update(payload);
            let expected = ctx.sign();
            let matches = parsed
                .v1
                .iter()
                .fold(subtle::Choice::from(0), |acc, candidate| acc | expected.as_ref().ct_eq(candidate));
            if bool::from(matches) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }

    /// Produces a header for `payload` at `timestamp` with the first secret:
    /// what Stripe would send. Used by tests, benchmarks and examples.
    pub fn sign(&self, payload: &[u8], timestamp: i64) -> String {
        let mut ctx = hmac::Context::with_key(&self.keys[0]);
        ctx.update(format!("{timestamp}.").as_bytes());
        ctx.update(payload);
        format!("t={timestamp},v1={}", hex(ctx.sign().as_ref()))
    }
}

struct SignatureHeader<'a> {
    timestamp: i64,
    timestamp_text: &'a str,
    v1: Vec<Vec<u8>>,
}

impl<'a> SignatureHeader<'a> {
    fn parse(header: &'a str) -> Result<Self, SignatureError> {
        let mut timestamp = None;
        let mut v1 = Vec::new();
        for part in header.split(',') {
            let Some((name, value)) = part.trim().split_once('=') else { continue };
            match name {
                "t" => {
                    let seconds = value.parse::<i64>().map_err(|_| SignatureError::NoTimestamp)?;
                    timestamp = Some((seconds, value));
                }
                // A malformed candidate cannot match; skip it rather than
                // refusing the whole header, as Stripe's libraries do.
                "v1" => v1.extend(unhex(value)),
                _ => {}
            }
        }
        let (timestamp, timestamp_text) = timestamp.ok_or(SignatureError::NoTimestamp)?;
        if v1.is_empty() {
            return Err(SignatureError::NoV1Signature);
        }
        Ok(Self { timestamp, timestamp_text, v1 })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1"}"#;

    fn secrets(s: &str) -> WebhookSecrets {
        WebhookSecrets::parse(s).unwrap()
    }

    /// Expected value computed independently with Python's `hmac` module.
    #[test]
    fn matches_an_independently_computed_signature() {
        let s = secrets("whsec_test_secret");
        let header = s.sign(BODY, NOW);
        assert_eq!(header, "t=1700000000,v1=248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a");
        assert_eq!(s.verify(Some(&header), BODY, NOW), Ok(()));
    }

    #[test]
    fn every_failure_mode_is_refused() {
        let s = secrets("whsec_a");
        let good = s.sign(BODY, NOW);
        let v1 = good.split_once(",v1=").unwrap().1;
        for (header, expected) in [
            (None, SignatureError::Missing),
            (Some("".to_string()), SignatureError::NoTimestamp),
            (Some(format!("v1={v1}")), SignatureError::NoTimestamp),
            (Some(format!("t=abc,v1={v1}")), SignatureError::NoTimestamp),
            (Some(format!("t={NOW}")), SignatureError::NoV1Signature),
            (Some(format!("t={NOW},v0={v1}")), SignatureError::NoV1Signature),
            (Some(format!("t={},v1={v1}", NOW + 1)), SignatureError::Mismatch),
            (Some(format!("t={NOW},v1={}", "0".repeat(64))), SignatureError::Mismatch),
            (Some(format!("t={NOW},v1=zz")), SignatureError::NoV1Signature),
        ] {
            assert_eq!(s.verify(header.as_deref(), BODY, NOW), Err(expected), "{header:?}");
        }
        assert_eq!(s.verify(Some(&good), b"{\"id\":\"evt_2\"}", NOW), Err(SignatureError::Mismatch));
        assert_eq!(secrets("whsec_b").verify(Some(&good), BODY, NOW), Err(SignatureError::Mismatch));
    }

    #[test]
    fn tolerance_applies_in_both_directions() {
        let s = secrets("whsec_a");
        let header = s.sign(BODY, NOW);
        assert_eq!(s.verify(Some(&header), BODY, NOW + 300), Ok(()));
        assert_eq!(s.verify(Some(&header), BODY, NOW - 300), Ok(()));
        assert_eq!(s.verify(Some(&header), BODY, NOW + 301), Err(SignatureError::OutsideTolerance));
        assert_eq!(s.verify(Some(&header), BODY, NOW - 301), Err(SignatureError::OutsideTolerance));
    }

    #[test]
    fn any_v1_and_any_configured_secret_may_match() {
        let old = secrets("whsec_old");
        let new = secrets("whsec_new");
        let old_sig = old.sign(BODY, NOW).split_once(",v1=").unwrap().1.to_owned();
        let new_sig = new.sign(BODY, NOW).split_once(",v1=").unwrap().1.to_owned();
        let rolled = format!("t={NOW},v1={old_sig},v1={new_sig},v0=deadbeef");
        assert_eq!(new.verify(Some(&rolled), BODY, NOW), Ok(()));
        assert_eq!(old.verify(Some(&rolled), BODY, NOW), Ok(()));
        let both = secrets(" whsec_other , whsec_new ");
        assert_eq!(both.verify(Some(&new.sign(BODY, NOW)), BODY, NOW), Ok(()));
    }

    #[test]
    fn secrets_need_at_least_one_value_and_never_print() {
        assert!(WebhookSecrets::parse("").is_none());
        assert!(WebhookSecrets::parse(" , ").is_none());
        assert_eq!(format!("{:?}", secrets("whsec_a,whsec_b")), "WebhookSecrets(<2 redacted>)");
    }
}
