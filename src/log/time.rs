//! Wall-clock time in the forms the logs print, in the machine's local time zone as
//! gunicorn (through Python's `time.strftime`) prints it.

use std::time::{SystemTime, UNIX_EPOCH};

/// A moment broken down in local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub year: i32,
    /// 1..=12
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// Microseconds into the second.
    pub micros: u32,
    /// East of UTC, in seconds.
    pub offset: i32,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl LocalTime {
    pub fn now() -> LocalTime {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        LocalTime::at(since.as_secs() as i64, since.subsec_micros())
    }

    /// `secs` since the epoch, broken down by the C library's `localtime_r` (which reads
    /// TZ and /etc/localtime as every other program here does).
    pub fn at(secs: i64, micros: u32) -> LocalTime {
        // SAFETY: `tm` is plain data, all zeroes is a valid value; `localtime_r` is the
        // thread-safe form, writing only the struct it is given, and `t` lives across the
        // call.
        let (tm, ok) = unsafe {
            let t: libc::time_t = secs as libc::time_t;
            let mut tm: libc::tm = std::mem::zeroed();
            let ok = !libc::localtime_r(&t, &mut tm).is_null();
            (tm, ok)
        };
        if !ok {
            return LocalTime::utc(secs, micros);
        }
        LocalTime {
            year: tm.tm_year + 1900,
            month: (tm.tm_mon + 1) as u32,
            day: tm.tm_mday as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
            micros,
            offset: tm.tm_gmtoff as i32,
        }
    }

    /// The same moment in UTC, computed without the C library (civil-from-days).
    fn utc(secs: i64, micros: u32) -> LocalTime {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        LocalTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            micros,
            offset: 0,
        }
    }

    /// `+0100`, `-0500`: strftime's `%z`.
    fn zone(&self, colon: bool) -> String {
        let sign = if self.offset < 0 { '-' } else { '+' };
        let off = self.offset.unsigned_abs() / 60;
        if colon {
            format!("{sign}{:02}:{:02}", off / 60, off % 60)
        } else {
            format!("{sign}{:02}{:02}", off / 60, off % 60)
        }
    }

    /// The Common Log Format's `[04/Dec/2026:22:38:57 +0000]`, gunicorn's `%(t)s`.
    pub fn clf(&self) -> String {
        format!(
            "[{:02}/{}/{}:{:02}:{:02}:{:02} {}]",
            self.day,
            MONTHS[(self.month as usize).clamp(1, 12) - 1],
            self.year,
            self.hour,
            self.minute,
            self.second,
            self.zone(false)
        )
    }

    /// `[2026-12-04 22:38:57 +0000]`, the time gunicorn's error log starts its lines with.
    pub fn error_log(&self) -> String {
        format!(
            "[{}-{:02}-{:02} {:02}:{:02}:{:02} {}]",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.zone(false)
        )
    }

    /// ISO 8601 with milliseconds: `2026-12-04T22:38:57.123+00:00`.
    pub fn iso(&self) -> String {
        format!(
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{}",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.micros / 1000,
            self.zone(true)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_breakdown_and_forms() {
        // 2026-12-04 22:38:57 UTC
        let t = LocalTime::utc(1_796_423_937, 123_456);
        assert_eq!((t.year, t.month, t.day), (2026, 12, 4));
        assert_eq!((t.hour, t.minute, t.second), (22, 38, 57));
        assert_eq!(t.clf(), "[04/Dec/2026:22:38:57 +0000]");
        assert_eq!(t.error_log(), "[2026-12-04 22:38:57 +0000]");
        assert_eq!(t.iso(), "2026-12-04T22:38:57.123+00:00");
        let leap = LocalTime::utc(951_782_400, 0); // 2000-02-29
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let west = LocalTime {
            offset: -(5 * 3600 + 30 * 60),
            ..t
        };
        assert_eq!(west.clf(), "[04/Dec/2026:22:38:57 -0530]");
    }
}
