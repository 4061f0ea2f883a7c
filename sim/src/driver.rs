//! The driver: runs a deployment of processes over the simulated broker in virtual time.
//!
//! Each process runs every stage of the topology through the production processing loop, like
//! `horizon run` started on several machines: a working stage's group has one member per
//! process, and each process keeps its own copy of every read replica in a group of its own. Virtual time jumps from event to event (the gateway's
//! publications, deliveries, steps, faults); nothing sleeps. A step costs virtual time in
//! proportion to the records it handled; a `Retry` backs off exponentially in virtual time.
//!
//! When every fault is over the run heals: it must consume everything (no lag in any group)
//! within the profile's heal budget, or it is stuck.

use crate::feed::Feed;
use crate::profile::FaultProfile;
use crate::schedule::{Fault, Schedule};
use crate::services::Stages;
use crate::trace::format_ns;
use crate::world::{Counters, Ev, Outgoing, SimConsumer, SimProducer, StagePlan, Who, World, WorldConfig};
use bytes::Bytes;
use horizon_core::bus::partition_for;
use horizon_core::memory::Broker;
use horizon_core::pipeline::Stage;
use horizon_core::processor::{Stats, StepOutcome};
use horizon_core::scenario::Scenario;
use horizon_core::topics;
use horizon_core::topology::Topology;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Virtual cost of one step, plus per record handled.
const STEP_NS: u64 = 50_000;
const RECORD_NS: u64 = 5_000;
/// Retry backoff bounds.
const BACKOFF_MIN_NS: u64 = 10_000_000;
const BACKOFF_MAX_NS: u64 = 1_000_000_000;
/// The gateway retries a refused publish after this long.
const GATEWAY_BACKOFF_NS: u64 = 100_000_000;
/// A bound on the events of one run, so no run can loop for ever.
const MAX_EVENTS: u64 = 50_000_000;
const MS: u64 = 1_000_000;

/// Everything a run is a function of.
pub struct RunSpec<'a> {
    pub scenario: &'a Scenario,
    pub topology: &'a Topology,
    /// Concrete: a swarm profile already resolved for the seed.
    pub profile: &'a FaultProfile,
    pub schedule: &'a Schedule,
    /// The feed with the schedule's feed faults applied.
    pub feed: &'a Feed,
    pub seed: u64,
    /// Keep the readable trace.
    pub render: bool,
}

/// What a run left behind, for the invariants.
pub struct Finished {
    pub broker: Broker,
    /// The read replicas of every process of the deployment (in flow order), by process.
    pub replicas: Vec<(usize, Vec<Box<dyn Stage>>)>,
    pub trace_digest: String,
    pub trace_entries: u64,
    pub lines: Vec<String>,
    /// Why the run did not finish consuming, if it did not.
    pub stuck: Option<String>,
    /// A non-retriable error from a processing loop.
    pub loop_error: Option<String>,
    pub counters: Counters,
    /// Virtual time at the end, and when the faults ended.
    pub virtual_ns: u64,
    pub heal_ns: u64,
    pub events: u64,
    pub stats: BTreeMap<&'static str, Stats>,
}

struct Driver<'a> {
    spec: &'a RunSpec<'a>,
    world: RefCell<World>,
    stages: Vec<Option<Stages>>,
    batches: Vec<Vec<Vec<Outgoing>>>,
    base: usize,
    /// Fault index → process slot, for scale-outs.
    scale_slot: BTreeMap<usize, usize>,
    cursor: usize,
    /// The next of the feed's raw (poison) records to publish.
    raw_cursor: usize,
    session_ns: u64,
}

/// Runs a deployment through the feed and the schedule.
pub fn simulate(spec: &RunSpec) -> Finished {
    let base = spec.profile.processes as usize;
    let total = base + spec.schedule.scale_outs();
    let first = Stages::build(spec.topology, spec.scenario);
    let plans: Vec<StagePlan> = spec
        .topology
        .stages()
        .iter()
        .map(|s| StagePlan {
            name: s.name,
            inputs: s.inputs,
            replica: s.replica,
        })
        .collect();
    let world = World::new(WorldConfig {
        seed: spec.seed,
        slots: total,
        stages: &plans,
        topics: spec.topology.topics(),
        protocol: spec.profile.protocol,
        max_poll_records: spec.profile.max_poll_records as usize,
        delivery: spec.schedule.delivery,
        faults: &spec.schedule.faults,
        render: spec.render,
        producer_message_bytes_max: spec.profile.producer_message_bytes_max,
        broker_message_bytes_max: spec.profile.broker_message_bytes_max,
    });
    let mut scale_slot = BTreeMap::new();
    for (i, f) in spec.schedule.faults.iter().enumerate() {
        if matches!(f, Fault::ScaleOut { .. }) {
            let slot = base + scale_slot.len();
            scale_slot.insert(i, slot);
        }
    }
    let mut d = Driver {
        spec,
        world: RefCell::new(world),
        stages: (0..total).map(|_| None).collect(),
        batches: (0..total).map(|_| (0..plans.len()).map(|_| Vec::new()).collect()).collect(),
        base,
        scale_slot,
        cursor: 0,
        raw_cursor: 0,
        session_ns: spec.profile.session_timeout_ms * MS,
    };
    d.stages[0] = Some(first);
    d.run()
}

