//! The embedded SQLite store: one database file, the same semantics as
//! [`super::postgres::PgStore`].
//!
//! SQLite lets one connection write at a time, so this store has exactly one
//! writer connection, behind an async mutex. A unit of work
//! ([`Store::sync_stripe`], [`Store::license_work`]) holds that mutex from
//! its load to its commit, runs in one blocking call, and opens its
//! transaction with `BEGIN IMMEDIATE`, taking SQLite's write lock at once (which also
//! keeps other processes out of the file, within `busy_timeout`). Write
//! transactions are therefore serialised, and every lock the PostgreSQL
//! store takes holds trivially: the per-subscription advisory lock, `FOR
//! UPDATE`, `FOR UPDATE SKIP LOCKED` (nothing is ever held by another
//! transaction) and the outbox lock (ids are committed in id order). Reads
//! outside transactions go through a small pool of reader connections,
//! which WAL lets run alongside the writer on the last committed state.
//!
//! rusqlite is synchronous: every statement runs on tokio's blocking pool
//! (`spawn_blocking` for the writer, deadpool's `interact` for readers),
//! never on an async worker.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a transaction whose
//! `commit` returned is in the fsynced log and survives the process being
//! killed or the machine losing power.
//!
//! Encodings (see `migrations/sqlite`): uuids as lower-case hyphenated TEXT,
//! timestamps as INTEGER Unix microseconds, truncated the way PostgreSQL's
//! `timestamptz` truncates, JSON as TEXT. Where PostgreSQL writes `now()` (the
//! transaction's start), the store binds the time its transaction began.
//!
//! Outbox signals ([`Store::watch_outbox`]) are delivered within this process
//! only, to watchers of this store and its clones.

use super::*;
use crate::domain::{LicenseKey, LicenseOverrides, LicenseStatus, SubscriptionSnapshot, SubscriptionStatus};
use deadpool_sqlite::rusqlite::types::FromSql;
use deadpool_sqlite::rusqlite::{self, params, Connection, ErrorCode, OpenFlags, Params, Row};
use deadpool_sqlite::{Hook, HookError, Pool, Runtime};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};

mod embedded {
    refinery::embed_migrations!("../migrations/sqlite");
}

// Admin reads (issue 14).
mod admin_reads;
// Stripe backfill runs (issue 16).
mod backfill_runs;
// The customer portal's one-time codes (issue 19).
mod license_work;
mod portal_sessions;
// The vendor console's overview (issue 19).
mod overview;
mod stripe_sync;

use super::migration_check::{applied_stamp, embedded_stamps, MigrationCheck};

/// How long a statement waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections; reads are short and the machine is small.
const READERS: usize = 4;
/// Distinct statements are few; keep them all prepared.
const STATEMENT_CACHE: usize = 64;
/// PostgreSQL's epoch (2000-01-01T00:00:00Z) in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// SQLite-backed [`Store`] on one database file.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// The one connection that writes; held by a transaction for its whole life.
    writer: Arc<Mutex<Connection>>,
    readers: Pool,
    /// Receivers handed out by `watch_outbox`.
    watchers: std::sync::Mutex<Vec<mpsc::Sender<()>>>,
}

impl Shared {
    /// Wakes every watcher; a full channel already holds a wake-up.
    fn signal_outbox(&self) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        watchers.retain(|tx| !matches!(tx.try_send(()), Err(mpsc::error::TrySendError::Closed(()))));
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .field("readers", &self.shared.readers.status())
            .finish()
    }
}

/// Classifies a SQLite error: lock contention and unopenable files mean the
/// database is unavailable; anything else is a failed query.
fn query_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
            StoreError::Unavailable(Box::new(e))
        }
        _ => StoreError::Query(Box::new(e)),
    }
}

fn pool_error(e: deadpool_sqlite::PoolError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// A blocking task that panicked or was cancelled with the runtime.
fn worker_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn interact_error(e: deadpool_sqlite::InteractError) -> StoreError {
    StoreError::Unavailable(format!("sqlite reader task failed: {e}").into())
}

/// PostgreSQL refuses a negative LIMIT (SQLite would read it as "no limit").
fn checked_limit(limit: i64) -> Result<i64, StoreError> {
    if limit < 0 {
        return Err(StoreError::Query("LIMIT must not be negative".into()));
    }
    Ok(limit)
}

/// A timestamp as stored: Unix microseconds. Sub-microsecond digits are
/// truncated toward 2000-01-01, as PostgreSQL's binary protocol does, so
/// both stores keep the same instant.
fn micros(t: Timestamp) -> Result<i64, StoreError> {
    let since_pg_epoch = (t - time::macros::datetime!(2000-01-01 0:00 UTC)).whole_microseconds();
    i64::try_from(since_pg_epoch)
        .ok()
        .and_then(|m| m.checked_add(PG_EPOCH_MICROS))
        .ok_or_else(|| StoreError::Query("timestamp out of range".into()))
}

fn opt_micros(t: Option<Timestamp>) -> Result<Option<i64>, StoreError> {
    t.map(micros).transpose()
}

fn now_micros() -> Result<i64, StoreError> {
    micros(Timestamp::now_utc())
}

fn max_devices_param(terms: &LicenseTerms) -> i32 {
    i32::try_from(terms.max_devices).unwrap_or(i32::MAX)
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

/// Reads a column. Conversion failures name the column, never its value.
fn get<T: FromSql>(row: &Row<'_>, idx: usize) -> Result<T, StoreError> {
    row.get(idx).map_err(|e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::FromSqlConversionFailure(..) => {
            StoreError::Corrupt(format!("column {idx} holds a value of an unexpected type"))
        }
        e => query_error(e),
    })
}

fn uuid(row: &Row<'_>, idx: usize) -> Result<Uuid, StoreError> {
    let text: String = get(row, idx)?;
    Uuid::parse_str(&text).map_err(|_| StoreError::Corrupt(format!("column {idx} holds a malformed uuid")))
}

fn opt_uuid(row: &Row<'_>, idx: usize) -> Result<Option<Uuid>, StoreError> {
    let text: Option<String> = get(row, idx)?;
    text.map(|t| Uuid::parse_str(&t).map_err(|_| StoreError::Corrupt(format!("column {idx} holds a malformed uuid"))))
        .transpose()
}

fn time_from_micros(m: i64, idx: usize) -> Result<Timestamp, StoreError> {
    Timestamp::from_unix_timestamp_nanos(i128::from(m) * 1000)
        .map_err(|_| StoreError::Corrupt(format!("column {idx} holds a timestamp out of range")))
}

fn time(row: &Row<'_>, idx: usize) -> Result<Timestamp, StoreError> {
    time_from_micros(get(row, idx)?, idx)
}

fn opt_time(row: &Row<'_>, idx: usize) -> Result<Option<Timestamp>, StoreError> {
    get::<Option<i64>>(row, idx)?.map(|m| time_from_micros(m, idx)).transpose()
}

fn json(row: &Row<'_>, idx: usize) -> Result<Value, StoreError> {
    let text: String = get(row, idx)?;
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupt(format!("column {idx} holds malformed JSON")))
}

