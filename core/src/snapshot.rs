//! Snapshots of a task's state with the offsets it covers, so recovery is the latest snapshot
//! plus a replay of each partition's tail instead of a replay from the start.
//!
//! The format is a versioned JSON header line `{version, service, task, offsets: [[topic,
//! partition, next offset]]}` followed by the state's bytes in the service's own encoding. Writing it atomically (a crash mid-write leaves the previous snapshot
//! usable) is the edge's job; the processor only encodes, decodes and applies.

use crate::bus::TopicPartition;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format's version, header and states together: a snapshot of another version is refused
/// (and its task rebuilt by replaying the log), never misread. 3: the projections' audit trail
/// is held compactly (`projections::AuditTrail`): ids as raw bytes, names interned. 4: the
/// audit trail as columns in id order (ids, times, shape indices), loaded without hashing. 5: the
/// signals' strategies each encode their own state (`strategy::Strategy::encode_state`), under
/// their registered names. 6: the signals hold bars that arrived ahead of their turn.
pub const SNAPSHOT_VERSION: u32 = 6;

#[derive(Serialize, Deserialize)]
struct Header {
    version: u32,
    service: String,
    task: u32,
    offsets: Vec<(String, u32, u64)>,
}

pub struct Snapshot<'a> {
    pub version: u32,
    pub service: String,
    pub task: u32,
    pub offsets: Vec<(String, u32, u64)>,
    /// The state as the service encoded it (`Service::encode_state`), borrowed from the
    /// snapshot's bytes (a day's projections are hundreds of MB: no copy).
    pub state: &'a [u8],
}

/// A JSON header line (readable with `head -1`), then the state's bytes.
pub fn encode(service: &str, task: u32, offsets: &BTreeMap<TopicPartition, u64>, state: &[u8]) -> Vec<u8> {
    let header = Header {
        version: SNAPSHOT_VERSION,
        service: service.to_string(),
        task,
        offsets: offsets.iter().map(|(tp, o)| (tp.topic.to_string(), tp.partition, *o)).collect(),
    };
    let mut out = serde_json::to_vec(&header).expect("a header serialises");
    out.push(b'\n');
    out.extend_from_slice(state);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot<'_>, String> {
    let split = bytes.iter().position(|b| *b == b'\n').ok_or("not a snapshot: no header line")?;
    let header: Header = serde_json::from_slice(&bytes[..split]).map_err(|e| format!("not a snapshot: {e}"))?;
    if header.version != SNAPSHOT_VERSION {
        return Err(format!("snapshot version {} (this build reads {SNAPSHOT_VERSION})", header.version));
    }
    Ok(Snapshot {
        version: header.version,
        service: header.service,
        task: header.task,
        offsets: header.offsets,
        state: &bytes[split + 1..],
    })
}

/// `encode_state` for services whose state is serde-serialisable: postcard, a compact binary
/// format (decimals and times as their integer units).
pub fn state_to_bytes<T: Serialize>(state: &T) -> Option<Vec<u8>> {
    postcard::to_stdvec(state).ok()
}

pub fn state_from_bytes<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

/// JSON, for states holding values only a self-describing format can read back (events, whose
/// payload is a tagged enum).
pub fn state_to_json<T: Serialize>(state: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(state).ok()
}

pub fn state_from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}
