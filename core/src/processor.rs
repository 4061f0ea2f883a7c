//! The processing loop: consume, decode, handle, publish outputs, commit. It exists once and is
//! generic over the bus, so the in-memory bus, the simulator and Kafka all run this code.
//!
//! Guarantees: an input's offset is committed only after every output it caused is acknowledged
//! by the broker (at-least-once; handlers are idempotent, so effects are applied once). A record
//! that cannot be decoded or is rejected goes to the dead-letter topic with the reason, the
//! original bytes and its source, and processing continues. A newly assigned partition's task is
//! restored by replaying the partition up to the committed offset with outputs discarded (they
//! were published before that offset was committed). The loop never sleeps: when the broker is
//! unavailable it reports `Retry` and its driver waits (virtual time in the simulator, a real
//! backoff in production), then calls `step` again to resend what is pending.

use crate::bus::{partition_for, BusError, Consumer, Polled, Producer, Record, RefusedRecord, Topic, TopicPartition};
use crate::event::{Event, EventType};
use crate::service::{Output, Service};
use crate::topics;
use bytes::Bytes;
use horizon_proto::v1 as pb;
use prost::Message;
use std::collections::BTreeMap;

/// Records fetched per read while restoring a task.
const RESTORE_CHUNK: u64 = 4096;

/// The most of an original record a dead letter carries. A dead letter must never be refused for
/// its own size (Kafka's default `message.max.bytes` is ~1 MB, librdkafka's producer
/// `message.max.bytes` 1,000,000): a larger original is cut to this prefix, and the letter says
/// its whole size, its blake3 hash and its source offset, where the rest can be fetched.
pub const DEAD_LETTER_ORIGINAL_BYTES_MAX: usize = 64 * 1024;

/// The most of a text field (the reason, the event id) a dead letter carries: a rejection that
/// quotes its input (an unknown 1 MB symbol) must not make the letter too large to publish.
pub const DEAD_LETTER_TEXT_BYTES_MAX: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, saying how long it was.
fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..end], text.len())
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub records_in: u64,
    pub events_in: BTreeMap<EventType, u64>,
    pub outputs: u64,
    pub dead_letters: u64,
    /// Outputs the broker refused for good, each dead-lettered in its place (included in
    /// `dead_letters`).
    pub outputs_refused: u64,
    /// Records that did not decode on a topic another stage owns (`Service::dead_letters`): counted
    /// here, dead-lettered by the owner only.
    pub undecodable_skipped: u64,
    pub restored_records: u64,
    pub snapshots_used: u64,
    pub snapshots_discarded: u64,
    pub redelivered_skipped: u64,
    pub publish_retries: u64,
    pub commits: u64,
}

/// What a stage holds that is not settled yet: what its driver reports when it cannot finish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unsettled {
    /// Records handled whose outputs await the broker's acknowledgement.
    pub outputs: usize,
    /// Partitions whose consumed offsets await commit.
    pub partitions: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Handled this many records (0 for an assignment change).
    Progress(usize),
    /// Nothing to consume and nothing pending.
    Idle,
    /// The broker refused; call `step` again after a backoff.
    Retry(BusError),
}

struct PendingRecord {
    topic: Topic,
    partition: u32,
    key: Bytes,
    value: Bytes,
    /// The input whose handling produced it, named by a dead letter if it is refused.
    cause: Source,
}

/// A consumed record's place in the log.
#[derive(Clone, Copy)]
struct Source {
    topic: Topic,
    partition: u32,
    offset: u64,
}

impl Source {
    fn of(r: &Record) -> Source {
        Source {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
        }
    }
}

struct Task<St> {
    state: St,
    /// Next offset to apply per partition; older records are redeliveries.
    next: BTreeMap<TopicPartition, u64>,
    /// Offsets the state already covers when it came from a snapshot: replay starts there.
    base: BTreeMap<TopicPartition, u64>,
}

pub struct Processor<S: Service> {
    service: S,
    tasks: BTreeMap<u32, Task<S::State>>,
    /// Snapshots offered by the driver, used when their task is next restored.
    offered: BTreeMap<u32, Task<S::State>>,
    /// Assigned partitions whose replay has not finished (a fetch failed part-way); nothing is
    /// polled until they are restored.
    restoring: Vec<TopicPartition>,
    /// How far an interrupted replay got, so the retry resumes instead of applying twice.
    replayed: BTreeMap<TopicPartition, u64>,
    pending: Vec<PendingRecord>,
    to_commit: BTreeMap<TopicPartition, u64>,
    outputs: Vec<Output>,
    routes: Routes,
    /// An output to a topic the stage does not declare: the loop stops with this error.
    undeclared: Option<String>,
    pub stats: Stats,
}

/// Where a processor's outputs go (each declared output topic and its partition count) and the
/// input topics it owns: it dead-letters a record that does not decode there, and only counts
/// one elsewhere (another stage owns that topic). From its stage's place in a `Topology`.
#[derive(Clone, Debug)]
pub struct Routes {
    outputs: Vec<(Topic, u32)>,
    owned: Vec<Topic>,
}

impl Routes {
    pub fn new(outputs: Vec<(Topic, u32)>, owned: Vec<Topic>) -> Routes {
        Routes { outputs, owned }
    }

