//! The simulated broker: Kafka's log and consumer groups (`horizon_core::memory::Broker`) plus
//! what a network and a cluster add, in virtual time: when a record becomes visible to a group
//! (per-partition and per-process delivery delays, jitter, spikes), rebalances as each member
//! sees them (eager or incremental), requests that fail, outages, and publishes that crash,
//! half-succeed or (chaos) duplicate and reorder.
//!
//! `SimConsumer` and `SimProducer` implement the bus traits over a `World`, so the processing
//! loop (`horizon_core::processor`) runs here exactly as on Kafka. Every request is traced.

use crate::profile::Protocol;
use crate::schedule::{Delivery, Fault};
use crate::trace::{ranges, Trace};
use bytes::Bytes;
use horizon_core::bus::{BusError, Consumer, Polled, Producer, Record, RefusedRecord, Topic, TopicPartition};
use horizon_core::memory::Broker;
use horizon_core::topology::TopicSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Every partition of every topic, numbered in the topology's topic order.
#[derive(Clone, Debug)]
pub struct Layout {
    tps: Vec<TopicPartition>,
    base: Vec<usize>,
    topics: Vec<(Topic, u32)>,
}

impl Layout {
    pub fn new(specs: &[TopicSpec]) -> Layout {
        let mut tps = Vec::new();
        let mut base = Vec::new();
        for t in specs {
            base.push(tps.len());
            tps.extend((0..t.partitions).map(|p| TopicPartition {
                topic: t.name,
                partition: p,
            }));
        }
        Layout {
            tps,
            base,
            topics: specs.iter().map(|t| (t.name, t.partitions)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.tps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tps.is_empty()
    }

    pub fn tp(&self, i: usize) -> TopicPartition {
        self.tps[i % self.tps.len()]
    }

    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|(t, _)| *t == topic)
    }

    pub fn index(&self, tp: TopicPartition) -> Option<usize> {
        let t = self.topic_index(tp.topic)?;
        (tp.partition < self.topics[t].1).then(|| self.base[t] + tp.partition as usize)
    }

    pub fn topic_partitions(&self, t: usize) -> std::ops::Range<usize> {
        self.base[t]..self.base[t] + self.topics[t].1 as usize
    }

    /// The partitions of a topic, by name (empty for one the layout lacks).
    pub fn partitions_of(&self, topic: &str) -> std::ops::Range<usize> {
        match self.topic_index(topic) {
            Some(t) => self.topic_partitions(t),
            None => 0..0,
        }
    }
}

/// What the event queue holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ev {
    /// The gateway publishes the trades that are due.
    Feed,
    /// A stage of a process steps its loop, if `token` is still its latest.
    Step {
        p: u16,
        s: u8,
        token: u32,
    },
    /// Records of `tp` up to `upto` become visible to group `g`.
    Deliver {
        g: u16,
        tp: u16,
        upto: u32,
    },
    /// Schedule entry `i` starts.
    Fault(u32),
    Restart {
        p: u16,
    },
    /// The session of incarnation `inc` of process `p` times out: the groups expel it.
    Expel {
        p: u16,
        inc: u32,
    },
    Resume {
        p: u16,
    },
    /// A scaled-out process leaves for good.
    Retire {
        p: u16,
    },
    /// Every fault is over.
    Heal,
}

/// Events by (virtual time, sequence number): ties go to the earlier scheduled.
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
}

impl Queue {
    pub fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    pub fn pop(&mut self) -> Option<(u64, Ev)> {
        self.heap.pop().map(|Reverse((t, _, e))| (t, e))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Whose a consumer group is: one working stage's, shared by every process, or one process's
/// copy of a read replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupOf {
    Shared { stage: usize },
    Replica { process: usize, stage: usize },
}

/// A consumer group as the simulator tracks it.
pub struct GroupRt {
    pub name: String,
    pub of: GroupOf,
    /// The broker's generation of the group, as of its last rebalance.
    generation: u64,
    pub topics: &'static [Topic],
    /// Per partition index: records visible to the group's fetches.
    visible: Vec<u64>,
    deliver_pending: Vec<bool>,
    /// Per partition index: the live process whose member owns it.
    owner: Vec<Option<usize>>,
}

/// One stage of one process: its consumer-group member and its place in the schedule.
pub struct Slot {
    pub group: usize,
    /// Member name in the broker's group: `p<process>.<incarnation>`.
    pub member: String,
    /// In the broker's group right now (a dead member stays until its session times out).
    pub in_group: bool,
    /// Expelled while alive: it learns so on its next poll, gives everything up and rejoins.
    kicked: bool,
    seen_generation: u64,
    /// The partitions as the loop knows them (from the notices it has been given).
    assigned: Vec<usize>,
    position: Vec<u64>,
    notices: VecDeque<Polled>,
    round_robin: usize,
    pub token: u32,
    pub scheduled: bool,
    pub backoff_ns: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ProcRt {
    pub up: bool,
    /// Gone for good (a scaled-out process that left).
    pub retired: bool,
    pub incarnation: u32,
    pub paused_until: u64,
    delay_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OneShotKind {
    Fail(crate::schedule::Request),
    PartialFlush,
    /// Process-wide: the process dies in its next publish, down for this long.
    CrashInFlush(u64),
    Duplicate,
    Reorder,
}

#[derive(Clone, Debug)]
struct OneShot {
    at_ns: u64,
    process: usize,
    /// `None`: any stage of the process.
    stage: Option<usize>,
    kind: OneShotKind,
    fired: bool,
}

#[derive(Clone, Copy, Debug)]
struct Spike {
    from_ns: u64,
    to_ns: u64,
    tp: usize,
    extra_ns: u64,
}

/// What happened, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub feed_published: u64,
    pub records_appended: u64,
    pub polls: u64,
    pub records_delivered: u64,
    pub commits: u64,
    pub commits_refused: u64,
    pub requests_failed: u64,
    pub rebalances: u64,
    pub crashes: u64,
    pub expulsions: u64,
    pub restarts: u64,
    pub partial_flushes: u64,
    pub duplicated_batches: u64,
    pub reordered_batches: u64,
    /// Records refused for their size: by a stage's producer at send, by the broker at flush,
    /// and the gateway's publishes the broker refused.
    pub refused_at_send: u64,
    pub refused_at_flush: u64,
    pub feed_refused: u64,
}

/// A record a stage has sent and not yet flushed.
pub struct Outgoing {
    tp: usize,
    key: Bytes,
    value: Bytes,
}

/// Who appends a record.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    Gateway,
    Stage(usize, usize),
}

/// A stage as the world needs it: its name, what it reads, and whether it is a read replica
/// (a group per process) or a working stage (one group shared by every process).
#[derive(Clone, Copy, Debug)]
pub struct StagePlan {
    pub name: &'static str,
    pub inputs: &'static [Topic],
    pub replica: bool,
}

/// What a world is made from.
pub struct WorldConfig<'a> {
    pub seed: u64,
    /// Process slots: the deployment plus one per scale-out.
    pub slots: usize,
    /// Every process's stages, in flow order, and the topics.
    pub stages: &'a [StagePlan],
    pub topics: &'a [TopicSpec],
    pub protocol: Protocol,
    pub max_poll_records: usize,
    pub delivery: Delivery,
    pub faults: &'a [Fault],
    pub render: bool,
    /// Size limits (0: none), as `FaultProfile` names them.
    pub producer_message_bytes_max: u64,
    pub broker_message_bytes_max: u64,
}

