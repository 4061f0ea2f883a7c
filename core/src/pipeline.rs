//! A topology's stages built for a scenario, and the fault-free in-memory run.
//!
//! `Pipeline` holds one processing loop per stage of a `Topology`, in flow order. `Stage` lets a
//! driver (this module's in-memory run, the simulator, the Kafka service process) step any of
//! them through the same loop without knowing which service it is; `ReadReplica` is what a read
//! replica shows of its read models.

use crate::bus::{partition_for, BusError, Consumer, Producer, Topic};
use crate::event::{Event, EventType};
use crate::manager::PortfolioManager;
use crate::market::MarketService;
use crate::memory::MemoryBus;
use crate::processor::{Processor, Stats, StepOutcome, Unsettled};
use crate::projections::{Digests, ProjectionService, Projections, Views};
use crate::scenario::{Scenario, ScenarioError};
use crate::service::{ReadModel, Service, Tally};
use crate::signals::SignalService;
use crate::strategy::StrategyRegistry;
use crate::topics;
use crate::topology::Topology;
use std::any::Any;

/// A processing loop whose service is hidden: what a driver needs. `Send`: the Kafka service
/// process runs each stage on a thread of its own.
pub trait Stage: Send {
    fn name(&self) -> &'static str;
    fn inputs(&self) -> &'static [Topic];
    fn step(&mut self, consumer: &mut dyn Consumer, producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError>;
    /// Loses all in-memory state, as a crashed process does.
    fn crash(&mut self);
    /// Snapshots of its tasks (see `Processor::snapshot`); none by default.
    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        Vec::new()
    }
    /// Offers a snapshot for the next restore of its task (see `Processor::offer_snapshot`).
    fn offer_snapshot(&mut self, _bytes: &[u8]) -> Result<u32, String> {
        Err(format!("`{}` does not restore from snapshots", self.name()))
    }
    fn stats(&self) -> &Stats;
    /// What it holds that is not acknowledged or committed yet; nothing by default.
    fn unsettled(&self) -> Unsettled {
        Unsettled::default()
    }
    /// The processing loop itself, for typed access (`Pipeline::processor`); a wrapper forwards
    /// its inner stage's.
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
    /// What a read replica shows of its read models; `None` for a working stage.
    fn read_replica(&self) -> Option<&dyn ReadReplica> {
        None
    }
}

