//! Recorded market data: readers for exchange files and the feed they make.
//!
//! A reader turns a recorded file into a stream of `MarketRecord`s (a trade, or a bar for bar
//! recordings), which the feed turns into the root events the market-data gateway publishes on
//! `market.feed` (`feed::trade_event`, `feed::bar_event`). Formats (`Format`):
//!
//! | format | rows | record |
//! |---|---|---|
//! | `tardis-trades` | tardis.dev `exchange,symbol,timestamp,local_timestamp,id,side,price,amount` (µs) | trade |
//! | `binance-trades` | `id,price,qty,quote_qty,time,is_buyer_maker[,is_best_match]` | trade |
//! | `binance-aggtrades` | `agg_id,price,qty,first_id,last_id,time,is_buyer_maker[,is_best_match]` | trade |
//! | `binance-klines` | `open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_base,taker_quote,ignore` | bar |
//! | `ohlcv` | a header naming `timestamp,open,high,low,close,volume` (any order, more columns ignored) | bar |
//! | `binance-ws` | `<receive time ns> <json>`: `@trade`/`@aggTrade`, `@bookTicker`, `@depth` diffs, REST depth snapshots | trade |
//!
//! Binance CSVs are read with or without their header line, with millisecond or microsecond
//! times (told apart by magnitude, `fields::epoch`). Files are plain, gzip or zip (one entry),
//! told apart by their magic bytes, and streamed: memory does not grow with the file.
//!
//! Exactness: every price and quantity is parsed from its decimal text into `Fixed`; a value
//! with more than 8 decimals is an error naming the field, never rounded.
//!
//! Bad input: a malformed line is a `ReadError` naming the file, the line and the field
//! (`data.csv:1234: field `price`: `abc` is not a decimal number`), and the reader stops there.
//! With `skip_bad` it goes on and counts the skipped lines by reason in its `ReadReport`. An I/O
//! error (a truncated gzip stream, a corrupt zip entry) always stops. Every line is accounted
//! for: `lines = header + blank + records + skipped + ignored` (`ReadReport::unaccounted`).
//!
//! Order: a reader keeps the file's order; it neither sorts (that would need the whole file in
//! memory) nor drops lines for being out of order. It counts the records whose time is before
//! an earlier record's of the same symbol (`out_of_order`). Downstream, the market service folds
//! an out-of-order trade into the bar still open and dead-letters one older than the open bar as
//! `late`, so a disordered recording shows up twice, here and in the dead letters, never silently.
//!
//! WebSocket captures: trades become records; book tickers are summarised (`QuoteStats`: count,
//! spreads, crossed books) and the order book is rebuilt from the depth snapshot and diffs and
//! checked against them (`BookStats`), as the pipeline has no quote event. Lines that carry no
//! record are counted under `ignored` by kind.

pub mod binance;
pub mod binance_ws;
pub mod fields;
pub mod ohlcv;
pub mod source;
pub mod tardis;
pub mod window;

