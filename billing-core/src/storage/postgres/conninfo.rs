//! The TLS parameters of a PostgreSQL connection string (`sslmode`,
//! `sslrootcert`), taken out of it before the rest goes to tokio-postgres,
//! whose parser knows neither `verify-ca`, `verify-full` nor `sslrootcert`.
//! Everything else is handed on byte for byte, so what tokio-postgres
//! accepted before (options, host lists, Unix sockets, key=value strings)
//! it still accepts. Pure: no I/O.

use std::fmt;
use std::path::PathBuf;

/// `sslmode`, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, else plain text; the certificate is
    /// not checked. libpq's default, and ours.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked, unless
    /// `sslrootcert` is given: then its chain is, as under `verify-ca`.
    Require,
    /// TLS, with the certificate's chain verified but not its host name.
    VerifyCa,
    /// TLS, with the certificate's chain and host name verified.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [Self::Disable, Self::Prefer, Self::Require, Self::VerifyCa, Self::VerifyFull];
    /// What an error about an unknown `sslmode` lists.
    const ACCEPTED: &'static str = "disable, prefer, require, verify-ca, verify-full";

    /// The value as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self, ConnInfoError> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.as_str() == value)
            .ok_or_else(|| ConnInfoError::UnknownSslMode(value.to_owned()))
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsParams {
    /// `sslmode` (the last one given), `prefer` when absent.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of the certificate authorities to trust.
    pub root_cert: Option<PathBuf>,
}

/// A TLS parameter that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// `sslmode` has a value libpq does not know either.
    #[error("sslmode {0:?} is not one of: {accepted}", accepted = SslMode::ACCEPTED)]
    UnknownSslMode(String),
    /// A percent-encoded value that does not decode to UTF-8.
    #[error("{0} is not valid UTF-8 once percent-decoded")]
    NotUtf8(&'static str),
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` or
/// `postgresql://` URL or a key=value connection string; returns the rest,
/// unchanged otherwise, for tokio-postgres. A string this cannot read is
/// returned whole, for tokio-postgres to refuse with its own message.
pub fn split_tls_params(conninfo: &str) -> Result<(String, TlsParams), ConnInfoError> {
    let mut params = TlsParams::default();
    let rest = match ["postgres://", "postgresql://"].into_iter().find(|p| conninfo.starts_with(p)) {
        Some(prefix) => split_url(conninfo, prefix.len(), &mut params)?,
        None => split_key_values(conninfo, &mut params)?,
    };
    Ok((rest, params))
}

/// The name of a TLS parameter (`sslmode`, `sslrootcert`), or None.
fn tls_key(key: &str) -> Option<&'static str> {
    ["sslmode", "sslrootcert"].into_iter().find(|k| *k == key)
}

fn set(params: &mut TlsParams, key: &'static str, value: &str) -> Result<(), ConnInfoError> {
    match key {
        "sslmode" => params.mode = SslMode::parse(value)?,
        _ => params.root_cert = Some(PathBuf::from(value)),
    }
    Ok(())
}

fn split_url(url: &str, prefix_len: usize, params: &mut TlsParams) -> Result<String, ConnInfoError> {
    // Where tokio-postgres looks: credentials run to the first '@', the
    // parameters start at the first '?' after them.
    let after_credentials = url[prefix_len..].find('@').map_or(prefix_len, |at| prefix_len + at + 1);
    let Some(question) = url[after_credentials..].find('?').map(|q| after_credentials + q) else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in url[question + 1..].split('&') {
        let tls = pair.split_once('=').and_then(|(key, value)| Some((tls_key(&decode(key)?)?, value)));
        match tls {
            Some((key, value)) => set(params, key, &decode(value).ok_or(ConnInfoError::NotUtf8(key))?)?,
            None => kept.push(pair),
        }
    }
    let base = &url[..question];
    Ok(if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) })
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|decoded| decoded.into_owned())
}

/// One `key=value` of a key=value connection string.
struct KeyValue<'a> {
    key: &'a str,
    value: String,
    /// Where it stands in the string, so what is kept is kept verbatim.
    span: std::ops::Range<usize>,
}

