//! The services of a deployment, wired from a scenario, and the fault-free in-memory run.
//!
//! `Pipeline` holds one processing loop per service. `Stage` lets a driver (this module's
//! in-memory run, the simulator, the Kafka service process) step any of them through the same
//! loop without knowing which service it is.

use crate::bus::{partition_for, BusError, Consumer, Producer, Topic};
use crate::event::{Event, EventType};
use crate::manager::{ManagerConfig, PortfolioManager};
use crate::market::{MarketConfig, MarketService};
use crate::memory::MemoryBus;
use crate::processor::{Processor, Stats, StepOutcome, Unsettled};
use crate::projections::{Digests, ProjectionService, Projections, Views};
use crate::scenario::{Scenario, ScenarioError};
use crate::service::Service;
use crate::signals::{SignalConfig, SignalService};
use crate::strategy::StrategyRegistry;
use crate::topics;

/// A processing loop whose service is hidden: what a driver needs.
pub trait Stage {
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
}

impl<S: Service> Stage for Processor<S> {
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
}

/// The service names accepted by `--services`.
pub const SERVICES: [&str; 4] = [
    crate::market::NAME,
    crate::signals::NAME,
    crate::manager::NAME,
    crate::projections::NAME,
];

pub struct Pipeline {
    pub market: Processor<MarketService>,
    pub signals: Processor<SignalService>,
    pub manager: Processor<PortfolioManager>,
    pub projections: Processor<ProjectionService>,
}