    /// The shipped topics as outputs, every input owned: a processor outside a topology.
    pub fn standalone(inputs: &[Topic]) -> Routes {
        Routes {
            outputs: topics::ALL.iter().map(|t| (t.name, t.partitions)).collect(),
            owned: inputs.to_vec(),
        }
    }

    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.outputs.iter().find(|(t, _)| *t == topic).map(|(_, n)| *n)
    }

    pub fn owns(&self, topic: &str) -> bool {
        self.owned.contains(&topic)
    }

    fn names(&self) -> String {
        self.outputs.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
    }
}

impl<S: Service> Processor<S> {
    /// A processor outside any topology (tests, tools): it may publish to any shipped topic and
    /// dead-letters every input that does not decode.
    pub fn new(service: S) -> Self {
        let routes = Routes::standalone(service.inputs());
        Processor::with_routes(service, routes)
    }

    /// A processor as its topology places it (`Topology::build_stage`).
    pub fn with_routes(service: S, routes: Routes) -> Self {
        Processor {
            routes,
            undeclared: None,
            service,
            tasks: BTreeMap::new(),
            offered: BTreeMap::new(),
            restoring: Vec::new(),
            replayed: BTreeMap::new(),
            pending: Vec::new(),
            to_commit: BTreeMap::new(),
            outputs: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn service(&self) -> &S {
        &self.service
    }

    /// The state of every task this member owns, by task id.
    pub fn states(&self) -> impl Iterator<Item = (u32, &S::State)> {
        self.tasks.iter().map(|(id, t)| (*id, &t.state))
    }

    /// True when nothing awaits acknowledgement or commit.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty() && self.to_commit.is_empty()
    }

    /// What awaits acknowledgement and commit.
    pub fn unsettled(&self) -> Unsettled {
        Unsettled {
            outputs: self.pending.len(),
            partitions: self.to_commit.len(),
        }
    }

    /// One turn of the loop.
    pub fn step<C: Consumer + ?Sized, P: Producer + ?Sized>(
        &mut self,
        consumer: &mut C,
        producer: &mut P,
        max_records: usize,
    ) -> Result<StepOutcome, BusError> {
        if !self.is_settled() {
            if let Err(e) = self.settle(consumer, producer) {
                return retry_or_fail(e);
            }
        }
        if !self.restoring.is_empty() {
            return match self.restore(consumer) {
                Ok(()) => Ok(StepOutcome::Progress(0)),
                Err(e) => retry_or_fail(e),
            };
        }
        match consumer.poll(max_records) {
            Ok(Polled::Idle) => Ok(StepOutcome::Idle),
            Ok(Polled::Records(records)) if records.is_empty() => Ok(StepOutcome::Idle),
            Ok(Polled::Records(records)) => {
                let n = records.len();
                for r in &records {
                    self.process(r);
                }
                if let Some(e) = self.undeclared.take() {
                    return Err(BusError::Fatal(e));
                }
                if let Err(e) = self.settle(consumer, producer) {
                    return retry_or_fail(e);
                }
                Ok(StepOutcome::Progress(n))
            }
            Ok(Polled::Assigned(tps)) => {
                self.restoring.extend(tps);
                if let Err(e) = self.restore(consumer) {
                    // The partitions stay in `restoring`: the next step resumes their replay.
                    return retry_or_fail(e);
                }
                Ok(StepOutcome::Progress(0))
            }
            Ok(Polled::Revoked(tps)) => {
                self.revoke(&tps);
                Ok(StepOutcome::Progress(0))
            }
            Err(e) => retry_or_fail(e),
        }
    }

    /// Snapshots of every task this member owns, each with the offsets its state covers. Only
    /// when settled (everything handled is published and committed), so a snapshot never holds
    /// effects that could still be lost; empty when the service does not snapshot.
    pub fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        if !self.is_settled() || !self.restoring.is_empty() {
            return Vec::new();
        }
        self.tasks
            .iter()
            .filter_map(|(id, t)| {
                let state = self.service.encode_state(&t.state)?;
                Some((*id, crate::snapshot::encode(self.service.name(), *id, &t.next, &state)))
            })
            .collect()
    }

    /// Offers a snapshot: the next restore of its task starts from it and replays only the
    /// partitions' tails. A snapshot of another service or version is refused with the reason.
    pub fn offer_snapshot(&mut self, bytes: &[u8]) -> Result<u32, String> {
        let snap = crate::snapshot::decode(bytes)?;
        if snap.service != self.service.name() {
            return Err(format!("a snapshot of `{}`, not of `{}`", snap.service, self.service.name()));
        }
        let state = self
            .service
            .decode_state(snap.state)
            .ok_or_else(|| format!("`{}` cannot read this snapshot's state", snap.service))?;
        let mut base = BTreeMap::new();
        for (topic, partition, offset) in snap.offsets {
            let topic = self
                .service
                .inputs()
                .iter()
                .copied()
                .find(|t| *t == topic)
                .ok_or_else(|| format!("the snapshot covers `{topic}`, which `{}` does not read", self.service.name()))?;
            base.insert(TopicPartition { topic, partition }, offset);
        }
        self.stats.snapshots_used += 1;
        self.offered.insert(
            snap.task,
            Task {
                state,
                next: BTreeMap::new(),
                base,
            },
        );
        Ok(snap.task)
    }

