//! `horizon explore`, `horizon replay`, `horizon shrink` and `horizon bench sim`: the
//! deterministic simulator (`horizon-sim`) from the command line.
//!
//! A seed is a whole run: `explore` runs a range of seeds on every core and lists failures by
//! invariant with the command that replays each; `replay` runs one seed again (same trace
//! digest) and prints its fault schedule and, with `--schedule`, every step; `shrink` reduces a
//! failing seed's fault schedule to a minimal one. The edge lives here (files, wall clock,
//! progress bar, threads); the runs themselves are pure.

use crate::explore_results::{ResultFile, Shard};
use crate::sim_cmd::{data_dir, load_scenario};
use horizon_core::pipeline::MemoryRun;
use horizon_core::scenario::Scenario;
use horizon_core::topology::Topology;
use horizon_core::Timestamp;
use horizon_runtime::recorded::window::{read_window, Window, WindowRead};
use horizon_sim::driver::{simulate, RunSpec};
use horizon_sim::feed::Feed;
use horizon_sim::trace::format_ns;
use horizon_sim::{explore, explore_until, shrink_seed, Case, ExploreOptions, FaultProfile, Invariant, Runner, Schedule, SeedReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every simulator command needs to rebuild a run exactly (also what an explore result
/// file records as its case: two files of one case have equal `CaseArgs`).
#[derive(clap::Args, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseArgs {
    /// A scenario file, or the name of a shipped one (`flash-crash`, or the simulator's `quick`).
    pub scenario: String,
    /// Fault profile: `none`, `kafka`, `chaos`, `swarm`, or a TOML file (see docs/simulator.md).
    #[arg(long, default_value = "kafka")]
    pub profile: String,
    /// Trades taken from the scenario's generator per run, or records (trades or bars) of a
    /// recording's window (0: all of them).
    #[arg(long, default_value_t = horizon_sim::DEFAULT_EVENTS)]
    pub events: usize,
    /// Pin the market to this generator seed (default: each run's seed is its market's seed).
    #[arg(long)]
    pub feed_seed: Option<u64>,
    /// Override fault knobs: `crash=3:20000,outage=off` (KIND=MAX[:UP_TO] or KIND=off).
    #[arg(long)]
    pub faults: Option<String>,
    /// Run a deliberately broken service (`no-dedup`, `commit-first`, `arrival-order`,
    /// `no-restore`, `hash-order`, `whole-dead-letter`); needs a binary built with
    /// `--features broken-services`.
    #[arg(long)]
    pub broken: Option<String>,
    /// Recorded scenarios: the window starts at the first record at or after this time
    /// (RFC 3339, a bar's start for bar recordings).
    #[arg(long)]
    pub start: Option<String>,
    /// Recorded scenarios: the window starts at least this many records into the file.
    #[arg(long, default_value_t = 0)]
    pub skip: u64,
    /// Recorded scenarios: skip malformed lines (counted by reason) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
}

/// A case and what its market is, for a person.
pub struct Resolved {
    pub case: Case,
    /// `1000 trades a run` (generated), or the recorded window.
    pub market: String,
}

impl CaseArgs {
    /// The case, with a recorded scenario's window read once (every seed replays it).
    /// Whatever no seed could run (a missing file, an empty window) is refused here.
    fn resolve(&self, base: &Topology) -> Result<Resolved, String> {
        let mut case = self.case(base)?;
        let market = match self.window(&case.scenario)? {
            Some(w) => {
                let market = format!("recorded: {}", w.describe());
                case.recorded = Some(Arc::new(Feed::recorded(w.events)));
                market
            }
            None => format!(
                "{} trades a run",
                case.events.map(|n| n.to_string()).unwrap_or_else(|| "all".into())
            ),
        };
        Runner::new(case.clone()).preflight(case.feed_seed.unwrap_or(0))?;
        Ok(Resolved { case, market })
    }

    /// The window of the scenario's recording, read from the data folder; `None` for a
    /// generated market (where `--start` and `--skip` are refused).
    fn window(&self, scenario: &Scenario) -> Result<Option<WindowRead>, String> {
        if scenario.market.recording.is_none() {
            if self.start.is_some() || self.skip > 0 {
                return Err(format!(
                    "--start/--skip: {} has a generated market; they choose a window of a recording",
                    scenario.name
                ));
            }
            return Ok(None);
        }
        let start = match &self.start {
            Some(s) => {
                Some(Timestamp::parse_rfc3339(s).ok_or_else(|| format!("--start {s}: not an RFC 3339 time (like 2022-01-21T00:00:00Z)"))?)
            }
            None => None,
        };
        let mut scenario = scenario.clone();
        if let Some(r) = scenario.market.recording.as_mut() {
            r.skip_bad |= self.skip_bad;
        }
        let window = Window {
            start,
            skip: self.skip,
            events: (self.events > 0).then_some(self.events),
        };
        let dir = data_dir()?;
        read_window(&scenario, &dir, window)
            .map(Some)
            .map_err(|e| format!("{}: {e}", scenario.name))
    }

    fn case(&self, base: &Topology) -> Result<Case, String> {
        let scenario = resolve_scenario(&self.scenario, base)?;
        let mut profile = load_profile(&self.profile)?;
        if let Some(spec) = &self.faults {
            profile.apply_overrides(spec)?;
        }
        let topology = match &self.broken {
            Some(name) if base.name == horizon_core::topology::SHIPPED => horizon_sim::topology_named(name)?,
            Some(name) => {
                return Err(format!(
                    "--broken {name}: the broken services are shipped stages; this binary runs topology `{}`",
                    base.name
                ))
            }
            None => base.clone(),
        };
        Ok(Case {
            scenario,
            topology: std::sync::Arc::new(topology),
            profile,
            events: (self.events > 0).then_some(self.events),
            feed_seed: self.feed_seed,
            recorded: None,
        })
    }

    /// The flags that rebuild this case, for a printed command.
    pub fn flags(&self) -> String {
        let mut f = format!("{} --profile {}", self.scenario, self.profile);
        if self.events != horizon_sim::DEFAULT_EVENTS {
            f.push_str(&format!(" --events {}", self.events));
        }
        if let Some(s) = self.feed_seed {
            f.push_str(&format!(" --feed-seed {s}"));
        }
        if let Some(x) = &self.faults {
            f.push_str(&format!(" --faults {x}"));
        }
        if let Some(b) = &self.broken {
            f.push_str(&format!(" --broken {b}"));
        }
        if let Some(t) = &self.start {
            f.push_str(&format!(" --start {t}"));
        }
        if self.skip > 0 {
            f.push_str(&format!(" --skip {}", self.skip));
        }
        if self.skip_bad {
            f.push_str(" --skip-bad");
        }
        f
    }
}

/// A shipped scenario, the simulator's own (`quick`), or a file.
fn resolve_scenario(arg: &str, topology: &Topology) -> Result<Scenario, String> {
    match load_scenario(arg, topology) {
        Ok((_, s)) => Ok(s),
        Err(e) => {
            let own = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("sim/scenarios")
                .join(format!("{arg}.toml"));
            if !own.is_file() {
                return Err(e);
            }
            let text = std::fs::read_to_string(&own).map_err(|e| format!("{}: {e}", own.display()))?;
            topology.scenario(&text, &own.display().to_string()).map_err(|e| e.to_string())
        }
    }
}

fn load_profile(arg: &str) -> Result<FaultProfile, String> {
    if let Some(p) = FaultProfile::named(arg) {
        return Ok(p);
    }
    let path = PathBuf::from(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        return FaultProfile::from_toml(&text, &path.display().to_string());
    }
    Err(format!(
        "{arg}: no such profile (known: {}) and no such file",
        FaultProfile::NAMES.join(", ")
    ))
}

#[derive(clap::Args)]
#[command(after_help = "Shards' result files (--json) are merged with `horizon explore merge FILES...`.")]
pub struct ExploreArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    /// Seeds to run: `A..B` (B excluded), one seed, or `A..` (open-ended, with --time only).
    /// Default: `0..1000`, or `0..` with --time.
    #[arg(long)]
    pub seeds: Option<String>,
    /// Run only the K-th of N disjoint, contiguous slices of the range (K from 1 to N), for
    /// fanning one range out over N machines.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Explore from the start of the range (or slice) until this much wall time is spent
    /// (`60s`, `10m`, `500ms`, a bare number is seconds), then stop after the seeds under way.
    #[arg(long)]
    pub time: Option<String>,
    /// Write the result (case, seeds run, time, each failing seed with its violations and
    /// replay command) to FILE as JSON, for `horizon explore merge`.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Threads (default: every core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run every seed that is a multiple of N twice to check determinism (0: never, 1: every
    /// seed); by the seed's number, so a seed is checked alike in any shard.
    #[arg(long, default_value_t = 8)]
    pub determinism_every: u64,
    /// Shrink the first failing seed of each invariant and print its minimal schedule.
    #[arg(long)]
    pub shrink: bool,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long)]
    pub seed: u64,
    /// Print every step of the run: deliveries, commits, publishes, rebalances, faults.
    #[arg(long)]
    pub schedule: bool,
    /// Run this fault schedule (JSON, as `horizon shrink --out` writes) instead of the seed's.
    #[arg(long)]
    pub schedule_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ShrinkArgs {
    #[command(flatten)]
    pub case: CaseArgs,
    #[arg(long)]
    pub seed: u64,
    /// The invariant to keep breaking (default: the first the seed breaks).
    #[arg(long)]
    pub invariant: Option<String>,
    /// Bound on the runs spent shrinking.
    #[arg(long, default_value_t = 2000)]
    pub max_runs: usize,
    /// Also print every step of the minimal run.
    #[arg(long)]
    pub schedule: bool,
    /// Write the minimal schedule as JSON (replay it with `horizon replay --schedule-file`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Simulator throughput: events/s per core (kafka profile vs the fault-free in-memory run),
    /// seeds per minute on every core, virtual-time speed-up.
    Sim(BenchSimArgs),
    /// The whole pipeline on a real Kafka broker next to raw rdkafka produce-then-consume:
    /// events/s and publish-to-projection latency percentiles.
    Kafka(crate::bench_kafka_cmd::BenchKafkaArgs),
}

