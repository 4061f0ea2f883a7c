//! Binance public data CSVs (data.binance.vision), read with or without their header line:
//!
//! - trades: `id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]`
//! - aggTrades: `agg_id,price,qty,first_id,last_id,time,is_buyer_maker[,is_best_match]`
//! - klines: `open_time,open,high,low,close,volume,close_time,quote_volume,count,
//!   taker_buy_volume,taker_buy_quote_volume,ignore`
//!
//! Times are milliseconds, or microseconds in spot files from 2025 on; each value's unit is told
//! by its magnitude. `is_buyer_maker = true` means the seller was the aggressor. A kline's
//! interval is `close_time - open_time + 1` unit; a configured interval must agree.

use super::fields::{self, split};
use super::{FieldError, LineParser, MarketRecord, Parsed, Problem, ReadReport};
use horizon_core::event::{Bar, Trade};
use horizon_core::time::{format_duration_ms, NANOS_PER_MS};

/// A first line whose first character is a letter is a header (`id,price,...`).
fn is_header(line: &str, first: bool) -> bool {
    first && line.as_bytes().first().is_some_and(|b| b.is_ascii_alphabetic())
}

/// Trades or aggregated trades.
pub struct Trades {
    symbol: String,
    exchange: String,
    aggregated: bool,
}

impl Trades {
    pub fn new(symbol: String, exchange: String, aggregated: bool) -> Trades {
        Trades {
            symbol,
            exchange,
            aggregated,
        }
    }
}

impl LineParser for Trades {
    fn parse(&mut self, line: &str, first: bool, _report: &mut ReadReport) -> Result<Parsed, FieldError> {
        if is_header(line, first) {
            return Ok(Parsed::Header);
        }
        let mut c = [""; fields::MAX_COLUMNS];
        let n = split(line, &mut c);
        let (id_field, time_at, side_at) = if self.aggregated {
            fields::columns(n, 7, 8)?;
            ("agg_id", 5, 6)
        } else {
            fields::columns(n, 6, 7)?;
            ("id", 4, 5)
        };
        let id = fields::whole(id_field, c[0])?;
        let price = fields::positive("price", c[1])?;
        let quantity = fields::positive("qty", c[2])?;
        if self.aggregated {
            let first_id = fields::whole("first_id", c[3])?;
            let last_id = fields::whole("last_id", c[4])?;
            if last_id < first_id {
                return Err(FieldError::at(
                    "last_id",
                    Problem::Inconsistent(format!("{last_id} is before first_id {first_id}")),
                ));
            }
        } else {
            fields::non_negative("quote_qty", c[3])?;
        }
        let ts = fields::epoch("time", c[time_at])?;
        let side = fields::buyer_maker_side("is_buyer_maker", c[side_at])?;
        if n == side_at + 2 {
            fields::buyer_maker_side("is_best_match", c[side_at + 1])?;
        }
        Ok(Parsed::Record(MarketRecord::Trade(Trade {
            symbol: self.symbol.clone(),
            exchange: self.exchange.clone(),
            trade_id: id.to_string(),
            price,
            quantity,
            aggressor_side: side,
            ts_exchange: ts,
        })))
    }
}

/// Klines (candlesticks) as bars.
pub struct Klines {
    symbol: String,
    exchange: String,
    interval_ms: Option<i64>,
    noted: bool,
}

impl Klines {
    pub fn new(symbol: String, exchange: String, interval_ms: Option<i64>) -> Klines {
        Klines {
            symbol,
            exchange,
            interval_ms,
            noted: false,
        }
    }
}

impl LineParser for Klines {
    fn parse(&mut self, line: &str, first: bool, report: &mut ReadReport) -> Result<Parsed, FieldError> {
        if is_header(line, first) {
            return Ok(Parsed::Header);
        }
        let mut c = [""; fields::MAX_COLUMNS];
        let n = split(line, &mut c);
        fields::columns(n, 12, 12)?;
        let open_units = fields::whole("open_time", c[0])?;
        let unit = fields::epoch_unit_nanos(open_units);
        let open = fields::positive("open", c[1])?;
        let high = fields::positive("high", c[2])?;
        let low = fields::positive("low", c[3])?;
        let close = fields::positive("close", c[4])?;
        let volume = fields::non_negative("volume", c[5])?;
        let close_units = fields::whole("close_time", c[6])?;
        fields::non_negative("quote_volume", c[7])?;
        let count = fields::whole("count", c[8])?;
        fields::non_negative("taker_buy_volume", c[9])?;
        fields::non_negative("taker_buy_quote_volume", c[10])?;
        let span_ns = (close_units - open_units + 1).saturating_mul(unit);
        if span_ns <= 0 || span_ns % NANOS_PER_MS != 0 {
            return Err(FieldError::at(
                "close_time",
                Problem::Inconsistent(format!(
                    "{close_units} does not close a whole-millisecond interval opened at {open_units}"
                )),
            ));
        }
        let interval_ms = span_ns / NANOS_PER_MS;
        if let Some(want) = self.interval_ms {
            if want != interval_ms {
                return Err(FieldError::at(
                    "close_time",
                    Problem::Inconsistent(format!(
                        "closes a {} kline, but the recording's interval is {}",
                        format_duration_ms(interval_ms),
                        format_duration_ms(want)
                    )),
                ));
            }
        } else {
            self.interval_ms = Some(interval_ms);
        }
        if !self.noted {
            self.noted = true;
            report.notes.insert("interval".into(), format_duration_ms(interval_ms));
        }
        let bar = Bar {
            symbol: self.symbol.clone(),
            exchange: self.exchange.clone(),
            interval_ms,
            start: horizon_core::Timestamp::from_nanos(open_units.saturating_mul(unit)),
            open,
            high,
            low,
            close,
            volume,
            trade_count: u32::try_from(count).map_err(|_| FieldError::at("count", Problem::OutOfRange(c[8].to_string())))?,
            seq: 0,
        };
        fields::check_bar(&bar)?;
        Ok(Parsed::Record(MarketRecord::Bar(bar)))
    }
}
