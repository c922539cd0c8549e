//! `GET /api/events/{licenseKey}`: authorisation, live delivery, replay with
//! `Last-Event-ID`, restarts and two instances on one database.

use crate::helpers::*;
use serde_json::json;

async fn cancel_at_period_end(app: &TestApp, user: &str, event_id: &str, created: i64, cancel: bool) {
    let mut object = subscription(&format!("sub_{user}"), &format!("cus_{user}"), "active", PRICE_PRO, Some(user));
    object["cancel_at_period_end"] = json!(cancel);
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    app.deliver(&event(event_id, "customer.subscription.updated", created, object)).await;
}

#[tokio::test]
async fn stream_is_refused_without_proper_authorisation() {
    let app = spawn_app().await;
    let key = app.issue_license("alice", PRICE_PRO).await;
    let bob_key = app.issue_license("bob", PRICE_PRO).await;
    let bob_token = app.activate_ok(&bob_key, "fp-b").await["activation_token"].as_str().unwrap().to_owned();
    let cases = [
        ("no token", None),
        ("unknown activation token", Some("act_nope".to_owned())),
        ("another license's device", Some(bob_token)),
        ("another user's JWT", Some(jwt_for("bob"))),
        ("forged JWT", Some(token(&json!({"sub": "alice", "exp": now() + 60}), "wrong"))),
    ];
    for (case, token) in cases {
        let mut request = app.http.get(app.url(&format!("/api/events/{key}")));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"]["code"], "UNAUTHORIZED", "{case}");
    }
    let unknown = app.open_event_stream("AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", &jwt_for("alice"), None).await;
    assert_eq!(unknown.status(), 401);
    let bad_resume = app.open_event_stream(&key, &jwt_for("alice"), None).await;
    assert_eq!(bad_resume.status(), 200, "the owner's JWT is accepted");
    let response = app
        .http
        .get(app.url(&format!("/api/events/{key}")))
        .bearer_auth(jwt_for("alice"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn changes_reach_the_device_live_with_ids_and_types() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let response = app.open_event_stream(&key, &token, None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = EventReader::new(response);

    cancel_at_period_end(&app, "u", "evt_cancel", now(), true).await;
    let message = events.next_of("subscription.updated").await;
    assert!(message.id.unwrap() > 0);
    assert_eq!(message.data["cancel_at_period_end"], true);
    assert!(events.retry_seen, "a retry hint opens the stream");

    // Plan change: device limit follows, announced as license.updated.
    let mut object = subscription("sub_u", "cus_u", "active", PRICE_BASIC, Some("u"));
    object["items"]["data"][0]["current_period_end"] = json!(period_end());
    app.deliver(&event("evt_plan", "customer.subscription.updated", now() + 1, object)).await;
    let license = events.next_of("license.updated").await;
    assert_eq!((license.data["max_devices"].as_i64(), license.data["plan"].as_str()), (Some(1), Some("basic")));

    let second = app.activate_ok(&key, "fp-1").await;
    assert_eq!(events.next_of("device.activated").await.data["device_id"], second["device"]["id"]);
}

#[tokio::test]
async fn resuming_with_last_event_id_replays_exactly_the_missed_events() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let mut events = EventReader::new(app.open_event_stream(&key, &token, None).await);
    cancel_at_period_end(&app, "u", "e1", now(), true).await;
    let first = events.next_of("subscription.updated").await;
    drop(events);

    // Missed while disconnected.
    cancel_at_period_end(&app, "u", "e2", now() + 1, false).await;
    cancel_at_period_end(&app, "u", "e3", now() + 2, true).await;
    let mut resumed = EventReader::new(app.open_event_stream(&key, &token, first.id).await);
    let a = resumed.next().await.unwrap();
    let b = resumed.next().await.unwrap();
    assert!(a.id > first.id && b.id > a.id);
    assert_eq!(
        (a.data["cancel_at_period_end"].as_bool(), b.data["cancel_at_period_end"].as_bool()),
        (Some(false), Some(true))
    );

    // Then live, with no duplicate of the replayed ones.
    cancel_at_period_end(&app, "u", "e4", now() + 3, false).await;
    let live = resumed.next().await.unwrap();
    assert!(live.id > b.id);
    assert_eq!(live.data["cancel_at_period_end"], false);
}

#[tokio::test]
async fn concurrent_commits_reach_the_stream_once_each_in_id_order() {
    use billing_core::domain::Topic;
    use billing_core::storage::license_work::{Changeset, LicenseKeys};
    use billing_core::storage::{OutboxMessage, Store};
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let license_id = app.billing.license_by_key(&key).await.unwrap().unwrap().id;
    let mut events = EventReader::new(app.open_event_stream(&key, &token, None).await);

    // Units of work started in a scattered order, several at once.
    const WRITERS: u64 = 40;
    let writers = (0..WRITERS).map(|n| {
        let store = app.billing.store().clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis((n * 7) % 23)).await;
            // A topic nothing else in this test sends, so that the stream's
            // other events (the activation's) are told apart.
            let message = OutboxMessage {
                license_id: Some(license_id),
                topic: Topic::PaymentUpdated,
                payload: json!({ "n": n }),
            };
            let changes = Changeset { outbox: vec![message], ..Changeset::default() };
            store.license_work(LicenseKeys::Nothing, move |_| (changes, ())).await.unwrap();
        })
    });
    for writer in futures_util::future::join_all(writers).await {
        writer.unwrap();
    }

    let mut seen = Vec::new();
    let mut last_id = 0;
    while seen.len() < WRITERS as usize {
        let message = events.next_of(Topic::PaymentUpdated.as_str()).await;
        let id = message.id.unwrap();
        assert!(id > last_id, "ids only grow: {id} after {last_id}");
        last_id = id;
        seen.push(message.data["n"].as_u64().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..WRITERS).collect::<Vec<_>>(), "each commit delivered exactly once");
}

