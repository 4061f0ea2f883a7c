//! The service process: selected stages of a `Topology` run against Apache Kafka with the one
//! processing loop (`horizon_core::processor`), as `horizon run` does.
//!
//! - The stages are the topology's (`--services` names some of them, in flow order), plus the
//!   runtime's own `notify` delivery stage. Nothing here knows which services they are, except
//!   that the query snapshot shows the shipped projections when the topology has them.
//! - One `KafkaConsumer` per stage, in consumer group `<prefix>.<stage>`; processes started with
//!   the same prefix share the work of a stage partition by partition. A read replica
//!   (`StageSpec::replica`: the shipped projections) keeps one task for all partitions, so each
//!   process that serves queries reads every topic in a group of its own
//!   (`<prefix>.<stage>.<host>-<pid>-<start>`, rebuilt from the log on start) unless a fixed
//!   group is given.
//! - One thread per stage, each with its own idempotent `KafkaProducer`: a step flushes what it
//!   sent before returning, so a stage waiting for its acknowledgements (or sitting in an idle
//!   poll) delays no other stage. The stages share nothing but the stop flag; each leaves its
//!   part of the query snapshot in a slot that the calling thread composes (`run_until`).
//!   (They were stepped in turn on one thread sharing one producer, and then every event waited
//!   for every other stage's flush: `horizon bench kafka`, docs/kafka.md.)
//! - A stage whose step reports `Retry` (broker unavailable, sink down) is not stepped again
//!   before its backoff, which doubles from `backoff.initial` up to `backoff.max` and resets on
//!   the next success. No jitter: runs stay reproducible.
//! - A stop request (SIGTERM / Ctrl-C set the flag): every stage with unsettled work is stepped
//!   until its outputs are acknowledged and its offsets stored (bounded by `drain_timeout`),
//!   the stored offsets are committed, then the consumers leave their groups and `run` returns.
//!   A step or a consumer's close can block on a dead broker past that bound: `Watchdog` ends
//!   the process when the bound is over, whatever is blocked.
//! - Each stage thread reports its progress to `Health` around every step: a stage with work
//!   waiting (a refused step, known input) and no progress for longer than `stall_after` is
//!   stalled, which `/ready` and `/metrics` show. Retrying through a short outage is not.
//! - A restarted process recovers each stage's state by replay on assignment (the loop's
//!   restore), the same mechanism the simulator's crash fault exercises.

use crate::api::{Health, Histogram, SharedSnapshot, Snapshot};
use crate::kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};
use crate::notify::{CircuitBreaker, DeliveryCounters, DeliveryStage, Sink};
use crate::snapshots::SnapshotDir;
use horizon_core::bus::{BusError, Consumer, Polled, Record, TopicPartition};
use horizon_core::fixed::Fixed;
use horizon_core::pipeline::{projection_digests, projection_state, projection_views, Pipeline, Stage};
use horizon_core::processor::{Processor, Stats, StepOutcome};
use horizon_core::projections::{ProjectionService, Projections};
use horizon_core::scenario::Scenario;
use horizon_core::topology::Topology;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parses `--services`: a comma-separated list of `topology`'s stage names, and `notify` (the
/// runtime's delivery stage, unless the topology has a stage of that name). Returns them in
/// flow order, each once, `notify` last. `risk` in the shipped topology is refused with the
/// reason: risk decisions are made inside the portfolio step, which must see signals, risk and
/// rebalances in one event-time order.
pub fn parse_services(topology: &Topology, list: &str) -> Result<Vec<&'static str>, String> {
    let known: Vec<&'static str> = topology.stages().iter().map(|s| s.name).collect();
    let delivery = !known.contains(&crate::notify::NAME);
    let mut picked: Vec<&'static str> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let found = match known.iter().find(|k| **k == name) {
            Some(k) => *k,
            None if delivery && name == crate::notify::NAME => crate::notify::NAME,
            None if name == "risk" && known.contains(&horizon_core::manager::NAME) => {
                return Err(format!(
                    "--services: `risk` is not a separate service: risk thresholds, rebalancing and notification \
                     decisions run in one event-time step inside `{m}` (README: \"Why the portfolio step hosts \
                     risk...\"); use `{m}`",
                    m = horizon_core::manager::NAME
                ))
            }
            None => {
                let mut all = known.clone();
                if delivery {
                    all.push(crate::notify::NAME);
                }
                return Err(format!("--services: unknown service `{name}` (known: {})", all.join(", ")));
            }
        };
        if !picked.contains(&found) {
            picked.push(found);
        }
    }
    if picked.is_empty() {
        return Err("--services: no service named".into());
    }
    // Flow order: the topology's, the delivery stage after every stage of it.
    picked.sort_by_key(|n| known.iter().position(|k| k == n).unwrap_or(known.len()));
    Ok(picked)
}

