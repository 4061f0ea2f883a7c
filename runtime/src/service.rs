//! The service process: selected stages of the `Pipeline` run against Apache Kafka with the one
//! processing loop (`horizon_core::processor`), as `horizon run` does.
//!
//! - One `KafkaConsumer` per stage, in consumer group `<prefix>.<stage>`; processes started with
//!   the same prefix share the work of a stage partition by partition. The projections stage
//!   keeps one task for all partitions, so each process that serves queries reads every topic
//!   in a group of its own (`<prefix>.projections.<host>-<pid>-<start>`, a read replica that
//!   rebuilds from the log on start) unless a fixed group is given.
//! - One idempotent `KafkaProducer` shared by every stage. The stages are stepped in turn on one
//!   thread and each step flushes what it sent before returning, so a flush only ever waits for
//!   the stage's own records; one producer means one connection and one idempotence sequence
//!   per partition instead of one per stage.
//! - Round-robin over the stages; a stage whose step reports `Retry` (broker unavailable, sink
//!   down) is not stepped again before its backoff, which doubles from `backoff.initial` up to
//!   `backoff.max` and resets on the next success. No jitter: runs stay reproducible.
//! - A stop request (SIGTERM / Ctrl-C set the flag): every stage with unsettled work is stepped
//!   until its outputs are acknowledged and its offsets committed (bounded by `drain_timeout`),
//!   then the consumers leave their groups and `run` returns.
//! - A restarted process recovers each stage's state by replay on assignment (the loop's
//!   restore), the same mechanism the simulator's crash fault exercises.

use crate::api::{Histogram, SharedSnapshot, Snapshot};
use crate::kafka::{KafkaConfig, KafkaConsumer, KafkaProducer};
use crate::notify::{CircuitBreaker, DeliveryCounters, DeliveryStage, Sink};
use crate::snapshots::SnapshotDir;
use horizon_core::bus::{BusError, Consumer, Polled, Record, TopicPartition};
use horizon_core::pipeline::{Pipeline, Stage};
use horizon_core::processor::{Stats, StepOutcome};
use horizon_core::scenario::Scenario;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What `--services` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StageKind {
    Market,
    Signals,
    /// The portfolio manager: sequencer, risk, rebalancing and notification decisions.
    Portfolio,
    Projections,
    /// Delivery of notifications to a sink (not part of `horizon sim`).
    Notify,
}

impl StageKind {
    pub const PIPELINE: [StageKind; 4] = [StageKind::Market, StageKind::Signals, StageKind::Portfolio, StageKind::Projections];

    pub fn name(self) -> &'static str {
        match self {
            StageKind::Market => horizon_core::market::NAME,
            StageKind::Signals => horizon_core::signals::NAME,
            StageKind::Portfolio => horizon_core::manager::NAME,
            StageKind::Projections => horizon_core::projections::NAME,
            StageKind::Notify => crate::notify::NAME,
        }
    }

    /// Parses a comma-separated list. `risk` is refused with the reason: risk decisions are
    /// made inside the portfolio step, which must see signals, risk and rebalances in one
    /// event-time order.
    pub fn parse_list(list: &str) -> Result<Vec<StageKind>, String> {
        let mut out: Vec<StageKind> = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let kind = match name {
                "market" => StageKind::Market,
                "signals" => StageKind::Signals,
                "portfolio" => StageKind::Portfolio,
                "projections" => StageKind::Projections,
                "notify" => StageKind::Notify,
                "risk" => {
                    return Err(
                        "--services: `risk` is not a separate service: risk thresholds, rebalancing and notification \
                                decisions run in one event-time step inside `portfolio` (README: \"Why the portfolio step hosts \
                                risk...\"); use `portfolio`"
                            .into(),
                    )
                }
                other => {
                    return Err(format!(
                        "--services: unknown service `{other}` (known: market, signals, portfolio, projections, notify)"
                    ))
                }
            };
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        if out.is_empty() {
            return Err("--services: no service named".into());
        }
        out.sort();
        Ok(out)
    }
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
    pub stages: Vec<StageKind>,
    /// Consumer groups are `<prefix>.<stage>`.
    pub group_prefix: String,
    /// The projections stage's group; default: one per process.
    pub projections_group: Option<String>,
    pub max_records: usize,
    pub backoff: Backoff,
    /// How often the query snapshot is refreshed while projections change.
    pub snapshot_every: Duration,
    /// Bound on finishing in-flight work after a stop request.
    pub drain_timeout: Duration,
    /// Where the `notify` stage delivers (required when it is selected).
    pub sink: Option<Box<dyn Sink>>,
    pub breaker: CircuitBreaker,
    /// Where stage snapshots are kept (`--state-dir`): offered at start, saved every
    /// `snapshot_records` records or `snapshot_interval` and at a clean stop.
    pub state_dir: Option<SnapshotDir>,
    pub snapshot_records: u64,
    pub snapshot_interval: Duration,
    /// Ready when every assigned projections partition is restored and within this many records
    /// of its end.
    pub ready_lag: u64,
}

