//! The market-data service: validates and normalises trades (and recorded bars) from
//! `market.feed` and builds OHLCV bars for every configured interval onto `market.bars`.
//!
//! Per symbol, in partition order: a trade id seen in the recent window is a feed replay and is
//! dropped (counted); a trade older than the open bar is late and rejected; a non-positive price,
//! a zero or negative quantity or an unknown symbol is rejected with that reason. Empty intervals
//! are filled forward with flat bars, so every symbol's bar series has no holes and its sequence
//! numbers are a watermark for the services that merge symbols.

use crate::event::{Bar, Event, Payload, Trade};
use crate::fixed::Fixed;
use crate::scenario::Scenario;
use crate::service::{Output, Rejection, Service};
use crate::time::Timestamp;
use crate::topics;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What the stage reads.
pub const INPUTS: &[crate::bus::Topic] = &[topics::MARKET_FEED];
pub const NAME: &str = "market";

#[derive(Clone, Debug)]
pub struct MarketConfig {
    pub symbols: BTreeSet<String>,
    pub intervals_ms: Vec<i64>,
    pub max_fill_bars: u32,
    pub dedup_window: usize,
}

impl MarketConfig {
    pub fn from_scenario(s: &Scenario) -> MarketConfig {
        MarketConfig {
            symbols: s.symbols().into_iter().collect(),
            intervals_ms: s.bar_intervals_ms(),
            max_fill_bars: s.market.max_fill_bars,
            dedup_window: s.market.dedup_window as usize,
        }
    }
}