#[tokio::test]
async fn a_change_made_through_one_instance_reaches_a_stream_held_by_another() {
    if backend() == Backend::Sqlite {
        eprintln!("skipped on sqlite: the embedded store serves one instance; scaling out is PostgreSQL's job");
        return;
    }
    let one = spawn_app().await;
    let two = spawn_app_with(Options::sharing(&one)).await;
    let key = one.issue_license("u", PRICE_PRO).await;
    let token = one.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let mut on_two = EventReader::new(two.open_event_stream(&key, &token, None).await);
    cancel_at_period_end(&one, "u", "e1", now(), true).await;
    let message = on_two.next_of("subscription.updated").await;
    assert_eq!(message.data["cancel_at_period_end"], true);
}

#[tokio::test]
async fn a_server_restart_mid_stream_loses_nothing_on_resume() {
    let mut first = spawn_app().await;
    let key = first.issue_license("u", PRICE_PRO).await;
    let token = first.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let mut events = EventReader::new(first.open_event_stream(&key, &token, None).await);
    cancel_at_period_end(&first, "u", "e1", now(), true).await;
    let seen = events.next_of("subscription.updated").await;

    first.stop();
    assert!(events.next().await.is_none(), "the stream ends when the server goes away");
    assert!(events.retry_seen);

    // Changes land while the client is disconnected (through another instance).
    let second = spawn_app_with(Options::sharing(&first)).await;
    cancel_at_period_end(&second, "u", "e2", now() + 1, false).await;
    cancel_at_period_end(&second, "u", "e3", now() + 2, true).await;
    let mut resumed = EventReader::new(second.open_event_stream(&key, &token, seen.id).await);
    let ids = [resumed.next().await.unwrap(), resumed.next().await.unwrap()];
    assert_eq!(
        ids.iter().map(|m| m.data["cancel_at_period_end"].as_bool().unwrap()).collect::<Vec<_>>(),
        [false, true]
    );
    let expected = second
        .db
        .ints(&format!(
            "SELECT id FROM outbox_events WHERE id > {} AND topic = 'subscription.updated' ORDER BY id",
            seen.id.unwrap()
        ))
        .await;
    assert_eq!(ids.iter().map(|m| m.id.unwrap()).collect::<Vec<_>>(), expected);
}

#[tokio::test]
async fn deactivated_devices_hear_it_on_their_stream() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let device = app.activate_ok(&key, "fp-1").await;
    let mut events = EventReader::new(app.open_event_stream(&key, &jwt_for("u"), None).await);
    let id = device["device"]["id"].as_str().unwrap();
    app.http.delete(app.url(&format!("/api/terminals/{id}"))).bearer_auth(jwt_for("u")).send().await.unwrap();
    let message = events.next_of("device.deactivated").await;
    assert_eq!((message.data["device_id"].as_str(), message.data["reason"].as_str()), (Some(id), Some("dashboard")));
}

