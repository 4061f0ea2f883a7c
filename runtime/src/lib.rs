//! Edges of CipherHorizon: the Kafka backend, the service process, the query API, and the
//! command line that runs any topology on Kafka (`cli`).

pub mod api;
pub mod bench;
pub mod cli;
pub mod gateway;
pub mod kafka;
pub mod notify;
pub mod recorded;
pub mod replica;
pub mod secrets;
pub mod service;
pub mod snapshots;
