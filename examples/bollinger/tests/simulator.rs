//! The example's topology under the simulator's faults: its own stage and read model are
//! checked like the shipped ones (every alert applied once by every process's `alert-book`, each
//! replica converging to the fault-free run, rebuilds matching), and with `--features broken`
//! its deliberate mistake is caught and shrunk.

use horizon_example_bollinger::{scenario, topology, SCENARIO_ORIGIN};
use horizon_sim::{harness, Case, FaultProfile, Runner};

/// Trades a seed: an hour of the market, so the 20-bar band is full for most of it and the
/// bands are crossed (the default 1,000 trades are eight minutes: no alert at all).
const EVENTS: usize = 12_000;

fn case(profile: FaultProfile) -> Case {
    let mut c = Case::with_topology(scenario(), topology(), profile);
    c.events = Some(EVENTS);
    c
}

/// The command that replays a seed of these tests.
fn replay(seed: u64) -> String {
    let features = if cfg!(feature = "broken") { " --features broken" } else { "" };
    format!(
        "cargo run --release -p horizon-example-bollinger{features} -- replay {SCENARIO_ORIGIN} --seed {seed} --profile kafka --events {EVENTS}"
    )
}

#[test]
fn the_fault_free_reference_holds_alerts_to_check() {
    let mut runner = Runner::new(case(FaultProfile::none()));
    let o = runner.run_seed(0, false).unwrap();
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    let parts: Vec<&str> = o.reference.parts.iter().map(|(p, _)| p.as_str()).collect();
    assert!(parts.contains(&"alert-book.alerts"), "{parts:?}");
    // The alerts topic is not empty in the reference: an empty book would make every check
    // below vacuous.
    let empty = horizon_core::pipeline::ReadDigests::of(
        horizon_core::pipeline::Pipeline::from_topology(&topology(), &scenario())
            .unwrap()
            .stages_ref(),
    );
    let alerts = |d: &horizon_core::pipeline::ReadDigests| d.parts.iter().find(|(p, _)| p == "alert-book.alerts").cloned();
    assert_ne!(alerts(&o.reference), alerts(&empty), "the reference run raised no alert");
}

#[cfg(not(feature = "broken"))]
mod holds {
    use super::*;
    use horizon_sim::schedule::{strategy, Bounds};
    use proptest::prelude::*;
    use std::sync::{LazyLock, Mutex};

    /// One runner for every case: the feed and the fault-free reference are made once.
    static RUNNER: LazyLock<Mutex<Runner>> = LazyLock::new(|| Mutex::new(Runner::new(case(FaultProfile::kafka()))));

    fn bounds() -> Bounds {
        RUNNER.lock().unwrap().bounds(0, &FaultProfile::kafka()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any schedule the kafka profile allows ends with every replica's read models (the
        /// shipped projections and the alert book) equal to the fault-free run's.
        #[test]
        fn any_kafka_schedule_ends_with_the_fault_free_read_models(schedule in strategy(&FaultProfile::kafka(), &bounds())) {
            let mut runner = RUNNER.lock().unwrap();
            let o = runner.run_schedule(0, &FaultProfile::kafka(), &schedule, false).unwrap();
            prop_assert!(o.violations.is_empty(), "{:?}\n{}", o.violations, schedule.render());
            prop_assert_eq!(o.replicas.len(), 2);
            for (_, d) in &o.replicas {
                prop_assert_eq!(d, &o.reference);
            }
        }
    }

    #[test]
    fn every_seed_of_the_kafka_profile_holds() {
        let n = harness::assert_seeds_hold(&case(FaultProfile::kafka()), 0..60, 2, replay);
        assert_eq!(n, 60);
    }
}

#[cfg(feature = "broken")]
#[test]
fn the_broken_band_alerts_is_caught_and_shrunk() {
    use horizon_sim::Invariant;
    let failure = harness::explore_seeds(&case(FaultProfile::kafka()), 0..60, 2)
        .expect_err("the broken band-alerts stage passed 60 seeds of the kafka profile");
    let text = failure.render(&replay(failure.report.seed));
    println!("{text}");
    let shrunk = failure.shrunk.as_ref().expect("the failure reproduces and shrinks");
    assert!(
        matches!(
            shrunk.invariant,
            Invariant::DoubleApply | Invariant::NonConvergent | Invariant::RebuildMismatch
        ),
        "{text}"
    );
    assert!(shrunk.minimal.len() <= 2, "shrunk to {} faults:\n{text}", shrunk.minimal.len());
    assert!(text.contains("alert-book"), "the violation names the user's read model:\n{text}");
}
