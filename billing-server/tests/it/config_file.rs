//! The configuration file (`--config`, `BILLING_CONFIG`), through the real
//! binary: the file alone, the environment alone, both (the environment
//! wins key by key), secrets from `*_FILE`, relative paths, and the start-up
//! errors (unknown key, wrong type, missing file).

use crate::helpers::*;
use crate::ops::ServerProcess;
use billing_core::stripe::WebhookSecrets;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PLANS: &str =
    "[[plans]]\nid = \"pro\"\nname = \"Pro\"\nstripe_price_id = \"price_pro_monthly\"\nmax_devices = 2\n";

/// A fresh directory for one test.
fn workspace(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("billing-config-{label}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `path` (creating its directory) with `mode`.
fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The server, run in `dir` with nothing in its environment but `PATH`.
fn bare_server(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing-server"));
    command.current_dir(dir).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

/// Runs `command`, which must fail at start-up: its exit status and stderr.
async fn refused(mut command: Command) -> (std::process::ExitStatus, String) {
    let mut child = command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("the server did not stop at start-up");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    })
    .await
    .unwrap()
}

/// The JSON log entry with this message, if the server logged one.
fn logged(server: &ServerProcess, message: &str) -> Option<Value> {
    server
        .printed()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["fields"]["message"] == message)
}

/// The dashboard's plans, asked with a JWT signed by `jwt_secret`.
async fn plans_as(server: &ServerProcess, jwt_secret: &str) -> reqwest::Response {
    let jwt = token(&json!({ "sub": "u", "exp": now() + 600 }), jwt_secret);
    reqwest::Client::new().get(server.url("/api/subscriptions/plans")).bearer_auth(jwt).send().await.unwrap()
}

async fn plan_ids_as(server: &ServerProcess, jwt_secret: &str) -> Vec<String> {
    let response = plans_as(server, jwt_secret).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["plans"].as_array().unwrap().iter().map(|plan| plan["id"].as_str().unwrap().to_owned()).collect()
}

