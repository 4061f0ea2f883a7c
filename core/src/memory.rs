//! The in-memory, fault-free bus: Kafka's log, partition and consumer-group semantics in plain
//! data structures, single-threaded and deterministic.
//!
//! `Broker` is the log and the group coordinator. The fault-free `MemoryBus` hands out producers
//! and consumers that act on it directly; the simulator (`horizon-sim`) drives the same `Broker`
//! and decides when records are delivered and what fails.

use crate::bus::{BusError, Consumer, Polled, Producer, Record, Topic, TopicPartition};
use crate::topics;
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

#[derive(Clone, Debug)]
pub struct StoredRecord {
    pub key: Bytes,
    pub value: Bytes,
}

#[derive(Default)]
struct Member {
    topics: Vec<Topic>,
    assigned: BTreeSet<TopicPartition>,
    position: BTreeMap<TopicPartition, u64>,
    notices: VecDeque<Polled>,
}

#[derive(Default)]
struct Group {
    committed: BTreeMap<TopicPartition, u64>,
    members: BTreeMap<String, Member>,
    generation: u64,
}

/// Topics, partitions, offsets and consumer groups.
pub struct Broker {
    logs: BTreeMap<Topic, Vec<Vec<StoredRecord>>>,
    groups: BTreeMap<String, Group>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Broker {
    /// A broker with every shipped topic created.
    pub fn new() -> Broker {
        Broker::with_topics(&topics::ALL)
    }

    /// A broker with these topics created (a topology's: `Topology::topics`).
    pub fn with_topics(specs: &[crate::topology::TopicSpec]) -> Broker {
        let logs = specs.iter().map(|t| (t.name, vec![Vec::new(); t.partitions as usize])).collect();
        Broker {
            logs,
            groups: BTreeMap::new(),
        }
    }

    pub fn partitions(&self, topic: Topic) -> u32 {
        self.logs.get(topic).map(|p| p.len() as u32).unwrap_or(0)
    }

    /// Appends a record and returns its offset.
    pub fn append(&mut self, topic: Topic, partition: u32, key: Bytes, value: Bytes) -> Result<u64, BusError> {
        let log = self.logs.get_mut(topic).ok_or_else(|| BusError::UnknownTopic(topic.to_string()))?;
        let part = log
            .get_mut(partition as usize)
            .ok_or_else(|| BusError::UnknownTopic(format!("{topic}/{partition}")))?;
        part.push(StoredRecord { key, value });
        Ok(part.len() as u64 - 1)
    }

    pub fn end_offset(&self, tp: TopicPartition) -> u64 {
        self.logs
            .get(tp.topic)
            .and_then(|l| l.get(tp.partition as usize))
            .map(|p| p.len() as u64)
            .unwrap_or(0)
    }

    /// Records `[from, to)` of a partition.
    pub fn read(&self, tp: TopicPartition, from: u64, to: u64) -> Vec<Record> {
        let Some(part) = self.logs.get(tp.topic).and_then(|l| l.get(tp.partition as usize)) else {
            return Vec::new();
        };
        let to = to.min(part.len() as u64);
        (from..to)
            .map(|o| {
                let s = &part[o as usize];
                Record {
                    topic: tp.topic,
                    partition: tp.partition,
                    offset: o,
                    key: s.key.clone(),
                    value: s.value.clone(),
                }
            })
            .collect()
    }

    /// Every partition of every topic, in order.
    pub fn all_partitions(&self) -> Vec<TopicPartition> {
        self.logs
            .iter()
            .flat_map(|(t, parts)| (0..parts.len() as u32).map(move |p| TopicPartition { topic: t, partition: p }))
            .collect()
    }

    /// A member joins (or re-joins) a group; the group rebalances.
    pub fn join(&mut self, group: &str, member: &str, topics: &[Topic]) {
        let g = self.groups.entry(group.to_string()).or_default();
        let m = g.members.entry(member.to_string()).or_default();
        m.topics = topics.to_vec();
        self.rebalance(group);
    }

    /// A member leaves or is declared dead; its partitions move to the others.
    pub fn leave(&mut self, group: &str, member: &str) {
        if let Some(g) = self.groups.get_mut(group) {
            g.members.remove(member);
        }
        self.rebalance(group);
    }

    pub fn members(&self, group: &str) -> Vec<String> {
        self.groups
            .get(group)
            .map(|g| g.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn generation(&self, group: &str) -> u64 {
        self.groups.get(group).map(|g| g.generation).unwrap_or(0)
    }

    /// Partition `p` of every subscribed topic goes to member `p mod n` (members in name order),
    /// so co-partitioned topics stay together, as Kafka Streams requires.
    fn rebalance(&mut self, group: &str) {
        let Some(g) = self.groups.get_mut(group) else { return };
        g.generation += 1;
        let names: Vec<String> = g.members.keys().cloned().collect();
        let n = names.len();
        let mut wanted: BTreeMap<String, BTreeSet<TopicPartition>> = names.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
        let subscribed: BTreeSet<Topic> = g.members.values().flat_map(|m| m.topics.iter().copied()).collect();
        for t in subscribed {
            let parts = self.logs.get(t).map(|l| l.len() as u32).unwrap_or(0);
            for p in 0..parts {
                // Only members subscribed to the topic take its partitions.
                let eligible: Vec<&String> = names.iter().filter(|m| g.members[*m].topics.contains(&t)).collect();
                if eligible.is_empty() || n == 0 {
                    continue;
                }
                let owner = eligible[p as usize % eligible.len()];
                wanted.get_mut(owner).unwrap().insert(TopicPartition { topic: t, partition: p });
            }
        }
        for (name, member) in g.members.iter_mut() {
            let new = wanted.remove(name).unwrap_or_default();
            let revoked: Vec<TopicPartition> = member.assigned.difference(&new).copied().collect();
            let assigned: Vec<TopicPartition> = new.difference(&member.assigned).copied().collect();
            if !revoked.is_empty() {
                for tp in &revoked {
                    member.position.remove(tp);
                }
                member.notices.push_back(Polled::Revoked(revoked));
            }
            if !assigned.is_empty() {
                for tp in &assigned {
                    member.position.insert(*tp, g.committed.get(tp).copied().unwrap_or(0));
                }
                member.notices.push_back(Polled::Assigned(assigned));
            }
            member.assigned = new;
        }
    }

    /// Next notice or batch for a member: records from its partitions, in partition order, from
    /// its positions.
    pub fn poll(&mut self, group: &str, member: &str, max_records: usize) -> Result<Polled, BusError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| BusError::Fatal(format!("unknown group {group}")))?;
        let m = g
            .members
            .get_mut(member)
            .ok_or_else(|| BusError::Fatal(format!("{member} is not a member of {group}")))?;
        if let Some(n) = m.notices.pop_front() {
            return Ok(n);
        }
        let mut out = Vec::new();
        for tp in m.assigned.iter() {
            if out.len() >= max_records {
                break;
            }
            let pos = m.position.get(tp).copied().unwrap_or(0);
            let part = &self.logs[tp.topic][tp.partition as usize];
            let end = (pos as usize + (max_records - out.len())).min(part.len());
            for (o, s) in part.iter().enumerate().take(end).skip(pos as usize) {
                out.push(Record {
                    topic: tp.topic,
                    partition: tp.partition,
                    offset: o as u64,
                    key: s.key.clone(),
                    value: s.value.clone(),
                });
            }
            m.position.insert(*tp, end as u64);
        }
        Ok(if out.is_empty() { Polled::Idle } else { Polled::Records(out) })
    }

    /// Sets a member's position (the simulator uses it to redeliver from the last commit).
    pub fn seek(&mut self, group: &str, member: &str, tp: TopicPartition, offset: u64) {
        if let Some(m) = self.groups.get_mut(group).and_then(|g| g.members.get_mut(member)) {
            if m.assigned.contains(&tp) {
                m.position.insert(tp, offset);
            }
        }
    }

    pub fn assignment(&self, group: &str, member: &str) -> Vec<TopicPartition> {
        self.groups
            .get(group)
            .and_then(|g| g.members.get(member))
            .map(|m| m.assigned.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Commits offsets; refused for partitions the member does not own.
    pub fn commit(&mut self, group: &str, member: &str, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        let g = self
            .groups
            .get_mut(group)
            .ok_or_else(|| BusError::Fatal(format!("unknown group {group}")))?;
        let m = g
            .members
            .get(member)
            .ok_or_else(|| BusError::NotAssigned(format!("{member} left {group}")))?;
        if let Some((tp, _)) = offsets.iter().find(|(tp, _)| !m.assigned.contains(tp)) {
            return Err(BusError::NotAssigned(tp.to_string()));
        }
        for (tp, o) in offsets {
            g.committed.insert(*tp, *o);
        }
        Ok(())
    }

    pub fn committed(&self, group: &str, tp: TopicPartition) -> u64 {
        self.groups.get(group).and_then(|g| g.committed.get(&tp)).copied().unwrap_or(0)
    }

    /// Records not yet committed by `group` across the topics it consumes.
    pub fn lag(&self, group: &str) -> u64 {
        let Some(g) = self.groups.get(group) else { return 0 };
        let topics: BTreeSet<Topic> = g.members.values().flat_map(|m| m.topics.iter().copied()).collect();
        topics
            .into_iter()
            .flat_map(|t| (0..self.partitions(t)).map(move |p| TopicPartition { topic: t, partition: p }))
            .map(|tp| self.end_offset(tp) - g.committed.get(&tp).copied().unwrap_or(0))
            .sum()
    }
}

/// A shared handle on a `Broker` for the fault-free, in-process bus.
#[derive(Clone, Default)]
pub struct MemoryBus {
    broker: Rc<RefCell<Broker>>,
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    /// A bus with these topics (a topology's).
    pub fn with_topics(specs: &[crate::topology::TopicSpec]) -> MemoryBus {
        MemoryBus {
            broker: Rc::new(RefCell::new(Broker::with_topics(specs))),
        }
    }

    pub fn broker(&self) -> std::cell::Ref<'_, Broker> {
        self.broker.borrow()
    }

    pub fn broker_mut(&self) -> std::cell::RefMut<'_, Broker> {
        self.broker.borrow_mut()
    }

    pub fn producer(&self) -> MemoryProducer {
        MemoryProducer {
            broker: self.broker.clone(),
        }
    }

    /// Joins `group` as `member` and returns its consumer.
    pub fn consumer(&self, group: &str, member: &str, topics: &[Topic]) -> MemoryConsumer {
        self.broker.borrow_mut().join(group, member, topics);
        MemoryConsumer {
            broker: self.broker.clone(),
            group: group.to_string(),
            member: member.to_string(),
        }
    }
}

pub struct MemoryProducer {
    broker: Rc<RefCell<Broker>>,
}

impl Producer for MemoryProducer {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError> {
        self.broker
            .borrow_mut()
            .append(topic, partition, Bytes::copy_from_slice(key), Bytes::copy_from_slice(value))
            .map(|_| ())
    }

