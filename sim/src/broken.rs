//! Deliberately broken services: the simulator's teeth. Each makes one classic mistake of
//! stream processing; the simulator must catch each within a bounded number of seeds and shrink
//! the failure to a short schedule. Only built with the `broken-services` feature (the tests
//! always have it; `horizon explore --broken NAME` needs a binary built with it).
//!
//! - `no-dedup`: a signals service that evaluates every bar it receives, so a bar the market
//!   published twice (a publish that failed half-way and was sent again) moves the averages
//!   twice.
//! - `commit-first`: a market stage that commits its input offsets before its outputs are
//!   published, so a crash in between loses them.
//! - `arrival-order`: a portfolio manager that rebalances on each signal as it arrives, instead
//!   of merging the symbols in event time, so its decisions depend on delivery interleaving.
//! - `no-restore`: a market stage that keeps its open bars in memory only and does not rebuild
//!   them by replay, so a restart or a rebalance loses them.
//! - `hash-order`: a signals service that lists its strategies' views in hash-map order, so the
//!   bytes it publishes differ from run to run (and between the processes of one run).
//! - `whole-dead-letter`: a market stage that puts the whole original into a dead letter and
//!   retries a refused publish as if the broker were down (what `horizon run` did before issue
//!   17): one record over the producer's limit stops it for good.

use horizon_core::bus::{BusError, Consumer, Polled, Producer, Record, Topic, TopicPartition};
use horizon_core::event::{Event, Payload, RebalanceReason};
use horizon_core::fixed::Fixed;
use horizon_core::pipeline::Stage;
use horizon_core::portfolio::{Portfolio, PortfolioConfig};
use horizon_core::processor::{decode_dead_letter, DEAD_LETTER_ORIGINAL_BYTES_MAX};
use horizon_core::processor::{Stats, StepOutcome};
use horizon_core::service::{Output, Rejection, Service};
use horizon_core::signals::{SignalConfig, SignalService, SymbolSignals};
use horizon_core::topics;
use horizon_core::topology::{StageSpec, Topology};
use std::cell::RefCell;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Broken {
    NoDedup,
    CommitFirst,
    ArrivalOrder,
    NoRestore,
    HashOrder,
    WholeDeadLetter,
}

impl Broken {
    pub const ALL: [Broken; 6] = [
        Broken::NoDedup,
        Broken::CommitFirst,
        Broken::ArrivalOrder,
        Broken::NoRestore,
        Broken::HashOrder,
        Broken::WholeDeadLetter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Broken::NoDedup => "no-dedup",
            Broken::CommitFirst => "commit-first",
            Broken::ArrivalOrder => "arrival-order",
            Broken::NoRestore => "no-restore",
            Broken::HashOrder => "hash-order",
            Broken::WholeDeadLetter => "whole-dead-letter",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Broken::NoDedup => "signals evaluate a re-published bar again (no dedup by bar sequence)",
            Broken::CommitFirst => "market commits input offsets before its outputs are published",
            Broken::ArrivalOrder => "portfolio rebalances per signal in arrival order (no event-time merge)",
            Broken::NoRestore => "market keeps open bars in memory only; restore rebuilds nothing",
            Broken::HashOrder => "signals list strategy views in hash-map order (bytes differ per run)",
            Broken::WholeDeadLetter => "market dead-letters records whole and retries a refused publish for ever",
        }
    }

    pub fn parse(name: &str) -> Option<Broken> {
        Broken::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The shipped topology with this one mistake in it, named after it.
    pub fn topology(self) -> Topology {
        let t = Topology::shipped().named(self.name());
        let market = horizon_core::market::NAME;
        let signals = horizon_core::signals::NAME;
        let manager = horizon_core::manager::NAME;
        match self {
            Broken::CommitFirst => t.map_stage(market, |spec| spec.wrap(|inner| Box::new(CommitFirst { inner, held: Vec::new() }))),
            Broken::NoRestore => t.map_stage(market, |spec| spec.wrap(|inner| Box::new(NoRestore { inner }))),
            Broken::WholeDeadLetter => t.map_stage(market, |spec| {
                spec.wrap(|inner| {
                    Box::new(WholeDeadLetter {
                        inner,
                        large: RefCell::new(BTreeMap::new()),
                    })
                })
            }),
            Broken::NoDedup => t.map_stage(signals, |spec| {
                StageSpec::service(spec.name, spec.inputs, spec.outputs, |s| {
                    Ok(NoDedupSignals {
                        inner: SignalService::new(SignalConfig::from_scenario(s)),
                    })
                })
            }),
            Broken::HashOrder => t.map_stage(signals, |spec| {
                StageSpec::service(spec.name, spec.inputs, spec.outputs, |s| {
                    Ok(HashOrderSignals {
                        inner: SignalService::new(SignalConfig::from_scenario(s)),
                    })
                })
            }),
            Broken::ArrivalOrder => t.map_stage(manager, |spec| {
                StageSpec::service(spec.name, spec.inputs, spec.outputs, |s| {
                    Ok(ArrivalOrderManager {
                        config: PortfolioConfig::from_scenario(s),
                    })
                })
            }),
        }
    }
}

