//! The deployment as data: the topics, and the stages that consume and produce them.
//!
//! A `Topology` is the one place the stages are listed. The in-memory run (`Pipeline`), the
//! simulated world, its invariants, `horizon run`'s stage threads, `horizon topics create` and
//! the topic table of the docs all read it. The shipped pipeline is `Topology::shipped()`; a
//! user's crate adds its own topics and stages to it (or builds one from nothing) without
//! editing ours:
//!
//! ```
//! use horizon_core::topology::{StageSpec, TopicSpec, Topology};
//! use horizon_core::topics;
//! # use horizon_core::service::{Output, Rejection, Service};
//! # use horizon_core::event::Event;
//! # struct Echo;
//! # impl Service for Echo {
//! #     type State = ();
//! #     fn name(&self) -> &'static str { "echo" }
//! #     fn inputs(&self) -> &'static [&'static str] { &[topics::BARS] }
//! #     fn handle(&self, _: &mut (), _: &Event, _: &mut Vec<Output>) -> Result<(), Rejection> { Ok(()) }
//! # }
//! const ECHOES: &str = "echoes";
//! let topology = Topology::shipped()
//!     .named("with-echo")
//!     .topic(TopicSpec { name: ECHOES, partitions: 3, key: "symbol", holds: "echoed bars" })
//!     .stage(StageSpec::service("echo", &[topics::BARS], &[ECHOES], |_scenario| Ok(Echo)));
//! topology.validate().unwrap();
//! assert_eq!(topology.owner(topics::BARS), Some("signals"));
//! assert_eq!(topology.producers(ECHOES), ["echo"]);
//! ```
//!
//! Ownership is derived, not declared: the first stage in flow order that consumes a topic
//! dead-letters what does not decode on it; every later consumer counts such a record and moves
//! on, so one bad record gives one dead letter however many stages read its topic.

use crate::bus::Topic;
use crate::pipeline::{Replica, Stage};
use crate::processor::{Processor, Routes};
use crate::scenario::{Scenario, ScenarioError};
use crate::service::{ReadModel, Service};
use crate::strategy::StrategyRegistry;
use crate::topics;
use std::fmt;
use std::sync::Arc;

/// One topic: its name, partition count, what its record key is and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: Topic,
    pub partitions: u32,
    /// What the record key is (records of one key keep their order: one partition).
    pub key: &'static str,
    pub holds: &'static str,
}

type Build = dyn Fn(&Scenario, Routes) -> Result<Box<dyn Stage>, ScenarioError> + Send + Sync;

/// One stage: a `Service` run by the processing loop, with the topics it reads and writes.
#[derive(Clone)]
pub struct StageSpec {
    pub name: &'static str,
    pub inputs: &'static [Topic],
    /// The topics it publishes to, besides the dead-letter topic every stage may write.
    pub outputs: &'static [Topic],
    /// A read replica: every process keeps a whole copy of it (its own consumer group, every
    /// partition), and its read models are what the simulator checks for convergence.
    pub replica: bool,
    build: Arc<Build>,
}

impl fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageSpec")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl StageSpec {
    /// A working stage: `make` builds its service for a scenario. The service must name itself
    /// `name` and read `inputs` (checked when it is built); it may publish only to `outputs`.
    pub fn service<S, F>(name: &'static str, inputs: &'static [Topic], outputs: &'static [Topic], make: F) -> StageSpec
    where
        S: Service + 'static,
        F: Fn(&Scenario) -> Result<S, ScenarioError> + Send + Sync + 'static,
    {
        StageSpec {
            name,
            inputs,
            outputs,
            replica: false,
            build: Arc::new(move |s, routes| Ok(Box::new(Processor::with_routes(make(s)?, routes)))),
        }
    }

    /// A read replica: `make` builds its read model for a scenario. It publishes nothing but
    /// dead letters of the topics it owns.
    pub fn read_model<S, F>(name: &'static str, inputs: &'static [Topic], make: F) -> StageSpec
    where
        S: ReadModel + 'static,
        F: Fn(&Scenario) -> Result<S, ScenarioError> + Send + Sync + 'static,
    {
        StageSpec {
            name,
            inputs,
            outputs: &[],
            replica: true,
            build: Arc::new(move |s, routes| Ok(Box::new(Replica(Processor::with_routes(make(s)?, routes))))),
        }
    }

    /// The same stage, each built instance passed through `f` (a wrapper that changes how it
    /// steps: the simulator's deliberately broken stages are made this way).
    pub fn wrap<F>(self, f: F) -> StageSpec
    where
        F: Fn(Box<dyn Stage>) -> Box<dyn Stage> + Send + Sync + 'static,
    {
        let inner = self.build;
        StageSpec {
            build: Arc::new(move |s, routes| inner(s, routes).map(&f)),
            ..self
        }
    }
}

