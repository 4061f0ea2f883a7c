//! The read side (CQRS): projections of the event log for queries.
//!
//! Bars per symbol and interval, the portfolio view (positions, value, P&L and the value and
//! drawdown series), the risk dashboard, each user's notification feed, and an audit trail of
//! every event with its causation chain. A projection is a pure function of the set of events
//! it applied: events are applied once by id, and every collection is keyed by event content
//! (time, id), never by arrival, so any delivery order or duplication gives byte-identical state,
//! and replaying the log from the start rebuilds it exactly.

use crate::event::{Bar, Event, EventType, Notification, Payload, Position, Rebalance, RiskCrossing};
use crate::fixed::Fixed;
use crate::scenario::Scenario;
use crate::service::{Output, Rejection, Service};
use crate::time::{format_duration_ms, Timestamp};
use crate::topics;
use hashbrown::HashTable;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;

/// What the replica reads: every topic of the shipped pipeline but the dead letters.
pub const INPUTS: &[crate::bus::Topic] = &[
    topics::MARKET_FEED,
    topics::BARS,
    topics::SIGNALS,
    topics::RISK,
    topics::PORTFOLIO,
    topics::NOTIFICATIONS,
];
pub const NAME: &str = "projections";

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    pub event_type: EventType,
    pub aggregate_id: String,
    pub ts: Timestamp,
    pub producer: String,
    pub causation_id: String,
    pub correlation_id: String,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SignalRow {
    pub ts: Timestamp,
    pub direction: crate::event::Direction,
    pub strength: Fixed,
    pub target_weight: Fixed,
    pub changed: bool,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PortfolioLog {
    /// Rebalances by "time id".
    pub rebalances: BTreeMap<String, (Timestamp, Rebalance)>,
    /// Closes per signal bar end, per symbol, from the signals the portfolio received.
    pub closes: BTreeMap<Timestamp, BTreeMap<String, Fixed>>,
    pub signals_changed: BTreeMap<String, BTreeMap<Timestamp, SignalRow>>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Projections {
    pub bars: BTreeMap<String, BTreeMap<String, BTreeMap<Timestamp, Bar>>>,
    pub portfolios: BTreeMap<String, PortfolioLog>,
    /// Risk crossings per portfolio, by "time id".
    pub risk: BTreeMap<String, BTreeMap<String, (Timestamp, RiskCrossing)>>,
    /// Notifications per user, by "time id".
    pub notifications: BTreeMap<String, BTreeMap<String, (Timestamp, Notification)>>,
    /// Every event by id (see `AuditTrail`).
    pub audit: AuditTrail,
    pub events_by_type: BTreeMap<EventType, u64>,
}

/// An event id as the audit trail holds it: the 16 bytes an id of 32 lowercase hex digits
/// (every id this codebase derives) spells, else the text as it came (a producer outside this
/// codebase may send any id; the empty causation id of a root event is one, and allocates
/// nothing). `to_text` gives the text back exactly.
// `eq` below is the derived equality, only faster: equal ids still hash equally.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Clone, Debug, Eq, Hash, PartialOrd, Ord)]
enum EventId {
    Hex16([u8; 16]),
    Text(Box<str>),
}

/// As derived, but texts of different lengths (and two empty ones, a root's causation: every
/// trade's shape lookup compares one) are told apart without a call to `memcmp`, which was
/// 11% of a rebuild's time.
impl PartialEq for EventId {
    fn eq(&self, other: &EventId) -> bool {
        match (self, other) {
            (EventId::Hex16(a), EventId::Hex16(b)) => a == b,
            (EventId::Text(a), EventId::Text(b)) => a.len() == b.len() && (a.is_empty() || a == b),
            _ => false,
        }
    }
}

/// In a binary format (the only one an `EventId` is written to; JSON spells ids as text), one
/// byte string: 0 and the 16 bytes, or 1 and the text, read back in one piece rather than as
/// 16 elements.
impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventId::Hex16(raw) => {
                let mut b = [0u8; 17];
                b[1..].copy_from_slice(raw);
                s.serialize_bytes(&b)
            }
            EventId::Text(t) if t.len() < 64 => {
                let mut b = [1u8; 64];
                b[1..=t.len()].copy_from_slice(t.as_bytes());
                s.serialize_bytes(&b[..=t.len()])
            }
            EventId::Text(t) => {
                let mut b = Vec::with_capacity(1 + t.len());
                b.push(1);
                b.extend_from_slice(t.as_bytes());
                s.serialize_bytes(&b)
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = EventId;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event id: 0 and 16 bytes, or 1 and UTF-8 text")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<EventId, E> {
                match b.split_first() {
                    Some((0, raw)) => raw.try_into().map(EventId::Hex16).map_err(|_| E::invalid_length(b.len(), &self)),
                    Some((1, text)) => std::str::from_utf8(text).map(|t| EventId::Text(t.into())).map_err(E::custom),
                    _ => Err(E::custom("not an event id")),
                }
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

/// Each byte's value as a lowercase hex digit, or `NOT_HEX`.
const HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0xff;

impl EventId {
    fn new(id: &str) -> EventId {
        let b = id.as_bytes();
        if b.len() == 32 {
            let mut raw = [0u8; 16];
            // One table lookup a digit, and one test for the whole id (three ids an event).
            let mut bad = 0u8;
            for (r, pair) in raw.iter_mut().zip(b.chunks_exact(2)) {
                let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
                bad |= (hi | lo) & 0xf0;
                *r = hi << 4 | (lo & 0x0f);
            }
            if bad == 0 {
                return EventId::Hex16(raw);
            }
        }
        EventId::Text(id.into())
    }

    /// The id's text, spelled on the stack.
    fn text(&self) -> IdText<'_> {
        match self {
            EventId::Hex16(raw) => hex_text(raw),
            EventId::Text(t) => IdText::Text(t),
        }
    }
}

fn hex_text(raw: &[u8; 16]) -> IdText<'static> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 32];
    for (i, b) in raw.iter().enumerate() {
        s[2 * i] = DIGITS[(b >> 4) as usize];
        s[2 * i + 1] = DIGITS[(b & 15) as usize];
    }
    IdText::Hex(s)
}

enum IdText<'a> {
    Hex([u8; 32]),
    Text(&'a str),
}

impl IdText<'_> {
    fn as_str(&self) -> &str {
        match self {
            IdText::Hex(s) => std::str::from_utf8(s).expect("hex digits are ASCII"),
            IdText::Text(t) => t,
        }
    }
}

