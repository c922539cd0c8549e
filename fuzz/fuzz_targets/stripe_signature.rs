//! Any header, payload and clock: the verifier answers, and a header it
//! signed itself verifies within the tolerance.
#![no_main]

use billing_core::stripe::signature::DEFAULT_TOLERANCE_SECS;
use billing_core::stripe::WebhookSecrets;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8], i64, i16)| {
    let (header, payload, now, skew) = input;
    let secrets = WebhookSecrets::parse("whsec_fuzz").expect("a secret");
    let _ = secrets.verify(Some(header), payload, now);
    let skew = i64::from(skew) % (DEFAULT_TOLERANCE_SECS + 1);
    if let Some(signed_at) = now.checked_sub(skew) {
        let signed = secrets.sign(payload, signed_at);
        assert_eq!(secrets.verify(Some(&signed), payload, now), Ok(()), "{signed}");
    }
});
