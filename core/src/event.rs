//! Domain events and their wire codec.
//!
//! `Event` is what the services handle: exact types, no optional fields left to guess. The codec
//! turns it into a protobuf `DomainEvent` and back. Decoding brings a payload of an older schema
//! version to the current one (`crate::upcast`), checks that the payload really is the declared
//! type and that every required field is present, and returns a `DecodeError` that names what is
//! wrong, so the processing loop can dead-letter the record with that reason.

use crate::fixed::Fixed;
use crate::time::Timestamp;
use horizon_proto::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Version of the payload schemas this build writes, in the envelope's `schema_version`
/// metadata. Older versions are read through `crate::upcast`; newer ones are refused.
///
/// v1: the first schema. v2: a rebalance's `Fill` carries one signed quantity instead of a side
/// and an unsigned quantity.
pub const SCHEMA_VERSION: u32 = 2;
const SCHEMA_VERSION_TEXT: &str = "2";
/// The version of a record whose metadata does not say: the first one.
const UNVERSIONED: u32 = 1;

pub mod meta_key {
    pub const CORRELATION_ID: &str = "correlation_id";
    pub const CAUSATION_ID: &str = "causation_id";
    pub const PRODUCER: &str = "producer";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const TRACEPARENT: &str = "traceparent";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    MarketDataReceived,
    TradingSignalGenerated,
    RiskThresholdCrossed,
    PortfolioRebalanced,
    UserNotificationTriggered,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        EventType::MarketDataReceived,
        EventType::TradingSignalGenerated,
        EventType::RiskThresholdCrossed,
        EventType::PortfolioRebalanced,
        EventType::UserNotificationTriggered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::MarketDataReceived => "MARKET_DATA_RECEIVED",
            EventType::TradingSignalGenerated => "TRADING_SIGNAL_GENERATED",
            EventType::RiskThresholdCrossed => "RISK_THRESHOLD_CROSSED",
            EventType::PortfolioRebalanced => "PORTFOLIO_REBALANCED",
            EventType::UserNotificationTriggered => "USER_NOTIFICATION_TRIGGERED",
        }
    }

    fn to_proto(self) -> pb::EventType {
        match self {
            EventType::MarketDataReceived => pb::EventType::MarketDataReceived,
            EventType::TradingSignalGenerated => pb::EventType::TradingSignalGenerated,
            EventType::RiskThresholdCrossed => pb::EventType::RiskThresholdCrossed,
            EventType::PortfolioRebalanced => pb::EventType::PortfolioRebalanced,
            EventType::UserNotificationTriggered => pb::EventType::UserNotificationTriggered,
        }
    }

    fn from_proto(t: pb::EventType) -> EventType {
        match t {
            pb::EventType::MarketDataReceived => EventType::MarketDataReceived,
            pb::EventType::TradingSignalGenerated => EventType::TradingSignalGenerated,
            pb::EventType::RiskThresholdCrossed => EventType::RiskThresholdCrossed,
            pb::EventType::PortfolioRebalanced => EventType::PortfolioRebalanced,
            pb::EventType::UserNotificationTriggered => EventType::UserNotificationTriggered,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Long,
    Short,
    Flat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskKind {
    Drawdown,
    Concentration,
    VolatilitySpike,
    PriceGap,
}

impl RiskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskKind::Drawdown => "drawdown",
            RiskKind::Concentration => "concentration",
            RiskKind::VolatilitySpike => "volatility_spike",
            RiskKind::PriceGap => "price_gap",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crossing {
    Entered,
    Cleared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebalanceReason {
    Signal,
    Derisk,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// One execution reported by an exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub symbol: String,
    pub exchange: String,
    pub trade_id: String,
    pub price: Fixed,
    pub quantity: Fixed,
    pub aggressor_side: Side,
    pub ts_exchange: Timestamp,
}

/// OHLCV over `[start, start + interval_ms)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bar {
    pub symbol: String,
    pub exchange: String,
    pub interval_ms: i64,
    pub start: Timestamp,
    pub open: Fixed,
    pub high: Fixed,
    pub low: Fixed,
    pub close: Fixed,
    pub volume: Fixed,
    pub trade_count: u32,
    pub seq: u64,
}

impl Bar {
    /// The first instant after the bar: when it is known to be complete.
    pub fn end(&self) -> Timestamp {
        self.start.plus_ms(self.interval_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyView {
    pub strategy: String,
    pub direction: Direction,
    pub strength: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub portfolio_id: String,
    pub symbol: String,
    pub direction: Direction,
    pub strength: Fixed,
    pub target_weight: Fixed,
    pub bar: Bar,
    pub strategies: Vec<StrategyView>,
    pub changed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskCrossing {
    pub portfolio_id: String,
    pub kind: RiskKind,
    /// Empty for portfolio-wide measures.
    pub symbol: String,
    pub crossing: Crossing,
    pub value: Fixed,
    pub threshold: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    pub symbol: String,
    pub side: Side,
    pub quantity: Fixed,
    pub price: Fixed,
    pub fee: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub symbol: String,
    pub quantity: Fixed,
    pub avg_price: Fixed,
    pub mark_price: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance {
    pub portfolio_id: String,
    pub reason: RebalanceReason,
    pub fills: Vec<Fill>,
    pub positions: Vec<Position>,
    pub cash: Fixed,
    pub value: Fixed,
    pub realized_pnl: Fixed,
    pub unrealized_pnl: Fixed,
    pub fees: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub user_id: String,
    pub source_type: EventType,
    pub source_event_id: String,
    pub symbol: String,
    pub severity: Severity,
    pub message: String,
}

/// The typed payload; its variant fixes the envelope's `EventType`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    Trade(Trade),
    Bar(Bar),
    Signal(Signal),
    Risk(RiskCrossing),
    Rebalance(Rebalance),
    Notification(Notification),
}

impl Payload {
    pub fn event_type(&self) -> EventType {
        match self {
            Payload::Trade(_) | Payload::Bar(_) => EventType::MarketDataReceived,
            Payload::Signal(_) => EventType::TradingSignalGenerated,
            Payload::Risk(_) => EventType::RiskThresholdCrossed,
            Payload::Rebalance(_) => EventType::PortfolioRebalanced,
            Payload::Notification(_) => EventType::UserNotificationTriggered,
        }
    }
}

/// Tracing and lineage carried in the envelope's metadata map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The id of the root event of this chain (a market trade for everything derived from it).
    pub correlation_id: String,
    /// The id of the event that caused this one; empty for a root event.
    pub causation_id: String,
    /// The service that produced the event.
    pub producer: String,
    /// The schema version of the model this event is in: `SCHEMA_VERSION` for every event this
    /// build creates or decodes (a record of an older version is upcast on decoding). Encoding
    /// writes it as it is; only tests set another value, to play another version's producer.
    pub schema_version: u32,
    /// W3C trace context: `00-<trace id>-<span id>-01`.
    pub traceparent: String,
    /// Any other entries, preserved as they came.
    pub extra: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub aggregate_id: String,
    pub ts: Timestamp,
    pub meta: Meta,
    pub payload: Payload,
}

impl Event {
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// A root event, such as a trade entering from a market-data gateway.
    pub fn root(id: String, aggregate_id: String, ts: Timestamp, producer: &str, payload: Payload) -> Event {
        let meta = Meta {
            correlation_id: id.clone(),
            causation_id: String::new(),
            producer: producer.to_string(),
            schema_version: SCHEMA_VERSION,
            traceparent: traceparent(&id, &id),
            extra: BTreeMap::new(),
        };
        Event {
            id,
            aggregate_id,
            ts,
            meta,
            payload,
        }
    }

    /// An event derived from `cause`. Its id is a function of the cause, the producing service
    /// and the output's index, so re-processing the cause re-creates the same id.
    pub fn derived(cause: &Event, producer: &str, index: u32, aggregate_id: String, ts: Timestamp, payload: Payload) -> Event {
        let id = derive_id(&cause.id, producer, index);
        let meta = Meta {
            correlation_id: cause.meta.correlation_id.clone(),
            causation_id: cause.id.clone(),
            producer: producer.to_string(),
            schema_version: SCHEMA_VERSION,
            traceparent: traceparent(&cause.meta.correlation_id, &id),
            extra: BTreeMap::new(),
        };
        Event {
            id,
            aggregate_id,
            ts,
            meta,
            payload,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded `DomainEvent` to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut payload = Vec::with_capacity(96);
        match &self.payload {
            Payload::Trade(t) => crate::wire::encode_trade(
                &mut payload,
                &t.symbol,
                &t.exchange,
                &t.trade_id,
                t.price,
                t.quantity,
                side_pb(t.aggressor_side) as u64,
                t.ts_exchange,
            ),
            other => payload = encode_payload(other),
        }
        let version_text;
        let version = if self.meta.schema_version == SCHEMA_VERSION {
            SCHEMA_VERSION_TEXT
        } else {
            version_text = self.meta.schema_version.to_string();
            &version_text
        };
        let mut metadata: Vec<(&str, &str)> = Vec::with_capacity(5 + self.meta.extra.len());
        if !self.meta.causation_id.is_empty() {
            metadata.push((meta_key::CAUSATION_ID, &self.meta.causation_id));
        }
        metadata.push((meta_key::CORRELATION_ID, &self.meta.correlation_id));
        metadata.push((meta_key::PRODUCER, &self.meta.producer));
        metadata.push((meta_key::SCHEMA_VERSION, version));
        metadata.push((meta_key::TRACEPARENT, &self.meta.traceparent));
        for (k, v) in &self.meta.extra {
            metadata.push((k, v));
        }
        metadata.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let event_type = self.event_type().to_proto() as u64;
        crate::wire::encode_envelope(out, &self.id, &self.aggregate_id, event_type, self.ts, &payload, &metadata);
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let env = crate::wire::decode_envelope(bytes)?;
        if env.event_id.is_empty() {
            return Err(match env.unknown_field {
                Some(n) => DecodeError::Envelope(format!("no event_id, and field {n} is not a DomainEvent field")),
                None => DecodeError::Missing("event_id"),
            });
        }
        if let Some(n) = env.unknown_field {
            return Err(DecodeError::UnknownFields(format!("envelope field {n}")));
        }
        let declared = i32::try_from(env.event_type).ok().and_then(|t| pb::EventType::try_from(t).ok());
        let declared = EventType::from_proto(declared.ok_or(DecodeError::UnknownType(env.event_type as i32))?);
        let (secs, nanos) = env.timestamp.ok_or(DecodeError::Missing("timestamp"))?;
        let ts = Timestamp::from_proto(&prost_types::Timestamp {
            seconds: secs,
            nanos: nanos as i32,
        })
        .ok_or(DecodeError::Invalid("timestamp", "out of range".into()))?;
        let mut meta = Meta {
            schema_version: UNVERSIONED,
            ..Meta::default()
        };
        let mut correlation = None;
        for (k, v) in env.metadata {
            match k {
                meta_key::CORRELATION_ID => correlation = Some(v.to_string()),
                meta_key::CAUSATION_ID => meta.causation_id = v.to_string(),
                meta_key::PRODUCER => meta.producer = v.to_string(),
                meta_key::TRACEPARENT => meta.traceparent = v.to_string(),
                meta_key::SCHEMA_VERSION => {
                    meta.schema_version = v
                        .parse()
                        .map_err(|_| DecodeError::Invalid("metadata.schema_version", v.to_string()))?;
                }
                _ => {
                    meta.extra.insert(k.to_string(), v.to_string());
                }
            }
        }
        // Refuses a newer version; brings an older payload to the current shapes.
        let current = crate::upcast::upcast(declared, meta.schema_version, env.payload)?;
        meta.schema_version = SCHEMA_VERSION;
        meta.correlation_id = correlation.unwrap_or_else(|| env.event_id.to_string());
        let payload = decode_payload(declared, &current)?;
        Ok(Event {
            id: env.event_id.to_string(),
            aggregate_id: env.aggregate_id.to_string(),
            ts,
            meta,
            payload,
        })
    }
}

/// Why a record could not be turned into an `Event`. The message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a DomainEvent envelope: {0}")]
    Envelope(String),
    #[error("unknown event type {0}")]
    UnknownType(i32),
    #[error("schema version {0} is newer than this build understands ({SCHEMA_VERSION})")]
    NewerSchema(u32),
    #[error("payload is not a {declared} payload: {reason}")]
    TypeMismatch { declared: EventType, reason: String },
    /// A newer producer's fields would be lost by decoding into this build's model, so the
    /// record is refused (and dead-lettered) rather than silently altered.
    #[error("carries fields this build does not know ({0}); a newer producer? refusing rather than dropping them")]
    UnknownFields(String),
    /// An older version's payload that cannot be carried over to the current model faithfully.
    #[error("schema v{from} payload cannot be upcast to v{to}: {reason}")]
    Upcast { from: u32, to: u32, reason: String },
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("invalid field `{0}`: {1}")]
    Invalid(&'static str, String),
}

/// `00-<trace id>-<span id>-01`: the trace id follows the correlation id, the span id the event.
/// Our ids are already 128-bit hashes in hex, so they are used as they are; other producers' ids
/// are hashed.
pub fn traceparent(correlation_id: &str, event_id: &str) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    push_hex_id(&mut s, correlation_id, 32);
    s.push('-');
    push_hex_id(&mut s, event_id, 16);
    s.push_str("-01");
    s
}

fn push_hex_id(s: &mut String, id: &str, digits: usize) {
    let is_hex = id.len() >= digits && id.bytes().take(digits).all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    // An all-zero id is invalid in W3C trace context.
    if is_hex && id.bytes().take(digits).any(|b| b != b'0') {
        s.push_str(&id[..digits]);
    } else {
        s.push_str(&hex(&blake3::hash(id.as_bytes()).as_bytes()[..digits / 2]));
    }
}

/// The id of the `index`-th output of `producer` when handling the event `cause_id`.
pub fn derive_id(cause_id: &str, producer: &str, index: u32) -> String {
    let mut h = blake3::Hasher::new();
    h.update(cause_id.as_bytes());
    h.update(&[0]);
    h.update(producer.as_bytes());
    h.update(&[0]);
    h.update(&index.to_le_bytes());
    hex(&h.finalize().as_bytes()[..16])
}

/// The id of a root event from its natural key (for a trade: exchange, symbol, trade id), so a
/// trade delivered twice by a feed (a reconnect replay) carries the same id both times.
pub fn root_id(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    hex(&h.finalize().as_bytes()[..16])
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

// ---- payload encoding -------------------------------------------------------------------

fn dec(x: Fixed) -> Option<pb::Decimal> {
    Some(pb::Decimal {
        units: x.units(),
        scale: crate::fixed::SCALE,
    })
}

fn side_pb(s: Side) -> i32 {
    match s {
        Side::Buy => pb::Side::Buy as i32,
        Side::Sell => pb::Side::Sell as i32,
    }
}

fn direction_pb(d: Direction) -> i32 {
    match d {
        Direction::Long => pb::Direction::Long as i32,
        Direction::Short => pb::Direction::Short as i32,
        Direction::Flat => pb::Direction::Flat as i32,
    }
}

fn trade_pb(t: &Trade) -> pb::Trade {
    pb::Trade {
        symbol: t.symbol.clone(),
        exchange: t.exchange.clone(),
        trade_id: t.trade_id.clone(),
        price: dec(t.price),
        quantity: dec(t.quantity),
        aggressor_side: side_pb(t.aggressor_side),
        ts_exchange: Some(t.ts_exchange.to_proto()),
    }
}

fn bar_pb(b: &Bar) -> pb::Bar {
    pb::Bar {
        symbol: b.symbol.clone(),
        exchange: b.exchange.clone(),
        interval_ms: b.interval_ms,
        start: Some(b.start.to_proto()),
        open: dec(b.open),
        high: dec(b.high),
        low: dec(b.low),
        close: dec(b.close),
        volume: dec(b.volume),
        trade_count: b.trade_count,
        seq: b.seq,
    }
}

fn encode_payload(p: &Payload) -> Vec<u8> {
    match p {
        Payload::Trade(t) => pb::MarketData {
            data: Some(pb::market_data::Data::Trade(trade_pb(t))),
        }
        .encode_to_vec(),
        Payload::Bar(b) => pb::MarketData {
            data: Some(pb::market_data::Data::Bar(bar_pb(b))),
        }
        .encode_to_vec(),
        Payload::Signal(s) => pb::TradingSignal {
            portfolio_id: s.portfolio_id.clone(),
            symbol: s.symbol.clone(),
            direction: direction_pb(s.direction),
            strength: dec(s.strength),
            target_weight: dec(s.target_weight),
            bar: Some(bar_pb(&s.bar)),
            strategies: s
                .strategies
                .iter()
                .map(|v| pb::StrategyView {
                    strategy: v.strategy.clone(),
                    direction: direction_pb(v.direction),
                    strength: dec(v.strength),
                })
                .collect(),
            changed: s.changed,
        }
        .encode_to_vec(),
        Payload::Risk(r) => pb::RiskThresholdCrossed {
            portfolio_id: r.portfolio_id.clone(),
            kind: match r.kind {
                RiskKind::Drawdown => pb::RiskKind::Drawdown,
                RiskKind::Concentration => pb::RiskKind::Concentration,
                RiskKind::VolatilitySpike => pb::RiskKind::VolatilitySpike,
                RiskKind::PriceGap => pb::RiskKind::PriceGap,
            } as i32,
            symbol: r.symbol.clone(),
            crossing: match r.crossing {
                Crossing::Entered => pb::Crossing::Entered,
                Crossing::Cleared => pb::Crossing::Cleared,
            } as i32,
            value: dec(r.value),
            threshold: dec(r.threshold),
        }
        .encode_to_vec(),
        Payload::Rebalance(r) => pb::PortfolioRebalanced {
            portfolio_id: r.portfolio_id.clone(),
            reason: match r.reason {
                RebalanceReason::Signal => pb::RebalanceReason::Signal,
                RebalanceReason::Derisk => pb::RebalanceReason::Derisk,
            } as i32,
            fills: r
                .fills
                .iter()
                .map(|f| pb::Fill {
                    symbol: f.symbol.clone(),
                    signed_quantity: dec(match f.side {
                        Side::Buy => f.quantity,
                        Side::Sell => -f.quantity,
                    }),
                    price: dec(f.price),
                    fee: dec(f.fee),
                })
                .collect(),
            positions: r
                .positions
                .iter()
                .map(|p| pb::Position {
                    symbol: p.symbol.clone(),
                    quantity: dec(p.quantity),
                    avg_price: dec(p.avg_price),
                    mark_price: dec(p.mark_price),
                })
                .collect(),
            cash: dec(r.cash),
            value: dec(r.value),
            realized_pnl: dec(r.realized_pnl),
            unrealized_pnl: dec(r.unrealized_pnl),
            fees: dec(r.fees),
        }
        .encode_to_vec(),
        Payload::Notification(n) => pb::UserNotification {
            user_id: n.user_id.clone(),
            source_type: n.source_type.to_proto() as i32,
            source_event_id: n.source_event_id.clone(),
            symbol: n.symbol.clone(),
            severity: match n.severity {
                Severity::Info => pb::Severity::Info,
                Severity::Warning => pb::Severity::Warning,
                Severity::Critical => pb::Severity::Critical,
            } as i32,
            message: n.message.clone(),
        }
        .encode_to_vec(),
    }
}

// ---- payload decoding -------------------------------------------------------------------

fn need<T>(v: Option<T>, field: &'static str) -> Result<T, DecodeError> {
    v.ok_or(DecodeError::Missing(field))
}

fn fixed(d: &Option<pb::Decimal>, field: &'static str) -> Result<Fixed, DecodeError> {
    let d = need(d.as_ref(), field)?;
    Fixed::from_scaled(d.units, d.scale).map_err(|e| DecodeError::Invalid(field, e.to_string()))
}

fn ts(t: &Option<prost_types::Timestamp>, field: &'static str) -> Result<Timestamp, DecodeError> {
    let t = need(t.as_ref(), field)?;
    Timestamp::from_proto(t).ok_or(DecodeError::Invalid(field, "out of range".into()))
}

fn nonempty(s: String, field: &'static str) -> Result<String, DecodeError> {
    if s.is_empty() {
        Err(DecodeError::Missing(field))
    } else {
        Ok(s)
    }
}

fn side(v: i32, field: &'static str) -> Result<Side, DecodeError> {
    match pb::Side::try_from(v) {
        Ok(pb::Side::Buy) => Ok(Side::Buy),
        Ok(pb::Side::Sell) => Ok(Side::Sell),
        _ => Err(DecodeError::Invalid(field, format!("side {v} is not BUY or SELL"))),
    }
}

fn direction(v: i32, field: &'static str) -> Result<Direction, DecodeError> {
    match pb::Direction::try_from(v) {
        Ok(pb::Direction::Long) => Ok(Direction::Long),
        Ok(pb::Direction::Short) => Ok(Direction::Short),
        Ok(pb::Direction::Flat) => Ok(Direction::Flat),
        _ => Err(DecodeError::Invalid(field, format!("direction {v} is not LONG, SHORT or FLAT"))),
    }
}

fn bar_from(b: pb::Bar) -> Result<Bar, DecodeError> {
    if b.interval_ms <= 0 {
        return Err(DecodeError::Invalid(
            "bar.interval_ms",
            format!("{} is not positive", b.interval_ms),
        ));
    }
    Ok(Bar {
        open: fixed(&b.open, "bar.open")?,
        high: fixed(&b.high, "bar.high")?,
        low: fixed(&b.low, "bar.low")?,
        close: fixed(&b.close, "bar.close")?,
        volume: fixed(&b.volume, "bar.volume")?,
        start: ts(&b.start, "bar.start")?,
        symbol: nonempty(b.symbol, "bar.symbol")?,
        exchange: b.exchange,
        interval_ms: b.interval_ms,
        trade_count: b.trade_count,
        seq: b.seq,
    })
}

/// Decodes with the generated code and refuses a payload carrying a field the schema does not
/// give its message (prost would skip it silently): `crate::schema`.
pub(crate) fn decode_known<M: Message + Default + prost::Name>(bytes: &[u8], declared: EventType) -> Result<M, DecodeError> {
    let m = M::decode(bytes).map_err(|e| DecodeError::TypeMismatch {
        declared,
        reason: e.to_string(),
    })?;
    if let Some(field) = crate::schema::unknown_field(&M::full_name(), bytes) {
        return Err(DecodeError::UnknownFields(format!("{declared} payload: {field}")));
    }
    Ok(m)
}

fn decode_payload(declared: EventType, bytes: &[u8]) -> Result<Payload, DecodeError> {
    let mismatch = |reason: String| DecodeError::TypeMismatch { declared, reason };
    match declared {
        EventType::MarketDataReceived => {
            if let Some(t) = crate::wire::decode_trade(bytes) {
                let fixed_of = |d: Option<(i64, u32)>, field: &'static str| {
                    let (units, scale) = d.ok_or(DecodeError::Missing(field))?;
                    Fixed::from_scaled(units, scale).map_err(|e| DecodeError::Invalid(field, e.to_string()))
                };
                let (secs, nanos) = t.ts.ok_or(DecodeError::Missing("trade.ts_exchange"))?;
                let ts_exchange = Timestamp::from_proto(&prost_types::Timestamp {
                    seconds: secs,
                    nanos: nanos as i32,
                })
                .ok_or(DecodeError::Invalid("trade.ts_exchange", "out of range".into()))?;
                if t.symbol.is_empty() {
                    return Err(DecodeError::Missing("trade.symbol"));
                }
                if t.trade_id.is_empty() {
                    return Err(DecodeError::Missing("trade.trade_id"));
                }
                return Ok(Payload::Trade(Trade {
                    price: fixed_of(t.price, "trade.price")?,
                    quantity: fixed_of(t.quantity, "trade.quantity")?,
                    ts_exchange,
                    aggressor_side: side(i32::try_from(t.side).unwrap_or(-1), "trade.aggressor_side")?,
                    symbol: t.symbol.to_string(),
                    trade_id: t.trade_id.to_string(),
                    exchange: t.exchange.to_string(),
                }));
            }
            let m = decode_known::<pb::MarketData>(bytes, declared)?;
            match m.data {
                None => Err(mismatch("neither `trade` nor `bar` is set".into())),
                Some(pb::market_data::Data::Trade(t)) => Ok(Payload::Trade(Trade {
                    price: fixed(&t.price, "trade.price")?,
                    quantity: fixed(&t.quantity, "trade.quantity")?,
                    ts_exchange: ts(&t.ts_exchange, "trade.ts_exchange")?,
                    aggressor_side: side(t.aggressor_side, "trade.aggressor_side")?,
                    symbol: nonempty(t.symbol, "trade.symbol")?,
                    trade_id: nonempty(t.trade_id, "trade.trade_id")?,
                    exchange: t.exchange,
                })),
                Some(pb::market_data::Data::Bar(b)) => Ok(Payload::Bar(bar_from(b)?)),
            }
        }
        EventType::TradingSignalGenerated => {
            let s = decode_known::<pb::TradingSignal>(bytes, declared)?;
            let strategies = s
                .strategies
                .into_iter()
                .map(|v| {
                    Ok(StrategyView {
                        direction: direction(v.direction, "signal.strategies.direction")?,
                        strength: fixed(&v.strength, "signal.strategies.strength")?,
                        strategy: v.strategy,
                    })
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            Ok(Payload::Signal(Signal {
                direction: direction(s.direction, "signal.direction")?,
                strength: fixed(&s.strength, "signal.strength")?,
                target_weight: fixed(&s.target_weight, "signal.target_weight")?,
                bar: bar_from(need(s.bar, "signal.bar")?)?,
                portfolio_id: nonempty(s.portfolio_id, "signal.portfolio_id")?,
                symbol: nonempty(s.symbol, "signal.symbol")?,
                strategies,
                changed: s.changed,
            }))
        }
        EventType::RiskThresholdCrossed => {
            let r = decode_known::<pb::RiskThresholdCrossed>(bytes, declared)?;
            let kind = match pb::RiskKind::try_from(r.kind) {
                Ok(pb::RiskKind::Drawdown) => RiskKind::Drawdown,
                Ok(pb::RiskKind::Concentration) => RiskKind::Concentration,
                Ok(pb::RiskKind::VolatilitySpike) => RiskKind::VolatilitySpike,
                Ok(pb::RiskKind::PriceGap) => RiskKind::PriceGap,
                _ => return Err(DecodeError::Invalid("risk.kind", format!("unknown risk kind {}", r.kind))),
            };
            let crossing = match pb::Crossing::try_from(r.crossing) {
                Ok(pb::Crossing::Entered) => Crossing::Entered,
                Ok(pb::Crossing::Cleared) => Crossing::Cleared,
                _ => return Err(DecodeError::Invalid("risk.crossing", format!("unknown crossing {}", r.crossing))),
            };
            Ok(Payload::Risk(RiskCrossing {
                value: fixed(&r.value, "risk.value")?,
                threshold: fixed(&r.threshold, "risk.threshold")?,
                portfolio_id: nonempty(r.portfolio_id, "risk.portfolio_id")?,
                kind,
                symbol: r.symbol,
                crossing,
            }))
        }
        EventType::PortfolioRebalanced => {
            let r = decode_known::<pb::PortfolioRebalanced>(bytes, declared)?;
            let reason = match pb::RebalanceReason::try_from(r.reason) {
                Ok(pb::RebalanceReason::Signal) => RebalanceReason::Signal,
                Ok(pb::RebalanceReason::Derisk) => RebalanceReason::Derisk,
                _ => return Err(DecodeError::Invalid("rebalance.reason", format!("unknown reason {}", r.reason))),
            };
            let fills = r
                .fills
                .into_iter()
                .map(|f| {
                    const SIGNED: &str = "rebalance.fills.signed_quantity";
                    let signed = fixed(&f.signed_quantity, SIGNED)?;
                    let side = match signed.signum() {
                        1 => Side::Buy,
                        -1 => Side::Sell,
                        _ => return Err(DecodeError::Invalid(SIGNED, "0: a fill changes the position".into())),
                    };
                    let quantity = signed.units().checked_abs().map(Fixed::from_units);
                    Ok(Fill {
                        side,
                        quantity: quantity.ok_or(DecodeError::Invalid(SIGNED, "out of range".into()))?,
                        price: fixed(&f.price, "rebalance.fills.price")?,
                        fee: fixed(&f.fee, "rebalance.fills.fee")?,
                        symbol: nonempty(f.symbol, "rebalance.fills.symbol")?,
                    })
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            let positions = r
                .positions
                .into_iter()
                .map(|p| {
                    Ok(Position {
                        quantity: fixed(&p.quantity, "rebalance.positions.quantity")?,
                        avg_price: fixed(&p.avg_price, "rebalance.positions.avg_price")?,
                        mark_price: fixed(&p.mark_price, "rebalance.positions.mark_price")?,
                        symbol: nonempty(p.symbol, "rebalance.positions.symbol")?,
                    })
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            Ok(Payload::Rebalance(Rebalance {
                cash: fixed(&r.cash, "rebalance.cash")?,
                value: fixed(&r.value, "rebalance.value")?,
                realized_pnl: fixed(&r.realized_pnl, "rebalance.realized_pnl")?,
                unrealized_pnl: fixed(&r.unrealized_pnl, "rebalance.unrealized_pnl")?,
                fees: fixed(&r.fees, "rebalance.fees")?,
                portfolio_id: nonempty(r.portfolio_id, "rebalance.portfolio_id")?,
                reason,
                fills,
                positions,
            }))
        }
        EventType::UserNotificationTriggered => {
            let n = decode_known::<pb::UserNotification>(bytes, declared)?;
            let source_type = pb::EventType::try_from(n.source_type)
                .map(EventType::from_proto)
                .map_err(|_| DecodeError::Invalid("notification.source_type", format!("unknown type {}", n.source_type)))?;
            let severity = match pb::Severity::try_from(n.severity) {
                Ok(pb::Severity::Info) => Severity::Info,
                Ok(pb::Severity::Warning) => Severity::Warning,
                Ok(pb::Severity::Critical) => Severity::Critical,
                _ => {
                    return Err(DecodeError::Invalid(
                        "notification.severity",
                        format!("unknown severity {}", n.severity),
                    ))
                }
            };
            Ok(Payload::Notification(Notification {
                user_id: nonempty(n.user_id, "notification.user_id")?,
                source_event_id: nonempty(n.source_event_id, "notification.source_event_id")?,
                source_type,
                symbol: n.symbol,
                severity,
                message: n.message,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn trade_event() -> Event {
        let trade = Trade {
            symbol: "BTCUSDT".into(),
            exchange: "SIM".into(),
            trade_id: "42".into(),
            price: "60000.5".parse().unwrap(),
            quantity: "0.01".parse().unwrap(),
            aggressor_side: Side::Buy,
            ts_exchange: Timestamp::from_millis(1_700_000_000_000),
        };
        let id = root_id(&["SIM", "BTCUSDT", "42"]);
        Event::root(id, "BTCUSDT".into(), trade.ts_exchange, "feed", Payload::Trade(trade))
    }

    #[test]
    fn round_trips_every_payload_type() {
        let t = trade_event();
        assert_eq!(Event::decode(&t.encode()).unwrap(), t);
        let n = Event::derived(
            &t,
            "notify",
            0,
            "alice".into(),
            t.ts,
            Payload::Notification(Notification {
                user_id: "alice".into(),
                source_type: EventType::RiskThresholdCrossed,
                source_event_id: t.id.clone(),
                symbol: "BTCUSDT".into(),
                severity: Severity::Critical,
                message: "drawdown".into(),
            }),
        );
        let back = Event::decode(&n.encode()).unwrap();
        assert_eq!(back, n);
        assert_eq!(back.meta.causation_id, t.id);
        assert_eq!(back.meta.correlation_id, t.id);
        assert!(back.meta.traceparent.starts_with("00-") && back.meta.traceparent.len() == 55);
    }

    #[test]
    fn derived_ids_are_a_function_of_the_cause() {
        let t = trade_event();
        assert_eq!(derive_id(&t.id, "market", 0), derive_id(&t.id, "market", 0));
        assert_ne!(derive_id(&t.id, "market", 0), derive_id(&t.id, "market", 1));
        assert_ne!(derive_id(&t.id, "market", 0), derive_id(&t.id, "signals", 0));
    }

    #[test]
    fn a_payload_of_another_type_is_rejected_not_guessed() {
        let t = trade_event();
        let mut env = pb::DomainEvent::decode(t.encode().as_slice()).unwrap();
        env.r#type = pb::EventType::PortfolioRebalanced as i32;
        let err = Event::decode(&env.encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("PORTFOLIO_REBALANCED"), "{err}");

        // An envelope with no type reads as market data; a rebalance payload must not pass.
        let reb = pb::PortfolioRebalanced {
            portfolio_id: "p".into(),
            reason: 1,
            ..Default::default()
        };
        env.r#type = 0;
        env.payload = reb.encode_to_vec().into();
        let err = Event::decode(&env.encode_to_vec()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TypeMismatch {
                    declared: EventType::MarketDataReceived,
                    ..
                }
            ),
            "{err}"
        );
        // An empty payload is not market data either.
        env.payload = bytes::Bytes::new();
        assert!(matches!(Event::decode(&env.encode_to_vec()), Err(DecodeError::TypeMismatch { .. })));
    }

    #[test]
    fn garbage_and_missing_fields_name_the_problem() {
        assert!(matches!(Event::decode(b"\xff\xff\xff garbage"), Err(DecodeError::Envelope(_))));
        let t = trade_event();
        let mut env = pb::DomainEvent::decode(t.encode().as_slice()).unwrap();
        env.timestamp = None;
        assert_eq!(Event::decode(&env.encode_to_vec()).unwrap_err(), DecodeError::Missing("timestamp"));
        let bytes = t.encode();
        assert!(Event::decode(&bytes[..bytes.len() - 7]).is_err());
    }

    #[test]
    fn a_newer_producers_unknown_fields_are_refused_not_dropped() {
        let t = trade_event();
        // An extra envelope field.
        let mut bytes = t.encode();
        crate::wire::put_uint(&mut bytes, 12, 7);
        assert_eq!(
            Event::decode(&bytes).unwrap_err(),
            DecodeError::UnknownFields("envelope field 12".into())
        );
        // An extra field inside the trade payload.
        let mut env = pb::DomainEvent::decode(t.encode().as_slice()).unwrap();
        let mut md = pb::MarketData::decode(&env.payload[..]).unwrap();
        let Some(pb::market_data::Data::Trade(trade)) = md.data.take() else {
            panic!()
        };
        let mut trade_bytes = trade.encode_to_vec();
        crate::wire::put_bytes(&mut trade_bytes, 8, b"venue-sequence-42");
        let mut payload = Vec::new();
        crate::wire::put_bytes(&mut payload, 1, &trade_bytes);
        env.payload = payload.into();
        let err = Event::decode(&env.encode_to_vec()).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownFields(_)), "{err}");
        // An unknown enum value is named, not mapped to something else.
        let mut env = pb::DomainEvent::decode(t.encode().as_slice()).unwrap();
        env.r#type = 9;
        assert_eq!(Event::decode(&env.encode_to_vec()).unwrap_err(), DecodeError::UnknownType(9));
    }

    #[test]
    fn newer_schema_versions_are_refused() {
        let mut t = trade_event();
        t.meta.schema_version = SCHEMA_VERSION + 1;
        assert_eq!(
            Event::decode(&t.encode()).unwrap_err(),
            DecodeError::NewerSchema(SCHEMA_VERSION + 1)
        );
        let mut r = rebalance_event();
        r.meta.schema_version = SCHEMA_VERSION + 1;
        let err = Event::decode(&r.encode()).unwrap_err();
        assert_eq!(err, DecodeError::NewerSchema(SCHEMA_VERSION + 1));
        assert!(err.to_string().contains("newer than this build understands (2)"), "{err}");
    }

    fn rebalance_event() -> Event {
        let fill = |side, quantity: &str| Fill {
            symbol: "BTCUSDT".into(),
            side,
            quantity: quantity.parse().unwrap(),
            price: "60000".parse().unwrap(),
            fee: "1.5".parse().unwrap(),
        };
        let rebalance = Rebalance {
            portfolio_id: "alpha".into(),
            reason: RebalanceReason::Signal,
            fills: vec![fill(Side::Sell, "0.25"), fill(Side::Buy, "1")],
            positions: vec![],
            cash: "1000".parse().unwrap(),
            value: "61000".parse().unwrap(),
            realized_pnl: Fixed::ZERO,
            unrealized_pnl: Fixed::ZERO,
            fees: "3".parse().unwrap(),
        };
        let t = trade_event();
        Event::derived(&t, "portfolio", 0, "alpha".into(), t.ts, Payload::Rebalance(rebalance))
    }

    /// The envelope of `e` with `payload` and `version` (`None`: no `schema_version` entry).
    fn envelope_with(e: &Event, payload: &[u8], version: Option<&str>) -> Vec<u8> {
        let mut env = pb::DomainEvent::decode(e.encode().as_slice()).unwrap();
        env.payload = payload.to_vec().into();
        match version {
            Some(v) => env.metadata.insert(meta_key::SCHEMA_VERSION.into(), v.into()),
            None => env.metadata.remove(meta_key::SCHEMA_VERSION),
        };
        env.encode_to_vec()
    }

    #[test]
    fn fills_are_written_as_signed_quantities() {
        let r = rebalance_event();
        let env = pb::DomainEvent::decode(r.encode().as_slice()).unwrap();
        assert_eq!(env.metadata[meta_key::SCHEMA_VERSION], "2");
        let p = pb::PortfolioRebalanced::decode(&env.payload[..]).unwrap();
        let signed: Vec<i64> = p.fills.iter().map(|f| f.signed_quantity.unwrap().units).collect();
        assert_eq!(signed, [-25_000_000, 100_000_000]);
        assert_eq!(Event::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn a_v1_rebalance_is_upcast_and_an_unversioned_record_is_v1() {
        let r = rebalance_event();
        let Payload::Rebalance(rb) = &r.payload else { unreachable!() };
        let v1 = pb::PortfolioRebalancedV1 {
            portfolio_id: rb.portfolio_id.clone(),
            reason: pb::RebalanceReason::Signal as i32,
            fills: rb
                .fills
                .iter()
                .map(|f| pb::FillV1 {
                    symbol: f.symbol.clone(),
                    side: side_pb(f.side),
                    quantity: dec(f.quantity),
                    price: dec(f.price),
                    fee: dec(f.fee),
                })
                .collect(),
            positions: vec![],
            cash: dec(rb.cash),
            value: dec(rb.value),
            realized_pnl: dec(rb.realized_pnl),
            unrealized_pnl: dec(rb.unrealized_pnl),
            fees: dec(rb.fees),
        }
        .encode_to_vec();
        for version in [Some("1"), None] {
            let back = Event::decode(&envelope_with(&r, &v1, version)).unwrap();
            assert_eq!(back, r, "{version:?}");
            assert_eq!(back.meta.schema_version, SCHEMA_VERSION);
        }
        // The same v1 bytes labelled v2 are not misread as v2.
        let err = Event::decode(&envelope_with(&r, &v1, Some("2"))).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownFields(_)), "{err}");
        // Version 0 and a non-number are named.
        for v in ["0", "two"] {
            let err = Event::decode(&envelope_with(&r, &v1, Some(v))).unwrap_err();
            assert!(matches!(err, DecodeError::Invalid("metadata.schema_version", _)), "{err}");
        }
    }

    #[test]
    fn known_fields_in_any_legal_encoding_decode_as_the_canonical_one() {
        // A foreign producer may write a field twice or a default explicitly; the re-encoding is
        // then shorter than the payload, which the codec once took for unknown fields.
        let r = rebalance_event();
        let env = pb::DomainEvent::decode(r.encode().as_slice()).unwrap();
        let p = pb::PortfolioRebalanced::decode(&env.payload[..]).unwrap();
        let mut payload = p.encode_to_vec();
        crate::wire::put_uint(&mut payload, 2, p.reason as u64);
        crate::wire::put_bytes(&mut payload, 1, p.portfolio_id.as_bytes());
        assert!(payload.len() > p.encoded_len());
        assert_eq!(Event::decode(&envelope_with(&r, &payload, Some("2"))).unwrap(), r);
    }

    #[test]
    fn a_v2_fill_must_move_the_position() {
        let r = rebalance_event();
        let env = pb::DomainEvent::decode(r.encode().as_slice()).unwrap();
        let mut p = pb::PortfolioRebalanced::decode(&env.payload[..]).unwrap();
        p.fills[0].signed_quantity = dec(Fixed::ZERO);
        let err = Event::decode(&envelope_with(&r, &p.encode_to_vec(), Some("2"))).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Invalid("rebalance.fills.signed_quantity", "0: a fill changes the position".into())
        );
        p.fills[0].signed_quantity = None;
        let err = Event::decode(&envelope_with(&r, &p.encode_to_vec(), Some("2"))).unwrap_err();
        assert_eq!(err, DecodeError::Missing("rebalance.fills.signed_quantity"));
        // A v1 `side` left in a v2 fill is a field this build does not know: refused.
        p.fills[0].signed_quantity = dec(Fixed::ONE);
        let mut fill = p.fills[0].encode_to_vec();
        crate::wire::put_uint(&mut fill, 2, 1);
        let mut payload = p.encode_to_vec();
        crate::wire::put_bytes(&mut payload, 3, &fill);
        let err = Event::decode(&envelope_with(&r, &payload, Some("2"))).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownFields(_)), "{err}");
    }
}
