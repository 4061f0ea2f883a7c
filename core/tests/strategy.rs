//! A strategy from outside the crate: a Bollinger-band mean reversion written against the public
//! API only, registered under its own name, named by a scenario and run through the pipeline.
//! Also: the registry's errors as a scenario's author sees them, and the shipped strategies
//! named the new way publish exactly what their fixed sections do.

use horizon_core::bus::TopicPartition;
use horizon_core::event::{Bar, Direction, Event, Payload, StrategyView};
use horizon_core::feed::trade_event;
use horizon_core::generator::MarketGenerator;
use horizon_core::pipeline::{MemoryRun, Pipeline};
use horizon_core::scenario::Scenario;
use horizon_core::service::Service;
use horizon_core::strategy::{parse_params, ParamError, Strategy, StrategyParams, StrategyRegistry};
use horizon_core::{topics, Fixed};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Buys a close below the lower band (mean - `width_sd` standard deviations of the last
/// `period_bars` closes), sells one above the upper band, and goes flat at the mean.
#[derive(Serialize, Deserialize)]
struct Bollinger {
    params: BollingerParams,
    closes: VecDeque<Fixed>,
    direction: Direction,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BollingerParams {
    period_bars: u32,
    width_sd: Fixed,
}

impl Bollinger {
    fn from_params(params: &StrategyParams) -> Result<Box<dyn Strategy>, ParamError> {
        let params: BollingerParams = parse_params(params)?;
        if params.period_bars < 2 {
            return Err(ParamError::new("period_bars", "must be at least 2"));
        }
        if !params.width_sd.is_positive() {
            return Err(ParamError::new("width_sd", "must be positive"));
        }
        Ok(Box::new(Bollinger {
            params,
            closes: VecDeque::new(),
            direction: Direction::Flat,
        }))
    }
}

impl Strategy for Bollinger {
    fn on_bar(&mut self, bar: &Bar) -> StrategyView {
        let n = self.params.period_bars as usize;
        self.closes.push_back(bar.close);
        if self.closes.len() > n {
            self.closes.pop_front();
        }
        let mut strength = Fixed::ZERO;
        if self.closes.len() == n {
            let mean = self.closes.iter().copied().sum::<Fixed>().div_int(n as i64);
            let variance = self
                .closes
                .iter()
                .map(|c| (*c - mean).mul(*c - mean))
                .sum::<Fixed>()
                .div_int(n as i64);
            let band = self.params.width_sd.mul(variance.sqrt());
            let deviation = bar.close - mean;
            if deviation < -band {
                self.direction = Direction::Long;
            } else if deviation > band {
                self.direction = Direction::Short;
            } else if (self.direction == Direction::Long && !deviation.is_negative())
                || (self.direction == Direction::Short && !deviation.is_positive())
            {
                self.direction = Direction::Flat;
            }
            if self.direction != Direction::Flat {
                strength = deviation.abs().div(band).unwrap_or(Fixed::ONE).min(Fixed::ONE);
            }
        }
        StrategyView {
            strategy: "bollinger".into(),
            direction: self.direction,
            strength,
        }
    }

    fn encode_state(&self) -> Vec<u8> {
        horizon_core::snapshot::state_to_bytes(self).expect("serialises")
    }

    fn decode_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        *self = horizon_core::snapshot::state_from_bytes(bytes).ok_or("not a bollinger state")?;
        Ok(())
    }
}

fn registry() -> StrategyRegistry {
    let mut r = StrategyRegistry::shipped();
    r.register("bollinger", Bollinger::from_params).unwrap();
    r
}

const FLASH_CRASH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/flash-crash.toml");

/// flash-crash with its fixed strategy sections replaced by `strategies` (TOML).
fn flash_crash_with(strategies: &str) -> String {
    let text = std::fs::read_to_string(FLASH_CRASH).unwrap();
    let (from, to) = (text.find("[strategies.ema_crossover]").unwrap(), text.find("[risk]").unwrap());
    format!("{}{strategies}\n{}", &text[..from], &text[to..])
}

const BOLLINGER: &str = r#"
[[signals.strategy]]
name = "bollinger"
params = { period_bars = 20, width_sd = "1.5" }
"#;

fn signals(run: &MemoryRun) -> Vec<horizon_core::event::Signal> {
    let broker = run.bus.broker();
    (0..topics::partitions(topics::SIGNALS))
        .flat_map(|partition| {
            let tp = TopicPartition {
                topic: topics::SIGNALS,
                partition,
            };
            broker.read(tp, 0, broker.end_offset(tp))
        })
        .map(|r| match Event::decode(&r.value).unwrap().payload {
            Payload::Signal(s) => s,
            other => panic!("{other:?} on signals"),
        })
        .collect()
}

#[test]
fn a_users_strategy_registered_from_outside_produces_signals_through_the_pipeline() {
    // Given a scenario naming a strategy the user registered,
    let s = Scenario::from_toml_with(&flash_crash_with(BOLLINGER), "bollinger.toml", &registry()).unwrap();
    // when the pipeline built with that registry replays the market,
    let mut run = MemoryRun::with_pipeline(Pipeline::with_registry(&s, &registry()).unwrap());
    run.feed_all(MarketGenerator::new(&s, s.seed).unwrap().map(trade_event), 4096);
    // then every signal carries its view alone, it takes both sides, and the portfolio trades on it.
    let signals = signals(&run);
    assert!(signals.len() > 1000, "{}", signals.len());
    assert!(signals
        .iter()
        .all(|s| s.strategies.len() == 1 && s.strategies[0].strategy == "bollinger"));
    let longs = signals.iter().filter(|s| s.direction == Direction::Long).count();
    let shorts = signals.iter().filter(|s| s.direction == Direction::Short).count();
    assert!(longs > 0 && shorts > 0, "{longs} long, {shorts} short");
    assert!(run.summary(&s, s.seed).rebalances > 0);
}

#[test]
fn a_users_strategy_state_survives_a_snapshot_of_the_signals_service() {
    // Given the signals service with the user's strategy, part-way through a market,
    let s = Scenario::from_toml_with(&flash_crash_with(BOLLINGER), "bollinger.toml", &registry()).unwrap();
    let run = |events: &[Event]| {
        let mut run = MemoryRun::with_pipeline(Pipeline::with_registry(&s, &registry()).unwrap());
        run.feed_all(events.iter().cloned(), 4096);
        run
    };
    let events: Vec<Event> = MarketGenerator::new(&s, s.seed).unwrap().take(20_000).map(trade_event).collect();
    let part = run(&events);
    let service = part.pipeline.processor::<horizon_core::signals::SignalService>().unwrap().service();
    // when each task's state is encoded and decoded,
    for (_, state) in part.pipeline.processor::<horizon_core::signals::SignalService>().unwrap().states() {
        let bytes = service.encode_state(state).unwrap();
        let restored = service.decode_state(&bytes).expect("the state decodes");
        // then it encodes to the same bytes (every strategy's state included).
        assert_eq!(service.encode_state(&restored).unwrap(), bytes);
    }
}

#[test]
fn an_unknown_strategy_names_itself_the_file_and_the_known_strategies() {
    let err = Scenario::from_toml(&flash_crash_with(BOLLINGER), "scenarios/mine.toml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "scenarios/mine.toml: `signals.strategy[0].name`: unknown strategy `bollinger` (known: breakout, ema-crossover)"
    );
    // The pipeline refuses it too when the scenario was read with another registry.
    let s = Scenario::from_toml_with(&flash_crash_with(BOLLINGER), "scenarios/mine.toml", &registry()).unwrap();
    let err = Pipeline::with_registry(&s, &StrategyRegistry::shipped()).err().unwrap();
    assert!(err.to_string().contains("unknown strategy `bollinger`"), "{err}");
}

#[test]
fn a_bad_parameter_names_its_key_in_the_scenario() {
    let bad = |params: &str| {
        let text = flash_crash_with(&format!("[[signals.strategy]]\nname = \"bollinger\"\nparams = {{ {params} }}\n"));
        Scenario::from_toml_with(&text, "mine.toml", &registry()).unwrap_err().to_string()
    };
    assert_eq!(
        bad("period_bars = 1, width_sd = \"2\""),
        "mine.toml: `signals.strategy[0].params.period_bars`: must be at least 2"
    );
    assert_eq!(
        bad("period_bars = 20, width = \"2\""),
        "mine.toml: `signals.strategy[0].params.width`: unknown field `width`, expected `period_bars` or `width_sd`"
    );
    assert_eq!(
        bad("period_bars = \"20\", width_sd = \"2\""),
        "mine.toml: `signals.strategy[0].params.period_bars`: invalid type: string \"20\", expected u32"
    );
    assert_eq!(
        bad("period_bars = 20"),
        "mine.toml: `signals.strategy[0].params`: missing field `width_sd`"
    );
    // A shipped strategy's own check, named the new way, points at the new key.
    let text = flash_crash_with(
        "[[signals.strategy]]\nname = \"ema-crossover\"\nparams = { fast = 12, slow = 48, full_strength_spread = \"0\" }\n",
    );
    assert_eq!(
        Scenario::from_toml(&text, "mine.toml").unwrap_err().to_string(),
        "mine.toml: `signals.strategy[0].params.full_strength_spread`: must be positive"
    );
}

#[test]
fn the_shipped_strategies_named_by_registry_publish_what_their_fixed_sections_do() {
    // Given flash-crash as shipped, and the same strategies as [[signals.strategy]] entries,
    let fixed = Scenario::from_toml(&std::fs::read_to_string(FLASH_CRASH).unwrap(), FLASH_CRASH).unwrap();
    let named = flash_crash_with(
        r#"
[[signals.strategy]]
name = "ema-crossover"
weight = "0.6"
params = { fast = 12, slow = 48, full_strength_spread = "0.004" }

[[signals.strategy]]
name = "breakout"
weight = "0.4"
[signals.strategy.params]
lookback = 30
atr_multiple = "0.5"
"#,
    );
    let named = Scenario::from_toml(&named, "named.toml").unwrap();
    assert_eq!(fixed.strategy_specs().len(), 2);
    // when both run the same market,
    let run = |s: &Scenario| {
        let events: Vec<Event> = MarketGenerator::new(s, s.seed).unwrap().map(trade_event).collect();
        MemoryRun::run(s, events, 4096)
    };
    let (a, b) = (run(&fixed), run(&named));
    // then their signals and every projection are identical.
    assert_eq!(signals(&a), signals(&b));
    assert_eq!(a.pipeline.digests(), b.pipeline.digests());
}