/// One bar being built.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct OpenBar {
    bar: Bar,
    open_ts: Timestamp,
    close_ts: Timestamp,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct BarSeries {
    open: Option<OpenBar>,
    next_seq: u64,
    last_close: Option<Fixed>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct SymbolState {
    // 64-bit fingerprints of recent trade ids: no allocation per trade.
    recent_ids: VecDeque<u64>,
    recent_set: BTreeSet<u64>,
    series: BTreeMap<i64, BarSeries>,
}

/// FNV-1a: a fixed, seedless hash, so fingerprints are the same in every process.
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Counters a run reports; part of the state so a restored task counts the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MarketCounters {
    pub trades_accepted: u64,
    pub duplicates_dropped: u64,
    pub rejected: BTreeMap<String, u64>,
    pub bars_emitted: u64,
    pub bars_filled: u64,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct MarketState {
    symbols: BTreeMap<String, SymbolState>,
    pub counters: MarketCounters,
}

pub struct MarketService {
    pub config: MarketConfig,
}

/// A piece of market data reduced to what a bar needs.
struct Tick {
    ts: Timestamp,
    open: Fixed,
    high: Fixed,
    low: Fixed,
    close: Fixed,
    volume: Fixed,
    trades: u32,
}

impl MarketService {
    pub fn new(config: MarketConfig) -> MarketService {
        MarketService { config }
    }

    /// Checks a trade; the error is the rejection reason.
    pub fn validate_trade(&self, t: &Trade) -> Result<(), String> {
        if !self.config.symbols.contains(&t.symbol) {
            return Err(format!("unknown symbol `{}`", t.symbol));
        }
        if !t.price.is_positive() {
            return Err(format!("price must be positive, got {}", t.price));
        }
        if !t.quantity.is_positive() {
            return Err(format!("quantity must be positive, got {}", t.quantity));
        }
        Ok(())
    }

    pub fn validate_bar(&self, b: &Bar) -> Result<(), String> {
        if !self.config.symbols.contains(&b.symbol) {
            return Err(format!("unknown symbol `{}`", b.symbol));
        }
        for (name, v) in [("open", b.open), ("high", b.high), ("low", b.low), ("close", b.close)] {
            if !v.is_positive() {
                return Err(format!("bar {name} must be positive, got {v}"));
            }
        }
        if b.high < b.low || b.high < b.open.max(b.close) || b.low > b.open.min(b.close) {
            return Err(format!(
                "bar is inconsistent: high {} low {} open {} close {}",
                b.high, b.low, b.open, b.close
            ));
        }
        if b.volume.is_negative() {
            return Err(format!("bar volume must not be negative, got {}", b.volume));
        }
        if self.config.intervals_ms.iter().any(|i| i % b.interval_ms != 0) {
            return Err(format!("a {} ms bar cannot build every configured interval", b.interval_ms));
        }
        Ok(())
    }

    fn reject(state: &mut MarketState, reason: String) -> Result<(), Rejection> {
        let kind = reason
            .split([':', ','])
            .next()
            .unwrap_or("")
            .split(" must")
            .next()
            .unwrap_or("")
            .to_string();
        *state.counters.rejected.entry(kind).or_insert(0) += 1;
        Err(Rejection(reason))
    }

    fn apply(
        &self,
        state: &mut MarketState,
        cause: &Event,
        symbol: &str,
        exchange: &str,
        tick: Tick,
        out: &mut Vec<Output>,
    ) -> Result<(), Rejection> {
        let sym = state.symbols.entry(symbol.to_string()).or_default();
        // A tick older than any open bar is late: those bars are already published.
        for (&interval, series) in &sym.series {
            if let Some(open) = &series.open {
                if tick.ts < open.bar.start {
                    let reason = format!(
                        "late: exchange time {} is before the open {} bar starting {}",
                        tick.ts,
                        crate::time::format_duration_ms(interval),
                        open.bar.start
                    );
                    return Self::reject(state, reason);
                }
            }
        }
        let mut index = 0u32;
        for &interval in &self.config.intervals_ms {
            let series = sym.series.entry(interval).or_default();
            let start = tick.ts.floor_ms(interval);
            if let Some(open) = &series.open {
                if start > open.bar.start {
                    let closed = series.open.take().unwrap();
                    let mut fill_from = closed.bar.start.plus_ms(interval);
                    let close = closed.bar.close;
                    series.last_close = Some(close);
                    emit(out, cause, &mut index, closed.bar);
                    state.counters.bars_emitted += 1;
                    let mut filled = 0;
                    while fill_from < start && filled < self.config.max_fill_bars {
                        let bar = Bar {
                            symbol: symbol.to_string(),
                            exchange: exchange.to_string(),
                            interval_ms: interval,
                            start: fill_from,
                            open: close,
                            high: close,
                            low: close,
                            close,
                            volume: Fixed::ZERO,
                            trade_count: 0,
                            seq: series.next_seq,
                        };
                        series.next_seq += 1;
                        emit(out, cause, &mut index, bar);
                        state.counters.bars_emitted += 1;
                        state.counters.bars_filled += 1;
                        fill_from = fill_from.plus_ms(interval);
                        filled += 1;
                    }
                }
            }
            match &mut series.open {
                Some(open) => {
                    let b = &mut open.bar;
                    if tick.ts < open.open_ts {
                        open.open_ts = tick.ts;
                        b.open = tick.open;
                    }
                    if tick.ts >= open.close_ts {
                        open.close_ts = tick.ts;
                        b.close = tick.close;
                    }
                    b.high = b.high.max(tick.high);
                    b.low = b.low.min(tick.low);
                    b.volume += tick.volume;
                    b.trade_count += tick.trades;
                }
                None => {
                    let bar = Bar {
                        symbol: symbol.to_string(),
                        exchange: exchange.to_string(),
                        interval_ms: interval,
                        start,
                        open: tick.open,
                        high: tick.high,
                        low: tick.low,
                        close: tick.close,
                        volume: tick.volume,
                        trade_count: tick.trades,
                        seq: series.next_seq,
                    };
                    series.next_seq += 1;
                    series.open = Some(OpenBar {
                        bar,
                        open_ts: tick.ts,
                        close_ts: tick.ts,
                    });
                }
            }
        }
        Ok(())
    }

    /// Remembers an id in the bounded recent window; false if it was already there.
    fn first_sighting(&self, sym: &mut SymbolState, id: u64) -> bool {
        if !sym.recent_set.insert(id) {
            return false;
        }
        sym.recent_ids.push_back(id);
        while sym.recent_ids.len() > self.config.dedup_window {
            if let Some(old) = sym.recent_ids.pop_front() {
                sym.recent_set.remove(&old);
            }
        }
        true
    }
}

fn emit(out: &mut Vec<Output>, cause: &Event, index: &mut u32, bar: Bar) {
    let key = bar.symbol.clone();
    let ts = bar.end();
    let event = Event::derived(cause, NAME, *index, key.clone(), ts, Payload::Bar(bar));
    *index += 1;
    out.push(Output {
        topic: topics::BARS,
        key,
        event,
    });
}

impl Service for MarketService {
    type State = MarketState;

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
        INPUTS
    }

    fn handle(&self, state: &mut MarketState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        match &event.payload {
            Payload::Trade(t) => {
                if let Err(reason) = self.validate_trade(t) {
                    return Self::reject(state, reason);
                }
                let sym = state.symbols.entry(t.symbol.clone()).or_default();
                if !self.first_sighting(sym, fingerprint(&[t.exchange.as_bytes(), t.trade_id.as_bytes()])) {
                    state.counters.duplicates_dropped += 1;
                    return Ok(());
                }
                let tick = Tick {
                    ts: t.ts_exchange,
                    open: t.price,
                    high: t.price,
                    low: t.price,
                    close: t.price,
                    volume: t.quantity,
                    trades: 1,
                };
                self.apply(state, event, &t.symbol, &t.exchange, tick, out)?;
                state.counters.trades_accepted += 1;
                Ok(())
            }
            Payload::Bar(b) => {
                if let Err(reason) = self.validate_bar(b) {
                    return Self::reject(state, reason);
                }
                let sym = state.symbols.entry(b.symbol.clone()).or_default();
                let id = fingerprint(&[b"bar", &b.interval_ms.to_le_bytes(), &b.start.nanos().to_le_bytes()]);
                if !self.first_sighting(sym, id) {
                    state.counters.duplicates_dropped += 1;
                    return Ok(());
                }
                let tick = Tick {
                    ts: b.start,
                    open: b.open,
                    high: b.high,
                    low: b.low,
                    close: b.close,
                    volume: b.volume,
                    trades: b.trade_count,
                };
                self.apply(state, event, &b.symbol, &b.exchange, tick, out)?;
                state.counters.trades_accepted += 1;
                Ok(())
            }
            other => Self::reject(state, format!("{} does not belong on {}", other.event_type(), topics::MARKET_FEED)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{root_id, Side};

    fn service() -> MarketService {
        MarketService::new(MarketConfig {
            symbols: ["BTCUSDT".to_string()].into_iter().collect(),
            intervals_ms: vec![60_000, 300_000],
            max_fill_bars: 10,
            dedup_window: 100,
        })
    }

    fn trade(id: u32, secs: i64, price: &str, qty: &str) -> Event {
        let t = Trade {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            trade_id: id.to_string(),
            price: price.parse().unwrap(),
            quantity: qty.parse().unwrap(),
            aggressor_side: Side::Buy,
            ts_exchange: Timestamp::from_millis(secs * 1000),
        };
        Event::root(
            root_id(&["SIM", "BTCUSDT", &id.to_string()]),
            "BTCUSDT".into(),
            t.ts_exchange,
            "feed",
            Payload::Trade(t),
        )
    }

    /// Given trades, when handled in order, then the bars emitted (interval, seq, OHLCV).
    fn when(trades: &[Event]) -> (MarketState, Vec<Bar>, Vec<String>) {
        let svc = service();
        let mut state = MarketState::default();
        let mut out = Vec::new();
        let mut rejected = Vec::new();
        for t in trades {
            if let Err(r) = svc.handle(&mut state, t, &mut out) {
                rejected.push(r.0);
            }
        }
        let bars = out.into_iter().map(|o| match o.event.payload {
            Payload::Bar(b) => b,
            _ => unreachable!(),
        });
        (state, bars.collect(), rejected)
    }

    #[test]
    fn trades_build_ohlcv_and_a_later_trade_closes_the_bar() {
        let (_, bars, _) = when(&[
            trade(1, 0, "100", "1"),
            trade(2, 10, "105", "2"),
            trade(3, 20, "99", "1"),
            trade(4, 65, "101", "1"),
        ]);
        assert_eq!(bars.len(), 1);
        let b = &bars[0];
        assert_eq!(
            (b.interval_ms, b.seq, b.open, b.high, b.low, b.close),
            (
                60_000,
                0,
                Fixed::from_int(100),
                Fixed::from_int(105),
                Fixed::from_int(99),
                Fixed::from_int(99)
            )
        );
        assert_eq!((b.volume, b.trade_count), (Fixed::from_int(4), 3));
    }

    #[test]
    fn empty_intervals_are_filled_forward_with_flat_bars() {
        let (state, bars, _) = when(&[trade(1, 0, "100", "1"), trade(2, 185, "110", "1")]);
        let one_minute: Vec<_> = bars.iter().filter(|b| b.interval_ms == 60_000).collect();
        assert_eq!(one_minute.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            (one_minute[2].open, one_minute[2].close, one_minute[2].volume),
            (Fixed::from_int(100), Fixed::from_int(100), Fixed::ZERO)
        );
        assert_eq!(state.counters.bars_filled, 2);
    }

    #[test]
    fn a_replayed_trade_is_dropped_once_and_counted() {
        let (state, _, rejected) = when(&[trade(1, 0, "100", "1"), trade(1, 0, "100", "1")]);
        assert!(rejected.is_empty());
        assert_eq!((state.counters.trades_accepted, state.counters.duplicates_dropped), (1, 1));
    }

    #[test]
    fn each_invalid_input_is_rejected_with_its_reason() {
        let mut unknown = trade(9, 0, "100", "1");
        if let Payload::Trade(t) = &mut unknown.payload {
            t.symbol = "DOGEUSDT".into();
        }
        let (_, _, rejected) = when(&[
            trade(1, 0, "0", "1"),
            trade(2, 0, "-5", "1"),
            trade(3, 0, "100", "0"),
            unknown,
            trade(4, 120, "100", "1"),
            trade(5, 30, "100", "1"),
        ]);
        assert_eq!(
            rejected,
            vec![
                "price must be positive, got 0",
                "price must be positive, got -5",
                "quantity must be positive, got 0",
                "unknown symbol `DOGEUSDT`",
                "late: exchange time 1970-01-01T00:00:30.000Z is before the open 1m bar starting 1970-01-01T00:02:00.000Z",
            ]
        );
    }

    #[test]
    fn an_out_of_order_trade_inside_the_open_bar_sets_open_by_exchange_time() {
        let (_, bars, rejected) = when(&[trade(1, 10, "100", "1"), trade(2, 5, "90", "1"), trade(3, 70, "95", "1")]);
        assert!(rejected.is_empty());
        assert_eq!((bars[0].open, bars[0].close), (Fixed::from_int(90), Fixed::from_int(100)));
    }
}
