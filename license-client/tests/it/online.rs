//! Online activation, validation, heartbeats and deactivation.

use crate::helpers::*;
use license_client::{ActivationOptions, Error, ValidationCode, STATE_FILE};

#[tokio::test]
async fn a_device_activates_validates_beats_and_deactivates_online() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let clock = TestClock::default();
    let client = env.client(&url, &store, "laptop", &clock);
    assert!(!client.is_activated());
    assert_eq!(client.validate().await.unwrap().code, ValidationCode::NotActivated, "a verdict, not an error");

    let options = ActivationOptions { name: Some("Work laptop".into()), ..Default::default() };
    let activation = client.activate(&key, options.clone()).await.unwrap();
    assert!(activation.created);
    assert_eq!(activation.device.name.as_deref(), Some("Work laptop"));
    assert_eq!(activation.device.platform.as_deref(), Some(std::env::consts::OS));
    assert_eq!(activation.device.app_version.as_deref(), Some("1.2.3"));
    assert_eq!(activation.device.fingerprint, client.fingerprint().as_str());
    assert_eq!((activation.license.plan.as_deref(), activation.license.max_devices), (Some("pro"), 2));
    assert_eq!(activation.license.entitlements, ["export"]);
    assert_eq!(activation.heartbeat_window_secs, 600);
    assert!(activation.certificate_expires_at > now());
    assert_eq!(client.public_key(), Some(env.public_key()), "the server's key was pinned");
    let claims = client.certificate().unwrap();
    assert_eq!((claims.device_id.as_str(), claims.status.as_str()), (activation.device.id.as_str(), "active"));

    let verdict = client.validate().await.unwrap();
    assert!(verdict.valid && !verdict.offline, "{verdict:?}");
    assert_eq!(verdict.code, ValidationCode::Valid);
    assert_eq!(verdict.license.unwrap().id, activation.license.id);

    let beat = client.heartbeat().await.unwrap();
    assert!(beat.device.alive);
    assert_eq!(beat.device.id, activation.device.id);

    let again = client.activate(&key, options).await.unwrap();
    assert!(!again.created, "the same machine keeps its slot");
    assert_eq!(again.device.id, activation.device.id);

    // The state survives a restart of the app.
    let reopened = env.client(&url, &store, "laptop", &clock);
    assert_eq!(reopened.device().unwrap().id, activation.device.id);
    assert!(reopened.validate().await.unwrap().valid);

    let device = client.deactivate().await.unwrap().expect("the server returns the device");
    assert_eq!(device.status, "deactivated");
    assert!(!client.is_activated());
    assert_eq!(client.validate().await.unwrap().code, ValidationCode::NotActivated);
    assert!(matches!(client.heartbeat().await, Err(Error::NotActivated)));
    assert_eq!(client.deactivate().await.unwrap(), None, "nothing left to deactivate");
    assert_eq!(client.public_key(), Some(env.public_key()), "the pinned key stays");
    let stored = std::fs::read_to_string(store.join(STATE_FILE)).unwrap();
    assert!(!stored.contains(&key), "no license key is kept after deactivation");
}

#[tokio::test]
async fn refusals_arrive_as_errors_with_the_server_code() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let key = env.issue_license("u", PRICE_BASIC).await;
    let clock = TestClock::default();
    let (laptop_store, desktop_store) = (env.store_dir(), env.store_dir());
    let laptop = env.client(&url, &laptop_store, "laptop", &clock);
    let desktop = env.client(&url, &desktop_store, "desktop", &clock);
    assert_ne!(laptop.fingerprint(), desktop.fingerprint());

    laptop.activate(&key, ActivationOptions::default()).await.unwrap();
    let full = desktop.activate(&key, ActivationOptions::default()).await.unwrap_err();
    assert_eq!(full.code(), "TOO_MANY_DEVICES");
    assert!(matches!(full, Error::Server { status: 409, .. }));
    assert!(!desktop.is_activated(), "a refused activation stores nothing");

    let unknown = desktop.activate("AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", ActivationOptions::default()).await;
    assert_eq!(unknown.unwrap_err().code(), "LICENSE_NOT_FOUND");
    let message = full.to_string();
    assert!(!message.contains(&key), "errors never show the key: {message}");
}

#[tokio::test]
async fn the_background_loop_beats_and_stops_when_the_device_is_deactivated_remotely() {
    let mut env = TestEnv::with_heartbeat_window(3).await;
    let server = env.start_server(None).await;
    let url = server.url();
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let client = env.client(&url, &store, "laptop", &TestClock::default());
    let device_id = client.activate(&key, ActivationOptions::default()).await.unwrap().device.id;
    let last_beat = || async {
        let row = env
            .db
            .query_one("SELECT last_heartbeat_at FROM devices WHERE id = $1::text::uuid", &[&device_id])
            .await
            .unwrap();
        row.get::<_, time::OffsetDateTime>(0)
    };
    let activated_at = last_beat().await;

    client.start_heartbeat().unwrap();
    client.start_heartbeat().unwrap(); // idempotent
    assert!(client.is_heartbeat_running());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Beats come every ~1 s (a third of the 3 s window): poll the database.
    while last_beat().await == activated_at {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat reached the server");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    env.deactivate_from_dashboard(&device_id).await;
    while client.is_heartbeat_running() {
        assert!(tokio::time::Instant::now() < deadline, "the loop did not stop after a 410");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let offline = client.validate_offline().unwrap();
    assert_eq!(offline.code, ValidationCode::NotActivated, "offline validity ends with the activation");

    client.stop_heartbeat();
    assert!(!client.is_heartbeat_running());
    server.stop().await;
}

/// The client's validation codes are the server's, in the server's order:
/// a code the client did not know would reach apps only as `Other`.
#[test]
fn the_client_knows_exactly_the_validation_codes_the_server_answers_in_their_order() {
    let server: Vec<&str> = billing_core::domain::ValidationCode::ALL.iter().map(|c| c.as_str()).collect();
    let client: Vec<&str> = ValidationCode::SERVER_CODES.iter().map(ValidationCode::as_str).collect();
    assert_eq!(client, server);
}
