//! The portfolio manager service: consumes `signals` (keyed by portfolio) and, per portfolio,
//! merges every symbol's signal series in event time (`Sequencer`), then runs one step per
//! instant: mark to market, let the `RiskMonitor` report crossings, rebalance the `Portfolio`
//! toward the signals' targets (de-risking while a drawdown or volatility crossing is active),
//! and let the `Notifier` decide who hears about it.
//!
//! Risk and notification decisions run inside this step, not as separate consumers, because they
//! form a loop with the portfolio (risk watches the portfolio; the portfolio de-risks on risk
//! crossings) and a loop between separately consumed sparse streams cannot be ordered by event
//! time without arrival-order races. Their events still go to their own topics (`risk`,
//! `portfolio`, `notifications`) for every other consumer.

use crate::event::{Crossing, Event, Payload, RebalanceReason, RiskKind};
use crate::fixed::Fixed;
use crate::notify::{Notifier, NotifierCounters};
use crate::portfolio::{Portfolio, PortfolioConfig};
use crate::risk::RiskMonitor;
use crate::scenario::{RiskConfig, Scenario, UserConfig};
use crate::sequencer::{Admit, Sequencer};
use crate::service::{Output, Rejection, Service};
use crate::time::Timestamp;
use crate::topics;
use std::collections::BTreeMap;

/// What the stage reads.
pub const INPUTS: &[crate::bus::Topic] = &[topics::SIGNALS];
pub const NAME: &str = "portfolio";
pub const NOTIFY: &str = "notify";

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub portfolio: PortfolioConfig,
    pub risk: RiskConfig,
    pub users: Vec<UserConfig>,
    pub symbols: Vec<String>,
}

impl ManagerConfig {
    pub fn from_scenario(s: &Scenario) -> ManagerConfig {
        ManagerConfig {
            portfolio: PortfolioConfig::from_scenario(s),
            risk: s.risk.clone(),
            users: s.users.clone(),
            symbols: s.symbols(),
        }
    }
}

/// One portfolio's decision state.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Desk {
    sequencer: Sequencer<Event>,
    pub portfolio: Portfolio,
    pub risk: RiskMonitor,
    pub notifier: Notifier,
    targets: BTreeMap<String, Fixed>,
    pub steps: u64,
    pub last_step: Option<Timestamp>,
    pub duplicates_dropped: u64,
}

impl Desk {
    fn new(c: &ManagerConfig) -> Desk {
        Desk {
            sequencer: Sequencer::new(c.symbols.iter().cloned()),
            portfolio: Portfolio::new(&c.portfolio.id, c.portfolio.cash),
            risk: RiskMonitor::new(&c.portfolio.id, c.risk.clone()),
            notifier: Notifier::new(&c.users),
            targets: BTreeMap::new(),
            steps: 0,
            last_step: None,
            duplicates_dropped: 0,
        }
    }

    pub fn notifier_counters(&self) -> &NotifierCounters {
        &self.notifier.counters
    }

    /// Signals held back until every symbol reaches their time.
    pub fn buffered(&self) -> usize {
        self.sequencer.buffered()
    }