impl Serialize for IdText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `AuditEntry` borrowed from the trail: serialises exactly as `AuditEntry` does.
#[derive(Serialize)]
struct EntryText<'a> {
    event_type: EventType,
    aggregate_id: &'a str,
    ts: Timestamp,
    producer: &'a str,
    causation_id: IdText<'a>,
    correlation_id: IdText<'a>,
}

/// What an event's causation or correlation id is: its own id (a root's correlation) or
/// another (the empty text of a root's causation is one, and allocates nothing). Only `Own`
/// when it equals the event's id, so equal entries hold equal values.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
enum IdRef {
    Own,
    Other(EventId),
}

impl IdRef {
    /// Compares the texts: an id's text and its `EventId` determine each other, and a root's
    /// correlation is then neither parsed nor compared as an `EventId`.
    fn new(id: &str, own: &str) -> IdRef {
        if id == own {
            IdRef::Own
        } else {
            IdRef::Other(EventId::new(id))
        }
    }

    fn text<'a>(&'a self, own: IdText<'a>) -> IdText<'a> {
        match self {
            IdRef::Own => own,
            IdRef::Other(id) => id.text(),
        }
    }
}

/// An event's envelope but its id and time, shared by every event that has the same one: a
/// day's millions of trades have a handful (one per symbol: the feed's, no cause, their own
/// correlation); a derived event names its cause, so it has its own. Names are indices into
/// the trail's table of names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
struct Shape {
    event_type: EventType,
    aggregate: u32,
    producer: u32,
    causation: IdRef,
    correlation: IdRef,
}

/// Every event applied, by id: `AuditEntry`s, held compactly and read through `get`, `iter`
/// and `values`, which give them back as they were applied.
///
/// An event with a 16-byte id (every id this codebase derives) is three columns: its id, its
/// time and its `Shape`'s index, 28 bytes in all (a day holds millions), found by id through
/// `by_id`, a hash table of positions, or, for the positions below `sorted` (a snapshot's,
/// loaded in id order), by binary search in the range `radix` gives for the id's leading bits:
/// loading a snapshot copies three byte arrays into three vectors and hashes nothing. Events
/// with other ids (a foreign producer's) are few and kept by their text.
///
/// No order of these reaches an output: the trail serialises in id order (JSON: the map of id
/// to `AuditEntry`, as the digest hashes it; a binary format such as a snapshot's postcard:
/// names in name order, shapes in order of first use, then the columns in id order), so equal
/// trails encode identically whatever order their events came in.
#[derive(Clone, Debug, Default)]
pub struct AuditTrail {
    ids: Vec<[u8; 16]>,
    times: Vec<Timestamp>,
    shape_of: Vec<u32>,
    /// `ids[..sorted]` ascend and are not in `by_id`.
    sorted: usize,
    /// For each value `p` of an id's leading bits (`radix_shift` drops the rest), where ids with
    /// leading bits `p` start in `ids[..sorted]`; one more, `sorted`, at the end.
    radix: Vec<u32>,
    radix_shift: u32,
    by_id: HashTable<u32>,
    foreign: BTreeMap<Box<str>, (Timestamp, u32)>,
    shapes: Vec<Shape>,
    shape_index: FxHashMap<Shape, u32>,
    names: Vec<Box<str>>,
    index: FxHashMap<Box<str>, u32>,
}

fn hash_id(id: &[u8; 16]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write_u128(u128::from_le_bytes(*id));
    h.finish()
}

fn leading(id: &[u8; 16]) -> u32 {
    u32::from_be_bytes([id[0], id[1], id[2], id[3]])
}

/// Where an entry is: a position in the columns, or a foreign id's.
enum At<'a> {
    Column(usize),
    Foreign(&'a str, Timestamp, u32),
}

impl AuditTrail {
    pub fn len(&self) -> usize {
        self.ids.len() + self.foreign.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn position(&self, id: &[u8; 16]) -> Option<usize> {
        if self.sorted > 0 {
            let p = (leading(id) >> self.radix_shift) as usize;
            let (lo, hi) = (self.radix[p] as usize, self.radix[p + 1] as usize);
            if let Ok(k) = self.ids[lo..hi].binary_search(id) {
                return Some(lo + k);
            }
        }
        self.by_id.find(hash_id(id), |i| self.ids[*i as usize] == *id).map(|i| *i as usize)
    }

    fn find(&self, id: &EventId) -> Option<At<'_>> {
        match id {
            EventId::Hex16(raw) => self.position(raw).map(At::Column),
            EventId::Text(t) => self.foreign.get_key_value(&**t).map(|(k, (ts, s))| At::Foreign(k, *ts, *s)),
        }
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.find(&EventId::new(id)).is_some()
    }

