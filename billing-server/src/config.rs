//! Configuration, read once at start-up (from the environment, and from the
//! configuration file through [`crate::config_file`]) and validated.

use anyhow::{bail, Context};
use billing_core::domain::vendor_webhook::RetrySchedule;
use billing_core::domain::{Plan, PlanCatalog};
use billing_core::storage::any::StoreLocation;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Secrets: each may also be given as a file path in `<NAME>_FILE` (for
/// Docker/Kubernetes secrets), read once at start.
pub const SECRETS: &[&str] = &["DATABASE_URL", "STRIPE_WEBHOOK_SECRET", "STRIPE_SECRET_KEY", "BILLING_JWT_SECRET"];

/// Every environment variable the server reads (besides the `_FILE` variants
/// of [`SECRETS`]), with its meaning. The README's configuration reference is
/// checked against this list and against the source by tests.
pub const VARIABLES: &[(&str, &str)] = &[
    ("DATABASE_URL", "postgres://… for PostgreSQL, sqlite://path for an SQLite file; unset: the embedded store"),
    (
        "PGSSLROOTCERT",
        "CA certificate(s) trusted for PostgreSQL's TLS (libpq's variable): added to DATABASE_URL as `sslrootcert` unless the URL has one",
    ),
    ("BILLING_DATA_DIR", "where the embedded store and the generated signing key live (default ./billing-data)"),
    ("BILLING_ADDR", "listen address (default 127.0.0.1:8080)"),
    (
        "BILLING_PUBLIC_URL",
        "the server's address as customers' browsers reach it (e.g. https://billing.example.com): the base of portal session URLs (default http://<the request's Host>)",
    ),
    ("BILLING_DB_POOL_SIZE", "maximum PostgreSQL connections (default 4 per CPU core; PostgreSQL only)"),
    ("STRIPE_WEBHOOK_SECRET", "webhook signing secret(s), comma-separated while rotating"),
    ("STRIPE_SECRET_KEY", "Stripe API key, used to re-fetch ambiguous subscription snapshots"),
    ("STRIPE_API_BASE", "Stripe API base URL (default https://api.stripe.com)"),
    (
        "BILLING_STRIPE_SYNC_RATE",
        "requests per second `billing-server stripe sync` and `stripe check-plans` send to Stripe (default 20, minimum 1; `--rate` overrides it)",
    ),
    ("BILLING_JWT_SECRET", "HS256 secret of the dashboard's JWTs"),
    ("BILLING_PLANS", "path to the plans TOML file"),
    (
        "BILLING_GRACE_DAYS",
        "days a past-due subscription keeps its license active (default 7); then the license is suspended, audited and announced (`license.updated`) by the server's reaper",
    ),
    ("BILLING_MAX_BODY_BYTES", "largest accepted request body (default 1048576)"),
    (
        "BILLING_BODY_TIMEOUT_SECS",
        "seconds a request body may take to arrive whole (default 10, minimum 1); then 408 and the connection is closed",
    ),
    (
        "BILLING_MAX_PENDING_BODIES",
        "request bodies that may be arriving at once (default 64, minimum 1); more answer 503 at once instead of being buffered",
    ),
    ("BILLING_HEARTBEAT_WINDOW_SECS", "a device silent for longer is dead (default 600, minimum 1)"),
    ("BILLING_OFFLINE_TTL_SECS", "lifetime of offline certificates (default 604800 = 7 days)"),
    ("BILLING_LICENSE_SIGNING_KEY", "path to the Ed25519 PKCS#8 key signing certificates (billing-server keygen)"),
    ("BILLING_RATE_LIMIT_PER_MINUTE", "failed license lookups allowed per client address and minute (default 60)"),
    (
        "BILLING_TRIALS_PER_HOUR",
        "trial requests allowed per client address and hour, every attempt counted (default 5, minimum 1)",
    ),
    (
        "BILLING_VALIDATION_CACHE_LICENSES",
        "licenses validation keeps in memory, kept exact by the outbox (default 100000; 0: every validation reads the database)",
    ),
    (
        "BILLING_TRUSTED_PROXIES",
        "comma-separated proxy addresses or ranges (e.g. 10.0.0.0/8): only from these is the client address read from Forwarded or X-Forwarded-For (default none)",
    ),
    ("BILLING_OUTBOX_RETENTION_DAYS", "days outbox events are kept for SSE replay (default 7)"),
    (
        "BILLING_WEBHOOK_RETRY_SCHEDULE",
        "seconds between attempts of a webhook to the vendor, comma-separated (default 5,300,1800,7200,18000,36000,36000); after the last the message has failed",
    ),
    (
        "BILLING_WEBHOOK_ALLOW_PRIVATE",
        "`true` lets webhook endpoints be on private, loopback or link-local addresses and use plain http (on-premise installs, tests); default `false`",
    ),
    ("BILLING_LOG_FORMAT", "`text` (default) or `json` (one JSON object per line)"),
    ("RUST_LOG", "log filter (default info)"),
];

/// Default of `BILLING_BODY_TIMEOUT_SECS`: a 1 MB body takes under a second
/// on any link a desktop app or Stripe uses.
pub const DEFAULT_BODY_TIMEOUT_SECS: u64 = 10;

/// Default of `BILLING_MAX_PENDING_BODIES`: bounds what bodies still
/// arriving can hold to this many times `BILLING_MAX_BODY_BYTES` (64 MB by
/// default). Bodies that arrive with their head, nearly all, never count.
pub const DEFAULT_MAX_PENDING_BODIES: usize = 64;

/// Default of `BILLING_TRIALS_PER_HOUR`: a household or an office behind
/// one address tries a handful of machines, not dozens.
pub const DEFAULT_TRIALS_PER_HOUR: u32 = 5;

/// Default of `BILLING_STRIPE_SYNC_RATE`: Stripe allows 100 read requests
/// per second in live mode and 25 in test mode; 20 leaves room for the
/// server's own calls in either.
pub const DEFAULT_STRIPE_SYNC_RATE: u32 = 20;

/// The server's settings.
pub struct Config {
    /// Where the data lives.
    pub store: StoreLocation,
    /// Data directory (embedded store, generated signing key).
    pub data_dir: PathBuf,
    /// Listen address.
    pub addr: SocketAddr,
    /// The server's address as browsers reach it, without a trailing slash.
    pub public_url: Option<String>,
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// Webhook signing secrets (comma-separated); None disables the webhook route.
    pub webhook_secret: Option<SecretString>,
    /// Stripe API key.
    pub stripe_secret_key: Option<SecretString>,
    /// Stripe API base URL.
    pub stripe_api_base: String,
    /// Requests per second the Stripe backfill and plan check send.
    pub stripe_sync_rate: u32,
    /// Dashboard JWT secret; None disables the dashboard routes.
    pub jwt_secret: Option<SecretString>,
    /// The plans on sale.
    pub plans: PlanCatalog,
    /// Grace period for past-due subscriptions.
    pub grace_days: u32,
    /// Request body cap.
    pub max_body_bytes: usize,
    /// Seconds a request body may take to arrive whole.
    pub body_timeout_secs: u64,
    /// Request bodies that may be arriving at once.
    pub max_pending_bodies: usize,
    /// Heartbeat window in seconds.
    pub heartbeat_window_secs: u64,
    /// Offline certificate lifetime in seconds.
    pub offline_ttl_secs: u64,
    /// PKCS#8 signing key file; None generates an ephemeral key.
    pub license_signing_key: Option<PathBuf>,
    /// Failed lookups per address and minute.
    pub rate_limit_per_minute: u32,
    /// Trial requests per address and hour.
    pub trials_per_hour: u32,
    /// Licenses validation keeps in memory.
    pub validation_cache_licenses: usize,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// Outbox retention in days.
    pub outbox_retention_days: u32,
    /// JSON log lines instead of text.
    pub log_json: bool,
    /// Delays between attempts of a webhook to the vendor.
    pub webhook_retry_schedule: RetrySchedule,
    /// Whether webhook endpoints may be on private addresses (and plain http).
    pub webhook_allow_private: bool,
    /// The log filter (`RUST_LOG`'s syntax); None: the command's default.
    pub rust_log: Option<String>,
}

impl std::fmt::Debug for Config {
    /// Every field but the store's location, whose PostgreSQL URL may hold a
    /// password (the secrets print as `[REDACTED]` by themselves).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            StoreLocation::Postgres(_) => "Postgres([REDACTED])".to_owned(),
            StoreLocation::Sqlite(path) => format!("Sqlite({path:?})"),
        };
        f.debug_struct("Config")
            .field("store", &format_args!("{store}"))
            .field("data_dir", &self.data_dir)
            .field("addr", &self.addr)
            .field("public_url", &self.public_url)
            .field("pool_size", &self.pool_size)
            .field("webhook_secret", &self.webhook_secret)
            .field("stripe_secret_key", &self.stripe_secret_key)
            .field("stripe_api_base", &self.stripe_api_base)
            .field("stripe_sync_rate", &self.stripe_sync_rate)
            .field("jwt_secret", &self.jwt_secret)
            .field("plans", &self.plans)
            .field("grace_days", &self.grace_days)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("body_timeout_secs", &self.body_timeout_secs)
            .field("max_pending_bodies", &self.max_pending_bodies)
            .field("heartbeat_window_secs", &self.heartbeat_window_secs)
            .field("offline_ttl_secs", &self.offline_ttl_secs)
            .field("license_signing_key", &self.license_signing_key)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("trials_per_hour", &self.trials_per_hour)
            .field("validation_cache_licenses", &self.validation_cache_licenses)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("outbox_retention_days", &self.outbox_retention_days)
            .field("log_json", &self.log_json)
            .field("webhook_retry_schedule", &self.webhook_retry_schedule)
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("rust_log", &self.rust_log)
            .finish()
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    #[serde(default)]
    plans: Vec<Plan>,
}

