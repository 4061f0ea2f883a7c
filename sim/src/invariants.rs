//! The invariants every run is checked against, named so a Kafka engineer recognises them.
//!
//! - `lost-write`: something published was never applied where it should have been: a record
//!   on a topic a read replica consumes is missing from its read model (the projections' audit
//!   trail, a user's `ReadModel::applied`), a valid feed trade never reached its bar, a bar
//!   never produced its signal, an invalid record has no dead letter.
//! - `double-apply`: an effect applied twice: one event id published with two different
//!   contents, one logical effect (a bar, a signal, a rebalance, a risk crossing, a
//!   notification) published under two ids, a bar counting a trade twice, a read model counting
//!   an event twice (`ReadModel::tallies`).
//! - `non-convergent`: a replica's final read-model digests differ from the fault-free
//!   reference run of the same scenario, seed and feed.
//! - `non-deterministic`: the same seed and schedule ran twice gave two trace digests.
//! - `rebuild-mismatch`: read models rebuilt by replaying the final log from offset 0 differ
//!   from the live replica.
//!
//! The replica checks hold for every read replica of the topology, a user's included; the
//! checks of the log (ids, effects, bars, dead letters) are of the shipped topics.
//! - `stuck`: after the faults ended, the deployment did not consume everything within the
//!   heal budget.
//! - `loop-error`: a processing loop returned a non-retriable error; `panic`: code panicked.

use crate::driver::Finished;
use crate::services::{drain, NoProducer, Stages};
use horizon_core::bus::{BusError, Consumer, Polled, Record, TopicPartition};
use horizon_core::event::{Event, Payload};
use horizon_core::memory::Broker;
use horizon_core::pipeline::{ReadDigests, Stage};
use horizon_core::processor::decode_dead_letter;
use horizon_core::scenario::Scenario;
use horizon_core::time::Timestamp;
use horizon_core::topics;
use horizon_core::topology::Topology;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    LostWrite,
    DoubleApply,
    NonConvergent,
    NonDeterministic,
    RebuildMismatch,
    Stuck,
    LoopError,
    Panic,
}

impl Invariant {
    pub const ALL: [Invariant; 8] = [
        Invariant::LostWrite,
        Invariant::DoubleApply,
        Invariant::NonConvergent,
        Invariant::NonDeterministic,
        Invariant::RebuildMismatch,
        Invariant::Stuck,
        Invariant::LoopError,
        Invariant::Panic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::LostWrite => "lost-write",
            Invariant::DoubleApply => "double-apply",
            Invariant::NonConvergent => "non-convergent",
            Invariant::NonDeterministic => "non-deterministic",
            Invariant::RebuildMismatch => "rebuild-mismatch",
            Invariant::Stuck => "stuck",
            Invariant::LoopError => "loop-error",
            Invariant::Panic => "panic",
        }
    }

    pub fn parse(name: &str) -> Option<Invariant> {
        Invariant::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken invariant, with what shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// Collects violations, keeping a count and the first few examples of each.
#[derive(Default)]
struct Findings {
    by: BTreeMap<Invariant, (usize, Vec<String>)>,
}

const EXAMPLES: usize = 3;

impl Findings {
    fn add(&mut self, inv: Invariant, detail: impl FnOnce() -> String) {
        let e = self.by.entry(inv).or_default();
        e.0 += 1;
        if e.1.len() < EXAMPLES {
            e.1.push(detail());
        }
    }

    fn into_violations(self) -> Vec<Violation> {
        self.by
            .into_iter()
            .map(|(invariant, (n, examples))| Violation {
                invariant,
                detail: if n > examples.len() {
                    format!("{} (and {} more)", examples.join("; "), n - examples.len())
                } else {
                    examples.join("; ")
                },
            })
            .collect()
    }
}

/// Every record of the final log, decoded where it decodes.
struct Log {
    /// (topic, partition, offset, event, raw value)
    events: Vec<(TopicPartition, u64, Event, bytes::Bytes)>,
    /// Records that do not decode (outside the dead-letter topic): (topic, partition, offset, raw).
    undecodable: Vec<(TopicPartition, u64, bytes::Bytes)>,
    /// The dead letters of each source record (not those of a refused output), by position.
    letters_at: BTreeMap<(String, u32, u64), Vec<horizon_proto::v1::DeadLetter>>,
}

fn read_log(broker: &Broker) -> Log {
    let mut events = Vec::new();
    let mut undecodable = Vec::new();
    let mut letters_at: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for tp in broker.all_partitions() {
        for r in broker.read(tp, 0, broker.end_offset(tp)) {
            if tp.topic == topics::DEADLETTER {
                if let Some(d) = decode_dead_letter(&r.value) {
                    if d.refused_topic.is_empty() {
                        letters_at
                            .entry((d.source_topic.clone(), d.source_partition, d.source_offset))
                            .or_default()
                            .push(d);
                    }
                }
            } else if let Ok(e) = Event::decode(&r.value) {
                events.push((tp, r.offset, e, r.value));
            } else {
                undecodable.push((tp, r.offset, r.value));
            }
        }
    }
    Log {
        events,
        undecodable,
        letters_at,
    }
}

/// A process's read replicas' digests, reusing those of an earlier process (in `computed`)
/// whose replicas hold equal state: digests are a function of the state.
fn replica_digests(replicas: &[Box<dyn Stage>], computed: &[(&[Box<dyn Stage>], ReadDigests)]) -> ReadDigests {
    let same = |a: &[Box<dyn Stage>], b: &[Box<dyn Stage>]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x.read_replica(), y.read_replica()) {
                (Some(x), Some(y)) => x.same_state(y),
                _ => false,
            })
    };
    for (other, d) in computed {
        if same(replicas, other) {
            return d.clone();
        }
    }
    ReadDigests::of(replicas.iter().map(|r| r.as_ref()))
}

