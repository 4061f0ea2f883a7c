//! What a user's test calls: explore seeds of their topology and, on a failure, stop with what
//! reproduces it: the seed, the invariants it broke, its schedule shrunk to the faults that
//! matter, and the command that replays it.
//!
//! ```no_run
//! use horizon_sim::{harness, Case, FaultProfile};
//! # let (scenario, topology): (horizon_core::scenario::Scenario, horizon_core::topology::Topology) = unimplemented!();
//! let case = Case::with_topology(scenario, topology, FaultProfile::kafka());
//! harness::assert_seeds_hold(&case, 0..1000, 2, |seed| format!("cargo run -p my-crate -- replay --seed {seed}"));
//! ```

use crate::explore::{explore, shrink_seed, ExploreOptions, SeedReport, Shrunk};
use crate::run::{Case, Runner};
use std::fmt::Write as _;
use std::ops::Range;

/// Runs a failing seed gets to shrink in.
const SHRINK_RUNS_MAX: usize = 400;

/// The first failing seed of an exploration, shrunk.
pub struct Failure {
    pub report: SeedReport,
    /// `None` when shrinking could not reproduce it (it failed for another reason on its own).
    pub shrunk: Option<Shrunk>,
    /// Seeds that failed in all.
    pub failed: usize,
    pub explored: usize,
}

impl Failure {
    /// The failure for people: the seed, what broke, the shrunk schedule, how to replay it.
    pub fn render(&self, replay: &str) -> String {
        let mut out = format!(
            "{} of {} seeds broke an invariant; the first, seed {}:\n",
            self.failed, self.explored, self.report.seed
        );
        for v in &self.report.violations {
            let _ = writeln!(out, "  {v}");
        }
        if let Some(s) = &self.shrunk {
            let _ = writeln!(
                out,
                "its schedule of {} faults shrinks to {} that still break {} ({} runs):",
                s.original.len(),
                s.minimal.len(),
                s.invariant,
                s.runs
            );
            for l in s.minimal.render().lines() {
                let _ = writeln!(out, "  {l}");
            }
        }
        let _ = write!(out, "replay it: {replay}");
        out
    }
}

/// Explores `seeds` of the case on `jobs` threads (every 50th seed twice, for determinism),
/// after refusing a case no seed can run. `Ok` with the number of seeds when every one holds;
/// else the first failing seed, shrunk.
pub fn explore_seeds(case: &Case, seeds: Range<u64>, jobs: usize) -> Result<usize, Box<Failure>> {
    let mut runner = Runner::new(case.clone());
    if let Err(e) = runner.preflight(seeds.start) {
        panic!("the case cannot run: {e}");
    }
    let opts = ExploreOptions {
        first: seeds.start,
        end: seeds.end,
        jobs,
        determinism_every: 50,
    };
    let reports = explore(case, &opts, |_| {});
    let failed: Vec<&SeedReport> = reports.iter().filter(|r| r.failed()).collect();
    let Some(first) = failed.first() else {
        return Ok(reports.len());
    };
    let target = first.violations.first().map(|v| v.invariant);
    let shrunk = shrink_seed(&mut runner, first.seed, target, SHRINK_RUNS_MAX).ok().flatten();
    Err(Box::new(Failure {
        report: (*first).clone(),
        shrunk,
        failed: failed.len(),
        explored: reports.len(),
    }))
}

/// `explore_seeds`, panicking on a failure with `Failure::render` and the command
/// `replay(seed)` gives.
pub fn assert_seeds_hold(case: &Case, seeds: Range<u64>, jobs: usize, replay: impl Fn(u64) -> String) -> usize {
    match explore_seeds(case, seeds, jobs) {
        Ok(n) => n,
        Err(f) => panic!("{}", f.render(&replay(f.report.seed))),
    }
}