fn query<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(query_error)?;
    let mut rows = statement.query(params).map_err(query_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(query_error)? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// At most one row, like tokio-postgres' `query_opt` (more is an error).
/// The statement always runs to completion, so `… RETURNING` writes are done.
fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(query_error)?;
    let mut rows = statement.query(params).map_err(query_error)?;
    let Some(row) = rows.next().map_err(query_error)? else { return Ok(None) };
    let value = map(row)?;
    if rows.next().map_err(query_error)?.is_some() {
        return Err(StoreError::Query("query returned more than one row".into()));
    }
    Ok(Some(value))
}

fn execute(conn: &Connection, sql: &str, params: impl Params) -> Result<u64, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(query_error)?;
    let changed = statement.execute(params).map_err(query_error)?;
    Ok(changed as u64)
}

const SUBSCRIPTION_COLUMNS: &str = "s.id, s.stripe_subscription_id, c.stripe_customer_id, s.status, s.plan_id, \
    s.price_id, s.item_id, s.cancel_at_period_end, s.cancel_at, s.canceled_at, s.ended_at, s.current_period_start, \
    s.current_period_end, s.trial_end, s.metadata_user_id, s.past_due_since, s.source_created";

/// How many columns [`SUBSCRIPTION_COLUMNS`] names.
const SUBSCRIPTION_COLUMN_COUNT: usize = 17;

fn subscription_from_row(row: &Row<'_>) -> Result<Subscription, StoreError> {
    let status: String = get(row, 3)?;
    Ok(Subscription {
        id: uuid(row, 0)?,
        snapshot: SubscriptionSnapshot {
            stripe_subscription_id: get(row, 1)?,
            stripe_customer_id: get(row, 2)?,
            status: SubscriptionStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt("unknown subscription status".into()))?,
            price_id: get(row, 5)?,
            item_id: get(row, 6)?,
            cancel_at_period_end: get(row, 7)?,
            cancel_at: opt_time(row, 8)?,
            canceled_at: opt_time(row, 9)?,
            ended_at: opt_time(row, 10)?,
            current_period_start: opt_time(row, 11)?,
            current_period_end: opt_time(row, 12)?,
            trial_end: opt_time(row, 13)?,
            user_id: get(row, 14)?,
        },
        plan_id: get(row, 4)?,
        past_due_since: opt_time(row, 15)?,
        source_created: get(row, 16)?,
    })
}

const LICENSE_COLUMNS: &str =
    "l.id, l.subscription_id, l.key, l.status, l.max_devices, l.expires_at, l.grace_ends_at, \
     l.plan_id, l.source, l.user_id, l.entitlements, l.metadata, l.max_devices_override, l.expires_at_override, \
     l.admin_suspended_at, l.kind, l.updates_until, l.trial, l.disputed_at";

/// How many columns [`LICENSE_COLUMNS`] names.
const LICENSE_COLUMN_COUNT: usize = 19;

fn license_from_row(row: &Row<'_>) -> Result<License, StoreError> {
    license_from_row_at(row, 0)
}

/// [`LICENSE_COLUMNS`] starting at column `first`.
fn license_from_row_at(row: &Row<'_>, first: usize) -> Result<License, StoreError> {
    let key: String = get(row, first + 2)?;
    let status: String = get(row, first + 3)?;
    let max_devices: i32 = get(row, first + 4)?;
    let source: String = get(row, first + 8)?;
    let extras = LicenseExtras::decode(
        &source,
        json(row, first + 10)?,
        json(row, first + 11)?,
        get::<Option<i64>>(row, first + 12)?,
    )?;
    Ok(License {
        id: uuid(row, first)?,
        subscription_id: opt_uuid(row, first + 1)?,
        source: extras.source,
        user_id: get(row, first + 9)?,
        key: LicenseKey::parse(&key).ok_or_else(|| StoreError::Corrupt("malformed license key".into()))?,
        terms: LicenseTerms {
            status: LicenseStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt("unknown license status".into()))?,
            max_devices: u32::try_from(max_devices).map_err(|_| StoreError::Corrupt("negative max_devices".into()))?,
            expires_at: opt_time(row, first + 5)?,
            grace_ends_at: opt_time(row, first + 6)?,
            plan_id: get(row, first + 7)?,
        },
        entitlements: extras.entitlements,
        metadata: extras.metadata,
        overrides: LicenseOverrides {
            max_devices: extras.max_devices_override,
            expires_at: opt_time(row, first + 13)?,
            suspended_at: opt_time(row, first + 14)?,
            disputed_at: opt_time(row, first + 18)?,
        },
        kind: license_kind(&get::<String>(row, first + 15)?)?,
        updates_until: opt_time(row, first + 16)?,
        trial: get(row, first + 17)?,
    })
}

