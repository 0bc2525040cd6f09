//! Wall-clock helpers: unix time and the UTC calendar stamps used in ids, history
//! directories and log lines. No time zone database: everything here is UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Milliseconds since the epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// `("YYYYMMDD", "HHMMSS")` for a unix time, in UTC.
pub fn utc_stamp(secs: u64) -> (String, String) {
    let (y, m, d, hh, mm, ss) = civil(secs);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{hh:02}{mm:02}{ss:02}"),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a unix time.
pub fn iso8601(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a unix time in milliseconds.
pub fn iso8601_ms(ms: u64) -> String {
    let (y, m, d, hh, mm, ss) = civil(ms / 1000);
    let frac = ms % 1000;
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:03}Z")
}

/// Converts unix seconds to the proleptic Gregorian calendar (Howard Hinnant's
/// days-from-civil inverse), which is exact for every u64 second we can meet.
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let table = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_796_398_200, "2026-12-04T15:30:00Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ];
        for (secs, want) in table {
            assert_eq!(iso8601(secs), want, "{secs}");
        }
        assert_eq!(
            utc_stamp(1_796_398_200),
            ("20261204".to_string(), "153000".to_string())
        );
        assert_eq!(iso8601_ms(1_796_398_200_123), "2026-12-04T15:30:00.123Z");
    }
}
