//! The recorded-data readers on small fixtures written here: every format, with and without
//! headers, ms and µs times, gzip and zip; and bad input: truncated lines, wrong column counts,
//! non-numeric, negative and too precise values, unsorted times. Every line is accounted for.

use horizon_core::event::Side;
use horizon_core::{Fixed, Timestamp};
use horizon_runtime::recorded::{Format, MarketRecord, Problem, ReadError, ReadOptions, ReadReport, RecordReader};
use std::io::Write;
use std::path::PathBuf;

fn fx(s: &str) -> Fixed {
    s.parse().unwrap()
}

/// A fixture file under the system temp dir, removed on drop.
struct Fixture(PathBuf);

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn fixture(name: &str, bytes: &[u8]) -> Fixture {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("horizon-recorded-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    Fixture(p)
}

fn options(skip_bad: bool) -> ReadOptions {
    ReadOptions {
        exchange: "binance".into(),
        symbol: Some("BTCUSDT".into()),
        interval_ms: None,
        symbols: None,
        skip_bad,
    }
}

/// Reads everything; returns the records, the first error and the report.
fn read(name: &str, text: &str, format: Format, skip_bad: bool) -> (Vec<MarketRecord>, Option<ReadError>, ReadReport) {
    let f = fixture(name, text.as_bytes());
    read_path(&f.0, format, options(skip_bad))
}

fn read_path(path: &std::path::Path, format: Format, opts: ReadOptions) -> (Vec<MarketRecord>, Option<ReadError>, ReadReport) {
    let mut reader = RecordReader::open(path, format, opts).unwrap();
    let mut records = Vec::new();
    let mut error = None;
    for r in reader.by_ref() {
        match r {
            Ok(rec) => records.push(rec),
            Err(e) => {
                assert!(error.is_none(), "the reader ends after an error");
                error = Some(e);
            }
        }
    }
    let report = reader.report().clone();
    if error.is_none() {
        assert_eq!(report.unaccounted(), 0, "every line is counted: {report:?}");
    } else {
        assert_eq!(report.unaccounted(), 1, "only the failing line is uncounted: {report:?}");
    }
    (records, error, report)
}

fn trade(r: &MarketRecord) -> &horizon_core::event::Trade {
    match r {
        MarketRecord::Trade(t) => t,
        MarketRecord::Bar(b) => panic!("expected a trade, got {b:?}"),
    }
}

fn bar(r: &MarketRecord) -> &horizon_core::event::Bar {
    match r {
        MarketRecord::Bar(b) => b,
        MarketRecord::Trade(t) => panic!("expected a bar, got {t:?}"),
    }
}

/// The error message, with the fixture's directory cut off.
fn message(e: &ReadError) -> String {
    let s = e.to_string();
    match s.find("data.") {
        Some(i) => s[i..].to_string(),
        None => s,
    }
}

const TARDIS: &str = "exchange,symbol,timestamp,local_timestamp,id,side,price,amount
binance-futures,BTCUSDT,1582329602111000,1582329602418379,42377944,buy,9682,0.132
binance-futures,BTCUSDT,1582329602150000,1582329602421536,42377947,sell,9682.19,0.01
";

#[test]
fn tardis_trades_are_read_exactly() {
    let (recs, err, report) = read("data.csv", TARDIS, Format::TardisTrades, false);
    assert!(err.is_none());
    assert_eq!(recs.len(), 2);
    let t = trade(&recs[1]);
    assert_eq!(
        (
            t.exchange.as_str(),
            t.symbol.as_str(),
            t.trade_id.as_str(),
            t.price,
            t.quantity,
            t.aggressor_side
        ),
        ("binance-futures", "BTCUSDT", "42377947", fx("9682.19"), fx("0.01"), Side::Sell)
    );
    assert_eq!(t.ts_exchange, Timestamp::from_micros(1_582_329_602_150_000));
    assert_eq!(
        (report.lines, report.header_lines, report.trades, report.out_of_order),
        (3, 1, 2, 0)
    );
}

#[test]
fn a_bad_line_names_the_file_the_line_and_the_field() {
    let cases = [
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,buy,abc,0.1",
            "data.csv:2: field `price`: `abc` is not a decimal number",
        ),
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,buy,-5,0.1",
            "data.csv:2: field `price`: `-5` must be positive",
        ),
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,buy,5,-0.1",
            "data.csv:2: field `amount`: `-0.1` must be positive",
        ),
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,buy,5.123456789,1",
            "data.csv:2: field `price`: `5.123456789` has more than 8 decimal places",
        ),
        (
            "binance-futures,BTCUSDT,15823296021x,1,1,buy,5,1",
            "data.csv:2: field `timestamp`: `15823296021x` is not a whole number",
        ),
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,hold,5,1",
            "data.csv:2: field `side`: `hold` is not buy or sell",
        ),
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,buy",
            "data.csv:2: expected 8 columns, got 6",
        ),
        (
            "binance-futures,BTCUSDT,1582329602111000,1,1,buy,5,1,9",
            "data.csv:2: expected 8 columns, got 9",
        ),
        (
            "binance-futures,,1582329602111000,1,1,buy,5,1",
            "data.csv:2: field `symbol`: is empty",
        ),
    ];
    for (line, want) in cases {
        let text = format!("{}\n{line}\n", tardis_header());
        let (recs, err, _) = read("data.csv", &text, Format::TardisTrades, false);
        assert!(recs.is_empty());
        assert_eq!(message(&err.expect(line)), want);
    }
}