    pub fn get(&self, id: &str) -> Option<AuditEntry> {
        self.find(&EventId::new(id)).map(|at| self.entry(&at))
    }

    /// Every event and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (String, AuditEntry)> + '_ {
        self.all().map(|at| (self.own(&at).as_str().to_string(), self.entry(&at)))
    }

    /// Every entry, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = AuditEntry> + '_ {
        self.all().map(|at| self.entry(&at))
    }

    fn all(&self) -> impl Iterator<Item = At<'_>> + '_ {
        (0..self.ids.len())
            .map(At::Column)
            .chain(self.foreign.iter().map(|(k, (ts, s))| At::Foreign(k, *ts, *s)))
    }

    fn own<'a>(&'a self, at: &At<'a>) -> IdText<'a> {
        match at {
            At::Column(i) => hex_text(&self.ids[*i]),
            At::Foreign(t, ..) => IdText::Text(t),
        }
    }

    fn time_and_shape(&self, at: &At) -> (Timestamp, &Shape) {
        match at {
            At::Column(i) => (self.times[*i], &self.shapes[self.shape_of[*i] as usize]),
            At::Foreign(_, ts, s) => (*ts, &self.shapes[*s as usize]),
        }
    }

    fn entry(&self, at: &At) -> AuditEntry {
        let (ts, s) = self.time_and_shape(at);
        AuditEntry {
            event_type: s.event_type,
            aggregate_id: self.names[s.aggregate as usize].to_string(),
            ts,
            producer: self.names[s.producer as usize].to_string(),
            causation_id: s.causation.text(self.own(at)).as_str().to_string(),
            correlation_id: s.correlation.text(self.own(at)).as_str().to_string(),
        }
    }

    /// Adds an entry under `id` unless the id is already there; whether it was new.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        id: &str,
        event_type: EventType,
        aggregate_id: &str,
        ts: Timestamp,
        producer: &str,
        causation_id: &str,
        correlation_id: &str,
    ) -> bool {
        let own = id;
        let id = EventId::new(own);
        if self.find(&id).is_some() {
            return false;
        }
        let shape = Shape {
            event_type,
            aggregate: self.intern(aggregate_id),
            producer: self.intern(producer),
            causation: IdRef::new(causation_id, own),
            correlation: IdRef::new(correlation_id, own),
        };
        let shape = match self.shape_index.get(&shape) {
            Some(i) => *i,
            None => {
                let i = self.shapes.len() as u32;
                self.shapes.push(shape.clone());
                self.shape_index.insert(shape, i);
                i
            }
        };
        match id {
            EventId::Hex16(raw) => {
                let ids = &mut self.ids;
                self.by_id
                    .insert_unique(hash_id(&raw), ids.len() as u32, |i| hash_id(&ids[*i as usize]));
                ids.push(raw);
                self.times.push(ts);
                self.shape_of.push(shape);
            }
            EventId::Text(t) => {
                self.foreign.insert(t, (ts, shape));
            }
        }
        true
    }

    /// Records `e` unless its id is already there; whether it was new.
    fn insert(&mut self, e: &Event) -> bool {
        self.add(
            &e.id,
            e.event_type(),
            &e.aggregate_id,
            e.ts,
            &e.meta.producer,
            &e.meta.causation_id,
            &e.meta.correlation_id,
        )
    }

    fn intern(&mut self, name: &str) -> u32 {
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.into());
        self.index.insert(name.into(), i);
        i
    }
}

impl PartialEq for AuditTrail {
    /// The same events with the same entries, whatever the order they came in.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.all().all(|at| {
                let own = match &at {
                    At::Column(i) => EventId::Hex16(self.ids[*i]),
                    At::Foreign(t, ..) => EventId::Text((*t).into()),
                };
                other.find(&own).is_some_and(|o| {
                    let ((ts, s), (ots, os)) = (self.time_and_shape(&at), other.time_and_shape(&o));
                    ts == ots
                        && s.event_type == os.event_type
                        && s.causation == os.causation
                        && s.correlation == os.correlation
                        && self.names[s.aggregate as usize] == other.names[os.aggregate as usize]
                        && self.names[s.producer as usize] == other.names[os.producer as usize]
                })
            })
    }
}

impl Eq for AuditTrail {}

/// Bytes written as one byte string (postcard: a length and the bytes, read back borrowed).
struct Blob<'a>(&'a [u8]);

