//! Offline license certificates: compact JWS signed with Ed25519 (`alg:
//! EdDSA`), verified here with ring against the vendor's public key.

use crate::Error;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The vendor's license-signing public key (Ed25519).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64url())
    }
}

impl PublicKey {
    /// From the raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From the base64url (unpadded) encoding of the 32 bytes: a JWK's `x`.
    pub fn from_base64url(x: &str) -> Result<Self, Error> {
        let bytes = B64.decode(x.trim()).map_err(|_| Error::InvalidPublicKey)?;
        Ok(Self(bytes.try_into().map_err(|_| Error::InvalidPublicKey)?))
    }

    /// From a JWK (`{"kty":"OKP","crv":"Ed25519","x":…}`), or the server's
    /// `GET /api/license/public-key` answer (`{"jwk":{…}}`).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, Error> {
        let jwk = jwk.get("jwk").unwrap_or(jwk);
        if jwk["kty"] != "OKP" || jwk["crv"] != "Ed25519" {
            return Err(Error::InvalidPublicKey);
        }
        Self::from_base64url(jwk["x"].as_str().ok_or(Error::InvalidPublicKey)?)
    }

    /// From text that is either a JWK (or the server's answer) as JSON, or a
    /// JWK's `x` alone.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.starts_with('{') {
            Self::from_jwk(&serde_json::from_str(text).map_err(|_| Error::InvalidPublicKey)?)
        } else {
            Self::from_base64url(text)
        }
    }

    /// The base64url (unpadded) encoding, as in a JWK's `x`.
    pub fn to_base64url(&self) -> String {
        B64.encode(self.0)
    }
}

/// What a certificate says (the server's claim names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the license id.
    pub sub: String,
    /// The license id.
    pub license_id: String,
    /// The device id.
    pub device_id: String,
    /// The (hashed) fingerprint the certificate is bound to.
    pub fingerprint: String,
    /// Plan id.
    pub plan: Option<String>,
    /// License status when issued: `active`, `suspended`, `expired` or `revoked`.
    pub status: String,
    /// Device limit.
    pub max_devices: u32,
    /// The plan's features.
    pub entitlements: Vec<String>,
    /// `subscription` or `perpetual` (`None` from a server that predates them).
    #[serde(default)]
    pub kind: Option<String>,
    /// The end of the updates window (Unix seconds): offline too, a build
    /// released after it is `UPDATES_EXPIRED`. `None`: every build is covered.
    #[serde(default)]
    pub updates_until: Option<i64>,
    /// A card-less trial.
    #[serde(default)]
    pub trial: bool,
    /// The license's paid-through date or end (Unix seconds), if it has one.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Issued at (Unix seconds, the server's clock).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Verifies a compact JWS with `key` and returns its claims. Only `EdDSA`
/// is accepted (no `alg: none`, no algorithm confusion).
pub fn verify(jws: &str, key: &PublicKey) -> Result<CertificateClaims, Error> {
    let mut parts = jws.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::InvalidCertificate);
    };
    let decode = |part: &str| B64.decode(part).map_err(|_| Error::InvalidCertificate);
    let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| Error::InvalidCertificate)?;
    if header.alg != "EdDSA" {
        return Err(Error::InvalidCertificate);
    }
    let signing_input = &jws[..jws.len() - signature.len() - 1];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.0)
        .verify(signing_input.as_bytes(), &decode(signature)?)
        .map_err(|_| Error::InvalidCertificate)?;
    serde_json::from_slice(&decode(payload)?).map_err(|_| Error::InvalidCertificate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn new_pair() -> Ed25519KeyPair {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap()
    }

    fn sign(pair: &Ed25519KeyPair, header: &str, claims: &serde_json::Value) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims.to_string()));
        format!("{input}.{}", B64.encode(pair.sign(input.as_bytes())))
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "iss": "billing", "sub": "lic", "license_id": "lic", "device_id": "dev", "fingerprint": "fp",
            "plan": "pro", "status": "active", "max_devices": 2, "entitlements": ["export"], "iat": 1, "exp": 2
        })
    }

    #[test]
    fn a_signed_certificate_verifies_and_anything_else_does_not() {
        let pair = new_pair();
        let key = PublicKey::from_bytes(pair.public_key().as_ref().try_into().unwrap());
        let good = sign(&pair, r#"{"alg":"EdDSA","typ":"JWT"}"#, &claims());
        assert_eq!(verify(&good, &key).unwrap().fingerprint, "fp");

        let other = PublicKey::from_bytes(pair_public(&new_pair()));
        let mut tampered: Vec<String> = good.split('.').map(str::to_owned).collect();
        tampered[1] = B64.encode(claims().to_string().replace("active", "revoked"));
        let check = |jws: &str, key: &PublicKey| assert!(matches!(verify(jws, key), Err(Error::InvalidCertificate)));
        check(&good, &other);
        check(&tampered.join("."), &key);
        check(&sign(&pair, r#"{"alg":"none"}"#, &claims()), &key);
        check("a.b", &key);
        check(&format!("{good}.extra"), &key);
    }

    fn pair_public(pair: &Ed25519KeyPair) -> [u8; 32] {
        pair.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn public_keys_parse_from_a_jwk_the_server_answer_or_x_alone() {
        let x = B64.encode([7u8; 32]);
        let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k", "alg": "EdDSA" });
        let expected = PublicKey::from_bytes([7; 32]);
        assert_eq!(PublicKey::parse(&x).unwrap(), expected);
        assert_eq!(PublicKey::parse(&jwk.to_string()).unwrap(), expected);
        assert_eq!(PublicKey::parse(&serde_json::json!({ "jwk": jwk }).to_string()).unwrap(), expected);
        assert_eq!(expected.to_base64url(), x);
        for bad in ["", "abc", r#"{"kty":"RSA","x":"AAAA"}"#, "{oops"] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
    }
}
