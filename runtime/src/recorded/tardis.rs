//! tardis.dev trades CSV: `exchange,symbol,timestamp,local_timestamp,id,side,price,amount`,
//! times in microseconds since the epoch, `side` the aggressor's (`buy`/`sell`). The exchange's
//! `timestamp` is the trade's time; `local_timestamp` (tardis' receive time) is not used.

use super::fields::{self, split};
use super::{FieldError, LineParser, MarketRecord, Parsed, Problem, ReadReport};
use horizon_core::event::Trade;
use horizon_core::Timestamp;

pub const HEADER: &str = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount";

#[derive(Default)]
pub struct TardisTrades;

impl TardisTrades {
    pub fn new() -> TardisTrades {
        TardisTrades
    }
}

impl LineParser for TardisTrades {
    fn parse(&mut self, line: &str, first: bool, _report: &mut ReadReport) -> Result<Parsed, FieldError> {
        if first && line.starts_with("exchange") {
            if line.trim_end() != HEADER {
                return Err(FieldError::line(Problem::Header(format!(
                    "header `{line}` is not tardis.dev's trades header `{HEADER}`"
                ))));
            }
            return Ok(Parsed::Header);
        }
        let mut cols = [""; fields::MAX_COLUMNS];
        let n = split(line, &mut cols);
        fields::columns(n, 8, 8)?;
        parse_row(&cols).map(Parsed::Record)
    }
}

fn parse_row(c: &[&str]) -> Result<MarketRecord, FieldError> {
    let exchange = fields::text("exchange", c[0])?;
    let symbol = fields::text("symbol", c[1])?;
    let micros = fields::whole("timestamp", c[2])?;
    if !c[3].is_empty() {
        fields::whole("local_timestamp", c[3])?;
    }
    let id = fields::text("id", c[4])?;
    let side = fields::side("side", c[5])?;
    let price = fields::positive("price", c[6])?;
    let quantity = fields::positive("amount", c[7])?;
    Ok(MarketRecord::Trade(Trade {
        symbol: symbol.to_string(),
        exchange: exchange.to_string(),
        trade_id: id.to_string(),
        price,
        quantity,
        aggressor_side: side,
        ts_exchange: Timestamp::from_micros(micros),
    }))
}
