//! The wire schema of CipherHorizon, generated from `proto/horizon/v1/events.proto` (the current
//! contract) and `proto/horizon/v1/history.proto` (payload shapes of earlier schema versions,
//! read only by the upcasters).
//!
//! These are plain prost messages: the contract other services (in any language) produce and
//! consume. The domain never works on them directly; `horizon-core`'s codec converts them to
//! exact domain types and rejects malformed or mismatched payloads.

#![allow(clippy::all)]

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/horizon.v1.rs"));
}

/// The compiled schema (an encoded `google.protobuf.FileDescriptorSet` of both files and their
/// imports), so a reader can tell which fields each message has.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The schema files, for tools that generate code in other languages from the same contract.
pub const EVENTS_PROTO: &str = include_str!("../horizon/v1/events.proto");
/// Earlier versions' payload shapes; other languages need them only to read old records.
pub const HISTORY_PROTO: &str = include_str!("../horizon/v1/history.proto");