#[tokio::test]
async fn a_slow_subscriber_is_dropped_without_holding_back_others() {
    use billing_core::events::{EventHub, HubConfig};
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let license = app.billing.license_by_key(&key).await.unwrap().unwrap();
    let hub =
        EventHub::start(app.billing.store().clone(), HubConfig { buffer: 2, ..HubConfig::default() }).await.unwrap();
    let mut slow = hub.subscribe(license.id, None).await.unwrap();
    let mut fast = hub.subscribe(license.id, None).await.unwrap();
    let mut fast_seen = Vec::new();
    for i in 0..4 {
        cancel_at_period_end(&app, "u", &format!("e{i}"), now() + i, i % 2 == 0).await;
        hub.dispatch_new().await.unwrap();
        fast_seen.push(fast.next().await.unwrap().unwrap().id);
    }
    assert_eq!(hub.dropped_slow(), 1);
    let mut slow_seen = Vec::new();
    while let Some(event) = slow.next().await.unwrap() {
        slow_seen.push(event.id);
    }
    assert_eq!(slow_seen, fast_seen[..2], "the slow one got what fit, then its stream ended");
    assert_eq!(fast_seen.len(), 4);
    // It resumes from its last id and loses nothing.
    let mut resumed = hub.subscribe(license.id, slow_seen.last().copied()).await.unwrap();
    let rest = [resumed.next().await.unwrap().unwrap().id, resumed.next().await.unwrap().unwrap().id];
    assert_eq!(rest, fast_seen[2..]);
}

#[tokio::test]
async fn the_outbox_is_pruned_after_its_retention() {
    use billing_core::storage::Store;
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    app.activate_ok(&key, "fp").await;
    let stored = app.count("outbox_events").await;
    assert!(stored > 0);
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(app.billing.store().prune_outbox(now - time::Duration::days(7)).await.unwrap(), 0, "all are recent");
    let deleted = app.billing.store().prune_outbox(now + time::Duration::minutes(1)).await.unwrap();
    assert_eq!(deleted as i64, stored);
    assert_eq!(app.count("outbox_events").await, 0);
    // Ids are never reused after pruning, so Last-Event-ID stays meaningful.
    let before = app.billing.store().latest_outbox_id().await.unwrap();
    app.activate_ok(&key, "fp-2").await;
    assert!(app.db.int("SELECT min(id) FROM outbox_events").await > before.max(stored));
}

/// A raw HTTP/1.1 connection, to control what is sent first on it.
struct RawConnection {
    stream: tokio::net::TcpStream,
    received: Vec<u8>,
}

