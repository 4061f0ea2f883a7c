//! `horizon run`: a topology as a long-lived service process on Apache Kafka (the logic is
//! `horizon_runtime::cli`), and `horizon digest`: its read replicas rebuilt from the log on
//! demand.

use crate::sim_cmd::load_scenario;
use horizon_core::pipeline::ReadDigests;
use horizon_core::topology::Topology;
use horizon_runtime::replica;
use std::time::Duration;

pub use horizon_runtime::cli::{parse_timeout, KafkaArgs, RunArgs};

pub fn run(args: RunArgs, topology: &Topology) -> Result<(), String> {
    let code = horizon_runtime::cli::run(args, topology.clone())?;
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

pub fn digest(args: DigestArgs, topology: &Topology) -> Result<(), String> {
    let (_path, scenario) = load_scenario(&args.scenario, topology)?;
    let config = args.kafka.connect()?;
    let timeout = Duration::from_secs(args.catch_up_secs);
    let r = replica::build(topology, &scenario, &config, &args.group_prefix, timeout).map_err(|e| e.to_string())?;
    // A user's read models, each rebuilt by a replica of its own.
    let mut parts = r.read_digests().parts;
    for spec in topology
        .stages()
        .iter()
        .filter(|s| s.replica && s.name != horizon_core::projections::NAME)
    {
        let other =
            replica::build_stage(topology, &scenario, &config, &args.group_prefix, spec.name, timeout).map_err(|e| e.to_string())?;
        parts.extend(other.read_digests().parts);
    }
    let read = ReadDigests::from_parts(parts);
    if args.json {
        let v = serde_json::json!({"digests": r.digests(), "read_digests": read, "events": r.events, "records_read": r.records_read, "views": r.views()});
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
        if read.parts.len() > r.read_digests().parts.len() {
            println!("read-model digests of topology `{}`", topology.name);
            for (part, d) in &read.parts {
                println!("  {part:<28} {d}");
            }
        }
    }
    Ok(())
}
