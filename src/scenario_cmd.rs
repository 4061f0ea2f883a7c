//! `horizon scenario`: the scenario library. `list` shows every shipped scenario, its market
//! source and whether its recorded data is present; `show` reads one scenario's market source
//! through (the whole file, for a recording) and tells its span, symbols and event counts.

use crate::sim_cmd::{self, load_scenario, RecordingArgs};
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::MemoryRun;
use horizon_core::scenario::Scenario;
use horizon_core::signals::Ema;
use horizon_core::time::{format_duration_ms, parse_duration_ms};
use horizon_core::Timestamp;
use horizon_runtime::recorded::{self, ReadReport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ScenarioCommand {
    /// List the shipped scenarios: market source and whether recorded data is present.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Read a scenario's market source through: source, span, symbols, event counts.
    Show {
        /// A scenario file, or the name of a shipped one.
        scenario: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        recording: RecordingArgs,
    },
    /// Runs the scenario and writes one symbol's bars of one interval with the EMAs the signals
    /// use, as CSV, for checking the analytics independently (`scripts/crosscheck.py`).
    #[command(hide = true)]
    Bars {
        scenario: String,
        /// Bar interval (default: the signal interval).
        #[arg(long)]
        interval: Option<String>,
        /// Symbol (default: the scenario's first).
        #[arg(long)]
        symbol: Option<String>,
        /// EMA spans, comma-separated (default: the scenario's fast and slow).
        #[arg(long)]
        ema: Option<String>,
        #[command(flatten)]
        recording: RecordingArgs,
    },
}

pub fn run(cmd: ScenarioCommand, topology: &horizon_core::topology::Topology) -> Result<(), String> {
    match cmd {
        ScenarioCommand::List { json } => list(json),
        ScenarioCommand::Show { scenario, json, recording } => show(&scenario, json, recording, topology),
        ScenarioCommand::Bars {
            scenario,
            interval,
            symbol,
            ema,
            recording,
        } => bars(&scenario, interval, symbol, ema, recording, topology),
    }
}

/// The folder of shipped scenarios: the current repository's, else this build's.
fn scenarios_dir() -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|d| recorded::find_repo_root(&d))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("scenarios")
}

#[derive(Serialize)]
struct Listed {
    name: String,
    file: String,
    source: String,
    data: String,
    description: String,
}

fn source_of(s: &Scenario) -> String {
    match &s.market.recording {
        Some(r) => format!("recording: {} {}", r.format, r.file),
        None => "generator".into(),
    }
}

/// `present`, `missing: <where>`, or `-` for a generated market.
fn data_status(s: &Scenario) -> String {
    let Some(r) = &s.market.recording else { return "-".into() };
    match sim_cmd::data_dir() {
        Ok(dir) if dir.join(&r.file).is_file() => "present".into(),
        Ok(dir) => format!("missing: {}", dir.join(&r.file).display()),
        Err(e) => format!("missing: {e}"),
    }
}

fn list(json: bool) -> Result<(), String> {
    let dir = scenarios_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut rows = Vec::new();
    for p in &paths {
        let file = p.file_name().unwrap_or_default().to_string_lossy().to_string();
        let row = match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| Scenario::from_toml(&t, &p.display().to_string()).map_err(|e| e.to_string()))
        {
            Ok(s) => Listed {
                name: s.name.clone(),
                file,
                source: source_of(&s),
                data: data_status(&s),
                description: s.description.clone(),
            },
            Err(e) => Listed {
                name: p.file_stem().unwrap_or_default().to_string_lossy().to_string(),
                file,
                source: "invalid".into(),
                data: "-".into(),
                description: e,
            },
        };
        rows.push(row);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("{:<20} {:<10} {:<8} source", "scenario", "kind", "data");
    for r in &rows {
        let kind = if r.source == "generator" { "generator" } else { "recording" };
        let data = if r.data.starts_with("missing") { "MISSING" } else { &r.data };
        println!("{:<20} {:<10} {:<8} {}", r.name, kind, data, r.source);
        if !r.description.is_empty() {
            println!("{:<20} {}", "", r.description);
        }
        if r.data.starts_with("missing") {
            println!("{:<20} {}", "", r.data);
        }
    }
    println!("\n{} scenarios in {}", rows.len(), dir.display());
    Ok(())
}

#[derive(Serialize)]
struct SymbolCount {
    symbol: String,
    trades: u64,
    bars: u64,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
}

#[derive(Serialize)]
struct Shown {
    name: String,
    description: String,
    file: String,
    source: String,
    bar_intervals: Vec<String>,
    span: Option<(Timestamp, Timestamp)>,
    symbols: Vec<SymbolCount>,
    feed_events: u64,
    trades: u64,
    bars: u64,
    recording: Option<ReadReport>,
}

