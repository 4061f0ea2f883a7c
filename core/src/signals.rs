//! The signals service: evaluates the strategies on every closed bar of the signal interval and
//! publishes one TRADING_SIGNAL_GENERATED per bar, per portfolio, keyed by portfolio id.
//!
//! One signal per bar (not only when a view changes) makes each symbol's signal series complete:
//! its bar sequence numbers tell the portfolio when a symbol has reached a point in event time, so
//! the portfolio can merge symbols in event order without waiting on wall-clock timeouts.
//! `changed` marks the evaluations whose direction differs from the previous one.
//!
//! Strategies are plug-ins (`strategy::Strategy`, looked up by name in a `StrategyRegistry`);
//! the two shipped ones, `EmaCrossover` and `Breakout`, live here.

use crate::event::{Bar, Direction, Event, Payload, Signal, StrategyView};
use crate::fixed::Fixed;
use crate::scenario::{Scenario, ScenarioError};
use crate::service::{Output, Rejection, Service};
use crate::strategy::{parse_params, ParamError, Strategy, StrategyParams, StrategyRegistry, StrategySlot};
use crate::topics;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What the stage reads.
pub const INPUTS: &[crate::bus::Topic] = &[topics::BARS];
pub const NAME: &str = "signals";

/// The shipped strategies' registered names.
pub const EMA_CROSSOVER: &str = "ema-crossover";
pub const BREAKOUT: &str = "breakout";

#[derive(Clone, Debug)]
pub struct SignalConfig {
    pub portfolio_id: String,
    pub interval_ms: i64,
    pub max_weight: Fixed,
    /// In evaluation order: the order of the views in every signal.
    pub strategies: Vec<StrategySlot>,
}

impl SignalConfig {
    /// The scenario's configuration with the shipped strategies. Panics if the scenario names
    /// another (`Scenario::from_toml` has refused such a file already); see `with_registry`.
    pub fn from_scenario(s: &Scenario) -> SignalConfig {
        SignalConfig::with_registry(s, &StrategyRegistry::shipped()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The scenario's configuration, its strategies looked up in `registry`.
    pub fn with_registry(s: &Scenario, registry: &StrategyRegistry) -> Result<SignalConfig, ScenarioError> {
        Ok(SignalConfig {
            portfolio_id: s.portfolio.id.clone(),
            interval_ms: s.signal_interval_ms(),
            max_weight: s.portfolio.max_weight,
            strategies: registry.resolve(s)?,
        })
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

/// `ema-crossover`'s parameters (`[strategies.ema_crossover]` without its `weight`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaCrossoverParams {
    /// The EMAs' spans, in bars.
    pub fast: u32,
    pub slow: u32,
    /// Spread between the EMAs, as a fraction of price, that counts as full strength.
    pub full_strength_spread: Fixed,
}

/// Fast EMA above slow EMA is long, below is short; strength grows with the spread.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmaCrossover {
    config: EmaCrossoverParams,
    fast: Ema,
    slow: Ema,
}

impl EmaCrossover {
    pub fn new(config: EmaCrossoverParams) -> EmaCrossover {
        EmaCrossover {
            fast: Ema::new(config.fast),
            slow: Ema::new(config.slow),
            config,
        }
    }

    /// The registry's factory for `ema-crossover`.
    pub fn from_params(params: &StrategyParams) -> Result<Box<dyn Strategy>, ParamError> {
        let p: EmaCrossoverParams = parse_params(params)?;
        if p.fast == 0 || p.slow <= p.fast {
            return Err(ParamError::new(
                "",
                format!("needs 0 < fast < slow, got fast = {} and slow = {}", p.fast, p.slow),
            ));
        }
        if !p.full_strength_spread.is_positive() {
            return Err(ParamError::new("full_strength_spread", "must be positive"));
        }
        Ok(Box::new(EmaCrossover::new(p)))
    }
}

impl Strategy for EmaCrossover {
    fn encode_state(&self) -> Vec<u8> {
        crate::snapshot::state_to_bytes(self).expect("a crossover serialises")
    }

    fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        *self = crate::snapshot::state_from_bytes(bytes).ok_or("not an ema-crossover state")?;
        Ok(())
    }

    fn on_bar(&mut self, bar: &Bar) -> StrategyView {
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

/// `breakout`'s parameters (`[strategies.breakout]` without its `weight`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakoutParams {
    /// Bars in the channel.
    pub lookback: u32,
    /// Breakouts must clear the channel by this many average true ranges.
    pub atr_multiple: Fixed,
}

/// A Donchian channel breakout filtered by average true range: a close beyond the previous
/// `lookback` bars' high (low) by `atr_multiple` ATRs goes long (short); the position is held
/// until the close crosses back through the channel's middle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Breakout {
    config: BreakoutParams,
    highs: VecDeque<Fixed>,
    lows: VecDeque<Fixed>,
    ranges: VecDeque<Fixed>,
    prev_close: Option<Fixed>,
    direction: Direction,
}

impl Breakout {
    pub fn new(config: BreakoutParams) -> Breakout {
        Breakout {
            config,
            highs: VecDeque::new(),
            lows: VecDeque::new(),
            ranges: VecDeque::new(),
            prev_close: None,
            direction: Direction::Flat,
        }
    }