    /// Drops all in-memory state, as a crash would.
    pub fn crash(&mut self) {
        self.tasks.clear();
        self.offered.clear();
        self.restoring.clear();
        self.replayed.clear();
        self.pending.clear();
        self.to_commit.clear();
        self.outputs.clear();
    }

    fn process(&mut self, r: &Record) {
        self.stats.records_in += 1;
        let tp = r.tp();
        let task_id = self.service.task(tp);
        let Some(task) = self.tasks.get_mut(&task_id) else {
            // Not ours (a poll raced a revocation): the owner will process it.
            return;
        };
        let next = task.next.entry(tp).or_insert(0);
        if r.offset < *next {
            self.stats.redelivered_skipped += 1;
            return;
        }
        *next = r.offset + 1;
        self.to_commit.insert(tp, r.offset + 1);
        let event = match Event::decode(&r.value) {
            Ok(e) => e,
            Err(e) if self.routes.owns(r.topic) => {
                self.dead_letter(Source::of(r), "", &e.to_string(), &r.value, None);
                return;
            }
            Err(_) => {
                self.stats.undecodable_skipped += 1;
                return;
            }
        };
        *self.stats.events_in.entry(event.event_type()).or_insert(0) += 1;
        self.outputs.clear();
        match self.service.handle(&mut task.state, &event, &mut self.outputs) {
            Ok(()) => {
                for o in self.outputs.drain(..) {
                    let Some(partitions) = self.routes.partitions(o.topic) else {
                        self.undeclared.get_or_insert_with(|| {
                            format!(
                                "`{}` published to `{}`, which its stage does not declare as an output (declared: {})",
                                self.service.name(),
                                o.topic,
                                self.routes.names()
                            )
                        });
                        continue;
                    };
                    let partition = partition_for(o.key.as_bytes(), partitions);
                    self.pending.push(PendingRecord {
                        topic: o.topic,
                        partition,
                        key: Bytes::from(o.key.into_bytes()),
                        value: Bytes::from(o.event.encode()),
                        cause: Source::of(r),
                    });
                    self.stats.outputs += 1;
                }
            }
            Err(rejection) => {
                self.dead_letter(Source::of(r), &event.id, &rejection.0, &r.value, None);
            }
        }
    }

    /// Queues a dead letter for `original` (carrying `event_id` if it decoded), which came from
    /// `source`; `refused` names the topic and partition that refused it when it is an output
    /// the broker would not take.
    fn dead_letter(&mut self, source: Source, event_id: &str, reason: &str, original: &Bytes, refused: Option<(Topic, u32)>) {
        self.stats.dead_letters += 1;
        let (refused_topic, refused_partition) = refused.map_or((String::new(), 0), |(t, p)| (t.to_string(), p));
        let letter = pb::DeadLetter {
            reason: bounded_text(reason, DEAD_LETTER_TEXT_BYTES_MAX),
            original: original.slice(..original.len().min(DEAD_LETTER_ORIGINAL_BYTES_MAX)),
            source_topic: source.topic.to_string(),
            source_partition: source.partition,
            source_offset: source.offset,
            service: self.service.name().to_string(),
            event_id: bounded_text(event_id, DEAD_LETTER_TEXT_BYTES_MAX),
            original_size: original.len() as u64,
            original_blake3: Bytes::copy_from_slice(blake3::hash(original).as_bytes()),
            refused_topic,
            refused_partition,
        };
        let mut key = format!("{}/{}/{}", source.topic, source.partition, source.offset);
        if let Some((t, p)) = refused {
            key.push_str(&format!(" -> {t}/{p}"));
        }
        let partition = partition_for(key.as_bytes(), topics::partitions(topics::DEADLETTER));
        self.pending.push(PendingRecord {
            topic: topics::DEADLETTER,
            partition,
            key: Bytes::from(key.into_bytes()),
            value: Bytes::from(letter.encode_to_vec()),
            cause: source,
        });
    }

