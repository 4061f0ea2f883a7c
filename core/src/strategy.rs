//! Strategies as plug-ins: the `Strategy` trait the signals service evaluates on every bar, and
//! the `StrategyRegistry` that turns a scenario's strategy entries (a registered name and a TOML
//! table of parameters) into strategies.
//!
//! The shipped strategies (`ema-crossover`, `breakout`, in `signals`) are registered like any
//! other; a user's crate registers its own under a new name and builds the pipeline with its
//! registry (`Pipeline::with_registry`), without editing ours.
//!
//! ```
//! use horizon_core::event::{Bar, Direction, StrategyView};
//! use horizon_core::strategy::{parse_params, ParamError, Strategy, StrategyRegistry};
//! use horizon_core::Fixed;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct AlwaysLong {
//!     strength: Fixed,
//! }
//!
//! impl Strategy for AlwaysLong {
//!     fn on_bar(&mut self, _bar: &Bar) -> StrategyView {
//!         StrategyView { strategy: "always-long".into(), direction: Direction::Long, strength: self.strength }
//!     }
//!     fn encode_state(&self) -> Vec<u8> {
//!         horizon_core::snapshot::state_to_bytes(self).expect("serialises")
//!     }
//!     fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String> {
//!         *self = horizon_core::snapshot::state_from_bytes(bytes).ok_or("not an always-long state")?;
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = StrategyRegistry::shipped();
//! registry
//!     .register("always-long", |params| {
//!         #[derive(serde::Deserialize)]
//!         #[serde(deny_unknown_fields)]
//!         struct Params {
//!             strength: Fixed,
//!         }
//!         let p: Params = parse_params(params)?;
//!         if p.strength > Fixed::ONE {
//!             return Err(ParamError::new("strength", "must be at most 1"));
//!         }
//!         Ok(Box::new(AlwaysLong { strength: p.strength }))
//!     })
//!     .unwrap();
//! assert_eq!(registry.names().collect::<Vec<_>>(), ["always-long", "breakout", "ema-crossover"]);
//! ```

use crate::event::{Bar, StrategyView};
use crate::fixed::Fixed;
use crate::scenario::{Scenario, ScenarioError};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A strategy's parameters: the TOML table of its scenario entry.
pub type StrategyParams = toml::Table;

/// One symbol's trading strategy: a bar in, a view of the symbol out.
///
/// The signals service builds one instance per symbol (from the registry's factory) and calls
/// `on_bar` once for every bar of the signal interval, in bar order, each bar once (redelivered
/// bars are dropped before they reach it). It combines the views of every configured strategy,
/// weighted by their entries' `weight`, into the symbol's signal.
///
/// A strategy must be deterministic: its views depend only on its parameters and the bars it was
/// given, never on a clock, unseeded randomness, I/O or hash-map iteration order. Its state
/// round-trips through `encode_state`/`decode_state` so the service's task state can be
/// snapshotted: a strategy restored from its bytes must go on exactly as the original would.
pub trait Strategy: Send {
    /// Evaluates one closed bar. `StrategyView::strategy` labels the view in the published
    /// signal.
    fn on_bar(&mut self, bar: &Bar) -> StrategyView;

    /// The state, as bytes in the strategy's own encoding (`snapshot::state_to_bytes` for a
    /// serde-serialisable strategy).
    fn encode_state(&self) -> Vec<u8>;

    /// Replaces the state with one `encode_state` returned; an error if the bytes are not a state
    /// of this strategy (the snapshot is then refused and the task rebuilt by replay).
    fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// A parameter a factory refused: the key (dotted, within the strategy's table; empty when the
/// table as a whole is wrong) and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub key: String,
    pub problem: String,
}

