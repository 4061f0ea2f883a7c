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
    /// Run every seed that is a multiple of `n` twice to check determinism (0: never, 1: every
    /// seed).
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
pub fn explore(case: &Case, opts: &ExploreOptions, progress: impl FnMut(&SeedReport)) -> Vec<SeedReport> {
    explore_until(case, opts, || false, progress)
}

/// [`explore`], taking no new seed once `stop` says so (a time budget at the command line:
/// the simulator itself has no clock). A seed already taken is run to its end, and seeds are
/// taken in order, so the reports are always the seeds `opts.first..k` for some `k`.
pub fn explore_until(
    case: &Case,
    opts: &ExploreOptions,
    stop: impl Fn() -> bool + Sync,
    mut progress: impl FnMut(&SeedReport),
) -> Vec<SeedReport> {
    let next = AtomicU64::new(opts.first);
    let stop = &stop;
    let (tx, rx) = mpsc::channel::<SeedReport>();
    let mut reports = Vec::with_capacity((opts.end.saturating_sub(opts.first)).min(1 << 20) as usize);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let next = &next;
            let case = case.clone();
            scope.spawn(move || {
                let mut runner = Runner::new(case);
                loop {
                    if stop() {
                        break;
                    }
                    // Taken in order, never past the end (an open range ends at u64::MAX).
                    let Ok(seed) = next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| (s < opts.end).then_some(s + 1)) else {
                        break;
                    };
                    // By the seed itself, not its place in the range: a seed is checked the same
                    // way whichever slice of a range it is run in.
                    let twice = opts.determinism_every > 0 && seed.is_multiple_of(opts.determinism_every);
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

/// The `k`-th (1-based) of `n` disjoint slices of the seeds `first..end`: contiguous, in
/// order, their lengths differ by at most one, and together they are exactly the range.
/// `None` unless `1 <= k <= n`.
pub fn shard(first: u64, end: u64, k: u64, n: u64) -> Option<(u64, u64)> {
    if k == 0 || k > n || end < first {
        return None;
    }
    let len = (end - first) as u128;
    let at = |i: u64| first + (len * i as u128 / n as u128) as u64;
    Some((at(k - 1), at(k)))
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

#[cfg(test)]
mod tests {
    use super::shard;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn shards_are_disjoint_and_cover_the_range_exactly(first in 0u64..u64::MAX / 2, len in 0u64..u64::MAX / 2, n in 1u64..64) {
            let end = first + len;
            let mut at = first;
            for k in 1..=n {
                let (a, b) = shard(first, end, k, n).unwrap();
                prop_assert_eq!(a, at, "slice {} starts where {} ended", k, k - 1);
                prop_assert!(b >= a);
                prop_assert!(b - a <= len / n + 1, "balanced");
                at = b;
            }
            prop_assert_eq!(at, end);
            prop_assert!(shard(first, end, 0, n).is_none());
            prop_assert!(shard(first, end, n + 1, n).is_none());
        }
    }

    #[test]
    fn small_ranges_split_as_expected() {
        assert_eq!(shard(0, 10, 1, 3), Some((0, 3)));
        assert_eq!(shard(0, 10, 2, 3), Some((3, 6)));
        assert_eq!(shard(0, 10, 3, 3), Some((6, 10)));
        assert_eq!(shard(0, u64::MAX, 2, 2), Some((u64::MAX / 2, u64::MAX)));
    }
}