/// [`LICENSE_COLUMNS`], then the owner, `created_at` and `updated_at`.
fn license_record_from_row(row: &Row<'_>) -> Result<LicenseRecord, StoreError> {
    let after = LICENSE_COLUMN_COUNT;
    Ok(LicenseRecord {
        license: license_from_row(row)?,
        owner_user_id: get(row, after)?,
        created_at: time(row, after + 1)?,
        updated_at: time(row, after + 2)?,
    })
}

fn payment_from_row(row: &Row<'_>) -> Result<PaymentRecord, StoreError> {
    let status: String = get(row, 6)?;
    Ok(PaymentRecord {
        id: uuid(row, 0)?,
        payment: Payment {
            stripe_invoice_id: get(row, 1)?,
            stripe_customer_id: get(row, 2)?,
            stripe_subscription_id: get(row, 3)?,
            amount: get(row, 4)?,
            currency: get(row, 5)?,
            status: PaymentStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt("unknown payment status".into()))?,
            paid_at: opt_time(row, 7)?,
        },
        created_at: time(row, 8)?,
    })
}

const DEVICE_COLUMNS: &str = "d.id, d.license_id, d.fingerprint, d.name, d.platform, d.app_version, d.status, \
    d.activated_at, d.last_heartbeat_at, d.deactivated_at, d.air_gapped";

fn device_from_row(row: &Row<'_>) -> Result<Device, StoreError> {
    let status: String = get(row, 6)?;
    Ok(Device {
        id: uuid(row, 0)?,
        license_id: uuid(row, 1)?,
        fingerprint: get(row, 2)?,
        name: get(row, 3)?,
        platform: get(row, 4)?,
        app_version: get(row, 5)?,
        status: DeviceStatus::parse(&status).ok_or_else(|| StoreError::Corrupt("unknown device status".into()))?,
        activated_at: time(row, 7)?,
        last_heartbeat_at: time(row, 8)?,
        deactivated_at: opt_time(row, 9)?,
        air_gapped: get(row, 10)?,
    })
}

fn change_from_row(row: &Row<'_>) -> Result<ChangeEntry, StoreError> {
    Ok(ChangeEntry {
        id: get(row, 0)?,
        subscription_id: uuid(row, 1)?,
        kind: get(row, 2)?,
        from_status: get(row, 3)?,
        to_status: get(row, 4)?,
        detail: json(row, 5)?,
        actor: get(row, 6)?,
        stripe_event_id: get(row, 7)?,
        created_at: time(row, 8)?,
    })
}

fn outbox_from_row(row: &Row<'_>) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        id: get(row, 0)?,
        license_id: opt_uuid(row, 1)?,
        topic: get(row, 2)?,
        payload: json(row, 3)?,
        created_at: time(row, 4)?,
    })
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Opens the writer, creating the file, and switches the database to WAL.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let unavailable = |e: rusqlite::Error| StoreError::Unavailable(Box::new(e));
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unavailable)?;
    configure(&conn).map_err(unavailable)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // E.g. an in-memory database, or a file system without shared memory.
        return Err(StoreError::Unavailable("the database cannot use a write-ahead log".into()));
    }
    // FULL: the log is fsynced at every commit (NORMAL would only survive a
    // crash of the process, not of the machine). fullfsync matters on macOS.
    conn.pragma_update(None, "synchronous", "FULL").map_err(unavailable)?;
    conn.pragma_update(None, "fullfsync", true).map_err(unavailable)?;
    Ok(conn)
}

/// Owner-only permissions for the files that hold every license key.
#[cfg(unix)]
const PRIVATE_FILE_MODE: u32 = 0o600;
#[cfg(unix)]
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) readable by the owner only, whatever
/// the umask. An existing directory is left as it is: its mode is the
/// operator's choice.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(PRIVATE_DIR_MODE);
        builder.create(dir)?;
        // The umask may have taken more than group and others' bits.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Creates the database file owner-only before SQLite does (SQLite would
