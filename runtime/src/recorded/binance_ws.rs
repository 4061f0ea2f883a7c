//! Raw Binance WebSocket captures: one message a line, `<local receive time, ns> <json>`, the
//! JSON a combined-stream message `{"stream": "btcusdt@trade", "data": {...}}` or a REST depth
//! snapshot `{"lastUpdateId": ..., "bids": [...], "asks": [...]}`.
//!
//! Kept: `@trade` and `@aggTrade` messages become trades (time `T`, the exchange's trade time;
//! `m = true`, buyer is maker, means the seller was the aggressor). Trades of a type other than
//! `MARKET` (`X`: insurance-fund or auto-deleverage fills) are not market trades and are ignored.
//! Summarised: `@bookTicker` best bid/ask updates (`QuoteStats`). Rebuilt: the order book, from
//! the depth snapshot and the `@depth` diffs by Binance's USDⓈ-M rules (diffs are buffered until
//! a snapshot arrives; a diff older than the snapshot is dropped; the first one applied must
//! span the snapshot's `lastUpdateId`; each later one's `pu` must be the previous one's `u`, or
//! the book is discarded until the next snapshot). It is checked against every book ticker
//! stamped with the book's update id (`BookStats`). The pipeline has no quote or book event, so
//! none of this is published. Every message is parsed, so a truncated or malformed line is
//! reported whatever its stream.

use super::fields;
use super::{FieldError, LineParser, MarketRecord, Parsed, Problem, QuoteStats, ReadReport};
use horizon_core::event::{Side, Trade};
use horizon_core::{Fixed, Timestamp};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Depth diffs kept while waiting for a snapshot; older ones are dropped (counted).
const MAX_BUFFERED_DIFFS: usize = 10_000;

pub struct Capture {
    exchange: String,
    book: Option<Book>,
    buffered: VecDeque<Diff>,
}

impl Capture {
    pub fn new(exchange: String) -> Capture {
        Capture {
            exchange,
            book: None,
            buffered: VecDeque::new(),
        }
    }
}

/// The rebuilt order book, checked against the book tickers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BookStats {
    pub snapshots: u64,
    pub diffs_applied: u64,
    /// Diffs older than the snapshot they were buffered for.
    pub diffs_stale: u64,
    /// Diffs that arrived with no book to apply them to (before a snapshot, after a break) and
    /// were not applied later.
    pub diffs_unapplied: u64,
    /// Diffs whose `pu` was not the previous `u` (or that skipped past the snapshot): the book
    /// was discarded until the next snapshot.
    pub sequence_breaks: u64,
    /// Book tickers stamped with the book's own update id, and how many showed its best bid/ask.
    pub tickers_checked: u64,
    pub tickers_matching: u64,
    pub last_update_id: Option<u64>,
    pub bid_levels: usize,
    pub ask_levels: usize,
    pub best_bid: Option<Fixed>,
    pub best_ask: Option<Fixed>,
}

struct Diff {
    first: u64,
    last: u64,
    prev: Option<u64>,
    bids: Vec<(Fixed, Fixed)>,
    asks: Vec<(Fixed, Fixed)>,
}

struct Book {
    bids: BTreeMap<Fixed, Fixed>,
    asks: BTreeMap<Fixed, Fixed>,
    update_id: u64,
    /// No diff applied since the snapshot yet.
    fresh: bool,
}

impl Book {
    fn best(&self) -> (Option<Fixed>, Option<Fixed>) {
        (self.bids.keys().next_back().copied(), self.asks.keys().next().copied())
    }
}

fn levels(raw: &[(&str, &str)], field: &'static str) -> Result<Vec<(Fixed, Fixed)>, FieldError> {
    raw.iter()
        .map(|(p, q)| Ok((fields::positive(field, p)?, fields::non_negative(field, q)?)))
        .collect()
}

fn apply(side: &mut BTreeMap<Fixed, Fixed>, levels: &[(Fixed, Fixed)]) {
    for &(price, qty) in levels {
        if qty.is_zero() {
            side.remove(&price);
        } else {
            side.insert(price, qty);
        }
    }
}

impl Capture {
    fn stats(report: &mut ReadReport) -> &mut BookStats {
        report.book.get_or_insert_with(BookStats::default)
    }

