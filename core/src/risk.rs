//! The risk monitor: watches prices and the portfolio and reports threshold crossings.
//!
//! Measures: drawdown of portfolio value from its peak, the largest single-asset weight
//! (concentration), realised volatility of bar returns over a window, and the bar-to-bar price
//! move (gap). A measure crosses once when it reaches its threshold (ENTERED) and clears once it
//! falls below threshold × (1 − hysteresis) (CLEARED), so a value hovering at the threshold does
//! not flap. Pure: the caller feeds bars and portfolio valuations in event order.

use crate::event::{Crossing, RiskCrossing, RiskKind};
use crate::fixed::Fixed;
use crate::scenario::RiskConfig;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RiskMonitor {
    portfolio_id: String,
    config: RiskConfig,
    active: BTreeSet<(RiskKind, String)>,
    peak_value: Fixed,
    prev_close: BTreeMap<String, Fixed>,
    returns: BTreeMap<String, VecDeque<i64>>,
}

impl RiskMonitor {
    pub fn new(portfolio_id: &str, config: RiskConfig) -> RiskMonitor {
        RiskMonitor {
            portfolio_id: portfolio_id.to_string(),
            config,
            active: BTreeSet::new(),
            peak_value: Fixed::ZERO,
            prev_close: BTreeMap::new(),
            returns: BTreeMap::new(),
        }
    }

    pub fn threshold(&self, kind: RiskKind) -> Fixed {
        match kind {
            RiskKind::Drawdown => self.config.drawdown,
            RiskKind::Concentration => self.config.concentration,
            RiskKind::VolatilitySpike => self.config.volatility,
            RiskKind::PriceGap => self.config.gap,
        }
    }

    /// A closed bar of `symbol`: updates the return window and checks volatility and gap.
    pub fn on_bar(&mut self, symbol: &str, close: Fixed) -> Vec<RiskCrossing> {
        let mut out = Vec::new();
        if let Some(prev) = self.prev_close.insert(symbol.to_string(), close) {
            let ret = (close - prev).div(prev).unwrap_or(Fixed::ZERO);
            let window = self.returns.entry(symbol.to_string()).or_default();
            window.push_back(ret.units());
            if window.len() > self.config.volatility_window as usize {
                window.pop_front();
            }
            if window.len() == self.config.volatility_window as usize {
                let vol = stdev(window);
                out.extend(self.check(RiskKind::VolatilitySpike, symbol, vol));
            }
            out.extend(self.check(RiskKind::PriceGap, symbol, ret.abs()));
        }
        out
    }

    /// A valuation of the portfolio: checks drawdown from peak and concentration.
    pub fn on_valuation(&mut self, value: Fixed, weights: &BTreeMap<String, Fixed>) -> Vec<RiskCrossing> {
        let mut out = Vec::new();
        self.peak_value = self.peak_value.max(value);
        let drawdown = self.drawdown(value);
        out.extend(self.check(RiskKind::Drawdown, "", drawdown));
        // The heaviest asset; ties broken by symbol order.
        let mut heaviest: Option<(&String, Fixed)> = None;
        for (s, w) in weights {
            if heaviest.is_none_or(|(_, hw)| *w > hw) {
                heaviest = Some((s, *w));
            }
        }
        for (s, w) in weights {
            let key = (RiskKind::Concentration, s.clone());
            let is_heaviest = heaviest.is_some_and(|(hs, _)| hs == s);
            if is_heaviest || self.active.contains(&key) {
                let s = s.clone();
                out.extend(self.check(RiskKind::Concentration, &s, *w));
            }
        }
        out
    }

    pub fn drawdown(&self, value: Fixed) -> Fixed {
        if self.peak_value.is_positive() {
            (self.peak_value - value)
                .div(self.peak_value)
                .unwrap_or(Fixed::ZERO)
                .max(Fixed::ZERO)
        } else {
            Fixed::ZERO
        }
    }

    pub fn peak_value(&self) -> Fixed {
        self.peak_value
    }

    pub fn is_active(&self, kind: RiskKind, symbol: &str) -> bool {
        self.active.contains(&(kind, symbol.to_string()))
    }

    /// While a drawdown or a volatility spike is active the portfolio holds reduced exposure.
    pub fn derisk_active(&self) -> bool {
        self.active
            .iter()
            .any(|(k, _)| matches!(k, RiskKind::Drawdown | RiskKind::VolatilitySpike))
    }

    pub fn active(&self) -> impl Iterator<Item = &(RiskKind, String)> {
        self.active.iter()
    }

