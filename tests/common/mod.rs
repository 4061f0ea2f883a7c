//! Shared by the snapshot tests (`scenarios.rs`, `recorded.rs`): the summary of a run's final
//! projections that insta snapshots — every count, the read models (thinned by the caller) and
//! the digests, with each bar series cut down to its length, first and last bar.

use horizon_core::pipeline::MemoryRun;
use horizon_core::projections::Digests;
use horizon_core::{Fixed, Timestamp};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
pub struct ProjectionSummary {
    events_by_type: BTreeMap<String, u64>,
    bars: BTreeMap<String, BTreeMap<String, BarSeriesSummary>>,
    portfolio: serde_json::Value,
    risk: serde_json::Value,
    notifications: serde_json::Value,
    audit_entries: usize,
    digests: Digests,
}

#[derive(Serialize)]
struct BarSeriesSummary {
    count: usize,
    first: (Timestamp, Fixed, Fixed),
    last: (Timestamp, Fixed, Fixed),
}

/// The read models of the run as JSON, for the caller to thin before `summarize`.
pub fn views(run: &MemoryRun) -> serde_json::Value {
    serde_json::to_value(run.pipeline.views()).unwrap()
}

pub fn summarize(run: &MemoryRun, views: serde_json::Value) -> ProjectionSummary {
    let p = run.pipeline.projections().unwrap();
    ProjectionSummary {
        events_by_type: p.events_by_type.iter().map(|(k, v)| (k.as_str().to_string(), *v)).collect(),
        bars: p
            .bars
            .iter()
            .map(|(sym, by_interval)| {
                let summaries = by_interval
                    .iter()
                    .map(|(iv, bars)| {
                        let f = bars.values().next().unwrap();
                        let l = bars.values().last().unwrap();
                        let summary = BarSeriesSummary {
                            count: bars.len(),
                            first: (f.start, f.open, f.close),
                            last: (l.start, l.open, l.close),
                        };
                        (iv.clone(), summary)
                    })
                    .collect();
                (sym.clone(), summaries)
            })
            .collect(),
        portfolio: views["portfolios"].clone(),
        risk: views["risk"].clone(),
        notifications: views["notifications"].clone(),
        audit_entries: p.audit.len(),
        digests: run.pipeline.digests(),
    }
}
