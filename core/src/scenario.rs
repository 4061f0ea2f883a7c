//! Scenario files: what to replay and how every service is configured.
//!
//! A scenario (TOML) names the market data source (a seeded generator, or a recorded file),
//! the symbols, the portfolio, strategy parameters, risk thresholds and users' subscriptions.
//! Parsing is pure: the caller reads the file and passes its text and path. Errors name the
//! file, the key and the problem in one line.

use crate::event::{RiskKind, Severity};
use crate::fixed::Fixed;
use crate::strategy::StrategyRegistry;
use crate::time::{parse_duration_ms, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub origin: String,
    /// The dotted key, when the problem is at one (`risk.drawdown`).
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.problem)
        } else {
            write!(f, "{}: `{}`: {}", self.origin, self.key, self.problem)
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of the market generator; `--seed` overrides it.
    #[serde(default)]
    pub seed: u64,
    pub market: MarketConfig,
    pub portfolio: PortfolioConfig,
    /// The shipped strategies' fixed sections (`[strategies.ema_crossover]`,
    /// `[strategies.breakout]`); any strategy can be named in `[[signals.strategy]]` instead.
    #[serde(default)]
    pub strategies: StrategiesConfig,
    #[serde(default)]
    pub signals: SignalsConfig,
    pub risk: RiskConfig,
    #[serde(default, rename = "users")]
    pub users: Vec<UserConfig>,
    /// The file it was read from, for errors found after parsing (an unknown strategy).
    #[serde(skip)]
    pub origin: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Bar intervals (`1m`, `5m`, ...); the first drives the strategies.
    pub bar_intervals: Vec<String>,
    pub symbols: Vec<SymbolConfig>,
    #[serde(default)]
    pub generator: Option<GeneratorConfig>,
    /// A recorded file instead of the generator (see the recorded-data readers).
    #[serde(default)]
    pub recording: Option<RecordingConfig>,
    /// Largest number of empty intervals a bar series fills forward in one gap.
    #[serde(default = "default_max_fill")]
    pub max_fill_bars: u32,
    /// Trades dropped as duplicates are remembered for this many trades per symbol.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: u32,
}

