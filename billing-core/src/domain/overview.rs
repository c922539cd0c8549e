//! The vendor console's overview (issue 19): counts per UTC day, with the
//! days that had none filled in.

use time::Date;

/// How many of something happened on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyCount {
    /// The day.
    pub day: Date,
    /// How many.
    pub count: i64,
}

/// The `days` days ending with `last_day`, oldest first, each with its count
/// from `counted` (zero when absent; days outside the window are dropped).
pub fn daily_series(counted: &[(Date, i64)], last_day: Date, days: u16) -> Vec<DailyCount> {
    let mut series: Vec<DailyCount> = (0..i64::from(days))
        .rev()
        .filter_map(|back| last_day.checked_sub(time::Duration::days(back)))
        .map(|day| DailyCount { day, count: 0 })
        .collect();
    for (day, count) in counted {
        if let Some(slot) = series.iter_mut().find(|slot| slot.day == *day) {
            slot.count += count;
        }
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn missing_days_are_zero_and_days_outside_the_window_are_dropped() {
        let series = daily_series(
            &[(date!(2026 - 11 - 29), 2), (date!(2026 - 12 - 01), 5), (date!(2026 - 11 - 01), 9)],
            date!(2026 - 12 - 01),
            4,
        );
        let got: Vec<(Date, i64)> = series.iter().map(|d| (d.day, d.count)).collect();
        assert_eq!(
            got,
            [
                (date!(2026 - 11 - 28), 0),
                (date!(2026 - 11 - 29), 2),
                (date!(2026 - 11 - 30), 0),
                (date!(2026 - 12 - 01), 5)
            ]
        );
        assert!(daily_series(&[], date!(2026 - 12 - 01), 0).is_empty());
    }
}
