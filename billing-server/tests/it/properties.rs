//! Property tests of what the server parses itself: the event-stream
//! connection's request head, `Last-Event-ID`, and the plans file.

use crate::helpers::*;
use billing_core::domain::{Plan, PlanId};
use billing_server::{config::load_plans, last_event_id, stream_conn::parse_head};
use proptest::prelude::*;
use std::net::SocketAddr;

fn peer() -> SocketAddr {
    "127.0.0.1:5000".parse().unwrap()
}

/// Header names as RFC 9110 tokens, lower-cased as `http` stores them.
fn header_name() -> impl Strategy<Value = String> {
    "[a-z0-9!#$%&'*+.^_`|~-]{1,20}"
}

/// Visible characters and inner spaces; httparse trims the outer ones.
fn header_value() -> impl Strategy<Value = String> {
    "([!-~]([ !-~]{0,30}[!-~])?)?"
}

fn head(path: &str, http10: bool, headers: &[(String, String)]) -> Vec<u8> {
    let mut head = format!("GET {path} HTTP/1.{}\r\n", if http10 { 0 } else { 1 });
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

proptest! {
    #[test]
    fn any_bytes_as_a_request_head_are_answered_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        if let Err(error) = parse_head(&bytes, peer()) {
            prop_assert!(matches!(error.code, "MALFORMED_REQUEST" | "HEADERS_TOO_LARGE"), "{}", error.code);
        }
    }

    #[test]
    fn a_stream_request_line_with_garbage_after_it_is_answered_without_panicking(
        rest in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = b"GET /api/events/K HTTP/1.1\r\n".to_vec();
        bytes.extend(rest);
        let _ = parse_head(&bytes, peer());
    }

    #[test]
    fn a_well_formed_head_keeps_its_path_version_and_every_header_in_order(
        segments in proptest::collection::vec("[A-Za-z0-9._~-]{1,12}", 1..4),
        query in proptest::option::of("[A-Za-z0-9=&]{0,20}"),
        http10 in any::<bool>(),
        headers in proptest::collection::vec((header_name(), header_value()), 0..20),
    ) {
        let path = format!("/api/events/{}", segments.join("/"));
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let (request, parsed_http10) = parse_head(&head(&target, http10, &headers), peer()).unwrap();
        prop_assert_eq!(parsed_http10, http10);
        prop_assert_eq!(request.uri().path(), path.as_str());
        prop_assert_eq!(request.uri().query(), query.as_deref());
        prop_assert_eq!(request.headers().len(), headers.len());
        for (name, _) in &headers {
            let sent: Vec<&str> = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
            let received: Vec<&str> = request.headers().get_all(name).iter().map(|v| v.to_str().unwrap()).collect();
            prop_assert_eq!(received, sent);
        }
    }

    #[test]
    fn any_event_id_we_could_have_sent_is_read_back(id in 0..=i64::MAX, before in "[ \t]{0,2}", after in "[ \t]{0,2}") {
        prop_assert_eq!(last_event_id::parse(format!("{before}{id}{after}").as_bytes()), Some(id));
    }

    #[test]
    fn a_negative_or_signed_event_id_is_refused(id in any::<i64>()) {
        prop_assert_eq!(last_event_id::parse(format!("+{id}").as_bytes()), None);
        if id < 0 {
            prop_assert_eq!(last_event_id::parse(id.to_string().as_bytes()), None);
        }
    }

    #[test]
    fn anything_read_as_an_event_id_is_exactly_its_digits(value in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Some(id) = last_event_id::parse(&value) {
            let digits = std::str::from_utf8(value.trim_ascii()).unwrap();
            prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{:?}", value);
            prop_assert_eq!(digits.parse::<i64>().unwrap(), id);
        }
    }
}

/// A plans file on disk, removed when dropped.
struct PlansFile(std::path::PathBuf);

