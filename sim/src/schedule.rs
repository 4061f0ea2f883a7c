//! Fault schedules as data: what goes wrong, when, and to whom.
//!
//! A run is a function of the scenario, the seed and a `Schedule`. Schedules are drawn from
//! proptest strategies bounded by the `FaultProfile`, so a failing schedule shrinks the way
//! proptest shrinks any value: drop faults, move them earlier, shorten them, lower the delays.
//! Each kind of fault draws from its own random stream of the seed, so switching one kind on or
//! off leaves the others' draws unchanged.

use crate::profile::{FaultKind, FaultProfile, Knob};
use proptest::strategy::{BoxedStrategy, Just, Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A stage of the topology, by name: what a stage's fault names. Schedules say the name, so a
/// saved schedule reads the same whatever the stages' order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageId(pub String);

impl StageId {
    pub fn new(name: &str) -> StageId {
        StageId(name.to_string())
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request a consumer or producer makes of the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    Flush,
    Commit,
    /// The committed offset, read while restoring a task.
    Committed,
    /// A read of the log, while restoring a task.
    Fetch,
}

impl Request {
    pub const ALL: [Request; 4] = [Request::Flush, Request::Commit, Request::Committed, Request::Fetch];

    pub fn name(self) -> &'static str {
        match self {
            Request::Flush => "flush",
            Request::Commit => "commit",
            Request::Committed => "committed-offset request",
            Request::Fetch => "restore fetch",
        }
    }
}

/// What a poison record is made of (`Fault::Poison`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoisonKind {
    /// A few hundred bytes that are not a `DomainEvent`.
    Garbage,
    /// 1,000,100 bytes that are not a `DomainEvent`: under the broker's 1,048,588-byte limit,
    /// over a producer's 1,000,000, so a stage that copies it whole cannot publish the copy.
    Oversized,
    /// A trade whose symbol is 1,000,000 bytes long: it decodes, and the market rejects it.
    HugeSymbol,
}

impl PoisonKind {
    pub const ALL: [PoisonKind; 3] = [PoisonKind::Garbage, PoisonKind::Oversized, PoisonKind::HugeSymbol];

    pub fn name(self) -> &'static str {
        match self {
            PoisonKind::Garbage => "garbage",
            PoisonKind::Oversized => "oversized",
            PoisonKind::HugeSymbol => "huge-symbol",
        }
    }
}

/// One fault. Times are virtual milliseconds from the start of the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// `in_flush`: the process dies in its first publish at or after `at_ms`, with part of the
    /// batch appended; otherwise at `at_ms` between two steps.
    Crash {
        at_ms: u64,
        process: u32,
        down_ms: u64,
        in_flush: bool,
    },
    Pause {
        at_ms: u64,
        process: u32,
        for_ms: u64,
    },
    Outage {
        at_ms: u64,
        for_ms: u64,
    },
    /// The first such request of that stage at or after `at_ms` fails.
    RequestFailure {
        at_ms: u64,
        process: u32,
        stage: StageId,
        request: Request,
    },
    /// The first flush of that stage at or after `at_ms` appends part of its batch and fails.
    PartialFlush {
        at_ms: u64,
        process: u32,
        stage: StageId,
    },
    ScaleOut {
        at_ms: u64,
        for_ms: u64,
    },
    /// `partition` indexes every topic's partitions in `topics::ALL` order.
    DelaySpike {
        at_ms: u64,
        for_ms: u64,
        partition: u32,
        extra_ms: u64,
    },
    FeedReconnect {
        at_ms: u64,
        replay: u32,
    },
    FeedGap {
        at_ms: u64,
        for_ms: u64,
        symbol: u32,
    },
    FeedReorder {
        at_ms: u64,
        symbol: u32,
        depth: u32,
    },
    ProducerDuplicate {
        at_ms: u64,
        process: u32,
        stage: StageId,
    },
    ProducerReorder {
        at_ms: u64,
        process: u32,
        stage: StageId,
    },
    /// The gateway publishes a poison record keyed by symbol `symbol` (as feed faults index
    /// symbols).
    Poison {
        at_ms: u64,
        symbol: u32,
        kind: PoisonKind,
    },
}

