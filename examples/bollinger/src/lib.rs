//! A user's crate on CipherHorizon, outside `core/` and `sim/`, built on the public crates only.
//!
//! It brings its own strategy (`strategy::BollingerReversion`, registered as `bollinger`), its
//! own working stage (`alerts::BandAlerts`: `market.bars` in, its own `alerts` topic out) and
//! that topic's read model (`book::AlertBook`, a read replica), and a topology that adds both
//! stages to the shipped pipeline (`topology()`). `scenario()` is the shipped flash-crash market
//! with `bollinger` trading alongside the shipped `ema-crossover`.
//!
//! The `broken` feature builds `BandAlerts` without its redelivery check, for the simulator to
//! catch.

pub mod alerts;
pub mod band;
pub mod book;
pub mod strategy;

use horizon_core::scenario::{Scenario, ScenarioError};
use horizon_core::strategy::StrategyRegistry;
use horizon_core::topology::{StageSpec, Topology};

/// The topology's name in reports and replay commands.
pub const TOPOLOGY: &str = "bollinger";

/// The example's scenario file, and the name errors give it.
pub const SCENARIO_TOML: &str = include_str!("../scenarios/bollinger.toml");
pub const SCENARIO_ORIGIN: &str = "examples/bollinger/scenarios/bollinger.toml";

/// The shipped strategies and `bollinger`.
pub fn registry() -> StrategyRegistry {
    let mut r = StrategyRegistry::shipped();
    r.register(strategy::NAME, strategy::BollingerReversion::from_params)
        .expect("`bollinger` is not a shipped strategy's name");
    r
}

/// The shipped pipeline (its signals stage knowing `bollinger`), plus the `alerts` topic, the
/// `band-alerts` stage and the `alert-book` read replica.
pub fn topology() -> Topology {
    Topology::shipped_with(registry())
        .named(TOPOLOGY)
        .topic(alerts::ALERTS_TOPIC)
        .stage(StageSpec::service(alerts::NAME, alerts::INPUTS, alerts::OUTPUTS, |s| {
            Ok(alerts::BandAlerts::new(alerts::BandAlertsConfig::from_scenario(s)))
        }))
        .stage(StageSpec::read_model(book::NAME, book::INPUTS, |s| {
            Ok(book::AlertBook::from_scenario(s))
        }))
}

/// A scenario whose strategies are looked up in `registry()`.
pub fn scenario_from(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    Scenario::from_toml_with(text, origin, &registry())
}

/// The example's scenario (`scenarios/bollinger.toml`).
pub fn scenario() -> Scenario {
    scenario_from(SCENARIO_TOML, SCENARIO_ORIGIN).unwrap_or_else(|e| panic!("{e}"))
}
