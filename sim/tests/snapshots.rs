//! One market, many fault schedules, one answer: the final read models of every replica under
//! every kafka-profile seed match one insta snapshot, so a fault that changed any projection
//! would show as a snapshot diff. The feed faults are off here: they change the market itself
//! (a gap loses trades), so they change the answer legitimately.

mod common;

use common::scenario;
use horizon_sim::{Case, FaultProfile, Runner};

#[test]
fn final_projections_are_identical_across_fault_seeds() {
    let mut profile = FaultProfile::kafka();
    profile.apply_overrides("feed-reconnect=off,feed-gap=off,feed-reorder=off").unwrap();
    let mut case = Case::new(scenario("quick"), profile);
    case.feed_seed = Some(1);
    let mut runner = Runner::new(case);
    runner.keep_views = true;
    let mut faults = 0;
    for seed in 0..12 {
        let o = runner.run_seed(seed, false).unwrap();
        assert!(o.violations.is_empty(), "seed {seed}: {:?}", o.violations);
        faults += o.schedule.len();
        assert_eq!(o.views.len(), 2);
        for (p, views) in &o.views {
            insta::assert_json_snapshot!("quick-feed-1-views", views, &format!("seed {seed}, replica p{p}"));
        }
    }
    assert!(faults > 40, "the seeds must actually inject faults ({faults})");
}