/// Checks a finished run of `topology`. `reference` is the fault-free run's digests on the
/// same feed. Returns the violations and each process's replica digests.
pub fn check(
    f: &mut Finished,
    scenario: &Scenario,
    topology: &Topology,
    reference: &ReadDigests,
) -> (Vec<Violation>, Vec<(usize, ReadDigests)>) {
    let mut out = Findings::default();
    if let Some(s) = &f.stuck {
        out.add(Invariant::Stuck, || s.clone());
    }
    if let Some(e) = &f.loop_error {
        out.add(Invariant::LoopError, || e.clone());
    }
    let log = read_log(&f.broker);
    check_log(&log, scenario, &mut out);
    let rebuilt = rebuild(&mut f.broker, scenario, topology);
    let mut computed: Vec<(&[Box<dyn Stage>], ReadDigests)> = Vec::new();
    let mut result = Vec::new();
    for (p, replicas) in &f.replicas {
        let digests = replica_digests(replicas, &computed);
        for r in replicas {
            check_replica(*p, r.as_ref(), &log, &mut out);
        }
        let differing = digests.differing(reference);
        if !differing.is_empty() {
            out.add(Invariant::NonConvergent, || {
                format!(
                    "replica p{p}: {} digest differs from the fault-free reference ({} vs {})",
                    differing.join(", "),
                    short(&digests.all),
                    short(&reference.all)
                )
            });
        }
        match &rebuilt {
            Ok(r) => {
                let r = replica_digests(r, &[(replicas.as_slice(), digests.clone())]);
                let differing = digests.differing(&r);
                if !differing.is_empty() {
                    out.add(Invariant::RebuildMismatch, || {
                        format!(
                            "replica p{p}: {} differs from the read models rebuilt from offset 0 ({} vs {})",
                            differing.join(", "),
                            short(&digests.all),
                            short(&r.all)
                        )
                    });
                }
            }
            Err(e) => out.add(Invariant::RebuildMismatch, || format!("the rebuild from offset 0 failed: {e}")),
        }
        computed.push((replicas, digests.clone()));
        result.push((*p, digests));
    }
    (out.into_violations(), result)
}

/// The first 16 hex digits of a digest: enough to tell two apart in a report.
fn short(d: &str) -> &str {
    &d[..d.len().min(16)]
}

fn check_log(log: &Log, scenario: &Scenario, out: &mut Findings) {
    // One id, one content. Not for feed trades with an unknown symbol: their id is made of the
    // garbage they carry (the generator's malformed trades of two symbols can share one), they
    // are the exchange's doing, and the market dead-letters them.
    let symbols: BTreeSet<String> = scenario.symbols().into_iter().collect();
    let mut by_id: BTreeMap<&str, (&bytes::Bytes, TopicPartition, u64)> = BTreeMap::new();
    for (tp, offset, e, raw) in &log.events {
        if matches!(&e.payload, Payload::Trade(t) if !symbols.contains(&t.symbol)) {
            continue;
        }
        match by_id.get(e.id.as_str()) {
            Some((first, ftp, fo)) if *first != raw => out.add(Invariant::DoubleApply, || {
                format!(
                    "event {} ({}) published twice with different content: {ftp}@{fo} and {tp}@{offset}",
                    e.id,
                    e.event_type()
                )
            }),
            Some(_) => {}
            None => {
                by_id.insert(&e.id, (raw, *tp, *offset));
            }
        }
    }
    // One logical effect, one id.
    let mut effects: BTreeMap<String, &str> = BTreeMap::new();
    for (tp, offset, e, _) in &log.events {
        let key = match &e.payload {
            Payload::Trade(_) => continue,
            Payload::Bar(b) => format!("bar {} {}ms {}", b.symbol, b.interval_ms, b.start),
            Payload::Signal(s) => format!("signal {} {} {}", s.portfolio_id, s.symbol, s.bar.start),
            Payload::Rebalance(r) => format!("rebalance {} at {}", r.portfolio_id, e.ts),
            Payload::Risk(r) => format!(
                "risk {} {} {} {:?} at {}",
                r.portfolio_id,
                r.kind.as_str(),
                r.symbol,
                r.crossing,
                e.ts
            ),
            Payload::Notification(n) => format!("notification to {} about {}: {}", n.user_id, n.source_event_id, n.message),
        };
        match effects.get(&key) {
            Some(first) if *first != e.id => out.add(Invariant::DoubleApply, || {
                format!("{key} published under two ids ({first}, {} at {tp}@{offset})", e.id)
            }),
            Some(_) => {}
            None => {
                effects.insert(key, &e.id);
            }
        }
    }
    check_bars(log, scenario, out);
    check_dead_letters(log, scenario, out);
}

