//! What a simulated process runs: every stage of a `Topology` (the shipped one, a user's, or
//! with the `broken-services` feature a shipped one with a deliberately broken stage that the
//! simulator must catch), each through the production processing loop, unchanged.

use horizon_core::bus::{BusError, Consumer, Producer, Topic};
use horizon_core::pipeline::Stage;
use horizon_core::processor::{Stats, StepOutcome};
use horizon_core::scenario::Scenario;
use horizon_core::topology::Topology;

/// One process's stages, in the topology's flow order.
pub struct Stages {
    pub stages: Vec<Box<dyn Stage>>,
}

impl Stages {
    /// Every stage of `topology` for the scenario (which `Runner::preflight` has built once
    /// already, so a failure here is a bug, not the user's input).
    pub fn build(topology: &Topology, s: &Scenario) -> Stages {
        Stages {
            stages: topology
                .build(s)
                .unwrap_or_else(|e| panic!("a topology that built at preflight failed to build: {e}")),
        }
    }

    pub fn stage(&mut self, i: usize) -> &mut dyn Stage {
        self.stages[i].as_mut()
    }

    pub fn len(&self) -> usize {
        self.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Each stage's statistics, by name.
    pub fn stats(&self) -> Vec<(&'static str, Stats)> {
        self.stages.iter().map(|s| (s.name(), s.stats().clone())).collect()
    }

    /// The read replicas, in flow order.
    pub fn into_replicas(self) -> Vec<Box<dyn Stage>> {
        self.stages.into_iter().filter(|s| s.read_replica().is_some()).collect()
    }
}

/// The topology `--broken NAME` names: `production` (the shipped one) or, with the feature, a
/// shipped one with a broken stage.
pub fn topology_named(name: &str) -> Result<Topology, String> {
    if name == horizon_core::topology::SHIPPED {
        return Ok(Topology::shipped());
    }
    #[cfg(feature = "broken-services")]
    if let Some(b) = crate::broken::Broken::parse(name) {
        return Ok(b.topology());
    }
    #[cfg(feature = "broken-services")]
    {
        let known: Vec<&str> = crate::broken::Broken::ALL.iter().map(|b| b.name()).collect();
        Err(format!("no broken service `{name}` (known: {})", known.join(", ")))
    }
    #[cfg(not(feature = "broken-services"))]
    {
        Err(format!(
            "no broken service `{name}`: this build has none (build with `--features broken-services`)"
        ))
    }
}

/// A producer that refuses everything: for stages that must not publish (a rebuild).
pub struct NoProducer;

impl Producer for NoProducer {
    fn send(&mut self, topic: Topic, _partition: u32, _key: &[u8], _value: &[u8]) -> Result<(), BusError> {
        Err(BusError::Fatal(format!("a rebuild must not publish (to {topic})")))
    }
    fn flush(&mut self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Steps `stage` until it is idle; for fault-free runs on the in-memory bus.
pub fn drain(
    stage: &mut dyn Stage,
    consumer: &mut dyn Consumer,
    producer: &mut dyn Producer,
    max_records: usize,
) -> Result<bool, BusError> {
    let mut progress = false;
    loop {
        match stage.step(consumer, producer, max_records)? {
            StepOutcome::Idle => return Ok(progress),
            StepOutcome::Progress(_) => progress = true,
            StepOutcome::Retry(e) => return Err(e),
        }
    }
}