    fn step(&mut self, c: &ManagerConfig, t: Timestamp, signals: Vec<(String, Event)>, out: &mut Vec<Output>) {
        self.steps += 1;
        self.last_step = Some(t);
        let pid = c.portfolio.id.clone();
        let mut emitted: Vec<Event> = Vec::new();
        let mut index = 0u32;
        let mut derive = |cause: &Event, payload: Payload| {
            let e = Event::derived(cause, NAME, index, pid.clone(), t, payload);
            index += 1;
            e
        };
        // Marks, targets and price risk, symbol by symbol.
        for (_, ev) in &signals {
            let Payload::Signal(s) = &ev.payload else { continue };
            self.portfolio.mark(&s.symbol, s.bar.close);
            self.targets.insert(s.symbol.clone(), s.target_weight);
            for crossing in self.risk.on_bar(&s.symbol, s.bar.close) {
                emitted.push(derive(ev, Payload::Risk(crossing)));
            }
        }
        let Some((_, last_signal)) = signals.last() else { return };
        let was_derisked = self.risk.derisk_active();
        let weights = self.portfolio.weights();
        for crossing in self.risk.on_valuation(self.portfolio.value(), &weights) {
            emitted.push(derive(last_signal, Payload::Risk(crossing)));
        }
        // A new drawdown, volatility or concentration crossing forces a de-risking rebalance;
        // the end of de-risking forces a return to the full targets.
        let trigger = emitted
            .iter()
            .find(|e| matches!(&e.payload, Payload::Risk(r) if r.crossing == Crossing::Entered && r.kind != RiskKind::PriceGap));
        let derisked = self.risk.derisk_active();
        let scale = if derisked { c.risk.derisk_to } else { Fixed::ONE };
        let targets: BTreeMap<String, Fixed> = self.targets.iter().map(|(s, w)| (s.clone(), w.mul(scale))).collect();
        let force = trigger.is_some() || (was_derisked && !derisked);
        let fills = self.portfolio.plan(&targets, &c.portfolio, force);
        if !fills.is_empty() {
            fills.iter().for_each(|f| self.portfolio.apply(f));
            let (reason, cause) = match trigger {
                Some(risk_event) => (RebalanceReason::Derisk, risk_event.clone()),
                None if derisked => (RebalanceReason::Derisk, last_signal.clone()),
                None => (RebalanceReason::Signal, last_signal.clone()),
            };
            let payload = Payload::Rebalance(self.portfolio.rebalanced(reason, fills));
            emitted.push(derive(&cause, payload));
        }
        // Users hear about changed signals, crossings and rebalances, in that order.
        let mut notifications = Vec::new();
        for (_, ev) in &signals {
            notifications.extend(self.notifier.on_event(ev, NOTIFY));
        }
        for ev in &emitted {
            notifications.extend(self.notifier.on_event(ev, NOTIFY));
        }
        for ev in emitted {
            let topic = match ev.payload {
                Payload::Risk(_) => topics::RISK,
                _ => topics::PORTFOLIO,
            };
            out.push(Output {
                topic,
                key: ev.aggregate_id.clone(),
                event: ev,
            });
        }
        for ev in notifications {
            out.push(Output {
                topic: topics::NOTIFICATIONS,
                key: ev.aggregate_id.clone(),
                event: ev,
            });
        }
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct ManagerState {
    pub desks: BTreeMap<String, Desk>,
}

pub struct PortfolioManager {
    pub config: ManagerConfig,
}

impl PortfolioManager {
    pub fn new(config: ManagerConfig) -> PortfolioManager {
        PortfolioManager { config }
    }
}

impl Service for PortfolioManager {
    type State = ManagerState;

    fn encode_state(&self, state: &Self::State) -> Option<Vec<u8>> {
        crate::snapshot::state_to_json(state)
    }

    fn decode_state(&self, bytes: &[u8]) -> Option<Self::State> {
        crate::snapshot::state_from_json(bytes)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [crate::bus::Topic] {
        INPUTS
    }

    fn handle(&self, state: &mut ManagerState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Signal(s) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::SIGNALS)));
        };
        if s.portfolio_id != self.config.portfolio.id {
            return Err(Rejection(format!("unknown portfolio `{}`", s.portfolio_id)));
        }
        let desk = state.desks.entry(s.portfolio_id.clone()).or_insert_with(|| Desk::new(&self.config));
        match desk.sequencer.push(&s.symbol, s.bar.seq, s.bar.end(), event.clone()) {
            Admit::Accepted => {}
            Admit::Duplicate => {
                desk.duplicates_dropped += 1;
                return Ok(());
            }
            Admit::UnknownSource => {
                return Err(Rejection(format!(
                    "unknown symbol `{}` for portfolio `{}`",
                    s.symbol, s.portfolio_id
                )))
            }
        }
        while let Some((t, signals)) = desk.sequencer.pop_step() {
            desk.step(&self.config, t, signals, out);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Bar, Direction, RebalanceReason, Signal};
    use crate::portfolio::PortfolioConfig;
    use crate::scenario::{SubscriptionKind, UserConfig};

    fn fx(s: &str) -> Fixed {
        s.parse().unwrap()
    }

    fn manager() -> PortfolioManager {
        PortfolioManager::new(ManagerConfig {
            portfolio: PortfolioConfig {
                id: "p".into(),
                cash: fx("100000"),
                fee_bps: 0,
                slippage_bps: 0,
                rebalance_band: fx("0.01"),
                min_notional: fx("1"),
                lots: [("A".to_string(), fx("0.001")), ("B".to_string(), fx("0.001"))]
                    .into_iter()
                    .collect(),
            },
            risk: RiskConfig {
                drawdown: fx("0.05"),
                concentration: fx("0.9"),
                volatility: fx("0.5"),
                volatility_window: 5,
                gap: fx("0.5"),
                hysteresis: fx("0.2"),
                derisk_to: fx("0.5"),
            },
            users: vec![UserConfig {
                id: "u".into(),
                kinds: vec![SubscriptionKind::Risk, SubscriptionKind::Rebalance],
                symbols: vec![],
                risk_kinds: vec![],
                min_severity: crate::event::Severity::Info,
                max_per_window: 100,
                window: "1h".into(),
            }],
            symbols: vec!["A".into(), "B".into()],
        })
    }