impl Config {
    /// Reads the process environment alone (the binary also reads the
    /// configuration file: [`crate::config_file::load`]).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The log filter: the configured `RUST_LOG`, or `default` when there is
    /// none or it cannot be read (as tracing-subscriber does with the
    /// environment's).
    pub fn log_filter(&self, default: &str) -> tracing_subscriber::EnvFilter {
        self.rust_log
            .as_deref()
            .and_then(|filter| tracing_subscriber::EnvFilter::try_new(filter).ok())
            .unwrap_or_else(|| default.into())
    }

    /// Reads settings through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let secret_text = |name: &str| -> anyhow::Result<Option<String>> {
            if let Some(value) = var(name) {
                return Ok(Some(value));
            }
            let file_var = format!("{name}_FILE");
            match var(&file_var) {
                None => Ok(None),
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {file_var} ({path})"))?;
                    Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()).filter(|v| !v.is_empty()))
                }
            }
        };
        let secret =
            |name: &str| -> anyhow::Result<Option<SecretString>> { Ok(secret_text(name)?.map(SecretString::from)) };
        let log_json = match var("BILLING_LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(_) => bail!("BILLING_LOG_FORMAT must be `text` or `json`"),
        };
        let webhook_retry_schedule = match var("BILLING_WEBHOOK_RETRY_SCHEDULE") {
            None => RetrySchedule::default(),
            Some(text) => RetrySchedule::parse_seconds(&text).with_context(|| {
                "BILLING_WEBHOOK_RETRY_SCHEDULE must be comma-separated whole seconds, e.g. 5,300,1800"
            })?,
        };
        let webhook_allow_private = match var("BILLING_WEBHOOK_ALLOW_PRIVATE").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => bail!("BILLING_WEBHOOK_ALLOW_PRIVATE must be `true` or `false`"),
        };
        let trusted_proxies =
            crate::client_addr::TrustedProxies::parse(&var("BILLING_TRUSTED_PROXIES").unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("BILLING_TRUSTED_PROXIES: {e}"))?;
        let data_dir = PathBuf::from(var("BILLING_DATA_DIR").unwrap_or_else(|| "billing-data".into()));
        let store = match StoreLocation::from_url(secret_text("DATABASE_URL")?.as_deref(), &data_dir)
            .map_err(|message| anyhow::anyhow!(message))?
        {
            StoreLocation::Postgres(url) => match var("PGSSLROOTCERT") {
                Some(root_cert) => StoreLocation::Postgres(with_ssl_root_cert(&url, &root_cert)),
                None => StoreLocation::Postgres(url),
            },
            sqlite => sqlite,
        };
        let addr = var("BILLING_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".into())
            .parse()
            .context("BILLING_ADDR must be host:port, e.g. 127.0.0.1:8080")?;
        let public_url = var("BILLING_PUBLIC_URL").map(|url| url.trim_end_matches('/').to_owned());
        if let Some(url) = &public_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(['?', '#']) {
                bail!("BILLING_PUBLIC_URL must be an http:// or https:// address without query or fragment, e.g. https://billing.example.com");
            }
        }
        let plans = match var("BILLING_PLANS") {
            Some(path) => load_plans(&PathBuf::from(path)).context("BILLING_PLANS")?,
            None => PlanCatalog::default(),
        };
        Ok(Self {
            trusted_proxies,
            store,
            data_dir,
            addr,
            public_url,
            pool_size: parse_number(var("BILLING_DB_POOL_SIZE"), "BILLING_DB_POOL_SIZE", default_pool_size())?,
            webhook_secret: secret("STRIPE_WEBHOOK_SECRET")?,
            stripe_secret_key: secret("STRIPE_SECRET_KEY")?,
            stripe_api_base: var("STRIPE_API_BASE")
                .unwrap_or_else(|| billing_core::stripe::client::DEFAULT_API_BASE.into()),
            stripe_sync_rate: at_least_one(
                parse_number(var("BILLING_STRIPE_SYNC_RATE"), "BILLING_STRIPE_SYNC_RATE", DEFAULT_STRIPE_SYNC_RATE)?,
                "BILLING_STRIPE_SYNC_RATE",
            )?,
            jwt_secret: secret("BILLING_JWT_SECRET")?,
            plans,
            grace_days: parse_number(var("BILLING_GRACE_DAYS"), "BILLING_GRACE_DAYS", 7)?,
            max_body_bytes: parse_number(var("BILLING_MAX_BODY_BYTES"), "BILLING_MAX_BODY_BYTES", 1 << 20)?,
            body_timeout_secs: at_least_one(
                parse_number(var("BILLING_BODY_TIMEOUT_SECS"), "BILLING_BODY_TIMEOUT_SECS", DEFAULT_BODY_TIMEOUT_SECS)?,
                "BILLING_BODY_TIMEOUT_SECS",
            )?,
            max_pending_bodies: at_least_one(
                parse_number(
                    var("BILLING_MAX_PENDING_BODIES"),
                    "BILLING_MAX_PENDING_BODIES",
                    DEFAULT_MAX_PENDING_BODIES,
                )?,
                "BILLING_MAX_PENDING_BODIES",
            )?,
            heartbeat_window_secs: at_least_one(
                parse_number(var("BILLING_HEARTBEAT_WINDOW_SECS"), "BILLING_HEARTBEAT_WINDOW_SECS", 600)?,
                "BILLING_HEARTBEAT_WINDOW_SECS",
            )?,
            offline_ttl_secs: at_least_one(
                parse_number(var("BILLING_OFFLINE_TTL_SECS"), "BILLING_OFFLINE_TTL_SECS", 7 * 24 * 3600)?,
                "BILLING_OFFLINE_TTL_SECS",
            )?,
            license_signing_key: var("BILLING_LICENSE_SIGNING_KEY").map(PathBuf::from),
            rate_limit_per_minute: at_least_one(
                parse_number(var("BILLING_RATE_LIMIT_PER_MINUTE"), "BILLING_RATE_LIMIT_PER_MINUTE", 60)?,
                "BILLING_RATE_LIMIT_PER_MINUTE",
            )?,
            trials_per_hour: at_least_one(
                parse_number(var("BILLING_TRIALS_PER_HOUR"), "BILLING_TRIALS_PER_HOUR", DEFAULT_TRIALS_PER_HOUR)?,
                "BILLING_TRIALS_PER_HOUR",
            )?,
            validation_cache_licenses: parse_number(
                var("BILLING_VALIDATION_CACHE_LICENSES"),
                "BILLING_VALIDATION_CACHE_LICENSES",
                billing_core::validation_view::DEFAULT_CAPACITY,
            )?,
            outbox_retention_days: at_least_one(
                parse_number(var("BILLING_OUTBOX_RETENTION_DAYS"), "BILLING_OUTBOX_RETENTION_DAYS", 7)?,
                "BILLING_OUTBOX_RETENTION_DAYS",
            )?,
            log_json,
            webhook_retry_schedule,
            webhook_allow_private,
            rust_log: var("RUST_LOG"),
        })
    }
}

