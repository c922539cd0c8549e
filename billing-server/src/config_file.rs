//! The configuration file (`billing-server --config billing.toml`, or
//! `BILLING_CONFIG`): TOML whose keys are the environment's variable names in
//! lower case without `BILLING_`. The environment overrides it key by key, and
//! [`Config::from_lookup`] interprets values from both alike.

use crate::config::{Config, SECRETS, VARIABLES};
use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment variable naming the configuration file (`--config` wins).
pub const CONFIG_VARIABLE: &str = "BILLING_CONFIG";

/// The file key of an environment variable: its name in lower case, without
/// the `BILLING_` prefix (`BILLING_GRACE_DAYS` is `grace_days`,
/// `DATABASE_URL_FILE` is `database_url_file`).
pub fn file_key(variable: &str) -> String {
    variable.strip_prefix("BILLING_").unwrap_or(variable).to_ascii_lowercase()
}

/// Every variable a file key can set: [`VARIABLES`] and the `_FILE` variants
/// of [`SECRETS`].
pub fn settable_variables() -> Vec<String> {
    let variables = VARIABLES.iter().map(|(name, _)| (*name).to_owned());
    variables.chain(SECRETS.iter().map(|secret| format!("{secret}_FILE"))).collect()
}

/// The TOML type a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// A string; relative paths are resolved against the file's directory.
    Path,
    Integer,
    Boolean,
    /// A comma-separated string or an array.
    List,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Path => "a string (a path)",
            Kind::Integer => "an integer",
            Kind::Boolean => "a boolean (`true` or `false`)",
            Kind::List => "a string or an array of strings",
        }
    }
}

/// The kind of each settable variable. No catch-all: a test checks that
/// every variable has one, so a new variable gets its type decided here.
fn kind(variable: &str) -> Option<Kind> {
    if variable.strip_suffix("_FILE").is_some_and(|secret| SECRETS.contains(&secret)) {
        return Some(Kind::Path);
    }
    Some(match variable {
        "DATABASE_URL" | "BILLING_ADDR" | "BILLING_PUBLIC_URL" | "STRIPE_SECRET_KEY" | "STRIPE_API_BASE"
        | "BILLING_JWT_SECRET" | "BILLING_LOG_FORMAT" | "RUST_LOG" => Kind::Text,
        "BILLING_DATA_DIR" | "BILLING_PLANS" | "BILLING_LICENSE_SIGNING_KEY" | "PGSSLROOTCERT" => Kind::Path,
        "BILLING_DB_POOL_SIZE"
        | "BILLING_GRACE_DAYS"
        | "BILLING_MAX_BODY_BYTES"
        | "BILLING_BODY_TIMEOUT_SECS"
        | "BILLING_MAX_PENDING_BODIES"
        | "BILLING_HEARTBEAT_WINDOW_SECS"
        | "BILLING_OFFLINE_TTL_SECS"
        | "BILLING_RATE_LIMIT_PER_MINUTE"
        | "BILLING_TRIALS_PER_HOUR"
        | "BILLING_VALIDATION_CACHE_LICENSES"
        | "BILLING_OUTBOX_RETENTION_DAYS"
        | "BILLING_STRIPE_SYNC_RATE" => Kind::Integer,
        "BILLING_WEBHOOK_ALLOW_PRIVATE" => Kind::Boolean,
        "STRIPE_WEBHOOK_SECRET" | "BILLING_TRUSTED_PROXIES" | "BILLING_WEBHOOK_RETRY_SCHEDULE" => Kind::List,
        _ => return None,
    })
}

/// The secret `variable` is, or is the `_FILE` variant of.
fn secret_of(variable: &str) -> Option<&'static str> {
    let name = variable.strip_suffix("_FILE").unwrap_or(variable);
    SECRETS.iter().copied().find(|secret| *secret == name)
}

