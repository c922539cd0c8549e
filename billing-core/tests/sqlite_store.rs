//! What only the embedded SQLite store has: a file (in WAL mode, owner-only, in a
//! directory that must exist) that keeps every committed transaction when the
//! process writing it is killed. Everything the two stores share is tested
//! once, against both, in `store_conformance.rs`.
#![cfg(feature = "sqlite")]

use billing_core::domain::Topic;
use billing_core::storage::sqlite::SqliteStore;
use billing_core::storage::stripe_sync::{Changeset, DeliveryClaim, NewCustomer, StripeKeys};
use billing_core::storage::{OutboxMessage, Store, StoreError, StoreTx};
use deadpool_sqlite::rusqlite;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A directory of its own for one test's database file, removed afterwards.
struct TempDb {
    dir: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("billing-sqlite-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("billing.db")
    }

    /// A plain connection, for looking behind the store.
    fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path()).expect("open raw connection")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A migrated store on a fresh file. Keep the `TempDb` alive as long as the store.
async fn fresh_store() -> (TempDb, SqliteStore) {
    let db = TempDb::new();
    let store = SqliteStore::open(&db.path()).await.expect("open store");
    store.migrate().await.expect("migrate");
    (db, store)
}

/// A unit of work claiming `id` and naming customer `cus`.
fn claiming(id: &str, cus: &str) -> StripeKeys {
    let mut keys = StripeKeys { customers: [cus.to_owned()].into(), ..StripeKeys::default() };
    keys.claim(DeliveryClaim {
        id: id.to_owned(),
        kind: "customer.subscription.updated".to_owned(),
        created: 1_764_000_000,
        api_version: Some("2025-03-31".to_owned()),
        object_id: Some("sub_1".to_owned()),
        payload: b"{}".to_vec().into(),
    });
    keys
}

fn message(license_id: Option<Uuid>, n: i64) -> OutboxMessage {
    OutboxMessage { license_id, topic: Topic::LicenseUpdated, payload: json!({ "n": n }) }
}

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_store_switches_the_file_to_wal() {
    let (db, store) = fresh_store().await;
    store.ping().await.expect("ping");
    let reopened = SqliteStore::open(&db.path()).await.unwrap();
    reopened.migrate().await.expect("migrate after reopening");
    let journal: String = db.raw().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(journal, "wal", "the store switches the file to WAL");
}

#[tokio::test]
async fn opening_a_file_in_a_missing_directory_is_unavailable() {
    let db = TempDb::new();
    let err = SqliteStore::open(&db.dir.join("missing").join("billing.db")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

// ---------------------------------------------------------------------------
// Durability: a committed transaction survives SIGKILL
// ---------------------------------------------------------------------------

const CHILD_DB_ENV: &str = "BILLING_SQLITE_CRASH_CHILD_DB";
const CHILD_READY: &str = "crash-child: committed one, holding one open";

/// Not a test by itself: the body of the process that
/// `committed_rows_survive_sigkill` starts and kills. Without the variable
/// it does nothing.
#[tokio::test]
async fn crash_child() {
    let Ok(path) = std::env::var(CHILD_DB_ENV) else { return };
    let store = SqliteStore::open(Path::new(&path)).await.unwrap();
    store.migrate().await.unwrap();
    let committed = Changeset {
        new_customers: vec![NewCustomer {
            id: Uuid::new_v4(),
            stripe_customer_id: "cus_committed".into(),
            user_id: Some("user_crash".into()),
        }],
        outbox: vec![message(None, 1)],
        ..Changeset::default()
    };
    store.sync_stripe(claiming("evt_committed", "cus_committed"), move |_| (committed, ())).await.unwrap();

    // Killed between its load (the claim is written) and its apply: the
    // decision waits, holding the open transaction. Should the parent die
    // first, its end of stdin closes and the child leaves without committing.
    let open = store.sync_stripe(claiming("evt_uncommitted", "cus_uncommitted"), |bundle| -> (Changeset, ()) {
        assert!(bundle.claimed.contains("evt_uncommitted"));
        // On a line of its own: libtest has already written "test crash_child ... ".
        println!("\n{CHILD_READY}");
        use std::io::Write;
        std::io::stdout().flush().unwrap();
        let _ = std::io::stdin().read_line(&mut String::new());
        std::process::exit(1)
    });
    let _ = open.await;
    std::process::exit(1);
}

/// Runs one test of this binary (`command` runs it, its name appended) as a
/// child process with the database path in `db_env`, and waits for it to
/// print `ready`. `None`: it did not within a minute (a bound, not a
/// synchronisation); `Some(false)`: it ended without saying it.
async fn start_child(
    mut command: Command,
    test: &str,
    db_env: (&str, &Path),
    ready: &'static str,
) -> (std::process::Child, Option<bool>) {
    let mut child = command
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(db_env.0, db_env.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().unwrap();
    let said_ready =
        tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l == ready));
    let said_ready = tokio::time::timeout(Duration::from_secs(60), said_ready).await.ok().map(|r| r.unwrap());
    (child, said_ready)
}

#[tokio::test]
async fn committed_rows_survive_sigkill() {
    let db = TempDb::new();
    SqliteStore::open(&db.path()).await.unwrap().migrate().await.unwrap();

    let (mut child, ready) = start_child(
        Command::new(std::env::current_exe().unwrap()),
        "crash_child",
        (CHILD_DB_ENV, &db.path()),
        CHILD_READY,
    )
    .await;
    child.kill().expect("SIGKILL the child");
    let ready = ready.expect("the child did not report within 60 s");
    let status = child.wait().unwrap();
    assert!(ready, "the child exited before committing: {status}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL, not exited");
    }

    let store = SqliteStore::open(&db.path()).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.webhook_event_status("evt_committed").await.unwrap(), Some(("processed".to_owned(), 1, None)));
    assert_eq!(store.webhook_event_status("evt_uncommitted").await.unwrap(), None);
    assert_eq!(store.stripe_customers_of_user("user_crash").await.unwrap(), ["cus_committed"]);
    let outbox = store.outbox_after(0, None, 10).await.unwrap();
    assert_eq!(outbox.iter().map(|e| e.payload["n"].as_i64().unwrap()).collect::<Vec<_>>(), [1]);
    // The dead process's write lock is gone with it.
    let claimed =
        store.sync_stripe(claiming("evt_uncommitted", "cus_uncommitted"), |b| (Changeset::default(), b.claimed));
    assert!(claimed.await.unwrap().contains("evt_uncommitted"), "the uncommitted claim died with its process");
}