/// make it 0644 less the umask, and gives its `-wal` and `-shm` files the
/// main file's mode). A file that exists is kept as it is, with a warning
/// when others may read it.
#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(PRIVATE_FILE_MODE).open(path) {
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "the database file (which holds every license key) is readable by others; chmod 600 it"
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The `-wal` and `-shm` files SQLite keeps next to the database take the
/// database's mode when SQLite creates them, but files left by an older
/// version may be looser: they hold the same data, so they follow the
/// database file's mode.
#[cfg(unix)]
fn align_side_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let main = std::fs::metadata(path)?.permissions().mode() & 0o777;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = Path::new(&side);
        match std::fs::metadata(side) {
            Ok(meta) if meta.permissions().mode() & 0o777 & !main != 0 => {
                std::fs::set_permissions(side, std::fs::Permissions::from_mode(main))?
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed, readable by its owner only) the database
    /// file at `path`. The directory must exist. Call [`Store::migrate`]
    /// before use.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let writer = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                #[cfg(unix)]
                create_private_file(&path).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
                let writer = open_writer(&path)?;
                #[cfg(unix)]
                align_side_files(&path).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
                Ok::<_, StoreError>(writer)
            })
            .await
            .map_err(worker_error)??
        };
        let readers = deadpool_sqlite::Config::new(path.clone())
            .builder(Runtime::Tokio1)
            .map_err(|e| match e {})?
            .max_size(READERS)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .post_create(Hook::async_fn(|conn, _| {
                Box::pin(async move {
                    conn.interact(|c| {
                        configure(c)?;
                        // Readers never write: writes go through the writer's lock.
                        c.pragma_update(None, "query_only", true)
                    })
                    .await
                    .map_err(|e| HookError::message(format!("sqlite reader set-up failed: {e}")))?
                    .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                writer: Arc::new(Mutex::new(writer)),
                readers,
                watchers: std::sync::Mutex::default(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How the migrations applied to the database compare with those this
    /// build embeds.
    pub async fn migration_check(&self) -> Result<MigrationCheck, StoreError> {
        let applied = self
            .read(|conn| {
                query(conn, "SELECT version, checksum FROM refinery_schema_history", [], |r| {
                    Ok(applied_stamp(get(r, 0)?, &get::<Option<String>>(r, 1)?.unwrap_or_default()))
                })
            })
            .await?;
        Ok(MigrationCheck::compare(&embedded_stamps(embedded::migrations::runner().get_migrations()), &applied))
    }

    /// Runs `f` on a reader connection, off the async threads.
    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let conn = self.shared.readers.get().await.map_err(pool_error)?;
        conn.interact(move |c| f(c)).await.map_err(interact_error)?
    }

    /// Runs `f` on the writer, outside any transaction (each statement
    /// commits by itself), with the current time.
    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<R, StoreError> + Send + 'static,
    {
        let writer = Writer(self.shared.writer.clone().lock_owned().await);
        let now = now_micros()?;
        tokio::task::spawn_blocking(move || f(&writer, now)).await.map_err(worker_error)?
    }
}

impl SqliteStore {
    /// Runs one unit of work on the writer inside `BEGIN IMMEDIATE`, off the
    /// async threads: `work` loads, decides and applies, and says whether it
    /// wrote to the outbox (watchers are woken after the commit). Any
    /// failure rolls back.
    async fn unit_of_work<T, W>(&self, work: W) -> Result<T, StoreError>
    where
        T: Send + 'static,
        W: FnOnce(&Connection, i64) -> Result<(T, bool), StoreError> + Send + 'static,
    {
        let writer = Writer(self.shared.writer.clone().lock_owned().await);
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            // Taken once the lock is held: the transaction's start, as `now()` is.
            let now = now_micros()?;
            writer.execute_batch("BEGIN IMMEDIATE").map_err(query_error)?;
            // Any early return drops `writer`, which rolls back.
            let (done, wrote_outbox) = work(&writer, now)?;
            writer.execute_batch("COMMIT").map_err(query_error)?;
            drop(writer);
            if wrote_outbox {
                shared.signal_outbox();
            }
            Ok(done)
        })
        .await
        .map_err(worker_error)?
    }
}

/// The writer connection, held exclusively. However it is let go (commit,
/// drop, a cancelled or panicking task), it is left outside any transaction,
/// so the next holder starts clean.
struct Writer(OwnedMutexGuard<Connection>);

impl std::ops::Deref for Writer {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            if let Err(e) = self.0.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "sqlite rollback failed");
            }
        }
    }
}

impl Store for SqliteStore {
    async fn sync_stripe<T, F>(&self, keys: super::stripe_sync::StripeKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::stripe_sync::StripeBundle) -> (super::stripe_sync::Changeset, T) + Send + 'static,
    {
        stripe_sync::sync_stripe(self, keys, decide).await
    }

    async fn license_work<T, F>(&self, keys: super::license_work::LicenseKeys, decide: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(super::license_work::LicenseBundle) -> (super::changeset::Changeset, T) + Send + 'static,
    {
        license_work::license_work(self, keys, decide).await
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut writer = Writer(self.shared.writer.clone().lock_owned().await);
        tokio::task::spawn_blocking(move || {
            let conn: &mut Connection = &mut writer.0;
            // A migration that rebuilds a referenced table (SQLite cannot
            // alter a column) must run with foreign keys off: the switch is
            // ignored inside a transaction, so it is flipped around the run
            // and every reference is checked before it is flipped back.
            let migration = |e: rusqlite::Error| StoreError::Migration(Box::new(e));
            conn.pragma_update(None, "foreign_keys", false).map_err(migration)?;
            let ran =
                embedded::migrations::runner().run(conn).map(drop).map_err(|e| StoreError::Migration(Box::new(e)));
            let dangling = conn
                .prepare("PRAGMA foreign_key_check")
                .and_then(|mut check| check.query([])?.next().map(|row| row.is_some()))
                .map_err(migration);
            conn.pragma_update(None, "foreign_keys", true).map_err(migration)?;
            ran?;
            if dangling? {
                return Err(StoreError::Migration("a migration left a dangling foreign key".into()));
            }
            Ok(())
        })
        .await
        .map_err(worker_error)?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| query_opt(conn, "SELECT 1", [], |_| Ok(())).map(drop)).await
    }