/// `url` with `sslrootcert=<root_cert>` added to its query, unless it names
/// one already (the URL's own setting wins, as in libpq).
fn with_ssl_root_cert(url: &str, root_cert: &str) -> String {
    let separator = match url.split_once('?') {
        None => "?",
        Some((_, query)) if query.split('&').any(|pair| pair.split('=').next() == Some("sslrootcert")) => {
            return url.to_owned();
        }
        Some((_, query)) if query.is_empty() || query.ends_with('&') => "",
        Some(_) => "&",
    };
    format!("{url}{separator}sslrootcert={}", percent_encode(root_cert))
}

/// Percent-encodes all but RFC 3986's unreserved characters and `/`, so a
/// path stays readable and a space never becomes a `+`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => encoded.push(byte as char),
            _ => {
                use std::fmt::Write;
                let _ = write!(encoded, "%{byte:02X}");
            }
        }
    }
    encoded
}

/// More connections than this only queue inside PostgreSQL: on 2 cores, 16
/// acknowledged ~1,700 webhook events/s and 8 ~2,050 (`webhook_ingest` bench).
fn default_pool_size() -> usize {
    4 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn parse_number<T: std::str::FromStr>(value: Option<String>, name: &str, default: T) -> anyhow::Result<T> {
    match value {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| anyhow::anyhow!("{name} must be a non-negative integer")),
    }
}

