//! Air-gapped activation end to end: the request made on a machine with no
//! server, the owner's dashboard call, the import, and offline validation
//! with nothing listening; a foreign or tampered response refused.

use crate::helpers::*;
use billing_core::domain::offline_activation::OfflineActivationRequest;
use billing_core::domain::Actor;
use license_client::{ActivationOptions, ClientConfig, LicenseClient, ValidationCode};
use std::time::{Duration, Instant};

const DAY: i64 = 24 * 3600;
/// Nothing listens here: an air-gapped machine's view of the server.
const NO_SERVER: &str = "http://127.0.0.1:9";

/// A client on `machine` that carries the vendor key, as an air-gapped
/// machine's app must (it cannot fetch one).
fn air_gapped_client(env: &TestEnv, store: &std::path::Path, machine: &str, clock: &TestClock) -> LicenseClient {
    let mut config = ClientConfig::new(NO_SERVER, store);
    config.public_key = Some(env.public_key());
    config.app_salt = format!("license-client-tests/{machine}");
    config.app_version = Some("5.0.0".into());
    config.request_timeout = Duration::from_secs(5);
    config.clock = clock.clock();
    LicenseClient::new(config).expect("client opens its store")
}

/// What the owner's dashboard does with a pasted request
/// (`POST /api/terminals/offline-activation` calls the same use case).
async fn dashboard_answers(env: &TestEnv, user: &str, request: &str) -> (String, String) {
    let parsed = OfflineActivationRequest::parse(request).expect("the server reads the client's request");
    let activation =
        env.billing.activate_air_gapped(user, &parsed, &Actor::user(user)).await.expect("the dashboard activates it");
    (activation.certificate, activation.device.id.to_string())
}