pub struct World {
    pub broker: Broker,
    pub now: u64,
    pub layout: Layout,
    arrival: Vec<Vec<u64>>,
    pub groups: Vec<GroupRt>,
    /// Per topic index: the groups that consume it.
    subscribers: Vec<Vec<usize>>,
    /// Per process, per stage: its group.
    group_index: Vec<Vec<usize>>,
    /// The stages' names, by stage index (for the trace).
    pub stage_names: Vec<&'static str>,
    pub slots: Vec<Vec<Slot>>,
    pub procs: Vec<ProcRt>,
    pub trace: Trace,
    pub queue: Queue,
    jitter_rng: ChaCha8Rng,
    fault_rng: ChaCha8Rng,
    partition_delay_ns: Vec<u64>,
    jitter_ns: u64,
    outage_until: u64,
    one_shots: Vec<OneShot>,
    spikes: Vec<Spike>,
    /// Processes that died inside a request, for the driver to bury.
    pub crash_requests: Vec<(usize, u64)>,
    pub protocol: Protocol,
    pub max_poll_records: usize,
    /// Faults are over: one-shot faults that never fired are dropped.
    pub healed: bool,
    pub counters: Counters,
    pub producer_message_bytes_max: u64,
    pub broker_message_bytes_max: u64,
}

const STREAM_DELAYS: u64 = 1;
const STREAM_JITTER: u64 = 2;
const STREAM_FAULTS: u64 = 3;

