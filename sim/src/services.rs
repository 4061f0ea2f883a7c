//! The services a simulated process runs: the production ones (`horizon_core::pipeline`'s
//! processing loops, unchanged), or with the `broken-services` feature a deliberately broken
//! variant that the simulator must catch.

use horizon_core::bus::{BusError, Consumer, Producer, Topic};
use horizon_core::pipeline::{Pipeline, Stage};
use horizon_core::processor::{Processor, Stats, StepOutcome};
use horizon_core::projections::{Digests, ProjectionService, Projections};
use horizon_core::scenario::Scenario;
use std::fmt;

/// A projections stage: a `Stage` whose read models the invariants can inspect.
pub trait Replica {
    fn stage(&mut self) -> &mut dyn Stage;
    fn projections(&self) -> Option<&Projections>;
    fn digests(&self) -> Digests;
}

impl Replica for Processor<ProjectionService> {
    fn stage(&mut self) -> &mut dyn Stage {
        self
    }
    fn projections(&self) -> Option<&Projections> {
        self.states().next().map(|(_, p)| p)
    }
    fn digests(&self) -> Digests {
        let empty = Projections::default();
        self.service().digests(Replica::projections(self).unwrap_or(&empty))
    }
}

/// One process's stages, in flow order: market, signals, portfolio, projections.
pub struct Stages {
    pub work: [Box<dyn Stage>; 3],
    pub projections: Box<dyn Replica>,
}

impl Stages {
    pub fn stage(&mut self, i: usize) -> &mut dyn Stage {
        match i {
            0..=2 => self.work[i].as_mut(),
            _ => self.projections.stage(),
        }
    }

    pub fn inputs(&mut self, i: usize) -> &'static [Topic] {
        self.stage(i).inputs()
    }

    /// Total of a statistic over the stages.
    pub fn stats(&mut self) -> Vec<(&'static str, Stats)> {
        (0..4)
            .map(|i| {
                let s = self.stage(i);
                (s.name(), s.stats().clone())
            })
            .collect()
    }
}

/// Which services the processes run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Services {
    #[default]
    Production,
    #[cfg(feature = "broken-services")]
    Broken(crate::broken::Broken),
}

impl Services {
    pub fn build(self, s: &Scenario) -> Stages {
        match self {
            Services::Production => {
                let p = Pipeline::new(s);
                Stages {
                    work: [Box::new(p.market), Box::new(p.signals), Box::new(p.manager)],
                    projections: Box::new(p.projections),
                }
            }
            #[cfg(feature = "broken-services")]
            Services::Broken(b) => b.build(s),
        }
    }

    /// Looks up `production` or, with the feature, a broken service's name.
    pub fn parse(name: &str) -> Result<Services, String> {
        if name == "production" {
            return Ok(Services::Production);
        }
        #[cfg(feature = "broken-services")]
        if let Some(b) = crate::broken::Broken::parse(name) {
            return Ok(Services::Broken(b));
        }
        Err(Services::unknown(name))
    }

    fn unknown(name: &str) -> String {
        #[cfg(feature = "broken-services")]
        {
            let known: Vec<&str> = crate::broken::Broken::ALL.iter().map(|b| b.name()).collect();
            format!("no broken service `{name}` (known: {})", known.join(", "))
        }
        #[cfg(not(feature = "broken-services"))]
        {
            format!("no broken service `{name}`: this build has none (build with `--features broken-services`)")
        }
    }

    pub fn is_production(self) -> bool {
        self == Services::Production
    }
}

impl fmt::Display for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Services::Production => f.write_str("production"),
            #[cfg(feature = "broken-services")]
            Services::Broken(b) => f.write_str(b.name()),
        }
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