#[tokio::test]
async fn an_air_gapped_machine_activates_through_the_dashboard_and_validates_with_no_server() {
    let mut env = TestEnv::new().await;
    let key = env.issue_perpetual("ann", time::OffsetDateTime::now_utc() + time::Duration::days(400)).await;
    let store = env.store_dir();
    let clock = TestClock::default();
    let client = air_gapped_client(&env, &store, "lab-bench", &clock);

    let options = ActivationOptions { name: Some("Lab bench".into()), ..ActivationOptions::default() };
    let request = client.offline_activation_request(&key.to_lowercase().replace('-', ""), options).unwrap();
    assert!(request.starts_with("oar1.") && !request.contains(&key), "the key never leaves the machine");
    let parsed = OfflineActivationRequest::parse(&request).unwrap();
    assert_eq!(
        (parsed.name.as_deref(), parsed.platform.as_deref(), parsed.app_version.as_deref()),
        (Some("Lab bench"), Some(std::env::consts::OS), Some("5.0.0"))
    );
    assert_eq!(parsed.fingerprint, client.fingerprint().as_str());
    assert!(!client.is_activated(), "nothing is activated by a request alone");

    let (response, device_id) = dashboard_answers(&env, "ann", &request).await;
    // Mail clients wrap long lines: the import ignores the breaks.
    let wrapped = response.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>();
    let activation = client.import_offline_activation(&wrapped.join("\n")).unwrap();
    assert_eq!((activation.device.id.as_str(), activation.device.air_gapped), (device_id.as_str(), true));
    assert_eq!(activation.device.name.as_deref(), Some("Lab bench"));
    assert_eq!(
        (activation.license.plan.as_deref(), activation.license.kind.as_deref()),
        (Some("pro"), Some("perpetual"))
    );
    let lifetime = activation.certificate_expires_at - now();
    assert!((365 * DAY - 60..=365 * DAY).contains(&lifetime), "the plan's default 365 days: {lifetime}");

    let started = Instant::now();
    let verdict = client.validate().await.unwrap();
    assert!((verdict.valid, verdict.offline) == (true, true), "{verdict:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "no attempt to reach a server: {:?}", started.elapsed());
    assert_eq!(client.heartbeat().await.unwrap_err().code(), "AIR_GAPPED");
    assert_eq!(client.start_heartbeat().unwrap_err().code(), "AIR_GAPPED");
    assert_eq!(client.subscribe(|_| {}).unwrap_err().code(), "AIR_GAPPED");

    // An app restart, and months later: still valid; past the certificate: not.
    let reopened = air_gapped_client(&env, &store, "lab-bench", &clock);
    clock.set_offset(300 * DAY);
    assert!(reopened.validate().await.unwrap().valid);
    clock.set_offset(366 * DAY);
    assert_eq!(reopened.validate().await.unwrap().code, ValidationCode::CertificateExpired);
    clock.set_offset(0);

    // Deactivated from the dashboard: the slot is free on the server at
    // once; the machine, which hears nothing, keeps its certificate until it
    // expires (as the README says).
    env.deactivate_from_dashboard(&device_id).await;
    let online = env.billing.validate(&key, Some(client.fingerprint().as_str())).await.unwrap();
    assert_eq!(online.code, billing_core::domain::ValidationCode::NotActivated);
    assert!(client.validate().await.unwrap().valid);
    assert_eq!(client.deactivate().await.unwrap(), None, "forgotten locally, no server asked");
    assert!(!client.is_activated());
}

#[tokio::test]
async fn a_response_for_another_machine_or_tampered_with_is_refused() {
    let mut env = TestEnv::new().await;
    let key = env.issue_perpetual("ben", time::OffsetDateTime::now_utc() + time::Duration::days(400)).await;
    let clock = TestClock::default();
    let (here_store, there_store) = (env.store_dir(), env.store_dir());
    let here = air_gapped_client(&env, &here_store, "here", &clock);
    let there = air_gapped_client(&env, &there_store, "there", &clock);
    let request = here.offline_activation_request(&key, ActivationOptions::default()).unwrap();
    there.offline_activation_request(&key, ActivationOptions::default()).unwrap();
    let (response, _) = dashboard_answers(&env, "ben", &request).await;

    assert_eq!(there.import_offline_activation(&response).unwrap_err().code(), "FINGERPRINT_MISMATCH");
    let mut parts: Vec<String> = response.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    assert_eq!(here.import_offline_activation(&parts.join(".")).unwrap_err().code(), "INVALID_CERTIFICATE");
    assert_eq!(here.import_offline_activation("not a response").unwrap_err().code(), "INVALID_CERTIFICATE");
    assert!(!here.is_activated() && !there.is_activated(), "nothing imported");

    // Signed by another vendor's key: refused too.
    let other_store = env.store_dir();
    let mut config = ClientConfig::new(NO_SERVER, &other_store);
    config.public_key = Some(license_client::PublicKey::from_bytes([9; 32]));
    config.app_salt = "license-client-tests/here".into();
    let other_vendor = LicenseClient::new(config).unwrap();
    other_vendor.offline_activation_request(&key, ActivationOptions::default()).unwrap();
    assert_eq!(other_vendor.import_offline_activation(&response).unwrap_err().code(), "INVALID_CERTIFICATE");

    // Without a request made here, or without a key to check it with.
    let (fresh_store, keyless_store) = (env.store_dir(), env.store_dir());
    let fresh = air_gapped_client(&env, &fresh_store, "here", &clock);
    assert_eq!(fresh.import_offline_activation(&response).unwrap_err().code(), "NO_OFFLINE_REQUEST");
    let keyless = env.client(NO_SERVER, &keyless_store, "here", &clock);
    assert_eq!(keyless.import_offline_activation(&response).unwrap_err().code(), "NO_PUBLIC_KEY");
    assert_eq!(
        here.offline_activation_request("not-a-key", ActivationOptions::default()).unwrap_err().code(),
        "INVALID_LICENSE_KEY"
    );

    // The genuine import still works afterwards.
    assert!(here.import_offline_activation(&response).is_ok());
    assert!(here.validate().await.unwrap().valid);
}
