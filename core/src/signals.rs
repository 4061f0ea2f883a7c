//! The signals service: evaluates the strategies on every closed bar of the signal interval and
//! publishes one TRADING_SIGNAL_GENERATED per bar, per portfolio, keyed by portfolio id.
//!
//! One signal per bar (not only when a view changes) makes each symbol's signal series complete:
//! its bar sequence numbers tell the portfolio when a symbol has reached a point in event time, so
//! the portfolio can merge symbols in event order without waiting on wall-clock timeouts.
//! `changed` marks the evaluations whose direction differs from the previous one.

use crate::event::{Bar, Direction, Event, Payload, Signal, StrategyView};
use crate::fixed::Fixed;
use crate::scenario::{BreakoutConfig, EmaCrossoverConfig, Scenario};
use crate::service::{Output, Rejection, Service};
use crate::topics;
use std::collections::{BTreeMap, VecDeque};

pub const NAME: &str = "signals";

#[derive(Clone, Debug)]
pub struct SignalConfig {
    pub portfolio_id: String,
    pub interval_ms: i64,
    pub max_weight: Fixed,
    pub ema: Option<EmaCrossoverConfig>,
    pub breakout: Option<BreakoutConfig>,
}

impl SignalConfig {
    pub fn from_scenario(s: &Scenario) -> SignalConfig {
        SignalConfig {
            portfolio_id: s.portfolio.id.clone(),
            interval_ms: s.signal_interval_ms(),
            max_weight: s.portfolio.max_weight,
            ema: s.strategies.ema_crossover.clone(),
            breakout: s.strategies.breakout.clone(),
        }
    }
}

/// An exponential moving average with `alpha = 2 / (span + 1)`, seeded with the first value
/// (pandas' `ewm(span, adjust=False)`), in exact integer arithmetic.
///
/// The recursion `e += alpha * (x - e)` runs on a state with 10 more decimals than `Fixed`
/// (10^-18 units) and the exact rational alpha; only the output is rounded (half away from
/// zero) to 8 decimals. So the output is the exact EMA correctly rounded: the state's own
/// rounding error stays below `0.5e-18 * (span + 1) / 2`, far under the output's last digit.
/// (Rounding alpha to 8 decimals, or the state at every step, would put the EMA off the exact
/// one by up to 1e-4 on a month of 15-minute BTC bars; `scripts/crosscheck.py` checks this
/// against pandas and a 50-digit decimal recursion.)
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ema {
    /// `span + 1`: alpha is `2 / divisor`.
    divisor: i128,
    state: Option<i128>,
    count: u32,
}

/// The EMA state's extra scale: 10^10 state units per `Fixed` unit.
const EMA_EXTRA: i128 = 10_000_000_000;

/// Integer division rounding half away from zero.
fn div_round_i128(num: i128, den: i128) -> i128 {
    let q = num / den;
    let r = num % den;
    if 2 * r.abs() >= den.abs() {
        q + if (num < 0) == (den < 0) { 1 } else { -1 }
    } else {
        q
    }
}

impl Ema {
    pub fn new(span: u32) -> Ema {
        Ema {
            divisor: span as i128 + 1,
            state: None,
            count: 0,
        }
    }

    pub fn update(&mut self, x: Fixed) -> Fixed {
        let x = x.units() as i128 * EMA_EXTRA;
        let v = match self.state {
            None => x,
            Some(prev) => prev + div_round_i128(2 * (x - prev), self.divisor),
        };
        self.state = Some(v);
        self.count += 1;
        Self::output(v)
    }

    fn output(state: i128) -> Fixed {
        Fixed::from_units(div_round_i128(state, EMA_EXTRA) as i64)
    }

    pub fn value(&self) -> Option<Fixed> {
        self.state.map(Self::output)
    }

    pub fn count(&self) -> u32 {
        self.count
    }
}

/// Fast EMA above slow EMA is long, below is short; strength grows with the spread.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EmaCrossover {
    config: EmaCrossoverConfig,
    fast: Ema,
    slow: Ema,
}

