//! The read side (CQRS): projections of the event log for queries.
//!
//! Bars per symbol and interval, the portfolio view (positions, value, P&L and the value and
//! drawdown series), the risk dashboard, each user's notification feed, and an audit trail of
//! every event with its causation chain. A projection is a pure function of the set of events
//! it applied: events are applied once by id, and every collection is keyed by event content
//! (time, id), never by arrival, so any delivery order or duplication gives byte-identical state,
//! and replaying the log from the start rebuilds it exactly.

use crate::event::{Bar, Event, EventType, Notification, Payload, Position, Rebalance, RiskCrossing};
use crate::fixed::Fixed;
use crate::scenario::Scenario;
use crate::service::{Output, Rejection, Service};
use crate::time::{format_duration_ms, Timestamp};
use crate::topics;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;

pub const NAME: &str = "projections";

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub event_type: EventType,
    pub aggregate_id: String,
    pub ts: Timestamp,
    pub producer: String,
    pub causation_id: String,
    pub correlation_id: String,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SignalRow {
    pub ts: Timestamp,
    pub direction: crate::event::Direction,
    pub strength: Fixed,
    pub target_weight: Fixed,
    pub changed: bool,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PortfolioLog {
    /// Rebalances by "time id".
    pub rebalances: BTreeMap<String, (Timestamp, Rebalance)>,
    /// Closes per signal bar end, per symbol, from the signals the portfolio received.
    pub closes: BTreeMap<Timestamp, BTreeMap<String, Fixed>>,
    pub signals_changed: BTreeMap<String, BTreeMap<Timestamp, SignalRow>>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Projections {
    pub bars: BTreeMap<String, BTreeMap<String, BTreeMap<Timestamp, Bar>>>,
    pub portfolios: BTreeMap<String, PortfolioLog>,
    /// Risk crossings per portfolio, by "time id".
    pub risk: BTreeMap<String, BTreeMap<String, (Timestamp, RiskCrossing)>>,
    /// Notifications per user, by "time id".
    pub notifications: BTreeMap<String, BTreeMap<String, (Timestamp, Notification)>>,
    /// Every event by id. A hash map for speed (it takes every trade); serialised in id order,
    /// so its iteration order never reaches an output.
    #[serde(serialize_with = "sorted", deserialize_with = "presized")]
    pub audit: FxHashMap<String, AuditEntry>,
    pub events_by_type: BTreeMap<EventType, u64>,
}

fn sorted<S: serde::Serializer>(map: &FxHashMap<String, AuditEntry>, s: S) -> Result<S::Ok, S::Error> {
    let ordered: BTreeMap<&String, &AuditEntry> = map.iter().collect();
    ordered.serialize(s)
}

/// Reads the audit trail into a table sized once from the encoded length (postcard gives it),
/// instead of serde's cautious start and a dozen rehashes of every id on the way to the
/// millions of entries a day of ticks holds, with a quarter more room for the tail replayed
/// next (a restored table filled to the brim would rehash every id at the first few thousand
/// new events; untouched room costs address space, not memory). Capped, so a corrupt length
/// cannot reserve unbounded memory before the data runs out.
fn presized<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FxHashMap<String, AuditEntry>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = FxHashMap<String, AuditEntry>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of event ids to audit entries")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let n = m.size_hint().unwrap_or(0).min(1 << 24);
            let n = n + n / 4;
            let mut out = FxHashMap::with_capacity_and_hasher(n, Default::default());
            while let Some((k, v)) = m.next_entry()? {
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries)
}

fn time_key(ts: Timestamp, id: &str) -> String {
    format!("{} {id}", ts.to_rfc3339())
}

impl Projections {
    /// Applies an event once; a second delivery of the same id changes nothing.
    pub fn apply(&mut self, e: &Event) -> bool {
        if self.audit.contains_key(&e.id) {
            return false;
        }
        self.audit.insert(
            e.id.clone(),
            AuditEntry {
                event_type: e.event_type(),
                aggregate_id: e.aggregate_id.clone(),
                ts: e.ts,
                producer: e.meta.producer.clone(),
                causation_id: e.meta.causation_id.clone(),
                correlation_id: e.meta.correlation_id.clone(),
            },
        );
        *self.events_by_type.entry(e.event_type()).or_insert(0) += 1;
        match &e.payload {
            Payload::Trade(_) => {}
            Payload::Bar(b) => {
                self.bars
                    .entry(b.symbol.clone())
                    .or_default()
                    .entry(format_duration_ms(b.interval_ms))
                    .or_default()
                    .insert(b.start, b.clone());
            }
            Payload::Signal(s) => {
                let log = self.portfolios.entry(s.portfolio_id.clone()).or_default();
                log.closes.entry(s.bar.end()).or_default().insert(s.symbol.clone(), s.bar.close);
                if s.changed {
                    let row = SignalRow {
                        ts: e.ts,
                        direction: s.direction,
                        strength: s.strength,
                        target_weight: s.target_weight,
                        changed: s.changed,
                    };
                    log.signals_changed.entry(s.symbol.clone()).or_default().insert(e.ts, row);
                }
            }
            Payload::Risk(r) => {
                self.risk
                    .entry(r.portfolio_id.clone())
                    .or_default()
                    .insert(time_key(e.ts, &e.id), (e.ts, r.clone()));
            }
            Payload::Rebalance(r) => {
                self.portfolios
                    .entry(r.portfolio_id.clone())
                    .or_default()
                    .rebalances
                    .insert(time_key(e.ts, &e.id), (e.ts, r.clone()));
            }
            Payload::Notification(n) => {
                self.notifications
                    .entry(n.user_id.clone())
                    .or_default()
                    .insert(time_key(e.ts, &e.id), (e.ts, n.clone()));
            }
        }
        true
    }

    /// The causation chain of an event, from the event back to its root.
    pub fn causation_chain(&self, id: &str) -> Vec<(String, AuditEntry)> {
        let mut chain = Vec::new();
        let mut cur = id.to_string();
        while let Some(entry) = self.audit.get(&cur) {
            chain.push((cur.clone(), entry.clone()));
            if entry.causation_id.is_empty() || chain.len() > 64 {
                break;
            }
            cur = entry.causation_id.clone();
        }
        chain
    }
}

/// One point of the portfolio's value series.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ValuePoint {
    pub ts: Timestamp,
    pub value: Fixed,
    pub drawdown: Fixed,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortfolioView {
    pub portfolio_id: String,
    pub cash: Fixed,
    pub positions: Vec<Position>,
    pub value: Fixed,
    pub realized_pnl: Fixed,
    pub unrealized_pnl: Fixed,
    pub total_pnl: Fixed,
    pub fees: Fixed,
    pub rebalances: u64,
    pub max_drawdown: Fixed,
    pub series: Vec<ValuePoint>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RiskRow {
    pub ts: Timestamp,
    pub kind: crate::event::RiskKind,
    pub symbol: String,
    pub crossing: crate::event::Crossing,
    pub value: Fixed,
    pub threshold: Fixed,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RiskDashboard {
    /// Crossings currently active ("kind symbol").
    pub active: Vec<String>,
    pub entered: u64,
    pub cleared: u64,
    pub history: Vec<RiskRow>,
}

/// The portfolio's view at the end of its log: the value series is the portfolio as of each
/// signal bar (the latest rebalance at or before it) valued at that bar's closes.
pub fn portfolio_view(pid: &str, initial_cash: Fixed, log: &PortfolioLog) -> PortfolioView {
    let rebalances: Vec<&(Timestamp, Rebalance)> = log.rebalances.values().collect();
    let mut next = 0;
    let mut cash = initial_cash;
    let mut holdings: BTreeMap<String, Fixed> = BTreeMap::new();
    let mut marks: BTreeMap<String, Fixed> = BTreeMap::new();
    let mut peak = Fixed::ZERO;
    let mut max_drawdown = Fixed::ZERO;
    let mut series = Vec::with_capacity(log.closes.len());
    for (t, closes) in &log.closes {
        while next < rebalances.len() && rebalances[next].0 <= *t {
            let r = &rebalances[next].1;
            cash = r.cash;
            holdings = r.positions.iter().map(|p| (p.symbol.clone(), p.quantity)).collect();
            next += 1;
        }
        for (s, c) in closes {
            marks.insert(s.clone(), *c);
        }
        let value = cash
            + holdings
                .iter()
                .map(|(s, q)| q.mul(marks.get(s).copied().unwrap_or(Fixed::ZERO)))
                .sum();
        peak = peak.max(value);
        let drawdown = (peak - value).div(peak).unwrap_or(Fixed::ZERO);
        max_drawdown = max_drawdown.max(drawdown);
        series.push(ValuePoint { ts: *t, value, drawdown });
    }
    let last = rebalances.last().map(|(_, r)| r);
    let positions: Vec<Position> = last
        .map(|r| {
            r.positions
                .iter()
                .map(|p| Position {
                    mark_price: marks.get(&p.symbol).copied().unwrap_or(p.mark_price),
                    ..p.clone()
                })
                .collect()
        })
        .unwrap_or_default();
    let value = series.last().map(|p| p.value).unwrap_or(initial_cash);
    let realized = last.map(|r| r.realized_pnl).unwrap_or(Fixed::ZERO);
    let unrealized: Fixed = positions.iter().map(|p| p.quantity.mul(p.mark_price - p.avg_price)).sum();
    PortfolioView {
        portfolio_id: pid.to_string(),
        cash: last.map(|r| r.cash).unwrap_or(initial_cash),
        positions,
        value,
        realized_pnl: realized,
        unrealized_pnl: unrealized,
        total_pnl: value - initial_cash,
        fees: last.map(|r| r.fees).unwrap_or(Fixed::ZERO),
        rebalances: rebalances.len() as u64,
        max_drawdown,
        series,
    }
}

pub fn risk_dashboard(rows: &BTreeMap<String, (Timestamp, RiskCrossing)>) -> RiskDashboard {
    let mut active = BTreeMap::new();
    let mut entered = 0;
    let mut cleared = 0;
    let history: Vec<RiskRow> = rows
        .values()
        .map(|(ts, r)| {
            let key = format!("{} {}", r.kind.as_str(), r.symbol).trim().to_string();
            match r.crossing {
                crate::event::Crossing::Entered => {
                    entered += 1;
                    active.insert(key, ());
                }
                crate::event::Crossing::Cleared => {
                    cleared += 1;
                    active.remove(&key);
                }
            }
            RiskRow {
                ts: *ts,
                kind: r.kind,
                symbol: r.symbol.clone(),
                crossing: r.crossing,
                value: r.value,
                threshold: r.threshold,
            }
        })
        .collect();
    RiskDashboard {
        active: active.into_keys().collect(),
        entered,
        cleared,
        history,
    }
}

/// Digests of every projection, for equality checks across runs, buses and rebuilds.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Digests {
    pub bars: String,
    pub portfolio: String,
    pub risk: String,
    pub notifications: String,
    pub audit: String,
    /// Over all of the above.
    pub all: String,
}

fn digest_of<T: Serialize>(v: &T) -> String {
    let bytes = serde_json::to_vec(v).expect("projections serialise");
    blake3::hash(&bytes).to_hex()[..32].to_string()
}

/// The read models, ready to serve or snapshot.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Views {
    pub portfolios: BTreeMap<String, PortfolioView>,
    pub risk: BTreeMap<String, RiskDashboard>,
    pub notifications: BTreeMap<String, Vec<(Timestamp, Notification)>>,
}

pub struct ProjectionService {
    pub initial_cash: BTreeMap<String, Fixed>,
}

impl ProjectionService {
    pub fn from_scenario(s: &Scenario) -> ProjectionService {
        ProjectionService {
            initial_cash: [(s.portfolio.id.clone(), s.portfolio.cash)].into_iter().collect(),
        }
    }

    pub fn views(&self, p: &Projections) -> Views {
        Views {
            // Every configured portfolio has a view from the start, even before its first event.
            portfolios: self
                .initial_cash
                .keys()
                .chain(p.portfolios.keys())
                .map(|pid| {
                    let empty = PortfolioLog::default();
                    let log = p.portfolios.get(pid).unwrap_or(&empty);
                    (
                        pid.clone(),
                        portfolio_view(pid, self.initial_cash.get(pid).copied().unwrap_or(Fixed::ZERO), log),
                    )
                })
                .collect(),
            risk: p.risk.iter().map(|(pid, rows)| (pid.clone(), risk_dashboard(rows))).collect(),
            notifications: p
                .notifications
                .iter()
                .map(|(u, rows)| (u.clone(), rows.values().cloned().collect()))
                .collect(),
        }
    }

    pub fn digests(&self, p: &Projections) -> Digests {
        let views = self.views(p);
        let bars = digest_of(&p.bars);
        let portfolio = digest_of(&views.portfolios);
        let risk = digest_of(&views.risk);
        let notifications = digest_of(&views.notifications);
        let audit = digest_of(&p.audit.iter().collect::<BTreeMap<_, _>>());
        let all = digest_of(&[&bars, &portfolio, &risk, &notifications, &audit]);
        Digests {
            bars,
            portfolio,
            risk,
            notifications,
            audit,
            all,
        }
    }
}

impl Service for ProjectionService {
    type State = Projections;

    fn encode_state(&self, state: &Self::State) -> Option<Vec<u8>> {
        crate::snapshot::state_to_bytes(state)
    }

    fn decode_state(&self, bytes: &[u8]) -> Option<Self::State> {
        crate::snapshot::state_from_bytes(bytes)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [crate::bus::Topic] {
        &[
            topics::MARKET_FEED,
            topics::BARS,
            topics::SIGNALS,
            topics::RISK,
            topics::PORTFOLIO,
            topics::NOTIFICATIONS,
        ]
    }

    /// One task for every partition: a read model needs all of them. Each query process keeps
    /// its own replica (its own consumer group) rather than sharing partitions.
    fn task(&self, _tp: crate::bus::TopicPartition) -> u32 {
        0
    }

    fn handle(&self, state: &mut Projections, event: &Event, _out: &mut Vec<Output>) -> Result<(), Rejection> {
        state.apply(event);
        Ok(())
    }
}