impl World {
    /// A world for `c.slots` process slots (the deployment plus any scale-out).
    pub fn new(c: WorldConfig) -> World {
        let WorldConfig {
            seed,
            slots: slots_total,
            stages,
            topics,
            protocol,
            max_poll_records,
            delivery,
            faults,
            render,
            producer_message_bytes_max,
            broker_message_bytes_max,
        } = c;
        let layout = Layout::new(topics);
        let n = layout.len();
        let rng = |stream| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            r.set_stream(stream);
            r
        };
        let mut delays = rng(STREAM_DELAYS);
        let partition_delay_ns = (0..n).map(|_| delays.random_range(0..=delivery.partition_us) * 1_000).collect();
        let procs: Vec<ProcRt> = (0..slots_total)
            .map(|_| ProcRt {
                delay_ns: delays.random_range(0..=delivery.process_us) * 1_000,
                ..ProcRt::default()
            })
            .collect();
        // The working stages' groups first, then each process's replicas.
        let mut groups = Vec::new();
        let mut group_index = vec![vec![0; stages.len()]; slots_total];
        for (s, st) in stages.iter().enumerate().filter(|(_, st)| !st.replica) {
            for row in group_index.iter_mut() {
                row[s] = groups.len();
            }
            groups.push(GroupRt::new(st.name.to_string(), GroupOf::Shared { stage: s }, st.inputs, n));
        }
        for (p, row) in group_index.iter_mut().enumerate() {
            for (s, st) in stages.iter().enumerate().filter(|(_, st)| st.replica) {
                row[s] = groups.len();
                groups.push(GroupRt::new(
                    format!("{}.p{p}", st.name),
                    GroupOf::Replica { process: p, stage: s },
                    st.inputs,
                    n,
                ));
            }
        }
        let mut subscribers = vec![Vec::new(); topics.len()];
        for (g, group) in groups.iter().enumerate() {
            for t in group.topics {
                if let Some(i) = layout.topic_index(t) {
                    subscribers[i].push(g);
                }
            }
        }
        let slots = (0..slots_total)
            .map(|p| (0..stages.len()).map(|s| Slot::new(group_index[p][s], n)).collect())
            .collect();
        let stage_names: Vec<&'static str> = stages.iter().map(|s| s.name).collect();
        // A fault naming a stage the topology lacks never fires.
        let stage_of = |id: &crate::schedule::StageId| stage_names.iter().position(|n| *n == id.name()).unwrap_or(usize::MAX);
        let ms = 1_000_000;
        let mut one_shots = Vec::new();
        let mut spikes = Vec::new();
        for f in faults {
            let shot = |process: u32, stage: Option<usize>, kind| OneShot {
                at_ns: f.at_ms() * ms,
                process: process as usize,
                stage,
                kind,
                fired: false,
            };
            match f {
                Fault::Crash {
                    process,
                    down_ms,
                    in_flush: true,
                    ..
                } => one_shots.push(shot(*process, None, OneShotKind::CrashInFlush(down_ms * ms))),
                Fault::RequestFailure {
                    process, stage, request, ..
                } => one_shots.push(shot(*process, Some(stage_of(stage)), OneShotKind::Fail(*request))),
                Fault::PartialFlush { process, stage, .. } => {
                    one_shots.push(shot(*process, Some(stage_of(stage)), OneShotKind::PartialFlush))
                }
                Fault::ProducerDuplicate { process, stage, .. } => {
                    one_shots.push(shot(*process, Some(stage_of(stage)), OneShotKind::Duplicate))
                }
                Fault::ProducerReorder { process, stage, .. } => {
                    one_shots.push(shot(*process, Some(stage_of(stage)), OneShotKind::Reorder))
                }
                Fault::DelaySpike {
                    at_ms,
                    for_ms,
                    partition,
                    extra_ms,
                } => spikes.push(Spike {
                    from_ns: at_ms * ms,
                    to_ns: (at_ms + for_ms) * ms,
                    tp: *partition as usize % n,
                    extra_ns: extra_ms * ms,
                }),
                _ => {}
            }
        }
        World {
            broker: Broker::with_topics(topics),
            now: 0,
            arrival: vec![Vec::new(); n],
            layout,
            groups,
            subscribers,
            group_index,
            stage_names,
            slots,
            procs,
            trace: Trace::new(render),
            queue: Queue::default(),
            jitter_rng: rng(STREAM_JITTER),
            fault_rng: rng(STREAM_FAULTS),
            partition_delay_ns,
            jitter_ns: delivery.jitter_us * 1_000,
            outage_until: 0,
            one_shots,
            spikes,
            crash_requests: Vec::new(),
            protocol,
            max_poll_records,
            healed: false,
            counters: Counters::default(),
            producer_message_bytes_max,
            broker_message_bytes_max,
        }
    }

    /// Why a record of this size is over `limit`, if it is (0: no limit). Sizes count key and
    /// value, as Kafka's do (plus a record's few bytes of framing, left out here).
    pub fn too_large(len: usize, limit: u64, whose: &str) -> Option<String> {
        (limit > 0 && len as u64 > limit)
            .then(|| format!("MessageSizeTooLarge: a {len}-byte record is over the {whose} message.max.bytes of {limit} (simulated)"))
    }

    /// Whether the broker refuses a gateway publish for its size (traced; the gateway, a
    /// producer outside the deployment, logs it and goes on).
    pub fn gateway_refuses(&mut self, len: usize) -> bool {
        let Some(reason) = World::too_large(len, self.broker_message_bytes_max, "broker's") else {
            return false;
        };
        self.counters.feed_refused += 1;
        self.trace.entry(15, &[self.now, len as u64]);
        self.trace.line(self.now, || format!("{:<16} publish refused: {reason}", "gateway"));
        true
    }

    pub fn group_of(&self, p: usize, s: usize) -> usize {
        self.group_index[p][s]
    }

    /// A stage of a process, as the trace names it.
    pub fn who(&self, p: usize, s: usize) -> String {
        stage_label(&self.stage_names, p, s)
    }

    // ---- time, outages, one-shot faults ----

    pub fn unavailable(&self) -> bool {
        self.now < self.outage_until
    }

    pub fn start_outage(&mut self, for_ns: u64) {
        self.outage_until = self.outage_until.max(self.now + for_ns);
        let until = self.outage_until;
        self.trace.entry(20, &[self.now, until]);
        self.trace
            .line(self.now, || format!("FAULT broker outage until {}", crate::trace::format_ns(until)));
    }

    fn refuse(&mut self, p: usize, s: usize, what: &str) -> BusError {
        self.counters.requests_failed += 1;
        self.trace.entry(21, &[self.now, p as u64, s as u64]);
        let who = stage_label(&self.stage_names, p, s);
        self.trace
            .line(self.now, || format!("{who:<16} {what} refused: broker unavailable"));
        BusError::Unavailable(format!("{what}: broker unavailable (simulated outage)"))
    }

    /// Fires the first due one-shot fault of `kind` (matched by `matches`) for this stage.
    fn one_shot(&mut self, p: usize, s: usize, matches: impl Fn(OneShotKind) -> bool) -> Option<OneShotKind> {
        if self.healed {
            return None;
        }
        let now = self.now;
        let shot = self
            .one_shots
            .iter_mut()
            .find(|o| !o.fired && o.at_ns <= now && o.process == p && o.stage.is_none_or(|st| st == s) && matches(o.kind))?;
        shot.fired = true;
        Some(shot.kind)
    }

    fn request_fails(&mut self, p: usize, s: usize, request: crate::schedule::Request) -> bool {
        self.one_shot(p, s, |k| k == OneShotKind::Fail(request)).is_some()
    }

    // ---- the log ----

    pub fn append(&mut self, tp: usize, key: Bytes, value: Bytes, who: Who) {
        let t = self.layout.tp(tp);
        let offset = self
            .broker
            .append(t.topic, t.partition, key, value.clone())
            .expect("layout partitions exist");
        self.arrival[tp].push(self.now);
        self.counters.records_appended += 1;
        let (a, b) = match who {
            Who::Gateway => (u64::MAX, u64::MAX),
            Who::Stage(p, s) => (p as u64, s as u64),
        };
        self.trace.entry(1, &[self.now, a, b, tp as u64, offset]);
        self.trace.bytes(&value);
        if self.trace.rendering() {
            let who = match who {
                Who::Gateway => "gateway".to_string(),
                Who::Stage(p, s) => stage_label(&self.stage_names, p, s),
            };
            // A short hash of the bytes, so two renderings part where the bytes do.
            let hash = blake3::hash(&value).to_hex()[..8].to_string();
            self.trace.line(self.now, || format!("{who:<16} append {t}@{offset} #{hash}"));
        }
        let Some(ti) = self.layout.topic_index(t.topic) else { return };
        for gi in 0..self.subscribers[ti].len() {
            let g = self.subscribers[ti][gi];
            self.schedule_deliver(g, tp);
        }
    }

    fn delay_ns(&mut self, g: usize, tp: usize) -> u64 {
        let owner = self.groups[g].owner[tp].map(|p| self.procs[p].delay_ns).unwrap_or(0);
        let jitter = if self.jitter_ns > 0 {
            self.jitter_rng.random_range(0..=self.jitter_ns)
        } else {
            0
        };
        let now = self.now;
        let spike: u64 = self
            .spikes
            .iter()
            .filter(|s| s.tp == tp && (s.from_ns..s.to_ns).contains(&now))
            .map(|s| s.extra_ns)
            .sum();
        self.partition_delay_ns[tp] + owner + jitter + spike
    }

    fn schedule_deliver(&mut self, g: usize, tp: usize) {
        let visible = self.groups[g].visible[tp] as usize;
        let end = self.arrival[tp].len();
        if self.groups[g].deliver_pending[tp] || visible >= end {
            return;
        }
        let at = (self.arrival[tp][visible] + self.delay_ns(g, tp)).max(self.now);
        self.groups[g].deliver_pending[tp] = true;
        self.queue.push(
            at,
            Ev::Deliver {
                g: g as u16,
                tp: tp as u16,
                upto: end as u32,
            },
        );
    }

    /// Records become visible to a group; returns the slot to wake, if a live member owns them.
    pub fn deliver(&mut self, g: usize, tp: usize, upto: u64) -> Option<(usize, usize)> {
        let group = &mut self.groups[g];
        group.deliver_pending[tp] = false;
        group.visible[tp] = group.visible[tp].max(upto);
        self.trace.entry(2, &[self.now, g as u64, tp as u64, upto]);
        self.schedule_deliver(g, tp);
        let p = self.groups[g].owner[tp]?;
        let s = match self.groups[g].of {
            GroupOf::Shared { stage } | GroupOf::Replica { stage, .. } => stage,
        };
        Some((p, s))
    }

    // ---- scheduling the stages ----

    /// Makes a stage step at `at` unless it is already due earlier.
    pub fn schedule_step(&mut self, p: usize, s: usize, at: u64) {
        let slot = &mut self.slots[p][s];
        if slot.scheduled {
            return;
        }
        slot.scheduled = true;
        slot.token = slot.token.wrapping_add(1);
        let token = slot.token;
        self.queue.push(
            at,
            Ev::Step {
                p: p as u16,
                s: s as u8,
                token,
            },
        );
    }

    /// Whether a poll by this stage would return something now: a notice, a rebalance to learn
    /// of, or visible records past its position. A stage with none waits for a delivery.
    pub fn has_work(&self, p: usize, s: usize) -> bool {
        let slot = &self.slots[p][s];
        let g = &self.groups[slot.group];
        slot.kicked
            || !slot.notices.is_empty()
            || g.generation != slot.seen_generation
            || slot.assigned.iter().any(|&tp| slot.position[tp] < g.visible[tp])
    }

    /// Cancels a stage's pending step (the process died or stopped).
    pub fn cancel_steps(&mut self, p: usize) {
        for slot in self.slots[p].iter_mut() {
            slot.scheduled = false;
            slot.token = slot.token.wrapping_add(1);
        }
    }

    pub fn wake(&mut self, p: usize, s: usize) {
        if self.procs[p].up {
            let at = self.now.max(self.procs[p].paused_until);
            self.schedule_step(p, s, at);
        }
    }

    // ---- membership ----

    fn members_of(&self, g: usize) -> Vec<(usize, usize)> {
        match self.groups[g].of {
            GroupOf::Shared { stage } => (0..self.slots.len()).map(|p| (p, stage)).collect(),
            GroupOf::Replica { process, stage } => vec![(process, stage)],
        }
    }

    /// After the broker rebalanced group `g`: who owns what, and everyone looks.
    fn after_rebalance(&mut self, g: usize) {
        self.counters.rebalances += 1;
        let generation = self.broker.generation(&self.groups[g].name);
        self.groups[g].generation = generation;
        self.trace.entry(3, &[self.now, g as u64, generation]);
        let name = self.groups[g].name.clone();
        self.trace.line(self.now, || {
            format!("{:<16} rebalance, generation {generation}", format!("group {name}"))
        });
        let n = self.layout.len();
        self.groups[g].owner = vec![None; n];
        for (p, s) in self.members_of(g) {
            let slot = &self.slots[p][s];
            if !self.procs[p].up || !slot.in_group {
                continue;
            }
            for tp in self.broker.assignment(&name, &slot.member) {
                if let Some(i) = self.layout.index(tp) {
                    self.groups[g].owner[i] = Some(p);
                }
            }
        }
        for (p, s) in self.members_of(g) {
            self.wake(p, s);
        }
    }

    /// A process (re)starts: a new incarnation joins every group of its stages.
    pub fn join_all(&mut self, p: usize) {
        let proc = &mut self.procs[p];
        proc.up = true;
        proc.incarnation += 1;
        proc.paused_until = 0;
        let inc = proc.incarnation;
        self.counters.restarts += 1;
        self.trace.entry(4, &[self.now, p as u64, inc as u64]);
        self.trace.line(self.now, || format!("process p{p} starts (incarnation {inc})"));
        let n = self.layout.len();
        for s in 0..self.stage_names.len() {
            let g = self.group_of(p, s);
            let member = format!("p{p}.{inc}");
            let topics = self.groups[g].topics;
            self.broker.join(&self.groups[g].name, &member, topics);
            let slot = &mut self.slots[p][s];
            *slot = Slot {
                member,
                in_group: true,
                token: slot.token.wrapping_add(1),
                ..Slot::new(g, n)
            };
            self.after_rebalance(g);
        }
    }

    /// A process dies: its members stay in their groups, silent, until their session expires.
    pub fn process_died(&mut self, p: usize, session_timeout_ns: u64) {
        let proc = &mut self.procs[p];
        proc.up = false;
        let inc = proc.incarnation;
        self.counters.crashes += 1;
        self.cancel_steps(p);
        self.trace.entry(5, &[self.now, p as u64, inc as u64]);
        self.trace.line(self.now, || format!("FAULT process p{p} dies"));
        // Delivery owners: nobody live owns its partitions now.
        for g in 0..self.groups.len() {
            for o in self.groups[g].owner.iter_mut() {
                if *o == Some(p) {
                    *o = None;
                }
            }
        }
        self.queue.push(self.now + session_timeout_ns, Ev::Expel { p: p as u16, inc });
    }

    /// The session of `p`'s incarnation `inc` expires: its members leave their groups. A live
    /// (stopped) process learns it was expelled on its next poll.
    pub fn expel(&mut self, p: usize, inc: u32) {
        let member = format!("p{p}.{inc}");
        let alive_same = self.procs[p].up && self.procs[p].incarnation == inc;
        if alive_same && self.procs[p].paused_until <= self.now {
            return; // it came back in time
        }
        let present: Vec<usize> = (0..self.stage_names.len())
            .filter(|&s| self.broker.members(&self.groups[self.group_of(p, s)].name).contains(&member))
            .collect();
        if present.is_empty() {
            return;
        }
        self.counters.expulsions += 1;
        self.trace.entry(6, &[self.now, p as u64, inc as u64]);
        self.trace
            .line(self.now, || format!("session of {member} expired: expelled from its groups"));
        for s in present {
            let g = self.group_of(p, s);
            let name = self.groups[g].name.clone();
            self.broker.leave(&name, &member);
            if alive_same {
                let slot = &mut self.slots[p][s];
                slot.in_group = false;
                slot.kicked = true;
            }
            self.after_rebalance(g);
        }
    }

    /// A process leaves for good, politely (its groups rebalance at once).
    pub fn retire(&mut self, p: usize) {
        let inc = self.procs[p].incarnation;
        self.procs[p].up = false;
        self.procs[p].retired = true;
        self.cancel_steps(p);
        self.trace.entry(7, &[self.now, p as u64]);
        self.trace.line(self.now, || format!("process p{p} leaves"));
        let member = format!("p{p}.{inc}");
        for s in 0..self.stage_names.len() {
            let g = self.group_of(p, s);
            let name = self.groups[g].name.clone();
            self.broker.leave(&name, &member);
            self.slots[p][s].in_group = false;
            self.after_rebalance(g);
        }
    }

    /// Groups whose consumption the run must finish: every group of a process that is not
    /// retired.
    pub fn live_groups(&self) -> Vec<usize> {
        (0..self.groups.len())
            .filter(|&g| match self.groups[g].of {
                GroupOf::Shared { .. } => true,
                GroupOf::Replica { process, .. } => !self.procs[process].retired,
            })
            .collect()
    }

    // ---- consumer requests ----

    /// Brings a member's view of its assignment up to the broker's, queueing the notices the
    /// protocol gives.
    fn sync_assignment(&mut self, p: usize, s: usize) {
        let g = self.slots[p][s].group;
        let generation = self.groups[g].generation;
        if generation == self.slots[p][s].seen_generation {
            return;
        }
        let name = self.groups[g].name.clone();
        let member = self.slots[p][s].member.clone();
        // The broker keeps incremental notices of its own; this member's view is built here.
        while matches!(self.broker.poll(&name, &member, 0), Ok(Polled::Assigned(_) | Polled::Revoked(_))) {}
        let mut now: Vec<usize> = self
            .broker
            .assignment(&name, &member)
            .into_iter()
            .filter_map(|tp| self.layout.index(tp))
            .collect();
        now.sort_unstable();
        let slot = &self.slots[p][s];
        let (revoked, assigned): (Vec<usize>, Vec<usize>) = match self.protocol {
            Protocol::Eager => (slot.assigned.clone(), now.clone()),
            Protocol::Incremental => (
                slot.assigned.iter().copied().filter(|t| !now.contains(t)).collect(),
                now.iter().copied().filter(|t| !slot.assigned.contains(t)).collect(),
            ),
        };
        let tps = |v: &[usize]| v.iter().map(|&i| self.layout.tp(i)).collect::<Vec<_>>();
        let (revoked_tps, assigned_tps) = (tps(&revoked), tps(&assigned));
        let committed: Vec<u64> = assigned_tps.iter().map(|tp| self.broker.committed(&name, *tp)).collect();
        let slot = &mut self.slots[p][s];
        slot.seen_generation = generation;
        if !revoked_tps.is_empty() {
            slot.notices.push_back(Polled::Revoked(revoked_tps));
        }
        if !assigned_tps.is_empty() {
            slot.notices.push_back(Polled::Assigned(assigned_tps));
        }
        for (&i, c) in assigned.iter().zip(committed) {
            slot.position[i] = c;
        }
        slot.assigned = now;
    }

    pub fn poll(&mut self, p: usize, s: usize, max_records: usize) -> Result<Polled, BusError> {
        self.counters.polls += 1;
        if self.unavailable() {
            return Err(self.refuse(p, s, "poll"));
        }
        if self.slots[p][s].kicked {
            // Expelled while stopped: everything it had is gone; it rejoins as it polls.
            let g = self.slots[p][s].group;
            let slot = &mut self.slots[p][s];
            slot.kicked = false;
            slot.in_group = true;
            let lost: Vec<TopicPartition> = slot.assigned.drain(..).map(|i| self.layout.tp(i)).collect();
            if !lost.is_empty() {
                slot.notices.push_back(Polled::Revoked(lost));
            }
            let (name, member, topics) = (self.groups[g].name.clone(), slot.member.clone(), self.groups[g].topics);
            self.trace.line(self.now, || {
                format!("{:<16} learns it was expelled; rejoins", stage_label(&self.stage_names, p, s))
            });
            self.broker.join(&name, &member, topics);
            self.after_rebalance(g);
        }
        self.sync_assignment(p, s);
        let g = self.slots[p][s].group;
        if let Some(notice) = self.slots[p][s].notices.pop_front() {
            let (tag, tps) = match &notice {
                Polled::Revoked(t) => (10, t),
                Polled::Assigned(t) => (11, t),
                _ => unreachable!("only rebalance notices are queued"),
            };
            self.trace.entry(tag, &[self.now, p as u64, s as u64, tps.len() as u64]);
            for tp in tps {
                self.trace.entry(tag, &[self.layout.index(*tp).unwrap_or(0) as u64]);
            }
            if self.trace.rendering() {
                let list: Vec<String> = tps.iter().map(|t| t.to_string()).collect();
                let what = if tag == 10 { "revoked" } else { "assigned" };
                self.trace.line(self.now, || {
                    format!("{:<16} {what} {}", stage_label(&self.stage_names, p, s), list.join(" "))
                });
            }
            return Ok(notice);
        }
        let slot = &mut self.slots[p][s];
        let n = slot.assigned.len();
        let mut out: Vec<Record> = Vec::new();
        let mut taken: Vec<(TopicPartition, u64, u64)> = Vec::new();
        if n > 0 {
            let start = slot.round_robin % n;
            slot.round_robin = slot.round_robin.wrapping_add(1);
            for k in 0..n {
                let remaining = max_records.saturating_sub(out.len());
                if remaining == 0 {
                    break;
                }
                let tp = self.slots[p][s].assigned[(start + k) % n];
                let pos = self.slots[p][s].position[tp];
                let visible = self.groups[g].visible[tp];
                if pos >= visible {
                    continue;
                }
                let to = visible.min(pos + remaining as u64);
                let t = self.layout.tp(tp);
                out.extend(self.broker.read(t, pos, to));
                self.slots[p][s].position[tp] = to;
                self.trace.entry(12, &[self.now, p as u64, s as u64, tp as u64, pos, to]);
                taken.push((t, pos, to));
            }
        }
        if out.is_empty() {
            return Ok(Polled::Idle);
        }
        self.counters.records_delivered += out.len() as u64;
        if self.trace.rendering() {
            let text = ranges(&taken);
            self.trace
                .line(self.now, || format!("{:<16} poll {text}", stage_label(&self.stage_names, p, s)));
        }
        Ok(Polled::Records(out))
    }

    pub fn commit(&mut self, p: usize, s: usize, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        if self.unavailable() {
            return Err(self.refuse(p, s, "commit"));
        }
        if self.request_fails(p, s, crate::schedule::Request::Commit) {
            self.counters.requests_failed += 1;
            self.trace.entry(22, &[self.now, p as u64, s as u64]);
            self.trace.line(self.now, || {
                format!("{:<16} FAULT commit request fails", stage_label(&self.stage_names, p, s))
            });
            return Err(BusError::Unavailable("commit: request timed out (simulated)".into()));
        }
        let g = self.slots[p][s].group;
        let stale = self.protocol == Protocol::Eager && self.slots[p][s].seen_generation != self.groups[g].generation;
        let result = if stale {
            Err(BusError::NotAssigned(format!("group {} is rebalancing", self.groups[g].name)))
        } else {
            self.broker.commit(&self.groups[g].name, &self.slots[p][s].member, offsets)
        };
        self.trace.entry(13, &[self.now, p as u64, s as u64, result.is_ok() as u64]);
        for (tp, o) in offsets {
            self.trace.entry(13, &[self.layout.index(*tp).unwrap_or(0) as u64, *o]);
        }
        match &result {
            Ok(()) => self.counters.commits += 1,
            Err(_) => self.counters.commits_refused += 1,
        }
        if self.trace.rendering() {
            let list: Vec<String> = offsets.iter().map(|(tp, o)| format!("{tp}={o}")).collect();
            let verdict = match &result {
                Ok(()) => "".to_string(),
                Err(e) => format!(" REFUSED ({e})"),
            };
            self.trace.line(self.now, || {
                format!("{:<16} commit {}{verdict}", stage_label(&self.stage_names, p, s), list.join(" "))
            });
        }
        result
    }

    pub fn committed(&mut self, p: usize, s: usize, tp: TopicPartition) -> Result<u64, BusError> {
        if self.unavailable() {
            return Err(self.refuse(p, s, "committed-offset request"));
        }
        if self.request_fails(p, s, crate::schedule::Request::Committed) {
            self.counters.requests_failed += 1;
            self.trace.entry(23, &[self.now, p as u64, s as u64]);
            self.trace.line(self.now, || {
                format!(
                    "{:<16} FAULT committed-offset request for {tp} fails",
                    stage_label(&self.stage_names, p, s)
                )
            });
            return Err(BusError::Unavailable("committed: request timed out (simulated)".into()));
        }
        let g = self.slots[p][s].group;
        Ok(self.broker.committed(&self.groups[g].name, tp))
    }

    pub fn fetch(&mut self, p: usize, s: usize, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        if self.unavailable() {
            return Err(self.refuse(p, s, "fetch"));
        }
        if self.request_fails(p, s, crate::schedule::Request::Fetch) {
            self.counters.requests_failed += 1;
            self.trace.entry(24, &[self.now, p as u64, s as u64]);
            self.trace.line(self.now, || {
                format!(
                    "{:<16} FAULT fetch of {tp} [{from}..{to}) fails",
                    stage_label(&self.stage_names, p, s)
                )
            });
            return Err(BusError::Unavailable("fetch: request timed out (simulated)".into()));
        }
        self.trace.entry(14, &[self.now, p as u64, s as u64, from, to]);
        let records = self.broker.read(tp, from, to);
        let n = records.len();
        self.trace.line(self.now, || {
            format!(
                "{:<16} restore reads {tp} [{from}..{}) ",
                stage_label(&self.stage_names, p, s),
                from + n as u64
            )
        });
        Ok(records)
    }

    // ---- producer requests ----

    /// Appends what a stage sent, or fails, as the schedule says.
    pub fn flush(&mut self, p: usize, s: usize, batch: &mut Vec<Outgoing>) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.unavailable() {
            batch.clear();
            return Err(self.refuse(p, s, "flush"));
        }
        let mut records = std::mem::take(batch);
        let who = Who::Stage(p, s);
        // The broker judges each record's size (librdkafka never builds a batch over its own
        // limit, so with the producer's limit under the broker's only a lone record can be over).
        let mut refused = Vec::new();
        if self.broker_message_bytes_max > 0 {
            let limit = self.broker_message_bytes_max;
            let mut index = 0;
            records.retain(|r| {
                let keep = match World::too_large(r.key.len() + r.value.len(), limit, "broker's") {
                    Some(reason) => {
                        refused.push(RefusedRecord { index, reason });
                        false
                    }
                    None => true,
                };
                index += 1;
                keep
            });
            if !refused.is_empty() {
                self.counters.refused_at_flush += refused.len() as u64;
                self.trace.entry(33, &[self.now, p as u64, s as u64, refused.len() as u64]);
                let n = refused.len();
                self.trace.line(self.now, || {
                    format!(
                        "{:<16} broker refuses {n} record(s) of the flush for their size",
                        stage_label(&self.stage_names, p, s)
                    )
                });
            }
        }
        if records.is_empty() {
            // Nothing reached a partition: the schedule's one-shot fault waits for a flush that does.
            return Err(BusError::Refused(refused));
        }
        let shot = self.one_shot(p, s, |k| {
            matches!(
                k,
                OneShotKind::CrashInFlush(_)
                    | OneShotKind::Fail(crate::schedule::Request::Flush)
                    | OneShotKind::PartialFlush
                    | OneShotKind::Duplicate
                    | OneShotKind::Reorder
            )
        });
        let result = self.flush_records(p, s, shot, records, who);
        match result {
            Ok(()) if !refused.is_empty() => Err(BusError::Refused(refused)),
            other => other,
        }
    }

    /// `flush` of the records the broker takes, with the schedule's one-shot fault if any.
    fn flush_records(&mut self, p: usize, s: usize, shot: Option<OneShotKind>, records: Vec<Outgoing>, who: Who) -> Result<(), BusError> {
        match shot {
            Some(OneShotKind::CrashInFlush(down_ns)) => {
                let k = self.fault_rng.random_range(0..records.len());
                self.trace.entry(25, &[self.now, p as u64, s as u64, k as u64]);
                self.trace.line(self.now, || {
                    format!(
                        "{:<16} FAULT dies publishing: {k} of {} records appended",
                        stage_label(&self.stage_names, p, s),
                        records.len()
                    )
                });
                for r in records.into_iter().take(k) {
                    self.append(r.tp, r.key, r.value, who);
                }
                self.crash_requests.push((p, down_ns));
                Err(BusError::Unavailable("process died in flush (simulated)".into()))
            }
            Some(OneShotKind::Fail(_)) => {
                self.counters.requests_failed += 1;
                self.trace.entry(26, &[self.now, p as u64, s as u64]);
                self.trace.line(self.now, || {
                    format!("{:<16} FAULT flush fails, nothing appended", stage_label(&self.stage_names, p, s))
                });
                Err(BusError::Unavailable("flush: produce request timed out (simulated)".into()))
            }
            Some(OneShotKind::PartialFlush) => {
                self.counters.partial_flushes += 1;
                let k = if records.len() > 1 {
                    self.fault_rng.random_range(1..records.len())
                } else {
                    1
                };
                self.trace.entry(27, &[self.now, p as u64, s as u64, k as u64]);
                self.trace.line(self.now, || {
                    format!(
                        "{:<16} FAULT flush appends {k} of {} records, then fails",
                        stage_label(&self.stage_names, p, s),
                        records.len()
                    )
                });
                for r in records.into_iter().take(k) {
                    self.append(r.tp, r.key, r.value, who);
                }
                Err(BusError::Unavailable("flush: some produce requests timed out (simulated)".into()))
            }
            Some(OneShotKind::Duplicate) => {
                self.counters.duplicated_batches += 1;
                let tp = records[self.fault_rng.random_range(0..records.len())].tp;
                let again: Vec<(Bytes, Bytes)> = records
                    .iter()
                    .filter(|r| r.tp == tp)
                    .map(|r| (r.key.clone(), r.value.clone()))
                    .collect();
                self.trace.entry(28, &[self.now, p as u64, s as u64, tp as u64]);
                let t = self.layout.tp(tp);
                self.trace.line(self.now, || {
                    format!(
                        "{:<16} FAULT a retry appends the {t} batch twice",
                        stage_label(&self.stage_names, p, s)
                    )
                });
                for r in records {
                    self.append(r.tp, r.key, r.value, who);
                }
                for (k, v) in again {
                    self.append(tp, k, v, who);
                }
                Ok(())
            }
            Some(OneShotKind::Reorder) => {
                // Two requests in flight to one partition; the first fails and is retried after
                // the second has landed.
                let mut counts = std::collections::BTreeMap::new();
                for r in &records {
                    *counts.entry(r.tp).or_insert(0usize) += 1;
                }
                let Some((&tp, &n)) = counts.iter().find(|(_, n)| **n >= 2) else {
                    for r in records {
                        self.append(r.tp, r.key, r.value, who);
                    }
                    return Ok(());
                };
                self.counters.reordered_batches += 1;
                let split = n / 2;
                self.trace.entry(29, &[self.now, p as u64, s as u64, tp as u64, split as u64]);
                let t = self.layout.tp(tp);
                self.trace.line(self.now, || {
                    format!(
                        "{:<16} FAULT {t}: the last {} of {n} records land before the first {split}",
                        stage_label(&self.stage_names, p, s),
                        n - split
                    )
                });
                let (mine, others): (Vec<Outgoing>, Vec<Outgoing>) = records.into_iter().partition(|r| r.tp == tp);
                let mut mine = mine;
                let first: Vec<Outgoing> = mine.drain(..split).collect();
                for r in others.into_iter().chain(mine).chain(first) {
                    self.append(r.tp, r.key, r.value, who);
                }
                Ok(())
            }
            _ => {
                for r in records {
                    self.append(r.tp, r.key, r.value, who);
                }
                Ok(())
            }
        }
    }

    /// Total records not yet committed, per live group.
    pub fn lag(&self) -> Vec<(String, u64)> {
        self.live_groups()
            .into_iter()
            .map(|g| (self.groups[g].name.clone(), self.broker.lag(&self.groups[g].name)))
            .filter(|(_, l)| *l > 0)
            .collect()
    }
}

