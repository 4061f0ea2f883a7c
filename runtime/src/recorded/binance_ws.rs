//! Raw Binance WebSocket captures: one message a line, `<local receive time, ns> <json>`, the
//! JSON a combined-stream message `{"stream": "btcusdt@trade", "data": {...}}` or a REST depth
//! snapshot `{"lastUpdateId": ..., "bids": [...], "asks": [...]}`.
//!
//! Kept: `@trade` and `@aggTrade` messages become trades (time `T`, the exchange's trade time;
//! `m = true`, buyer is maker, means the seller was the aggressor). Trades of a type other than
//! `MARKET` (`X`: insurance-fund or auto-deleverage fills) are not market trades and are ignored.
//! Summarised: `@bookTicker` best bid/ask updates (`QuoteStats`). Counted: `@depth` diffs and
//! depth snapshots (the pipeline has no quote or book event; the book is not rebuilt). Every
//! message is parsed, so a truncated or malformed line is reported whatever its stream.

use super::fields;
use super::{FieldError, LineParser, MarketRecord, Parsed, Problem, QuoteStats, ReadReport};
use horizon_core::event::{Side, Trade};
use horizon_core::Timestamp;
use serde::de::IgnoredAny;
use serde::Deserialize;

pub struct Capture {
    exchange: String,
}

impl Capture {
    pub fn new(exchange: String) -> Capture {
        Capture { exchange }
    }
}

#[derive(Deserialize)]
struct Wrapped<T> {
    #[allow(dead_code)]
    stream: IgnoredAny,
    data: T,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct TradeMsg<'a> {
    #[serde(borrow)]
    s: &'a str,
    T: i64,
    t: Option<u64>,
    a: Option<u64>,
    p: &'a str,
    q: &'a str,
    m: bool,
    X: Option<&'a str>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct BookTickerMsg<'a> {
    #[serde(borrow)]
    b: &'a str,
    B: &'a str,
    a: &'a str,
    A: &'a str,
}

#[derive(Deserialize)]
#[allow(non_snake_case, dead_code)]
struct DepthMsg {
    U: u64,
    u: u64,
    b: IgnoredAny,
    a: IgnoredAny,
}

#[derive(Deserialize)]
#[allow(non_snake_case, dead_code)]
struct Snapshot {
    lastUpdateId: u64,
    bids: IgnoredAny,
    asks: IgnoredAny,
}

fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, FieldError> {
    serde_json::from_str(text).map_err(|e| FieldError::line(Problem::Json(e.to_string())))
}

/// The stream name of a combined-stream message, read from its start without parsing the rest.
fn stream_name(json: &str) -> Option<&str> {
    let rest = json.strip_prefix("{\"stream\":\"")?;
    rest.split_once('"').map(|(name, _)| name)
}

impl LineParser for Capture {
    fn parse(&mut self, line: &str, _first: bool, report: &mut ReadReport) -> Result<Parsed, FieldError> {
        let Some((received, message)) = line.split_once(' ') else {
            return Err(FieldError::line(Problem::Shape("not `<receive time ns> <json>`".into())));
        };
        fields::whole("receive_time", received)?;
        let message = message.trim();
        let kind = stream_name(message).map(|s| s.split_once('@').map_or(s, |(_, k)| k));
        match kind {
            Some("trade") | Some("aggTrade") => {
                let w: Wrapped<TradeMsg> = json(message)?;
                let d = w.data;
                if d.X.is_some_and(|x| x != "MARKET") {
                    return Ok(Parsed::Ignored("non-market-trade"));
                }
                let id = d.t.or(d.a).ok_or_else(|| FieldError::at("data.t", Problem::Missing))?;
                if d.T < 0 {
                    return Err(FieldError::at("data.T", Problem::Negative(d.T.to_string())));
                }
                let price = fields::positive("data.p", d.p)?;
                let quantity = fields::positive("data.q", d.q)?;
                Ok(Parsed::Record(MarketRecord::Trade(Trade {
                    symbol: fields::text("data.s", d.s)?.to_string(),
                    exchange: self.exchange.clone(),
                    trade_id: id.to_string(),
                    price,
                    quantity,
                    aggressor_side: if d.m { Side::Sell } else { Side::Buy },
                    ts_exchange: Timestamp::from_millis(d.T),
                })))
            }
            Some("bookTicker") => {
                let w: Wrapped<BookTickerMsg> = json(message)?;
                let d = w.data;
                let bid = fields::positive("data.b", d.b)?;
                fields::non_negative("data.B", d.B)?;
                let ask = fields::positive("data.a", d.a)?;
                fields::non_negative("data.A", d.A)?;
                report.quotes.get_or_insert_with(QuoteStats::default).add(bid, ask);
                Ok(Parsed::Ignored("book-ticker"))
            }
            Some(k) if k.starts_with("depth") => {
                let _: Wrapped<DepthMsg> = json(message)?;
                Ok(Parsed::Ignored("depth-update"))
            }
            Some(_) => {
                let _: Wrapped<IgnoredAny> = json(message)?;
                Ok(Parsed::Ignored("other-stream"))
            }
            None if message.contains("\"lastUpdateId\"") => {
                let _: Snapshot = json(message)?;
                Ok(Parsed::Ignored("depth-snapshot"))
            }
            None => {
                // Well-formed JSON of another kind (a subscription reply): counted, not kept.
                let _: IgnoredAny = json(message)?;
                Ok(Parsed::Ignored("other-message"))
            }
        }
    }
}