/// Bounded exponential backoff, deterministic (no jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based): initial × 2^attempt, at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

pub struct ServiceOptions {
    /// Stage names (`parse_services`).
    pub stages: Vec<&'static str>,
    /// Consumer groups are `<prefix>.<stage>`.
    pub group_prefix: String,
    /// The read replica's group (`--projections-group`); default: one per process. With
    /// several read replicas selected, each gets `<group>.<stage>`.
    pub replica_group: Option<String>,
    pub max_records: usize,
    pub backoff: Backoff,
    /// How often the query snapshot is refreshed while projections change.
    pub snapshot_every: Duration,
    /// Bound on finishing in-flight work after a stop request.
    pub drain_timeout: Duration,
    /// A stage with work waiting and no progress for longer than this is stalled.
    pub stall_after: Duration,
    /// Where the `notify` stage delivers (required when it is selected).
    pub sink: Option<Box<dyn Sink>>,
    pub breaker: CircuitBreaker,
    /// Where stage snapshots are kept (`--state-dir`): offered at start, saved every
    /// `snapshot_records` records or `snapshot_interval` and at a clean stop.
    pub state_dir: Option<SnapshotDir>,
    pub snapshot_records: u64,
    pub snapshot_interval: Duration,
    /// Ready when every assigned partition of a read replica is restored and within this many
    /// records of its end.
    pub ready_lag: u64,
}

impl ServiceOptions {
    pub fn new(stages: Vec<&'static str>, group_prefix: impl Into<String>) -> ServiceOptions {
        ServiceOptions {
            stages,
            group_prefix: group_prefix.into(),
            replica_group: None,
            max_records: 4096,
            backoff: Backoff::default(),
            snapshot_every: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(30),
            stall_after: Duration::from_secs(30),
            sink: None,
            breaker: CircuitBreaker::new(5, Duration::from_secs(10)),
            state_dir: None,
            snapshot_records: 100_000,
            snapshot_interval: Duration::from_secs(30),
            ready_lag: 0,
        }
    }
}

/// A group id unique to this process (and start), for a read replica.
pub fn replica_group(prefix: &str, stage: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}.{stage}.{host}-{}-{nanos}", std::process::id())
}

struct Member {
    name: &'static str,
    /// A read replica of the topology (its piece carries offsets, lag and readiness).
    replica: bool,
    /// The runtime's delivery stage rather than one of the topology's.
    delivery: bool,
    /// This member's place in `Health`.
    index: usize,
    consumer: KafkaConsumer,
    /// Each stage publishes through a producer of its own: its flush waits only for its own
    /// records, and stages on different threads never share a flush.
    producer: KafkaProducer,
    failures: u32,
    not_before: Option<Instant>,
    last_error: Option<BusError>,
    /// Steps refused and retried.
    retries: u64,
    /// Next offset applied (stored after its outputs were acknowledged, or restored up to) per
    /// partition: the freshness token.
    applied: BTreeMap<TopicPartition, u64>,
    /// The partitions' end offsets as last seen (for lag and readiness).
    ends: BTreeMap<TopicPartition, u64>,
    /// Duration of steps that handled records.
    latency: Histogram,
    /// Where this member's steps spent their time.
    timing: StepTiming,
}

/// Where a member's steps spent their time (wall clock), for `horizon bench kafka`'s breakdown.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepTiming {
    pub steps: u64,
    /// Steps that handled at least one record.
    pub busy_steps: u64,
    pub records: u64,
    pub total: Duration,
    /// In the consumer's `poll` (waiting for records included).
    pub poll: Duration,
    /// In the producer's `send` + `flush` (waiting for broker acknowledgements).
    pub publish: Duration,
    /// In the consumer's `commit`.
    pub commit: Duration,
    /// The longest step, and the longest time one step spent publishing.
    pub max_step: Duration,
    pub max_publish: Duration,
}

/// The shared producer seen by one step: times `send` and `flush`.
struct TimedProducer<'a> {
    inner: &'a mut KafkaProducer,
    spent: &'a mut Duration,
}

impl horizon_core::bus::Producer for TimedProducer<'_> {
    fn send(&mut self, topic: horizon_core::bus::Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        let t = Instant::now();
        let r = self.inner.send(topic, partition, key, value);
        *self.spent += t.elapsed();
        r
    }
    fn flush(&mut self) -> Result<(), BusError> {
        let t = Instant::now();
        let r = self.inner.flush();
        *self.spent += t.elapsed();
        r
    }
}

/// The member's consumer seen by its stage: records what the stage commits (and what a restore
/// replays up to) as the offsets its state reflects.
pub(crate) struct Tracking<'a> {
    inner: &'a mut KafkaConsumer,
    applied: &'a mut BTreeMap<TopicPartition, u64>,
    timing: &'a mut StepTiming,
}

