//! The seeded market generator: realistic trades for a scenario's correlated symbols.
//!
//! `MarketGenerator` streams trades (constant memory) in non-decreasing exchange time across
//! symbols, merging the symbols' Poisson arrival streams (ties go to the lower symbol index).
//! The same scenario and seed give the same trades on every machine: randomness comes only from
//! ChaCha8 seeded with the seed, and transcendental functions from `libm`.
//!
//! Model, per symbol `i` with log price `x_i`:
//! - Geometric Brownian motion with annualised drift and volatility (`calm_vol` or
//!   `stressed_vol`, times the symbol's `vol_scale`; a year is 365 days, crypto never closes).
//!   The shock is `beta_i·m + sqrt(1 − beta_i²)·e_i`: the market factor `m` is shared, `e_i` is
//!   the symbol's own.
//! - The market factor lives on a fixed one-second grid (cumulative, in volatility units) and is
//!   interpolated linearly between grid points, so symbols trading at different instants see one
//!   consistent factor path. The idiosyncratic part and the drift advance per trade with the time
//!   elapsed since the symbol's previous trade.
//! - Volatility regime: a two-state (calm/stressed) Markov chain on the grid, leaving either state
//!   at `regime_switches_per_hour`. The regime starts calm.
//! - Jumps: Poisson at `jumps_per_hour` on the grid, common to all symbols: a log jump of random
//!   sign and log-normal size with mean `jump_size`, scaled by each symbol's beta.
//! - Flash crashes: a deterministic log-price path, all symbols: over `fall` the price falls
//!   smoothly (cosine ease) by `depth·beta_i`, then over `rebound` recovers `recovery` of that loss.
//!   Noise continues throughout, and the market counts as stressed during the crash.
//! - Arrivals: Poisson at `trades_per_minute` per symbol, faster when stressed and during a crash
//!   (the rate in force at a trade sets the gap to the next). Quantity: log-normal notional around
//!   3,000 in quote currency, in whole lots (at least one). Aggressor: sells more likely after a
//!   down-tick and much more during a crash's fall.
//! - Feed faults: a trade is replayed right after itself (`duplicate_rate`, identical trade), its
//!   exchange time is set 1–300 ms before the symbol's previous one (`out_of_order_rate`), or it
//!   is malformed (`bad_trade_rate`: zero quantity, zero or negative price, or symbol `UNKNOWN`).
//!
//! Random streams: the market grid, each symbol's path and arrivals, and each symbol's faults draw
//! from separate ChaCha8 streams of the one seed, so fault settings never move prices and one
//! symbol's trade rate never changes another's path.

use crate::event::{Side, Trade};
use crate::fixed::Fixed;
use crate::scenario::Scenario;
use crate::time::{parse_duration_ms, Timestamp, NANOS_PER_MS, NANOS_PER_SEC};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SECONDS_PER_YEAR: f64 = 365.0 * 86_400.0;
/// The market factor's grid step.
const GRID_NS: i64 = NANOS_PER_SEC;
const MEAN_NOTIONAL: f64 = 3_000.0;
/// Log-normal spread of trade notionals.
const NOTIONAL_SIGMA: f64 = 0.9;
/// Log-normal spread of jump sizes.
const JUMP_SIGMA: f64 = 0.5;
/// Trade-rate multipliers: stressed regime, crash fall, crash rebound.
const STRESSED_ACTIVITY: f64 = 1.6;
const FALL_ACTIVITY: f64 = 2.5;
const REBOUND_ACTIVITY: f64 = 1.6;
/// Out-of-order trades are stamped up to this long before the symbol's previous trade.
const MAX_OUT_OF_ORDER_MS: i64 = 300;
pub const UNKNOWN_SYMBOL: &str = "UNKNOWN";

/// Streaming generator of a scenario's trades; see the module documentation for the model.
pub struct MarketGenerator {
    exchange: String,
    start_ns: i64,
    end_ns: i64,
    drift_per_s: f64,
    /// Trades per second per symbol in the calm regime.
    base_rate: f64,
    calm_sigma: f64,
    stressed_sigma: f64,
    duplicate_rate: f64,
    out_of_order_rate: f64,
    bad_trade_rate: f64,
    market: Factor,
    crashes: Vec<Crash>,
    symbols: Vec<SymbolState>,
    /// A replay waiting to be emitted right after its original.
    pending: Option<Trade>,
    hint: u64,
}

