//! `horizon-sim`: a deterministic simulated Kafka deployment for CipherHorizon's services.
//!
//! The production processing loop (`horizon_core::processor`, through `pipeline::Stage`) runs
//! unchanged on a simulated broker (`world`) built on the in-memory `Broker`: topics,
//! partitions, offsets and consumer groups with committed offsets, rebalancing as processes
//! join, leave, crash and stall. Virtual time jumps from event to event. One `u64` seed decides
//! everything random in a run: the market (unless pinned), the fault schedule (`schedule`,
//! drawn from proptest strategies within a `profile`, so failures shrink), the delivery skews.
//! Every run ends with the invariants (`invariants`) and a trace digest.
//!
//! ```no_run
//! use horizon_sim::{Case, FaultProfile, Runner};
//! # let scenario: horizon_core::scenario::Scenario = unimplemented!();
//! let mut runner = Runner::new(Case::new(scenario, FaultProfile::kafka()));
//! let outcome = runner.run_seed(42, false).unwrap();
//! assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
//! println!("trace {}", outcome.trace_digest);
//! ```
//!
//! No wall clock, no threads (`explore` runs whole runs on threads, each single-threaded), no
//! I/O, no randomness but ChaCha8 streams of the seed, no hash-map order in any output.

pub mod driver;
pub mod explore;
pub mod feed;
pub mod harness;
pub mod invariants;
pub mod profile;
pub mod recorded;
pub mod run;
pub mod schedule;
pub mod services;
pub mod trace;
pub mod world;

#[cfg(feature = "broken-services")]
pub mod broken;

pub use explore::{check_seed, explore, explore_until, shard, shrink_seed, ExploreOptions, SeedReport, Shrunk};
pub use invariants::{Invariant, Violation};
pub use profile::{FaultKind, FaultProfile, Knob, Protocol};
pub use run::{Case, Outcome, Runner, DEFAULT_EVENTS};
pub use schedule::{Fault, Schedule};
pub use services::topology_named;
