//! A generic OHLCV CSV: a header naming `timestamp` (or `time`, `date`, `datetime`,
//! `open_time`), `open`, `high`, `low`, `close` and `volume`, in any order (other columns are
//! ignored); times as ISO 8601 UTC text or an epoch count in s, ms, µs or ns; one bar a row of
//! the recording's interval (default 1m), stamped at its start.

use super::fields::{self, split};
use super::{FieldError, LineParser, MarketRecord, Parsed, Problem, ReadReport};
use horizon_core::event::Bar;

const TIME_NAMES: [&str; 5] = ["timestamp", "time", "date", "datetime", "open_time"];
const VALUE_NAMES: [&str; 5] = ["open", "high", "low", "close", "volume"];

pub struct Ohlcv {
    symbol: String,
    exchange: String,
    interval_ms: i64,
    /// Column of timestamp, open, high, low, close, volume; set by the header.
    index: Option<[usize; 6]>,
    columns: usize,
}

impl Ohlcv {
    pub fn new(symbol: String, exchange: String, interval_ms: i64) -> Ohlcv {
        Ohlcv {
            symbol,
            exchange,
            interval_ms,
            index: None,
            columns: 0,
        }
    }

    fn header(&mut self, line: &str) -> Result<Parsed, FieldError> {
        let names: Vec<String> = line.split(',').map(|s| s.trim().trim_matches('"').to_ascii_lowercase()).collect();
        if names.len() > fields::MAX_COLUMNS {
            return Err(FieldError::line(Problem::Header(format!(
                "header has {} columns; at most {} are read",
                names.len(),
                fields::MAX_COLUMNS
            ))));
        }
        let find = |candidates: &[&str]| names.iter().position(|n| candidates.contains(&n.as_str()));
        let mut index = [0usize; 6];
        index[0] = find(&TIME_NAMES).ok_or_else(|| {
            FieldError::line(Problem::Header(format!(
                "header `{line}` has no time column (one of {})",
                TIME_NAMES.join(", ")
            )))
        })?;
        for (i, name) in VALUE_NAMES.iter().enumerate() {
            index[i + 1] =
                find(&[name]).ok_or_else(|| FieldError::line(Problem::Header(format!("header `{line}` has no `{name}` column"))))?;
        }
        self.index = Some(index);
        self.columns = names.len();
        Ok(Parsed::Header)
    }
}

impl LineParser for Ohlcv {
    fn parse(&mut self, line: &str, first: bool, _report: &mut ReadReport) -> Result<Parsed, FieldError> {
        let _ = first;
        let Some(ix) = self.index else {
            // The first readable line is the header.
            return self.header(line);
        };
        let mut c = [""; fields::MAX_COLUMNS];
        let n = split(line, &mut c);
        fields::columns(n, self.columns, self.columns)?;
        let bar = Bar {
            symbol: self.symbol.clone(),
            exchange: self.exchange.clone(),
            interval_ms: self.interval_ms,
            start: fields::time("timestamp", c[ix[0]].trim())?,
            open: fields::positive("open", c[ix[1]])?,
            high: fields::positive("high", c[ix[2]])?,
            low: fields::positive("low", c[ix[3]])?,
            close: fields::positive("close", c[ix[4]])?,
            volume: fields::non_negative("volume", c[ix[5]])?,
            trade_count: 0,
            seq: 0,
        };
        fields::check_bar(&bar)?;
        Ok(Parsed::Record(MarketRecord::Bar(bar)))
    }
}
