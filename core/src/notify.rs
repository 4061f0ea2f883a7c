//! Notification rules: which users hear about which events, deduplicated and rate-limited.
//!
//! Users subscribe to kinds (signal changes, risk crossings, rebalances), optionally to symbols
//! and risk kinds, with a minimum severity. A user is notified at most once per source event and
//! per distinct message within their window, and at most `max_per_window` times per window of
//! event time; what the limit holds back is counted, never silently lost.

use crate::event::{Crossing, Event, Notification, Payload, RebalanceReason, RiskKind, Severity};
use crate::scenario::{SubscriptionKind, UserConfig};
use crate::time::{parse_duration_ms, Timestamp};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct User {
    config: UserConfig,
    window_ms: i64,
    sent: VecDeque<(Timestamp, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct NotifierCounters {
    pub sent: u64,
    pub rate_limited: u64,
    pub deduplicated: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Notifier {
    users: Vec<User>,
    pub counters: NotifierCounters,
    pub rate_limited_by_user: BTreeMap<String, u64>,
}

/// What an event means to a subscriber.
struct Candidate {
    kind: SubscriptionKind,
    symbols: Vec<String>,
    risk_kind: Option<RiskKind>,
    severity: Severity,
    message: String,
}

fn describe(event: &Event) -> Option<Candidate> {
    match &event.payload {
        Payload::Signal(s) if s.changed => Some(Candidate {
            kind: SubscriptionKind::Signal,
            symbols: vec![s.symbol.clone()],
            risk_kind: None,
            severity: Severity::Info,
            message: format!(
                "{} signal turned {:?} (strength {}) at {}",
                s.symbol, s.direction, s.strength, s.bar.close
            )
            .to_lowercase(),
        }),
        Payload::Risk(r) => Some(Candidate {
            kind: SubscriptionKind::Risk,
            symbols: if r.symbol.is_empty() { Vec::new() } else { vec![r.symbol.clone()] },
            risk_kind: Some(r.kind),
            severity: match (r.crossing, r.kind) {
                (Crossing::Cleared, _) => Severity::Info,
                (Crossing::Entered, RiskKind::Drawdown) => Severity::Critical,
                (Crossing::Entered, _) => Severity::Warning,
            },
            message: format!(
                "{}{} {} {} (threshold {})",
                r.kind.as_str(),
                if r.symbol.is_empty() {
                    String::new()
                } else {
                    format!(" {}", r.symbol)
                },
                match r.crossing {
                    Crossing::Entered => "crossed at",
                    Crossing::Cleared => "cleared at",
                },
                r.value,
                r.threshold
            ),
        }),
        Payload::Rebalance(r) if !r.fills.is_empty() => Some(Candidate {
            kind: SubscriptionKind::Rebalance,
            symbols: r.fills.iter().map(|f| f.symbol.clone()).collect(),
            risk_kind: None,
            severity: if r.reason == RebalanceReason::Derisk {
                Severity::Warning
            } else {
                Severity::Info
            },
            message: format!(
                "portfolio {} rebalanced ({:?}): {} fills, value {}",
                r.portfolio_id,
                r.reason,
                r.fills.len(),
                r.value
            )
            .to_lowercase(),
        }),
        _ => None,
    }
}

impl Notifier {
    pub fn new(users: &[UserConfig]) -> Notifier {
        Notifier {
            users: users
                .iter()
                .map(|u| User {
                    config: u.clone(),
                    window_ms: parse_duration_ms(&u.window).unwrap_or(3_600_000),
                    sent: VecDeque::new(),
                })
                .collect(),
            counters: NotifierCounters::default(),
            rate_limited_by_user: BTreeMap::new(),
        }
    }

    /// The notifications `event` triggers, in user order. Each is derived from the event, so
    /// handling the event again re-creates the same ids.
    pub fn on_event(&mut self, event: &Event, producer: &str) -> Vec<Event> {
        let Some(c) = describe(event) else { return Vec::new() };
        let mut out = Vec::new();
        for (index, user) in self.users.iter_mut().enumerate() {
            let cfg = &user.config;
            let wants_symbol = cfg.symbols.is_empty() || c.symbols.is_empty() || c.symbols.iter().any(|s| cfg.symbols.contains(s));
            let wants_risk = match c.risk_kind {
                Some(k) => cfg.risk_kinds.is_empty() || cfg.risk_kinds.contains(&k),
                None => true,
            };
            if !cfg.kinds.contains(&c.kind) || !wants_symbol || !wants_risk || c.severity < cfg.min_severity {
                continue;
            }
            let since = event.ts.plus_ms(-user.window_ms);
            while user.sent.front().is_some_and(|(t, _)| *t <= since) {
                user.sent.pop_front();
            }
            if user.sent.iter().any(|(_, m)| *m == c.message) {
                self.counters.deduplicated += 1;
                continue;
            }
            if user.sent.len() >= cfg.max_per_window as usize {
                self.counters.rate_limited += 1;
                *self.rate_limited_by_user.entry(cfg.id.clone()).or_insert(0) += 1;
                continue;
            }
            user.sent.push_back((event.ts, c.message.clone()));
            self.counters.sent += 1;
            let n = Notification {
                user_id: cfg.id.clone(),
                source_type: event.event_type(),
                source_event_id: event.id.clone(),
                symbol: c.symbols.first().cloned().unwrap_or_default(),
                severity: c.severity,
                message: c.message.clone(),
            };
            out.push(Event::derived(
                event,
                producer,
                index as u32,
                cfg.id.clone(),
                event.ts,
                Payload::Notification(n),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RiskCrossing;
    use crate::fixed::Fixed;

    fn user(kinds: Vec<SubscriptionKind>, max: u32) -> UserConfig {
        UserConfig {
            id: "alice".into(),
            kinds,
            symbols: vec![],
            risk_kinds: vec![],
            min_severity: Severity::Info,
            max_per_window: max,
            window: "1h".into(),
        }
    }

    fn risk(id: &str, minute: i64, kind: RiskKind, crossing: Crossing) -> Event {
        let r = RiskCrossing {
            portfolio_id: "p".into(),
            kind,
            symbol: "BTC".into(),
            crossing,
            value: Fixed::ONE,
            threshold: Fixed::ONE,
        };
        Event::root(
            id.into(),
            "p".into(),
            Timestamp::from_millis(minute * 60_000),
            "portfolio",
            Payload::Risk(r),
        )
    }

    #[test]
    fn a_subscriber_is_notified_once_per_event_and_others_not_at_all() {
        let mut n = Notifier::new(&[
            user(vec![SubscriptionKind::Risk], 10),
            UserConfig {
                id: "bob".into(),
                ..user(vec![SubscriptionKind::Rebalance], 10)
            },
        ]);
        let e = risk("r1", 0, RiskKind::PriceGap, Crossing::Entered);
        let out = n.on_event(&e, "notify");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].aggregate_id, "alice");
        assert!(n.on_event(&e, "notify").is_empty(), "the same event again is a duplicate");
    }

    #[test]
    fn the_rate_limit_holds_back_and_counts_within_the_window_then_releases() {
        let mut n = Notifier::new(&[user(vec![SubscriptionKind::Risk], 2)]);
        let kinds = [RiskKind::PriceGap, RiskKind::VolatilitySpike, RiskKind::Concentration];
        let sent: usize = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| n.on_event(&risk(&format!("r{i}"), i as i64, *k, Crossing::Entered), "notify").len())
            .sum();
        assert_eq!(sent, 2);
        assert_eq!(n.counters.rate_limited, 1);
        assert_eq!(
            n.on_event(&risk("later", 61, RiskKind::Drawdown, Crossing::Entered), "notify")
                .len(),
            1,
            "a new window"
        );
    }

    #[test]
    fn severity_below_the_minimum_is_not_sent() {
        let mut n = Notifier::new(&[UserConfig {
            min_severity: Severity::Warning,
            ..user(vec![SubscriptionKind::Risk], 10)
        }]);
        assert!(n
            .on_event(&risk("c", 0, RiskKind::PriceGap, Crossing::Cleared), "notify")
            .is_empty());
        assert_eq!(n.on_event(&risk("e", 0, RiskKind::PriceGap, Crossing::Entered), "notify").len(), 1);
    }
}
