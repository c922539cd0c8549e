//! TLS to PostgreSQL: what `sslmode` and `sslrootcert` ask for, as a rustls
//! configuration on the ring provider, and start-up errors that say what is
//! wrong with the server's certificate, not only that a handshake failed.
//!
//! One [`Connector`] serves the pool, the `LISTEN` connection and so the
//! migrations, which run on a pooled connection.

use super::conninfo::{split_tls_params, SslMode, TlsParams};
use crate::storage::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What tokio-postgres returns for `sslmode=require` when the server
/// answers the TLS request with "no"; it has no error kind of its own
/// (`tests/pg_tls.rs` holds it to these words).
const SERVER_WITHOUT_TLS: &str = "server does not support TLS";

/// The connection settings of a store: tokio-postgres's, and the TLS that
/// `sslmode` and `sslrootcert` ask for.
#[derive(Clone)]
pub(super) struct Connector {
    config: tokio_postgres::Config,
    tls: TlsParams,
    make_tls: MakeRustlsConnect,
}

impl Connector {
    /// Reads a connection string (a `postgres://` URL or key=value pairs)
    /// and loads the roots its mode needs, so that a missing `sslrootcert`
    /// is a start-up error, not a failure of every connection.
    pub(super) fn from_url(url: &str) -> Result<Self, StoreError> {
        let (rest, tls) = split_tls_params(url).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        config.ssl_mode(tokio_postgres_mode(tls.mode, &config));
        let make_tls = MakeRustlsConnect::new(client_config(&tls).map_err(|e| StoreError::Unavailable(e.into()))?);
        Ok(Self { config, tls, make_tls })
    }

    pub(super) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(super) fn ssl_mode(&self) -> SslMode {
        self.tls.mode
    }

    pub(super) fn make_tls(&self) -> MakeRustlsConnect {
        self.make_tls.clone()
    }

    /// A connection error as the operator should read it.
    pub(super) fn connect_error(&self, error: &tokio_postgres::Error) -> StoreError {
        StoreError::Unavailable(Box::new(ConnectError(self.describe(error))))
    }

    fn describe(&self, error: &tokio_postgres::Error) -> String {
        let mode = self.tls.mode;
        let at = endpoints(&self.config);
        if let Some(tls) = rustls_error(error) {
            return self.describe_tls(tls, &at);
        }
        if error.source().is_some_and(|cause| cause.to_string() == SERVER_WITHOUT_TLS) {
            return format!("PostgreSQL at {at} does not accept TLS (sslmode={mode})");
        }
        if let Some(db) = error.as_db_error() {
            let mut message = format!("PostgreSQL at {at} refused the connection (sslmode={mode}): {}", db.message());
            // pg_hba.conf's words for a plain-text attempt that only TLS may make.
            if mode == SslMode::Disable && db.message().ends_with("no encryption") {
                message.push_str("; it takes TLS connections only: use sslmode=require, verify-ca or verify-full");
            }
            return message;
        }
        format!("cannot connect to PostgreSQL at {at} (sslmode={mode}): {}", crate::billing::error_chain(error))
    }

    fn describe_tls(&self, error: &rustls::Error, at: &str) -> String {
        let mode = self.tls.mode;
        match error {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { expected, presented }) => {
                let names: Vec<_> = presented.iter().map(|name| presented_name(name)).collect();
                let names = if names.is_empty() { "no host name".to_owned() } else { names.join(" or ") };
                format!(
                    "PostgreSQL's certificate does not match the host name {} (sslmode={mode}); it is for {names}",
                    expected.to_str()
                )
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                format!("PostgreSQL's certificate does not match the host name of {at} (sslmode={mode})")
            }
            rustls::Error::InvalidCertificate(problem) => {
                let roots = match &self.tls.root_cert {
                    Some(path) => format!("sslrootcert={}", path.display()),
                    None => "no sslrootcert: the system's trusted roots".to_owned(),
                };
                format!(
                    "PostgreSQL's certificate is not trusted (sslmode={mode}, {roots}): {}",
                    certificate_problem(problem)
                )
            }
            other => format!("TLS handshake with PostgreSQL at {at} failed (sslmode={mode}): {other}"),
        }
    }
}