    fn flush(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

pub struct MemoryConsumer {
    broker: Rc<RefCell<Broker>>,
    group: String,
    member: String,
}

impl Consumer for MemoryConsumer {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError> {
        self.broker.borrow_mut().poll(&self.group, &self.member, max_records)
    }

    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError> {
        self.broker.borrow_mut().commit(&self.group, &self.member, offsets)
    }

    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError> {
        Ok(self.broker.borrow().committed(&self.group, tp))
    }

    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError> {
        Ok(self.broker.borrow().read(tp, from, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: u32) -> TopicPartition {
        TopicPartition {
            topic: topics::MARKET_FEED,
            partition: p,
        }
    }

    #[test]
    fn a_group_splits_partitions_and_rebalances_when_a_member_leaves() {
        let bus = MemoryBus::new();
        let mut a = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        assert_eq!(a.poll(10).unwrap(), Polled::Assigned((0..6).map(tp).collect()));
        let mut b = bus.consumer("g", "b", &[topics::MARKET_FEED]);
        assert_eq!(a.poll(10).unwrap(), Polled::Revoked(vec![tp(1), tp(3), tp(5)]));
        assert_eq!(b.poll(10).unwrap(), Polled::Assigned(vec![tp(1), tp(3), tp(5)]));
        bus.broker_mut().leave("g", "b");
        assert_eq!(a.poll(10).unwrap(), Polled::Assigned(vec![tp(1), tp(3), tp(5)]));
    }

    #[test]
    fn delivery_resumes_from_the_last_commit_after_a_rebalance() {
        let bus = MemoryBus::new();
        let mut p = bus.producer();
        for i in 0..5u8 {
            p.send(topics::MARKET_FEED, 0, b"k", &[i]).unwrap();
        }
        let mut a = bus.consumer("g", "a", &[topics::MARKET_FEED]);
        a.poll(10).unwrap(); // assignment
        let Polled::Records(r) = a.poll(3).unwrap() else { panic!() };
        assert_eq!(r.len(), 3);
        a.commit(&[(tp(0), 2)]).unwrap();
        bus.broker_mut().leave("g", "a");
        let mut b = bus.consumer("g", "b", &[topics::MARKET_FEED]);
        b.poll(10).unwrap();
        let Polled::Records(r) = b.poll(10).unwrap() else { panic!() };
        assert_eq!(r.first().unwrap().offset, 2, "records after the last commit are delivered again");
        assert!(a.commit(&[(tp(0), 5)]).is_err(), "a member that left cannot commit");
    }
}
