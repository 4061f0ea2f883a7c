//! `horizon bench kafka`: the whole pipeline on a real broker next to raw rdkafka
//! (see `horizon_runtime::bench`).

use crate::run_cmd::KafkaArgs;
use crate::sim_cmd::load_scenario;
use horizon_core::event::Event;
use horizon_core::feed;
use horizon_core::generator::MarketGenerator;
use horizon_runtime::bench;
use horizon_runtime::service as bench_stage;

#[derive(clap::Args)]
pub struct BenchKafkaArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Scenario whose generator makes the trades (run for as long as needed).
    #[arg(long, default_value = "chop")]
    pub scenario: String,
    /// Trades for the throughput runs.
    #[arg(long, default_value_t = 300_000)]
    pub events: usize,
    /// Paced rates (events/s) for the latency runs, each for about 10 s.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    pub rates: Vec<f64>,
    /// Confirms the broker is a scratch one: every pipeline run deletes and recreates the
    /// platform topics (a process restores its state by replaying the topics, so they must be
    /// empty for the figures to mean anything).
    #[arg(long)]
    pub scratch: bool,
    /// Records per step of a stage (`horizon run --max-records`).
    #[arg(long, default_value_t = 4096)]
    pub max_records: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchKafkaArgs) -> Result<(), String> {
    if !args.scratch {
        return Err(
            "horizon bench kafka deletes and recreates the platform topics before each pipeline run: \
                    point it at a scratch broker and pass --scratch"
                .into(),
        );
    }
    let (_path, mut scenario) = load_scenario(&args.scenario, &horizon_core::topology::Topology::shipped())?;
    if let Some(g) = scenario.market.generator.as_mut() {
        g.duration = "30d".into();
    }
    let events: Vec<Event> = MarketGenerator::new(&scenario, scenario.seed)
        .ok_or("the scenario has no generator")?
        .map(feed::trade_event)
        .take(args.events)
        .collect();
    let config = args.kafka.connect()?;
    let values: Vec<Vec<u8>> = events.iter().map(|e| e.encode()).collect();
    let raw = bench::raw_roundtrip(&config, &values).map_err(|e| format!("raw rdkafka: {e}"))?;
    eprintln!("horizon bench kafka: raw rdkafka {:.0} records/s", raw.events_per_second);
    let pipeline = bench::pipeline_throughput(&scenario, &config, &events, args.max_records).map_err(|e| format!("pipeline: {e}"))?;
    // The topics now hold the throughput run's records and outputs: rebuild from them.
    let rebuilt = bench::rebuild_from_topics(&scenario, &config).map_err(|e| format!("rebuild: {e}"))?;
    let (mut latencies, mut raw_latencies) = (Vec::new(), Vec::new());
    for &rate in &args.rates {
        let n = ((rate * 10.0) as usize).clamp(1000, events.len());
        let probe_every = (n / 20_000).max(1);
        raw_latencies
            .push(bench::raw_latency(&config, &events[..n], rate, probe_every).map_err(|e| format!("raw latency at {rate}/s: {e}"))?);
        latencies.push(
            bench::pipeline_latency(&scenario, &config, &events[..n], rate, probe_every, args.max_records)
                .map_err(|e| format!("latency at {rate}/s: {e}"))?,
        );
    }
    let ratio = pipeline.events_per_second / raw.events_per_second;
    if args.json {
        let v = serde_json::json!({"raw_rdkafka": raw, "pipeline": pipeline, "pipeline_over_raw": ratio,
            "rebuild_from_topics": rebuilt, "rebuild_over_read": rebuilt.rebuild.events_per_second / rebuilt.read.events_per_second,
            "latency": latencies, "raw_latency": raw_latencies});
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("kafka at {} ({} trades of {})", config.bootstrap, events.len(), scenario.name);
    println!(
        "  raw rdkafka produce-then-consume  {:>10.0} records/s ({:.2} s)",
        raw.events_per_second, raw.seconds
    );
    println!(
        "  whole pipeline (4 stages)         {:>10.0} events/s  ({:.2} s)",
        pipeline.events_per_second, pipeline.seconds
    );
    print_stages(&pipeline.stages);
    println!("  pipeline / raw                    {:>10.2}", ratio);
    let (read, rebuild) = (&rebuilt.read, &rebuilt.rebuild);
    println!(
        "  read the projections' inputs back  {:>10.0} records/s ({} records, {:.2} s; a group of its own, no processing); data phase {:.0} records/s ({:.0} ms)",
        read.events_per_second,
        read.events,
        read.seconds,
        rebuilt.read_data.events_per_second,
        rebuilt.read_data.seconds * 1e3
    );
    println!(
        "  apply them in memory, one core     {:>10.0} records/s ({:.0} ms; decode + projections, no Kafka)",
        rebuilt.apply.events_per_second,
        rebuilt.apply.seconds * 1e3
    );
    println!(
        "  rebuild every projection from them {:>10.0} records/s ({:.2} s; a fresh replica, `horizon digest`); rebuild / read {:.2}",
        rebuild.events_per_second,
        rebuild.seconds,
        rebuild.events_per_second / read.events_per_second
    );
    println!(
        "    data phase                       {:>10.0} records/s ({:.0} ms); / read's {:.2}, / in-memory apply {:.2}",
        rebuilt.rebuild_data.events_per_second,
        rebuilt.rebuild_data.seconds * 1e3,
        rebuilt.rebuild_data.events_per_second / rebuilt.read_data.events_per_second,
        rebuilt.rebuild_data.events_per_second / rebuilt.apply.events_per_second
    );
    for (l, raw) in latencies.iter().zip(&raw_latencies) {
        println!(
            "  raw publish-to-consume   at {:>7.0}/s (achieved {:>7.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes; plain consumer, no processing)",
            raw.rate, raw.achieved_rate, raw.p50_ms, raw.p99_ms, raw.max_ms, raw.probes
        );
        println!(
            "  publish-to-projection    at {:>7.0}/s (achieved {:>7.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes); p99 / raw p99 {:.2}",
            l.rate,
            l.achieved_rate,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.probes,
            l.p99_ms / raw.p99_ms
        );
        print_stages(&l.stages);
    }
    Ok(())
}

/// Where each stage's steps spent the run's time (wall clock).
fn print_stages(stages: &[(String, bench_stage::StepTiming)]) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    for (stage, t) in stages {
        println!(
            "    {stage:<12} {:>6} steps ({:>5} with records, {:>7} records): {:>6.0} ms = poll {:.0} + publish {:.0} + commit {:.0} + handling {:.0}; longest step {:.1} ms (publish {:.1})",
            t.steps,
            t.busy_steps,
            t.records,
            ms(t.total),
            ms(t.poll),
            ms(t.publish),
            ms(t.commit),
            ms(t.total.saturating_sub(t.poll + t.publish + t.commit)),
            ms(t.max_step),
            ms(t.max_publish),
        );
    }
}