/// Box–Muller normals and exponentials over one ChaCha8 stream.
struct Source {
    rng: ChaCha8Rng,
    spare: Option<f64>,
}

impl Source {
    fn new(seed: u64, stream: u64) -> Source {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Source { rng, spare: None }
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.uniform() < p
    }

    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * libm::sin(theta));
        r * libm::cos(theta)
    }

    /// Exponential with mean 1.
    fn exponential(&mut self) -> f64 {
        -libm::log(1.0 - self.uniform())
    }
}

/// The shared market factor on the one-second grid, with the regime and the common jumps.
struct Factor {
    src: Source,
    /// Grid interval `[start + step s, start + (step + 1) s)` the factor is at.
    step: i64,
    /// Cumulative factor at the interval's start and end, in volatility units.
    m_lo: f64,
    m_hi: f64,
    /// Cumulative common log jump at grid points up to `step`.
    jumps: f64,
    stressed: bool,
    switch_p: f64,
    jump_p: f64,
    jump_size: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Quiet,
    Falling,
    Rebounding,
}

struct Crash {
    at_ns: i64,
    fall_ns: i64,
    rebound_ns: i64,
    depth: f64,
    recovery: f64,
}

impl Crash {
    /// Phase at `t` and the eased progress through it (0..1).
    fn phase(&self, t: i64) -> (Phase, f64) {
        let fall_end = self.at_ns + self.fall_ns;
        if t < self.at_ns || t >= fall_end + self.rebound_ns {
            (Phase::Quiet, 0.0)
        } else if t < fall_end {
            (Phase::Falling, ease((t - self.at_ns) as f64 / self.fall_ns as f64))
        } else {
            (Phase::Rebounding, ease((t - fall_end) as f64 / self.rebound_ns as f64))
        }
    }
}

fn ease(u: f64) -> f64 {
    0.5 * (1.0 - libm::cos(std::f64::consts::PI * u.clamp(0.0, 1.0)))
}

struct SymbolState {
    symbol: String,
    beta: f64,
    idio: f64,
    vol_scale: f64,
    tick: f64,
    tick_units: i64,
    lot: f64,
    lot_units: i64,
    /// Log start price plus accumulated drift and idiosyncratic shocks.
    base: f64,
    /// Per crash: log level at the bottom and after the rebound.
    crash_levels: Vec<(f64, f64)>,
    next_ns: i64,
    last_ns: i64,
    last_price: f64,
    last_emitted: Option<Timestamp>,
    next_id: u64,
    src: Source,
    faults: Source,
}