impl Pipeline {
    /// The scenario's services with the shipped strategies. Panics if the scenario names
    /// another (`Scenario::from_toml` has refused such a file already); see `with_registry`.
    pub fn new(s: &Scenario) -> Pipeline {
        Pipeline::with_registry(s, &StrategyRegistry::shipped()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The scenario's services, its strategies looked up in `registry` (the shipped ones and a
    /// user's: `StrategyRegistry::register`).
    pub fn with_registry(s: &Scenario, registry: &StrategyRegistry) -> Result<Pipeline, ScenarioError> {
        Ok(Pipeline {
            market: Processor::new(MarketService::new(MarketConfig::from_scenario(s))),
            signals: Processor::new(SignalService::new(SignalConfig::with_registry(s, registry)?)),
            manager: Processor::new(PortfolioManager::new(ManagerConfig::from_scenario(s))),
            projections: Processor::new(ProjectionService::from_scenario(s)),
        })
    }

    /// The stages in flow order.
    pub fn stages(&mut self) -> [&mut dyn Stage; 4] {
        [&mut self.market, &mut self.signals, &mut self.manager, &mut self.projections]
    }

    /// The stages in flow order, read-only.
    pub fn stages_ref(&self) -> [&dyn Stage; 4] {
        [&self.market, &self.signals, &self.manager, &self.projections]
    }

    /// The projection state (task 0 holds every partition).
    pub fn projections(&self) -> Option<&Projections> {
        projection_state(&self.projections)
    }

    pub fn views(&self) -> Views {
        projection_views(&self.projections)
    }

    pub fn digests(&self) -> Digests {
        projection_digests(&self.projections)
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
        let bus = MemoryBus::new();
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
        loop {
            let mut progress = false;
            let stages = self.pipeline.stages();
            for (stage, consumer) in stages.into_iter().zip(self.consumers.iter_mut()) {
                loop {
                    match stage
                        .step(consumer, &mut self.producer, 4096)
                        .expect("the in-memory bus does not fail")
                    {
                        StepOutcome::Idle => break,
                        StepOutcome::Progress(_) => progress = true,
                        StepOutcome::Retry(e) => unreachable!("in-memory bus refused: {e}"),
                    }
                }
            }
            if !progress {
                break;
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
        let mut buf = Vec::with_capacity(chunk);
        for e in feed {
            buf.push(e);
            if buf.len() == chunk {
                self.feed(&buf);
                buf.clear();
                self.settle();
            }
        }
        self.feed(&buf);
        self.settle();
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
    for (_, st) in p.manager.states() {
        for d in st.desks.values() {
            rate_limited += d.notifier.counters.rate_limited;
            duplicates += d.duplicates_dropped;
        }
    }
    for (_, st) in p.market.states() {
        duplicates += st.counters.duplicates_dropped;
    }
    for (_, st) in p.signals.states() {
        duplicates += st.duplicates_dropped;
    }
    let mut stats = std::collections::BTreeMap::new();
    stats.insert(p.market.service().name(), p.market.stats.clone());
    stats.insert(p.signals.service().name(), p.signals.stats.clone());
    stats.insert(p.manager.service().name(), p.manager.stats.clone());
    stats.insert(p.projections.service().name(), p.projections.stats.clone());
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
        dead_letters: [&p.market.stats, &p.signals.stats, &p.manager.stats, &p.projections.stats]
            .iter()
            .map(|s| s.dead_letters)
            .sum(),
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
    fn every_topic_has_one_owner_that_consumes_it_and_the_replica_dead_letters_only_there() {
        // The stage a topic names as its owner consumes it, and it is the first stage in flow
        // order that does; the read replica owns only what no other stage reads.
        let mut p = Pipeline::new(&scenario());
        let stages: Vec<(&'static str, &'static [Topic])> = p.stages().iter().map(|s| (s.name(), s.inputs())).collect();
        for spec in crate::topics::ALL.iter().filter(|t| t.name != crate::topics::DEADLETTER) {
            let first = stages.iter().find(|(_, inputs)| inputs.contains(&spec.name)).map(|(n, _)| *n);
            assert_eq!(first, Some(spec.owner), "{}", spec.name);
        }
        use crate::service::Service;
        let replica = p.projections.service();
        let owned: Vec<&str> = replica.inputs().iter().copied().filter(|t| replica.dead_letters(t)).collect();
        assert_eq!(owned, [crate::topics::RISK, crate::topics::PORTFOLIO, crate::topics::NOTIFICATIONS]);
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
        let bytes = run.pipeline.projections.snapshot().remove(0).1;
        let header_end = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&bytes[..header_end]).unwrap();
        assert_eq!(v["version"], serde_json::json!(crate::snapshot::SNAPSHOT_VERSION));
        v["version"] = serde_json::json!(3);
        let mut old = serde_json::to_vec(&v).unwrap();
        old.extend_from_slice(&bytes[header_end..]);
        // refused, not misread,
        let err = run.pipeline.projections.offer_snapshot(&old).unwrap_err();
        assert!(err.contains("version 3"), "{err}");
        // and the stage, recovering without it, rebuilds the same state from the log.
        crash_and_recover(&mut run, &vec![Vec::new(); 4]);
        run.settle();
        assert_eq!(run.pipeline.projections.stats.snapshots_used, 0);
        assert!(run.pipeline.projections.stats.restored_records > 0);
        assert_eq!(run.pipeline.digests(), reference);
        assert_eq!(run.pipeline.projections.snapshot().remove(0).1, bytes);
    }

    #[test]
    fn a_snapshot_of_another_service_or_version_is_refused() {
        let s = scenario();
        let mut run = MemoryRun::run(
            &s,
            MarketGenerator::new(&s, s.seed).unwrap().take(2000).map(crate::feed::trade_event),
            500,
        );
        let market_snap = run.pipeline.market.snapshot();
        let err = run.pipeline.signals.offer_snapshot(&market_snap[0].1).unwrap_err();
        assert!(err.contains("`market`"), "{err}");
        let bytes = &market_snap[0].1;
        let header_end = bytes.iter().position(|b| *b == b'\n').unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&bytes[..header_end]).unwrap();
        v["version"] = serde_json::json!(99);
        let mut forged = serde_json::to_vec(&v).unwrap();
        forged.extend_from_slice(&bytes[header_end..]);
        let err = run.pipeline.market.offer_snapshot(&forged).unwrap_err();
        assert!(err.contains("99"), "{err}");
    }
}
