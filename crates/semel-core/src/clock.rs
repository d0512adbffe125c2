//! The Brussels calendar day. Authorisations are valid from and until
//! Belgian calendar days, so "today" is the day in Europe/Brussels, not in
//! UTC: at 23:30 UTC on 31 December it is already 1 January in Brussels.

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, Weekday};

/// The calendar day in Brussels at instant `now`.
///
/// Belgium follows the EU rule: UTC+2 from 01:00 UTC on the last Sunday of
/// March to 01:00 UTC on the last Sunday of October, UTC+1 otherwise. The
/// rule is computed here rather than read from a time-zone database so the
/// result never depends on the machine's configuration.
pub fn brussels_today(now: OffsetDateTime) -> Date {
    let (pdt, offset) = brussels_offset(now);
    (pdt + Duration::hours(offset)).date()
}

/// How long from `now` until the next midnight in Brussels (when daily
/// quotas start again). Clocks change at 01:00 UTC, after midnight in
/// Brussels, so the offset at that midnight is the one in force now.
pub fn until_brussels_midnight(now: OffsetDateTime) -> std::time::Duration {
    let (pdt, offset) = brussels_offset(now);
    let local = pdt + Duration::hours(offset);
    let next = local.date().next_day().unwrap_or(Date::MAX).midnight();
    (next - local).unsigned_abs()
}

/// `now` in UTC, and the Brussels offset from UTC in hours.
fn brussels_offset(now: OffsetDateTime) -> (PrimitiveDateTime, i64) {
    let utc = now.to_offset(time::UtcOffset::UTC);
    let year = utc.year();
    let start = last_sunday_1am_utc(year, Month::March);
    let end = last_sunday_1am_utc(year, Month::October);
    let pdt = PrimitiveDateTime::new(utc.date(), utc.time());
    let offset = if pdt >= start && pdt < end { 2 } else { 1 };
    (pdt, offset)
}

fn last_sunday_1am_utc(year: i32, month: Month) -> PrimitiveDateTime {
    // Both months have 31 days.
    let mut day = Date::from_calendar_date(year, month, 31).unwrap_or(Date::MIN);
    while day.weekday() != Weekday::Sunday {
        day = day.previous_day().unwrap_or(Date::MIN);
    }
    PrimitiveDateTime::new(day, Time::from_hms(1, 0, 0).unwrap_or(Time::MIDNIGHT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn brussels_day_follows_cet_and_cest() {
        let cases = [
            (datetime!(2025-12-31 22:59 UTC), date!(2025 - 12 - 31)),
            (datetime!(2025-12-31 23:00 UTC), date!(2026 - 01 - 01)),
            (datetime!(2026-07-14 21:59 UTC), date!(2026 - 07 - 14)),
            (datetime!(2026-07-14 22:00 UTC), date!(2026 - 07 - 15)),
            // Last Sunday of March 2026 is the 29th: CEST from 01:00 UTC.
            (datetime!(2026-03-28 23:30 UTC), date!(2026 - 03 - 29)),
            (datetime!(2026-03-29 22:30 UTC), date!(2026 - 03 - 30)),
            // Last Sunday of October 2026 is the 25th: CET from 01:00 UTC.
            (datetime!(2026-10-24 22:30 UTC), date!(2026 - 10 - 25)),
            (datetime!(2026-10-25 22:30 UTC), date!(2026 - 10 - 25)),
            (datetime!(2026-10-25 23:00 UTC), date!(2026 - 10 - 26)),
        ];
        for (now, want) in cases {
            assert_eq!(brussels_today(now), want, "{now}");
        }
    }

    #[test]
    fn quotas_start_again_at_midnight_in_brussels() {
        let minutes = |now| until_brussels_midnight(now).as_secs() / 60;
        assert_eq!(minutes(datetime!(2026-07-14 21:30 UTC)), 30);
        assert_eq!(minutes(datetime!(2026-12-14 22:30 UTC)), 30);
        assert_eq!(minutes(datetime!(2026-12-14 23:00 UTC)), 24 * 60);
    }
}
