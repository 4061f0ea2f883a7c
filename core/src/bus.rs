//! The message bus: the one interface between the core and a broker.
//!
//! Kafka's semantics, stated once: a topic has a fixed number of partitions; a key always maps
//! to the same partition (Kafka's default murmur2 partitioner, so keys land on the same
//! partition numbers as on a real cluster); order holds within a partition only; a consumer
//! group member receives the records of the partitions assigned to it from the group's last
//! committed offset, so delivery is at-least-once. The in-memory bus (`memory`), the simulator
//! (`horizon-sim`) and Apache Kafka (`horizon-runtime`) implement these traits, and the single
//! processing loop (`processor`) drives any of them.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;

/// Topic names are a fixed, documented set (see `topics`).
pub type Topic = &'static str;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: Topic,
    pub partition: u32,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A record as a consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: Topic,
    pub partition: u32,
    pub offset: u64,
    pub key: Bytes,
    pub value: Bytes,
}

impl Record {
    pub fn tp(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic,
            partition: self.partition,
        }
    }
}

/// What a poll returns: records, or a change in the partitions this member owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    Records(Vec<Record>),
    /// These partitions are now ours; consumption starts at the group's committed offset.
    Assigned(Vec<TopicPartition>),
    /// These partitions are no longer ours; commits for them would be refused.
    Revoked(Vec<TopicPartition>),
    /// Nothing to deliver right now.
    Idle,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The broker could not be reached or refused for now; retry with backoff.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A commit for a partition this member no longer owns (after a rebalance).
    #[error("partition {0} is no longer assigned to this member")]
    NotAssigned(String),
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// The broker refused records for good (too large, invalid, not authorised for their topic):
    /// sending them again fails the same way. From `send`, the one record it was given (index
    /// 0), which was not enqueued; from `flush`, the records sent since the previous flush that
    /// were refused, by their index among those sends, every other one being acknowledged.
    #[error("{} record(s) refused for good (first: {})", .0.len(), .0.first().map(|r| r.reason.as_str()).unwrap_or(""))]
    Refused(Vec<RefusedRecord>),
    #[error("{0}")]
    Fatal(String),
}

/// One record that the broker will never accept, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRecord {
    /// Position among the records sent since the previous flush (0 for a refused `send`).
    pub index: usize,
    pub reason: String,
}

impl BusError {
    pub fn is_retriable(&self) -> bool {
        matches!(self, BusError::Unavailable(_))
    }
}

/// Publishes records. `send` may buffer; `flush` returns once every record sent so far is
/// acknowledged by the broker, and fails if any could not be (then the caller sends them again).
/// A record the broker refuses for good is reported as `BusError::Refused` (by `send` at once,
/// or by `flush`), never as `Unavailable`: retrying it would wedge the caller.
pub trait Producer {
    fn send(&mut self, topic: Topic, partition: u32, key: &[u8], value: &[u8]) -> Result<(), BusError>;
    fn flush(&mut self) -> Result<(), BusError>;
}

/// One member of a consumer group.
pub trait Consumer {
    fn poll(&mut self, max_records: usize) -> Result<Polled, BusError>;
    /// Commits, for each partition, the offset of the next record to consume.
    fn commit(&mut self, offsets: &[(TopicPartition, u64)]) -> Result<(), BusError>;
    /// The group's committed offset for a partition (0 when nothing was committed).
    fn committed(&mut self, tp: TopicPartition) -> Result<u64, BusError>;
    /// Reads `[from, to)` of a partition straight from the log, to restore state by replay.
    fn fetch(&mut self, tp: TopicPartition, from: u64, to: u64) -> Result<Vec<Record>, BusError>;
}

/// Kafka's `murmur2` (org.apache.kafka.common.utils.Utils#murmur2).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a non-empty key.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// Per-partition offsets as queries and headers write them, `topic/partition:offset,...`
/// (spaces around a part and empty parts ignored), into "topic/partition" → offset. The error
/// names the first part that is not `topic/partition:offset` with a non-empty topic, a whole
/// partition number and a whole offset, or a partition given twice. The query API's
/// `min_offsets` and `X-Horizon-Offsets`, and `horizon query --at`, use this one syntax.
pub fn parse_offsets(text: &str) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: &str| format!("`{part}`: {why} (expected topic/partition:offset)");
        let (tp, offset) = part.rsplit_once(':').ok_or_else(|| bad("no `:offset`"))?;
        let (topic, partition) = tp.rsplit_once('/').ok_or_else(|| bad("no `/partition`"))?;
        if topic.is_empty() {
            return Err(bad("empty topic"));
        }
        partition.parse::<u32>().map_err(|_| bad("the partition is not a whole number"))?;
        let offset = offset.parse::<u64>().map_err(|_| bad("the offset is not a whole number"))?;
        if out.insert(tp.to_string(), offset).is_some() {
            return Err(format!("`{tp}` is given more than once"));
        }
    }
    Ok(out)
}

/// The inverse of `parse_offsets`: `topic/partition:offset,...` in partition order.
pub fn format_offsets(o: &BTreeMap<String, u64>) -> String {
    o.iter().map(|(tp, off)| format!("{tp}:{off}")).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The vectors of Kafka's own UtilsTest#testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn a_key_always_lands_on_the_same_partition() {
        let p = partition_for(b"BTCUSDT", 6);
        for _ in 0..3 {
            assert_eq!(partition_for(b"BTCUSDT", 6), p);
        }
        assert!(p < 6);
    }

    #[test]
    fn offsets_parse_and_format_round_trip() {
        let o = parse_offsets("market.feed/0:12, signals/1:3,").unwrap();
        assert_eq!(o.get("market.feed/0"), Some(&12));
        assert_eq!(format_offsets(&o), "market.feed/0:12,signals/1:3");
        assert_eq!(parse_offsets("").unwrap(), BTreeMap::new());
        for (bad, named) in [
            ("market.feed:12", "`market.feed:12`: no `/partition`"),
            ("market.feed/x:12", "`market.feed/x:12`: the partition is not"),
            ("market.feed/0:-1", "`market.feed/0:-1`: the offset is not"),
            ("/0:1", "`/0:1`: empty topic"),
            ("signals/0", "`signals/0`: no `:offset`"),
            ("signals/0:1,signals/0:2", "`signals/0` is given more than once"),
        ] {
            let e = parse_offsets(bad).unwrap_err();
            assert!(e.starts_with(named), "{bad}: {e}");
        }
    }
}