use horizon_core::event::{Bar, Event, Trade};
use horizon_core::scenario::Scenario;
use horizon_core::time::parse_duration_ms;
use horizon_core::{feed, Fixed, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One recorded piece of market data: what the market service accepts on `market.feed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarketRecord {
    Trade(Trade),
    Bar(Bar),
}

impl MarketRecord {
    /// Exchange time: a trade's, or a bar's start.
    pub fn ts(&self) -> Timestamp {
        match self {
            MarketRecord::Trade(t) => t.ts_exchange,
            MarketRecord::Bar(b) => b.start,
        }
    }

    pub fn symbol(&self) -> &str {
        match self {
            MarketRecord::Trade(t) => &t.symbol,
            MarketRecord::Bar(b) => &b.symbol,
        }
    }

    /// The root event the feed publishes for this record.
    pub fn into_event(self) -> Event {
        match self {
            MarketRecord::Trade(t) => feed::trade_event(t),
            MarketRecord::Bar(b) => feed::bar_event(b),
        }
    }
}

/// The recorded file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    TardisTrades,
    BinanceTrades,
    BinanceAggTrades,
    BinanceKlines,
    Ohlcv,
    BinanceWs,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::TardisTrades,
        Format::BinanceTrades,
        Format::BinanceAggTrades,
        Format::BinanceKlines,
        Format::Ohlcv,
        Format::BinanceWs,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::TardisTrades => "tardis-trades",
            Format::BinanceTrades => "binance-trades",
            Format::BinanceAggTrades => "binance-aggtrades",
            Format::BinanceKlines => "binance-klines",
            Format::Ohlcv => "ohlcv",
            Format::BinanceWs => "binance-ws",
        }
    }

    /// Whether the format's records are bars (else trades).
    pub fn is_bars(self) -> bool {
        matches!(self, Format::BinanceKlines | Format::Ohlcv)
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        Format::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Format::ALL.iter().map(|f| f.as_str()).collect();
            format!("`{s}` is not a recording format (one of {})", names.join(", "))
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is wrong with a line or a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Reading failed (a truncated gzip stream, a corrupt zip entry): never skipped.
    Io(String),
    /// The header does not fit the format: never skipped, every line would fail.
    Header(String),
    NotUtf8,
    Columns {
        expected: String,
        got: usize,
    },
    NotDecimal(String),
    TooPrecise(String),
    OutOfRange(String),
    NotInteger(String),
    NotPositive(String),
    Negative(String),
    NotTimestamp(String),
    NotSide(String),
    NotBool(String),
    Empty,
    Missing,
    Json(String),
    Inconsistent(String),
    /// The line is not in the format's shape (`<receive time ns> <json>`).
    Shape(String),
    /// The whole file gave no record: what its lines were instead.
    NoRecords(String),
}

impl Problem {
    /// The kind of problem without the value: what skipped lines are counted by.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Io(_) => "read error",
            Problem::Header(_) => "bad header",
            Problem::NotUtf8 => "not UTF-8 text",
            Problem::Columns { .. } => "wrong number of columns",
            Problem::NotDecimal(_) => "not a decimal number",
            Problem::TooPrecise(_) => "more than 8 decimal places",
            Problem::OutOfRange(_) => "out of range",
            Problem::NotInteger(_) => "not a whole number",
            Problem::NotPositive(_) => "not positive",
            Problem::Negative(_) => "negative",
            Problem::NotTimestamp(_) => "not a timestamp",
            Problem::NotSide(_) => "not a side",
            Problem::NotBool(_) => "not true or false",
            Problem::Empty => "empty",
            Problem::Missing => "missing",
            Problem::Json(_) => "not a JSON message",
            Problem::Inconsistent(_) => "inconsistent",
            Problem::Shape(_) => "malformed line",
            Problem::NoRecords(_) => "no records",
        }
    }

    /// Whether `skip_bad` may skip the line (else the read stops).
    pub fn skippable(&self) -> bool {
        !matches!(self, Problem::Io(_) | Problem::Header(_) | Problem::NoRecords(_))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Io(e) => write!(f, "read error: {e}"),
            Problem::Header(m) => f.write_str(m),
            Problem::NotUtf8 => f.write_str("not UTF-8 text"),
            Problem::Columns { expected, got } => write!(f, "expected {expected} columns, got {got}"),
            Problem::NotDecimal(v) => write!(f, "`{v}` is not a decimal number"),
            Problem::TooPrecise(v) => write!(f, "`{v}` has more than 8 decimal places"),
            Problem::OutOfRange(v) => write!(f, "`{v}` is out of range"),
            Problem::NotInteger(v) => write!(f, "`{v}` is not a whole number"),
            Problem::NotPositive(v) => write!(f, "`{v}` must be positive"),
            Problem::Negative(v) => write!(f, "`{v}` must not be negative"),
            Problem::NotTimestamp(v) => write!(f, "`{v}` is not a timestamp (ISO 8601, or epoch s, ms, µs or ns)"),
            Problem::NotSide(v) => write!(f, "`{v}` is not buy or sell"),
            Problem::NotBool(v) => write!(f, "`{v}` is not true or false"),
            Problem::Empty => f.write_str("is empty"),
            Problem::Missing => f.write_str("is missing"),
            Problem::Json(e) => write!(f, "not a JSON message: {e}"),
            Problem::Inconsistent(m) => f.write_str(m),
            Problem::Shape(m) => f.write_str(m),
            Problem::NoRecords(m) => write!(f, "no records ({m})"),
        }
    }
}

/// A problem at a field (or the whole line), before the reader adds the file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<&'static str>,
    pub problem: Problem,
}

impl FieldError {
    pub fn at(field: &'static str, problem: Problem) -> FieldError {
        FieldError {
            field: Some(field),
            problem,
        }
    }
    pub fn line(problem: Problem) -> FieldError {
        FieldError { field: None, problem }
    }
}

/// A recorded file could not be read: the file, the line (0: the file as a whole), the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ReadError {
    pub file: String,
    pub line: u64,
    pub field: Option<&'static str>,
    pub problem: Problem,
}

impl ReadError {
    fn whole_file(file: &str, problem: Problem) -> ReadError {
        ReadError {
            file: file.to_string(),
            line: 0,
            field: None,
            problem,
        }
    }

    /// What skipped lines are counted by: the field and the kind of problem, without the value
    /// (`field `price`: not a decimal number`).
    pub fn reason(&self) -> String {
        match self.field {
            Some(f) => format!("field `{f}`: {}", self.problem.kind()),
            None => self.problem.kind().to_string(),
        }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(field) = self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// Skipped lines of one reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub lines: u64,
    /// The first such line's full error, as an example.
    pub first: String,
}

/// Best bid/ask updates of a WebSocket capture, summarised (the pipeline has no quote event).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuoteStats {
    pub updates: u64,
    /// Updates whose bid was at or above the ask (a locked or crossed book).
    pub crossed: u64,
    pub min_spread: Option<Fixed>,
    pub max_spread: Option<Fixed>,
    pub mean_spread: Option<Fixed>,
    pub last_bid: Option<Fixed>,
    pub last_ask: Option<Fixed>,
    #[serde(skip)]
    spread_sum: i128,
}

impl QuoteStats {
    pub fn add(&mut self, bid: Fixed, ask: Fixed) {
        let spread = ask - bid;
        self.updates += 1;
        if !spread.is_positive() {
            self.crossed += 1;
        }
        self.min_spread = Some(self.min_spread.map_or(spread, |m| m.min(spread)));
        self.max_spread = Some(self.max_spread.map_or(spread, |m| m.max(spread)));
        self.spread_sum += spread.units() as i128;
        self.mean_spread = Some(Fixed::from_units((self.spread_sum / self.updates as i128) as i64));
        self.last_bid = Some(bid);
        self.last_ask = Some(ask);
    }
}

/// Per symbol: records, and the first and last exchange time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SymbolSpan {
    pub records: u64,
    pub first: Timestamp,
    pub last: Timestamp,
    #[serde(skip)]
    latest: Timestamp,
}

/// What a reader read, kept, skipped and ignored. Every line is in exactly one count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReadReport {
    pub file: String,
    pub format: String,
    /// Lines read, the header included.
    pub lines: u64,
    pub header_lines: u64,
    pub blank_lines: u64,
    /// Lines that became records.
    pub records: u64,
    pub trades: u64,
    pub bars: u64,
    /// Malformed lines skipped (`skip_bad`), by reason.
    pub skipped: BTreeMap<String, Skipped>,
    /// Well-formed lines that carry no record (book tickers, depth diffs, other symbols), by kind.
    pub ignored: BTreeMap<String, u64>,
    /// Records whose time is before an earlier record's of the same symbol (kept, in file order).
    pub out_of_order: u64,
    pub symbols: BTreeMap<String, SymbolSpan>,
    /// Best bid/ask of a WebSocket capture.
    pub quotes: Option<QuoteStats>,
    /// The order book a WebSocket capture's depth snapshot and diffs rebuild.
    pub book: Option<binance_ws::BookStats>,
    /// Anything else a reader wants to tell (intervals detected, depth updates...).
    pub notes: BTreeMap<String, String>,
}

impl ReadReport {
    pub fn skipped_lines(&self) -> u64 {
        self.skipped.values().map(|s| s.lines).sum()
    }

    pub fn ignored_lines(&self) -> u64 {
        self.ignored.values().sum()
    }

    /// Lines in no count: zero unless the reader stopped at an error (that line).
    pub fn unaccounted(&self) -> u64 {
        self.lines - self.header_lines - self.blank_lines - self.records - self.skipped_lines() - self.ignored_lines()
    }

    /// First and last exchange time over all symbols.
    pub fn span(&self) -> Option<(Timestamp, Timestamp)> {
        let first = self.symbols.values().map(|s| s.first).min()?;
        let last = self.symbols.values().map(|s| s.last).max()?;
        Some((first, last))
    }

    pub(crate) fn ignore(&mut self, kind: &str) {
        match self.ignored.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.ignored.insert(kind.to_string(), 1);
            }
        }
    }

    fn record(&mut self, r: &MarketRecord) {
        self.records += 1;
        match r {
            MarketRecord::Trade(_) => self.trades += 1,
            MarketRecord::Bar(_) => self.bars += 1,
        }
        let ts = r.ts();
        match self.symbols.get_mut(r.symbol()) {
            Some(s) => {
                s.records += 1;
                if ts < s.latest {
                    self.out_of_order += 1;
                } else {
                    s.latest = ts;
                }
                s.first = s.first.min(ts);
                s.last = s.last.max(ts);
            }
            None => {
                self.symbols.insert(
                    r.symbol().to_string(),
                    SymbolSpan {
                        records: 1,
                        first: ts,
                        last: ts,
                        latest: ts,
                    },
                );
            }
        }
    }

    /// One line per fact, for a person: records, skipped lines by reason, ignored lines.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} ({}): {} lines, {} trades, {} bars",
            self.file, self.format, self.lines, self.trades, self.bars
        )];
        if let Some((a, b)) = self.span() {
            out.push(format!("span {a} .. {b}"));
        }
        if self.out_of_order > 0 {
            out.push(format!("{} records out of time order (kept in file order)", self.out_of_order));
        }
        let skipped = self.skipped_lines();
        if skipped > 0 {
            out.push(format!("skipped {skipped} malformed lines:"));
            for (reason, s) in &self.skipped {
                out.push(format!("  {:>8}  {reason} (first: {})", s.lines, s.first));
            }
        }
        for (kind, n) in &self.ignored {
            out.push(format!("ignored {n} {kind} lines"));
        }
        if let Some(q) = &self.quotes {
            let show = |x: Option<Fixed>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            out.push(format!(
                "best bid/ask: {} updates, spread min {} mean {} max {}, {} locked or crossed, last {} / {}",
                q.updates,
                show(q.min_spread),
                show(q.mean_spread),
                show(q.max_spread),
                q.crossed,
                show(q.last_bid),
                show(q.last_ask)
            ));
        }
        if let Some(b) = &self.book {
            let show = |x: Option<Fixed>| x.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            out.push(format!(
                "order book: {} snapshot(s), {} diffs applied, {} stale, {} unapplied, {} sequence breaks; \
                 {} of {} book tickers at the book's update id match it; {} bid / {} ask levels, best {} / {}",
                b.snapshots,
                b.diffs_applied,
                b.diffs_stale,
                b.diffs_unapplied,
                b.sequence_breaks,
                b.tickers_matching,
                b.tickers_checked,
                b.bid_levels,
                b.ask_levels,
                show(b.best_bid),
                show(b.best_ask)
            ));
        }
        for (k, v) in &self.notes {
            out.push(format!("{k}: {v}"));
        }
        out
    }
}

/// What a line turned out to be.
pub enum Parsed {
    Record(MarketRecord),
    Header,
    /// A well-formed line without a record, counted under this kind.
    Ignored(&'static str),
}

/// A format's line parser.
pub trait LineParser: Send {
    /// Parses one line (without its terminator). `first` is true for the first non-blank line.
    fn parse(&mut self, line: &str, first: bool, report: &mut ReadReport) -> Result<Parsed, FieldError>;

    /// Called once at the end of the input, to count anything still held.
    fn finish(&mut self, _report: &mut ReadReport) {}
}

/// How to read a recording.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Exchange name for formats that carry none (all but tardis).
    pub exchange: String,
    /// Symbol for formats that carry none (Binance CSVs, OHLCV).
    pub symbol: Option<String>,
    /// Interval of bar formats whose rows do not carry it (OHLCV; default 1m).
    pub interval_ms: Option<i64>,
    /// Keep only these symbols (others are counted as ignored); `None` keeps all.
    pub symbols: Option<BTreeSet<String>>,
    /// Skip malformed lines, counting them by reason, instead of stopping at the first.
    pub skip_bad: bool,
}

/// A recorded file as an iterator of records. After an error that stops it, it ends.
pub struct RecordReader {
    lines: source::Lines,
    parser: Box<dyn LineParser>,
    options: ReadOptions,
    report: ReadReport,
    seen_first: bool,
    done: bool,
}

impl RecordReader {
    /// Reads `path` (plain, gzip or zip) as `format`.
    pub fn open(path: &Path, format: Format, options: ReadOptions) -> Result<RecordReader, ReadError> {
        let name = path.display().to_string();
        let input = source::open(path).map_err(|e| ReadError::whole_file(&name, Problem::Io(e.to_string())))?;
        RecordReader::from_reader(&name, input, format, options)
    }

    /// Reads already opened text; `name` names it in errors.
    pub fn from_reader(
        name: &str,
        input: Box<dyn std::io::BufRead + Send>,
        format: Format,
        options: ReadOptions,
    ) -> Result<RecordReader, ReadError> {
        let need_symbol = || {
            options
                .symbol
                .clone()
                .ok_or_else(|| ReadError::whole_file(name, Problem::Header(format!("{format} rows carry no symbol: give one"))))
        };
        let parser: Box<dyn LineParser> = match format {
            Format::TardisTrades => Box::new(tardis::TardisTrades::new()),
            Format::BinanceTrades => Box::new(binance::Trades::new(need_symbol()?, options.exchange.clone(), false)),
            Format::BinanceAggTrades => Box::new(binance::Trades::new(need_symbol()?, options.exchange.clone(), true)),
            Format::BinanceKlines => Box::new(binance::Klines::new(need_symbol()?, options.exchange.clone(), options.interval_ms)),
            Format::Ohlcv => Box::new(ohlcv::Ohlcv::new(
                need_symbol()?,
                options.exchange.clone(),
                options.interval_ms.unwrap_or(60_000),
            )),
            Format::BinanceWs => Box::new(binance_ws::Capture::new(options.exchange.clone())),
        };
        Ok(RecordReader {
            lines: source::Lines::new(input),
            parser,
            options,
            report: ReadReport {
                file: name.to_string(),
                format: format.as_str().to_string(),
                ..ReadReport::default()
            },
            seen_first: false,
            done: false,
        })
    }

    pub fn report(&self) -> &ReadReport {
        &self.report
    }

    fn error(&self, e: FieldError) -> ReadError {
        ReadError {
            file: self.report.file.clone(),
            line: self.lines.number(),
            field: e.field,
            problem: e.problem,
        }
    }

    /// Counts a malformed line when skipping; else stops with it.
    fn fail(&mut self, e: FieldError) -> Option<ReadError> {
        let err = self.error(e);
        if self.options.skip_bad && err.problem.skippable() {
            let s = self.report.skipped.entry(err.reason()).or_default();
            if s.lines == 0 {
                s.first = err.to_string();
            }
            s.lines += 1;
            None
        } else {
            self.done = true;
            Some(err)
        }
    }
}

impl Iterator for RecordReader {
    type Item = Result<MarketRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let line = match self.lines.next_line() {
                None => {
                    self.done = true;
                    self.parser.finish(&mut self.report);
                    return None;
                }
                Some(Err(e)) => {
                    self.report.lines += 1;
                    let e = FieldError::line(Problem::Io(e.to_string()));
                    return self.fail(e).map(Err);
                }
                Some(Ok(bytes)) => bytes,
            };
            self.report.lines += 1;
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                self.report.blank_lines += 1;
                continue;
            }
            let first = !self.seen_first;
            self.seen_first = true;
            let parsed = match std::str::from_utf8(line) {
                Ok(text) => self.parser.parse(text, first, &mut self.report),
                Err(_) => Err(FieldError::line(Problem::NotUtf8)),
            };
            match parsed {
                Ok(Parsed::Record(r)) => {
                    if let Some(keep) = &self.options.symbols {
                        if !keep.contains(r.symbol()) {
                            self.report.ignore("other-symbol");
                            continue;
                        }
                    }
                    self.report.record(&r);
                    return Some(Ok(r));
                }
                Ok(Parsed::Header) => self.report.header_lines += 1,
                Ok(Parsed::Ignored(kind)) => self.report.ignore(kind),
                Err(e) => {
                    if let Some(err) = self.fail(e) {
                        return Some(Err(err));
                    }
                }
            }
        }
        None
    }
}

/// The environment variable naming the folder of recorded files.
pub const DATA_ENV: &str = "HORIZON_DATA";

/// Where a repository expects its recorded files by default: `<root>/../shared/data`.
pub fn default_data_dir(repo_root: &Path) -> PathBuf {
    repo_root.join("..").join("shared").join("data")
}

/// The repository root holding `start`: the nearest ancestor with a `Cargo.toml` and a
/// `scenarios/` folder.
pub fn find_repo_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("Cargo.toml").is_file() && d.join("scenarios").is_dir())
        .map(Path::to_path_buf)
}

/// The data folder: `$HORIZON_DATA` when set, else the first `<root>/../shared/data` of the
/// given repository roots that exists. The error says where it looked.
pub fn resolve_data_dir(repo_roots: &[PathBuf]) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(DATA_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!("recorded data is missing: {DATA_ENV}={} is not a folder", dir.display()))
        };
    }
    let candidates: Vec<PathBuf> = repo_roots.iter().map(|r| default_data_dir(r)).collect();
    candidates.iter().find(|d| d.is_dir()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        format!(
            "recorded data is missing: no data folder at {} (set {DATA_ENV} to the folder holding the recordings)",
            looked.join(" or ")
        )
    })
}

/// The recording a scenario names, with the reader options it implies, or the scenario's
/// problem. `skip_bad` comes from the scenario (`[market.recording] skip_bad`).
pub fn recording_of(scenario: &Scenario) -> Result<(&horizon_core::scenario::RecordingConfig, Format, ReadOptions), String> {
    let rec = scenario
        .market
        .recording
        .as_ref()
        .ok_or_else(|| format!("{}: the scenario has no [market.recording]", scenario.name))?;
    let format: Format = rec
        .format
        .parse()
        .map_err(|e| format!("{}: `market.recording.format`: {e}", scenario.name))?;
    let symbols = scenario.symbols();
    let symbol = rec.symbol.clone().or_else(|| (symbols.len() == 1).then(|| symbols[0].clone()));
    let interval_ms = rec.interval.as_deref().and_then(parse_duration_ms);
    if format.is_bars() {
        let iv = interval_ms.unwrap_or(60_000);
        if let Some(bad) = scenario.bar_intervals_ms().into_iter().find(|b| b % iv != 0) {
            return Err(format!(
                "{}: `market.bar_intervals`: {} bars cannot be built from the recording's {} bars",
                scenario.name,
                horizon_core::time::format_duration_ms(bad),
                horizon_core::time::format_duration_ms(iv)
            ));
        }
    }
    let options = ReadOptions {
        exchange: scenario.market.exchange.clone(),
        symbol,
        interval_ms,
        symbols: Some(symbols.into_iter().collect()),
        skip_bad: rec.skip_bad,
    };
    Ok((rec, format, options))
}

/// Opens the recording a scenario names, under `data_dir`.
pub fn open_recording(scenario: &Scenario, data_dir: &Path) -> Result<RecordReader, ReadError> {
    let (rec, format, options) = recording_of(scenario).map_err(|e| ReadError::whole_file(&scenario.name, Problem::Header(e)))?;
    let path = data_dir.join(&rec.file);
    if !path.is_file() {
        return Err(ReadError::whole_file(
            &path.display().to_string(),
            Problem::Io(format!(
                "recorded data is missing: no such file (data folder {}; set {DATA_ENV} to the folder holding `{}`)",
                data_dir.display(),
                rec.file
            )),
        ));
    }
    RecordReader::open(&path, format, options)
}

/// A recording as the feed's root events, with the reader's report.
pub struct Feed {
    reader: RecordReader,
    /// The first record, read ahead by `require_records`.
    peeked: Option<Result<MarketRecord, ReadError>>,
}

impl Feed {
    pub fn new(reader: RecordReader) -> Feed {
        Feed { reader, peeked: None }
    }

    pub fn report(&self) -> &ReadReport {
        self.reader.report()
    }

    /// Reads ahead to the first record. A recording that has none (empty, header-only, or every
    /// line blank, skipped or ignored) is an error naming the file and what its lines were;
    /// with `allow_empty` that error is returned as a warning (`Ok(Some)`) and the feed is empty.
    /// A read error on the way is left for the iteration to return, as without the look-ahead.
    pub fn require_records(&mut self, allow_empty: bool) -> Result<Option<ReadError>, ReadError> {
        if self.peeked.is_none() {
            self.peeked = self.reader.next();
        }
        if self.peeked.is_some() {
            return Ok(None);
        }
        let r = self.report();
        let mut what = format!("{} header/blank lines", r.header_lines + r.blank_lines);
        for (n, kind) in [(r.skipped_lines(), "skipped"), (r.ignored_lines(), "ignored")] {
            if n > 0 {
                what.push_str(&format!(", {n} {kind}"));
            }
        }
        let e = ReadError::whole_file(&r.file, Problem::NoRecords(what));
        if allow_empty {
            Ok(Some(e))
        } else {
            Err(e)
        }
    }
}

impl Iterator for Feed {
    type Item = Result<Event, ReadError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.peeked
            .take()
            .or_else(|| self.reader.next())
            .map(|r| r.map(MarketRecord::into_event))
    }
}

/// The feed of a scenario's recording: what `horizon sim`, `explore` and `feed` publish on
/// `market.feed`. Consume it with `by_ref()` to read its `report()` afterwards.
pub fn open_feed(scenario: &Scenario, data_dir: &Path) -> Result<Feed, ReadError> {
    Ok(Feed::new(open_recording(scenario, data_dir)?))
}

/// Runs `f` over the feed's events until the feed ends or fails; returns `f`'s result and the
/// error that stopped the feed, if any. For consumers that take a plain `Iterator<Item = Event>`
/// (`MemoryRun::run`).
pub fn drive<R>(feed: &mut Feed, f: impl FnOnce(&mut dyn Iterator<Item = Event>) -> R) -> (R, Option<ReadError>) {
    let mut failure = None;
    let mut events = feed.by_ref().map_while(|r| match r {
        Ok(e) => Some(e),
        Err(e) => {
            failure = Some(e);
            None
        }
    });
    let out = f(&mut events);
    drop(events);
    (out, failure)
}