// ---------------------------------------------------------------------------
// Permissions: the files hold every license key
// ---------------------------------------------------------------------------

const UMASK_CHILD_DB_ENV: &str = "BILLING_SQLITE_UMASK_CHILD_DB";
const UMASK_CHILD_READY: &str = "umask-child: committed, holding the store open";

/// Not a test by itself: the body of the process that
/// `the_store_creates_its_directory_and_files_owner_only_whatever_the_umask`
/// starts under `umask 000`. Without the variable it does nothing.
#[tokio::test]
async fn umask_child() {
    use billing_core::storage::any::{AnyStore, StoreLocation};
    let Ok(path) = std::env::var(UMASK_CHILD_DB_ENV) else { return };
    let store = AnyStore::open(&StoreLocation::Sqlite(PathBuf::from(path)), 1).await.unwrap();
    store.migrate().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&message(None, 1)).await.unwrap();
    tx.commit().await.unwrap();
    println!("\n{UMASK_CHILD_READY}");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // Holds the store (and so its -wal and -shm files) until the parent has
    // looked, then leaves without writing to the pipe the parent stopped reading.
    let _ = std::io::stdin().read_line(&mut String::new());
    std::process::exit(0);
}

#[cfg(unix)]
#[tokio::test]
async fn the_store_creates_its_directory_and_files_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let db = TempDb::new();
    let path = db.dir.join("data").join("billing.db");
    let mut under_umask = Command::new("sh");
    under_umask.args(["-c", "umask 000 && exec \"$0\" \"$@\""]).arg(std::env::current_exe().unwrap());
    let (mut child, ready) =
        start_child(under_umask, "umask_child", (UMASK_CHILD_DB_ENV, &path), UMASK_CHILD_READY).await;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", path.display()));
    let modes = [
        ("directory", mode(&db.dir.join("data"))),
        ("database", mode(&path)),
        ("write-ahead log", mode(&side("-wal"))),
        ("shared memory", mode(&side("-shm"))),
    ];
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(ready.expect("the child did not report within 60 s"), "the child failed: {status}");
    assert!(status.success(), "{status}");
    let octal = |(what, mode): (&'static str, std::io::Result<u32>)| (what, mode.map(|m| format!("{m:o}")).ok());
    let expected = [("directory", "700"), ("database", "600"), ("write-ahead log", "600"), ("shared memory", "600")];
    assert_eq!(modes.map(octal), expected.map(|(what, mode)| (what, Some(mode.to_owned()))));
}
