//! `horizon feed`: a scenario's market data onto `market.feed`, as a market-data gateway would
//! publish it: the generator's trades or a recording's records, at full speed or paced.

use crate::run_cmd::KafkaArgs;
use crate::sim_cmd::{load_scenario, with_feed};
use horizon_runtime::gateway::{self, FeedOptions};
use horizon_runtime::kafka::KafkaProducer;
use horizon_runtime::service::stop_on_signals;

#[derive(clap::Args)]
pub struct FeedArgs {
    /// A scenario file, or the name of a shipped one.
    pub scenario: String,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Events per second (`10000` or `10000/s`); default: as fast as the broker takes them.
    #[arg(long)]
    pub rate: Option<String>,
    /// Seed of the market generator (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Recorded data: skip malformed lines instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

pub fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "--rate: `{s}` is not a positive number of events per second (e.g. 10000/s)"
        )),
    }
}

pub fn run(args: FeedArgs) -> Result<(), String> {
    let (_path, scenario) = load_scenario(&args.scenario)?;
    let config = args.kafka.config()?;
    let rate = args.rate.as_deref().map(parse_rate).transpose()?;
    let seed = args.seed.unwrap_or(scenario.seed);
    let stop = stop_on_signals()?;
    let mut producer = KafkaProducer::new(&config).map_err(|e| e.to_string())?;
    let options = FeedOptions {
        rate,
        ..FeedOptions::default()
    };
    let (result, recording) = with_feed(&scenario, seed, args.skip_bad, |events| {
        gateway::publish(&mut producer, events, &options, &stop)
    })?;
    let report = result.map_err(|e| e.to_string())?;
    if let Some(r) = recording {
        for line in r.describe() {
            eprintln!("horizon feed: {line}");
        }
    }
    let secs = report.elapsed_ms as f64 / 1000.0;
    println!(
        "published {} events of {} to market.feed in {:.3} s ({:.0} events/s){}{}",
        report.events,
        scenario.name,
        secs,
        report.events as f64 / secs.max(1e-9),
        if report.chunks_resent > 0 {
            format!(", {} chunk(s) sent again", report.chunks_resent)
        } else {
            String::new()
        },
        if report.stopped_early { ", stopped early by a signal" } else { "" }
    );
    Ok(())
}