    async fn record_event_failure(&self, event: &EventRecord<'_>, error: &str) -> Result<(), StoreError> {
        let (id, kind, created) = (event.id.to_owned(), event.kind.to_owned(), event.created);
        let (api_version, error) = (event.api_version.map(str::to_owned), error.to_owned());
        let (object_id, payload) = (event.object_id.map(str::to_owned), event.payload.to_vec());
        self.write(move |conn, now| {
            execute(
                conn,
                "INSERT INTO webhook_events (id, type, created, api_version, status, last_error, received_at,
                        object_id, payload)
                 VALUES (?1, ?2, ?3, ?4, 'failed', ?5, ?6, ?7, ?8)
                 ON CONFLICT (id) DO UPDATE
                    SET last_error = excluded.last_error, attempts = webhook_events.attempts + 1,
                        object_id = excluded.object_id, payload = excluded.payload
                  WHERE webhook_events.status = 'failed'",
                params![id, kind, created, api_version, error, now, object_id, payload],
            )
        })
        .await?;
        Ok(())
    }

    async fn subscriptions_of_user(&self, user_id: &str) -> Result<Vec<Subscription>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN customers c ON c.id = s.customer_id
                  WHERE c.user_id = ?1 ORDER BY s.updated_at DESC, s.id"
            );
            query(conn, &sql, [user_id], subscription_from_row)
        })
        .await
    }

    async fn changes_of_user(&self, user_id: &str, limit: i64) -> Result<Vec<ChangeEntry>, StoreError> {
        let (user_id, limit) = (user_id.to_owned(), checked_limit(limit)?);
        self.read(move |conn| {
            query(
                conn,
                "SELECT h.id, h.subscription_id, h.kind, h.from_status, h.to_status, h.detail, h.actor,
                        h.stripe_event_id, h.created_at
                   FROM subscription_changes h
                   JOIN subscriptions s ON s.id = h.subscription_id
                   JOIN customers c ON c.id = s.customer_id
                  WHERE c.user_id = ?1
                  ORDER BY h.id DESC LIMIT ?2",
                params![user_id, limit],
                change_from_row,
            )
        })
        .await
    }

    async fn payments_of_user(&self, user_id: &str, limit: i64) -> Result<Vec<PaymentRecord>, StoreError> {
        let (user_id, limit) = (user_id.to_owned(), checked_limit(limit)?);
        self.read(move |conn| {
            query(
                conn,
                "SELECT p.id, p.stripe_invoice_id, c.stripe_customer_id, p.stripe_subscription_id, p.amount,
                        p.currency, p.status, p.paid_at, p.created_at
                   FROM payments p JOIN customers c ON c.id = p.customer_id
                  WHERE c.user_id = ?1
                  ORDER BY COALESCE(p.paid_at, p.created_at) DESC, p.id LIMIT ?2",
                params![user_id, limit],
                payment_from_row,
            )
        })
        .await
    }

    async fn stripe_customers_of_user(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            query(
                conn,
                "SELECT stripe_customer_id FROM customers WHERE user_id = ?1 ORDER BY created_at, id",
                [user_id],
                |row| get(row, 0),
            )
        })
        .await
    }

    async fn licenses_of_user(&self, user_id: &str) -> Result<Vec<License>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {LICENSE_COLUMNS} FROM licenses l
                   LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id
                  WHERE (c.user_id = ?1 OR l.user_id = ?1) ORDER BY l.created_at, l.id"
            );
            query(conn, &sql, [user_id], license_from_row)
        })
        .await
    }

    async fn outbox_after(
        &self,
        after_id: i64,
        license_id: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let (license_id, limit) = (license_id.map(|l| l.to_string()), checked_limit(limit)?);
        self.read(move |conn| {
            query(
                conn,
                "SELECT id, license_id, topic, payload, created_at FROM outbox_events
                  WHERE id > ?1 AND (?2 IS NULL OR license_id = ?2)
                  ORDER BY id LIMIT ?3",
                params![after_id, license_id, limit],
                outbox_from_row,
            )
        })
        .await
    }

    async fn license_by_key_hash(&self, key_hash: &[u8]) -> Result<Option<License>, StoreError> {
        let key_hash = key_hash.to_vec();
        self.read(move |conn| {
            let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.key_hash = ?1");
            query_opt(conn, &sql, [key_hash], license_from_row)
        })
        .await
    }

    async fn license_and_device(
        &self,
        key_hash: &[u8],
        fingerprint: Option<&str>,
    ) -> Result<(Option<License>, Option<Device>), StoreError> {
        let (key_hash, fingerprint) = (key_hash.to_vec(), fingerprint.map(str::to_owned));
        self.read(move |conn| {
            let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses l WHERE l.key_hash = ?1");
            let license = query_opt(conn, &sql, [&key_hash], license_from_row)?;
            let device = match (&license, fingerprint) {
                (Some(license), Some(fingerprint)) => {
                    let sql = format!(
                        "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.license_id = ?1 AND d.fingerprint = ?2"
                    );
                    query_opt(conn, &sql, [license.id.to_string(), fingerprint], device_from_row)?
                }
                _ => None,
            };
            Ok((license, device))
        })
        .await
    }

    async fn device_by_token_hash(&self, token_hash: &[u8]) -> Result<Option<Device>, StoreError> {
        let token_hash = token_hash.to_vec();
        self.read(move |conn| {
            let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.token_hash = ?1");
            query_opt(conn, &sql, [token_hash], device_from_row)
        })
        .await
    }

    async fn devices_of_user(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {DEVICE_COLUMNS} FROM devices d
                   JOIN licenses l ON l.id = d.license_id
                   LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id
                  WHERE (c.user_id = ?1 OR l.user_id = ?1) ORDER BY d.last_heartbeat_at DESC, d.id"
            );
            query(conn, &sql, [user_id], device_from_row)
        })
        .await
    }

    async fn license_belongs_to(&self, license_id: Uuid, user_id: &str) -> Result<bool, StoreError> {
        let (license_id, user_id) = (license_id.to_string(), user_id.to_owned());
        self.read(move |conn| {
            let row = query_opt(
                conn,
                "SELECT 1 FROM licenses l LEFT JOIN subscriptions s ON s.id = l.subscription_id
                   LEFT JOIN customers c ON c.id = s.customer_id WHERE l.id = ?1 AND (c.user_id = ?2 OR l.user_id = ?2)",
                [license_id, user_id],
                |_| Ok(()),
            )?;
            Ok(row.is_some())
        })
        .await
    }

    async fn latest_outbox_id(&self) -> Result<i64, StoreError> {
        self.read(|conn| {
            let row = query_opt(conn, "SELECT COALESCE(max(id), 0) FROM outbox_events", [], |row| get(row, 0))?;
            Ok(row.unwrap_or(0))
        })
        .await
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        let before = micros(before)?;
        self.write(move |conn, _| execute(conn, "DELETE FROM outbox_events WHERE created_at < ?1", [before])).await
    }

    async fn watch_outbox(&self) -> Result<mpsc::Receiver<()>, StoreError> {
        let (tx, rx) = mpsc::channel(1);
        // Like a fresh LISTEN: anything may have been committed before this
        // call, so the watcher starts with one wake-up.
        let _ = tx.try_send(());
        self.shared.watchers.lock().unwrap_or_else(PoisonError::into_inner).push(tx);
        Ok(rx)
    }

    async fn webhook_event_status(&self, event_id: &str) -> Result<Option<(String, i32, Option<String>)>, StoreError> {
        let event_id = event_id.to_owned();
        self.read(move |conn| {
            query_opt(conn, "SELECT status, attempts, last_error FROM webhook_events WHERE id = ?1", [event_id], |r| {
                Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?))
            })
        })
        .await
    }

    // --- Webhooks to the vendor (issue 14) ---

    async fn create_webhook_endpoint(&self, e: &NewWebhookEndpoint<'_>) -> Result<WebhookEndpoint, StoreError> {
        let (id, url, description, secret) =
            (e.id.to_string(), e.url.to_owned(), e.description.map(str::to_owned), e.secret.to_owned());
        let events = serde_json::to_string(e.events).map_err(|e| StoreError::Query(Box::new(e)))?;
        self.write(move |conn, now| {
            query_opt(
                conn,
                "INSERT INTO webhook_endpoints (id, url, events, description, secret, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 RETURNING id, url, events, description, created_at",
                params![id, url, events, description, secret, now],
                endpoint_from_row,
            )?
            .ok_or_else(|| StoreError::Corrupt("an insert returned no row".into()))
        })
        .await
    }

    async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, StoreError> {
        self.read(|conn| {
            query(
                conn,
                "SELECT id, url, events, description, created_at FROM webhook_endpoints
                  WHERE deleted_at IS NULL ORDER BY created_at, id",
                [],
                endpoint_from_row,
            )
        })
        .await
    }

    async fn webhook_endpoint(&self, id: Uuid) -> Result<Option<WebhookEndpoint>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            query_opt(
                conn,
                "SELECT id, url, events, description, created_at FROM webhook_endpoints
                  WHERE id = ?1 AND deleted_at IS NULL",
                [id],
                endpoint_from_row,
            )
        })
        .await
    }

    async fn delete_webhook_endpoint(&self, id: Uuid, at: Timestamp) -> Result<bool, StoreError> {
        let (id, at) = (id.to_string(), micros(at)?);
        self.write(move |conn, _| {
            let tx = conn.unchecked_transaction().map_err(query_error)?;
            let deleted = execute(
                &tx,
                "UPDATE webhook_endpoints SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, at],
            )?;
            if deleted > 0 {
                execute(
                    &tx,
                    "UPDATE webhook_messages SET status = 'failed', lease = NULL WHERE endpoint_id = ?1 AND status = 'pending'",
                    [&id],
                )?;
            }
            tx.commit().map_err(query_error)?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn webhook_deliveries(
        &self,
        endpoint_id: Uuid,
        cursor: Option<&WebhookDeliveryCursor>,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let endpoint_id = endpoint_id.to_string();
        let after_at = cursor.map(|c| micros(c.created_at)).transpose()?;
        let after_id = cursor.map(|c| c.id.clone());
        let limit = checked_limit(limit)?;
        self.read(move |conn| {
            let mut deliveries = query(
                conn,
                "SELECT id, endpoint_id, event_type, status, attempts, next_attempt_at, created_at, delivered_at
                   FROM webhook_messages
                  WHERE endpoint_id = ?1 AND (?2 IS NULL OR (created_at, id) < (?2, ?3))
                  ORDER BY created_at DESC, id DESC LIMIT ?4",
                params![endpoint_id, after_at, after_id, limit],
                delivery_from_row,
            )?;
            let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
            let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Query(Box::new(e)))?;
            let attempts = query(
                conn,
                "SELECT message_id, attempted_at, status_code, error, duration_ms, next_attempt_at
                   FROM webhook_attempts WHERE message_id IN (SELECT value FROM json_each(?1)) ORDER BY id",
                [ids],
                |row| {
                    let attempt = WebhookAttempt {
                        attempted_at: time(row, 1)?,
                        status_code: get::<Option<i64>>(row, 2)?.and_then(|c| u16::try_from(c).ok()),
                        error: get(row, 3)?,
                        duration_ms: get(row, 4)?,
                        next_attempt_at: opt_time(row, 5)?,
                    };
                    Ok((get::<String>(row, 0)?, attempt))
                },
            )?;
            for (message_id, attempt) in attempts {
                if let Some(delivery) = deliveries.iter_mut().find(|d| d.id == message_id) {
                    delivery.attempt_log.push(attempt);
                }
            }
            Ok(deliveries)
        })
        .await
    }

    async fn retry_webhook_message(&self, message_id: &str, now: Timestamp) -> Result<WebhookRetry, StoreError> {
        let (message_id, now) = (message_id.to_owned(), micros(now)?);
        self.write(move |conn, _| {
            let tx = conn.unchecked_transaction().map_err(query_error)?;
            let status: Option<String> = query_opt(
                &tx,
                "SELECT m.status FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id
                  WHERE m.id = ?1 AND e.deleted_at IS NULL",
                [&message_id],
                |r| get(r, 0),
            )?;
            let outcome = match status.as_deref() {
                None => WebhookRetry::NotFound,
                Some("delivered") => WebhookRetry::AlreadyDelivered,
                Some(_) => {
                    execute(
                        &tx,
                        "UPDATE webhook_messages SET status = 'pending', next_attempt_at = ?2, lease = NULL WHERE id = ?1",
                        params![message_id, now],
                    )?;
                    WebhookRetry::Scheduled
                }
            };
            tx.commit().map_err(query_error)?;
            Ok(outcome)
        })
        .await
    }

    async fn claim_webhook_messages(&self, claim: &WebhookClaim<'_>) -> Result<Vec<ClaimedWebhook>, StoreError> {
        // Looked at on a reader first: the dispatcher asks often, and the
        // one writer is better left to the units of work.
        if self.next_webhook_due().await?.is_none_or(|due| due > claim.now) {
            return Ok(Vec::new());
        }
        let (now, lease_until, lease) = (micros(claim.now)?, micros(claim.lease_until)?, claim.lease.to_string());
        let busy: Vec<String> = claim.busy_endpoints.iter().map(Uuid::to_string).collect();
        let busy = serde_json::to_string(&busy).map_err(|e| StoreError::Query(Box::new(e)))?;
        let (per_endpoint, limit) = (checked_limit(claim.per_endpoint)?, checked_limit(claim.limit)?);
        // One process owns the file and the writer serialises claims, so
        // no row is ever held by another sender.
        self.write(move |conn, _| {
            let tx = conn.unchecked_transaction().map_err(query_error)?;
            let claimed = query(
                &tx,
                // Each endpoint's due messages from its own index range: a
                // claim costs the same however large the backlog.
                "SELECT m.id, m.endpoint_id, e.url, e.secret, m.event_type, m.event_at, m.payload, m.attempts
                   FROM webhook_endpoints e
                   JOIN webhook_messages m ON m.id IN (
                        SELECT id FROM webhook_messages
                         WHERE endpoint_id = e.id AND status = 'pending' AND next_attempt_at <= ?1
                         ORDER BY next_attempt_at, id LIMIT ?3)
                  WHERE e.id NOT IN (SELECT value FROM json_each(?2))
                  ORDER BY m.next_attempt_at, m.id LIMIT ?4",
                params![now, busy, per_endpoint, limit],
                |r| {
                    Ok(ClaimedWebhook {
                        message_id: get(r, 0)?,
                        endpoint_id: uuid(r, 1)?,
                        url: get(r, 2)?,
                        secret: get(r, 3)?,
                        event_type: get(r, 4)?,
                        event_at: time(r, 5)?,
                        payload: json(r, 6)?,
                        attempts: get(r, 7)?,
                    })
                },
            )?;
            for message in &claimed {
                execute(
                    &tx,
                    "UPDATE webhook_messages SET next_attempt_at = ?2, lease = ?3 WHERE id = ?1",
                    params![message.message_id, lease_until, lease],
                )?;
            }
            tx.commit().map_err(query_error)?;
            Ok(claimed)
        })
        .await
    }

    async fn record_webhook_attempt(&self, record: &WebhookAttemptRecord<'_>) -> Result<bool, StoreError> {
        let a = record.attempt;
        let message_id = record.message_id.to_owned();
        let lease = record.lease.to_string();
        let status = record.status.as_str();
        let attempted_at = micros(a.attempted_at)?;
        let next_attempt_at = opt_micros(a.next_attempt_at)?;
        let delivered_at = (record.status == WebhookMessageStatus::Delivered).then_some(attempted_at);
        let (status_code, error, duration_ms) = (a.status_code.map(i64::from), a.error.clone(), a.duration_ms);
        self.write(move |conn, _| {
            let tx = conn.unchecked_transaction().map_err(query_error)?;
            let updated = execute(
                &tx,
                "UPDATE webhook_messages
                    SET status = ?3, attempts = attempts + 1, next_attempt_at = COALESCE(?4, next_attempt_at),
                        delivered_at = ?5, lease = NULL
                  WHERE id = ?1 AND lease = ?2 AND status = 'pending'",
                params![message_id, lease, status, next_attempt_at, delivered_at],
            )?;
            if updated > 0 {
                execute(
                    &tx,
                    "INSERT INTO webhook_attempts (message_id, attempted_at, status_code, error, duration_ms, next_attempt_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![message_id, attempted_at, status_code, error, duration_ms, next_attempt_at],
                )?;
            }
            tx.commit().map_err(query_error)?;
            Ok(updated > 0)
        })
        .await
    }

    async fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(|conn| {
            let due = query_opt(
                conn,
                "SELECT min(next_attempt_at) FROM webhook_messages WHERE status = 'pending'",
                [],
                |r| opt_time(r, 0),
            )?;
            Ok(due.flatten())
        })
        .await
    }

    // --- Admin reads (issue 14): Stripe deliveries ---

    async fn record_event_duplicate(&self, event_id: &str) -> Result<(), StoreError> {
        let event_id = event_id.to_owned();
        self.write(move |conn, _| {
            execute(conn, "UPDATE webhook_events SET duplicates = duplicates + 1 WHERE id = ?1", [event_id])
        })
        .await?;
        Ok(())
    }

    // --- admin API tokens ---

    async fn insert_admin_token(
        &self,
        id: Uuid,
        name: &str,
        token_hash: &[u8],
        scopes: &Scopes,
    ) -> Result<bool, StoreError> {
        let (id, name, token_hash) = (id.to_string(), name.to_owned(), token_hash.to_vec());
        let scopes = json_text(&Value::from(scopes.names()));
        let inserted = self
            .write(move |conn, now| {
                execute(
                    conn,
                    "INSERT INTO admin_tokens (id, name, token_hash, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (name) WHERE revoked_at IS NULL DO NOTHING",
                    params![id, name, token_hash, scopes, now],
                )
            })
            .await?;
        Ok(inserted == 1)
    }

    async fn admin_token_by_hash(&self, token_hash: &[u8]) -> Result<Option<AdminTokenRecord>, StoreError> {
        let token_hash = token_hash.to_vec();
        self.read(move |conn| {
            let sql =
                format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens WHERE token_hash = ?1 AND revoked_at IS NULL");
            query_opt(conn, &sql, [token_hash], admin_token_from_row)
        })
        .await
    }

    async fn admin_tokens(&self) -> Result<Vec<AdminTokenRecord>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {ADMIN_TOKEN_COLUMNS} FROM admin_tokens ORDER BY created_at, id");
            query(conn, &sql, [], admin_token_from_row)
        })
        .await
    }

    async fn revoke_admin_token(&self, name: &str, at: Timestamp) -> Result<bool, StoreError> {
        let (name, at) = (name.to_owned(), micros(at)?);
        let revoked = self
            .write(move |conn, _| {
                execute(
                    conn,
                    "UPDATE admin_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    params![name, at],
                )
            })
            .await?;
        Ok(revoked > 0)
    }

    async fn touch_admin_token(&self, id: Uuid, at: Timestamp) -> Result<(), StoreError> {
        let (id, at) = (id.to_string(), micros(at)?);
        self.write(move |conn, _| {
            execute(
                conn,
                "UPDATE admin_tokens SET last_used_at = ?2
                  WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60000000)",
                params![id, at],
            )
        })
        .await?;
        Ok(())
    }
}