impl<'a> Tracking<'a> {
    pub(crate) fn new(inner: &'a mut KafkaConsumer, applied: &'a mut BTreeMap<TopicPartition, u64>, timing: &'a mut StepTiming) -> Self {
        Tracking { inner, applied, timing }
    }
}

impl Consumer for Tracking<'_> {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        let t = Instant::now();
        let p = self.inner.poll(max_records);
        self.timing.poll += t.elapsed();
        let p = p?;
        if let Polled::Revoked(tps) = &p {
            for tp in tps {
                self.applied.remove(tp);
            }
        }
        Ok(p)
    }
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        let t = Instant::now();
        let r = self.inner.commit(offsets);
        self.timing.commit += t.elapsed();
        r?;
        for (tp, o) in offsets {
            let e = self.applied.entry(*tp).or_insert(0);
            *e = (*e).max(*o);
        }
        Ok(())
    }
    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        let o = self.inner.committed(tp)?;
        let e = self.applied.entry(tp).or_insert(0);
        *e = (*e).max(o);
        Ok(o)
    }
    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        self.inner.fetch(tp, from, to)
    }
}

/// What a run did, for the exit report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ServiceReport {
    pub stats: BTreeMap<String, Stats>,
    pub retries: BTreeMap<String, u64>,
    pub delivery: Option<DeliveryCounters>,
    pub breaker_transitions: BTreeMap<String, u64>,
    /// Stages that still had unsettled work when the drain timeout ran out (redelivered later).
    pub unsettled_at_exit: Vec<String>,
}

/// Called on the thread of the stage running the shipped projections after each of its steps
/// with the projection state; returning true stops the run (`ServiceProcess::run_until`).
pub type Watch<'a> = dyn FnMut(Option<&Projections>) -> bool + Send + 'a;

pub struct ServiceProcess {
    pub pipeline: Pipeline,
    pub delivery: Option<DeliveryStage>,
    members: Vec<Member>,
    options: ServiceOptions,
    health: Arc<Health>,
}

/// How often `run` composes the stages' snapshot pieces into the query snapshot.
const COMPOSE_EVERY: Duration = Duration::from_millis(20);
/// How long an idle stage's poll waits for records (and so how soon it sees a stop request).
const IDLE_POLL: Duration = Duration::from_millis(100);

/// A member's stage, lent by the process to the member's thread.
enum StageMut<'a> {
    Topology(&'a mut dyn Stage),
    Notify(&'a mut DeliveryStage),
}

impl StageMut<'_> {
    fn stage(&mut self) -> &mut dyn Stage {
        match self {
            StageMut::Topology(s) => *s,
            StageMut::Notify(d) => *d,
        }
    }

    fn stage_ref(&self) -> &dyn Stage {
        match self {
            StageMut::Topology(s) => *s,
            StageMut::Notify(d) => *d,
        }
    }

    /// The shipped projections' processing loop, if this stage runs them.
    fn projections(&self) -> Option<&Processor<ProjectionService>> {
        match self {
            StageMut::Topology(s) => s.as_any()?.downcast_ref::<Processor<ProjectionService>>(),
            StageMut::Notify(_) => None,
        }
    }
}

/// Lends each member's stage out of the pipeline (or the delivery stage): disjoint borrows, so
/// every member can step on a thread of its own.
fn stages_for<'a>(pipeline: &'a mut Pipeline, delivery: Option<&'a mut DeliveryStage>, members: &[Member]) -> Vec<StageMut<'a>> {
    let mut lent: Vec<Option<&'a mut dyn Stage>> = pipeline.stages().into_iter().map(Some).collect();
    let mut delivery = delivery;
    members
        .iter()
        .map(|m| {
            if m.delivery {
                return StageMut::Notify(delivery.take().expect("the notify member has a delivery stage"));
            }
            let slot = lent
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| s.name() == m.name))
                .expect("each stage once");
            StageMut::Topology(slot.take().expect("each stage once"))
        })
        .collect()
}

/// What a member's thread needs of the options (which hold the sink, not shareable).
#[derive(Clone, Copy)]
struct Settings<'a> {
    max_records: usize,
    backoff: Backoff,
    snapshot_every: Duration,
    drain_timeout: Duration,
    state_dir: Option<&'a SnapshotDir>,
    snapshot_records: u64,
    snapshot_interval: Duration,
    ready_lag: u64,
    health: &'a Health,
}

impl<'a> Settings<'a> {
    fn of(o: &'a ServiceOptions, health: &'a Health) -> Settings<'a> {
        Settings {
            max_records: o.max_records,
            backoff: o.backoff,
            snapshot_every: o.snapshot_every,
            drain_timeout: o.drain_timeout,
            state_dir: o.state_dir.as_ref(),
            snapshot_records: o.snapshot_records,
            snapshot_interval: o.snapshot_interval,
            ready_lag: o.ready_lag,
            health,
        }
    }
}

