//! `alert-book`: the read model of the `alerts` topic, run as a read replica (every process
//! keeps a whole copy; the simulator checks it converges, rebuilds identically and applies every
//! alert once).
//!
//! Per symbol, its alerts in event order (by event time, then id: content, never arrival, so
//! any delivery order or duplication gives the same book), and counts per symbol and severity.
//! An alert is applied once by id; `tallies` sets what was counted against the ids held, so a
//! double application shows.

use crate::alerts::ALERTS;
use horizon_core::bus::{Topic, TopicPartition};
use horizon_core::event::{Event, Payload, Severity};
use horizon_core::scenario::Scenario;
use horizon_core::service::{Output, ReadModel, Rejection, Service, Tally};
use horizon_core::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const NAME: &str = "alert-book";
pub const INPUTS: &[Topic] = &[ALERTS];

/// One alert as the book shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRow {
    pub ts: Timestamp,
    pub id: String,
    pub severity: Severity,
    pub user_id: String,
    /// The bar it is about.
    pub source_event_id: String,
    pub message: String,
}

/// Alerts counted per severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub info: u64,
    pub warning: u64,
    pub critical: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.info + self.warning + self.critical
    }

    fn add(&mut self, s: Severity) {
        match s {
            Severity::Info => self.info += 1,
            Severity::Warning => self.warning += 1,
            Severity::Critical => self.critical += 1,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    /// Per symbol, by (event time, id).
    pub alerts: BTreeMap<String, BTreeMap<(Timestamp, String), AlertRow>>,
    pub counts: BTreeMap<String, Counts>,
    /// Every applied alert's id.
    pub applied: BTreeSet<String>,
}

impl Book {
    /// Every alert of a symbol, in event order.
    pub fn of(&self, symbol: &str) -> Vec<&AlertRow> {
        self.alerts.get(symbol).map(|m| m.values().collect()).unwrap_or_default()
    }

    /// Every alert, symbol by symbol.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &AlertRow)> {
        self.alerts.iter().flat_map(|(s, m)| m.values().map(move |r| (s.as_str(), r)))
    }

    pub fn total(&self) -> u64 {
        self.counts.values().map(Counts::total).sum()
    }
}

#[derive(Clone, Debug, Default)]
pub struct AlertBook;

impl AlertBook {
    pub fn from_scenario(_s: &Scenario) -> AlertBook {
        AlertBook
    }
}

/// blake3 of the value's JSON, 32 hex digits.
fn digest_of<T: Serialize>(v: &T) -> String {
    let json = serde_json::to_vec(v).expect("the book serialises");
    blake3::hash(&json).to_hex()[..32].to_string()
}

impl Service for AlertBook {
    type State = Book;

    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [Topic] {
        INPUTS
    }

    /// One task for every partition: the book needs all of them.
    fn task(&self, _tp: TopicPartition) -> u32 {
        0
    }

    fn handle(&self, book: &mut Book, event: &Event, _out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Notification(n) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {ALERTS}", event.event_type())));
        };
        if !book.applied.insert(event.id.clone()) {
            return Ok(());
        }
        book.counts.entry(n.symbol.clone()).or_default().add(n.severity);
        let row = AlertRow {
            ts: event.ts,
            id: event.id.clone(),
            severity: n.severity,
            user_id: n.user_id.clone(),
            source_event_id: n.source_event_id.clone(),
            message: n.message.clone(),
        };
        book.alerts
            .entry(n.symbol.clone())
            .or_default()
            .insert((event.ts, event.id.clone()), row);
        Ok(())
    }

    fn encode_state(&self, book: &Book) -> Option<Vec<u8>> {
        horizon_core::snapshot::state_to_bytes(book)
    }

    fn decode_state(&self, bytes: &[u8]) -> Option<Book> {
        horizon_core::snapshot::state_from_bytes(bytes)
    }
}

impl ReadModel for AlertBook {
    fn digests(&self, book: &Book) -> Vec<(&'static str, String)> {
        let alerts: BTreeMap<&String, Vec<&AlertRow>> = book.alerts.iter().map(|(s, m)| (s, m.values().collect())).collect();
        vec![("alerts", digest_of(&alerts)), ("counts", digest_of(&book.counts))]
    }

    fn applied(&self, book: &Book, event_id: &str) -> bool {
        book.applied.contains(event_id)
    }

    fn tallies(&self, book: &Book) -> Vec<Tally> {
        let listed: u64 = book.alerts.values().map(|m| m.len() as u64).sum();
        vec![
            Tally {
                what: "alerts".to_string(),
                counted: book.total(),
                distinct: book.applied.len() as u64,
            },
            Tally {
                what: "listed alerts".to_string(),
                counted: listed,
                distinct: book.applied.len() as u64,
            },
        ]
    }

    fn same_state(&self, a: &Book, b: &Book) -> bool {
        a == b
    }
}