fn show(arg: &str, json: bool, recording: RecordingArgs, topology: &horizon_core::topology::Topology) -> Result<(), String> {
    let (path, s) = load_scenario(arg, topology)?;
    let mut per_symbol: BTreeMap<String, SymbolCount> = BTreeMap::new();
    let report = if s.market.recording.is_some() {
        let (_, report) = sim_cmd::with_feed(&s, s.seed, recording, |events| {
            for e in events {
                count(&mut per_symbol, &e);
            }
        })?;
        report
    } else {
        let g = MarketGenerator::new(&s, s.seed).ok_or_else(|| format!("{}: no market source", s.name))?;
        for t in g {
            count(&mut per_symbol, &horizon_core::feed::trade_event(t));
        }
        None
    };
    let first = per_symbol.values().filter_map(|c| c.first).min();
    let last = per_symbol.values().filter_map(|c| c.last).max();
    let shown = Shown {
        name: s.name.clone(),
        description: s.description.clone(),
        file: path.display().to_string(),
        source: source_of(&s),
        bar_intervals: s.market.bar_intervals.clone(),
        span: first.zip(last),
        trades: per_symbol.values().map(|c| c.trades).sum(),
        bars: per_symbol.values().map(|c| c.bars).sum(),
        feed_events: per_symbol.values().map(|c| c.trades + c.bars).sum(),
        symbols: per_symbol.into_values().collect(),
        recording: report,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("scenario {} ({})", shown.name, shown.file);
    if !shown.description.is_empty() {
        println!("  {}", shown.description);
    }
    println!("source         {}", shown.source);
    if let Some(r) = &s.market.recording {
        println!(
            "data           {}",
            data_status(&s).replace("present", &format!("present ({})", r.file))
        );
    }
    if let Some((a, b)) = shown.span {
        let hours = (b.nanos() - a.nanos()) as f64 / 3.6e12;
        println!("span           {a} .. {b} ({hours:.2} h)");
    }
    println!("bar intervals  {}", shown.bar_intervals.join(", "));
    println!(
        "feed events    {} ({} trades, {} bars)",
        shown.feed_events, shown.trades, shown.bars
    );
    for c in &shown.symbols {
        println!(
            "  {:<12} {:>9} trades {:>7} bars  {} .. {}",
            c.symbol,
            c.trades,
            c.bars,
            c.first.map(|t| t.to_string()).unwrap_or_default(),
            c.last.map(|t| t.to_string()).unwrap_or_default()
        );
    }
    if let Some(r) = &shown.recording {
        println!("recording");
        for line in r.describe() {
            println!("  {line}");
        }
    }
    Ok(())
}

fn count(per_symbol: &mut BTreeMap<String, SymbolCount>, e: &horizon_core::event::Event) {
    use horizon_core::event::Payload;
    let (symbol, ts, is_bar) = match &e.payload {
        Payload::Trade(t) => (&t.symbol, t.ts_exchange, false),
        Payload::Bar(b) => (&b.symbol, b.start, true),
        _ => return,
    };
    let c = per_symbol.entry(symbol.clone()).or_insert_with(|| SymbolCount {
        symbol: symbol.clone(),
        trades: 0,
        bars: 0,
        first: None,
        last: None,
    });
    if is_bar {
        c.bars += 1;
    } else {
        c.trades += 1;
    }
    c.first = Some(c.first.map_or(ts, |f| f.min(ts)));
    c.last = Some(c.last.map_or(ts, |l| l.max(ts)));
}

/// The bars the pipeline built for one symbol and interval, with the EMAs of their closes as
/// the signals service computes them (`signals::Ema`), as CSV on stdout.
fn bars(
    arg: &str,
    interval: Option<String>,
    symbol: Option<String>,
    ema: Option<String>,
    recording: RecordingArgs,
    topology: &horizon_core::topology::Topology,
) -> Result<(), String> {
    let (_, s) = load_scenario(arg, topology)?;
    let interval_ms = match &interval {
        Some(i) => parse_duration_ms(i).ok_or_else(|| format!("--interval: `{i}` is not a duration like 1m"))?,
        None => s.signal_interval_ms(),
    };
    let symbol = symbol.unwrap_or_else(|| s.symbols()[0].clone());
    // By default the spans of the scenario's first ema-crossover, in either syntax.
    let crossover = s
        .strategy_specs()
        .into_iter()
        .find(|spec| spec.name == horizon_core::signals::EMA_CROSSOVER);
    let spans: Vec<u32> = match (&ema, crossover) {
        (Some(list), _) => list
            .split(',')
            .map(|x| x.trim().parse::<u32>().map_err(|_| format!("--ema: `{x}` is not a span")))
            .collect::<Result<_, _>>()?,
        (None, Some(spec)) => ["fast", "slow"]
            .iter()
            .filter_map(|k| spec.params.get(*k).and_then(|v| v.as_integer()).map(|n| n as u32))
            .collect(),
        (None, None) => vec![],
    };
    let (run, _) = sim_cmd::with_feed(&s, s.seed, recording, |events| MemoryRun::run(&s, events, 8192))?;
    let p = run.pipeline.projections().ok_or("the run produced no projections")?;
    let key = format_duration_ms(interval_ms);
    let series = p
        .bars
        .get(&symbol)
        .and_then(|m| m.get(&key))
        .ok_or_else(|| format!("no {key} bars of {symbol} (intervals: {})", s.market.bar_intervals.join(", ")))?;
    write_bars(&mut std::io::stdout().lock(), series.values(), &spans).map_err(|e| e.to_string())
}

fn write_bars<'a>(out: &mut dyn Write, bars: impl Iterator<Item = &'a horizon_core::event::Bar>, spans: &[u32]) -> std::io::Result<()> {
    let mut emas: Vec<Ema> = spans.iter().map(|&n| Ema::new(n)).collect();
    write!(out, "start,open,high,low,close,volume,trades")?;
    for n in spans {
        write!(out, ",ema_{n}")?;
    }
    writeln!(out)?;
    for b in bars {
        write!(
            out,
            "{},{},{},{},{},{},{}",
            b.start.to_rfc3339_nanos(),
            b.open,
            b.high,
            b.low,
            b.close,
            b.volume,
            b.trade_count
        )?;
        for e in emas.iter_mut() {
            write!(out, ",{}", e.update(b.close))?;
        }
        writeln!(out)?;
    }
    Ok(())
}