/// Where a member's thread leaves its part of the query snapshot.
struct Piece<'a> {
    slot: &'a Mutex<Option<Snapshot>>,
    changed: &'a AtomicBool,
}

impl Member {
    /// Steps once, applying the backoff rules. Returns whether it made progress.
    fn step(&mut self, stage: &mut dyn Stage, s: &Settings, now: Instant) -> Result<bool, BusError> {
        if self.not_before.is_some_and(|t| now < t) {
            return Ok(false);
        }
        let started = Instant::now();
        s.health.update(self.index, |h| h.in_step_since = Some(started));
        let mut tracking = Tracking::new(&mut self.consumer, &mut self.applied, &mut self.timing);
        let mut publish = Duration::ZERO;
        let mut producer = TimedProducer {
            inner: &mut self.producer,
            spent: &mut publish,
        };
        let outcome = stage.step(&mut tracking, &mut producer, s.max_records);
        self.timing.publish += publish;
        self.timing.max_publish = self.timing.max_publish.max(publish);
        self.timing.steps += 1;
        self.timing.total += started.elapsed();
        self.timing.max_step = self.timing.max_step.max(started.elapsed());
        let (unsettled, lag) = (stage.unsettled(), self.known_lag());
        s.health.update(self.index, |h| {
            h.in_step_since = None;
            h.unsettled = unsettled;
            match &outcome {
                // Nothing polled while input is known to wait is no progress.
                Ok(StepOutcome::Idle) if lag > 0 => h.waiting = true,
                Ok(StepOutcome::Progress(_) | StepOutcome::Idle) => {
                    h.last_progress = Instant::now();
                    h.waiting = false;
                    h.last_error = None;
                }
                Ok(StepOutcome::Retry(e)) => {
                    h.waiting = true;
                    h.last_error = Some(e.to_string());
                }
                Err(_) => {}
            }
        });
        match outcome {
            Ok(StepOutcome::Progress(n)) => {
                if n > 0 {
                    self.latency.observe(started.elapsed());
                    self.timing.busy_steps += 1;
                    self.timing.records += n as u64;
                }
                self.failures = 0;
                self.not_before = None;
                self.last_error = None;
                Ok(true)
            }
            Ok(StepOutcome::Idle) => {
                self.failures = 0;
                self.not_before = None;
                self.last_error = None;
                Ok(false)
            }
            Ok(StepOutcome::Retry(e)) => {
                let delay = s.backoff.delay(self.failures);
                if self.failures == 0 || delay == s.backoff.max {
                    eprintln!("horizon: {}: {e}; retrying in {delay:?}", self.name);
                }
                self.failures = self.failures.saturating_add(1);
                self.not_before = Some(now + delay);
                self.last_error = Some(e);
                self.retries += 1;
                Ok(false)
            }
            Err(e) => Err(BusError::Fatal(format!("{}: {e}", self.name))),
        }
    }