impl Serialize for Blob<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for AuditTrail {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if s.is_human_readable() {
            // As a `BTreeMap<String, AuditEntry>`, without building one: ids spelled on the stack.
            let mut ordered: Vec<(IdText, At)> = self.all().map(|at| (self.own(&at), at)).collect();
            ordered.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            return s.collect_map(ordered.iter().map(|(id, at)| {
                let (ts, sh) = self.time_and_shape(at);
                let entry = EntryText {
                    event_type: sh.event_type,
                    aggregate_id: &self.names[sh.aggregate as usize],
                    ts,
                    producer: &self.names[sh.producer as usize],
                    causation_id: sh.causation.text(self.own(at)),
                    correlation_id: sh.correlation.text(self.own(at)),
                };
                (id, entry)
            }));
        }
        // Canonical: names in name order (renumbered), shapes in order of first use by the
        // entries in id order (renumbered), the columns in id order, then the foreign ids'.
        let mut by_name: Vec<u32> = (0..self.names.len() as u32).collect();
        by_name.sort_unstable_by(|a, b| self.names[*a as usize].cmp(&self.names[*b as usize]));
        let mut name_to = vec![0u32; self.names.len()];
        for (new, old) in by_name.iter().enumerate() {
            name_to[*old as usize] = new as u32;
        }
        let names: Vec<&str> = by_name.iter().map(|i| &*self.names[*i as usize]).collect();
        let order: Vec<u32> = if self.sorted == self.ids.len() {
            (0..self.ids.len() as u32).collect()
        } else {
            let mut keyed: Vec<([u8; 16], u32)> = self.ids.iter().zip(0..).map(|(id, i)| (*id, i)).collect();
            keyed.sort_unstable();
            keyed.into_iter().map(|(_, i)| i).collect()
        };
        let mut shape_to = vec![u32::MAX; self.shapes.len()];
        let mut shapes = Vec::new();
        let mut renumber = |old: u32| {
            let new = &mut shape_to[old as usize];
            if *new == u32::MAX {
                *new = shapes.len() as u32;
                let sh = &self.shapes[old as usize];
                shapes.push(Shape {
                    aggregate: name_to[sh.aggregate as usize],
                    producer: name_to[sh.producer as usize],
                    ..sh.clone()
                });
            }
            *new
        };
        let mut ids = Vec::with_capacity(order.len() * 16);
        let mut times = Vec::with_capacity(order.len() * 8);
        let mut shape_of = Vec::with_capacity(order.len() * 4);
        for i in &order {
            let i = *i as usize;
            ids.extend_from_slice(&self.ids[i]);
            times.extend_from_slice(&self.times[i].0.to_le_bytes());
            shape_of.extend_from_slice(&renumber(self.shape_of[i]).to_le_bytes());
        }
        let foreign: Vec<(&str, Timestamp, u32)> = self.foreign.iter().map(|(id, (ts, sh))| (&**id, *ts, renumber(*sh))).collect();
        let mut t = s.serialize_tuple(6)?;
        t.serialize_element(&names)?;
        t.serialize_element(&shapes)?;
        t.serialize_element(&Blob(&ids))?;
        t.serialize_element(&Blob(&times))?;
        t.serialize_element(&Blob(&shape_of))?;
        t.serialize_element(&foreign)?;
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for AuditTrail {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let map: BTreeMap<String, AuditEntry> = BTreeMap::deserialize(d)?;
            let mut trail = AuditTrail::default();
            for (id, a) in map {
                trail.add(
                    &id,
                    a.event_type,
                    &a.aggregate_id,
                    a.ts,
                    &a.producer,
                    &a.causation_id,
                    &a.correlation_id,
                );
            }
            return Ok(trail);
        }
        d.deserialize_tuple(6, Binary)
    }
}

/// Reads the binary form: the small tables as serde values, the columns as byte strings copied
/// into vectors sized once, with a quarter more room for the tail replayed next (untouched room
/// costs address space, not memory), and `radix` built in one pass over the ascending ids.
/// Anything out of place (a length that is not a whole number of entries, ids not strictly
/// ascending, an index outside its table) is an error, not a later panic or a misread.
struct Binary;

impl<'de> serde::de::Visitor<'de> for Binary {
    type Value = AuditTrail;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an audit trail: names, shapes, ids, times, shape indices, foreign entries")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AuditTrail, A::Error> {
        use serde::de::Error;
        let missing = |k| A::Error::invalid_length(k, &Binary);
        let names: Vec<Box<str>> = seq.next_element()?.ok_or_else(|| missing(0))?;
        let shapes: Vec<Shape> = seq.next_element()?.ok_or_else(|| missing(1))?;
        let ids: &'de [u8] = seq.next_element()?.ok_or_else(|| missing(2))?;
        let times: &'de [u8] = seq.next_element()?.ok_or_else(|| missing(3))?;
        let shape_of: &'de [u8] = seq.next_element()?.ok_or_else(|| missing(4))?;
        let foreign: Vec<(Box<str>, Timestamp, u32)> = seq.next_element()?.ok_or_else(|| missing(5))?;

        let n = ids.len() / 16;
        if ids.len() != n * 16 || times.len() != n * 8 || shape_of.len() != n * 4 || n >= u32::MAX as usize {
            return Err(A::Error::custom("audit columns of different lengths"));
        }
        let known = names.len() as u32;
        if shapes.iter().any(|s| s.aggregate >= known || s.producer >= known) {
            return Err(A::Error::custom("an audit entry names no name of the table"));
        }
        let room = n + n / 4;
        let mut trail = AuditTrail {
            ids: Vec::with_capacity(room),
            times: Vec::with_capacity(room),
            shape_of: Vec::with_capacity(room),
            sorted: n,
            by_id: HashTable::with_capacity(n / 4),
            index: names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect(),
            names,
            shape_index: shapes.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect(),
            shapes,
            ..AuditTrail::default()
        };
        let bad_shape = || A::Error::custom("an audit entry has no shape of the table");
        let n_shapes = trail.shapes.len() as u32;
        trail
            .ids
            .extend(ids.chunks_exact(16).map(|c| <[u8; 16]>::try_from(c).expect("16 bytes")));
        trail.times.extend(
            times
                .chunks_exact(8)
                .map(|c| Timestamp(i64::from_le_bytes(c.try_into().expect("8 bytes")))),
        );
        trail
            .shape_of
            .extend(shape_of.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))));
        if trail.shape_of.iter().any(|s| *s >= n_shapes) {
            return Err(bad_shape());
        }
        if !trail.ids.windows(2).all(|w| w[0] < w[1]) {
            return Err(A::Error::custom("audit ids not strictly ascending"));
        }
        // About one id a bucket: ids are hashes (uniform), and any other spread only makes
        // some ranges longer, never a lookup wrong.
        let bits = n.max(2).ilog2().min(24);
        trail.radix_shift = 32 - bits;
        trail.radix = Vec::with_capacity((1 << bits) + 1);
        let mut at = 0;
        for p in 0..=(1u32 << bits) {
            while at < n && (leading(&trail.ids[at]) >> trail.radix_shift) < p {
                at += 1;
            }
            trail.radix.push(at as u32);
        }
        for (id, ts, shape) in foreign {
            if shape >= n_shapes {
                return Err(bad_shape());
            }
            if matches!(EventId::new(&id), EventId::Hex16(_)) || trail.foreign.last_key_value().is_some_and(|(k, _)| *k >= id) {
                return Err(A::Error::custom("foreign audit ids not text or not strictly ascending"));
            }
            trail.foreign.insert(id, (ts, shape));
        }
        Ok(trail)
    }
}