fn split_key_values(conninfo: &str, params: &mut TlsParams) -> Result<String, ConnInfoError> {
    let Some(pairs) = key_values(conninfo) else { return Ok(conninfo.to_owned()) };
    let mut kept = Vec::new();
    for pair in pairs {
        match tls_key(pair.key) {
            Some(key) => set(params, key, &pair.value)?,
            None => kept.push(&conninfo[pair.span]),
        }
    }
    Ok(kept.join(" "))
}

/// The pairs of a key=value string, read as tokio-postgres reads them:
/// whitespace-separated `key = value`, a value either bare (to the next
/// whitespace) or in single quotes, a backslash escaping the next
/// character. None when it is malformed.
fn key_values(s: &str) -> Option<Vec<KeyValue<'_>>> {
    let mut pairs = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_whitespace = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_whitespace(&mut chars);
        let Some(&(start, _)) = chars.peek() else { return Some(pairs) };
        while chars.next_if(|&(_, c)| !c.is_whitespace() && c != '=').is_some() {}
        let key_end = chars.peek().map_or(s.len(), |&(i, _)| i);
        let key = &s[start..key_end];
        skip_whitespace(&mut chars);
        if key.is_empty() || chars.next_if(|&(_, c)| c == '=').is_none() {
            return None;
        }
        skip_whitespace(&mut chars);
        let quoted = chars.next_if(|&(_, c)| c == '\'').is_some();
        let mut value = String::new();
        loop {
            match chars.peek() {
                None if quoted => return None,
                None => break,
                Some(&(_, '\'')) if quoted => {
                    chars.next();
                    break;
                }
                Some(&(_, c)) if c.is_whitespace() && !quoted => break,
                Some(&(_, '\\')) => {
                    chars.next();
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                Some(&(_, c)) => {
                    chars.next();
                    value.push(c);
                }
            }
        }
        if value.is_empty() && !quoted {
            return None;
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        pairs.push(KeyValue { key, value, span: start..end });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(conninfo: &str) -> (String, TlsParams) {
        split_tls_params(conninfo).unwrap_or_else(|e| panic!("{conninfo}: {e}"))
    }

    fn params(mode: SslMode, root_cert: Option<&str>) -> TlsParams {
        TlsParams { mode, root_cert: root_cert.map(PathBuf::from) }
    }

    #[test]
    fn without_tls_parameters_the_mode_is_prefer_and_the_string_is_unchanged() {
        for conninfo in
            ["postgres://u@h/db", "postgresql://u:p@h:5433/db?application_name=billing", "host=h user=u dbname=db", ""]
        {
            assert_eq!(split(conninfo), (conninfo.to_owned(), TlsParams::default()), "{conninfo}");
        }
    }

    #[test]
    fn every_mode_is_read_from_a_url_and_from_key_values() {
        for mode in SslMode::ALL {
            assert_eq!(
                split(&format!("postgres://u@h/db?sslmode={mode}")),
                ("postgres://u@h/db".into(), params(mode, None))
            );
            assert_eq!(split(&format!("postgresql://u@h/db?sslmode={mode}")).1, params(mode, None));
            assert_eq!(split(&format!("host=h sslmode={mode} user=u")), ("host=h user=u".into(), params(mode, None)));
        }
    }

    #[test]
    fn an_unknown_mode_is_refused_naming_the_accepted_ones() {
        for conninfo in ["postgres://u@h/db?sslmode=bogus", "host=h sslmode=bogus", "postgres://h/db?sslmode="] {
            let err = split_tls_params(conninfo).unwrap_err();
            assert!(matches!(err, ConnInfoError::UnknownSslMode(_)), "{conninfo}: {err:?}");
        }
        assert_eq!(
            split_tls_params("postgres://u@h/db?sslmode=bogus").unwrap_err().to_string(),
            "sslmode \"bogus\" is not one of: disable, prefer, require, verify-ca, verify-full"
        );
        // The list is the list of modes.
        let all: Vec<_> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(SslMode::ACCEPTED, all.join(", "));
        // Case matters, as in libpq.
        assert!(split_tls_params("postgres://h/db?sslmode=Require").is_err());
    }

    #[test]
    fn the_other_url_parameters_are_kept_verbatim_in_order() {
        let (rest, tls) = split(
            "postgres://u:pw@h/db?application_name=billing&sslmode=verify-full&options=-c%20statement_timeout%3D5s\
             &sslrootcert=%2Fetc%2Fbilling%2Fmy%20ca.pem&target_session_attrs=read-write",
        );
        assert_eq!(
            rest,
            "postgres://u:pw@h/db?application_name=billing&options=-c%20statement_timeout%3D5s\
             &target_session_attrs=read-write"
        );
        assert_eq!(tls, params(SslMode::VerifyFull, Some("/etc/billing/my ca.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_application_name(), Some("billing"));
        assert_eq!(config.get_options(), Some("-c statement_timeout=5s"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
    }

    #[test]
    fn the_last_mode_given_wins_as_in_libpq() {
        assert_eq!(split("postgres://h/db?sslmode=disable&sslmode=verify-ca").1.mode, SslMode::VerifyCa);
        assert_eq!(split("sslmode=require host=h sslmode=disable").1.mode, SslMode::Disable);
    }

    #[test]
    fn host_lists_and_unix_sockets_pass_through() {
        let (rest, tls) = split("postgres://u@h1:5432,h2:5433,[::1]:5434/db?sslmode=require&load_balance_hosts=random");
        assert_eq!(rest, "postgres://u@h1:5432,h2:5433,[::1]:5434/db?load_balance_hosts=random");
        assert_eq!(tls.mode, SslMode::Require);
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_hosts().len(), 3);
        assert_eq!(config.get_ports(), [5432, 5433, 5434]);

        let (rest, _) = split("postgres://u@%2Fvar%2Frun%2Fpostgresql/db?sslmode=verify-full");
        assert_eq!(rest, "postgres://u@%2Fvar%2Frun%2Fpostgresql/db");
        let (rest, _) = split("postgres:///db?host=/var/run/postgresql&sslmode=disable");
        assert_eq!(rest, "postgres:///db?host=/var/run/postgresql");
        assert!(matches!(
            rest.parse::<tokio_postgres::Config>().unwrap().get_hosts(),
            [tokio_postgres::config::Host::Unix(_)]
        ));
    }

    #[test]
    fn a_question_mark_or_at_sign_in_the_password_is_not_the_query() {
        let (rest, tls) = split("postgres://u:p%40ss?word@h/db?sslmode=require");
        assert_eq!(rest, "postgres://u:p%40ss?word@h/db");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(rest.parse::<tokio_postgres::Config>().unwrap().get_password(), Some(&b"p@ss?word"[..]));
    }

    #[test]
    fn a_url_whose_only_parameters_were_tls_loses_its_question_mark() {
        assert_eq!(split("postgres://h/db?sslmode=require&sslrootcert=ca.pem").0, "postgres://h/db");
        // One left empty by a trailing '&' stays as it was.
        assert_eq!(split("postgres://h/db?sslmode=require&").0, "postgres://h/db?");
    }

    #[test]
    fn key_value_strings_keep_quoting_and_escapes() {
        let (rest, tls) =
            split(r"host=localhost port = 5433 sslmode='verify-full' sslrootcert='/tmp/my ca\'s.pem' options='-c a=1'");
        assert_eq!(rest, "host=localhost port = 5433 options='-c a=1'");
        assert_eq!(tls, params(SslMode::VerifyFull, Some("/tmp/my ca's.pem")));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_options(), Some("-c a=1"));
        assert_eq!(config.get_ports(), [5433]);

        assert_eq!(split(r"sslrootcert=/a\ b.pem host=h").1.root_cert, Some(PathBuf::from("/a b.pem")));
    }

    #[test]
    fn a_malformed_key_value_string_is_left_to_tokio_postgres() {
        for conninfo in ["host", "host=", "host='unterminated sslmode=verify-full"] {
            assert_eq!(split(conninfo), (conninfo.to_owned(), TlsParams::default()), "{conninfo}");
            assert!(conninfo.parse::<tokio_postgres::Config>().is_err(), "{conninfo}");
        }
    }

    #[test]
    fn a_value_that_is_not_utf8_is_refused() {
        assert_eq!(
            split_tls_params("postgres://h/db?sslrootcert=%FF").unwrap_err(),
            ConnInfoError::NotUtf8("sslrootcert")
        );
    }
}