    /// The member's loop on its own thread: steps until `stop` or `halt`, keeping its snapshot
    /// piece and saved snapshots current, then drains. Returns the stage if it exited unsettled.
    fn work(
        &mut self,
        mut stage: StageMut<'_>,
        s: &Settings,
        stop: &AtomicBool,
        halt: &AtomicBool,
        piece: Option<Piece<'_>>,
        mut watch: Option<&mut Watch<'_>>,
    ) -> Result<Option<String>, BusError> {
        // A read replica's piece clones its whole state and reads end offsets: it is refreshed
        // when the replica moved, not after every step.
        let replica = self.replica;
        let (mut last_piece, mut piece_gap, mut dirty) = (None::<Instant>, s.snapshot_every, true);
        let mut last_ends = None::<Instant>;
        let mut last_save = Instant::now();
        let mut records_at_save = stage.stage_ref().stats().records_in;
        while !stop.load(Ordering::SeqCst) && !halt.load(Ordering::SeqCst) {
            let moved = self.step(stage.stage(), s, Instant::now())?;
            dirty |= moved || !replica;
            if let (Some(w), Some(p)) = (watch.as_mut(), stage.projections()) {
                if w(projection_state(p)) {
                    halt.store(true, Ordering::SeqCst);
                }
            }
            if let Some(dir) = s.state_dir {
                let records = stage.stage_ref().stats().records_in;
                if records.saturating_sub(records_at_save) >= s.snapshot_records || last_save.elapsed() >= s.snapshot_interval {
                    self.save_snapshot(stage.stage_ref(), dir);
                    records_at_save = records;
                    last_save = Instant::now();
                }
            }
            if let Some(piece) = &piece {
                if replica && last_ends.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    self.refresh_ends();
                    last_ends = Some(Instant::now());
                    dirty = true;
                }
                // A read replica's piece clones its whole state: at most every
                // `snapshot_every`, and never more than a fifth of the stage's time.
                if dirty && last_piece.is_none_or(|t| t.elapsed() >= piece_gap) {
                    let started = Instant::now();
                    *piece.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.piece(&stage, s.ready_lag));
                    piece.changed.store(true, Ordering::SeqCst);
                    if replica {
                        piece_gap = s.snapshot_every.max(started.elapsed() * 4);
                    }
                    last_piece = Some(Instant::now());
                    dirty = false;
                }
            }
            if !moved {
                if let Some(t) = self.not_before {
                    std::thread::sleep(t.saturating_duration_since(Instant::now()).min(Duration::from_millis(200)));
                }
            }
        }
        let unsettled = self.drain(stage.stage(), s)?;
        if let Some(dir) = s.state_dir {
            self.save_snapshot(stage.stage_ref(), dir);
        }
        if let Some(piece) = &piece {
            if replica {
                self.refresh_ends();
            }
            *piece.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.piece(&stage, s.ready_lag));
            piece.changed.store(true, Ordering::SeqCst);
        }
        Ok(unsettled)
    }

    /// After a stop request: steps again while the last step was refused, until it goes through
    /// (its work is then acknowledged and its offsets stored), within the drain timeout; then
    /// commits the stored offsets rather than leave them to the consumer's close.
    fn drain(&mut self, stage: &mut dyn Stage, s: &Settings) -> Result<Option<String>, BusError> {
        let deadline = Instant::now() + s.drain_timeout;
        while self.last_error.is_some() {
            if Instant::now() >= deadline {
                return Ok(Some(self.name.to_string()));
            }
            self.step(stage, s, Instant::now())?;
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.consumer.commit_stored() {
            Ok(()) => Ok(None),
            Err(e) => {
                eprintln!("horizon: {}: final commit: {e}", self.name);
                s.health.update(self.index, |h| {
                    h.waiting = true;
                    h.last_error = Some(format!("final commit: {e}"));
                });
                Ok(Some(self.name.to_string()))
            }
        }
    }

    /// Saves the stage's snapshots (none while it has unsettled work).
    fn save_snapshot(&self, stage: &dyn Stage, dir: &SnapshotDir) {
        if self.delivery {
            return;
        }
        // A snapshot ahead of its group's committed offsets is discarded on restore (it cannot
        // tell a reset log from a late commit), so the stored offsets go first.
        if let Err(e) = self.consumer.commit_stored() {
            eprintln!("horizon: {}: committing before a snapshot: {e}; snapshot not saved", self.name);
            return;
        }
        for (task, bytes) in stage.snapshot() {
            if let Err(e) = dir.save(stage.name(), task, &bytes) {
                eprintln!("horizon: {}: saving the snapshot of task {task}: {e}", stage.name());
            }
        }
    }

    /// Records known to wait on the assigned partitions (as of the last `refresh_ends`).
    fn known_lag(&self) -> u64 {
        self.ends
            .iter()
            .map(|(tp, end)| end.saturating_sub(self.applied.get(tp).copied().unwrap_or(0)))
            .sum()
    }

    /// Reads the end offsets of the assigned partitions (lag, readiness).
    fn refresh_ends(&mut self) {
        let assigned = self.consumer.assignment();
        self.ends.retain(|tp, _| assigned.contains(tp));
        for tp in assigned {
            if let Ok(end) = self.consumer.end_offset(tp) {
                self.ends.insert(tp, end);
            }
        }
    }

    /// This member's part of the query snapshot (`merge` composes the parts).
    fn piece(&self, stage: &StageMut<'_>, ready_lag: u64) -> Snapshot {
        let name = self.name.to_string();
        let mut s = Snapshot {
            stages: vec![name.clone()],
            taken_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ready: true,
            ..Snapshot::default()
        };
        s.stats.insert(name.clone(), stage.stage_ref().stats().clone());
        s.latency.insert(name.clone(), self.latency.clone());
        if self.retries > 0 {
            s.retries.insert(name, self.retries);
        }
        if self.replica {
            let assigned = self.consumer.assignment();
            s.offsets = assigned
                .iter()
                .filter_map(|tp| self.applied.get(tp).map(|o| (tp.to_string(), *o)))
                .collect();
            for tp in &assigned {
                let applied = self.applied.get(tp).copied().unwrap_or(0);
                let end = self.ends.get(tp).copied().unwrap_or(applied);
                s.lag.insert(tp.to_string(), end.saturating_sub(applied));
            }
            s.ready = !assigned.is_empty()
                && assigned.iter().all(|tp| self.applied.contains_key(tp))
                && s.lag.values().all(|l| *l <= ready_lag)
                && self.ends.len() == assigned.len();
        }
        if let Some(p) = stage.projections() {
            if let Some(state) = projection_state(p) {
                s.projections = Some(Arc::new(state.clone()));
                s.events_by_type = state.events_by_type.clone();
                s.events = state.audit.len() as u64;
            }
            s.digests = Some(projection_digests(p));
            s.views = Some(projection_views(p));
        }
        if let StageMut::Notify(d) = stage {
            s.delivery = Some(d.counters.clone());
            s.breaker = Some(format!("{:?}", d.breaker.state()));
        }
        s
    }
}