/// Nothing invalid is lost and nothing is dead-lettered twice: every record that does not
/// decode, and every feed trade of a symbol the scenario does not trade, has a dead letter at
/// its position, from one service only (a redelivery may repeat that service's letter), and
/// each letter carries what it says: a prefix of the original (the processor bounds it, so the
/// letter fits the size limits), with its whole size and hash.
fn check_dead_letters(log: &Log, scenario: &Scenario, out: &mut Findings) {
    let symbols: BTreeSet<String> = scenario.symbols().into_iter().collect();
    let unknown_symbol = log.events.iter().filter_map(|(tp, offset, e, raw)| match &e.payload {
        Payload::Trade(t) if tp.topic == topics::MARKET_FEED && !symbols.contains(&t.symbol) => Some((*tp, *offset, raw)),
        _ => None,
    });
    let bad = log.undecodable.iter().map(|(tp, o, raw)| (*tp, *o, raw)).chain(unknown_symbol);
    for (tp, offset, raw) in bad {
        let key = (tp.topic.to_string(), tp.partition, offset);
        let letters = log.letters_at.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let Some(first) = letters.first() else {
            out.add(Invariant::LostWrite, || {
                format!("{tp}@{offset} ({} bytes) is invalid and has no dead letter", raw.len())
            });
            continue;
        };
        let services: BTreeSet<&str> = letters.iter().map(|d| d.service.as_str()).collect();
        if services.len() > 1 {
            out.add(Invariant::DoubleApply, || {
                format!(
                    "{tp}@{offset} is dead-lettered by {} services: {}",
                    services.len(),
                    services.iter().copied().collect::<Vec<_>>().join(", ")
                )
            });
        }
        let faithful = raw.starts_with(&first.original)
            && first.original_size == raw.len() as u64
            && first.original_blake3[..] == blake3::hash(raw).as_bytes()[..];
        if !faithful {
            out.add(Invariant::LostWrite, || {
                format!(
                    "the dead letter of {tp}@{offset} ({} bytes) does not carry it: {} bytes of original, size {}",
                    raw.len(),
                    first.original.len(),
                    first.original_size
                )
            });
        }
    }
}