impl PlansFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("billing-plans-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for PlansFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

prop_compose! {
    fn plan()(
        id in "[a-z][a-z0-9_-]{0,10}",
        name in any::<String>(),
        max_devices in 1u32..=u32::MAX,
        amount in proptest::option::of(any::<i64>()),
        currency in proptest::option::of("[a-z]{3}"),
        interval in proptest::option::of(proptest::sample::select(vec!["month", "year"])),
        features in proptest::collection::vec(any::<String>(), 0..4),
    ) -> Plan {
        Plan {
            amount,
            currency,
            interval: interval.map(str::to_owned),
            features,
            ..Plan::new(&id, &name, &format!("price_{id}"), max_devices)
        }
    }
}

#[derive(serde::Serialize)]
struct PlansToml<'a> {
    plans: &'a [Plan],
}

/// Plans with distinct ids (and so distinct prices), in generated order.
fn distinct_plans() -> impl Strategy<Value = Vec<Plan>> {
    proptest::collection::vec(plan(), 0..6).prop_map(|plans| {
        let mut seen = std::collections::HashSet::new();
        plans.into_iter().filter(|p| seen.insert(p.id.clone())).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_plans_file_is_answered_without_panicking(text in any::<String>()) {
        let file = PlansFile::new(&text);
        let _ = load_plans(&file.0);
    }

    #[test]
    fn toml_shaped_like_a_plans_file_is_answered_without_panicking(
        entries in proptest::collection::vec(
            proptest::collection::vec(
                (
                    proptest::sample::select(vec!["id", "name", "stripe_price_id", "max_devices", "amount", "features", "x"]),
                    prop_oneof![
                        Just("\"pro\"".to_owned()),
                        any::<i64>().prop_map(|n| n.to_string()),
                        Just("-1".to_owned()),
                        Just("4294967296".to_owned()),
                        Just("[\"a\", 1]".to_owned()),
                        Just("{}".to_owned()),
                        "[ -~]{0,12}",
                    ],
                ),
                0..8,
            ),
            0..4,
        ),
    ) {
        let text: String = entries
            .iter()
            .map(|fields| {
                let body: String = fields.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
                format!("[[plans]]\n{body}")
            })
            .collect();
        let file = PlansFile::new(&text);
        let _ = load_plans(&file.0);
    }

    #[test]
    fn a_valid_catalog_written_as_toml_loads_back_unchanged(plans in distinct_plans()) {
        let file = PlansFile::new(&toml::to_string(&PlansToml { plans: &plans }).unwrap());
        let catalog = load_plans(&file.0).unwrap();
        prop_assert_eq!(catalog.all(), plans.as_slice());
    }

    #[test]
    fn a_plans_file_repeating_an_id_or_a_price_is_refused_naming_it(
        plans in distinct_plans().prop_filter("needs a plan to repeat", |p| !p.is_empty()),
        repeat_price in any::<bool>(),
    ) {
        let mut copy = plans[0].clone();
        if repeat_price {
            copy.id = PlanId("another_id_than_any".into());
        } else {
            copy.stripe_price_id = "price_nobody_else_has".into();
        }
        let mut with_copy = plans.clone();
        with_copy.push(copy);
        let file = PlansFile::new(&toml::to_string(&PlansToml { plans: &with_copy }).unwrap());
        let error = format!("{:#}", load_plans(&file.0).unwrap_err());
        let named = if repeat_price { &plans[0].stripe_price_id } else { &plans[0].id.0 };
        prop_assert!(error.contains("more than once") || error.contains("more than one plan"), "{}", error);
        prop_assert!(error.contains(&format!("`{named}`")), "{}", error);
    }
}

/// Before `Last-Event-ID` had its own parser, `-1` and `+5` were read as
/// ids and opened a stream replaying from nowhere we ever were.
#[tokio::test]
async fn a_stream_resumed_from_a_negative_or_signed_event_id_is_refused() {
    let app = spawn_app().await;
    let key = app.issue_license("alice", PRICE_PRO).await;
    for value in ["-1", "+5", "1e3", ""] {
        let response = app
            .http
            .get(app.url(&format!("/api/events/{key}")))
            .bearer_auth(jwt_for("alice"))
            .header("Last-Event-ID", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{value:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{value:?}: {body}");
    }
    let resumed = app.open_event_stream(&key, &jwt_for("alice"), Some(0)).await;
    assert_eq!(resumed.status(), 200, "0 means before the first event");
}