impl ServiceOptions {
    pub fn new(stages: Vec<StageKind>, group_prefix: impl Into<String>) -> ServiceOptions {
        ServiceOptions {
            stages,
            group_prefix: group_prefix.into(),
            projections_group: None,
            max_records: 4096,
            backoff: Backoff::default(),
            snapshot_every: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(30),
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
    kind: StageKind,
    consumer: KafkaConsumer,
    failures: u32,
    not_before: Option<Instant>,
    last_error: Option<BusError>,
    /// Next offset applied (committed, or restored up to) per partition: the freshness token.
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
struct Tracking<'a> {
    inner: &'a mut KafkaConsumer,
    applied: &'a mut BTreeMap<TopicPartition, u64>,
    timing: &'a mut StepTiming,
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

/// What one round of `step_round` did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    pub progress: bool,
    pub projections_moved: bool,
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

pub struct ServiceProcess {
    pub pipeline: Pipeline,
    pub delivery: Option<DeliveryStage>,
    members: Vec<Member>,
    producer: KafkaProducer,
    options: ServiceOptions,
    retries: BTreeMap<String, u64>,
    /// Whether the previous round moved anything (then no stage waits in its poll).
    busy: bool,
}

/// With several stages stepped in turn, how long the first stage's poll waits for records
/// after a round in which no stage moved; every other poll only takes what is already fetched.
const IDLE_WAIT: Duration = Duration::from_millis(2);

impl ServiceProcess {
    pub fn new(scenario: &Scenario, config: &KafkaConfig, mut options: ServiceOptions) -> Result<ServiceProcess, BusError> {
        let mut pipeline = Pipeline::new(scenario);
        let delivery = if options.stages.contains(&StageKind::Notify) {
            let sink = options
                .sink
                .take()
                .ok_or_else(|| BusError::Fatal("the notify stage needs a sink".into()))?;
            Some(DeliveryStage::new(sink, options.breaker.clone()))
        } else {
            None
        };
        let producer = KafkaProducer::new(config)?;
        let several = options.stages.len() > 1;
        let mut members = Vec::new();
        for &kind in &options.stages {
            let group = match (kind, &options.projections_group) {
                (StageKind::Projections, Some(g)) => g.clone(),
                (StageKind::Projections, None) => replica_group(&options.group_prefix, kind.name()),
                _ => format!("{}.{}", options.group_prefix, kind.name()),
            };
            let inputs = match kind {
                StageKind::Notify => delivery.as_ref().map(|d| d.inputs()).unwrap_or(&[]),
                _ => stage_of(&mut pipeline, kind).inputs(),
            };
            let mut consumer = KafkaConsumer::new(config, &group, inputs)?;
            // Stepped in turn: no stage may sit in an idle poll while another has work (`step_round`
            // lets one stage wait, and only after a round where nothing moved).
            let wait = if several { IDLE_WAIT } else { Duration::from_millis(100) };
            consumer.set_poll_timing(wait, Duration::ZERO);
            members.push(Member {
                kind,
                consumer,
                failures: 0,
                not_before: None,
                last_error: None,
                applied: BTreeMap::new(),
                ends: BTreeMap::new(),
                latency: Histogram::default(),
                timing: StepTiming::default(),
            });
        }
        if let Some(dir) = &options.state_dir {
            for &kind in &options.stages {
                if kind == StageKind::Notify {
                    continue;
                }
                let stage = stage_of(&mut pipeline, kind);
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
        Ok(ServiceProcess {
            pipeline,
            delivery,
            members,
            producer,
            options,
            retries: BTreeMap::new(),
            busy: false,
        })
    }

    /// Where each stage's steps spent their time so far.
    pub fn timings(&self) -> Vec<(&'static str, StepTiming)> {
        self.members.iter().map(|m| (m.kind.name(), m.timing.clone())).collect()
    }

    /// Forgets the time counted so far (a benchmark's warm-up).
    pub fn reset_timings(&mut self) {
        for m in &mut self.members {
            m.timing = StepTiming::default();
        }
    }

    pub fn stages(&self) -> Vec<&'static str> {
        self.members.iter().map(|m| m.kind.name()).collect()
    }

    fn runs_projections(&self) -> bool {
        self.members.iter().any(|m| m.kind == StageKind::Projections)
    }

    /// Steps member `i` once, applying the backoff rules. Returns whether it made progress.
    fn step_member(&mut self, i: usize, now: Instant) -> Result<bool, BusError> {
        let m = &mut self.members[i];
        if m.not_before.is_some_and(|t| now < t) {
            return Ok(false);
        }
        let stage: &mut dyn Stage = match m.kind {
            StageKind::Notify => self.delivery.as_mut().expect("notify member has a delivery stage"),
            kind => stage_of(&mut self.pipeline, kind),
        };
        let started = Instant::now();
        let mut tracking = Tracking {
            inner: &mut m.consumer,
            applied: &mut m.applied,
            timing: &mut m.timing,
        };
        let mut publish = Duration::ZERO;
        let mut producer = TimedProducer {
            inner: &mut self.producer,
            spent: &mut publish,
        };
        let outcome = stage.step(&mut tracking, &mut producer, self.options.max_records);
        m.timing.publish += publish;
        m.timing.max_publish = m.timing.max_publish.max(publish);
        m.timing.steps += 1;
        m.timing.total += started.elapsed();
        m.timing.max_step = m.timing.max_step.max(started.elapsed());
        match outcome {
            Ok(StepOutcome::Progress(n)) => {
                if n > 0 {
                    m.latency.observe(started.elapsed());
                    m.timing.busy_steps += 1;
                    m.timing.records += n as u64;
                }
                m.failures = 0;
                m.not_before = None;
                m.last_error = None;
                Ok(true)
            }
            Ok(StepOutcome::Idle) => {
                m.failures = 0;
                m.not_before = None;
                m.last_error = None;
                Ok(false)
            }
            Ok(StepOutcome::Retry(e)) => {
                let delay = self.options.backoff.delay(m.failures);
                if m.failures == 0 || delay == self.options.backoff.max {
                    eprintln!("horizon: {}: {e}; retrying in {delay:?}", m.kind.name());
                }
                m.failures = m.failures.saturating_add(1);
                m.not_before = Some(now + delay);
                m.last_error = Some(e);
                *self.retries.entry(m.kind.name().to_string()).or_insert(0) += 1;
                Ok(false)
            }
            Err(e) => Err(BusError::Fatal(format!("{}: {e}", m.kind.name()))),
        }
    }

    /// Steps every stage once (those backing off are skipped); when nobody could make progress
    /// because every stage is backing off, sleeps until the earliest retry (bounded).
    pub fn step_round(&mut self) -> Result<Round, BusError> {
        let now = Instant::now();
        let mut round = Round::default();
        let several = self.members.len() > 1;
        for i in 0..self.members.len() {
            if several {
                // After an idle round one stage waits (so an idle process does not spin); while
                // records flow, a stage with nothing to do costs no wait.
                let wait = if i == 0 && !self.busy { IDLE_WAIT } else { Duration::ZERO };
                self.members[i].consumer.set_poll_timing(wait, Duration::ZERO);
            }
            let moved = self.step_member(i, now)?;
            round.progress |= moved;
            round.projections_moved |= moved && self.members[i].kind == StageKind::Projections;
        }
        self.busy = round.progress;
        if !round.progress && self.members.iter().all(|m| m.not_before.is_some()) {
            if let Some(t) = self.members.iter().filter_map(|m| m.not_before).min() {
                std::thread::sleep(t.saturating_duration_since(Instant::now()).min(Duration::from_millis(200)));
            }
        }
        Ok(round)
    }

    /// Runs until `stop` is set, then finishes in-flight work and leaves the groups.
    pub fn run(&mut self, stop: &AtomicBool, snapshot: Option<&SharedSnapshot>) -> Result<ServiceReport, BusError> {
        let mut last_snapshot = Instant::now();
        let mut snapshot_gap = self.options.snapshot_every;
        let mut projections_dirty = true;
        let mut last_ends = Instant::now() - Duration::from_secs(60);
        let mut last_save = Instant::now();
        let mut records_at_save = self.records_in();
        if let Some(s) = snapshot {
            self.refresh_ends();
            s.set(self.snapshot());
        }
        while !stop.load(Ordering::SeqCst) {
            let round = self.step_round()?;
            projections_dirty |= round.projections_moved;
            if self.options.state_dir.is_some() {
                let records = self.records_in();
                if records.saturating_sub(records_at_save) >= self.options.snapshot_records
                    || last_save.elapsed() >= self.options.snapshot_interval
                {
                    self.save_snapshots();
                    records_at_save = records;
                    last_save = Instant::now();
                }
            }
            if snapshot.is_some() && last_ends.elapsed() >= Duration::from_secs(1) {
                self.refresh_ends();
                last_ends = Instant::now();
                projections_dirty = true;
            }
            if let Some(s) = snapshot {
                // Digests and views are computed from the whole projection state: refresh at
                // most every `snapshot_every`, and never spend more than a fifth of the time on it.
                if last_snapshot.elapsed() >= snapshot_gap && (projections_dirty || !self.runs_projections()) {
                    let started = Instant::now();
                    s.set(self.snapshot());
                    snapshot_gap = self.options.snapshot_every.max(started.elapsed() * 4);
                    last_snapshot = Instant::now();
                    projections_dirty = false;
                }
            }
        }
        let unsettled = self.drain()?;
        if self.options.state_dir.is_some() {
            self.save_snapshots();
        }
        if let Some(s) = snapshot {
            s.set(self.snapshot());
        }
        Ok(self.report(unsettled))
    }

    fn records_in(&self) -> u64 {
        self.members.iter().map(|m| self.stage_stats(m.kind).records_in).sum()
    }

    /// Saves every stage's snapshots (a stage with unsettled work has none right now).
    pub fn save_snapshots(&mut self) {
        let Some(dir) = &self.options.state_dir else { return };
        for m in &self.members {
            if m.kind == StageKind::Notify {
                continue;
            }
            let stage: &dyn Stage = match m.kind {
                StageKind::Market => &self.pipeline.market,
                StageKind::Signals => &self.pipeline.signals,
                StageKind::Portfolio => &self.pipeline.manager,
                _ => &self.pipeline.projections,
            };
            for (task, bytes) in stage.snapshot() {
                if let Err(e) = dir.save(stage.name(), task, &bytes) {
                    eprintln!("horizon: {}: saving the snapshot of task {task}: {e}", stage.name());
                }
            }
        }
    }

    /// Reads the end offsets of the projections stage's assigned partitions (lag, readiness).
    fn refresh_ends(&mut self) {
        for m in self.members.iter_mut().filter(|m| m.kind == StageKind::Projections) {
            let assigned = m.consumer.assignment();
            m.ends.retain(|tp, _| assigned.contains(tp));
            for tp in assigned {
                if let Ok(end) = m.consumer.end_offset(tp) {
                    m.ends.insert(tp, end);
                }
            }
        }
    }

    /// After a stop request: steps every member whose last step was refused until it goes
    /// through (its work is then acknowledged and committed), within the drain timeout.
    fn drain(&mut self) -> Result<Vec<String>, BusError> {
        let deadline = Instant::now() + self.options.drain_timeout;
        loop {
            let waiting: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].last_error.is_some()).collect();
            if waiting.is_empty() {
                return Ok(Vec::new());
            }
            if Instant::now() >= deadline {
                return Ok(waiting.iter().map(|&i| self.members[i].kind.name().to_string()).collect());
            }
            for i in waiting {
                self.step_member(i, Instant::now())?;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn report(&self, unsettled: Vec<String>) -> ServiceReport {
        let mut stats = BTreeMap::new();
        for m in &self.members {
            stats.insert(m.kind.name().to_string(), self.stage_stats(m.kind).clone());
        }
        ServiceReport {
            stats,
            retries: self.retries.clone(),
            delivery: self.delivery.as_ref().map(|d| d.counters.clone()),
            breaker_transitions: self.delivery.as_ref().map(|d| d.breaker.transitions.clone()).unwrap_or_default(),
            unsettled_at_exit: unsettled,
        }
    }

    fn stage_stats(&self, kind: StageKind) -> &Stats {
        match kind {
            StageKind::Market => &self.pipeline.market.stats,
            StageKind::Signals => &self.pipeline.signals.stats,
            StageKind::Portfolio => &self.pipeline.manager.stats,
            StageKind::Projections => &self.pipeline.projections.stats,
            StageKind::Notify => Stage::stats(self.delivery.as_ref().expect("notify stage")),
        }
    }

    /// The query snapshot of the current state.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            stages: self.stages().iter().map(|s| s.to_string()).collect(),
            taken_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ready: !self.runs_projections(),
            initial_cash: self.pipeline.projections.service().initial_cash.clone(),
            ..Snapshot::default()
        };
        for m in &self.members {
            s.stats.insert(m.kind.name().to_string(), self.stage_stats(m.kind).clone());
            s.latency.insert(m.kind.name().to_string(), m.latency.clone());
            if m.kind == StageKind::Projections {
                let assigned = m.consumer.assignment();
                s.offsets = assigned
                    .iter()
                    .filter_map(|tp| m.applied.get(tp).map(|o| (tp.to_string(), *o)))
                    .collect();
                for tp in &assigned {
                    let applied = m.applied.get(tp).copied().unwrap_or(0);
                    let end = m.ends.get(tp).copied().unwrap_or(applied);
                    s.lag.insert(tp.to_string(), end.saturating_sub(applied));
                }
                s.ready = !assigned.is_empty()
                    && assigned.iter().all(|tp| m.applied.contains_key(tp))
                    && s.lag.values().all(|l| *l <= self.options.ready_lag)
                    && m.ends.len() == assigned.len();
            }
        }
        if let Some(d) = &self.delivery {
            s.delivery = Some(d.counters.clone());
            s.breaker = Some(format!("{:?}", d.breaker.state()));
        }
        s.retries = self.retries.clone();
        if self.runs_projections() {
            if let Some(p) = self.pipeline.projections() {
                s.projections = Some(Arc::new(p.clone()));
            }
            s.digests = Some(self.pipeline.digests());
            s.views = Some(self.pipeline.views());
            if let Some(p) = self.pipeline.projections() {
                s.events_by_type = p.events_by_type.clone();
                s.events = p.audit.len() as u64;
            }
        }
        s
    }
}

fn stage_of(p: &mut Pipeline, kind: StageKind) -> &mut dyn Stage {
    match kind {
        StageKind::Market => &mut p.market,
        StageKind::Signals => &mut p.signals,
        StageKind::Portfolio => &mut p.manager,
        StageKind::Projections => &mut p.projections,
        StageKind::Notify => unreachable!("the notify stage is not part of the pipeline"),
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
        assert_eq!(
            StageKind::parse_list("projections, market,signals,market").unwrap(),
            vec![StageKind::Market, StageKind::Signals, StageKind::Projections]
        );
        assert_eq!(StageKind::parse_list("notify").unwrap(), vec![StageKind::Notify]);
        let e = StageKind::parse_list("market,risk").unwrap_err();
        assert!(e.contains("inside `portfolio`"), "{e}");
        let e = StageKind::parse_list("bars").unwrap_err();
        assert!(e.contains("unknown service `bars`"), "{e}");
        assert!(StageKind::parse_list(" , ").is_err());
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
