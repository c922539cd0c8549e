//! [`OverviewStore`] on PostgreSQL.

use super::{query, query_opt, PgStore};
use crate::storage::overview::{OverviewCounts, OverviewStore, OverviewWindow};
use crate::storage::StoreError;

impl OverviewStore for PgStore {
    async fn overview_counts(&self, window: OverviewWindow) -> Result<OverviewCounts, StoreError> {
        let conn = self.conn().await?;
        let row = query_opt(
            &conn,
            "SELECT (SELECT count(*) FROM licenses WHERE status = 'active'),
                    (SELECT count(*) FROM devices WHERE status = 'active' AND last_heartbeat_at >= $1),
                    (SELECT count(*) FROM webhook_events WHERE received_at >= $2)",
            &[&window.seen_since, &window.today],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("a count returned no row".into()))?;
        let days = query(
            &conn,
            "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) FROM device_changes
              WHERE kind = 'activated' AND created_at >= $1 GROUP BY day ORDER BY day",
            &[&window.activations_since],
        )
        .await?;
        Ok(OverviewCounts {
            active_licenses: row.get(0),
            devices_seen: row.get(1),
            stripe_events_today: row.get(2),
            activations_per_day: days.iter().map(|r| (r.get(0), r.get(1))).collect(),
        })
    }
}