#[derive(clap::Args)]
pub struct BenchSimArgs {
    /// Scenario (default: the simulator's `quick`).
    #[arg(default_value = "quick")]
    pub scenario: String,
    /// Trades per run.
    #[arg(long, default_value_t = horizon_sim::DEFAULT_EVENTS)]
    pub events: usize,
    /// Seeds for the seeds-per-minute measurement.
    #[arg(long, default_value_t = 2000)]
    pub seeds: u64,
    /// Threads for the seeds-per-minute measurement (default: every core).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--seeds`: `A..B`, `A` or `A..` (open: to `u64::MAX`, which no budget reaches).
fn parse_seeds(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--seeds {s}: expected A..B (B excluded), A.. (with --time) or a single seed");
    match s.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = match b.trim() {
                "" => u64::MAX,
                b => b.parse().map_err(|_| bad())?,
            };
            if b <= a {
                return Err(format!("--seeds {s}: the range is empty"));
            }
            Ok((a, b))
        }
        None => {
            let a: u64 = s.trim().parse().map_err(|_| bad())?;
            Ok((a, a.checked_add(1).ok_or_else(bad)?))
        }
    }
}

/// `--shard K/N`: K from 1 to N.
fn parse_shard(s: &str) -> Result<Shard, String> {
    let bad = |why: &str| format!("--shard {s}: {why}");
    let (k, n) = s.split_once('/').ok_or_else(|| bad("expected K/N, like 2/4 (K from 1 to N)"))?;
    let (k, n): (u64, u64) = match (k.trim().parse(), n.trim().parse()) {
        (Ok(k), Ok(n)) => (k, n),
        _ => return Err(bad("expected K/N, like 2/4 (K from 1 to N)")),
    };
    if n == 0 {
        return Err(bad("N must be at least 1"));
    }
    if k == 0 || k > n {
        return Err(bad(&format!("K must be from 1 to {n} (shards count from 1)")));
    }
    Ok(Shard { k, n })
}