/// The status of an (ignored) Stripe event signed with `secret`.
async fn webhook_signed_with(server: &ServerProcess, secret: &str) -> u16 {
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::to_vec(&event(&id, "charge.succeeded", now(), json!({ "id": "ch_1", "object": "charge" })))
        .unwrap();
    let signature = WebhookSecrets::parse(secret).unwrap().sign(&body, now());
    let response = reqwest::Client::new()
        .post(server.url("/api/stripe/webhooks/handler"))
        .header("Stripe-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

async fn stop(server: ServerProcess) {
    server.signal("-TERM");
    assert!(server.wait(Duration::from_secs(15)).await.success());
}

#[tokio::test]
async fn a_server_configured_by_its_file_alone_serves_the_files_settings() {
    let store = TestStore::create().await;
    let root = workspace("file-only");
    let file = root.join("conf/billing.toml");
    write(&root.join("conf/plans.toml"), PLANS, 0o600);
    let toml = format!(
        r#"
        addr = "127.0.0.1:0"
        database_url = "{url}"
        data_dir = "data"
        plans = "plans.toml"
        jwt_secret = "{JWT_SECRET}"
        stripe_webhook_secret = ["whsec_next_0123456789", "{WEBHOOK_SECRET}"]
        log_format = "json"
        rust_log = "info"
        grace_days = 3
        trusted_proxies = ["10.0.0.0/8"]
        webhook_allow_private = true
        "#,
        url = store.url()
    );
    write(&file, &toml, 0o600);
    std::fs::create_dir_all(root.join("elsewhere")).unwrap();
    let mut command = bare_server(&root.join("elsewhere"));
    command.args(["serve", "--config", "../conf/billing.toml"]);
    let server = ServerProcess::spawn(command).await;

    assert!(!server.url("/").contains(":8080/"), "listens on the file's addr (port 0), not the default");
    let listening = logged(&server, "billing-server listening").expect("JSON logs, as the file says");
    assert_eq!(listening["fields"]["plans"], 1, "{listening}");
    assert_eq!((&listening["fields"]["webhooks"], &listening["fields"]["dashboard"]), (&json!(true), &json!(true)));
    assert!(logged(&server, "configuration file read").is_some(), "{}", server.printed());
    assert!(!server.printed().contains("readable by group or others"), "the file is 0600");
    assert_eq!(plan_ids_as(&server, JWT_SECRET).await, ["pro"]);
    assert_eq!(webhook_signed_with(&server, WEBHOOK_SECRET).await, 200, "the array's second secret verifies");
    assert!(root.join("conf/data/license-signing-key.pem").exists(), "data_dir is the file's directory's `data`");
    assert!(!root.join("elsewhere/data").exists());
    stop(server).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn the_environment_alone_configures_the_server_as_before() {
    let store = TestStore::create().await;
    let dir = workspace("env-only");
    write(&dir.join("plans.toml"), PLANS, 0o600);
    let env = [
        ("DATABASE_URL", store.url()),
        ("BILLING_DATA_DIR", dir.join("data").display().to_string()),
        ("BILLING_PLANS", "plans.toml".to_owned()),
        ("BILLING_JWT_SECRET", JWT_SECRET.to_owned()),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
    ];
    let server = ServerProcess::start_in(&dir, &env).await;
    assert!(logged(&server, "configuration file read").is_none(), "no file is read unless one is named");
    assert_eq!(plan_ids_as(&server, JWT_SECRET).await, ["pro"]);
    assert_eq!(webhook_signed_with(&server, WEBHOOK_SECRET).await, 200);
    stop(server).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_environment_overrides_the_file_key_by_key() {
    let store = TestStore::create().await;
    let dir = workspace("both");
    write(&dir.join("plans.toml"), PLANS, 0o600);
    let file = dir.join("billing.toml");
    let toml = format!(
        r#"
        addr = "not an address"
        database_url = "{url}"
        data_dir = "data"
        plans = "plans.toml"
        log_format = "text"
        rust_log = "off"
        stripe_webhook_secret = "whsec_from_the_file_0123"
        jwt_secret = "jwt-secret-from-the-file"
        "#,
        url = store.url()
    );
    // Readable by all while holding secrets: a warning, not a refusal.
    write(&file, &toml, 0o644);
    let mut command = bare_server(&dir);
    command
        .env("BILLING_CONFIG", &file)
        .env("BILLING_ADDR", "127.0.0.1:0")
        .env("BILLING_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("BILLING_JWT_SECRET", "");
    let server = ServerProcess::spawn(command).await;

    assert!(logged(&server, "billing-server listening").is_some(), "JSON logs at info, as the environment says");
    assert_eq!(webhook_signed_with(&server, WEBHOOK_SECRET).await, 200, "the environment's secret");
    assert_eq!(webhook_signed_with(&server, "whsec_from_the_file_0123").await, 400, "not the file's");
    // Where the environment is silent (or empty), the file speaks.
    assert_eq!(plan_ids_as(&server, "jwt-secret-from-the-file").await, ["pro"]);
    let printed = server.printed();
    assert!(printed.contains("readable by group or others") && printed.contains("0644"), "{printed}");
    stop(server).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_files_rust_log_is_the_filter_and_the_flag_wins_over_billing_config() {
    let store = TestStore::create().await;
    let dir = workspace("rust-log");
    let file = dir.join("billing.toml");
    let toml = format!(
        "addr = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\ndata_dir = \"data\"\nlog_format = \"json\"\nrust_log = \"off\"\n",
        store.url()
    );
    write(&file, &toml, 0o600);
    let mut command = bare_server(&dir);
    command.env("BILLING_CONFIG", dir.join("missing.toml")).arg("--config").arg(&file).arg("serve");
    let server = ServerProcess::spawn(command).await;
    let printed = server.printed();
    assert!(!printed.lines().any(|line| line.starts_with('{')), "no log line under the file's `off`: {printed}");
    assert!(printed.contains("billing-server listening on http://"), "{printed}");
    stop(server).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn secrets_come_from_files_named_in_the_file_or_in_the_environment() {
    let store = TestStore::create().await;
    let dir = workspace("secret-files");
    let conf = dir.join("conf");
    write(&conf.join("secrets/database-url"), &format!("{}\n", store.url()), 0o600);
    write(&conf.join("secrets/jwt"), "jwt-secret-from-a-file\n", 0o600);
    write(&dir.join("webhook-secret"), &format!("{WEBHOOK_SECRET}\n"), 0o600);
    let toml = "addr = \"127.0.0.1:0\"\ndata_dir = \"data\"\nlog_format = \"json\"\n\
                database_url_file = \"secrets/database-url\"\njwt_secret_file = \"secrets/jwt\"\n\
                stripe_webhook_secret = \"whsec_overridden_by_the_environment\"\n";
    write(&conf.join("billing.toml"), toml, 0o600);
    let mut command = bare_server(&dir);
    command
        .args(["--config", "conf/billing.toml"])
        .env("STRIPE_WEBHOOK_SECRET_FILE", dir.join("webhook-secret"))
        .env("RUST_LOG", "info");
    let server = ServerProcess::spawn(command).await;
    let expected_store = match backend() {
        Backend::Postgres => "store: postgresql".to_owned(),
        Backend::Sqlite => format!("store: embedded sqlite at {}", store.url().trim_start_matches("sqlite://")),
    };
    let printed = server.printed();
    assert!(printed.contains(&expected_store), "the database of database_url_file: {printed}");
    assert_eq!(plans_as(&server, "jwt-secret-from-a-file").await.status(), 200, "jwt_secret_file, in the file");
    assert_eq!(webhook_signed_with(&server, WEBHOOK_SECRET).await, 200, "STRIPE_WEBHOOK_SECRET_FILE, in the env");
    assert_eq!(webhook_signed_with(&server, "whsec_overridden_by_the_environment").await, 400, "not the file's");
    stop(server).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn relative_paths_in_the_file_are_resolved_against_its_directory() {
    let store = TestStore::create().await;
    let dir = workspace("relative");
    let conf = dir.join("conf");
    write(&conf.join("plans.toml"), PLANS, 0o600);
    write(&conf.join("secrets/jwt"), JWT_SECRET, 0o600);
    let keygen = bare_server(&conf).args(["keygen", "--out", "signing-key.pem"]).output().unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let printed_jwk: Value =
        serde_json::from_str(String::from_utf8(keygen.stdout).unwrap().lines().last().unwrap()).unwrap();
    let toml = format!(
        "addr = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\nplans = \"plans.toml\"\njwt_secret_file = \"secrets/jwt\"\n\
         license_signing_key = \"signing-key.pem\"\ndata_dir = \"data\"\n",
        store.url()
    );
    write(&conf.join("billing.toml"), &toml, 0o600);
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let mut command = bare_server(&dir.join("run"));
    command.args(["--config", "../conf/billing.toml"]);
    let server = ServerProcess::spawn(command).await;
    assert_eq!(plan_ids_as(&server, JWT_SECRET).await, ["pro"]);
    let served: Value = reqwest::get(server.url("/api/license/public-key")).await.unwrap().json().await.unwrap();
    assert_eq!(served["jwk"], printed_jwk, "the key at the file's license_signing_key");
    assert_eq!(std::fs::read_dir(dir.join("run")).unwrap().count(), 0, "nothing lands in the working directory");
    stop(server).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Errors at start-up touch no store: one backend's run covers them.
fn store_independent() -> bool {
    if backend() == Backend::Postgres {
        eprintln!("skipped on postgres: the configuration is refused before any store is opened; sqlite covers it");
        return false;
    }
    true
}

#[tokio::test]
async fn an_unknown_key_stops_the_server_naming_it_and_the_file() {
    if !store_independent() {
        return;
    }
    let dir = workspace("unknown-key");
    let file = dir.join("billing.toml");
    write(&file, "addr = \"127.0.0.1:0\"\ngrace_dayz = 3\n", 0o600);
    let mut command = bare_server(&dir);
    command.args(["migrate", "--config"]).arg(&file);
    let (status, stderr) = refused(command).await;
    assert!(!status.success());
    assert!(stderr.contains("unknown key `grace_dayz`") && stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("did you mean `grace_days`?"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_value_of_the_wrong_type_stops_the_server_naming_the_key_and_the_file() {
    if !store_independent() {
        return;
    }
    let dir = workspace("wrong-type");
    let file = dir.join("billing.toml");
    write(&file, "addr = \"127.0.0.1:0\"\ngrace_days = \"seven\"\n", 0o600);
    let mut command = bare_server(&dir);
    command.env("BILLING_CONFIG", &file);
    let (status, stderr) = refused(command).await;
    assert!(!status.success());
    assert!(stderr.contains("`grace_days`") && stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("must be an integer, not a string"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_missing_config_file_stops_the_server_naming_it() {
    if !store_independent() {
        return;
    }
    let dir = workspace("missing");
    let missing = dir.join("nowhere/billing.toml");
    let mut flag = bare_server(&dir);
    flag.arg("--config").arg(&missing);
    let mut variable = bare_server(&dir);
    variable.env("BILLING_CONFIG", &missing);
    for command in [flag, variable] {
        let (status, stderr) = refused(command).await;
        assert!(!status.success());
        assert!(stderr.contains(&format!("cannot read configuration file {}", missing.display())), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