const ADMIN_TOKEN_COLUMNS: &str = "id, name, scopes, created_at, last_used_at, revoked_at";

fn admin_token_from_row(row: &Row<'_>) -> Result<AdminTokenRecord, StoreError> {
    let scopes: Vec<String> =
        serde_json::from_value(json(row, 2)?).map_err(|e| StoreError::Corrupt(format!("admin token scopes: {e}")))?;
    Ok(AdminTokenRecord {
        id: uuid(row, 0)?,
        name: get(row, 1)?,
        scopes: Scopes::parse(scopes.iter().map(String::as_str))
            .map_err(|e| StoreError::Corrupt(format!("admin token scopes: {e}")))?,
        created_at: time(row, 3)?,
        last_used_at: opt_time(row, 4)?,
        revoked_at: opt_time(row, 5)?,
    })
}

fn endpoint_from_row(row: &Row<'_>) -> Result<WebhookEndpoint, StoreError> {
    let events: String = get(row, 2)?;
    Ok(WebhookEndpoint {
        id: uuid(row, 0)?,
        url: get(row, 1)?,
        events: serde_json::from_str(&events)
            .map_err(|_| StoreError::Corrupt("column 2 holds malformed event types".into()))?,
        description: get(row, 3)?,
        created_at: time(row, 4)?,
    })
}