/// The query snapshot of a process from its members' pieces, in member order.
fn merge(pieces: impl IntoIterator<Item = Snapshot>, initial_cash: &BTreeMap<String, Fixed>) -> Snapshot {
    let mut s = Snapshot {
        ready: true,
        initial_cash: initial_cash.clone(),
        ..Snapshot::default()
    };
    for p in pieces {
        s.stages.extend(p.stages);
        s.stats.extend(p.stats);
        s.latency.extend(p.latency);
        s.retries.extend(p.retries);
        s.ready &= p.ready;
        s.taken_at_ms = s.taken_at_ms.max(p.taken_at_ms);
        if p.digests.is_some() {
            s.digests = p.digests;
            s.views = p.views;
            s.projections = p.projections;
            s.events_by_type = p.events_by_type;
            s.events = p.events;
            s.offsets = p.offsets;
            s.lag = p.lag;
        }
        if p.delivery.is_some() {
            s.delivery = p.delivery;
            s.breaker = p.breaker;
        }
    }
    s
}

impl ServiceProcess {
    /// Builds `topology`'s stages for the scenario and joins a consumer group for each of
    /// `options.stages` (names checked by `parse_services`; an unknown one is an error here too).
    pub fn new(
        topology: &Topology,
        scenario: &Scenario,
        config: &KafkaConfig,
        mut options: ServiceOptions,
    ) -> Result<ServiceProcess, BusError> {
        let mut pipeline = Pipeline::from_topology(topology, scenario).map_err(|e| BusError::Fatal(e.to_string()))?;
        let is_delivery = |name: &str| name == crate::notify::NAME && topology.stage_spec(name).is_none();
        let delivery = if options.stages.iter().any(|n| is_delivery(n)) {
            let sink = options
                .sink
                .take()
                .ok_or_else(|| BusError::Fatal("the notify stage needs a sink".into()))?;
            Some(DeliveryStage::new(sink, options.breaker.clone()))
        } else {
            None
        };
        let replicas = options
            .stages
            .iter()
            .filter(|n| topology.stage_spec(n).is_some_and(|s| s.replica))
            .count();
        let mut members = Vec::new();
        for &name in &options.stages {
            let (inputs, replica, delivery_member) = match topology.stage_spec(name) {
                Some(spec) => (spec.inputs, spec.replica, false),
                None if is_delivery(name) => (delivery.as_ref().map(|d| d.inputs()).unwrap_or(&[]), false, true),
                None => {
                    return Err(BusError::Fatal(format!(
                        "topology `{}` has no stage `{name}` (its stages: {})",
                        topology.name,
                        horizon_core::pipeline::service_names(topology).join(", ")
                    )))
                }
            };
            let group = match (replica, &options.replica_group) {
                (true, Some(g)) if replicas == 1 => g.clone(),
                (true, Some(g)) => format!("{g}.{name}"),
                (true, None) => replica_group(&options.group_prefix, name),
                (false, _) => format!("{}.{name}", options.group_prefix),
            };
            let mut consumer = KafkaConsumer::new(config, &group, inputs)?;
            // Each stage has a thread of its own: an idle poll blocks no other stage.
            consumer.set_poll_timing(IDLE_POLL, Duration::ZERO);
            members.push(Member {
                name,
                replica,
                delivery: delivery_member,
                index: members.len(),
                consumer,
                producer: KafkaProducer::new(config)?,
                failures: 0,
                not_before: None,
                last_error: None,
                retries: 0,
                applied: BTreeMap::new(),
                ends: BTreeMap::new(),
                latency: Histogram::default(),
                timing: StepTiming::default(),
            });
        }
        if let Some(dir) = &options.state_dir {
            for m in members.iter().filter(|m| !m.delivery) {
                let stage = pipeline.stage_mut(m.name).expect("a member of the topology");
                let saved = dir
                    .load_all(stage.name())
                    .map_err(|e| BusError::Fatal(format!("--state-dir: {e}")))?;
                for (task, bytes) in saved {
                    match stage.offer_snapshot(&bytes) {
                        Ok(_) => eprintln!(
                            "horizon: {}: task {task}: restoring from its snapshot plus the log's tail",
                            stage.name()
                        ),
                        Err(e) => eprintln!("horizon: {}: task {task}: snapshot refused ({e}); replaying the log", stage.name()),
                    }
                }
            }
        }
        let health = Arc::new(Health::new(options.stall_after, options.stages.iter().map(|n| n.to_string())));
        Ok(ServiceProcess {
            pipeline,
            delivery,
            members,
            options,
            health,
        })
    }

