//! Poison records and the size limits: a record no stage can use ends as exactly one dead
//! letter and the deployment goes on; what a stage cannot publish for its size is refused for
//! good, never retried; a stage that retries it for ever is reported `stuck`.

mod common;

use common::scenario;
use horizon_sim::broken::Broken;
use horizon_sim::schedule::PoisonKind;
use horizon_sim::{Case, Fault, FaultProfile, Invariant, Runner, Schedule};

fn poison(at_ms: u64, kind: PoisonKind) -> Fault {
    Fault::Poison { at_ms, symbol: 1, kind }
}

/// One of each kind, and nothing else going wrong.
fn poisoned() -> Schedule {
    Schedule {
        faults: vec![
            poison(60_000, PoisonKind::Garbage),
            poison(120_000, PoisonKind::Oversized),
            poison(180_000, PoisonKind::HugeSymbol),
        ],
        ..Schedule::default()
    }
}

#[test]
fn each_poison_record_ends_as_one_dead_letter_and_the_run_converges() {
    // Given the `none` profile's deployment (Kafka's size limits, no fault) and a clean run
    let profile = FaultProfile::none();
    let mut runner = Runner::new(Case::new(scenario("quick"), profile.clone()));
    let clean = runner.run_schedule(3, &profile, &Schedule::default(), false).unwrap();
    assert!(clean.violations.is_empty(), "{:?}", clean.violations);
    // When the gateway publishes one poison record of each kind
    let o = runner.run_schedule(3, &profile, &poisoned(), false).unwrap();
    // Then every invariant holds (one letter per poison record among them), the market wrote
    // exactly three more letters, each replica counted the two undecodable records without a
    // letter of its own, and nothing was refused: a bounded letter fits every limit
    assert!(o.violations.is_empty(), "{:?}", o.violations);
    let market = |o: &horizon_sim::Outcome| o.stats["market"].dead_letters;
    assert_eq!(market(&o), market(&clean) + 3);
    assert_eq!(o.stats["projections"].dead_letters, clean.stats["projections"].dead_letters);
    assert_eq!(o.stats["projections"].undecodable_skipped, 2 * profile.processes as u64);
    assert_eq!((o.counters.refused_at_send, o.counters.refused_at_flush), (0, 0));
    assert_eq!(o.counters.feed_published, clean.counters.feed_published + 3);
}

#[test]
fn a_stage_that_retries_a_refused_record_is_stuck_and_the_size_limit_is_what_catches_it() {
    // Given the market that dead-letters records whole and retries what is refused
    let profile = FaultProfile::none();
    let mut case = Case::new(scenario("quick"), profile.clone());
    case.topology = std::sync::Arc::new(Broken::WholeDeadLetter.topology());
    let mut runner = Runner::new(case);
    let oversized = Schedule {
        faults: vec![poison(60_000, PoisonKind::Oversized)],
        ..Schedule::default()
    };
    // When the oversized poison record reaches it under Kafka's limits
    let o = runner.run_schedule(3, &profile, &oversized, false).unwrap();
    // Then its letter is refused at send, retried for ever, and the run is stuck
    assert!(o.violates(Invariant::Stuck), "{:?}", o.violations);
    assert!(o.counters.refused_at_send > 10, "{}", o.counters.refused_at_send);
    // And with the producer's limit off the same run is clean: the knob is what catches it
    let mut unlimited = profile.clone();
    unlimited.producer_message_bytes_max = 0;
    let o = runner.run_schedule(3, &unlimited, &oversized, false).unwrap();
    assert!(o.violations.is_empty(), "{:?}", o.violations);
}

#[test]
fn the_broker_refuses_what_is_over_its_limit_and_the_stage_dead_letters_it_in_its_place() {
    // Given a broker whose limit is below the size of the larger portfolio events (up to ~600
    // bytes in this run), and a producer without a limit
    let mut profile = FaultProfile::none();
    profile.producer_message_bytes_max = 0;
    profile.broker_message_bytes_max = 550;
    let mut runner = Runner::new(Case::new(scenario("quick"), profile.clone()));
    // When the deployment runs
    let o = runner.run_schedule(3, &profile, &Schedule::default(), false).unwrap();
    // Then the broker refused outputs in flushes, and the stages dead-lettered them (a letter
    // too large for the limit too goes again without its original) and went on: the run is not
    // stuck. What was refused never reached the projections, so they differ from the
    // reference, which has no limit.
    let refused: u64 = o.stats.values().map(|s| s.outputs_refused).sum();
    assert!(
        refused > 0 && o.counters.refused_at_flush > refused,
        "{refused} {}",
        o.counters.refused_at_flush
    );
    assert!(
        !o.violates(Invariant::Stuck) && !o.violates(Invariant::LoopError),
        "{:?}",
        o.violations
    );
    assert!(o.violates(Invariant::NonConvergent));
}

#[test]
fn the_gateway_cannot_publish_a_record_over_the_brokers_limit() {
    // Given a broker that takes nothing over 1,000,000 bytes
    let mut profile = FaultProfile::none();
    profile.broker_message_bytes_max = 1_000_000;
    let mut runner = Runner::new(Case::new(scenario("quick"), profile.clone()));
    let oversized = Schedule {
        faults: vec![poison(60_000, PoisonKind::Oversized)],
        ..Schedule::default()
    };
    // When the gateway publishes the 1,000,100-byte poison record
    let o = runner.run_schedule(3, &profile, &oversized, false).unwrap();
    // Then the broker refuses it, nothing else changes, and every invariant holds
    assert_eq!(o.counters.feed_refused, 1);
    assert!(o.violations.is_empty(), "{:?}", o.violations);
}