fn tardis_header() -> &'static str {
    TARDIS.lines().next().unwrap()
}

#[test]
fn a_truncated_last_line_is_an_error_at_its_line() {
    let text = format!("{TARDIS}binance-futures,BTCUSDT,1582329602160000,158232960");
    let (recs, err, _) = read("data.csv", &text, Format::TardisTrades, false);
    assert_eq!(recs.len(), 2, "the lines before it are read");
    assert_eq!(message(&err.unwrap()), "data.csv:4: expected 8 columns, got 4");
}

#[test]
fn skip_bad_counts_every_skipped_line_by_reason() {
    let text = format!(
        "{TARDIS}\
binance-futures,BTCUSDT,1582329602160000,1,3,buy,abc,0.1
binance-futures,BTCUSDT,1582329602170000,1,4,buy,xyz,0.1
binance-futures,BTCUSDT,1582329602180000,1,5,buy
\n\
binance-futures,BTCUSDT,1582329602190000,1,6,buy,9683,0.5
binance-futures,BTCUSDT,1582329602190000,1,7,buy,9683,-1
binance-futures,BTCUSDT,1582329602200000,1,8,buy,9683"
    );
    let (recs, err, report) = read("data.csv", &text, Format::TardisTrades, true);
    assert!(err.is_none());
    assert_eq!(recs.len(), 3);
    let skipped: Vec<(&str, u64)> = report.skipped.iter().map(|(k, v)| (k.as_str(), v.lines)).collect();
    assert_eq!(
        skipped,
        vec![
            ("field `amount`: not positive", 1),
            ("field `price`: not a decimal number", 2),
            ("wrong number of columns", 2)
        ]
    );
    assert!(report.skipped["field `price`: not a decimal number"]
        .first
        .ends_with("data.csv:4: field `price`: `abc` is not a decimal number"));
    assert_eq!((report.lines, report.blank_lines, report.skipped_lines()), (10, 1, 5));
}

