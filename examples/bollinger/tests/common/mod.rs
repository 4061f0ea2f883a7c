//! Bars and bar events for the example's tests.
#![allow(dead_code)]

use horizon_core::event::{Bar, Event, Payload};
use horizon_core::strategy::StrategyParams;
use horizon_core::{Fixed, Timestamp};

pub const MINUTE: i64 = 60_000;

pub fn fx(s: &str) -> Fixed {
    s.parse().unwrap()
}

/// Bar `seq` of `symbol`'s one-minute series, closing at `close`.
pub fn bar_of(symbol: &str, seq: u64, close: Fixed) -> Bar {
    Bar {
        symbol: symbol.into(),
        exchange: "SIM".into(),
        interval_ms: MINUTE,
        start: Timestamp::from_millis(seq as i64 * MINUTE),
        open: close,
        high: close,
        low: close,
        close,
        volume: Fixed::ONE,
        trade_count: 1,
        seq,
    }
}

pub fn bar(seq: u64, close: &str) -> Bar {
    bar_of("BTCUSDT", seq, fx(close))
}

/// The market's event for a bar (a root event here; its id names the symbol and sequence).
pub fn bar_event(b: &Bar) -> Event {
    Event::root(
        format!("bar-{}-{}-{}", b.symbol, b.interval_ms, b.seq),
        b.symbol.clone(),
        b.end(),
        "market",
        Payload::Bar(b.clone()),
    )
}

pub fn params(text: &str) -> StrategyParams {
    toml::from_str(text).unwrap()
}
