//! `band-alerts`: a working stage of the user's own. It reads `market.bars` and publishes an
//! alert onto its own topic, `alerts`, for every bar of the signal interval that closes outside
//! its symbol's Bollinger band.
//!
//! Per symbol (in the task of its `market.bars` partition) it keeps a rolling band of the last
//! `window` closes. A close outside the band (edges inside) gives one USER_NOTIFICATION_TRIGGERED
//! keyed by symbol, addressed to `audience`, its severity by how far out the close is (in
//! half-widths: up to 1.5 info, up to 2 warning, beyond critical), its id derived from the bar's
//! (`Event::derived`), so a bar handled again republishes the same id.
//!
//! Idempotent under redelivery and re-publication: a bar whose sequence number the symbol has
//! passed was applied already (its alert, if any, exists) and is dropped, counted. The market
//! numbers each symbol's bars of an interval without holes, so the sequence is a watermark.
//! (With the `broken` feature that check is gone: a bar delivered twice is applied twice.)

use crate::band::{Band, Position, RollingBand};
use horizon_core::bus::Topic;
use horizon_core::event::{Bar, Event, EventType, Notification, Payload, Severity};
use horizon_core::scenario::Scenario;
use horizon_core::service::{Output, Rejection, Service};
use horizon_core::topics;
use horizon_core::topology::TopicSpec;
use horizon_core::Fixed;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const NAME: &str = "band-alerts";
/// The stage's own topic.
pub const ALERTS: Topic = "alerts";
pub const INPUTS: &[Topic] = &[topics::BARS];
pub const OUTPUTS: &[Topic] = &[ALERTS];

/// `alerts`: 3 partitions, keyed by symbol (one symbol's alerts keep their order).
pub const ALERTS_TOPIC: TopicSpec = TopicSpec {
    name: ALERTS,
    partitions: 3,
    key: "symbol",
    holds: "USER_NOTIFICATION_TRIGGERED: a bar closed outside its Bollinger band",
};

/// The band `from_scenario` uses: 20 bars, 3 standard deviations.
pub const DEFAULT_WINDOW: u32 = 20;
pub const DEFAULT_K: Fixed = Fixed::from_int(3);

/// Whether this build is the deliberately broken variant (feature `broken`).
const BROKEN: bool = cfg!(feature = "broken");

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BandAlertsConfig {
    /// The bars it judges (others are ignored): the scenario's signal interval.
    pub interval_ms: i64,
    pub window: u32,
    pub k: Fixed,
    /// Whom the alerts are for (`Notification::user_id`).
    pub audience: String,
}

impl BandAlertsConfig {
    /// The scenario's signal interval and portfolio, the default band.
    pub fn from_scenario(s: &Scenario) -> BandAlertsConfig {
        BandAlertsConfig {
            interval_ms: s.signal_interval_ms(),
            window: DEFAULT_WINDOW,
            k: DEFAULT_K,
            audience: s.portfolio.id.clone(),
        }
    }
}

/// One symbol's band, the next bar sequence number it expects and how many alerts it raised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolBand {
    pub next_seq: u64,
    pub band: RollingBand,
    pub alerts: u64,
}

/// A task's state: its symbols' bands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandState {
    pub symbols: BTreeMap<String, SymbolBand>,
    /// Bars dropped as already applied (redelivered or re-published).
    pub duplicates_dropped: u64,
}

pub struct BandAlerts {
    pub config: BandAlertsConfig,
}

impl BandAlerts {
    pub fn new(config: BandAlertsConfig) -> BandAlerts {
        BandAlerts { config }
    }

    /// The alert for a close outside `band`, caused by the bar event `cause`.
    fn alert(&self, band: &Band, bar: &Bar, ordinal: u64, cause: &Event) -> Output {
        let deviation = band.deviation(bar.close).unwrap_or(Fixed::MAX);
        let severity = if deviation <= "1.5".parse().expect("a decimal") {
            Severity::Info
        } else if deviation <= Fixed::from_int(2) {
            Severity::Warning
        } else {
            Severity::Critical
        };
        let (side, edge) = if bar.close < band.lower {
            ("below the lower", band.lower)
        } else {
            ("above the upper", band.upper)
        };
        let message = format!(
            "{} closed at {} {side} band {edge} (mean {}, {} half-widths out): alert {ordinal} for {}",
            bar.symbol, bar.close, band.mean, deviation, bar.symbol
        );
        let n = Notification {
            user_id: self.config.audience.clone(),
            source_type: EventType::MarketDataReceived,
            source_event_id: cause.id.clone(),
            symbol: bar.symbol.clone(),
            severity,
            message,
        };
        let key = bar.symbol.clone();
        Output {
            topic: ALERTS,
            key: key.clone(),
            event: Event::derived(cause, NAME, 0, key, bar.end(), Payload::Notification(n)),
        }
    }
}

impl Service for BandAlerts {
    type State = BandState;

    fn name(&self) -> &'static str {
        NAME
    }

    fn inputs(&self) -> &'static [Topic] {
        INPUTS
    }

    fn handle(&self, state: &mut BandState, event: &Event, out: &mut Vec<Output>) -> Result<(), Rejection> {
        let Payload::Bar(bar) = &event.payload else {
            return Err(Rejection(format!("{} does not belong on {}", event.event_type(), topics::BARS)));
        };
        if bar.interval_ms != self.config.interval_ms {
            return Ok(());
        }
        let sym = state.symbols.entry(bar.symbol.clone()).or_insert_with(|| SymbolBand {
            next_seq: 0,
            band: RollingBand::new(self.config.window, self.config.k),
            alerts: 0,
        });
        if bar.seq < sym.next_seq && !BROKEN {
            // Applied already (a redelivered or re-published bar): its alert exists.
            state.duplicates_dropped += 1;
            return Ok(());
        }
        sym.next_seq = bar.seq + 1;
        if let Some(band) = sym.band.band().filter(|b| b.half_width.is_positive()) {
            if band.position(bar.close) != Position::Inside {
                sym.alerts += 1;
                out.push(self.alert(&band, bar, sym.alerts, event));
            }
        }
        sym.band.push(bar.close);
        Ok(())
    }

    fn encode_state(&self, state: &BandState) -> Option<Vec<u8>> {
        horizon_core::snapshot::state_to_bytes(state)
    }

    /// Refuses a state of bands of another window or width (the task is then rebuilt by
    /// replay).
    fn decode_state(&self, bytes: &[u8]) -> Option<BandState> {
        let state: BandState = horizon_core::snapshot::state_from_bytes(bytes)?;
        let ours = |b: &RollingBand| b.window() == self.config.window && b.k() == self.config.k;
        state.symbols.values().all(|s| ours(&s.band)).then_some(state)
    }
}