#[test]
fn unsorted_times_are_kept_in_file_order_and_counted() {
    let text = format!(
        "{}\n\
x,BTCUSDT,3000000,0,1,buy,10,1
x,BTCUSDT,1000000,0,2,buy,11,1
x,ETHUSDT,2000000,0,3,buy,12,1
x,BTCUSDT,2000000,0,4,buy,13,1
x,BTCUSDT,4000000,0,5,buy,14,1
",
        tardis_header()
    );
    let (recs, err, report) = read("data.csv", &text, Format::TardisTrades, false);
    assert!(err.is_none());
    let ids: Vec<&str> = recs.iter().map(|r| trade(r).trade_id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3", "4", "5"]);
    assert_eq!(report.out_of_order, 2, "ids 2 and 4 are before id 1 of their symbol");
    assert_eq!(
        report.span(),
        Some((Timestamp::from_micros(1_000_000), Timestamp::from_micros(4_000_000)))
    );
}

#[test]
fn a_wrong_header_stops_even_when_skipping() {
    let (_, err, _) = read("data.csv", "exchange,symbol,time,price\n", Format::TardisTrades, true);
    let e = err.unwrap();
    assert!(!e.problem.skippable());
    assert!(
        message(&e).starts_with("data.csv:1: header `exchange,symbol,time,price` is not tardis.dev's"),
        "{e}"
    );
}

#[test]
fn binance_trades_with_and_without_header_in_ms_and_us() {
    let with = "id,price,qty,quote_qty,time,is_buyer_maker,is_best_match
100,61800.30,0.006,370.8018,1723161256322,false,true
101,61800.20,0.010,618.002,1723161256323,true,true
";
    let without_us = "100,61800.30,0.006,370.8018,1723161256322000,false
101,61800.20,0.010,618.002,1723161256323000,true
";
    for text in [with, without_us] {
        let (recs, err, report) = read("data.csv", text, Format::BinanceTrades, false);
        assert!(err.is_none(), "{err:?}");
        let t: Vec<_> = recs.iter().map(trade).collect();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].aggressor_side, t[1].aggressor_side), (Side::Buy, Side::Sell));
        assert_eq!(t[1].ts_exchange, Timestamp::from_millis(1_723_161_256_323));
        assert_eq!(
            (t[1].price, t[1].quantity, t[1].trade_id.as_str()),
            (fx("61800.2"), fx("0.01"), "101")
        );
        assert_eq!((t[1].symbol.as_str(), t[1].exchange.as_str()), ("BTCUSDT", "binance"));
        assert_eq!(report.header_lines, u64::from(text == with));
    }
    let (_, err, _) = read(
        "data.csv",
        "100,61800.30,0.006,370.8018,1723161256322,maybe\n",
        Format::BinanceTrades,
        false,
    );
    assert_eq!(
        message(&err.unwrap()),
        "data.csv:1: field `is_buyer_maker`: `maybe` is not true or false"
    );
    let (_, err, _) = read("data.csv", "100,61800.30,0.006,1723161256322,false\n", Format::BinanceTrades, false);
    assert_eq!(message(&err.unwrap()), "data.csv:1: expected 6 to 7 columns, got 5");
}

#[test]
fn binance_aggtrades() {
    let text = "agg_id,price,qty,first_id,last_id,time,is_buyer_maker,is_best_match
26129,0.01633102,4.70443515,27781,27781,1498793709153,true,true
26130,0.01633103,1,27782,27783,1498793709160,false,true
";
    let (recs, err, _) = read("data.csv", text, Format::BinanceAggTrades, false);
    assert!(err.is_none());
    let t = trade(&recs[0]);
    assert_eq!(
        (t.trade_id.as_str(), t.price, t.quantity, t.aggressor_side),
        ("26129", fx("0.01633102"), fx("4.70443515"), Side::Sell)
    );
    let bad = "26129,0.01633102,4.70443515,27781,27780,1498793709153,true\n";
    let (_, err, _) = read("data.csv", bad, Format::BinanceAggTrades, false);
    assert_eq!(
        message(&err.unwrap()),
        "data.csv:1: field `last_id`: 27780 is before first_id 27781"
    );
}

const KLINES: &str = "1640995200000,46216.93,46271.08,46208.37,46250.00,40.57574,1640995259999,1876534.6,1277,19.8,916000.2,0
1640995260000,46250.00,46344.23,46234.39,46312.76,42.38106,1640995319999,1962500.2,990,21.0,972000.1,0
";

