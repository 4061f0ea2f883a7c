//! Exploring seeds across cores, and shrinking a failing seed's schedule.
//!
//! Each run is single-threaded and deterministic; `explore` hands seeds to `jobs` threads and
//! collects their reports in seed order, whatever order they finish in. A panic in a run is
//! caught and reported as the `panic` invariant of that seed.

use crate::invariants::{Invariant, Violation};
use crate::profile::FaultProfile;
use crate::run::{Case, Outcome, Runner};
use crate::schedule::{shrink, Schedule};
use proptest::strategy::ValueTree;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// What one seed came to.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub trace_digest: String,
    pub faults: usize,
    pub feed_events: usize,
    pub virtual_ns: u64,
}

impl SeedReport {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct ExploreOptions {
    pub first: u64,
    /// One past the last seed.
    pub end: u64,
    pub jobs: usize,
    /// Run every `n`-th seed twice to check determinism (0: never, 1: every seed).
    pub determinism_every: u64,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs one seed (twice if `twice`), catching panics.
pub fn check_seed(runner: &mut Runner, seed: u64, twice: bool) -> SeedReport {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Outcome, String> {
        let (profile, tree) = runner.schedule_tree(seed)?;
        let schedule = tree.current();
        if twice {
            runner.run_twice(seed, &profile, &schedule)
        } else {
            runner.run_schedule(seed, &profile, &schedule, false)
        }
    }));
    let failed = |detail: String, invariant| SeedReport {
        seed,
        violations: vec![Violation { invariant, detail }],
        trace_digest: String::new(),
        faults: 0,
        feed_events: 0,
        virtual_ns: 0,
    };
    match result {
        Ok(Ok(o)) => SeedReport {
            seed,
            violations: o.violations,
            trace_digest: o.trace_digest,
            faults: o.schedule.len(),
            feed_events: o.feed_events,
            virtual_ns: o.virtual_ns,
        },
        Ok(Err(e)) => failed(e, Invariant::LoopError),
        Err(p) => failed(panic_message(p), Invariant::Panic),
    }
}

/// Runs every seed of `opts` on `opts.jobs` threads; `progress` sees each report as it comes.
/// Returns the reports in seed order.
pub fn explore(case: &Case, opts: &ExploreOptions, mut progress: impl FnMut(&SeedReport)) -> Vec<SeedReport> {
    let next = AtomicU64::new(opts.first);
    let (tx, rx) = mpsc::channel::<SeedReport>();
    let mut reports = Vec::with_capacity((opts.end.saturating_sub(opts.first)) as usize);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            let case = case.clone();
            scope.spawn(move || {
                let mut runner = Runner::new(case);
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= opts.end {
                        break;
                    }
                    let twice = opts.determinism_every > 0 && (seed - opts.first).is_multiple_of(opts.determinism_every);
                    if tx.send(check_seed(&mut runner, seed, twice)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for r in rx {
            progress(&r);
            reports.push(r);
        }
    });
    reports.sort_by_key(|r| r.seed);
    reports
}

/// A failing seed's schedule, shrunk.
pub struct Shrunk {
    pub invariant: Invariant,
    pub profile: FaultProfile,
    pub original: Schedule,
    pub minimal: Schedule,
    /// Runs spent shrinking.
    pub runs: usize,
    /// The minimal schedule's run, with its readable trace.
    pub outcome: Outcome,
}

/// Shrinks the schedule of `seed` while it keeps breaking `target` (or, if `None`, the first
/// invariant the seed breaks). `None` when the seed breaks nothing.
pub fn shrink_seed(runner: &mut Runner, seed: u64, target: Option<Invariant>, max_runs: usize) -> Result<Option<Shrunk>, String> {
    let (profile, mut tree) = runner.schedule_tree(seed)?;
    let original = tree.current();
    let twice = target == Some(Invariant::NonDeterministic);
    let breaks = |runner: &mut Runner, s: &Schedule| -> Result<Vec<Invariant>, String> {
        let r = catch_unwind(AssertUnwindSafe(|| {
            if twice {
                runner.run_twice_explained(seed, &profile, s, false)
            } else {
                runner.run_schedule(seed, &profile, s, false)
            }
        }));
        match r {
            Ok(Ok(o)) => Ok(o.violations.iter().map(|v| v.invariant).collect()),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(vec![Invariant::Panic]),
        }
    };
    let first = breaks(runner, &original)?;
    let invariant = match target {
        Some(t) if first.contains(&t) => t,
        Some(_) => return Ok(None),
        None => match first.first() {
            Some(i) => *i,
            None => return Ok(None),
        },
    };
    let (minimal, runs) = shrink(&mut tree, max_runs, |s| {
        breaks(runner, s).map(|v| v.contains(&invariant)).unwrap_or(false)
    });
    let outcome = if twice {
        let mut o = runner.run_twice(seed, &profile, &minimal)?;
        o.lines = runner.run_schedule(seed, &profile, &minimal, true)?.lines;
        o
    } else {
        runner.run_schedule(seed, &profile, &minimal, true)?
    };
    Ok(Some(Shrunk {
        invariant,
        profile,
        original,
        minimal,
        runs,
        outcome,
    }))
}