    /// Where each stage's steps spent their time so far.
    pub fn timings(&self) -> Vec<(&'static str, StepTiming)> {
        self.members.iter().map(|m| (m.name, m.timing.clone())).collect()
    }

    /// Forgets the time counted so far (a benchmark's warm-up).
    pub fn reset_timings(&mut self) {
        for m in &mut self.members {
            m.timing = StepTiming::default();
        }
    }

    /// The stages' progress, as the query API judges stalls.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    pub fn stages(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.name).collect()
    }

    /// Runs until `stop` is set, then finishes in-flight work, commits and returns (the
    /// consumers leave their groups when the process is dropped).
    pub fn run(&mut self, stop: &AtomicBool, snapshot: Option<&SharedSnapshot>) -> Result<ServiceReport, BusError> {
        self.run_until(stop, snapshot, None)
    }

    /// `run`, also stopping when `watch` (called on the projections stage's thread after each of
    /// its steps) returns true. One thread per stage, so a stage waiting for its broker
    /// acknowledgements or its poll delays no other; this thread composes the stages' snapshot
    /// pieces into `snapshot` for the query API. A fatal error in one stage stops them all.
    pub fn run_until(
        &mut self,
        stop: &AtomicBool,
        snapshot: Option<&SharedSnapshot>,
        mut watch: Option<&mut Watch<'_>>,
    ) -> Result<ServiceReport, BusError> {
        let settings = Settings::of(&self.options, &self.health);
        // No shipped projections in the topology: no initial cash to show (and no views).
        let initial_cash = self
            .pipeline
            .projection_processor()
            .map(|p| p.service().initial_cash.clone())
            .unwrap_or_default();
        let stages = stages_for(&mut self.pipeline, self.delivery.as_mut(), &self.members);
        let halt = AtomicBool::new(false);
        let changed = AtomicBool::new(false);
        let slots: Vec<Mutex<Option<Snapshot>>> = self.members.iter().map(|_| Mutex::new(None)).collect();
        let compose = || -> Option<Snapshot> {
            let pieces: Option<Vec<Snapshot>> = slots.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
            pieces.map(|p| Snapshot {
                health: Some(self.health.clone()),
                ..merge(p, &initial_cash)
            })
        };
        let outcomes: Vec<Result<Option<String>, BusError>> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for ((m, stage), slot) in self.members.iter_mut().zip(stages).zip(&slots) {
                let watch = if stage.projections().is_some() { watch.take() } else { None };
                let piece = snapshot.map(|_| Piece { slot, changed: &changed });
                let (settings, halt) = (&settings, &halt);
                let spawned = std::thread::Builder::new()
                    .name(format!("horizon-{}", m.name))
                    .spawn_scoped(scope, move || {
                        let r = m.work(stage, settings, stop, halt, piece, watch);
                        if r.is_err() {
                            halt.store(true, Ordering::SeqCst);
                        }
                        r
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        halt.store(true, Ordering::SeqCst);
                        handles.clear();
                        return vec![Err(BusError::Fatal(format!("starting a stage thread: {e}")))];
                    }
                }
            }
            while handles.iter().any(|h| !h.is_finished()) {
                if let Some(shared) = snapshot {
                    if changed.swap(false, Ordering::SeqCst) {
                        if let Some(s) = compose() {
                            shared.set(s);
                        }
                    }
                }
                std::thread::sleep(COMPOSE_EVERY);
            }
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(BusError::Fatal("a stage thread panicked".into()))))
                .collect()
        });
        if let (Some(shared), Some(s)) = (snapshot, compose()) {
            shared.set(s);
        }
        let mut unsettled = Vec::new();
        for outcome in outcomes {
            if let Some(stage) = outcome? {
                unsettled.push(stage);
            }
        }
        Ok(self.report(unsettled))
    }

    fn report(&self, unsettled: Vec<String>) -> ServiceReport {
        let mut stats = BTreeMap::new();
        let mut retries = BTreeMap::new();
        for m in &self.members {
            stats.insert(m.name.to_string(), self.stage_stats(m).clone());
            if m.retries > 0 {
                retries.insert(m.name.to_string(), m.retries);
            }
        }
        ServiceReport {
            stats,
            retries,
            delivery: self.delivery.as_ref().map(|d| d.counters.clone()),
            breaker_transitions: self.delivery.as_ref().map(|d| d.breaker.transitions.clone()).unwrap_or_default(),
            unsettled_at_exit: unsettled,
        }
    }

    fn stage_stats(&self, m: &Member) -> &Stats {
        match (&self.delivery, m.delivery) {
            (Some(d), true) => Stage::stats(d),
            _ => self.pipeline.stage(m.name).expect("a member of the topology").stats(),
        }
    }

    /// A stage's counters so far (the delivery stage's too), by name.
    pub fn stats(&self, stage: &str) -> Option<&Stats> {
        self.members.iter().find(|m| m.name == stage).map(|m| self.stage_stats(m))
    }
}