#[test]
fn binance_klines_carry_their_interval() {
    let (recs, err, report) = read("data.csv", KLINES, Format::BinanceKlines, false);
    assert!(err.is_none(), "{err:?}");
    let b = bar(&recs[1]);
    assert_eq!((b.interval_ms, b.start), (60_000, Timestamp::from_millis(1_640_995_260_000)));
    assert_eq!(
        (b.open, b.high, b.low, b.close, b.volume, b.trade_count),
        (fx("46250"), fx("46344.23"), fx("46234.39"), fx("46312.76"), fx("42.38106"), 990)
    );
    assert_eq!(report.notes["interval"], "1m");
    // Microseconds (spot from 2025) with a header read the same.
    let us: String = std::iter::once(
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore".to_string(),
    )
    .chain(KLINES.lines().map(|l| {
        let mut c: Vec<String> = l.split(',').map(String::from).collect();
        c[0] = format!("{}000", c[0]);
        c[6] = format!("{}999", c[6]);
        c.join(",")
    }))
    .collect::<Vec<_>>()
    .join("\n");
    let (recs_us, err, _) = read("data.csv", &us, Format::BinanceKlines, false);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(recs_us, recs);
    // A configured interval must agree with the close time.
    let f = fixture("data.csv", KLINES.as_bytes());
    let (_, err, _) = read_path(
        &f.0,
        Format::BinanceKlines,
        ReadOptions {
            interval_ms: Some(300_000),
            ..options(false)
        },
    );
    assert_eq!(
        message(&err.unwrap()),
        "data.csv:1: field `close_time`: closes a 1m kline, but the recording's interval is 5m"
    );
    // An inconsistent bar names the field.
    let bad = KLINES.replace("46344.23", "46300.00");
    let (_, err, _) = read("data.csv", &bad, Format::BinanceKlines, false);
    assert_eq!(
        message(&err.unwrap()),
        "data.csv:2: field `high`: 46300 is below open 46250, close 46312.76 or low 46234.39"
    );
}

const OHLCV: &str = "timestamp,open,high,low,close,volume
2021-12-31 23:01:00.000000,46319.0,46385.0,46319.0,46377.0,2300413.7295
2021-12-31 23:02:00.000000,46377.0,46411.0,46377.0,46411.0,1829623.1938
";