fn delivery_from_row(row: &Row<'_>) -> Result<WebhookDelivery, StoreError> {
    let status: String = get(row, 3)?;
    let status = WebhookMessageStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt("unknown webhook message status".into()))?;
    Ok(WebhookDelivery {
        id: get(row, 0)?,
        endpoint_id: uuid(row, 1)?,
        event_type: get(row, 2)?,
        status,
        attempts: get(row, 4)?,
        next_attempt_at: match status {
            WebhookMessageStatus::Pending => Some(time(row, 5)?),
            _ => None,
        },
        created_at: time(row, 6)?,
        delivered_at: opt_time(row, 7)?,
        attempt_log: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V6 rebuilds `licenses`, which devices and their audit rows reference:
    /// a database holding data from before it must come through whole, with
    /// its references still enforced.
    #[tokio::test]
    async fn the_licenses_rebuild_keeps_existing_rows_and_references() {
        let dir = std::env::temp_dir().join(format!("billing_v6_{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("billing.sqlite3");
        {
            let mut conn = Connection::open(&path).unwrap();
            embedded::migrations::runner().set_target(refinery::Target::Version(5)).run(&mut conn).unwrap();
            conn.execute_batch(
                "INSERT INTO customers (id, stripe_customer_id, user_id) VALUES ('c1', 'cus_1', 'user_1');
                 INSERT INTO subscriptions (id, stripe_subscription_id, customer_id, status, cancel_at_period_end, source_created)
                      VALUES ('s1', 'sub_1', 'c1', 'active', 0, 1);
                 INSERT INTO licenses (id, subscription_id, key, key_hash, status, plan_id, max_devices)
                      VALUES ('l1', 's1', 'KEY', x'00', 'active', 'pro', 3);
                 INSERT INTO devices (id, license_id, fingerprint, status, activated_at, last_heartbeat_at)
                      VALUES ('d1', 'l1', 'fp', 'active', 1, 1);
                 INSERT INTO device_changes (device_id, license_id, kind, actor) VALUES ('d1', 'l1', 'activated', 'system');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).await.unwrap();
        store.migrate().await.unwrap();
        let (license, devices, source) = store
            .read(|conn| {
                let license =
                    query_opt(conn, "SELECT subscription_id, max_devices FROM licenses WHERE id = 'l1'", [], |r| {
                        Ok((get::<String>(r, 0)?, get::<i64>(r, 1)?))
                    })?;
                let devices =
                    query(conn, "SELECT id FROM devices WHERE license_id = 'l1'", [], |r| get::<String>(r, 0))?;
                let source =
                    query_opt(conn, "SELECT source FROM licenses WHERE id = 'l1'", [], |r| get::<String>(r, 0))?;
                Ok((license, devices, source))
            })
            .await
            .unwrap();
        assert_eq!(license, Some(("s1".to_owned(), 3)));
        assert_eq!(devices, ["d1"]);
        assert_eq!(source.as_deref(), Some("stripe"));
        let orphaning = store.write(|conn, _| execute(conn, "DELETE FROM licenses WHERE id = 'l1'", [])).await;
        assert!(orphaning.is_err(), "devices still reference licenses");
        let manual_without_user = store
            .write(|conn, _| {
                execute(
                    conn,
                    "INSERT INTO licenses (id, subscription_id, key, key_hash, status, max_devices, source)
                     VALUES ('l2', 's1', 'KEY2', x'01', 'active', 1, 'manual')",
                    [],
                )
            })
            .await;
        assert!(manual_without_user.is_err(), "a manual license has no subscription");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