impl EmaCrossover {
    pub fn new(config: EmaCrossoverConfig) -> EmaCrossover {
        EmaCrossover {
            fast: Ema::new(config.fast),
            slow: Ema::new(config.slow),
            config,
        }
    }

    pub fn on_bar(&mut self, bar: &Bar) -> StrategyView {
        let fast = self.fast.update(bar.close);
        let slow = self.slow.update(bar.close);
        let (direction, strength) = if self.slow.count() < self.config.slow || fast == slow {
            (Direction::Flat, Fixed::ZERO)
        } else {
            let spread = (fast - slow).abs().div(slow).unwrap_or(Fixed::ZERO);
            let strength = spread.div(self.config.full_strength_spread).unwrap_or(Fixed::ONE).min(Fixed::ONE);
            (if fast > slow { Direction::Long } else { Direction::Short }, strength)
        };
        StrategyView {
            strategy: "ema_crossover".into(),
            direction,
            strength,
        }
    }
}

/// A Donchian channel breakout filtered by average true range: a close beyond the previous
/// `lookback` bars' high (low) by `atr_multiple` ATRs goes long (short); the position is held
/// until the close crosses back through the channel's middle.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Breakout {
    config: BreakoutConfig,
    highs: VecDeque<Fixed>,
    lows: VecDeque<Fixed>,
    ranges: VecDeque<Fixed>,
    prev_close: Option<Fixed>,
    direction: Direction,
}

impl Breakout {
    pub fn new(config: BreakoutConfig) -> Breakout {
        Breakout {
            config,
            highs: VecDeque::new(),
            lows: VecDeque::new(),
            ranges: VecDeque::new(),
            prev_close: None,
            direction: Direction::Flat,
        }
    }