/// Seeds `first..end` for a person: an open range is `first..`.
pub fn seed_range(first: u64, end: u64) -> String {
    if end == u64::MAX {
        format!("{first}..")
    } else {
        format!("{first}..{end}")
    }
}

/// `N seeds/s (M a minute)` over `secs`.
pub fn rate(seeds: u64, secs: f64) -> String {
    let secs = secs.max(1e-9);
    format!("{:.1} seeds/s ({:.0} a minute)", seeds as f64 / secs, seeds as f64 * 60.0 / secs)
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn run_explore(args: ExploreArgs, topology: &Topology) -> Result<(), String> {
    let budget = match &args.time {
        Some(t) => Some(crate::run_cmd::parse_timeout(t).map_err(|e| format!("--time: {e}"))?),
        None => None,
    };
    let seeds_arg = args.seeds.clone().unwrap_or_else(|| match budget {
        Some(_) => "0..".into(),
        None => "0..1000".into(),
    });
    let (range_first, range_end) = parse_seeds(&seeds_arg)?;
    if range_end == u64::MAX && budget.is_none() {
        return Err(format!("--seeds {seeds_arg}: an open range needs --time"));
    }
    let shard = args.shard.as_deref().map(parse_shard).transpose()?;
    let (first, end) = match shard {
        Some(Shard { k, n }) => {
            let (a, b) = horizon_sim::shard(range_first, range_end, k, n).ok_or_else(|| format!("--shard {k}/{n}: no such slice"))?;
            if a == b {
                return Err(format!(
                    "--shard {k}/{n}: --seeds {} has fewer seeds than shards",
                    seed_range(range_first, range_end)
                ));
            }
            (a, b)
        }
        None => (range_first, range_end),
    };
    if let Some(path) = &args.json {
        // Refused now, not after the budget is spent: the file is written when the run ends.
        std::fs::File::create(path).map_err(|e| format!("--json {}: {e}", path.display()))?;
    }
    let Resolved { case, market } = args.case.resolve(topology)?;
    let jobs = args.jobs.unwrap_or_else(cores).max(1);
    let slice = match shard {
        Some(Shard { k, n }) => format!(" (shard {k}/{n} of {})", seed_range(range_first, range_end)),
        None => String::new(),
    };
    let within = match (&args.time, budget) {
        (Some(t), Some(_)) => format!(" for {t}"),
        _ => String::new(),
    };
    eprintln!(
        "exploring seeds {}{slice}{within} of {} ({} services, {market}) under {}: {}",
        seed_range(first, end),
        case.scenario.name,
        case.topology.name,
        case.profile.name,
        case.profile.describe()
    );
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else if end == u64::MAX {
        ProgressBar::no_length()
    } else {
        ProgressBar::new(end - first)
    };
    let template = if end == u64::MAX {
        "{pos} seeds  {seeds_per_sec}  {elapsed_precise}  {msg}"
    } else {
        "{bar:40} {pos}/{len} seeds  {seeds_per_sec}  {elapsed_precise}  {msg}"
    };
    bar.set_style(ProgressStyle::with_template(template).map_err(|e| e.to_string())?.with_key(
        "seeds_per_sec",
        |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1} seeds/s", s.per_sec());
        },
    ));
    bar.set_message("0 failed");
    let started = Instant::now();
    let mut failed = 0u64;
    let opts = ExploreOptions {
        first,
        end,
        jobs,
        determinism_every: args.determinism_every,
    };
    let deadline = budget.map(|b| started + b);
    let stop = || deadline.is_some_and(|d| Instant::now() >= d);
    let reports = explore_until(&case, &opts, stop, |r| {
        if r.failed() {
            failed += 1;
            bar.set_message(format!("{failed} failed (last: seed {})", r.seed));
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    let wall = started.elapsed();
    let total = reports.len() as u64;
    let ran_end = first + total;
    if ran_end < end {
        println!(
            "time budget {} spent: ran seeds {} of {}",
            args.time.as_deref().unwrap_or(""),
            seed_range(first, ran_end),
            seed_range(first, end)
        );
    }
    println!(
        "{} seeds in {:.2} s on {jobs} threads: {}; {} failed",
        total,
        wall.as_secs_f64(),
        rate(total, wall.as_secs_f64()),
        failed
    );
    if let Some(path) = &args.json {
        let file = ResultFile::new(
            &args.case,
            (range_first, range_end),
            shard,
            (first, ran_end),
            wall.as_secs_f64(),
            args.determinism_every,
            &reports,
        );
        file.write(path)?;
    }
    if failed == 0 {
        println!("every invariant held for every seed");
        return Ok(());
    }
    print_failures(&args.case.flags(), &reports);
    if args.shrink {
        let mut runner = Runner::new(case.clone());
        let mut firsts: BTreeMap<Invariant, u64> = BTreeMap::new();
        for r in reports.iter().filter(|r| r.failed()) {
            for v in &r.violations {
                firsts.entry(v.invariant).or_insert(r.seed);
            }
        }
        for (inv, seed) in firsts {
            println!();
            println!("shrinking seed {seed} ({inv})...");
            match shrink_seed(&mut runner, seed, Some(inv), 2000)? {
                Some(s) => print_shrunk(&s, &args.case, seed),
                None => println!("seed {seed} no longer breaks {inv} when run alone"),
            }
        }
    }
    Err(format!("{failed} of {total} seeds broke an invariant"))
}

/// The command that replays `seed` of the case whose flags are `flags`.
pub fn replay_command(flags: &str, seed: u64) -> String {
    format!("{} replay {flags} --seed {seed}", crate::bin_name())
}

/// The failure table (by invariant, with the command replaying each one's first seed), the
/// first violation of each, and a shrink command. `flags`: [`CaseArgs::flags`].
pub fn print_failures(flags: &str, reports: &[SeedReport]) {
    let mut by: BTreeMap<Invariant, Vec<&SeedReport>> = BTreeMap::new();
    for r in reports.iter().filter(|r| r.failed()) {
        let mut seen = Vec::new();
        for v in &r.violations {
            if !seen.contains(&v.invariant) {
                seen.push(v.invariant);
                by.entry(v.invariant).or_default().push(r);
            }
        }
    }
    println!();
    println!("{:<18} {:>6}  {:<24}  replay the first with", "invariant", "seeds", "first seeds");
    for (inv, rs) in &by {
        let firsts: Vec<String> = rs.iter().take(4).map(|r| r.seed.to_string()).collect();
        println!(
            "{:<18} {:>6}  {:<24}  {}",
            inv.name(),
            rs.len(),
            firsts.join(" "),
            replay_command(flags, rs[0].seed)
        );
    }
    println!();
    for (inv, rs) in &by {
        let r = rs[0];
        if let Some(v) = r.violations.iter().find(|v| v.invariant == *inv) {
            println!("seed {} {inv}: {}", r.seed, v.detail);
        }
    }
    if let Some((_, rs)) = by.iter().next() {
        println!();
        println!("shrink one: {} shrink {flags} --seed {}", crate::bin_name(), rs[0].seed);
    }
}

fn print_shrunk(s: &horizon_sim::Shrunk, args: &CaseArgs, seed: u64) {
    println!(
        "seed {seed} breaks {}: its schedule of {} faults shrinks to {} in {} runs",
        s.invariant,
        s.original.len(),
        s.minimal.len(),
        s.runs
    );
    print!("{}", indent(&s.minimal.render()));
    for v in &s.outcome.violations {
        println!("  {v}");
    }
    println!(
        "save and replay it: {} shrink {} --seed {seed} --out minimal.json",
        crate::bin_name(),
        args.flags()
    );
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

pub fn run_replay(args: ReplayArgs, topology: &Topology) -> Result<(), String> {
    let Resolved { case, market } = args.case.resolve(topology)?;
    let mut runner = Runner::new(case.clone());
    let (profile, tree) = runner.schedule_tree(args.seed)?;
    let schedule = match &args.schedule_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Schedule::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => proptest::strategy::ValueTree::current(&tree),
    };
    let started = Instant::now();
    let o = runner.run_schedule(args.seed, &profile, &schedule, args.schedule)?;
    let wall = started.elapsed();
    let source = match case.recorded {
        Some(_) => market,
        None => format!("market seed {}", o.feed_seed),
    };
    println!(
        "scenario {} seed {} ({source}), {} services, {} feed events",
        case.scenario.name, o.seed, case.topology.name, o.feed_events
    );
    println!("profile {}: {}", case.profile.name, profile.describe());
    println!();
    println!("fault schedule");
    print!("{}", indent(&o.schedule.render()));
    if args.schedule {
        println!();
        println!("steps (virtual time, who, what)");
        for l in &o.lines {
            println!("  {l}");
        }
    }
    println!();
    let c = &o.counters;
    println!(
        "{} events in {} of virtual time ({} after the faults ended), {:.1} ms wall",
        o.events,
        format_ns(o.virtual_ns),
        format_ns(o.virtual_ns.saturating_sub(o.heal_ns)),
        wall.as_secs_f64() * 1000.0
    );
    println!(
        "  {} records appended, {} delivered in {} polls, {} commits ({} refused), {} rebalances",
        c.records_appended, c.records_delivered, c.polls, c.commits, c.commits_refused, c.rebalances
    );
    println!(
        "  {} crashes, {} expulsions, {} failed requests, {} partial flushes, {} duplicated and {} reordered batches",
        c.crashes, c.expulsions, c.requests_failed, c.partial_flushes, c.duplicated_batches, c.reordered_batches
    );
    let restored: u64 = o.stats.values().map(|s| s.restored_records).sum();
    let skipped: u64 = o.stats.values().map(|s| s.redelivered_skipped).sum();
    println!("  {restored} records replayed to restore tasks, {skipped} redeliveries skipped");
    println!("reference digest {}", o.reference.all);
    for (p, d) in &o.replicas {
        println!("replica p{p} digest {}", d.all);
    }
    println!("trace digest {}", o.trace_digest);
    if o.violations.is_empty() {
        println!("every invariant holds");
        Ok(())
    } else {
        for v in &o.violations {
            println!("{v}");
        }
        Err(format!("seed {} broke {} invariant(s)", o.seed, o.violations.len()))
    }
}

pub fn run_shrink(args: ShrinkArgs, topology: &Topology) -> Result<(), String> {
    let case = args.case.resolve(topology)?.case;
    let target = match &args.invariant {
        Some(name) => Some(Invariant::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Invariant::ALL.iter().map(|i| i.name()).collect();
            format!("--invariant {name}: no such invariant (known: {})", known.join(", "))
        })?),
        None => None,
    };
    let mut runner = Runner::new(case);
    let started = Instant::now();
    let Some(s) = shrink_seed(&mut runner, args.seed, target, args.max_runs)? else {
        println!(
            "seed {} breaks no invariant{}: nothing to shrink",
            args.seed,
            match target {
                Some(t) => format!(" ({t})"),
                None => String::new(),
            }
        );
        return Ok(());
    };
    println!(
        "seed {} breaks {}: its schedule of {} faults shrinks to {} in {} runs ({:.1} s)",
        args.seed,
        s.invariant,
        s.original.len(),
        s.minimal.len(),
        s.runs,
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("minimal schedule");
    print!("{}", indent(&s.minimal.render()));
    println!();
    for v in &s.outcome.violations {
        println!("{v}");
    }
    if args.schedule {
        println!();
        println!("steps of the minimal run");
        for l in &s.outcome.lines {
            println!("  {l}");
        }
    }
    let json = serde_json::to_string_pretty(&s.minimal).map_err(|e| e.to_string())?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
            println!();
            println!(
                "wrote {}; replay: {} replay {} --seed {} --schedule-file {} --schedule",
                path.display(),
                crate::bin_name(),
                args.case.flags(),
                args.seed,
                path.display()
            );
        }
        None => {
            println!();
            println!("as JSON (--out FILE writes it for `{} replay --schedule-file`):", crate::bin_name());
            println!("{json}");
        }
    }
    Ok(())
}

