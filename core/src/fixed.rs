//! Exact decimal numbers for prices, quantities and money.
//!
//! Every value that is compared, hashed, snapshotted or persisted is a `Fixed`: an `i64` count of
//! 10^-8 units (eight decimals, Bitcoin's satoshi scale). Binary floating point never enters
//! state. Products and quotients go through `i128` and round half away from zero, so results are
//! identical on every machine.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Decimal places carried by every `Fixed`.
pub const SCALE: u32 = 8;
const ONE_UNITS: i64 = 100_000_000;

/// An exact decimal with eight fractional digits.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fixed(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixedError {
    #[error("`{0}` is not a decimal number")]
    Syntax(String),
    #[error("`{0}` has more than 8 decimal places")]
    Precision(String),
    #[error("`{0}` is out of range")]
    Range(String),
}

impl Fixed {
    pub const ZERO: Fixed = Fixed(0);
    pub const ONE: Fixed = Fixed(ONE_UNITS);
    pub const MAX: Fixed = Fixed(i64::MAX);

    /// From a raw count of 10^-8 units.
    pub const fn from_units(units: i64) -> Fixed {
        Fixed(units)
    }

    /// The raw count of 10^-8 units.
    pub const fn units(self) -> i64 {
        self.0
    }

    pub const fn from_int(n: i64) -> Fixed {
        Fixed(n * ONE_UNITS)
    }

    /// `units * 10^-scale`, exactly, or an error if precision or range would be lost.
    pub fn from_scaled(units: i64, scale: u32) -> Result<Fixed, FixedError> {
        let text = || format!("{units}e-{scale}");
        if scale <= SCALE {
            let factor = 10i64.pow(SCALE - scale);
            units.checked_mul(factor).map(Fixed).ok_or_else(|| FixedError::Range(text()))
        } else {
            let divisor = 10i128.checked_pow(scale - SCALE).ok_or_else(|| FixedError::Range(text()))?;
            let wide = units as i128;
            if wide % divisor != 0 {
                return Err(FixedError::Precision(text()));
            }
            Ok(Fixed((wide / divisor) as i64))
        }
    }

    /// A float, rounded to the nearest 10^-8. Only for generated inputs and display, never state.
    pub fn from_f64_lossy(x: f64) -> Fixed {
        Fixed(libm::round(x * ONE_UNITS as f64) as i64)
    }