/// `horizon run`'s exit code when a stop leaves work unsettled or outlasts its bound.
pub const UNSETTLED_EXIT: i32 = 3;
/// How long the consumers get to leave their groups after the drain bound.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The one line naming the stages a stop left unsettled, what each holds and why.
pub fn unsettled_line(health: &Health, stages: &[String]) -> String {
    let judged = health.judge(Instant::now());
    let parts: Vec<String> = stages
        .iter()
        .map(|stage| match judged.iter().find(|(name, _, _)| name == stage) {
            Some((_, h, _)) => format!(
                "{stage} ({} outputs pending, offsets of {} partitions not committed; last error: {})",
                h.unsettled.outputs,
                h.unsettled.partitions,
                h.last_error.as_deref().unwrap_or("none")
            ),
            None => stage.clone(),
        })
        .collect();
    format!(
        "horizon run: stopped with unsettled work: {}; their inputs are processed again on restart (duplicates dropped by id)",
        parts.join(", ")
    )
}

/// Ends the process with `UNSETTLED_EXIT` once a stop request has run `bound` without the
/// process exiting: a flush, a commit or a consumer's close can block on a dead broker longer
/// than any bound the loop sets, and librdkafka's close cannot be interrupted.
pub struct Watchdog {
    /// Set once the line about unsettled work is printed, so it is printed once.
    said: Arc<Mutex<bool>>,
}

impl Watchdog {
    pub fn arm(stop: Arc<AtomicBool>, bound: Duration, health: Arc<Health>) -> Result<Watchdog, String> {
        let said = Arc::new(Mutex::new(false));
        let said_here = said.clone();
        std::thread::Builder::new()
            .name("horizon-watchdog".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(bound);
                // Held until the exit, so no other line races this one.
                let said = said_here.lock().unwrap_or_else(|p| p.into_inner());
                if !*said {
                    let busy: Vec<String> = health
                        .judge(Instant::now())
                        .into_iter()
                        .filter(|(_, h, _)| h.waiting || h.in_step_since.is_some())
                        .map(|(name, _, _)| name.to_string())
                        .collect();
                    if busy.is_empty() {
                        eprintln!("horizon run: shutdown not finished within {bound:?} (consumers leaving their groups); exiting");
                    } else {
                        eprintln!("{}", unsettled_line(&health, &busy));
                    }
                }
                std::process::exit(UNSETTLED_EXIT);
            })
            .map_err(|e| format!("starting the shutdown watchdog: {e}"))?;
        Ok(Watchdog { said })
    }

    /// Prints the line about unsettled work (the watchdog then prints none).
    pub fn say(&self, line: &str) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        eprintln!("{line}");
        *said = true;
    }
}

/// A flag set by SIGTERM or SIGINT; a second signal ends the process at once.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // Registered first: if the flag is already set (second signal), exit with 130.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop)).map_err(|e| e.to_string())?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_in_flow_order_and_risk_is_refused_with_the_reason() {
        let shipped = Topology::shipped();
        assert_eq!(
            parse_services(&shipped, "projections, market,signals,market").unwrap(),
            vec!["market", "signals", "projections"]
        );
        assert_eq!(parse_services(&shipped, "notify,portfolio").unwrap(), vec!["portfolio", "notify"]);
        let e = parse_services(&shipped, "market,risk").unwrap_err();
        assert!(e.contains("inside `portfolio`"), "{e}");
        let e = parse_services(&shipped, "bars").unwrap_err();
        assert_eq!(
            e,
            "--services: unknown service `bars` (known: market, signals, portfolio, projections, notify)"
        );
        assert!(parse_services(&shipped, " , ").is_err());
    }

    #[test]
    fn services_of_a_users_topology_are_its_stage_names() {
        use horizon_core::topology::{StageSpec, TopicSpec};
        let t = Topology::shipped()
            .topic(TopicSpec {
                name: "alerts",
                partitions: 2,
                key: "symbol",
                holds: "alerts",
            })
            .stage(StageSpec::read_model("risk", &[horizon_core::topics::RISK], |s| {
                Ok(horizon_core::projections::ProjectionService::from_scenario(s))
            }));
        // A stage of its own called `risk` is that stage, not the shipped refusal (parsing only:
        // the stage is never built).
        assert_eq!(parse_services(&t, "risk,market").unwrap(), vec!["market", "risk"]);
        let e = parse_services(&t, "alerts").unwrap_err();
        assert!(e.ends_with("(known: market, signals, portfolio, projections, risk, notify)"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let b = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        let got: Vec<u128> = (0..8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }
}
