//! `horizon query VIEW --log PATH [--at TIME|EVENT_ID|OFFSETS]`: a read model as of a past point.
//!
//! Time travel is a replay: the projections are a pure function of the events they applied, so
//! the state as of a point is the projection of the log's events up to it. `--at` takes an
//! RFC 3339 time (events with an event time at or before it), an event id (the state at that
//! event's time, e.g. the risk state when a signal fired), or per-partition offsets
//! (`signals/0:120,portfolio/0:8`: records before those offsets; unlisted partitions in full).

use horizon_core::audit::{verify, Line};
use horizon_core::event::Event;
use horizon_core::projections::{ProjectionService, Projections};
use horizon_core::time::Timestamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct QueryArgs {
    #[command(subcommand)]
    pub view: View,
    /// The audit log to replay (`horizon sim --out DIR` writes DIR/audit.log).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// The scenario that produced the log (for the portfolio's starting cash).
    #[arg(long, global = true)]
    pub scenario: Option<String>,
    /// A point in the past: an RFC 3339 time, an event id, or `topic/partition:offset,...`.
    #[arg(long, global = true)]
    pub at: Option<String>,
    /// Answer even if the log's hash chain does not verify (by default such a log is refused,
    /// naming its first altered, removed or inserted record).
    #[arg(long, global = true)]
    pub no_verify: bool,
}

#[derive(clap::Subcommand)]
pub enum View {
    /// Cash, positions, value, P&L and drawdown (the value series with --series).
    Portfolio {
        #[arg(long)]
        series: bool,
    },
    /// Positions only.
    Positions,
    /// Bars of one symbol and interval.
    Bars {
        #[arg(long)]
        symbol: String,
        #[arg(long, default_value = "1m")]
        interval: String,
        /// Only the last N bars.
        #[arg(long)]
        last: Option<usize>,
    },
    /// The risk dashboard: active crossings and their history.
    Risk,
    /// One user's notification feed.
    Notifications {
        #[arg(long)]
        user: String,
    },
    /// One event with its causation chain back to the root.
    Event { id: String },
}

enum Cut {
    Everything,
    Time(Timestamp),
    Offsets(BTreeMap<String, u64>),
}

pub fn run(args: QueryArgs, topology: &horizon_core::topology::Topology) -> Result<(), String> {
    let log = args
        .log
        .clone()
        .ok_or("--log PATH is required: the audit log to replay (horizon sim --out DIR writes DIR/audit.log)")?;
    let lines = crate::audit_cmd::read_log(&log)?;
    // The hash chain is checked on a second thread while this one replays (`audit::verify` costs
    // about as much as the replay itself), and no answer is printed from a log that fails it.
    std::thread::scope(|scope| {
        let verified = (!args.no_verify).then(|| scope.spawn(|| verify(lines.iter().map(|(n, l)| (*n, l)))));
        let answer = answer(&args, &log, &lines, topology);
        if let Some(verified) = verified {
            let report = verified.join().map_err(|_| "the hash chain check panicked".to_string())?;
            report.map_err(|t| {
                format!(
                    "{}: {t}; no answer from a log whose hash chain does not verify (--no-verify answers anyway)",
                    log.display()
                )
            })?;
        }
        println!("{}", serde_json::to_string_pretty(&answer?).map_err(|e| e.to_string())?);
        Ok(())
    })
}

/// The view as of the cut, replayed from the log's records.
fn answer(
    args: &QueryArgs,
    log: &Path,
    lines: &[(usize, Line)],
    topology: &horizon_core::topology::Topology,
) -> Result<serde_json::Value, String> {
    let records: Vec<_> = lines
        .iter()
        .filter_map(|(_, l)| match l {
            Line::Record(r) => Some(r),
            Line::Seal(_) => None,
        })
        .collect();
    let events: Vec<(String, u64, Event)> = records
        .iter()
        .filter_map(|r| {
            Event::decode(&r.value)
                .ok()
                .map(|e| (format!("{}/{}", r.topic, r.partition), r.offset, e))
        })
        .collect();
    let cut = match args.at.as_deref() {
        None => Cut::Everything,
        Some(at) => {
            if let Some(t) = Timestamp::parse_rfc3339(at) {
                Cut::Time(t)
            } else if let Some((_, _, e)) = events.iter().find(|(_, _, e)| e.id == at) {
                Cut::Time(e.ts)
            } else if at.contains(':') && at.contains('/') {
                // Shaped like offsets (an RFC 3339 time or an id that failed above is not).
                match horizon_core::bus::parse_offsets(at) {
                    Ok(o) if !o.is_empty() => Cut::Offsets(o),
                    Ok(_) => return Err(format!("--at `{at}`: no offsets given")),
                    Err(why) => return Err(format!("--at: {why}")),
                }
            } else {
                return Err(format!(
                    "--at `{at}`: not an RFC 3339 time, an event id in {}, or topic/partition:offset,...",
                    log.display()
                ));
            }
        }
    };
    let mut projections = Projections::default();
    for (tp, offset, e) in &events {
        let keep = match &cut {
            Cut::Everything => true,
            Cut::Time(t) => e.ts <= *t,
            Cut::Offsets(o) => o.get(tp).is_none_or(|limit| offset < limit),
        };
        if keep {
            projections.apply(e);
        }
    }
    let service = match &args.scenario {
        Some(s) => ProjectionService::from_scenario(&crate::sim_cmd::load_scenario(s, topology)?.1),
        None => ProjectionService {
            initial_cash: BTreeMap::new(),
        },
    };
    let views = service.views(&projections);
    let out = match &args.view {
        View::Portfolio { series } => {
            let mut v = serde_json::to_value(&views.portfolios).map_err(|e| e.to_string())?;
            if !series {
                for p in v.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                    p.as_object_mut().map(|o| o.remove("series"));
                }
            }
            if args.scenario.is_none() {
                eprintln!(
                    "horizon: note: without --scenario the starting cash is unknown, so value and P&L before the first rebalance read as 0"
                );
            }
            v
        }
        View::Positions => serde_json::to_value(
            views
                .portfolios
                .iter()
                .map(|(k, v)| (k.clone(), v.positions.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
        .map_err(|e| e.to_string())?,
        View::Bars { symbol, interval, last } => {
            let bars = projections.bars.get(symbol).and_then(|m| m.get(interval)).ok_or_else(|| {
                let known: Vec<String> = projections
                    .bars
                    .iter()
                    .flat_map(|(s, m)| m.keys().map(move |i| format!("{s} {i}")))
                    .collect();
                format!("no {interval} bars for `{symbol}` at that point; known: {}", known.join(", "))
            })?;
            let skip = last.map(|n| bars.len().saturating_sub(n)).unwrap_or(0);
            serde_json::to_value(bars.values().skip(skip).collect::<Vec<_>>()).map_err(|e| e.to_string())?
        }
        View::Risk => serde_json::to_value(&views.risk).map_err(|e| e.to_string())?,
        View::Notifications { user } => {
            serde_json::to_value(views.notifications.get(user).cloned().unwrap_or_default()).map_err(|e| e.to_string())?
        }
        View::Event { id } => {
            let chain = projections.causation_chain(id);
            if chain.is_empty() {
                return Err(format!("no event `{id}` in {} at that point", log.display()));
            }
            let event = events.iter().find(|(_, _, e)| e.id == *id).map(|(_, _, e)| e.clone());
            serde_json::json!({"event": event, "causation_chain": chain.into_iter().map(|(id, a)| serde_json::json!({"id": id, "entry": a})).collect::<Vec<_>>()})
        }
    };
    Ok(out)
}
