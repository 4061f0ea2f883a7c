//! The simulator's teeth: each deliberately broken service is caught within a bounded number of
//! seeds of the kafka profile, by the invariant its mistake breaks, and its failure shrinks to
//! a schedule of at most one fault; the production services pass the same seeds.

mod common;

use common::{failures, scenario};
use horizon_core::topology::Topology;
use horizon_sim::broken::Broken;
use horizon_sim::{explore, shrink_seed, Case, ExploreOptions, FaultProfile, Invariant, Runner};
use std::sync::Arc;

const SEEDS: u64 = 30;

fn case(topology: Topology) -> Case {
    let mut c = Case::new(scenario("quick"), FaultProfile::kafka());
    c.topology = Arc::new(topology);
    c
}

fn options() -> ExploreOptions {
    ExploreOptions {
        first: 0,
        end: SEEDS,
        jobs: 2,
        determinism_every: 0,
    }
}

/// What each mistake must be caught as.
fn expected(b: Broken) -> Invariant {
    match b {
        // The re-published bar is evaluated again: same signal id, different averages.
        Broken::NoDedup => Invariant::DoubleApply,
        // Offsets committed, outputs lost in the crash: trades that never reach a bar.
        Broken::CommitFirst => Invariant::LostWrite,
        // The outcome depends on interleaving, which the faults (and two processes) change.
        Broken::ArrivalOrder => Invariant::NonConvergent,
        // Open bars forgotten in a rebalance: trades that never reach a bar.
        Broken::NoRestore => Invariant::LostWrite,
        // Hash-map order reaches the published bytes: two runs of one seed differ.
        Broken::HashOrder => Invariant::NonDeterministic,
        // One poison record over the producer's limit, retried for ever: the market wedges.
        Broken::WholeDeadLetter => Invariant::Stuck,
    }
}

#[test]
fn the_production_services_pass_the_seeds_the_teeth_are_tested_on() {
    let reports = explore(&case(Topology::shipped()), &options(), |_| {});
    assert_eq!(failures(&reports), "");
}

fn caught_and_shrunk(b: Broken) -> horizon_sim::Shrunk {
    let c = case(b.topology());
    let mut opts = options();
    if b == Broken::HashOrder {
        opts.determinism_every = 1;
    }
    let reports = explore(&c, &opts, |_| {});
    let failing: Vec<u64> = reports
        .iter()
        .filter(|r| r.violations.iter().any(|v| v.invariant == expected(b)))
        .map(|r| r.seed)
        .collect();
    assert!(
        !failing.is_empty(),
        "{} was not caught as {} in {SEEDS} seeds; failures: {}",
        b.name(),
        expected(b),
        failures(&reports)
    );
    let mut runner = Runner::new(c);
    let shrunk = shrink_seed(&mut runner, failing[0], Some(expected(b)), 400)
        .unwrap()
        .expect("a failing seed fails again");
    assert_eq!(shrunk.invariant, expected(b));
    assert!(
        shrunk.minimal.len() <= 1 && shrunk.minimal.len() <= shrunk.original.len(),
        "{}: seed {} shrank from {} to {} faults:\n{}",
        b.name(),
        failing[0],
        shrunk.original.len(),
        shrunk.minimal.len(),
        shrunk.minimal.render()
    );
    assert!(shrunk.outcome.violates(expected(b)), "the minimal schedule still fails");
    if b == Broken::HashOrder {
        // The report names the first step where the two runs part: a signal's bytes.
        let v = shrunk.outcome.violations.iter().find(|v| v.invariant == expected(b)).unwrap();
        assert!(
            v.detail.contains("the runs part at step") && v.detail.contains("append signals/"),
            "{}",
            v.detail
        );
    }
    assert!(!shrunk.outcome.lines.is_empty(), "the minimal run is rendered for people");
    shrunk
}

#[test]
fn no_dedup_is_caught_and_shrunk() {
    caught_and_shrunk(Broken::NoDedup);
}

#[test]
fn commit_first_is_caught_and_shrunk() {
    caught_and_shrunk(Broken::CommitFirst);
}

#[test]
fn arrival_order_is_caught_and_shrunk() {
    caught_and_shrunk(Broken::ArrivalOrder);
}

#[test]
fn no_restore_is_caught_and_shrunk() {
    caught_and_shrunk(Broken::NoRestore);
}

#[test]
fn hash_order_is_caught_as_non_determinism_and_shrunk() {
    caught_and_shrunk(Broken::HashOrder);
}

#[test]
fn whole_dead_letter_is_caught_as_stuck_and_shrunk_to_its_poison_record() {
    let shrunk = caught_and_shrunk(Broken::WholeDeadLetter);
    // The one fault left is the record that wedges it: one no letter may carry whole.
    assert!(
        matches!(
            shrunk.minimal.faults[..],
            [horizon_sim::Fault::Poison {
                kind: horizon_sim::schedule::PoisonKind::Oversized | horizon_sim::schedule::PoisonKind::HugeSymbol,
                ..
            }]
        ),
        "{}",
        shrunk.minimal.render()
    );
}

/// 1m bars of BTC-PERP as a bar recording yields them, each standing for 7 trades.
fn recorded_bars(n: i64) -> horizon_sim::feed::Feed {
    use horizon_core::event::Bar;
    use horizon_core::{feed::bar_event, Fixed, Timestamp};
    let events = (0..n)
        .map(|i| {
            let close = Fixed::from_int(40_000 + 10 * (i % 37) - 5 * (i % 11));
            bar_event(Bar {
                symbol: "BTC-PERP".into(),
                exchange: "FTX".into(),
                interval_ms: 60_000,
                start: Timestamp::from_millis(1_640_995_200_000 + i * 60_000),
                open: close,
                high: close + Fixed::from_int(20),
                low: close - Fixed::from_int(20),
                close,
                volume: Fixed::from_int(3),
                trade_count: 7,
                seq: 0,
            })
        })
        .collect();
    horizon_sim::feed::Feed::recorded(events)
}

#[test]
fn on_a_bar_recording_commit_first_loses_the_recorded_trades_and_production_does_not() {
    let bars = std::sync::Arc::new(recorded_bars(400));
    let bar_case = |topology: Topology| Case {
        recorded: Some(bars.clone()),
        topology: Arc::new(topology),
        ..Case::new(scenario("ftx-jan-2022"), FaultProfile::kafka())
    };
    let production = explore(&bar_case(Topology::shipped()), &options(), |_| {});
    assert_eq!(failures(&production), "");
    let broken = explore(&bar_case(Broken::CommitFirst.topology()), &options(), |_| {});
    let lost = broken
        .iter()
        .flat_map(|r| &r.violations)
        .find(|v| v.invariant == Invariant::LostWrite && v.detail.contains("valid trades of BTC-PERP"));
    assert!(lost.is_some(), "a lost 15m bar is a lost write: {}", failures(&broken));
}