impl GroupRt {
    fn new(name: String, of: GroupOf, topics: &'static [Topic], n: usize) -> GroupRt {
        GroupRt {
            name,
            of,
            generation: 0,
            topics,
            visible: vec![0; n],
            deliver_pending: vec![false; n],
            owner: vec![None; n],
        }
    }
}

impl Slot {
    fn new(group: usize, n: usize) -> Slot {
        Slot {
            group,
            member: String::new(),
            in_group: false,
            kicked: false,
            seen_generation: 0,
            assigned: Vec::new(),
            position: vec![0; n],
            notices: VecDeque::new(),
            round_robin: 0,
            token: 0,
            scheduled: false,
            backoff_ns: 0,
        }
    }
}

/// A stage of a process, as the trace names it: `p<process>/<stage>`.
pub fn stage_label(stage_names: &[&str], p: usize, s: usize) -> String {
    format!("p{p}/{}", stage_names[s])
}

/// A stage's consumer: one member of its group, over the shared world.
pub struct SimConsumer<'w> {
    pub world: &'w RefCell<World>,
    pub p: usize,
    pub s: usize,
}

impl Consumer for SimConsumer<'_> {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        let mut w = self.world.borrow_mut();
        let max = max_records.min(w.max_poll_records);
        w.poll(self.p, self.s, max)
    }

    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        self.world.borrow_mut().commit(self.p, self.s, offsets)
    }

    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        self.world.borrow_mut().committed(self.p, self.s, tp)
    }

    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        self.world.borrow_mut().fetch(self.p, self.s, tp, from, to)
    }
}