    pub fn on_bar(&mut self, bar: &Bar) -> StrategyView {
        let n = self.config.lookback as usize;
        let mut strength = Fixed::ZERO;
        if self.highs.len() == n {
            let upper = self.highs.iter().copied().max().unwrap();
            let lower = self.lows.iter().copied().min().unwrap();
            let atr = self.ranges.iter().copied().sum::<Fixed>().div_int(n as i64);
            let mid = (upper + lower).div_int(2);
            let margin = self.config.atr_multiple.mul(atr);
            if bar.close > upper + margin {
                self.direction = Direction::Long;
            } else if bar.close < lower - margin {
                self.direction = Direction::Short;
            } else if (self.direction == Direction::Long && bar.close < mid) || (self.direction == Direction::Short && bar.close > mid) {
                self.direction = Direction::Flat;
            }
            if self.direction != Direction::Flat {
                let half_width = (upper - lower).div_int(2) + margin;
                strength = (bar.close - mid).abs().div(half_width).unwrap_or(Fixed::ONE).min(Fixed::ONE);
            }
        }
        let true_range = match self.prev_close {
            Some(pc) => (bar.high - bar.low).max((bar.high - pc).abs()).max((bar.low - pc).abs()),
            None => bar.high - bar.low,
        };
        self.highs.push_back(bar.high);
        self.lows.push_back(bar.low);
        self.ranges.push_back(true_range);
        if self.highs.len() > n {
            self.highs.pop_front();
            self.lows.pop_front();
            self.ranges.pop_front();
        }
        self.prev_close = Some(bar.close);
        StrategyView {
            strategy: "breakout".into(),
            direction: self.direction,
            strength,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct SymbolSignals {
    next_seq: u64,
    ema: Option<EmaCrossover>,
    breakout: Option<Breakout>,
    direction: Direction,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct SignalState {
    symbols: BTreeMap<String, SymbolSignals>,
    pub duplicates_dropped: u64,
}

pub struct SignalService {
    pub config: SignalConfig,
}

impl SignalService {
    pub fn new(config: SignalConfig) -> SignalService {
        SignalService { config }
    }

    /// Combines the strategies' views into one direction, strength and long-only target weight.
    pub fn combine(&self, views: &[(Fixed, StrategyView)]) -> (Direction, Fixed, Fixed) {
        let total_weight: Fixed = views.iter().map(|(w, _)| *w).sum();
        let score: Fixed = views
            .iter()
            .map(|(w, v)| {
                let signed = match v.direction {
                    Direction::Long => v.strength,
                    Direction::Short => -v.strength,
                    Direction::Flat => Fixed::ZERO,
                };
                w.mul(signed)
            })
            .sum();
        let score = score.div(total_weight).unwrap_or(Fixed::ZERO);
        let direction = match score.signum() {
            1 => Direction::Long,
            -1 => Direction::Short,
            _ => Direction::Flat,
        };
        let target = self.config.max_weight.mul(score.max(Fixed::ZERO));
        (direction, score.abs(), target)
    }
}

impl Service for SignalService {
    type State = SignalState;

    fn encode_state(&self, state: &Self::State) -> Option<Vec<u8>> {
        crate::snapshot::state_to_bytes(state)
    }

    fn decode_state(&self, bytes: &[u8]) -> Option<Self::State> {
        crate::snapshot::state_from_bytes(bytes)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [crate::bus::Topic] {
        &[topics::BARS]
    }

    fn handle(&self, state: &mut SignalState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Bar(bar) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::BARS)));
        };
        if bar.interval_ms != self.config.interval_ms {
            return Ok(());
        }
        let cfg = &self.config;
        let sym = state.symbols.entry(bar.symbol.clone()).or_insert_with(|| SymbolSignals {
            next_seq: 0,
            ema: cfg.ema.clone().map(EmaCrossover::new),
            breakout: cfg.breakout.clone().map(Breakout::new),
            direction: Direction::Flat,
        });
        if bar.seq < sym.next_seq {
            // Already evaluated (a redelivered or re-published bar): the output exists.
            state.duplicates_dropped += 1;
            return Ok(());
        }
        sym.next_seq = bar.seq + 1;
        let mut views = Vec::with_capacity(2);
        if let (Some(s), Some(c)) = (sym.ema.as_mut(), cfg.ema.as_ref()) {
            views.push((c.weight, s.on_bar(bar)));
        }
        if let (Some(s), Some(c)) = (sym.breakout.as_mut(), cfg.breakout.as_ref()) {
            views.push((c.weight, s.on_bar(bar)));
        }
        let (direction, strength, target_weight) = self.combine(&views);
        let changed = direction != sym.direction;
        sym.direction = direction;
        let signal = Signal {
            portfolio_id: cfg.portfolio_id.clone(),
            symbol: bar.symbol.clone(),
            direction,
            strength,
            target_weight,
            bar: bar.clone(),
            strategies: views.into_iter().map(|(_, v)| v).collect(),
            changed,
        };
        let key = cfg.portfolio_id.clone();
        let ev = Event::derived(event, NAME, 0, key.clone(), bar.end(), Payload::Signal(signal));
        out.push(Output {
            topic: topics::SIGNALS,
            key,
            event: ev,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn bar(seq: u64, close: i64) -> Bar {
        let c = Fixed::from_int(close);
        Bar {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            interval_ms: 60_000,
            start: Timestamp::from_millis(seq as i64 * 60_000),
            open: c,
            high: c + Fixed::ONE,
            low: c - Fixed::ONE,
            close: c,
            volume: Fixed::ONE,
            trade_count: 1,
            seq,
        }
    }

    #[test]
    fn ema_matches_the_recursive_definition() {
        let mut e = Ema::new(3); // alpha = 0.5
        assert_eq!(e.update(Fixed::from_int(10)), Fixed::from_int(10));
        assert_eq!(e.update(Fixed::from_int(20)), Fixed::from_int(15));
        assert_eq!(e.update(Fixed::from_int(20)), "17.5".parse().unwrap());
    }

    #[test]
    fn ema_is_the_exact_recursion_rounded_only_at_the_output() {
        // alpha = 2/13 is not a finite decimal: rounding it to 8 places would drift.
        let mut e = Ema::new(12);
        assert_eq!(e.update(Fixed::from_int(100)), Fixed::from_int(100));
        // 100 + 2/13 * (200 - 100) = 115.384615384615...
        assert_eq!(e.update(Fixed::from_int(200)), "115.38461538".parse().unwrap());
        // 115.3846153846... + 2/13 * (0 - 115.3846153846...) = 97.633136094674...
        assert_eq!(e.update(Fixed::ZERO), "97.63313609".parse().unwrap());
        assert_eq!(e.value(), Some("97.63313609".parse().unwrap()));
        // Half away from zero at the output: 2/3 * 0.00000001 = 0.0000000066.. -> 0.00000001
        let mut h = Ema::new(2);
        h.update(Fixed::ZERO);
        assert_eq!(h.update(Fixed::from_units(1)), Fixed::from_units(1));
        let mut n = Ema::new(2);
        n.update(Fixed::ZERO);
        assert_eq!(n.update(Fixed::from_units(-1)), Fixed::from_units(-1));
    }

    #[test]
    fn a_rising_market_turns_the_crossover_long_after_warm_up() {
        let mut s = EmaCrossover::new(EmaCrossoverConfig {
            fast: 2,
            slow: 4,
            full_strength_spread: "0.01".parse().unwrap(),
            weight: Fixed::ONE,
        });
        let views: Vec<_> = (0..6).map(|i| s.on_bar(&bar(i, 100 + i as i64 * 2))).collect();
        assert!(views[..3].iter().all(|v| v.direction == Direction::Flat));
        assert_eq!(views[5].direction, Direction::Long);
        assert!(views[5].strength.is_positive() && views[5].strength <= Fixed::ONE);
    }

    #[test]
    fn a_close_above_the_channel_breaks_out_long_and_the_middle_ends_it() {
        let mut s = Breakout::new(BreakoutConfig {
            lookback: 3,
            atr_multiple: Fixed::ZERO,
            weight: Fixed::ONE,
        });
        for i in 0..3 {
            assert_eq!(s.on_bar(&bar(i, 100)).direction, Direction::Flat);
        }
        assert_eq!(s.on_bar(&bar(3, 110)).direction, Direction::Long);
        assert_eq!(s.on_bar(&bar(4, 108)).direction, Direction::Long);
        assert_eq!(s.on_bar(&bar(5, 90)).direction, Direction::Short);
    }

    #[test]
    fn one_signal_per_bar_and_a_redelivered_bar_emits_nothing() {
        let svc = SignalService::new(SignalConfig {
            portfolio_id: "p".into(),
            interval_ms: 60_000,
            max_weight: "0.5".parse().unwrap(),
            ema: Some(EmaCrossoverConfig {
                fast: 2,
                slow: 3,
                full_strength_spread: "0.01".parse().unwrap(),
                weight: Fixed::ONE,
            }),
            breakout: None,
        });
        let mut state = SignalState::default();
        let mut out = Vec::new();
        let events: Vec<Event> = (0..5)
            .map(|i| {
                Event::root(
                    format!("b{i}"),
                    "BTCUSDT".into(),
                    Timestamp(0),
                    "market",
                    Payload::Bar(bar(i, 100 + 10 * i as i64)),
                )
            })
            .collect();
        for e in &events {
            svc.handle(&mut state, e, &mut out).unwrap();
        }
        svc.handle(&mut state, &events[2], &mut out).unwrap();
        assert_eq!(out.len(), 5);
        let Payload::Signal(last) = &out[4].event.payload else { panic!() };
        assert_eq!((last.direction, last.target_weight), (Direction::Long, "0.5".parse().unwrap()));
        assert!(
            out.iter()
                .filter(|o| matches!(&o.event.payload, Payload::Signal(s) if s.changed))
                .count()
                == 1
        );
        assert_eq!(state.duplicates_dropped, 1);
    }
}