/// Why a topology cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError(pub String);

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopologyError {}

/// Topics and stages, the stages in flow order.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Names the deployment in reports and replay commands ("production" for ours).
    pub name: String,
    topics: Vec<TopicSpec>,
    stages: Vec<StageSpec>,
    /// The strategies its scenarios may name (`Scenario::from_toml_with`).
    registry: StrategyRegistry,
}

/// The name of the shipped topology.
pub const SHIPPED: &str = "production";

impl Topology {
    /// No topics but the dead-letter topic, no stages.
    pub fn empty(name: impl Into<String>) -> Topology {
        let deadletter = *topics::ALL.iter().find(|t| t.name == topics::DEADLETTER).expect("shipped");
        Topology {
            name: name.into(),
            topics: vec![deadletter],
            stages: Vec::new(),
            registry: StrategyRegistry::shipped(),
        }
    }

    /// The shipped pipeline with the shipped strategies.
    pub fn shipped() -> Topology {
        Topology::shipped_with(StrategyRegistry::shipped())
    }

    /// The shipped pipeline, its signals stage looking strategies up in `registry` (the shipped
    /// ones and a user's: `StrategyRegistry::register`).
    pub fn shipped_with(registry: StrategyRegistry) -> Topology {
        use crate::manager::{ManagerConfig, PortfolioManager};
        use crate::market::{MarketConfig, MarketService};
        use crate::projections::ProjectionService;
        use crate::signals::{SignalConfig, SignalService};
        Topology {
            name: SHIPPED.to_string(),
            topics: topics::ALL.to_vec(),
            stages: Vec::new(),
            registry: registry.clone(),
        }
        .stage(StageSpec::service(
            crate::market::NAME,
            crate::market::INPUTS,
            &[topics::BARS],
            |s| Ok(MarketService::new(MarketConfig::from_scenario(s))),
        ))
        .stage(StageSpec::service(
            crate::signals::NAME,
            crate::signals::INPUTS,
            &[topics::SIGNALS],
            move |s| Ok(SignalService::new(SignalConfig::with_registry(s, &registry)?)),
        ))
        .stage(StageSpec::service(
            crate::manager::NAME,
            crate::manager::INPUTS,
            &[topics::RISK, topics::PORTFOLIO, topics::NOTIFICATIONS],
            |s| Ok(PortfolioManager::new(ManagerConfig::from_scenario(s))),
        ))
        .stage(StageSpec::read_model(crate::projections::NAME, crate::projections::INPUTS, |s| {
            Ok(ProjectionService::from_scenario(s))
        }))
    }

    /// The same topology under another name.
    pub fn named(mut self, name: impl Into<String>) -> Topology {
        self.name = name.into();
        self
    }

    /// Adds a topic (replacing one of the same name).
    pub fn topic(mut self, spec: TopicSpec) -> Topology {
        match self.topics.iter_mut().find(|t| t.name == spec.name) {
            Some(t) => *t = spec,
            None => self.topics.push(spec),
        }
        self
    }

    /// Adds a stage after the others (replacing one of the same name, in its place).
    pub fn stage(mut self, spec: StageSpec) -> Topology {
        match self.stages.iter_mut().find(|s| s.name == spec.name) {
            Some(s) => *s = spec,
            None => self.stages.push(spec),
        }
        self
    }