impl Fault {
    pub fn at_ms(&self) -> u64 {
        match *self {
            Fault::Crash { at_ms, .. }
            | Fault::Pause { at_ms, .. }
            | Fault::Outage { at_ms, .. }
            | Fault::RequestFailure { at_ms, .. }
            | Fault::PartialFlush { at_ms, .. }
            | Fault::ScaleOut { at_ms, .. }
            | Fault::DelaySpike { at_ms, .. }
            | Fault::FeedReconnect { at_ms, .. }
            | Fault::FeedGap { at_ms, .. }
            | Fault::FeedReorder { at_ms, .. }
            | Fault::ProducerDuplicate { at_ms, .. }
            | Fault::ProducerReorder { at_ms, .. }
            | Fault::Poison { at_ms, .. } => at_ms,
        }
    }

    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Outage { .. } => FaultKind::Outage,
            Fault::RequestFailure { .. } => FaultKind::RequestFailure,
            Fault::PartialFlush { .. } => FaultKind::PartialFlush,
            Fault::ScaleOut { .. } => FaultKind::ScaleOut,
            Fault::DelaySpike { .. } => FaultKind::DelaySpike,
            Fault::FeedReconnect { .. } => FaultKind::FeedReconnect,
            Fault::FeedGap { .. } => FaultKind::FeedGap,
            Fault::FeedReorder { .. } => FaultKind::FeedReorder,
            Fault::ProducerDuplicate { .. } => FaultKind::ProducerDuplicate,
            Fault::ProducerReorder { .. } => FaultKind::ProducerReorder,
            Fault::Poison { .. } => FaultKind::Poison,
        }
    }

    /// When the fault is over (ms); one-shot request faults are over once the feed is.
    pub fn end_ms(&self) -> u64 {
        match *self {
            Fault::Crash { at_ms, down_ms, .. } => at_ms + down_ms,
            Fault::Pause { at_ms, for_ms, .. }
            | Fault::Outage { at_ms, for_ms }
            | Fault::ScaleOut { at_ms, for_ms }
            | Fault::DelaySpike { at_ms, for_ms, .. }
            | Fault::FeedGap { at_ms, for_ms, .. } => at_ms + for_ms,
            _ => self.at_ms(),
        }
    }

    pub fn is_feed_fault(&self) -> bool {
        matches!(
            self,
            Fault::FeedReconnect { .. } | Fault::FeedGap { .. } | Fault::FeedReorder { .. } | Fault::Poison { .. }
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format_ms(self.at_ms());
        match self {
            Fault::Crash {
                process,
                down_ms,
                in_flush,
                ..
            } => write!(
                f,
                "{at}  crash p{process}{} for {}",
                if *in_flush { " in its next publish" } else { "" },
                format_ms(*down_ms)
            ),
            Fault::Pause { process, for_ms, .. } => write!(f, "{at}  pause p{process} for {}", format_ms(*for_ms)),
            Fault::Outage { for_ms, .. } => write!(f, "{at}  broker outage for {}", format_ms(*for_ms)),
            Fault::RequestFailure {
                process, stage, request, ..
            } => write!(f, "{at}  fail the next {} of p{process}/{stage}", request.name()),
            Fault::PartialFlush { process, stage, .. } => {
                write!(f, "{at}  the next flush of p{process}/{} appends part, then fails", stage.name())
            }
            Fault::ScaleOut { for_ms, .. } => write!(f, "{at}  a process joins for {}", format_ms(*for_ms)),
            Fault::DelaySpike {
                for_ms,
                partition,
                extra_ms,
                ..
            } => {
                // Partitions are numbered over the topology's topics; the shipped ones come
                // first in every topology built on the shipped one.
                let shipped = crate::world::Layout::new(&horizon_core::topics::ALL);
                let which = match *partition as usize {
                    i if i < shipped.len() => shipped.tp(i).to_string(),
                    i => format!("partition #{i}"),
                };
                write!(
                    f,
                    "{at}  deliveries of {which} delayed {} ms more for {}",
                    extra_ms,
                    format_ms(*for_ms)
                )
            }
            Fault::FeedReconnect { replay, .. } => write!(f, "{at}  feed reconnects, replays {replay} trades per symbol"),
            Fault::FeedGap { for_ms, symbol, .. } => write!(f, "{at}  feed loses symbol #{symbol} for {}", format_ms(*for_ms)),
            Fault::FeedReorder { symbol, depth, .. } => {
                write!(f, "{at}  a symbol #{symbol} trade arrives after {depth} later ones")
            }
            Fault::ProducerDuplicate { process, stage, .. } => {
                write!(f, "{at}  the next flush of p{process}/{} appends a batch twice", stage.name())
            }
            Fault::ProducerReorder { process, stage, .. } => {
                write!(
                    f,
                    "{at}  the next flush of p{process}/{} lands two requests out of order",
                    stage.name()
                )
            }
            Fault::Poison { symbol, kind, .. } => {
                write!(
                    f,
                    "{at}  the gateway publishes a poison record ({}) keyed by symbol #{symbol}",
                    kind.name()
                )
            }
        }
    }
}