    fn on_diff(&mut self, d: Diff, report: &mut ReadReport) {
        let Some(book) = self.book.as_mut() else {
            self.buffered.push_back(d);
            if self.buffered.len() > MAX_BUFFERED_DIFFS {
                self.buffered.pop_front();
                Self::stats(report).diffs_unapplied += 1;
            }
            return;
        };
        let stats = Self::stats(report);
        if book.fresh {
            if d.last < book.update_id {
                stats.diffs_stale += 1;
                return;
            }
            if d.first > book.update_id {
                stats.sequence_breaks += 1;
                stats.diffs_unapplied += 1;
                self.book = None;
                return;
            }
        } else if d.prev != Some(book.update_id) {
            stats.sequence_breaks += 1;
            stats.diffs_unapplied += 1;
            self.book = None;
            return;
        }
        apply(&mut book.bids, &d.bids);
        apply(&mut book.asks, &d.asks);
        book.update_id = d.last;
        book.fresh = false;
        stats.diffs_applied += 1;
        Self::summarise(book, stats);
    }

    fn summarise(book: &Book, stats: &mut BookStats) {
        let (bid, ask) = book.best();
        stats.best_bid = bid;
        stats.best_ask = ask;
        stats.bid_levels = book.bids.len();
        stats.ask_levels = book.asks.len();
        stats.last_update_id = Some(book.update_id);
    }

    fn on_snapshot(&mut self, s: Snapshot, report: &mut ReadReport) -> Result<(), FieldError> {
        let book = Book {
            bids: levels(&s.bids, "bids")?.into_iter().collect(),
            asks: levels(&s.asks, "asks")?.into_iter().collect(),
            update_id: s.lastUpdateId,
            fresh: true,
        };
        let stats = Self::stats(report);
        stats.snapshots += 1;
        Self::summarise(&book, stats);
        self.book = Some(book);
        for d in std::mem::take(&mut self.buffered) {
            if self.book.is_some() {
                self.on_diff(d, report);
            } else {
                Self::stats(report).diffs_unapplied += 1;
            }
        }
        Ok(())
    }

    fn on_ticker(&mut self, update_id: Option<u64>, bid: Fixed, ask: Fixed, report: &mut ReadReport) {
        let Some(book) = self.book.as_ref().filter(|b| !b.fresh) else {
            return;
        };
        if update_id == Some(book.update_id) {
            let stats = Self::stats(report);
            stats.tickers_checked += 1;
            if book.best() == (Some(bid), Some(ask)) {
                stats.tickers_matching += 1;
            }
        }
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
    u: Option<u64>,
    #[serde(borrow)]
    b: &'a str,
    B: &'a str,
    a: &'a str,
    A: &'a str,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct DepthMsg<'a> {
    U: u64,
    u: u64,
    pu: Option<u64>,
    #[serde(borrow)]
    b: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    a: Vec<(&'a str, &'a str)>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Snapshot<'a> {
    lastUpdateId: u64,
    #[serde(borrow)]
    bids: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    asks: Vec<(&'a str, &'a str)>,
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
    fn finish(&mut self, report: &mut ReadReport) {
        let left = self.buffered.len() as u64;
        if left > 0 {
            Self::stats(report).diffs_unapplied += left;
            self.buffered.clear();
        }
    }

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
                self.on_ticker(d.u, bid, ask, report);
                Ok(Parsed::Ignored("book-ticker"))
            }
            Some(k) if k.starts_with("depth") => {
                let w: Wrapped<DepthMsg> = json(message)?;
                let d = w.data;
                if d.u < d.U {
                    return Err(FieldError::at(
                        "data.u",
                        Problem::Inconsistent(format!("{} is before U {}", d.u, d.U)),
                    ));
                }
                let diff = Diff {
                    first: d.U,
                    last: d.u,
                    prev: d.pu,
                    bids: levels(&d.b, "data.b")?,
                    asks: levels(&d.a, "data.a")?,
                };
                self.on_diff(diff, report);
                Ok(Parsed::Ignored("depth-update"))
            }
            Some(_) => {
                let _: Wrapped<IgnoredAny> = json(message)?;
                Ok(Parsed::Ignored("other-stream"))
            }
            None if message.contains("\"lastUpdateId\"") => {
                let snapshot: Snapshot = json(message)?;
                self.on_snapshot(snapshot, report)?;
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
