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

/// `Send`: the Kafka service process steps each stage on a thread of its own.
pub trait Service: Send {
    /// The state of one task.
    type State: Default + Send;

    /// Names the service, its consumer group and the producer in its events' metadata.
    fn name(&self) -> &'static str;

    fn inputs(&self) -> &'static [Topic];

    /// The task a partition belongs to: by default its number, so that partition `p` of every
    /// input topic shares one state.
    fn task(&self, tp: TopicPartition) -> u32 {
        tp.partition
    }

    fn handle(&self, state: &mut Self::State, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection>;

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

/// A count a read model keeps of what it applied, for the simulator's once-only check: `counted`
/// applications of `what` against `distinct` ids held (more counted than distinct: one applied
/// twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    pub what: String,
    pub counted: u64,
    pub distinct: u64,
}

/// A service whose state is a read model: what a read replica (`StageSpec::read_model`) runs.
///
/// The simulator checks every read replica of every process against the fault-free run (its
/// digests converge), against a rebuild from offset 0 (the same digests), and against the log:
/// every event on a topic it reads is applied (`applied`), none twice (`tallies`). A read model
/// that counts or lists what it saw says so through these; nothing else of it need be known.
pub trait ReadModel: Service {
    /// Digests of one task's read models, by part name, in a fixed order: equal states give
    /// equal digests, and a part names what differs.
    fn digests(&self, state: &Self::State) -> Vec<(&'static str, String)>;

    /// Whether the state has applied the event with this id.
    fn applied(&self, state: &Self::State, event_id: &str) -> bool;

    /// What the state counted against what it holds (see `Tally`); none by default.
    fn tallies(&self, _state: &Self::State) -> Vec<Tally> {
        Vec::new()
    }

    /// Whether two states are equal, when that is cheaper to know than their digests (the
    /// checker then reuses one replica's digests for the other); `false` by default.
    fn same_state(&self, _a: &Self::State, _b: &Self::State) -> bool {
        false
    }
}
