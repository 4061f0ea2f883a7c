//! One checked run: scenario + topology + profile + seed → feed, schedule, simulated run,
//! fault-free reference, invariants.
//!
//! The seed decides the market (unless `Case::feed_seed` pins it, or the market is a recording,
//! `Case::recorded`), the schedule (through the profile's strategies), the delivery skews and
//! jitter and every other random choice of the run. `Runner` keeps the last feed and
//! references, so exploring many seeds over one market, or shrinking one seed's schedule, does
//! not regenerate them.

use crate::driver::{simulate, RunSpec};
use crate::feed::Feed;
use crate::invariants::{check, Invariant, Violation};
use crate::profile::FaultProfile;
use crate::schedule::{Bounds, Schedule, ScheduleTree};
use crate::trace::first_difference;
use crate::world::{Counters, Layout};
use horizon_core::event::Event;
use horizon_core::pipeline::{projection_views, MemoryRun, Pipeline, ReadDigests};
use horizon_core::processor::{Processor, Stats};
use horizon_core::projections::{ProjectionService, Views};
use horizon_core::scenario::Scenario;
use horizon_core::topology::Topology;
use proptest::strategy::ValueTree;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Trades per run unless told otherwise: a few minutes of a shipped scenario's market, enough
/// for every stage to work and for faults to land in the middle of it, small enough for tens of
/// thousands of seeds a minute. `--events` changes it; `--events 0` runs the whole scenario.
pub const DEFAULT_EVENTS: usize = 1000;

/// Chunk of the fault-free reference run (as `horizon sim` uses).
const REFERENCE_CHUNK: usize = 8192;

/// What to explore.
#[derive(Clone, Debug)]
pub struct Case {
    pub scenario: Scenario,
    /// What every process runs: the shipped topology, a user's, or a broken one.
    pub topology: Arc<Topology>,
    /// As given: a swarm profile is resolved per seed.
    pub profile: FaultProfile,
    /// Trades taken from the generator; `None` for all of them.
    pub events: Option<usize>,
    /// Pins the market to one seed; `None`: every run's seed is its market's seed too.
    pub feed_seed: Option<u64>,
    /// A recorded market: the window of a recording every seed replays (read at the edge,
    /// `Feed::recorded`), instead of the scenario's generator; `events` and `feed_seed` do not
    /// apply to it.
    pub recorded: Option<Arc<Feed>>,
}

impl Case {
    /// A case of the shipped topology; `with_topology` for another.
    pub fn new(scenario: Scenario, profile: FaultProfile) -> Case {
        Case {
            scenario,
            topology: Arc::new(Topology::shipped()),
            profile,
            events: Some(DEFAULT_EVENTS),
            feed_seed: None,
            recorded: None,
        }
    }

    /// A case of any topology (a user's: the shipped one plus their stages).
    pub fn with_topology(scenario: Scenario, topology: Topology, profile: FaultProfile) -> Case {
        Case {
            topology: Arc::new(topology),
            ..Case::new(scenario, profile)
        }
    }
}

/// A finished, checked run.
pub struct Outcome {
    pub seed: u64,
    pub feed_seed: u64,
    /// The concrete profile (a swarm profile's draw for this seed).
    pub profile: FaultProfile,
    pub schedule: Schedule,
    pub trace_digest: String,
    pub trace_entries: u64,
    pub violations: Vec<Violation>,
    /// The readable trace, when asked for.
    pub lines: Vec<String>,
    pub reference: ReadDigests,
    pub replicas: Vec<(usize, ReadDigests)>,
    /// Each process's shipped projections' views, when the runner keeps them.
    pub views: Vec<(usize, Views)>,
    pub counters: Counters,
    pub stats: BTreeMap<&'static str, Stats>,
    pub feed_events: usize,
    pub virtual_ns: u64,
    pub heal_ns: u64,
    pub events: u64,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    pub fn violates(&self, inv: Invariant) -> bool {
        self.violations.iter().any(|v| v.invariant == inv)
    }
}

pub struct Runner {
    pub case: Case,
    /// Keep every replica's read models in the outcome (`Outcome::views`).
    pub keep_views: bool,
    feed: Option<(u64, Feed)>,
    references: BTreeMap<(u64, String), ReadDigests>,
}

impl Runner {
    pub fn new(case: Case) -> Runner {
        Runner {
            case,
            keep_views: false,
            feed: None,
            references: BTreeMap::new(),
        }
    }

    pub fn feed_seed(&self, seed: u64) -> u64 {
        self.case.feed_seed.unwrap_or(seed)
    }

    fn base_feed(&mut self, feed_seed: u64) -> Result<&Feed, String> {
        if self.case.recorded.is_some() {
            return Ok(self.case.recorded.as_deref().expect("just checked"));
        }
        if self.feed.as_ref().is_none_or(|(s, _)| *s != feed_seed) {
            let f = Feed::generate(&self.case.scenario, feed_seed, self.case.events)?;
            self.feed = Some((feed_seed, f));
        }
        Ok(&self.feed.as_ref().expect("just set").1)
    }

    /// Refuses a case that no seed can run (no market the simulator can replay, a feed without
    /// events), once, before any seed: such a case is the user's to fix, not an invariant every
    /// seed breaks.
    pub fn preflight(&mut self, seed: u64) -> Result<(), String> {
        let name = self.case.scenario.name.clone();
        Pipeline::from_topology(&self.case.topology, &self.case.scenario).map_err(|e| e.to_string())?;
        let feed = self.base_feed(self.feed_seed(seed))?;
        if feed.items.is_empty() {
            return Err(format!("{name}: the market feed holds no events: nothing to run"));
        }
        Ok(())
    }

