//! Merges several ordered sources into one event-time order that does not depend on arrival.
//!
//! Each source (a symbol's signal series) numbers its items 0, 1, 2, ... without gaps. Items may
//! arrive interleaved across sources in any way, duplicated, and (beyond Kafka's guarantees)
//! reordered within a source: the sequencer drops what it has already seen, holds what came
//! early, and releases a step — every item with the smallest event time — only once every source
//! has reached that time. The output is a function of the items, never of their arrival order.

use crate::time::Timestamp;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Source<T> {
    next_seq: u64,
    ready: VecDeque<(Timestamp, T)>,
    early: BTreeMap<u64, (Timestamp, T)>,
}

impl<T> Default for Source<T> {
    fn default() -> Self {
        Source {
            next_seq: 0,
            ready: VecDeque::new(),
            early: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    Accepted,
    Duplicate,
    UnknownSource,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Sequencer<T> {
    sources: BTreeMap<String, Source<T>>,
}

impl<T> Sequencer<T> {
    /// A sequencer over a fixed set of sources.
    pub fn new<I: IntoIterator<Item = String>>(sources: I) -> Self {
        Sequencer {
            sources: sources.into_iter().map(|s| (s, Source::default())).collect(),
        }
    }

    pub fn push(&mut self, source: &str, seq: u64, ts: Timestamp, item: T) -> Admit {
        let Some(s) = self.sources.get_mut(source) else {
            return Admit::UnknownSource;
        };
        if seq < s.next_seq || s.early.contains_key(&seq) {
            return Admit::Duplicate;
        }
        if seq > s.next_seq {
            s.early.insert(seq, (ts, item));
            return Admit::Accepted;
        }
        s.ready.push_back((ts, item));
        s.next_seq += 1;
        while let Some(entry) = s.early.remove(&s.next_seq) {
            s.ready.push_back(entry);
            s.next_seq += 1;
        }
        Admit::Accepted
    }

    /// The next step: the time and the items (in source order) of the earliest event time, once
    /// every source has an item at or after it.
    pub fn pop_step(&mut self) -> Option<(Timestamp, Vec<(String, T)>)> {
        let mut t_min = None;
        for s in self.sources.values() {
            let (ts, _) = s.ready.front()?;
            t_min = Some(t_min.map_or(*ts, |m: Timestamp| m.min(*ts)));
        }
        let t = t_min?;
        let mut items = Vec::new();
        for (name, s) in self.sources.iter_mut() {
            while s.ready.front().is_some_and(|(ts, _)| *ts == t) {
                let (_, item) = s.ready.pop_front().unwrap();
                items.push((name.clone(), item));
            }
        }
        Some((t, items))
    }

    /// Items held back, waiting for other sources or for a gap to fill.
    pub fn buffered(&self) -> usize {
        self.sources.values().map(|s| s.ready.len() + s.early.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(n: i64) -> Timestamp {
        Timestamp(n)
    }

    #[test]
    fn a_step_waits_for_every_source() {
        let mut s = Sequencer::new(["a".to_string(), "b".to_string()]);
        s.push("a", 0, ts(1), "a0");
        assert!(s.pop_step().is_none());
        s.push("b", 0, ts(1), "b0");
        assert_eq!(s.pop_step(), Some((ts(1), vec![("a".into(), "a0"), ("b".into(), "b0")])));
    }

    #[test]
    fn duplicates_are_dropped_and_early_items_wait_for_the_gap() {
        let mut s = Sequencer::new(["a".to_string()]);
        assert_eq!(s.push("a", 1, ts(2), 1), Admit::Accepted);
        assert!(s.pop_step().is_none());
        assert_eq!(s.push("a", 0, ts(1), 0), Admit::Accepted);
        assert_eq!(s.push("a", 0, ts(1), 0), Admit::Duplicate);
        assert_eq!(s.push("x", 0, ts(1), 0), Admit::UnknownSource);
        assert_eq!(s.pop_step().unwrap().1, vec![("a".into(), 0)]);
        assert_eq!(s.pop_step().unwrap().1, vec![("a".into(), 1)]);
    }

    proptest! {
        /// Whatever the arrival order and duplication, the released steps are the same.
        #[test]
        fn release_order_does_not_depend_on_arrival(order in Just((0..24usize).collect::<Vec<_>>()).prop_shuffle(), dups in proptest::collection::vec(0..24usize, 0..8)) {
            // Three sources, eight items each, times 10*i (+ source offset for a bit of skew).
            let items: Vec<(String, u64, Timestamp)> = (0..24).map(|i| {
                let src = ["a", "b", "c"][i % 3];
                let seq = (i / 3) as u64;
                (src.to_string(), seq, ts(seq as i64 * 10 + (i % 3) as i64 % 2))
            }).collect();
            let run = |arrival: &[usize]| {
                let mut s = Sequencer::new(["a".to_string(), "b".to_string(), "c".to_string()]);
                let mut steps = Vec::new();
                for &i in arrival {
                    let (src, seq, t) = &items[i];
                    s.push(src, *seq, *t, (src.clone(), *seq));
                    while let Some(step) = s.pop_step() {
                        steps.push(step);
                    }
                }
                steps
            };
            let reference = run(&(0..24).collect::<Vec<_>>());
            let mut arrival = order.clone();
            arrival.extend(dups);
            prop_assert_eq!(run(&arrival), reference);
        }
    }
}
