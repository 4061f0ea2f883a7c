//! Exploration past one machine: the result file `horizon explore --json FILE` writes, and
//! `horizon explore merge FILES...`, which reads the files of a range's shards and prints one
//! failure table as `explore` prints it.
//!
//! The file is versioned (`"format": 1`) and read strictly: an unknown field, a missing one or
//! another format is refused naming the file, never guessed at.

use crate::explore_cmd::{print_failures, rate, replay_command, seed_range, CaseArgs};
use horizon_sim::{SeedReport, Violation};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The result-file format this build writes and reads.
pub const FORMAT: u32 = 1;

/// `--shard K/N`: the K-th (from 1) of N slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub k: u64,
    pub n: u64,
}

/// Seeds `first..end` (end excluded; `end` is `u64::MAX` for an open range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seeds {
    pub first: u64,
    pub end: u64,
}

impl Seeds {
    fn len(self) -> u64 {
        self.end - self.first
    }
}

/// One failing seed: what it broke and the command that replays it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub seed: u64,
    /// Each with the invariant's name as the table prints it (`lost-write`).
    pub violations: Vec<Violation>,
    pub replay: String,
}

/// What one `explore --json FILE` ran and found.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultFile {
    pub format: u32,
    /// The scenario, the profile as given, the window and every flag that defines the case.
    pub case: CaseArgs,
    /// `--seeds` as given (the whole range every shard slices).
    pub range: Seeds,
    pub shard: Option<Shard>,
    /// The seeds actually run: the shard's slice of the range, or its start while `--time` lasted.
    pub ran: Seeds,
    pub seconds: f64,
    pub determinism_every: u64,
    pub failures: Vec<Failure>,
}

impl ResultFile {
    pub fn new(
        case: &CaseArgs,
        range: (u64, u64),
        shard: Option<Shard>,
        ran: (u64, u64),
        seconds: f64,
        determinism_every: u64,
        reports: &[SeedReport],
    ) -> ResultFile {
        let flags = case.flags();
        ResultFile {
            format: FORMAT,
            case: case.clone(),
            range: Seeds {
                first: range.0,
                end: range.1,
            },
            shard,
            ran: Seeds { first: ran.0, end: ran.1 },
            seconds,
            determinism_every,
            failures: reports
                .iter()
                .filter(|r| r.failed())
                .map(|r| Failure {
                    seed: r.seed,
                    violations: r.violations.clone(),
                    replay: replay_command(&flags, r.seed),
                })
                .collect(),
        }
    }

    pub fn write(&self, path: &Path) -> Result<(), String> {
        let json = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("--json {}: {e}", path.display()))
    }

    /// Reads and checks one file; every error names it.
    pub fn read(path: &Path) -> Result<ResultFile, String> {
        let name = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
        #[derive(Deserialize)]
        struct Version {
            format: Option<serde_json::Value>,
        }
        let version: Version = serde_json::from_str(&text).map_err(|e| format!("{name}: not an explore result file: {e}"))?;
        match version.format {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(FORMAT as u64) => {}
            Some(v) => return Err(format!("{name}: result format {v}; this build reads format {FORMAT}")),
            None => return Err(format!("{name}: not an explore result file: no `format` field")),
        }
        let file: ResultFile = serde_json::from_str(&text).map_err(|e| format!("{name}: malformed result file: {e}"))?;
        let ran = file.ran;
        if ran.end < ran.first {
            return Err(format!("{name}: malformed result file: `ran` ends before it starts"));
        }
        for f in &file.failures {
            if f.seed < ran.first || f.seed >= ran.end {
                return Err(format!(
                    "{name}: malformed result file: failing seed {} is outside the seeds run ({})",
                    f.seed,
                    seed_range(ran.first, ran.end)
                ));
            }
            if f.violations.is_empty() {
                return Err(format!("{name}: malformed result file: failing seed {} has no violation", f.seed));
            }
        }
        if !file.seconds.is_finite() || file.seconds < 0.0 {
            return Err(format!("{name}: malformed result file: `seconds` is {}", file.seconds));
        }
        Ok(file)
    }

    /// The failing seeds as the table prints them.
    fn reports(&self) -> Vec<SeedReport> {
        self.failures
            .iter()
            .map(|f| SeedReport {
                seed: f.seed,
                violations: f.violations.clone(),
                trace_digest: String::new(),
                faults: 0,
                feed_events: 0,
                virtual_ns: 0,
            })
            .collect()
    }
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Result files written by `horizon explore ... --json FILE`.
    #[arg(required = true, value_name = "FILES")]
    pub files: Vec<PathBuf>,
}

pub fn run_merge(args: MergeArgs) -> Result<(), String> {
    let mut files = Vec::with_capacity(args.files.len());
    for path in &args.files {
        files.push((path, ResultFile::read(path)?));
    }
    let (first_path, first) = &files[0];
    for (path, f) in &files[1..] {
        if f.case != first.case {
            return Err(format!(
                "{} and {} are different cases: `{}` vs `{}`",
                first_path.display(),
                path.display(),
                first.case.flags(),
                f.case.flags()
            ));
        }
    }
    let mut by_seed: Vec<&(&PathBuf, ResultFile)> = files.iter().collect();
    by_seed.sort_by_key(|(_, f)| (f.ran.first, f.ran.end));
    for pair in by_seed.windows(2) {
        let ((pa, a), (pb, b)) = (pair[0], pair[1]);
        if b.ran.first < a.ran.end && b.ran.len() > 0 && a.ran.len() > 0 {
            return Err(format!(
                "{} (seeds {}) and {} (seeds {}) overlap: each seed must be merged once",
                pa.display(),
                seed_range(a.ran.first, a.ran.end),
                pb.display(),
                seed_range(b.ran.first, b.ran.end)
            ));
        }
    }
    let seeds: u64 = files.iter().map(|(_, f)| f.ran.len()).sum();
    let seconds: f64 = files.iter().map(|(_, f)| f.seconds).sum();
    let mut reports: Vec<SeedReport> = files.iter().flat_map(|(_, f)| f.reports()).collect();
    reports.sort_by_key(|r| r.seed);
    let failed = reports.len() as u64;
    let slices: Vec<String> = by_seed.iter().map(|(_, f)| seed_range(f.ran.first, f.ran.end)).collect();
    println!(
        "merged {} result files of {}: seeds {}",
        files.len(),
        first.case.flags(),
        slices.join(" ")
    );
    println!(
        "{seeds} seeds in {seconds:.2} s summed over the files: {}; {failed} failed",
        rate(seeds, seconds)
    );
    if failed == 0 {
        println!("every invariant held for every seed");
        return Ok(());
    }
    print_failures(&first.case.flags(), &reports);
    Err(format!("{failed} of {seeds} seeds broke an invariant"))
}