// ---- no-dedup ----

#[derive(Default)]
pub struct NoDedupState {
    symbols: BTreeMap<String, SymbolSignals>,
}

/// The signals service, minus its check of bar sequence numbers.
pub struct NoDedupSignals {
    inner: SignalService,
}

impl Service for NoDedupSignals {
    type State = NoDedupState;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn inputs(&self) -> &'static [Topic] {
        self.inner.inputs()
    }

    fn handle(&self, state: &mut NoDedupState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Bar(bar) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::BARS)));
        };
        if bar.interval_ms != self.inner.config.interval_ms {
            return Ok(());
        }
        let sym = state.symbols.entry(bar.symbol.clone()).or_insert_with(|| self.inner.new_symbol());
        out.push(self.inner.evaluate(sym, bar, event));
        Ok(())
    }
}

// ---- hash-order ----

/// The signals service, with its strategy views reordered through a `HashMap` (whose order is
/// seeded per map from the OS: the one source of randomness the simulator cannot control).
pub struct HashOrderSignals {
    inner: SignalService,
}

impl Service for HashOrderSignals {
    type State = horizon_core::signals::SignalState;

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn inputs(&self) -> &'static [Topic] {
        self.inner.inputs()
    }

    fn handle(&self, state: &mut Self::State, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let from = out.len();
        self.inner.handle(state, event, out)?;
        for o in &mut out[from..] {
            if let Payload::Signal(s) = &mut o.event.payload {
                let by_name: std::collections::HashMap<String, horizon_core::event::StrategyView> =
                    s.strategies.drain(..).map(|v| (v.strategy.clone(), v)).collect();
                s.strategies = by_name.into_values().collect();
            }
        }
        Ok(())
    }
}

// ---- commit-first ----

/// A producer that acknowledges at once and publishes nothing: what the loop inside
/// `CommitFirst` is given, so it commits before anything is on the broker.
struct Holding<'a> {
    held: &'a mut Vec<(Topic, u32, Vec<u8>, Vec<u8>)>,
}

impl Producer for Holding<'_> {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        self.held.push((topic, partition, key.to_vec(), value.to_vec()));
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Runs a stage, lets it commit, and only then publishes what it produced.
pub struct CommitFirst {
    inner: Box<dyn Stage>,
    held: Vec<(Topic, u32, Vec<u8>, Vec<u8>)>,
}

impl CommitFirst {
    fn publish(&mut self, producer: &mut dyn Producer) -> Result<(), BusError> {
        for (t, p, k, v) in &self.held {
            producer.send(t, *p, k, v)?;
        }
        producer.flush()?;
        self.held.clear();
        Ok(())
    }
}

impl Stage for CommitFirst {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn inputs(&self) -> &'static [Topic] {
        self.inner.inputs()
    }
    fn step(&mut self, consumer: &mut dyn Consumer, producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError> {
        if !self.held.is_empty() {
            if let Err(e) = self.publish(producer) {
                return if e.is_retriable() { Ok(StepOutcome::Retry(e)) } else { Err(e) };
            }
        }
        let outcome = self.inner.step(consumer, &mut Holding { held: &mut self.held }, max_records)?;
        if !self.held.is_empty() {
            if let Err(e) = self.publish(producer) {
                return if e.is_retriable() { Ok(StepOutcome::Retry(e)) } else { Err(e) };
            }
        }
        Ok(outcome)
    }
    fn crash(&mut self) {
        self.held.clear();
        self.inner.crash();
    }
    fn stats(&self) -> &Stats {
        self.inner.stats()
    }
}

// ---- whole-dead-letter ----

/// The market, with dead letters that carry their original whole (the consumer side remembers
/// every record too large for a letter's bound, the producer side puts it back) and a producer
/// that reports a refused record as the broker being unavailable.
pub struct WholeDeadLetter {
    inner: Box<dyn Stage>,
    /// Polled records over the letters' bound, by position.
    large: RefCell<BTreeMap<(String, u32, u64), bytes::Bytes>>,
}

struct Remembering<'a> {
    inner: &'a mut dyn Consumer,
    large: &'a RefCell<BTreeMap<(String, u32, u64), bytes::Bytes>>,
}

impl Consumer for Remembering<'_> {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        let polled = self.inner.poll(max_records)?;
        if let Polled::Records(records) = &polled {
            for r in records.iter().filter(|r| r.value.len() > DEAD_LETTER_ORIGINAL_BYTES_MAX) {
                self.large
                    .borrow_mut()
                    .insert((r.topic.to_string(), r.partition, r.offset), r.value.clone());
            }
        }
        Ok(polled)
    }
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        self.inner.commit(offsets)
    }
    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        self.inner.committed(tp)
    }
    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        self.inner.fetch(tp, from, to)
    }
}

