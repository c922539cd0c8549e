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
        // `abs_diff`: a timestamp near i64::MIN or MAX must be refused, not
        // overflow.
        if now.abs_diff(parsed.timestamp) > DEFAULT_TOLERANCE_SECS.unsigned_abs() {
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

/// Lower-case hex only, as Stripe writes it and its libraries compare it:
/// `from_str_radix` alone would also take `+f` or `0F`, so a signature with
/// one character changed could still match.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A secret as an operator configures one: no commas (they separate
        /// secrets), not blank.
        fn secret() -> impl Strategy<Value = String> {
            "whsec_[A-Za-z0-9+/=_ -]{0,40}"
        }

        /// A timestamp whose tolerance window fits in an i64.
        fn timestamp() -> impl Strategy<Value = i64> {
            (i64::MIN + DEFAULT_TOLERANCE_SECS)..=(i64::MAX - DEFAULT_TOLERANCE_SECS)
        }

        fn v1_of(header: &str) -> &str {
            header.split_once(",v1=").unwrap().1
        }

        /// Elements a header may carry besides `t` and `v1`, which must not
        /// change the verdict.
        fn noise() -> impl Strategy<Value = String> {
            prop_oneof![
                "v0=[0-9a-f]{0,64}",
                "[a-su-z][a-z0-9]{0,4}=[ -~&&[^,]]{0,20}",
                "[ -~&&[^,=]]{0,10}",
                Just(String::new()),
            ]
        }

        proptest! {
            #[test]
            fn any_header_and_any_clock_is_answered_without_panicking(header in ".*", now in any::<i64>()) {
                let _ = WebhookSecrets::parse("whsec_a").unwrap().verify(Some(&header), b"{}", now);
            }

            #[test]
            fn headers_shaped_like_stripe_ones_never_panic(
                t in any::<i64>(),
                v1 in "[0-9a-fA-F+-]{0,70}",
                now in any::<i64>(),
            ) {
                let header = format!("t={t},v1={v1}");
                let _ = WebhookSecrets::parse("whsec_a").unwrap().verify(Some(&header), b"{}", now);
            }

            #[test]
            fn a_signed_payload_verifies_anywhere_within_the_tolerance(
                secret in secret(),
                payload in proptest::collection::vec(any::<u8>(), 0..512),
                timestamp in timestamp(),
                skew in -DEFAULT_TOLERANCE_SECS..=DEFAULT_TOLERANCE_SECS,
            ) {
                let secrets = WebhookSecrets::parse(&secret).unwrap();
                let header = secrets.sign(&payload, timestamp);
                prop_assert_eq!(secrets.verify(Some(&header), &payload, timestamp + skew), Ok(()));
            }

            #[test]
            fn beyond_the_tolerance_a_good_signature_is_refused(
                timestamp in timestamp(),
                beyond in (DEFAULT_TOLERANCE_SECS + 1)..=i64::MAX,
                later in any::<bool>(),
            ) {
                let secrets = WebhookSecrets::parse("whsec_a").unwrap();
                let header = secrets.sign(BODY, timestamp);
                let now = if later { timestamp.checked_add(beyond) } else { timestamp.checked_sub(beyond) };
                prop_assume!(now.is_some());
                prop_assert_eq!(secrets.verify(Some(&header), BODY, now.unwrap()), Err(SignatureError::OutsideTolerance));
            }

            #[test]
            fn any_single_byte_change_to_the_payload_is_refused(
                payload in proptest::collection::vec(any::<u8>(), 1..256),
                index in any::<prop::sample::Index>(),
                replacement in any::<u8>(),
            ) {
                let secrets = WebhookSecrets::parse("whsec_a").unwrap();
                let header = secrets.sign(&payload, NOW);
                let mut changed = payload.clone();
                let i = index.index(changed.len());
                prop_assume!(changed[i] != replacement);
                changed[i] = replacement;
                prop_assert_eq!(secrets.verify(Some(&header), &changed, NOW), Err(SignatureError::Mismatch));
            }

            /// Every character of the header is covered: the timestamp, the
            /// signature, and the punctuation between them.
            #[test]
            fn any_single_character_change_to_the_header_is_refused(
                timestamp in (NOW - DEFAULT_TOLERANCE_SECS)..=(NOW + DEFAULT_TOLERANCE_SECS),
                index in any::<prop::sample::Index>(),
                replacement in any::<char>(),
            ) {
                let secrets = WebhookSecrets::parse("whsec_a").unwrap();
                let header = secrets.sign(BODY, timestamp);
                let i = index.index(header.len());
                let original = header.as_bytes()[i] as char;
                prop_assume!(original != replacement);
                let mut changed = header.clone();
                changed.replace_range(i..=i, replacement.encode_utf8(&mut [0; 4]));
                prop_assert!(secrets.verify(Some(&changed), BODY, NOW).is_err(), "{} accepted", changed);
            }

            /// `u8::from_str_radix` reads `+f` and `F` like `0f` and `f`: a
            /// signature respelled so must not pass for the original.
            #[test]
            fn a_respelled_signature_is_refused(
                payload in proptest::collection::vec(any::<u8>(), 0..64),
                index in any::<prop::sample::Index>(),
            ) {
                let secrets = WebhookSecrets::parse("whsec_a").unwrap();
                let header = secrets.sign(&payload, NOW);
                let start = header.len() - v1_of(&header).len();
                let respellable: Vec<usize> = (start..header.len())
                    .filter(|&i| {
                        let c = header.as_bytes()[i];
                        c.is_ascii_lowercase() || (c == b'0' && (i - start).is_multiple_of(2))
                    })
                    .collect();
                prop_assume!(!respellable.is_empty());
                let i = respellable[index.index(respellable.len())];
                let respelled = match header.as_bytes()[i] {
                    b'0' => "+".to_owned(),
                    c => (c as char).to_ascii_uppercase().to_string(),
                };
                let mut changed = header.clone();
                changed.replace_range(i..=i, &respelled);
                prop_assert_eq!(secrets.verify(Some(&changed), &payload, NOW), Err(SignatureError::NoV1Signature));
            }

            #[test]
            fn extra_duplicated_and_padded_elements_and_v1_order_do_not_matter(
                secrets_list in proptest::collection::vec(secret(), 1..4),
                noise in proptest::collection::vec(noise(), 0..4),
                duplicate_t in any::<bool>(),
                padding in proptest::collection::vec("[ \t]{0,2}", 16),
                order in any::<prop::sample::Index>(),
                payload in proptest::collection::vec(any::<u8>(), 0..128),
            ) {
                // One v1 per secret being rolled, plus one that matches nothing.
                let mut elements: Vec<String> = secrets_list
                    .iter()
                    .map(|s| format!("v1={}", v1_of(&WebhookSecrets::parse(s).unwrap().sign(&payload, NOW))))
                    .chain(std::iter::once(format!("v1={}", "0".repeat(64))))
                    .chain(noise)
                    .collect();
                elements.insert(order.index(elements.len() + 1), format!("t={NOW}"));
                if duplicate_t {
                    elements.push(format!("t={NOW}"));
                }
                let header = elements
                    .iter()
                    .enumerate()
                    .map(|(i, e)| format!("{}{e}{}", padding[(2 * i) % 16], padding[(2 * i + 1) % 16]))
                    .collect::<Vec<_>>()
                    .join(",");
                for secret in &secrets_list {
                    let verifier = WebhookSecrets::parse(secret).unwrap();
                    prop_assert_eq!(verifier.verify(Some(&header), &payload, NOW), Ok(()), "{}", header);
                }
                let stranger = WebhookSecrets::parse("whsec_not_configured_here").unwrap();
                prop_assert_eq!(stranger.verify(Some(&header), &payload, NOW), Err(SignatureError::Mismatch));
            }
        }
    }
}