    /// Publishes what is pending, waits for acknowledgement, then commits. A record the broker
    /// refuses for good is replaced by a dead letter saying why, and the rest goes on: an
    /// output that can never be published must not hold its stage (nor its input's commit).
    fn settle<C: Consumer + ?Sized, P: Producer + ?Sized>(&mut self, consumer: &mut C, producer: &mut P) -> Result<(), BusError> {
        // Each round either publishes everything or turns at least one refused record into a
        // dead letter (a letter is never refused for its size), so this ends.
        while !self.pending.is_empty() {
            let mut refused: Vec<RefusedRecord> = Vec::new();
            // Positions in `pending` of the records `flush` reports on, in send order.
            let mut sent: Vec<usize> = Vec::with_capacity(self.pending.len());
            for (i, p) in self.pending.iter().enumerate() {
                match producer.send(p.topic, p.partition, &p.key, &p.value) {
                    Ok(()) => sent.push(i),
                    Err(BusError::Refused(r)) => refused.extend(r.into_iter().map(|r| RefusedRecord { index: i, ..r })),
                    Err(e) => return self.publish_failed(e),
                }
            }
            match producer.flush() {
                Ok(()) => {}
                Err(BusError::Refused(r)) => {
                    let many = r.len() > 1;
                    for r in r {
                        let index = *sent
                            .get(r.index)
                            .ok_or_else(|| BusError::Fatal(format!("the producer refused a record it was not sent: {}", r.reason)))?;
                        // A broker judges a whole batch (Kafka's `max.message.bytes` is a batch
                        // limit): when several were refused together, each is sent alone for a
                        // verdict of its own, so no good record is dead-lettered with a bad one.
                        if many {
                            let p = &self.pending[index];
                            match producer
                                .send(p.topic, p.partition, &p.key, &p.value)
                                .and_then(|()| producer.flush())
                            {
                                Ok(()) => continue,
                                Err(BusError::Refused(alone)) => {
                                    let reason = alone.into_iter().next().map_or(r.reason, |a| a.reason);
                                    refused.push(RefusedRecord { index, reason });
                                    continue;
                                }
                                Err(e) => return self.publish_failed(e),
                            }
                        }
                        refused.push(RefusedRecord { index, ..r });
                    }
                }
                Err(e) => return self.publish_failed(e),
            }
            if refused.is_empty() {
                break;
            }
            // Every other record is acknowledged: what is left to publish is the letters.
            let done = std::mem::take(&mut self.pending);
            for r in refused {
                let p = &done[r.index];
                if p.topic == topics::DEADLETTER {
                    // A broker whose limit is below even a bounded letter: the letter goes again
                    // without the original (its size, hash and source still say where it is).
                    let stub = decode_dead_letter(&p.value)
                        .filter(|d| !d.original.is_empty())
                        .ok_or_else(|| BusError::Fatal(format!("a dead letter was refused: {}", r.reason)))?;
                    let stub = pb::DeadLetter {
                        original: Bytes::new(),
                        reason: bounded_text(
                            &format!(
                                "{} (the original left out: the letter with it was refused: {})",
                                stub.reason, r.reason
                            ),
                            2 * DEAD_LETTER_TEXT_BYTES_MAX,
                        ),
                        ..stub
                    };
                    self.pending.push(PendingRecord {
                        topic: p.topic,
                        partition: p.partition,
                        key: p.key.clone(),
                        value: Bytes::from(stub.encode_to_vec()),
                        cause: p.cause,
                    });
                    continue;
                }
                self.stats.outputs_refused += 1;
                let reason = format!("output refused by {}/{}: {}", p.topic, p.partition, r.reason);
                let event_id = Event::decode(&p.value).map(|e| e.id).unwrap_or_default();
                self.dead_letter(p.cause, &event_id, &reason, &p.value, Some((p.topic, p.partition)));
            }
        }
        self.pending.clear();
        if !self.to_commit.is_empty() {
            let offsets: Vec<(TopicPartition, u64)> = self.to_commit.iter().map(|(tp, o)| (*tp, *o)).collect();
            match consumer.commit(&offsets) {
                Ok(()) => {
                    self.stats.commits += 1;
                    self.to_commit.clear();
                }
                // Lost in a rebalance: the new owner re-processes from the last commit.
                Err(BusError::NotAssigned(_)) => self.to_commit.clear(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Replays each partition in `restoring` up to its committed offset into its task, with
    /// outputs discarded. A failed request leaves the partition (and those after it) in
    /// `restoring` and records how far its replay got, so the retry resumes at that offset:
    /// each record is applied to the state exactly once whatever fails.
    fn restore<C: Consumer + ?Sized>(&mut self, consumer: &mut C) -> Result<(), BusError> {
        while let Some(&tp) = self.restoring.first() {
            let committed = consumer.committed(tp)?;
            let task_id = self.service.task(tp);
            if !self.tasks.contains_key(&task_id) {
                let task = self.offered.remove(&task_id).unwrap_or_else(|| Task {
                    state: S::State::default(),
                    next: BTreeMap::new(),
                    base: BTreeMap::new(),
                });
                self.tasks.insert(task_id, task);
            }
            let task = self.tasks.get_mut(&task_id).expect("inserted above");
            if task.base.get(&tp).is_some_and(|b| *b > committed) {
                // The snapshot is ahead of the group's commit (the log or the offsets were reset):
                // it cannot be trusted. Rebuild this task from the start.
                let done: Vec<TopicPartition> = task.next.keys().copied().collect();
                *task = Task {
                    state: S::State::default(),
                    next: BTreeMap::new(),
                    base: BTreeMap::new(),
                };
                self.stats.snapshots_discarded += 1;
                self.restoring.extend(done);
                let redo: Vec<TopicPartition> = self
                    .replayed
                    .keys()
                    .filter(|p| self.service.task(**p) == task_id)
                    .copied()
                    .collect();
                for p in redo {
                    self.replayed.remove(&p);
                }
            }
            let mut from = self.replayed.get(&tp).copied().or_else(|| task.base.get(&tp).copied()).unwrap_or(0);
            while from < committed {
                let to = (from + RESTORE_CHUNK).min(committed);
                let records = consumer.fetch(tp, from, to)?;
                if records.is_empty() {
                    break;
                }
                for r in &records {
                    self.stats.restored_records += 1;
                    if let Ok(event) = Event::decode(&r.value) {
                        self.outputs.clear();
                        // Outputs and rejections were published before the commit; drop them.
                        let _ = self.service.handle(&mut task.state, &event, &mut self.outputs);
                    }
                }
                from = records.last().map(|r| r.offset + 1).unwrap_or(to);
                self.replayed.insert(tp, from);
            }
            task.next.insert(tp, committed);
            self.replayed.remove(&tp);
            self.restoring.remove(0);
        }
        self.outputs.clear();
        Ok(())
    }

    fn revoke(&mut self, tps: &[TopicPartition]) {
        self.restoring.retain(|tp| !tps.contains(tp));
        for tp in tps {
            self.replayed.remove(tp);
            self.to_commit.remove(tp);
            let task_id = self.service.task(*tp);
            if let Some(task) = self.tasks.get_mut(&task_id) {
                task.next.remove(tp);
                if task.next.is_empty() {
                    self.tasks.remove(&task_id);
                }
            }
        }
    }
}

impl<S: Service> Processor<S> {
    fn publish_failed(&mut self, e: BusError) -> Result<(), BusError> {
        // Everything is sent again on the next attempt; consumers drop duplicates by id.
        self.stats.publish_retries += 1;
        Err(e)
    }
}

fn retry_or_fail(e: BusError) -> Result<StepOutcome, BusError> {
    if e.is_retriable() {
        Ok(StepOutcome::Retry(e))
    } else {
        Err(e)
    }
}

/// Decodes a dead letter (for tools and tests).
pub fn decode_dead_letter(bytes: &[u8]) -> Option<pb::DeadLetter> {
    pb::DeadLetter::decode(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Side, Trade};
    use crate::fixed::Fixed;
    use crate::memory::{MemoryBus, MemoryConsumer};
    use crate::time::Timestamp;

    /// Counts the events each task applied.
    struct Count;

    impl Service for Count {
        type State = u64;
        fn name(&self) -> &'static str {
            "count"
        }
        fn inputs(&self) -> &'static [Topic] {
            &[topics::MARKET_FEED]
        }
        fn handle(&self, state: &mut u64, _event: &Event, _out: &mut Vec<crate::service::Output>) -> Result<(), crate::service::Rejection> {
            *state += 1;
            Ok(())
        }
    }

    /// A consumer whose first `fetch` times out.
    struct FlakyFetch {
        inner: MemoryConsumer,
        failures_left: u32,
    }

    impl Consumer for FlakyFetch {
        fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
            self.inner.poll(max_records)
        }
        fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
            self.inner.commit(offsets)
        }
        fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
            self.inner.committed(tp)
        }
        fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(BusError::Unavailable("fetch timed out".into()));
            }
            self.inner.fetch(tp, from, to)
        }
    }

    fn trade(i: u32) -> Vec<u8> {
        crate::feed::trade_event(Trade {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            trade_id: i.to_string(),
            price: Fixed::from_int(100),
            quantity: Fixed::ONE,
            aggressor_side: Side::Buy,
            ts_exchange: Timestamp::from_millis(i as i64),
        })
        .encode()
    }

    fn total(p: &Processor<Count>) -> u64 {
        p.states().map(|(_, n)| *n).sum()
    }

    #[test]
    fn a_restore_interrupted_by_a_failed_fetch_resumes_and_applies_each_record_once() {
        // Given 5 committed records on each of two partitions, consumed by member a
        let bus = MemoryBus::new();
        let mut producer = bus.producer();
        for i in 0..10 {
            producer.send(topics::MARKET_FEED, i % 2, b"k", &trade(i)).unwrap();
        }
        let mut a = Processor::new(Count);
        let mut ca = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        while a.step(&mut ca, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        assert_eq!(total(&a), 10);
        // When a leaves and b takes every partition, and b's first log read fails
        let mut b = Processor::new(Count);
        let mut cb = FlakyFetch {
            inner: bus.consumer("g", "b", &[topics::MARKET_FEED]),
            failures_left: 1,
        };
        bus.broker_mut().leave("g", "a");
        let mut outcomes = Vec::new();
        loop {
            let o = b.step(&mut cb, &mut producer, 100).unwrap();
            if o == StepOutcome::Idle {
                break;
            }
            outcomes.push(o);
        }
        // Then the failure was reported for a retry, and b's state holds each record once
        assert!(outcomes.iter().any(|o| matches!(o, StepOutcome::Retry(_))), "{outcomes:?}");
        assert_eq!(total(&b), 10);
        // And b goes on from the committed offsets
        producer.send(topics::MARKET_FEED, 1, b"k", &trade(10)).unwrap();
        while b.step(&mut cb, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        assert_eq!(total(&b), 11);
    }

    /// `bytes` with `schema_version` set to `version` and, if given, another type and payload.
    fn relabelled(bytes: &[u8], version: &str, retyped: Option<(pb::EventType, Vec<u8>)>) -> Vec<u8> {
        let mut env = pb::DomainEvent::decode(bytes).unwrap();
        env.metadata.insert(crate::event::meta_key::SCHEMA_VERSION.into(), version.into());
        if let Some((t, payload)) = retyped {
            env.r#type = t as i32;
            env.payload = payload.into();
        }
        env.encode_to_vec()
    }

    #[test]
    fn an_older_version_is_upcast_and_one_that_cannot_be_or_a_newer_one_is_dead_lettered() {
        // Given a v1 trade, a v3 trade and a v1 rebalance whose fill has no side
        let bus = MemoryBus::new();
        let mut producer = bus.producer();
        let unsided = pb::PortfolioRebalancedV1 {
            portfolio_id: "alpha".into(),
            reason: pb::RebalanceReason::Signal as i32,
            fills: vec![pb::FillV1 {
                symbol: "BTCUSDT".into(),
                side: pb::Side::Unspecified as i32,
                quantity: Some(pb::Decimal { units: 1, scale: 0 }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let records = [
            relabelled(&trade(1), "1", None),
            relabelled(&trade(2), "3", None),
            relabelled(&trade(3), "1", Some((pb::EventType::PortfolioRebalanced, unsided.encode_to_vec()))),
        ];
        for r in &records {
            producer.send(topics::MARKET_FEED, 0, b"k", r).unwrap();
        }
        // When they are processed
        let mut p = Processor::new(Count);
        let mut c = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        while p.step(&mut c, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then the v1 trade reached the service, and the others are dead letters with the reason
        assert_eq!(total(&p), 1);
        let broker = bus.broker();
        let mut reasons: Vec<String> = broker
            .all_partitions()
            .into_iter()
            .filter(|tp| tp.topic == topics::DEADLETTER)
            .flat_map(|tp| broker.read(tp, 0, broker.end_offset(tp)))
            .map(|r| decode_dead_letter(&r.value).unwrap())
            .inspect(|d| assert!(records.iter().any(|r| r[..] == d.original[..])))
            .map(|d| d.reason)
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].starts_with("schema v1 payload cannot be upcast to v2: `rebalance.fills[0].side` 0"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].starts_with("schema version 3 is newer than this build understands (2)"),
            "{reasons:?}"
        );
    }

    /// Publishes every trade it is given to `market.bars` as it is, so an output is as large as
    /// its input.
    struct Echo;

    impl Service for Echo {
        type State = ();
        fn name(&self) -> &'static str {
            "echo"
        }
        fn inputs(&self) -> &'static [Topic] {
            &[topics::MARKET_FEED]
        }
        fn handle(&self, _state: &mut (), event: &Event, out: &mut Vec<crate::service::Output>) -> Result<(), crate::service::Rejection> {
            out.push(crate::service::Output {
                topic: topics::BARS,
                key: event.aggregate_id.clone(),
                event: event.clone(),
            });
            Ok(())
        }
    }

    /// A broker that refuses records over `bytes_max` for good, as Kafka does over
    /// `message.max.bytes`: at `send` (librdkafka's own check), or in `flush`'s delivery reports
    /// (the broker's).
    struct SizeLimited {
        inner: crate::memory::MemoryProducer,
        bytes_max: usize,
        at_flush: bool,
        /// At flush, refuse every record sent with a large one (without appending them).
        whole_batch: bool,
        sent: usize,
        refused: Vec<RefusedRecord>,
        /// With `whole_batch`, what this batch would append if none of it is refused.
        held: Vec<(Topic, u32, Vec<u8>, Vec<u8>)>,
    }

    impl Producer for SizeLimited {
        fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
            if value.len() > self.bytes_max {
                let reason = format!("{} bytes is over {}", value.len(), self.bytes_max);
                if !self.at_flush {
                    return Err(BusError::Refused(vec![RefusedRecord { index: 0, reason }]));
                }
                self.refused.push(RefusedRecord { index: self.sent, reason });
            } else if !self.whole_batch {
                self.inner.send(topic, partition, key, value)?;
            } else {
                self.held.push((topic, partition, key.to_vec(), value.to_vec()));
            }
            self.sent += 1;
            Ok(())
        }
        fn flush(&mut self) -> Result<(), BusError> {
            let sent = std::mem::take(&mut self.sent);
            let held = std::mem::take(&mut self.held);
            if self.refused.is_empty() {
                for (topic, partition, key, value) in held {
                    self.inner.send(topic, partition, &key, &value)?;
                }
            }
            self.inner.flush()?;
            match std::mem::take(&mut self.refused) {
                r if r.is_empty() => Ok(()),
                // As Kafka's broker does: the whole batch is refused with its large record.
                r if self.whole_batch => Err(BusError::Refused(
                    (0..sent)
                        .map(|index| RefusedRecord {
                            index,
                            reason: r[0].reason.clone(),
                        })
                        .collect(),
                )),
                r => Err(BusError::Refused(r)),
            }
        }
    }

    fn trade_with_id(id: &str) -> Vec<u8> {
        crate::feed::trade_event(Trade {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            trade_id: id.into(),
            price: Fixed::from_int(100),
            quantity: Fixed::ONE,
            aggressor_side: Side::Buy,
            ts_exchange: Timestamp::from_millis(1),
        })
        .encode()
    }

    fn read_topic(bus: &MemoryBus, topic: Topic) -> Vec<Record> {
        let broker = bus.broker();
        broker
            .all_partitions()
            .into_iter()
            .filter(|tp| tp.topic == topic)
            .flat_map(|tp| broker.read(tp, 0, broker.end_offset(tp)))
            .collect()
    }

    #[test]
    fn an_output_the_broker_refuses_for_good_is_dead_lettered_and_the_stage_moves_on() {
        for (at_flush, whole_batch) in [(false, false), (true, false), (true, true)] {
            // Given a small trade, one whose output is over the broker's limit, and a small one
            let bus = MemoryBus::new();
            let mut feed = bus.producer();
            let huge_id = "x".repeat(200 * 1024);
            let inputs = [trade_with_id("1"), trade_with_id(&huge_id), trade_with_id("3")];
            for r in &inputs {
                feed.send(topics::MARKET_FEED, 0, b"k", r).unwrap();
            }
            let mut producer = SizeLimited {
                inner: bus.producer(),
                bytes_max: 100 * 1024,
                at_flush,
                whole_batch,
                sent: 0,
                refused: Vec::new(),
                held: Vec::new(),
            };
            // When the stage runs until it is idle
            let mut p = Processor::new(Echo);
            let mut c = bus.consumer("g", "a", &[topics::MARKET_FEED]);
            let mut steps = 0;
            while p.step(&mut c, &mut producer, 100).unwrap() != StepOutcome::Idle {
                steps += 1;
                assert!(steps < 100, "the stage never went idle");
            }
            // Then the two small outputs are published, the refused one is a dead letter in its
            // place, and every input is committed
            let published: Vec<Vec<u8>> = read_topic(&bus, topics::BARS).into_iter().map(|r| r.value.to_vec()).collect();
            assert_eq!(published, vec![inputs[0].clone(), inputs[2].clone()], "at_flush {at_flush}");
            let letters: Vec<pb::DeadLetter> = read_topic(&bus, topics::DEADLETTER)
                .iter()
                .map(|r| decode_dead_letter(&r.value).unwrap())
                .collect();
            assert_eq!(letters.len(), 1, "at_flush {at_flush}: {letters:?}");
            let d = &letters[0];
            let refused_partition = partition_for(b"BTCUSDT", topics::partitions(topics::BARS));
            assert!(
                d.reason
                    .starts_with(&format!("output refused by market.bars/{refused_partition}: ")),
                "{}",
                d.reason
            );
            assert_eq!((d.refused_topic.as_str(), d.refused_partition), ("market.bars", refused_partition));
            assert_eq!(
                (d.source_topic.as_str(), d.source_partition, d.source_offset),
                ("market.feed", 0, 1)
            );
            assert_eq!(d.event_id, Event::decode(&inputs[1]).unwrap().id);
            assert_eq!(d.original_size, inputs[1].len() as u64);
            assert_eq!(&d.original[..], &inputs[1][..DEAD_LETTER_ORIGINAL_BYTES_MAX]);
            assert_eq!(&d.original_blake3[..], blake3::hash(&inputs[1]).as_bytes());
            assert!(p.is_settled());
            assert_eq!(p.stats.outputs_refused, 1);
            assert_eq!(p.stats.dead_letters, 1);
            let tp = TopicPartition {
                topic: topics::MARKET_FEED,
                partition: 0,
            };
            assert_eq!(c.committed(tp).unwrap(), 3);
        }
    }

    #[test]
    fn a_dead_letter_carries_a_bounded_prefix_of_a_large_original_with_its_size_and_hash() {
        // Given a record of 1 MB that does not decode, and a small one that does not either
        let bus = MemoryBus::new();
        let mut producer = bus.producer();
        let large = vec![0xff_u8; 1_000_000];
        let small = vec![0xff_u8; 10];
        producer.send(topics::MARKET_FEED, 0, b"k", &large).unwrap();
        producer.send(topics::MARKET_FEED, 0, b"k", &small).unwrap();
        // When they are processed
        let mut p = Processor::new(Count);
        let mut c = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        while p.step(&mut c, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then the large one's letter holds its first 64 KiB, its size and its hash, and the
        // small one's all of it
        let letters: Vec<pb::DeadLetter> = read_topic(&bus, topics::DEADLETTER)
            .iter()
            .map(|r| decode_dead_letter(&r.value).unwrap())
            .collect();
        assert_eq!(letters.len(), 2);
        let big = letters.iter().find(|d| d.source_offset == 0).unwrap();
        assert_eq!(big.original.len(), DEAD_LETTER_ORIGINAL_BYTES_MAX);
        assert_eq!(&big.original[..], &large[..DEAD_LETTER_ORIGINAL_BYTES_MAX]);
        assert_eq!(big.original_size, 1_000_000);
        assert_eq!(&big.original_blake3[..], blake3::hash(&large).as_bytes());
        assert!(big.encoded_len() < DEAD_LETTER_ORIGINAL_BYTES_MAX + 1024);
        let tiny = letters.iter().find(|d| d.source_offset == 1).unwrap();
        assert_eq!((&tiny.original[..], tiny.original_size), (&small[..], 10));
    }

    /// Counts like `Count`; run with routes that own no topic, it only counts what does not decode.
    struct Reader;

    impl Service for Reader {
        type State = u64;
        fn name(&self) -> &'static str {
            "reader"
        }
        fn inputs(&self) -> &'static [Topic] {
            &[topics::MARKET_FEED]
        }
        fn handle(&self, state: &mut u64, _event: &Event, _out: &mut Vec<crate::service::Output>) -> Result<(), crate::service::Rejection> {
            *state += 1;
            Ok(())
        }
    }

    #[test]
    fn a_record_that_does_not_decode_is_dead_lettered_by_the_owner_only_and_counted_by_the_others() {
        // Given a good trade, a record that does not decode and another good trade
        let bus = MemoryBus::new();
        let mut producer = bus.producer();
        for r in [trade(1), b"not protobuf".to_vec(), trade(2)] {
            producer.send(topics::MARKET_FEED, 0, b"k", &r).unwrap();
        }
        // When the topic's owner and a reader that does not own it both consume it
        let mut owner = Processor::new(Count);
        let mut reader = Processor::with_routes(Reader, Routes::new(vec![(topics::DEADLETTER, 1)], Vec::new()));
        let mut co = bus.consumer("owner", "a", &[topics::MARKET_FEED]);
        let mut cr = bus.consumer("reader", "a", &[topics::MARKET_FEED]);
        while owner.step(&mut co, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        while reader.step(&mut cr, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then one dead letter exists, the owner's; the reader counted the record and both
        // applied the good trades
        let letters: Vec<pb::DeadLetter> = read_topic(&bus, topics::DEADLETTER)
            .iter()
            .map(|r| decode_dead_letter(&r.value).unwrap())
            .collect();
        assert_eq!(letters.iter().map(|d| d.service.as_str()).collect::<Vec<_>>(), ["count"]);
        assert_eq!((owner.stats.dead_letters, owner.stats.undecodable_skipped), (1, 0));
        assert_eq!((reader.stats.dead_letters, reader.stats.undecodable_skipped), (0, 1));
        assert_eq!((total(&owner), reader.states().map(|(_, n)| *n).sum::<u64>()), (2, 2));
    }

    /// Rejects every event, quoting its id in the reason (as the market quotes an unknown symbol).
    struct Quoting;

    impl Service for Quoting {
        type State = ();
        fn name(&self) -> &'static str {
            "quoting"
        }
        fn inputs(&self) -> &'static [Topic] {
            &[topics::MARKET_FEED]
        }
        fn handle(&self, _state: &mut (), event: &Event, _out: &mut Vec<crate::service::Output>) -> Result<(), crate::service::Rejection> {
            Err(crate::service::Rejection(format!("unknown symbol `{}`", event.id)))
        }
    }

    fn size_limited(bus: &MemoryBus, bytes_max: usize) -> SizeLimited {
        SizeLimited {
            inner: bus.producer(),
            bytes_max,
            at_flush: false,
            whole_batch: false,
            sent: 0,
            refused: Vec::new(),
            held: Vec::new(),
        }
    }

    fn letters(bus: &MemoryBus) -> Vec<pb::DeadLetter> {
        read_topic(bus, topics::DEADLETTER)
            .iter()
            .map(|r| decode_dead_letter(&r.value).unwrap())
            .collect()
    }

    #[test]
    fn a_rejection_that_quotes_a_huge_input_makes_a_letter_of_bounded_size() {
        // Given an event with a 1 MB id, rejected by a service whose reason quotes it
        let bus = MemoryBus::new();
        let huge_id = "y".repeat(1_000_000);
        let mut event = Event::decode(&trade_with_id("1")).unwrap();
        event.id = huge_id.clone();
        bus.producer().send(topics::MARKET_FEED, 0, b"k", &event.encode()).unwrap();
        let mut producer = size_limited(&bus, 100 * 1024);
        // When it is processed by a producer that refuses records over 100 KiB
        let mut p = Processor::new(Quoting);
        let mut c = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        while p.step(&mut c, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then its letter is published, the reason and the event id cut to 1 KiB and saying how
        // long they were
        let letters = letters(&bus);
        assert_eq!(letters.len(), 1);
        let d = &letters[0];
        assert!(d.reason.len() < DEAD_LETTER_TEXT_BYTES_MAX + 64, "{}", d.reason.len());
        assert!(d.reason.starts_with("unknown symbol `"), "{}", &d.reason[..40]);
        let stated: usize = d
            .reason
            .rsplit('(')
            .next()
            .unwrap()
            .trim_end_matches(" bytes in all)")
            .parse()
            .unwrap();
        assert!(stated > 1_000_000, "{}", &d.reason[d.reason.len() - 40..]);
        assert!(d.event_id.len() < DEAD_LETTER_TEXT_BYTES_MAX + 64);
        assert_eq!(d.original.len(), DEAD_LETTER_ORIGINAL_BYTES_MAX);
        assert!(p.is_settled());
        assert_eq!(
            c.committed(TopicPartition {
                topic: topics::MARKET_FEED,
                partition: 0
            })
            .unwrap(),
            1
        );
    }

    #[test]
    fn a_letter_refused_for_its_size_goes_again_without_the_original() {
        // Given a 50 KiB record that does not decode, and a broker that refuses over 10 KiB
        let bus = MemoryBus::new();
        let garbage = vec![0xff_u8; 50 * 1024];
        bus.producer().send(topics::MARKET_FEED, 0, b"k", &garbage).unwrap();
        let mut producer = size_limited(&bus, 10 * 1024);
        // When it is processed
        let mut p = Processor::new(Count);
        let mut c = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        while p.step(&mut c, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then one letter is published with no original, but its size, hash and source
        let letters = letters(&bus);
        assert_eq!(letters.len(), 1, "{letters:?}");
        let d = &letters[0];
        assert!(d.original.is_empty());
        assert_eq!(d.original_size, garbage.len() as u64);
        assert_eq!(&d.original_blake3[..], blake3::hash(&garbage).as_bytes());
        assert_eq!((d.source_topic.as_str(), d.source_offset), ("market.feed", 0));
        assert!(d.reason.contains("the original left out"), "{}", d.reason);
        assert_eq!(p.stats.dead_letters, 1);
        assert!(p.is_settled());
    }

    #[test]
    fn bounded_text_cuts_at_a_character_boundary() {
        assert_eq!(bounded_text("short", 10), "short");
        let cut = bounded_text("ééééé", 3);
        assert_eq!(cut, "é... (10 bytes in all)");
    }
}
