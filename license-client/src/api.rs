//! The server's desktop routes (`/api/license/*`), as typed calls.

use crate::store::Secret;
use crate::types::{Device, LicenseInfo};
use crate::Error;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
pub(crate) struct ActivateRequest<'a> {
    pub license_key: &'a str,
    pub fingerprint: &'a str,
    pub name: Option<&'a str>,
    pub platform: Option<&'a str>,
    pub app_version: Option<&'a str>,
}

#[derive(Deserialize)]
pub(crate) struct ActivateResponse {
    pub activation_token: String,
    pub device: Device,
    pub license: LicenseInfo,
    pub certificate: String,
    pub heartbeat_window_secs: u64,
}

#[derive(Serialize)]
struct ValidateRequest<'a> {
    license_key: &'a str,
    fingerprint: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    app_released_at: Option<&'a str>,
}

#[derive(Deserialize)]
pub(crate) struct ValidateResponse {
    pub code: String,
    pub license: Option<LicenseInfo>,
}

#[derive(Deserialize)]
pub(crate) struct HeartbeatResponse {
    pub device: Device,
    pub license: LicenseInfo,
    pub certificate: String,
    pub heartbeat_window_secs: u64,
}

#[derive(Deserialize)]
pub(crate) struct DeactivateResponse {
    pub device: Device,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// The server's desktop API.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(http: reqwest::Client, server_url: &str) -> Result<Self, Error> {
        let base = server_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidServerUrl);
        }
        Ok(Self { http, base: base.to_owned() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn activate(&self, request: &ActivateRequest<'_>) -> Result<(bool, ActivateResponse), Error> {
        let response = self.http.post(self.url("/api/license/activate")).json(request).send().await?;
        let created = response.status() == reqwest::StatusCode::CREATED;
        Ok((created, read(response).await?))
    }

    pub async fn validate(
        &self,
        license_key: &Secret,
        fingerprint: &str,
        app_released_at: Option<&str>,
    ) -> Result<ValidateResponse, Error> {
        let body = ValidateRequest { license_key: license_key.expose(), fingerprint, app_released_at };
        read(self.http.post(self.url("/api/license/validate")).json(&body).send().await?).await
    }

    pub async fn heartbeat(&self, token: &Secret) -> Result<HeartbeatResponse, Error> {
        let request = self.http.post(self.url("/api/license/heartbeat")).bearer_auth(token.expose());
        read(request.send().await?).await
    }

    pub async fn deactivate(&self, token: &Secret) -> Result<DeactivateResponse, Error> {
        let request = self.http.post(self.url("/api/license/deactivate")).bearer_auth(token.expose());
        read(request.send().await?).await
    }

    pub async fn public_key(&self) -> Result<serde_json::Value, Error> {
        read(self.http.get(self.url("/api/license/public-key")).send().await?).await
    }
}

/// A success body as `T`, or the server's error as [`Error::Server`].
async fn read<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, Error> {
    let status = response.status();
    let bytes = response.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(Error::InvalidResponse);
    }
    Err(match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(envelope) => {
            Error::Server { status: status.as_u16(), code: envelope.error.code, message: envelope.error.message }
        }
        // Not our server's JSON (a proxy's error page, say).
        Err(_) => Error::Server {
            status: status.as_u16(),
            code: format!("HTTP_{}", status.as_u16()),
            message: status.canonical_reason().unwrap_or("unexpected status").to_owned(),
        },
    })
}
