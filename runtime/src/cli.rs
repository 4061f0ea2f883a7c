//! The runtime's command line, for any topology: `horizon run` and `horizon topics create` are
//! these functions called with the shipped topology, and a user's binary runs its own topology
//! on Kafka with the same flags:
//!
//! ```no_run
//! use clap::Parser;
//! use horizon_core::topology::Topology;
//! use horizon_runtime::cli::{self, RunArgs};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     run: RunArgs,
//! }
//!
//! fn main() {
//!     let topology = Topology::shipped(); // plus the user's topics and stages
//!     match cli::run(Cli::parse().run, topology) {
//!         Ok(code) => std::process::exit(code),
//!         Err(e) => {
//!             eprintln!("error: {}", horizon_runtime::secrets::mask(&e));
//!             std::process::exit(1)
//!         }
//!     }
//! }
//! ```

use crate::api::{self, SharedSnapshot};
use crate::kafka::{admin, KafkaConfig};
use crate::notify::{CircuitBreaker, JsonlSink, Sink};
use crate::service::{
    parse_services, stop_on_signals, unsettled_line, Backoff, ServiceOptions, ServiceProcess, Watchdog, CLOSE_GRACE, UNSETTLED_EXIT,
};
use crate::snapshots::SnapshotDir;
use horizon_core::scenario::Scenario;
use horizon_core::strategy::StrategyRegistry;
use horizon_core::time::parse_duration_ms;
use horizon_core::topology::Topology;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Connection settings shared by the Kafka commands.
#[derive(clap::Args, Clone)]
pub struct KafkaArgs {
    /// Bootstrap servers (host:port,...). Overrides bootstrap.servers of --config.
    #[arg(long)]
    pub brokers: Option<String>,
    /// A Kafka client properties file (security.protocol, sasl.*, ssl.*, ...), passed through
    /// to every client.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Bound on reaching the brokers at start and on each request to them (a flush, a metadata
    /// or offset query): `30`, `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

/// `--timeout`: a bare number is seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let ms = match s.trim().parse::<u64>() {
        Ok(secs) => secs.checked_mul(1000).and_then(|ms| i64::try_from(ms).ok()),
        Err(_) => parse_duration_ms(s),
    };
    match ms {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms as u64)),
        _ => Err(format!("`{s}` is not a positive duration (30, 30s, 500ms, 2m)")),
    }
}

impl KafkaArgs {
    /// The client settings, checked by librdkafka (no connection yet).
    pub fn config(&self) -> Result<KafkaConfig, String> {
        let mut c = match &self.config {
            Some(path) => read_properties(path)?,
            None => KafkaConfig::new(""),
        };
        if let Some(b) = &self.brokers {
            c.bootstrap = b.clone();
        }
        if c.bootstrap.trim().is_empty() {
            return Err("no brokers: pass --brokers HOST:PORT (or bootstrap.servers in --config)".into());
        }
        c.request_timeout = self.timeout;
        c.flush_timeout = self.timeout;
        let named = |e: horizon_core::bus::BusError| match &self.config {
            Some(path) => format!("{}: {e}", path.display()),
            None => e.to_string(),
        };
        c.validate().map_err(named)?;
        Ok(c)
    }