    fn signal(symbol: &str, seq: u64, close: &str, target: &str) -> Event {
        let c = fx(close);
        let bar = Bar {
            symbol: symbol.into(),
            exchange: "SIM".into(),
            interval_ms: 60_000,
            start: Timestamp::from_millis(seq as i64 * 60_000),
            open: c,
            high: c,
            low: c,
            close: c,
            volume: Fixed::ONE,
            trade_count: 1,
            seq,
        };
        let s = Signal {
            portfolio_id: "p".into(),
            symbol: symbol.into(),
            direction: Direction::Long,
            strength: Fixed::ONE,
            target_weight: fx(target),
            bar: bar.clone(),
            strategies: vec![],
            changed: seq == 0,
        };
        Event::root(format!("{symbol}-{seq}"), "p".into(), bar.end(), "signals", Payload::Signal(s))
    }

    /// Given signals, when they arrive in this order, then the outputs.
    fn outputs(arrival: &[Event]) -> Vec<Output> {
        let m = manager();
        let mut state = ManagerState::default();
        let mut out = Vec::new();
        for e in arrival {
            m.handle(&mut state, e, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn nothing_is_decided_until_every_symbol_reaches_the_instant() {
        assert!(outputs(&[signal("A", 0, "100", "0.4")]).is_empty());
        let out = outputs(&[signal("A", 0, "100", "0.4"), signal("B", 0, "50", "0.4")]);
        assert!(out.iter().any(|o| o.topic == topics::PORTFOLIO));
    }

    #[test]
    fn the_outputs_do_not_depend_on_which_symbol_arrives_first_or_on_duplicates() {
        let a = [
            signal("A", 0, "100", "0.4"),
            signal("B", 0, "50", "0.4"),
            signal("A", 1, "90", "0.4"),
            signal("B", 1, "45", "0.4"),
        ];
        let b = [a[1].clone(), a[3].clone(), a[0].clone(), a[0].clone(), a[2].clone(), a[3].clone()];
        assert_eq!(outputs(&a), outputs(&b));
    }

    #[test]
    fn a_drawdown_crossing_de_risks_and_says_so() {
        // Fully invested at 100, then both assets fall 10%: drawdown 8% > 5%.
        let out = outputs(&[
            signal("A", 0, "100", "0.45"),
            signal("B", 0, "100", "0.45"),
            signal("A", 1, "90", "0.45"),
            signal("B", 1, "90", "0.45"),
        ]);
        let risk: Vec<_> = out
            .iter()
            .filter_map(|o| match &o.event.payload {
                Payload::Risk(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert!(
            risk.iter().any(|r| r.kind == RiskKind::Drawdown && r.crossing == Crossing::Entered),
            "{risk:?}"
        );
        let derisk = out.iter().find_map(|o| match &o.event.payload {
            Payload::Rebalance(r) if r.reason == RebalanceReason::Derisk => Some((o, r.clone())),
            _ => None,
        });
        let (o, r) = derisk.expect("a de-risking rebalance");
        assert!(r.fills.iter().all(|f| f.side == crate::event::Side::Sell));
        let risk_ids: Vec<_> = out.iter().filter(|o| o.topic == topics::RISK).map(|o| o.event.id.clone()).collect();
        assert!(
            risk_ids.contains(&o.event.meta.causation_id),
            "the rebalance is caused by the risk event"
        );
        assert!(out.iter().any(|o| o.topic == topics::NOTIFICATIONS && o.key == "u"));
    }

    #[test]
    fn a_signal_for_another_portfolio_or_symbol_is_rejected() {
        let m = manager();
        let mut state = ManagerState::default();
        let mut other = signal("A", 0, "1", "0");
        if let Payload::Signal(s) = &mut other.payload {
            s.portfolio_id = "q".into();
        }
        assert_eq!(
            m.handle(&mut state, &other, &mut Vec::new()).unwrap_err().0,
            "unknown portfolio `q`"
        );
        let stray = signal("C", 0, "1", "0");
        assert!(m
            .handle(&mut state, &stray, &mut Vec::new())
            .unwrap_err()
            .0
            .contains("unknown symbol `C`"));
    }
}