impl RawConnection {
    async fn open(app: &TestApp) -> Self {
        let address = app.address.trim_start_matches("http://");
        Self { stream: tokio::net::TcpStream::connect(address).await.unwrap(), received: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until `needle` has arrived; returns everything up to and including it.
    async fn read_until(&mut self, needle: &str) -> String {
        use tokio::io::AsyncReadExt;
        let deadline = std::time::Duration::from_secs(10);
        tokio::time::timeout(deadline, async {
            loop {
                if let Some(at) = self.received.windows(needle.len()).position(|w| w == needle.as_bytes()) {
                    let rest = self.received.split_off(at + needle.len());
                    return String::from_utf8(std::mem::replace(&mut self.received, rest)).unwrap();
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.unwrap();
                assert!(
                    n > 0,
                    "connection closed before {needle:?}; got {:?}",
                    String::from_utf8_lossy(&self.received)
                );
                self.received.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} within {deadline:?}"))
    }

    async fn read_to_end(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection")
            .unwrap();
        self.received.extend(rest);
        String::from_utf8(std::mem::take(&mut self.received)).unwrap()
    }
}

fn events_request(key: &str, token: &str) -> String {
    format!("GET /api/events/{key} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n")
}

#[tokio::test]
async fn a_stream_opened_first_on_a_connection_or_after_other_requests_answers_alike() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();

    // First request on its connection, trickled in pieces shorter than the request line.
    let mut first = RawConnection::open(&app).await;
    let request = events_request(&key, &token);
    for piece in request.as_bytes().chunks(7) {
        first.send(piece).await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // After a request on a keep-alive connection.
    let mut later = RawConnection::open(&app).await;
    later.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(later.read_until("\r\n\r\n").await.starts_with("HTTP/1.1 200"));
    later.read_until("}").await;
    later.send(request.as_bytes()).await;

    for connection in [&mut first, &mut later] {
        let head = connection.read_until("\r\n\r\n").await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        for expected in ["content-type: text/event-stream", "transfer-encoding: chunked", "x-request-id: ", "date: "] {
            assert!(head.contains(expected), "{expected} in {head}");
        }
        connection.read_until(": connected\n\n").await;
    }
    cancel_at_period_end(&app, "u", "e1", now(), true).await;
    for connection in [&mut first, &mut later] {
        let message = connection.read_until("\n\n").await;
        let message = message.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c.is_whitespace());
        assert!(message.contains("event: subscription.updated\n"), "{message}");
        assert!(message.contains("\"cancel_at_period_end\":true"), "{message}");
    }
}

#[tokio::test]
async fn a_refused_or_malformed_first_stream_request_gets_an_error_and_the_connection_closes() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;

    let mut refused = RawConnection::open(&app).await;
    refused.send(events_request(&key, "act_nope").as_bytes()).await;
    let reply = refused.read_to_end().await;
    assert!(reply.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{reply}");
    assert!(reply.contains("content-length: ") && reply.contains("connection: close"), "{reply}");
    let body: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    assert!(!reply.contains(&key), "the key is not echoed");

    let mut malformed = RawConnection::open(&app).await;
    malformed.send(b"GET /api/events/x HTTP/1.1\r\nno colon here\r\n\r\n").await;
    let reply = malformed.read_to_end().await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    let body: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "MALFORMED_REQUEST");

    let mut oversized = RawConnection::open(&app).await;
    let huge = format!("GET /api/events/x HTTP/1.1\r\nx-padding: {}\r\n\r\n", "a".repeat(20_000));
    oversized.send(huge.as_bytes()).await;
    let reply = oversized.read_to_end().await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let body: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "HEADERS_TOO_LARGE");
}

#[tokio::test]
async fn a_client_that_hangs_up_frees_its_stream() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let open_streams = || async {
        let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let line =
            metrics.lines().find(|l| l.starts_with("billing_sse_streams_open ")).expect("gauge exposed").to_owned();
        line["billing_sse_streams_open ".len()..].trim().parse::<i64>().unwrap()
    };
    let mut connection = RawConnection::open(&app).await;
    connection.send(events_request(&key, &token).as_bytes()).await;
    connection.read_until(": connected\n\n").await;
    assert_eq!(open_streams().await, 1);
    drop(connection);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while open_streams().await != 0 {
        assert!(std::time::Instant::now() < deadline, "the stream outlived its connection");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_ends_every_stream_cleanly_with_a_last_retry_hint() {
    let mut app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    // One stream served without hyper (first request on its connection), one through it.
    let mut first = RawConnection::open(&app).await;
    first.send(events_request(&key, &token).as_bytes()).await;
    let mut later = RawConnection::open(&app).await;
    later.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    later.read_until("}").await;
    later.send(events_request(&key, &token).as_bytes()).await;
    for connection in [&mut first, &mut later] {
        connection.read_until(": connected\n\n").await;
    }

    app.stop();
    for connection in [&mut first, &mut later] {
        // Whatever keep-alives came before, the body ends with a `retry:`
        // frame and then the chunked terminator: a clean end, not a reset.
        let rest = connection.read_to_end().await;
        let last_frame = format!("retry: {}\n\n\r\n0\r\n\r\n", billing_server::sse::RETRY_MS);
        assert!(rest.ends_with(&last_frame), "{rest:?}");
    }
}

#[tokio::test]
async fn a_device_stream_ends_with_the_event_saying_its_device_left_while_a_dashboard_stream_goes_on() {
    let clock = TestClock::default();
    let app =
        spawn_app_with(Options { clock: Some(clock.clock()), heartbeat_window_secs: Some(60), ..Default::default() })
            .await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let mut dashboard = EventReader::new(app.open_event_stream(&key, &jwt_for("u"), None).await);
    let activate = |fingerprint: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            let device = app.activate_ok(key, fingerprint).await;
            let token = device["activation_token"].as_str().unwrap().to_owned();
            (device["device"]["id"].as_str().unwrap().to_owned(), token)
        }
    };
    let (by_app, by_dashboard, dying) =
        (activate("fp-app").await, activate("fp-dash").await, activate("fp-dead").await);
    // Served without hyper (first request on its connection) and through it.
    let open = |token: String, after_another_request: bool| {
        let (app, key) = (&app, &key);
        async move {
            let mut connection = RawConnection::open(app).await;
            if after_another_request {
                connection.send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
                connection.read_until("}").await;
            }
            connection.send(events_request(key, &token).as_bytes()).await;
            connection.read_until(": connected\n\n").await;
            connection
        }
    };
    let mut app_stream = open(by_app.1.clone(), false).await;
    let mut dashboard_removed_stream = open(by_dashboard.1.clone(), true).await;
    let mut dead_stream = open(dying.1.clone(), false).await;

    let deactivated = app.http.post(app.url("/api/license/deactivate")).bearer_auth(&by_app.1).send().await.unwrap();
    assert_eq!(deactivated.status(), 200);
    let removed = app
        .http
        .delete(app.url(&format!("/api/terminals/{}", by_dashboard.0)))
        .bearer_auth(jwt_for("u"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    clock.advance(61);
    app.billing.reap_dead_devices().await.unwrap();

    for (stream, (device_id, _), topic, reason) in [
        (&mut app_stream, &by_app, "device.deactivated", "app"),
        (&mut dashboard_removed_stream, &by_dashboard, "device.deactivated", "dashboard"),
        (&mut dead_stream, &dying, "device.dead", "heartbeat_missed"),
    ] {
        // The last frame says why, then the chunked end (a hyper connection
        // stays open for further requests): no `retry:` hint inviting a
        // reconnection that would be refused.
        let body = stream.read_until("\r\n0\r\n\r\n").await;
        let last = body.rsplit("\r\n").find(|chunk| chunk.contains("event: ")).unwrap();
        assert!(last.contains(&format!("event: {topic}\n")), "{topic}: {last:?}");
        let data: serde_json::Value =
            serde_json::from_str(last.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
        assert_eq!((data["device_id"].as_str(), data["reason"].as_str()), (Some(device_id.as_str()), Some(reason)));
        assert!(!body.contains(&format!("retry: {}\n\n", billing_server::sse::RETRY_MS)), "{body:?}");
    }
    for (_, token) in [&by_app, &by_dashboard, &dying] {
        assert_eq!(app.open_event_stream(&key, token, None).await.status(), 401, "a reconnection is refused");
    }

    // The dashboard's stream heard all three and keeps going.
    for (topic, (device_id, _)) in
        [("device.deactivated", &by_app), ("device.deactivated", &by_dashboard), ("device.dead", &dying)]
    {
        assert_eq!(dashboard.next_of(topic).await.data["device_id"].as_str(), Some(device_id.as_str()));
    }
    let (newcomer, _) = activate("fp-new").await;
    assert_eq!(dashboard.next_of("device.activated").await.data["device_id"].as_str(), Some(newcomer.as_str()));
}

#[tokio::test]
async fn a_stream_for_a_device_that_missed_its_heartbeat_window_is_refused() {
    let clock = TestClock::default();
    let app =
        spawn_app_with(Options { clock: Some(clock.clock()), heartbeat_window_secs: Some(60), ..Default::default() })
            .await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    assert_eq!(app.open_event_stream(&key, &token, None).await.status(), 200);
    // Dead by its silence, whether or not the reaper has recorded it yet.
    clock.advance(61);
    let refused = app.open_event_stream(&key, &token, None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["error"]["code"], "UNAUTHORIZED");
    app.billing.reap_dead_devices().await.unwrap();
    assert_eq!(app.open_event_stream(&key, &token, None).await.status(), 401, "and once it has");
}

#[tokio::test]
async fn stream_refusals_look_alike_for_known_and_unknown_keys_and_count_as_failed_lookups() {
    let app = spawn_app_with(Options { rate_limit_per_minute: Some(4), ..Default::default() }).await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let other_key = app.issue_license("v", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let other_token = app.activate_ok(&other_key, "fp-2").await["activation_token"].as_str().unwrap().to_owned();
    let unknown = "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA";
    let forged = token_signed_elsewhere();
    // Each from a given loopback address, on a connection of its own.
    let open_from = |n: u8, key: &str, token: &str| {
        let client = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, n])).build().unwrap();
        let request = client.get(app.url(&format!("/api/events/{key}"))).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let mut headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .filter(|(name, _)| !["date", "x-request-id"].contains(&name.as_str()))
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
                .collect();
            headers.sort();
            let body = if status == 200 { String::new() } else { response.text().await.unwrap() };
            (status, headers, body)
        }
    };

    // An unknown key and a known one with a bad credential: the same answer.
    let unknown_key = open_from(1, unknown, "act_nope").await;
    let bad_token = open_from(1, &key, "act_nope").await;
    assert_eq!(unknown_key.0, 401);
    assert_eq!(bad_token, unknown_key);
    assert!(unknown_key.2.contains("\"UNAUTHORIZED\""), "{}", unknown_key.2);
    let unknown_key_jwt = open_from(1, unknown, &forged).await;
    let bad_jwt = open_from(1, &key, &forged).await;
    assert_eq!(bad_jwt, unknown_key_jwt);
    assert_eq!(bad_jwt, unknown_key, "whatever the credential");

    // Four refusals from 127.0.0.1: the next one is limited, then even a
    // valid token from there.
    let limited = open_from(1, unknown, "act_nope").await;
    assert_eq!(limited.0, 429);
    let retry_after: u64 = limited.1.iter().find(|(n, _)| n == "retry-after").unwrap().1.parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: serde_json::Value = serde_json::from_str(&limited.2).unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
    assert_eq!(open_from(1, &key, &token).await.0, 429, "a hit cannot be told from a miss while blocked");

    // The key has two refusals; two more from other addresses, then it is
    // limited from anywhere, while other keys are not.
    assert_eq!(open_from(2, &key, "act_nope").await.0, 401);
    assert_eq!(open_from(3, &key, "act_nope").await.0, 401);
    assert_eq!(open_from(4, &key, "act_nope").await.0, 429);
    assert_eq!(open_from(5, &key, &token).await.0, 429, "the key is limited, from a fresh address too");
    assert_eq!(open_from(5, &other_key, &other_token).await.0, 200, "that address and other keys are not");
}

/// A well-formed dashboard JWT signed with another secret.
fn token_signed_elsewhere() -> String {
    token(&json!({"sub": "u", "exp": now() + 60}), "wrong")
}

#[tokio::test]
async fn a_stream_whose_client_stopped_reading_is_cut_off_while_the_others_get_everything() {
    let app = spawn_app().await;
    let key = app.issue_license("u", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    // A client with a small receive buffer that never reads past the hello.
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = RawConnection { stream: socket.connect(address).await.unwrap(), received: Vec::new() };
    stalled.send(events_request(&key, &token).as_bytes()).await;
    stalled.read_until(": connected\n\n").await;
    let mut reading = RawConnection::open(&app).await;
    reading.send(events_request(&key, &token).as_bytes()).await;
    reading.read_until(": connected\n\n").await;

    // Enough changes to fill the stalled client's buffers several times over.
    let changes = 600;
    let start = now();
    for n in 0..changes {
        cancel_at_period_end(&app, "u", &format!("e{n}"), start + n, n % 2 == 0).await;
    }
    let last = app.db.ints("SELECT max(id) FROM outbox_events").await[0];
    reading.read_until(&format!("id: {last}\n")).await;

    // The stalled one was cut off (its connection closed, mid-stream), and
    // it resumes from what it read, missing nothing.
    let cut_off = stalled.read_to_end().await;
    let seen: Vec<i64> = cut_off
        .split("\n\n")
        .filter(|block| block.contains("\ndata: "))
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("id: "))?.parse().ok())
        .collect();
    let resume_from = *seen.last().expect("it got some events before it stalled");
    assert!(resume_from < last, "cut off before the end");
    let mut resumed = EventReader::new(app.open_event_stream(&key, &token, Some(resume_from)).await);
    let mut next = resume_from;
    while next < last {
        let message = resumed.next().await.expect("the replay goes on");
        assert_eq!(message.id, Some(next + 1), "every event once, in order");
        next += 1;
    }
}
