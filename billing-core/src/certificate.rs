//! Signed license certificates for offline validation: compact JWS with
//! Ed25519 (`alg: EdDSA`, RFC 8037), verifiable by any JOSE library with the
//! public key from `GET /api/license/public-key`.

use crate::domain::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;
use serde_json::json;

/// The server's license-signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// A key file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("not an Ed25519 PKCS#8 private key (PEM or DER)")]
pub struct KeyError;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// What a certificate says. Field names are the claim names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertificateClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the license id.
    pub sub: String,
    /// The license id.
    pub license_id: String,
    /// The device id.
    pub device_id: String,
    /// The device fingerprint the certificate is bound to.
    pub fingerprint: String,
    /// Plan id.
    pub plan: Option<String>,
    /// License status at issue.
    pub status: String,
    /// Device limit.
    pub max_devices: u32,
    /// The plan's features.
    pub entitlements: Vec<String>,
    /// `subscription` or `perpetual`.
    pub kind: String,
    /// Builds released after this (Unix seconds) are not covered; `None`:
    /// every build is.
    pub updates_until: Option<i64>,
    /// A card-less trial.
    pub trial: bool,
    /// The license's paid-through date or end (Unix seconds), if it has
    /// one: what an air-gapped machine, which never asks, shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// When a certificate issued at `now` expires: `now + ttl`, but never past
/// the paid-through date plus grace.
pub fn expiry(
    now: Timestamp,
    ttl: time::Duration,
    paid_through: Option<Timestamp>,
    grace: time::Duration,
) -> Timestamp {
    let by_ttl = now + ttl;
    match paid_through {
        Some(paid) => by_ttl.min(paid + grace),
        None => by_ttl,
    }
}

impl SigningKey {
    /// A new random key, as PKCS#8 DER bytes (what `billing-server keygen` writes, PEM-wrapped).
    pub fn generate_pkcs8() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("the OS RNG is available").as_ref().to_vec()
    }

    /// Wraps PKCS#8 DER in PEM.
    pub fn to_pem(pkcs8_der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(pkcs8_der);
        let lines: Vec<&str> =
            body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
        format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", lines.join("\n"))
    }

    /// Loads a PKCS#8 key from PEM text or DER bytes (v1 as written by
    /// OpenSSL, or v2 as written by ring).
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, KeyError> {
        let der = match std::str::from_utf8(bytes).ok().filter(|t| t.contains(PEM_BEGIN)) {
            Some(text) => {
                let start = text.find(PEM_BEGIN).ok_or(KeyError)? + PEM_BEGIN.len();
                let end = text.find(PEM_END).ok_or(KeyError)?;
                let body: String = text.get(start..end).ok_or(KeyError)?.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| KeyError)?
            }
            None => bytes.to_vec(),
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| KeyError)?;
        let x = B64.encode(pair.public_key().as_ref());
        // RFC 7638 thumbprint: SHA-256 over the required members in lexical order.
        let thumbprint_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = B64.encode(ring::digest::digest(&ring::digest::SHA256, thumbprint_input.as_bytes()));
        Ok(Self { pair, kid })
    }

    /// Key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> serde_json::Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": B64.encode(self.public_key()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Signs claims into a compact JWS.
    pub fn sign(&self, claims: &CertificateClaims) -> String {
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).expect("header serializes")),
            B64.encode(serde_json::to_vec(claims).expect("claims serialize"))
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(signature.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use time::Duration;

    fn claims() -> CertificateClaims {
        CertificateClaims {
            iss: "billing".into(),
            sub: "lic".into(),
            license_id: "lic".into(),
            device_id: "dev".into(),
            fingerprint: "fp".into(),
            plan: Some("pro".into()),
            status: "active".into(),
            max_devices: 2,
            entitlements: vec!["export".into()],
            kind: "perpetual".into(),
            updates_until: Some(1),
            trial: false,
            expires_at: None,
            iat: 1,
            exp: 2,
        }
    }

    #[test]
    fn signatures_verify_with_the_public_key_and_pem_round_trips() {
        let der = SigningKey::generate_pkcs8();
        let key = SigningKey::from_pkcs8(SigningKey::to_pem(&der).as_bytes()).unwrap();
        let same = SigningKey::from_pkcs8(&der).unwrap();
        assert_eq!(key.kid(), same.kid());
        let jws = key.sign(&claims());
        let (input, sig) = jws.rsplit_once('.').unwrap();
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key());
        public.verify(input.as_bytes(), &B64.decode(sig).unwrap()).unwrap();
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn expiry_never_passes_paid_through_plus_grace() {
        let now = datetime!(2026-11-28 0:00 UTC);
        let ttl = Duration::days(7);
        let grace = Duration::days(3);
        assert_eq!(expiry(now, ttl, None, grace), now + ttl);
        assert_eq!(expiry(now, ttl, Some(now + Duration::days(30)), grace), now + ttl);
        assert_eq!(expiry(now, ttl, Some(now + Duration::days(1)), grace), now + Duration::days(4));
    }
}