impl<S: Service + 'static> Stage for Processor<S> {
    fn name(&self) -> &'static str {
        self.service().name()
    }
    fn inputs(&self) -> &'static [Topic] {
        self.service().inputs()
    }
    fn step(&mut self, consumer: &mut dyn Consumer, producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError> {
        Processor::step(self, consumer, producer, max_records)
    }
    fn crash(&mut self) {
        Processor::crash(self)
    }
    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        Processor::snapshot(self)
    }
    fn offer_snapshot(&mut self, bytes: &[u8]) -> Result<u32, String> {
        Processor::offer_snapshot(self, bytes)
    }
    fn stats(&self) -> &Stats {
        &self.stats
    }
    fn unsettled(&self) -> Unsettled {
        Processor::unsettled(self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

/// A read replica's read models, as the simulator's invariants see them: digests to compare
/// across replicas, the reference run and a rebuild; what it applied, to compare with the log.
pub trait ReadReplica {
    /// Digests by part, over every task (one task: its digests; none: an empty state's).
    fn read_digests(&self) -> Vec<(&'static str, String)>;
    /// Whether any task applied the event with this id.
    fn has_applied(&self, event_id: &str) -> bool;
    /// Every task's tallies.
    fn tallies(&self) -> Vec<Tally>;
    /// Whether it holds any task yet.
    fn holds_state(&self) -> bool;
    /// Whether another replica of the same read model holds equal state (its digests are then
    /// equal too, and need not be computed again).
    fn same_state(&self, other: &dyn ReadReplica) -> bool;
    fn as_any(&self) -> &dyn Any;
}

/// A processing loop of a read model: a `Stage` that is also a `ReadReplica`.
pub struct Replica<S: ReadModel>(pub Processor<S>);

impl<S: ReadModel + 'static> Stage for Replica<S> {
    fn name(&self) -> &'static str {
        self.0.service().name()
    }
    fn inputs(&self) -> &'static [Topic] {
        self.0.service().inputs()
    }
    fn step(&mut self, consumer: &mut dyn Consumer, producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError> {
        self.0.step(consumer, producer, max_records)
    }
    fn crash(&mut self) {
        self.0.crash()
    }
    fn snapshot(&self) -> Vec<(u32, Vec<u8>)> {
        self.0.snapshot()
    }
    fn offer_snapshot(&mut self, bytes: &[u8]) -> Result<u32, String> {
        self.0.offer_snapshot(bytes)
    }
    fn stats(&self) -> &Stats {
        &self.0.stats
    }
    fn unsettled(&self) -> Unsettled {
        self.0.unsettled()
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(&self.0)
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(&mut self.0)
    }
    fn read_replica(&self) -> Option<&dyn ReadReplica> {
        Some(self)
    }
}

impl<S: ReadModel + 'static> ReadReplica for Replica<S> {
    fn read_digests(&self) -> Vec<(&'static str, String)> {
        let service = self.0.service();
        let tasks: Vec<Vec<(&'static str, String)>> = self.0.states().map(|(_, st)| service.digests(st)).collect();
        match tasks.len() {
            0 => service.digests(&S::State::default()),
            1 => tasks.into_iter().next().expect("one"),
            _ => {
                // Part by part, over the tasks in task order.
                let mut parts: Vec<(&'static str, blake3::Hasher)> = Vec::new();
                for task in &tasks {
                    for (part, d) in task {
                        match parts.iter_mut().find(|(p, _)| p == part) {
                            Some((_, h)) => {
                                h.update(d.as_bytes());
                            }
                            None => {
                                let mut h = blake3::Hasher::new();
                                h.update(d.as_bytes());
                                parts.push((part, h));
                            }
                        }
                    }
                }
                parts.into_iter().map(|(p, h)| (p, h.finalize().to_hex().to_string())).collect()
            }
        }
    }
    fn has_applied(&self, event_id: &str) -> bool {
        self.0.states().any(|(_, st)| self.0.service().applied(st, event_id))
    }
    fn tallies(&self) -> Vec<Tally> {
        self.0.states().flat_map(|(_, st)| self.0.service().tallies(st)).collect()
    }
    fn holds_state(&self) -> bool {
        self.0.states().next().is_some()
    }
    fn same_state(&self, other: &dyn ReadReplica) -> bool {
        other.as_any().downcast_ref::<Processor<S>>().is_some_and(|o| {
            let service = self.0.service();
            let (mut a, mut b) = (self.0.states(), o.states());
            loop {
                match (a.next(), b.next()) {
                    (None, None) => return true,
                    (Some((i, x)), Some((j, y))) if i == j && service.same_state(x, y) => {}
                    _ => return false,
                }
            }
        })
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
}

/// The stage names of a topology, in flow order: what `horizon run --services` accepts.
pub fn service_names(topology: &Topology) -> Vec<&'static str> {
    topology.stages().iter().map(|s| s.name).collect()
}

/// Every read replica's digests, by "stage.part", and one digest over all of them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReadDigests {
    pub parts: Vec<(String, String)>,
    pub all: String,
}

impl ReadDigests {
    /// The digests of the read replicas among `stages`.
    pub fn of<'a>(stages: impl IntoIterator<Item = &'a dyn Stage>) -> ReadDigests {
        let mut parts = Vec::new();
        for st in stages {
            if let Some(r) = st.read_replica() {
                parts.extend(r.read_digests().into_iter().map(|(p, d)| (format!("{}.{p}", st.name()), d)));
            }
        }
        ReadDigests::from_parts(parts)
    }

    pub fn from_parts(parts: Vec<(String, String)>) -> ReadDigests {
        let mut h = blake3::Hasher::new();
        for (p, d) in &parts {
            h.update(p.as_bytes());
            h.update(b"=");
            h.update(d.as_bytes());
            h.update(b"\n");
        }
        ReadDigests {
            all: h.finalize().to_hex().to_string(),
            parts,
        }
    }

    /// The parts whose digests differ (every part of either side that the other lacks too).
    pub fn differing(&self, other: &ReadDigests) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (p, d) in &self.parts {
            if other.parts.iter().find(|(q, _)| q == p).map(|(_, e)| e) != Some(d) {
                v.push(p.clone());
            }
        }
        for (q, _) in &other.parts {
            if !self.parts.iter().any(|(p, _)| p == q) {
                v.push(q.clone());
            }
        }
        v
    }
}