struct Inflating<'a> {
    inner: &'a mut dyn Producer,
    large: &'a RefCell<BTreeMap<(String, u32, u64), bytes::Bytes>>,
}

impl Inflating<'_> {
    fn retriable(e: BusError) -> BusError {
        match e {
            BusError::Refused(r) => BusError::Unavailable(format!("{} record(s) not accepted", r.len())),
            e => e,
        }
    }
}

impl Producer for Inflating<'_> {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        let whole = (topic == topics::DEADLETTER)
            .then(|| decode_dead_letter(value))
            .flatten()
            .and_then(|mut d| {
                let at = (d.source_topic.clone(), d.source_partition, d.source_offset);
                d.original = self.large.borrow().get(&at)?.clone();
                Some(prost::Message::encode_to_vec(&d))
            });
        self.inner
            .send(topic, partition, key, whole.as_deref().unwrap_or(value))
            .map_err(Inflating::retriable)
    }
    fn flush(&mut self) -> Result<(), BusError> {
        self.inner.flush().map_err(Inflating::retriable)
    }
}

impl Stage for WholeDeadLetter {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn inputs(&self) -> &'static [Topic] {
        self.inner.inputs()
    }
    fn step(&mut self, consumer: &mut dyn Consumer, producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError> {
        let mut c = Remembering {
            inner: consumer,
            large: &self.large,
        };
        let mut p = Inflating {
            inner: producer,
            large: &self.large,
        };
        self.inner.step(&mut c, &mut p, max_records)
    }
    fn crash(&mut self) {
        self.large.borrow_mut().clear();
        self.inner.crash();
    }
    fn stats(&self) -> &Stats {
        self.inner.stats()
    }
}

// ---- arrival-order ----

/// One portfolio as the arrival-order manager sees it.
struct ArrivalDesk {
    portfolio: Portfolio,
    targets: BTreeMap<String, Fixed>,
    /// Next bar sequence number expected per symbol.
    next_seq: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct ArrivalState {
    desks: BTreeMap<String, ArrivalDesk>,
}

/// Rebalances on each signal as it arrives: the marks and targets of the other symbols are
/// whatever arrived before, so the result depends on the interleaving.
pub struct ArrivalOrderManager {
    config: PortfolioConfig,
}

impl Service for ArrivalOrderManager {
    type State = ArrivalState;

    fn name(&self) -> &'static str {
        horizon_core::manager::NAME
    }

    fn inputs(&self) -> &'static [Topic] {
        &[topics::SIGNALS]
    }

    fn handle(&self, state: &mut ArrivalState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Signal(s) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::SIGNALS)));
        };
        let c = &self.config;
        let desk = state.desks.entry(s.portfolio_id.clone()).or_insert_with(|| ArrivalDesk {
            portfolio: Portfolio::new(&c.id, c.cash),
            targets: BTreeMap::new(),
            next_seq: BTreeMap::new(),
        });
        let ArrivalDesk {
            portfolio,
            targets,
            next_seq: seen,
        } = desk;
        // It does drop what it has seen (by bar sequence): the mistake is the order, not dedup.
        if seen.get(&s.symbol).is_some_and(|&n| s.bar.seq < n) {
            return Ok(());
        }
        seen.insert(s.symbol.clone(), s.bar.seq + 1);
        portfolio.mark(&s.symbol, s.bar.close);
        targets.insert(s.symbol.clone(), s.target_weight);
        let fills = portfolio.plan(targets, c, false);
        if fills.is_empty() {
            return Ok(());
        }
        fills.iter().for_each(|f| portfolio.apply(f));
        let payload = Payload::Rebalance(portfolio.rebalanced(RebalanceReason::Signal, fills));
        let ev = Event::derived(event, self.name(), 0, s.portfolio_id.clone(), event.ts, payload);
        out.push(Output {
            topic: topics::PORTFOLIO,
            key: s.portfolio_id.clone(),
            event: ev,
        });
        Ok(())
    }
}

// ---- no-restore ----

/// A consumer whose log reads come back empty: the stage's restore rebuilds nothing.
struct Forgetful<'a> {
    inner: &'a mut dyn Consumer,
}

impl Consumer for Forgetful<'_> {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        self.inner.poll(max_records)
    }
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        self.inner.commit(offsets)
    }
    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        self.inner.committed(tp)
    }
    fn fetch(&mut self, _tp: TopicPartition, _from: u64, _to: u64) -> Result<Vec<Record>, BusError> {
        Ok(Vec::new())
    }
}

pub struct NoRestore {
    inner: Box<dyn Stage>,
}

impl Stage for NoRestore {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn inputs(&self) -> &'static [Topic] {
        self.inner.inputs()
    }
    fn step(&mut self, consumer: &mut dyn Consumer, producer: &mut dyn Producer, max_records: usize) -> Result<StepOutcome, BusError> {
        self.inner.step(&mut Forgetful { inner: consumer }, producer, max_records)
    }
    fn crash(&mut self) {
        self.inner.crash();
    }
    fn stats(&self) -> &Stats {
        self.inner.stats()
    }
}