    /// The registry's factory for `breakout`.
    pub fn from_params(params: &StrategyParams) -> Result<Box<dyn Strategy>, ParamError> {
        let p: BreakoutParams = parse_params(params)?;
        if p.lookback < 2 {
            return Err(ParamError::new("lookback", format!("must be at least 2, got {}", p.lookback)));
        }
        if p.atr_multiple.is_negative() {
            return Err(ParamError::new("atr_multiple", "must not be negative"));
        }
        Ok(Box::new(Breakout::new(p)))
    }
}

impl Strategy for Breakout {
    fn encode_state(&self) -> Vec<u8> {
        crate::snapshot::state_to_bytes(self).expect("a breakout serialises")
    }

    fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        *self = crate::snapshot::state_from_bytes(bytes).ok_or("not a breakout state")?;
        Ok(())
    }

    fn on_bar(&mut self, bar: &Bar) -> StrategyView {
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

/// One symbol's evaluation state: its strategies (one per configured slot, in slot order),
/// what it last signalled, and the bars that arrived ahead of their turn.
pub struct SymbolSignals {
    next_seq: u64,
    strategies: Vec<Box<dyn Strategy>>,
    direction: Direction,
    /// Bar events past `next_seq`, by sequence number: a producer that is not idempotent can
    /// land two of the market's requests out of order, so bar `n + 1` may precede bar `n` on the
    /// partition. The market numbers every bar (gaps are filled with flat bars), so the missing
    /// one arrives, and the held bars are evaluated in sequence order after it.
    pending: BTreeMap<u64, Event>,
}

#[derive(Default)]
pub struct SignalState {
    symbols: BTreeMap<String, SymbolSignals>,
    pub duplicates_dropped: u64,
    /// Bars never received, gone past after `PENDING_BARS_MAX` later ones were held.
    pub bars_skipped: u64,
}

/// Bars a symbol holds ahead of a missing one before it stops waiting for it: far more than a
/// reordered pair of the market's requests can hold.
pub const PENDING_BARS_MAX: usize = 1024;

/// `SignalState` as snapshot bytes: each strategy's state in its own encoding, under its
/// registered name, so a snapshot taken with other strategies configured is refused.
#[derive(Serialize, Deserialize)]
struct StateBytes {
    symbols: Vec<(String, SymbolBytes)>,
    duplicates_dropped: u64,
    bars_skipped: u64,
}

#[derive(Serialize, Deserialize)]
struct SymbolBytes {
    next_seq: u64,
    direction: Direction,
    strategies: Vec<(String, Vec<u8>)>,
    /// The held bar events, encoded as on the wire.
    pending: Vec<Vec<u8>>,
}

pub struct SignalService {
    pub config: SignalConfig,
}

impl SignalService {
    pub fn new(config: SignalConfig) -> SignalService {
        SignalService { config }
    }

    /// A symbol before its first bar: a fresh instance of every configured strategy.
    pub fn new_symbol(&self) -> SymbolSignals {
        SymbolSignals {
            next_seq: 0,
            strategies: self.config.strategies.iter().map(StrategySlot::build).collect(),
            direction: Direction::Flat,
            pending: BTreeMap::new(),
        }
    }

    /// Evaluates every strategy of the bar's symbol on it and combines their views into the
    /// signal to publish, caused by `cause`. Does not check the bar's sequence number.
    pub fn evaluate(&self, sym: &mut SymbolSignals, bar: &Bar, cause: &Event) -> Output {
        let cfg = &self.config;
        let views: Vec<(Fixed, StrategyView)> = cfg
            .strategies
            .iter()
            .zip(sym.strategies.iter_mut())
            .map(|(slot, s)| (slot.weight, s.on_bar(bar)))
            .collect();
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
        let ev = Event::derived(cause, NAME, 0, key.clone(), bar.end(), Payload::Signal(signal));
        Output {
            topic: topics::SIGNALS,
            key,
            event: ev,
        }
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
        let bytes = StateBytes {
            symbols: state
                .symbols
                .iter()
                .map(|(symbol, sym)| {
                    let strategies = (self.config.strategies.iter().zip(&sym.strategies))
                        .map(|(slot, s)| (slot.name.clone(), s.encode_state()))
                        .collect();
                    let sym = SymbolBytes {
                        next_seq: sym.next_seq,
                        direction: sym.direction,
                        strategies,
                        pending: sym.pending.values().map(Event::encode).collect(),
                    };
                    (symbol.clone(), sym)
                })
                .collect(),
            duplicates_dropped: state.duplicates_dropped,
            bars_skipped: state.bars_skipped,
        };
        crate::snapshot::state_to_bytes(&bytes)
    }

    fn decode_state(&self, bytes: &[u8]) -> Option<Self::State> {
        let bytes: StateBytes = crate::snapshot::state_from_bytes(bytes)?;
        let mut state = SignalState {
            symbols: BTreeMap::new(),
            duplicates_dropped: bytes.duplicates_dropped,
            bars_skipped: bytes.bars_skipped,
        };
        for (symbol, sym) in bytes.symbols {
            if sym.strategies.len() != self.config.strategies.len() {
                return None;
            }
            let mut fresh = self.new_symbol();
            for ((slot, s), (name, b)) in self.config.strategies.iter().zip(&mut fresh.strategies).zip(&sym.strategies) {
                if *name != slot.name {
                    return None;
                }
                s.decode_state(b).ok()?;
            }
            fresh.next_seq = sym.next_seq;
            fresh.direction = sym.direction;
            for bytes in &sym.pending {
                let e = Event::decode(bytes).ok()?;
                let Payload::Bar(b) = &e.payload else { return None };
                fresh.pending.insert(b.seq, e);
            }
            state.symbols.insert(symbol, fresh);
        }
        Some(state)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [crate::bus::Topic] {
        INPUTS
    }

    fn handle(&self, state: &mut SignalState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Bar(bar) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::BARS)));
        };
        if bar.interval_ms != self.config.interval_ms {
            return Ok(());
        }
        let sym = state.symbols.entry(bar.symbol.clone()).or_insert_with(|| self.new_symbol());
        if bar.seq < sym.next_seq || sym.pending.contains_key(&bar.seq) {
            // Already evaluated or held (a redelivered or re-published bar): its output exists
            // or will.
            state.duplicates_dropped += 1;
            return Ok(());
        }
        if bar.seq > sym.next_seq {
            sym.pending.insert(bar.seq, event.clone());
            if sym.pending.len() <= PENDING_BARS_MAX {
                return Ok(());
            }
            // The missing bars are not coming (the stage was started part-way into a series,
            // say): go on from the first held one.
            let (&first, _) = sym.pending.first_key_value().expect("just inserted");
            state.bars_skipped += first - sym.next_seq;
            sym.next_seq = first;
        } else {
            sym.next_seq = bar.seq + 1;
            out.push(self.evaluate(sym, bar, event));
        }
        while let Some(held) = sym.pending.remove(&sym.next_seq) {
            let Payload::Bar(b) = &held.payload else {
                unreachable!("only bars are held")
            };
            sym.next_seq = b.seq + 1;
            out.push(self.evaluate(sym, b, &held));
        }
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