pub fn run_bench(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Sim(args) => bench_sim(args),
        BenchCommand::Kafka(args) => crate::bench_kafka_cmd::run(args),
    }
}

/// Figures from `horizon bench sim`.
#[derive(serde::Serialize)]
struct SimFigures {
    scenario: String,
    events_per_run: usize,
    runs_timed: u64,
    memory_events_per_second: f64,
    sim_kafka_events_per_second: f64,
    sim_over_memory_ratio: f64,
    checked_seeds_per_minute_one_core: f64,
    jobs: usize,
    seeds: u64,
    seeds_per_minute: f64,
    virtual_time_speedup: f64,
}

fn bench_sim(args: BenchSimArgs) -> Result<(), String> {
    // A recorded scenario's default window is read once here, as `explore` reads it.
    let resolved = CaseArgs {
        scenario: args.scenario.clone(),
        profile: "kafka".into(),
        events: args.events,
        feed_seed: None,
        faults: None,
        broken: None,
        start: None,
        skip: 0,
        skip_bad: false,
    }
    .resolve(&Topology::shipped())?
    .case;
    let scenario = resolved.scenario.clone();
    let topology = resolved.topology.clone();
    let events = resolved.events;
    let jobs = args.jobs.unwrap_or_else(cores).max(1);
    // 1. One core: the fault-free in-memory run vs the simulated kafka deployment, same feeds.
    let profile = FaultProfile::kafka();
    let mut runner = Runner::new(resolved.clone());
    let runs = 40u64;
    let (mut memory, mut sim) = (Duration::ZERO, Duration::ZERO);
    let (mut fed, mut span_ns) = (0u64, 0u64);
    for seed in 0..runs {
        let feed = match &resolved.recorded {
            Some(f) => (**f).clone(),
            None => Feed::generate(&scenario, seed, events)?,
        };
        let (p, tree) = runner.schedule_tree(seed)?;
        let schedule = proptest::strategy::ValueTree::current(&tree);
        let feed = feed.with_faults(&schedule.feed_faults(), &scenario.symbols());
        let evs = feed.events();
        fed += evs.len() as u64;
        let t = Instant::now();
        std::hint::black_box(MemoryRun::run(&scenario, evs, 8192).feed_events);
        memory += t.elapsed();
        let spec = RunSpec {
            scenario: &scenario,
            topology: &topology,
            profile: &p,
            schedule: &schedule,
            feed: &feed,
            seed,
            render: false,
        };
        let t = Instant::now();
        let f = simulate(&spec);
        sim += t.elapsed();
        span_ns += f.virtual_ns;
        if f.stuck.is_some() || f.loop_error.is_some() {
            return Err(format!("seed {seed}: the run failed: {:?} {:?}", f.stuck, f.loop_error));
        }
    }
    let memory_eps = fed as f64 / memory.as_secs_f64();
    let sim_eps = fed as f64 / sim.as_secs_f64();
    // 2. One core: whole checked seeds (feed, schedule, run, reference, invariants).
    let t = Instant::now();
    for seed in 0..runs {
        let o = runner.run_seed(1_000_000 + seed, false)?;
        if o.failed() {
            return Err(format!("seed {}: {:?}", o.seed, o.violations));
        }
    }
    let one_core = runs as f64 * 60.0 / t.elapsed().as_secs_f64();
    // 3. Every core: explore.
    let case = Case { profile, ..resolved };
    let opts = ExploreOptions {
        first: 0,
        end: args.seeds,
        jobs,
        determinism_every: 0,
    };
    let t = Instant::now();
    let reports = explore(&case, &opts, |_| {});
    let wall = t.elapsed();
    if let Some(r) = reports.iter().find(|r| r.failed()) {
        return Err(format!("seed {}: {:?}", r.seed, r.violations));
    }
    let figures = SimFigures {
        scenario: scenario.name.clone(),
        events_per_run: (fed / runs) as usize,
        runs_timed: runs,
        memory_events_per_second: memory_eps,
        sim_kafka_events_per_second: sim_eps,
        sim_over_memory_ratio: sim_eps / memory_eps,
        checked_seeds_per_minute_one_core: one_core,
        jobs,
        seeds: args.seeds,
        seeds_per_minute: args.seeds as f64 * 60.0 / wall.as_secs_f64(),
        virtual_time_speedup: span_ns as f64 / sim.as_nanos() as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!(
        "scenario {}, {} feed events a run, kafka profile, {runs} runs timed on one core",
        figures.scenario, figures.events_per_run
    );
    println!(
        "  fault-free in-memory run     {:>12.0} market events/s",
        figures.memory_events_per_second
    );
    println!(
        "  simulated kafka deployment   {:>12.0} market events/s  ({:.2}x the in-memory run; 2 processes, 2 replicas)",
        figures.sim_kafka_events_per_second, figures.sim_over_memory_ratio
    );
    println!(
        "  checked seeds, one core      {:>12.0} a minute (run + reference + invariants)",
        figures.checked_seeds_per_minute_one_core
    );
    println!(
        "  checked seeds, {} threads     {:>12.0} a minute ({} seeds)",
        figures.jobs, figures.seeds_per_minute, figures.seeds
    );
    println!("  virtual time                 {:>12.0}x real time", figures.virtual_time_speedup);
    Ok(())
}
