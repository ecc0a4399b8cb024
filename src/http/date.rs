//! The `Date` response header value (RFC 9110 §5.6.7 IMF-fixdate, e.g.
//! `Sun, 06 Nov 1994 08:49:37 GMT`), rendered at most once per wall-clock
//! second per I/O thread.
//!
//! This module does no I/O and knows no Python; reading the system clock is
//! its only contact with the outside. The calendar arithmetic is our own (no
//! external crate): days since the epoch to a proleptic Gregorian civil date.

#![forbid(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate.
pub const IMF_FIXDATE_LEN: usize = 29;

/// The last second after which an IMF-fixdate still has a four-digit year
/// (9999-12-31T23:59:59Z). Later clocks are rendered as this second.
const MAX_RENDERABLE_SECS: u64 = 253_402_300_799;

/// A cached IMF-fixdate for the current second. One per I/O thread: it is not
/// shared, so `get` needs no lock.
#[derive(Debug, Clone)]
pub struct DateCache {
    /// The Unix second `rendered` shows; `u64::MAX` before the first render.
    secs: u64,
    rendered: [u8; IMF_FIXDATE_LEN],
}

impl DateCache {
    pub fn new() -> Self {
        let mut cache = DateCache {
            secs: u64::MAX,
            rendered: [0; IMF_FIXDATE_LEN],
        };
        cache.get();
        cache
    }

    /// The current date, 29 bytes. Re-renders only when the wall-clock second
    /// changed since the last call.
    pub fn get(&mut self) -> &[u8] {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        if now != self.secs {
            render_imf_fixdate(now, &mut self.rendered);
            self.secs = now;
        }
        &self.rendered
    }
}

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

const WEEKDAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Writes the IMF-fixdate of `unix_secs` (seconds since 1970-01-01T00:00:00Z)
/// into `out`.
pub fn render_imf_fixdate(unix_secs: u64, out: &mut [u8; IMF_FIXDATE_LEN]) {
    let secs = unix_secs.min(MAX_RENDERABLE_SECS);
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4 with Sunday = 0).
    let weekday = ((days + 4) % 7) as usize;

    out[..3].copy_from_slice(WEEKDAYS[weekday]);
    out[3..5].copy_from_slice(b", ");
    write_digits(&mut out[5..7], u64::from(day));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    write_digits(&mut out[12..16], year);
    out[16] = b' ';
    write_digits(&mut out[17..19], second_of_day / 3600);
    out[19] = b':';
    write_digits(&mut out[20..22], second_of_day / 60 % 60);
    out[22] = b':';
    write_digits(&mut out[23..25], second_of_day % 60);
    out[25..].copy_from_slice(b" GMT");
}

/// Writes `value` as exactly `out.len()` decimal digits, zero-padded.
fn write_digits(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic
/// Gregorian calendar. Counts in 400-year eras (146 097 days each) starting on
/// March 1st, so that the leap day is the last day of a year: then the day of
/// the year gives the month with one linear formula.
fn civil_from_days(days_since_epoch: u64) -> (u64, u32, u32) {
    // 719 468 days from 0000-03-01 to 1970-01-01.
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097; // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(secs: u64) -> String {
        let mut out = [0; IMF_FIXDATE_LEN];
        render_imf_fixdate(secs, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn renders_known_dates() {
        // Expected values from Python's datetime.
        assert_eq!(render(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(render(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(render(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(render(951_868_800), "Wed, 01 Mar 2000 00:00:00 GMT");
        assert_eq!(render(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
        // 2100 is not a leap year.
        assert_eq!(render(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(render(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(render(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(render(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn days_round_trip_over_four_centuries() {
        // Every day of a full era maps to a valid, strictly increasing date.
        let mut previous = civil_from_days(0);
        for days in 1..146_097 * 2 {
            let date = civil_from_days(days);
            assert!(date > previous, "day {days}: {date:?} after {previous:?}");
            assert!((1..=12).contains(&date.1) && (1..=31).contains(&date.2));
            previous = date;
        }
    }

    #[test]
    fn cache_gives_a_current_fixdate() {
        let mut cache = DateCache::new();
        let date = cache.get().to_vec();
        assert_eq!(date.len(), IMF_FIXDATE_LEN);
        assert!(date.ends_with(b" GMT"));
        assert_eq!(&date[3..5], b", ");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The cache renders the second it was asked in; allow a tick between.
        assert!(date == render(now).as_bytes() || date == render(now - 1).as_bytes());
    }
}
