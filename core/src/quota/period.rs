//! Budget periods and rate windows, in UTC, from a host-supplied clock (milliseconds since the
//! Unix epoch). Integer calendar arithmetic only.

use serde::{Deserialize, Serialize};

const MS_PER_MINUTE: u64 = 60_000;
const MS_PER_DAY: u64 = 86_400_000;

/// How long a budget lasts before it starts afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC calendar day.
    Daily,
    /// A UTC calendar month.
    Monthly,
    /// Never resets.
    Total,
}

impl Period {
    /// A number that changes exactly when the period does (the counter window).
    pub fn window(self, now_ms: u64) -> u64 {
        let days = now_ms / MS_PER_DAY;
        match self {
            Self::Daily => days,
            Self::Monthly => {
                let (y, m, _) = civil_from_days(days);
                y * 12 + (m - 1)
            }
            Self::Total => 0,
        }
    }

    /// Milliseconds since the epoch at which the current period ends; `None` for `Total`.
    /// Saturates at `u64::MAX` (a clock that far out has no next period).
    pub fn ends_at_ms(self, now_ms: u64) -> Option<u64> {
        let days = now_ms / MS_PER_DAY;
        match self {
            Self::Daily => Some((days + 1).saturating_mul(MS_PER_DAY)),
            Self::Monthly => {
                let (y, m, _) = civil_from_days(days);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some(days_from_civil(ny, nm, 1).saturating_mul(MS_PER_DAY))
            }
            Self::Total => None,
        }
    }

    /// A human label for the current period: `2026-11-22`, `2026-11`, `total`.
    pub fn label(self, now_ms: u64) -> String {
        let (y, m, d) = civil_from_days(now_ms / MS_PER_DAY);
        match self {
            Self::Daily => format!("{y:04}-{m:02}-{d:02}"),
            Self::Monthly => format!("{y:04}-{m:02}"),
            Self::Total => "total".to_string(),
        }
    }
}

/// The fixed one-minute window of rate limits.
pub fn minute_window(now_ms: u64) -> u64 {
    now_ms / MS_PER_MINUTE
}

/// Whole seconds (at least 1) from `now_ms` until `until_ms`: a `Retry-After` value.
pub fn seconds_until(now_ms: u64, until_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// Milliseconds since the epoch at which the current minute window ends.
pub fn minute_ends_at_ms(now_ms: u64) -> u64 {
    (minute_window(now_ms) + 1).saturating_mul(MS_PER_MINUTE)
}

/// Seconds until the next minute window.
pub fn seconds_to_next_minute(now_ms: u64) -> u64 {
    seconds_until(now_ms, minute_ends_at_ms(now_ms))
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Day count since 1970-01-01 of a civil date (year ≥ 1970).
pub fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-22T21:40:00Z
    const NOW: u64 = 1_795_383_600_000;

    #[test]
    fn calendar_round_trips() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(NOW / MS_PER_DAY), (2026, 11, 22));
        for days in (0..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn periods_end_at_utc_boundaries() {
        assert_eq!(Period::Daily.label(NOW), "2026-11-22");
        assert_eq!(Period::Monthly.label(NOW), "2026-11");
        let end_of_day = Period::Daily.ends_at_ms(NOW).unwrap();
        assert_eq!(civil_from_days(end_of_day / MS_PER_DAY), (2026, 11, 23));
        assert_eq!(end_of_day % MS_PER_DAY, 0);
        let end_of_month = Period::Monthly.ends_at_ms(NOW).unwrap();
        assert_eq!(civil_from_days(end_of_month / MS_PER_DAY), (2026, 12, 1));
        let december = days_from_civil(2026, 12, 31) * MS_PER_DAY;
        assert_eq!(
            civil_from_days(Period::Monthly.ends_at_ms(december).unwrap() / MS_PER_DAY),
            (2027, 1, 1)
        );
        assert_eq!(Period::Total.ends_at_ms(NOW), None);
    }

    #[test]
    fn windows_change_exactly_at_the_boundary() {
        let midnight = Period::Daily.ends_at_ms(NOW).unwrap();
        assert_eq!(
            Period::Daily.window(midnight - 1) + 1,
            Period::Daily.window(midnight)
        );
        let month_end = Period::Monthly.ends_at_ms(NOW).unwrap();
        assert_ne!(
            Period::Monthly.window(month_end - 1),
            Period::Monthly.window(month_end)
        );
        assert_eq!(
            Period::Monthly.window(month_end - MS_PER_DAY),
            Period::Monthly.window(NOW)
        );
        assert_eq!(Period::Total.window(NOW), Period::Total.window(0));
        assert_eq!(minute_window(NOW + 59_999), minute_window(NOW));
        assert_eq!(seconds_to_next_minute(NOW), 60);
        assert_eq!(seconds_to_next_minute(NOW + 59_001), 1);
        assert_eq!(seconds_until(5, 5), 1);
    }

    #[test]
    fn any_clock_value_is_safe_up_to_u64_max() {
        // A host clock (or a test clock header) near u64::MAX ms must neither overflow nor
        // panic; periods then end at u64::MAX.
        for now in [
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - MS_PER_DAY,
            u64::MAX / 2,
            0,
        ] {
            for p in [Period::Daily, Period::Monthly, Period::Total] {
                let _ = p.window(now);
                let _ = p.label(now);
                if let Some(end) = p.ends_at_ms(now) {
                    assert!(end >= now, "{p:?} ends before {now}");
                }
            }
            let _ = seconds_to_next_minute(now);
            let _ = civil_from_days(now / MS_PER_DAY);
        }
        assert_eq!(Period::Daily.ends_at_ms(u64::MAX), Some(u64::MAX));
        assert_eq!(Period::Monthly.ends_at_ms(u64::MAX), Some(u64::MAX));
        assert!(seconds_to_next_minute(u64::MAX) >= 1);
    }
}
