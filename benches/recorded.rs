//! Recorded market data: reading the real files and replaying them through every service.
//!
//! - `ticks`: the tardis tick file (9,999 trades), read from memory. Baseline: splitting it into
//!   lines without parsing (the reader's own line loop). Then parsing into trades, into feed
//!   events, and the whole in-memory pipeline on `binance-ticks-2020`.
//! - `ws`: the gzip WebSocket capture (93,954 messages, 21,313 trades). Baseline: gunzip and
//!   split into lines. Then the reader (every message parsed).
//! - `ftx`: the January 2022 1-minute bars (45,031 rows), from the file. Baseline: lines. Then
//!   parsing into bars, and `ftx-jan-2022` end to end as `horizon sim` runs it (open the file,
//!   read, every service) without the printing.
//!
//! Throughput is in records of the file (trades or bars). Needs `../shared/data` or
//! `$HORIZON_DATA`. Run: `cargo bench --bench recorded`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use horizon_core::pipeline::MemoryRun;
use horizon_core::scenario::Scenario;
use horizon_runtime::recorded::{self, source, Format, ReadOptions, RecordReader};
use std::hint::black_box;
use std::io::Cursor;
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    let dir = std::env::var_os(recorded::DATA_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data")));
    assert!(
        dir.is_dir(),
        "recorded data is missing: no folder {} (set {})",
        dir.display(),
        recorded::DATA_ENV
    );
    dir
}

fn scenario(name: &str) -> Scenario {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    Scenario::from_toml(&std::fs::read_to_string(&path).unwrap(), &path).unwrap()
}

fn options(s: &Scenario) -> ReadOptions {
    recorded::recording_of(s).unwrap().2
}

fn count_lines(input: Box<dyn std::io::BufRead + Send>) -> usize {
    let mut lines = source::Lines::new(input);
    let mut n = 0;
    while let Some(l) = lines.next_line() {
        n += l.unwrap().len().min(1);
    }
    n
}

fn read_all(reader: RecordReader) -> usize {
    reader.fold(0, |n, r| {
        black_box(r.unwrap());
        n + 1
    })
}

fn bench(c: &mut Criterion) {
    let dir = data_dir();

    let ticks_scenario = scenario("binance-ticks-2020");
    let ticks_file = dir.join(&ticks_scenario.market.recording.as_ref().unwrap().file);
    let ticks: &'static [u8] = Box::leak(std::fs::read(&ticks_file).unwrap().into_boxed_slice());
    let n_ticks = read_all(
        RecordReader::from_reader(
            "ticks",
            Box::new(Cursor::new(ticks)),
            Format::TardisTrades,
            options(&ticks_scenario),
        )
        .unwrap(),
    );
    let mut g = c.benchmark_group("ticks");
    g.sample_size(20);
    g.throughput(Throughput::Elements(n_ticks as u64));
    g.bench_function("lines_baseline", |b| b.iter(|| count_lines(Box::new(Cursor::new(ticks)))));
    g.bench_function("read_trades", |b| {
        b.iter(|| {
            read_all(
                RecordReader::from_reader(
                    "ticks",
                    Box::new(Cursor::new(ticks)),
                    Format::TardisTrades,
                    options(&ticks_scenario),
                )
                .unwrap(),
            )
        })
    });
    g.bench_function("read_feed_events", |b| {
        b.iter(|| {
            RecordReader::from_reader(
                "ticks",
                Box::new(Cursor::new(ticks)),
                Format::TardisTrades,
                options(&ticks_scenario),
            )
            .unwrap()
            .map(|r| r.unwrap().into_event().ts.nanos())
            .sum::<i64>()
        })
    });
    g.bench_function("pipeline", |b| {
        b.iter(|| {
            let mut feed = recorded::open_feed(&ticks_scenario, &dir).unwrap();
            let (run, failure) = recorded::drive(&mut feed, |events| MemoryRun::run(&ticks_scenario, events, 8192));
            assert!(failure.is_none());
            black_box(run.feed_events)
        })
    });
    g.finish();

    let ws_scenario = scenario("binance-ws-2024");
    let ws_file = dir.join(&ws_scenario.market.recording.as_ref().unwrap().file);
    let n_ws = read_all(RecordReader::open(&ws_file, Format::BinanceWs, options(&ws_scenario)).unwrap());
    let mut g = c.benchmark_group("ws");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n_ws as u64));
    g.bench_function("gunzip_lines_baseline", |b| b.iter(|| count_lines(source::open(&ws_file).unwrap())));
    g.bench_function("read_trades", |b| {
        b.iter(|| read_all(RecordReader::open(&ws_file, Format::BinanceWs, options(&ws_scenario)).unwrap()))
    });
    g.finish();

    let ftx_scenario = scenario("ftx-jan-2022");
    let ftx_file = dir.join(&ftx_scenario.market.recording.as_ref().unwrap().file);
    let n_ftx = read_all(RecordReader::open(&ftx_file, Format::Ohlcv, options(&ftx_scenario)).unwrap());
    let mut g = c.benchmark_group("ftx");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n_ftx as u64));
    g.bench_function("lines_baseline", |b| b.iter(|| count_lines(source::open(&ftx_file).unwrap())));
    g.bench_function("read_bars", |b| {
        b.iter(|| read_all(RecordReader::open(&ftx_file, Format::Ohlcv, options(&ftx_scenario)).unwrap()))
    });
    g.bench_function("sim_end_to_end", |b| {
        b.iter(|| {
            let mut feed = recorded::open_feed(&ftx_scenario, &dir).unwrap();
            let (run, failure) = recorded::drive(&mut feed, |events| MemoryRun::run(&ftx_scenario, events, 8192));
            assert!(failure.is_none());
            black_box(run.summary(&ftx_scenario, 0).digests.all)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
