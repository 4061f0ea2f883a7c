//! The market-data gateway's pure part: turning an exchange trade into the root event it
//! publishes, and the record key it publishes it under.
//!
//! The gateway sits at the edge: it reads trades from the generator or a recording and
//! publishes them on `market.feed` (`topics::MARKET_FEED`), keyed by symbol so one symbol's
//! trades stay in one partition and in order. The event id is a function of exchange, symbol and
//! trade id, so a trade the feed delivers twice (a reconnect replay) carries the same id twice
//! and the market service can drop it.

use crate::event::{root_id, Bar, Event, Payload, Trade};

/// Producer name on every event the gateway publishes.
pub const PRODUCER: &str = "feed";

/// The root event for one trade: id from exchange, symbol and trade id; aggregate = symbol;
/// timestamp = the exchange's.
pub fn trade_event(trade: Trade) -> Event {
    let id = root_id(&[&trade.exchange, &trade.symbol, &trade.trade_id]);
    Event::root(id, trade.symbol.clone(), trade.ts_exchange, PRODUCER, Payload::Trade(trade))
}

/// The root event for one recorded bar (a bar recording replaces trades on the feed): id from
/// exchange, symbol, interval and start, so a replayed bar carries the same id; aggregate =
/// symbol; timestamp = the bar's end, the instant it was known to be complete.
pub fn bar_event(bar: Bar) -> Event {
    let id = root_id(&[
        &bar.exchange,
        &bar.symbol,
        "bar",
        &bar.interval_ms.to_string(),
        &bar.start.nanos().to_string(),
    ]);
    Event::root(id, bar.symbol.clone(), bar.end(), PRODUCER, Payload::Bar(bar))
}

/// The record key of a trade on the feed topic: its symbol.
pub fn trade_key(trade: &Trade) -> &str {
    &trade.symbol
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Side;
    use crate::time::Timestamp;

    #[test]
    fn a_replayed_trade_has_the_same_event_id() {
        // Given a trade and its replay, and a different trade
        let t = Trade {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            trade_id: "42".into(),
            price: "60000.5".parse().unwrap(),
            quantity: "0.01".parse().unwrap(),
            aggressor_side: Side::Buy,
            ts_exchange: Timestamp::from_millis(1_700_000_000_000),
        };
        let other = Trade {
            trade_id: "43".into(),
            ..t.clone()
        };
        // When turned into events
        let (a, b, c) = (trade_event(t.clone()), trade_event(t.clone()), trade_event(other));
        // Then the replay shares the id, the other does not, and the envelope is the feed's
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.id, root_id(&["SIM", "BTCUSDT", "42"]));
        assert_eq!(
            (a.aggregate_id.as_str(), a.ts, a.meta.producer.as_str()),
            ("BTCUSDT", t.ts_exchange, "feed")
        );
        assert_eq!(trade_key(&t), "BTCUSDT");
    }

    #[test]
    fn a_replayed_bar_has_the_same_event_id_and_is_stamped_at_its_end() {
        // Given a recorded bar, its replay, and the next bar
        let b = Bar {
            symbol: "BTC-PERP".into(),
            exchange: "FTX".into(),
            interval_ms: 60_000,
            start: Timestamp::from_millis(1_640_991_660_000),
            open: "46319".parse().unwrap(),
            high: "46385".parse().unwrap(),
            low: "46319".parse().unwrap(),
            close: "46377".parse().unwrap(),
            volume: "2300413.7295".parse().unwrap(),
            trade_count: 0,
            seq: 0,
        };
        let next = Bar {
            start: b.end(),
            ..b.clone()
        };
        // When turned into events
        let (x, y, z) = (bar_event(b.clone()), bar_event(b.clone()), bar_event(next));
        // Then the replay shares the id, the next bar does not, and the event is stamped at the end
        assert_eq!(x.id, y.id);
        assert_ne!(x.id, z.id);
        assert_eq!(
            (x.aggregate_id.as_str(), x.ts, x.meta.producer.as_str()),
            ("BTC-PERP", b.end(), "feed")
        );
        assert_ne!(
            x.id,
            trade_event(Trade {
                symbol: "BTC-PERP".into(),
                exchange: "FTX".into(),
                trade_id: "bar".into(),
                price: b.open,
                quantity: b.volume,
                aggressor_side: Side::Buy,
                ts_exchange: b.start,
            })
            .id
        );
    }
}
