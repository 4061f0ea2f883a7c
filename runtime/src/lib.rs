//! Edges of CipherHorizon: the Kafka backend, the service process and the query API.

pub mod kafka;
pub mod recorded;