impl ParamError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> ParamError {
        ParamError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.problem)
        } else {
            write!(f, "`{}`: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ParamError {}

/// Reads a factory's typed parameters from its table; a missing, unknown (with
/// `#[serde(deny_unknown_fields)]`) or ill-typed key is an error naming it.
pub fn parse_params<T: serde::de::DeserializeOwned>(params: &StrategyParams) -> Result<T, ParamError> {
    serde_path_to_error::deserialize(toml::Value::Table(params.clone())).map_err(|e| {
        let path = e.path().to_string();
        // toml appends "in `key`" on a line of its own: the key is reported separately.
        let problem = e.inner().to_string().lines().next().unwrap_or_default().to_string();
        ParamError::new(if path == "." { String::new() } else { path }, problem)
    })
}

/// Builds a strategy from its parameters. A factory must be a pure function of them: the
/// service calls it again for every symbol and every restored task.
pub type StrategyFactory = dyn Fn(&StrategyParams) -> Result<Box<dyn Strategy>, ParamError> + Send + Sync;

/// Why the registry could not build a strategy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// No strategy is registered under the name; `known` lists the registered ones, sorted.
    Unknown {
        name: String,
        known: Vec<String>,
    },
    Params(ParamError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Unknown { name, known } => {
                write!(f, "unknown strategy `{name}` (known: {})", known.join(", "))
            }
            BuildError::Params(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BuildError {}

/// Strategies by registered name. `shipped()` holds `ema-crossover` and `breakout`;
/// `register` adds a user's.
#[derive(Clone, Default)]
pub struct StrategyRegistry {
    factories: BTreeMap<String, Arc<StrategyFactory>>,
}

impl fmt::Debug for StrategyRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.factories.keys()).finish()
    }
}

impl StrategyRegistry {
    /// A registry with no strategy in it.
    pub fn empty() -> StrategyRegistry {
        StrategyRegistry::default()
    }

    /// The strategies this crate ships (`signals::EmaCrossover`, `signals::Breakout`).
    pub fn shipped() -> StrategyRegistry {
        let mut r = StrategyRegistry::empty();
        r.register(crate::signals::EMA_CROSSOVER, crate::signals::EmaCrossover::from_params)
            .expect("a fresh registry");
        r.register(crate::signals::BREAKOUT, crate::signals::Breakout::from_params)
            .expect("a fresh registry");
        r
    }

    /// Registers `factory` under `name`; a name already taken is refused (replacing a
    /// strategy silently would change what existing scenarios mean).
    pub fn register<F>(&mut self, name: impl Into<String>, factory: F) -> Result<&mut StrategyRegistry, String>
    where
        F: Fn(&StrategyParams) -> Result<Box<dyn Strategy>, ParamError> + Send + Sync + 'static,
    {
        let name = name.into();
        if name.trim().is_empty() {
            return Err("a strategy's name must not be empty".into());
        }
        if self.factories.contains_key(&name) {
            return Err(format!("a strategy named `{name}` is already registered"));
        }
        self.factories.insert(name, Arc::new(factory));
        Ok(self)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// A strategy of the signals service: the factory registered under `name`, checked once
    /// against `params` here so that a bad parameter is an error before anything runs.
    pub fn slot(&self, name: &str, weight: Fixed, params: StrategyParams) -> Result<StrategySlot, BuildError> {
        let Some(factory) = self.factories.get(name) else {
            return Err(BuildError::Unknown {
                name: name.to_string(),
                known: self.names().map(String::from).collect(),
            });
        };
        factory(&params).map_err(BuildError::Params)?;
        Ok(StrategySlot {
            name: name.to_string(),
            weight,
            params,
            factory: factory.clone(),
        })
    }

    /// The scenario's strategies, in the order the signals service evaluates them (see
    /// `Scenario::strategy_specs`). Errors name the scenario file, the key and the problem; an
    /// unknown name lists the known ones.
    pub fn resolve(&self, scenario: &Scenario) -> Result<Vec<StrategySlot>, ScenarioError> {
        let specs = scenario.strategy_specs();
        let mut slots = Vec::with_capacity(specs.len());
        for spec in specs {
            let slot = self.slot(&spec.name, spec.weight, spec.params).map_err(|e| {
                let (key, problem) = match e {
                    BuildError::Unknown { .. } => (spec.name_key, e.to_string()),
                    BuildError::Params(p) if p.key.is_empty() => (spec.params_key, p.problem),
                    BuildError::Params(p) => (format!("{}.{}", spec.params_key, p.key), p.problem),
                };
                ScenarioError {
                    origin: scenario.origin.clone(),
                    key,
                    problem,
                }
            })?;
            slots.push(slot);
        }
        Ok(slots)
    }
}

/// One configured strategy of the signals service: its registered name, its weight in the
/// combined signal, and how to build a fresh instance for a symbol.
#[derive(Clone)]
pub struct StrategySlot {
    pub name: String,
    pub weight: Fixed,
    params: StrategyParams,
    factory: Arc<StrategyFactory>,
}

impl StrategySlot {
    /// A fresh instance, as for a symbol's first bar.
    pub fn build(&self) -> Box<dyn Strategy> {
        (self.factory)(&self.params)
            .unwrap_or_else(|e| panic!("strategy `{}` accepted its parameters once and now refuses them: {e}", self.name))
    }

    pub fn params(&self) -> &StrategyParams {
        &self.params
    }
}

impl fmt::Debug for StrategySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrategySlot")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("params", &self.params)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Direction;

    /// Counts the bars it saw; long after `after` of them.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Counter {
        after: u32,
        seen: u32,
    }

    impl Strategy for Counter {
        fn on_bar(&mut self, _bar: &Bar) -> StrategyView {
            self.seen += 1;
            StrategyView {
                strategy: "counter".into(),
                direction: if self.seen > self.after { Direction::Long } else { Direction::Flat },
                strength: Fixed::ONE,
            }
        }
        fn encode_state(&self) -> Vec<u8> {
            crate::snapshot::state_to_bytes(self).unwrap()
        }
        fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String> {
            *self = crate::snapshot::state_from_bytes(bytes).ok_or("not a counter")?;
            Ok(())
        }
    }

    fn counter(params: &StrategyParams) -> Result<Box<dyn Strategy>, ParamError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            after: u32,
        }
        let p: P = parse_params(params)?;
        if p.after == 0 {
            return Err(ParamError::new("after", "must be at least 1"));
        }
        Ok(Box::new(Counter { after: p.after, seen: 0 }))
    }

    fn params(text: &str) -> StrategyParams {
        toml::from_str(text).unwrap()
    }

    fn bar() -> Bar {
        Bar {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            interval_ms: 60_000,
            start: crate::Timestamp(0),
            open: Fixed::ONE,
            high: Fixed::ONE,
            low: Fixed::ONE,
            close: Fixed::ONE,
            volume: Fixed::ONE,
            trade_count: 1,
            seq: 0,
        }
    }

    #[test]
    fn a_registered_strategy_is_built_from_its_params_and_held_as_a_trait_object() {
        // Given a registry with a user's strategy,
        let mut r = StrategyRegistry::shipped();
        r.register("counter", counter).unwrap();
        // when a slot is built from its name and parameters,
        let slot = r.slot("counter", Fixed::ONE, params("after = 2")).unwrap();
        let mut s: Box<dyn Strategy> = slot.build();
        // then it evaluates bars as the factory configured it.
        let views: Vec<Direction> = (0..3).map(|_| s.on_bar(&bar()).direction).collect();
        assert_eq!(views, [Direction::Flat, Direction::Flat, Direction::Long]);
        assert_eq!(r.names().collect::<Vec<_>>(), ["breakout", "counter", "ema-crossover"]);
    }

    #[test]
    fn a_name_is_registered_once() {
        let mut r = StrategyRegistry::shipped();
        let err = r.register("breakout", counter).err().unwrap();
        assert_eq!(err, "a strategy named `breakout` is already registered");
        assert!(r.register(" ", counter).is_err());
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_known_names() {
        let r = StrategyRegistry::shipped();
        let err = r.slot("bollinger", Fixed::ONE, StrategyParams::new()).unwrap_err();
        assert_eq!(err.to_string(), "unknown strategy `bollinger` (known: breakout, ema-crossover)");
    }

    #[test]
    fn bad_params_are_refused_naming_the_key() {
        let mut r = StrategyRegistry::empty();
        r.register("counter", counter).unwrap();
        let problem = |text: &str| match r.slot("counter", Fixed::ONE, params(text)).unwrap_err() {
            BuildError::Params(p) => (p.key, p.problem),
            other => panic!("{other}"),
        };
        assert_eq!(problem("after = 0"), ("after".into(), "must be at least 1".into()));
        assert_eq!(
            problem("after = \"two\""),
            ("after".into(), "invalid type: string \"two\", expected u32".into())
        );
        assert_eq!(
            problem("after = 2\nbefore = 1"),
            ("before".into(), "unknown field `before`, expected `after`".into())
        );
        assert_eq!(problem(""), ("".into(), "missing field `after`".into()));
    }

    #[test]
    fn a_strategys_state_round_trips_through_its_bytes() {
        // Given a strategy that has seen a bar, and its state as bytes,
        let mut r = StrategyRegistry::empty();
        r.register("counter", counter).unwrap();
        let slot = r.slot("counter", Fixed::ONE, params("after = 1")).unwrap();
        let mut original = slot.build();
        original.on_bar(&bar());
        let bytes = original.encode_state();
        // when a fresh instance decodes them,
        let mut restored = slot.build();
        restored.decode_state(&bytes).unwrap();
        // then it goes on as the original does; bytes of something else are refused.
        assert_eq!(restored.on_bar(&bar()), original.on_bar(&bar()));
        assert_eq!(restored.encode_state(), original.encode_state());
        assert!(slot.build().decode_state(&[0xff; 3]).is_err());
    }
}