fn at_least_one<T: PartialOrd + From<u8>>(value: T, name: &str) -> anyhow::Result<T> {
    if value < T::from(1) {
        bail!("{name} must be at least 1");
    }
    Ok(value)
}

/// Loads and validates a plans file.
pub fn load_plans(path: &std::path::Path) -> anyhow::Result<PlanCatalog> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read plans file {}", path.display()))?;
    parse_plans(&text).with_context(|| format!("invalid plans file {}", path.display()))
}

/// Parses and validates the text of a plans file (what [`load_plans`] reads;
/// separate so the parser can be fuzzed without touching the disk).
pub fn parse_plans(text: &str) -> anyhow::Result<PlanCatalog> {
    let file: PlansFile = toml::from_str(text)?;
    Ok(PlanCatalog::new(file.plans)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn nothing_configured_means_the_embedded_store() {
        let c = config(&[]).unwrap();
        assert_eq!(c.store, StoreLocation::Sqlite(PathBuf::from("billing-data/billing.sqlite3")));
        let c = config(&[("BILLING_DATA_DIR", "/srv/billing")]).unwrap();
        assert_eq!(c.store, StoreLocation::Sqlite(PathBuf::from("/srv/billing/billing.sqlite3")));
    }

    #[test]
    fn defaults_apply_when_only_the_database_is_set() {
        let c = config(&[("DATABASE_URL", "postgres://localhost/x")]).unwrap();
        assert_eq!(c.store, StoreLocation::Postgres("postgres://localhost/x".into()));
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!((c.grace_days, c.max_body_bytes, c.pool_size), (7, 1 << 20, default_pool_size()));
        assert_eq!((c.body_timeout_secs, c.max_pending_bodies), (10, 64));
        assert!(c.webhook_secret.is_none() && c.jwt_secret.is_none());
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let e = config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_GRACE_DAYS", "-1")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_GRACE_DAYS"));
        let e = config(&[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert!(e.to_string().contains("DATABASE_URL"));
        let e = config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_HEARTBEAT_WINDOW_SECS", "0")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_HEARTBEAT_WINDOW_SECS"));
        let e = config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_BODY_TIMEOUT_SECS", "0")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_BODY_TIMEOUT_SECS"));
        let e = config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_MAX_PENDING_BODIES", "many")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_MAX_PENDING_BODIES"));
        let e = config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_ADDR", "nope")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_ADDR"));
    }

    #[test]
    fn secrets_may_come_from_files() {
        let dir = std::env::temp_dir().join(format!("billing-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwt");
        std::fs::write(&path, "from-a-file\n").unwrap();
        let c =
            config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_JWT_SECRET_FILE", path.to_str().unwrap())]).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(c.jwt_secret.unwrap().expose_secret(), "from-a-file");
        let missing = config(&[("DATABASE_URL", "postgres://x/y"), ("STRIPE_SECRET_KEY_FILE", "/nonexistent/key")]);
        assert!(missing.unwrap_err().to_string().contains("STRIPE_SECRET_KEY_FILE"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every `var("…")`/`secret("…")` this file reads is documented in
    /// [`VARIABLES`] or [`SECRETS`], and nothing listed is unread.
    #[test]
    fn the_variable_list_matches_what_the_code_reads() {
        let source = include_str!("config.rs");
        let code = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut read = std::collections::BTreeSet::new();
        for call in ["var(\"", "secret(\"", "secret_text(\""] {
            for (i, _) in code.match_indices(call) {
                let rest = &code[i + call.len()..];
                read.insert(rest[..rest.find('"').unwrap()].to_owned());
            }
        }
        let listed: std::collections::BTreeSet<String> = VARIABLES.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(read, listed);
        for secret in SECRETS {
            assert!(listed.contains(*secret), "{secret}");
        }
    }

    /// The README's configuration table lists exactly what the code reads,
    /// each variable with its configuration-file key.
    #[test]
    fn the_readme_reference_matches_the_code() {
        use crate::config_file::{file_key, settable_variables, CONFIG_VARIABLE};
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuration").unwrap()..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let rows: Vec<(String, String)> = section
            .lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_owned(), cells[2].trim_matches('`').to_owned())
            })
            .collect();
        let documented: std::collections::BTreeSet<String> = rows.iter().map(|(name, _)| name.clone()).collect();
        let mut expected: std::collections::BTreeSet<String> = VARIABLES.iter().map(|(n, _)| n.to_string()).collect();
        expected.extend(SECRETS.iter().map(|s| format!("{s}_FILE")));
        expected.insert(CONFIG_VARIABLE.to_owned());
        assert_eq!(documented, expected, "README configuration table vs config.rs");
        for (name, key) in &rows {
            let expected_key = if name == CONFIG_VARIABLE { "—".to_owned() } else { file_key(name) };
            assert_eq!(*key, expected_key, "README: the file key of {name}");
        }
        let documented_keys: std::collections::BTreeSet<&str> =
            rows.iter().map(|(_, key)| key.as_str()).filter(|key| *key != "—").collect();
        let known_keys: Vec<String> = settable_variables().iter().map(|v| file_key(v)).collect();
        let known_keys: std::collections::BTreeSet<&str> = known_keys.iter().map(String::as_str).collect();
        assert_eq!(documented_keys, known_keys, "README file keys vs the keys the file accepts");
    }

    #[test]
    fn webhook_delivery_settings_are_read_and_checked() {
        let c = config(&[]).unwrap();
        assert_eq!((c.webhook_retry_schedule.clone(), c.webhook_allow_private), (RetrySchedule::default(), false));
        let c =
            config(&[("BILLING_WEBHOOK_RETRY_SCHEDULE", "1,2"), ("BILLING_WEBHOOK_ALLOW_PRIVATE", "true")]).unwrap();
        let expected = RetrySchedule::new(vec![std::time::Duration::from_secs(1), std::time::Duration::from_secs(2)]);
        assert_eq!((c.webhook_retry_schedule, c.webhook_allow_private), (expected, true));
        let e = config(&[("BILLING_WEBHOOK_RETRY_SCHEDULE", "1,soon")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_WEBHOOK_RETRY_SCHEDULE"));
        let e = config(&[("BILLING_WEBHOOK_ALLOW_PRIVATE", "yes")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_WEBHOOK_ALLOW_PRIVATE"));
    }

    #[test]
    fn a_misspelt_key_in_the_plans_file_is_an_error_naming_it() {
        let plan = "[[plans]]\nid = \"pro\"\nname = \"Pro\"\nstripe_price_id = \"price_pro\"\n";
        assert_eq!(parse_plans(&format!("{plan}max_devices = 3\n")).unwrap().all().len(), 1);
        let e = format!("{:#}", parse_plans(&format!("{plan}max_devics = 3\n")).unwrap_err());
        assert!(e.contains("max_devics"), "{e}");
        let e = format!("{:#}", parse_plans(&plan.replace("[[plans]]", "[[plan]]")).unwrap_err());
        assert!(e.contains("plan"), "{e}");
    }

    #[test]
    fn the_plans_file_reads_every_policy_key_and_refuses_bad_values_naming_them() {
        use billing_core::domain::{DevicePolicy, LicenseKind};
        let plan = "[[plans]]\nid = \"studio\"\nname = \"Studio\"\nstripe_price_id = \"price_s\"\nmax_devices = 1\n";
        let full = format!(
            "{plan}kind = \"perpetual\"\nupdates_months = 12\ndevice_policy = \"node_locked\"\n\
             heartbeat_window_secs = 86400\noffline_ttl_secs = 2592000\ntrial_days = 14\noffline_activation_days = 30\n"
        );
        let catalog = parse_plans(&full).unwrap();
        let p = &catalog.all()[0];
        assert_eq!(
            (p.kind, p.updates_months, p.device_policy),
            (LicenseKind::Perpetual, Some(12), DevicePolicy::NodeLocked)
        );
        assert_eq!((p.heartbeat_window_secs, p.offline_ttl_secs), (Some(86400), Some(2_592_000)));
        assert_eq!((p.trial_days, p.offline_activation_days), (Some(14), 30));
        let defaults = parse_plans(plan).unwrap();
        assert_eq!(defaults.all()[0].offline_activation_days, 365);
        for (bad, named) in [
            ("kind = \"forever\"\n", "forever"),
            ("device_policy = \"nodelocked\"\n", "nodelocked"),
            ("trial_days = 0\n", "trial_days"),
            ("heartbeat_window_secs = -5\n", "heartbeat_window_secs"),
            ("updates_months = 12\n", "updates_months"),
        ] {
            let e = format!("{:#}", parse_plans(&format!("{plan}{bad}")).unwrap_err());
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn trusted_proxies_are_read_and_checked() {
        assert_eq!(config(&[]).unwrap().trusted_proxies, crate::client_addr::TrustedProxies::default());
        let c = config(&[("BILLING_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")]).unwrap();
        assert!(
            c.trusted_proxies.trusts("10.1.2.3".parse().unwrap())
                && !c.trusted_proxies.trusts("192.0.2.2".parse().unwrap())
        );
        let e = config(&[("BILLING_TRUSTED_PROXIES", "10.0.0.0/8, lb.internal")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_TRUSTED_PROXIES") && e.to_string().contains("lb.internal"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = config(&[("DATABASE_URL", "postgres://x/y"), ("BILLING_JWT_SECRET", "hunter2")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn pgsslrootcert_is_added_to_a_postgres_url_without_one() {
        fn check(url: &str, root_cert: &str, expected: &str) {
            let c = config(&[("DATABASE_URL", url), ("PGSSLROOTCERT", root_cert)]).unwrap();
            assert_eq!(c.store, StoreLocation::Postgres(expected.into()), "{url} with {root_cert}");
        }
        check("postgres://h/db", "/etc/ca.pem", "postgres://h/db?sslrootcert=/etc/ca.pem");
        check(
            "postgresql://h/db?sslmode=verify-full",
            "/etc/ca.pem",
            "postgresql://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        );
        check("postgres://h/db?", "/etc/ca.pem", "postgres://h/db?sslrootcert=/etc/ca.pem");
        check("postgres://h/db?sslmode=require&", "ca.pem", "postgres://h/db?sslmode=require&sslrootcert=ca.pem");
        check(
            "postgres://h/db",
            "/etc/my certs/ca+1&2.pem",
            "postgres://h/db?sslrootcert=/etc/my%20certs/ca%2B1%262.pem",
        );
        check("postgres://h/db?sslrootcert=/own.pem", "/etc/ca.pem", "postgres://h/db?sslrootcert=/own.pem");
        check(
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/own.pem",
            "/etc/ca.pem",
            "postgres://h/db?sslmode=verify-ca&sslrootcert=/own.pem",
        );
        let c = config(&[("DATABASE_URL", "sqlite:///tmp/x.db"), ("PGSSLROOTCERT", "/etc/ca.pem")]).unwrap();
        assert_eq!(c.store, StoreLocation::Sqlite(PathBuf::from("/tmp/x.db")));
        assert!(matches!(config(&[("PGSSLROOTCERT", "/etc/ca.pem")]).unwrap().store, StoreLocation::Sqlite(_)));
    }

    #[test]
    fn the_stripe_sync_rate_defaults_to_20_and_is_at_least_1() {
        assert_eq!(config(&[]).unwrap().stripe_sync_rate, DEFAULT_STRIPE_SYNC_RATE);
        assert_eq!(config(&[("BILLING_STRIPE_SYNC_RATE", "5")]).unwrap().stripe_sync_rate, 5);
        let e = config(&[("BILLING_STRIPE_SYNC_RATE", "0")]).unwrap_err();
        assert!(e.to_string().contains("BILLING_STRIPE_SYNC_RATE"), "{e}");
    }

    #[test]
    fn rust_log_is_the_log_filter_when_set() {
        assert_eq!(config(&[]).unwrap().rust_log, None);
        let c = config(&[("RUST_LOG", "warn,billing_server=debug")]).unwrap();
        assert_eq!(c.rust_log.as_deref(), Some("warn,billing_server=debug"));
        assert_eq!(c.log_filter("info").to_string(), "billing_server=debug,warn");
        assert_eq!(config(&[]).unwrap().log_filter("info").to_string(), "info");
    }

    #[test]
    fn the_database_url_does_not_print() {
        let c = config(&[("DATABASE_URL", "postgres://billing:hunter2@db/x")]).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2") && printed.contains("grace_days"), "{printed}");
    }
}
