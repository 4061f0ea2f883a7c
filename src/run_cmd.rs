//! `horizon run`: the long-lived service process on Apache Kafka, and `horizon digest`: a read
//! replica built from the log on demand.

use crate::sim_cmd::load_scenario;
use horizon_core::time::parse_duration_ms;
use horizon_runtime::api::{self, SharedSnapshot};
use horizon_runtime::kafka::KafkaConfig;
use horizon_runtime::notify::{CircuitBreaker, JsonlSink, Sink};
use horizon_runtime::replica;
use horizon_runtime::service::{
    stop_on_signals, unsettled_line, Backoff, ServiceOptions, ServiceProcess, StageKind, Watchdog, CLOSE_GRACE, UNSETTLED_EXIT,
};
use horizon_runtime::snapshots::SnapshotDir;
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
        Err(_) => horizon_core::time::parse_duration_ms(s),
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
        horizon_runtime::kafka::check_reachable(&c).map_err(|e| e.to_string())?;
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

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The scenario whose symbols, portfolio, strategies, risk limits and users configure the
    /// services (a file, or the name of a shipped one).
    #[arg(long)]
    pub scenario: String,
    /// Stages to run: market, signals, portfolio (hosts risk and notification decisions),
    /// projections, notify (delivers notifications to --notify-out).
    #[arg(long, default_value = "market,signals,portfolio,projections")]
    pub services: String,
    /// Consumer groups are PREFIX.STAGE; processes with the same prefix share the work.
    #[arg(long, default_value = "horizon")]
    pub group_prefix: String,
    /// Consumer group of the projections stage (default: one per process, a read replica).
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

pub fn run(args: RunArgs) -> Result<(), String> {
    let (_path, scenario) = load_scenario(&args.scenario)?;
    let config = args.kafka.config()?;
    let token = args.http_token_file.as_deref().map(api::read_token_file).transpose()?;
    let stages = StageKind::parse_list(&args.services)?;
    let mut options = ServiceOptions::new(stages.clone(), args.group_prefix.clone());
    options.projections_group = args.projections_group.clone();
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
    if stages.contains(&StageKind::Notify) {
        let sink: Box<dyn Sink> = match &args.notify_out {
            Some(p) => Box::new(JsonlSink::file(p).map_err(|e| format!("--notify-out {}: {e}", p.display()))?),
            None => Box::new(JsonlSink::stdout()),
        };
        options.sink = Some(sink);
    }
    let stop = stop_on_signals()?;
    horizon_runtime::kafka::check_reachable(&config).map_err(|e| e.to_string())?;
    let mut process = ServiceProcess::new(&scenario, &config, options).map_err(|e| e.to_string())?;
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
    if unsettled {
        std::process::exit(UNSETTLED_EXIT);
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DigestArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The scenario the deployment runs (its portfolio's initial cash enters the views).
    #[arg(long)]
    pub scenario: String,
    /// Prefix of the replica's own consumer group.
    #[arg(long, default_value = "horizon")]
    pub group_prefix: String,
    /// Give up when not caught up after this many seconds (reaching the brokers is bounded by
    /// --timeout).
    #[arg(long, default_value_t = 300)]
    pub catch_up_secs: u64,
    /// Print digests and views as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn digest(args: DigestArgs) -> Result<(), String> {
    let (_path, scenario) = load_scenario(&args.scenario)?;
    let config = args.kafka.connect()?;
    let r = replica::build(&scenario, &config, &args.group_prefix, Duration::from_secs(args.catch_up_secs)).map_err(|e| e.to_string())?;
    if args.json {
        let v = serde_json::json!({"digests": r.digests(), "events": r.events, "records_read": r.records_read, "views": r.views()});
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else {
        println!("{} distinct events from {} records", r.events, r.records_read);
        println!("projection digests");
        let digests = r.digests();
        println!("  bars           {}", digests.bars);
        println!("  portfolio      {}", digests.portfolio);
        println!("  risk           {}", digests.risk);
        println!("  notifications  {}", digests.notifications);
        println!("  audit          {}", digests.audit);
        println!("  all            {}", digests.all);
    }
    Ok(())
}
