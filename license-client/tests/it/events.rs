//! The event stream: typed events with fresh state, resume after a server
//! restart, and a stop on 401.

use crate::helpers::*;
use license_client::{ActivationOptions, EventPayload, StreamUpdate, ValidationCode};

#[tokio::test]
async fn a_plan_change_arrives_typed_and_the_stored_state_follows() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let client = env.client(&server.url(), &store, "laptop", &TestClock::default());
    client.activate(&key, ActivationOptions::default()).await.unwrap();
    let (callback, mut updates) = Updates::channel();
    let subscription = client.subscribe(callback).unwrap();
    assert_eq!(updates.next().await, StreamUpdate::Connected);

    env.update_subscription("u", "evt_downgrade", PRICE_BASIC, false).await;
    // A stream opened without Last-Event-ID may first get the activation's
    // own `device.activated`, if the hub had not dispatched it yet.
    let downgrade = updates
        .until("the downgrade", |u| matches!(u, StreamUpdate::Event(e) if e.payload.topic() == "license.updated"))
        .await;
    let StreamUpdate::Event(downgrade) = downgrade else { unreachable!() };
    let EventPayload::LicenseUpdated(change) = &downgrade.payload else { panic!("{downgrade:?}") };
    assert_eq!((change.plan.as_deref(), change.max_devices), (Some("basic"), 1));
    let state = downgrade.state.expect("the client re-validated before delivering");
    assert!(state.valid && !state.offline);
    assert_eq!(state.license.unwrap().max_devices, 1);
    assert_eq!(client.license().unwrap().plan.as_deref(), Some("basic"), "no stale cache");
    assert_eq!(client.certificate().unwrap().max_devices, 1, "offline certificate refreshed too");
    let subscription_event = updates.next_event().await;
    assert_eq!(subscription_event.payload.topic(), "subscription.updated");

    // The subscription ends: the license expires, and the app hears it at once.
    let mut canceled = stripe_subscription("u", PRICE_BASIC, false);
    canceled["status"] = "canceled".into();
    env.deliver(&event("evt_cancel", "customer.subscription.deleted", now() + 100, canceled)).await;
    let expired = updates
        .until("the expiry", |u| matches!(u, StreamUpdate::Event(e) if e.payload.topic() == "license.updated"))
        .await;
    let StreamUpdate::Event(expired) = expired else { unreachable!() };
    assert_eq!(expired.state.unwrap().code, ValidationCode::Expired);
    assert_eq!(client.license().unwrap().status, "expired");

    subscription.close();
    tokio::time::timeout(DEADLINE, subscription.closed()).await.expect("the stream stops when closed");
}

#[tokio::test]
async fn after_a_server_restart_the_stream_resumes_with_exactly_the_missed_events() {
    let mut env = TestEnv::new().await;
    let first = env.start_server(None).await;
    let address = first.address;
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let client = env.client(&first.url(), &store, "laptop", &TestClock::default());
    client.activate(&key, ActivationOptions::default()).await.unwrap();
    let (callback, mut updates) = Updates::channel();
    let subscription = client.subscribe(callback).unwrap();
    assert_eq!(updates.next().await, StreamUpdate::Connected);
    env.update_subscription("u", "e1", PRICE_PRO, true).await;
    let seen = updates.next_event().await;
    assert_eq!(seen.payload.topic(), "subscription.updated");
    let seen_id: i64 = seen.id.unwrap().parse().unwrap();

    first.stop().await;
    updates.until("the disconnection", |u| *u == StreamUpdate::Disconnected).await;
    // Changes land while the app is disconnected.
    env.update_subscription("u", "e2", PRICE_PRO, false).await;
    env.update_subscription("u", "e3", PRICE_PRO, true).await;
    let second = env.start_server(Some(address)).await;

    updates.until("the reconnection", |u| *u == StreamUpdate::Connected).await;
    let missed = [updates.next_event().await, updates.next_event().await];
    let cancel_flags: Vec<bool> = missed
        .iter()
        .map(|e| match &e.payload {
            EventPayload::SubscriptionUpdated(s) => s.cancel_at_period_end,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(cancel_flags, [false, true]);
    let ids: Vec<i64> = missed.iter().map(|e| e.id.as_ref().unwrap().parse().unwrap()).collect();
    let expected: Vec<i64> = env
        .db
        .query("SELECT id FROM outbox_events WHERE id > $1 ORDER BY id", &[&seen_id])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, expected, "nothing lost, nothing repeated");

    // The position is stored, so an app restart resumes from it too.
    drop(subscription);
    let reopened = env.client(&second.url(), &store, "laptop", &TestClock::default());
    env.update_subscription("u", "e4", PRICE_PRO, false).await;
    let (callback, mut after_restart) = Updates::channel();
    let _resumed = reopened.subscribe(callback).unwrap();
    let replayed = after_restart.next_event().await;
    assert_eq!(replayed.payload.topic(), "subscription.updated");
    assert!(replayed.id.as_ref().unwrap().parse::<i64>().unwrap() > ids[1]);
    assert_eq!(replayed.payload.data()["cancel_at_period_end"], false);
}

#[tokio::test]
async fn a_refused_stream_stops_instead_of_retrying_forever() {
    let mut env = TestEnv::new().await;
    let server = env.start_server(None).await;
    let key = env.issue_license("u", PRICE_PRO).await;
    let store = env.store_dir();
    let client = env.client(&server.url(), &store, "laptop", &TestClock::default());
    let device_id = client.activate(&key, ActivationOptions::default()).await.unwrap().device.id;
    env.deactivate_from_dashboard(&device_id).await;

    let (callback, mut updates) = Updates::channel();
    let subscription = client.subscribe(callback).unwrap();
    let StreamUpdate::Stopped(stop) = updates.next().await else { panic!("expected a stop") };
    assert!(subscription.is_closed(), "closed by the time anyone hears it stopped");
    assert_eq!(stop.code, "UNAUTHORIZED");
    assert_eq!(stop.state.unwrap().code, ValidationCode::NotActivated, "state refreshed on the way out");
    tokio::time::timeout(DEADLINE, subscription.closed()).await.expect("the task ended");
    assert_eq!(client.validate_offline().unwrap().code, ValidationCode::NotActivated);
}

/// The client's event names are the server's topics: a topic the client did
/// not know would reach apps only as untyped text, and a name the server
/// never sends would be a variant apps wait on in vain.
#[test]
fn the_client_knows_exactly_the_topics_the_server_sends() {
    use billing_core::domain::Topic;
    use license_client::EventName;
    use std::collections::BTreeSet;

    let server: BTreeSet<&str> = Topic::ALL.iter().map(|topic| topic.as_str()).collect();
    let client: BTreeSet<&str> = EventName::KNOWN.iter().map(EventName::as_str).collect();
    assert_eq!(client, server);
    for topic in Topic::ALL {
        let name = EventName::parse(topic.as_str());
        assert!(!matches!(name, EventName::Unknown(_)), "{topic} parses as {name:?}");
        assert_eq!(name.as_str(), topic.as_str());
    }
}
