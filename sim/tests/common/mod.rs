//! Shared helpers of the simulator's tests.
#![allow(dead_code)]

use horizon_core::scenario::Scenario;
use horizon_sim::{ExploreOptions, SeedReport};

/// The scenarios the simulator explores: the shipped ones and its own.
pub const SCENARIOS: [&str; 4] = ["flash-crash", "trend", "chop", "quick"];

pub fn scenario(name: &str) -> Scenario {
    let path = if name == "quick" {
        format!("{}/scenarios/quick.toml", env!("CARGO_MANIFEST_DIR"))
    } else {
        format!("{}/../scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"))
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Scenario::from_toml(&text, &path).unwrap_or_else(|e| panic!("{e}"))
}

pub fn seeds(first: u64, end: u64) -> ExploreOptions {
    ExploreOptions {
        first,
        end,
        jobs: 2,
        determinism_every: 4,
    }
}

/// Every failure, one per line, for an assertion message.
pub fn failures(reports: &[SeedReport]) -> String {
    reports
        .iter()
        .filter(|r| r.failed())
        .flat_map(|r| r.violations.iter().map(move |v| format!("seed {}: {v}", r.seed)))
        .collect::<Vec<_>>()
        .join("\n")
}