    /// `config`, once a broker has answered within `--timeout`.
    pub fn connect(&self) -> Result<KafkaConfig, String> {
        let c = self.config()?;
        crate::kafka::check_reachable(&c).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

fn read_properties(path: &Path) -> Result<KafkaConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // bootstrap.servers may come from --brokers instead; added last, so line numbers hold.
    let text = if text.lines().any(|l| l.trim_start().starts_with("bootstrap.servers")) {
        text
    } else {
        format!("{text}\nbootstrap.servers=")
    };
    KafkaConfig::from_properties(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Finds a scenario by path, else by name among the shipped ones (`scenarios/` of this
/// workspace), else in `./scenarios/`.
pub fn resolve_scenario(arg: &str) -> Result<PathBuf, String> {
    let direct = PathBuf::from(arg);
    if direct.is_file() {
        return Ok(direct);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".."));
    let shipped = workspace.join("scenarios").join(format!("{arg}.toml"));
    if shipped.is_file() {
        return Ok(shipped);
    }
    let local = Path::new("scenarios").join(format!("{arg}.toml"));
    if local.is_file() {
        return Ok(local);
    }
    Err(format!("{arg}: no such scenario file, and no shipped scenario of that name"))
}

/// Reads and validates a scenario, its strategies looked up in `registry`.
pub fn load_scenario(arg: &str, registry: &StrategyRegistry) -> Result<Scenario, String> {
    let path = resolve_scenario(arg)?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Scenario::from_toml_with(&text, &path.display().to_string(), registry).map_err(|e| e.to_string())
}

/// `horizon run`'s flags.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The scenario whose symbols, portfolio, strategies, risk limits and users configure the
    /// services (a file, or the name of a shipped one).
    #[arg(long)]
    pub scenario: String,
    /// Stages to run, by name (default: every stage of the topology): the shipped one's are
    /// market, signals, portfolio (hosts risk and notification decisions), projections; and
    /// notify delivers notifications to --notify-out.
    #[arg(long)]
    pub services: Option<String>,
    /// Consumer groups are PREFIX.STAGE; processes with the same prefix share the work.
    #[arg(long, default_value = "horizon")]
    pub group_prefix: String,
    /// Consumer group of the projections stage, the read replica (default: one per process;
    /// with several read replicas selected, GROUP.STAGE each).
    #[arg(long)]
    pub projections_group: Option<String>,
    /// Serve the query API on this address (127.0.0.1:8080; port 0 picks one and prints it):
    /// portfolios, positions, bars, risk, notifications, events, /ready, /metrics,
    /// /openapi.json (runtime/openapi.json).
    #[arg(long)]
    pub http: Option<String>,
    /// A file holding the query API's bearer token: every route but /health and /ready then
    /// requires `Authorization: Bearer <token>`.
    #[arg(long, requires = "http")]
    pub http_token_file: Option<PathBuf>,
    /// Where the notify stage delivers, as JSON lines (default: stdout).
    #[arg(long)]
    pub notify_out: Option<PathBuf>,
    /// Records per step of a stage.
    #[arg(long, default_value_t = 4096)]
    pub max_records: usize,
    /// Keep stage snapshots here: offered at start (restore = snapshot + the log's tail), saved
    /// every --snapshot-records records or --snapshot-secs seconds and at a clean stop.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_records: u64,
    #[arg(long, default_value_t = 30)]
    pub snapshot_secs: u64,
    /// /ready answers 200 once every assigned partition is restored and within this many
    /// records of its end.
    #[arg(long, default_value_t = 0)]
    pub ready_lag: u64,
    /// A stage with work waiting and no progress for longer than this is stalled: /ready
    /// answers 503 naming it, horizon_stage_stalled is 1 (1s, 500ms, 2m, ...).
    #[arg(long, default_value = "30s")]
    pub stall_after: String,
    /// After SIGTERM, how long unsettled work may take to be acknowledged and committed; the
    /// process exits 3 naming what is left (the consumers get 5 s more to leave their groups).
    #[arg(long, default_value = "30s")]
    pub drain_timeout: String,
}

/// A positive duration flag such as `30s`.
fn duration_flag(flag: &str, value: &str) -> Result<Duration, String> {
    match parse_duration_ms(value) {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms as u64)),
        _ => Err(format!("{flag}: `{value}` is not a positive duration like 30s or 500ms")),
    }
}