#[test]
fn ohlcv_with_iso_and_epoch_times_and_columns_in_any_order() {
    let (recs, err, _) = read("data.csv", OHLCV, Format::Ohlcv, false);
    assert!(err.is_none(), "{err:?}");
    let b = bar(&recs[0]);
    assert_eq!(
        (b.start, b.interval_ms),
        (Timestamp::parse_rfc3339("2021-12-31T23:01:00Z").unwrap(), 60_000)
    );
    assert_eq!((b.open, b.close, b.volume), (fx("46319"), fx("46377"), fx("2300413.7295")));
    for (unit, factor) in [("s", 1i64), ("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)] {
        let text = format!(
            "volume,close,low,high,open,time,extra\n2300413.7295,46377.0,46319.0,46385.0,46319.0,{},x\n",
            1_640_991_660 * factor
        );
        let (r, err, _) = read("data.csv", &text, Format::Ohlcv, false);
        assert!(err.is_none(), "{unit}: {err:?}");
        assert_eq!(bar(&r[0]), b, "{unit}");
    }
    let (_, err, _) = read("data.csv", "time,open,high,low,close\n", Format::Ohlcv, false);
    assert_eq!(
        message(&err.unwrap()),
        "data.csv:1: header `time,open,high,low,close` has no `volume` column"
    );
    let cases = [
        (
            "2021-13-31 23:01:00,1,1,1,1,1",
            "data.csv:2: field `timestamp`: `2021-13-31 23:01:00` is not a timestamp (ISO 8601, or epoch s, ms, µs or ns)",
        ),
        (
            "2021-12-31 23:01:00,1,1,1,1,-1",
            "data.csv:2: field `volume`: `-1` must not be negative",
        ),
        (
            "2021-12-31 23:01:00,1,1,1,one,1",
            "data.csv:2: field `close`: `one` is not a decimal number",
        ),
        ("2021-12-31 23:01:00,1,1,1,1", "data.csv:2: expected 6 columns, got 5"),
        (
            "2021-12-31 23:01:00,1,1,1,1,218102.59507500002",
            "data.csv:2: field `volume`: `218102.59507500002` has more than 8 decimal places",
        ),
    ];
    for (line, want) in cases {
        let (_, err, _) = read(
            "data.csv",
            &format!("timestamp,open,high,low,close,volume\n{line}\n"),
            Format::Ohlcv,
            false,
        );
        assert_eq!(message(&err.expect(line)), want);
    }
}

const WS: &str = r#"1723161255030314667 {"stream":"btcusdt@depth@0ms","data":{"e":"depthUpdate","E":1723161256299,"T":1723161256298,"s":"BTCUSDT","U":5123107832006,"u":5123107837557,"pu":5123107831937,"b":[["58710.20","0.014"]],"a":[]}}
1723161255088169167 {"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5123107839020,"s":"BTCUSDT","b":"61800.20","B":"2.507","a":"61800.30","A":"2.510","T":1723161256313,"E":1723161256313}}
1723161255088176367 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256322,"T":1723161256322,"s":"BTCUSDT","t":5266583935,"p":"61800.30","q":"0.006","X":"MARKET","m":false}}
1723161255088176368 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256323,"T":1723161256323,"s":"BTCUSDT","t":5266583936,"p":"61800.20","q":"0.010","X":"MARKET","m":true}}
1723161255088176369 {"stream":"btcusdt@trade","data":{"e":"trade","E":1723161256323,"T":1723161256323,"s":"BTCUSDT","t":5266583937,"p":"61800.20","q":"0.010","X":"INSURANCE_FUND","m":true}}
1723161255319702566 {"lastUpdateId":5123107852948,"E":1723161256501,"T":1723161256493,"bids":[["61800.20","2.909"]],"asks":[["61800.30","1.5"]]}
1723161255319702567 {"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5123107839021,"s":"BTCUSDT","b":"61800.20","B":"2.507","a":"61800.50","A":"2.510","T":1723161256313,"E":1723161256313}}
"#;

#[test]
fn websocket_captures_keep_trades_and_count_everything_else() {
    let (recs, err, report) = read("data.ws", WS, Format::BinanceWs, false);
    assert!(err.is_none(), "{err:?}");
    let t: Vec<_> = recs.iter().map(trade).collect();
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].aggressor_side, t[1].aggressor_side), (Side::Buy, Side::Sell));
    assert_eq!(
        (t[0].trade_id.as_str(), t[0].price, t[0].ts_exchange),
        ("5266583935", fx("61800.3"), Timestamp::from_millis(1_723_161_256_322))
    );
    let ignored: Vec<(&str, u64)> = report.ignored.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        ignored,
        vec![
            ("book-ticker", 2),
            ("depth-snapshot", 1),
            ("depth-update", 1),
            ("non-market-trade", 1)
        ]
    );
    let q = report.quotes.as_ref().unwrap();
    assert_eq!(
        (q.updates, q.min_spread, q.max_spread, q.mean_spread, q.crossed),
        (2, Some(fx("0.1")), Some(fx("0.3")), Some(fx("0.2")), 0)
    );
    // Bad messages.
    let cases = [
        (
            r#"123 {"stream":"btcusdt@trade","data":{"e":"trade","T":1,"s":"BTCUSDT","t":1,"p":"6180"#,
            "not a JSON message",
        ),
        (
            r#"123 {"stream":"btcusdt@trade","data":{"e":"trade","T":1,"s":"BTCUSDT","t":1,"p":"abc","q":"1","m":false}}"#,
            "data.ws:1: field `data.p`: `abc` is not a decimal number",
        ),
        (
            r#"123 {"stream":"btcusdt@trade","data":{"e":"trade","T":1,"s":"BTCUSDT","t":1,"p":"1","q":"-1","m":false}}"#,
            "data.ws:1: field `data.q`: `-1` must be positive",
        ),
        (
            r#"12x {"stream":"btcusdt@trade"}"#,
            "data.ws:1: field `receive_time`: `12x` is not a whole number",
        ),
        (r#"123"#, "data.ws:1: not `<receive time ns> <json>`"),
    ];
    for (line, want) in cases {
        let (_, err, _) = read("data.ws", &format!("{line}\n"), Format::BinanceWs, false);
        let m = message(&err.expect(line));
        assert!(m.contains(want), "{m} should contain {want}");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn zip_of(name: &str, bytes: &[u8], method: zip::CompressionMethod) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = zip::ZipWriter::new(&mut out);
    w.start_file(name, zip::write::SimpleFileOptions::default().compression_method(method))
        .unwrap();
    w.write_all(bytes).unwrap();
    w.finish().unwrap();
    out.into_inner()
}

#[test]
fn gzip_and_zip_are_read_directly_whatever_the_file_name() {
    let (plain, _, _) = read("data.csv", TARDIS, Format::TardisTrades, false);
    let gz = fixture("data.csv.gz", &gzip(TARDIS.as_bytes()));
    assert_eq!(read_path(&gz.0, Format::TardisTrades, options(false)).0, plain);
    let no_suffix = fixture("data.bin", &gzip(TARDIS.as_bytes()));
    assert_eq!(read_path(&no_suffix.0, Format::TardisTrades, options(false)).0, plain);
    for method in [zip::CompressionMethod::Deflated, zip::CompressionMethod::Stored] {
        let z = fixture("data.zip", &zip_of("BTCUSDT-trades.csv", TARDIS.as_bytes(), method));
        assert_eq!(read_path(&z.0, Format::TardisTrades, options(false)).0, plain, "{method:?}");
    }
}

#[test]
fn a_truncated_gzip_or_corrupt_zip_stops_with_a_read_error_even_when_skipping() {
    let big: String = std::iter::once(tardis_header().to_string())
        .chain((0..5000).map(|i| format!("x,BTCUSDT,{},0,{i},buy,{}.5,1", 1_000_000 + i, 9000 + i % 97)))
        .collect::<Vec<_>>()
        .join("\n");
    let gz = gzip(big.as_bytes());
    let cut = fixture("data.csv.gz", &gz[..gz.len() * 2 / 3]);
    let (recs, err, _) = read_path(&cut.0, Format::TardisTrades, options(true));
    let e = err.expect("a truncated gzip stream is an error");
    assert!(matches!(e.problem, Problem::Io(_)), "{e}");
    assert!(!recs.is_empty() && recs.len() < 5000);

    let mut z = zip_of("t.csv", big.as_bytes(), zip::CompressionMethod::Stored);
    let at = z.windows(8).position(|w| w == b"x,BTCUSD").unwrap() + 3000;
    z[at] = b'9'; // a changed byte: the CRC no longer matches
    let bad = fixture("data.zip", &z);
    let (_, err, _) = read_path(&bad.0, Format::TardisTrades, options(true));
    let e = err.expect("a corrupt zip entry is an error");
    assert!(e.to_string().contains("corrupt or truncated"), "{e}");
}

#[test]
fn a_missing_symbol_for_a_format_without_one_is_refused() {
    let f = fixture("data.csv", OHLCV.as_bytes());
    let err = RecordReader::open(
        &f.0,
        Format::Ohlcv,
        ReadOptions {
            symbol: None,
            ..options(false)
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("carry no symbol"), "{err}");
    let err = RecordReader::open(&f.0.with_extension("nope"), Format::Ohlcv, options(false))
        .err()
        .unwrap();
    assert!(matches!(err.problem, Problem::Io(_)), "{err}");
}

#[test]
fn records_of_other_symbols_are_counted_not_kept() {
    let text = format!("{TARDIS}binance-futures,ETHUSDT,1582329602160000,1,9,buy,270,1\n");
    let f = fixture("data.csv", text.as_bytes());
    let (recs, err, report) = read_path(
        &f.0,
        Format::TardisTrades,
        ReadOptions {
            symbols: Some(["BTCUSDT".to_string()].into_iter().collect()),
            ..options(false)
        },
    );
    assert!(err.is_none());
    assert_eq!((recs.len(), report.ignored["other-symbol"]), (2, 1));
}

#[test]
fn the_order_book_is_rebuilt_by_binance_sequence_rules_and_checked_against_tickers() {
    let diff = |first: u64, last: u64, prev: u64, bids: &str, asks: &str| {
        format!(
            r#"1 {{"stream":"btcusdt@depth@0ms","data":{{"e":"depthUpdate","U":{first},"u":{last},"pu":{prev},"b":[{bids}],"a":[{asks}]}}}}"#
        )
    };
    let ticker =
        |u: u64, b: &str, a: &str| format!(r#"1 {{"stream":"btcusdt@bookTicker","data":{{"u":{u},"b":"{b}","B":"1","a":"{a}","A":"1"}}}}"#);
    let lines = [
        // Before the snapshot: buffered; the first is older than it (stale), the second spans it.
        diff(90, 95, 89, r#"["99","5"]"#, ""),
        diff(96, 101, 95, r#"["100","0"],["99.5","2"]"#, ""),
        r#"1 {"lastUpdateId":100,"bids":[["100","1"],["99","1"]],"asks":[["101","1"],["102","1"]]}"#.to_string(),
        // Best bid is now 99.5 (100 deleted), best ask 101.
        ticker(101, "99.5", "101"),
        diff(102, 105, 101, "", r#"["100.5","3"]"#),
        ticker(105, "99.5", "100.5"),
        ticker(105, "99.5", "101"), // disagrees with the book
        ticker(104, "1", "2"),      // not at the book's update id: not checked
        // A gap: pu is not the previous u; the book is discarded.
        diff(110, 112, 108, r#"["98","1"]"#, ""),
        diff(113, 114, 112, r#"["97","1"]"#, ""),
    ];
    let (_, err, report) = read("data.ws", &(lines.join("\n") + "\n"), Format::BinanceWs, false);
    assert!(err.is_none(), "{err:?}");
    let b = report.book.unwrap();
    assert_eq!(
        (b.snapshots, b.diffs_applied, b.diffs_stale, b.sequence_breaks, b.diffs_unapplied),
        (1, 2, 1, 1, 2)
    );
    assert_eq!((b.tickers_checked, b.tickers_matching), (3, 2));
    assert_eq!(
        (b.best_bid, b.best_ask, b.bid_levels, b.ask_levels),
        (Some(fx("99.5")), Some(fx("100.5")), 2, 3)
    );
    let (_, err, _) = read("data.ws", &(diff(5, 4, 3, "", "") + "\n"), Format::BinanceWs, false);
    assert_eq!(message(&err.unwrap()), "data.ws:1: field `data.u`: 4 is before U 5");
}

#[test]
fn a_recording_without_records_is_refused_unless_allowed() {
    use horizon_runtime::recorded::Feed;
    let open = |f: &Fixture| Feed::new(RecordReader::open(&f.0, Format::TardisTrades, options(true)).unwrap());
    let header = format!("{}\n\n", tardis_header());
    let bad_row = format!("{}binance-futures,BTCUSDT,x,1,1,buy,1,1\n", header);
    for (name, text, what) in [
        ("empty.csv", String::new(), "no records (0 header/blank lines)"),
        ("header.csv", header.clone(), "no records (2 header/blank lines)"),
        ("bad.csv", bad_row, "no records (2 header/blank lines, 1 skipped)"),
    ] {
        let f = fixture(name, text.as_bytes());
        let e = open(&f).require_records(false).unwrap_err();
        assert_eq!(e.problem.kind(), "no records");
        assert_eq!(e.to_string(), format!("{}: {what}", f.0.display()));
        let mut allowed = open(&f);
        let warning = allowed.require_records(true).unwrap().expect("a warning");
        assert_eq!(warning, e);
        assert!(allowed.next().is_none());
    }
    // A recording with a record: nothing to say, and the record read ahead is still delivered.
    let f = fixture(
        "one.csv",
        format!("{header}binance-futures,BTCUSDT,1582329600000000,1582329600000001,7,buy,9663.1,0.5\n").as_bytes(),
    );
    let mut feed = open(&f);
    assert_eq!(feed.require_records(false).unwrap(), None);
    assert_eq!(feed.by_ref().count(), 1);
    assert_eq!(feed.report().records, 1);
}