    fn slot(name: &str, params: &str) -> StrategySlot {
        StrategyRegistry::shipped()
            .slot(name, Fixed::ONE, toml::from_str(params).unwrap())
            .unwrap()
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
        let mut s = EmaCrossover::new(EmaCrossoverParams {
            fast: 2,
            slow: 4,
            full_strength_spread: "0.01".parse().unwrap(),
        });
        let views: Vec<_> = (0..6).map(|i| s.on_bar(&bar(i, 100 + i as i64 * 2))).collect();
        assert!(views[..3].iter().all(|v| v.direction == Direction::Flat));
        assert_eq!(views[5].direction, Direction::Long);
        assert!(views[5].strength.is_positive() && views[5].strength <= Fixed::ONE);
    }

    #[test]
    fn a_close_above_the_channel_breaks_out_long_and_the_middle_ends_it() {
        let mut s = Breakout::new(BreakoutParams {
            lookback: 3,
            atr_multiple: Fixed::ZERO,
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
            strategies: vec![slot(EMA_CROSSOVER, "fast = 2\nslow = 3\nfull_strength_spread = \"0.01\"")],
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

    fn crossover_service() -> SignalService {
        SignalService::new(SignalConfig {
            portfolio_id: "p".into(),
            interval_ms: 60_000,
            max_weight: "0.5".parse().unwrap(),
            strategies: vec![slot(EMA_CROSSOVER, "fast = 2\nslow = 3\nfull_strength_spread = \"0.01\"")],
        })
    }

    fn signals_of(svc: &SignalService, state: &mut SignalState, order: &[usize], events: &[Event]) -> Vec<Output> {
        let mut out = Vec::new();
        for &i in order {
            svc.handle(state, &events[i], &mut out).unwrap();
        }
        out
    }

    #[test]
    fn bars_that_land_out_of_order_give_the_signals_of_bars_in_order() {
        // Given five bars, and the same bars with 2 and 3 swapped and 1 after 4 (a producer
        // that is not idempotent landing the market's requests out of order)
        let svc = crossover_service();
        let events: Vec<Event> = (0..5).map(|i| bar_event(&bar(i, 100 + 10 * i as i64))).collect();
        let in_order = signals_of(&svc, &mut SignalState::default(), &[0, 1, 2, 3, 4], &events);
        // When they are handled in that order, a held bar redelivered too
        let mut state = SignalState::default();
        let mut out = signals_of(&svc, &mut state, &[0, 3, 2, 4], &events);
        assert_eq!(out.len(), 1, "only bar 0 can be evaluated before bar 1 arrives");
        // the held bars survive a snapshot,
        let mut state = svc.decode_state(&svc.encode_state(&state).unwrap()).unwrap();
        out.extend(signals_of(&svc, &mut state, &[3, 1], &events));
        // then the signals are those of the bars in order, each once
        assert_eq!(out, in_order);
        assert_eq!(state.duplicates_dropped, 1);
        assert_eq!(state.bars_skipped, 0);
    }

    #[test]
    fn a_bar_that_never_comes_is_waited_for_up_to_the_bound_then_gone_past() {
        // Given bar 0, then bars 2 onwards: bar 1 is missing for good
        let svc = crossover_service();
        let mut state = SignalState::default();
        let n = PENDING_BARS_MAX as u64 + 2;
        let events: Vec<Event> = (0..=n).map(|i| bar_event(&bar(i, 100))).collect();
        let order: Vec<usize> = std::iter::once(0).chain(2..=n as usize).collect();
        // When one more than the bound is held
        let out = signals_of(&svc, &mut state, &order, &events);
        // Then it stops waiting: every held bar is evaluated, in order, and the gap counted
        assert_eq!(out.len(), PENDING_BARS_MAX + 2, "bar 0 and every held one");
        assert_eq!(state.bars_skipped, 1);
        let seqs: Vec<u64> = out
            .iter()
            .map(|o| match &o.event.payload {
                Payload::Signal(s) => s.bar.seq,
                _ => unreachable!(),
            })
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in bar order");
        // and a bar at the bound is held, not evaluated early
        let mut held = SignalState::default();
        let out = signals_of(&svc, &mut held, &order[..order.len() - 1], &events);
        assert_eq!(out.len(), 1);
    }

    /// A market that rises, breaks out, falls through the channel and recovers: every branch of
    /// both shipped strategies.
    fn market() -> Vec<Bar> {
        let closes = (0..15)
            .map(|i| 100 + 2 * i)
            .chain((0..15).map(|i| 128 - 3 * i))
            .chain((0..10).map(|i| 86 + i));
        closes.enumerate().map(|(i, c)| bar(i as u64, c)).collect()
    }

    fn shipped_slots() -> Vec<StrategySlot> {
        vec![
            slot(EMA_CROSSOVER, "fast = 3\nslow = 8\nfull_strength_spread = \"0.01\""),
            slot(BREAKOUT, "lookback = 5\natr_multiple = \"0.3\""),
        ]
    }

    fn bar_event(b: &Bar) -> Event {
        Event::root(
            format!("b{}", b.seq),
            b.symbol.clone(),
            Timestamp(0),
            "market",
            Payload::Bar(b.clone()),
        )
    }

    #[test]
    fn each_shipped_strategy_restored_from_its_state_goes_on_as_the_original() {
        let bars = market();
        for slot in shipped_slots() {
            let mut directions = std::collections::BTreeSet::new();
            for cut in [0, 3, 12, 20, 33] {
                // Given a strategy that has seen `cut` bars, and a fresh one given its state,
                let mut original = slot.build();
                for b in &bars[..cut] {
                    directions.insert(format!("{:?}", original.on_bar(b).direction));
                }
                let mut restored = slot.build();
                restored.decode_state(&original.encode_state()).unwrap();
                // when both see the rest of the market,
                for b in &bars[cut..] {
                    // then they agree bar for bar, and end in the same state.
                    assert_eq!(restored.on_bar(b), original.on_bar(b), "{} after {cut} bars", slot.name);
                }
                assert_eq!(restored.encode_state(), original.encode_state(), "{}", slot.name);
            }
            assert_eq!(directions.len(), 3, "{} takes every direction: {directions:?}", slot.name);
            assert!(slot.build().decode_state(b"not a state").is_err());
        }
    }

    #[test]
    fn a_signals_task_restored_from_its_snapshot_bytes_goes_on_as_the_original() {
        let config = SignalConfig {
            portfolio_id: "p".into(),
            interval_ms: 60_000,
            max_weight: "0.5".parse().unwrap(),
            strategies: shipped_slots(),
        };
        let svc = SignalService::new(config.clone());
        let events: Vec<Event> = market().iter().map(bar_event).collect();
        // Given a task that evaluated 20 bars and dropped a redelivered one,
        let mut original = SignalState::default();
        let mut out = Vec::new();
        for e in events[..20].iter().chain([&events[5]]) {
            svc.handle(&mut original, e, &mut out).unwrap();
        }
        // when its state is snapshotted and restored,
        let bytes = svc.encode_state(&original).unwrap();
        let mut restored = svc.decode_state(&bytes).unwrap();
        assert_eq!(restored.duplicates_dropped, 1);
        // then the restored task publishes what the original does, bar for bar (a redelivery
        // of an evaluated bar is still dropped),
        for e in events[20..].iter().chain([&events[10]]) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            svc.handle(&mut original, e, &mut a).unwrap();
            svc.handle(&mut restored, e, &mut b).unwrap();
            assert_eq!(a, b);
        }
        assert_eq!(svc.encode_state(&restored), svc.encode_state(&original));
        // and a service configured with other strategies refuses the bytes.
        let other = SignalService::new(SignalConfig {
            strategies: config.strategies[..1].to_vec(),
            ..config.clone()
        });
        assert!(other.decode_state(&bytes).is_none());
        let reordered = SignalService::new(SignalConfig {
            strategies: config.strategies.iter().rev().cloned().collect(),
            ..config
        });
        assert!(reordered.decode_state(&bytes).is_none());
    }
}