/// `+1m02.345s`-style virtual time.
pub fn format_ms(ms: u64) -> String {
    let (m, rest) = (ms / 60_000, ms % 60_000);
    if m > 0 {
        format!("{m}m{:02}.{:03}s", rest / 1000, rest % 1000)
    } else {
        format!("{}.{:03}s", rest / 1000, rest % 1000)
    }
}

/// Delivery delays: the largest per-partition and per-process skew and the per-delivery jitter,
/// in microseconds. Which partition gets how much of its skew comes from the seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub partition_us: u64,
    pub process_us: u64,
    pub jitter_us: u64,
}

/// Everything a run suffers: delays and the faults, by time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub delivery: Delivery,
    pub faults: Vec<Fault>,
}

impl Schedule {
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    pub fn feed_faults(&self) -> Vec<Fault> {
        self.faults.iter().filter(|f| f.is_feed_fault()).cloned().collect()
    }

    /// Extra process slots the scale-out faults need.
    pub fn scale_outs(&self) -> usize {
        self.faults.iter().filter(|f| matches!(f, Fault::ScaleOut { .. })).count()
    }

    /// When every fault is over (ms).
    pub fn end_ms(&self) -> u64 {
        self.faults.iter().map(Fault::end_ms).max().unwrap_or(0)
    }

    /// One line per fault, for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "delivery skew up to {} us per partition, {} us per process, jitter up to {} us\n",
            self.delivery.partition_us, self.delivery.process_us, self.delivery.jitter_us
        );
        if self.faults.is_empty() {
            out.push_str("no faults\n");
        }
        for f in &self.faults {
            out.push_str(&format!("  {f}\n"));
        }
        out
    }

    pub fn from_json(text: &str) -> Result<Schedule, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// What a schedule draws from: the profile and the shape of the run.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// The feed's span in virtual ms: faults start inside it.
    pub span_ms: u64,
    pub processes: u32,
    pub symbols: u32,
    pub partitions: u32,
    /// Every stage of the topology, in flow order (request failures), and those that publish:
    /// the working stages (flush faults; a read replica publishes only dead letters).
    pub stages: Vec<StageId>,
    pub producing: Vec<StageId>,
}

impl Bounds {
    /// The stages of a topology as a schedule names them.
    pub fn stages_of(topology: &horizon_core::topology::Topology) -> (Vec<StageId>, Vec<StageId>) {
        let all = topology.stages().iter().map(|s| StageId::new(s.name)).collect();
        let producing = topology
            .stages()
            .iter()
            .filter(|s| !s.replica)
            .map(|s| StageId::new(s.name))
            .collect();
        (all, producing)
    }
}