fn time_key(ts: Timestamp, id: &str) -> String {
    format!("{} {id}", ts.to_rfc3339())
}

impl Projections {
    /// Applies an event once; a second delivery of the same id changes nothing.
    pub fn apply(&mut self, e: &Event) -> bool {
        if !self.audit.insert(e) {
            return false;
        }
        *self.events_by_type.entry(e.event_type()).or_insert(0) += 1;
        match &e.payload {
            Payload::Trade(_) => {}
            Payload::Bar(b) => {
                self.bars
                    .entry(b.symbol.clone())
                    .or_default()
                    .entry(format_duration_ms(b.interval_ms))
                    .or_default()
                    .insert(b.start, b.clone());
            }
            Payload::Signal(s) => {
                let log = self.portfolios.entry(s.portfolio_id.clone()).or_default();
                log.closes.entry(s.bar.end()).or_default().insert(s.symbol.clone(), s.bar.close);
                if s.changed {
                    let row = SignalRow {
                        ts: e.ts,
                        direction: s.direction,
                        strength: s.strength,
                        target_weight: s.target_weight,
                        changed: s.changed,
                    };
                    log.signals_changed.entry(s.symbol.clone()).or_default().insert(e.ts, row);
                }
            }
            Payload::Risk(r) => {
                self.risk
                    .entry(r.portfolio_id.clone())
                    .or_default()
                    .insert(time_key(e.ts, &e.id), (e.ts, r.clone()));
            }
            Payload::Rebalance(r) => {
                self.portfolios
                    .entry(r.portfolio_id.clone())
                    .or_default()
                    .rebalances
                    .insert(time_key(e.ts, &e.id), (e.ts, r.clone()));
            }
            Payload::Notification(n) => {
                self.notifications
                    .entry(n.user_id.clone())
                    .or_default()
                    .insert(time_key(e.ts, &e.id), (e.ts, n.clone()));
            }
        }
        true
    }

    /// The causation chain of an event, from the event back to its root.
    pub fn causation_chain(&self, id: &str) -> Vec<(String, AuditEntry)> {
        let mut chain = Vec::new();
        let mut cur = id.to_string();
        while let Some(entry) = self.audit.get(&cur) {
            let cause = entry.causation_id.clone();
            chain.push((cur, entry));
            if cause.is_empty() || chain.len() > 64 {
                break;
            }
            cur = cause;
        }
        chain
    }
}

