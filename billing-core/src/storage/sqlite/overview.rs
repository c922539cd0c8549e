//! [`OverviewStore`] on SQLite: the statements of `postgres/overview.rs`
//! (timestamps as Unix microseconds, days as whole days since the epoch).

use super::{get, micros, query, query_opt, SqliteStore};
use crate::storage::overview::{OverviewCounts, OverviewStore, OverviewWindow};
use crate::storage::StoreError;
use deadpool_sqlite::rusqlite::params;

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl OverviewStore for SqliteStore {
    async fn overview_counts(&self, window: OverviewWindow) -> Result<OverviewCounts, StoreError> {
        let (seen, today, since) =
            (micros(window.seen_since)?, micros(window.today)?, micros(window.activations_since)?);
        self.read(move |conn| {
            let (active_licenses, devices_seen, stripe_events_today) = query_opt(
                conn,
                "SELECT (SELECT count(*) FROM licenses WHERE status = 'active'),
                        (SELECT count(*) FROM devices WHERE status = 'active' AND last_heartbeat_at >= ?1),
                        (SELECT count(*) FROM webhook_events WHERE received_at >= ?2)",
                params![seen, today],
                |r| Ok((get::<i64>(r, 0)?, get::<i64>(r, 1)?, get::<i64>(r, 2)?)),
            )?
            .ok_or_else(|| StoreError::Corrupt("a count returned no row".into()))?;
            let days = query(
                conn,
                "SELECT created_at / ?2 AS day, count(*) FROM device_changes
                  WHERE kind = 'activated' AND created_at >= ?1 GROUP BY day ORDER BY day",
                params![since, MICROS_PER_DAY],
                |r| Ok((get::<i64>(r, 0)?, get::<i64>(r, 1)?)),
            )?;
            let activations_per_day = days
                .into_iter()
                .map(|(day, count)| {
                    let date = time::OffsetDateTime::from_unix_timestamp(day * 86_400)
                        .map_err(|_| StoreError::Corrupt(format!("day {day} is out of range")))?
                        .date();
                    Ok((date, count))
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(OverviewCounts { active_licenses, devices_seen, stripe_events_today, activations_per_day })
        })
        .await
    }
}
