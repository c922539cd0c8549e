//! TLS to PostgreSQL, against the TLS-only cluster of
//! `scripts/pg-tls-cluster` (`localhost:$TEST_PG_TLS_PORT`, default 5433;
//! its CA in `$TEST_PG_TLS_DIR`, default `/var/tmp/billing-pg-tls`): each
//! `sslmode` connects or fails as libpq's would, and a failure says why.
//! Every test has a database of its own, created over TLS by a client that
//! is not the store's. Without that cluster these tests fail, saying how to
//! start it.
#![cfg(feature = "postgres")]

use billing_core::billing::error_chain;
use billing_core::domain::Topic;
use billing_core::storage::license_work::{Changeset, LicenseKeys};
use billing_core::storage::postgres::PgStore;
use billing_core::storage::{EventRecord, OutboxMessage, Store, StoreError};
use rustls::pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A password the server does not ask for (trust auth), so that it can be
/// looked for in every message.
const PASSWORD: &str = "hunter2-not-for-logs";

fn tls_port() -> u16 {
    std::env::var("TEST_PG_TLS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5433)
}

fn tls_dir() -> PathBuf {
    std::env::var_os("TEST_PG_TLS_DIR").map_or_else(|| PathBuf::from("/var/tmp/billing-pg-tls"), PathBuf::from)
}

fn ca() -> PathBuf {
    tls_dir().join("ca.crt")
}

fn untrusted_ca() -> PathBuf {
    tls_dir().join("untrusted-ca.crt")
}

/// A connection to the TLS cluster's `postgres` database, verified against
/// its CA with a rustls client of the test's own.
async fn admin() -> tokio_postgres::Client {
    let unreachable = |why: String| -> ! {
        panic!(
            "the TLS-only PostgreSQL of the TLS tests is not reachable at localhost:{} ({why}); \
             start it with scripts/pg-tls-cluster (as root)",
            tls_port()
        )
    };
    let pem = std::fs::read(ca()).unwrap_or_else(|e| unreachable(format!("{}: {e}", ca().display())));
    let mut roots = rustls::RootCertStore::empty();
    for cert in <rustls::pki_types::CertificateDer as PemObject>::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a usable CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let url = format!("host=localhost port={} user=postgres dbname=postgres sslmode=require", tls_port());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres_rustls::MakeRustlsConnect::new(config))
        .await
        .unwrap_or_else(|e| unreachable(error_chain(&e)));
    tokio::spawn(connection);
    client
}

/// A database of the test's own on the TLS cluster, dropped with it.
struct TlsDb {
    name: String,
}

impl TlsDb {
    async fn create() -> Self {
        let name = format!("billing_tls_{}", uuid::Uuid::new_v4().simple());
        admin().await.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        Self { name }
    }

    /// A URL for this database at `host` with these query parameters.
    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres:{PASSWORD}@{host}:{}/{}?{params}", tls_port(), self.name)
    }
}

impl Drop for TlsDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let _ = admin().await.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
            });
        })
        .join();
    }
}

fn open(url: &str) -> PgStore {
    PgStore::connect(url, 4).unwrap_or_else(|e| panic!("{url}: {}", error_chain(&e)))
}

/// Migrates (the first connection of a store) and returns what failed, as
/// `billing-server` prints it.
async fn migration_failure(url: &str) -> String {
    let err = open(url).migrate().await.expect_err("the connection is refused");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let message = error_chain(&err);
    assert!(!message.contains(PASSWORD), "the password is never shown: {message}");
    message
}

/// A write and a read back through the store.
async fn round_trip(store: &PgStore) {
    let event = EventRecord {
        id: "evt_tls",
        kind: "invoice.paid",
        created: 1,
        api_version: None,
        object_id: None,
        payload: b"{}",
    };
    store.record_event_failure(&event, "over TLS").await.expect("write");
    let (status, attempts, error) = store.webhook_event_status("evt_tls").await.expect("read").expect("the row");
    assert_eq!((status.as_str(), attempts, error.as_deref()), ("failed", 1, Some("over TLS")));
}

#[tokio::test]
async fn require_connects_migrates_and_round_trips_a_write() {
    let db = TlsDb::create().await;
    // No certificate check under require: 127.0.0.1 is not a name the certificate has.
    let store = open(&db.url("127.0.0.1", "sslmode=require"));
    store.migrate().await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    round_trip(&store).await;
}

#[tokio::test]
async fn prefer_the_default_takes_the_tls_the_server_offers() {
    let db = TlsDb::create().await;
    for url in [db.url("127.0.0.1", "application_name=billing-tls-test"), db.url("127.0.0.1", "sslmode=prefer")] {
        let store = open(&url);
        store.migrate().await.unwrap_or_else(|e| panic!("{url}: {}", error_chain(&e)));
        store.ping().await.unwrap();
    }
}

#[tokio::test]
async fn verify_full_with_the_ca_at_localhost_connects_and_hears_outbox_notifications() {
    let db = TlsDb::create().await;
    let store = open(&db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", ca().display())));
    store.migrate().await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    // The event hub's LISTEN connection, with the pool's settings.
    let mut watch = store.watch_outbox().await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let first = tokio::time::timeout(Duration::from_secs(10), watch.recv()).await;
    assert_eq!(first, Ok(Some(())), "a first wake-up, as after every LISTEN");

    let message =
        OutboxMessage { license_id: None, topic: Topic::LicenseUpdated, payload: serde_json::json!({"n": 1}) };
    let changes = Changeset { outbox: vec![message], ..Changeset::default() };
    store.license_work(LicenseKeys::Nothing, move |_| (changes, ())).await.expect("published");
    let woken = tokio::time::timeout(Duration::from_secs(10), watch.recv()).await;
    assert_eq!(woken, Ok(Some(())), "the commit's NOTIFY arrives over the TLS LISTEN connection");
    let published = store.outbox_after(0, None, 10).await.unwrap();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].payload, serde_json::json!({"n": 1}));
}