fn knob_strategy(kind: FaultKind, knob: Knob, b: &Bounds) -> BoxedStrategy<Vec<Fault>> {
    if !knob.is_on() {
        return Just(Vec::new()).boxed();
    }
    let at = 0..b.span_ms.max(1);
    let process = 0..b.processes.max(1);
    let up_to = knob.up_to.max(1);
    let duration = 0..=up_to;
    let stage = proptest::sample::select(b.stages.clone());
    let producing = proptest::sample::select(b.producing.clone());
    let symbol = 0..b.symbols.max(1);
    let one: BoxedStrategy<Fault> = match kind {
        FaultKind::Crash => (at, process, duration, proptest::bool::ANY)
            .prop_map(|(at_ms, process, down_ms, in_flush)| Fault::Crash {
                at_ms,
                process,
                down_ms,
                in_flush,
            })
            .boxed(),
        FaultKind::Pause => (at, process, duration)
            .prop_map(|(at_ms, process, for_ms)| Fault::Pause { at_ms, process, for_ms })
            .boxed(),
        FaultKind::Outage => (at, duration).prop_map(|(at_ms, for_ms)| Fault::Outage { at_ms, for_ms }).boxed(),
        FaultKind::RequestFailure => (at, process, stage, proptest::sample::select(Request::ALL.to_vec()))
            .prop_map(|(at_ms, process, stage, request)| Fault::RequestFailure {
                at_ms,
                process,
                stage,
                request,
            })
            .boxed(),
        FaultKind::PartialFlush => (at, process, producing)
            .prop_map(|(at_ms, process, stage)| Fault::PartialFlush { at_ms, process, stage })
            .boxed(),
        FaultKind::ScaleOut => (at, duration).prop_map(|(at_ms, for_ms)| Fault::ScaleOut { at_ms, for_ms }).boxed(),
        FaultKind::DelaySpike => (at, duration, 0..b.partitions.max(1), 0..=up_to.min(5_000))
            .prop_map(|(at_ms, for_ms, partition, extra_ms)| Fault::DelaySpike {
                at_ms,
                for_ms,
                partition,
                extra_ms,
            })
            .boxed(),
        FaultKind::FeedReconnect => (at, 1..=up_to as u32)
            .prop_map(|(at_ms, replay)| Fault::FeedReconnect { at_ms, replay })
            .boxed(),
        FaultKind::FeedGap => (at, duration, symbol)
            .prop_map(|(at_ms, for_ms, symbol)| Fault::FeedGap { at_ms, for_ms, symbol })
            .boxed(),
        FaultKind::FeedReorder => (at, symbol, 1..=up_to as u32)
            .prop_map(|(at_ms, symbol, depth)| Fault::FeedReorder { at_ms, symbol, depth })
            .boxed(),
        FaultKind::ProducerDuplicate => (at, process, producing)
            .prop_map(|(at_ms, process, stage)| Fault::ProducerDuplicate { at_ms, process, stage })
            .boxed(),
        FaultKind::ProducerReorder => (at, process, producing)
            .prop_map(|(at_ms, process, stage)| Fault::ProducerReorder { at_ms, process, stage })
            .boxed(),
        FaultKind::Poison => (at, symbol, proptest::sample::select(PoisonKind::ALL.to_vec()))
            .prop_map(|(at_ms, symbol, kind)| Fault::Poison { at_ms, symbol, kind })
            .boxed(),
    };
    proptest::collection::vec(one, 0..=knob.max as usize).boxed()
}

fn delivery_strategy(p: &FaultProfile) -> BoxedStrategy<Delivery> {
    (
        0..=p.partition_delay_ms * 1000,
        0..=p.process_delay_ms * 1000,
        0..=p.jitter_ms * 1000,
    )
        .prop_map(|(partition_us, process_us, jitter_us)| Delivery {
            partition_us,
            process_us,
            jitter_us,
        })
        .boxed()
}