/// One point of the portfolio's value series.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ValuePoint {
    pub ts: Timestamp,
    pub value: Fixed,
    pub drawdown: Fixed,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PortfolioView {
    pub portfolio_id: String,
    pub cash: Fixed,
    pub positions: Vec<Position>,
    pub value: Fixed,
    pub realized_pnl: Fixed,
    pub unrealized_pnl: Fixed,
    pub total_pnl: Fixed,
    pub fees: Fixed,
    pub rebalances: u64,
    pub max_drawdown: Fixed,
    pub series: Vec<ValuePoint>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RiskRow {
    pub ts: Timestamp,
    pub kind: crate::event::RiskKind,
    pub symbol: String,
    pub crossing: crate::event::Crossing,
    pub value: Fixed,
    pub threshold: Fixed,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RiskDashboard {
    /// Crossings currently active ("kind symbol").
    pub active: Vec<String>,
    pub entered: u64,
    pub cleared: u64,
    pub history: Vec<RiskRow>,
}

/// The portfolio's view at the end of its log: the value series is the portfolio as of each
/// signal bar (the latest rebalance at or before it) valued at that bar's closes.
pub fn portfolio_view(pid: &str, initial_cash: Fixed, log: &PortfolioLog) -> PortfolioView {
    let rebalances: Vec<&(Timestamp, Rebalance)> = log.rebalances.values().collect();
    let mut next = 0;
    let mut cash = initial_cash;
    let mut holdings: BTreeMap<String, Fixed> = BTreeMap::new();
    let mut marks: BTreeMap<String, Fixed> = BTreeMap::new();
    let mut peak = Fixed::ZERO;
    let mut max_drawdown = Fixed::ZERO;
    let mut series = Vec::with_capacity(log.closes.len());
    for (t, closes) in &log.closes {
        while next < rebalances.len() && rebalances[next].0 <= *t {
            let r = &rebalances[next].1;
            cash = r.cash;
            holdings = r.positions.iter().map(|p| (p.symbol.clone(), p.quantity)).collect();
            next += 1;
        }
        for (s, c) in closes {
            marks.insert(s.clone(), *c);
        }
        let value = cash
            + holdings
                .iter()
                .map(|(s, q)| q.mul(marks.get(s).copied().unwrap_or(Fixed::ZERO)))
                .sum();
        peak = peak.max(value);
        let drawdown = (peak - value).div(peak).unwrap_or(Fixed::ZERO);
        max_drawdown = max_drawdown.max(drawdown);
        series.push(ValuePoint { ts: *t, value, drawdown });
    }
    let last = rebalances.last().map(|(_, r)| r);
    let positions: Vec<Position> = last
        .map(|r| {
            r.positions
                .iter()
                .map(|p| Position {
                    mark_price: marks.get(&p.symbol).copied().unwrap_or(p.mark_price),
                    ..p.clone()
                })
                .collect()
        })
        .unwrap_or_default();
    let value = series.last().map(|p| p.value).unwrap_or(initial_cash);
    let realized = last.map(|r| r.realized_pnl).unwrap_or(Fixed::ZERO);
    let unrealized: Fixed = positions.iter().map(|p| p.quantity.mul(p.mark_price - p.avg_price)).sum();
    PortfolioView {
        portfolio_id: pid.to_string(),
        cash: last.map(|r| r.cash).unwrap_or(initial_cash),
        positions,
        value,
        realized_pnl: realized,
        unrealized_pnl: unrealized,
        total_pnl: value - initial_cash,
        fees: last.map(|r| r.fees).unwrap_or(Fixed::ZERO),
        rebalances: rebalances.len() as u64,
        max_drawdown,
        series,
    }
}

pub fn risk_dashboard(rows: &BTreeMap<String, (Timestamp, RiskCrossing)>) -> RiskDashboard {
    let mut active = BTreeMap::new();
    let mut entered = 0;
    let mut cleared = 0;
    let history: Vec<RiskRow> = rows
        .values()
        .map(|(ts, r)| {
            let key = format!("{} {}", r.kind.as_str(), r.symbol).trim().to_string();
            match r.crossing {
                crate::event::Crossing::Entered => {
                    entered += 1;
                    active.insert(key, ());
                }
                crate::event::Crossing::Cleared => {
                    cleared += 1;
                    active.remove(&key);
                }
            }
            RiskRow {
                ts: *ts,
                kind: r.kind,
                symbol: r.symbol.clone(),
                crossing: r.crossing,
                value: r.value,
                threshold: r.threshold,
            }
        })
        .collect();
    RiskDashboard {
        active: active.into_keys().collect(),
        entered,
        cleared,
        history,
    }
}

/// Digests of every projection, for equality checks across runs, buses and rebuilds.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Digests {
    pub bars: String,
    pub portfolio: String,
    pub risk: String,
    pub notifications: String,
    pub audit: String,
    /// Over all of the above.
    pub all: String,
}

/// blake3 of the value's JSON, streamed through a 64 KiB buffer: the JSON of a day's audit trail
/// runs to hundreds of MB, and building it in one `Vec` spent most of a rebuild's time zeroing
/// the pages it grew into (`perf` of `horizon digest`: `clear_page_erms` 38 %).
fn digest_of<T: Serialize>(v: &T) -> String {
    use std::io::Write;
    let mut hasher = blake3::Hasher::new();
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut hasher);
        serde_json::to_writer(&mut out, v).expect("projections serialise");
        out.flush().expect("hashing does not fail");
    }
    hasher.finalize().to_hex()[..32].to_string()
}

/// The read models, ready to serve or snapshot.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Views {
    pub portfolios: BTreeMap<String, PortfolioView>,
    pub risk: BTreeMap<String, RiskDashboard>,
    pub notifications: BTreeMap<String, Vec<(Timestamp, Notification)>>,
}

pub struct ProjectionService {
    pub initial_cash: BTreeMap<String, Fixed>,
}

impl ProjectionService {
    pub fn from_scenario(s: &Scenario) -> ProjectionService {
        ProjectionService {
            initial_cash: [(s.portfolio.id.clone(), s.portfolio.cash)].into_iter().collect(),
        }
    }

    pub fn views(&self, p: &Projections) -> Views {
        Views {
            // Every configured portfolio has a view from the start, even before its first event.
            portfolios: self
                .initial_cash
                .keys()
                .chain(p.portfolios.keys())
                .map(|pid| {
                    let empty = PortfolioLog::default();
                    let log = p.portfolios.get(pid).unwrap_or(&empty);
                    (
                        pid.clone(),
                        portfolio_view(pid, self.initial_cash.get(pid).copied().unwrap_or(Fixed::ZERO), log),
                    )
                })
                .collect(),
            risk: p.risk.iter().map(|(pid, rows)| (pid.clone(), risk_dashboard(rows))).collect(),
            notifications: p
                .notifications
                .iter()
                .map(|(u, rows)| (u.clone(), rows.values().cloned().collect()))
                .collect(),
        }
    }

    pub fn digests(&self, p: &Projections) -> Digests {
        let views = self.views(p);
        let bars = digest_of(&p.bars);
        let portfolio = digest_of(&views.portfolios);
        let risk = digest_of(&views.risk);
        let notifications = digest_of(&views.notifications);
        let audit = digest_of(&p.audit);
        let all = digest_of(&[&bars, &portfolio, &risk, &notifications, &audit]);
        Digests {
            bars,
            portfolio,
            risk,
            notifications,
            audit,
            all,
        }
    }
}