/// A connection that could not be made, described whole: no cause chain,
/// because the description already carries what the causes would repeat.
#[derive(Debug)]
struct ConnectError(String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

/// tokio-postgres knows only disable, prefer and require; the verification
/// our modes add is the connector's. libpq ignores `sslmode` on Unix
/// sockets (the server offers no TLS there), so a store that only has
/// those does not ask.
fn tokio_postgres_mode(mode: SslMode, config: &tokio_postgres::Config) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as Tp;
    #[cfg(unix)]
    let unix_only = config.get_hostaddrs().is_empty()
        && !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
    #[cfg(not(unix))]
    let unix_only = {
        let _ = config;
        false
    };
    match mode {
        _ if unix_only => Tp::Disable,
        SslMode::Disable => Tp::Disable,
        SslMode::Prefer => Tp::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Tp::Require,
    }
}

/// `host:port` of each server the configuration names.
fn endpoints(config: &tokio_postgres::Config) -> String {
    let (hosts, addrs, ports) = (config.get_hosts(), config.get_hostaddrs(), config.get_ports());
    let endpoint = |i: usize| {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match (hosts.get(i), addrs.get(i)) {
            (Some(Host::Tcp(host)), _) if host.contains(':') => format!("[{host}]:{port}"),
            (Some(Host::Tcp(host)), _) => format!("{host}:{port}"),
            #[cfg(unix)]
            (Some(Host::Unix(dir)), _) => format!("{}/.s.PGSQL.{port}", dir.display()),
            (None, Some(addr)) => std::net::SocketAddr::new(*addr, port).to_string(),
            (None, None) => "(no host)".to_owned(),
        }
    };
    let all: Vec<_> = (0..hosts.len().max(addrs.len()).max(1)).map(endpoint).collect();
    all.join(", ")
}

/// The rustls error under a failed connection, if TLS is what failed.
fn rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause = error.source();
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls wraps it in an io::Error, whose source() skips it.
        if let Some(tls) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref()) {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

/// A subject name as rustls-webpki reports it (`DnsName("localhost")`,
/// `IpAddress(127.0.0.1)`), as an operator writes it.
fn presented_name(name: &str) -> &str {
    let inner = |prefix: &str, suffix: &str| name.strip_prefix(prefix)?.strip_suffix(suffix);
    inner("DnsName(\"", "\")").or_else(|| inner("IpAddress(", ")")).unwrap_or(name)
}

fn certificate_problem(problem: &CertificateError) -> String {
    match problem {
        CertificateError::UnknownIssuer => "unknown issuer".to_owned(),
        CertificateError::BadSignature => "bad signature".to_owned(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".to_owned(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not valid yet".to_owned(),
        CertificateError::Revoked => "revoked".to_owned(),
        other => other.to_string(),
    }
}

/// A TLS setting that cannot be put to use.
#[derive(Debug, thiserror::Error)]
enum TlsSetupError {
    #[error("cannot read sslrootcert={path}: {problem}")]
    RootCertUnreadable { path: String, problem: rustls::pki_types::pem::Error },
    #[error("sslrootcert={path} holds no PEM certificate")]
    RootCertEmpty { path: String },
    #[error("sslrootcert={path}: certificate {index} cannot be a trusted root: {problem}")]
    RootCertInvalid { path: String, index: usize, problem: rustls::Error },
    #[error(
        "no trusted root certificates found on this system for sslmode={mode} ({problems}); \
         give sslrootcert=<PEM file of the CA certificates>"
    )]
    NoSystemRoots { mode: SslMode, problems: String },
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(rustls::client::VerifierBuilderError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `tls`: which verifier, which roots.
fn client_config(tls: &TlsParams) -> Result<ClientConfig, TlsSetupError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, &tls.root_cert) {
        // Never used under disable (tokio-postgres does not ask for TLS),
        // but the pool wants one connector type whatever the mode.
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(AnyCertificate { provider: provider.clone() })
        }
        // libpq: require with a root certificate verifies like verify-ca.
        (SslMode::Require | SslMode::VerifyCa, root_cert) => Arc::new(ChainOnly {
            inner: WebPkiServerVerifier::builder_with_provider(
                roots(tls.mode, root_cert.as_deref())?,
                provider.clone(),
            )
            .build()
            .map_err(TlsSetupError::Verifier)?,
        }),
        (SslMode::VerifyFull, root_cert) => {
            WebPkiServerVerifier::builder_with_provider(roots(tls.mode, root_cert.as_deref())?, provider.clone())
                .build()
                .map_err(TlsSetupError::Verifier)?
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls's default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends, and what PostgreSQL 17 requires under direct
    // TLS negotiation; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

fn roots(mode: SslMode, root_cert: Option<&Path>) -> Result<Arc<RootCertStore>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let shown = || path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|problem| TlsSetupError::RootCertUnreadable { path: shown(), problem })?;
            if certs.is_empty() {
                return Err(TlsSetupError::RootCertEmpty { path: shown() });
            }
            for (index, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|problem| TlsSetupError::RootCertInvalid {
                    path: shown(),
                    index: index + 1,
                    problem,
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let problems: Vec<_> = found.errors.iter().map(ToString::to_string).collect();
                let problems =
                    if problems.is_empty() { "none in the system store".to_owned() } else { problems.join("; ") };
                return Err(TlsSetupError::NoSystemRoots { mode, problems });
            }
        }
    }
    Ok(Arc::new(roots))
}