/// A stage's producer: buffers sends, appends (or fails) on flush.
pub struct SimProducer<'w> {
    pub world: &'w RefCell<World>,
    pub p: usize,
    pub s: usize,
    pub batch: Vec<Outgoing>,
}

impl Producer for SimProducer<'_> {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        let limit = self.world.borrow().producer_message_bytes_max;
        if let Some(reason) = World::too_large(key.len() + value.len(), limit, "producer's") {
            let mut w = self.world.borrow_mut();
            w.counters.refused_at_send += 1;
            let now = w.now;
            w.trace.entry(34, &[now, self.p as u64, self.s as u64, value.len() as u64]);
            let who = stage_label(&w.stage_names, self.p, self.s);
            w.trace
                .line(now, || format!("{who:<16} send to {topic}/{partition} refused: {reason}"));
            return Err(BusError::Refused(vec![RefusedRecord { index: 0, reason }]));
        }
        let tp = self
            .world
            .borrow()
            .layout
            .index(TopicPartition { topic, partition })
            .ok_or_else(|| BusError::UnknownTopic(format!("{topic}/{partition}")))?;
        self.batch.push(Outgoing {
            tp,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BusError> {
        self.world.borrow_mut().flush(self.p, self.s, &mut self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_numbers_every_partition_once() {
        let l = Layout::new(&horizon_core::topics::ALL);
        let total: u32 = horizon_core::topics::ALL.iter().map(|t| t.partitions).sum();
        assert_eq!(l.len(), total as usize);
        for i in 0..l.len() {
            assert_eq!(l.index(l.tp(i)), Some(i));
        }
        assert_eq!(
            l.index(TopicPartition {
                topic: horizon_core::topics::MARKET_FEED,
                partition: 99
            }),
            None
        );
    }

    #[test]
    fn the_queue_orders_by_time_then_by_insertion() {
        let mut q = Queue::default();
        q.push(5, Ev::Feed);
        q.push(3, Ev::Heal);
        q.push(5, Ev::Restart { p: 1 });
        assert_eq!(q.pop(), Some((3, Ev::Heal)));
        assert_eq!(q.pop(), Some((5, Ev::Feed)));
        assert_eq!(q.pop(), Some((5, Ev::Restart { p: 1 })));
        assert_eq!(q.pop(), None);
    }
}