/// Every schedule a profile allows, as one proptest strategy (for property tests; `explore`
/// draws each kind from its own stream instead, through `ScheduleTree`).
pub fn strategy(profile: &FaultProfile, bounds: &Bounds) -> BoxedStrategy<Schedule> {
    let kinds: Vec<BoxedStrategy<Vec<Fault>>> = FaultKind::ALL
        .iter()
        .map(|&kind| knob_strategy(kind, profile.knob(kind), bounds))
        .collect();
    (delivery_strategy(profile), kinds)
        .prop_map(|(delivery, kinds)| {
            let mut faults: Vec<Fault> = kinds.into_iter().flatten().collect();
            faults.sort_by_key(Fault::at_ms);
            Schedule { delivery, faults }
        })
        .boxed()
}

/// A proptest runner on its own stream of the seed (derived through ChaCha8, like every other
/// random choice of a run).
fn runner(seed: u64, stream: u64) -> TestRunner {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

/// The first stream of the schedule draws; kind `i` uses `SCHEDULE_STREAM + 1 + i`.
const SCHEDULE_STREAM: u64 = 0x5343_4845_0000;

/// A shrinkable schedule: one value tree per fault kind and one for the delays. Shrinking works
/// through the kinds in order, then the delays, like proptest's tuple trees.
pub struct ScheduleTree {
    delivery: Box<dyn ValueTree<Value = Delivery>>,
    kinds: Vec<Box<dyn ValueTree<Value = Vec<Fault>>>>,
    shrinker: usize,
    last: Option<usize>,
}

impl ScheduleTree {
    /// The schedule a seed draws under a (concrete, non-swarm) profile.
    pub fn new(profile: &FaultProfile, bounds: &Bounds, seed: u64) -> ScheduleTree {
        let delivery = delivery_strategy(profile)
            .new_tree(&mut runner(seed, SCHEDULE_STREAM))
            .expect("delivery strategy never rejects");
        let kinds = FaultKind::ALL
            .iter()
            .enumerate()
            .map(|(i, &kind)| {
                knob_strategy(kind, profile.knob(kind), bounds)
                    .new_tree(&mut runner(seed, SCHEDULE_STREAM + 1 + i as u64))
                    .expect("fault strategies never reject")
            })
            .collect();
        ScheduleTree {
            delivery,
            kinds,
            shrinker: 0,
            last: None,
        }
    }

    fn part(&mut self, i: usize) -> &mut dyn ShrinkPart {
        if i < self.kinds.len() {
            &mut self.kinds[i]
        } else {
            &mut self.delivery
        }
    }
}

/// The two ValueTree operations, object-safe over either part type.
trait ShrinkPart {
    fn simplify(&mut self) -> bool;
    fn complicate(&mut self) -> bool;
}

impl<T: ValueTree + ?Sized> ShrinkPart for Box<T> {
    fn simplify(&mut self) -> bool {
        (**self).simplify()
    }
    fn complicate(&mut self) -> bool {
        (**self).complicate()
    }
}

impl ValueTree for ScheduleTree {
    type Value = Schedule;

    fn current(&self) -> Schedule {
        let mut faults: Vec<Fault> = self.kinds.iter().flat_map(|k| k.current()).collect();
        // Stable: same-time faults keep kind order.
        faults.sort_by_key(Fault::at_ms);
        Schedule {
            delivery: self.delivery.current(),
            faults,
        }
    }

    fn simplify(&mut self) -> bool {
        let parts = self.kinds.len() + 1;
        while self.shrinker < parts {
            let i = self.shrinker;
            if self.part(i).simplify() {
                self.last = Some(i);
                return true;
            }
            self.shrinker += 1;
        }
        false
    }

    fn complicate(&mut self) -> bool {
        match self.last {
            Some(i) => {
                if self.part(i).complicate() {
                    true
                } else {
                    self.last = None;
                    false
                }
            }
            None => false,
        }
    }
}

/// Shrinks `tree` while `fails` holds, proptest's way: simplify; if the simpler schedule still
/// fails keep it, otherwise complicate back toward the last failing one. At most `max_runs`
/// calls of `fails`. Returns the smallest failing schedule found and the runs spent.
pub fn shrink<T: ValueTree<Value = Schedule>>(
    tree: &mut T,
    max_runs: usize,
    mut fails: impl FnMut(&Schedule) -> bool,
) -> (Schedule, usize) {
    let mut best = tree.current();
    let mut runs = 0;
    'outer: while runs < max_runs {
        if !tree.simplify() {
            break;
        }
        loop {
            runs += 1;
            let candidate = tree.current();
            if fails(&candidate) {
                best = candidate;
                continue 'outer;
            }
            if runs >= max_runs || !tree.complicate() {
                continue 'outer;
            }
        }
    }
    (best, runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        let (stages, producing) = Bounds::stages_of(&horizon_core::topology::Topology::shipped());
        Bounds {
            span_ms: 600_000,
            processes: 2,
            symbols: 3,
            partitions: 25,
            stages,
            producing,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule() {
        let p = FaultProfile::kafka();
        let a = ScheduleTree::new(&p, &bounds(), 42).current();
        assert_eq!(a, ScheduleTree::new(&p, &bounds(), 42).current());
        let others = (0..20).filter(|&s| ScheduleTree::new(&p, &bounds(), s).current() != a).count();
        assert_eq!(others, 20);
    }

    #[test]
    fn schedules_stay_inside_the_profile() {
        let p = FaultProfile::kafka();
        for seed in 0..200 {
            let s = ScheduleTree::new(&p, &bounds(), seed).current();
            for kind in FaultKind::ALL {
                let n = s.faults.iter().filter(|f| f.kind() == kind).count() as u32;
                assert!(n <= p.knob(kind).max, "{kind}: {n}");
            }
            for f in &s.faults {
                assert!(f.at_ms() < 600_000);
                assert!(!f.kind().chaos_only());
            }
            assert!(s.faults.windows(2).all(|w| w[0].at_ms() <= w[1].at_ms()));
            assert!(s.delivery.partition_us <= 20_000 && s.delivery.jitter_us <= 10_000);
        }
        assert!(ScheduleTree::new(&FaultProfile::none(), &bounds(), 1).current().is_empty());
    }

    #[test]
    fn switching_one_kind_off_leaves_the_others_draws_alone() {
        let p = FaultProfile::kafka();
        let mut q = p.clone();
        q.crash = Knob::OFF;
        for seed in 0..20 {
            let a = ScheduleTree::new(&p, &bounds(), seed).current();
            let b = ScheduleTree::new(&q, &bounds(), seed).current();
            let without: Vec<Fault> = a.faults.into_iter().filter(|f| f.kind() != FaultKind::Crash).collect();
            assert_eq!(without, b.faults);
        }
    }

    #[test]
    fn shrinking_finds_the_one_fault_that_matters() {
        // A failure that needs a crash of p1 with at least 3 s down: the minimum is that crash
        // alone, at time 0, down exactly 3 s, delays all zero.
        let p = FaultProfile::chaos();
        let needs = |s: &Schedule| {
            s.faults
                .iter()
                .any(|f| matches!(f, Fault::Crash { process: 1, down_ms, .. } if *down_ms >= 3_000))
        };
        let seed = (0..200).find(|&s| needs(&ScheduleTree::new(&p, &bounds(), s).current())).unwrap();
        let mut tree = ScheduleTree::new(&p, &bounds(), seed);
        assert!(tree.current().len() > 1);
        let (min, runs) = shrink(&mut tree, 10_000, needs);
        assert!(runs < 10_000);
        assert_eq!(
            min.faults,
            vec![Fault::Crash {
                at_ms: 0,
                process: 1,
                down_ms: 3_000,
                in_flush: false
            }]
        );
        assert_eq!(min.delivery, Delivery::default());
    }

    #[test]
    fn schedules_round_trip_through_json() {
        let s = ScheduleTree::new(&FaultProfile::chaos(), &bounds(), 7).current();
        let text = serde_json::to_string_pretty(&s).unwrap();
        assert_eq!(Schedule::from_json(&text).unwrap(), s);
    }
}