/// A topology's stages built for one scenario, in flow order.
pub struct Pipeline {
    topology: Topology,
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    /// The shipped topology for the scenario. Panics if the scenario names a strategy the
    /// shipped registry lacks (`Scenario::from_toml` has refused such a file already); see
    /// `with_registry` and `from_topology`.
    pub fn new(s: &Scenario) -> Pipeline {
        Pipeline::from_topology(&Topology::shipped(), s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The shipped topology, its strategies looked up in `registry`.
    pub fn with_registry(s: &Scenario, registry: &StrategyRegistry) -> Result<Pipeline, ScenarioError> {
        Pipeline::from_topology(&Topology::shipped_with(registry.clone()), s)
    }

    /// Any topology's stages for the scenario.
    pub fn from_topology(topology: &Topology, s: &Scenario) -> Result<Pipeline, ScenarioError> {
        Ok(Pipeline {
            stages: topology.build(s)?,
            topology: topology.clone(),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The stages in flow order.
    pub fn stages(&mut self) -> Vec<&mut dyn Stage> {
        self.stages.iter_mut().map(|s| s.as_mut() as &mut dyn Stage).collect()
    }

    /// The stages in flow order, read-only.
    pub fn stages_ref(&self) -> Vec<&dyn Stage> {
        self.stages.iter().map(|s| s.as_ref()).collect()
    }

    /// Takes the stages out, in flow order (a driver that runs each on a thread of its own).
    pub fn into_stages(self) -> Vec<Box<dyn Stage>> {
        self.stages
    }

    pub fn stage(&self, name: &str) -> Option<&dyn Stage> {
        self.stages.iter().find(|s| s.name() == name).map(|s| s.as_ref())
    }

    pub fn stage_mut(&mut self, name: &str) -> Option<&mut dyn Stage> {
        self.stages
            .iter_mut()
            .find(|s| s.name() == name)
            .map(|s| s.as_mut() as &mut dyn Stage)
    }

    /// The first stage whose processing loop runs service `S`.
    pub fn processor<S: Service + 'static>(&self) -> Option<&Processor<S>> {
        self.stages.iter().find_map(|s| s.as_any()?.downcast_ref::<Processor<S>>())
    }

    pub fn processor_mut<S: Service + 'static>(&mut self) -> Option<&mut Processor<S>> {
        self.stages.iter_mut().find_map(|s| s.as_any_mut()?.downcast_mut::<Processor<S>>())
    }

    /// The shipped projections' processor, if the topology has it.
    pub fn projection_processor(&self) -> Option<&Processor<ProjectionService>> {
        self.processor::<ProjectionService>()
    }

    /// The projection state (task 0 holds every partition).
    pub fn projections(&self) -> Option<&Projections> {
        self.projection_processor().and_then(projection_state)
    }

    /// The shipped projections' views (empty ones if the topology has no such replica).
    pub fn views(&self) -> Views {
        match self.projection_processor() {
            Some(p) => projection_views(p),
            None => Views::default(),
        }
    }

    /// The shipped projections' digests; panics if the topology has no such replica.
    pub fn digests(&self) -> Digests {
        projection_digests(self.projection_processor().expect("the topology has the shipped projections"))
    }

    /// Every read replica's digests.
    pub fn read_digests(&self) -> ReadDigests {
        ReadDigests::of(self.stages_ref())
    }
}

/// A projections processor's state (task 0 holds every partition), none before its first
/// assignment.
pub fn projection_state(p: &Processor<ProjectionService>) -> Option<&Projections> {
    p.states().next().map(|(_, s)| s)
}

pub fn projection_views(p: &Processor<ProjectionService>) -> Views {
    let empty = Projections::default();
    p.service().views(projection_state(p).unwrap_or(&empty))
}

pub fn projection_digests(p: &Processor<ProjectionService>) -> Digests {
    let empty = Projections::default();
    p.service().digests(projection_state(p).unwrap_or(&empty))
}

/// Publishes feed events onto `market.feed`, keyed by symbol (the aggregate id).
pub fn publish_feed<P: Producer + ?Sized>(producer: &mut P, events: &[Event]) -> Result<(), BusError> {
    let parts = topics::partitions(topics::MARKET_FEED);
    for e in events {
        let key = e.aggregate_id.as_bytes();
        producer.send(topics::MARKET_FEED, partition_for(key, parts), key, &e.encode())?;
    }
    producer.flush()
}

/// What a run produced.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub scenario: String,
    pub seed: u64,
    pub feed_events: u64,
    pub events_by_type: std::collections::BTreeMap<EventType, u64>,
    pub signals_changed: u64,
    pub rebalances: u64,
    pub risk_entered: u64,
    pub risk_cleared: u64,
    pub notifications: u64,
    pub notifications_rate_limited: u64,
    pub dead_letters: u64,
    pub duplicates_dropped: u64,
    pub portfolio: Option<crate::projections::PortfolioView>,
    pub digests: Digests,
    pub stats: std::collections::BTreeMap<&'static str, Stats>,
}

/// A fault-free run on the in-memory bus: feed `chunk` events, let every stage catch up, repeat.
pub struct MemoryRun {
    pub bus: MemoryBus,
    pub pipeline: Pipeline,
    consumers: Vec<crate::memory::MemoryConsumer>,
    producer: crate::memory::MemoryProducer,
    pub feed_events: u64,
}

impl MemoryRun {
    pub fn new(s: &Scenario) -> MemoryRun {
        MemoryRun::with_pipeline(Pipeline::new(s))
    }

    /// A run of a pipeline built by the caller (`Pipeline::with_registry`).
    pub fn with_pipeline(mut pipeline: Pipeline) -> MemoryRun {
        let bus = MemoryBus::with_topics(pipeline.topology().topics());
        let consumers = pipeline
            .stages()
            .iter()
            .map(|st| bus.consumer(st.name(), "member-0", st.inputs()))
            .collect();
        let producer = bus.producer();
        MemoryRun {
            bus,
            pipeline,
            consumers,
            producer,
            feed_events: 0,
        }
    }

    pub fn feed(&mut self, events: &[Event]) {
        self.feed_events += events.len() as u64;
        publish_feed(&mut self.producer, events).expect("the in-memory bus does not fail");
    }

    /// Steps every stage until none has anything left to do.
    pub fn settle(&mut self) {
        self.try_settle().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `settle`, an error from a stage's loop returned (a stage that publishes to a topic it
    /// does not declare, say) naming the stage.
    pub fn try_settle(&mut self) -> Result<(), String> {
        loop {
            let mut progress = false;
            let stages = self.pipeline.stages();
            for (stage, consumer) in stages.into_iter().zip(self.consumers.iter_mut()) {
                loop {
                    match stage.step(consumer, &mut self.producer, 4096) {
                        Ok(StepOutcome::Idle) => break,
                        Ok(StepOutcome::Progress(_)) => progress = true,
                        Ok(StepOutcome::Retry(e)) | Err(e) => return Err(format!("stage `{}`: {e}", stage.name())),
                    }
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Runs a whole feed through the scenario's pipeline.
    pub fn run<I: IntoIterator<Item = Event>>(s: &Scenario, feed: I, chunk: usize) -> MemoryRun {
        let mut run = MemoryRun::new(s);
        run.feed_all(feed, chunk);
        run
    }

    /// Feeds `chunk` events at a time, settling after each, then the rest.
    pub fn feed_all<I: IntoIterator<Item = Event>>(&mut self, feed: I, chunk: usize) {
        self.try_feed_all(feed, chunk).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `feed_all`, a stage's error returned (see `try_settle`).
    pub fn try_feed_all<I: IntoIterator<Item = Event>>(&mut self, feed: I, chunk: usize) -> Result<(), String> {
        let mut buf = Vec::with_capacity(chunk);
        for e in feed {
            buf.push(e);
            if buf.len() == chunk {
                self.feed(&buf);
                buf.clear();
                self.try_settle()?;
            }
        }
        self.feed(&buf);
        self.try_settle()
    }

    pub fn summary(&self, s: &Scenario, seed: u64) -> RunSummary {
        summarize(s, seed, self.feed_events, &self.pipeline)
    }
}

pub fn summarize(s: &Scenario, seed: u64, feed_events: u64, p: &Pipeline) -> RunSummary {
    let empty = Projections::default();
    let proj = p.projections().unwrap_or(&empty);
    let views = p.views();
    let risk = views.risk.get(&s.portfolio.id);
    let (mut rate_limited, mut duplicates) = (0, 0);
    for (_, st) in p.processor::<PortfolioManager>().into_iter().flat_map(|m| m.states()) {
        for d in st.desks.values() {
            rate_limited += d.notifier.counters.rate_limited;
            duplicates += d.duplicates_dropped;
        }
    }
    for (_, st) in p.processor::<MarketService>().into_iter().flat_map(|m| m.states()) {
        duplicates += st.counters.duplicates_dropped;
    }
    for (_, st) in p.processor::<SignalService>().into_iter().flat_map(|m| m.states()) {
        duplicates += st.duplicates_dropped;
    }
    let stats: std::collections::BTreeMap<&'static str, Stats> = p.stages_ref().iter().map(|st| (st.name(), st.stats().clone())).collect();
    RunSummary {
        scenario: s.name.clone(),
        seed,
        feed_events,
        events_by_type: proj.events_by_type.clone(),
        signals_changed: proj
            .portfolios
            .values()
            .map(|l| l.signals_changed.values().map(|m| m.len() as u64).sum::<u64>())
            .sum(),
        rebalances: proj.portfolios.values().map(|l| l.rebalances.len() as u64).sum(),
        risk_entered: risk.map(|r| r.entered).unwrap_or(0),
        risk_cleared: risk.map(|r| r.cleared).unwrap_or(0),
        notifications: proj.notifications.values().map(|n| n.len() as u64).sum(),
        notifications_rate_limited: rate_limited,
        dead_letters: stats.values().map(|s| s.dead_letters).sum(),
        duplicates_dropped: duplicates,
        portfolio: views.portfolios.get(&s.portfolio.id).cloned(),
        digests: p.digests(),
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::MarketGenerator;

    fn scenario() -> Scenario {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/flash-crash.toml");
        Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap()
    }

    /// Crashes every stage, offers it `snapshots`, and has it rejoin its group so its tasks
    /// are restored the way a restarted process restores them.
    fn crash_and_recover(run: &mut MemoryRun, snapshots: &[Vec<(u32, Vec<u8>)>]) {
        let names: Vec<(&'static str, &'static [Topic])> = run.pipeline.stages().iter().map(|s| (s.name(), s.inputs())).collect();
        for (i, stage) in run.pipeline.stages().into_iter().enumerate() {
            stage.crash();
            for (_, bytes) in &snapshots[i] {
                stage.offer_snapshot(bytes).unwrap();
            }
        }
        for (i, (name, inputs)) in names.into_iter().enumerate() {
            run.bus.broker_mut().leave(name, "member-0");
            run.consumers[i] = run.bus.consumer(name, "member-0", inputs);
        }
    }

    #[test]
    fn every_topic_is_owned_by_the_first_stage_that_consumes_it_and_produced_where_the_stages_say() {
        let t = Topology::shipped();
        t.validate().unwrap();
        let owners: Vec<(&str, Option<&str>, Vec<&str>)> =
            t.topics().iter().map(|s| (s.name, t.owner(s.name), t.producers(s.name))).collect();
        assert_eq!(
            owners,
            [
                (topics::MARKET_FEED, Some("market"), vec![]),
                (topics::BARS, Some("signals"), vec!["market"]),
                (topics::SIGNALS, Some("portfolio"), vec!["signals"]),
                (topics::RISK, Some("projections"), vec!["portfolio"]),
                (topics::PORTFOLIO, Some("projections"), vec!["portfolio"]),
                (topics::NOTIFICATIONS, Some("projections"), vec!["portfolio"]),
                (topics::DEADLETTER, None, vec![]),
            ]
        );
        assert_eq!(t.sources(), [topics::MARKET_FEED]);
        let replicas: Vec<&str> = t.stages().iter().filter(|s| s.replica).map(|s| s.name).collect();
        assert_eq!(replicas, ["projections"]);
    }

    #[test]
    fn the_projections_replica_dead_letters_only_the_topics_it_owns() {
        // Given a record that does not decode on a topic the market owns and one on a topic the
        // projections own, read by the shipped projections stage alone
        let t = Topology::shipped();
        let mut replica = t.build_stage(t.stage_spec("projections").unwrap(), &scenario()).unwrap();
        let bus = MemoryBus::new();
        let mut producer = bus.producer();
        producer.send(topics::MARKET_FEED, 0, b"k", b"not protobuf").unwrap();
        producer.send(topics::RISK, 0, b"k", b"not protobuf").unwrap();
        let mut consumer = bus.consumer("projections", "a", replica.inputs());
        while replica.step(&mut consumer, &mut producer, 100).unwrap() != StepOutcome::Idle {}
        // Then it dead-letters the risk record only, and counts the other
        assert_eq!(replica.stats().dead_letters, 1);
        assert_eq!(replica.stats().undecodable_skipped, 1);
    }

    #[test]
    fn a_topology_that_uses_an_undeclared_topic_or_has_no_replica_is_refused_naming_it() {
        let no_topic = Topology::shipped().stage(crate::topology::StageSpec::service("echo", &["nowhere"], &[], |s| {
            Ok(MarketService::new(crate::market::MarketConfig::from_scenario(s)))
        }));
        let e = no_topic.validate().unwrap_err().to_string();
        assert!(e.contains("`echo`") && e.contains("`nowhere`"), "{e}");
        let mut only_market = Topology::empty("bare");
        for spec in Topology::shipped().topics() {
            only_market = only_market.topic(*spec);
        }
        let only_market = only_market.stage(Topology::shipped().stage_spec("market").unwrap().clone());
        assert!(only_market.validate().unwrap_err().to_string().contains("no read replica"));
        // and a stage whose service is not what it declares is refused when it is built
        let liar = Topology::shipped().map_stage("signals", |_| {
            crate::topology::StageSpec::service("signals", crate::signals::INPUTS, &[topics::SIGNALS], |s| {
                Ok(MarketService::new(crate::market::MarketConfig::from_scenario(s)))
            })
        });
        let e = Pipeline::from_topology(&liar, &scenario()).err().unwrap().to_string();
        assert!(e.contains("built a service `market`"), "{e}");
    }

    #[test]
    fn snapshot_plus_tail_recovers_exactly_what_a_full_replay_does() {
        let s = scenario();
        let events: Vec<Event> = MarketGenerator::new(&s, s.seed).unwrap().map(crate::feed::trade_event).collect();
        let reference = MemoryRun::run(&s, events.clone(), 4096).pipeline.digests();
        let (a, b) = (events.len() / 2, events.len() * 3 / 4);

        // Given a run that snapshotted half-way and went on,
        let mut with_snapshots = MemoryRun::new(&s);
        with_snapshots.feed(&events[..a]);
        with_snapshots.settle();
        let snaps: Vec<_> = with_snapshots.pipeline.stages().iter().map(|st| st.snapshot()).collect();
        assert!(snaps.iter().all(|s| !s.is_empty()), "every stage snapshots");
        with_snapshots.feed(&events[a..b]);
        with_snapshots.settle();
        // and one that did not,
        let mut replay_only = MemoryRun::new(&s);
        replay_only.feed(&events[..b]);
        replay_only.settle();

        // when both crash and recover (from snapshot + tail, and from a full replay),
        crash_and_recover(&mut with_snapshots, &snaps);
        crash_and_recover(&mut replay_only, &vec![Vec::new(); 4]);
        with_snapshots.settle();
        replay_only.settle();

        // then their recovered states are identical, and so is everything after.
        let states = |r: &MemoryRun| -> Vec<Vec<u8>> {
            r.pipeline
                .stages_ref()
                .iter()
                .flat_map(|st| st.snapshot().into_iter().map(|(_, b)| b))
                .collect()
        };
        assert_eq!(states(&with_snapshots), states(&replay_only));
        let used: u64 = with_snapshots
            .pipeline
            .stages_ref()
            .iter()
            .map(|st| st.stats().snapshots_used)
            .sum();
        assert_eq!(
            used,
            snaps.iter().map(|s| s.len() as u64).sum::<u64>(),
            "every task restored from its snapshot"
        );
        for r in [&mut with_snapshots, &mut replay_only] {
            r.feed(&events[b..]);
            r.settle();
            assert_eq!(r.pipeline.digests(), reference);
        }
        let replayed = |r: &MemoryRun| -> u64 { r.pipeline.stages_ref().iter().map(|st| st.stats().restored_records).sum() };
        assert!(
            replayed(&with_snapshots) < replayed(&replay_only) / 2,
            "{} vs {}",
            replayed(&with_snapshots),
            replayed(&replay_only)
        );
    }

    #[test]
    fn a_projections_snapshot_of_the_previous_version_is_refused_and_rebuilt_by_replay() {
        let s = scenario();
        let events: Vec<Event> = MarketGenerator::new(&s, s.seed)
            .unwrap()
            .take(3000)
            .map(crate::feed::trade_event)
            .collect();
        let reference = MemoryRun::run(&s, events.clone(), 500).pipeline.digests();
        let mut run = MemoryRun::new(&s);
        run.feed(&events);
        run.settle();
        // A snapshot as the previous version (3, before the audit trail's columns) labelled it:
        let bytes = run.pipeline.stage("projections").unwrap().snapshot().remove(0).1;
        let header_end = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&bytes[..header_end]).unwrap();
        assert_eq!(v["version"], serde_json::json!(crate::snapshot::SNAPSHOT_VERSION));
        v["version"] = serde_json::json!(3);
        let mut old = serde_json::to_vec(&v).unwrap();
        old.extend_from_slice(&bytes[header_end..]);
        // refused, not misread,
        let err = run.pipeline.stage_mut("projections").unwrap().offer_snapshot(&old).unwrap_err();
        assert!(err.contains("version 3"), "{err}");
        // and the stage, recovering without it, rebuilds the same state from the log.
        crash_and_recover(&mut run, &vec![Vec::new(); 4]);
        run.settle();
        assert_eq!(run.pipeline.stage("projections").unwrap().stats().snapshots_used, 0);
        assert!(run.pipeline.stage("projections").unwrap().stats().restored_records > 0);
        assert_eq!(run.pipeline.digests(), reference);
        assert_eq!(run.pipeline.stage("projections").unwrap().snapshot().remove(0).1, bytes);
    }

    #[test]
    fn a_snapshot_of_another_service_or_version_is_refused() {
        let s = scenario();
        let mut run = MemoryRun::run(
            &s,
            MarketGenerator::new(&s, s.seed).unwrap().take(2000).map(crate::feed::trade_event),
            500,
        );
        let market_snap = run.pipeline.stage("market").unwrap().snapshot();
        let err = run
            .pipeline
            .stage_mut("signals")
            .unwrap()
            .offer_snapshot(&market_snap[0].1)
            .unwrap_err();
        assert!(err.contains("`market`"), "{err}");
        let bytes = &market_snap[0].1;
        let header_end = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&bytes[..header_end]).unwrap();
        v["version"] = serde_json::json!(99);
        let mut forged = serde_json::to_vec(&v).unwrap();
        forged.extend_from_slice(&bytes[header_end..]);
        let err = run.pipeline.stage_mut("market").unwrap().offer_snapshot(&forged).unwrap_err();
        assert!(err.contains("99"), "{err}");
    }
}
