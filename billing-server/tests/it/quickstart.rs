//! The README's quick start, step by step, as a newcomer runs it: the
//! server on the embedded default with nothing configured, an admin token
//! from the CLI, a license issued through the admin API, the example
//! desktop app activating and validating it, and the app hearing the revoke.

use crate::helpers::*;
use crate::ops::ServerProcess;
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// `cargo run -p desktop-app` without the run: builds the example (a no-op
/// when the workspace is built) and returns its binary.
fn desktop_app_binary() -> std::path::PathBuf {
    let built = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "desktop-app"])
        .current_dir(workspace_root())
        .status()
        .unwrap();
    assert!(built.success(), "the desktop-app example builds");
    let server = std::path::Path::new(env!("CARGO_BIN_EXE_billing-server"));
    server.with_file_name(format!("desktop-app{}", std::env::consts::EXE_SUFFIX))
}

/// `curl -X POST …/api/license/validate -d '{"license_key":…}'`.
async fn validate(http: &reqwest::Client, server: &ServerProcess, key: &str) -> Value {
    let response = http.post(server.url("/api/license/validate")).json(&json!({ "license_key": key })).send().await;
    response.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn the_quick_start_issues_activates_validates_and_revokes_without_stripe() {
    if backend() == Backend::Postgres {
        println!("skipped on postgres: the quick start is the embedded default, run once");
        return;
    }
    let dir = std::env::temp_dir().join(format!("billing-quickstart-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();

    // 1. `cargo run -p billing-server`: nothing configured.
    let server = ServerProcess::start_in(&dir, &[]).await;
    let printed = server.printed();
    assert!(printed.contains("embedded sqlite"), "{printed}");

    // 2. `billing-server admin-token create --name quickstart`, in the same
    //    directory: the token is the last line.
    let created = Command::new(env!("CARGO_BIN_EXE_billing-server"))
        .args(["admin-token", "create", "--name", "quickstart"])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let stdout = String::from_utf8(created.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_owned();

    // 3. Issue a license: no Stripe account, no plans file.
    let http = reqwest::Client::new();
    let response = http
        .post(server.url("/api/admin/licenses"))
        .bearer_auth(&token)
        .json(&json!({ "user_id": "alice@example.com", "plan": "pro", "max_devices": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let license: Value = response.json().await.unwrap();
    let (license_id, key) = (license["license"]["id"].as_str().unwrap(), license["license"]["key"].as_str().unwrap());
    assert_eq!(license["license"]["source"], "manual");

    // 4. The desktop app activates, validates and listens.
    let mut app = Command::new(desktop_app_binary())
        .args(["--server", &server.url(""), "--key", key, "--run-for", "60"])
        .arg("--store")
        .arg(dir.join("desktop-app"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = app.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = async |needle: &str| {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.recv().await {
                seen.push(line.clone());
                if line.contains(needle) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "the app never printed {needle:?}; it printed {seen:?}");
    };
    wait_for("activated device").await;
    wait_for("license valid (VALID)").await;
    wait_for("listening for license changes").await;

    let validated = validate(&http, &server, key).await;
    assert_eq!(validated["code"], "VALID", "{validated}");

    // 5. Revoke it, and watch the app hear it.
    let response = http
        .post(server.url(&format!("/api/admin/licenses/{license_id}/revoke")))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    wait_for("license.updated").await;
    wait_for("the license is no longer valid").await;

    let validated = validate(&http, &server, key).await;
    assert_eq!(validated["code"], "REVOKED", "{validated}");

    let _ = app.kill();
    let _ = app.wait();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