    pub fn to_f64(self) -> f64 {
        self.0 as f64 / ONE_UNITS as f64
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The magnitude; the one value without a positive counterpart (`i64::MIN` units) gives the
    /// largest value instead of overflowing (a panic in debug builds, a negative in release).
    pub fn abs(self) -> Fixed {
        Fixed(self.0.saturating_abs())
    }

    pub fn signum(self) -> i64 {
        self.0.signum()
    }

    pub fn min(self, other: Fixed) -> Fixed {
        if self <= other {
            self
        } else {
            other
        }
    }

    pub fn max(self, other: Fixed) -> Fixed {
        if self >= other {
            self
        } else {
            other
        }
    }

    pub fn clamp(self, lo: Fixed, hi: Fixed) -> Fixed {
        self.max(lo).min(hi)
    }

    /// `self * rhs`, rounded half away from zero; saturates at the range limits.
    // A named method rather than `Mul`: rounding is part of the contract and should be visible.
    #[allow(clippy::should_implement_trait)]
    pub fn mul(self, rhs: Fixed) -> Fixed {
        Fixed(saturate(div_round(self.0 as i128 * rhs.0 as i128, ONE_UNITS as i128)))
    }

    /// `self / rhs`, rounded half away from zero; `None` when `rhs` is zero.
    #[allow(clippy::should_implement_trait)]
    pub fn div(self, rhs: Fixed) -> Option<Fixed> {
        if rhs.0 == 0 {
            return None;
        }
        Some(Fixed(saturate(div_round(self.0 as i128 * ONE_UNITS as i128, rhs.0 as i128))))
    }

    /// `self * num / den` in one rounding step.
    pub fn mul_div(self, num: Fixed, den: Fixed) -> Option<Fixed> {
        if den.0 == 0 {
            return None;
        }
        Some(Fixed(saturate(div_round(self.0 as i128 * num.0 as i128, den.0 as i128))))
    }

    pub fn mul_int(self, n: i64) -> Fixed {
        Fixed(self.0.saturating_mul(n))
    }

    pub fn div_int(self, n: i64) -> Fixed {
        Fixed(saturate(div_round(self.0 as i128, n as i128)))
    }

    /// Square root, rounded down to 10^-8; zero for negative input.
    pub fn sqrt(self) -> Fixed {
        if self.0 <= 0 {
            return Fixed::ZERO;
        }
        Fixed(isqrt(self.0 as u128 * ONE_UNITS as u128) as i64)
    }

    /// Basis points (1/10,000) of this value.
    pub fn bps(self, bps: i64) -> Fixed {
        Fixed(saturate(div_round(self.0 as i128 * bps as i128, 10_000)))
    }
}

fn saturate(x: i128) -> i64 {
    x.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Integer division rounding half away from zero.
fn div_round(num: i128, den: i128) -> i128 {
    let q = num / den;
    let r = num % den;
    if 2 * r.abs() >= den.abs() {
        q + if (num < 0) == (den < 0) { 1 } else { -1 }
    } else {
        q
    }
}

fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = (libm::sqrt(n as f64)) as u128;
    // Correct the float estimate to the exact floor root.
    while x * x > n {
        x -= 1;
    }
    while (x + 1) * (x + 1) <= n {
        x += 1;
    }
    x
}

impl std::ops::Add for Fixed {
    type Output = Fixed;
    fn add(self, rhs: Fixed) -> Fixed {
        Fixed(self.0.saturating_add(rhs.0))
    }
}

impl std::ops::Sub for Fixed {
    type Output = Fixed;
    fn sub(self, rhs: Fixed) -> Fixed {
        Fixed(self.0.saturating_sub(rhs.0))
    }
}

impl std::ops::Neg for Fixed {
    type Output = Fixed;
    fn neg(self) -> Fixed {
        Fixed(-self.0)
    }
}

impl std::ops::AddAssign for Fixed {
    fn add_assign(&mut self, rhs: Fixed) {
        *self = *self + rhs;
    }
}

impl std::ops::SubAssign for Fixed {
    fn sub_assign(&mut self, rhs: Fixed) {
        *self = *self - rhs;
    }
}

impl std::iter::Sum for Fixed {
    fn sum<I: Iterator<Item = Fixed>>(iter: I) -> Fixed {
        iter.fold(Fixed::ZERO, |a, b| a + b)
    }
}

impl FromStr for Fixed {
    type Err = FixedError;

    /// Parses decimal text exactly (`-12.5`, `0.00000001`, `1e-3` is refused: no exponents).
    fn from_str(s: &str) -> Result<Fixed, FixedError> {
        let t = s.trim();
        let (neg, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int_part, frac_part) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty()) || !digits_ok(int_part) || !digits_ok(frac_part) {
            return Err(FixedError::Syntax(s.to_string()));
        }
        let frac_trimmed = frac_part.trim_end_matches('0');
        if frac_trimmed.len() > SCALE as usize {
            return Err(FixedError::Precision(s.to_string()));
        }
        let mut units: i128 = 0;
        for b in int_part.bytes() {
            units = units * 10 + (b - b'0') as i128;
            if units > i64::MAX as i128 {
                return Err(FixedError::Range(s.to_string()));
            }
        }
        let mut frac: i128 = 0;
        for b in frac_trimmed.bytes() {
            frac = frac * 10 + (b - b'0') as i128;
        }
        frac *= 10i128.pow(SCALE - frac_trimmed.len() as u32);
        let total = units * ONE_UNITS as i128 + frac;
        let total = if neg { -total } else { total };
        if total > i64::MAX as i128 || total < i64::MIN as i128 {
            return Err(FixedError::Range(s.to_string()));
        }
        Ok(Fixed(total as i64))
    }
}

