//! Client addresses behind proxies (`BILLING_TRUSTED_PROXIES`): the
//! failed-lookup limiter counts per client when the peer is a trusted
//! proxy, and a header from anyone else changes nothing.

use crate::helpers::*;
use billing_server::client_addr::TrustedProxies;
use serde_json::json;

const MISSING_KEY: &str = "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA";

/// A failed validation from `peer` (a loopback address), forwarding `header`.
async fn miss(app: &TestApp, peer: u8, header: Option<(&str, &str)>) -> u16 {
    let client = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, peer])).build().unwrap();
    let mut request = client.post(app.url("/api/license/validate")).json(&json!({ "license_key": MISSING_KEY }));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_limit() {
    let trusted = TrustedProxies::parse("127.0.0.2").unwrap();
    let app = spawn_app_with(Options {
        rate_limit_per_minute: Some(3),
        trusted_proxies: Some(trusted),
        ..Default::default()
    })
    .await;
    let from = |client: &'static str| Some(("x-forwarded-for", client));
    for _ in 0..3 {
        assert_eq!(miss(&app, 2, from("198.51.100.1")).await, 200);
    }
    assert_eq!(miss(&app, 2, from("198.51.100.1")).await, 429, "the client behind the proxy is limited");
    assert_eq!(miss(&app, 2, from("198.51.100.2")).await, 200, "another client behind the same proxy is not");
    // Several hops: what the client wrote itself (the left-most) is not believed.
    assert_eq!(miss(&app, 2, from("6.6.6.6, 198.51.100.1, 127.0.0.2")).await, 429);
    assert_eq!(miss(&app, 2, Some(("forwarded", r#"for="198.51.100.1:4711""#))).await, 429, "RFC 7239 too");
    // A header that cannot be read whole is ignored: the proxy itself is the client.
    for _ in 0..3 {
        assert_eq!(miss(&app, 2, from("198.51.100.3, garbage")).await, 200);
    }
    assert_eq!(miss(&app, 2, from("198.51.100.4, garbage")).await, 429, "counted against the proxy's own address");
    assert_eq!(miss(&app, 2, None).await, 429);
}

#[tokio::test]
async fn a_forwarding_header_from_an_untrusted_peer_changes_nothing() {
    // Trusted: another address than the one the requests come from.
    let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
    for proxies in [None, Some(trusted)] {
        let app =
            spawn_app_with(Options { rate_limit_per_minute: Some(3), trusted_proxies: proxies, ..Default::default() })
                .await;
        for n in 0..3 {
            let spoofed = format!("198.51.100.{n}");
            assert_eq!(miss(&app, 3, Some(("x-forwarded-for", spoofed.as_str()))).await, 200);
        }
        assert_eq!(miss(&app, 3, Some(("x-forwarded-for", "198.51.100.99"))).await, 429, "one limit for the peer");
        assert_eq!(miss(&app, 3, Some(("forwarded", "for=203.0.113.5"))).await, 429);
    }
}

/// The audit trail records where each change was asked from: the client a
/// trusted proxy names, or the peer itself; nothing for Stripe's deliveries.
#[tokio::test]
async fn the_audit_trail_records_the_client_address() {
    let trusted = TrustedProxies::parse("127.0.0.2").unwrap();
    let app = spawn_app_with(Options { trusted_proxies: Some(trusted), ..Default::default() }).await;
    let key = app.issue_license("user_addr", PRICE_PRO).await;
    let license_id = app.validate(&key, None).await["license"]["id"].as_str().unwrap().to_owned();
    let via_proxy = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let direct = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 9])).build().unwrap();
    let activated = via_proxy
        .post(app.url("/api/license/activate"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.20")
        .json(&json!({ "license_key": key, "fingerprint": "fp-addr" }))
        .send()
        .await
        .unwrap();
    assert!(activated.status().is_success(), "{}", activated.status());
    let token = app.admin_token(&["*"]).await;
    let suspended = direct
        .post(app.url(&format!("/api/admin/licenses/{license_id}/suspend")))
        .bearer_auth(&token)
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    assert_eq!(suspended.status(), 200);

    let audit = app
        .admin_ok(reqwest::Method::GET, &format!("/api/admin/audit?license_id={license_id}"), &token, None, 200)
        .await;
    let addr_of = |action: &str| {
        let entry = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("{action} in {audit}"));
        entry.get("client_addr").and_then(|a| a.as_str()).map(str::to_owned)
    };
    assert_eq!(addr_of("activated").as_deref(), Some("198.51.100.20"), "the client the trusted proxy names");
    assert_eq!(addr_of("suspended").as_deref(), Some("127.0.0.9"), "an untrusted peer's header is not believed");
    assert_eq!(addr_of("created"), None, "Stripe's delivery has no client address");
}
