//! `horizon run`: the shipped topology as a long-lived service process on Apache Kafka (the
//! logic is `horizon_runtime::cli`, which a user's binary calls with its own topology), and
//! `horizon digest`: a read replica built from the log on demand.

use crate::sim_cmd::load_scenario;
use horizon_core::strategy::StrategyRegistry;
use horizon_core::topology::Topology;
use horizon_runtime::replica;
use std::time::Duration;

pub use horizon_runtime::cli::{parse_timeout, KafkaArgs, RunArgs};

pub fn run(args: RunArgs) -> Result<(), String> {
    let registry = StrategyRegistry::shipped();
    let code = horizon_runtime::cli::run_with(args, Topology::shipped_with(registry.clone()), &registry)?;
    if code != 0 {
        std::process::exit(code);
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
    let r = replica::build(
        &Topology::shipped(),
        &scenario,
        &config,
        &args.group_prefix,
        Duration::from_secs(args.catch_up_secs),
    )
    .map_err(|e| e.to_string())?;
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