    /// What a seed's schedule may draw from under a concrete profile.
    pub fn bounds(&mut self, seed: u64, profile: &FaultProfile) -> Result<Bounds, String> {
        let symbols = self.case.scenario.symbols().len() as u32;
        let span_ms = self.base_feed(self.feed_seed(seed))?.span_ms();
        let (stages, producing) = Bounds::stages_of(&self.case.topology);
        Ok(Bounds {
            span_ms,
            processes: profile.processes,
            symbols,
            partitions: Layout::new(self.case.topology.topics()).len() as u32,
            stages,
            producing,
        })
    }

    /// The concrete profile and the schedule tree a seed draws.
    pub fn schedule_tree(&mut self, seed: u64) -> Result<(FaultProfile, ScheduleTree), String> {
        let profile = self.case.profile.for_seed(seed);
        let bounds = self.bounds(seed, &profile)?;
        let tree = ScheduleTree::new(&profile, &bounds, seed);
        Ok((profile, tree))
    }

    /// Runs the seed's own schedule.
    pub fn run_seed(&mut self, seed: u64, render: bool) -> Result<Outcome, String> {
        let (profile, tree) = self.schedule_tree(seed)?;
        self.run_schedule(seed, &profile, &tree.current(), render)
    }

    /// Runs a given schedule with the seed's other random choices.
    pub fn run_schedule(&mut self, seed: u64, profile: &FaultProfile, schedule: &Schedule, render: bool) -> Result<Outcome, String> {
        let feed_seed = self.feed_seed(seed);
        let symbols = self.case.scenario.symbols();
        let feed = self.base_feed(feed_seed)?.with_faults(&schedule.feed_faults(), &symbols);
        // A recording is one market whatever the seed: its references are shared by every seed.
        let key = (
            if self.case.recorded.is_some() { 0 } else { feed_seed },
            serde_json::to_string(&schedule.feed_faults()).map_err(|e| e.to_string())?,
        );
        let reference = match self.references.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = reference(&self.case.scenario, &self.case.topology, feed.events())?;
                if self.references.len() >= 64 {
                    self.references.clear();
                }
                self.references.insert(key, d.clone());
                d
            }
        };
        let spec = RunSpec {
            scenario: &self.case.scenario,
            topology: &self.case.topology,
            profile,
            schedule,
            feed: &feed,
            seed,
            render,
        };
        let mut finished = simulate(&spec);
        let (violations, replicas) = check(&mut finished, &self.case.scenario, &self.case.topology, &reference);
        let views = if self.keep_views {
            finished
                .replicas
                .iter()
                .filter_map(|(p, rs)| {
                    let proj = rs.iter().find_map(|r| r.as_any()?.downcast_ref::<Processor<ProjectionService>>())?;
                    Some((*p, projection_views(proj)))
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Outcome {
            seed,
            feed_seed,
            profile: profile.clone(),
            schedule: schedule.clone(),
            trace_digest: finished.trace_digest.clone(),
            trace_entries: finished.trace_entries,
            violations,
            lines: std::mem::take(&mut finished.lines),
            reference,
            replicas,
            views,
            counters: finished.counters.clone(),
            stats: finished.stats.clone(),
            feed_events: feed.items.len(),
            virtual_ns: finished.virtual_ns,
            heal_ns: finished.heal_ns,
            events: finished.events,
        })
    }

    /// Runs the seed twice; a second trace digest that differs is a `non-deterministic`
    /// violation naming the first step where the two runs part (found by rendering both).
    pub fn run_twice(&mut self, seed: u64, profile: &FaultProfile, schedule: &Schedule) -> Result<Outcome, String> {
        self.run_twice_explained(seed, profile, schedule, true)
    }

    /// `run_twice`; without `explain` a difference is reported without rendering both runs to
    /// find where they part (for shrinking, where only the verdict matters).
    pub fn run_twice_explained(
        &mut self,
        seed: u64,
        profile: &FaultProfile,
        schedule: &Schedule,
        explain: bool,
    ) -> Result<Outcome, String> {
        let mut first = self.run_schedule(seed, profile, schedule, false)?;
        let second = self.run_schedule(seed, profile, schedule, false)?;
        if first.trace_digest != second.trace_digest && !explain {
            first.violations.push(Violation {
                invariant: Invariant::NonDeterministic,
                detail: format!("trace digests {} and {}", first.trace_digest, second.trace_digest),
            });
        } else if first.trace_digest != second.trace_digest {
            let a = self.run_schedule(seed, profile, schedule, true)?;
            let b = self.run_schedule(seed, profile, schedule, true)?;
            let detail = match first_difference(&a.lines, &b.lines) {
                Some((i, x, y)) => format!(
                    "trace digests {} and {}; the runs part at step {i}: `{}` vs `{}`",
                    first.trace_digest,
                    second.trace_digest,
                    x.trim(),
                    y.trim()
                ),
                None => format!(
                    "trace digests {} and {}; the readable traces agree, so the difference is in record bytes",
                    first.trace_digest, second.trace_digest
                ),
            };
            first.violations.push(Violation {
                invariant: Invariant::NonDeterministic,
                detail,
            });
        }
        Ok(first)
    }
}

/// The fault-free reference: the topology's `MemoryRun` (one process, stage after stage, on the
/// in-memory bus), its read replicas' digests.
pub fn reference(s: &Scenario, topology: &Topology, events: Vec<Event>) -> Result<ReadDigests, String> {
    let pipeline = Pipeline::from_topology(topology, s).map_err(|e| e.to_string())?;
    let mut run = MemoryRun::with_pipeline(pipeline);
    run.try_feed_all(events, REFERENCE_CHUNK)
        .map_err(|e| format!("the fault-free reference run failed: {e}"))?;
    Ok(run.pipeline.read_digests())
}