/// A configuration file, read and checked: every key known, every value of
/// its key's type, relative paths made absolute. (No `Debug`: it may hold
/// secrets.)
pub struct ConfigFile {
    path: PathBuf,
    /// Values by variable name, spelt as the environment would spell them.
    values: BTreeMap<String, String>,
    /// Why the file should be kept private, if it is not.
    exposure: Option<String>,
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let path =
            std::path::absolute(path).with_context(|| format!("cannot read configuration file {}", path.display()))?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        let mut file = Self::parse(&text, &path)?;
        file.exposure = file.holds_secrets().then(|| exposure(&path)).flatten();
        Ok(file)
    }

    /// Checks `text`, the contents of the file at `path` (which names it in
    /// errors and anchors relative paths).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<Self> {
        let shown = path.display();
        // The parser's own message quotes the offending line, which may be a
        // secret's: only its position and reason are shown.
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |span| span.start);
            let line = text[..at].matches('\n').count() + 1;
            let column = text[..at].rsplit('\n').next().map_or(0, |before| before.chars().count()) + 1;
            anyhow!("invalid configuration file {shown}, line {line}, column {column}: {}", e.message())
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let variables = settable_variables();
        let mut values = BTreeMap::new();
        for (key, value) in &table {
            let Some(variable) = variables.iter().find(|variable| file_key(variable) == *key) else {
                let hint = closest_key(key, &variables).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
                bail!("unknown key `{key}` in configuration file {shown}{hint}");
            };
            let kind = kind(variable).unwrap_or(Kind::Text);
            let text = value_text(kind, value, dir).map_err(|found| {
                anyhow!("`{key}` in configuration file {shown} must be {}, not {found}", kind.expected())
            })?;
            values.insert(variable.clone(), text);
        }
        Ok(Self { path: path.to_owned(), values, exposure: None })
    }

    /// The value the file gives `variable`, as the environment would spell it.
    fn get(&self, variable: &str) -> Option<&str> {
        self.values.get(variable).map(String::as_str)
    }

    /// Whether a secret is written in the file itself (not only a `_file`
    /// key naming where it is).
    fn holds_secrets(&self) -> bool {
        SECRETS.iter().any(|secret| self.values.contains_key(*secret))
    }
}

