//! The invariants speak of the topology: a stage a user adds, and a read model of theirs, are
//! checked like ours (every record on a topic a read replica reads applied once, the replica
//! converging to the fault-free run), and the harness's one call reports a failing seed with
//! what replays it.

use horizon_core::event::{Event, Payload};
use horizon_core::scenario::Scenario;
use horizon_core::service::{Output, ReadModel, Rejection, Service, Tally};
use horizon_core::topics;
use horizon_core::topology::{StageSpec, TopicSpec, Topology};
use horizon_sim::{explore, harness, Case, ExploreOptions, FaultProfile, Invariant};
use std::collections::BTreeMap;

mod common;

fn scenario() -> Scenario {
    common::scenario("quick")
}

/// A user's read model of the bars: each bar by id, and how many bar records it took in.
struct BarBook {
    /// Counts a republished bar (same id, new offset) again: the mistake to catch.
    naive: bool,
}

#[derive(Clone, Default, PartialEq, Debug)]
struct Book {
    bars: BTreeMap<String, i64>,
    taken: u64,
}

impl Service for BarBook {
    type State = Book;
    fn name(&self) -> &'static str {
        "bar-book"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &[topics::BARS]
    }
    fn task(&self, _tp: horizon_core::bus::TopicPartition) -> u32 {
        0
    }
    fn handle(&self, state: &mut Book, event: &Event, _out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Bar(b) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::BARS)));
        };
        if self.naive || !state.bars.contains_key(&event.id) {
            state.taken += 1;
        }
        state
            .bars
            .insert(event.id.clone(), b.close.to_string().len() as i64 + b.trade_count as i64);
        Ok(())
    }
}

impl ReadModel for BarBook {
    fn digests(&self, state: &Book) -> Vec<(&'static str, String)> {
        let text = format!("{:?}", state.bars);
        vec![("bars", blake3::hash(text.as_bytes()).to_hex().to_string())]
    }
    fn applied(&self, state: &Book, event_id: &str) -> bool {
        state.bars.contains_key(event_id)
    }
    fn tallies(&self, state: &Book) -> Vec<Tally> {
        vec![Tally {
            what: "bars".into(),
            counted: state.taken,
            distinct: state.bars.len() as u64,
        }]
    }
}

fn with_book(naive: bool) -> Topology {
    Topology::shipped()
        .named(if naive { "naive-bar-book" } else { "bar-book" })
        .stage(StageSpec::read_model("bar-book", &[topics::BARS], move |_| Ok(BarBook { naive })))
}

fn options(end: u64) -> ExploreOptions {
    ExploreOptions {
        first: 0,
        end,
        jobs: 2,
        determinism_every: 0,
    }
}

#[test]
fn a_users_read_model_holds_under_the_kafka_profile_and_is_checked_on_every_process() {
    let case = Case::with_topology(scenario(), with_book(false), FaultProfile::kafka());
    let reports = explore(&case, &options(40), |_| {});
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| r.failed())
        .map(|r| (r.seed, r.violations.clone()))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    // Its digests are part of every replica's: the reference has them.
    let mut runner = horizon_sim::Runner::new(case);
    let o = runner.run_seed(0, false).unwrap();
    assert!(
        o.reference.parts.iter().any(|(p, _)| p == "bar-book.bars"),
        "{:?}",
        o.reference.parts
    );
    assert_eq!(o.replicas.len(), 2);
}

#[test]
fn a_users_read_model_that_counts_a_republished_bar_twice_is_caught_as_double_apply() {
    let case = Case::with_topology(scenario(), with_book(true), FaultProfile::kafka());
    let reports = explore(&case, &options(60), |_| {});
    let caught: Vec<_> = reports
        .iter()
        .filter(|r| {
            r.violations
                .iter()
                .any(|v| v.invariant == Invariant::DoubleApply && v.detail.contains("/bar-book counts"))
        })
        .map(|r| r.seed)
        .collect();
    assert!(!caught.is_empty(), "no seed of 60 caught the naive read model");
}

/// A stage that publishes what it does not declare.
struct Loud;

impl Service for Loud {
    type State = ();
    fn name(&self) -> &'static str {
        "loud"
    }
    fn inputs(&self) -> &'static [&'static str] {
        &[topics::BARS]
    }
    fn handle(&self, _state: &mut (), event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        out.push(Output {
            topic: "shouts",
            key: event.aggregate_id.clone(),
            event: event.clone(),
        });
        Ok(())
    }
}

#[test]
fn a_stage_that_publishes_to_a_topic_it_does_not_declare_is_refused_naming_both() {
    let topology = Topology::shipped()
        .topic(TopicSpec {
            name: "shouts",
            partitions: 1,
            key: "symbol",
            holds: "bars, again",
        })
        .stage(StageSpec::service("loud", &[topics::BARS], &[], |_| Ok(Loud)));
    let case = Case::with_topology(scenario(), topology, FaultProfile::none());
    let mut runner = horizon_sim::Runner::new(case);
    let e = runner.run_seed(0, false).err().expect("the reference run fails");
    assert!(e.contains("`loud` published to `shouts`"), "{e}");
}

#[test]
fn the_harness_panics_with_the_seed_the_invariant_the_shrunk_schedule_and_the_replay_command() {
    let case = Case::with_topology(scenario(), with_book(true), FaultProfile::kafka());
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        harness::assert_seeds_hold(&case, 0..60, 2, |seed| format!("replay --seed {seed}"))
    }))
    .expect_err("the naive read model fails a seed");
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    let seed: u64 = text
        .split("the first, seed ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seed in: {text}"));
    assert!(text.contains("double-apply"), "{text}");
    assert!(text.contains("shrinks to"), "{text}");
    assert!(text.ends_with(&format!("replay it: replay --seed {seed}")), "{text}");
    // and a correct topology passes the same call
    let good = Case::with_topology(scenario(), with_book(false), FaultProfile::kafka());
    assert_eq!(harness::assert_seeds_hold(&good, 0..20, 2, |s| s.to_string()), 20);
}
