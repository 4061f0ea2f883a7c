//! `horizon sim`: a scenario through every service on the in-memory bus.

use horizon_core::event::EventType;
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::{MemoryRun, Pipeline, RunSummary};
use horizon_core::scenario::Scenario;
use horizon_core::topology::Topology;
use horizon_core::{feed, Fixed};
use horizon_runtime::recorded;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct SimArgs {
    /// A scenario file, or the name of a shipped one (`flash-crash`).
    pub scenario: String,
    /// Seed of the market generator (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the event log and projection snapshots to this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub recording: RecordingArgs,
}

/// How to read a scenario's recording, for every command that replays one.
#[derive(clap::Args, Clone, Copy, Default)]
pub struct RecordingArgs {
    /// Recorded data: skip malformed lines (counted by reason) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Recorded data: replay a recording without records (empty or header-only) as zero events,
    /// with a warning, instead of refusing it.
    #[arg(long)]
    pub allow_empty: bool,
}

/// Finds a scenario by path, or by name in `scenarios/` (`horizon_runtime::cli`'s lookup).
pub fn resolve_scenario(arg: &str) -> Result<PathBuf, String> {
    horizon_runtime::cli::resolve_scenario(arg)
}

/// A scenario file (by path or shipped name) read with `topology`'s strategies (a user's
/// binary knows its own).
pub fn load_scenario(arg: &str, topology: &Topology) -> Result<(PathBuf, Scenario), String> {
    let path = resolve_scenario(arg)?;
    let scenario = horizon_runtime::cli::load_scenario(&path.display().to_string(), topology.registry())?;
    Ok((path, scenario))
}

