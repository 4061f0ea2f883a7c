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

pub mod fixed;
pub mod time;
pub mod event;

pub use fixed::Fixed;
pub use time::Timestamp;
pub mod bus;
pub mod topics;
pub mod service;
pub mod processor;
pub mod memory;
pub mod scenario;
pub mod market;
pub mod signals;