/// The simulator checks the projections like any read model: by their digests, and against
/// the log through the audit trail (every event applied, none counted twice).
impl crate::service::ReadModel for ProjectionService {
    fn digests(&self, state: &Projections) -> Vec<(&'static str, String)> {
        let d = ProjectionService::digests(self, state);
        vec![
            ("bars", d.bars),
            ("portfolio", d.portfolio),
            ("risk", d.risk),
            ("notifications", d.notifications),
            ("audit", d.audit),
        ]
    }

    fn applied(&self, state: &Projections, event_id: &str) -> bool {
        state.audit.contains_key(event_id)
    }

    fn tallies(&self, state: &Projections) -> Vec<crate::service::Tally> {
        let mut by_type: BTreeMap<EventType, u64> = BTreeMap::new();
        for a in state.audit.values() {
            *by_type.entry(a.event_type).or_insert(0) += 1;
        }
        let mut out = vec![crate::service::Tally {
            what: "events".to_string(),
            counted: state.events_by_type.values().sum(),
            distinct: state.audit.len() as u64,
        }];
        let types: std::collections::BTreeSet<EventType> = by_type.keys().chain(state.events_by_type.keys()).copied().collect();
        for t in types {
            out.push(crate::service::Tally {
                what: format!("{t} events"),
                counted: state.events_by_type.get(&t).copied().unwrap_or(0),
                distinct: by_type.get(&t).copied().unwrap_or(0),
            });
        }
        out
    }

    fn same_state(&self, a: &Projections, b: &Projections) -> bool {
        a == b
    }
}

impl Service for ProjectionService {
    type State = Projections;

    fn encode_state(&self, state: &Self::State) -> Option<Vec<u8>> {
        crate::snapshot::state_to_bytes(state)
    }

    fn decode_state(&self, bytes: &[u8]) -> Option<Self::State> {
        crate::snapshot::state_from_bytes(bytes)
    }

