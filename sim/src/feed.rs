//! The market feed a run publishes: the scenario's generated trades in virtual time, with the
//! schedule's feed faults applied.
//!
//! A trade is published at its exchange time (virtual time 0 is the generator's start), never
//! before the trade ahead of it, so out-of-order exchange timestamps reach the gateway as they
//! would from an exchange. Feed faults change what the gateway receives (reconnect replays,
//! gaps, late arrivals), so the fault-free reference run is given the same faulted feed: the
//! comparison isolates what the bus does, and the feed faults are judged by the invariants that
//! do not need a reference (every valid trade reaches exactly one bar).

use crate::schedule::{Fault, PoisonKind};
use bytes::Bytes;
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

/// A record the gateway publishes that is not an event at all (`Fault::Poison`).
#[derive(Clone, Debug)]
pub struct RawItem {
    pub at_ns: u64,
    pub key: String,
    pub value: Bytes,
}

#[derive(Clone, Debug, Default)]
pub struct Feed {
    pub items: Vec<FeedItem>,
    /// Undecodable records, by time. The reference run leaves them out: a stage cannot apply
    /// what it cannot decode (the market dead-letters them, other readers count them).
    pub raw: Vec<RawItem>,
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
        Ok(Feed { items, raw: Vec::new() })
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
        let mut raw = Vec::new();
        for f in faults {
            if let Fault::Poison { at_ms, symbol: s, kind } = *f {
                let key = symbol(s);
                let at = items.iter().position(|i| i.at_ns >= ms(at_ms)).unwrap_or(items.len());
                let at_ns = items.get(at).map_or(ms(at_ms), |i| i.at_ns);
                match poison(kind, at_ms, &key) {
                    Poison::Event(event) => items.insert(at, FeedItem { at_ns, event: *event }),
                    Poison::Raw(value) => raw.push(RawItem { at_ns, key, value }),
                }
            }
        }
        raw.sort_by_key(|r| r.at_ns);
        Feed { items, raw }
    }
}

/// Bytes of the `Oversized` poison record: over librdkafka's producer limit (1,000,000), under
/// Kafka's broker limit (1,048,588).
pub const POISON_OVERSIZED_BYTES: usize = 1_000_100;
/// Length of the `HugeSymbol` poison trade's symbol.
pub const POISON_SYMBOL_BYTES: usize = 1_000_000;

enum Poison {
    Event(Box<Event>),
    Raw(Bytes),
}

/// The poison record of a kind. Undecodable ones start with a field key of wire type 7, which
/// protobuf does not have, so no decoder can take them for an event.
fn poison(kind: PoisonKind, at_ms: u64, key: &str) -> Poison {
    let garbage = |len: usize| {
        let mut v = Vec::with_capacity(len);
        v.push(0x07);
        v.extend(format!("poison@{at_ms}ms:").bytes().cycle().take(len - 1));
        Bytes::from(v)
    };
    match kind {
        PoisonKind::Garbage => Poison::Raw(garbage(300)),
        PoisonKind::Oversized => Poison::Raw(garbage(POISON_OVERSIZED_BYTES)),
        PoisonKind::HugeSymbol => {
            let trade = horizon_core::event::Trade {
                symbol: "Z".repeat(POISON_SYMBOL_BYTES),
                exchange: "SIM".into(),
                trade_id: format!("poison-{at_ms}"),
                price: horizon_core::fixed::Fixed::ONE,
                quantity: horizon_core::fixed::Fixed::ONE,
                aggressor_side: horizon_core::event::Side::Buy,
                ts_exchange: Timestamp::from_millis(at_ms as i64),
            };
            let mut event = trade_event(trade);
            // Keyed as the gateway keys its symbol's trades: only the payload is poison.
            event.aggregate_id = key.to_string();
            Poison::Event(Box::new(event))
        }
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