#[tokio::test]
async fn a_key_value_connection_string_takes_the_same_tls_parameters() {
    let db = TlsDb::create().await;
    let conninfo = format!(
        "host=localhost port={} user=postgres dbname={} sslmode=verify-full sslrootcert='{}'",
        tls_port(),
        db.name,
        ca().display()
    );
    let store = open(&conninfo);
    store.migrate().await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    round_trip(&store).await;
}

#[tokio::test]
async fn verify_full_refuses_a_host_name_the_certificate_does_not_name() {
    let db = TlsDb::create().await;
    let url = db.url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={}", ca().display()));
    assert_eq!(
        migration_failure(&url).await,
        "database unavailable: PostgreSQL's certificate does not match the host name 127.0.0.1 \
         (sslmode=verify-full); it is for localhost"
    );
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_a_ca_it_was_not_given() {
    let db = TlsDb::create().await;
    let url = db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", untrusted_ca().display()));
    assert_eq!(
        migration_failure(&url).await,
        format!(
            "database unavailable: PostgreSQL's certificate is not trusted (sslmode=verify-full, sslrootcert={}): \
             unknown issuer",
            untrusted_ca().display()
        )
    );
    // Without sslrootcert, the system's roots, which do not know the test CA.
    assert_eq!(
        migration_failure(&db.url("localhost", "sslmode=verify-full")).await,
        "database unavailable: PostgreSQL's certificate is not trusted \
         (sslmode=verify-full, no sslrootcert: the system's trusted roots): unknown issuer"
    );
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let db = TlsDb::create().await;
    let store = open(&db.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={}", ca().display())));
    store.migrate().await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    round_trip(&store).await;

    let url = db.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={}", untrusted_ca().display()));
    assert!(migration_failure(&url).await.contains("certificate is not trusted (sslmode=verify-ca"));
}

#[tokio::test]
async fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
    let db = TlsDb::create().await;
    let url = db.url("127.0.0.1", &format!("sslmode=require&sslrootcert={}", untrusted_ca().display()));
    assert_eq!(
        migration_failure(&url).await,
        format!(
            "database unavailable: PostgreSQL's certificate is not trusted (sslmode=require, sslrootcert={}): \
             unknown issuer",
            untrusted_ca().display()
        )
    );
    let store = open(&db.url("127.0.0.1", &format!("sslmode=require&sslrootcert={}", ca().display())));
    store.migrate().await.unwrap_or_else(|e| panic!("{}", error_chain(&e)));
}

#[tokio::test]
async fn disable_against_a_tls_only_server_passes_on_its_refusal() {
    let db = TlsDb::create().await;
    assert_eq!(
        migration_failure(&db.url("127.0.0.1", "sslmode=disable")).await,
        format!(
            "database unavailable: PostgreSQL at 127.0.0.1:{} refused the connection (sslmode=disable): \
             pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"{}\", \
             no encryption; it takes TLS connections only: use sslmode=require, verify-ca or verify-full",
            tls_port(),
            db.name
        )
    );
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_named_with_the_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/db?sslmode=verify-full");
    assert_eq!(
        migration_failure(&url).await,
        format!(
            "database unavailable: cannot connect to PostgreSQL at 127.0.0.1:{port} (sslmode=verify-full): \
             error connecting to server: Connection refused (os error 111)"
        )
    );
}

#[tokio::test]
async fn an_unknown_sslmode_is_refused_naming_the_accepted_values() {
    let err = PgStore::connect(&format!("postgres://postgres:{PASSWORD}@localhost/db?sslmode=bogus"), 1)
        .expect_err("refused before any connection");
    assert_eq!(
        error_chain(&err),
        "database unavailable: sslmode \"bogus\" is not one of: disable, prefer, require, verify-ca, verify-full"
    );
}

/// A server that answers the TLS request with "no", as one with `ssl = off`
/// does, and reports whether the client then went on in plain text (sent
/// a startup message, protocol 3.0).
async fn server_without_tls() -> (u16, tokio::task::JoinHandle<Vec<bool>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut went_on_in_plain_text = Vec::new();
        while let Ok(Ok((mut socket, _))) = tokio::time::timeout(Duration::from_secs(2), listener.accept()).await {
            let mut request = [0u8; 8];
            socket.read_exact(&mut request).await.unwrap();
            assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest");
            socket.write_all(b"N").await.unwrap();
            let mut startup = [0u8; 8];
            let plain = socket.read_exact(&mut startup).await.is_ok() && startup[4..] == [0, 3, 0, 0];
            went_on_in_plain_text.push(plain);
        }
        went_on_in_plain_text
    });
    (port, server)
}

#[tokio::test]
async fn require_and_verify_full_against_a_server_without_tls_say_so() {
    let (port, server) = server_without_tls().await;
    for mode in ["require", "verify-full"] {
        let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/db?sslmode={mode}");
        assert_eq!(
            migration_failure(&url).await,
            format!("database unavailable: PostgreSQL at 127.0.0.1:{port} does not accept TLS (sslmode={mode})")
        );
    }
    // prefer goes on without it.
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/db?sslmode=prefer");
    let failure = migration_failure(&url).await;
    assert!(
        failure.starts_with(&format!(
            "database unavailable: cannot connect to PostgreSQL at 127.0.0.1:{port} (sslmode=prefer): "
        )),
        "{failure}"
    );
    assert_eq!(server.await.unwrap(), [false, false, true], "only prefer went on in plain text");
}