fn default_exchange() -> String {
    "SIM".into()
}
fn default_max_fill() -> u32 {
    1440
}
fn default_dedup_window() -> u32 {
    4096
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolConfig {
    pub symbol: String,
    /// Starting price for the generator.
    #[serde(default)]
    pub price: Option<Fixed>,
    /// Exposure to the common market factor, 0..1 (correlation between symbols).
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Multiplier on the generator's volatility for this symbol.
    #[serde(default = "one")]
    pub vol_scale: f64,
    /// Price increment; generated prices are rounded to it.
    #[serde(default = "default_tick")]
    pub tick: Fixed,
    /// Quantity increment.
    #[serde(default = "default_lot")]
    pub lot: Fixed,
}

fn default_beta() -> f64 {
    0.7
}
fn one() -> f64 {
    1.0
}
fn default_tick() -> Fixed {
    Fixed::from_units(1_000_000) // 0.01
}
fn default_lot() -> Fixed {
    Fixed::from_units(1_000) // 0.00001
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    pub start: String,
    pub duration: String,
    /// Mean trades per minute per symbol.
    pub trades_per_minute: f64,
    /// Annualised volatility in the calm and the stressed regime.
    pub calm_vol: f64,
    pub stressed_vol: f64,
    /// Annualised drift.
    #[serde(default)]
    pub drift: f64,
    /// Expected regime switches per hour.
    #[serde(default = "default_switch")]
    pub regime_switches_per_hour: f64,
    /// Expected jumps per hour and their typical size (fraction of price).
    #[serde(default)]
    pub jumps_per_hour: f64,
    #[serde(default)]
    pub jump_size: f64,
    #[serde(default)]
    pub flash_crash: Vec<FlashCrashConfig>,
    /// Market-feed faults: probability that a trade is re-sent after a reconnect, and that its
    /// exchange timestamp is slightly out of order.
    #[serde(default)]
    pub duplicate_rate: f64,
    #[serde(default)]
    pub out_of_order_rate: f64,
    /// Probability that a trade is malformed (zero quantity, non-positive price, unknown symbol),
    /// to exercise validation and the dead-letter path.
    #[serde(default)]
    pub bad_trade_rate: f64,
}

fn default_switch() -> f64 {
    0.5
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlashCrashConfig {
    /// Offset from the start (`4h`).
    pub at: String,
    /// Fraction of price lost at the bottom (0.2 = 20%).
    pub depth: f64,
    /// How long the fall takes.
    pub fall: String,
    /// How long the rebound takes, and the fraction of the loss it recovers.
    pub rebound: String,
    pub recovery: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Path relative to `$HORIZON_DATA` (default `../shared/data`).
    pub file: String,
    /// `tardis-trades`, `binance-trades`, `binance-aggtrades`, `binance-klines`, `ohlcv`, `binance-ws`.
    pub format: String,
    /// Symbol to give records whose format carries none (OHLCV bars).
    #[serde(default)]
    pub symbol: Option<String>,
    /// Skip malformed lines (counted by reason) instead of stopping at the first.
    #[serde(default)]
    pub skip_bad: bool,
    /// Replay a recording without records (empty, header-only) as zero events with a warning,
    /// instead of refusing it.
    #[serde(default)]
    pub allow_empty: bool,
    /// Interval of the recorded bars (`1m`) for bar formats whose rows do not carry it
    /// (`ohlcv`; default 1m). Klines carry it in their close time; when given it must agree.
    #[serde(default)]
    pub interval: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortfolioConfig {
    pub id: String,
    pub cash: Fixed,
    #[serde(default)]
    pub fee_bps: i64,
    #[serde(default)]
    pub slippage_bps: i64,
    /// Largest target weight of one symbol (0.3 = 30% of portfolio value).
    pub max_weight: Fixed,
    /// Trade only when a weight drifts from its target by more than this.
    pub rebalance_band: Fixed,
    /// Smallest order notional worth sending.
    #[serde(default = "default_min_notional")]
    pub min_notional: Fixed,
}

fn default_min_notional() -> Fixed {
    Fixed::from_int(10)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategiesConfig {
    #[serde(default)]
    pub ema_crossover: Option<EmaCrossoverConfig>,
    #[serde(default)]
    pub breakout: Option<BreakoutConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaCrossoverConfig {
    pub fast: u32,
    pub slow: u32,
    /// Spread between the EMAs, as a fraction of price, that counts as full strength.
    pub full_strength_spread: Fixed,
    #[serde(default = "fixed_one")]
    pub weight: Fixed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakoutConfig {
    /// Bars in the channel.
    pub lookback: u32,
    /// Breakouts must clear the channel by this many average true ranges.
    pub atr_multiple: Fixed,
    #[serde(default = "fixed_one")]
    pub weight: Fixed,
}

fn fixed_one() -> Fixed {
    Fixed::ONE
}

/// `[signals]`: the strategies by registered name (`strategy::StrategyRegistry`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    #[serde(default)]
    pub strategy: Vec<StrategyEntry>,
}

/// One `[[signals.strategy]]`: a registered strategy, its weight in the combined signal and
/// its parameters (checked by the strategy's factory).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrategyEntry {
    pub name: String,
    #[serde(default = "fixed_one")]
    pub weight: Fixed,
    #[serde(default)]
    pub params: toml::Table,
}

/// A strategy as the signals service is configured with it, from either syntax, with the keys
/// errors about it name.
#[derive(Clone, Debug, PartialEq)]
pub struct StrategySpec {
    pub name: String,
    pub weight: Fixed,
    pub params: toml::Table,
    /// Where the name is (`signals.strategy[0].name`), and its parameters
    /// (`signals.strategy[0].params`, or the fixed section itself).
    pub name_key: String,
    pub params_key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Drawdown of portfolio value from its peak (0.1 = 10%).
    pub drawdown: Fixed,
    /// Largest weight of one asset in the portfolio.
    pub concentration: Fixed,
    /// Realised volatility of bar returns (per bar, as a fraction) over `volatility_window` bars.
    pub volatility: Fixed,
    pub volatility_window: u32,
    /// Bar-to-bar move (|close - previous close| / previous close).
    pub gap: Fixed,
    /// A crossing clears only when the measure falls below threshold * (1 - hysteresis).
    pub hysteresis: Fixed,
    /// Fraction of target exposure kept while a drawdown or volatility crossing is active.
    pub derisk_to: Fixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionKind {
    Signal,
    Risk,
    Rebalance,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub id: String,
    pub kinds: Vec<SubscriptionKind>,
    /// Symbols of interest; empty means all.
    #[serde(default)]
    pub symbols: Vec<String>,
    /// Risk kinds of interest; empty means all.
    #[serde(default)]
    pub risk_kinds: Vec<RiskKind>,
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// At most this many notifications per window (event time).
    pub max_per_window: u32,
    pub window: String,
}

fn default_min_severity() -> Severity {
    Severity::Info
}

impl Scenario {
    /// Parses and validates a scenario whose strategies are the shipped ones. `origin` names
    /// the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml_with(text, origin, &StrategyRegistry::shipped())
    }

    /// Parses and validates a scenario; its strategies are looked up in `registry` and built
    /// once from their parameters, so an unknown name or a bad parameter is an error here.
    pub fn from_toml_with(text: &str, origin: &str, registry: &StrategyRegistry) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| {
            let span = e.span().map(|s| line_col(text, s.start));
            let problem = e.message().trim().to_string();
            ScenarioError {
                origin: match span {
                    Some((l, c)) => format!("{origin}:{l}:{c}"),
                    None => origin.to_string(),
                },
                key: span.map(|(l, _)| key_at_line(text, l)).unwrap_or_default(),
                problem,
            }
        })?;
        scenario.origin = origin.to_string();
        scenario.validate().map_err(|(key, problem)| ScenarioError {
            origin: origin.to_string(),
            key,
            problem,
        })?;
        registry.resolve(&scenario)?;
        Ok(scenario)
    }

    /// The strategies in the order the signals service evaluates them (and lists their views):
    /// `[strategies.ema_crossover]`, `[strategies.breakout]`, then every `[[signals.strategy]]`
    /// in file order.
    pub fn strategy_specs(&self) -> Vec<StrategySpec> {
        let mut specs = Vec::new();
        if let Some(c) = &self.strategies.ema_crossover {
            specs.push(fixed_section("ema_crossover", crate::signals::EMA_CROSSOVER, c.weight, c));
        }
        if let Some(c) = &self.strategies.breakout {
            specs.push(fixed_section("breakout", crate::signals::BREAKOUT, c.weight, c));
        }
        for (i, e) in self.signals.strategy.iter().enumerate() {
            specs.push(StrategySpec {
                name: e.name.clone(),
                weight: e.weight,
                params: e.params.clone(),
                name_key: format!("signals.strategy[{i}].name"),
                params_key: format!("signals.strategy[{i}].params"),
            });
        }
        specs
    }

    /// The bar intervals in milliseconds; the first drives the strategies.
    pub fn bar_intervals_ms(&self) -> Vec<i64> {
        self.market.bar_intervals.iter().filter_map(|s| parse_duration_ms(s)).collect()
    }

    pub fn signal_interval_ms(&self) -> i64 {
        self.bar_intervals_ms()[0]
    }

    pub fn symbols(&self) -> Vec<String> {
        self.market.symbols.iter().map(|s| s.symbol.clone()).collect()
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_string(), p));
        if self.name.trim().is_empty() {
            return err("name", "must not be empty".into());
        }
        if self.market.bar_intervals.is_empty() {
            return err("market.bar_intervals", "needs at least one interval, e.g. [\"1m\"]".into());
        }
        for (i, s) in self.market.bar_intervals.iter().enumerate() {
            match parse_duration_ms(s) {
                Some(ms) if ms > 0 => {}
                _ => {
                    return err(
                        &format!("market.bar_intervals[{i}]"),
                        format!("`{s}` is not a duration like 1m, 5m or 1h"),
                    )
                }
            }
        }
        if self.market.symbols.is_empty() {
            return err("market.symbols", "needs at least one symbol".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.market.symbols.iter().enumerate() {
            let k = format!("market.symbols[{i}]");
            if s.symbol.is_empty()
                || !s
                    .symbol
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'/')
            {
                return err(
                    &format!("{k}.symbol"),
                    format!("`{}` is not a symbol (letters, digits, - _ /)", s.symbol),
                );
            }
            if !seen.insert(&s.symbol) {
                return err(&format!("{k}.symbol"), format!("`{}` is listed twice", s.symbol));
            }
            if !(0.0..=1.0).contains(&s.beta) {
                return err(&format!("{k}.beta"), format!("must be between 0 and 1, got {}", s.beta));
            }
            if !(s.vol_scale.is_finite() && s.vol_scale > 0.0) {
                return err(&format!("{k}.vol_scale"), format!("must be positive, got {}", s.vol_scale));
            }
            if !s.tick.is_positive() {
                return err(&format!("{k}.tick"), "must be positive".into());
            }
            if !s.lot.is_positive() {
                return err(&format!("{k}.lot"), "must be positive".into());
            }
        }
        match (&self.market.generator, &self.market.recording) {
            (None, None) => return err("market", "needs a [market.generator] or a [market.recording] section".into()),
            (Some(_), Some(_)) => return err("market", "has both [market.generator] and [market.recording]; choose one".into()),
            _ => {}
        }
        if let Some(r) = &self.market.recording {
            if r.file.trim().is_empty() {
                return err("market.recording.file", "must not be empty".into());
            }
            if let Some(iv) = &r.interval {
                let Some(ms) = parse_duration_ms(iv).filter(|ms| *ms > 0) else {
                    return err("market.recording.interval", format!("`{iv}` is not a duration like 1m"));
                };
                if let Some(bad) = self
                    .market
                    .bar_intervals
                    .iter()
                    .find(|b| parse_duration_ms(b).is_some_and(|b| b % ms != 0))
                {
                    return err(
                        "market.recording.interval",
                        format!("{iv} bars cannot build the configured {bad} bars (an interval must be a multiple of {iv})"),
                    );
                }
            }
        }
        if let Some(g) = &self.market.generator {
            if Timestamp::parse_rfc3339(&g.start).is_none() {
                return err(
                    "market.generator.start",
                    format!("`{}` is not a date-time like 2024-03-01T00:00:00Z", g.start),
                );
            }
            match parse_duration_ms(&g.duration) {
                Some(ms) if ms > 0 => {}
                _ => return err("market.generator.duration", format!("`{}` is not a duration like 6h", g.duration)),
            }
            let positive = [
                ("trades_per_minute", g.trades_per_minute),
                ("calm_vol", g.calm_vol),
                ("stressed_vol", g.stressed_vol),
            ];
            for (k, v) in positive {
                if !(v.is_finite() && v > 0.0) {
                    return err(&format!("market.generator.{k}"), format!("must be positive, got {v}"));
                }
            }
            let rates = [
                ("regime_switches_per_hour", g.regime_switches_per_hour),
                ("jumps_per_hour", g.jumps_per_hour),
                ("jump_size", g.jump_size),
            ];
            for (k, v) in rates {
                if !(v.is_finite() && v >= 0.0) {
                    return err(&format!("market.generator.{k}"), format!("must be zero or positive, got {v}"));
                }
            }
            let probabilities = [
                ("duplicate_rate", g.duplicate_rate),
                ("out_of_order_rate", g.out_of_order_rate),
                ("bad_trade_rate", g.bad_trade_rate),
            ];
            for (k, v) in probabilities {
                if !(0.0..=1.0).contains(&v) {
                    return err(
                        &format!("market.generator.{k}"),
                        format!("must be a probability between 0 and 1, got {v}"),
                    );
                }
            }
            for (i, s) in self.market.symbols.iter().enumerate() {
                if !s.price.is_some_and(|p| p.is_positive()) {
                    return err(
                        &format!("market.symbols[{i}].price"),
                        "the generator needs a positive starting price".into(),
                    );
                }
            }
            for (i, c) in g.flash_crash.iter().enumerate() {
                let k = format!("market.generator.flash_crash[{i}]");
                for (name, v) in [("at", &c.at), ("fall", &c.fall), ("rebound", &c.rebound)] {
                    if parse_duration_ms(v).is_none() {
                        return err(&format!("{k}.{name}"), format!("`{v}` is not a duration"));
                    }
                }
                if !(c.depth > 0.0 && c.depth < 1.0) {
                    return err(&format!("{k}.depth"), format!("must be between 0 and 1, got {}", c.depth));
                }
                if !(0.0..=1.0).contains(&c.recovery) {
                    return err(&format!("{k}.recovery"), format!("must be between 0 and 1, got {}", c.recovery));
                }
            }
        }
        let p = &self.portfolio;
        if p.id.is_empty() {
            return err("portfolio.id", "must not be empty".into());
        }
        if !p.cash.is_positive() {
            return err("portfolio.cash", format!("must be positive, got {}", p.cash));
        }
        if !(0..=1_000).contains(&p.fee_bps) {
            return err("portfolio.fee_bps", format!("must be between 0 and 1000, got {}", p.fee_bps));
        }
        if !(0..=1_000).contains(&p.slippage_bps) {
            return err(
                "portfolio.slippage_bps",
                format!("must be between 0 and 1000, got {}", p.slippage_bps),
            );
        }
        fraction("portfolio.max_weight", p.max_weight)?;
        fraction("portfolio.rebalance_band", p.rebalance_band)?;
        // Each strategy's parameters are its factory's to check (`StrategyRegistry::resolve`).
        let specs = self.strategy_specs();
        if specs.is_empty() {
            return err(
                "strategies",
                "configure at least one strategy: [strategies.ema_crossover], [strategies.breakout] or a [[signals.strategy]]".into(),
            );
        }
        let fixed = [
            ("ema_crossover", self.strategies.ema_crossover.as_ref().map(|c| c.weight)),
            ("breakout", self.strategies.breakout.as_ref().map(|c| c.weight)),
        ];
        for (section, weight) in fixed {
            if weight.is_some_and(|w| w.is_negative()) {
                return err(&format!("strategies.{section}.weight"), "must not be negative".into());
            }
        }
        for (i, e) in self.signals.strategy.iter().enumerate() {
            if e.name.trim().is_empty() {
                return err(&format!("signals.strategy[{i}].name"), "must not be empty".into());
            }
            if e.weight.is_negative() {
                return err(&format!("signals.strategy[{i}].weight"), "must not be negative".into());
            }
        }
        let r = &self.risk;
        fraction("risk.drawdown", r.drawdown)?;
        fraction("risk.concentration", r.concentration)?;
        fraction("risk.gap", r.gap)?;
        fraction("risk.hysteresis", r.hysteresis)?;
        fraction("risk.derisk_to", r.derisk_to)?;
        if !r.volatility.is_positive() {
            return err("risk.volatility", "must be positive".into());
        }
        if r.volatility_window < 2 {
            return err(
                "risk.volatility_window",
                format!("must be at least 2 bars, got {}", r.volatility_window),
            );
        }
        let mut users = std::collections::BTreeSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let k = format!("users[{i}]");
            if u.id.is_empty() {
                return err(&format!("{k}.id"), "must not be empty".into());
            }
            if !users.insert(&u.id) {
                return err(&format!("{k}.id"), format!("`{}` is listed twice", u.id));
            }
            if u.kinds.is_empty() {
                return err(&format!("{k}.kinds"), "subscribe to at least one of signal, risk, rebalance".into());
            }
            for (j, sym) in u.symbols.iter().enumerate() {
                if !self.market.symbols.iter().any(|s| &s.symbol == sym) {
                    return err(
                        &format!("{k}.symbols[{j}]"),
                        format!("`{sym}` is not one of the scenario's symbols"),
                    );
                }
            }
            if u.max_per_window == 0 {
                return err(&format!("{k}.max_per_window"), "must be at least 1".into());
            }
            match parse_duration_ms(&u.window) {
                Some(ms) if ms > 0 => {}
                _ => return err(&format!("{k}.window"), format!("`{}` is not a duration like 1h", u.window)),
            }
        }
        Ok(())
    }
}

