//! Field parsers shared by the readers. Each returns a `FieldError` naming the field, so a bad
//! line reads `file:line: field `price`: `abc` is not a decimal number`.

use super::{FieldError, Problem};
use horizon_core::event::{Bar, Side};
use horizon_core::fixed::FixedError;
use horizon_core::{Fixed, Timestamp};

/// Most columns a row is split into; a longer row still counts all its columns.
pub const MAX_COLUMNS: usize = 16;

/// Splits a CSV line without quoting (none of the supported formats quotes) into `out`;
/// returns the number of columns (which may exceed `MAX_COLUMNS`).
pub fn split<'a>(line: &'a str, out: &mut [&'a str; MAX_COLUMNS]) -> usize {
    let mut n = 0;
    for field in line.split(',') {
        if n < MAX_COLUMNS {
            out[n] = field;
        }
        n += 1;
    }
    n
}

/// Checks the column count: `min..=max`.
pub fn columns(n: usize, min: usize, max: usize) -> Result<(), FieldError> {
    if n < min || n > max {
        let expected = if min == max { min.to_string() } else { format!("{min} to {max}") };
        return Err(FieldError::line(Problem::Columns { expected, got: n }));
    }
    Ok(())
}

fn decimal(field: &'static str, text: &str) -> Result<Fixed, FieldError> {
    text.parse::<Fixed>().map_err(|e| {
        FieldError::at(
            field,
            match e {
                FixedError::Syntax(v) => Problem::NotDecimal(v),
                FixedError::Precision(v) => Problem::TooPrecise(v),
                FixedError::Range(v) => Problem::OutOfRange(v),
            },
        )
    })
}

/// A decimal greater than zero (prices, traded quantities).
pub fn positive(field: &'static str, text: &str) -> Result<Fixed, FieldError> {
    let v = decimal(field, text)?;
    if !v.is_positive() {
        return Err(FieldError::at(field, Problem::NotPositive(text.to_string())));
    }
    Ok(v)
}

/// A decimal of zero or more (volumes).
pub fn non_negative(field: &'static str, text: &str) -> Result<Fixed, FieldError> {
    let v = decimal(field, text)?;
    if v.is_negative() {
        return Err(FieldError::at(field, Problem::Negative(text.to_string())));
    }
    Ok(v)
}

/// A whole number of zero or more.
pub fn whole(field: &'static str, text: &str) -> Result<i64, FieldError> {
    let b = text.as_bytes();
    if b.first() == Some(&b'-') && b.len() > 1 && b[1..].iter().all(u8::is_ascii_digit) {
        return Err(FieldError::at(field, Problem::Negative(text.to_string())));
    }
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Err(FieldError::at(field, Problem::NotInteger(text.to_string())));
    }
    text.parse::<i64>()
        .map_err(|_| FieldError::at(field, Problem::OutOfRange(text.to_string())))
}

/// Non-empty text (ids, symbols).
pub fn text<'a>(field: &'static str, text: &'a str) -> Result<&'a str, FieldError> {
    if text.is_empty() {
        return Err(FieldError::at(field, Problem::Empty));
    }
    Ok(text)
}

/// Epoch time whose unit is told by its magnitude: below 10^11 seconds (until year 5138),
/// below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds. Binance's spot data
/// switched from milliseconds to microseconds in 2025; both read the same way.
pub fn epoch(field: &'static str, text: &str) -> Result<Timestamp, FieldError> {
    let v = whole(field, text)?;
    Ok(epoch_units(v))
}

/// The unit of an epoch count by its magnitude (see `epoch`): nanoseconds per unit.
pub fn epoch_unit_nanos(v: i64) -> i64 {
    if v < 100_000_000_000 {
        1_000_000_000
    } else if v < 100_000_000_000_000 {
        1_000_000
    } else if v < 100_000_000_000_000_000 {
        1_000
    } else {
        1
    }
}

fn epoch_units(v: i64) -> Timestamp {
    Timestamp::from_nanos(v.saturating_mul(epoch_unit_nanos(v)))
}

