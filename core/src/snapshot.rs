//! Snapshots of a task's state with the offsets it covers, so recovery is the latest snapshot
//! plus a replay of each partition's tail instead of a replay from the start.
//!
//! The format is versioned JSON: `{version, service, task, offsets: [[topic, partition, next
//! offset]], state}`. Writing it atomically (a crash mid-write leaves the previous snapshot
//! usable) is the edge's job; the processor only encodes, decodes and applies.

use crate::bus::TopicPartition;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Serialize)]
struct Out<'a> {
    version: u32,
    service: &'a str,
    task: u32,
    offsets: Vec<(&'a str, u32, u64)>,
    state: &'a RawValue,
}

#[derive(Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub service: String,
    pub task: u32,
    pub offsets: Vec<(String, u32, u64)>,
    pub state: Box<RawValue>,
}

/// `state` must be JSON (what `Service::encode_state` returns).
pub fn encode(service: &str, task: u32, offsets: &BTreeMap<TopicPartition, u64>, state: &[u8]) -> Vec<u8> {
    let state: &RawValue = serde_json::from_slice(state).expect("service states encode as JSON");
    let out = Out {
        version: SNAPSHOT_VERSION,
        service,
        task,
        offsets: offsets.iter().map(|(tp, o)| (tp.topic, tp.partition, *o)).collect(),
        state,
    };
    serde_json::to_vec(&out).expect("a snapshot serialises")
}

pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| format!("not a snapshot: {e}"))?;
    if snap.version != SNAPSHOT_VERSION {
        return Err(format!("snapshot version {} (this build reads {SNAPSHOT_VERSION})", snap.version));
    }
    Ok(snap)
}

/// `encode_state` for services whose state is serde-serialisable.
pub fn state_to_json<T: Serialize>(state: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(state).ok()
}

pub fn state_from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}
