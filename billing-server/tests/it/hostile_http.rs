//! Hostile input at the HTTP layer: slow and stalled bodies, requests hyper
//! cannot parse, input echoed in errors, NUL characters. Raw TCP where a
//! client library would refuse to send such a request.

use crate::helpers::{jwt_for, spawn_app, spawn_app_with, Options, TestApp, PRICE_PRO};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than any answer here should take; a test fails rather than hangs.
const PATIENCE: Duration = Duration::from_secs(10);

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts our error shape and returns the code.
    fn error_code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "status {}", self.status);
        let body = self.json();
        assert!(body["error"]["message"].is_string(), "{body}");
        body["error"]["code"].as_str().expect("an error code").to_owned()
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap()
}

/// Reads one response (head, then a `content-length` body) from `stream`.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> RawResponse {
    let reading = async {
        let mut bytes = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut head = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = head.parse(&bytes).expect("a valid response head") {
                let headers: Vec<(String, String)> = head
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let status = head.code.unwrap();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while bytes.len() < len + length {
                    read_more(stream, &mut bytes).await;
                }
                return RawResponse { status, headers, body: bytes[len..len + length].to_vec() };
            }
            read_more(stream, &mut bytes).await;
        }
    };
    tokio::time::timeout(PATIENCE, reading).await.expect("a response in time")
}

async fn read_more(stream: &mut (impl AsyncRead + Unpin), bytes: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await.expect("read");
    assert!(n > 0, "connection closed before a whole response: {:?}", String::from_utf8_lossy(bytes));
    bytes.extend_from_slice(&chunk[..n]);
}

/// Asserts the server closes the connection (after anything already sent).
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "the server kept the connection open");
    assert!(rest.is_empty(), "more after the answer: {:?}", String::from_utf8_lossy(&rest));
}

