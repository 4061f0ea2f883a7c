//! What a domain service is to the processing loop.
//!
//! A service is a pure state machine: given its state and an input event, it pushes the events
//! to publish, or rejects the input with a reason. State lives in tasks, one per input partition
//! number (co-partitioned inputs share one), so a partition can move between processes of a
//! consumer group and its task be rebuilt there by replaying the partition.

use crate::bus::{Topic, TopicPartition};
use crate::event::Event;

/// An event to publish, with the topic and the key that picks its partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub topic: Topic,
    pub key: String,
    pub event: Event,
}

/// Why an input was refused; the loop dead-letters the record with this reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection(pub String);

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub trait Service {
    /// The state of one task.
    type State: Default;

    /// Names the service, its consumer group and the producer in its events' metadata.
    fn name(&self) -> &'static str;

    fn inputs(&self) -> &'static [Topic];

    /// The task a partition belongs to: by default its number, so that partition `p` of every
    /// input topic shares one state.
    fn task(&self, tp: TopicPartition) -> u32 {
        tp.partition
    }

    fn handle(&self, state: &mut Self::State, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection>;

    /// Whether a record of `topic` that does not decode is dead-lettered by this service, or
    /// only counted (`Stats::undecodable_skipped`) because another stage owns the topic. One bad
    /// record gives one dead letter, however many stages read its topic: a read replica that
    /// consumes every topic dead-letters only on the topics it owns (`topics::TopicSpec::owner`).
    fn dead_letters(&self, _topic: Topic) -> bool {
        true
    }

    /// A task's state as bytes for a snapshot; `None` when the service does not snapshot (its
    /// tasks are then always restored by replaying their partitions from the start).
    fn encode_state(&self, _state: &Self::State) -> Option<Vec<u8>> {
        None
    }

    /// The inverse of `encode_state`; `None` if the bytes are not a state of this service.
    fn decode_state(&self, _bytes: &[u8]) -> Option<Self::State> {
        None
    }
}
