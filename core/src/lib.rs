//! CipherHorizon's pure core.
//!
//! Everything here is deterministic: no clock, no I/O, no threads, no unseeded randomness.
//! Time comes from event timestamps; randomness (the market generator) from a seed.
//!
//! Flow: a market-data gateway publishes trades; `market` validates them and builds bars;
//! `signals` evaluates strategies per bar; `portfolio` merges every symbol in event time,
//! watches risk, rebalances and decides notifications; `projections` keep the read side.
//! `bus` is the interface to a message broker and `processor` the one processing loop that
//! drives any service over any bus.

pub mod event;
pub mod fixed;
pub mod time;

pub use fixed::Fixed;
pub use time::Timestamp;
pub mod audit;
pub mod bus;
pub mod feed;
pub mod generator;
pub mod manager;
pub mod market;
pub mod memory;
pub mod notify;
pub mod pipeline;
pub mod portfolio;
pub mod processor;
pub mod projections;
pub mod risk;
pub mod scenario;
pub mod schema;
pub mod sequencer;
pub mod service;
pub mod signals;
pub mod snapshot;
pub mod strategy;
pub mod topics;
pub mod topology;
pub mod upcast;
pub mod wire;