/// The value as the environment would spell it, or what was found instead.
fn value_text(kind: Kind, value: &toml::Value, dir: &Path) -> Result<String, String> {
    use toml::Value;
    match (kind, value) {
        (Kind::Text | Kind::List, Value::String(text)) => Ok(text.clone()),
        (Kind::Path, Value::String(path)) => Ok(resolve(dir, path)),
        (Kind::Integer, Value::Integer(n)) => Ok(n.to_string()),
        (Kind::Boolean, Value::Boolean(b)) => Ok(b.to_string()),
        (Kind::List, Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                Value::Integer(n) => Ok(n.to_string()),
                other => Err(format!("an array holding {}", a_value_of(other))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        (_, other) => Err(a_value_of(other).to_owned()),
    }
}

fn a_value_of(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// `path` relative to `dir` unless it is absolute (or empty: unset).
fn resolve(dir: &Path, path: &str) -> String {
    if path.is_empty() || Path::new(path).is_absolute() {
        return path.to_owned();
    }
    dir.join(path).to_string_lossy().into_owned()
}

/// The known key closest to `key`: the same setting spelt as a variable
/// (`GRACE_DAYS`, `BILLING_GRACE_DAYS`) or a few typing slips away.
fn closest_key(key: &str, variables: &[String]) -> Option<String> {
    let as_variable = file_key(&key.to_ascii_uppercase());
    let (distance, closest) = variables
        .iter()
        .map(|variable| file_key(variable))
        .map(|known| (edit_distance(&as_variable, &known), known))
        .min()?;
    (distance <= 2.max(closest.len() / 4)).then_some(closest)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// Why a file holding secrets should be made private: like ssh with keys,
/// only a warning, since the operator may have reasons (a private group).
#[cfg(unix)]
fn exposure(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "configuration file {} holds secrets and is readable by group or others (mode {mode:04o}): \
             chmod 600 it, or move the secrets to files named by *_file keys",
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn exposure(_path: &Path) -> Option<String> {
    None
}

/// Where the configuration came from, and what to say about it once logging
/// is set up (logging is configured by the configuration).
pub struct ConfigNotes {
    file: Option<PathBuf>,
    warnings: Vec<String>,
}

impl ConfigNotes {
    /// Logs the configuration file read, if any, and its warnings.
    pub fn log(&self) {
        if let Some(file) = &self.file {
            tracing::info!(file = %file.display(), "configuration file read");
        }
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }
}

/// The configuration from the process environment over the configuration
/// file, if one is named: `flag` (`--config`), or else `BILLING_CONFIG` (an
/// empty one counts as unset, as every variable does).
pub fn load(flag: Option<&Path>) -> anyhow::Result<(Config, ConfigNotes)> {
    let named = std::env::var_os(CONFIG_VARIABLE).filter(|path| !path.is_empty()).map(PathBuf::from);
    let file = flag.map(Path::to_path_buf).or(named).map(|path| ConfigFile::read(&path)).transpose()?;
    let config = config_from(|name| std::env::var(name).ok(), file.as_ref())?;
    let warnings = file.as_ref().and_then(|f| f.exposure.clone()).into_iter().collect();
    Ok((config, ConfigNotes { file: file.map(|f| f.path), warnings }))
}

/// The configuration from `env` over `file`, key by key. An empty variable
/// counts as unset. A secret comes whole from one source: if the environment
/// has it or its `_FILE` variant, the file's `name` and `name_file` are not
/// read, so `X` > `X_FILE` > the file's `x` > the file's `x_file`.
pub fn config_from(env: impl Fn(&str) -> Option<String>, file: Option<&ConfigFile>) -> anyhow::Result<Config> {
    let from_env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let env_decides = |name: &str| match secret_of(name) {
        Some(secret) => from_env(secret).is_some() || from_env(&format!("{secret}_FILE")).is_some(),
        None => from_env(name).is_some(),
    };
    let from_file = |name: &str| file.and_then(|file| file.get(name)).filter(|_| !env_decides(name));
    let lookup = |name: &str| from_env(name).or_else(|| from_file(name).map(str::to_owned));
    Config::from_lookup(lookup).map_err(|error| {
        let message = format!("{error:#}");
        let blamed: Vec<String> = settable_variables()
            .iter()
            .filter(|variable| from_file(variable).is_some() && mentions(&message, variable))
            .map(|variable| format!("`{}`", file_key(variable)))
            .collect();
        match file {
            Some(file) if !blamed.is_empty() => {
                anyhow!("{message} (set by {} in configuration file {})", blamed.join(", "), file.path.display())
            }
            _ => error,
        }
    })
}

/// Whether `message` names `variable` as a whole word (`DATABASE_URL_FILE`
/// does not name `DATABASE_URL`).
fn mentions(message: &str, variable: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    message.match_indices(variable).any(|(at, _)| {
        !message[..at].chars().next_back().is_some_and(word)
            && !message[at + variable.len()..].chars().next().is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use billing_core::storage::any::StoreLocation;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    const PATH: &str = "/srv/billing/billing.toml";

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(text, Path::new(PATH)).unwrap()
    }

    fn file_error(text: &str) -> String {
        format!("{:#}", ConfigFile::parse(text, Path::new(PATH)).err().expect("an error"))
    }

    fn config(env: &[(&str, &str)], text: &str) -> anyhow::Result<Config> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        config_from(|name| env.get(name).cloned(), Some(&file(text)))
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("billing-config-file-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_keys_are_the_variable_names_in_lower_case_without_billing() {
        for (variable, key) in [
            ("BILLING_ADDR", "addr"),
            ("DATABASE_URL", "database_url"),
            ("BILLING_GRACE_DAYS", "grace_days"),
            ("STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret"),
            ("BILLING_JWT_SECRET_FILE", "jwt_secret_file"),
            ("PGSSLROOTCERT", "pgsslrootcert"),
            ("RUST_LOG", "rust_log"),
        ] {
            assert_eq!(file_key(variable), key);
        }
        let keys: std::collections::BTreeSet<String> = settable_variables().iter().map(|v| file_key(v)).collect();
        assert_eq!(keys.len(), settable_variables().len(), "two variables share a file key");
        assert!(keys.contains("database_url_file") && keys.contains("stripe_webhook_secret_file"));
    }

    #[test]
    fn every_setting_has_a_value_kind() {
        for variable in settable_variables() {
            assert!(kind(&variable).is_some(), "{variable}: decide its TOML type in config_file::kind");
        }
    }

    #[test]
    fn a_file_alone_configures_the_server() {
        let c = config(
            &[],
            r#"
            addr = "0.0.0.0:9000"
            database_url = "postgres://db.internal/billing"
            jwt_secret = "from-the-file"
            grace_days = 3
            webhook_allow_private = true
            log_format = "json"
            rust_log = "debug"
            stripe_sync_rate = 5
            "#,
        )
        .unwrap();
        assert_eq!(c.addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.store, StoreLocation::Postgres("postgres://db.internal/billing".into()));
        assert_eq!(c.jwt_secret.unwrap().expose_secret(), "from-the-file");
        assert_eq!((c.grace_days, c.webhook_allow_private, c.log_json), (3, true, true));
        assert_eq!((c.rust_log.as_deref(), c.stripe_sync_rate), (Some("debug"), 5));
    }

    #[test]
    fn the_environment_overrides_the_file_key_by_key() {
        let text = "addr = \"0.0.0.0:9000\"\ngrace_days = 3\nrust_log = \"debug\"\n";
        let c = config(&[("BILLING_GRACE_DAYS", "9"), ("RUST_LOG", "warn")], text).unwrap();
        assert_eq!(
            (c.addr.to_string().as_str(), c.grace_days, c.rust_log.as_deref()),
            ("0.0.0.0:9000", 9, Some("warn"))
        );
        // An empty variable is unset, as everywhere else: the file's value stays.
        let c = config(&[("BILLING_GRACE_DAYS", "")], text).unwrap();
        assert_eq!(c.grace_days, 3);
        // The file's invalid value is never read when the environment has one.
        assert!(config(&[("BILLING_ADDR", "127.0.0.1:1")], "addr = \"nonsense\"").is_ok());
    }

    #[test]
    fn a_secret_comes_whole_from_the_environment_when_it_has_either_form() {
        let dir = temp_dir();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap();
            dir.join(name).display().to_string()
        };
        let (env_file, toml_file) = (write("env-jwt", "env-file\n"), write("toml-jwt", "toml-file\n"));
        let jwt = |env: &[(&str, &str)], text: &str| {
            config(env, text).unwrap().jwt_secret.map(|s| s.expose_secret().to_owned()).unwrap_or_default()
        };
        let both = format!("jwt_secret = \"toml\"\njwt_secret_file = \"{toml_file}\"\n");
        let env_both = [("BILLING_JWT_SECRET", "env"), ("BILLING_JWT_SECRET_FILE", env_file.as_str())];
        assert_eq!(jwt(&env_both, &both), "env");
        assert_eq!(jwt(&env_both[1..], &both), "env-file");
        assert_eq!(jwt(&[], &both), "toml");
        assert_eq!(jwt(&[], &format!("jwt_secret_file = \"{toml_file}\"")), "toml-file");
        // A relative `_file` path is the file's directory's.
        let relative = ConfigFile::parse("jwt_secret_file = \"toml-jwt\"", &dir.join("billing.toml")).unwrap();
        let c = config_from(|_| None, Some(&relative)).unwrap();
        assert_eq!(c.jwt_secret.unwrap().expose_secret(), "toml-file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn list_settings_take_a_string_or_an_array() {
        for text in [
            "trusted_proxies = \"10.0.0.0/8, 192.0.2.1\"\nwebhook_retry_schedule = \"1,2\"",
            "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\nwebhook_retry_schedule = [1, 2]",
        ] {
            let c = config(&[], text).unwrap();
            assert!(c.trusted_proxies.trusts("10.1.2.3".parse().unwrap()), "{text}");
            assert!(c.trusted_proxies.trusts("192.0.2.1".parse().unwrap()), "{text}");
            let expected = billing_core::domain::vendor_webhook::RetrySchedule::new(vec![
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(2),
            ]);
            assert_eq!(c.webhook_retry_schedule, expected, "{text}");
        }
        let secrets = file("stripe_webhook_secret = [\"whsec_new\", \"whsec_old\"]");
        assert_eq!(secrets.get("STRIPE_WEBHOOK_SECRET"), Some("whsec_new,whsec_old"));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it_the_file_and_the_closest_known_key() {
        let e = file_error("grace_dayz = 3");
        assert!(e.contains("unknown key `grace_dayz`") && e.contains(PATH) && e.contains("`grace_days`"), "{e}");
        let e = file_error("BILLING_GRACE_DAYS = 3");
        assert!(e.contains("`BILLING_GRACE_DAYS`") && e.contains("did you mean `grace_days`"), "{e}");
        let e = file_error("[server]\naddr = \"0.0.0.0:80\"");
        assert!(e.contains("unknown key `server`"), "{e}");
        let e = file_error("colour = \"blue\"");
        assert!(e.contains("unknown key `colour`") && !e.contains("did you mean"), "{e}");
        // The variable that names the file has no key in it.
        assert!(file_error("config = \"other.toml\"").contains("unknown key `config`"));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_naming_the_key_and_the_file() {
        for (text, key, expected, found) in [
            ("grace_days = \"7\"", "grace_days", "an integer", "a string"),
            ("webhook_allow_private = \"yes\"", "webhook_allow_private", "a boolean", "a string"),
            ("addr = 8080", "addr", "a string", "an integer"),
            ("plans = [\"a.toml\"]", "plans", "a string (a path)", "an array"),
            ("grace_days = 7.5", "grace_days", "an integer", "a float"),
            (
                "trusted_proxies = [[\"10.0.0.0/8\"]]",
                "trusted_proxies",
                "a string or an array",
                "an array holding an array",
            ),
        ] {
            let e = file_error(text);
            assert!(e.contains(&format!("`{key}`")) && e.contains(PATH), "{e}");
            assert!(e.contains(expected) && e.contains(&format!("not {found}")), "{e}");
        }
        let e = file_error("grace_days = 3\njwt_secret = \"hunter2");
        assert!(e.contains("invalid configuration file") && e.contains(PATH) && e.contains("line 2"), "{e}");
        assert!(!e.contains("hunter2"), "the parser's excerpt is not shown: {e}");
    }

    #[test]
    fn an_invalid_value_from_the_file_is_blamed_on_its_key() {
        let e = format!("{:#}", config(&[], "grace_days = -1").unwrap_err());
        assert!(e.contains("BILLING_GRACE_DAYS") && e.contains("`grace_days`") && e.contains(PATH), "{e}");
        let e = format!("{:#}", config(&[], "stripe_secret_key_file = \"/nonexistent/key\"").unwrap_err());
        assert!(e.contains("`stripe_secret_key_file`") && e.contains(PATH), "{e}");
        let e = format!("{:#}", config(&[], "plans = \"missing.toml\"").unwrap_err());
        assert!(e.contains("/srv/billing/missing.toml") && e.contains("`plans`"), "{e}");
        // The environment's own mistakes are not blamed on the file.
        let e = format!("{:#}", config(&[("BILLING_GRACE_DAYS", "-1")], "grace_days = 2").unwrap_err());
        assert!(e.contains("BILLING_GRACE_DAYS") && !e.contains(PATH), "{e}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_files_directory() {
        let f = file(
            r#"
            plans = "plans.toml"
            data_dir = "data"
            license_signing_key = "keys/signing.pem"
            pgsslrootcert = "../ca.pem"
            database_url_file = "secrets/db"
            stripe_api_base = "relative/is/not/a/path/here"
            "#,
        );
        assert_eq!(f.get("BILLING_PLANS"), Some("/srv/billing/plans.toml"));
        assert_eq!(f.get("BILLING_DATA_DIR"), Some("/srv/billing/data"));
        assert_eq!(f.get("BILLING_LICENSE_SIGNING_KEY"), Some("/srv/billing/keys/signing.pem"));
        assert_eq!(f.get("PGSSLROOTCERT"), Some("/srv/billing/../ca.pem"));
        assert_eq!(f.get("DATABASE_URL_FILE"), Some("/srv/billing/secrets/db"));
        assert_eq!(f.get("STRIPE_API_BASE"), Some("relative/is/not/a/path/here"));
        assert_eq!(file("plans = \"/etc/plans.toml\"").get("BILLING_PLANS"), Some("/etc/plans.toml"));
        let c = config(&[], "data_dir = \"data\"").unwrap();
        assert_eq!(c.store, StoreLocation::Sqlite(PathBuf::from("/srv/billing/data/billing.sqlite3")));
        // The environment's relative paths stay the working directory's.
        let c = config(&[("BILLING_DATA_DIR", "data")], "data_dir = \"elsewhere\"").unwrap();
        assert_eq!(c.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = format!("{:#}", ConfigFile::read(Path::new("/nonexistent/billing.toml")).err().unwrap());
        assert!(e.contains("cannot read configuration file /nonexistent/billing.toml"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_file_holding_secrets_readable_by_others_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir();
        let path = dir.join("billing.toml");
        let with_mode = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            ConfigFile::read(&path).unwrap().exposure
        };
        let warning = with_mode("jwt_secret = \"s\"", 0o644).expect("a warning");
        assert!(warning.contains(&path.display().to_string()) && warning.contains("0644"), "{warning}");
        assert!(with_mode("jwt_secret = \"s\"", 0o600).is_none());
        assert!(with_mode("jwt_secret_file = \"jwt\"\naddr = \"127.0.0.1:1\"", 0o644).is_none(), "no secret in it");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The README's example `billing.toml` is a file the server accepts.
    #[test]
    fn the_readme_example_is_a_valid_configuration_file() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n# billing.toml").expect("an example billing.toml in the README");
        let block = &readme[start + "```toml\n".len()..];
        let example = &block[..block.find("```").unwrap()];
        let parsed = file(example);
        assert!(parsed.values.len() >= 8, "the example shows a good part of the keys");
    }
}
