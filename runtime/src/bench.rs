//! Kafka figures (`horizon bench kafka`, `benches/kafka.rs`): the whole pipeline on a real
//! broker next to raw rdkafka produce-then-consume of the same records without processing.
//!
//! - throughput: every feed event published at full speed by a gateway thread while one service
//!   process (every stage of the shipped topology, a thread each) runs; the clock stops when the projections have
//!   applied every event the in-memory run of the same feed produces.
//! - latency: the feed paced at a rate; every `probe_every`-th trade's publish instant is
//!   recorded and its publish-to-projection latency (the trade applied by the projections stage)
//!   goes into an hdrhistogram.
//! - raw: the same encoded records produced to a scratch topic, flushed, then consumed back by a
//!   plain consumer; records / (produce + consume time).
//!
//! Every pipeline run deletes and recreates the platform topics (empty) and uses new consumer
//! groups: run it on a scratch broker only (`horizon bench kafka` asks for `--scratch`).

use crate::kafka::{admin, KafkaConfig};
use crate::service::{ServiceOptions, ServiceProcess, StepTiming};
use hdrhistogram::Histogram;
use horizon_core::bus::{partition_for, BusError};
use horizon_core::event::Event;
use horizon_core::pipeline::MemoryRun;
use horizon_core::projections::Projections;
use horizon_core::scenario::Scenario;
use horizon_core::topics;
use horizon_core::topology::Topology;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const RAW_TOPIC: &str = "horizon.bench.raw";

#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Pipeline runs: where each stage's steps spent the run's time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<(String, StepTiming)>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Latency {
    pub rate: f64,
    pub achieved_rate: f64,
    pub probes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Where each stage's steps spent the run's time.
    pub stages: Vec<(String, StepTiming)>,
}

impl Latency {
    /// Microseconds, 1 µs to 60 s, 3 significant digits.
    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
    }

    fn of(rate: f64, achieved_rate: f64, hist: &Histogram<u64>, stages: Vec<(String, StepTiming)>) -> Latency {
        Latency {
            rate,
            achieved_rate,
            probes: hist.len(),
            p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: hist.max() as f64 / 1000.0,
            stages,
        }
    }
}

fn unique(what: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("bench-{what}-{}-{nanos}", std::process::id())
}

/// A service process with every stage of the shipped topology (the one `MemoryRun` runs, to
/// compare with) on freshly recreated, empty topics.
///
/// The topics must be empty: a process restores its stages by replaying each partition up to the
/// committed offset, so groups committed at the end of earlier runs' data would first replay all
/// of it, and the bench's events (the same ids every run) would then be dropped as duplicates by
/// the restored state — the pipeline run waited forever for projections that never changed.
fn fresh_process(scenario: &Scenario, config: &KafkaConfig, max_records: usize) -> Result<ServiceProcess, BusError> {
    let topology = Topology::shipped();
    admin::recreate_topics(config, topology.topics())?;
    let prefix = unique("pipeline");
    for stage in topology.stages() {
        let group = format!("{prefix}.{}", stage.name);
        // Just after the topics were recreated the broker may still answer with stale
        // leadership (`NotLeaderForPartition`) for a moment: retry that briefly.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match admin::commit_group_at_end(config, &topology, &group, stage.inputs) {
                Ok(_) => break,
                Err(BusError::Unavailable(_)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
                Err(e) => return Err(e),
            }
        }
    }
    let every = topology.stages().iter().map(|s| s.name).collect();
    let mut options = ServiceOptions::new(every, prefix.clone());
    options.replica_group = Some(format!("{prefix}.{}", horizon_core::projections::NAME));
    options.max_records = max_records.max(1);
    ServiceProcess::new(&topology, scenario, config, options)
}

