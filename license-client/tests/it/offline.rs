//! Offline validation from the stored certificate, the clock-rollback guard,
//! and a revocation that happened while the app was offline.

use crate::helpers::*;
use license_client::{ActivationOptions, ValidationCode};

const DAY: i64 = 24 * 3600;

#[tokio::test]
async fn validation_falls_back_to_the_certificate_when_the_server_is_gone() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let clock = TestClock::default();
    let client = env.client(&url, &store, "laptop", &clock);
    client.activate(&key, ActivationOptions::default()).await.unwrap();
    assert!(!client.validate().await.unwrap().offline);

    server.stop().await;
    let verdict = client.validate().await.unwrap();
    assert!(verdict.valid && verdict.offline, "{verdict:?}");
    assert_eq!(verdict.license.unwrap().plan.as_deref(), Some("pro"));
    assert_eq!(client.heartbeat().await.unwrap_err().code(), "NETWORK");

    // After a restart of the app, still offline, still valid.
    let reopened = env.client(&url, &store, "laptop", &clock);
    assert!(reopened.validate().await.unwrap().valid);

    // Not on another machine, and not past the certificate's expiry (7 days).
    let copied = env.store_dir();
    std::fs::create_dir_all(&copied).unwrap();
    std::fs::copy(store.join(license_client::STATE_FILE), copied.join(license_client::STATE_FILE)).unwrap();
    let elsewhere = env.client(&url, &copied, "another-machine", &clock);
    assert_eq!(elsewhere.validate().await.unwrap().code, ValidationCode::FingerprintMismatch);
    clock.set_offset(8 * DAY);
    assert_eq!(client.validate().await.unwrap().code, ValidationCode::CertificateExpired);
}

#[tokio::test]
async fn a_clock_set_back_is_refused_offline_until_it_is_right_again() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let clock = TestClock::default();
    let client = env.client(&url, &store, "laptop", &clock);
    client.activate(&key, ActivationOptions::default()).await.unwrap();
    server.stop().await;

    // Two days back: behind the certificate's issue time and the last time seen.
    clock.set_offset(-2 * DAY);
    let verdict = client.validate().await.unwrap();
    assert_eq!((verdict.valid, verdict.offline, verdict.code), (false, true, ValidationCode::ClockRollback));

    // Time moves on (a day later, still within the certificate) ...
    clock.set_offset(DAY);
    assert!(client.validate().await.unwrap().valid);
    // ... and setting it back to before that moment is caught too, across restarts.
    clock.set_offset(0);
    let reopened = env.client(&url, &store, "laptop", &clock);
    assert_eq!(reopened.validate().await.unwrap().code, ValidationCode::ClockRollback);
    clock.set_offset(DAY + 60);
    assert!(reopened.validate().await.unwrap().valid, "a clock that is right again is trusted again");
}

#[tokio::test]
async fn a_license_revoked_while_offline_is_refused_once_online_and_then_offline_too() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let address = server.address;
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let clock = TestClock::default();
    let client = env.client(&url, &store, "laptop", &clock);
    client.activate(&key, ActivationOptions::default()).await.unwrap();

    server.stop().await;
    env.db.batch_execute("UPDATE licenses SET status = 'revoked'").await.unwrap();
    let offline = client.validate().await.unwrap();
    assert!(offline.valid && offline.offline, "offline, the certificate is all the app knows");

    let restarted = env.start_server(Some(address)).await;
    let online = client.validate().await.unwrap();
    assert_eq!((online.valid, online.offline, online.code), (false, false, ValidationCode::Revoked));
    assert_eq!(online.license.unwrap().status, "revoked");
    assert_eq!(client.license().unwrap().status, "revoked", "the stored state follows");

    restarted.stop().await;
    let reopened = env.client(&url, &store, "laptop", &clock);
    let offline_again = reopened.validate().await.unwrap();
    assert_eq!(
        (offline_again.valid, offline_again.offline, offline_again.code),
        (false, true, ValidationCode::Revoked),
        "the older certificate saying active is not trusted over the server's answer"
    );
}

#[tokio::test]
async fn an_admin_revoke_heard_over_the_stream_ends_offline_validation_too() {
    use billing_core::domain::Actor;
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let key = env.issue_license("u", PRICE_PRO).await;
    let license_id = env.billing.licenses("u").await.unwrap()[0].id;
    let store = env.store_dir();
    let clock = TestClock::default();
    let client = env.client(&url, &store, "laptop", &clock);
    client.activate(&key, ActivationOptions::default()).await.unwrap();
    let (callback, mut updates) = Updates::channel();
    let subscription = client.subscribe(callback).unwrap();
    assert_eq!(updates.next().await, license_client::StreamUpdate::Connected);

    let admin = Actor::admin("support");
    env.billing.revoke_license(&admin, license_id).await.expect("the license is revoked");
    let revoked = updates
        .until(
            "the revocation",
            |u| matches!(u, license_client::StreamUpdate::Event(e) if e.payload.topic() == "license.updated"),
        )
        .await;
    let license_client::StreamUpdate::Event(revoked) = revoked else { unreachable!() };
    assert_eq!(revoked.state.expect("re-validated online").code, ValidationCode::Revoked);
    subscription.close();

    // The certificate it holds still says active and has days to run; the
    // app no longer honours it, through a restart too.
    assert_eq!(client.certificate().unwrap().status, "active");
    server.stop().await;
    let offline = client.validate().await.unwrap();
    assert_eq!((offline.valid, offline.offline, offline.code), (false, true, ValidationCode::Revoked));
    let reopened = env.client(&url, &store, "laptop", &clock);
    assert_eq!(reopened.validate().await.unwrap().code, ValidationCode::Revoked);
}
