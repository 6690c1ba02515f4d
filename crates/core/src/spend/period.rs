//! The periods key and team budgets are counted in, in UTC like the
//! accounts' budgets: a calendar day, a week from Monday and a calendar
//! month. Each has a number (the key its sums are kept under) and an end
//! (when a spent budget renews, which `retry-after` says).

const DAY_MS: u64 = 86_400_000;

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    /// Its name in keys, reports and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// The number of the period `now_ms` falls in.
    pub fn index(self, now_ms: u64) -> u64 {
        let day = now_ms / DAY_MS;
        match self {
            Self::Day => day,
            // 1970-01-01 was a Thursday: Monday 1970-01-05 begins week 1.
            Self::Week => (day + 3) / 7,
            Self::Month => {
                let (year, month, _) = civil(day);
                year * 12 + (month - 1)
            }
        }
    }

    /// When the period `now_ms` falls in ends, in ms.
    pub fn end_ms(self, now_ms: u64) -> u64 {
        let index = self.index(now_ms);
        match self {
            Self::Day => (index + 1) * DAY_MS,
            Self::Week => ((index + 1) * 7 - 3) * DAY_MS,
            Self::Month => {
                let next = index + 1;
                days_from_civil(next / 12, next % 12 + 1, 1) * DAY_MS
            }
        }
    }
}

/// The (year, month, day) of a day number since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
pub fn civil(day: u64) -> (u64, u64, u64) {
    let z = day + 719_468;
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

/// The day number of a date on or after 1970-01-01 (`days_from_civil`).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A day number as `YYYY-MM-DD`.
pub fn date(day: u64) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day number of a `YYYY-MM-DD` date on or after 1970-01-01.
pub fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.splitn(3, '-');
    let year: u64 = parts.next()?.parse().ok()?;
    let month: u64 = parts.next()?.parse().ok()?;
    let day: u64 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // 2026-02-30 is not a date: it does not come back the same.
    (civil(days) == (year, month, day)).then_some(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_go_both_ways() {
        assert_eq!(date(0), "1970-01-01");
        let day = parse_date("2026-12-06").unwrap();
        assert_eq!(date(day), "2026-12-06");
        assert_eq!(
            parse_date("2024-02-29").map(date).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(parse_date("2026-02-29"), None);
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn each_period_ends_at_its_next_utc_start() {
        // Sunday 2026-12-06 12:00 UTC.
        let now = parse_date("2026-12-06").unwrap() * DAY_MS + DAY_MS / 2;
        assert_eq!(
            Period::Day.end_ms(now),
            parse_date("2026-12-07").unwrap() * DAY_MS
        );
        // The week ends at Monday 00:00.
        assert_eq!(
            Period::Week.end_ms(now),
            parse_date("2026-12-07").unwrap() * DAY_MS
        );
        assert_eq!(
            Period::Month.end_ms(now),
            parse_date("2027-01-01").unwrap() * DAY_MS
        );
        let feb = parse_date("2028-02-29").unwrap() * DAY_MS;
        assert_eq!(
            Period::Month.end_ms(feb),
            parse_date("2028-03-01").unwrap() * DAY_MS
        );
        assert_ne!(Period::Month.index(feb), Period::Month.index(feb + DAY_MS));
    }
}