async fn exchange(app: &TestApp, request: &[u8]) -> (RawResponse, TcpStream) {
    let mut stream = connect(app).await;
    stream.write_all(request).await.unwrap();
    let response = read_response(&mut stream).await;
    (response, stream)
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A request whose head promises `declared` body bytes and sends only `sent`.
fn stalled_post(path: &str, declared: usize, sent: &[u8]) -> Vec<u8> {
    let mut request = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {declared}\r\n\r\n").into_bytes();
    request.extend_from_slice(sent);
    request
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_json_and_the_connection_is_closed() {
    let app = spawn_app_with(Options { body_timeout: Some(Duration::from_secs(1)), ..Options::default() }).await;
    let (response, mut stream) =
        exchange(&app, &stalled_post("/api/license/validate", 1000, br#"{"license_key":"#)).await;
    assert_eq!(response.status, 408);
    assert_eq!(response.error_code(), "REQUEST_TIMEOUT");
    assert_eq!(response.header("connection"), Some("close"));
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn stalled_bodies_beyond_the_bound_are_refused_at_once_and_complete_bodies_still_pass() {
    let app = spawn_app_with(Options {
        max_pending_bodies: Some(2),
        body_timeout: Some(Duration::from_secs(60)),
        ..Options::default()
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        stream.write_all(&stalled_post("/api/license/validate", 1 << 20, &[b' '; 1000])).await.unwrap();
        stalled.push(stream);
    }
    // Two hold the places; whichever came third is refused long before the
    // 60 s body deadline.
    let (response, index) = {
        let [a, b, c] = &mut stalled[..] else { unreachable!() };
        tokio::select! {
            r = read_response(a) => (r, 0),
            r = read_response(b) => (r, 1),
            r = read_response(c) => (r, 2),
        }
    };
    assert_eq!(response.status, 503);
    assert_eq!(response.error_code(), "UNAVAILABLE");
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_closed(&mut stalled[index]).await;

    // A body that arrives with its head never needs a place.
    let body = app.post_json("/api/license/validate", &json!({ "license_key": "nope" })).await;
    assert_eq!(body.status(), 200);
}

#[tokio::test]
async fn a_client_that_sends_its_whole_refused_body_before_reading_still_gets_the_answer() {
    let app = spawn_app().await;
    let mut stream = connect(&app).await;
    // Over the 1 MiB cap: refused from its head, while the client, like many,
    // sends the whole body before it reads anything.
    let declared = 4 << 20;
    let head = format!("POST /api/license/validate HTTP/1.1\r\nhost: test\r\ncontent-length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let sent = stream.write_all(&vec![b' '; declared]).await;
    assert!(sent.is_ok(), "the server reset the connection: {sent:?}");
    let response = read_response(&mut stream).await;
    assert_eq!((response.status, response.error_code().as_str()), (413, "PAYLOAD_TOO_LARGE"));
}

/// Requests hyper refuses before any handler sees them, and what it answered
/// with an empty body before.
fn unparseable_requests() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: test\r\n\r\n", "a".repeat(70_000));
    let huge_header = format!("GET /healthz HTTP/1.1\r\nhost: test\r\nx-filler: {}\r\n\r\n", "a".repeat(200_000));
    vec![
        ("malformed request line", b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, "MALFORMED_REQUEST"),
        (
            "NUL in a header value",
            b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-a: a\0b\r\n\r\n".to_vec(),
            400,
            "MALFORMED_REQUEST",
        ),
        ("URI too long", long_uri.into_bytes(), 414, "URI_TOO_LONG"),
        ("headers too large", huge_header.into_bytes(), 431, "HEADERS_TOO_LARGE"),
    ]
}

#[tokio::test]
async fn requests_hyper_cannot_parse_are_answered_in_our_json_shape_on_a_fresh_connection() {
    let app = spawn_app().await;
    for (what, request, status, code) in unparseable_requests() {
        let (response, mut stream) = exchange(&app, &request).await;
        assert_eq!((response.status, response.error_code().as_str()), (status, code), "{what}");
        assert_closed(&mut stream).await;
    }
}

#[tokio::test]
async fn requests_hyper_cannot_parse_are_answered_in_our_json_shape_after_a_keep_alive_request() {
    let app = spawn_app().await;
    for (what, request, status, code) in unparseable_requests() {
        let (first, mut stream) = exchange(&app, b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").await;
        assert_eq!(first.status, 200, "{what}");
        stream.write_all(&request).await.unwrap();
        let response = read_response(&mut stream).await;
        assert_eq!((response.status, response.error_code().as_str()), (status, code), "{what}");
        assert_closed(&mut stream).await;
    }
}

#[tokio::test]
async fn a_malformed_event_stream_request_is_answered_in_our_json_shape() {
    let app = spawn_app().await;
    let (response, mut stream) =
        exchange(&app, b"GET /api/events/KEY HTTP/1.1\r\nhost: test\r\nbad header\r\n\r\n").await;
    assert_eq!((response.status, response.error_code().as_str()), (400, "MALFORMED_REQUEST"));
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn a_500_kb_unknown_field_name_is_not_echoed_back() {
    let app = spawn_app().await;
    let name = "x".repeat(500_000);
    let (response, _) = exchange(&app, &post("/api/license/validate", format!(r#"{{"{name}":1}}"#).as_bytes())).await;
    assert_eq!((response.status, response.error_code().as_str()), (400, "INVALID_REQUEST"));
    let message = response.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.len() < 300, "{} bytes", message.len());
    assert!(message.contains(&"x".repeat(40)) && !message.contains(&"x".repeat(41)), "{message}");
}

#[tokio::test]
async fn key_shaped_input_is_not_echoed_in_errors() {
    let app = spawn_app().await;
    let key = app.issue_license("echo", PRICE_PRO).await;
    for body in [json!({ key.clone(): 1 }), json!({ "license_key": key, "fingerprint": 7 })] {
        let response = app.post_json("/api/license/validate", &body).await;
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        let compact: String = key.chars().filter(|c| *c != '-').collect();
        assert!(!text.contains(&key) && !text.contains(&compact[..16]), "{text}");
    }
}

#[tokio::test]
async fn nul_in_a_fingerprint_is_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let key = app.issue_license("nul", PRICE_PRO).await;
    app.activate_ok(&key, "fp-1").await;
    let devices_before = app.count("devices").await;
    let changes_before = app.count("device_changes").await;
    let nul = "fp-1\u{0}";
    let validate = app.post_json("/api/license/validate", &json!({ "license_key": key, "fingerprint": nul })).await;
    let activate = app.post_json("/api/license/activate", &json!({ "license_key": key, "fingerprint": nul })).await;
    for response in [validate, activate] {
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{body}");
    }
    assert_eq!(app.count("devices").await, devices_before);
    assert_eq!(app.count("device_changes").await, changes_before);
    // An escaped backslash before `u0000` is text, not a NUL.
    let (response, _) = exchange(
        &app,
        &post("/api/license/validate", format!(r#"{{"license_key":"{key}","fingerprint":"a\\u0000"}}"#).as_bytes()),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["code"], "NOT_ACTIVATED");
}

#[tokio::test]
async fn a_percent_encoded_nul_in_a_path_or_query_is_refused() {
    let app = spawn_app().await;
    let key = app.issue_license("pct", PRICE_PRO).await;
    let token = app.activate_ok(&key, "fp-1").await["activation_token"].as_str().unwrap().to_owned();
    let stream = app.open_event_stream(&format!("{key}%00"), &token, None).await;
    let licenses =
        app.http.get(app.url("/api/licenses?user_id=a%00b")).bearer_auth(jwt_for("pct")).send().await.unwrap();
    for response in [stream, licenses] {
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_REQUEST", "{body}");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(Options { header_read_timeout: Some(Duration::from_secs(1)), ..Options::default() }).await;
    let (first, mut stream) = exchange(&app, b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert_eq!(first.status, 200);
    assert_closed(&mut stream).await;
}