/// Publishes `events` (paced when `rate` is set) from a thread with a plain rdkafka producer
/// (idempotent, `acks=all`, `linger.ms=1`): sends each chunk, serves delivery reports without
/// waiting, flushes once at the end. Sends (index, instant) of every `probe_every`-th event as
/// its chunk is handed to the producer.
///
/// The producer is made and connected (metadata of the feed topic fetched) at once, then the
/// thread waits for `go`: a live feed's producer is connected long before, so its start-up
/// (connection, idempotent producer id; measured ~0.6 s) is kept out of the figures (it was
/// the whole p99 at 10,000/s).
fn gateway(
    config: KafkaConfig,
    events: Vec<Event>,
    rate: Option<f64>,
    probe_every: usize,
    probes: mpsc::Sender<(usize, Instant)>,
    go: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<Result<f64, BusError>> {
    std::thread::spawn(move || {
        let err = |e: rdkafka::error::KafkaError| BusError::Unavailable(e.to_string());
        let mut base = config.client_config(&[], &[]);
        let producer: BaseProducer = base
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .create()
            .map_err(err)?;
        producer
            .client()
            .fetch_metadata(Some(topics::MARKET_FEED), config.request_timeout)
            .map_err(err)?;
        if go.recv().is_err() {
            return Ok(0.0);
        }
        let parts = topics::partitions(topics::MARKET_FEED);
        let chunk = rate.map(|r| ((r / 1000.0) as usize).max(1)).unwrap_or(5000);
        let start = Instant::now();
        for (c, block) in events.chunks(chunk).enumerate() {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64((c * chunk) as f64 / r);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let now = Instant::now();
            for (i, e) in block.iter().enumerate() {
                let key = e.aggregate_id.as_bytes();
                let value = e.encode();
                let mut record = BaseRecord::to(topics::MARKET_FEED)
                    .partition(partition_for(key, parts) as i32)
                    .key(key)
                    .payload(&value);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            producer.poll(Duration::from_millis(1));
                            record = back;
                        }
                    }
                }
                let index = c * chunk + i;
                if probe_every > 0 && index.is_multiple_of(probe_every) {
                    let _ = probes.send((index, now));
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer.flush(Duration::from_secs(60)).map_err(err)?;
        Ok(events.len() as f64 / start.elapsed().as_secs_f64())
    })
}

/// Runs the process for 3 s before the clock starts, so every group has its assignment (and
/// the gateway is connected), then forgets the time counted.
fn warm_up(process: &mut ServiceProcess) -> Result<(), BusError> {
    let warm = Instant::now();
    process.run_until(
        &AtomicBool::new(false),
        None,
        Some(&mut |_: Option<&Projections>| warm.elapsed() >= Duration::from_secs(3)),
    )?;
    process.reset_timings();
    Ok(())
}

/// Sustained events per second through the whole pipeline.
pub fn pipeline_throughput(
    scenario: &Scenario,
    config: &KafkaConfig,
    events: &[Event],
    max_records: usize,
) -> Result<Throughput, BusError> {
    let want = MemoryRun::run(scenario, events.iter().cloned(), 8192)
        .pipeline
        .projections()
        .map(|p| p.audit.len() as u64)
        .unwrap_or(0);
    let mut process = fresh_process(scenario, config, max_records)?;
    let (tx, _rx) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let feeder = gateway(config.clone(), events.to_vec(), None, 0, tx, wait);
    warm_up(&mut process)?;
    let start = Instant::now();
    let _ = go.send(());
    let mut last = (0, Instant::now());
    let mut stalled = false;
    let stop = AtomicBool::new(false);
    process.run_until(
        &stop,
        None,
        Some(&mut |p: Option<&Projections>| {
            let now = p.map(|p| p.audit.len() as u64).unwrap_or(0);
            if now != last.0 {
                last = (now, Instant::now());
            } else if feeder.is_finished() && last.1.elapsed() > Duration::from_secs(20) {
                stalled = true;
            }
            now >= want || stalled
        }),
    )?;
    if stalled {
        let fed = feeder.join().map_err(|_| BusError::Fatal("gateway thread panicked".into()))?;
        return Err(BusError::Unavailable(format!(
            "stalled at {} of {want} events applied (gateway: {fed:?})",
            last.0
        )));
    }
    let seconds = start.elapsed().as_secs_f64();
    feeder.join().map_err(|_| BusError::Fatal("gateway thread panicked".into()))??;
    Ok(Throughput {
        events: events.len() as u64,
        seconds,
        events_per_second: events.len() as f64 / seconds,
        stages: process.timings().into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
    })
}

/// Publish-to-projection latency of trades with the feed paced at `rate`.
pub fn pipeline_latency(
    scenario: &Scenario,
    config: &KafkaConfig,
    events: &[Event],
    rate: f64,
    probe_every: usize,
    max_records: usize,
) -> Result<Latency, BusError> {
    let mut process = fresh_process(scenario, config, max_records)?;
    let (tx, rx) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let feeder = gateway(config.clone(), events.to_vec(), Some(rate), probe_every, tx, wait);
    warm_up(&mut process)?;
    let _ = go.send(());
    let mut hist = Latency::histogram();
    let mut pending: Vec<(usize, Instant)> = Vec::new();
    let total_probes = events.len().div_ceil(probe_every.max(1));
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let stop = AtomicBool::new(false);
    // Checked on the projections stage's thread right after each of its steps: the time a probe
    // is seen is the time its step applied it.
    let (hist_ref, seen_ref) = (&mut hist, &mut seen);
    process.run_until(
        &stop,
        None,
        Some(&mut move |p: Option<&Projections>| {
            pending.extend(rx.try_iter());
            let now = Instant::now();
            if let Some(p) = p {
                pending.retain(|(i, at)| {
                    if p.audit.contains_key(&events[*i].id) {
                        let _ = hist_ref.record((now - *at).as_micros().max(1) as u64);
                        *seen_ref += 1;
                        false
                    } else {
                        true
                    }
                });
            }
            *seen_ref >= total_probes || now > deadline
        }),
    )?;
    if seen < total_probes {
        return Err(BusError::Unavailable(format!(
            "latency run did not finish within 600 s ({seen} of {total_probes} probes seen)"
        )));
    }
    let achieved = feeder.join().map_err(|_| BusError::Fatal("gateway thread panicked".into()))??;
    let stages = process.timings().into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    Ok(Latency::of(rate, achieved, &hist, stages))
}

/// The same paced feed as `pipeline_latency` (same gateway, same probes) read back by a plain
/// rdkafka consumer with no processing: the latency the broker and client alone give on this
/// machine at that rate, the baseline for publish-to-projection.
pub fn raw_latency(config: &KafkaConfig, events: &[Event], rate: f64, probe_every: usize) -> Result<Latency, BusError> {
    let err = |e: rdkafka::error::KafkaError| BusError::Unavailable(e.to_string());
    admin::recreate_topics(config, Topology::shipped().topics())?;
    let mut base = config.client_config(&[], &[]);
    let consumer: BaseConsumer = base
        .set("group.id", unique("raw-latency"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..topics::partitions(topics::MARKET_FEED) {
        tpl.add_partition_offset(topics::MARKET_FEED, p as i32, Offset::Beginning)
            .map_err(err)?;
    }
    consumer.assign(&tpl).map_err(err)?;
    let probe_of: HashMap<&str, usize> = (0..events.len())
        .step_by(probe_every.max(1))
        .map(|i| (events[i].id.as_str(), i))
        .collect();
    let (tx, rx) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let feeder = gateway(config.clone(), events.to_vec(), Some(rate), probe_every, tx, wait);
    // Let the consumer connect and start fetching before the feed starts.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(3) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            return Err(err(e));
        }
    }
    let _ = go.send(());
    let mut arrived: HashMap<usize, Instant> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while arrived.len() < probe_of.len() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                if let Some(e) = m.payload().and_then(|v| Event::decode(v).ok()) {
                    if let Some(&i) = probe_of.get(e.id.as_str()) {
                        arrived.entry(i).or_insert(now);
                    }
                }
            }
            Some(Err(e)) => return Err(err(e)),
            None if Instant::now() > deadline => {
                return Err(BusError::Unavailable(format!(
                    "raw latency run: {} of {} probes after 600 s",
                    arrived.len(),
                    probe_of.len()
                )))
            }
            None => {}
        }
    }
    let achieved = feeder.join().map_err(|_| BusError::Fatal("gateway thread panicked".into()))??;
    let mut hist = Latency::histogram();
    for (i, at) in rx.try_iter() {
        if let Some(got) = arrived.get(&i) {
            let _ = hist.record(got.saturating_duration_since(at).as_micros().max(1) as u64);
        }
    }
    Ok(Latency::of(rate, achieved, &hist, Vec::new()))
}

