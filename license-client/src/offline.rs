//! Offline validation: the verdict from the stored certificate alone, as a
//! pure function of the state and the clock.

use crate::certificate::{self, PublicKey};
use crate::store::ActivationState;
use crate::types::{Validation, ValidationCode};

/// Clock differences smaller than this are ordinary (NTP steps, a server's
/// clock slightly ahead) and do not count as rollback.
pub const CLOCK_TOLERANCE_SECS: i64 = 300;

/// Who asks for an offline verdict: this machine, running this build.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asking<'a> {
    /// This machine's fingerprint.
    pub fingerprint: &'a str,
    /// When the running build was released (Unix seconds), if the app said.
    pub app_released_at: Option<i64>,
}

/// The offline verdict at `now`, checked in this order: clock rollback
/// (behind `last_seen` or the certificate's `iat`), signature, fingerprint,
/// the server's last refusal, the certificate's license status, its
/// updates window (a build released after `updates_until` is
/// `UPDATES_EXPIRED`, as online), `exp`.
pub(crate) fn verdict(
    activation: &ActivationState,
    key: Option<&PublicKey>,
    asking: &Asking<'_>,
    now: i64,
    last_seen: i64,
) -> Validation {
    let license = Some(activation.license.clone());
    let refuse = |code| Validation::new(code, true, license.clone());
    if now + CLOCK_TOLERANCE_SECS < last_seen {
        return refuse(ValidationCode::ClockRollback);
    }
    let Some(claims) = key.and_then(|key| certificate::verify(&activation.certificate, key).ok()) else {
        return refuse(ValidationCode::InvalidCertificate);
    };
    if now + CLOCK_TOLERANCE_SECS < claims.iat {
        return refuse(ValidationCode::ClockRollback);
    }
    if claims.fingerprint != asking.fingerprint {
        return refuse(ValidationCode::FingerprintMismatch);
    }
    if let Some(code) = &activation.refusal {
        return refuse(ValidationCode::parse(code));
    }
    if let Some(code) = ValidationCode::of_status(&claims.status) {
        return refuse(code);
    }
    if let (Some(released), Some(until)) = (asking.app_released_at, claims.updates_until) {
        if released > until {
            return refuse(ValidationCode::UpdatesExpired);
        }
    }
    if now >= claims.exp {
        return refuse(ValidationCode::CertificateExpired);
    }
    Validation::new(ValidationCode::Valid, true, license)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Secret;
    use crate::types::{Device, LicenseInfo};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const NOW: i64 = 1_800_000_000;

    struct Fixture {
        pair: Ed25519KeyPair,
        key: PublicKey,
    }

    impl Fixture {
        fn new() -> Self {
            let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
            let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
            let key = PublicKey::from_bytes(pair.public_key().as_ref().try_into().unwrap());
            Self { pair, key }
        }

        fn activation(&self, status: &str, iat: i64, exp: i64, refusal: Option<&str>) -> ActivationState {
            self.activation_with(status, iat, exp, refusal, None)
        }

        fn activation_with(
            &self,
            status: &str,
            iat: i64,
            exp: i64,
            refusal: Option<&str>,
            updates_until: Option<i64>,
        ) -> ActivationState {
            let claims = serde_json::json!({
                "iss": "billing", "sub": "lic", "license_id": "lic", "device_id": "dev", "fingerprint": "fp",
                "plan": "pro", "status": status, "max_devices": 2, "entitlements": [], "iat": iat, "exp": exp,
                "kind": "perpetual", "updates_until": updates_until, "trial": false
            });
            let input = format!("{}.{}", B64.encode(r#"{"alg":"EdDSA"}"#), B64.encode(claims.to_string()));
            let certificate = format!("{input}.{}", B64.encode(self.pair.sign(input.as_bytes())));
            ActivationState {
                license_key: Secret::new("KEY"),
                activation_token: Secret::new("act_x"),
                fingerprint: "fp".into(),
                device: Device {
                    id: "dev".into(),
                    license_id: "lic".into(),
                    fingerprint: "fp".into(),
                    name: None,
                    platform: None,
                    app_version: None,
                    status: "active".into(),
                    alive: true,
                    activated_at: String::new(),
                    last_seen_at: String::new(),
                    deactivated_at: None,
                    air_gapped: false,
                },
                license: LicenseInfo {
                    id: "lic".into(),
                    status: status.into(),
                    plan: Some("pro".into()),
                    max_devices: 2,
                    expires_at: None,
                    grace_ends_at: None,
                    entitlements: vec![],
                    kind: Some("perpetual".into()),
                    updates_until: None,
                    trial: false,
                },
                certificate,
                heartbeat_window_secs: 600,
                refusal: refusal.map(str::to_owned),
                last_event_id: None,
                last_online_at: None,
                air_gapped: false,
            }
        }
    }

    #[test]
    fn offline_verdicts_come_in_the_documented_order() {
        let f = Fixture::new();
        let other_key = Fixture::new().key;
        let day = 24 * 3600;
        let fresh = f.activation("active", NOW - 60, NOW + day, None);
        let check = |a: &ActivationState, key: &PublicKey, fp: &str, now: i64, last_seen: i64, expected| {
            let v = verdict(a, Some(key), &Asking { fingerprint: fp, app_released_at: None }, now, last_seen);
            assert_eq!(v.code, expected);
            assert_eq!(v.valid, expected == ValidationCode::Valid);
            assert!(v.offline);
        };
        use ValidationCode::*;
        check(&fresh, &f.key, "fp", NOW, NOW, Valid);
        check(&fresh, &f.key, "fp", NOW - 200, NOW, Valid); // within tolerance
        check(&fresh, &f.key, "fp", NOW - day, NOW, ClockRollback);
        check(&fresh, &f.key, "fp", NOW - 3600, NOW - 7200, ClockRollback); // behind the server's iat
        check(&fresh, &other_key, "fp", NOW, NOW, InvalidCertificate);
        check(&fresh, &f.key, "other-machine", NOW, NOW, FingerprintMismatch);
        check(&f.activation("active", NOW - 60, NOW + day, Some("REVOKED")), &f.key, "fp", NOW, NOW, Revoked);
        check(&f.activation("suspended", NOW - 60, NOW + day, None), &f.key, "fp", NOW, NOW, Suspended);
        check(&fresh, &f.key, "fp", NOW + day, NOW, CertificateExpired);
        let asking = Asking { fingerprint: "fp", app_released_at: None };
        assert_eq!(verdict(&fresh, None, &asking, NOW, NOW).code, InvalidCertificate, "no key, no trust");
    }

    #[test]
    fn a_build_released_after_the_certificates_updates_window_is_refused_offline_after_the_status() {
        let f = Fixture::new();
        let day = 24 * 3600;
        let until = NOW - 30 * day;
        let windowed = f.activation_with("active", NOW - 60, NOW + day, None, Some(until));
        let check = |a: &ActivationState, released: Option<i64>, now: i64, expected: ValidationCode| {
            let v = verdict(a, Some(&f.key), &Asking { fingerprint: "fp", app_released_at: released }, now, NOW);
            assert_eq!(v.code, expected, "released {released:?}");
        };
        use ValidationCode::*;
        check(&windowed, Some(until + 1), NOW, UpdatesExpired);
        check(&windowed, Some(until), NOW, Valid);
        check(&windowed, Some(until - day), NOW, Valid);
        check(&windowed, None, NOW, Valid);
        check(&f.activation_with("active", NOW - 60, NOW + day, None, None), Some(NOW), NOW, Valid);
        let suspended = f.activation_with("suspended", NOW - 60, NOW + day, None, Some(until));
        check(&suspended, Some(until + 1), NOW, Suspended);
        check(&windowed, Some(until + 1), NOW + 2 * day, UpdatesExpired);
        check(&windowed, Some(until - 1), NOW + 2 * day, CertificateExpired);
    }
}
