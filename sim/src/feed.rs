//! The market feed a run publishes: the scenario's generated trades in virtual time, with the
//! schedule's feed faults applied.
//!
//! A trade is published at its exchange time (virtual time 0 is the generator's start), never
//! before the trade ahead of it, so out-of-order exchange timestamps reach the gateway as they
//! would from an exchange. Feed faults change what the gateway receives (reconnect replays,
//! gaps, late arrivals), so the fault-free reference run is given the same faulted feed: the
//! comparison isolates what the bus does, and the feed faults are judged by the invariants that
//! do not need a reference (every valid trade reaches exactly one bar).

use crate::schedule::Fault;
use horizon_core::event::{Event, Payload};
use horizon_core::feed::trade_event;
use horizon_core::generator::MarketGenerator;
use horizon_core::scenario::Scenario;
use horizon_core::time::Timestamp;

/// One trade as the gateway publishes it.
#[derive(Clone, Debug)]
pub struct FeedItem {
    /// Virtual time of publication, ns.
    pub at_ns: u64,
    pub event: Event,
}

#[derive(Clone, Debug, Default)]
pub struct Feed {
    pub items: Vec<FeedItem>,
}

impl Feed {
    /// The first `events` trades (all when `None`) of the scenario's generator for `seed`.
    pub fn generate(scenario: &Scenario, seed: u64, events: Option<usize>) -> Result<Feed, String> {
        let generator = MarketGenerator::new(scenario, seed)
            .ok_or_else(|| format!("{}: the simulator needs a generated market ([market.generator])", scenario.name))?;
        let start = scenario
            .market
            .generator
            .as_ref()
            .and_then(|g| Timestamp::parse_rfc3339(&g.start))
            .map(|t| t.nanos())
            .unwrap_or(0);
        let mut last = 0u64;
        let items = generator
            .take(events.unwrap_or(usize::MAX))
            .map(|trade| {
                let at = (trade.ts_exchange.nanos() - start).max(0) as u64;
                last = last.max(at);
                FeedItem {
                    at_ns: last,
                    event: trade_event(trade),
                }
            })
            .collect();
        Ok(Feed { items })
    }

    /// Virtual time of the last publication, ms.
    pub fn span_ms(&self) -> u64 {
        self.items.last().map(|i| i.at_ns / 1_000_000).unwrap_or(0)
    }

    pub fn events(&self) -> Vec<Event> {
        self.items.iter().map(|i| i.event.clone()).collect()
    }

    /// The feed with `faults` applied (gaps, then late arrivals, then reconnect replays, each in
    /// time order). `symbols` names the scenario's symbols, which faults index.
    pub fn with_faults(&self, faults: &[Fault], symbols: &[String]) -> Feed {
        let mut items = self.items.clone();
        let symbol = |i: u32| symbols.get(i as usize % symbols.len().max(1)).cloned().unwrap_or_default();
        let ms = |m: u64| m * 1_000_000;
        for f in faults {
            if let Fault::FeedGap { at_ms, for_ms, symbol: s } = *f {
                let name = symbol(s);
                items.retain(|i| !(i.event.aggregate_id == name && (ms(at_ms)..ms(at_ms + for_ms)).contains(&i.at_ns)));
            }
        }
        for f in faults {
            if let Fault::FeedReorder { at_ms, symbol: s, depth } = *f {
                let name = symbol(s);
                let same: Vec<usize> = (0..items.len()).filter(|&i| items[i].event.aggregate_id == name).collect();
                let Some(k) = same.iter().position(|&i| items[i].at_ns >= ms(at_ms)) else {
                    continue;
                };
                let Some(&target) = same.get(k + depth as usize).or(same.last()) else {
                    continue;
                };
                let from = same[k];
                if target <= from {
                    continue;
                }
                let mut late = items.remove(from);
                late.at_ns = items[target - 1].at_ns;
                items.insert(target, late);
            }
        }
        for f in faults {
            if let Fault::FeedReconnect { at_ms, replay } = *f {
                let Some(at) = items.iter().position(|i| i.at_ns >= ms(at_ms)) else {
                    continue;
                };
                let when = items[at].at_ns;
                let mut replayed: Vec<FeedItem> = Vec::new();
                for name in symbols {
                    let recent: Vec<&FeedItem> = items[..at]
                        .iter()
                        .rev()
                        .filter(|i| &i.event.aggregate_id == name)
                        .take(replay as usize)
                        .collect();
                    replayed.extend(recent.into_iter().rev().map(|i| FeedItem {
                        at_ns: when,
                        event: i.event.clone(),
                    }));
                }
                items.splice(at..at, replayed);
            }
        }
        Feed { items }
    }
}

/// The trade in a feed event, if it is one.
pub fn trade_of(e: &Event) -> Option<&horizon_core::event::Trade> {
    match &e.payload {
        Payload::Trade(t) => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::from_toml(include_str!("../../scenarios/flash-crash.toml"), "flash-crash.toml").unwrap()
    }

    #[test]
    fn the_feed_is_the_generator_in_virtual_time() {
        let s = scenario();
        let f = Feed::generate(&s, 7, Some(500)).unwrap();
        assert_eq!(f.items.len(), 500);
        assert!(f.items.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        assert!(f.span_ms() > 60_000, "500 trades at 120 a minute span minutes: {}", f.span_ms());
        assert_eq!(f.events(), Feed::generate(&s, 7, Some(500)).unwrap().events());
    }

    #[test]
    fn feed_faults_replay_drop_and_delay_trades() {
        let s = scenario();
        let symbols = s.symbols();
        let f = Feed::generate(&s, 7, Some(500)).unwrap();
        let replay = f.with_faults(&[Fault::FeedReconnect { at_ms: 60_000, replay: 3 }], &symbols);
        assert_eq!(replay.items.len(), 500 + 3 * symbols.len());
        let gap = f.with_faults(
            &[Fault::FeedGap {
                at_ms: 0,
                for_ms: 30_000,
                symbol: 0,
            }],
            &symbols,
        );
        assert!(gap.items.len() < 500);
        assert!(!gap
            .items
            .iter()
            .any(|i| i.event.aggregate_id == symbols[0] && i.at_ns < 30_000_000_000));
        let late = f.with_faults(
            &[Fault::FeedReorder {
                at_ms: 10_000,
                symbol: 1,
                depth: 2,
            }],
            &symbols,
        );
        assert_eq!(late.items.len(), 500);
        assert!(late.items.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        let ids = |f: &Feed| -> Vec<String> {
            f.items
                .iter()
                .filter(|i| i.event.aggregate_id == symbols[1])
                .map(|i| i.event.id.clone())
                .collect()
        };
        let (before, after) = (ids(&f), ids(&late));
        assert_ne!(before, after);
        let mut sorted_before = before.clone();
        let mut sorted_after = after.clone();
        sorted_before.sort();
        sorted_after.sort();
        assert_eq!(sorted_before, sorted_after, "the same trades, one of them later");
    }
}