/// Raw rdkafka: produce the records to a scratch topic, flush, consume them back.
pub fn raw_roundtrip(config: &KafkaConfig, values: &[Vec<u8>]) -> Result<Throughput, BusError> {
    let err = |e: rdkafka::error::KafkaError| BusError::Unavailable(e.to_string());
    admin::create_topic(config, RAW_TOPIC, topics::partitions(topics::MARKET_FEED) as i32)?;
    let base = config.client_config(&[], &[]);
    let producer: BaseProducer = base
        .clone()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .create()
        .map_err(err)?;
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(err)?;
    let parts = topics::partitions(topics::MARKET_FEED);
    let mut starts = TopicPartitionList::new();
    for p in 0..parts {
        let (_, high) = consumer
            .fetch_watermarks(RAW_TOPIC, p as i32, config.request_timeout)
            .map_err(err)?;
        starts
            .add_partition_offset(RAW_TOPIC, p as i32, Offset::Offset(high))
            .map_err(err)?;
    }
    consumer.assign(&starts).map_err(err)?;
    // Connected before the clock starts, as the pipeline's gateway is.
    producer
        .client()
        .fetch_metadata(Some(RAW_TOPIC), config.request_timeout)
        .map_err(err)?;
    let start = Instant::now();
    for (i, v) in values.iter().enumerate() {
        let key = (i % 64).to_string();
        let mut record = BaseRecord::to(RAW_TOPIC).partition((i as u32 % parts) as i32).key(&key).payload(v);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    producer.poll(Duration::from_millis(5));
                    record = back;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(err)?;
    let mut got = 0usize;
    while got < values.len() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => return Err(err(e)),
            None if start.elapsed() > Duration::from_secs(300) => return Err(BusError::Unavailable("raw consume timed out".into())),
            None => {}
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Throughput {
        events: values.len() as u64,
        seconds,
        events_per_second: values.len() as f64 / seconds,
        stages: Vec::new(),
    })
}

