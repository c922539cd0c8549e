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

#[tokio::test]
async fn a_build_released_after_the_updates_window_is_refused_online_and_offline_and_an_older_build_is_not() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let url = server.url();
    let until = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - time::Duration::days(30);
    let key = env.issue_perpetual("u", until).await;
    let clock = TestClock::default();
    let newer = Some(std::time::SystemTime::from(until + time::Duration::days(1)));
    let older = Some(license_client::parse_release_date(&billing_core::billing::rfc3339(until)).unwrap());
    let expected_until = Some(billing_core::billing::rfc3339(until));

    let store = env.store_dir();
    let client = env.client_of_build(&url, &store, "laptop", &clock, newer);
    client.activate(&key, ActivationOptions::default()).await.expect("activation does not look at the build");
    let claims = client.certificate().expect("a verified certificate");
    assert_eq!((claims.kind.as_deref(), claims.updates_until), (Some("perpetual"), Some(until.unix_timestamp())));
    let online = client.validate().await.unwrap();
    assert_eq!((online.valid, online.offline, online.code.clone()), (false, false, ValidationCode::UpdatesExpired));
    assert_eq!(online.updates_until, expected_until);
    assert_eq!(online.license.as_ref().and_then(|l| l.kind.as_deref()), Some("perpetual"));

    // The same machine running the build released on the window's last day.
    let old_build = env.client_of_build(&url, &store, "laptop", &clock, older);
    assert!(old_build.validate().await.unwrap().valid, "covered online");

    server.stop().await;
    let offline = client.validate().await.unwrap();
    assert_eq!((offline.valid, offline.offline, offline.code), (false, true, ValidationCode::UpdatesExpired));
    assert_eq!(offline.updates_until, expected_until);
    let offline_old = old_build.validate().await.unwrap();
    assert!(offline_old.valid && offline_old.offline, "the certificate's window covers it: {offline_old:?}");
    let no_date = env.client(&url, &store, "laptop", &clock);
    assert!(no_date.validate().await.unwrap().valid, "an app that gives no release date checks no window");
}