    fn check(&mut self, kind: RiskKind, symbol: &str, value: Fixed) -> Option<RiskCrossing> {
        let threshold = self.threshold(kind);
        let key = (kind, symbol.to_string());
        let crossing = if self.active.contains(&key) {
            let clear_below = threshold - threshold.mul(self.config.hysteresis);
            if value < clear_below {
                self.active.remove(&key);
                Crossing::Cleared
            } else {
                return None;
            }
        } else if value >= threshold && threshold.is_positive() {
            self.active.insert(key);
            Crossing::Entered
        } else {
            return None;
        };
        Some(RiskCrossing {
            portfolio_id: self.portfolio_id.clone(),
            kind,
            symbol: symbol.to_string(),
            crossing,
            value,
            threshold,
        })
    }
}

/// Sample standard deviation of returns given in 10^-8 units, computed in i128 so the squares
/// keep full precision; the result is in 10^-8 units.
fn stdev(window: &VecDeque<i64>) -> Fixed {
    let n = window.len() as i128;
    if n < 2 {
        return Fixed::ZERO;
    }
    let sum: i128 = window.iter().map(|&r| r as i128).sum();
    // Work at n× scale to keep the mean exact: d_i = n*r_i - sum.
    let ss: i128 = window
        .iter()
        .map(|&r| {
            let d = n * r as i128 - sum;
            d * d
        })
        .sum();
    let var = ss / (n * n * (n - 1));
    Fixed::from_units(isqrt_i128(var) as i64)
}

fn isqrt_i128(v: i128) -> i128 {
    if v <= 0 {
        return 0;
    }
    let mut x = libm::sqrt(v as f64) as i128;
    while x * x > v {
        x -= 1;
    }
    while (x + 1) * (x + 1) <= v {
        x += 1;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx(s: &str) -> Fixed {
        s.parse().unwrap()
    }

    fn monitor() -> RiskMonitor {
        RiskMonitor::new(
            "p",
            RiskConfig {
                drawdown: fx("0.1"),
                concentration: fx("0.5"),
                volatility: fx("0.02"),
                volatility_window: 3,
                gap: fx("0.05"),
                hysteresis: fx("0.5"),
                derisk_to: fx("0.25"),
            },
        )
    }

    #[test]
    fn drawdown_crosses_once_and_clears_only_below_the_hysteresis_band() {
        let mut m = monitor();
        let w = BTreeMap::new();
        assert!(m.on_valuation(fx("100"), &w).is_empty());
        let entered = m.on_valuation(fx("89"), &w);
        assert_eq!(entered.len(), 1);
        assert_eq!(
            (entered[0].kind, entered[0].crossing, entered[0].value),
            (RiskKind::Drawdown, Crossing::Entered, fx("0.11"))
        );
        assert!(m.on_valuation(fx("88"), &w).is_empty(), "no second event while still crossed");
        assert!(
            m.on_valuation(fx("94"), &w).is_empty(),
            "6% is inside the hysteresis band (clears below 5%)"
        );
        assert!(m.derisk_active());
        let cleared = m.on_valuation(fx("96"), &w);
        assert_eq!(cleared[0].crossing, Crossing::Cleared);
        assert!(!m.derisk_active());
    }

    #[test]
    fn a_large_bar_move_is_a_gap_and_sustained_swings_are_a_volatility_spike() {
        let mut m = monitor();
        assert!(m.on_bar("X", fx("100")).is_empty());
        let gap = m.on_bar("X", fx("110"));
        assert_eq!((gap[0].kind, gap[0].crossing), (RiskKind::PriceGap, Crossing::Entered));
        m.on_bar("X", fx("100"));
        let spike = m.on_bar("X", fx("110"));
        assert!(
            spike
                .iter()
                .any(|c| c.kind == RiskKind::VolatilitySpike && c.crossing == Crossing::Entered),
            "{spike:?}"
        );
    }

    #[test]
    fn concentration_watches_the_heaviest_asset() {
        let mut m = monitor();
        let w: BTreeMap<String, Fixed> = [("A".to_string(), fx("0.6")), ("B".to_string(), fx("0.2"))].into_iter().collect();
        let out = m.on_valuation(fx("100"), &w);
        assert_eq!((out[0].kind, out[0].symbol.as_str()), (RiskKind::Concentration, "A"));
    }

    #[test]
    fn stdev_is_exact_for_a_simple_series() {
        // Returns 0.01, 0.03 -> mean 0.02, sample sd = 0.01414213...
        let w: VecDeque<i64> = [1_000_000, 3_000_000].into_iter().collect();
        assert_eq!(stdev(&w), fx("0.01414213"));
    }
}