/// `rebuild_from_topics`' figures. Each Kafka side has its whole time (from making its consumer
/// to closing it: group join, first fetch and leaving the group included) and its data phase:
/// the records after its first batch, from that batch's end to the last record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RebuildFigures {
    /// A member of a group of its own reading every input record, no processing: the
    /// consumer's own limit.
    pub read: Throughput,
    pub read_data: Throughput,
    /// The same records, already in memory, decoded and applied to fresh projections on this
    /// thread (what a rebuild from a local log does): the processing's own limit.
    pub apply: Throughput,
    /// A fresh read replica (`horizon digest`).
    pub rebuild: Throughput,
    pub rebuild_data: Throughput,
}

/// Rebuilding every projection from the topics as they are (a fresh read replica, what
/// `horizon digest` does) next to two baselines: reading the same records with no processing,
/// with the same client (`KafkaConsumer::new_prefetching`) in a group of its own, so group join
/// and fetching are the same on both sides; and applying the records it read with no Kafka.
pub fn rebuild_from_topics(scenario: &Scenario, config: &KafkaConfig) -> Result<RebuildFigures, BusError> {
    use horizon_core::bus::{Consumer as _, Polled, TopicPartition};
    let inputs = horizon_core::projections::INPUTS;
    // Both clocks start before the consumer is made: the replica also asks every partition's
    // end offset first (one round trip each), then joins its group.
    let start = Instant::now();
    let mut reader = crate::kafka::KafkaConsumer::new_prefetching(config, &unique("read"), inputs)?;
    let mut total = 0u64;
    for &topic in inputs {
        for partition in 0..topics::partitions(topic) {
            total += reader.end_offset(TopicPartition { topic, partition })?;
        }
    }
    let mut records = Vec::with_capacity(total as usize);
    let mut first_batch: Option<(Instant, usize)> = None;
    while (records.len() as u64) < total {
        if let Polled::Records(got) = reader.poll(4096)? {
            records.extend(got);
            first_batch.get_or_insert_with(|| (Instant::now(), records.len()));
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(BusError::Unavailable(format!(
                "raw read: {} of {total} records after 300 s",
                records.len()
            )));
        }
    }
    let read_data = first_batch.map_or(throughput(0, Duration::ZERO), |(at, n)| {
        throughput((records.len() - n) as u64, at.elapsed())
    });
    // The replica's clock includes leaving its group and closing its consumer (`build` drops
    // it before returning): so does this one.
    drop(reader);
    let read = throughput(records.len() as u64, start.elapsed());
    let start = Instant::now();
    let mut projections = Projections::default();
    for r in &records {
        if let Ok(e) = Event::decode(&r.value) {
            projections.apply(&e);
        }
    }
    let apply = throughput(records.len() as u64, start.elapsed());
    drop(projections);
    drop(records);
    let start = Instant::now();
    let replica = crate::replica::build(&Topology::shipped(), scenario, config, &unique("rebuild"), Duration::from_secs(300))?;
    let rebuild = throughput(replica.records_read, start.elapsed());
    let rebuild_data = throughput(replica.flowing.0, replica.flowing.1);
    Ok(RebuildFigures {
        read,
        read_data,
        apply,
        rebuild,
        rebuild_data,
    })
}

fn throughput(events: u64, elapsed: Duration) -> Throughput {
    let seconds = elapsed.as_secs_f64();
    Throughput {
        events,
        seconds,
        events_per_second: events as f64 / seconds,
        stages: Vec::new(),
    }
}