/// A fixed strategy section as a spec: its fields but `weight` are the strategy's parameters.
fn fixed_section<T: Serialize>(section: &str, name: &str, weight: Fixed, config: &T) -> StrategySpec {
    let mut params = toml::Table::try_from(config).expect("a strategy section serialises as a table");
    params.remove("weight");
    StrategySpec {
        name: name.to_string(),
        weight,
        params,
        name_key: format!("strategies.{section}"),
        params_key: format!("strategies.{section}"),
    }
}

fn fraction(key: &str, v: Fixed) -> Result<(), (String, String)> {
    if v.is_negative() || v > Fixed::ONE {
        Err((key.to_string(), format!("must be a fraction between 0 and 1, got {v}")))
    } else {
        Ok(())
    }
}

/// The dotted key assigned on a line (`portfolio.max_weight`), from the line and the table
/// header above it; empty if the line assigns nothing.
fn key_at_line(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(l) = lines.get(line.saturating_sub(1)) else {
        return String::new();
    };
    let Some((key, _)) = l.split_once('=') else { return String::new() };
    let key = key.trim();
    let table = lines[..line.saturating_sub(1)]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLASH_CRASH: &str = include_str!("../../scenarios/flash-crash.toml");

    fn with_strategies(strategies: &str) -> String {
        let (from, to) = (
            FLASH_CRASH.find("[strategies.ema_crossover]").unwrap(),
            FLASH_CRASH.find("[risk]").unwrap(),
        );
        format!("{}{strategies}\n{}", &FLASH_CRASH[..from], &FLASH_CRASH[to..])
    }

    fn error(text: &str) -> String {
        Scenario::from_toml(text, "s.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_fixed_sections_come_first_then_the_named_strategies_in_file_order() {
        // Given a scenario with both syntaxes,
        let text = FLASH_CRASH.replace(
            "[risk]",
            "[[signals.strategy]]\nname = \"breakout\"\nweight = \"0.2\"\nparams = { lookback = 10, atr_multiple = \"1\" }\n\n[risk]",
        );
        // when its strategies are listed,
        let specs = Scenario::from_toml(&text, "s.toml").unwrap().strategy_specs();
        // then the fixed sections come first (their weight is not a parameter), then the entry.
        let names: Vec<(&str, String, &str)> = specs
            .iter()
            .map(|s| (s.name.as_str(), s.weight.to_string(), s.params_key.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("ema-crossover", "0.6".into(), "strategies.ema_crossover"),
                ("breakout", "0.4".into(), "strategies.breakout"),
                ("breakout", "0.2".into(), "signals.strategy[0].params"),
            ]
        );
        assert!(!specs[0].params.contains_key("weight"));
        assert_eq!(specs[2].params.get("lookback"), Some(&toml::Value::Integer(10)));
    }

    #[test]
    fn the_fixed_sections_bad_values_are_reported_at_their_keys_as_before() {
        let ema = FLASH_CRASH.replace("fast = 12", "fast = 60");
        assert_eq!(
            error(&ema),
            "s.toml: `strategies.ema_crossover`: needs 0 < fast < slow, got fast = 60 and slow = 48"
        );
        let breakout = FLASH_CRASH.replace("lookback = 30", "lookback = 1");
        assert_eq!(
            error(&breakout),
            "s.toml: `strategies.breakout.lookback`: must be at least 2, got 1"
        );
        let weight = FLASH_CRASH.replace("weight = \"0.4\"", "weight = \"-0.4\"");
        assert_eq!(error(&weight), "s.toml: `strategies.breakout.weight`: must not be negative");
    }

    #[test]
    fn a_named_strategy_needs_a_name_and_a_weight_that_is_not_negative() {
        let entry = |body: &str| with_strategies(&format!("[[signals.strategy]]\n{body}\n"));
        assert_eq!(
            error(&entry("name = \"\"")),
            "s.toml: `signals.strategy[0].name`: must not be empty"
        );
        assert_eq!(
            error(&entry(
                "name = \"breakout\"\nweight = \"-1\"\nparams = { lookback = 3, atr_multiple = \"0\" }"
            )),
            "s.toml: `signals.strategy[0].weight`: must not be negative"
        );
        assert!(error(&entry("name = \"breakout\"\nlookback = 3")).contains("unknown field `lookback`"));
        assert_eq!(
            error(&with_strategies("")),
            "s.toml: `strategies`: configure at least one strategy: [strategies.ema_crossover], [strategies.breakout] or a [[signals.strategy]]"
        );
    }
}