    /// Changes the stage `name` with `f`; panics if there is none (a topology is code: a wrong
    /// name is the programmer's mistake, found by the first test that builds it).
    pub fn map_stage(mut self, name: &str, f: impl FnOnce(StageSpec) -> StageSpec) -> Topology {
        let i = self
            .stages
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("topology `{}` has no stage `{name}`", self.name));
        let spec = self.stages.remove(i);
        self.stages.insert(i, f(spec));
        self
    }

    /// The strategies a scenario of this topology may name.
    pub fn registry(&self) -> &StrategyRegistry {
        &self.registry
    }

    /// Reads a scenario file's text with this topology's strategies.
    pub fn scenario(&self, text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml_with(text, origin, &self.registry)
    }

    pub fn topics(&self) -> &[TopicSpec] {
        &self.topics
    }

    pub fn stages(&self) -> &[StageSpec] {
        &self.stages
    }

    pub fn stage_spec(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn topic_spec(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// The static name of a declared topic (as a broker client reports it, as a string).
    pub fn by_name(&self, name: &str) -> Option<Topic> {
        self.topic_spec(name).map(|t| t.name)
    }

    /// Partitions of a declared topic.
    pub fn partitions(&self, topic: &str) -> Option<u32> {
        self.topic_spec(topic).map(|t| t.partitions)
    }

    /// The first stage in flow order that consumes `topic`: it dead-letters what does not
    /// decode there.
    pub fn owner(&self, topic: &str) -> Option<&'static str> {
        self.stages.iter().find(|s| s.inputs.contains(&topic)).map(|s| s.name)
    }

    /// The stages that publish to `topic` (none for the feed: the market-data gateway does).
    pub fn producers(&self, topic: &str) -> Vec<&'static str> {
        self.stages.iter().filter(|s| s.outputs.contains(&topic)).map(|s| s.name).collect()
    }

    /// The topics no stage publishes to, other than the dead-letter topic: what the gateway
    /// feeds.
    pub fn sources(&self) -> Vec<Topic> {
        self.topics
            .iter()
            .filter(|t| t.name != topics::DEADLETTER && self.producers(t.name).is_empty())
            .map(|t| t.name)
            .collect()
    }

    /// Every topic a stage reads or writes is declared, names are unique, a read replica
    /// publishes nothing, every declared topic has a partition.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let err = |m: String| Err(TopologyError(format!("topology `{}`: {m}", self.name)));
        for (i, t) in self.topics.iter().enumerate() {
            if t.partitions == 0 {
                return err(format!("topic `{}` has no partitions", t.name));
            }
            if self.topics[..i].iter().any(|u| u.name == t.name) {
                return err(format!("topic `{}` is declared twice", t.name));
            }
        }
        if self.stages.is_empty() {
            return err("no stages".to_string());
        }
        for (i, s) in self.stages.iter().enumerate() {
            if self.stages[..i].iter().any(|u| u.name == s.name) {
                return err(format!("stage `{}` is declared twice", s.name));
            }
            if s.inputs.is_empty() {
                return err(format!("stage `{}` reads no topic", s.name));
            }
            for t in s.inputs.iter().chain(s.outputs) {
                if self.topic_spec(t).is_none() {
                    return err(format!("stage `{}` uses topic `{t}`, which the topology does not declare", s.name));
                }
            }
            if s.outputs.contains(&topics::DEADLETTER) {
                return err(format!(
                    "stage `{}` lists `{}` as an output: every stage may dead-letter, leave it out",
                    s.name,
                    topics::DEADLETTER
                ));
            }
            if s.inputs.contains(&topics::DEADLETTER) {
                return err(format!(
                    "stage `{}` reads `{}`: nothing consumes dead letters in a topology",
                    s.name,
                    topics::DEADLETTER
                ));
            }
        }
        if !self.stages.iter().any(|s| s.replica) {
            return err("no read replica: nothing to check or query".to_string());
        }
        Ok(())
    }

    /// Where stage `spec`'s outputs go and which of its inputs it owns.
    fn routes(&self, spec: &StageSpec) -> Routes {
        let outputs = spec
            .outputs
            .iter()
            .chain([&topics::DEADLETTER])
            .map(|t| (*t, self.partitions(t).expect("validated")))
            .collect();
        let owned = spec.inputs.iter().copied().filter(|t| self.owner(t) == Some(spec.name)).collect();
        Routes::new(outputs, owned)
    }

    /// Builds the stage `spec` (one of this topology's) for a scenario.
    pub fn build_stage(&self, spec: &StageSpec, s: &Scenario) -> Result<Box<dyn Stage>, ScenarioError> {
        let stage = (spec.build)(s, self.routes(spec))?;
        if stage.name() != spec.name || stage.inputs() != spec.inputs {
            return Err(ScenarioError {
                origin: format!("topology `{}`", self.name),
                key: String::new(),
                problem: format!(
                    "stage `{}` reading {:?} built a service `{}` reading {:?}",
                    spec.name,
                    spec.inputs,
                    stage.name(),
                    stage.inputs()
                ),
            });
        }
        Ok(stage)
    }

    /// Every stage, in flow order, built for a scenario.
    pub fn build(&self, s: &Scenario) -> Result<Vec<Box<dyn Stage>>, ScenarioError> {
        self.validate().map_err(|e| ScenarioError {
            origin: format!("topology `{}`", self.name),
            key: String::new(),
            problem: e.0,
        })?;
        self.stages.iter().map(|spec| self.build_stage(spec, s)).collect()
    }

    /// The topic table of the docs, in Markdown: one row per topic with its partitions, key,
    /// producers, owner and what it holds.
    pub fn topic_table(&self) -> String {
        let mut out = String::from("| topic | partitions | key | produced by | owned by | holds |\n|---|---|---|---|---|---|\n");
        for t in &self.topics {
            let producers = self.producers(t.name);
            let produced = if t.name == topics::DEADLETTER {
                "any stage".to_string()
            } else if producers.is_empty() {
                "the market-data gateway".to_string()
            } else {
                producers.join(", ")
            };
            let owner = self.owner(t.name).unwrap_or("none");
            out.push_str(&format!(
                "| `{}` | {} | {} | {produced} | {owner} | {} |\n",
                t.name, t.partitions, t.key, t.holds
            ));
        }
        out
    }
}
