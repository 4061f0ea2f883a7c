//! A window of a recording: the records the simulator replays (`horizon explore`, `replay`,
//! `shrink` on a recorded scenario).
//!
//! The simulator runs a few minutes of market per seed, so it takes a window of the file:
//! the first `events` records at or after `start` and at least `skip` records into the file.
//! The file is streamed up to the window's end and no further; nothing before the window is
//! kept. The window is read here, at the edge (`horizon-sim` does no I/O), once per command,
//! and handed to the simulator as events.

use super::{open_feed, Feed, MarketRecord, ReadError, ReadReport};
use horizon_core::event::Event;
use horizon_core::scenario::Scenario;
use horizon_core::Timestamp;
use std::path::Path;

/// Which records of a recording a simulator run replays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// The first record taken is at or after this exchange time (a bar's start).
    pub start: Option<Timestamp>,
    /// ... and at least this many records into the file (records, not lines: headers, skipped
    /// and ignored lines do not count).
    pub skip: u64,
    /// Records taken; `None`: to the end of the file.
    pub events: Option<usize>,
}

/// A window read: its events in file order, where it starts, and what the reader counted up
/// to the window's end.
pub struct WindowRead {
    pub events: Vec<Event>,
    /// Index of the window's first record among the file's records (0-based).
    pub first_record: u64,
    /// Exchange time of the first and last record of the window.
    pub span: (Timestamp, Timestamp),
    /// Whether the window's records are bars (else trades).
    pub bars: bool,
    pub report: ReadReport,
}

impl WindowRead {
    /// For a person: `1000 bars of ftx.csv from 2022-01-01T00:00:00Z (records 0..1000)`.
    pub fn describe(&self) -> String {
        let n = self.events.len() as u64;
        format!(
            "{n} {} of {} from {} to {} (records {}..{})",
            if self.bars { "bars" } else { "trades" },
            file_name(&self.report.file),
            self.span.0,
            self.span.1,
            self.first_record,
            self.first_record + n
        )
    }
}

fn file_name(path: &str) -> &str {
    Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or(path)
}

impl Feed {
    fn next_record(&mut self) -> Option<Result<MarketRecord, ReadError>> {
        self.peeked.take().or_else(|| self.reader.next())
    }
}

/// Reads a window of the scenario's recording under `data_dir`. A recording without records,
/// a read error (a malformed line without `skip_bad`), or a window that holds no record (past
/// the end of the file) is an error naming the file and why.
pub fn read_window(scenario: &Scenario, data_dir: &Path, window: Window) -> Result<WindowRead, String> {
    let mut feed = open_feed(scenario, data_dir).map_err(|e| e.to_string())?;
    feed.require_records(false).map_err(|e| e.to_string())?;
    let hint = |e: ReadError| {
        let skip = if e.problem.skippable() {
            " (--skip-bad skips such lines)"
        } else {
            ""
        };
        format!("{e}{skip}")
    };
    let mut index = 0u64;
    let mut last_seen: Option<Timestamp> = None;
    let first = loop {
        match feed.next_record() {
            None => break None,
            Some(Err(e)) => return Err(hint(e)),
            Some(Ok(r)) => {
                let here = index;
                index += 1;
                last_seen = Some(last_seen.map_or(r.ts(), |t| t.max(r.ts())));
                if here >= window.skip && window.start.is_none_or(|s| r.ts() >= s) {
                    break Some((here, r));
                }
            }
        }
    };
    let file = file_name(&feed.report().file).to_string();
    let Some((first_record, first)) = first else {
        let mut why = Vec::new();
        if window.skip > 0 && index <= window.skip {
            why.push(format!("--skip {} is past its last record ({index} records)", window.skip));
        }
        if let Some(s) = window.start {
            let last = last_seen.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
            why.push(format!("no record at or after --start {s} (the latest is at {last})"));
        }
        return Err(format!("{file}: the window is empty: {}", why.join("; ")));
    };
    let take = window.events.unwrap_or(usize::MAX);
    let bars = matches!(first, MarketRecord::Bar(_));
    let (mut from, mut to) = (first.ts(), first.ts());
    let mut events = vec![first.into_event()];
    while events.len() < take {
        match feed.next_record() {
            None => break,
            Some(Err(e)) => return Err(hint(e)),
            Some(Ok(r)) => {
                from = from.min(r.ts());
                to = to.max(r.ts());
                events.push(r.into_event());
            }
        }
    }
    Ok(WindowRead {
        events,
        first_record,
        span: (from, to),
        bars,
        report: feed.report().clone(),
    })
}
