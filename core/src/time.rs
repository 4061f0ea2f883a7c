//! Event time. The core never reads a clock: every instant comes from an event.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Nanoseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

// Serialized as RFC 3339 text with full nanosecond precision, so JSON and snapshots are readable.
impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.to_rfc3339_nanos())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        if !d.is_human_readable() {
            return i64::deserialize(d).map(Timestamp);
        }
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not an RFC 3339 time")))
    }
}

pub const NANOS_PER_MS: i64 = 1_000_000;
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

impl Timestamp {
    pub const fn from_nanos(n: i64) -> Timestamp {
        Timestamp(n)
    }
    pub const fn from_millis(ms: i64) -> Timestamp {
        Timestamp(ms * NANOS_PER_MS)
    }
    pub const fn from_micros(us: i64) -> Timestamp {
        Timestamp(us * 1_000)
    }
    pub const fn nanos(self) -> i64 {
        self.0
    }
    pub const fn millis(self) -> i64 {
        self.0.div_euclid(NANOS_PER_MS)
    }
    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0 + ms * NANOS_PER_MS)
    }
    /// The start of the `interval_ms` bucket holding this instant.
    pub fn floor_ms(self, interval_ms: i64) -> Timestamp {
        let step = interval_ms * NANOS_PER_MS;
        Timestamp(self.0.div_euclid(step) * step)
    }

    pub fn to_proto(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.0.div_euclid(NANOS_PER_SEC),
            nanos: self.0.rem_euclid(NANOS_PER_SEC) as i32,
        }
    }

    pub fn from_proto(t: &prost_types::Timestamp) -> Option<Timestamp> {
        if !(0..NANOS_PER_SEC as i32).contains(&t.nanos) {
            return None;
        }
        t.seconds
            .checked_mul(NANOS_PER_SEC)
            .and_then(|s| s.checked_add(t.nanos as i64))
            .map(Timestamp)
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2024-03-01T00:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(NANOS_PER_SEC);
        let ms = self.0.rem_euclid(NANOS_PER_SEC) / NANOS_PER_MS;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }

    /// RFC 3339 in UTC with every nanosecond: `2024-03-01T00:00:00.000000001Z`.
    pub fn to_rfc3339_nanos(self) -> String {
        let ms_text = self.to_rfc3339();
        let sub_ms = self.0.rem_euclid(NANOS_PER_MS);
        if sub_ms == 0 {
            ms_text
        } else {
            format!("{}{sub_ms:06}Z", &ms_text[..ms_text.len() - 1])
        }
    }

    /// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.fff…]][Z|+00:00]` or with a space for `T`.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let s = s.trim();
        let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00")).unwrap_or(s);
        let (date, time) = match s.find(['T', ' ']) {
            Some(i) => (&s[..i], &s[i + 1..]),
            None => (s, ""),
        };
        let mut dp = date.split('-');
        let y: i64 = dp.next()?.parse().ok()?;
        let mo: u32 = dp.next()?.parse().ok()?;
        let d: u32 = dp.next()?.parse().ok()?;
        if dp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
            return None;
        }
        let (mut h, mut mi, mut sec, mut nanos) = (0i64, 0i64, 0i64, 0i64);
        if !time.is_empty() {
            let (hms, frac) = match time.split_once('.') {
                Some((a, b)) => (a, b),
                None => (time, ""),
            };
            let mut tp = hms.split(':');
            h = tp.next()?.parse().ok()?;
            mi = tp.next()?.parse().ok()?;
            sec = tp.next().map(|x| x.parse().ok()).unwrap_or(Some(0))?;
            if tp.next().is_some() || h > 23 || mi > 59 || sec > 60 {
                return None;
            }
            if !frac.is_empty() {
                if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                nanos = frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32);
            }
        }
        let days = days_from_civil(y, mo, d);
        Some(Timestamp((days * 86_400 + h * 3600 + mi * 60 + sec) * NANOS_PER_SEC + nanos))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// A duration written as `250ms`, `30s`, `5m`, `1h`, `2d`.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Formats a millisecond duration in the largest whole unit: `60000` -> `1m`.
pub fn format_duration_ms(ms: i64) -> String {
    for (unit, f) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms % f == 0 {
            return format!("{}{unit}", ms / f);
        }
    }
    format!("{ms}ms")
}

// Howard Hinnant's civil calendar algorithms (public domain).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let t = Timestamp::parse_rfc3339("2022-01-21T13:30:05.250Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2022-01-21T13:30:05.250Z");
        let t = Timestamp::parse_rfc3339("2021-12-31 23:01:00.000000").unwrap();
        assert_eq!(t.to_rfc3339(), "2021-12-31T23:01:00.000Z");
        assert_eq!(Timestamp::parse_rfc3339("1970-01-01").unwrap(), Timestamp(0));
        let t = Timestamp(1_582_329_602_123_456_789);
        assert_eq!(t.to_rfc3339_nanos(), "2020-02-22T00:00:02.123456789Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339_nanos()), Some(t));
        assert!(Timestamp::parse_rfc3339("2022-13-01").is_none());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("5 minutes"), None);
        assert_eq!(format_duration_ms(300_000), "5m");
        assert_eq!(format_duration_ms(1_500), "1500ms");
    }
}
