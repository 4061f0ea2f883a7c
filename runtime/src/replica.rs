//! A read replica built on demand (`horizon digest`): a fresh copy of a topology's shipped
//! projections that consumes every topic it reads from the beginning in a consumer group of its own until it has caught up with the end
//! offsets seen at its start, then reports its digests and views. Its consumer polls librdkafka
//! on a thread of its own (`KafkaConsumer::new_prefetching`), so applying records and
//! librdkafka's per-message work overlap.

use crate::kafka::{KafkaConfig, KafkaConsumer};
use crate::service::{replica_group, StepTiming, Tracking};
use horizon_core::bus::{BusError, Consumer, TopicPartition};
use horizon_core::pipeline::{Pipeline, ReadDigests};
use horizon_core::processor::StepOutcome;
use horizon_core::projections::{Digests, Views};
use horizon_core::scenario::Scenario;
use horizon_core::topics;
use horizon_core::topology::{TopicSpec, Topology};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct Replica {
    pipeline: Pipeline,
    /// The read replica stage it rebuilt.
    stage: &'static str,
    /// Distinct events applied.
    pub events: u64,
    pub records_read: u64,
    /// While records flow: the records applied after the first batch, and the time from that
    /// batch's end to caught up (no group join, no first fetch; the consumer's close follows).
    pub flowing: (u64, Duration),
}

impl Replica {
    /// Computed on demand: a digest serialises the whole projection state (for a day's audit
    /// trail, as long as the rebuild itself), which is not part of rebuilding it.
    pub fn digests(&self) -> Digests {
        self.pipeline.digests()
    }

    pub fn views(&self) -> Views {
        self.pipeline.views()
    }

    /// The rebuilt read replica's digests (`stage.part`), whichever read model it is.
    pub fn read_digests(&self) -> ReadDigests {
        ReadDigests::of(self.pipeline.stage(self.stage))
    }
}

/// Builds `topology`'s shipped projections from the log up to the end offsets of now; fails
/// after `timeout`, or at once if the topology has no such read replica.
pub fn build(
    topology: &Topology,
    scenario: &Scenario,
    config: &KafkaConfig,
    group_prefix: &str,
    timeout: Duration,
) -> Result<Replica, BusError> {
    build_stage(topology, scenario, config, group_prefix, horizon_core::projections::NAME, timeout)
}

/// `build` for any read replica stage of the topology (a user's read model too), by name.
pub fn build_stage(
    topology: &Topology,
    scenario: &Scenario,
    config: &KafkaConfig,
    group_prefix: &str,
    stage: &str,
    timeout: Duration,
) -> Result<Replica, BusError> {
    let start = Instant::now();
    let spec = topology
        .stage_spec(stage)
        .filter(|s| s.replica)
        .ok_or_else(|| BusError::Fatal(format!("topology `{}` has no read replica `{stage}` to rebuild", topology.name)))?;
    let (stage, inputs) = (spec.name, spec.inputs);
    let mut pipeline = Pipeline::from_topology(topology, scenario).map_err(|e| BusError::Fatal(e.to_string()))?;
    // The shipped projections keep their group name (`digest`); another replica is named in it.
    let group = if stage == horizon_core::projections::NAME {
        replica_group(group_prefix, "digest")
    } else {
        replica_group(group_prefix, &format!("digest.{stage}"))
    };
    let mut consumer = KafkaConsumer::new_prefetching(config, &group, inputs)?;
    consumer.set_poll_timing(Duration::from_millis(200), Duration::from_millis(5));
    // The replica publishes nothing (projections have no outputs), but the loop needs a producer
    // for dead letters, which the live projections stage has already written.
    let mut producer = DiscardProducer;
    let deadline = start + timeout;
    let mut ends = Vec::new();
    for &topic in inputs {
        let partitions = topology
            .partitions(topic)
            .expect("a validated topology declares its stages' inputs");
        for partition in 0..partitions {
            let tp = TopicPartition { topic, partition };
            ends.push((tp, consumer.end_offset(tp)?));
        }
    }
    // What the loop has applied, from its own offset stores (no round trip per check).
    let mut applied = BTreeMap::new();
    let mut timing = StepTiming::default();
    let mut backoff = 0u32;
    // When the first batch with records was applied, and how many records it had.
    let mut first_batch: Option<(Instant, u64)> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(BusError::Unavailable(format!("the replica did not catch up within {timeout:?}")));
        }
        let mut tracking = Tracking::new(&mut consumer, &mut applied, &mut timing);
        let replica = pipeline.stage_mut(stage).expect("found above");
        match replica.step(&mut tracking, &mut producer, 8192)? {
            StepOutcome::Progress(n) => {
                if n > 0 && first_batch.is_none() {
                    first_batch = Some((Instant::now(), n as u64));
                }
                backoff = 0;
            }
            StepOutcome::Idle => backoff = 0,
            StepOutcome::Retry(e) => {
                let delay = crate::service::Backoff::default().delay(backoff);
                eprintln!("horizon: digest: {e}; retrying in {delay:?}");
                backoff += 1;
                std::thread::sleep(delay);
            }
        }
        // Checked after every step, not only once a poll came back empty (which costs a whole
        // poll wait at the end).
        if ends.iter().all(|(tp, end)| applied.get(tp).copied().unwrap_or(0) >= *end) && replica.unsettled() == Default::default() {
            break;
        }
    }
    let records_read = pipeline.stage(stage).expect("found above").stats().records_in;
    let flowing = first_batch.map_or((0, Duration::ZERO), |(at, n)| (records_read - n, at.elapsed()));
    drop(consumer);
    Ok(Replica {
        events: pipeline.projections().map(|p| p.audit.len() as u64).unwrap_or(0),
        records_read,
        pipeline,
        stage,
        flowing,
    })
}

/// Drops what it is given: the replica must not write dead letters a second time.
struct DiscardProducer;

impl horizon_core::bus::Producer for DiscardProducer {
    fn send(&mut self, _topic: horizon_core::bus::Topic, _partition: u32, _key: &[u8], _value: &[u8]) -> Result<(), BusError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Every record of every shipped topic partition from offset 0 up to its end offset of now, in
/// topic, partition and offset order (`horizon audit verify --brokers`).
pub fn read_log(config: &KafkaConfig, group_prefix: &str) -> Result<Vec<horizon_core::bus::Record>, BusError> {
    read_topics(config, group_prefix, Topology::shipped().topics())
}

/// `read_log` over `topics` (a topology's: `Topology::topics`).
pub fn read_topics(config: &KafkaConfig, group_prefix: &str, topics: &[TopicSpec]) -> Result<Vec<horizon_core::bus::Record>, BusError> {
    let group = replica_group(group_prefix, "audit");
    // Never subscribed to anything it polls: only `fetch` (assign + seek) is used.
    let mut consumer = KafkaConsumer::new(config, &group, &[topics::DEADLETTER])?;
    let mut out = Vec::new();
    for spec in topics {
        for partition in 0..spec.partitions {
            let tp = TopicPartition {
                topic: spec.name,
                partition,
            };
            let end = consumer.end_offset(tp)?;
            let mut from = 0;
            while from < end {
                let to = (from + 65_536).min(end);
                let got = consumer.fetch(tp, from, to)?;
                let Some(last) = got.last() else {
                    return Err(BusError::Unavailable(format!("{tp}: no records in {from}..{to}")));
                };
                from = last.offset + 1;
                out.extend(got);
            }
        }
    }
    Ok(out)
}