impl Driver<'_> {
    fn run(mut self) -> Finished {
        let heal_ns = self.spec.schedule.end_ms().max(self.spec.feed.span_ms()) * MS;
        let deadline = heal_ns + self.spec.profile.heal_budget_ms * MS;
        {
            let mut w = self.world.borrow_mut();
            for p in 0..self.base {
                w.join_all(p);
            }
            if let Some(first) = self.next_feed_ns() {
                w.queue.push(first, Ev::Feed);
            }
            for (i, f) in self.spec.schedule.faults.iter().enumerate() {
                let starts = matches!(
                    f,
                    Fault::Crash { in_flush: false, .. } | Fault::Pause { .. } | Fault::Outage { .. } | Fault::ScaleOut { .. }
                );
                if starts {
                    w.queue.push(f.at_ms() * MS, Ev::Fault(i as u32));
                }
            }
            w.queue.push(heal_ns, Ev::Heal);
        }
        for p in 1..self.base {
            self.stages[p] = Some(Stages::build(self.spec.topology, self.spec.scenario));
        }
        let mut stuck = None;
        let mut loop_error = None;
        let mut events = 0u64;
        loop {
            let next = self.world.borrow_mut().queue.pop();
            let Some((at, ev)) = next else { break };
            if at > deadline {
                let w = self.world.borrow();
                stuck = Some(format!(
                    "still busy {} after the faults ended (budget {} ms): {} events pending, lag {:?}",
                    format_ns(at - heal_ns),
                    self.spec.profile.heal_budget_ms,
                    w.queue.len() + 1,
                    w.lag()
                ));
                break;
            }
            events += 1;
            if events > MAX_EVENTS {
                stuck = Some(format!("more than {MAX_EVENTS} events: the run does not settle"));
                break;
            }
            self.world.borrow_mut().now = at;
            if let Err(e) = self.handle(ev) {
                loop_error = Some(e);
                break;
            }
        }
        let mut w = self.world.into_inner();
        if stuck.is_none() && loop_error.is_none() {
            let down: Vec<usize> = (0..self.base).filter(|&p| !w.procs[p].up).collect();
            let lag = w.lag();
            if !down.is_empty() || !lag.is_empty() {
                stuck = Some(format!(
                    "the run went quiet with work left: processes down {down:?}, uncommitted records {lag:?}"
                ));
            }
        }
        let mut stats: BTreeMap<&'static str, Stats> = BTreeMap::new();
        let mut replicas = Vec::new();
        for (p, st) in self.stages.into_iter().enumerate() {
            let Some(st) = st else { continue };
            for (name, s) in st.stats() {
                let total = stats.entry(name).or_default();
                add_stats(total, &s);
            }
            if p < self.base {
                replicas.push((p, st.into_replicas()));
            }
        }
        Finished {
            trace_digest: w.trace.digest(),
            trace_entries: w.trace.entries(),
            lines: w.trace.take_lines(),
            stuck,
            loop_error,
            counters: w.counters.clone(),
            virtual_ns: w.now,
            heal_ns,
            events,
            stats,
            replicas,
            broker: std::mem::take(&mut w.broker),
        }
    }

    fn handle(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Feed => self.publish_feed(),
            Ev::Step { p, s, token } => return self.step(p as usize, s as usize, token),
            Ev::Deliver { g, tp, upto } => {
                let mut w = self.world.borrow_mut();
                if let Some((p, s)) = w.deliver(g as usize, tp as usize, upto as u64) {
                    w.wake(p, s);
                }
            }
            Ev::Fault(i) => self.fault(i as usize),
            Ev::Restart { p } => self.restart(p as usize),
            Ev::Expel { p, inc } => self.world.borrow_mut().expel(p as usize, inc),
            Ev::Resume { p } => {
                let mut w = self.world.borrow_mut();
                let p = p as usize;
                if w.procs[p].up && w.procs[p].paused_until <= w.now {
                    let now = w.now;
                    w.trace.entry(40, &[now, p as u64]);
                    w.trace.line(now, || format!("process p{p} resumes"));
                    for s in 0..w.stage_names.len() {
                        w.wake(p, s);
                    }
                }
            }
            Ev::Retire { p } => {
                let p = p as usize;
                if self.world.borrow().procs[p].up {
                    self.stages[p] = None;
                    self.batches[p].iter_mut().for_each(Vec::clear);
                    self.world.borrow_mut().retire(p);
                }
            }
            Ev::Heal => {
                let mut w = self.world.borrow_mut();
                w.healed = true;
                let now = w.now;
                w.trace.entry(41, &[now]);
                w.trace.line(now, || "faults are over: the run heals".to_string());
            }
        }
        Ok(())
    }

    /// When the gateway next has something to publish.
    fn next_feed_ns(&self) -> Option<u64> {
        let event = self.spec.feed.items.get(self.cursor).map(|i| i.at_ns);
        let raw = self.spec.feed.raw.get(self.raw_cursor).map(|r| r.at_ns);
        event.into_iter().chain(raw).min()
    }

    fn publish_feed(&mut self) {
        let mut w = self.world.borrow_mut();
        if w.unavailable() {
            let at = w.now + GATEWAY_BACKOFF_NS;
            w.queue.push(at, Ev::Feed);
            return;
        }
        let (items, raw) = (&self.spec.feed.items, &self.spec.feed.raw);
        let feed = w.layout.partitions_of(topics::MARKET_FEED);
        let (base, parts) = (feed.start, feed.len() as u32);
        let publish = |w: &mut World, key: &[u8], value: Bytes| {
            if w.gateway_refuses(key.len() + value.len()) {
                return;
            }
            let tp = base + partition_for(key, parts) as usize;
            w.append(tp, Bytes::copy_from_slice(key), value, Who::Gateway);
            w.counters.feed_published += 1;
        };
        loop {
            let now = w.now;
            let event = items.get(self.cursor).filter(|i| i.at_ns <= now);
            let poison = raw.get(self.raw_cursor).filter(|r| r.at_ns <= now);
            match (event, poison) {
                // At one instant, poison goes after that instant's trades.
                (Some(e), _) => {
                    let e = &e.event;
                    publish(&mut w, e.aggregate_id.as_bytes(), Bytes::from(e.encode()));
                    self.cursor += 1;
                }
                (None, Some(r)) => {
                    publish(&mut w, r.key.as_bytes(), r.value.clone());
                    self.raw_cursor += 1;
                }
                (None, None) => break,
            }
        }
        drop(w);
        if let Some(next) = self.next_feed_ns() {
            self.world.borrow_mut().queue.push(next, Ev::Feed);
        }
    }

    fn step(&mut self, p: usize, s: usize, token: u32) -> Result<(), String> {
        {
            let mut w = self.world.borrow_mut();
            let slot = &mut w.slots[p][s];
            if slot.token != token || !slot.scheduled {
                return Ok(());
            }
            slot.scheduled = false;
            if !w.procs[p].up {
                return Ok(());
            }
            let until = w.procs[p].paused_until;
            if until > w.now {
                w.schedule_step(p, s, until);
                return Ok(());
            }
        }
        let stage = self.stages[p].as_mut().expect("a live process has its stages").stage(s);
        let mut consumer = SimConsumer { world: &self.world, p, s };
        let mut producer = SimProducer {
            world: &self.world,
            p,
            s,
            batch: std::mem::take(&mut self.batches[p][s]),
        };
        let max = self.spec.profile.max_poll_records as usize;
        let outcome = stage.step(&mut consumer, &mut producer, max);
        let mut batch = producer.batch;
        batch.clear();
        self.batches[p][s] = batch;
        let crashes = {
            let mut guard = self.world.borrow_mut();
            let w = &mut *guard;
            let now = w.now;
            match outcome {
                Ok(StepOutcome::Progress(n)) => {
                    w.slots[p][s].backoff_ns = 0;
                    w.trace.entry(30, &[now, p as u64, s as u64, n as u64]);
                    // After progress the loop has published and committed everything; it polls
                    // again only if there is something to poll (else a delivery wakes it).
                    if w.has_work(p, s) {
                        w.schedule_step(p, s, now + STEP_NS + RECORD_NS * n as u64);
                    }
                }
                Ok(StepOutcome::Idle) => {
                    w.slots[p][s].backoff_ns = 0;
                    w.trace.entry(31, &[now, p as u64, s as u64]);
                }
                Ok(StepOutcome::Retry(_)) if w.crash_requests.iter().any(|(q, _)| *q == p) => {
                    // It died in the request: no retry, the crash below buries it.
                }
                Ok(StepOutcome::Retry(e)) => {
                    let slot = &mut w.slots[p][s];
                    slot.backoff_ns = (slot.backoff_ns * 2).clamp(BACKOFF_MIN_NS, BACKOFF_MAX_NS);
                    let backoff = slot.backoff_ns;
                    w.trace.entry(32, &[now, p as u64, s as u64, backoff]);
                    w.trace.line(now, || {
                        format!(
                            "{:<16} retry in {} ms: {e}",
                            crate::world::stage_label(&w.stage_names, p, s),
                            backoff / MS
                        )
                    });
                    w.schedule_step(p, s, now + backoff);
                }
                Err(e) => return Err(format!("{} at {}: {e}", w.who(p, s), format_ns(now))),
            }
            std::mem::take(&mut w.crash_requests)
        };
        for (p, down_ns) in crashes {
            self.crash(p, down_ns);
        }
        Ok(())
    }

    fn crash(&mut self, p: usize, down_ns: u64) {
        if !self.world.borrow().procs[p].up {
            return;
        }
        if let Some(mut st) = self.stages[p].take() {
            // What a dying process keeps: nothing. (`crash` first, as the loop's own API says,
            // then the whole process goes, service objects and all.)
            for s in 0..st.len() {
                st.stage(s).crash();
            }
        }
        self.batches[p].iter_mut().for_each(Vec::clear);
        let mut w = self.world.borrow_mut();
        w.process_died(p, self.session_ns);
        let at = w.now + down_ns;
        w.queue.push(at, Ev::Restart { p: p as u16 });
    }

    fn restart(&mut self, p: usize) {
        let (up, retired) = {
            let w = self.world.borrow();
            (w.procs[p].up, w.procs[p].retired)
        };
        if up || retired {
            return;
        }
        self.stages[p] = Some(Stages::build(self.spec.topology, self.spec.scenario));
        self.world.borrow_mut().join_all(p);
    }

    fn fault(&mut self, i: usize) {
        let f = &self.spec.schedule.faults[i];
        match *f {
            Fault::Crash { process, down_ms, .. } => {
                let p = process as usize;
                if p < self.base {
                    self.crash(p, down_ms * MS);
                }
            }
            Fault::Pause { process, for_ms, .. } => {
                let p = process as usize;
                let mut w = self.world.borrow_mut();
                if p >= self.base || !w.procs[p].up {
                    return;
                }
                let now = w.now;
                let until = now + for_ms * MS;
                w.procs[p].paused_until = w.procs[p].paused_until.max(until);
                w.trace.entry(42, &[now, p as u64, until]);
                w.trace.line(now, || format!("FAULT process p{p} stops until {}", format_ns(until)));
                if for_ms * MS >= self.session_ns {
                    let inc = w.procs[p].incarnation;
                    w.queue.push(now + self.session_ns, Ev::Expel { p: p as u16, inc });
                }
                w.queue.push(until, Ev::Resume { p: p as u16 });
            }
            Fault::Outage { for_ms, .. } => self.world.borrow_mut().start_outage(for_ms * MS),
            Fault::ScaleOut { for_ms, .. } => {
                let p = self.scale_slot[&i];
                self.stages[p] = Some(Stages::build(self.spec.topology, self.spec.scenario));
                let mut w = self.world.borrow_mut();
                w.join_all(p);
                let at = w.now + for_ms * MS;
                w.queue.push(at, Ev::Retire { p: p as u16 });
            }
            _ => {}
        }
    }
}

fn add_stats(total: &mut Stats, s: &Stats) {
    total.records_in += s.records_in;
    for (t, n) in &s.events_in {
        *total.events_in.entry(*t).or_insert(0) += n;
    }
    total.outputs += s.outputs;
    total.dead_letters += s.dead_letters;
    total.outputs_refused += s.outputs_refused;
    total.undecodable_skipped += s.undecodable_skipped;
    total.restored_records += s.restored_records;
    total.redelivered_skipped += s.redelivered_skipped;
    total.publish_retries += s.publish_retries;
    total.commits += s.commits;
}