/// The folder of recorded files: `$HORIZON_DATA`, else `../shared/data` beside the repository
/// holding the current directory, else beside the repository this binary was built from.
pub fn data_dir() -> Result<PathBuf, String> {
    let mut roots = Vec::new();
    if let Some(root) = std::env::current_dir().ok().and_then(|d| recorded::find_repo_root(&d)) {
        roots.push(root);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    recorded::resolve_data_dir(&roots)
}

/// The market feed of a scenario: its generator's trades, or its recording's records. Runs `f`
/// over the feed's events and returns its result with the recording's report (`None` for a
/// generated market); a recording that stops at an error (a malformed line without
/// `--skip-bad`) is that error, and one without records is refused before `f` runs (a warning
/// with `--allow-empty` or `allow_empty = true`).
pub fn with_feed<R>(
    scenario: &Scenario,
    seed: u64,
    flags: RecordingArgs,
    f: impl FnOnce(&mut dyn Iterator<Item = horizon_core::event::Event>) -> R,
) -> Result<(R, Option<recorded::ReadReport>), String> {
    if scenario.market.recording.is_none() {
        let generator =
            MarketGenerator::new(scenario, seed).ok_or_else(|| format!("{}: the scenario has no market source", scenario.name))?;
        return Ok((f(&mut generator.map(feed::trade_event)), None));
    }
    let mut scenario = scenario.clone();
    let mut allow_empty = flags.allow_empty;
    if let Some(r) = scenario.market.recording.as_mut() {
        r.skip_bad |= flags.skip_bad;
        allow_empty |= r.allow_empty;
    }
    let dir = data_dir()?;
    let mut feed = recorded::open_feed(&scenario, &dir).map_err(|e| e.to_string())?;
    match feed.require_records(allow_empty) {
        Ok(None) => {}
        Ok(Some(empty)) => eprintln!("horizon: warning: {empty}; replayed as zero events (allow-empty)"),
        Err(e) => return Err(format!("{e} (--allow-empty replays it as zero events)")),
    }
    let (out, failure) = recorded::drive(&mut feed, f);
    if let Some(e) = failure {
        let hint = if e.problem.skippable() {
            " (--skip-bad skips such lines)"
        } else {
            ""
        };
        return Err(format!("{e}{hint}"));
    }
    Ok((out, Some(feed.report().clone())))
}

pub fn run(args: SimArgs, topology: &Topology) -> Result<(), String> {
    let (_path, scenario) = load_scenario(&args.scenario, topology)?;
    let seed = args.seed.unwrap_or(scenario.seed);
    let pipeline = Pipeline::from_topology(topology, &scenario).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let (run, report) = with_feed(&scenario, seed, args.recording, |events| {
        let mut run = MemoryRun::with_pipeline(pipeline);
        run.try_feed_all(events, 8192).map(|()| run)
    })?;
    let run = run?;
    let wall = started.elapsed();
    let summary = run.summary(&scenario, seed);
    if let Some(dir) = &args.out {
        write_out(dir, &run).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if args.json {
        let mut v = serde_json::to_value(&summary).map_err(|e| e.to_string())?;
        v["wall_time_ms"] = serde_json::json!(wall.as_millis() as u64);
        v["feed_events_per_second"] = serde_json::json!((summary.feed_events as f64 / wall.as_secs_f64()) as u64);
        if let Some(r) = &report {
            v["recording"] = serde_json::to_value(r).map_err(|e| e.to_string())?;
        }
        v["read_digests"] = serde_json::to_value(run.pipeline.read_digests()).map_err(|e| e.to_string())?;
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else {
        if let Some(r) = &report {
            println!("recording");
            for line in r.describe() {
                println!("  {line}");
            }
            println!();
        }
        print_summary(&summary, wall);
        // A user's read models (the topology's replicas besides the shipped projections).
        let others: Vec<(String, String)> = run
            .pipeline
            .read_digests()
            .parts
            .into_iter()
            .filter(|(p, _)| !p.starts_with(&format!("{}.", horizon_core::projections::NAME)))
            .collect();
        if !others.is_empty() {
            println!();
            println!("read-model digests of topology `{}`", topology.name);
            for (part, d) in others {
                println!("  {part:<28} {d}");
            }
        }
    }
    Ok(())
}

fn write_out(dir: &Path, run: &MemoryRun) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let broker = run.bus.broker();
    let records: Vec<horizon_core::bus::Record> = broker
        .all_partitions()
        .into_iter()
        .flat_map(|tp| broker.read(tp, 0, u64::MAX))
        .collect();
    crate::audit_cmd::write_log(&dir.join("audit.log"), &records)?;
    let mut log = std::io::BufWriter::new(std::fs::File::create(dir.join("events.jsonl"))?);
    {
        for r in &records {
            let line = match horizon_core::event::Event::decode(&r.value) {
                Ok(e) => serde_json::json!({"topic": r.topic, "partition": r.partition, "offset": r.offset, "event": e}),
                Err(err) => {
                    serde_json::json!({"topic": r.topic, "partition": r.partition, "offset": r.offset, "undecodable": err.to_string()})
                }
            };
            writeln!(log, "{line}")?;
        }
    }
    log.flush()?;
    let views = run.pipeline.views();
    std::fs::write(dir.join("projections.json"), serde_json::to_vec_pretty(&views)?)?;
    if let Some(p) = run.pipeline.projections() {
        std::fs::write(dir.join("bars.json"), serde_json::to_vec_pretty(&p.bars)?)?;
        std::fs::write(dir.join("audit.json"), serde_json::to_vec_pretty(&p.audit)?)?;
    }
    std::fs::write(dir.join("digests.json"), serde_json::to_vec_pretty(&run.pipeline.digests())?)?;
    Ok(())
}

fn print_summary(s: &RunSummary, wall: std::time::Duration) {
    println!("scenario {} (seed {})", s.scenario, s.seed);
    println!();
    println!("events by type");
    for t in EventType::ALL {
        println!("  {:<28} {:>10}", t.as_str(), s.events_by_type.get(&t).copied().unwrap_or(0));
    }
    println!();
    println!("  signals that changed direction {:>6}", s.signals_changed);
    println!("  rebalances                     {:>6}", s.rebalances);
    println!("  risk crossings entered/cleared {:>6} / {}", s.risk_entered, s.risk_cleared);
    println!(
        "  notifications (rate-limited)   {:>6} ({})",
        s.notifications, s.notifications_rate_limited
    );
    println!("  dead letters                   {:>6}", s.dead_letters);
    println!("  duplicates dropped             {:>6}", s.duplicates_dropped);
    if let Some(p) = &s.portfolio {
        println!();
        println!("portfolio {}", p.portfolio_id);
        println!("  value          {:>16}", round2(p.value));
        println!("  total P&L      {:>16}", round2(p.total_pnl));
        println!("  realised P&L   {:>16}", round2(p.realized_pnl));
        println!("  unrealised P&L {:>16}", round2(p.unrealized_pnl));
        println!("  fees           {:>16}", round2(p.fees));
        println!("  max drawdown   {:>15.2}%", p.max_drawdown.to_f64() * 100.0);
        for pos in &p.positions {
            println!("  {:<12} {:>14} @ {}", pos.symbol, pos.quantity, pos.mark_price);
        }
    }
    println!();
    println!("projection digests");
    println!("  bars           {}", s.digests.bars);
    println!("  portfolio      {}", s.digests.portfolio);
    println!("  risk           {}", s.digests.risk);
    println!("  notifications  {}", s.digests.notifications);
    println!("  audit          {}", s.digests.audit);
    println!("  all            {}", s.digests.all);
    println!();
    let secs = wall.as_secs_f64();
    let total: u64 = s.events_by_type.values().sum();
    println!(
        "{} feed events, {} events in all, in {:.3} s wall ({:.0} feed events/s)",
        s.feed_events,
        total,
        secs,
        s.feed_events as f64 / secs
    );
}

fn round2(x: Fixed) -> String {
    format!("{:.2}", x.to_f64())
}