/// ISO 8601 / RFC 3339 UTC text (`2021-12-31 23:01:00.000000`, `2022-01-01T00:00:00Z`), or epoch
/// seconds with a fraction (`1640995200.5`), or an epoch count of s, ms, µs or ns (see `epoch`).
pub fn time(field: &'static str, text: &str) -> Result<Timestamp, FieldError> {
    let bad = || FieldError::at(field, Problem::NotTimestamp(text.to_string()));
    if text.contains('-') && !text.starts_with('-') {
        return Timestamp::parse_rfc3339(text).ok_or_else(bad);
    }
    if let Some((secs, frac)) = text.split_once('.') {
        let s = whole(field, secs).map_err(|_| bad())?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let nanos: i64 = frac.parse::<i64>().map_err(|_| bad())? * 10i64.pow(9 - frac.len() as u32);
        return s
            .checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(nanos))
            .map(Timestamp::from_nanos)
            .ok_or_else(|| FieldError::at(field, Problem::OutOfRange(text.to_string())));
    }
    match whole(field, text) {
        Ok(v) => Ok(epoch_units(v)),
        Err(e) if matches!(e.problem, Problem::Negative(_)) => Err(e),
        Err(_) => Err(bad()),
    }
}

/// Binance's `is_buyer_maker`: true means the seller was the aggressor.
pub fn buyer_maker_side(field: &'static str, text: &str) -> Result<Side, FieldError> {
    match text {
        "true" | "True" | "TRUE" => Ok(Side::Sell),
        "false" | "False" | "FALSE" => Ok(Side::Buy),
        _ => Err(FieldError::at(field, Problem::NotBool(text.to_string()))),
    }
}

/// An aggressor side written as `buy` / `sell`.
pub fn side(field: &'static str, text: &str) -> Result<Side, FieldError> {
    match text {
        "buy" | "Buy" | "BUY" | "b" => Ok(Side::Buy),
        "sell" | "Sell" | "SELL" | "s" => Ok(Side::Sell),
        _ => Err(FieldError::at(field, Problem::NotSide(text.to_string()))),
    }
}

/// Checks a recorded bar's prices against each other (its high is the highest, its low the
/// lowest) so an inconsistent row is reported with its line, not later by the market service.
pub fn check_bar(b: &Bar) -> Result<(), FieldError> {
    if b.high < b.open.max(b.close).max(b.low) {
        return Err(FieldError::at(
            "high",
            Problem::Inconsistent(format!("{} is below open {}, close {} or low {}", b.high, b.open, b.close, b.low)),
        ));
    }
    if b.low > b.open.min(b.close) {
        return Err(FieldError::at(
            "low",
            Problem::Inconsistent(format!("{} is above open {} or close {}", b.low, b.open, b.close)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_units_follow_the_magnitude() {
        let t = Timestamp::from_millis(1_640_995_200_000);
        assert_eq!(time("t", "1640995200").unwrap(), t);
        assert_eq!(time("t", "1640995200000").unwrap(), t);
        assert_eq!(time("t", "1640995200000000").unwrap(), t);
        assert_eq!(time("t", "1640995200000000000").unwrap(), t);
        assert_eq!(time("t", "1640995200.25").unwrap(), t.plus_ms(250));
        assert_eq!(time("t", "2022-01-01 00:00:00.000000").unwrap(), t);
        assert_eq!(time("t", "2022-01-01T00:00:00Z").unwrap(), t);
        assert_eq!(
            time("t", "yesterday").unwrap_err().problem,
            Problem::NotTimestamp("yesterday".into())
        );
        assert_eq!(time("t", "-5").unwrap_err().problem, Problem::Negative("-5".into()));
    }

    #[test]
    fn numbers_are_exact_or_refused_with_the_field() {
        assert_eq!(positive("price", "9682.19").unwrap(), "9682.19".parse().unwrap());
        let e = positive("price", "1.123456789").unwrap_err();
        assert_eq!((e.field, e.problem), (Some("price"), Problem::TooPrecise("1.123456789".into())));
        assert_eq!(positive("price", "0").unwrap_err().problem, Problem::NotPositive("0".into()));
        assert_eq!(non_negative("volume", "0").unwrap(), Fixed::ZERO);
        assert_eq!(non_negative("volume", "-1").unwrap_err().problem, Problem::Negative("-1".into()));
        assert_eq!(whole("id", "12a").unwrap_err().problem, Problem::NotInteger("12a".into()));
        assert_eq!(
            whole("id", "99999999999999999999").unwrap_err().problem,
            Problem::OutOfRange("99999999999999999999".into())
        );
    }
}