impl fmt::Display for Fixed {
    /// Shortest exact form: `60000.5`, `-0.00000001`, `3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.0 < 0;
        let abs = (self.0 as i128).unsigned_abs();
        let int = abs / ONE_UNITS as u128;
        let frac = abs % ONE_UNITS as u128;
        let sign = if neg { "-" } else { "" };
        if frac == 0 {
            write!(f, "{sign}{int}")
        } else {
            let s = format!("{frac:08}");
            write!(f, "{sign}{int}.{}", s.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// Serialized as decimal text so snapshots and JSON stay exact and readable.
// Binary formats (snapshots) carry the raw units instead.
impl Serialize for Fixed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Fixed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fixed, D::Error> {
        if !d.is_human_readable() {
            return i64::deserialize(d).map(Fixed);
        }
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Fixed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal number as a string (\"60000.5\") or an integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Fixed, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Fixed, E> {
                v.checked_mul(ONE_UNITS).map(Fixed).ok_or_else(|| E::custom("integer out of range"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Fixed, E> {
                i64::try_from(v).map_err(E::custom).and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Fixed, E> {
                Err(E::custom("write decimals as strings (\"0.05\"), not floats, so they stay exact"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::Fixed as F;

    #[test]
    fn abs_never_overflows() {
        assert_eq!(F(-5).abs(), F(5));
        assert_eq!(F(i64::MIN).abs(), F(i64::MAX));
        assert!(F(i64::MIN).abs() > F(0));
    }

    use super::*;

    fn fx(s: &str) -> Fixed {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_exactly() {
        for s in ["0", "1", "-1", "60000.5", "0.00000001", "-0.1", "9653.12"] {
            assert_eq!(fx(s).to_string(), s);
        }
        assert_eq!(fx("1.50000000000").to_string(), "1.5");
        assert_eq!(fx("+2.").to_string(), "2");
    }

    #[test]
    fn rejects_what_it_cannot_represent() {
        assert!(matches!("1.000000001".parse::<Fixed>(), Err(FixedError::Precision(_))));
        assert!(matches!("abc".parse::<Fixed>(), Err(FixedError::Syntax(_))));
        assert!(matches!("1e5".parse::<Fixed>(), Err(FixedError::Syntax(_))));
        assert!(matches!("".parse::<Fixed>(), Err(FixedError::Syntax(_))));
        assert!(matches!("99999999999999".parse::<Fixed>(), Err(FixedError::Range(_))));
    }

    #[test]
    fn arithmetic_rounds_half_away_from_zero() {
        assert_eq!(fx("0.00000001").mul(fx("0.5")), fx("0.00000001"));
        assert_eq!(fx("-0.00000001").mul(fx("0.5")), fx("-0.00000001"));
        assert_eq!(fx("1").div(fx("3")).unwrap(), fx("0.33333333"));
        assert_eq!(fx("2").div(fx("3")).unwrap(), fx("0.66666667"));
        assert_eq!(fx("60000").mul(fx("0.5")), fx("30000"));
        assert_eq!(fx("2").sqrt(), fx("1.41421356"));
        assert_eq!(fx("100").bps(25), fx("0.25"));
        assert!(fx("1").div(Fixed::ZERO).is_none());
    }

    #[test]
    fn scaled_conversion_is_exact_or_refused() {
        assert_eq!(Fixed::from_scaled(12345, 2).unwrap(), fx("123.45"));
        assert_eq!(Fixed::from_scaled(1_000, 11).unwrap(), fx("0.00000001"));
        assert!(Fixed::from_scaled(1_001, 11).is_err());
    }
}
