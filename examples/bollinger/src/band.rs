//! A rolling Bollinger band in exact integer arithmetic, shared by the strategy and the alerts.
//!
//! The band of the last `window` closes is their mean ± `k` population standard deviations.
//! Sums run on the closes' raw 10^-8 units in `i128` (no rounding until the end); the mean is
//! rounded half away from zero, the standard deviation is the floor of an integer square root,
//! and `k · sd` is `Fixed::mul`. No float enters it, so every process computes the same band.
//!
//! The band a bar is judged against is the band of the closes *before* it: a close is compared
//! with where the market had been, then joins the window.

use horizon_core::Fixed;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The most closes a window may hold (keeps `n · Σc²` far inside `i128`).
pub const MAX_WINDOW: u32 = 10_000;

/// Where a close stands against a band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Below,
    Inside,
    Above,
}

/// A band: its lower edge, mean and upper edge, and the half-width `k · sd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Band {
    pub lower: Fixed,
    pub mean: Fixed,
    pub upper: Fixed,
    pub half_width: Fixed,
}

impl Band {
    /// Below the lower edge, above the upper one, or inside (a close exactly on an edge is
    /// inside).
    pub fn position(&self, close: Fixed) -> Position {
        if close < self.lower {
            Position::Below
        } else if close > self.upper {
            Position::Above
        } else {
            Position::Inside
        }
    }

    /// How far the close is from the mean, in half-widths (1 is on an edge); `None` for a band
    /// of no width.
    pub fn deviation(&self, close: Fixed) -> Option<Fixed> {
        (close - self.mean).abs().div(self.half_width)
    }
}

/// The last `window` closes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingBand {
    window: u32,
    k: Fixed,
    closes: VecDeque<Fixed>,
}

impl RollingBand {
    /// `window` ≥ 2 and `k` > 0 are the callers' to check (they name their own parameters).
    pub fn new(window: u32, k: Fixed) -> RollingBand {
        RollingBand {
            window,
            k,
            closes: VecDeque::with_capacity(window as usize + 1),
        }
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    pub fn k(&self) -> Fixed {
        self.k
    }

    pub fn len(&self) -> usize {
        self.closes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.closes.is_empty()
    }

    /// Whether the window holds `window` closes.
    pub fn is_full(&self) -> bool {
        self.closes.len() == self.window as usize
    }

    /// The band of the closes held; `None` until the window is full.
    pub fn band(&self) -> Option<Band> {
        if !self.is_full() {
            return None;
        }
        let n = self.closes.len() as i128;
        let (mut sum, mut squares) = (0i128, 0i128);
        for c in &self.closes {
            let u = c.units() as i128;
            sum += u;
            squares += u * u;
        }
        // n² · variance = n · Σc² − (Σc)², exactly; variance in units² is its floor over n².
        let spread = (n * squares - sum * sum).max(0);
        let sd = isqrt((spread / (n * n)) as u128);
        let mean = Fixed::from_units(div_round(sum, n) as i64);
        let half_width = self.k.mul(Fixed::from_units(sd as i64));
        Some(Band {
            lower: mean - half_width,
            mean,
            upper: mean + half_width,
            half_width,
        })
    }

    /// Adds a close, dropping the oldest once the window is full.
    pub fn push(&mut self, close: Fixed) {
        self.closes.push_back(close);
        if self.closes.len() > self.window as usize {
            self.closes.pop_front();
        }
    }
}

/// Integer division rounding half away from zero.
fn div_round(num: i128, den: i128) -> i128 {
    let (q, r) = (num / den, num % den);
    if 2 * r.abs() >= den.abs() {
        q + if (num < 0) == (den < 0) { 1 } else { -1 }
    } else {
        q
    }
}

/// The floor of the square root, by Newton's method on integers (no float estimate).
pub fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    // A power of two at or above the root, then Newton's iteration down to the floor.
    let mut x = 1u128 << (128 - n.leading_zeros()).div_ceil(2);
    loop {
        let y = (x + n / x) / 2;
        if y >= x {
            return x;
        }
        x = y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isqrt_is_the_floor_root() {
        for n in 0..10_000u128 {
            let r = isqrt(n);
            assert!(r * r <= n && (r + 1) * (r + 1) > n, "{n}: {r}");
        }
        let big = u128::from(u64::MAX);
        assert_eq!(isqrt(big * big), big);
        assert_eq!(isqrt(big * big - 1), big - 1);
    }
}