/// Runs the selected stages of `topology` on Kafka until SIGTERM/SIGINT, the scenario's
/// strategies looked up in the topology's registry. Returns the exit code: 0, or
/// `UNSETTLED_EXIT` when a stop left work unsettled (the line naming it is printed). An error
/// is one line naming what is wrong.
pub fn run(args: RunArgs, topology: Topology) -> Result<i32, String> {
    topology.validate().map_err(|e| e.to_string())?;
    let scenario = load_scenario(&args.scenario, topology.registry())?;
    let config = args.kafka.config()?;
    let token = args.http_token_file.as_deref().map(api::read_token_file).transpose()?;
    let stages = match &args.services {
        Some(list) => parse_services(&topology, list)?,
        None => topology.stages().iter().map(|s| s.name).collect(),
    };
    let delivery = stages.iter().any(|n| *n == crate::notify::NAME && topology.stage_spec(n).is_none());
    let mut options = ServiceOptions::new(stages, args.group_prefix.clone());
    options.replica_group = args.projections_group.clone();
    options.max_records = args.max_records.max(1);
    options.backoff = Backoff::default();
    options.breaker = CircuitBreaker::new(5, Duration::from_secs(10));
    options.snapshot_records = args.snapshot_records.max(1);
    options.snapshot_interval = Duration::from_secs(args.snapshot_secs.max(1));
    options.ready_lag = args.ready_lag;
    options.stall_after = duration_flag("--stall-after", &args.stall_after)?;
    options.drain_timeout = duration_flag("--drain-timeout", &args.drain_timeout)?;
    let shutdown_bound = options.drain_timeout + CLOSE_GRACE;
    if let Some(dir) = &args.state_dir {
        options.state_dir = Some(SnapshotDir::open(dir).map_err(|e| format!("--state-dir {}: {e}", dir.display()))?);
    }
    if delivery {
        let sink: Box<dyn Sink> = match &args.notify_out {
            Some(p) => Box::new(JsonlSink::file(p).map_err(|e| format!("--notify-out {}: {e}", p.display()))?),
            None => Box::new(JsonlSink::stdout()),
        };
        options.sink = Some(sink);
    }
    let stop = stop_on_signals()?;
    crate::kafka::check_reachable(&config).map_err(|e| e.to_string())?;
    let mut process = ServiceProcess::new(&topology, &scenario, &config, options).map_err(|e| e.to_string())?;
    let shared = SharedSnapshot::default();
    let mut served = None;
    if let Some(addr) = &args.http {
        let server = api::serve_with_token(addr, shared.clone(), api::Catalog::from_scenario(&scenario), token)?;
        if let Some(warning) = api::exposure_warning(server.addr, server.token_required) {
            eprintln!("horizon run: warning: {warning}");
        }
        served = Some(server.addr);
    }
    eprintln!(
        "horizon run: scenario {}, stages {}, group prefix {}, brokers {}{}",
        scenario.name,
        process.stages().join(","),
        args.group_prefix,
        config.bootstrap,
        served.map(|a| format!(", query API on http://{a}")).unwrap_or_default()
    );
    let watchdog = Watchdog::arm(stop.clone(), shutdown_bound, process.health())?;
    let report = process.run(&stop, Some(&shared)).map_err(|e| e.to_string())?;
    let summary = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    eprintln!(
        "horizon run: stopped ({}): {summary}",
        if stop.load(Ordering::SeqCst) { "signal" } else { "done" }
    );
    let unsettled = !report.unsettled_at_exit.is_empty();
    if unsettled {
        watchdog.say(&unsettled_line(&process.health(), &report.unsettled_at_exit));
    }
    // The consumers leave their groups (the watchdog bounds this on a dead broker).
    drop(process);
    Ok(if unsettled { UNSETTLED_EXIT } else { 0 })
}

/// `horizon topics create`'s flags.
#[derive(clap::Args)]
pub struct CreateTopicsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Replicas per partition (3 on a 3-node cluster).
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i32,
    /// min.insync.replicas for the created topics (2 with 3 replicas survives one node down
    /// without losing an acknowledged record).
    #[arg(long)]
    pub min_insync: Option<u32>,
}

/// Creates every topic of `topology` with its partition count (existing ones are left as they
/// are), then prints them.
pub fn create_topics(args: &CreateTopicsArgs, topology: &Topology) -> Result<(), String> {
    let replication_factor = args.replication_factor;
    if replication_factor < 1 {
        return Err("--replication-factor must be at least 1".into());
    }
    if let Some(m) = args.min_insync {
        if m < 1 || m as i32 > replication_factor {
            return Err(format!(
                "--min-insync must be between 1 and the replication factor ({replication_factor})"
            ));
        }
    }
    topology.validate().map_err(|e| e.to_string())?;
    let config = args.kafka.connect()?;
    admin::create_topics(
        &config.bootstrap,
        &config.properties,
        topology.topics(),
        replication_factor,
        args.min_insync,
    )
    .map_err(|e| e.to_string())?;
    println!("topics ready on {} (replication factor {replication_factor}):", config.bootstrap);
    print_topics(topology);
    Ok(())
}

/// The topology's topics, one line each.
pub fn print_topics(topology: &Topology) {
    for t in topology.topics() {
        println!("  {:<14} {:>2} partitions  key: {:<30} {}", t.name, t.partitions, t.key, t.holds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_seconds_or_durations() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").unwrap_err().contains("`soon` is not a positive duration"));
    }

    #[test]
    fn a_shipped_scenario_is_found_by_name() {
        let s = load_scenario("flash-crash", &StrategyRegistry::shipped()).unwrap();
        assert!(!s.name.is_empty());
        let e = load_scenario("no-such-scenario", &StrategyRegistry::shipped()).unwrap_err();
        assert_eq!(e, "no-such-scenario: no such scenario file, and no shipped scenario of that name");
    }
}