    fn name(&self) -> &'static str {
        NAME
    }

    /// A replica reads every topic; what does not decode on a topic a stage before it consumes
    /// is that stage's to dead-letter (`Topology::owner`).
    fn inputs(&self) -> &'static [crate::bus::Topic] {
        INPUTS
    }

    /// One task for every partition: a read model needs all of them. Each query process keeps
    /// its own replica (its own consumer group) rather than sharing partitions.
    fn task(&self, _tp: crate::bus::TopicPartition) -> u32 {
        0
    }

    fn handle(&self, state: &mut Projections, event: &Event, _out: &mut Vec<Output>) -> Result<(), Rejection> {
        state.apply(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::MarketGenerator;
    use crate::pipeline::MemoryRun;

    /// Every event of a short flash-crash run, plus copies under ids and names this codebase
    /// never derives (a foreign producer's), whose text must come back exactly.
    fn events() -> Vec<Event> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/flash-crash.toml");
        let s = Scenario::from_toml(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        let run = MemoryRun::run(
            &s,
            MarketGenerator::new(&s, s.seed).unwrap().take(3000).map(crate::feed::trade_event),
            500,
        );
        let broker = run.bus.broker();
        let mut events: Vec<Event> = broker
            .all_partitions()
            .into_iter()
            .flat_map(|tp| broker.read(tp, 0, u64::MAX))
            .filter_map(|r| Event::decode(&r.value).ok())
            .collect();
        let kinds = events.iter().map(|e| e.event_type()).collect::<std::collections::BTreeSet<_>>();
        assert!(kinds.len() >= 2, "{kinds:?}");
        let odd = [
            "ABCDEF0123456789ABCDEF0123456789",
            "abcdef0123456789abcdef012345678",
            "abcdef0123456789abcdef01234567890",
            "abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "abcdef0123456789abcdef012345678g",
            "trade:binance:BTCUSDT:42",
            "é-ünïcode",
        ];
        for (i, id) in odd.iter().enumerate() {
            let mut e = events[i * 7].clone();
            e.id = id.to_string();
            e.meta.causation_id = odd[(i + 1) % odd.len()].to_string();
            e.meta.correlation_id = if i % 2 == 0 { String::new() } else { id.to_string() };
            e.aggregate_id = format!("foreign-{i}");
            e.meta.producer = String::new();
            events.push(e);
        }
        events
    }

    fn applied(events: &[Event]) -> Projections {
        let mut p = Projections::default();
        for e in events {
            p.apply(e);
        }
        p
    }

    #[test]
    fn an_id_is_held_as_16_bytes_only_when_it_is_32_lowercase_hex_digits() {
        let hex = "0123456789abcdef0123456789abcdef";
        let EventId::Hex16(raw) = EventId::new(hex) else {
            panic!("{hex} is hex")
        };
        assert_eq!(raw[0], 0x01);
        assert_eq!(raw[15], 0xef);
        assert_eq!(EventId::new(hex).text().as_str(), hex);
        // Every position, with the bytes either side of each digit range and a non-ASCII one.
        for at in 0..32 {
            for bad in ['/', ':', '`', 'g', 'A', 'F', ' '] {
                let mut id: Vec<char> = hex.chars().collect();
                id[at] = bad;
                let id: String = id.into_iter().collect();
                assert_eq!(EventId::new(&id), EventId::Text(id.clone().into()), "{id}");
            }
        }
        let accented = "é123456789abcdef0123456789abcde";
        assert_eq!(EventId::new(accented), EventId::Text(accented.into()));
        assert_eq!(EventId::new(""), EventId::Text("".into()));
        assert_ne!(EventId::new(""), EventId::new("a"));
        assert_ne!(EventId::new("ab"), EventId::new("ac"));
    }

    #[test]
    fn the_audit_trail_gives_back_every_entry_as_applied() {
        let events = events();
        let p = applied(&events);
        let mut ids = std::collections::BTreeSet::new();
        for e in &events {
            ids.insert(e.id.clone());
            let want = AuditEntry {
                event_type: e.event_type(),
                aggregate_id: e.aggregate_id.clone(),
                ts: e.ts,
                producer: e.meta.producer.clone(),
                causation_id: e.meta.causation_id.clone(),
                correlation_id: e.meta.correlation_id.clone(),
            };
            assert_eq!(p.audit.get(&e.id), Some(want), "{}", e.id);
            assert!(p.audit.contains_key(&e.id));
        }
        assert_eq!(p.audit.len(), ids.len());
        assert_eq!(p.audit.iter().map(|(id, _)| id).collect::<std::collections::BTreeSet<_>>(), ids);
        assert!(p.audit.get("abcdef0123456789abcdef0123456788").is_none());
        assert!(!p.audit.contains_key("abcdef0123456789ABCDEF0123456789"));
    }

    #[test]
    fn the_audit_trail_serialises_as_the_map_of_id_to_entry_it_was_in_any_order() {
        let events = events();
        let p = applied(&events);
        // JSON (what the audit digest hashes): the map of id to entry in id order, as before.
        let map: BTreeMap<String, AuditEntry> = p.audit.iter().collect();
        assert_eq!(serde_json::to_vec(&p.audit).unwrap(), serde_json::to_vec(&map).unwrap());
        let back: AuditTrail = serde_json::from_slice(&serde_json::to_vec(&p.audit).unwrap()).unwrap();
        assert_eq!(back, p.audit);
        // Binary (snapshots): round trips, and is the same bytes whatever order the events came in.
        let bytes = crate::snapshot::state_to_bytes(&p).unwrap();
        let decoded: Projections = crate::snapshot::state_from_bytes(&bytes).unwrap();
        assert_eq!(decoded, p);
        assert_eq!(
            ProjectionService {
                initial_cash: BTreeMap::new()
            }
            .digests(&decoded)
            .audit,
            ProjectionService {
                initial_cash: BTreeMap::new()
            }
            .digests(&p)
            .audit
        );
        let mut reversed = events.clone();
        reversed.reverse();
        let q = applied(&reversed);
        assert_eq!(q, p);
        assert_eq!(crate::snapshot::state_to_bytes(&q).unwrap(), bytes);
        // Loaded from a snapshot of the first half (found by search) and given the second
        // quarter again and the rest, a trail takes and refuses what the one that never left
        // memory does, ends as the one that applied everything, and snapshots to the same bytes.
        let half = events.len() / 2;
        let mut direct = applied(&events[..half]);
        let at_half = crate::snapshot::state_to_bytes(&direct).unwrap();
        let mut resumed: Projections = crate::snapshot::state_from_bytes(&at_half).unwrap();
        assert!(events[half / 2..half].iter().all(|e| !resumed.apply(e)));
        assert!(events[half..].iter().all(|e| resumed.apply(e) == direct.apply(e)));
        assert!(events
            .iter()
            .all(|e| !resumed.apply(e) && resumed.audit.get(&e.id) == p.audit.get(&e.id)));
        assert_eq!(resumed, p);
        assert_eq!(crate::snapshot::state_to_bytes(&resumed).unwrap(), bytes);
        // A decoded trail goes on interning and applying as the original does.
        let mut decoded = decoded;
        let mut extra = events[3].clone();
        extra.id = "0123456789abcdef0123456789abcdef".into();
        extra.aggregate_id = "a new aggregate".into();
        assert!(decoded.apply(&extra) && !decoded.apply(&extra));
        assert_eq!(decoded.audit.get(&extra.id).unwrap().aggregate_id, "a new aggregate");
        // Cut short or pointing outside its name table, it is refused, not misread.
        assert!(crate::snapshot::state_from_bytes::<Projections>(&bytes[..bytes.len() - 3]).is_none());
        let empty = crate::snapshot::state_to_bytes(&AuditTrail::default()).unwrap();
        assert_eq!(empty, [0; 6]);
        // Forged columns: ids, one shape index for each, and how many times.
        let forge = |ids: &[[u8; 16]], shape: u32, times: usize| {
            let shapes = vec![Shape {
                event_type: EventType::MarketDataReceived,
                aggregate: 0,
                producer: 1,
                causation: IdRef::Other(EventId::new("")),
                correlation: IdRef::Own,
            }];
            let shape_of: Vec<u8> = ids.iter().flat_map(|_| shape.to_le_bytes()).collect();
            let bytes = crate::snapshot::state_to_bytes(&(
                vec!["BTCUSDT", "feed"],
                shapes,
                Blob(ids.as_flattened()),
                Blob(&vec![0u8; 8 * times]),
                Blob(&shape_of),
                Vec::<(String, Timestamp, u32)>::new(),
            ))
            .unwrap();
            crate::snapshot::state_from_bytes::<AuditTrail>(&bytes)
        };
        let ok = forge(&[[7; 16], [8; 16]], 0, 2).expect("a well-formed trail");
        assert_eq!(ok.get(&"08".repeat(16)).unwrap().correlation_id, "08".repeat(16));
        assert!(forge(&[[7; 16], [7; 16]], 0, 2).is_none(), "an id twice");
        assert!(forge(&[[8; 16], [7; 16]], 0, 2).is_none(), "ids out of order");
        assert!(forge(&[[7; 16], [8; 16]], 1, 2).is_none(), "a shape outside the table");
        assert!(forge(&[[7; 16], [8; 16]], 0, 1).is_none(), "columns of different lengths");
    }
}
