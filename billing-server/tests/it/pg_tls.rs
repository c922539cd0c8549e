//! Start-up against a PostgreSQL that takes TLS connections only (the
//! cluster of `scripts/pg-tls-cluster`): what `billing-server migrate` and
//! `serve` print when `sslmode`'s checks fail, and that it never includes
//! the password. The connections themselves are billing-core's
//! (`billing-core/tests/pg_tls.rs`).

use std::path::PathBuf;
use std::process::Output;

const PASSWORD: &str = "hunter2-not-for-logs";

/// The TLS cluster's port and certificate directory; a failure saying how
/// to start it when it is not there.
fn tls_cluster() -> (u16, PathBuf) {
    let port = std::env::var("TEST_PG_TLS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5433);
    let dir =
        std::env::var_os("TEST_PG_TLS_DIR").map_or_else(|| PathBuf::from("/var/tmp/billing-pg-tls"), PathBuf::from);
    let ca = dir.join("ca.crt");
    let problem = match std::net::TcpStream::connect(("127.0.0.1", port)) {
        Err(e) => Some(e.to_string()),
        Ok(_) if !ca.exists() => Some(format!("no {}", ca.display())),
        Ok(_) => None,
    };
    if let Some(why) = problem {
        panic!(
            "the TLS-only PostgreSQL of the TLS tests is not reachable at 127.0.0.1:{port} ({why}); \
             start it with scripts/pg-tls-cluster (as root)"
        );
    }
    (port, dir)
}

/// Runs `billing-server <command>` with only `DATABASE_URL` (and a data
/// directory of its own) configured.
fn run(command: &str, database_url: &str) -> Output {
    let data_dir = std::env::temp_dir().join(format!("billing-pg-tls-{command}-{}", uuid::Uuid::new_v4()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_billing-server"))
        .arg(command)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("BILLING_DATA_DIR", &data_dir)
        .env("BILLING_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(data_dir);
    assert!(!output.status.success(), "{command} started: {output:?}");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!printed.contains(PASSWORD), "the password is never printed: {printed}");
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn migrate_names_the_host_name_the_certificate_does_not_match() {
    let (port, dir) = tls_cluster();
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/billing?sslmode=verify-full&sslrootcert={}",
        dir.join("ca.crt").display()
    );
    assert_eq!(
        stderr(&run("migrate", &url)),
        "Error: database unavailable: PostgreSQL's certificate does not match the host name 127.0.0.1 \
         (sslmode=verify-full); it is for localhost\n"
    );
}

#[test]
fn migrate_passes_on_the_servers_refusal_of_plain_text() {
    let (port, _) = tls_cluster();
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/billing?sslmode=disable");
    assert_eq!(
        stderr(&run("migrate", &url)),
        format!(
            "Error: database unavailable: PostgreSQL at 127.0.0.1:{port} refused the connection (sslmode=disable): \
             pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"billing\", \
             no encryption; it takes TLS connections only: use sslmode=require, verify-ca or verify-full\n"
        )
    );
}

#[test]
fn serve_names_an_untrusted_certificate_and_exits() {
    let (port, dir) = tls_cluster();
    let untrusted = dir.join("untrusted-ca.crt");
    let url = format!(
        "postgres://postgres:{PASSWORD}@localhost:{port}/billing?sslmode=verify-full&sslrootcert={}",
        untrusted.display()
    );
    assert_eq!(
        stderr(&run("serve", &url)),
        format!(
            "Error: failed to start\n\nCaused by:\n    database unavailable: PostgreSQL's certificate is not trusted \
             (sslmode=verify-full, sslrootcert={}): unknown issuer\n",
            untrusted.display()
        )
    );
}

#[test]
fn serve_refuses_an_unknown_sslmode_before_connecting() {
    let output = run("serve", &format!("postgres://postgres:{PASSWORD}@localhost:1/billing?sslmode=verify"));
    assert_eq!(
        stderr(&output),
        "Error: failed to start\n\nCaused by:\n    0: cannot open the store\n    1: database unavailable: sslmode \
         \"verify\" is not one of: disable, prefer, require, verify-ca, verify-full\n"
    );
}

/// `PGSSLROOTCERT` (from the environment, or `pgsslrootcert` in the
/// configuration file, relative to it) is the CA `verify-full` trusts when
/// the URL names none: `migrate` connects to the TLS-only cluster.
#[test]
fn migrate_trusts_the_ca_pgsslrootcert_names_from_the_environment_or_the_file() {
    let (port, dir) = tls_cluster();
    let ca = dir.join("ca.crt");
    let database = format!("pgsslrootcert_{}", uuid::Uuid::new_v4().simple());
    let created = std::process::Command::new("psql")
        .arg(format!(
            "host=localhost port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .args(["-v", "ON_ERROR_STOP=1", "-qAtc", &format!("CREATE DATABASE {database}")])
        .output()
        .expect("psql runs");
    assert!(created.status.success(), "{created:?}");
    let url = format!("postgres://postgres@localhost:{port}/{database}?sslmode=verify-full");
    let work = std::env::temp_dir().join(format!("billing-pgsslrootcert-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(work.join("certs")).unwrap();
    std::fs::copy(&ca, work.join("certs/ca.crt")).unwrap();
    std::fs::write(work.join("billing.toml"), format!("database_url = \"{url}\"\npgsslrootcert = \"certs/ca.crt\"\n"))
        .unwrap();
    let migrate = |configure: &dyn Fn(&mut std::process::Command)| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_billing-server"));
        command
            .arg("migrate")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BILLING_DATA_DIR", work.join("data"));
        configure(&mut command);
        command.output().unwrap()
    };
    let from_env = migrate(&|c| {
        c.env("DATABASE_URL", &url).env("PGSSLROOTCERT", &ca);
    });
    assert!(from_env.status.success(), "{}", String::from_utf8_lossy(&from_env.stderr));
    let without = migrate(&|c| {
        c.env("DATABASE_URL", &url);
    });
    assert!(stderr(&without).contains("is not trusted"), "the system's roots do not know the test CA: {without:?}");
    let from_file = migrate(&|c| {
        c.arg("--config").arg(work.join("billing.toml")).current_dir(std::env::temp_dir());
    });
    assert!(from_file.status.success(), "{}", String::from_utf8_lossy(&from_file.stderr));
    std::fs::remove_dir_all(work).unwrap();
}