impl MarketGenerator {
    /// A generator for the scenario's `[market.generator]`, or `None` when it has none (or its
    /// times do not parse, which scenario validation already rules out).
    pub fn new(scenario: &Scenario, seed: u64) -> Option<MarketGenerator> {
        let g = scenario.market.generator.as_ref()?;
        let start_ns = Timestamp::parse_rfc3339(&g.start)?.nanos();
        let duration_ns = parse_duration_ms(&g.duration)?.checked_mul(NANOS_PER_MS)?;
        let end_ns = start_ns.checked_add(duration_ns)?;
        let crashes = g
            .flash_crash
            .iter()
            .map(|c| {
                Some(Crash {
                    at_ns: start_ns + parse_duration_ms(&c.at)? * NANOS_PER_MS,
                    fall_ns: parse_duration_ms(&c.fall)? * NANOS_PER_MS,
                    rebound_ns: parse_duration_ms(&c.rebound)? * NANOS_PER_MS,
                    depth: c.depth,
                    recovery: c.recovery,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let per_sqrt_s = |annual: f64| annual / libm::sqrt(SECONDS_PER_YEAR);
        let base_rate = g.trades_per_minute / 60.0;
        let hourly = |per_hour: f64| 1.0 - libm::exp(-per_hour * (GRID_NS as f64 / NANOS_PER_SEC as f64) / 3600.0);
        let mut market = Factor {
            src: Source::new(seed, 0),
            step: 0,
            m_lo: 0.0,
            m_hi: 0.0,
            jumps: 0.0,
            stressed: false,
            switch_p: hourly(g.regime_switches_per_hour),
            jump_p: hourly(g.jumps_per_hour),
            jump_size: g.jump_size,
        };
        let calm_sigma = per_sqrt_s(g.calm_vol);
        let stressed_sigma = per_sqrt_s(g.stressed_vol);
        market.m_hi = market.src.normal() * if in_crash(&crashes, start_ns) { stressed_sigma } else { calm_sigma };
        let symbols = scenario
            .market
            .symbols
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let price = s.price.filter(|p| p.is_positive())?.to_f64();
                let beta = s.beta.clamp(0.0, 1.0);
                let crash_levels = crashes
                    .iter()
                    .map(|c| {
                        let loss = (c.depth * beta).clamp(0.0, 0.999);
                        (libm::log(1.0 - loss), libm::log(1.0 - loss * (1.0 - c.recovery)))
                    })
                    .collect();
                let stream = 1 + 2 * i as u64;
                let mut state = SymbolState {
                    symbol: s.symbol.clone(),
                    beta,
                    idio: libm::sqrt(1.0 - beta * beta),
                    vol_scale: s.vol_scale,
                    tick: s.tick.to_f64(),
                    tick_units: s.tick.units().max(1),
                    lot: s.lot.to_f64(),
                    lot_units: s.lot.units().max(1),
                    base: libm::log(price),
                    crash_levels,
                    next_ns: start_ns,
                    last_ns: start_ns,
                    last_price: price,
                    last_emitted: None,
                    next_id: 1,
                    src: Source::new(seed, stream),
                    faults: Source::new(seed, stream + 1),
                };
                state.next_ns = start_ns + gap_ns(&mut state.src, base_rate * activity(false, &crashes, start_ns));
                Some(state)
            })
            .collect::<Option<Vec<_>>>()?;
        let hint = count_hint(
            g.trades_per_minute,
            symbols.len(),
            duration_ns,
            g.regime_switches_per_hour,
            &crashes,
            end_ns,
            g.duplicate_rate,
        );
        Some(MarketGenerator {
            exchange: scenario.market.exchange.clone(),
            start_ns,
            end_ns,
            drift_per_s: g.drift / SECONDS_PER_YEAR,
            base_rate,
            calm_sigma,
            stressed_sigma,
            duplicate_rate: g.duplicate_rate,
            out_of_order_rate: g.out_of_order_rate,
            bad_trade_rate: g.bad_trade_rate,
            market,
            crashes,
            symbols,
            pending: None,
            hint,
        })
    }

    /// Expected number of trades (replays included), from the rates; the real count varies a
    /// few percent with the seed.
    pub fn trade_count_hint(&self) -> u64 {
        self.hint
    }

    /// Moves the factor grid forward to interval `step`.
    fn advance_factor(&mut self, step: i64) {
        let f = &mut self.market;
        while f.step < step {
            f.step += 1;
            f.m_lo = f.m_hi;
            if f.src.chance(f.switch_p) {
                f.stressed = !f.stressed;
            }
            if f.src.chance(f.jump_p) {
                let sign = if f.src.uniform() < 0.5 { -1.0 } else { 1.0 };
                let size = f.jump_size * libm::exp(JUMP_SIGMA * f.src.normal() - 0.5 * JUMP_SIGMA * JUMP_SIGMA);
                f.jumps += sign * size;
            }
            let t = self.start_ns + f.step * GRID_NS;
            let stressed = f.stressed || in_crash(&self.crashes, t);
            let sigma = if stressed { self.stressed_sigma } else { self.calm_sigma };
            f.m_hi = f.m_lo + sigma * f.src.normal();
        }
    }
}

fn in_crash(crashes: &[Crash], t: i64) -> bool {
    crashes.iter().any(|c| c.phase(t).0 != Phase::Quiet)
}

/// The crashes' log-price offset at `t` for a symbol with these levels, and whether one is
/// falling.
fn crash_offset(crashes: &[Crash], levels: &[(f64, f64)], t: i64) -> (f64, bool) {
    let mut offset = 0.0;
    let mut falling = false;
    for (c, &(bottom, after)) in crashes.iter().zip(levels) {
        offset += match c.phase(t) {
            _ if t < c.at_ns => 0.0,
            (Phase::Falling, u) => {
                falling = true;
                bottom * u
            }
            (Phase::Rebounding, u) => bottom + (after - bottom) * u,
            (Phase::Quiet, _) => after,
        };
    }
    (offset, falling)
}

/// Trade-rate multiplier at `t`.
fn activity(stressed: bool, crashes: &[Crash], t: i64) -> f64 {
    let mut a: f64 = if stressed { STRESSED_ACTIVITY } else { 1.0 };
    for c in crashes {
        a = a.max(match c.phase(t).0 {
            Phase::Quiet => 1.0,
            Phase::Falling => FALL_ACTIVITY,
            Phase::Rebounding => REBOUND_ACTIVITY,
        });
    }
    a
}

/// An exponential gap at `rate` per second, in whole microseconds.
fn gap_ns(src: &mut Source, rate: f64) -> i64 {
    let seconds = src.exponential() / rate;
    (libm::round(seconds * 1e6).min(1e15) as i64) * 1_000
}

fn count_hint(tpm: f64, symbols: usize, duration_ns: i64, switches_per_hour: f64, crashes: &[Crash], end_ns: i64, dup: f64) -> u64 {
    let seconds = duration_ns as f64 / NANOS_PER_SEC as f64;
    let rate = tpm / 60.0 * symbols as f64;
    // Expected stressed fraction of [0, T] for a symmetric two-state chain starting calm.
    let lambda = switches_per_hour / 3600.0;
    let stressed = if lambda * seconds > 1e-9 {
        0.5 - (1.0 - libm::exp(-2.0 * lambda * seconds)) / (4.0 * lambda * seconds)
    } else {
        0.0
    };
    let mut expected = rate * seconds * (1.0 + (STRESSED_ACTIVITY - 1.0) * stressed);
    for c in crashes {
        let clip = |from: i64, len: i64| ((from + len).min(end_ns) - from.min(end_ns)).max(0) as f64 / NANOS_PER_SEC as f64;
        let fall = clip(c.at_ns, c.fall_ns);
        let rebound = clip(c.at_ns + c.fall_ns, c.rebound_ns);
        let calm = 1.0 - stressed;
        expected += rate * calm * (fall * (FALL_ACTIVITY - 1.0) + rebound * (REBOUND_ACTIVITY - 1.0));
        expected += rate * stressed * fall * (FALL_ACTIVITY - STRESSED_ACTIVITY);
    }
    libm::round(expected * (1.0 + dup)) as u64
}

impl Iterator for MarketGenerator {
    type Item = Trade;

    fn next(&mut self) -> Option<Trade> {
        if let Some(t) = self.pending.take() {
            return Some(t);
        }
        let mut i = 0;
        for (j, s) in self.symbols.iter().enumerate().skip(1) {
            if s.next_ns < self.symbols[i].next_ns {
                i = j;
            }
        }
        let t = self.symbols.get(i)?.next_ns;
        if t >= self.end_ns {
            return None;
        }
        let offset = t - self.start_ns;
        self.advance_factor(offset.div_euclid(GRID_NS));
        let frac = offset.rem_euclid(GRID_NS) as f64 / GRID_NS as f64;
        let m = self.market.m_lo + (self.market.m_hi - self.market.m_lo) * frac;
        let jumps = self.market.jumps;
        let (crash_offset, falling) = crash_offset(&self.crashes, &self.symbols[i].crash_levels, t);
        let stressed = self.market.stressed || in_crash(&self.crashes, t);
        let sigma_regime = if stressed { self.stressed_sigma } else { self.calm_sigma };
        let rate = self.base_rate * activity(self.market.stressed, &self.crashes, t);
        let drift = self.drift_per_s;
        let s = &mut self.symbols[i];

        // Price: drift and own shock since this symbol's last trade, plus the shared paths.
        let sigma = sigma_regime * s.vol_scale;
        let dt = (t - s.last_ns) as f64 / NANOS_PER_SEC as f64;
        s.base += (drift - 0.5 * sigma * sigma) * dt + sigma * s.idio * libm::sqrt(dt) * s.src.normal();
        let log_price = s.base + s.vol_scale * s.beta * m + s.beta * jumps + crash_offset;
        let raw = libm::exp(log_price);
        let ticks = libm::round(raw / s.tick).max(1.0);
        let price = Fixed::from_units((ticks as i64).saturating_mul(s.tick_units));
        let price_f = ticks * s.tick;

        let p_sell = if falling {
            0.8
        } else if price_f < s.last_price {
            0.6
        } else if price_f > s.last_price {
            0.4
        } else {
            0.5
        };
        let side = if s.src.uniform() < p_sell { Side::Sell } else { Side::Buy };
        let notional = MEAN_NOTIONAL * libm::exp(NOTIONAL_SIGMA * s.src.normal() - 0.5 * NOTIONAL_SIGMA * NOTIONAL_SIGMA);
        let lots = libm::round(notional / price_f / s.lot).max(1.0);
        let quantity = Fixed::from_units((lots as i64).saturating_mul(s.lot_units));

        s.last_ns = t;
        s.last_price = price_f;
        s.next_ns = t + gap_ns(&mut s.src, rate);

        let mut trade = Trade {
            symbol: s.symbol.clone(),
            exchange: self.exchange.clone(),
            trade_id: s.next_id.to_string(),
            price,
            quantity,
            aggressor_side: side,
            ts_exchange: Timestamp::from_nanos(t),
        };
        s.next_id += 1;

        // Feed faults.
        if let Some(prev) = s.last_emitted {
            if s.faults.chance(self.out_of_order_rate) {
                let back_us = 1_000 + (s.faults.uniform() * ((MAX_OUT_OF_ORDER_MS - 1) * 1_000) as f64) as i64;
                trade.ts_exchange = Timestamp::from_nanos(prev.nanos() - back_us * 1_000);
            }
        }
        s.last_emitted = Some(trade.ts_exchange);
        if s.faults.chance(self.bad_trade_rate) {
            let kind = s.faults.uniform() * 3.0;
            if kind < 1.0 {
                trade.quantity = Fixed::ZERO;
            } else if kind < 2.0 {
                trade.price = if s.faults.uniform() < 0.5 {
                    Fixed::ZERO
                } else {
                    Fixed::ZERO - price
                };
            } else {
                // Keep the id unique: trade ids count per symbol, so two symbols' garbage trades
                // would otherwise share exchange, symbol and id, and so one event id.
                trade.trade_id = format!("{}-{}", trade.symbol, trade.trade_id);
                trade.symbol = UNKNOWN_SYMBOL.to_string();
            }
        }
        if s.faults.chance(self.duplicate_rate) {
            self.pending = Some(trade.clone());
        }
        Some(trade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::GeneratorConfig;
    use std::collections::BTreeMap;

    fn flash_crash() -> Scenario {
        Scenario::from_toml(include_str!("../../scenarios/flash-crash.toml"), "flash-crash.toml").unwrap()
    }

    fn with(mut s: Scenario, edit: impl FnOnce(&mut GeneratorConfig)) -> Scenario {
        edit(s.market.generator.as_mut().unwrap());
        s
    }

    fn no_faults(g: &mut GeneratorConfig) {
        g.duplicate_rate = 0.0;
        g.out_of_order_rate = 0.0;
        g.bad_trade_rate = 0.0;
    }

    fn trades(s: &Scenario, seed: u64) -> Vec<Trade> {
        MarketGenerator::new(s, seed).unwrap().collect()
    }

    fn is_bad(t: &Trade) -> bool {
        t.quantity.is_zero() || !t.price.is_positive() || t.symbol == UNKNOWN_SYMBOL
    }

    #[test]
    fn generator_same_seed_same_trades_other_seed_other_trades() {
        // Given the flash-crash scenario
        let s = flash_crash();
        // When generated twice with one seed and once with another
        let a = trades(&s, 7);
        let b = trades(&s, 7);
        let c: Vec<Trade> = MarketGenerator::new(&s, 8).unwrap().take(100).collect();
        // Then the first two are identical and the third differs
        assert!(a.len() > 10_000);
        assert_eq!(a, b);
        assert_ne!(a[..100], c[..]);
    }

    #[test]
    fn generator_none_without_generator_section() {
        let mut s = flash_crash();
        s.market.generator = None;
        assert!(MarketGenerator::new(&s, 1).is_none());
    }

    #[test]
    fn generator_time_is_ordered_except_deliberate_out_of_order_trades() {
        // Given out-of-order faults only
        let s = with(flash_crash(), |g| {
            no_faults(g);
            g.out_of_order_rate = 0.01;
        });
        // When generated
        let all = trades(&s, 3);
        let end = Timestamp::parse_rfc3339("2024-03-01T08:00:00Z").unwrap();
        // Then every trade is at or after the latest so far, or earlier than its symbol's previous
        let (mut max, mut late) = (Timestamp(0), 0);
        let mut prev: BTreeMap<&str, Timestamp> = BTreeMap::new();
        for t in &all {
            assert!(t.ts_exchange < end);
            if t.ts_exchange < max {
                late += 1;
                let p = prev[t.symbol.as_str()];
                assert!(
                    t.ts_exchange < p && p.nanos() - t.ts_exchange.nanos() <= 300 * NANOS_PER_MS,
                    "{t:?}"
                );
            }
            max = max.max(t.ts_exchange);
            prev.insert(&t.symbol, t.ts_exchange);
        }
        let rate = late as f64 / all.len() as f64;
        assert!((0.007..0.013).contains(&rate), "out-of-order rate {rate}");
        // And without the fault the stream is non-decreasing
        let clean = trades(&with(flash_crash(), no_faults), 3);
        assert!(clean.windows(2).all(|w| w[0].ts_exchange <= w[1].ts_exchange));
    }

    #[test]
    fn generator_duplicates_are_identical_replays_at_the_configured_rate() {
        // Given duplicates only
        let s = with(flash_crash(), |g| {
            no_faults(g);
            g.duplicate_rate = 0.01;
        });
        // When generated
        let all = trades(&s, 11);
        // Then replays follow their original exactly, at about the rate
        let dups = all.windows(2).filter(|w| w[0] == w[1]).count();
        let rate = dups as f64 / (all.len() - dups) as f64;
        assert!((0.007..0.013).contains(&rate), "duplicate rate {rate}");
        // And removing them gives the fault-free stream: faults never move the market
        let mut deduped = all.clone();
        deduped.dedup();
        assert_eq!(deduped, trades(&with(flash_crash(), no_faults), 11));
        // And otherwise ids increase per symbol
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for t in &deduped {
            let id: u64 = t.trade_id.parse().unwrap();
            assert!(last.insert(&t.symbol, id).is_none_or(|p| p < id));
        }
    }

    #[test]
    fn generator_bad_trades_come_in_three_kinds_and_none_without_faults() {
        // Given bad trades at 1%
        let s = with(flash_crash(), |g| {
            no_faults(g);
            g.bad_trade_rate = 0.01;
        });
        let all = trades(&s, 5);
        let zero_qty = all.iter().filter(|t| t.quantity.is_zero()).count();
        let bad_price = all.iter().filter(|t| !t.price.is_positive()).count();
        let unknown = all.iter().filter(|t| t.symbol == UNKNOWN_SYMBOL).count();
        // Then each kind appears, and together at about the rate
        assert!(zero_qty > 0 && bad_price > 0 && unknown > 0);
        let rate = (zero_qty + bad_price + unknown) as f64 / all.len() as f64;
        assert!((0.007..0.013).contains(&rate), "bad rate {rate}");
        // And with every fault rate zero there are none
        assert!(!trades(&with(flash_crash(), no_faults), 5).iter().any(is_bad));
    }

    #[test]
    fn generator_good_trades_are_positive_and_on_the_grid() {
        // Given the scenario with its faults
        let s = flash_crash();
        // When generated
        let all = trades(&s, 9);
        // Then every well-formed trade sits on its symbol's tick and lot grid
        let grid: BTreeMap<&str, (i64, i64)> = s
            .market
            .symbols
            .iter()
            .map(|c| (c.symbol.as_str(), (c.tick.units(), c.lot.units())))
            .collect();
        for t in all.iter().filter(|t| !is_bad(t)) {
            let (tick, lot) = grid[t.symbol.as_str()];
            assert!(t.price.is_positive() && t.price.units() % tick == 0, "{t:?}");
            assert!(t.quantity.units() >= lot && t.quantity.units() % lot == 0, "{t:?}");
            assert_eq!(t.exchange, "SIM");
        }
        let sells = all.iter().filter(|t| t.aggressor_side == Side::Sell).count() as f64 / all.len() as f64;
        assert!((0.4..0.6).contains(&sells), "sell share {sells}");
    }

    #[test]
    fn generator_flash_crash_reaches_its_depth_then_rebounds() {
        // Given the 22% crash at 4h falling over 12m and rebounding 60% over 50m
        let s = with(flash_crash(), no_faults);
        let at = Timestamp::parse_rfc3339("2024-03-01T04:00:00Z").unwrap();
        let btc: Vec<Trade> = trades(&s, 7).into_iter().filter(|t| t.symbol == "BTCUSDT").collect();
        // When we look at BTC just before, at the bottom and after the rebound
        let before = btc.iter().rev().find(|t| t.ts_exchange < at).unwrap().price.to_f64();
        let window = |from: i64, to: i64| {
            btc.iter()
                .filter(move |t| (at.plus_ms(from)..at.plus_ms(to)).contains(&t.ts_exchange))
        };
        let bottom = window(0, 14 * 60_000).map(|t| t.price.to_f64()).fold(f64::MAX, f64::min);
        let after = window(62 * 60_000, 64 * 60_000).next_back().unwrap().price.to_f64();
        // Then the bottom is at least ~15% down and the rebound recovers part of it
        assert!(bottom <= 0.85 * before, "before {before} bottom {bottom}");
        assert!(after > bottom * 1.05 && after < before, "bottom {bottom} after {after}");
    }

    #[test]
    fn generator_returns_correlate_more_with_higher_beta() {
        // Given two high-beta symbols and a low-beta one, no crash
        let mut s = with(flash_crash(), |g| {
            no_faults(g);
            g.flash_crash.clear();
            g.duration = "12h".into();
        });
        for (c, beta) in s.market.symbols.iter_mut().zip([0.95, 0.95, 0.3]) {
            c.beta = beta;
        }
        // When 1-minute closes are sampled
        let mut closes: BTreeMap<i64, [f64; 3]> = BTreeMap::new();
        for t in trades(&s, 21) {
            let i = s.market.symbols.iter().position(|c| c.symbol == t.symbol).unwrap();
            closes.entry(t.ts_exchange.millis() / 60_000).or_insert([0.0; 3])[i] = t.price.to_f64();
        }
        let rows: Vec<[f64; 3]> = closes.into_values().filter(|r| r.iter().all(|&p| p > 0.0)).collect();
        let returns = |i: usize| -> Vec<f64> { rows.windows(2).map(|w| libm::log(w[1][i] / w[0][i])).collect() };
        let (a, b, c) = (returns(0), returns(1), returns(2));
        // Then both correlations are positive, higher for the higher beta
        let (ab, ac) = (correlation(&a, &b), correlation(&a, &c));
        assert!(ac > 0.05 && ab > ac + 0.2, "corr(high, high) {ab}, corr(high, low) {ac}");
    }

    fn correlation(x: &[f64], y: &[f64]) -> f64 {
        let n = x.len() as f64;
        let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let vx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
        let vy: f64 = y.iter().map(|b| (b - my) * (b - my)).sum();
        cov / libm::sqrt(vx * vy)
    }

    #[test]
    fn generator_scenario_files_validate_and_stay_small() {
        // Given the shipped generator scenarios
        let files = [
            ("flash-crash.toml", include_str!("../../scenarios/flash-crash.toml")),
            ("trend.toml", include_str!("../../scenarios/trend.toml")),
            ("chop.toml", include_str!("../../scenarios/chop.toml")),
        ];
        for (name, text) in files {
            // When parsed and run at their default seed
            let s = Scenario::from_toml(text, name).unwrap();
            let g = MarketGenerator::new(&s, s.seed).unwrap();
            let hint = g.trade_count_hint() as f64;
            let n = g.count() as f64;
            // Then the count is near the hint and a full run stays small
            assert!((n / hint - 1.0).abs() < 0.15, "{name}: {n} trades, hint {hint}");
            assert!(n < 400_000.0, "{name}: {n} trades");
        }
    }
}
