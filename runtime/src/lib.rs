//! Edges of CipherHorizon: the Kafka backend, the service process and the query API.

pub mod api;
pub mod bench;
pub mod gateway;
pub mod kafka;
pub mod notify;
pub mod recorded;
pub mod replica;
pub mod secrets;
pub mod service;
pub mod snapshots;