/// Every valid trade the market accepted is counted in exactly one bar of the signal interval,
/// and every such bar produced a signal.
fn check_bars(log: &Log, scenario: &Scenario, out: &mut Findings) {
    let interval = scenario.signal_interval_ms();
    let symbols: BTreeSet<String> = scenario.symbols().into_iter().collect();
    let rejected: BTreeSet<&str> = log
        .letters_at
        .iter()
        .filter(|((topic, _, _), _)| topic == topics::MARKET_FEED)
        .flat_map(|(_, letters)| letters.iter().map(|d| d.event_id.as_str()))
        .filter(|id| !id.is_empty())
        .collect();
    // Accepted trades per (symbol, bar start), each trade id once.
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut expected: BTreeMap<(&str, Timestamp), u64> = BTreeMap::new();
    for (tp, _, e, _) in &log.events {
        // A recorded bar on the feed stands for its trades: it counts `trade_count` of them.
        let (symbol, ts, trades, valid) = match &e.payload {
            Payload::Trade(t) => (&t.symbol, t.ts_exchange, 1, t.price.is_positive() && t.quantity.is_positive()),
            Payload::Bar(b) if tp.topic == topics::MARKET_FEED => (&b.symbol, b.start, b.trade_count as u64, true),
            _ => continue,
        };
        if !symbols.contains(symbol) || !valid || rejected.contains(e.id.as_str()) || !seen.insert(&e.id) {
            continue;
        }
        *expected.entry((symbol, ts.floor_ms(interval))).or_insert(0) += trades;
    }
    let mut counted: BTreeMap<(&str, Timestamp), u64> = BTreeMap::new();
    let mut last_end: BTreeMap<&str, Timestamp> = BTreeMap::new();
    let mut bar_ids: BTreeMap<&str, (&str, Timestamp)> = BTreeMap::new();
    for (tp, _, e, _) in &log.events {
        let Payload::Bar(b) = &e.payload else { continue };
        if tp.topic != topics::BARS || b.interval_ms != interval || bar_ids.contains_key(e.id.as_str()) {
            continue;
        }
        bar_ids.insert(&e.id, (&b.symbol, b.start));
        *counted.entry((&b.symbol, b.start)).or_insert(0) += b.trade_count as u64;
        let end = last_end.entry(&b.symbol).or_insert(b.end());
        *end = (*end).max(b.end());
    }
    let keys: BTreeSet<(&str, Timestamp)> = expected.keys().chain(counted.keys()).copied().collect();
    for key in keys {
        let (symbol, start) = key;
        let closed = last_end.get(symbol).is_some_and(|end| start < *end);
        if !closed {
            continue; // still the open bar: not published yet
        }
        let (want, got) = (expected.get(&key).copied().unwrap_or(0), counted.get(&key).copied().unwrap_or(0));
        if got < want {
            out.add(Invariant::LostWrite, || {
                format!(
                    "{} valid trades of {symbol} in the bar at {start} never reached it (bar counts {got})",
                    want - got
                )
            });
        } else if got > want {
            out.add(Invariant::DoubleApply, || {
                format!("the {symbol} bar at {start} counts {got} trades, the feed holds {want}")
            });
        }
    }
    let caused: BTreeSet<&str> = log
        .events
        .iter()
        .filter(|(_, _, e, _)| matches!(e.payload, Payload::Signal(_)))
        .map(|(_, _, e, _)| e.meta.causation_id.as_str())
        .collect();
    for (id, (symbol, start)) in &bar_ids {
        if !caused.contains(id) {
            out.add(Invariant::LostWrite, || {
                format!("the {symbol} bar at {start} ({id}) never produced a signal")
            });
        }
    }
}

/// Every event on a topic the replica reads is applied (unless its record was dead-lettered:
/// refused, not lost), and its read model counts nothing twice.
fn check_replica(p: usize, stage: &dyn Stage, log: &Log, out: &mut Findings) {
    let Some(replica) = stage.read_replica() else { return };
    let name = stage.name();
    let inputs = stage.inputs();
    let refused = |tp: &TopicPartition, offset: u64| log.letters_at.contains_key(&(tp.topic.to_string(), tp.partition, offset));
    if !replica.holds_state() {
        if log
            .events
            .iter()
            .any(|(tp, offset, ..)| inputs.contains(&tp.topic) && !refused(tp, *offset))
        {
            out.add(Invariant::LostWrite, || format!("replica p{p}/{name} holds no read model at all"));
        }
        return;
    }
    for (tp, offset, e, _) in &log.events {
        if inputs.contains(&tp.topic) && !replica.has_applied(&e.id) && !refused(tp, *offset) {
            out.add(Invariant::LostWrite, || {
                format!("{tp}@{offset} ({} {}) is not in replica p{p}/{name}", e.event_type(), e.id)
            });
        }
    }
    for t in replica.tallies() {
        if t.counted != t.distinct {
            out.add(Invariant::DoubleApply, || {
                format!("replica p{p}/{name} counts {} {} but holds {}", t.counted, t.what, t.distinct)
            });
        }
    }
}

/// A consumer straight on a broker (no faults), for the rebuild: group `group`.
struct LogConsumer<'a> {
    broker: &'a mut Broker,
    group: &'a str,
}

const REBUILD_GROUP: &str = "sim.rebuild";

impl Consumer for LogConsumer<'_> {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        self.broker.poll(self.group, "rebuild", max_records)
    }
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        self.broker.commit(self.group, "rebuild", offsets)
    }
    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        Ok(self.broker.committed(self.group, tp))
    }
    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        Ok(self.broker.read(tp, from, to))
    }
}

/// Fresh read replicas of the topology that have read the final log from offset 0.
pub fn rebuild(broker: &mut Broker, scenario: &Scenario, topology: &Topology) -> Result<Vec<Box<dyn Stage>>, String> {
    let mut replicas = Stages::build(topology, scenario).into_replicas();
    for replica in replicas.iter_mut() {
        // A group per replica: each reads the log from offset 0.
        let group = format!("{REBUILD_GROUP}.{}", replica.name());
        broker.join(&group, "rebuild", replica.inputs());
        let mut consumer = LogConsumer { broker, group: &group };
        let drained = drain(replica.as_mut(), &mut consumer, &mut NoProducer, 4096).map_err(|e| e.to_string());
        consumer.broker.leave(&group, "rebuild");
        drained?;
    }
    Ok(replicas)
}