/// Any certificate will do (`prefer`, `require` without a root): the
/// connection is encrypted, its peer not authenticated, as in libpq. The
/// handshake's signature is still checked against the certificate's key,
/// so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is
/// not checked. WebPkiServerVerifier checks the name only once the chain
/// has verified, so forgiving its name error forgives nothing else.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::SslMode as Tp;

    fn connector(url: &str) -> Connector {
        Connector::from_url(url).unwrap_or_else(|e| panic!("{url}: {}", crate::billing::error_chain(&e)))
    }

    fn setup_error(url: &str) -> String {
        match Connector::from_url(url) {
            Ok(_) => panic!("{url} was accepted"),
            Err(e) => crate::billing::error_chain(&e),
        }
    }

    #[test]
    fn the_verifying_modes_ask_tokio_postgres_for_tls_and_unix_sockets_for_none() {
        for (mode, expected) in [
            ("disable", Tp::Disable),
            ("prefer", Tp::Prefer),
            ("require", Tp::Require),
            ("verify-ca", Tp::Require),
            ("verify-full", Tp::Require),
        ] {
            let url = format!("postgres://u@db.example:5432/billing?sslmode={mode}");
            assert_eq!(connector(&url).config().get_ssl_mode(), expected, "{mode}");
            let url = format!("postgres://u@%2Fvar%2Frun%2Fpostgresql/billing?sslmode={mode}");
            assert_eq!(connector(&url).config().get_ssl_mode(), Tp::Disable, "{mode} on a Unix socket");
        }
        assert_eq!(connector("postgres://u@h/db").config().get_ssl_mode(), Tp::Prefer, "prefer by default");
        assert_eq!(connector("host=h user=u sslmode=verify-ca").config().get_ssl_mode(), Tp::Require);
    }

    #[test]
    fn the_rest_of_the_url_reaches_tokio_postgres() {
        let c = connector("postgresql://u:pw@h1:6000,h2/db?application_name=billing&sslmode=require&connect_timeout=3");
        assert_eq!(c.config().get_hosts(), [Host::Tcp("h1".into()), Host::Tcp("h2".into())]);
        assert_eq!(c.config().get_ports(), [6000, 5432]);
        assert_eq!(c.config().get_application_name(), Some("billing"));
        assert_eq!(c.config().get_connect_timeout(), Some(&std::time::Duration::from_secs(3)));
        assert_eq!(endpoints(c.config()), "h1:6000, h2:5432");
    }

    #[test]
    fn endpoints_name_each_server() {
        let names = |url: &str| endpoints(connector(url).config());
        assert_eq!(names("postgres://u@[::1]:5433/db"), "[::1]:5433");
        assert_eq!(names("postgres://u@%2Frun%2Fpg/db"), "/run/pg/.s.PGSQL.5432");
        assert_eq!(names("hostaddr=127.0.0.2 port=6543 user=u"), "127.0.0.2:6543");
    }

    #[test]
    fn presented_names_read_as_written() {
        assert_eq!(presented_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(presented_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(presented_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn setup_errors_name_the_setting() {
        assert_eq!(
            setup_error("postgres://u:secret@h/db?sslmode=bogus"),
            "database unavailable: sslmode \"bogus\" is not one of: disable, prefer, require, verify-ca, verify-full"
        );
        let missing = setup_error("postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        assert_eq!(
            missing,
            "database unavailable: cannot read sslrootcert=/nonexistent/ca.pem: \
             I/O error: No such file or directory (os error 2)"
        );
        let dir = std::env::temp_dir().join(format!("billing-tls-unit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = format!("postgres://u:secret@h/db?sslmode=verify-ca&sslrootcert={}", empty.display());
        assert_eq!(
            setup_error(&url),
            format!("database unavailable: sslrootcert={} holds no PEM certificate", empty.display())
        );
        // Modes that verify nothing do not read it (libpq neither).
        let url = format!("postgres://u@h/db?sslmode=prefer&sslrootcert={}", empty.display());
        connector(&url);
        std::fs::remove_dir_all(dir).unwrap();
        assert!(!missing.contains("secret"));
    }
}
